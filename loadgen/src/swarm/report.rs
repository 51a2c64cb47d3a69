//! A swarm's result, [`SwarmReport`], and its renderings: the summary
//! text, the JSON scripts parse, and the one-line [`SwarmProgress`].

use std::{collections::BTreeMap, fmt, io::Write, time::Duration};

use serde::Serialize;

use super::{Phase, SwarmProgress};
use crate::report::Percentiles;

/// The result of a swarm.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    /// Nodes asked for.
    pub nodes: usize,
    /// Nodes registered.
    pub registered: u64,
    /// HTTP/2 connections used.
    pub connections: usize,
    /// Heartbeat interval of every node.
    pub heartbeat_interval: Duration,
    /// Time from the start to the last registration answered.
    pub ramp_s: f64,
    /// Measured time in seconds (shorter than asked when stopped early).
    pub duration_s: f64,
    /// Register latency, microseconds.
    pub register_us: Percentiles,
    /// Failed registrations by status code name.
    pub register_errors: BTreeMap<String, u64>,
    /// Heartbeats sent while measuring.
    pub heartbeats_sent: u64,
    /// Of those, acknowledged.
    pub heartbeats_acked: u64,
    /// Beats not sent because a stream's queue was full.
    pub heartbeats_skipped: u64,
    /// Heartbeat streams that failed to open or broke, by status code name.
    pub stream_breaks: BTreeMap<String, u64>,
    /// Heartbeat round trip while measuring, microseconds.
    pub heartbeat_rtt_us: Percentiles,
    /// Heartbeat round trip during the ramp, microseconds.
    pub ramp_heartbeat_rtt_us: Percentiles,
    /// Configurations pushed to the simulated nodes.
    pub config_pushes: u64,
    /// Nodes deregistered at the end.
    pub deregistered: u64,
    /// Nodes the control plane had dropped by itself before their turn to
    /// be deregistered came (silent past its `--max-age`).
    pub already_gone: u64,
    /// Nodes whose deregistration failed or did not finish in time.
    pub left_registered: u64,
    /// Failed deregistrations by status code name.
    pub deregister_errors: BTreeMap<String, u64>,
    /// Whether the swarm was stopped before its duration was up.
    pub interrupted: bool,
}

/// Percentiles as the JSON report carries them.
#[derive(Debug, Serialize)]
struct JsonPercentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl From<&Percentiles> for JsonPercentiles {
    fn from(p: &Percentiles) -> Self {
        Self {
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
        }
    }
}

/// The JSON report: exactly these fields, which scripts parse.
#[derive(Debug, Serialize)]
struct JsonReport {
    nodes: usize,
    registered: u64,
    heartbeats: u64,
    errors: u64,
    errors_by_code: BTreeMap<String, u64>,
    heartbeat_rtt_us: JsonPercentiles,
    register_us: JsonPercentiles,
    config_pushes: u64,
    registration_s: f64,
    duration_s: f64,
    interrupted: bool,
}

impl SwarmReport {
    /// Failed calls of every phase by status code name.
    pub fn errors_by_code(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for map in [
            &self.register_errors,
            &self.stream_breaks,
            &self.deregister_errors,
        ] {
            for (code, n) in map {
                *all.entry(code.clone()).or_default() += n;
            }
        }
        all
    }

    /// Failed registrations, heartbeat streams and deregistrations.
    pub fn errors(&self) -> u64 {
        self.errors_by_code().values().sum()
    }

