//! `soak`: one `control-plane serve` with its process nodes under a steady
//! mix of traffic for `--duration`, a node killed (SIGKILL) every few
//! seconds, and the control plane sampled every `--sample-every`: its
//! resident memory and open descriptors (from `/proc`), its runtime's live
//! tasks (`farm_control_plane_tasks` of `/metrics`), its heartbeat streams,
//! the healthy nodes, and the p99 of each kind of traffic over the
//! interval. `scripts/soak` builds it and the binaries and runs it.
//!
//! The mix: the nodes' own heartbeats; a configuration writer (a
//! compare-and-set `PutConfig` of `global` every second); a load test
//! (`LoadTest.Run`, five seconds over eight nodes) every thirty seconds;
//! catalog traffic over gRPC and over the line protocol (index, query,
//! remove); a `WatchMetrics` reader as the dashboard holds one; and the
//! killer. An error is expected only when the kill caused it (a load test's
//! failed requests when one of its targets was killed during it); every
//! other error is unexpected, printed as it happens and counted.
//!
//! At the end: a table over time, and a verdict comparing the median of
//! the first third of the samples after `--warm-up` with that of the last
//! third. Exits 1 if any error was unexpected or any figure grew beyond its
//! noise allowance (see [`Allowance`]), 2 on bad arguments.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use farm_api::v1::{
    GetConfigRequest, IndexRequest, ListNodesRequest, LoadMode, LoadTestRequest, NodeInfo,
    PutConfigRequest, QueryRequest, RemoveRequest, WatchMetricsRequest, load_test_event::Event,
};
use farm_testkit::{Api, ControlPlaneProcess, NodeGuard, api::config_data, healthy, median, pid};
use hdrhistogram::Histogram;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use rand::seq::IndexedRandom;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    task::JoinSet,
    time::{MissedTickBehavior, interval, sleep, timeout},
};
use tokio_util::sync::CancellationToken;

/// How long one call may take before it counts as an unexpected error.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Nodes one load test drives.
const LOAD_TARGETS: usize = 8;
/// Catalog names each catalog loop cycles through.
const CATALOG_NAMES: u64 = 200;

#[derive(Debug, Parser)]
#[command(about = "Soaks a control plane and its process nodes under steady traffic and kills")]
struct Args {
    /// How long the traffic runs (e.g. 30m, 600s).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The start of the run left out of the growth verdict (default: a
    /// quarter of the duration, at most 5 minutes).
    #[arg(long, value_parser = humantime::parse_duration)]
    warm_up: Option<Duration>,
    /// Nodes the control plane runs, as processes on 127.0.0.1.
    #[arg(long, default_value_t = 50)]
    nodes: u32,
    /// How often one node is killed (0s: never, to see what the kills
    /// hide: a leak per node is cleared when its process dies).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// How often the control plane is sampled.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Where `control-plane` and `farm-node` are (default: beside this
    /// binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// A folder for `samples.csv` and `summary.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `Config.PutConfig` with `expected_version`.
    Config,
    /// `LoadTest.Run`: its report's p99.
    LoadTest,
    /// `Catalog.Index`, `Query`, `Remove`.
    CatalogGrpc,
    /// `INDEX`, `QUERY`, `REMOVE` over the line protocol.
    CatalogLine,
    /// `Metrics.WatchMetrics`: the time between two snapshots (asked: 1 s).
    Watch,
    /// `Farm.ListNodes` before each kill.
    ListNodes,
    /// What is not a call: sampling, the nodes' recovery at the end.
    Farm,
}

impl Kind {
    /// Those whose latency is measured.
    const TIMED: [Kind; 6] = [
        Kind::Config,
        Kind::LoadTest,
        Kind::CatalogGrpc,
        Kind::CatalogLine,
        Kind::Watch,
        Kind::ListNodes,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::LoadTest => "loadtest",
            Kind::CatalogGrpc => "catalog_grpc",
            Kind::CatalogLine => "catalog_line",
            Kind::Watch => "watch_gap",
            Kind::ListNodes => "list_nodes",
            Kind::Farm => "farm",
        }
    }
}

