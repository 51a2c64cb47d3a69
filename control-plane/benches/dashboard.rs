//! The dashboard at scale, in chromium, against a release control plane
//! with a `loadgen swarm --samples` of simulated nodes (each reporting a
//! simulated load once a second):
//!
//! - page load: from navigation to the first draw of the node grid showing
//!   every node with its load, at 50 and at 10,000 nodes, for the first
//!   dashboard on a farm nobody watched (its metrics feed starts with it)
//!   and for a page opened again right after one closed (a reload);
//! - updates: main-thread milliseconds per 1 Hz metrics snapshot at 10,000
//!   nodes, median and p99: decoding the snapshot (timed by decoding the
//!   latest again in the page), taking it in, and drawing the heat map;
//! - the control plane's CPU (percent of one core, from `/proc/PID/stat`)
//!   with no dashboard, one and twenty open at 10,000 nodes, and the ratio
//!   of twenty to one.
//!
//! The page fills `window.__farmBench` (web/src/feeds.ts) only when its URL
//! has `?bench`. Each figure is the median over the rounds. Everything runs
//! on 127.0.0.1, and every process started is stopped at the end.
//!
//! Settings (environment):
//! - `FARM_BENCH_ROUNDS` (3): rounds of each figure;
//! - `FARM_BENCH_NODES` (10000): the large swarm;
//! - `FARM_BENCH_SMALL` (50): the small swarm;
//! - `FARM_BENCH_SECS` (10): seconds of each update and CPU window;
//! - `FARM_BENCH_PAGES` (20): dashboards of the "many" CPU figure;
//! - `FARM_BENCH_SETTLE` (10): seconds a farm runs, once every node
//!   reports, before anything is measured (registering 10,000 nodes leaves
//!   writes behind it; a page opened on a running farm does not meet them).
//!
//! Page loads take at least five rounds: one page load is noisy.
//!
//! Run with `cargo build --release && cargo bench -p control-plane --bench dashboard`.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use farm_api::v1::GetFarmMetricsRequest;
use farm_testkit::{
    ControlPlaneProcess, binary,
    browser::{self, Browser, Page, PageOptions},
    env_or,
    process::{ChildGuard, cpu_seconds},
};
use serde_json::{Value, json};

/// Longest a swarm may take to have every node reporting.
const RAMP: Duration = Duration::from_secs(240);
/// Longest a page may take to show its full grid.
const PAGE_LIMIT: Duration = Duration::from_secs(60);

struct Settings {
    rounds: usize,
    nodes: usize,
    small: usize,
    secs: Duration,
    pages: usize,
    settle: Duration,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rounds: env_or("FARM_BENCH_ROUNDS", 3usize).max(1),
            nodes: env_or("FARM_BENCH_NODES", 10_000usize).max(1),
            small: env_or("FARM_BENCH_SMALL", 50usize).max(1),
            secs: Duration::from_secs(env_or("FARM_BENCH_SECS", 10u64).max(2)),
            pages: env_or("FARM_BENCH_PAGES", 20usize).max(2),
            settle: Duration::from_secs(env_or("FARM_BENCH_SETTLE", 10u64)),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let at = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

/// Percent of one core `pid` used over `window`.
async fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    (cpu_seconds(pid) - before) / started.elapsed().as_secs_f64() * 100.0
}

