//! HDR recording per worker, the merged [`Report`], and its renderings: a
//! text summary table and JSON.

use std::{collections::BTreeMap, io::Write, time::Duration};

use farm_api::{node::MAX_LATENCY_US, status};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::Mode;

/// A latency histogram in microseconds up to [`MAX_LATENCY_US`] (a node's
/// longest delay; larger values are clamped to it), 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What one worker saw; merged into a [`Report`] at the end.
#[derive(Debug)]
pub struct Recorder {
    /// Latency from the scheduled send time (from the actual send in closed
    /// loop, where the two coincide).
    pub corrected: Histogram<u64>,
    /// Latency from the actual send time.
    pub uncorrected: Histogram<u64>,
    /// Completed requests, failed ones included.
    pub requests: u64,
    /// Failed requests by gRPC status code.
    pub errors: BTreeMap<i32, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            requests: 0,
            errors: BTreeMap::new(),
        }
    }
}

/// A duration in whole microseconds, at least 1 (what histograms record).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Recorder {
    /// Records one completed request; `code` 0 is success.
    pub fn record(&mut self, corrected: Duration, uncorrected: Duration, code: i32) {
        self.requests += 1;
        if code != 0 {
            *self.errors.entry(code).or_default() += 1;
        }
        self.corrected.saturating_record(micros(corrected));
        self.uncorrected.saturating_record(micros(uncorrected));
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Recorder) {
        self.requests += other.requests;
        for (code, n) in &other.errors {
            *self.errors.entry(*code).or_default() += n;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// One second of a run (the last one may be shorter), as progress shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// 1-based second since measuring began.
    pub second: u64,
    /// Seconds from the start of measuring to the end of this interval.
    pub elapsed_s: f64,
    /// Requests completed in this interval, failed ones included.
    pub requests: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    /// Latency from the scheduled send time.
    pub latency_us: Percentiles,
    /// Latency from the actual send time.
    pub uncorrected_latency_us: Percentiles,
}

impl Interval {
    pub(crate) fn new(second: u64, elapsed: Duration, length: Duration, all: &Recorder) -> Self {
        let secs = length.as_secs_f64();
        Self {
            second,
            elapsed_s: elapsed.as_secs_f64(),
            requests: all.requests,
            errors: all.errors.values().sum(),
            throughput_rps: if secs > 0.0 {
                all.requests as f64 / secs
            } else {
                0.0
            },
            latency_us: Percentiles::from(&all.corrected),
            uncorrected_latency_us: Percentiles::from(&all.uncorrected),
        }
    }
}

/// Latency at one percentile, for the latency-by-percentile plot.
#[derive(Debug, Clone, Serialize)]
pub struct SpectrumPoint {
    /// 0 to 100.
    pub percentile: f64,
    pub latency_us: u64,
    pub uncorrected_latency_us: u64,
}

/// Percentiles of the spectrum: ten steps per "nine" (0%, 20.6%, ... 90%,
/// ... 99%, ... 99.999%), then the maximum.
fn spectrum(all: &Recorder) -> Vec<SpectrumPoint> {
    let mut points: Vec<SpectrumPoint> = (0..=50)
        .map(|step| {
            let quantile = 1.0 - 10f64.powf(-f64::from(step) / 10.0);
            SpectrumPoint {
                percentile: quantile * 100.0,
                latency_us: all.corrected.value_at_quantile(quantile),
                uncorrected_latency_us: all.uncorrected.value_at_quantile(quantile),
            }
        })
        .collect();
    points.push(SpectrumPoint {
        percentile: 100.0,
        latency_us: all.corrected.max(),
        uncorrected_latency_us: all.uncorrected.max(),
    });
    points
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    /// The nodes driven.
    pub targets: Vec<String>,
    /// Asked rate in requests per second (open loop); `null` in closed loop.
    pub rate: Option<f64>,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Measured time in seconds (shorter than asked when stopped early).
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    /// Failed requests by status code name (`UNAVAILABLE`, ...).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Achieved requests per second.
    pub throughput_rps: f64,
    /// Open loop: scheduled requests that were never sent because all
    /// `concurrency` requests were in flight until the run ended.
    pub missed: u64,
    /// Open loop: whether the targets kept up with the asked rate (nothing
    /// missed). Always true in closed loop.
    pub kept_up: bool,
    /// Latency from the scheduled send time (coordinated omission corrected).
    pub latency_us: Percentiles,
    /// Latency from the actual send time.
    pub uncorrected_latency_us: Percentiles,
    /// Latency by percentile, corrected and uncorrected.
    pub spectrum: Vec<SpectrumPoint>,
    /// Second by second.
    pub intervals: Vec<Interval>,
    /// Whether the run was stopped before its duration was up.
    pub interrupted: bool,
}

/// What a run measured, before it becomes a [`Report`].
#[derive(Debug)]
pub(crate) struct Measured<'a> {
    pub mode: Mode,
    pub targets: &'a [String],
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub measured: Duration,
    pub all: &'a Recorder,
    pub missed: u64,
    pub intervals: Vec<Interval>,
    pub interrupted: bool,
}

