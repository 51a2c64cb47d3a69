//! The dependency catalog's line protocol (`control-plane serve
//! --indexer-listen`) against a reference server, measured in one run,
//! medians of alternating rounds.
//!
//! - The reference is the simplest correct design, written here: one OS
//!   thread per connection, one `std::sync::RwLock` over two `HashMap`s
//!   (name → dependencies, name → count of dependents), in memory, nothing
//!   written to disk; same protocol, same rules, replies flushed once a
//!   connection's buffered input is used up. It runs as a child copy of
//!   this bench, so that both servers are processes of their own and
//!   their resident memory can be read from `/proc`.
//! - The catalog is the real `control-plane` binary (release build, no
//!   runtime, no nodes, the product's defaults), its data folder under
//!   `target/tmp/` on the real disk, never a tmpfs: every acknowledged
//!   change is on disk (SQLite, fsync, group commit), and that cost is
//!   what is measured. Its resident memory is the whole control plane's.
//! - One client drives both: `farm_testkit::catalog::LineClient` on tokio,
//!   N connections each with exactly one request in flight, or one
//!   connection pipelining batches of lines. The mix, per request: 90%
//!   `QUERY` of a name drawn uniformly from the set; 5% re-`INDEX` of a
//!   name that has dependencies, with all of them or, at even odds, all
//!   but the last (a real change whenever the name held the other list,
//!   about half the time; the same list again changes nothing, and the
//!   catalog writes nothing for it); 5% as pairs, `REMOVE` then `INDEX`
//!   back to back of a leaf (a name nothing depends on), which always
//!   change the catalog. Every write succeeds. A `QUERY` may answer
//!   FAIL while another connection has a leaf removed; any other answer
//!   than the expected ones (a write refused, an ERROR) counts as an
//!   error. Round trips go into an HDR histogram (µs); a pipelined
//!   round trip is a whole batch's.
//! - First, both servers get the same few dozen probe lines (the rules on
//!   names outside the set, malformed lines); any line they answer
//!   differently is printed, since the comparison holds only while they
//!   agree.
//! - Before measuring, the whole shipped set (`testkit/data/
//!   catalog-graph.txt`, 3,204 Homebrew-shaped names in a shuffled order)
//!   is indexed into each server as a real client does it, retrying what
//!   was refused; the bench prints how long that took and in how many
//!   passes. Memory is then read with the set indexed and no connection,
//!   and again with `FARM_BENCH_IDLE` idle connections open (each has
//!   answered one `QUERY`): the difference over their number is the
//!   memory per open connection.
//! - The table: per shape, operations per second of both, catalog ÷
//!   reference (the median of the per-round ratios), p50 and p99 of both;
//!   then the writes' own round trips. Medians over the rounds; within a
//!   round the two servers take turns, in the opposite order the next
//!   round. Both servers keep running through all rounds.
//!
//! Everything runs on 127.0.0.1; the client and both servers share the
//! machine's cores. Every process started here is stopped, on panic too.
//! The default run takes about two minutes; environment variables change
//! it:
//!
//! - `FARM_BENCH_ROUNDS` (3): rounds;
//! - `FARM_BENCH_SECS` (3): measured seconds per figure, after 1 s warm-up;
//! - `FARM_BENCH_SHAPES` (`1,100,1000,p1000`): `N` for N connections with
//!   one request in flight each, `pN` for one connection sending batches
//!   of N lines;
//! - `FARM_BENCH_IDLE` (1000): idle connections of the memory figure.
//!
//! Run with `cargo build --release && cargo bench -p control-plane --bench catalog`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, PoisonError, RwLock},
    thread,
    time::{Duration, Instant},
};

use farm_testkit::{
    ControlPlaneProcess, binary,
    catalog::{LineClient, Package, Reply, graph},
    env_or, eventually, free_addr, median,
    process::{ChildGuard, fsync_probe},
};
use hdrhistogram::Histogram;
use loadgen::report::new_histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::task::JoinHandle;

