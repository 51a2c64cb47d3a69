//! The swarm itself: the simulated nodes, their shared counters and
//! histograms, and the three phases of a run (ramp, measurement, cleanup).
//! It prints nothing: progress goes to a callback once a second, and the
//! result comes back as a [`SwarmReport`].

use std::{
    collections::{BTreeMap, VecDeque},
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use farm_api::Bearer;
use farm_api::v1::{
    DeregisterRequest, HeartbeatRequest, NodeSample, RegisterRequest,
    registry_client::RegistryClient,
};
use futures::StreamExt;
use hdrhistogram::Histogram;
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

use super::{SwarmConfig, SwarmReport};
use crate::report::{Percentiles, by_code_name, micros, new_histogram};

/// Heartbeats queued on one stream before further beats are skipped (the
/// control plane is then not reading: skipping is what a real agent does).
const STREAM_QUEUE: usize = 8;
/// Heartbeats awaiting acknowledgement remembered per stream; older ones
/// are counted as lost.
const MAX_PENDING: usize = 1024;

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
    /// Acknowledgements of every heartbeat (for progress).
    acked_all: AtomicU64,
    /// Beats not sent because the stream's queue was full.
    skipped: AtomicU64,
    config_pushes: AtomicU64,
    /// Whether heartbeats sent now count towards the report.
    measuring: AtomicBool,
    /// Whether the swarm is deregistering its nodes (for progress).
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
    /// Makes up the samples heartbeats carry, when they carry one.
    load: Option<SimulatedLoad>,
}

/// A simulated node's metrics: CPU and request rate that drift
/// slowly from a starting point of its own, memory that follows the CPU.
/// Cheap (no histogram), so a swarm of thousands spends nothing on it.
struct SimulatedLoad {
    /// Where in the cycle the node starts, from its index.
    phase: u64,
    requests: u64,
}

impl SimulatedLoad {
    const LIMIT: u64 = 256 << 20;

    fn new(i: usize) -> Self {
        // Spread over the cycle, in no visible order.
        Self {
            phase: (i as u64).wrapping_mul(2_654_435_761) % 1000,
            requests: 0,
        }
    }

    fn sample(&mut self, seq: u64) -> NodeSample {
        // A triangle wave of 200 beats between 5 and 95 %.
        let step = (self.phase + seq) % 200;
        let cpu = 5.0 + 90.0 * (if step < 100 { step } else { 200 - step }) as f64 / 100.0;
        let rate = cpu * 2.0;
        self.requests += rate as u64;
        NodeSample {
            at: Some(std::time::SystemTime::now().into()),
            cpu_percent: cpu,
            cpu_limit: 1.0,
            memory_used_bytes: (Self::LIMIT as f64 * (0.2 + cpu / 200.0)) as u64,
            memory_limit_bytes: Self::LIMIT,
            rss_bytes: 48 << 20,
            requests: self.requests,
            requests_per_second: rate,
            interval_ms: 1000,
            ..NodeSample::default()
        }
    }
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
            metrics: self.load.as_mut().map(|load| load.sample(self.seq)),
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
    // One future for the whole life of the node, not one per heartbeat.
    let mut halt = std::pin::pin!(stopped(&mut stop));
    let stats = &ctx.stats;
    let interval = ctx.config.heartbeat;
    let phase = interval.mul_f64(i as f64 / ctx.config.nodes as f64);
    let mut beats = Beats {
        seq: 0,
        pending: VecDeque::new(),
        applied: 0,
        load: ctx.config.samples.then(|| SimulatedLoad::new(i)),
    };
    let mut open_at = next_slot(ctx.epoch, phase, interval, Instant::now());
    loop {
        tokio::select! {
            biased;
            () = &mut halt => return true,
            () = tokio::time::sleep_until(open_at) => {}
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        beats.pending.clear();
        beats.send(&tx, stats, Some(identity));
        let opened = tokio::select! {
            biased;
            () = &mut halt => return true,
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
                        () = &mut halt => return true,
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

/// Which phase a swarm is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Registering the nodes; each heartbeats once registered.
    Ramp,
    /// Every registration answered: heartbeats count towards the report.
    Measure,
    /// Streams closed, nodes being deregistered.
    Cleanup,
}

/// A swarm's state, once a second while it runs.
#[derive(Debug, Clone)]
pub struct SwarmProgress {
    /// Since the swarm started.
    pub elapsed: Duration,
    pub phase: Phase,
    /// Nodes asked for.
    pub nodes: usize,
    /// Nodes registered so far.
    pub registered: u64,
    /// Nodes deregistered (or found already gone) so far, in cleanup.
    pub deregistered: u64,
    /// Heartbeats acknowledged in the last second.
    pub heartbeats: u64,
    /// Failed calls of every phase so far.
    pub errors: u64,
    /// Heartbeat round-trip p99 of the phase so far, microseconds; `None`
    /// before the first acknowledgement.
    pub p99_us: Option<u64>,
}

/// Calls `progress` with the swarm's state once a second until aborted.
async fn tick(ctx: Arc<Ctx>, mut progress: impl FnMut(&SwarmProgress) + Send + 'static) {
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
        let p99_us = {
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
        let phase = if stats.cleaning.load(Ordering::Relaxed) {
            Phase::Cleanup
        } else if measuring {
            Phase::Measure
        } else {
            Phase::Ramp
        };
        progress(&SwarmProgress {
            elapsed: started.elapsed(),
            phase,
            nodes: ctx.config.nodes,
            registered: stats.registered.load(Ordering::Relaxed),
            deregistered: stats.deregistered.load(Ordering::Relaxed)
                + stats.already_gone.load(Ordering::Relaxed),
            heartbeats: acked - last_acked,
            errors,
            p99_us,
        });
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
    swarm_with_progress(config, stop, None::<fn(&SwarmProgress)>).await
}

/// [`swarm`], calling `progress` (when given) with the swarm's state once
/// a second.
pub async fn swarm_with_progress(
    config: &SwarmConfig,
    stop: impl Future<Output = ()>,
    progress: Option<impl FnMut(&SwarmProgress) + Send + 'static>,
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
    let ticker = progress.map(|progress| tokio::spawn(tick(Arc::clone(&ctx), progress)));
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
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    Ok(report(
        &ctx,
        ramp,
        measured,
        [deregistered, gone, left],
        interrupted,
    ))
}

/// The report of a swarm from its shared state.
fn report(
    ctx: &Ctx,
    ramp: Duration,
    measured: Duration,
    [deregistered, already_gone, left_registered]: [u64; 3],
    interrupted: bool,
) -> SwarmReport {
    let stats = &ctx.stats;
    let errors = stats.errors.lock().unwrap_or_else(PoisonError::into_inner);
    SwarmReport {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            load: Some(SimulatedLoad::new(7)),
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
