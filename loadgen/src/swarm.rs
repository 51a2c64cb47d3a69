//! `loadgen swarm`: many simulated node agents in one process, to measure
//! the control plane at scales no single machine can host as real nodes.
//!
//! Each simulated node does what a `farm-node` agent does on the wire, and
//! nothing else: it registers under a new identity (`swarm-<run>-<i>`, a
//! made-up address), keeps one `Registry.Heartbeat` stream open, beats at a
//! fixed interval, applies every configuration pushed down that stream and
//! reports its version in an immediate heartbeat. The round trip of every
//! heartbeat (send to the acknowledgement carrying its `seq`) goes into an
//! HDR histogram.
//!
//! A run has three phases, each bounded in time: the ramp (registrations,
//! at most `register_concurrency` in flight; each node starts heartbeating
//! as soon as it is registered), the measurement (`duration`, starting once
//! every registration has been answered), and the cleanup (every node closes
//! its stream and is deregistered, so the control plane is left as found).
//! Heartbeats are spread evenly over the interval, and the streams over
//! several HTTP/2 connections, since servers cap the streams of one.

use std::{
    collections::{BTreeMap, VecDeque},
    future::Future,
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Args;
use farm_api::Bearer;
use farm_api::v1::{
    DeregisterRequest, HeartbeatRequest, RegisterRequest, registry_client::RegistryClient,
};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::{
    config::target_uri,
    report::{Percentiles, by_code_name, micros, new_histogram},
};

/// Simulated nodes per HTTP/2 connection when `--connections` is not given
/// (servers commonly allow 100 to 200 concurrent streams on one).
const NODES_PER_CONNECTION: usize = 100;
/// Most simulated nodes one run may ask for.
const MAX_NODES: usize = 1_000_000;
/// Shortest heartbeat interval accepted (the control plane's own minimum).
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Heartbeats queued on one stream before further beats are skipped (the
/// control plane is then not reading: skipping is what a real agent does).
const STREAM_QUEUE: usize = 8;
/// Heartbeats awaiting acknowledgement remembered per stream; older ones
/// are counted as lost.
const MAX_PENDING: usize = 1024;

/// Flags of `loadgen swarm`.
#[derive(Debug, Args)]
pub struct SwarmArgs {
    /// Control plane to simulate nodes against (`http://host:port`).
    #[arg(long, env = "FARM_CONTROL_PLANE")]
    pub control_plane: String,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Interval between one node's heartbeats.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// How long to measure, once every node has registered (or failed to).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// HTTP/2 connections the nodes are spread over (default: one per 100
    /// nodes).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Registrations (and, at the end, deregistrations) in flight at once.
    #[arg(long, default_value_t = 32)]
    pub register_concurrency: usize,
    /// Group the nodes join (empty: the control plane's default group).
    #[arg(long, default_value = "")]
    pub group: String,
    /// Longest the registration of all nodes may take; measurement starts
    /// then with the nodes registered so far.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub ramp_timeout: Duration,
    /// Longest the deregistration of all nodes may take at the end.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub cleanup_timeout: Duration,
    /// Deadline of each Register and Deregister call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub rpc_timeout: Duration,
    /// Bearer token of the `node` role, sent as `authorization: Bearer <token>`.
    #[arg(long, env = "FARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// What is wrong with the flags of a swarm.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SwarmConfigError {
    /// The control plane URL does not parse, or is not `http://host:port`.
    #[error("{0:?} is not a control plane URL (expected http://host:port)")]
    BadUrl(String),
    /// `--nodes` is zero or beyond what one process can simulate.
    #[error("--nodes must be 1 to {MAX_NODES}, not {0}")]
    BadNodes(usize),
    /// The heartbeat interval is below the control plane's minimum.
    #[error("--heartbeat must be at least 10ms, not {0:?}")]
    HeartbeatTooShort(Duration),
    /// A count flag (`--connections`, `--register-concurrency`) is zero.
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    /// A time flag is zero.
    #[error("--{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The token cannot be sent as a header value.
    #[error("--token cannot be sent as a header value (empty, or not visible ASCII)")]
    BadToken,
}

/// Why a swarm could not run.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// A connection to the control plane could not be opened at the start.
    #[error("cannot connect to the control plane at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A validated swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The control plane's URI (`http://host:port`).
    pub control_plane: String,
    pub nodes: usize,
    /// Interval between one node's heartbeats.
    pub heartbeat: Duration,
    /// Measured time, after the ramp.
    pub duration: Duration,
    /// HTTP/2 connections; node `i` uses connection `i % connections`.
    pub connections: usize,
    /// Registrations and deregistrations in flight at once.
    pub register_concurrency: usize,
    /// Group to join; empty for the default group.
    pub group: String,
    pub ramp_timeout: Duration,
    pub cleanup_timeout: Duration,
    pub rpc_timeout: Duration,
    /// The token presented, if any.
    pub token: Bearer,
    /// Print a progress line a second on stderr.
    pub progress: bool,
    /// Part of every node name, so runs never collide: `swarm-<run_id>-<i>`.
    pub run_id: String,
}

impl SwarmConfig {
    /// A swarm of `nodes` against `control_plane` with the defaults of the
    /// flags otherwise, and no progress lines.
    pub fn new(control_plane: &str, nodes: usize) -> Result<Self, SwarmConfigError> {
        let mut config = Self {
            control_plane: control_plane_uri(control_plane)?,
            nodes,
            heartbeat: Duration::from_secs(1),
            duration: Duration::from_secs(30),
            connections: nodes.div_ceil(NODES_PER_CONNECTION).max(1),
            register_concurrency: 32,
            group: String::new(),
            ramp_timeout: Duration::from_secs(120),
            cleanup_timeout: Duration::from_secs(60),
            rpc_timeout: Duration::from_secs(10),
            token: Bearer::default(),
            progress: false,
            run_id: run_id(),
        };
        config.validate()?;
        config.connections = config.connections.min(nodes).max(1);
        Ok(config)
    }

    fn validate(&self) -> Result<(), SwarmConfigError> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(SwarmConfigError::BadNodes(self.nodes));
        }
        if self.heartbeat < MIN_HEARTBEAT {
            return Err(SwarmConfigError::HeartbeatTooShort(self.heartbeat));
        }
        for (name, value) in [
            ("connections", self.connections),
            ("register-concurrency", self.register_concurrency),
        ] {
            if value == 0 {
                return Err(SwarmConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("duration", self.duration),
            ("ramp-timeout", self.ramp_timeout),
            ("cleanup-timeout", self.cleanup_timeout),
            ("rpc-timeout", self.rpc_timeout),
        ] {
            if value.is_zero() {
                return Err(SwarmConfigError::ZeroDuration(name));
            }
        }
        Ok(())
    }
}

impl TryFrom<&SwarmArgs> for SwarmConfig {
    type Error = SwarmConfigError;

    fn try_from(args: &SwarmArgs) -> Result<Self, Self::Error> {
        let token = args
            .token
            .as_deref()
            .map(|t| {
                if t.is_empty() {
                    return Err(SwarmConfigError::BadToken);
                }
                Ok(t)
            })
            .transpose()?;
        let token = Bearer::new(token).map_err(|_| SwarmConfigError::BadToken)?;
        let config = Self {
            control_plane: control_plane_uri(&args.control_plane)?,
            nodes: args.nodes,
            heartbeat: args.heartbeat,
            duration: args.duration,
            connections: args
                .connections
                .unwrap_or_else(|| args.nodes.div_ceil(NODES_PER_CONNECTION)),
            register_concurrency: args.register_concurrency,
            group: args.group.clone(),
            ramp_timeout: args.ramp_timeout,
            cleanup_timeout: args.cleanup_timeout,
            rpc_timeout: args.rpc_timeout,
            token,
            progress: !args.quiet,
            run_id: run_id(),
        };
        config.validate()?;
        Ok(Self {
            // More connections than nodes would stay idle.
            connections: config.connections.min(config.nodes),
            ..config
        })
    }
}

/// `http://host:port` from a URL, or from a bare `host:port`.
fn control_plane_uri(url: &str) -> Result<String, SwarmConfigError> {
    let bad = || SwarmConfigError::BadUrl(url.to_owned());
    let uri = target_uri(url).map_err(|_| bad())?;
    let parsed = uri.parse::<tonic::transport::Uri>().map_err(|_| bad())?;
    if parsed.scheme_str() != Some("http") || parsed.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(uri)
}

/// A short id for this run: eight hex digits from the clock and the pid.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    // A multiplicative hash so that close clocks give distant ids.
    format!("{:08x}", mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
}

type Client = RegistryClient<InterceptedService<Channel, Bearer>>;

/// Failed calls by status code, per phase.
#[derive(Debug, Default)]
struct Errors {
    register: BTreeMap<i32, u64>,
    /// Heartbeat streams that failed to open or broke.
    heartbeat: BTreeMap<i32, u64>,
    deregister: BTreeMap<i32, u64>,
}

/// Counters and histograms shared by every simulated node. The histograms
/// sit behind `std` mutexes: each is held to record one value, never across
/// an await, and a few thousand records a second do not contend.
#[derive(Debug)]
struct Stats {
    /// Registrations answered, successfully or not.
    attempted: AtomicU64,
    registered: AtomicU64,
    /// Heartbeats sent while measuring.
    sent: AtomicU64,
    /// Acknowledgements of heartbeats sent while measuring.
    acked: AtomicU64,
    /// Acknowledgements of every heartbeat (for the progress line).
    acked_all: AtomicU64,
    /// Beats not sent because the stream's queue was full.
    skipped: AtomicU64,
    config_pushes: AtomicU64,
    /// Whether heartbeats sent now count towards the report.
    measuring: AtomicBool,
    /// Whether the swarm is deregistering its nodes (for the progress line).
    cleaning: AtomicBool,
    /// Nodes deregistered at the end.
    deregistered: AtomicU64,
    /// Nodes the control plane had already dropped (NOT_FOUND) when their
    /// turn to be deregistered came: silent past its `--max-age`.
    already_gone: AtomicU64,
    /// Round trips of heartbeats sent while measuring, in microseconds.
    rtt: Mutex<Histogram<u64>>,
    /// Round trips of heartbeats sent during the ramp.
    ramp_rtt: Mutex<Histogram<u64>>,
    /// Register latency, in microseconds.
    register: Mutex<Histogram<u64>>,
    errors: Mutex<Errors>,
}

impl Stats {
    fn new() -> Self {
        Self {
            attempted: AtomicU64::new(0),
            registered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_all: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            config_pushes: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            cleaning: AtomicBool::new(false),
            deregistered: AtomicU64::new(0),
            already_gone: AtomicU64::new(0),
            rtt: Mutex::new(new_histogram()),
            ramp_rtt: Mutex::new(new_histogram()),
            register: Mutex::new(new_histogram()),
            errors: Mutex::default(),
        }
    }

    fn record(histogram: &Mutex<Histogram<u64>>, elapsed: Duration) {
        histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros(elapsed));
    }

    fn error(&self, phase: fn(&mut Errors) -> &mut BTreeMap<i32, u64>, code: Code) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        *phase(&mut errors).entry(code as i32).or_default() += 1;
    }

    fn percentiles(histogram: &Mutex<Histogram<u64>>) -> Percentiles {
        Percentiles::from(&*histogram.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What every node task shares.
#[derive(Debug)]
struct Ctx {
    config: SwarmConfig,
    clients: Vec<Client>,
    stats: Stats,
    register_slots: Semaphore,
    /// Signalled when the last registration has been answered.
    ramp_done: Notify,
    /// Heartbeat phases are offsets from this instant.
    epoch: Instant,
}

/// A registered node's credentials, kept to deregister it.
#[derive(Debug)]
struct Identity {
    node_id: String,
    secret: String,
    /// Connection the node uses.
    client: usize,
}

/// Resolves once the swarm is told to stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One simulated node: registers, then heartbeats until told to stop.
/// Returns its identity if the control plane still holds it.
async fn node(ctx: Arc<Ctx>, i: usize, mut stop: watch::Receiver<bool>) -> Option<Identity> {
    let which = i % ctx.clients.len();
    let mut client = ctx.clients[which].clone();
    let registered = register(&ctx, &mut client, i, &mut stop).await;
    let total = ctx.stats.attempted.fetch_add(1, Ordering::AcqRel) + 1;
    if total == ctx.config.nodes as u64 {
        ctx.ramp_done.notify_one();
    }
    let (node_id, secret) = registered?;
    let identity = Identity {
        node_id,
        secret,
        client: which,
    };
    if heartbeat(&ctx, i, &mut client, &identity, stop).await {
        Some(identity)
    } else {
        None
    }
}

/// Registers node `i` under a new identity, within a registration slot.
/// Once sent, a registration is waited for (within its deadline) even when
/// the swarm stops, so that no identity is left behind unknown.
async fn register(
    ctx: &Ctx,
    client: &mut Client,
    i: usize,
    stop: &mut watch::Receiver<bool>,
) -> Option<(String, String)> {
    let _slot = tokio::select! {
        biased;
        () = stopped(stop) => return None,
        slot = ctx.register_slots.acquire() => slot.ok()?,
    };
    let mut labels = std::collections::HashMap::new();
    labels.insert("loadgen.swarm".to_owned(), ctx.config.run_id.clone());
    let request = RegisterRequest {
        name: format!("swarm-{}-{i}", ctx.config.run_id),
        // Nothing listens there: the port only has to be valid.
        address: format!("127.0.0.1:{}", 10_000 + i % 50_000),
        group: ctx.config.group.clone(),
        labels,
        node_id: String::new(),
        secret: String::new(),
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(ctx.config.rpc_timeout, client.register(request)).await;
    let stats = &ctx.stats;
    match answer {
        Ok(Ok(response)) => {
            Stats::record(&stats.register, started.elapsed());
            stats.registered.fetch_add(1, Ordering::Relaxed);
            let response = response.into_inner();
            Some((response.node_id, response.secret))
        }
        Ok(Err(status)) => {
            stats.error(|e| &mut e.register, status.code());
            None
        }
        Err(_) => {
            stats.error(|e| &mut e.register, Code::DeadlineExceeded);
            None
        }
    }
}

/// Heartbeats of one node awaiting acknowledgement, and its applied config.
struct Beats {
    seq: u64,
    /// `(seq, sent at, sent while measuring)`, oldest first.
    pending: VecDeque<(u64, Instant, bool)>,
    /// Version of the configuration applied last (0: none).
    applied: u64,
}

impl Beats {
    /// Queues the next heartbeat on `tx`; the first of a stream carries the
    /// credentials.
    fn send(
        &mut self,
        tx: &mpsc::Sender<HeartbeatRequest>,
        stats: &Stats,
        credentials: Option<&Identity>,
    ) {
        self.seq += 1;
        let request = HeartbeatRequest {
            node_id: credentials.map(|c| c.node_id.clone()).unwrap_or_default(),
            secret: credentials.map(|c| c.secret.clone()).unwrap_or_default(),
            seq: self.seq,
            config_version: self.applied,
            serving: true,
            metrics: None,
        };
        match tx.try_send(request) {
            Ok(()) => {
                let measured = stats.measuring.load(Ordering::Relaxed);
                if measured {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back((self.seq, Instant::now(), measured));
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
            // The stream is gone; its reader reports why.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Matches an acknowledgement to its heartbeat and records the round trip.
    fn ack(&mut self, seq: u64, stats: &Stats) {
        while let Some((sent_seq, at, measured)) = self.pending.pop_front() {
            if sent_seq > seq {
                // An acknowledgement of something already forgotten.
                self.pending.push_front((sent_seq, at, measured));
                return;
            }
            if sent_seq == seq {
                stats.acked_all.fetch_add(1, Ordering::Relaxed);
                if measured {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    Stats::record(&stats.rtt, at.elapsed());
                } else {
                    Stats::record(&stats.ramp_rtt, at.elapsed());
                }
                return;
            }
        }
    }
}

/// The first instant at or after now that is `phase` past a whole number of
/// intervals since `epoch`: node `i` of `n` beats at `i/n` of each interval.
fn next_slot(epoch: Instant, phase: Duration, interval: Duration, now: Instant) -> Instant {
    let first = epoch + phase;
    if first >= now {
        return first;
    }
    let behind = (now - first).as_nanos();
    let periods = behind.div_ceil(interval.as_nanos().max(1));
    first + Duration::from_nanos(u64::try_from(interval.as_nanos() * periods).unwrap_or(u64::MAX))
}

/// Keeps node `i`'s heartbeat stream open until told to stop, opening it
/// again after a pause when it breaks. Returns `false` when the control
/// plane no longer knows the node (nothing left to deregister).
async fn heartbeat(
    ctx: &Ctx,
    i: usize,
    client: &mut Client,
    identity: &Identity,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let stats = &ctx.stats;
    let interval = ctx.config.heartbeat;
    let phase = interval.mul_f64(i as f64 / ctx.config.nodes as f64);
    let mut beats = Beats {
        seq: 0,
        pending: VecDeque::new(),
        applied: 0,
    };
    let mut open_at = next_slot(ctx.epoch, phase, interval, Instant::now());
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return true,
            () = tokio::time::sleep_until(open_at) => {}
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        beats.pending.clear();
        beats.send(&tx, stats, Some(identity));
        let opened = tokio::select! {
            biased;
            () = stopped(&mut stop) => return true,
            opened = client.heartbeat(ReceiverStream::new(rx)) => opened,
        };
        let end = match opened {
            Ok(response) => {
                let mut acks = response.into_inner();
                let mut ticker = tokio::time::interval_at(open_at + interval, interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        biased;
                        // Dropping the sender ends the stream.
                        () = stopped(&mut stop) => return true,
                        ack = acks.message() => match ack {
                            Ok(Some(ack)) => {
                                if ack.ack_seq != 0 {
                                    beats.ack(ack.ack_seq, stats);
                                }
                                if let Some(config) = ack.config {
                                    stats.config_pushes.fetch_add(1, Ordering::Relaxed);
                                    if config.version != beats.applied {
                                        // Applied: say so at once, as a
                                        // real agent does.
                                        beats.applied = config.version;
                                        beats.send(&tx, stats, None);
                                    }
                                }
                            }
                            Ok(None) => break Status::unavailable("the control plane ended the stream"),
                            Err(status) => break status,
                        },
                        _ = ticker.tick() => beats.send(&tx, stats, None),
                    }
                }
            }
            Err(status) => status,
        };
        stats.error(|e| &mut e.heartbeat, end.code());
        if matches!(end.code(), Code::NotFound | Code::PermissionDenied) {
            // Forgotten: a real agent registers anew; a simulated one stops.
            return false;
        }
        open_at = next_slot(ctx.epoch, phase, interval, Instant::now() + interval);
    }
}

/// Opens the connections, each at once so that an unreachable control
/// plane is reported before anything else happens.
async fn connect(config: &SwarmConfig) -> Result<Vec<Client>, SwarmError> {
    let unreachable = |source| SwarmError::Unreachable {
        url: config.control_plane.clone(),
        source,
    };
    let endpoint = Endpoint::from_shared(config.control_plane.clone())
        .map_err(unreachable)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channels = futures::future::join_all((0..config.connections).map(|_| endpoint.connect()))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreachable)?;
    Ok(channels
        .into_iter()
        .map(|channel| RegistryClient::with_interceptor(channel, config.token.clone()))
        .collect())
}

/// Prints a line a second on stderr until aborted.
async fn progress(ctx: Arc<Ctx>) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_acked = 0;
    loop {
        ticker.tick().await;
        let stats = &ctx.stats;
        let acked = stats.acked_all.load(Ordering::Relaxed);
        let measuring = stats.measuring.load(Ordering::Relaxed);
        let rtt = if measuring {
            &stats.rtt
        } else {
            &stats.ramp_rtt
        };
        let p99 = {
            let histogram = rtt.lock().unwrap_or_else(PoisonError::into_inner);
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99))
        };
        let errors: u64 = {
            let errors = stats.errors.lock().unwrap_or_else(PoisonError::into_inner);
            [&errors.register, &errors.heartbeat, &errors.deregister]
                .iter()
                .flat_map(|m| m.values())
                .sum()
        };
        let registered = stats.registered.load(Ordering::Relaxed);
        if stats.cleaning.load(Ordering::Relaxed) {
            let done = stats.deregistered.load(Ordering::Relaxed)
                + stats.already_gone.load(Ordering::Relaxed);
            eprintln!(
                "[{:>4}s] cleanup deregistered {done}/{registered}  errors {errors}",
                started.elapsed().as_secs(),
            );
            continue;
        }
        eprintln!(
            "[{:>4}s] {:<7} registered {}/{}  heartbeats {}/s  errors {}  p99 {}",
            started.elapsed().as_secs(),
            if measuring { "measure" } else { "ramp" },
            registered,
            ctx.config.nodes,
            acked - last_acked,
            errors,
            p99.map_or_else(|| "-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1e3)),
        );
        last_acked = acked;
    }
}

/// Deregisters every node in `identities`, `concurrency` at a time, until
/// `deadline`. Returns how many were removed, found gone, and left behind.
async fn deregister_all(
    ctx: &Ctx,
    identities: Vec<Identity>,
    deadline: Instant,
) -> (u64, u64, u64) {
    let total = identities.len() as u64;
    let stats = &ctx.stats;
    let calls = futures::stream::iter(identities)
        .map(|identity| {
            let mut client = ctx.clients[identity.client].clone();
            async move {
                let request = DeregisterRequest {
                    node_id: identity.node_id,
                    secret: identity.secret,
                };
                match tokio::time::timeout(ctx.config.rpc_timeout, client.deregister(request)).await
                {
                    Ok(Ok(_)) => {
                        stats.deregistered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(status)) if status.code() == Code::NotFound => {
                        stats.already_gone.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(status)) => ctx.stats.error(|e| &mut e.deregister, status.code()),
                    Err(_) => ctx
                        .stats
                        .error(|e| &mut e.deregister, Code::DeadlineExceeded),
                }
            }
        })
        .buffer_unordered(ctx.config.register_concurrency)
        .collect::<()>();
    // Past the deadline, the calls still in flight are abandoned.
    let _ = tokio::time::timeout_at(deadline, calls).await;
    let removed = stats.deregistered.load(Ordering::Relaxed);
    let gone = stats.already_gone.load(Ordering::Relaxed);
    (removed, gone, total - removed - gone)
}

/// Runs a swarm until its duration is up or `stop` resolves (then the
/// report says `interrupted`), deregistering every node it registered.
pub async fn swarm(
    config: &SwarmConfig,
    stop: impl Future<Output = ()>,
) -> Result<SwarmReport, SwarmError> {
    let started = Instant::now();
    let clients = connect(config).await?;
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        clients,
        stats: Stats::new(),
        register_slots: Semaphore::new(config.register_concurrency),
        ramp_done: Notify::new(),
        epoch: Instant::now(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = config
        .progress
        .then(|| tokio::spawn(progress(Arc::clone(&ctx))));
    let mut nodes = JoinSet::new();
    for i in 0..config.nodes {
        nodes.spawn(node(Arc::clone(&ctx), i, stop_rx.clone()));
    }
    tokio::pin!(stop);

    // Ramp: until every registration has been answered.
    let mut interrupted = false;
    let ramp_deadline = started + config.ramp_timeout;
    tokio::select! {
        () = ctx.ramp_done.notified() => {}
        () = tokio::time::sleep_until(ramp_deadline) => {}
        () = &mut stop => interrupted = true,
    }
    let ramp = started.elapsed();

    // Measurement.
    let measure_start = Instant::now();
    if !interrupted && ctx.stats.registered.load(Ordering::Relaxed) > 0 {
        ctx.stats.measuring.store(true, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(config.duration) => {}
            () = &mut stop => interrupted = true,
        }
        ctx.stats.measuring.store(false, Ordering::Relaxed);
    }
    let measured = measure_start.elapsed();

    // Cleanup: streams end, registrations in flight are answered (within
    // their deadline), then every node still known is deregistered.
    ctx.stats.cleaning.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let cleanup_deadline = Instant::now() + config.cleanup_timeout;
    let join_deadline = Instant::now() + config.rpc_timeout + Duration::from_secs(1);
    let mut identities = Vec::new();
    loop {
        tokio::select! {
            next = nodes.join_next() => match next {
                Some(Ok(Some(identity))) => identities.push(identity),
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep_until(join_deadline) => {
                nodes.abort_all();
                break;
            }
        }
    }
    let (deregistered, gone, left) = deregister_all(&ctx, identities, cleanup_deadline).await;
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(SwarmReport::new(
        &ctx,
        ramp,
        measured,
        [deregistered, gone, left],
        interrupted,
    ))
}

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
    duration_s: f64,
    interrupted: bool,
}

impl SwarmReport {
    fn new(
        ctx: &Ctx,
        ramp: Duration,
        measured: Duration,
        [deregistered, already_gone, left_registered]: [u64; 3],
        interrupted: bool,
    ) -> Self {
        let stats = &ctx.stats;
        let errors = stats.errors.lock().unwrap_or_else(PoisonError::into_inner);
        Self {
            nodes: ctx.config.nodes,
            registered: stats.registered.load(Ordering::Relaxed),
            connections: ctx.clients.len(),
            heartbeat_interval: ctx.config.heartbeat,
            ramp_s: ramp.as_secs_f64(),
            duration_s: measured.as_secs_f64(),
            register_us: Stats::percentiles(&stats.register),
            register_errors: by_code_name(&errors.register),
            heartbeats_sent: stats.sent.load(Ordering::Relaxed),
            heartbeats_acked: stats.acked.load(Ordering::Relaxed),
            heartbeats_skipped: stats.skipped.load(Ordering::Relaxed),
            stream_breaks: by_code_name(&errors.heartbeat),
            heartbeat_rtt_us: Stats::percentiles(&stats.rtt),
            ramp_heartbeat_rtt_us: Stats::percentiles(&stats.ramp_rtt),
            config_pushes: stats.config_pushes.load(Ordering::Relaxed),
            deregistered,
            already_gone,
            left_registered,
            deregister_errors: by_code_name(&errors.deregister),
            interrupted,
        }
    }

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
    /// `duration_s`, `interrupted`.
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
            duration_s: self.duration_s,
            interrupted: self.interrupted,
        };
        serde_json::to_writer_pretty(&mut *out, &json)?;
        writeln!(out)
    }
}

/// An error and its causes, `: `-separated (a cause that repeats the
/// one before it said once).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut last = String::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if said != last {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        source = cause.source();
    }
    text
}

