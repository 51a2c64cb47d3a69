//! HDR recording per worker, the merged [`Report`], and its renderings: a
//! text summary table and JSON. The report also judges the run, once, as
//! it is made: it failed when no request succeeded or when it crossed a
//! threshold the user set ([`Report::failures`]). The sentences that say
//! why, and what was missed, are the report's, so every rendering words
//! them alike; so is the order targets are listed in (by address, see
//! [`crate::targets`]).

use std::{collections::BTreeMap, io::Write, time::Duration};

use farm_api::{
    node::{LATENCY_SIGNIFICANT_FIGURES, MAX_LATENCY_US},
    status,
};
use hdrhistogram::Histogram;
use serde::{Serialize, Serializer, ser::SerializeMap};

use crate::{
    config::{Mode, RunConfig, Thresholds},
    progress::human_us,
    targets,
};

/// A latency histogram in microseconds up to [`MAX_LATENCY_US`] (a node's
/// longest delay; larger values are clamped to it), with the precision
/// a node records at, so the two merge.
pub fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, LATENCY_SIGNIFICANT_FIGURES)
        .expect("valid histogram bounds")
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

/// Failed connection attempts to one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectErrors {
    /// Attempts that failed: refused, timed out, or closed (or the stream
    /// ended) before anything was answered.
    pub count: u64,
    /// Connections (streams, in stream mode) that did answer.
    pub established: u64,
    /// What the last failed attempt ran into (`connection refused`, ...).
    pub last_error: String,
}

/// One threshold and how the run measured against it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Check {
    /// The limit set.
    pub limit: f64,
    /// What the run measured (0 when no request completed).
    pub actual: f64,
    /// Whether `actual` is above `limit`.
    pub crossed: bool,
}

impl Check {
    fn new(limit: f64, actual: f64) -> Self {
        Self {
            limit,
            actual,
            crossed: actual > limit,
        }
    }
}

/// The thresholds the user set (`--max-error-rate`, `--max-p99`), checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ThresholdChecks {
    /// Share of the requests sent that failed, from 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Check>,
    /// Corrected p99 latency, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_us: Option<Check>,
}

impl ThresholdChecks {
    fn new(limits: &Thresholds, requests: u64, errors: u64, p99_us: u64) -> Self {
        let error_rate = if requests > 0 {
            errors as f64 / requests as f64
        } else {
            0.0
        };
        Self {
            max_error_rate: limits.max_error_rate.map(|max| Check::new(max, error_rate)),
            max_p99_us: limits
                .max_p99
                .map(|max| Check::new(micros(max) as f64, p99_us as f64)),
        }
    }

