//! Load figures side by side, measured in one run, medians of alternating
//! rounds:
//!
//! - (a) `loadgen run --max` against `h2load` on one `farm-node`, same
//!   connections and requests in flight, `Workload/Work`, one thread each
//!   and each on its default threads; plus a stream-mode loadgen row for
//!   information. h2load runs without `--log-file`, which costs it a
//!   `write` per request, so its percentiles are not shown;
//! - (b) the control plane's `Register` and `Discover` against the ceiling of
//!   a bare tonic echo server (`Workload/Work` answering at once, served by a
//!   child copy of this bench), all three driven by the same closed-loop
//!   tonic client written here (h2load rows for echo and Discover as a
//!   cross-check: h2load cannot drive Register, whose names must be unique
//!   per call, and it ignores `grpc-status`);
//! - (c) `loadgen swarm` for an increasing number of simulated nodes, each
//!   against a fresh control plane: the largest farm whose heartbeat p99
//!   stays under 50 ms;
//! - (d) memory that comes back: one control plane, ten `loadgen swarm
//!   --samples` runs of 10,000 nodes one after another (each registers,
//!   heartbeats, and leaves); its resident memory idle, at its highest
//!   during each run, and after each, and bytes per registered node. The
//!   control plane allocates with jemalloc; to compare it with the system's
//!   malloc, build that one apart and name it in `FARM_BENCH_MEMORY_VERSUS`:
//!   `cargo build --release -p control-plane --no-default-features
//!   --target-dir target/system-malloc`, then
//!   `FARM_BENCH_MEMORY_VERSUS=target/system-malloc/release/control-plane`;
//! - (e) durable writes against etcd (Debian's `etcd-server`, started here
//!   on loopback in a temporary folder with its defaults): etcd's `KV/Put`,
//!   the control plane's `Register` and `PutConfig`, all three driven by
//!   the (b) client at the same writes in flight, each write on disk before
//!   its answer;
//! - (f) loadgen across a farm of 50 process nodes (`--control-plane`, 400
//!   in flight), against one h2load per node run together (h2load drives
//!   only the first URL's host, so one cannot spread over a farm); and
//!   the shape h2load takes when given the 50 URLs, 50 connections × 8 on
//!   the first node, against loadgen on that node.
//!
//! Everything runs on 127.0.0.1 and every process started here is stopped,
//! on panic too. The default run takes about fourteen minutes; environment
//! variables change it:
//!
//! - `FARM_BENCH_ROUNDS` (3): rounds of (a) and (b);
//! - `FARM_BENCH_SHAPES` (`1x1,4x16,4x100`): connections × streams of (a);
//! - `FARM_BENCH_SECS` (3): measured seconds per figure, after 1 s warm-up;
//! - `FARM_BENCH_PARTS` (`abcdef`): which parts to run;
//! - `FARM_BENCH_WRITE_SHAPES` (`4x4,4x16,4x64`): connections × writes in
//!   flight of (e);
//! - `FARM_BENCH_SWARM` (`1000,5000,10000,20000,30000,40000,60000,100000`):
//!   the ladder of (c), climbed until a size fails;
//! - `FARM_BENCH_SWARM_SECS` (10): duration of each swarm run;
//! - `FARM_BENCH_SWARM_BUDGET` (300): seconds after which (c) climbs no
//!   further;
//! - `FARM_BENCH_MEMORY_RUNS` (10) and `FARM_BENCH_MEMORY_NODES` (10000):
//!   the swarm runs of (d);
//! - `FARM_BENCH_MEMORY_SETTLE` (12): seconds after each run of (d) before
//!   its memory is read (jemalloc returns freed pages within about 10 s);
//! - `FARM_BENCH_MEMORY_VERSUS`: another build of the control plane (its
//!   path, absolute or from the workspace's folder) that (d) runs the same
//!   way after this workspace's.
//!
//! Run with `cargo build --release && cargo bench -p control-plane --bench load`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use farm_api::v1::{
    DiscoverRequest, HeartbeatRequest, InfoRequest, InfoResponse, LoadSpec, PutConfigRequest,
    RegisterRequest, SetLogLevelRequest, SetLogLevelResponse, SimulateLoadResponse, WorkRequest,
    WorkResponse,
    config_client::ConfigClient,
    discovery_client::DiscoveryClient,
    registry_client::RegistryClient,
    workload_client::WorkloadClient,
    workload_server::{Workload, WorkloadServer},
};
use farm_testkit::{
    ControlPlaneProcess, binary, env_or, eventually, free_addr, median,
    process::{ChildGuard, cpu_seconds, fsync_probe, rss_kib},
    ready_if,
};
use hdrhistogram::Histogram;
use loadgen::report::new_histogram;
use prost::Message;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Channel, Endpoint, Server, server::TcpIncoming},
};

/// Set in the environment of the child copy of this bench that serves echo.
const ECHO_ENV: &str = "FARM_LOAD_BENCH_ECHO";
/// Warm-up before every measured figure.
const WARMUP: Duration = Duration::from_secs(1);
/// Longest wait for a server to answer after its start.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Heartbeat p99 a swarm size must stay under in (c).
const SWARM_P99_LIMIT_US: f64 = 50_000.0;
/// Longest the registration of a swarm's nodes may take.
const SWARM_RAMP: Duration = Duration::from_secs(60);
/// The control plane is thrown away after each size, so the final
/// deregistration (one fsync each) is cut short.
const SWARM_CLEANUP: Duration = Duration::from_secs(5);
/// Shape of the closed-loop driver of (b): channels × tasks per channel.
const DRIVER: (usize, usize) = (4, 16);
/// Healthy nodes the control plane holds while Discover is measured.
const PEERS: usize = 100;
/// Peers each Discover asks for.
const DISCOVER_COUNT: u32 = 5;
/// Registrations per group in the Register driver (capacity is 10 000).
const PER_GROUP: u64 = 5_000;

/// Run length and which parts run, from the environment.
struct Settings {
    rounds: usize,
    /// Shapes of (a): connections × streams (requests in flight per
    /// connection).
    shapes: Vec<(usize, usize)>,
    secs: Duration,
    parts: String,
    swarm_ladder: Vec<usize>,
    swarm_secs: Duration,
    swarm_budget: Duration,
    memory_runs: usize,
    memory_nodes: usize,
    memory_settle: Duration,
    memory_versus: Option<PathBuf>,
    /// Shapes of (e): connections × writes in flight per connection.
    write_shapes: Vec<(usize, usize)>,
}

/// `CxM`: C connections, M streams each.
fn parse_shape(text: &str) -> (usize, usize) {
    let number = |n: &str| {
        n.trim()
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("FARM_BENCH_SHAPES: {text:?} is not CxM"))
            .max(1)
    };
    let (c, m) = text
        .split_once('x')
        .unwrap_or_else(|| panic!("FARM_BENCH_SHAPES: {text:?} is not CxM"));
    (number(c), number(m))
}