/// One kind's figures.
#[derive(Debug)]
struct KindStats {
    /// Latencies (µs) since the last sample.
    interval: Histogram<u64>,
    /// Latencies (µs) of the whole run.
    total: Histogram<u64>,
    expected: u64,
    unexpected: u64,
}

impl KindStats {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Self {
            interval: histogram(),
            total: histogram(),
            expected: 0,
            unexpected: 0,
        }
    }
}

/// What every loop reports to, and the kills done.
#[derive(Debug, Clone)]
struct Recorder {
    started: Instant,
    stats: Arc<Mutex<BTreeMap<Kind, KindStats>>>,
    /// When which node was killed.
    kills: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Recorder {
    fn new() -> Self {
        let stats = Kind::TIMED
            .into_iter()
            .chain([Kind::Farm])
            .map(|k| (k, KindStats::new()));
        Self {
            started: Instant::now(),
            stats: Arc::new(Mutex::new(stats.collect())),
            kills: Arc::default(),
        }
    }

    fn with<T>(&self, kind: Kind, f: impl FnOnce(&mut KindStats) -> T) -> T {
        let mut stats = self.stats.lock().expect("stats lock");
        f(stats.get_mut(&kind).expect("every kind"))
    }

    fn ok(&self, kind: Kind, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.with(kind, |s| {
            s.interval.saturating_record(micros);
            s.total.saturating_record(micros);
        });
    }

    fn expected(&self, kind: Kind) {
        self.with(kind, |s| s.expected += 1);
    }

    fn unexpected(&self, kind: Kind, what: impl std::fmt::Display) {
        self.with(kind, |s| s.unexpected += 1);
        println!(
            "[{:>7.1} s] unexpected {}: {what}",
            self.started.elapsed().as_secs_f64(),
            kind.name()
        );
    }

    /// Each timed kind's calls and p99 (µs) since the last call of this.
    fn take_interval(&self) -> BTreeMap<Kind, (u64, u64)> {
        let mut stats = self.stats.lock().expect("stats lock");
        Kind::TIMED
            .into_iter()
            .map(|k| {
                let s = stats.get_mut(&k).expect("every kind");
                let figures = (s.interval.len(), s.interval.value_at_quantile(0.99));
                s.interval.reset();
                (k, figures)
            })
            .collect()
    }

    fn errors(&self) -> (u64, u64) {
        let stats = self.stats.lock().expect("stats lock");
        stats
            .values()
            .fold((0, 0), |(e, u), s| (e + s.expected, u + s.unexpected))
    }

    fn kill_count(&self) -> usize {
        self.kills.lock().expect("kills lock").len()
    }

    /// Whether one of `targets` was killed between `from` and `to`.
    fn killed_among(&self, targets: &[String], from: Instant, to: Instant) -> bool {
        self.kills
            .lock()
            .expect("kills lock")
            .iter()
            .any(|(at, id)| *at >= from && *at <= to && targets.contains(id))
    }
}

/// What each traffic loop gets.
#[derive(Debug, Clone)]
struct Ctx {
    api: Api,
    /// The control plane's port (gRPC and HTTP).
    addr: SocketAddr,
    indexer: SocketAddr,
    rec: Recorder,
    stop: CancellationToken,
}

impl Ctx {
    /// Waits `pause`; false once the run is over.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = sleep(pause) => true,
        }
    }
}

/// A call within [`CALL_LIMIT`], timed; a timeout is an error like any.
async fn timed<T, E: std::fmt::Display>(
    call: impl Future<Output = Result<T, E>>,
) -> (Result<T, String>, Duration) {
    let started = Instant::now();
    let result = match timeout(CALL_LIMIT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_LIMIT:?}")),
    };
    (result, started.elapsed())
}

