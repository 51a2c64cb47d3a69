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
//! Requests go out through `conn`'s callers, which connect (and connect
//! again) through `dial`'s dialers: a target that refuses connections is
//! asked again at the backoff's pace, its refusals are counted as connect
//! errors, and the requests that could not be sent are not counted as
//! requests. Each connection is tried once before the clock starts.
//!
//! Recording goes into shards (one per closed-loop worker, a few for the open
//! loop's tasks), each holding the run's histograms and the current second's;
//! a ticker takes the second's every second for progress, and the run's are
//! merged at the end.

mod conn;
mod dial;
mod wire;

use std::{
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use farm_api::v1::WorkRequest;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tonic::transport::{Channel, Endpoint};

use self::{
    conn::{Caller, StreamConn, UnaryConn, frame},
    dial::{Dialer, Tally},
};
use crate::{
    config::{ConfigError, Mode, RunConfig},
    report::{Interval, Measured, Recorder, Report},
};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration breaks one of the rules of a run.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A task of the run panicked.
    #[error("a load-test task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The open loop's schedule thread could not be started.
    #[error("cannot start the scheduler thread: {0}")]
    Thread(std::io::Error),
}

/// How long requests still in flight when the duration is up may take to
/// complete (plus the delay the nodes are asked for) before they are
/// abandoned.
const DRAIN: Duration = Duration::from_secs(1);
/// Recording shards: requests record into one of these (by slot or by
/// worker), each behind its own lock. Few, so that the buckets being
/// counted stay in the CPU's caches: with one per worker, 400 workers
/// spread their records over 1,600 histograms (230 MB), and a record cost
/// a cache miss.
const SHARDS: usize = 8;

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

    /// Request number `n`.
    fn request(&self, n: u64) -> &WorkRequest {
        &self.requests[usize::from(self.fails(n))]
    }

    /// Request number `n` as a gRPC frame.
    fn frame(&self, n: u64) -> Bytes {
        self.frames[usize::from(self.fails(n))].clone()
    }
}

/// Closed loop: one request in flight, the next sent when it is answered.
/// Stopped early by aborting its task: nothing here waits on a stop signal,
/// which would cost a registration per request.
async fn worker(
    caller: Arc<Caller>,
    plan: Arc<Plan>,
    built: Arc<AtomicU64>,
    shards: Shards,
    index: usize,
) {
    let mut link = None;
    let shard = &shards[index % shards.len()];
    let mut now = Instant::now();
    while now < plan.end {
        let number = || built.fetch_add(1, Ordering::Relaxed) + 1;
        // Not sent: there was no connection until the end, or the one
        // there failed (its dialer puts the next attempt off).
        let sent = caller.call(&plan, number, &mut link).await;
        now = Instant::now();
        if let Some(sent) = sent
            && sent.at >= plan.measure
        {
            let took = now - sent.at;
            record(shard, took, took, sent.code);
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
/// that never had a free slot, and the tasks still in flight; those that
/// had one but no connection until the end are counted in `unconnected`.
/// Stopped early by dropping it (which aborts its tasks and ends the
/// schedule's thread).
async fn dispatch(
    callers: Vec<Arc<Caller>>,
    plan: Arc<Plan>,
    rate: f64,
    concurrency: usize,
    shards: Shards,
    unconnected: Arc<AtomicU64>,
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
        let unconnected = Arc::clone(&unconnected);
        tasks.spawn(async move {
            let _permit = permit;
            let sent = caller.call(&plan, || slot + 1, &mut None).await;
            let done = Instant::now();
            if at < plan.measure {
                return;
            }
            match sent {
                Some(sent) => {
                    let shard = &shards[slot as usize % shards.len()];
                    record(shard, done - at, done - sent.at, sent.code);
                }
                None => {
                    unconnected.fetch_add(1, Ordering::Relaxed);
                }
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

/// The callers of a run: per target, `connections` connections, each a
/// caller (unary) or `streams` callers (stream mode), every connection with
/// its own dialer counting into `tally`.
fn callers(config: &RunConfig, tally: &Arc<Tally>) -> Result<Vec<Arc<Caller>>, RunError> {
    let mut callers = Vec::new();
    for target in &config.targets {
        for _ in 0..config.connections {
            let dialer = Arc::new(Dialer::new(target.clone(), Arc::clone(tally)));
            match config.mode {
                Mode::Unary => {
                    callers.push(Arc::new(Caller::Unary(UnaryConn::new(target, dialer)?)));
                }
                Mode::Stream => {
                    let channel = channel(target)?;
                    for _ in 0..config.streams {
                        let stream = StreamConn::new(channel.clone(), Arc::clone(&dialer));
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
    tally: Arc<Tally>,
    measure: Instant,
    mut finished: watch::Receiver<Option<Instant>>,
    mut progress: impl FnMut(&Interval) + Send + 'static,
) -> Vec<Interval> {
    const SECOND: Duration = Duration::from_secs(1);
    let mut intervals: Vec<Interval> = Vec::new();
    let mut last: Option<Recorder> = None;
    let mut from = measure;
    // Connect errors of the warm-up are the first second's.
    let mut connect_errors = 0;
    let mut new_connect_errors = || {
        let total = tally.total();
        let new = total - connect_errors;
        connect_errors = total;
        new
    };
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
                    interval.connect_errors + new_connect_errors(),
                ));
            } else if second.requests > 0 || tail >= SECOND / 4 {
                let interval = Interval::new(
                    intervals.len() as u64 + 1,
                    to.saturating_duration_since(measure),
                    tail,
                    &second,
                    new_connect_errors(),
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
            new_connect_errors(),
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
    let tally = Arc::new(Tally::default());
    let callers = callers(config, &tally)?;
    // Histograms take a while to allocate: before the clock starts.
    let shards: Shards = (0..SHARDS.min(config.concurrency))
        .map(|_| Mutex::default())
        .collect();
    futures::future::join_all(callers.iter().map(|caller| caller.prepare())).await;

    let start = Instant::now();
    let measure = start + config.warmup;
    let end = measure + config.duration;
    let plan = Arc::new(Plan::new(start, measure, end, config));

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
    let ticker = tokio::spawn(tick(
        Arc::clone(&shards),
        Arc::clone(&tally),
        measure,
        finished,
        progress,
    ));
    let unconnected = Arc::new(AtomicU64::new(0));

    let mut abort = abort;
    let missed_waiting = match config.rate {
        Some(rate) => {
            let sending = dispatch(
                callers,
                Arc::clone(&plan),
                rate,
                config.concurrency,
                Arc::clone(&shards),
                Arc::clone(&unconnected),
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
        config,
        measured,
        all: &all,
        missed_waiting,
        missed_unconnected: unconnected.load(Ordering::Relaxed),
        connect_errors: tally.failing(),
        intervals,
        interrupted: stopped.is_some(),
    }))
}