impl Settings {
    fn from_env() -> Self {
        let ladder: String = env_or(
            "FARM_BENCH_SWARM",
            "1000,5000,10000,20000,30000,40000,60000,100000".to_owned(),
        );
        Self {
            rounds: env_or("FARM_BENCH_ROUNDS", 3usize).max(1),
            shapes: env_or("FARM_BENCH_SHAPES", "1x1,4x16,4x100".to_owned())
                .split(',')
                .map(parse_shape)
                .collect(),
            write_shapes: env_or("FARM_BENCH_WRITE_SHAPES", "4x4,4x16,4x64".to_owned())
                .split(',')
                .map(parse_shape)
                .collect(),
            secs: Duration::from_secs(env_or("FARM_BENCH_SECS", 3u64).max(1)),
            parts: env_or("FARM_BENCH_PARTS", "abcdef".to_owned()),
            swarm_ladder: ladder
                .split(',')
                .map(|n| n.trim().parse().expect("FARM_BENCH_SWARM: numbers"))
                .collect(),
            swarm_secs: Duration::from_secs(env_or("FARM_BENCH_SWARM_SECS", 10u64).max(1)),
            swarm_budget: Duration::from_secs(env_or("FARM_BENCH_SWARM_BUDGET", 300u64)),
            memory_runs: env_or("FARM_BENCH_MEMORY_RUNS", 10usize).max(1),
            memory_nodes: env_or("FARM_BENCH_MEMORY_NODES", 10_000usize).max(1),
            memory_settle: Duration::from_secs(env_or("FARM_BENCH_MEMORY_SETTLE", 12u64)),
            // Relative to the workspace (cargo runs benches in the package's folder).
            memory_versus: std::env::var_os("FARM_BENCH_MEMORY_VERSUS").map(|path| {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
                std::fs::canonicalize(&path).unwrap_or_else(|e| {
                    panic!(
                        "FARM_BENCH_MEMORY_VERSUS: no control plane at {}: {e}",
                        path.display()
                    )
                })
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Processes

/// Takes the farm's environment from `command`: no token or address from
/// the caller's shell changes what is measured. Quiet logs too.
fn without_farm_env(command: &mut Command) -> &mut Command {
    farm_testkit::process::without_farm_env(command).env("RUST_LOG", "error")
}

/// A command with none of the farm's environment and its output dropped.
fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    without_farm_env(&mut command).stdout(Stdio::null());
    command
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Runs a one-shot tool to its end (killed past `limit` or on panic), with
/// none of the farm's environment; an error when it could not start, ran
/// too long or failed.
async fn run_tool(
    program: &Path,
    args: &[String],
    limit: Duration,
) -> Result<std::process::Output, String> {
    let child = start_tool(program, args)?;
    finish_tool(child, program, args, limit).await
}

/// Starts a one-shot tool as [`run_tool`] does; killed when dropped.
fn start_tool(program: &Path, args: &[String]) -> Result<tokio::process::Child, String> {
    let mut command = tokio::process::Command::new(program);
    without_farm_env(command.as_std_mut());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// Waits for a tool [`start_tool`] started, as [`run_tool`] does.
async fn finish_tool(
    child: tokio::process::Child,
    program: &Path,
    args: &[String],
    limit: Duration,
) -> Result<std::process::Output, String> {
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{} ran past {limit:?}", program.display()))?
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{} {} exited with {}: {}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A control plane with no runtime and no managed nodes, on its own data
/// folder, answering `Discover`; stopped when dropped.
struct ControlPlane {
    process: ControlPlaneProcess,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    async fn start(extra: &[&str]) -> Self {
        Self::start_program(None, extra).await
    }

    /// As [`ControlPlane::start`], with another build of the control plane
    /// when `program` is given.
    async fn start_program(program: Option<&Path>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut builder = ControlPlaneProcess::measured(dir.path(), 0).flags(extra);
        if let Some(program) = program {
            builder = builder.program(program);
        }
        let process = builder.start().await;
        let probe = DiscoverRequest {
            count: 1,
            ..Default::default()
        };
        eventually(
            "the control plane to answer Discover",
            READY_LIMIT,
            || async { process.discovery().discover(probe.clone()).await },
        )
        .await;
        Self { process, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    fn url(&self) -> String {
        self.process.url()
    }
}

/// Waits until `Workload/Work` answers OK at `addr`.
async fn wait_work(addr: SocketAddr) {
    let client = WorkloadClient::new(channel(addr));
    let what = format!("{addr} to answer Work");
    eventually(what, READY_LIMIT, || async {
        client.clone().work(WorkRequest::default()).await
    })
    .await;
}

// ---------------------------------------------------------------------------
// Figures

/// One measured figure.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Medians, column by column, of a series of rounds.
fn medians(runs: &[Figures]) -> Figures {
    Figures {
        rps: median(runs.iter().map(|f| f.rps).collect()),
        p50_us: median(runs.iter().map(|f| f.p50_us).collect()),
        p99_us: median(runs.iter().map(|f| f.p99_us).collect()),
        errors: runs.iter().map(|f| f.errors).sum(),
    }
}

/// Median of the per-round ratios `a[i] / b[i]` (rounds paired in time).
fn ratio(a: &[Figures], b: &[Figures]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a.rps / b.rps).collect())
}

fn row(label: &str, tool: &str, runs: &[Figures], versus: Option<f64>) {
    if runs.is_empty() {
        println!("  {label:<10} {tool:<36} {:>10}", "(no data)");
        return;
    }
    let m = medians(runs);
    let versus = versus.map_or_else(String::new, |r| format!("{r:>8.2}"));
    // Not measured (h2load's percentiles): a dash.
    let micros = |us: f64| {
        if us.is_nan() {
            "–".to_owned()
        } else {
            format!("{us:.0}")
        }
    };
    println!(
        "  {label:<10} {tool:<36} {:>10.0} {:>8} {:>8} {:>7} {versus}",
        m.rps,
        micros(m.p50_us),
        micros(m.p99_us),
        m.errors
    );
}

/// Rows of `shape`: the peer's, then each of `others` with its ratio to
/// the peer (when the peer measured).
fn compare(shape: &str, (peer, against): (&str, &[Figures]), others: &[(&str, &[Figures])]) {
    let measured = !against.is_empty();
    row(shape, peer, against, measured.then_some(1.0));
    for (tool, runs) in others {
        row(shape, tool, runs, measured.then(|| ratio(runs, against)));
    }
}

fn header(last: &str) {
    println!(
        "  {:<10} {:<36} {:>10} {:>8} {:>8} {:>7} {last:>8}",
        "shape", "tool", "rps", "p50 µs", "p99 µs", "errors"
    );
}

// ---------------------------------------------------------------------------
// h2load

/// A gRPC request body for h2load: the 5-byte prefix (not compressed, then
/// the big-endian length) and the encoded message.
fn grpc_body(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(encoded.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&encoded);
    body
}

/// `h2load`'s arguments for `urls` (it connects to the first one's host
/// and port only) with `connections × streams` in flight for `secs` after
/// the warm-up, on one thread (its default). No `--log-file`: h2load
/// writes its log with one `write` per request, a cost loadgen does not
/// pay, so its percentiles are not shown.
fn h2load_args(
    urls: &[String],
    body: &Path,
    (connections, streams): (usize, usize),
    secs: Duration,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-c",
        &connections.to_string(),
        "-m",
        &streams.to_string(),
        "-D",
        &secs.as_secs().to_string(),
        "--warm-up-time",
        &WARMUP.as_secs().to_string(),
        "-d",
        &body.display().to_string(),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(urls.iter().cloned());
    args
}

/// `h2load` on `url` with `connections × streams` in flight for `secs`
/// after the warm-up.
async fn h2load(
    url: &str,
    body: &Path,
    shape: (usize, usize),
    secs: Duration,
) -> Result<Figures, String> {
    let args = h2load_args(&[url.to_owned()], body, shape, secs);
    let output = run_tool(Path::new("h2load"), &args, secs + WARMUP + READY_LIMIT).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_h2load(&text).ok_or_else(|| format!("cannot read h2load's output:\n{text}"))
}

/// Requests per second and failures from h2load's summary.
fn parse_h2load(summary: &str) -> Option<Figures> {
    // "finished in 3.00s, 10523.33 req/s, 1.23MB/s"
    let rps: f64 = summary
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))?
        .split(", ")
        .nth(1)?
        .strip_suffix(" req/s")?
        .parse()
        .ok()?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = summary.lines().find_map(|l| l.strip_prefix("requests: "))?;
    let count = |what: &str| -> u64 {
        requests
            .split(", ")
            .find_map(|part| part.strip_suffix(what))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let errors = count(" failed") + count(" errored") + count(" timeout");
    Some(Figures {
        rps,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        errors,
    })
}

/// Whether `program --version` runs and succeeds.
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------
// loadgen

/// How a `loadgen run` of the bench is set up.
struct LoadgenRun<'a> {
    /// `--target ADDR` or `--control-plane URL`.
    targets: [String; 2],
    /// Connections per target.
    connections: usize,
    /// Stream mode with this many streams per connection; `None`: unary.
    streams: Option<usize>,
    /// Requests in flight in all (`--concurrency`).
    in_flight: usize,
    /// `--threads`; `None`: loadgen's default.
    threads: Option<usize>,
    secs: Duration,
    scratch: &'a Path,
}

/// `loadgen run --max` as `how` says.
async fn loadgen_run(loadgen: &Path, how: &LoadgenRun<'_>) -> Result<Figures, String> {
    let json = how.scratch.join("loadgen.json");
    let _ = std::fs::remove_file(&json);
    let mut args: Vec<String> = Vec::new();
    if let Some(threads) = how.threads {
        args.extend(["--threads".into(), threads.to_string()]);
    }
    args.push("run".into());
    args.extend(how.targets.iter().cloned());
    args.extend([
        "--max".into(),
        "--mode".into(),
        (if how.streams.is_some() {
            "stream"
        } else {
            "unary"
        })
        .into(),
        "--connections".into(),
        how.connections.to_string(),
        "--duration".into(),
        format!("{}s", how.secs.as_secs()),
        "--warmup".into(),
        format!("{}s", WARMUP.as_secs()),
        "--json".into(),
        json.display().to_string(),
    ]);
    if let Some(streams) = how.streams {
        args.extend(["--streams".into(), streams.to_string()]);
    }
    args.extend(["--concurrency".into(), how.in_flight.to_string()]);
    run_tool(loadgen, &args, how.secs + WARMUP + READY_LIMIT).await?;
    let text = std::fs::read_to_string(&json).map_err(|e| format!("loadgen wrote no JSON: {e}"))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("loadgen JSON: {e}"))?;
    let number = |pointer: &str| report.pointer(pointer).and_then(serde_json::Value::as_f64);
    Ok(Figures {
        rps: number("/throughput_rps").ok_or("loadgen JSON has no throughput_rps")?,
        p50_us: number("/latency_us/p50").unwrap_or(f64::NAN),
        p99_us: number("/latency_us/p99").unwrap_or(f64::NAN),
        errors: number("/errors").unwrap_or(0.0) as u64,
    })
}

/// Runs `tools` (indexes into `figures`) one after another, in this order
/// on even rounds and the reverse on odd ones; a round enters the medians
/// only when every tool in it measured.
async fn paired_round<F: Future<Output = Result<Figures, String>>>(
    round: usize,
    tools: &[usize],
    figures: &mut [Vec<Figures>],
    mut measure: impl FnMut(usize) -> F,
) {
    let mut order = tools.to_vec();
    if round % 2 == 1 {
        order.reverse();
    }
    let mut this_round: Vec<Option<Figures>> = vec![None; figures.len()];
    for tool in order {
        match measure(tool).await {
            Ok(f) => this_round[tool] = Some(f),
            Err(e) => println!("    round {}: {e}", round + 1),
        }
    }
    if tools.iter().all(|tool| this_round[*tool].is_some()) {
        for (tool, f) in this_round.into_iter().enumerate() {
            if let Some(f) = f {
                figures[tool].push(f);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (a) loadgen against h2load on one farm-node

async fn part_a(bin: &Bins, settings: &Settings, h2load_ok: bool) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(&[]).await;
    let node_addr = free_addr();
    let _node = ChildGuard::spawn(
        clean_command(&bin.farm_node)
            .args(["--control-plane", &control_plane.url()])
            .args(["--listen", &node_addr.to_string()])
            .args(["--name", "load-bench-node"]),
        "farm-node",
    );
    wait_work(node_addr).await;
    let body = work_body(scratch.path());
    let url = format!("http://{node_addr}/farm.v1.Workload/Work");

    println!(
        "(a) Workload/Work on one farm-node, closed loop, {} rounds of {} s after {} s warm-up, \
         order alternating; medians",
        settings.rounds,
        settings.secs.as_secs(),
        WARMUP.as_secs()
    );
    println!(
        "    ÷h2load: median of the per-round ratios (each round's figures taken back to back)"
    );
    println!(
        "    h2load: -c C -m M (one thread, its default); loadgen --threads 1 run --max --connections C \
         --concurrency C*M; loadgen stream: --mode stream --streams M (one message in flight per stream); \
         default threads: loadgen without --threads ({})",
        loadgen::config::default_run_threads()
    );
    // Per shape: h2load, loadgen unary, loadgen stream, loadgen unary on
    // its default threads.
    let tools: &[usize] = if h2load_ok { &[0, 1, 2, 3] } else { &[1, 2, 3] };
    let mut results: Vec<Vec<Vec<Figures>>> = settings
        .shapes
        .iter()
        .map(|_| vec![Vec::new(); 4])
        .collect();
    for round in 0..settings.rounds {
        for (shape, figures) in settings.shapes.iter().zip(&mut results) {
            paired_round(round, tools, figures, |tool| {
                let (url, body, scratch) = (&url, &body, scratch.path());
                async move {
                    if tool == 0 {
                        return h2load(url, body, *shape, settings.secs).await;
                    }
                    let how = LoadgenRun {
                        targets: ["--target".into(), node_addr.to_string()],
                        connections: shape.0,
                        streams: (tool == 2).then_some(shape.1),
                        in_flight: shape.0 * shape.1,
                        threads: (tool != 3).then_some(1),
                        secs: settings.secs,
                        scratch,
                    };
                    loadgen_run(&bin.loadgen, &how).await
                }
            })
            .await;
        }
    }
    println!();
    header("÷h2load");
    for ((c, m), figures) in settings.shapes.iter().zip(&results) {
        compare(
            &format!("{c}×{m}"),
            ("h2load", &figures[0]),
            &[
                ("loadgen run --max (unary)", &figures[1]),
                ("loadgen run --max (stream)", &figures[2]),
                ("loadgen (unary, default threads)", &figures[3]),
            ],
        );
    }
    println!();
}

/// `Work {id: 1}` as a gRPC body file in `scratch`, for h2load.
fn work_body(scratch: &Path) -> PathBuf {
    let body = scratch.join("work.grpc");
    std::fs::write(
        &body,
        grpc_body(&WorkRequest {
            id: 1,
            ..Default::default()
        }),
    )
    .expect("body file");
    body
}

// ---------------------------------------------------------------------------
// (f) loadgen across the farm

/// Process nodes of (f).
const FARM_NODES: u32 = 50;
/// Requests in flight per node in (f).
const FARM_PER_NODE: usize = 8;

/// One `h2load -c 1 -m 8` per URL, all at once; their rates summed.
async fn h2load_each(urls: &[String], body: &Path, secs: Duration) -> Result<Figures, String> {
    let h2load = Path::new("h2load");
    let mut running = Vec::with_capacity(urls.len());
    for url in urls {
        let args = h2load_args(std::slice::from_ref(url), body, (1, FARM_PER_NODE), secs);
        running.push((start_tool(h2load, &args)?, args));
    }
    let mut total = Figures {
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        ..Figures::default()
    };
    for (child, args) in running {
        let output = finish_tool(child, h2load, &args, secs + WARMUP + READY_LIMIT).await?;
        let text = String::from_utf8_lossy(&output.stdout);
        let one =
            parse_h2load(&text).ok_or_else(|| format!("cannot read h2load's output:\n{text}"))?;
        total.rps += one.rps;
        total.errors += one.errors;
    }
    Ok(total)
}

async fn part_f(bin: &Bins, settings: &Settings, h2load_ok: bool) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let farm = ControlPlaneProcess::measured(data.path(), FARM_NODES)
        .start()
        .await;
    let nodes = farm
        .wait_healthy(FARM_NODES as usize, Duration::from_secs(120))
        .await;
    let mut addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    addresses.sort();
    let urls: Vec<String> = addresses
        .iter()
        .map(|address| format!("http://{address}/farm.v1.Workload/Work"))
        .collect();
    // The node h2load drives when given every URL.
    let first = addresses[0].clone();
    let body = work_body(scratch.path());
    let in_flight = FARM_NODES as usize * FARM_PER_NODE;
    println!(
        "(f) Workload/Work across a farm of {FARM_NODES} process nodes, {in_flight} in flight, \
         {} rounds of {} s after {} s warm-up, order alternating; medians",
        settings.rounds,
        settings.secs.as_secs(),
        WARMUP.as_secs()
    );
    println!(
        "    farm: loadgen --threads 1 run --control-plane URL --max --concurrency {in_flight} \
         (a connection per node, {FARM_PER_NODE} in flight on each), against one \
         h2load -c 1 -m {FARM_PER_NODE} per node, all at once, their rates summed \
         (h2load drives only the first URL's host and port, so one h2load cannot spread over a farm)"
    );
    println!(
        "    one node: h2load -c {FARM_NODES} -m {FARM_PER_NODE} given the {FARM_NODES} URLs (which \
         drives the first node only), against loadgen --threads 1 --connections {FARM_NODES} on that node"
    );
    // Farm: h2load per node, loadgen; one node: h2load, loadgen.
    let tools: &[usize] = if h2load_ok { &[0, 1, 2, 3] } else { &[1, 3] };
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); 4];
    for round in 0..settings.rounds {
        paired_round(round, tools, &mut figures, |tool| {
            let (urls, body, first, farm) = (&urls, &body, &first, &farm);
            let scratch = scratch.path();
            async move {
                match tool {
                    0 => h2load_each(urls, body, settings.secs).await,
                    2 => h2load_on_first(urls, body, settings.secs).await,
                    _ => {
                        let (targets, connections) = if tool == 1 {
                            (["--control-plane".into(), farm.url()], 1)
                        } else {
                            (["--target".into(), first.clone()], FARM_NODES as usize)
                        };
                        let how = LoadgenRun {
                            targets,
                            connections,
                            streams: None,
                            in_flight,
                            threads: Some(1),
                            secs: settings.secs,
                            scratch,
                        };
                        loadgen_run(&bin.loadgen, &how).await
                    }
                }
            }
        })
        .await;
    }
    println!();
    header("÷h2load");
    compare(
        "farm",
        ("h2load per node, summed", &figures[0]),
        &[("loadgen --control-plane", &figures[1])],
    );
    compare(
        "one node",
        ("h2load -c 50 -m 8, 50 URLs", &figures[2]),
        &[("loadgen --connections 50", &figures[3])],
    );
    println!();
}

/// `h2load -c 50 -m 8` given every URL of the farm: it drives the first
/// one's node only.
async fn h2load_on_first(urls: &[String], body: &Path, secs: Duration) -> Result<Figures, String> {
    let args = h2load_args(urls, body, (FARM_NODES as usize, FARM_PER_NODE), secs);
    let output = run_tool(Path::new("h2load"), &args, secs + WARMUP + READY_LIMIT).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_h2load(&text).ok_or_else(|| format!("cannot read h2load's output:\n{text}"))
}

// ---------------------------------------------------------------------------
// (b) Register and Discover against a bare echo server

/// `farm.v1.Workload` whose `Work` answers at once; nothing else is served.
#[derive(Debug)]
struct Echo;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WorkResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Workload for Echo {
    async fn work(&self, request: Request<WorkRequest>) -> Result<Response<WorkResponse>, Status> {
        Ok(Response::new(WorkResponse {
            id: request.into_inner().id,
            ..Default::default()
        }))
    }

    type WorkStreamStream = ResponseStream;

    async fn work_stream(
        &self,
        _: Request<Streaming<WorkRequest>>,
    ) -> Result<Response<Self::WorkStreamStream>, Status> {
        Err(Status::unimplemented("echo serves Work only"))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("echo serves Work only"))
    }

    async fn simulate_load(
        &self,
        _: Request<LoadSpec>,
    ) -> Result<Response<SimulateLoadResponse>, Status> {
        Err(Status::unimplemented("echo serves Work only"))
    }

    async fn set_log_level(
        &self,
        _: Request<SetLogLevelRequest>,
    ) -> Result<Response<SetLogLevelResponse>, Status> {
        Err(Status::unimplemented("echo serves Work only"))
    }
}

/// The child's side: serves echo on a free port, prints the address, and
/// stops when its standard input closes (the parent went away).
async fn echo_main() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}").expect("stdout");
        out.flush().expect("stdout");
    }
    let parent_gone = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 64];
            while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        })
        .await;
    };
    // Socket settings as the control plane's server.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(WorkloadServer::new(Echo))
        .serve_with_incoming_shutdown(incoming, parent_gone)
        .await
        .expect("echo server");
}