/// `PutConfig` of `global` every second, each expecting the version the
/// last one wrote: one writer, so a conflict is an error.
async fn config_writer(ctx: Ctx) {
    let mut version = 0;
    let mut tick = 0u64;
    loop {
        let mut config = ctx.api.config();
        if version == 0 {
            let get = config.get_config(GetConfigRequest {
                scope: "global".into(),
            });
            match timed(get).await {
                (Ok(r), _) => version = r.into_inner().version,
                (Err(e), _) => ctx.rec.unexpected(Kind::Config, format!("GetConfig: {e}")),
            }
        }
        tick += 1;
        let put = config.put_config(PutConfigRequest {
            scope: "global".into(),
            data: Some(config_data(serde_json::json!({ "soak": { "tick": tick } }))),
            expected_version: version,
            merge: false,
        });
        match timed(put).await {
            (Ok(r), took) => {
                version = r.into_inner().version;
                ctx.rec.ok(Kind::Config, took);
            }
            (Err(e), _) => {
                ctx.rec
                    .unexpected(Kind::Config, format!("PutConfig at {version}: {e}"));
                version = 0;
            }
        }
        if !ctx.pause(Duration::from_secs(1)).await {
            return;
        }
    }
}

/// The healthy nodes, timed as a [`Kind::ListNodes`] call.
async fn healthy_nodes(ctx: &Ctx) -> Option<Vec<NodeInfo>> {
    let mut farm = ctx.api.farm();
    let list = farm.list_nodes(ListNodesRequest::default());
    match timed(list).await {
        (Ok(r), took) => {
            ctx.rec.ok(Kind::ListNodes, took);
            Some(r.into_inner().nodes.into_iter().filter(healthy).collect())
        }
        (Err(e), _) => {
            ctx.rec.unexpected(Kind::ListNodes, e);
            None
        }
    }
}

/// Every `every`, SIGKILL to one healthy node's process; the supervisor
/// replaces it under the same id.
async fn killer(ctx: Ctx, every: Duration) {
    if every.is_zero() {
        ctx.stop.cancelled().await;
        return;
    }
    while ctx.pause(every).await {
        let Some(nodes) = healthy_nodes(&ctx).await else {
            continue;
        };
        // None healthy: the last kills' replacements are still starting.
        let Some(node) = nodes.choose(&mut rand::rng()) else {
            continue;
        };
        // Recorded first: a load test may see the failure at once.
        ctx.rec
            .kills
            .lock()
            .expect("kills lock")
            .push((Instant::now(), node.id.clone()));
        if let Err(e) = kill(Pid::from_raw(pid(node)), Signal::SIGKILL) {
            ctx.rec
                .unexpected(Kind::Farm, format!("SIGKILL {}: {e}", node.name));
        }
    }
}

/// A five-second load test over eight healthy nodes every thirty seconds.
/// Failed requests are expected when a target was killed during the test.
async fn load_tester(ctx: Ctx) {
    while ctx.pause(Duration::from_secs(30)).await {
        let Some(nodes) = healthy_nodes(&ctx).await else {
            continue;
        };
        let targets: Vec<String> = nodes
            .choose_multiple(&mut rand::rng(), LOAD_TARGETS)
            .map(|n| n.id.clone())
            .collect();
        let started = Instant::now();
        let run = async {
            let request = LoadTestRequest {
                node_ids: targets.clone(),
                mode: LoadMode::Unary.into(),
                rate: 400.0,
                concurrency: 8,
                duration_ms: 5000,
                payload_bytes: 64,
                response_bytes: 64,
                ..Default::default()
            };
            let mut events = ctx.api.load_test().run(request).await?.into_inner();
            while let Some(event) = events.message().await? {
                if let Some(Event::Report(report)) = event.event {
                    return Ok(report);
                }
            }
            Err(tonic::Status::unknown("the stream ended without a report"))
        };
        let report = match timeout(Duration::from_secs(30), run).await {
            Ok(Ok(report)) => report,
            Ok(Err(status)) => {
                ctx.rec.unexpected(Kind::LoadTest, status);
                continue;
            }
            Err(_) => {
                ctx.rec.unexpected(Kind::LoadTest, "no report within 30 s");
                continue;
            }
        };
        let p99 = report.latency_us.map_or(0, |l| l.p99);
        ctx.rec.ok(Kind::LoadTest, Duration::from_micros(p99));
        if report.errors > 0 || report.connect_errors > 0 {
            let from = started - Duration::from_secs(3);
            if ctx.rec.killed_among(&targets, from, Instant::now()) {
                ctx.rec.expected(Kind::LoadTest);
            } else {
                let what = format!(
                    "{} of {} requests failed ({:?}), {} connect errors, no target killed",
                    report.errors, report.requests, report.errors_by_code, report.connect_errors
                );
                ctx.rec.unexpected(Kind::LoadTest, what);
            }
        }
    }
}

