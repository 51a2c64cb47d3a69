//! Live progress of a run on standard error: a bar redrawn every second on
//! a terminal, a plain line a second otherwise (logs, CI, pipes).

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use crate::report::Interval;

/// Width of the bar, in characters.
const BAR: usize = 30;

/// Draws the progress of one run.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    duration: Duration,
    drawn: bool,
}

impl Progress {
    /// Progress of a run measuring for `duration`, as a bar when standard
    /// error is a terminal.
    pub fn new(duration: Duration) -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            duration,
            drawn: false,
        }
    }

    /// Says what is about to run.
    pub fn start(&self, what: &str) {
        eprintln!("{what}");
    }

    /// Shows one more second.
    pub fn interval(&mut self, interval: &Interval) {
        let total = self.duration.as_secs_f64().max(f64::EPSILON);
        let done = (interval.elapsed_s / total).clamp(0.0, 1.0);
        let p99 = if interval.requests == 0 {
            "-".to_owned()
        } else {
            human_us(interval.latency_us.p99)
        };
        let mut figures = format!(
            "{:>10.1} req/s  {:>7} errors  p99 {p99:>9}",
            interval.throughput_rps, interval.errors,
        );
        if interval.connect_errors > 0 {
            figures.push_str(&format!("  {} connect errors", interval.connect_errors));
        }
        let mut err = std::io::stderr().lock();
        // Progress is a courtesy: a closed standard error does not stop the run.
        let _ = if self.terminal {
            let filled = (done * BAR as f64).round() as usize;
            write!(
                err,
                "\r\x1b[2K[{}{}] {:>5.0}/{:.0} s {figures}",
                "#".repeat(filled),
                ".".repeat(BAR - filled.min(BAR)),
                interval.elapsed_s,
                total
            )
            .and_then(|()| err.flush())
        } else {
            writeln!(err, "{:>6.1} s {figures}", interval.elapsed_s)
        };
        self.drawn = true;
    }

    /// Ends the bar's line, so the summary starts on a fresh one.
    pub fn finish(&self) {
        if self.terminal && self.drawn {
            eprintln!();
        }
    }
}

/// Microseconds as a person reads them: `850 µs`, `12.3 ms`, `1.50 s`.
pub fn human_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::human_us;

    #[test]
    fn latencies_read_naturally() {
        assert_eq!(human_us(850), "850 µs");
        assert_eq!(human_us(12_345), "12.35 ms");
        assert_eq!(human_us(1_500_000), "1.50 s");
    }
}