/// Starts the echo server: this bench again, in echo mode.
fn start_echo() -> (ChildGuard, SocketAddr) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = ChildGuard::spawn(
        Command::new(exe).env(ECHO_ENV, "1").stdout(Stdio::piped()),
        "echo server",
    );
    let stdout = child.take_stdout().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("echo server address");
    let addr = line
        .trim()
        .parse()
        .expect("echo server printed its address");
    (child, addr)
}

/// What the closed-loop driver calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Echo,
    Discover,
    Register,
    /// `PutConfig` of the global scope, a new version per call.
    PutConfig,
    /// etcd's `KV/Put` of a new key per call.
    EtcdPut,
}

/// One driver task's OK latencies and errors by status code.
type TaskTally = (Histogram<u64>, BTreeMap<String, u64>);

/// What one driver run measured.
#[derive(Debug, Default)]
struct Driven {
    figures: Figures,
    errors_by_code: BTreeMap<String, u64>,
}

/// Closed loop: `channels` HTTP/2 connections, `tasks` per connection each
/// with one call in flight, for `secs` after the warm-up. Counts the calls
/// that complete within the measured window; only OK answers count toward
/// throughput and latency, the others are counted by status code. `tag`
/// makes Register names unique across runs against one control plane.
async fn drive(
    addr: SocketAddr,
    call: Call,
    (channels, tasks): (usize, usize),
    secs: Duration,
    tag: &str,
) -> Driven {
    let channels: Vec<Channel> = (0..channels).map(|_| channel(addr)).collect();
    let start = Instant::now();
    let measure = start + WARMUP;
    let end = measure + secs;
    let tag: Arc<str> = tag.into();
    let workers: Vec<JoinHandle<TaskTally>> = (0..channels.len() * tasks)
        .map(|task| {
            let channel = channels[task % channels.len()].clone();
            let tag = Arc::clone(&tag);
            tokio::spawn(async move {
                let mut work = WorkloadClient::new(channel.clone());
                let mut discovery = DiscoveryClient::new(channel.clone());
                let mut registry = RegistryClient::new(channel.clone());
                let mut config = ConfigClient::new(channel.clone());
                let mut etcd = tonic::client::Grpc::new(channel);
                let mut latency = new_histogram();
                let mut errors = BTreeMap::new();
                for seq in 0u64.. {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let result = match call {
                        Call::Echo => work
                            .work(WorkRequest {
                                id: seq,
                                ..Default::default()
                            })
                            .await
                            .map(drop),
                        Call::Discover => discovery
                            .discover(DiscoverRequest {
                                count: DISCOVER_COUNT,
                                ..Default::default()
                            })
                            .await
                            .map(drop),
                        Call::Register => registry
                            .register(RegisterRequest {
                                name: format!("{tag}-t{task}-{seq}"),
                                address: format!("127.0.0.1:{}", 1024 + seq % 60_000),
                                group: format!("{tag}-t{task}-g{}", seq / PER_GROUP),
                                ..Default::default()
                            })
                            .await
                            .map(drop),
                        Call::PutConfig => config
                            .put_config(config_put(&tag, task, seq))
                            .await
                            .map(drop),
                        Call::EtcdPut => etcd_put(&mut etcd, &tag, task, seq).await,
                    };
                    let done = Instant::now();
                    if done < measure || done > end {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            let micros =
                                u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                            latency.saturating_record(micros.max(1));
                        }
                        Err(status) => {
                            *errors.entry(format!("{:?}", status.code())).or_insert(0) += 1;
                        }
                    }
                }
                (latency, errors)
            })
        })
        .collect();
    let mut latency = new_histogram();
    let mut errors_by_code = BTreeMap::new();
    for worker in workers {
        let (l, e) = worker.await.expect("driver task");
        latency.add(&l).expect("same bounds");
        for (code, n) in e {
            *errors_by_code.entry(code).or_insert(0) += n;
        }
    }
    let ok = latency.len();
    Driven {
        figures: Figures {
            rps: ok as f64 / secs.as_secs_f64(),
            p50_us: latency.value_at_quantile(0.5) as f64,
            p99_us: latency.value_at_quantile(0.99) as f64,
            errors: errors_by_code.values().sum(),
        },
        errors_by_code,
    }
}