/// Set in the environment of the child copy of this bench that serves as
/// the reference.
const REFERENCE_ENV: &str = "FARM_CATALOG_BENCH_REFERENCE";
/// Warm-up before every measured figure.
const WARMUP: Duration = Duration::from_secs(1);
/// Longest wait for a server to answer after its start.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// The reference's longest request line, as the catalog's default.
const MAX_LINE: usize = 64 * 1024;
/// The longest name the protocol accepts, in characters.
const MAX_NAME: usize = 1024;
/// Descriptors the bench keeps for itself besides its connections.
const SPARE_FILES: u64 = 64;

// ---------------------------------------------------------------------------
// Settings

/// How the client drives a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// This many connections, one request in flight on each.
    Connections(usize),
    /// One connection sending batches of this many lines.
    Pipelined(usize),
}

impl Shape {
    fn parse(text: &str) -> Self {
        let text = text.trim();
        let number = |n: &str| {
            n.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("FARM_BENCH_SHAPES: {text:?} is not N or pN"))
        };
        match text.strip_prefix('p') {
            Some(batch) => Self::Pipelined(number(batch)),
            None => Self::Connections(number(text)),
        }
    }

    fn connections(self) -> usize {
        match self {
            Self::Connections(n) => n,
            Self::Pipelined(_) => 1,
        }
    }

    fn label(self) -> String {
        match self {
            Self::Connections(1) => "1 connection".to_owned(),
            Self::Connections(n) => format!("{n} connections"),
            Self::Pipelined(n) => format!("1 conn, ×{n} pipelined"),
        }
    }
}

/// Run length and shapes, from the environment.
#[derive(Debug)]
struct Settings {
    rounds: usize,
    secs: Duration,
    shapes: Vec<Shape>,
    idle: usize,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rounds: env_or("FARM_BENCH_ROUNDS", 3usize).max(1),
            secs: Duration::from_secs(env_or("FARM_BENCH_SECS", 3u64).max(1)),
            shapes: env_or("FARM_BENCH_SHAPES", "1,100,1000,p1000".to_owned())
                .split(',')
                .map(Shape::parse)
                .collect(),
            idle: env_or("FARM_BENCH_IDLE", 1000usize),
        }
    }

    /// Leaves out what needs more open files than this process may have
    /// (each connection is a descriptor here and one in the server),
    /// saying so.
    fn within_file_limit(mut self) -> Self {
        let Some(limit) = open_files_limit() else {
            return self;
        };
        let fits = |n: usize| n as u64 + SPARE_FILES <= limit;
        let (kept, left): (Vec<Shape>, Vec<Shape>) =
            self.shapes.iter().partition(|s| fits(s.connections()));
        for shape in left {
            println!(
                "leaving out {}: more than the {limit} open files allowed (ulimit -n)",
                shape.label()
            );
        }
        self.shapes = kept;
        if !fits(self.idle) {
            let idle = usize::try_from(limit.saturating_sub(SPARE_FILES)).unwrap_or(0);
            println!(
                "{} idle connections instead of {}: {limit} open files allowed (ulimit -n)",
                idle, self.idle
            );
            self.idle = idle;
        }
        self
    }
}

/// The soft limit on open files of this process (children inherit it).
fn open_files_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// The reference server (the child's side)

/// The reference's state: name → dependencies, name → how many indexed
/// names depend on it.
#[derive(Debug, Default)]
struct State {
    dependencies: HashMap<String, Vec<String>>,
    dependents: HashMap<String, usize>,
}

/// A request's command.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Index,
    Remove,
    Query,
}

/// The reference's name rule, as the indexers it stands for check names: 1
/// to [`MAX_NAME`] characters, none of `|`, `,`, whitespace or control
/// characters. (The catalog also refuses other characters that do not
/// print; no line the bench sends holds one.)
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && name
            .chars()
            .all(|c| c != '|' && c != ',' && !c.is_whitespace() && !c.is_control())
}

