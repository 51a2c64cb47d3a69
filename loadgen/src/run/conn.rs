//! Where requests go: a [`Caller`] per connection (unary) or per stream
//! (stream mode). Each connects through its connection's [`Dialer`] when it
//! first needs to and again whenever its connection or stream is lost, so
//! a node that restarts costs the requests in flight, not the rest of the
//! run, and a target that refuses is asked again at the backoff's pace,
//! not at the pace of the requests waiting for it.
//!
//! A request counts once it has gone out on a connection that works. One
//! that finds no connection before the run ends, or whose connection fails
//! before answering anything, was never sent: it is not counted, and the
//! failure is the dialer's to count.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use farm_api::v1::{WorkRequest, WorkResponse, workload_client::WorkloadClient};
use tokio::{
    sync::{mpsc, oneshot},
    task::AbortHandle,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{
    Plan,
    dial::{Dialer, status_reason},
    wire::{self, Failure, Outcome, Wire},
};
use crate::config::ConfigError;

/// Status code of a request whose connection or stream was lost under it.
pub(super) const UNAVAILABLE: i32 = tonic::Code::Unavailable as i32;

/// A request that went out: when, and the gRPC status it ended with (0:
/// OK).
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub at: Instant,
    pub code: i32,
}

/// Where requests are sent.
#[derive(Debug)]
pub(super) enum Caller {
    Unary(UnaryConn),
    Stream(StreamConn),
}

impl Caller {
    /// Sends request number `number()` of `plan` (numbered once it can go
    /// out) as soon as there is a connection for it. `None`: not sent,
    /// because no connection could be had before the end of the run, or
    /// the one there failed before answering anything. `cache` is the
    /// caller's own handle on its connection between calls (unary).
    pub(super) async fn call(
        &self,
        plan: &Plan,
        number: impl FnOnce() -> u64,
        cache: &mut Option<Link>,
    ) -> Option<Sent> {
        match self {
            Caller::Unary(conn) => conn.call(plan, number, cache).await,
            Caller::Stream(stream) => stream.call(plan, number).await,
        }
    }

    /// One attempt to connect before the run starts, so that the first
    /// requests do not measure it ([`Dialer::prepare`]).
    pub(super) async fn prepare(&self) {
        match self {
            Caller::Unary(conn) => {
                conn.dialer
                    .prepare(|| conn.current(), || conn.connect())
                    .await
            }
            Caller::Stream(stream) => {
                stream
                    .dialer
                    .prepare(|| stream.current(), || stream.connect())
                    .await
            }
        }
    }
}

/// What the handles on one HTTP/2 connection share.
#[derive(Debug, Default)]
pub(super) struct LinkState {
    /// The connection has ended, or a caller saw it fail.
    ended: AtomicBool,
    /// The target has answered on it at least once.
    answered: AtomicBool,
}

impl LinkState {
    fn is_open(&self) -> bool {
        !self.ended.load(Ordering::Acquire)
    }

    fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// The connection is gone. Whoever notices first a connection that
    /// never answered counts it as a failed attempt.
    fn lost(&self, dialer: &Dialer, reason: impl FnOnce() -> String) {
        if !self.ended.swap(true, Ordering::AcqRel) && !self.has_answered() {
            dialer.failed(reason());
        }
    }

    /// The target answered on this connection; the first answer shows it
    /// works.
    fn answered(&self, dialer: &Dialer) {
        if !self.answered.load(Ordering::Relaxed) && !self.answered.swap(true, Ordering::AcqRel) {
            dialer.established();
        }
    }
}

/// A handle on a connection, and the state its handles share.
pub(super) type Link = (Arc<Wire>, Arc<LinkState>);

/// `Work` calls straight on one HTTP/2 connection (loadgen's own client,
/// [`wire`](super::wire), for why), with the request encoded once for the
/// whole run. A tonic client would encode every request again and put a
/// load-balancing buffer (a queue and a task hand-off) and a body-piping
/// task in front of each: in a load generator that cost is taken from the
/// target sharing the machine. The answer's status is read as gRPC defines
/// it (`grpc-status` in the trailers, or in the headers of a trailers-only
/// answer); its message is not decoded.
#[derive(Debug)]
pub(super) struct UnaryConn {
    /// `host:port` to connect to.
    authority: String,
    /// Every request's HTTP/2 header block.
    headers: Bytes,
    /// The connection in use. A `std` mutex: held to clone or swap it.
    current: Mutex<Option<Link>>,
    dialer: Arc<Dialer>,
    /// The tasks driving its connections, ended with it: a connection
    /// otherwise lives on until the target closes it, which inside a
    /// long-lived process (the control plane's `LoadTest.Run`) leaks a
    /// socket and a task per target and run.
    drivers: Mutex<Vec<AbortHandle>>,
}