/// Nodes that heartbeat for as long as this lives, so Discover has healthy
/// peers to pick from.
struct Peers(Vec<JoinHandle<()>>);

impl Drop for Peers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn healthy_peers(addr: SocketAddr, count: usize) -> Peers {
    let channel = channel(addr);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let mut registry = RegistryClient::new(channel.clone());
        let registered = registry
            .register(RegisterRequest {
                name: format!("peer-{i}"),
                address: format!("127.0.0.1:{}", 20_000 + i),
                ..Default::default()
            })
            .await
            .expect("register a peer")
            .into_inner();
        let every = Duration::from_millis(u64::from(registered.heartbeat_interval_ms.max(10)));
        let (tx, rx) = mpsc::channel(4);
        tx.send(HeartbeatRequest {
            node_id: registered.node_id,
            secret: registered.secret,
            seq: 1,
            serving: true,
            ..Default::default()
        })
        .await
        .expect("queue");
        let mut acks = registry
            .heartbeat(ReceiverStream::new(rx))
            .await
            .expect("heartbeat stream")
            .into_inner();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            for seq in 2u64.. {
                tokio::select! {
                    _ = tick.tick() => {
                        let beat = HeartbeatRequest { seq, serving: true, ..Default::default() };
                        if tx.send(beat).await.is_err() {
                            break;
                        }
                    }
                    ack = acks.message() => if !matches!(ack, Ok(Some(_))) {
                        break;
                    }
                }
            }
        }));
    }
    // Healthy once the first heartbeats are in.
    let discovery = DiscoveryClient::new(channel);
    let what = format!("{count} healthy peers");
    eventually(what, READY_LIMIT, || async {
        let matched = discovery
            .clone()
            .discover(DiscoverRequest {
                count: 1,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().matched)
            .unwrap_or(0);
        ready_if(matched as usize >= count, matched)
    })
    .await;
    Peers(tasks)
}