/// A release control plane with room for every node in its default group,
/// and a swarm of `nodes` reporting samples, every one of them reporting
/// for `settle`.
async fn farm_of(nodes: usize, dir: &Path, settle: Duration) -> (ControlPlaneProcess, ChildGuard) {
    let control_plane = ControlPlaneProcess::measured(dir, 0)
        .flags(&["--group-capacity", "1000000"])
        .start()
        .await;
    let swarm = ChildGuard::spawn(
        Command::new(binary("loadgen"))
            .args(["swarm", "--control-plane", &control_plane.url()])
            .args(["--nodes", &nodes.to_string(), "--samples", "--quiet"])
            .args(["--duration", "3600s", "--ramp-timeout", "200s"])
            .stdout(Stdio::null()),
        "loadgen swarm",
    );
    let started = Instant::now();
    loop {
        let farm = control_plane
            .metrics()
            .get_farm_metrics(GetFarmMetricsRequest::default())
            .await
            .expect("GetFarmMetrics")
            .into_inner();
        if farm.reporting_nodes as usize >= nodes {
            break;
        }
        assert!(
            started.elapsed() < RAMP,
            "{} of {nodes} swarm nodes reporting after {RAMP:?}",
            farm.reporting_nodes
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{nodes} swarm nodes reporting after {:?}",
        started.elapsed()
    );
    tokio::time::sleep(settle).await;
    (control_plane, swarm)
}

/// The page's benchmark figures (`window.__farmBench`).
async fn figures(page: &Page<'_>) -> Value {
    page.evaluate(
        "() => { const b = window.__farmBench; return b ? { add: b.add, draw: b.draw, \
         fullGridAt: b.fullGridAt, decode: b.decode(21) } : null; }",
        json!(null),
    )
    .await
}

/// When a page was ready, in milliseconds from navigation.
#[derive(Debug, Clone, Copy)]
struct Load {
    /// The membership complete.
    synced: f64,
    /// The first metrics snapshot taken in.
    metrics: f64,
    /// The grid full.
    full: f64,
}

/// Opens the grid of `url` in a new page and waits until it shows every
/// node with its load; the page and when it got there.
async fn open_grid<'b>(browser: &'b Browser, url: &str) -> (Page<'b>, Load) {
    let page = browser
        .page(&format!("{url}/?bench#nodes"), PageOptions::default())
        .await;
    let started = Instant::now();
    loop {
        let value = page
            .evaluate(
                "() => { const b = window.__farmBench; return b && b.fullGridAt !== null ? \
                 [b.syncedAt, b.metricsAt, b.fullGridAt] : undefined; }",
                json!(null),
            )
            .await;
        let at = |i: usize| value[i].as_f64().unwrap_or(f64::NAN);
        if value.is_array() {
            let load = Load {
                synced: at(0),
                metrics: at(1),
                full: at(2),
            };
            return (page, load);
        }
        assert!(
            started.elapsed() < PAGE_LIMIT,
            "no full grid within {PAGE_LIMIT:?} at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Longer than a `WatchMetrics` feed keeps running after its last stream
/// (10 s): a page opened after this long finds no dashboard's feed.
const NOBODY_WATCHED: Duration = Duration::from_secs(11);

/// Page loads, two ways: the first dashboard on a farm nobody watched for a
/// while (its metrics feed starts with it), and a page opened again right
/// after another closed (a reload: the feed still runs).
#[derive(Debug, Clone, Copy)]
struct Loads {
    first: Load,
    again: Load,
}

async fn page_loads(browser: &Browser, url: &str, rounds: usize) -> Loads {
    let first = page_load(browser, url, rounds, NOBODY_WATCHED).await;
    let again = page_load(browser, url, rounds, Duration::ZERO).await;
    Loads { first, again }
}

/// Median page load over the rounds, each in a fresh page opened `pause`
/// after the last closed.
async fn page_load(browser: &Browser, url: &str, rounds: usize, pause: Duration) -> Load {
    let mut loads = Vec::new();
    for _ in 0..rounds {
        tokio::time::sleep(pause).await;
        let (page, load) = open_grid(browser, url).await;
        let problems = page.problems().await;
        assert!(problems.is_empty(), "the page had problems: {problems:#?}");
        page.close().await;
        loads.push(load);
    }
    let of = |f: fn(&Load) -> f64| median(&loads.iter().map(f).collect::<Vec<_>>());
    Load {
        synced: of(|l| l.synced),
        metrics: of(|l| l.metrics),
        full: of(|l| l.full),
    }
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// Main-thread milliseconds per update over one window of `page`.
#[derive(Debug, Default)]
struct Updates {
    /// Each snapshot's take-in and draw, plus the decoding of one: median
    /// and p99.
    median: f64,
    p99: f64,
    /// Medians of the parts.
    decode: f64,
    add: f64,
    draw: f64,
    count: usize,
}

/// Main-thread milliseconds per update over one window of `page`.
async fn updates(page: &Page<'_>, window: Duration) -> Updates {
    let before = figures(page).await;
    let (add0, draw0) = (
        numbers(&before["add"]).len(),
        numbers(&before["draw"]).len(),
    );
    tokio::time::sleep(window).await;
    let after = figures(page).await;
    let add = numbers(&after["add"]);
    let draw = numbers(&after["draw"]);
    let decode = after["decode"].as_f64().unwrap_or(f64::NAN);
    let add = &add[add0.min(add.len())..];
    let draw = &draw[draw0.min(draw.len())..];
    // A draw follows each snapshot (at most one a frame).
    let per_update: Vec<f64> = add
        .iter()
        .zip(draw.iter())
        .map(|(a, d)| a + d + decode)
        .collect();
    Updates {
        median: median(&per_update),
        p99: percentile(&per_update, 0.99),
        decode,
        add: median(add),
        draw: median(draw),
        count: per_update.len(),
    }
}

#[tokio::main]
async fn main() {
    binary("control-plane");
    binary("loadgen");
    let settings = Settings::from_env();
    let missing = browser::missing();
    if !missing.is_empty() {
        println!(
            "the dashboard benchmark needs {}: nothing measured",
            missing.join(", ")
        );
        return;
    }
    let Some(browser) = Browser::launch("dashboard_bench").await else {
        return;
    };
    let started = Instant::now();
    let rounds = settings.rounds;
    let load_rounds = rounds.max(5);

    // The small farm: page load only.
    let small_load = {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut control_plane, swarm) = farm_of(settings.small, dir.path(), settings.settle).await;
        let load = page_loads(&browser, &control_plane.url(), load_rounds).await;
        drop(swarm);
        control_plane.terminate(Duration::from_secs(30)).await;
        load
    };

    // The large farm: everything.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut control_plane, swarm) = farm_of(settings.nodes, dir.path(), settings.settle).await;
    let url = control_plane.url();
    let pid = control_plane.id();
    let large_load = page_loads(&browser, &url, load_rounds).await;

    let mut cpu_none = Vec::new();
    for _ in 0..rounds {
        cpu_none.push(cpu_percent(pid, settings.secs).await);
    }

    let (first, _) = open_grid(&browser, &url).await;
    // Let start-up settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut windows = Vec::new();
    let mut cpu_one = Vec::new();
    for _ in 0..rounds {
        // The page's own figures and the control plane's CPU over the same
        // window.
        let (cpu, window) = tokio::join!(
            cpu_percent(pid, settings.secs),
            updates(&first, settings.secs)
        );
        cpu_one.push(cpu);
        windows.push(window);
    }
    let update = |f: fn(&Updates) -> f64| median(&windows.iter().map(f).collect::<Vec<_>>());
    let update_count: usize = windows.iter().map(|w| w.count).sum();

    let mut others = Vec::new();
    for _ in 1..settings.pages {
        others.push(open_grid(&browser, &url).await.0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cpu_many = Vec::new();
    for _ in 0..rounds {
        cpu_many.push(cpu_percent(pid, settings.secs).await);
    }
    let mut problems = first.problems().await;
    for page in &others {
        problems.extend(page.problems().await);
        page.close().await;
    }
    first.close().await;
    drop(browser);
    drop(swarm);
    control_plane.terminate(Duration::from_secs(60)).await;
    assert!(problems.is_empty(), "the pages had problems: {problems:#?}");

    let (none, one, many) = (median(&cpu_none), median(&cpu_one), median(&cpu_many));
    let (small, large, pages) = (settings.small, settings.nodes, settings.pages);
    println!(
        "dashboard at scale: loadgen swarm --samples (1 Hz heartbeats with samples), release \
         control plane, headless chromium (1400x1000, heat map past 300 nodes), each farm \
         running {}s before measuring; page loads medians of {load_rounds} rounds, the rest \
         of {rounds}, windows of {}s\n",
        settings.settle.as_secs(),
        settings.secs.as_secs()
    );
    println!("| figure | value | target |");
    println!("| --- | ---: | ---: |");
    for (nodes, loads, target) in [(small, small_load, ""), (large, large_load, "< 1000 ms")] {
        for (how, load) in [
            ("first dashboard", loads.first),
            ("opened again", loads.again),
        ] {
            println!(
                "| page load to full grid, {nodes} nodes, {how} | {:.0} ms | {target} |",
                load.full
            );
            println!("| … membership complete | {:.0} ms | |", load.synced);
            println!("| … first metrics snapshot | {:.0} ms | |", load.metrics);
        }
    }
    println!(
        "| main thread per update, {large} nodes, median | {:.1} ms | < 8 ms |",
        update(|u| u.median)
    );
    println!(
        "| main thread per update, {large} nodes, p99 | {:.1} ms | < 16 ms |",
        update(|u| u.p99)
    );
    println!(
        "| … of which decoding the snapshot, median | {:.1} ms | |",
        update(|u| u.decode)
    );
    println!("| … taking it in, median | {:.1} ms | |", update(|u| u.add));
    println!(
        "| … drawing the heat map, median | {:.1} ms | |",
        update(|u| u.draw)
    );
    println!("| control plane CPU, {large} nodes, no dashboard | {none:.1} % | |");
    println!("| control plane CPU, {large} nodes, 1 dashboard | {one:.1} % | |");
    println!("| control plane CPU, {large} nodes, {pages} dashboards | {many:.1} % | |");
    println!(
        "| ratio {pages} dashboards / 1 | {:.2} | <= 1.5 |",
        many / one
    );
    println!(
        "\n{update_count} updates measured; CPU in percent of one core; took {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