    /// Writes the summary.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "Swarm ({} nodes, heartbeat every {:?}, {} connections)",
            self.nodes, self.heartbeat_interval, self.connections
        )?;
        if self.interrupted {
            writeln!(out, "  (stopped early: partial results)")?;
        }
        writeln!(
            out,
            "  Registered:        {} of {} in {:.2} s",
            self.registered, self.nodes, self.ramp_s
        )?;
        let codes = |out: &mut dyn Write, map: &BTreeMap<String, u64>| {
            map.iter()
                .try_for_each(|(code, n)| writeln!(out, "    {code:<20} {n}"))
        };
        let failed: u64 = self.register_errors.values().sum();
        writeln!(out, "  Register errors:   {failed}")?;
        codes(out, &self.register_errors)?;
        writeln!(out, "  Measured:          {:.2} s", self.duration_s)?;
        writeln!(
            out,
            "  Heartbeats:        {} sent, {} acknowledged ({:.1}/s), {} skipped",
            self.heartbeats_sent,
            self.heartbeats_acked,
            if self.duration_s > 0.0 {
                self.heartbeats_acked as f64 / self.duration_s
            } else {
                0.0
            },
            self.heartbeats_skipped
        )?;
        let breaks: u64 = self.stream_breaks.values().sum();
        writeln!(out, "  Stream breaks:     {breaks}")?;
        codes(out, &self.stream_breaks)?;
        writeln!(out, "  Config pushes:     {}", self.config_pushes)?;
        writeln!(
            out,
            "  Deregistered:      {} ({} already dropped by the control plane, {} left registered)",
            self.deregistered, self.already_gone, self.left_registered
        )?;
        codes(out, &self.deregister_errors)?;
        writeln!(out)?;
        writeln!(
            out,
            "  Latency (ms)  {:>12} {:>12} {:>12}",
            "heartbeat", "(ramp)", "register"
        )?;
        let (h, r, g) = (
            &self.heartbeat_rtt_us,
            &self.ramp_heartbeat_rtt_us,
            &self.register_us,
        );
        let ms = |us: u64| us as f64 / 1e3;
        for (name, a, b, c) in [
            ("p50", h.p50, r.p50, g.p50),
            ("p90", h.p90, r.p90, g.p90),
            ("p99", h.p99, r.p99, g.p99),
            ("p99.9", h.p999, r.p999, g.p999),
            ("max", h.max, r.max, g.max),
        ] {
            writeln!(
                out,
                "  {name:<12}  {:>12.3} {:>12.3} {:>12.3}",
                ms(a),
                ms(b),
                ms(c)
            )?;
        }
        Ok(())
    }

    /// Writes the report as pretty JSON with the fields scripts rely on:
    /// `nodes`, `registered`, `heartbeats` (acknowledged), `errors`,
    /// `errors_by_code`, `heartbeat_rtt_us`, `register_us`, `config_pushes`,
    /// `registration_s` (from the start to the last registration answered),
    /// `duration_s` (measured), `interrupted`.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        let errors_by_code = self.errors_by_code();
        let json = JsonReport {
            nodes: self.nodes,
            registered: self.registered,
            heartbeats: self.heartbeats_acked,
            errors: errors_by_code.values().sum(),
            errors_by_code,
            heartbeat_rtt_us: JsonPercentiles::from(&self.heartbeat_rtt_us),
            register_us: JsonPercentiles::from(&self.register_us),
            config_pushes: self.config_pushes,
            registration_s: self.ramp_s,
            duration_s: self.duration_s,
            interrupted: self.interrupted,
        };
        serde_json::to_writer_pretty(&mut *out, &json)?;
        writeln!(out)
    }
}

impl fmt::Display for SwarmProgress {
    /// `[  12s] measure registered 1000/1000  heartbeats 998/s  errors 0  p99 1.23 ms`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs();
        if self.phase == Phase::Cleanup {
            return write!(
                f,
                "[{seconds:>4}s] cleanup deregistered {}/{}  errors {}",
                self.deregistered, self.registered, self.errors
            );
        }
        write!(
            f,
            "[{seconds:>4}s] {:<7} registered {}/{}  heartbeats {}/s  errors {}  p99 {}",
            if self.phase == Phase::Measure {
                "measure"
            } else {
                "ramp"
            },
            self.registered,
            self.nodes,
            self.heartbeats,
            self.errors,
            self.p99_us
                .map_or_else(|| "-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1e3)),
        )
    }
}