async fn part_b(settings: &Settings, h2load_ok: bool) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (_echo, echo_addr) = start_echo();
    wait_work(echo_addr).await;
    let work_body = scratch.path().join("work.grpc");
    std::fs::write(
        &work_body,
        grpc_body(&WorkRequest {
            id: 1,
            ..Default::default()
        }),
    )
    .expect("body file");
    let discover_body = scratch.path().join("discover.grpc");
    std::fs::write(
        &discover_body,
        grpc_body(&DiscoverRequest {
            count: DISCOVER_COUNT,
            ..Default::default()
        }),
    )
    .expect("body file");

    let (k, t) = DRIVER;
    println!(
        "(b) control plane against a bare tonic echo server, closed loop, {k} connections × {t} \
         calls in flight, {} rounds of {} s after {} s warm-up; medians",
        settings.rounds,
        settings.secs.as_secs(),
        WARMUP.as_secs()
    );
    println!("    ÷echo: median of the per-round ratios");
    println!(
        "    driver: one tonic client in this bench, OK answers only. echo: Workload/Work \
         answering at once (a child process, tonic defaults, nodelay)."
    );
    println!(
        "    Discover: count {DISCOVER_COUNT} among {PEERS} healthy heartbeating nodes. Register: a new \
         identity per call (unique name, no node_id), {PER_GROUP} per group, fresh control plane \
         (--runtime none --nodes 0) each round, SQLite synchronous=FULL on {}",
        std::env::temp_dir().display()
    );
    // echo (h2load), discover (h2load), echo, discover, register (driver)
    let mut runs: [Vec<Figures>; 5] = Default::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..settings.rounds {
        let control_plane = ControlPlane::start(&[]).await;
        let _peers = healthy_peers(control_plane.addr(), PEERS).await;
        let echo_url = format!("http://{echo_addr}/farm.v1.Workload/Work");
        let discover_url = format!("{}/farm.v1.Discovery/Discover", control_plane.url());
        let mut order: Vec<usize> = if h2load_ok {
            vec![0, 2, 1, 3, 4]
        } else {
            vec![2, 3, 4]
        };
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this_round: [Option<Figures>; 5] = [None; 5];
        for which in order {
            let measured = match which {
                0 => h2load(&echo_url, &work_body, DRIVER, settings.secs).await,
                1 => h2load(&discover_url, &discover_body, DRIVER, settings.secs).await,
                _ => {
                    let (addr, call) = match which {
                        2 => (echo_addr, Call::Echo),
                        3 => (control_plane.addr(), Call::Discover),
                        _ => (control_plane.addr(), Call::Register),
                    };
                    let driven =
                        drive(addr, call, DRIVER, settings.secs, &format!("r{round}")).await;
                    for (code, n) in driven.errors_by_code {
                        *errors.entry(format!("{call:?} {code}")).or_insert(0) += n;
                    }
                    Ok(driven.figures)
                }
            };
            match measured {
                Ok(f) => this_round[which] = Some(f),
                Err(e) => println!("    round {}: {e}", round + 1),
            }
        }
        if this_round[2..].iter().all(Option::is_some) {
            for (which, f) in this_round.into_iter().enumerate() {
                if let Some(f) = f {
                    runs[which].push(f);
                }
            }
        }
    }
    let [h2_echo, h2_discover, echo, discover, register] = &runs;
    println!();
    header("÷echo");
    let shape = format!("{k}×{t}");
    if h2load_ok {
        row(&shape, "h2load  echo Work", h2_echo, Some(1.0));
        row(
            &shape,
            "h2load  Discover",
            h2_discover,
            Some(ratio(h2_discover, h2_echo)),
        );
    }
    row(&shape, "driver  echo Work", echo, Some(1.0));
    row(
        &shape,
        "driver  Discover",
        discover,
        Some(ratio(discover, echo)),
    );
    row(
        &shape,
        "driver  Register",
        register,
        Some(ratio(register, echo)),
    );
    if h2load_ok {
        println!("  driver echo ÷ h2load echo: {:.2}", ratio(echo, h2_echo));
    }
    footer(&errors, "Register ÷ echo and Discover ÷ echo ≥ 0.50");
}