/// `Index`, `Query`, `Remove` of one name over gRPC, ten rounds a second.
async fn catalog_grpc(ctx: Ctx) {
    let mut round = 0u64;
    while ctx.pause(Duration::from_millis(100)).await {
        let name = format!("soak-grpc-{}", round % CATALOG_NAMES);
        round += 1;
        let mut catalog = ctx.api.catalog();
        let index = catalog.index(IndexRequest {
            name: name.clone(),
            dependencies: Vec::new(),
        });
        match timed(index).await {
            (Ok(_), took) => ctx.rec.ok(Kind::CatalogGrpc, took),
            (Err(e), _) => ctx.rec.unexpected(Kind::CatalogGrpc, format!("Index: {e}")),
        }
        let query = catalog.query(QueryRequest { name: name.clone() });
        match timed(query).await {
            (Ok(r), took) if r.get_ref().indexed => ctx.rec.ok(Kind::CatalogGrpc, took),
            (Ok(_), _) => ctx
                .rec
                .unexpected(Kind::CatalogGrpc, format!("{name} not indexed")),
            (Err(e), _) => ctx.rec.unexpected(Kind::CatalogGrpc, format!("Query: {e}")),
        }
        match timed(catalog.remove(RemoveRequest { name })).await {
            (Ok(_), took) => ctx.rec.ok(Kind::CatalogGrpc, took),
            (Err(e), _) => ctx
                .rec
                .unexpected(Kind::CatalogGrpc, format!("Remove: {e}")),
        }
    }
}

/// `INDEX`, `QUERY`, `REMOVE` of one name over one connection of the line
/// protocol, ten rounds a second, each answered `OK`; reconnects after an
/// error.
async fn catalog_line(ctx: Ctx) {
    let mut round = 0u64;
    'connect: loop {
        let stream = match timed(TcpStream::connect(ctx.indexer)).await {
            (Ok(stream), _) => stream,
            (Err(e), _) => {
                ctx.rec
                    .unexpected(Kind::CatalogLine, format!("connect: {e}"));
                if ctx.pause(Duration::from_secs(1)).await {
                    continue;
                }
                return;
            }
        };
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while ctx.pause(Duration::from_millis(100)).await {
            let name = format!("soak-line-{}", round % CATALOG_NAMES);
            round += 1;
            for command in ["INDEX", "QUERY", "REMOVE"] {
                let request = format!("{command}|{name}|\n");
                let exchange = async {
                    write.write_all(request.as_bytes()).await?;
                    lines.next_line().await
                };
                match timed(exchange).await {
                    (Ok(Some(reply)), took) if reply == "OK" => ctx.rec.ok(Kind::CatalogLine, took),
                    (Ok(reply), _) => {
                        let what = format!("{} answered {reply:?}", request.trim_end());
                        ctx.rec.unexpected(Kind::CatalogLine, what);
                        if reply.is_none() {
                            continue 'connect;
                        }
                    }
                    (Err(e), _) => {
                        let what = format!("{}: {e}", request.trim_end());
                        ctx.rec.unexpected(Kind::CatalogLine, what);
                        continue 'connect;
                    }
                }
            }
        }
        return;
    }
}

