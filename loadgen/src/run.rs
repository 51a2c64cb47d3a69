//! The schedulers and the recording.
//!
//! Closed loop: `concurrency` workers, each keeping one request in flight.
//! Open loop: one thread keeps the schedule (send times at a constant total
//! rate, slept for with the operating system's fine-grained timer rather than
//! tokio's millisecond wheel), and a dispatcher sends each request at its time
//! as its own task, at most `concurrency` in flight. A request that has to
//! wait for a free slot keeps its scheduled time: its latency counts the
//! wait (coordinated omission corrected), beside the uncorrected latency from
//! the actual send. Scheduled requests still waiting when the run ends are
//! reported as missed, so a rate the targets could not keep up with shows.
//!
//! Recording goes into shards (one per closed-loop worker, a few for the open
//! loop's tasks), each holding the run's histograms and the current second's;
//! a ticker takes the second's every second for progress, and the run's are
//! merged at the end.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use farm_api::v1::{WorkRequest, WorkResponse, workload_client::WorkloadClient};
use h2::client::SendRequest;
use tokio::{
    sync::{Semaphore, mpsc, oneshot, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    config::{ConfigError, Mode, RunConfig},
    report::{Interval, Measured, Recorder, Report},
};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open a WorkStream to {target}: {message}")]
    Stream { target: String, message: String },
    #[error("a load-test task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot start the scheduler thread: {0}")]
    Thread(std::io::Error),
}

/// How long requests still in flight when the duration is up may take to
/// complete (plus the delay the nodes are asked for) before they are
/// abandoned.
const DRAIN: Duration = Duration::from_secs(1);
/// Pause of a closed-loop worker after a request failed without reaching a
/// server (connection refused, ...), so a dead target is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Recording shards of the open loop.
const OPEN_SHARDS: usize = 8;

/// Status code used when a stream ends under a request.
const UNAVAILABLE: i32 = tonic::Code::Unavailable as i32;

/// One open `WorkStream`; requests are matched to responses by id.
#[derive(Debug)]
struct LiveStream {
    tx: mpsc::Sender<WorkRequest>,
    /// Set by the reader once the stream has ended.
    closed: Arc<AtomicBool>,
    /// Requests awaiting their response. A `std` mutex: held for a map
    /// operation only, never across an await.
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<i32>>>>,
    next_id: AtomicU64,
}

impl LiveStream {
    async fn open(channel: Channel) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel::<WorkRequest>(1024);
        let mut client = WorkloadClient::new(channel);
        let mut inbound = client
            .work_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<i32>>>> = Arc::default();
        let reader = Arc::clone(&pending);
        let closed = Arc::new(AtomicBool::new(false));
        let closing = Arc::clone(&closed);
        tokio::spawn(async move {
            let end_code = loop {
                match inbound.message().await {
                    Ok(Some(WorkResponse { id, code, .. })) => {
                        let waiter = reader
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(i32::try_from(code).unwrap_or(i32::MAX));
                        }
                    }
                    Ok(None) => break UNAVAILABLE,
                    Err(status) => break status.code() as i32,
                }
            };
            closing.store(true, Ordering::Release);
            let waiting: Vec<_> = reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain()
                .collect();
            for (_, waiter) in waiting {
                let _ = waiter.send(end_code);
            }
        });
        Ok(Self {
            tx,
            closed,
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    async fn call(&self, mut request: WorkRequest) -> Outcome {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        let (done, answer) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, done);
        if self.tx.send(request).await.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Outcome::unreached(UNAVAILABLE);
        }
        match answer.await {
            Ok(code) => Outcome {
                code,
                unreached: false,
            },
            Err(_) => Outcome::unreached(UNAVAILABLE),
        }
    }
}