/// The end of a table of durable calls: errors by call and status code,
/// the target, and the disk's own sync rate for scale.
fn footer(errors: &BTreeMap<String, u64>, target: &str) {
    for (what, n) in errors {
        println!("  errors: {what}: {n}");
    }
    println!("  target: {target}");
    let (rate, p50, p99) = fsync_probe(&std::env::temp_dir());
    println!(
        "  disk, for scale: serial 4 KiB write + fdatasync in {}: {rate:.0}/s (p50 {p50:.0} µs, \
         p99 {p99:.0} µs)",
        std::env::temp_dir().display()
    );
    println!();
}

// ---------------------------------------------------------------------------
// (c) swarm ladder

/// One rung of the ladder, as `loadgen swarm --json` reports it.
#[derive(Debug)]
struct Rung {
    nodes: usize,
    registered: u64,
    heartbeats: u64,
    errors: u64,
    rtt: [f64; 5],
    register_p99_us: f64,
    /// From the start to the last registration answered.
    registration_s: f64,
    /// CPU microseconds per heartbeat acknowledged while measuring, of the
    /// control plane and of `loadgen swarm`.
    cpu_us: (f64, f64),
}

/// CPU seconds of two processes, read every 100 ms from the start of a
/// run: `(seconds since the start, first, second)`.
#[derive(Debug, Default)]
struct CpuTrace(Vec<(f64, f64, f64)>);

impl CpuTrace {
    /// Samples `pids` until the returned task is aborted.
    fn sample(pids: (u32, u32), into: Arc<std::sync::Mutex<Self>>) -> JoinHandle<()> {
        let started = Instant::now();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                let sample = (
                    started.elapsed().as_secs_f64(),
                    cpu_seconds(pids.0),
                    cpu_seconds(pids.1),
                );
                into.lock().expect("trace").0.push(sample);
            }
        })
    }

    /// CPU seconds each used between `from` and `to` seconds after the
    /// start (the samples nearest to each).
    fn between(&self, from: f64, to: f64) -> (f64, f64) {
        let at = |t: f64| {
            self.0
                .iter()
                .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
                .map_or((f64::NAN, f64::NAN), |s| (s.1, s.2))
        };
        let (a, b) = (at(from), at(to));
        (b.0 - a.0, b.1 - a.1)
    }
}

/// The arguments of a `loadgen swarm` of `nodes` nodes against `url`,
/// quiet, writing its report to `json`, with `options` (durations, timeouts,
/// `--samples`) added.
fn swarm_args(url: String, nodes: usize, json: &Path, options: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "swarm".into(),
        "--control-plane".into(),
        url,
        "--nodes".into(),
        nodes.to_string(),
        "--quiet".into(),
        "--json".into(),
        json.display().to_string(),
    ];
    args.extend_from_slice(options);
    args
}