impl Drop for UnaryConn {
    fn drop(&mut self) {
        for driver in self
            .drivers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            driver.abort();
        }
    }
}

/// A request as a gRPC message frame: uncompressed flag, big-endian length,
/// the encoded message.
pub(super) fn frame(request: &WorkRequest) -> Bytes {
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

/// The gRPC code of an HTTP status that is not 200 (gRPC's mapping).
fn code_of_http(status: u16) -> i32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => UNAVAILABLE,
        _ => 2,
    }
}

/// The gRPC code of a stream reset (gRPC's mapping of HTTP/2 errors).
fn code_of_reset(reason: u32) -> i32 {
    match h2::Reason::from(reason) {
        h2::Reason::REFUSED_STREAM => UNAVAILABLE,
        h2::Reason::CANCEL => 1,
        h2::Reason::ENHANCE_YOUR_CALM => 8,
        h2::Reason::INADEQUATE_SECURITY => 7,
        _ => 13,
    }
}

/// The gRPC code of an answer.
fn code_of(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Http(status) => code_of_http(status),
        // No status at all is a broken answer: gRPC calls it UNKNOWN.
        Outcome::Grpc(code) => code.unwrap_or(2),
        Outcome::Reset(reason) => code_of_reset(reason),
    }
}

impl UnaryConn {
    pub(super) fn new(target: &str, dialer: Arc<Dialer>) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadTarget(target.to_owned());
        let base: http::Uri = target.parse().map_err(|_| bad())?;
        if base
            .scheme()
            .is_some_and(|scheme| *scheme != http::uri::Scheme::HTTP)
        {
            return Err(bad());
        }
        let authority = base.authority().ok_or_else(bad)?.clone();
        let headers = wire::request_headers(authority.as_str(), "/farm.v1.Workload/Work");
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{authority}:80"),
        };
        Ok(Self {
            authority,
            headers,
            current: Mutex::new(None),
            dialer,
            drivers: Mutex::default(),
        })
    }

    /// The connection in use, while it is open.
    fn current(&self) -> Option<Link> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(_, state)| state.is_open())
            .cloned()
    }

    /// One attempt: a TCP connection and the HTTP/2 handshake. A failure is
    /// the dialer's to count.
    async fn connect(&self) -> Option<Link> {
        let (wire, driver) = self
            .dialer
            .attempt(wire::connect(&self.authority, self.headers.clone()))
            .await?;
        let state = Arc::new(LinkState::default());
        let (ending, dialer) = (Arc::clone(&state), Arc::clone(&self.dialer));
        let task = tokio::spawn(async move {
            let reason = driver.await;
            tracing::debug!(target = %dialer.target(), %reason, "connection ended");
            ending.lost(&dialer, || format!("{reason} before answering"));
        });
        let mut drivers = self.drivers.lock().unwrap_or_else(PoisonError::into_inner);
        drivers.retain(|driver| !driver.is_finished());
        drivers.push(task.abort_handle());
        drop(drivers);
        let link = (wire, state);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
        Some(link)
    }

    async fn call(
        &self,
        plan: &Plan,
        number: impl FnOnce() -> u64,
        cache: &mut Option<Link>,
    ) -> Option<Sent> {
        let cached = cache.take().filter(|(_, state)| state.is_open());
        // Waiting (bounded by the end of the run) only when there is no
        // connection: a timer per request would cost the open loop.
        let (wire, state) = match cached.or_else(|| self.current()) {
            Some(link) => link,
            None => {
                let link = self
                    .dialer
                    .get_or_connect(|| self.current(), || self.connect());
                tokio::time::timeout_at(plan.end, link).await.ok()?
            }
        };
        let at = Instant::now();
        let answer = wire.call(plan.frame(number())).await;
        match answer {
            Ok(outcome) => {
                state.answered(&self.dialer);
                *cache = Some((wire, state));
                Some(Sent {
                    at,
                    code: code_of(outcome),
                })
            }
            // The connection takes no more streams: the next call finds
            // another (the connection's task counts its end, if it failed).
            Err(Failure::NotSent) => {
                state.ended.store(true, Ordering::Release);
                None
            }
            Err(Failure::Lost(why)) => {
                tracing::debug!(target = %self.authority, %why, "request lost");
                let worked = state.has_answered();
                state.lost(&self.dialer, || format!("{why} before answering"));
                // Lost in flight on a connection that worked: a failed
                // request. On one that never did: never really sent.
                worked.then_some(Sent {
                    at,
                    code: UNAVAILABLE,
                })
            }
        }
    }
}

