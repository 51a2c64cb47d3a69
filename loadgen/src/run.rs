//! The scheduler: workers that each keep one request in flight, fed either
//! as fast as answers come (closed loop) or from one shared schedule of send
//! times at a constant total rate (open loop). Each worker records into its
//! own histograms; they are merged once the run is over.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use farm_api::v1::{WorkRequest, WorkResponse, workload_client::WorkloadClient};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    config::{Mode, RunConfig},
    report::{Recorder, Report},
};

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

    async fn call(&self, mut request: WorkRequest) -> i32 {
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
            return UNAVAILABLE;
        }
        answer.await.unwrap_or(UNAVAILABLE)
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

    async fn call(&self, request: WorkRequest) -> i32 {
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
                    Err(status) => return status.code() as i32,
                }
            }
        }
        live.call(request).await
    }
}

/// Where a worker sends its requests.
#[derive(Debug)]
enum Caller {
    Unary(WorkloadClient<Channel>),
    Stream(StreamConn),
}

impl Caller {
    /// Sends one request; the gRPC status code of its outcome (0: OK).
    async fn call(&self, request: WorkRequest) -> i32 {
        match self {
            Caller::Unary(client) => match client.clone().work(request).await {
                Ok(_) => 0,
                Err(status) => status.code() as i32,
            },
            Caller::Stream(stream) => stream.call(request).await,
        }
    }
}

/// The timeline every worker shares.
#[derive(Debug)]
struct Plan {
    /// Sending starts.
    start: Instant,
    /// Recording starts (after the warm-up).
    measure: Instant,
    /// No request is scheduled at or after this.
    end: Instant,
    /// Open loop: requests per second in total.
    rate: Option<f64>,
    /// Next slot of the open-loop schedule.
    next_slot: AtomicU64,
    /// Requests built so far, for `fail_every`.
    built: AtomicU64,
    template: WorkRequest,
    fail_every: u64,
    fail_code: u32,
}

impl Plan {
    fn request(&self) -> WorkRequest {
        let n = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        let mut request = self.template.clone();
        if self.fail_every > 0 && n.is_multiple_of(self.fail_every) {
            request.fail_code = self.fail_code;
            request.fail_message = "requested by loadgen".to_owned();
        }
        request
    }
}

async fn worker(caller: Arc<Caller>, plan: Arc<Plan>, mut stop: watch::Receiver<bool>) -> Recorder {
    let mut recorder = Recorder::default();
    loop {
        if *stop.borrow() {
            break;
        }
        let scheduled = match plan.rate {
            Some(rate) => {
                let slot = plan.next_slot.fetch_add(1, Ordering::Relaxed);
                let at = plan.start + Duration::from_secs_f64(slot as f64 / rate);
                if at >= plan.end {
                    break;
                }
                tokio::select! {
                    () = wait_until(at) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                at
            }
            None => Instant::now(),
        };
        let request = plan.request();
        let sent = Instant::now();
        let code = tokio::select! {
            code = caller.call(request) => code,
            _ = stop.wait_for(|s| *s) => break,
        };
        let done = Instant::now();
        if scheduled >= plan.measure {
            recorder.record(done - scheduled, done - sent, code);
        }
    }
    recorder
}

/// Tokio's timer fires on millisecond ticks, up to a tick or two late, and
/// every microsecond late would count as latency in the corrected figures:
/// sleep to a tick before `at`, then yield until it.
async fn wait_until(at: Instant) {
    const TICK: Duration = Duration::from_millis(1);
    if let Some(early) = at.checked_sub(TICK * 2)
        && early > Instant::now()
    {
        tokio::time::sleep_until(early).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

fn channel(uri: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .with_context(|| format!("{uri} is not a target address"))?
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Runs the load test `config` describes until its duration is up or `stop`
/// resolves, whichever comes first, and reports what was measured.
pub async fn run(
    config: &RunConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Report> {
    let mut callers = Vec::new();
    for target in &config.targets {
        for _ in 0..config.connections {
            let channel = channel(target)?;
            match config.mode {
                Mode::Unary => callers.push(Arc::new(Caller::Unary(WorkloadClient::new(channel)))),
                Mode::Stream => {
                    for _ in 0..config.streams {
                        let stream = StreamConn::open(channel.clone())
                            .await
                            .with_context(|| format!("cannot open a stream to {target}"))?;
                        callers.push(Arc::new(Caller::Stream(stream)));
                    }
                }
            }
        }
    }

    let start = Instant::now();
    let measure = start + config.warmup;
    let end = measure + config.duration;
    let plan = Arc::new(Plan {
        start,
        measure,
        end,
        rate: config.rate,
        next_slot: AtomicU64::new(0),
        built: AtomicU64::new(0),
        template: WorkRequest {
            id: 0,
            payload: vec![0x5a; config.payload],
            delay_ms: config.delay_ms,
            response_bytes: config.response_bytes,
            cpu_us: 0,
            fail_code: 0,
            fail_message: String::new(),
        },
        fail_every: config.fail_every,
        fail_code: config.fail_code,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let timer = tokio::spawn(async move {
        let interrupted = tokio::select! {
            () = tokio::time::sleep_until(end) => false,
            () = stop => true,
        };
        let stopped = Instant::now();
        let _ = stop_tx.send(true);
        (stopped, interrupted)
    });

    let workers: Vec<_> = (0..config.concurrency)
        .map(|i| {
            let caller = Arc::clone(&callers[i % callers.len()]);
            tokio::spawn(worker(caller, Arc::clone(&plan), stop_rx.clone()))
        })
        .collect();
    let mut all = Recorder::default();
    for worker in workers {
        all.merge(&worker.await.context("a worker failed")?);
    }
    let (stopped, interrupted) = timer.await.context("the timer failed")?;
    let measured = stopped.saturating_duration_since(measure);
    Ok(Report::new(
        config.mode,
        config.rate,
        measured,
        &all,
        interrupted,
    ))
}