/// A request line without its newline; `None` when malformed.
fn parse_request(line: &[u8]) -> Option<(Verb, &str, Vec<&str>)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut fields = text.split('|');
    let (command, name, dependencies) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || !valid_name(name) {
        return None;
    }
    let command = match command {
        "INDEX" => Verb::Index,
        "REMOVE" => Verb::Remove,
        "QUERY" => Verb::Query,
        _ => return None,
    };
    let mut dependencies: Vec<&str> = dependencies.split(',').filter(|d| !d.is_empty()).collect();
    if !dependencies.iter().all(|d| valid_name(d)) {
        return None;
    }
    dependencies.sort_unstable();
    dependencies.dedup();
    Some((command, name, dependencies))
}

/// The reply to one request line (without its newline).
fn apply(state: &RwLock<State>, line: &[u8]) -> &'static [u8] {
    const OK: &[u8] = b"OK\n";
    const FAIL: &[u8] = b"FAIL\n";
    let Some((command, name, dependencies)) = parse_request(line) else {
        return b"ERROR\n";
    };
    match command {
        Verb::Query => {
            let state = state.read().unwrap_or_else(PoisonError::into_inner);
            if state.dependencies.contains_key(name) {
                OK
            } else {
                FAIL
            }
        }
        Verb::Index => {
            let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
            let State {
                dependencies: by_name,
                dependents,
            } = &mut *state;
            if !dependencies.iter().all(|d| by_name.contains_key(*d)) {
                return FAIL;
            }
            // A name naming itself does not keep itself from removal.
            for dependency in dependencies.iter().filter(|d| **d != name) {
                *dependents.entry((*dependency).to_owned()).or_default() += 1;
            }
            let new = dependencies.iter().map(|d| (*d).to_owned()).collect();
            if let Some(old) = by_name.insert(name.to_owned(), new) {
                for dependency in old.iter().filter(|d| *d != name) {
                    if let Some(count) = dependents.get_mut(dependency) {
                        *count -= 1;
                    }
                }
            }
            OK
        }
        Verb::Remove => {
            let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
            if state.dependents.get(name).is_some_and(|n| *n > 0) {
                return FAIL;
            }
            let State {
                dependencies: by_name,
                dependents,
            } = &mut *state;
            let old = by_name.remove(name).unwrap_or_default();
            for dependency in old.iter().filter(|d| *d != name) {
                if let Some(count) = dependents.get_mut(dependency) {
                    *count -= 1;
                }
            }
            dependents.remove(name);
            OK
        }
    }
}

/// One connection, on its own thread: a reply per line, flushed when the
/// input read so far is used up (one write per pipelined batch). A line
/// past [`MAX_LINE`] gets ERROR and the connection is closed.
fn serve_connection(stream: TcpStream, state: &RwLock<State>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        if (&mut reader).take(limit).read_until(b'\n', &mut line)? == 0 {
            return writer.flush();
        }
        if line.pop() != Some(b'\n') {
            // Past the limit, or torn by the end of the stream.
            if line.len() >= MAX_LINE {
                writer.write_all(b"ERROR\n")?;
            }
            return writer.flush();
        }
        writer.write_all(apply(state, &line))?;
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

/// The child's side: serves the reference on a free port, prints the
/// address, and exits when its standard input closes (the parent went
/// away).
fn reference_main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}").expect("stdout");
        out.flush().expect("stdout");
    }
    thread::spawn(|| {
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        std::process::exit(0);
    });
    let state = Arc::new(RwLock::new(State::default()));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let state = Arc::clone(&state);
        thread::spawn(move || {
            let _ = serve_connection(stream, &state);
        });
    }
}

// ---------------------------------------------------------------------------
// Processes

/// What keeps a server running; dropping it stops the server.
enum Running {
    Reference(ChildGuard),
    Catalog {
        process: Box<ControlPlaneProcess>,
        _dir: tempfile::TempDir,
    },
}