    fn is_empty(&self) -> bool {
        self.max_error_rate.is_none() && self.max_p99_us.is_none()
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
    /// Failed connection attempts in this interval.
    pub connect_errors: u64,
    pub throughput_rps: f64,
    /// Latency from the scheduled send time.
    pub latency_us: Percentiles,
    /// Latency from the actual send time.
    pub uncorrected_latency_us: Percentiles,
}

impl Interval {
    pub(crate) fn new(
        second: u64,
        elapsed: Duration,
        length: Duration,
        all: &Recorder,
        connect_errors: u64,
    ) -> Self {
        let secs = length.as_secs_f64();
        Self {
            second,
            elapsed_s: elapsed.as_secs_f64(),
            requests: all.requests,
            errors: all.errors.values().sum(),
            connect_errors,
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
    /// The nodes driven, in address order.
    pub targets: Vec<String>,
    /// Asked rate in requests per second (open loop); `null` in closed loop.
    pub rate: Option<f64>,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// HTTP/2 connections per target.
    pub connections: usize,
    /// `WorkStream`s per connection (stream mode).
    pub streams: usize,
    /// Time asked to measure, in seconds (`duration_s` is what was).
    pub asked_duration_s: f64,
    /// Time sent before measuring, in seconds.
    pub warmup_s: f64,
    /// Request payload size in bytes (`--payload`).
    pub payload_bytes: usize,
    /// Response size asked of the node, in bytes (`--response-bytes`).
    pub response_bytes: u32,
    /// Delay asked of the node before each answer, in milliseconds.
    pub delay_ms: u32,
    /// Share of requests (0 to 1) asked to fail (`--error-rate`), spread
    /// evenly over the run.
    pub asked_error_rate: f64,
    /// gRPC status code of the failures asked for.
    pub fail_code: u32,
    /// Measured time in seconds (shorter than asked when stopped early).
    pub duration_s: f64,
    /// Requests sent and completed, failed ones included. Requests that
    /// could not be sent for want of a connection are not requests.
    pub requests: u64,
    pub errors: u64,
    /// Failed requests by status code name (`UNAVAILABLE`, ...).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Failed connection attempts (refused, timed out, closed before
    /// answering), every target together.
    pub connect_errors: u64,
    /// Failed connection attempts by target, for the targets that had any
    /// (written in address order).
    #[serde(serialize_with = "in_target_order")]
    pub connect_errors_by_target: BTreeMap<String, ConnectErrors>,
    /// Achieved requests per second.
    pub throughput_rps: f64,
    /// Open loop: scheduled requests that were never sent, because all
    /// `concurrency` requests were in flight until the run ended, or
    /// because there was no connection to send them on.
    pub missed: u64,
    /// Open loop: of `missed`, those that had no connection to go out on.
    pub missed_unconnected: u64,
    /// Open loop: of `missed`, those that never had a free slot (not in
    /// the JSON, which has the two above).
    #[serde(skip)]
    missed_waiting: u64,
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
    /// The thresholds set, and whether the run crossed them.
    pub thresholds: ThresholdChecks,
    /// Whether the run succeeded: some request succeeded and no threshold
    /// was crossed (the exit code is 0 then, 1 otherwise).
    pub passed: bool,
    /// Why the run failed, a sentence each (not in the JSON).
    #[serde(skip)]
    failures: Vec<String>,
}

/// What a run measured, before it becomes a [`Report`].
#[derive(Debug)]
pub(crate) struct Measured<'a> {
    /// The run as asked.
    pub config: &'a RunConfig,
    pub measured: Duration,
    pub all: &'a Recorder,
    /// Open loop: scheduled requests that never had a free slot.
    pub missed_waiting: u64,
    /// Open loop: scheduled requests that had no connection to go out on.
    pub missed_unconnected: u64,
    pub connect_errors: BTreeMap<String, ConnectErrors>,
    pub intervals: Vec<Interval>,
    pub interrupted: bool,
}

impl Report {
    pub(crate) fn new(m: Measured<'_>) -> Self {
        let secs = m.measured.as_secs_f64();
        let (all, config) = (m.all, m.config);
        let errors = all.errors.values().sum();
        let latency_us = Percentiles::from(&all.corrected);
        let thresholds =
            ThresholdChecks::new(&config.thresholds, all.requests, errors, latency_us.p99);
        let failures = failures(all.requests, errors, &thresholds, &m.connect_errors);
        let missed = m.missed_waiting + m.missed_unconnected;
        let mut targets = config.targets.clone();
        targets::sort(&mut targets);
        Self {
            mode: config.mode,
            targets,
            rate: config.rate,
            concurrency: config.concurrency,
            connections: config.connections,
            streams: config.streams,
            asked_duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            payload_bytes: config.payload,
            response_bytes: config.response_bytes,
            delay_ms: config.delay_ms,
            asked_error_rate: config.error_rate,
            fail_code: config.fail_code,
            duration_s: secs,
            requests: all.requests,
            errors,
            errors_by_code: by_code_name(&all.errors),
            connect_errors: m.connect_errors.values().map(|e| e.count).sum(),
            connect_errors_by_target: m.connect_errors,
            throughput_rps: if secs > 0.0 {
                all.requests as f64 / secs
            } else {
                0.0
            },
            missed,
            missed_unconnected: m.missed_unconnected,
            missed_waiting: m.missed_waiting,
            kept_up: missed == 0,
            thresholds,
            latency_us,
            uncorrected_latency_us: Percentiles::from(&all.uncorrected),
            spectrum: spectrum(all),
            intervals: m.intervals,
            interrupted: m.interrupted,
            passed: failures.is_empty(),
            failures,
        }
    }