/// What a request on a stream waits for: the status of its answer, or
/// `None` when the stream failed before answering anything.
type Waiter = oneshot::Sender<Option<i32>>;

/// One open `WorkStream`; requests are matched to responses by id.
#[derive(Debug)]
struct LiveStream {
    tx: mpsc::Sender<WorkRequest>,
    /// Set by the reader once the stream has ended.
    closed: Arc<AtomicBool>,
    /// Requests awaiting their response. A `std` mutex: held for a map
    /// operation only, never across an await.
    pending: Arc<Mutex<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
}

impl LiveStream {
    async fn open(channel: Channel, dialer: Arc<Dialer>) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel::<WorkRequest>(1024);
        let mut client = WorkloadClient::new(channel);
        let mut inbound = client
            .work_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let pending: Arc<Mutex<HashMap<u64, Waiter>>> = Arc::default();
        let reader = Arc::clone(&pending);
        let closed = Arc::new(AtomicBool::new(false));
        let closing = Arc::clone(&closed);
        tokio::spawn(async move {
            let mut answered = false;
            let (end_code, why) = loop {
                match inbound.message().await {
                    Ok(Some(WorkResponse { id, code, .. })) => {
                        if !answered {
                            answered = true;
                            dialer.established();
                        }
                        let waiter = reader
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(Some(i32::try_from(code).unwrap_or(i32::MAX)));
                        }
                    }
                    Ok(None) => break (UNAVAILABLE, "the target ended the stream".to_owned()),
                    Err(status) => break (status.code() as i32, status_reason(&status)),
                }
            };
            closing.store(true, Ordering::Release);
            if !answered {
                dialer.failed(format!("{why} before answering"));
            }
            let waiting: Vec<_> = reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain()
                .collect();
            for (_, waiter) in waiting {
                let _ = waiter.send(answered.then_some(end_code));
            }
        });
        Ok(Self {
            tx,
            closed,
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// The status of `request`'s answer; `None` when it could not be sent.
    async fn call(&self, mut request: WorkRequest) -> Option<i32> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        let (done, answer) = oneshot::channel();
        let forget = || {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id)
        };
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, done);
        // Ended while this request was being registered: if the reader
        // has not answered it while draining, nobody will.
        if !self.is_open() && forget().is_some() {
            return None;
        }
        if self.tx.send(request).await.is_err() {
            forget();
            return None;
        }
        answer.await.ok().flatten()
    }
}

/// A `WorkStream` on one connection's channel, opened when first needed
/// and again once it has ended. The streams of a connection share its
/// dialer: they open one at a time, at the backoff's pace after a failure.
#[derive(Debug)]
pub(super) struct StreamConn {
    channel: Channel,
    dialer: Arc<Dialer>,
    /// The stream in use. A `std` mutex: held to clone or swap the `Arc`.
    current: Mutex<Option<Arc<LiveStream>>>,
}

impl StreamConn {
    pub(super) fn new(channel: Channel, dialer: Arc<Dialer>) -> Self {
        Self {
            channel,
            dialer,
            current: Mutex::new(None),
        }
    }

    /// The stream in use, while it is open.
    fn current(&self) -> Option<Arc<LiveStream>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|live| live.is_open())
            .cloned()
    }

    /// One attempt to open the stream (connecting first if the channel has
    /// no connection). A failure is the dialer's to count.
    async fn connect(&self) -> Option<Arc<LiveStream>> {
        let live = self
            .dialer
            .attempt(async {
                LiveStream::open(self.channel.clone(), Arc::clone(&self.dialer))
                    .await
                    .map_err(|status| status_reason(&status))
            })
            .await?;
        let live = Arc::new(live);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&live));
        Some(live)
    }

    async fn call(&self, plan: &Plan, number: impl FnOnce() -> u64) -> Option<Sent> {
        let live = match self.current() {
            Some(live) => live,
            None => {
                let stream = self
                    .dialer
                    .get_or_connect(|| self.current(), || self.connect());
                tokio::time::timeout_at(plan.end, stream).await.ok()?
            }
        };
        let at = Instant::now();
        let code = live.call(plan.request(number()).clone()).await?;
        Some(Sent { at, code })
    }
}