/// A server under test.
struct Server {
    name: &'static str,
    /// Where it speaks the line protocol.
    addr: SocketAddr,
    running: Running,
}

impl Server {
    fn pid(&self) -> u32 {
        match &self.running {
            Running::Reference(child) => child.id(),
            Running::Catalog { process, .. } => process.id(),
        }
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let pid = self.pid();
        farm_testkit::process::rss_kib(pid)
            .unwrap_or_else(|| panic!("no VmRSS for the {} (pid {pid})", self.name))
    }
}

/// Starts the reference: this bench again, in reference mode.
fn start_reference() -> Server {
    let exe = std::env::current_exe().expect("own path");
    let mut command = Command::new(exe);
    farm_testkit::process::without_farm_env(&mut command)
        .env(REFERENCE_ENV, "1")
        .stdout(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut command, "the reference server");
    let stdout = child.take_stdout().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the reference's address");
    let addr = line
        .trim()
        .parse()
        .expect("the reference printed its address");
    Server {
        name: "reference",
        addr,
        running: Running::Reference(child),
    }
}

/// `target/tmp`: on the disk the build is on, never a tmpfs.
fn scratch_root() -> PathBuf {
    let control_plane = binary("control-plane");
    let target = control_plane
        .parent()
        .and_then(Path::parent)
        .expect("the binary sits in target/<profile>");
    let root = target.join("tmp");
    std::fs::create_dir_all(&root).expect("create target/tmp");
    root
}

/// The real control plane with its line listener, no runtime, no nodes,
/// the product's defaults otherwise, on a fresh data folder in `root`.
async fn start_catalog(root: &Path) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("catalog-bench-")
        .tempdir_in(root)
        .expect("a data folder in target/tmp");
    let addr = free_addr();
    let process = ControlPlaneProcess::measured(dir.path(), 0)
        .flags(&["--indexer-listen", &addr.to_string()])
        .start()
        .await;
    eventually("the catalog's line listener", READY_LIMIT, || async {
        tokio::net::TcpStream::connect(addr).await.map(drop)
    })
    .await;
    Server {
        name: "catalog",
        addr,
        running: Running::Catalog {
            process: Box::new(process),
            _dir: dir,
        },
    }
}

// ---------------------------------------------------------------------------
// The workload

/// Every request line the client sends, made once.
struct Lines {
    query: Vec<String>,
    index: Vec<String>,
    /// `INDEX` with the last dependency left out.
    index_shorter: Vec<String>,
    remove: Vec<String>,
    /// Positions of the names nothing depends on.
    leaves: Vec<usize>,
    /// Positions of the names with a dependency.
    dependent: Vec<usize>,
}

impl Lines {
    fn new(set: &[Package]) -> Self {
        let depended: std::collections::HashSet<&str> = set
            .iter()
            .flat_map(|p| p.dependencies.iter().map(String::as_str))
            .collect();
        Self {
            query: set.iter().map(Package::query_line).collect(),
            index: set.iter().map(Package::index_line).collect(),
            index_shorter: set
                .iter()
                .map(|p| {
                    let kept = p.dependencies.len().saturating_sub(1);
                    farm_testkit::catalog::index_line(&p.name, &p.dependencies[..kept])
                })
                .collect(),
            remove: set.iter().map(Package::remove_line).collect(),
            leaves: (0..set.len())
                .filter(|i| !depended.contains(set[*i].name.as_str()))
                .collect(),
            dependent: (0..set.len())
                .filter(|i| !set[*i].dependencies.is_empty())
                .collect(),
        }
    }
}

/// What a request may be answered, the others being errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A QUERY: OK, or FAIL while another connection has the name removed.
    Answer,
    /// A write of the mix: always OK.
    Done,
}

impl Expect {
    fn met_by(self, reply: Reply) -> bool {
        match self {
            Self::Answer => reply != Reply::Error,
            Self::Done => reply == Reply::Ok,
        }
    }
}