    /// Why the run failed, a sentence each; empty when it succeeded.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// The targets that had connection failures, in address order.
    pub fn connect_errors_in_order(&self) -> Vec<(&str, &ConnectErrors)> {
        in_order(&self.connect_errors_by_target)
    }

    /// Open loop: what was scheduled and never sent, a sentence per
    /// reason; empty when nothing was missed.
    pub(crate) fn missed_sentences(&self) -> Vec<String> {
        let mut sentences = Vec::new();
        if self.missed_waiting > 0 {
            sentences.push(format!(
                "The targets did not keep up: {} scheduled requests were never sent \
                 (all {} in flight); the corrected latency counts the wait of those sent.",
                self.missed_waiting, self.concurrency
            ));
        }
        if self.missed_unconnected > 0 {
            sentences.push(format!(
                "{} scheduled requests were never sent: no connection to send them on.",
                self.missed_unconnected
            ));
        }
        sentences
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
        if self.connect_errors > 0 {
            writeln!(out, "  Connect errors: {}", self.connect_errors)?;
            for (target, errors) in self.connect_errors_in_order() {
                writeln!(out, "    {}", connect_problem(target, errors))?;
            }
        }
        match self.rate {
            Some(rate) => {
                writeln!(
                    out,
                    "  Throughput:  {:.1} req/s (asked {rate:.1} req/s, {:.1}%)",
                    self.throughput_rps,
                    100.0 * self.throughput_rps / rate
                )?;
                for sentence in self.missed_sentences() {
                    writeln!(out, "  {sentence}")?;
                }
            }
            None => writeln!(
                out,
                "  Throughput:  {:.1} req/s (closed loop)",
                self.throughput_rps
            )?,
        }
        writeln!(out)?;
        if self.requests == 0 {
            writeln!(out, "  Latency: none measured (no request completed)")?;
            return self.write_verdict(out);
        }
        writeln!(
            out,
            "  Latency (us)  {:>12} {:>12}",
            "corrected", "uncorrected"
        )?;
        for (name, a, b) in self.latency_rows() {
            writeln!(out, "  {name:<12}  {a:>12} {b:>12}")?;
        }
        self.write_verdict(out)
    }