/// `WatchMetrics` as the dashboard asks it (a snapshot a second, every
/// node's load); records the time between snapshots, reopens after an
/// error.
async fn watcher(ctx: Ctx) {
    loop {
        let mut metrics = ctx.api.metrics();
        let open = metrics.watch_metrics(WatchMetricsRequest {
            interval_ms: 1000,
            include_loads: true,
            ..Default::default()
        });
        let mut stream = match timed(open).await {
            (Ok(r), _) => r.into_inner(),
            (Err(e), _) => {
                ctx.rec.unexpected(Kind::Watch, format!("open: {e}"));
                if ctx.pause(Duration::from_secs(1)).await {
                    continue;
                }
                return;
            }
        };
        let mut last: Option<Instant> = None;
        loop {
            let next = tokio::select! {
                () = ctx.stop.cancelled() => return,
                next = timed(stream.message()) => next.0,
            };
            match next {
                Ok(Some(_)) => {
                    let now = Instant::now();
                    if let Some(last) = last {
                        ctx.rec.ok(Kind::Watch, now - last);
                    }
                    last = Some(now);
                }
                Ok(None) => {
                    ctx.rec.unexpected(Kind::Watch, "the stream ended");
                    break;
                }
                Err(e) => {
                    ctx.rec.unexpected(Kind::Watch, e);
                    break;
                }
            }
        }
    }
}

/// The control plane at one moment.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_s: f64,
    rss_kib: Option<u64>,
    fds: Option<u64>,
    tasks: Option<u64>,
    heartbeat_streams: Option<u64>,
    healthy: Option<usize>,
    kills: usize,
    expected: u64,
    unexpected: u64,
    /// Calls and p99 (µs) over the interval before it.
    kinds: BTreeMap<Kind, (u64, u64)>,
}

/// A gauge of `/metrics`, unlabelled.
fn gauge(text: &str, name: &str) -> Option<u64> {
    farm_testkit::http::series(text, name).map(|v| v as u64)
}

async fn sample(ctx: &Ctx, pid: u32) -> Sample {
    let rss_kib = farm_testkit::process::rss_kib(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64);
    // testkit's HTTP client panics on failure: in a task of its own.
    let addr = ctx.addr;
    let metrics = tokio::spawn(async move { farm_testkit::http::get(addr, "/metrics").await });
    let (tasks, heartbeat_streams) = match metrics.await {
        Ok(response) if response.status.is_success() => {
            let text = response.text();
            (
                gauge(&text, "farm_control_plane_tasks"),
                gauge(&text, "farm_control_plane_heartbeat_streams"),
            )
        }
        Ok(response) => {
            let what = format!("/metrics answered {}", response.status);
            ctx.rec.unexpected(Kind::Farm, what);
            (None, None)
        }
        Err(e) => {
            ctx.rec.unexpected(Kind::Farm, format!("/metrics: {e}"));
            (None, None)
        }
    };
    let healthy = healthy_nodes(ctx).await.map(|n| n.len());
    let (expected, unexpected) = ctx.rec.errors();
    Sample {
        at_s: ctx.rec.started.elapsed().as_secs_f64(),
        rss_kib,
        fds,
        tasks,
        heartbeat_streams,
        healthy,
        kills: ctx.rec.kill_count(),
        expected,
        unexpected,
        kinds: ctx.rec.take_interval(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How much a figure may grow, between the medians of the first and the
/// last third of the samples after the warm-up, and still be noise: 10 %
/// of the first median, and at least `floor`. The floors come from what
/// is in flux at any sample whatever the length of the run: a node killed
/// moments before (its heartbeat connection, its pipes to the supervisor
/// and their tasks gone, the replacement's not yet there), a load test's
/// connections to its eight targets for five seconds of every thirty, the
/// allocator keeping freed pages for seconds before returning them. A leak
/// of one descriptor or task per kill, or of a few KiB per configuration
/// push, passes them within minutes.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    name: &'static str,
    floor: f64,
    figure: fn(&Sample) -> Option<u64>,
    /// Units shown: the figure divided by this.
    scale: f64,
    unit: &'static str,
}

const ALLOWANCES: [Allowance; 3] = [
    Allowance {
        name: "RSS",
        floor: 8.0 * 1024.0,
        figure: |s| s.rss_kib,
        scale: 1024.0,
        unit: "MiB",
    },
    Allowance {
        name: "open fds",
        floor: 12.0,
        figure: |s| s.fds,
        scale: 1.0,
        unit: "",
    },
    Allowance {
        name: "tasks",
        floor: 25.0,
        figure: |s| s.tasks,
        scale: 1.0,
        unit: "",
    },
];

fn figure(value: Option<u64>, scale: f64) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v as f64 / scale))
}