/// A `WorkStream` that is opened again on its channel once it has ended, so
/// a node that restarts or drops the stream costs the requests in flight,
/// not the rest of the run.
#[derive(Debug)]
struct StreamConn {
    channel: Channel,
    /// The stream in use. A `std` mutex: held to clone or swap the `Arc`.
    current: Mutex<Arc<LiveStream>>,
    /// Held while opening a new stream, so workers open one, not one each.
    reopening: tokio::sync::Mutex<()>,
}

impl StreamConn {
    async fn open(channel: Channel) -> Result<Self, tonic::Status> {
        let live = LiveStream::open(channel.clone()).await?;
        Ok(Self {
            channel,
            current: Mutex::new(Arc::new(live)),
            reopening: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Arc<LiveStream> {
        Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }

    async fn call(&self, request: WorkRequest) -> Outcome {
        let mut live = self.current();
        if live.closed.load(Ordering::Acquire) {
            let _reopening = self.reopening.lock().await;
            live = self.current();
            if live.closed.load(Ordering::Acquire) {
                match LiveStream::open(self.channel.clone()).await {
                    Ok(new) => {
                        live = Arc::new(new);
                        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                            Arc::clone(&live);
                    }
                    Err(status) => return Outcome::unreached(status.code() as i32),
                }
            }
        }
        live.call(request).await
    }
}

/// `Work` calls straight on one HTTP/2 connection (the `h2` crate's),
/// connected again when it is lost, with the request encoded once for the
/// whole run. A tonic client would encode every request again and put a
/// load-balancing buffer (a queue and a task hand-off) and a body-piping task
/// in front of each: in a load generator that cost is taken from the target
/// sharing the machine. The answer's status
/// is read as gRPC defines it (`grpc-status` in the trailers, or in the
/// headers of a trailers-only answer); its message is not decoded.
#[derive(Debug)]
struct UnaryConn {
    /// `http://host:port/farm.v1.Workload/Work`.
    uri: http::Uri,
    /// `host:port` to connect to.
    authority: String,
    /// The connection in use. A `std` mutex: held to clone or swap it.
    current: Mutex<Option<Link>>,
    /// Held while connecting, so callers make one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

/// A handle on a connection, and whether the connection has ended.
type Link = (SendRequest<Bytes>, Arc<AtomicBool>);

/// How long connecting to a target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request as a gRPC message frame: uncompressed flag, big-endian length,
/// the encoded message.
fn frame(request: &WorkRequest) -> Bytes {
    let message = prost::Message::encode_to_vec(request);
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

/// The gRPC status an answer carries, from `headers` (trailers-only) or the
/// trailers.
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The gRPC code of an HTTP status that is not 200 (gRPC's mapping).
fn code_of_http(status: http::StatusCode) -> i32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => UNAVAILABLE,
        _ => 2,
    }
}

impl UnaryConn {
    fn new(target: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadTarget(target.to_owned());
        let base: http::Uri = target.parse().map_err(|_| bad())?;
        let authority = base.authority().ok_or_else(bad)?.clone();
        let uri = http::Uri::builder()
            .scheme(base.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP))
            .authority(authority.clone())
            .path_and_query("/farm.v1.Workload/Work")
            .build()
            .map_err(|_| bad())?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{authority}:80"),
        };
        Ok(Self {
            uri,
            authority,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn open(&self) -> Option<Link> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(_, ended)| !ended.load(Ordering::Acquire))
            .cloned()
    }

    async fn link(&self) -> Result<Link, String> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let connect = async {
            let stream = tokio::net::TcpStream::connect(&self.authority).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = h2::client::handshake(stream)
                .await
                .map_err(std::io::Error::other)?;
            let authority = self.authority.clone();
            let ended = Arc::new(AtomicBool::new(false));
            let ending = Arc::clone(&ended);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(target = %authority, error = %err, "connection lost");
                }
                ending.store(true, Ordering::Release);
            });
            Ok::<_, std::io::Error>((sender, ended))
        };
        let (sender, ended) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|err| err.to_string())?;
        let link = (sender, ended);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
        Ok(link)
    }

    /// Sends `frame` as a `Work` call. `cache` keeps the caller's own handle
    /// on the connection between calls (cloning one costs a lock).
    async fn call(&self, frame: Bytes, cache: &mut Option<Link>) -> Outcome {
        let cached = cache
            .take()
            .filter(|(_, ended)| !ended.load(Ordering::Acquire));
        let (sender, ended) = match cached {
            Some(link) => link,
            None => match self.link().await {
                Ok(link) => link,
                Err(reason) => {
                    tracing::debug!(target = %self.authority, %reason, "cannot connect");
                    return Outcome::unreached(UNAVAILABLE);
                }
            },
        };
        let request = http::Request::post(self.uri.clone())
            .header(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            )
            .header(http::header::TE, http::HeaderValue::from_static("trailers"))
            .body(());
        let Ok(request) = request else {
            return Outcome::unreached(13);
        };
        let answered = async {
            let mut sender = sender.ready().await?;
            let (response, mut body) = sender.send_request(request, false)?;
            *cache = Some((sender, ended));
            body.send_data(frame, true)?;
            let response = response.await?;
            if response.status() != http::StatusCode::OK {
                return Ok(code_of_http(response.status()));
            }
            if let Some(code) = grpc_status(response.headers()) {
                return Ok(code);
            }
            let mut body = response.into_body();
            while let Some(data) = body.data().await {
                let data = data?;
                let _ = body.flow_control().release_capacity(data.len());
            }
            let trailers = body.trailers().await?;
            // No status at all is a broken answer: gRPC calls it UNKNOWN.
            Ok::<_, h2::Error>(trailers.as_ref().and_then(grpc_status).unwrap_or(2))
        };
        match answered.await {
            Ok(code) => Outcome {
                code,
                unreached: false,
            },
            Err(err) => {
                tracing::debug!(target = %self.authority, error = %err, "request lost");
                Outcome::unreached(UNAVAILABLE)
            }
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// gRPC status code (0: OK).
    code: i32,
    /// The request never reached a server (no connection, stream gone).
    unreached: bool,
}

impl Outcome {
    fn unreached(code: i32) -> Self {
        Self {
            code,
            unreached: true,
        }
    }
}

/// Where requests are sent.
#[derive(Debug)]
enum Caller {
    Unary(UnaryConn),
    Stream(StreamConn),
}

impl Caller {
    /// Sends request number `n` of `plan`; `cache` is the caller's own
    /// connection handle, kept between calls.
    async fn call(&self, plan: &Plan, n: u64, cache: &mut Option<Link>) -> Outcome {
        let failing = usize::from(plan.fails(n));
        match self {
            Caller::Unary(conn) => conn.call(plan.frames[failing].clone(), cache).await,
            Caller::Stream(stream) => stream.call(plan.requests[failing].clone()).await,
        }
    }
}

/// The run's histograms and the current second's, behind one lock held for
/// a record or a swap.
#[derive(Debug, Default)]
struct Shard {
    total: Recorder,
    second: Recorder,
}

type Shards = Arc<[Mutex<Shard>]>;

fn record(shard: &Mutex<Shard>, corrected: Duration, uncorrected: Duration, code: i32) {
    let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
    shard.total.record(corrected, uncorrected, code);
    shard.second.record(corrected, uncorrected, code);
}

/// What every request is built from, and the run's timeline.
#[derive(Debug)]
struct Plan {
    /// Sending starts.
    start: Instant,
    /// Recording starts (after the warm-up).
    measure: Instant,
    /// No request is sent at or after this.
    end: Instant,
    /// The request that succeeds, and the one that asks for a failure.
    requests: [WorkRequest; 2],
    /// The same, encoded as gRPC frames.
    frames: [Bytes; 2],
    error_rate: f64,
}

impl Plan {
    fn new(start: Instant, measure: Instant, end: Instant, config: &RunConfig) -> Self {
        let ok = WorkRequest {
            id: 0,
            payload: vec![0x5a; config.payload],
            delay_ms: config.delay_ms,
            response_bytes: config.response_bytes,
            cpu_us: 0,
            fail_code: 0,
            fail_message: String::new(),
        };
        let failing = WorkRequest {
            fail_code: config.fail_code,
            fail_message: "requested by loadgen".to_owned(),
            ..ok.clone()
        };
        Self {
            start,
            measure,
            end,
            frames: [frame(&ok), frame(&failing)],
            requests: [ok, failing],
            error_rate: config.error_rate,
        }
    }

    /// Whether request number `n` (from 1) asks for a failure: the share
    /// `error_rate` of requests does, spread evenly (request n does when
    /// ⌊n·rate⌋ steps up).
    fn fails(&self, n: u64) -> bool {
        let rate = self.error_rate;
        rate > 0.0 && (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor()
    }
}

/// Closed loop: one request in flight, the next sent when it is answered.
/// Stopped early by aborting its task: nothing here waits on a stop signal,
/// which would cost a registration per request.
async fn worker(
    caller: Arc<Caller>,
    plan: Arc<Plan>,
    built: Arc<AtomicU64>,
    shard: Shards,
    index: usize,
) {
    let mut link = None;
    loop {
        let sent = Instant::now();
        if sent >= plan.end {
            break;
        }
        let n = built.fetch_add(1, Ordering::Relaxed) + 1;
        let outcome = caller.call(&plan, n, &mut link).await;
        let done = Instant::now();
        if sent >= plan.measure {
            record(&shard[index], done - sent, done - sent, outcome.code);
        }
        if outcome.unreached {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Resolves once `abort` is set (or its sender is gone).
async fn aborted(abort: &mut watch::Receiver<bool>) {
    let _ = abort.wait_for(|a| *a).await;
}

/// Waits for every task of `tasks`; a panic in one is an error.
async fn join_all(tasks: &mut JoinSet<()>) -> Result<(), RunError> {
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    Ok(())
}

/// Waits for `tasks` until `abort` fires, then aborts those left.
async fn join_until(
    tasks: &mut JoinSet<()>,
    abort: &mut watch::Receiver<bool>,
) -> Result<(), RunError> {
    tokio::select! {
        joined = join_all(tasks) => joined,
        () = aborted(abort) => {
            tasks.abort_all();
            Ok(())
        }
    }
}

/// Open loop: the schedule, on its own thread. Sends each slot's number and
/// time as it falls due, until the end or until the receiver is gone.
fn schedule(plan: &Plan, rate: f64, slots: &mpsc::UnboundedSender<(u64, Instant)>) {
    let start = plan.start.into_std();
    let end = plan.end.into_std();
    let mut slot = 0u64;
    loop {
        let at = start + Duration::from_secs_f64(slot as f64 / rate);
        if at >= end || slots.is_closed() {
            return;
        }
        let now = std::time::Instant::now();
        if at > now {
            // Bounded, so a closed receiver is noticed at low rates too.
            std::thread::sleep((at - now).min(Duration::from_millis(50)));
            continue;
        }
        if slots.send((slot, Instant::from_std(at))).is_err() {
            return;
        }
        slot += 1;
    }
}

/// Open loop: sends each scheduled request as its own task, at most
/// `concurrency` in flight, until the end. Returns the scheduled requests
/// never sent, and the tasks still in flight. Stopped early by dropping it
/// (which aborts its tasks and ends the schedule's thread).
async fn dispatch(
    callers: Vec<Arc<Caller>>,
    plan: Arc<Plan>,
    rate: f64,
    concurrency: usize,
    shards: Shards,
) -> Result<(u64, JoinSet<()>), RunError> {
    let (slots_tx, mut slots) = mpsc::unbounded_channel();
    let scheduler = {
        let plan = Arc::clone(&plan);
        std::thread::Builder::new()
            .name("loadgen-schedule".to_owned())
            .spawn(move || schedule(&plan, rate, &slots_tx))
            .map_err(RunError::Thread)?
    };
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut missed = 0u64;
    while let Some((slot, at)) = slots.recv().await {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            // All in flight: wait for a slot, as long as the run lasts.
            Err(_) => tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(plan.end) => {
                    missed += u64::from(at >= plan.measure);
                    break;
                }
            },
        };
        let caller = Arc::clone(&callers[slot as usize % callers.len()]);
        let (plan, shards) = (Arc::clone(&plan), Arc::clone(&shards));
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let outcome = caller.call(&plan, slot + 1, &mut None).await;
            let done = Instant::now();
            if at >= plan.measure {
                let shard = &shards[slot as usize % shards.len()];
                record(shard, done - at, done - sent, outcome.code);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Whatever is still scheduled was never sent.
    slots.close();
    while let Some((_, at)) = slots.recv().await {
        missed += u64::from(at >= plan.measure);
    }
    if scheduler.join().is_err() {
        tracing::warn!("the scheduler thread panicked");
    }
    Ok((missed, tasks))
}

fn channel(uri: &str) -> Result<Channel, RunError> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(|_| ConfigError::BadTarget(uri.to_owned()))?
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn callers(config: &RunConfig) -> Result<Vec<Arc<Caller>>, RunError> {
    let mut callers = Vec::new();
    for target in &config.targets {
        for _ in 0..config.connections {
            match config.mode {
                Mode::Unary => callers.push(Arc::new(Caller::Unary(UnaryConn::new(target)?))),
                Mode::Stream => {
                    let channel = channel(target)?;
                    for _ in 0..config.streams {
                        let stream = StreamConn::open(channel.clone()).await.map_err(|status| {
                            RunError::Stream {
                                target: target.clone(),
                                message: status.message().to_owned(),
                            }
                        })?;
                        callers.push(Arc::new(Caller::Stream(stream)));
                    }
                }
            }
        }
    }
    Ok(callers)
}

/// Takes the current second's histograms out of every shard.
fn take_second(shards: &[Mutex<Shard>]) -> Recorder {
    let mut all = Recorder::default();
    for shard in shards {
        let second =
            std::mem::take(&mut shard.lock().unwrap_or_else(PoisonError::into_inner).second);
        all.merge(&second);
    }
    all
}

/// Reports every second of measuring to `progress` until `finished` carries
/// the instant the run ended; then the rest, folded into the last second
/// when it is only the tail of requests completing after the end.
async fn tick(
    shards: Shards,
    measure: Instant,
    mut finished: watch::Receiver<Option<Instant>>,
    mut progress: impl FnMut(&Interval) + Send + 'static,
) -> Vec<Interval> {
    const SECOND: Duration = Duration::from_secs(1);
    let mut intervals: Vec<Interval> = Vec::new();
    let mut last: Option<Recorder> = None;
    let mut from = measure;
    loop {
        let next = from + SECOND;
        let ended = tokio::select! {
            () = tokio::time::sleep_until(next) => None,
            ended = async {
                match finished.wait_for(Option::is_some).await {
                    Ok(ended) => *ended,
                    Err(_) => Some(Instant::now()),
                }
            } => ended,
        };
        let to = ended.map_or(next, |at| at.max(measure));
        let second = take_second(&shards);
        if let Some(ended) = ended {
            let tail = to.saturating_duration_since(from);
            if tail < SECOND / 4
                && let (Some(mut previous), Some(interval)) = (last.take(), intervals.pop())
            {
                previous.merge(&second);
                let start = from - SECOND;
                intervals.push(Interval::new(
                    interval.second,
                    ended.saturating_duration_since(measure),
                    to.saturating_duration_since(start),
                    &previous,
                ));
            } else if second.requests > 0 || tail >= SECOND / 4 {
                let interval = Interval::new(
                    intervals.len() as u64 + 1,
                    to.saturating_duration_since(measure),
                    tail,
                    &second,
                );
                progress(&interval);
                intervals.push(interval);
            }
            return intervals;
        }
        let interval = Interval::new(
            intervals.len() as u64 + 1,
            next.saturating_duration_since(measure),
            SECOND,
            &second,
        );
        progress(&interval);
        intervals.push(interval);
        last = Some(second);
        from = next;
    }
}

/// Runs the load test `config` describes until its duration is up or `stop`
/// resolves, whichever comes first, and reports what was measured.
pub async fn run(
    config: &RunConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, RunError> {
    run_with_progress(config, stop, |_| {}).await
}

/// [`run`], calling `progress` with each second of measuring as it ends.
pub async fn run_with_progress(
    config: &RunConfig,
    stop: impl Future<Output = ()> + Send + 'static,
    progress: impl FnMut(&Interval) + Send + 'static,
) -> Result<Report, RunError> {
    config.validate()?;
    let callers = callers(config).await?;

    let start = Instant::now();
    let measure = start + config.warmup;
    let end = measure + config.duration;
    let plan = Arc::new(Plan::new(start, measure, end, config));
    let shard_count = match config.rate {
        Some(_) => OPEN_SHARDS,
        None => config.concurrency,
    };
    let shards: Shards = (0..shard_count).map(|_| Mutex::default()).collect();

    // Stops everything at once: on `stop`, or once the requests in flight
    // at the end have had their time to complete.
    let (abort_tx, abort) = watch::channel(false);
    let drain = DRAIN + Duration::from_millis(u64::from(config.delay_ms));
    let timer = tokio::spawn(async move {
        let stopped = tokio::select! {
            () = tokio::time::sleep_until(end + drain) => None,
            () = stop => Some(Instant::now()),
        };
        let _ = abort_tx.send(true);
        stopped
    });
    let (finished_tx, finished) = watch::channel(None);
    let ticker = tokio::spawn(tick(Arc::clone(&shards), measure, finished, progress));

    let mut abort = abort;
    let missed = match config.rate {
        Some(rate) => {
            let sending = dispatch(
                callers,
                Arc::clone(&plan),
                rate,
                config.concurrency,
                Arc::clone(&shards),
            );
            let mut stopping = abort.clone();
            tokio::select! {
                sent = sending => {
                    let (missed, mut in_flight) = sent?;
                    join_until(&mut in_flight, &mut abort).await?;
                    missed
                }
                () = aborted(&mut stopping) => 0,
            }
        }
        None => {
            let built = Arc::new(AtomicU64::new(0));
            let mut workers = JoinSet::new();
            for i in 0..config.concurrency {
                workers.spawn(worker(
                    Arc::clone(&callers[i % callers.len()]),
                    Arc::clone(&plan),
                    Arc::clone(&built),
                    Arc::clone(&shards),
                    i,
                ));
            }
            join_until(&mut workers, &mut abort).await?;
            0
        }
    };
    let done = Instant::now();
    // Stopped before the end: a partial run. Stopped later, while requests
    // drained, or not at all: the whole duration was measured.
    // Once the abort is out, the timer has decided and is about to finish.
    let stopped = if *abort.borrow() {
        timer.await?.filter(|at| *at < end)
    } else {
        timer.abort();
        None
    };
    let ended = stopped.unwrap_or(done);
    let _ = finished_tx.send(Some(ended));
    let intervals = ticker.await?;

    let mut all = Recorder::default();
    for shard in shards.iter() {
        all.merge(&shard.lock().unwrap_or_else(PoisonError::into_inner).total);
    }
    let measured = match stopped {
        Some(at) => at.saturating_duration_since(measure),
        None => config.duration,
    };
    Ok(Report::new(Measured {
        mode: config.mode,
        targets: &config.targets,
        rate: config.rate,
        concurrency: config.concurrency,
        measured,
        all: &all,
        missed,
        intervals,
        interrupted: stopped.is_some(),
    }))
}