    /// The thresholds and, when the run failed, why.
    fn write_verdict(&self, out: &mut impl Write) -> std::io::Result<()> {
        let state = |check: &Check| if check.crossed { "CROSSED" } else { "ok" };
        if !self.thresholds.is_empty() {
            writeln!(out)?;
            writeln!(out, "  Thresholds:")?;
        }
        if let Some(check) = &self.thresholds.max_error_rate {
            writeln!(
                out,
                "    error rate {:>9} (limit {:>9})  {}",
                percent(check.actual),
                percent(check.limit),
                state(check)
            )?;
        }
        if let Some(check) = &self.thresholds.max_p99_us {
            writeln!(
                out,
                "    p99        {:>9} (limit {:>9})  {}",
                human_us(check.actual as u64),
                human_us(check.limit as u64),
                state(check)
            )?;
        }
        if !self.failures.is_empty() {
            writeln!(out)?;
        }
        for failure in &self.failures {
            writeln!(out, "FAILED: {failure}")?;
        }
        Ok(())
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }
}

/// Why a run failed, a sentence each; empty when it succeeded: no request
/// succeeded, or a threshold was crossed.
fn failures(
    requests: u64,
    errors: u64,
    thresholds: &ThresholdChecks,
    connect_errors: &BTreeMap<String, ConnectErrors>,
) -> Vec<String> {
    let mut failures = Vec::new();
    if requests == errors {
        failures.push(why_none(requests, connect_errors));
    }
    if let Some(check) = thresholds.max_error_rate
        && check.crossed
    {
        failures.push(format!(
            "--max-error-rate crossed: {} of the requests failed, more than {}",
            percent(check.actual),
            percent(check.limit)
        ));
    }
    if let Some(check) = thresholds.max_p99_us
        && check.crossed
    {
        failures.push(format!(
            "--max-p99 crossed: the p99 latency was {}, above {}",
            human_us(check.actual as u64),
            human_us(check.limit as u64)
        ));
    }
    failures
}

/// Why no request succeeded.
fn why_none(requests: u64, connect_errors: &BTreeMap<String, ConnectErrors>) -> String {
    if requests > 0 {
        return format!("no request succeeded: all {requests} failed");
    }
    if connect_errors.is_empty() {
        return "no request succeeded: none was completed".to_owned();
    }
    let problems: Vec<String> = in_order(connect_errors)
        .into_iter()
        .map(|(target, errors)| connect_problem(target, errors))
        .collect();
    format!("no request could be sent: {}", problems.join("; "))
}

/// The entries of a map by target, in address order.
fn in_order<V>(by_target: &BTreeMap<String, V>) -> Vec<(&str, &V)> {
    let mut entries: Vec<(&str, &V)> = by_target.iter().map(|(t, v)| (t.as_str(), v)).collect();
    entries.sort_by(|a, b| targets::order(a.0, b.0));
    entries
}

/// Writes a map by target as a JSON object whose keys come in address
/// order.
fn in_target_order<S: Serializer, V: Serialize>(
    by_target: &BTreeMap<String, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(by_target.len()))?;
    for (target, value) in in_order(by_target) {
        map.serialize_entry(target, value)?;
    }
    map.end()
}

/// A share as a percentage: `1.25%`.
pub(crate) fn percent(share: f64) -> String {
    format!("{:.2}%", share * 100.0)
}

/// A target's connection failures in a line: `connection refused to
/// 127.0.0.1:50071 (24 attempts, none answered)`.
pub(crate) fn connect_problem(target: &str, errors: &ConnectErrors) -> String {
    let address = target.strip_prefix("http://").unwrap_or(target);
    let answered = match errors.established {
        0 => "none answered".to_owned(),
        n => format!("{n} answered"),
    };
    format!(
        "{} to {address} ({} failed attempt{}, {answered})",
        errors.last_error,
        errors.count,
        if errors.count == 1 { "" } else { "s" }
    )
}

/// A gRPC status code's canonical name (`UNAVAILABLE`), `OTHER` for a
/// number gRPC does not define.
pub(crate) fn code_name(code: i32) -> &'static str {
    status::name(code).unwrap_or("OTHER")
}