/// The next one or two requests of the mix: of 40 requests, 36 QUERY, 2
/// re-INDEX of a name with dependencies, with all of them or all but the
/// last (a real change whenever the name held the other list), and one
/// REMOVE + INDEX pair of a leaf.
fn next_requests<'a>(lines: &'a Lines, rng: &mut StdRng, out: &mut Vec<(&'a str, Expect)>) {
    let n = lines.query.len();
    match rng.random_range(0..39u32) {
        0..36 => out.push((&lines.query[rng.random_range(0..n)], Expect::Answer)),
        36..38 => {
            let i = lines.dependent[rng.random_range(0..lines.dependent.len())];
            let index = if rng.random_bool(0.5) {
                &lines.index[i]
            } else {
                &lines.index_shorter[i]
            };
            out.push((index, Expect::Done));
        }
        _ => {
            let leaf = lines.leaves[rng.random_range(0..lines.leaves.len())];
            out.push((&lines.remove[leaf], Expect::Done));
            out.push((&lines.index[leaf], Expect::Done));
        }
    }
}

// ---------------------------------------------------------------------------
// Figures

/// One measured figure.
#[derive(Debug, Clone, Copy)]
struct Figures {
    ops: f64,
    p50_us: f64,
    p99_us: f64,
    write_p50_us: f64,
    write_p99_us: f64,
    errors: u64,
}

/// What one driver task saw in the measured window.
struct Tally {
    ops: u64,
    all: Histogram<u64>,
    writes: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            ops: 0,
            all: new_histogram(),
            writes: new_histogram(),
            errors: 0,
        }
    }

    fn add(&mut self, other: &Self) {
        self.ops += other.ops;
        self.all.add(&other.all).expect("same bounds");
        self.writes.add(&other.writes).expect("same bounds");
        self.errors += other.errors;
    }

    fn figures(&self, secs: Duration) -> Figures {
        let quantile = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                f64::NAN
            } else {
                h.value_at_quantile(q) as f64
            }
        };
        Figures {
            ops: self.ops as f64 / secs.as_secs_f64(),
            p50_us: quantile(&self.all, 0.5),
            p99_us: quantile(&self.all, 0.99),
            write_p50_us: quantile(&self.writes, 0.5),
            write_p99_us: quantile(&self.writes, 0.99),
            errors: self.errors,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The measured window: what completes between `measure` and `end`
/// counts.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure: Instant,
    end: Instant,
}

impl Window {
    fn counts(&self, done: Instant) -> bool {
        done >= self.measure && done <= self.end
    }
}

/// One connection, one request in flight, until the window ends.
async fn one_at_a_time(client: &mut LineClient, lines: &Lines, seed: u64, window: Window) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    let mut requests = Vec::with_capacity(2);
    // Bounded by the clock: each step starts before the end.
    while Instant::now() < window.end {
        requests.clear();
        next_requests(lines, &mut rng, &mut requests);
        for (line, expect) in &requests {
            let sent = Instant::now();
            let reply = client.request(line).await;
            let done = Instant::now();
            if !window.counts(done) {
                continue;
            }
            let rtt = micros(done - sent);
            tally.all.saturating_record(rtt);
            if *expect == Expect::Done {
                tally.writes.saturating_record(rtt);
            }
            tally.ops += 1;
            tally.errors += u64::from(!expect.met_by(reply));
        }
    }
    tally
}

/// One connection sending batches of `size` lines (a pair is never split,
/// so a batch may hold one more), one batch in flight, until the window
/// ends; a round trip is a batch's.
async fn pipelined(
    client: &mut LineClient,
    lines: &Lines,
    size: usize,
    seed: u64,
    window: Window,
) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    let mut batch = Vec::with_capacity(size + 1);
    while Instant::now() < window.end {
        batch.clear();
        while batch.len() < size {
            next_requests(lines, &mut rng, &mut batch);
        }
        let requests: Vec<&str> = batch.iter().map(|(line, _)| *line).collect();
        let sent = Instant::now();
        let replies = client.pipeline(&requests).await;
        let done = Instant::now();
        if !window.counts(done) {
            continue;
        }
        tally.all.saturating_record(micros(done - sent));
        tally.ops += replies.len() as u64;
        for ((_, expect), reply) in batch.iter().zip(replies) {
            tally.errors += u64::from(!expect.met_by(reply));
        }
    }
    tally
}