impl Report {
    pub(crate) fn new(m: Measured<'_>) -> Self {
        let secs = m.measured.as_secs_f64();
        let all = m.all;
        Self {
            mode: m.mode,
            targets: m.targets.to_vec(),
            rate: m.rate,
            concurrency: m.concurrency,
            duration_s: secs,
            requests: all.requests,
            errors: all.errors.values().sum(),
            errors_by_code: by_code_name(&all.errors),
            throughput_rps: if secs > 0.0 {
                all.requests as f64 / secs
            } else {
                0.0
            },
            missed: m.missed,
            kept_up: m.missed == 0,
            latency_us: Percentiles::from(&all.corrected),
            uncorrected_latency_us: Percentiles::from(&all.uncorrected),
            spectrum: spectrum(all),
            intervals: m.intervals,
            interrupted: m.interrupted,
        }
    }

    /// The summary's percentiles: name, corrected and uncorrected latency
    /// in microseconds.
    pub fn latency_rows(&self) -> [(&'static str, u64, u64); 6] {
        let (c, u) = (&self.latency_us, &self.uncorrected_latency_us);
        [
            ("p50", c.p50, u.p50),
            ("p90", c.p90, u.p90),
            ("p99", c.p99, u.p99),
            ("p99.9", c.p999, u.p999),
            ("p99.99", c.p9999, u.p9999),
            ("max", c.max, u.max),
        ]
    }

    /// Writes the summary table.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "Summary ({}, {} target{})",
            self.mode.name(),
            self.targets.len(),
            if self.targets.len() == 1 { "" } else { "s" }
        )?;
        if self.interrupted {
            writeln!(out, "  (stopped early: partial results)")?;
        }
        writeln!(out, "  Duration:    {:.2} s", self.duration_s)?;
        writeln!(out, "  Requests:    {}", self.requests)?;
        writeln!(out, "  Errors:      {}", self.errors)?;
        for (code, n) in code_name_order(&self.errors_by_code) {
            writeln!(out, "    {code:<20} {n}")?;
        }
        match self.rate {
            Some(rate) => {
                writeln!(
                    out,
                    "  Throughput:  {:.1} req/s (asked {rate:.1} req/s, {:.1}%)",
                    self.throughput_rps,
                    100.0 * self.throughput_rps / rate
                )?;
                if !self.kept_up {
                    writeln!(
                        out,
                        "  The targets did not keep up: {} scheduled requests were never sent \
                         (all {} in flight); the corrected latency counts the wait of those sent.",
                        self.missed, self.concurrency
                    )?;
                }
            }
            None => writeln!(
                out,
                "  Throughput:  {:.1} req/s (closed loop)",
                self.throughput_rps
            )?,
        }
        writeln!(out)?;
        writeln!(
            out,
            "  Latency (us)  {:>12} {:>12}",
            "corrected", "uncorrected"
        )?;
        for (name, a, b) in self.latency_rows() {
            writeln!(out, "  {name:<12}  {a:>12} {b:>12}")?;
        }
        Ok(())
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }
}

/// Counts by gRPC status code, keyed by the code's canonical name instead
/// (`OTHER` for a number gRPC does not define).
pub fn by_code_name(codes: &BTreeMap<i32, u64>) -> BTreeMap<String, u64> {
    let mut named = BTreeMap::new();
    for (code, n) in codes {
        let name = status::name(*code).unwrap_or("OTHER");
        *named.entry(name.to_owned()).or_default() += n;
    }
    named
}

/// Error counts by name, most frequent first.
pub fn code_name_order(errors: &BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let mut all: Vec<(&str, u64)> = errors.iter().map(|(c, n)| (c.as_str(), *n)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_and_report() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=99 {
            a.record(Duration::from_millis(i), Duration::from_micros(i * 10), 0);
        }
        b.record(Duration::from_secs(120), Duration::from_millis(1), 14);
        a.merge(&b);
        let report = Report::new(Measured {
            mode: Mode::Unary,
            targets: &["http://127.0.0.1:1".to_owned()],
            rate: Some(50.0),
            concurrency: 4,
            measured: Duration::from_secs(2),
            all: &a,
            missed: 0,
            intervals: Vec::new(),
            interrupted: false,
        });
        assert_eq!((report.requests, report.errors), (100, 1));
        assert_eq!(report.errors_by_code.get("UNAVAILABLE"), Some(&1));
        assert!((report.throughput_rps - 50.0).abs() < 1e-9);
        // Clamped to a minute, not lost.
        assert!(report.latency_us.max >= MAX_LATENCY_US * 999 / 1000);
        assert!(report.latency_us.p50 > 40_000 && report.latency_us.p50 < 60_000);
        assert!(report.uncorrected_latency_us.max < 2_000);
        // The spectrum rises from the minimum to the maximum.
        let spectrum = &report.spectrum;
        assert_eq!(
            spectrum.last().map(|p| p.latency_us),
            Some(report.latency_us.max)
        );
        assert!(
            spectrum
                .windows(2)
                .all(|w| w[0].latency_us <= w[1].latency_us && w[0].percentile < w[1].percentile)
        );
        let mut text = Vec::new();
        report.write_text(&mut text).expect("text");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("UNAVAILABLE") && text.contains("asked 50.0"));
    }
}