/// Counts by gRPC status code, keyed by the code's name instead (`OTHER`
/// for a number gRPC does not define).
pub fn by_code_name(codes: &BTreeMap<i32, u64>) -> BTreeMap<String, u64> {
    let mut named = BTreeMap::new();
    for (code, n) in codes {
        *named.entry(code_name(*code).to_owned()).or_default() += n;
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

    /// A two-second open-loop unary run at 50 req/s against `targets`.
    fn config(targets: &[&str], thresholds: Thresholds) -> RunConfig {
        let targets = targets.iter().map(|t| (*t).to_owned()).collect();
        let mut config = RunConfig::closed(targets, 4, Duration::from_secs(2));
        config.rate = Some(50.0);
        config.thresholds = thresholds;
        config
    }

    /// The report of `config` having recorded `all`.
    fn report_of(
        config: &RunConfig,
        all: &Recorder,
        connect_errors: BTreeMap<String, ConnectErrors>,
    ) -> Report {
        Report::new(Measured {
            config,
            measured: config.duration,
            all,
            missed_waiting: 0,
            missed_unconnected: 0,
            connect_errors,
            intervals: Vec::new(),
            interrupted: false,
        })
    }

    /// A two-second open-loop report of `all` against one target.
    fn report(
        all: &Recorder,
        thresholds: Thresholds,
        connect_errors: BTreeMap<String, ConnectErrors>,
    ) -> Report {
        report_of(
            &config(&["http://127.0.0.1:1"], thresholds),
            all,
            connect_errors,
        )
    }

    fn text(report: &Report) -> String {
        let mut text = Vec::new();
        report.write_text(&mut text).expect("text");
        String::from_utf8(text).expect("utf-8")
    }

    #[test]
    fn thresholds_judge_the_run() {
        // 100 requests, 10 failed, p99 at about 99 ms.
        let mut all = Recorder::default();
        for i in 1..=100 {
            all.record(
                Duration::from_millis(i),
                Duration::from_millis(i),
                if i % 10 == 0 { 14 } else { 0 },
            );
        }
        let check = |max_error_rate: Option<f64>, max_p99_ms: Option<u64>| {
            report(
                &all,
                Thresholds {
                    max_error_rate,
                    max_p99: max_p99_ms.map(Duration::from_millis),
                },
                BTreeMap::new(),
            )
        };
        let held = check(Some(0.1), Some(100));
        assert!(held.passed, "{:?}", held.failures());
        let held_text = text(&held);
        assert!(
            held_text.contains("Thresholds:") && !held_text.contains("FAILED"),
            "{held_text}"
        );

        let rate = check(Some(0.05), None);
        assert!(!rate.passed);
        assert_eq!(
            rate.thresholds.max_error_rate.map(|c| c.crossed),
            Some(true)
        );
        let failures = rate.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("--max-error-rate") && failures[0].contains("10.00%"),
            "{failures:?}"
        );

        let slow = check(None, Some(50));
        assert!(!slow.passed);
        let slow_text = text(&slow);
        assert!(
            slow_text.contains("FAILED: --max-p99 crossed"),
            "{slow_text}"
        );
        assert!(slow_text.contains("CROSSED"), "{slow_text}");
        let json = serde_json::to_value(&slow).expect("json");
        assert_eq!(json["passed"], false);
        assert_eq!(json["thresholds"]["max_p99_us"]["limit"], 50_000.0);
        assert_eq!(json["thresholds"]["max_p99_us"]["crossed"], true);
        assert!(json["thresholds"].get("max_error_rate").is_none(), "{json}");
    }

    #[test]
    fn a_run_with_no_success_fails_and_says_why() {
        let refused = ConnectErrors {
            count: 12,
            established: 0,
            last_error: "connection refused".to_owned(),
        };
        let none = report(
            &Recorder::default(),
            Thresholds::default(),
            [("http://127.0.0.1:1".to_owned(), refused)].into(),
        );
        assert!(!none.passed);
        assert_eq!(none.connect_errors, 12);
        let text = text(&none);
        assert!(text.contains("Connect errors: 12"), "{text}");
        assert!(
            text.contains(
                "FAILED: no request could be sent: \
                 connection refused to 127.0.0.1:1 (12 failed attempts, none answered)"
            ),
            "{text}"
        );

        let mut failing = Recorder::default();
        failing.record(Duration::from_millis(1), Duration::from_millis(1), 14);
        let all_failed = report(&failing, Thresholds::default(), BTreeMap::new());
        assert_eq!(
            all_failed.failures(),
            ["no request succeeded: all 1 failed"]
        );
    }

    #[test]
    fn recorders_merge_and_report() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=99 {
            a.record(Duration::from_millis(i), Duration::from_micros(i * 10), 0);
        }
        b.record(Duration::from_secs(120), Duration::from_millis(1), 14);
        a.merge(&b);
        let report = report(&a, Thresholds::default(), BTreeMap::new());
        assert_eq!((report.requests, report.errors), (100, 1));
        assert!(report.passed, "{:?}", report.failures());
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

    /// The targets of the tests of order: as strings `.10` comes before
    /// `.2` and port 10001 before 7002.
    const MIXED: [&str; 5] = [
        "http://node-a:7000",
        "http://172.21.0.10:7000",
        "http://172.21.0.2:7000",
        "http://127.0.0.1:10001",
        "http://127.0.0.1:7002",
    ];
    const IN_ORDER: [&str; 5] = [
        "http://127.0.0.1:7002",
        "http://127.0.0.1:10001",
        "http://172.21.0.2:7000",
        "http://172.21.0.10:7000",
        "http://node-a:7000",
    ];

    #[test]
    fn targets_are_listed_by_address_everywhere() {
        let refused = |count| ConnectErrors {
            count,
            established: 0,
            last_error: "connection refused".to_owned(),
        };
        let errors: BTreeMap<String, ConnectErrors> = MIXED
            .iter()
            .zip(1..)
            .map(|(t, n)| ((*t).to_owned(), refused(n)))
            .collect();
        let report = report_of(
            &config(&MIXED, Thresholds::default()),
            &Recorder::default(),
            errors,
        );
        assert_eq!(report.targets, IN_ORDER);
        let listed: Vec<&str> = report
            .connect_errors_in_order()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(listed, IN_ORDER);

        // The text's connect errors and its verdict.
        let text = text(&report);
        let bare = IN_ORDER.map(|t| t.trim_start_matches("http://"));
        let at = |haystack: &str, from: usize| -> Vec<usize> {
            bare.iter()
                .map(|t| {
                    haystack[from..]
                        .find(&format!("refused to {t} "))
                        .unwrap_or_else(|| panic!("{t} missing: {text}"))
                })
                .collect()
        };
        let errors_at = text.find("Connect errors:").expect("connect errors");
        let lines = at(&text, errors_at);
        assert!(lines.is_sorted(), "{text}");
        let verdict_at = text.find("FAILED:").expect("verdict");
        assert!(at(&text, verdict_at).is_sorted(), "{text}");

        // The JSON: the list, and the keys of the map as written.
        let mut json = Vec::new();
        report.write_json(&mut json).expect("json");
        let json = String::from_utf8(json).expect("utf-8");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["targets"], serde_json::json!(IN_ORDER));
        let map_at = json.find("connect_errors_by_target").expect("map");
        let keys: Vec<usize> = IN_ORDER
            .iter()
            .map(|t| json[map_at..].find(&format!("\"{t}\": {{")).expect("key"))
            .collect();
        assert!(keys.is_sorted(), "{json}");
    }

    #[test]
    fn the_json_lists_the_runs_parameters() {
        let mut config = config(&["http://127.0.0.1:1"], Thresholds::default());
        config.payload = 512;
        config.response_bytes = 2048;
        config.delay_ms = 20;
        config.error_rate = 0.25;
        config.fail_code = 8;
        config.connections = 2;
        config.streams = 3;
        config.warmup = Duration::from_millis(1500);
        let report = report_of(&config, &Recorder::default(), BTreeMap::new());
        let json = serde_json::to_value(&report).expect("json");
        for (key, want) in [
            ("payload_bytes", serde_json::json!(512)),
            ("response_bytes", serde_json::json!(2048)),
            ("delay_ms", serde_json::json!(20)),
            ("asked_error_rate", serde_json::json!(0.25)),
            ("fail_code", serde_json::json!(8)),
            ("connections", serde_json::json!(2)),
            ("streams", serde_json::json!(3)),
            ("warmup_s", serde_json::json!(1.5)),
            ("asked_duration_s", serde_json::json!(2.0)),
            // Those that were there before keep their names.
            ("mode", serde_json::json!("unary")),
            ("rate", serde_json::json!(50.0)),
            ("concurrency", serde_json::json!(4)),
        ] {
            assert_eq!(json[key], want, "{key}: {json}");
        }
    }
}