/// `loadgen swarm`: validates the flags, runs with Ctrl-C as an early stop,
/// and prints the report. Exit code 2 for bad flags or an unreachable
/// control plane, 1 when nothing registered or the report cannot be written.
pub async fn cli(args: SwarmArgs) -> ExitCode {
    let config = match SwarmConfig::try_from(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = match swarm(&config, stop).await {
        Ok(report) => report,
        Err(err @ SwarmError::Unreachable { .. }) => {
            eprintln!("error: {}", chain(&err));
            return ExitCode::from(2);
        }
    };
    if let Err(err) = report.write_text(&mut std::io::stdout().lock()) {
        eprintln!("error: cannot print the report: {err}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.json {
        let written = std::fs::File::create(path).and_then(|mut file| report.write_json(&mut file));
        if let Err(err) = written {
            eprintln!("error: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.registered == 0 {
        eprintln!("error: no node could register; see the errors above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<SwarmConfig, String> {
        let cli = Cli::try_parse_from(["loadgen", "swarm"].iter().chain(args))
            .map_err(|e| e.kind().to_string())?;
        let Command::Swarm(args) = cli.command else {
            return Err("not a swarm".to_owned());
        };
        SwarmConfig::try_from(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_become_a_swarm() {
        let config = parse(&[
            "--control-plane",
            "127.0.0.1:50051",
            "--nodes",
            "2500",
            "--heartbeat",
            "500ms",
            "--duration",
            "1m",
            "--token",
            "s3cret",
        ])
        .expect("valid");
        assert_eq!(config.control_plane, "http://127.0.0.1:50051");
        assert_eq!(config.nodes, 2500);
        assert_eq!(config.connections, 25);
        assert_eq!(config.heartbeat, Duration::from_millis(500));
        assert_eq!(config.duration, Duration::from_secs(60));
        assert_eq!(
            config.token.value().and_then(|t| t.to_str().ok()),
            Some("Bearer s3cret")
        );
        let few = parse(&["--control-plane", "http://[::1]:1", "--nodes", "3"]).expect("valid");
        assert_eq!(few.connections, 1);
        let capped = parse(&[
            "--control-plane",
            "h:1",
            "--nodes",
            "3",
            "--connections",
            "9",
        ])
        .expect("valid");
        assert_eq!(capped.connections, 3);
    }

    #[test]
    fn bad_swarms_are_refused() {
        let cp = ["--control-plane", "127.0.0.1:50051"];
        let with = |more: &[&'static str]| {
            let mut all = cp.to_vec();
            all.extend_from_slice(more);
            parse(&all)
        };
        assert!(with(&["--nodes", "0"]).is_err_and(|e| e.contains("--nodes")));
        assert!(with(&["--heartbeat", "1ms"]).is_err_and(|e| e.contains("--heartbeat")));
        assert!(with(&["--duration", "0s"]).is_err_and(|e| e.contains("--duration")));
        assert!(with(&["--duration", "soon"]).is_err());
        assert!(with(&["--connections", "0"]).is_err_and(|e| e.contains("--connections")));
        assert!(with(&["--token", "a\nb"]).is_err_and(|e| e.contains("--token")));
        for url in ["https://127.0.0.1:1", "http://", "not a url", "ftp://x:1"] {
            assert!(
                parse(&["--control-plane", url]).is_err_and(|e| e.contains("URL")),
                "{url}"
            );
        }
    }

    #[test]
    fn slots_spread_beats_over_the_interval() {
        let epoch = Instant::now();
        let second = Duration::from_secs(1);
        let quarter = Duration::from_millis(250);
        assert_eq!(next_slot(epoch, quarter, second, epoch), epoch + quarter);
        let later = epoch + Duration::from_millis(1300);
        assert_eq!(
            next_slot(epoch, quarter, second, later),
            epoch + Duration::from_millis(2250)
        );
        let exact = epoch + Duration::from_millis(1250);
        assert_eq!(next_slot(epoch, quarter, second, exact), exact);
    }

    #[test]
    fn beats_match_acknowledgements() {
        let stats = Stats::new();
        stats.measuring.store(true, Ordering::Relaxed);
        let (tx, _rx) = mpsc::channel(4);
        let mut beats = Beats {
            seq: 0,
            pending: VecDeque::new(),
            applied: 0,
        };
        for _ in 0..3 {
            beats.send(&tx, &stats, None);
        }
        beats.ack(2, &stats);
        beats.ack(2, &stats);
        beats.ack(3, &stats);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 3);
        assert_eq!(stats.acked.load(Ordering::Relaxed), 2);
        // A full queue skips the beat rather than waiting.
        beats.send(&tx, &stats, None);
        beats.send(&tx, &stats, None);
        assert_eq!(stats.skipped.load(Ordering::Relaxed), 1);
    }
}