fn header() -> String {
    let mut line = format!(
        "{:>7} {:>8} {:>5} {:>6} {:>4} {:>7} {:>5} {:>5} {:>5}",
        "t_s", "rss_MiB", "fds", "tasks", "hb", "healthy", "kills", "exp", "unexp"
    );
    for kind in Kind::TIMED {
        line.push_str(&format!(" {:>14}", format!("{}_p99ms", kind.name())));
    }
    line
}

fn row(s: &Sample) -> String {
    let mut line = format!(
        "{:>7.0} {:>8} {:>5} {:>6} {:>4} {:>7} {:>5} {:>5} {:>5}",
        s.at_s,
        figure(s.rss_kib, 1024.0),
        figure(s.fds, 1.0).trim_end_matches(".0"),
        figure(s.tasks, 1.0).trim_end_matches(".0"),
        figure(s.heartbeat_streams, 1.0).trim_end_matches(".0"),
        s.healthy.map_or_else(|| "-".to_owned(), |h| h.to_string()),
        s.kills,
        s.expected,
        s.unexpected,
    );
    for kind in Kind::TIMED {
        let cell = match s.kinds.get(&kind) {
            Some((calls, p99)) if *calls > 0 => format!("{:.1}", *p99 as f64 / 1000.0),
            _ => "-".to_owned(),
        };
        line.push_str(&format!(" {cell:>14}"));
    }
    line
}

fn csv(samples: &[Sample]) -> String {
    let mut text =
        "t_s,rss_kib,fds,tasks,heartbeat_streams,healthy,kills,expected_errors,unexpected_errors"
            .to_owned();
    for kind in Kind::TIMED {
        text.push_str(&format!(",{0}_calls,{0}_p99_us", kind.name()));
    }
    text.push('\n');
    let cell = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    for s in samples {
        text.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{},{}",
            s.at_s,
            cell(s.rss_kib),
            cell(s.fds),
            cell(s.tasks),
            cell(s.heartbeat_streams),
            cell(s.healthy.map(|h| h as u64)),
            s.kills,
            s.expected,
            s.unexpected
        ));
        for kind in Kind::TIMED {
            let (calls, p99) = s.kinds.get(&kind).copied().unwrap_or_default();
            let p99 = if calls > 0 {
                p99.to_string()
            } else {
                String::new()
            };
            text.push_str(&format!(",{calls},{p99}"));
        }
        text.push('\n');
    }
    text
}

