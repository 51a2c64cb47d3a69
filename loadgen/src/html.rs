//! The report as one self-contained HTML page: the verdict first (passed,
//! or why it failed), then the run as asked (targets in address order, a
//! wrapping list folded under its count when long; mode, load, duration,
//! payload and response sizes, what the node was asked for, thresholds),
//! the results, latency by percentile (corrected and uncorrected, on the
//! usual log scale of nines) and the run second by second (throughput, p50
//! and p99, the end of the measured time marked when answers came after
//! it). Inline SVG and CSS only: no script, no external file, so the page
//! opens anywhere and can be attached to a ticket as it is.

use std::{fmt::Write as _, io::Write};

use crate::{
    config::Mode,
    progress::human_us,
    report::{Report, code_name, code_name_order, connect_problem, percent},
};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
/// Where the maximum sits on the percentile axis (past 99.999%).
const MAX_NINES: f64 = 5.5;
/// Series of at most this many points get a dot on each.
const MARKED_POINTS: usize = 30;

/// The x axis of a chart.
struct XAxis<'a> {
    /// The values at its two ends.
    range: (f64, f64),
    /// Where its labels go, and what they say.
    ticks: &'a [(f64, String)],
    /// A value to mark with a dashed line and a word.
    mark: Option<(f64, &'a str)>,
}

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A line chart with linear axes.
fn chart(title: &str, y_label: &str, x_axis: &XAxis<'_>, series: &[Series<'_>]) -> String {
    let x_range = x_axis.range;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let (step, y_top) = nice_axis(y_max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span = (x_range.1 - x_range.0).max(f64::EPSILON);
    let x = |v: f64| LEFT + (v - x_range.0) / span * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_top * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
        escape(title),
        escape(title)
    );
    let mut tick = 0.0;
    while tick <= y_top + step / 2.0 {
        let ty = y(tick);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{ty:.1}" y2="{ty:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            ty + 4.0,
            trim(tick)
        );
        tick += step;
    }
    for (value, label) in x_axis.ticks {
        let tx = x(*value);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{tx:.1}" x2="{tx:.1}" y1="{TOP}" y2="{}"/><text x="{tx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            escape(label)
        );
    }
    if let Some((value, label)) = x_axis.mark {
        let mx = x(value);
        let _ = write!(
            svg,
            r#"<line class="mark" x1="{mx:.1}" x2="{mx:.1}" y1="{TOP}" y2="{}"/><text x="{:.1}" y="{}">{}</text>"#,
            TOP + plot_h,
            mx + 4.0,
            TOP + 12.0,
            escape(label)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.color,
            points.join(" ")
        );
        // A few points read better as dots on the line (a short run has
        // two or three seconds).
        if s.points.len() <= MARKED_POINTS {
            for (px, py) in &s.points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    x(*px),
                    y(*py),
                    s.color
                );
            }
        }
        let lx = LEFT + 10.0 + 150.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="4" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            HEIGHT - 10.0,
            s.color,
            lx + 16.0,
            HEIGHT - 5.0,
            escape(s.name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A step of 1, 2 or 5 times a power of ten giving about five ticks, and
/// the top of the axis.
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 1.0);
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    (step, (max / step).ceil() * step)
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The position of percentile `p` on the axis of nines.
fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        MAX_NINES
    } else {
        (-(1.0 - p / 100.0).log10()).min(MAX_NINES)
    }
}

/// Targets listed in the open; more are folded into a `<details>` that
/// names their count.
const TARGETS_SHOWN: usize = 8;

/// The rows of a two-column table: a name and its value.
#[derive(Default)]
struct Rows(String);

impl Rows {
    /// A row whose value is plain text.
    fn text(&mut self, name: &str, value: &str) {
        self.html(name, &escape(value));
    }

    /// A row whose value is HTML made here.
    fn html(&mut self, name: &str, value: &str) {
        let _ = write!(self.0, "<tr><th>{}</th><td>{value}</td></tr>", escape(name));
    }

    /// A row detailing the one above: a value alone.
    fn sub(&mut self, value: &str) {
        self.text("", value);
    }
}