/// The report a `loadgen swarm --json` wrote.
fn swarm_report(json: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("no JSON: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("swarm JSON: {e}"))
}

async fn swarm(bin: &Bins, nodes: usize, secs: Duration, scratch: &Path) -> Result<Rung, String> {
    // Room for every node in the default group (10 000 by default).
    let control_plane = ControlPlane::start(&["--group-capacity", "1000000"]).await;
    let json = scratch.join(format!("swarm-{nodes}.json"));
    let options = [
        "--heartbeat".into(),
        "1s".into(),
        "--duration".into(),
        format!("{}s", secs.as_secs()),
        "--ramp-timeout".into(),
        format!("{}s", SWARM_RAMP.as_secs()),
        "--cleanup-timeout".into(),
        format!("{}s", SWARM_CLEANUP.as_secs()),
    ];
    let args = swarm_args(control_plane.url(), nodes, &json, &options);
    // Registration comes first and may be slow (every identity on disk),
    // deregistration last.
    let limit = secs + SWARM_RAMP + SWARM_CLEANUP + Duration::from_secs(15);
    let child = start_tool(&bin.loadgen, &args)?;
    let pids = (
        control_plane.process.pid().as_raw().unsigned_abs(),
        child.id().unwrap_or(0),
    );
    let trace = Arc::new(std::sync::Mutex::new(CpuTrace::default()));
    let sampler = CpuTrace::sample(pids, Arc::clone(&trace));
    let finished = finish_tool(child, &bin.loadgen, &args, limit).await;
    sampler.abort();
    finished?;
    let report = swarm_report(&json)?;
    let number = |pointer: &str| report.pointer(pointer).and_then(serde_json::Value::as_f64);
    let rtt = |p: &str| number(&format!("/heartbeat_rtt_us/{p}")).unwrap_or(f64::NAN);
    let registration_s = number("/registration_s").unwrap_or(f64::NAN);
    let measured_s = number("/duration_s").unwrap_or(f64::NAN);
    let heartbeats = number("/heartbeats").unwrap_or(0.0);
    let cpu = trace
        .lock()
        .expect("trace")
        .between(registration_s, registration_s + measured_s);
    let per_beat = |seconds: f64| seconds / heartbeats * 1e6;
    Ok(Rung {
        nodes,
        registered: number("/registered").ok_or("swarm JSON has no `registered`")? as u64,
        heartbeats: number("/heartbeats").unwrap_or(0.0) as u64,
        errors: number("/errors").unwrap_or(0.0) as u64,
        rtt: [rtt("p50"), rtt("p90"), rtt("p99"), rtt("p999"), rtt("max")],
        register_p99_us: number("/register_us/p99").unwrap_or(f64::NAN),
        registration_s,
        cpu_us: (per_beat(cpu.0), per_beat(cpu.1)),
    })
}

async fn part_c(bin: &Bins, settings: &Settings) {
    let scratch = tempfile::tempdir().expect("tempdir");
    println!(
        "(c) loadgen swarm --heartbeat 1s --duration {}s, a fresh control plane per size \
         (--runtime none --nodes 0 --group-capacity 1000000); heartbeat round trips in ms; \
         a size passes with every node registered, no error and p99 under 50 ms",
        settings.swarm_secs.as_secs()
    );
    let started = Instant::now();
    let mut rungs = Vec::new();
    for &nodes in &settings.swarm_ladder {
        if started.elapsed() > settings.swarm_budget {
            println!(
                "  stopping before {nodes} nodes: past the {} s budget (FARM_BENCH_SWARM_BUDGET)",
                settings.swarm_budget.as_secs()
            );
            break;
        }
        match swarm(bin, nodes, settings.swarm_secs, scratch.path()).await {
            Ok(rung) => {
                let failed = !passes(&rung);
                rungs.push(rung);
                if failed {
                    break;
                }
            }
            Err(e) if rungs.is_empty() => {
                println!("  skipped: `loadgen swarm` does not work here ({e})");
                println!();
                return;
            }
            Err(e) => {
                println!("  {nodes} nodes: {e}");
                break;
            }
        }
    }
    println!(
        "  {:>6} {:>10} {:>8} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>11} {:>8} {:>8}  p99 < 50 ms",
        "nodes",
        "registered",
        "in s",
        "heartbeats",
        "errors",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "reg p99 ms",
        "CP µs/hb",
        "LG µs/hb",
    );
    for r in &rungs {
        let ms = |us: f64| us / 1e3;
        println!(
            "  {:>6} {:>10} {:>8.1} {:>10} {:>7} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.1} {:>11.1} {:>8.1} {:>8.1}  {}",
            r.nodes,
            r.registered,
            r.registration_s,
            r.heartbeats,
            r.errors,
            ms(r.rtt[0]),
            ms(r.rtt[1]),
            ms(r.rtt[2]),
            ms(r.rtt[3]),
            ms(r.rtt[4]),
            ms(r.register_p99_us),
            r.cpu_us.0,
            r.cpu_us.1,
            if passes(r) { "yes" } else { "no" }
        );
    }
    println!(
        "  in s: from the start to every node registered. CP/LG µs/hb: CPU (user and system) \
         of the control plane and of loadgen per heartbeat acknowledged while measuring"
    );
    match rungs.iter().filter(|r| passes(r)).map(|r| r.nodes).max() {
        Some(n) => println!("  largest swarm with heartbeat p99 under 50 ms: {n} nodes"),
        None => println!("  no swarm size kept heartbeat p99 under 50 ms"),
    }
    println!();
}

/// Every node registered, no errors, heartbeat p99 under the limit.
fn passes(rung: &Rung) -> bool {
    rung.registered == rung.nodes as u64
        && rung.errors == 0
        && rung.heartbeats > 0
        && rung.rtt[2] < SWARM_P99_LIMIT_US
}

// ---------------------------------------------------------------------------
// (d) memory after swarms

/// Resident memory of `pid` in MiB, 0 when it cannot be read.
fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid).map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// One swarm run of (d): nodes registered, and the control plane's resident
/// memory at its highest during the run and `settle` after it, in MiB.
struct MemoryRun {
    registered: u64,
    peak_mib: f64,
    after_mib: f64,
}

async fn memory_run(
    bin: &Bins,
    control_plane: &ControlPlane,
    nodes: usize,
    settle: Duration,
    json: &Path,
) -> Result<MemoryRun, String> {
    let options = [
        "--samples".into(),
        "--duration".into(),
        "3s".into(),
        "--ramp-timeout".into(),
        format!("{}s", SWARM_RAMP.as_secs()),
        // Every node leaves before the next run: deregistering is one
        // durable write per node.
        "--cleanup-timeout".into(),
        "120s".into(),
    ];
    let args = swarm_args(control_plane.url(), nodes, json, &options);
    let pid = control_plane.process.id();
    let limit = SWARM_RAMP + Duration::from_secs(150);
    let run = run_tool(&bin.loadgen, &args, limit);
    tokio::pin!(run);
    let mut peak_mib = rss_mib(pid);
    let mut every = tokio::time::interval(Duration::from_millis(200));
    let finished = loop {
        tokio::select! {
            finished = &mut run => break finished,
            _ = every.tick() => peak_mib = peak_mib.max(rss_mib(pid)),
        }
    };
    finished?;
    tokio::time::sleep(settle).await;
    Ok(MemoryRun {
        registered: swarm_report(json)?
            .pointer("/registered")
            .and_then(serde_json::Value::as_u64)
            .ok_or("swarm JSON has no `registered`")?,
        peak_mib,
        after_mib: rss_mib(pid),
    })
}

async fn part_d(bin: &Bins, settings: &Settings) {
    println!(
        "(d) one control plane (--runtime none --nodes 0 --group-capacity 1000000), {} runs \
         of loadgen swarm --nodes {} --samples --duration 3s one after another, every node \
         leaving at the end of each; resident memory in MiB, \"after\" {} s after a run",
        settings.memory_runs,
        settings.memory_nodes,
        settings.memory_settle.as_secs()
    );
    memory_series(bin, settings, None).await;
    if let Some(versus) = &settings.memory_versus {
        memory_series(bin, settings, Some(versus)).await;
    }
    println!();
}