/// Starts the farm, runs the mix, samples, judges. `Ok(false)`: the run
/// failed its verdict.
async fn run(args: Args) -> Result<bool> {
    let bin_dir = match args.bin_dir.clone() {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("this binary's folder")?
            .to_owned(),
    };
    for binary in ["control-plane", "farm-node"] {
        let path = bin_dir.join(binary);
        anyhow::ensure!(path.is_file(), "{} is missing", path.display());
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    }
    let warm_up = args
        .warm_up
        .unwrap_or_else(|| (args.duration / 4).min(Duration::from_secs(300)));
    // Listening from the start, on SIGINT too: a shell that starts this in
    // the background has it ignore SIGINT until a handler is installed.
    let signal = |kind| tokio::signal::unix::signal(kind).context("listen for signals");
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;

    let dir = tempfile::tempdir()?;
    // Dropped after the control plane: kills whatever node is left.
    let _nodes = NodeGuard::new(dir.path());
    println!(
        "soak: control plane with {} process nodes from {}; traffic for {}, warm-up {}",
        args.nodes,
        bin_dir.display(),
        humantime::format_duration(args.duration),
        humantime::format_duration(warm_up)
    );
    let mut process = ControlPlaneProcess::measured(dir.path(), args.nodes)
        .indexer()
        .program(&bin_dir.join("control-plane"))
        .start()
        .await;
    let limit = Duration::from_secs(120);
    let every = Duration::from_millis(500);
    process
        .wait_healthy_every(args.nodes as usize, limit, every)
        .await;
    let pid = process.id();
    println!(
        "soak: {} nodes healthy; control plane pid {pid}",
        args.nodes
    );

    let rec = Recorder::new();
    let stop = CancellationToken::new();
    let ctx = Ctx {
        api: Api::clone(&process),
        addr: process.addr,
        indexer: process.indexer_addr(),
        rec: rec.clone(),
        stop: stop.clone(),
    };
    let mut samples = vec![sample(&ctx, pid).await];
    let mut loops = JoinSet::new();
    loops.spawn(config_writer(ctx.clone()));
    loops.spawn(load_tester(ctx.clone()));
    loops.spawn(catalog_grpc(ctx.clone()));
    loops.spawn(catalog_line(ctx.clone()));
    loops.spawn(watcher(ctx.clone()));
    loops.spawn(killer(ctx.clone(), args.kill_every));
    println!("{}", header());
    println!("{}", row(&samples[0]));

    let deadline = tokio::time::Instant::now() + args.duration;
    let mut ticks = interval(args.sample_every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    let interrupted = loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break false,
            _ = ticks.tick() => {
                let s = sample(&ctx, pid).await;
                println!("{}", row(&s));
                samples.push(s);
            }
            _ = sigint.recv() => break true,
            _ = sigterm.recv() => break true,
            Some(ended) = loops.join_next() => {
                rec.unexpected(Kind::Farm, format!("a traffic loop ended early: {ended:?}"));
            }
        }
    };
    if interrupted {
        println!("soak: interrupted; stopping");
    } else {
        let s = sample(&ctx, pid).await;
        println!("{}", row(&s));
        samples.push(s);
    }

    stop.cancel();
    let drained = timeout(Duration::from_secs(30), async {
        while let Some(ended) = loops.join_next().await {
            if let Err(e) = ended {
                rec.unexpected(Kind::Farm, format!("a traffic loop failed: {e}"));
            }
        }
    })
    .await;
    if drained.is_err() {
        rec.unexpected(Kind::Farm, "traffic loops still running 30 s after the end");
        loops.abort_all();
    }
    if !interrupted {
        // Every node killed must be back.
        let back = timeout(Duration::from_secs(60), async {
            loop {
                if let Ok(nodes) = process.try_nodes().await
                    && nodes.iter().filter(|n| healthy(n)).count() == args.nodes as usize
                {
                    return;
                }
                sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
        if back.is_err() {
            let what = format!("not all {} nodes healthy 60 s after the end", args.nodes);
            rec.unexpected(Kind::Farm, what);
        }
    }
    let end_rss = farm_testkit::process::rss_kib(pid);
    let status = process.terminate(Duration::from_secs(30)).await;
    if !status.success() {
        rec.unexpected(
            Kind::Farm,
            format!("the control plane exited with {status}"),
        );
    }

    report(&args, warm_up, &rec, &samples, end_rss, interrupted)
}

/// Prints the table and the verdict, writes `--out`; whether it passed.
fn report(
    args: &Args,
    warm_up: Duration,
    rec: &Recorder,
    samples: &[Sample],
    end_rss: Option<u64>,
    interrupted: bool,
) -> Result<bool> {
    println!("\nsoak: over time (every sample in samples.csv with --out)");
    println!("{}", header());
    let step = samples.len().div_ceil(30).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            println!("{}", row(s));
        }
    }

    println!("\nsoak: latency over the whole run (ms)");
    println!(
        "{:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "kind", "calls", "p50", "p99", "max", "expected", "unexpected"
    );
    let mut kinds = serde_json::Map::new();
    {
        let stats = rec.stats.lock().expect("stats lock");
        for (kind, s) in stats.iter() {
            let ms = |q: f64| s.total.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{:>14} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>10}",
                kind.name(),
                s.total.len(),
                ms(0.5),
                ms(0.99),
                s.total.max() as f64 / 1000.0,
                s.expected,
                s.unexpected
            );
            kinds.insert(
                kind.name().to_owned(),
                serde_json::json!({
                    "calls": s.total.len(),
                    "p50_ms": ms(0.5),
                    "p99_ms": ms(0.99),
                    "max_ms": s.total.max() as f64 / 1000.0,
                    "expected_errors": s.expected,
                    "unexpected_errors": s.unexpected,
                }),
            );
        }
    }

    let (expected, unexpected) = rec.errors();
    let post: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s >= warm_up.as_secs_f64())
        .collect();
    let third = post.len() / 3;
    let mut grew = false;
    let mut growth = serde_json::Map::new();
    println!(
        "\nsoak: growth after the warm-up ({}; medians of the first and last third of {} samples)",
        humantime::format_duration(warm_up),
        post.len()
    );
    for a in ALLOWANCES {
        let value = |s: &&Sample| (a.figure)(s).map_or(f64::NAN, |v| v as f64);
        let start = samples.first().map_or(f64::NAN, |s| value(&s));
        if third < 2 {
            println!("{:>9}: too few samples after the warm-up to judge", a.name);
            continue;
        }
        let first = median(post[..third].iter().map(value).collect());
        let last = median(post[post.len() - third..].iter().map(value).collect());
        let allowed = (first * 0.10).max(a.floor);
        let delta = last - first;
        let ok = delta <= allowed;
        grew |= !ok;
        println!(
            "{:>9}: start {:.1}{u}, after warm-up {:.1}{u}, end {:.1}{u}: {:+.1}{u} (noise allowance {:.1}{u}) {}",
            a.name,
            start / a.scale,
            first / a.scale,
            last / a.scale,
            delta / a.scale,
            allowed / a.scale,
            if ok { "ok" } else { "GREW" },
            u = a.unit,
        );
        growth.insert(
            a.name.to_owned(),
            serde_json::json!({
                "start": start / a.scale, "after_warm_up": first / a.scale,
                "end": last / a.scale, "growth": delta / a.scale,
                "allowance": allowed / a.scale, "unit": a.unit, "ok": ok,
            }),
        );
    }
    println!(
        "soak: {} kills; {expected} expected errors (caused by kills), {unexpected} unexpected",
        rec.kill_count()
    );
    let passed = !grew && unexpected == 0 && !interrupted;
    println!(
        "soak: {}",
        match (interrupted, passed) {
            (true, _) => "INTERRUPTED",
            (false, true) => "PASS",
            (false, false) => "FAIL",
        }
    );

    if let Some(out) = &args.out {
        let summary = serde_json::json!({
            "duration_s": args.duration.as_secs_f64(),
            "warm_up_s": warm_up.as_secs_f64(),
            "nodes": args.nodes,
            "kills": rec.kill_count(),
            "expected_errors": expected,
            "unexpected_errors": unexpected,
            "end_rss_kib": end_rss,
            "kinds": kinds,
            "growth": growth,
            "interrupted": interrupted,
            "passed": passed,
        });
        write(&out.join("samples.csv"), &csv(samples))?;
        write(
            &out.join("summary.json"),
            &serde_json::to_string_pretty(&summary)?,
        )?;
        println!("soak: samples in {}", out.display());
    }
    Ok(passed)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