/// The targets as a list that wraps, without the `http://` every one has;
/// past [`TARGETS_SHOWN`], folded under their count.
fn targets_html(targets: &[String]) -> String {
    let mut list = String::from(r#"<ul class="targets">"#);
    for target in targets {
        let shown = target.strip_prefix("http://").unwrap_or(target);
        let _ = write!(list, "<li>{}</li>", escape(shown));
    }
    list.push_str("</ul>");
    if targets.len() <= TARGETS_SHOWN {
        return list;
    }
    format!(
        "<details><summary>{} targets</summary>{list}</details>",
        targets.len()
    )
}

/// A size in bytes, exact, with KiB or MiB beside it when large.
fn size(bytes: u64) -> String {
    let unit = |factor: f64, name: &str| {
        let value = format!("{:.1}", bytes as f64 / factor);
        format!(" ({} {name})", value.trim_end_matches(".0"))
    };
    let approx = match bytes {
        0..1024 => String::new(),
        1024..1_048_576 => unit(1024.0, "KiB"),
        _ => unit(1_048_576.0, "MiB"),
    };
    let plural = if bytes == 1 { "" } else { "s" };
    format!("{bytes} byte{plural}{approx}")
}

/// What the run was asked to do.
fn run_rows(report: &Report) -> String {
    let mut rows = Rows::default();
    rows.html("Targets", &targets_html(&report.targets));
    let per = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mode = match report.mode {
        Mode::Unary => format!(
            "unary: a Work call per request, {} per target",
            per(report.connections, "connection")
        ),
        Mode::Stream => format!(
            "stream: requests as WorkStream messages, {} per target, {} each",
            per(report.connections, "connection"),
            per(report.streams, "stream")
        ),
    };
    rows.text("Mode", &mode);
    let load = match report.rate {
        Some(rate) => format!(
            "open loop at {rate:.1} req/s, at most {} in flight",
            report.concurrency
        ),
        None => format!("closed loop, {} in flight", report.concurrency),
    };
    rows.text("Load", &load);
    let mut duration = format!("{} s", trim(report.asked_duration_s));
    if report.warmup_s > 0.0 {
        let _ = write!(duration, " after {} s of warm-up", trim(report.warmup_s));
    }
    rows.text("Duration", &duration);
    rows.text(
        "Payload",
        &format!("{} per request", size(report.payload_bytes as u64)),
    );
    rows.text(
        "Response",
        &format!(
            "{} asked per answer",
            size(u64::from(report.response_bytes))
        ),
    );
    if report.delay_ms > 0 {
        rows.text(
            "Delay",
            &format!("{} ms asked before each answer", report.delay_ms),
        );
    }
    if report.asked_error_rate > 0.0 {
        let code = i32::try_from(report.fail_code).map_or("OTHER", code_name);
        rows.text(
            "Failures",
            &format!(
                "{} of requests asked to fail with {code} ({})",
                percent(report.asked_error_rate),
                report.fail_code
            ),
        );
    }
    let mut limits = Vec::new();
    if let Some(check) = &report.thresholds.max_error_rate {
        limits.push(format!("error rate at most {}", percent(check.limit)));
    }
    if let Some(check) = &report.thresholds.max_p99_us {
        limits.push(format!("p99 at most {}", human_us(check.limit as u64)));
    }
    if !limits.is_empty() {
        rows.text("Thresholds", &limits.join(", "));
    }
    rows.0
}

/// What the run measured.
fn result_rows(report: &Report) -> String {
    let mut rows = Rows::default();
    let mut measured = format!("{:.2} s", report.duration_s);
    if report.interrupted {
        measured.push_str(" (stopped early: partial results)");
    }
    rows.text("Measured", &measured);
    rows.text("Requests", &report.requests.to_string());
    let throughput = match report.rate {
        Some(rate) if rate > 0.0 => format!(
            "{:.1} req/s ({:.1}% of the {rate:.1} asked)",
            report.throughput_rps,
            100.0 * report.throughput_rps / rate
        ),
        _ => format!("{:.1} req/s", report.throughput_rps),
    };
    rows.text("Throughput", &throughput);
    rows.text("Errors", &report.errors.to_string());
    for (code, n) in code_name_order(&report.errors_by_code) {
        rows.sub(&format!("{code}: {n}"));
    }
    if report.connect_errors > 0 {
        rows.text("Connect errors", &report.connect_errors.to_string());
        for (target, errors) in report.connect_errors_in_order() {
            rows.sub(&connect_problem(target, errors));
        }
    }
    for sentence in report.missed_sentences() {
        rows.text("Missed", &sentence);
    }
    let state = |crossed: bool| if crossed { "crossed" } else { "held" };
    if let Some(check) = &report.thresholds.max_error_rate {
        rows.text(
            "Error rate",
            &format!(
                "{} (limit {}: {})",
                percent(check.actual),
                percent(check.limit),
                state(check.crossed)
            ),
        );
    }
    if let Some(check) = &report.thresholds.max_p99_us {
        rows.text(
            "p99",
            &format!(
                "{} (limit {}: {})",
                human_us(check.actual as u64),
                human_us(check.limit as u64),
                state(check.crossed)
            ),
        );
    }
    rows.0
}

/// Whether the run succeeded, and if not, why: what a reader looks for
/// first.
fn verdict(report: &Report) -> String {
    if report.passed {
        return r#"<p class="verdict passed">Passed</p>"#.to_owned();
    }
    let mut html = String::from(r#"<div class="verdict failed"><p>FAILED</p><ul>"#);
    for failure in report.failures() {
        let _ = write!(html, "<li>{}</li>", escape(failure));
    }
    html.push_str("</ul></div>");
    html
}

/// Writes `report` as an HTML page.
pub fn write_html(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let verdict = verdict(report);
    let run = run_rows(report);
    let results = result_rows(report);
    let mut latency = String::from(
        r#"<table class="numbers"><tr><th>Latency</th><th>corrected</th><th>uncorrected</th></tr>"#,
    );
    for (name, a, b) in report.latency_rows() {
        let _ = write!(
            latency,
            "<tr><th>{name}</th><td>{}</td><td>{}</td></tr>",
            escape(&human_us(a)),
            escape(&human_us(b))
        );
    }
    latency.push_str("</table>");
    let ms = |us: u64| us as f64 / 1000.0;
    let spectrum = chart(
        "Latency by percentile",
        "latency (ms)",
        &XAxis {
            range: (0.0, MAX_NINES),
            ticks: &[
                (0.0, "0%".to_owned()),
                (1.0, "90%".to_owned()),
                (2.0, "99%".to_owned()),
                (3.0, "99.9%".to_owned()),
                (4.0, "99.99%".to_owned()),
                (5.0, "99.999%".to_owned()),
                (MAX_NINES, "max".to_owned()),
            ],
            mark: None,
        },
        &[
            Series {
                name: "corrected",
                color: "#c0392b",
                points: report
                    .spectrum
                    .iter()
                    .map(|p| (nines(p.percentile), ms(p.latency_us)))
                    .collect(),
            },
            Series {
                name: "uncorrected",
                color: "#2e86c1",
                points: report
                    .spectrum
                    .iter()
                    .map(|p| (nines(p.percentile), ms(p.uncorrected_latency_us)))
                    .collect(),
            },
        ],
    );
    let end = report
        .intervals
        .last()
        .map_or(1.0, |i| i.elapsed_s.max(1.0));
    let step = nice_axis(end).0.max(1.0);
    let time_ticks: Vec<(f64, String)> = (0..=((end / step) as u64))
        .map(|k| (k as f64 * step, format!("{} s", trim(k as f64 * step))))
        .collect();
    // Requests in flight at the end are waited for: their answers fall
    // after the measured time, which the line marks.
    let time = XAxis {
        range: (0.0, end),
        ticks: &time_ticks,
        mark: (end > report.duration_s + 0.05).then_some((report.duration_s, "end")),
    };
    let throughput = chart(
        "Throughput, second by second",
        "requests per second",
        &time,
        &[Series {
            name: "throughput",
            color: "#117a65",
            points: report
                .intervals
                .iter()
                .map(|i| (i.elapsed_s, i.throughput_rps))
                .collect(),
        }],
    );
    let timeline = chart(
        "Latency, second by second (corrected)",
        "latency (ms)",
        &time,
        &[
            Series {
                name: "p50",
                color: "#2e86c1",
                points: report
                    .intervals
                    .iter()
                    .map(|i| (i.elapsed_s, ms(i.latency_us.p50)))
                    .collect(),
            },
            Series {
                name: "p99",
                color: "#c0392b",
                points: report
                    .intervals
                    .iter()
                    .map(|i| (i.elapsed_s, ms(i.latency_us.p99)))
                    .collect(),
            },
        ],
    );
    write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>loadgen report</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 800px; color: #222; }}
h2 {{ font-size: 1.1em; margin: 1.5em 0 .3em; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; }}
th, td {{ text-align: left; vertical-align: top; padding: 2px 12px 2px 0; }}
th {{ white-space: nowrap; }}
td {{ font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }}
table.facts {{ width: 100%; table-layout: fixed; }}
table.facts th {{ width: 9em; }}
table.numbers td, table.numbers tr:first-child th + th {{ text-align: right; }}
ul.targets {{ list-style: none; margin: 0; padding: 0; display: grid; grid-template-columns: repeat(auto-fill, minmax(13em, 1fr)); gap: 0 1em; }}
ul.targets li {{ white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
details summary {{ cursor: pointer; }}
details[open] summary {{ margin-bottom: .3em; }}
.verdict {{ padding: .4em .8em; border-radius: 4px; font-weight: 600; }}
.verdict p {{ margin: 0; }}
.verdict ul {{ margin: .3em 0 0; padding-left: 1.2em; font-weight: normal; }}
.passed {{ background: #e8f6ef; color: #0e6245; }}
.failed {{ background: #fdecea; color: #8a1c12; }}
figure {{ margin: 1.5em 0; }}
figcaption {{ font-weight: 600; margin-bottom: .3em; }}
svg {{ width: 100%; height: auto; font-size: 11px; }}
.grid {{ stroke: #ddd; stroke-width: 1; }}
.mark {{ stroke: #888; stroke-width: 1; stroke-dasharray: 4 3; }}
</style></head><body>
<h1>loadgen report</h1>
{verdict}
<h2>Run</h2>
<table class="facts">{run}</table>
<h2>Results</h2>
<table class="facts">{results}</table>
{latency}
{spectrum}
{throughput}
{timeline}
<p>Corrected latency is measured from each request's scheduled send time, so
waiting behind a slow request counts; uncorrected latency from the moment it
was actually sent.</p>
</body></html>
"#
    )
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::{
        RunConfig,
        report::{Interval, Measured, Recorder},
    };

    /// The page of a closed-loop run of `config` in which every request
    /// took 1 ms, with `intervals`.
    fn page(config: &RunConfig, intervals: Vec<Interval>) -> String {
        let mut all = Recorder::default();
        for _ in 0..100 {
            all.record(Duration::from_millis(1), Duration::from_millis(1), 0);
        }
        let report = Report::new(Measured {
            config,
            measured: config.duration,
            all: &all,
            missed_waiting: 0,
            missed_unconnected: 0,
            connect_errors: BTreeMap::new(),
            intervals,
            interrupted: false,
        });
        let mut html = Vec::new();
        write_html(&report, &mut html).expect("html");
        String::from_utf8(html).expect("utf-8")
    }

    fn run_of(targets: Vec<String>) -> RunConfig {
        RunConfig::closed(targets, 4, Duration::from_secs(2))
    }

    /// The items of the targets list, in the page's order.
    fn listed(page: &str) -> Vec<&str> {
        let list = page
            .split(r#"<ul class="targets">"#)
            .nth(1)
            .and_then(|rest| rest.split("</ul>").next())
            .unwrap_or_else(|| panic!("no list of targets: {page}"));
        list.split("<li>")
            .skip(1)
            .map(|item| item.trim_end_matches("</li>"))
            .collect()
    }

    #[test]
    fn many_targets_wrap_in_address_order_folded_under_their_count() {
        // 50 targets on ten addresses of 172.21.0.0/24, five ports each,
        // given in an order that is neither numeric nor textual.
        let targets: Vec<String> = (0..50)
            .map(|i| {
                let (ip, port) = (2 + (i * 7) % 10, 7000 + 1000 * ((i / 10) * 3 % 5));
                format!("http://172.21.0.{ip}:{port}")
            })
            .collect();
        let page = page(&run_of(targets), Vec::new());
        assert!(
            page.contains("<details><summary>50 targets</summary><ul class=\"targets\">"),
            "{page}"
        );
        // A grid of items that wraps, never one line of text.
        assert!(
            page.contains(
                "ul.targets {{ list-style: none;"
                    .replace("{{", "{")
                    .as_str()
            ) && page.contains("grid-template-columns: repeat(auto-fill"),
            "{page}"
        );
        assert!(!page.contains("white-space: pre"), "{page}");
        assert!(!page.contains("172.21.0.2:7000, "), "{page}");
        let items = listed(&page);
        assert_eq!(items.len(), 50);
        // By IP as numbers (.2 before .10), then port.
        let mut want: Vec<(u8, u16)> = (2..=11)
            .flat_map(|ip| (0..5).map(move |p| (ip, 7000 + 1000 * p)))
            .collect();
        want.sort();
        let want: Vec<String> = want
            .into_iter()
            .map(|(ip, port)| format!("172.21.0.{ip}:{port}"))
            .collect();
        assert_eq!(items, want);
        assert_eq!(
            items[..6],
            [
                "172.21.0.2:7000",
                "172.21.0.2:8000",
                "172.21.0.2:9000",
                "172.21.0.2:10000",
                "172.21.0.2:11000",
                "172.21.0.3:7000"
            ]
        );
    }

    #[test]
    fn a_few_targets_are_listed_in_the_open() {
        let targets = [
            "http://10.0.0.10:1",
            "http://node-a:7000",
            "http://10.0.0.9:1",
        ];
        let page = page(&run_of(targets.map(String::from).to_vec()), Vec::new());
        assert!(!page.contains("<details>"), "{page}");
        assert_eq!(listed(&page), ["10.0.0.9:1", "10.0.0.10:1", "node-a:7000"]);
    }

    #[test]
    fn sizes_and_what_the_node_was_asked_are_shown_with_the_run() {
        let mut config = run_of(vec!["http://127.0.0.1:1".to_owned()]);
        config.payload = 512;
        config.response_bytes = 2048;
        config.delay_ms = 20;
        config.error_rate = 0.25;
        config.fail_code = 8;
        let asked = page(&config, Vec::new());
        for row in [
            "<tr><th>Payload</th><td>512 bytes per request</td></tr>",
            "<tr><th>Response</th><td>2048 bytes (2 KiB) asked per answer</td></tr>",
            "<tr><th>Delay</th><td>20 ms asked before each answer</td></tr>",
            "<tr><th>Failures</th><td>25.00% of requests asked to fail with RESOURCE_EXHAUSTED (8)</td></tr>",
        ] {
            assert!(asked.contains(row), "{row} missing: {asked}");
        }
        let plain = page(&run_of(vec!["http://127.0.0.1:1".to_owned()]), Vec::new());
        assert!(
            plain.contains("<td>0 bytes per request</td>")
                && plain.contains("<td>0 bytes asked per answer</td>"),
            "{plain}"
        );
        assert!(!plain.contains("<th>Delay</th>") && !plain.contains("<th>Failures</th>"));
    }

    #[test]
    fn sizes_read_in_bytes_and_binary_units() {
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(1), "1 byte");
        assert_eq!(size(1023), "1023 bytes");
        assert_eq!(size(100_000), "100000 bytes (97.7 KiB)");
        assert_eq!(size(1 << 20), "1048576 bytes (1 MiB)");
    }

    #[test]
    fn answers_after_the_measured_time_are_marked() {
        let config = run_of(vec!["http://127.0.0.1:1".to_owned()]);
        let second = |n: u64, at: f64| {
            Interval::new(
                n,
                Duration::from_secs_f64(at),
                Duration::from_secs(1),
                &Recorder::default(),
                0,
            )
        };
        let within = page(&config, vec![second(1, 1.0), second(2, 2.0)]);
        assert!(!within.contains(r#"class="mark""#), "{within}");
        let after = page(
            &config,
            vec![second(1, 1.0), second(2, 2.0), second(3, 3.0)],
        );
        // On both time charts, at 2 s of 3.
        assert_eq!(after.matches(r#"class="mark""#).count(), 2, "{after}");
    }
}