/// The runs of (d) against one build of the control plane (this
/// workspace's, or `program`).
async fn memory_series(bin: &Bins, settings: &Settings, program: Option<&Path>) {
    let (runs, nodes, settle) = (
        settings.memory_runs,
        settings.memory_nodes,
        settings.memory_settle,
    );
    match program {
        None => println!("  this workspace's control plane:"),
        Some(program) => println!("  {}:", program.display()),
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let control_plane =
        ControlPlane::start_program(program, &["--group-capacity", "1000000"]).await;
    let pid = control_plane.process.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_mib(pid);
    println!("  idle: {idle:.1} MiB");
    println!(
        "  {:>4} {:>10} {:>10} {:>8}",
        "run", "registered", "highest", "after"
    );
    let mut done = Vec::new();
    for n in 1..=runs {
        let json = scratch.path().join(format!("memory-{n}.json"));
        match memory_run(bin, &control_plane, nodes, settle, &json).await {
            Ok(run) => {
                println!(
                    "  {n:>4} {:>10} {:>10.1} {:>8.1}",
                    run.registered, run.peak_mib, run.after_mib
                );
                done.push(run);
            }
            Err(e) => {
                println!("  run {n}: {e}");
                break;
            }
        }
    }
    let (Some(first), Some(last)) = (done.first(), done.last()) else {
        return;
    };
    println!(
        "  after the last run ÷ after the first: {:.2} (target ≤ 1.20)",
        last.after_mib / first.after_mib
    );
    let per_node: Vec<f64> = done
        .iter()
        .filter(|r| r.registered > 0)
        .map(|r| (r.peak_mib - idle) * 1024.0 * 1024.0 / r.registered as f64)
        .collect();
    if !per_node.is_empty() {
        println!(
            "  bytes per registered node (highest minus idle, median of runs): {:.0}",
            median(per_node)
        );
    }
}

// ---------------------------------------------------------------------------
// (e) durable writes against etcd

/// etcd's `etcdserverpb.PutRequest`, the two fields a put needs (etcd's
/// `rpc.proto`: `key = 1`, `value = 2`).
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdPutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse`; its fields are not read (prost skips them).
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdPutResponse {}

/// Bytes of each value etcd stores: about what a node's identity row holds
/// (name, address, group, secret digest).
const ETCD_VALUE: usize = 160;

/// One `KV/Put` of a new key, through tonic's generic client.
async fn etcd_put(
    etcd: &mut tonic::client::Grpc<Channel>,
    tag: &str,
    task: usize,
    seq: u64,
) -> Result<(), Status> {
    etcd.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = EtcdPutRequest {
        key: format!("{tag}-t{task}-{seq}").into_bytes(),
        value: vec![b'v'; ETCD_VALUE],
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = tonic_prost::ProstCodec::<EtcdPutRequest, EtcdPutResponse>::default();
    etcd.unary(Request::new(request), path, codec)
        .await
        .map(drop)
}

/// A new version of the global scope: which writer wrote it, and its count.
fn config_put(tag: &str, task: usize, seq: u64) -> PutConfigRequest {
    let number = |n: f64| prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    };
    let text = |s: String| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s)),
    };
    PutConfigRequest {
        scope: "global".into(),
        data: Some(prost_types::Struct {
            fields: BTreeMap::from([
                ("writer".to_owned(), text(format!("{tag}-t{task}"))),
                ("seq".to_owned(), number(seq as f64)),
            ]),
        }),
        expected_version: 0,
        merge: false,
    }
}

/// `etcd` on loopback in a folder of its own, with its defaults (every
/// write's log entry synced before it is answered); stopped when dropped.
struct Etcd {
    _child: ChildGuard,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start() -> Self {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
        let (client, peer) = (free_addr(), free_addr());
        let mut command = Command::new("etcd");
        command
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                format!("--listen-client-urls=http://{client}"),
                format!("--advertise-client-urls=http://{client}"),
                format!("--listen-peer-urls=http://{peer}"),
                format!("--initial-advertise-peer-urls=http://{peer}"),
                format!("--initial-cluster=bench=http://{peer}"),
                "--log-level=error".to_owned(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ChildGuard::spawn(&mut command, "etcd");
        let etcd = Self {
            _child: child,
            addr: client,
            _dir: dir,
        };
        let channel = channel(client);
        eventually("etcd to answer a put", READY_LIMIT, || {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            async move { etcd_put(&mut grpc, "ready", 0, 0).await }
        })
        .await;
        etcd
    }
}

async fn part_e(settings: &Settings) {
    if !have("etcd") {
        println!(
            "(e) etcd is not installed: part (e) is left out. Install it with `apt-get install \
             etcd-server` (Debian) and run again.\n"
        );
        return;
    }
    println!(
        "(e) durable writes against etcd, closed loop, the same tonic client for all three, \
         {} rounds of {} s after {} s warm-up, fresh servers each round; medians",
        settings.rounds,
        settings.secs.as_secs(),
        WARMUP.as_secs()
    );
    println!(
        "    etcd Put: a new key per call, {ETCD_VALUE}-byte value, etcd's defaults (its log \
         synced before each answer). Register: a new identity per call, as in (b). PutConfig: a \
         new version of the global scope per call. Both on disk before their answer, in {}",
        std::env::temp_dir().display()
    );
    println!("    ÷etcd: median of the per-round ratios against etcd Put at the same shape");
    let calls = [Call::EtcdPut, Call::Register, Call::PutConfig];
    let mut runs: BTreeMap<((usize, usize), usize), Vec<Figures>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..settings.rounds {
        let etcd = Etcd::start().await;
        let control_plane = ControlPlane::start(&[]).await;
        for &shape in &settings.write_shapes {
            let mut order: Vec<usize> = (0..calls.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for which in order {
                let call = calls[which];
                let addr = match call {
                    Call::EtcdPut => etcd.addr,
                    _ => control_plane.addr(),
                };
                let tag = format!("r{round}-{}x{}", shape.0, shape.1);
                let driven = drive(addr, call, shape, settings.secs, &tag).await;
                for (code, n) in driven.errors_by_code {
                    *errors.entry(format!("{call:?} {code}")).or_insert(0) += n;
                }
                runs.entry((shape, which)).or_default().push(driven.figures);
            }
        }
    }
    println!();
    header("÷etcd");
    let tools = ["etcd    Put", "driver  Register", "driver  PutConfig"];
    for &shape in &settings.write_shapes {
        let label = format!("{}×{}", shape.0, shape.1);
        let etcd = runs.get(&(shape, 0)).cloned().unwrap_or_default();
        for (which, tool) in tools.iter().enumerate() {
            let these = runs.get(&(shape, which)).cloned().unwrap_or_default();
            row(&label, tool, &these, Some(ratio(&these, &etcd)));
        }
    }
    footer(
        &errors,
        "Register ÷ etcd and PutConfig ÷ etcd ≥ 1.00 at the same shape",
    );
}

// ---------------------------------------------------------------------------

/// The workspace's release binaries.
struct Bins {
    farm_node: PathBuf,
    loadgen: PathBuf,
}

#[tokio::main]
async fn main() {
    if std::env::var_os(ECHO_ENV).is_some() {
        echo_main().await;
        return;
    }
    binary("control-plane");
    let bin = Bins {
        farm_node: binary("farm-node"),
        loadgen: binary("loadgen"),
    };
    let settings = Settings::from_env();
    let h2load_ok = have("h2load");
    if !h2load_ok {
        println!(
            "h2load is not installed: the h2load rows are left out. Install it with \
             `apt-get install nghttp2-client` (Debian) and run again.\n"
        );
    }
    let started = Instant::now();
    if settings.parts.contains('a') {
        part_a(&bin, &settings, h2load_ok).await;
    }
    if settings.parts.contains('b') {
        part_b(&settings, h2load_ok).await;
    }
    if settings.parts.contains('c') {
        part_c(&bin, &settings).await;
    }
    if settings.parts.contains('d') {
        part_d(&bin, &settings).await;
    }
    if settings.parts.contains('e') {
        part_e(&settings).await;
    }
    if settings.parts.contains('f') {
        part_f(&bin, &settings, h2load_ok).await;
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