/// Drives `addr` in `shape` for `secs` after the warm-up; counts what
/// completes within the measured window. Connections are opened before
/// the clock starts; connection `i` draws its requests from seed `i`, so
/// both servers get the same requests.
async fn drive(addr: SocketAddr, lines: &Arc<Lines>, shape: Shape, secs: Duration) -> Figures {
    let mut clients = Vec::with_capacity(shape.connections());
    for _ in 0..shape.connections() {
        clients.push(LineClient::connect(addr).await);
    }
    let measure = Instant::now() + WARMUP;
    let window = Window {
        measure,
        end: measure + secs,
    };
    let tasks: Vec<JoinHandle<Tally>> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let lines = Arc::clone(lines);
            let seed = u64::try_from(i).unwrap_or(0);
            tokio::spawn(async move {
                match shape {
                    Shape::Connections(_) => one_at_a_time(&mut client, &lines, seed, window).await,
                    Shape::Pipelined(size) => {
                        pipelined(&mut client, &lines, size, seed, window).await
                    }
                }
            })
        })
        .collect();
    let mut total = Tally::new();
    for task in tasks {
        total.add(&task.await.expect("a driver task"));
    }
    total.figures(secs)
}

/// Request lines on names outside the set, sent in this order: the rules
/// (dependencies first, dependents block a removal, removing what is not
/// indexed, a name naming itself, a re-index) and malformed lines.
fn probes() -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = [
        "INDEX|probe-a|\n",
        "INDEX|probe-b|probe-a\n",
        "REMOVE|probe-a|\n",
        "REMOVE|probe-missing|\n",
        "QUERY|probe-b|\n",
        "QUERY|probe-c|\n",
        "INDEX|probe-c|probe-a,,probe-b,\n",
        "INDEX|probe-d|probe-a,probe-missing\n",
        "INDEX|probe-a|probe-a\n",
        "INDEX|probe-b|\n",
        "REMOVE|probe-c|\n",
        "REMOVE|probe-a|\n",
        "REMOVE|probe-b|\n",
        "INDEX|probe-café|\n",
        "INDEX|probe-gtk+3|probe-café\n",
        "REMOVE|probe-café|\n",
        "REMOVE|probe-gtk+3|\n",
        "REMOVE|probe-café|\n",
        "QUERY|Probe-a|\n",
        "index|probe-a|\n",
        "INDEX|probe-a\n",
        "INDEX|probe-a||\n",
        "INDEX||\n",
        "INDEX|probe a|\n",
        "INDEX|probe-a|\r\n",
        "INDEX|probe-a|probe-\tb\n",
        "\n",
    ]
    .iter()
    .map(|l| l.as_bytes().to_vec())
    .collect();
    lines.push(b"INDEX|probe-\xff|\n".to_vec());
    let name = format!("probe-{}", "x".repeat(MAX_NAME - 6));
    lines.push(format!("QUERY|{name}|\n").into_bytes());
    lines.push(format!("QUERY|{name}x|\n").into_bytes());
    let name = format!("probe-{}", "é".repeat(MAX_NAME - 6));
    lines.push(format!("QUERY|{name}|\n").into_bytes());
    lines
}

