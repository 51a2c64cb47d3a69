//! The report as one self-contained HTML page: the summary, latency by
//! percentile (corrected and uncorrected, on the usual log scale of nines)
//! and the run second by second (throughput, p50 and p99). Inline SVG and
//! CSS only: no script, no external file, so the page opens anywhere and
//! can be attached to a ticket as it is.

use std::{fmt::Write as _, io::Write};

use crate::{
    progress::human_us,
    report::{Report, code_name_order, connect_problem},
};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
/// Where the maximum sits on the percentile axis (past 99.999%).
const MAX_NINES: f64 = 5.5;

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A line chart with linear axes; `x_ticks` places the labels of x.
fn chart(
    title: &str,
    y_label: &str,
    x_range: (f64, f64),
    x_ticks: &[(f64, String)],
    series: &[Series<'_>],
) -> String {
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
    for (value, label) in x_ticks {
        let tx = x(*value);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{tx:.1}" x2="{tx:.1}" y1="{TOP}" y2="{}"/><text x="{tx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            TOP + plot_h,
            TOP + plot_h + 16.0,
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

/// Writes `report` as an HTML page.
pub fn write_html(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let mode = report.mode.name();
    let asked = match report.rate {
        Some(rate) => format!("open loop at {rate:.1} req/s"),
        None => format!("closed loop, {} in flight", report.concurrency),
    };
    let mut rows = String::new();
    let mut row = |name: &str, value: String| {
        let _ = write!(
            rows,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(&value)
        );
    };
    row("Mode", format!("{mode}, {asked}"));
    row("Targets", report.targets.join(", "));
    row("Duration", format!("{:.2} s", report.duration_s));
    row("Requests", report.requests.to_string());
    row("Throughput", format!("{:.1} req/s", report.throughput_rps));
    row("Errors", report.errors.to_string());
    for (code, n) in code_name_order(&report.errors_by_code) {
        row(&format!("  {code}"), n.to_string());
    }
    if report.connect_errors > 0 {
        row("Connect errors", report.connect_errors.to_string());
        for (target, errors) in &report.connect_errors_by_target {
            row("", connect_problem(target, errors));
        }
    }
    for sentence in report.missed_sentences() {
        row("Missed", sentence);
    }
    if report.interrupted {
        row("Stopped early", "partial results".to_owned());
    }
    for failure in report.failures() {
        row("FAILED", failure.clone());
    }
    let mut latency =
        String::from("<table><tr><th>Latency</th><th>corrected</th><th>uncorrected</th></tr>");
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
        (0.0, MAX_NINES),
        &[
            (0.0, "0%".to_owned()),
            (1.0, "90%".to_owned()),
            (2.0, "99%".to_owned()),
            (3.0, "99.9%".to_owned()),
            (4.0, "99.99%".to_owned()),
            (5.0, "99.999%".to_owned()),
            (MAX_NINES, "max".to_owned()),
        ],
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
    let throughput = chart(
        "Throughput, second by second",
        "requests per second",
        (0.0, end),
        &time_ticks,
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
        (0.0, end),
        &time_ticks,
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
body {{ font: 14px system-ui, sans-serif; margin: 2em auto; max-width: 800px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 2px 12px 2px 0; white-space: pre; }}
td {{ font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.5em 0; }}
figcaption {{ font-weight: 600; margin-bottom: .3em; }}
svg {{ width: 100%; height: auto; font-size: 11px; }}
.grid {{ stroke: #ddd; stroke-width: 1; }}
</style></head><body>
<h1>loadgen report</h1>
<table>{rows}</table>
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