/// Sends [`probes`] to each server and prints the lines they answer
/// differently: the comparison holds only for servers that agree.
async fn compare_rules(servers: &[Server]) {
    let probes = probes();
    let mut answers = Vec::new();
    for server in servers {
        let mut client = LineClient::connect(server.addr).await;
        let mut replies = Vec::with_capacity(probes.len());
        for line in &probes {
            replies.push(client.request(line).await);
        }
        answers.push(replies);
    }
    let [first, rest @ ..] = answers.as_slice() else {
        return;
    };
    let mut differ = 0;
    for other in rest {
        for ((line, a), b) in probes.iter().zip(first).zip(other) {
            if a != b {
                differ += 1;
                println!(
                    "  the servers differ on {:?}: {a:?} against {b:?}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }
    if !rest.is_empty() && differ == 0 {
        println!(
            "  both servers answer the same to {} probe lines (the rules, malformed lines)",
            probes.len()
        );
    }
}

/// Indexes the whole set into `server` as a real client does; prints how
/// long it took and in how many passes.
async fn index_set(server: &Server, set: &[Package]) {
    let mut client = LineClient::connect(server.addr).await;
    let started = Instant::now();
    let passes = client.index_all(set).await;
    println!(
        "  {:<9} indexed {} names in {:.0} ms, {passes} passes (INDEX in pipelined batches \
         of 1000, FAIL retried)",
        server.name,
        set.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// Every name answers QUERY with OK: the mix left the state as it found
/// it.
async fn check_set(server: &Server, lines: &Lines) {
    let mut client = LineClient::connect(server.addr).await;
    let replies = client.pipeline(&lines.query).await;
    let missing = replies.iter().filter(|r| **r != Reply::Ok).count();
    if missing > 0 {
        println!(
            "  {}: {missing} names no longer indexed after the run",
            server.name
        );
    }
}

/// Resident memory with no connection, and per open connection.
struct Memory {
    idle_kib: u64,
    per_connection_bytes: f64,
}

/// Reads `server`'s memory with no connection, opens `idle` connections
/// (each answers one QUERY, so the server has set it up), reads it again,
/// closes them.
async fn memory(server: &Server, idle: usize, lines: &Lines) -> Memory {
    // Let the connections of what came before go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = server.rss_kib();
    let mut clients = Vec::with_capacity(idle);
    for i in 0..idle {
        let mut client = LineClient::connect(server.addr).await;
        let reply = client.request(&lines.query[i % lines.query.len()]).await;
        assert_eq!(reply, Reply::Ok, "{} lost a name", server.name);
        clients.push(client);
    }
    let open_kib = server.rss_kib();
    drop(clients);
    Memory {
        idle_kib,
        per_connection_bytes: (open_kib as f64 - idle_kib as f64) * 1024.0 / idle.max(1) as f64,
    }
}

fn median_of(runs: &[Figures], field: fn(&Figures) -> f64) -> f64 {
    median(runs.iter().map(field).collect())
}

// ---------------------------------------------------------------------------

/// The median of `field` over `runs`, as a table cell.
fn cell(runs: &[Figures], field: fn(&Figures) -> f64) -> String {
    format!("{:.0}", median_of(runs, field))
}

/// `runs[shape]` holds each server's rounds: the reference's, then the
/// catalog's.
fn print_table(settings: &Settings, servers: &[Server], runs: &[Vec<Vec<Figures>>]) {
    println!();
    println!(
        "  {:<22} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "shape", "ref ops/s", "cat ops/s", "cat÷ref", "ref p50", "ref p99", "cat p50", "cat p99"
    );
    for (shape, runs) in settings.shapes.iter().zip(runs) {
        let (r, c) = (&runs[0], &runs[1]);
        let ratios = c.iter().zip(r).map(|(c, r)| c.ops / r.ops).collect();
        println!(
            "  {:<22} {:>10} {:>10} {:>8.3} {:>8} {:>8} {:>8} {:>8}",
            shape.label(),
            cell(r, |f| f.ops),
            cell(c, |f| f.ops),
            median(ratios),
            cell(r, |f| f.p50_us),
            cell(r, |f| f.p99_us),
            cell(c, |f| f.p50_us),
            cell(c, |f| f.p99_us),
        );
    }
    println!("  latencies in µs; a pipelined shape's are a whole batch's round trip");
    println!();
    println!("  writes only (INDEX and REMOVE of the mix), round trips in µs:");
    println!(
        "  {:<22} {:>8} {:>8} {:>8} {:>8}",
        "shape", "ref p50", "ref p99", "cat p50", "cat p99"
    );
    for (shape, runs) in settings.shapes.iter().zip(runs) {
        if let Shape::Pipelined(_) = shape {
            continue;
        }
        let (r, c) = (&runs[0], &runs[1]);
        println!(
            "  {:<22} {:>8} {:>8} {:>8} {:>8}",
            shape.label(),
            cell(r, |f| f.write_p50_us),
            cell(r, |f| f.write_p99_us),
            cell(c, |f| f.write_p50_us),
            cell(c, |f| f.write_p99_us),
        );
    }
    for (shape, runs) in settings.shapes.iter().zip(runs) {
        for (server, rounds) in servers.iter().zip(runs) {
            let errors: u64 = rounds.iter().map(|f| f.errors).sum();
            if errors > 0 {
                println!("  errors: {}, {}: {errors}", server.name, shape.label());
            }
        }
    }
}

fn main() {
    if std::env::var_os(REFERENCE_ENV).is_some() {
        reference_main();
    } else {
        bench();
    }
}

#[tokio::main]
async fn bench() {
    let settings = Settings::from_env().within_file_limit();
    let set = graph();
    let lines = Arc::new(Lines::new(&set));
    let root = scratch_root();
    let started = Instant::now();

    let servers = vec![start_reference(), start_catalog(&root).await];
    println!(
        "catalog line protocol: reference (a thread per connection, RwLock over HashMaps, in \
         memory) against the catalog (control-plane serve --indexer-listen, SQLite with fsync \
         in {}); {} rounds of {} s after {} s warm-up, order alternating; medians",
        root.display(),
        settings.rounds,
        settings.secs.as_secs(),
        WARMUP.as_secs()
    );
    println!(
        "    mix: 90% QUERY (uniform over {} names), 5% re-INDEX with all dependencies or all but the last, 5% \
         REMOVE + INDEX pairs of a leaf ({} names nothing depends on); one request in flight \
         per connection, or pipelined batches",
        set.len(),
        lines.leaves.len()
    );
    println!("    cat÷ref: median of the per-round ratios of ops/s");
    compare_rules(&servers).await;
    for server in &servers {
        index_set(server, &set).await;
    }

    let memories: Vec<Memory> = {
        let mut out = Vec::new();
        for server in &servers {
            out.push(memory(server, settings.idle, &lines).await);
        }
        out
    };

    // runs[shape][server] = one Figures per round.
    let mut runs: Vec<Vec<Vec<Figures>>> = settings
        .shapes
        .iter()
        .map(|_| servers.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..settings.rounds {
        for (i, shape) in settings.shapes.iter().enumerate() {
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for which in order {
                let figures = drive(servers[which].addr, &lines, *shape, settings.secs).await;
                runs[i][which].push(figures);
            }
        }
    }
    for server in &servers {
        check_set(server, &lines).await;
    }
    print_table(&settings, &servers, &runs);

    println!();
    println!(
        "  memory (resident): with the set indexed and no connection; per open connection: \
         ({} idle connections − none) ÷ {}",
        settings.idle, settings.idle
    );
    println!(
        "  {:<9} {:>12} {:>16}",
        "server", "indexed MiB", "per conn KiB"
    );
    for (server, memory) in servers.iter().zip(&memories) {
        println!(
            "  {:<9} {:>12.1} {:>16.1}",
            server.name,
            memory.idle_kib as f64 / 1024.0,
            memory.per_connection_bytes / 1024.0
        );
    }
    if servers.len() > 1 {
        println!("  (the catalog's figure is the whole control plane's, gRPC services included)");
    }
    let (rate, p50, p99) = fsync_probe(&root);
    println!(
        "  disk, for scale: serial 4 KiB write + fdatasync in {}: {rate:.0}/s (p50 {p50:.0} µs, \
         p99 {p99:.0} µs)",
        root.display()
    );
    drop(servers);
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
