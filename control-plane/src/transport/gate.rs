//! The port's connections, before HTTP sees them: how many may be open, how
//! long one may stay silent, how long an HTTP/1.1 client may take over its
//! first request's head, and what accepting does when the process runs out
//! of file descriptors.
//!
//! A flood of connections that never send a request must not lock the
//! nodes and the users out. So at the limit, a new connection takes the
//! place of the oldest one that has not sent a request head yet (an
//! HTTP/1.1 header block, or the start of HTTP/2's preface, which holds
//! one); only when every open connection has sent one is the new
//! connection closed at once. A connection that sends nothing for the idle
//! timeout, or has not sent its first request head within the header
//! timeout (slowloris), is closed. Later HTTP/1.1 requests get hyper's own
//! 30 s for their heads; HTTP/2 connections are watched by keepalive pings.
//!
//! The process's soft file limit is raised to its hard limit at start
//! ([`raise_file_limit`]), and by default the connections may take three
//! quarters of it: the rest stays for the nodes' processes and logs, the
//! database and the Docker socket. Should descriptors run out anyway,
//! accepting pauses, doubling the pause up to a second, rather than spin.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use crate::telemetry::{GateClose, Telemetry, worth_saying};

/// The limits on the port's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; `None`: three quarters of the file
    /// limit.
    pub max_connections: Option<usize>,
    /// How long a connection may send nothing after it opened.
    pub idle_timeout: Duration,
    /// How long after it opened a connection may take to send its first
    /// request head.
    pub header_timeout: Duration,
}

/// The process's file descriptor limit, before and after [`raise_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub before: u64,
    pub now: u64,
}

impl FileLimit {
    /// The connections this limit leaves room for, by default.
    pub fn default_connections(&self) -> usize {
        usize::try_from(self.now / 4 * 3)
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

/// Descriptors below which `--max-connections` leaves the farm too few of
/// its own.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft limit on open files to the hard one, as the shell's
/// default (often 1,024) is far below what a farm serves; returns both.
/// If the limit cannot be read or raised, it is what it was.
pub fn raise_file_limit() -> FileLimit {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return FileLimit {
            before: u64::MAX,
            now: u64::MAX,
        };
    };
    let now = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    FileLimit { before: soft, now }
}

/// Shortest pause after a failed `accept`; it doubles while failures last.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after a failed `accept`.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Admits the port's connections: one for the whole process, shared by
/// every listener that serves the routes.
#[derive(Debug)]
pub struct Gate {
    max_connections: usize,
    idle_timeout: Duration,
    header_timeout: Duration,
    telemetry: Arc<Telemetry>,
    book: Mutex<Book>,
    /// Set once the server stops accepting: connections closed then are
    /// closed for the shutdown, not for the limit.
    draining: AtomicBool,
}

/// The connections open now, and which of them have sent no request head.
#[derive(Debug, Default)]
struct Book {
    open: usize,
    next: u64,
    /// By order of arrival; the oldest is displaced first.
    unproven: BTreeMap<u64, CancellationToken>,
}

impl Gate {
    /// A gate for at most `max_connections` open connections.
    pub fn new(
        max_connections: usize,
        limits: ConnectionLimits,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_connections: max_connections.max(1),
            idle_timeout: limits.idle_timeout,
            header_timeout: limits.header_timeout,
            telemetry,
            book: Mutex::new(Book::default()),
            draining: AtomicBool::new(false),
        })
    }

    /// The connections `listener` accepts, admitted by this gate, until
    /// the stream is dropped (the server stops accepting): then the
    /// listener closes.
    pub fn incoming(self: &Arc<Self>, listener: TcpListener) -> ReceiverStream<io::Result<Gated>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(Arc::clone(self).accept(listener, tx));
        ReceiverStream::new(rx)
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, tx: mpsc::Sender<io::Result<Gated>>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => {
                    // The server is draining: a connection that never sent
                    // a request has nothing to finish.
                    self.close_unproven();
                    return;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                // The peer gave up before it was accepted: nothing is wrong here.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(err) => {
                    self.accept_failed(&err, backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            if let Err(err) = stream.set_nodelay(true) {
                debug!(%peer, cause = %err, "cannot set TCP_NODELAY");
            }
            let Some(gated) = self.admit(stream, peer) else {
                continue;
            };
            if tx.send(Ok(gated)).await.is_err() {
                return;
            }
        }
    }

    /// Logs a failed `accept`: the first, then now and then.
    fn accept_failed(&self, err: &io::Error, pause: Duration) {
        let failures = self.telemetry.accept_failed();
        if !worth_saying(failures) {
            return;
        }
        // EMFILE (the process's limit) or ENFILE (the system's).
        if matches!(err.raw_os_error(), Some(24 | 23)) {
            warn!(
                cause = %err,
                failures,
                ?pause,
                "out of file descriptors: cannot accept connections, pausing (process_open_fds and process_max_fds in /metrics; --max-connections)"
            );
        } else {
            warn!(cause = %err, failures, ?pause, "cannot accept a connection; pausing");
        }
    }

    /// Admits `stream`, displacing the oldest connection that has sent no
    /// request head if the port is full; `None` (and `stream` closed) when
    /// every open connection has sent one.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Option<Gated> {
        let token = CancellationToken::new();
        let id = {
            let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            if book.open >= self.max_connections {
                let Some((_, oldest)) = book.unproven.pop_first() else {
                    drop(book);
                    self.closed(GateClose::Refused, peer);
                    return None;
                };
                oldest.cancel();
            }
            book.open += 1;
            let id = book.next;
            book.next += 1;
            book.unproven.insert(id, token.clone());
            id
        };
        self.telemetry.gate_opened();
        let opened = Instant::now();
        Some(Gated {
            stream,
            gate: Arc::clone(self),
            id,
            peer,
            opened,
            phase: Phase::Silent,
            watch: Some(Watch {
                deadline: Box::pin(tokio::time::sleep_until(opened + self.idle_timeout)),
                displaced: Box::pin(token.cancelled_owned()),
            }),
        })
    }

    /// Counts a connection the gate closed, and says so: the first of each
    /// kind, then now and then.
    fn closed(&self, why: GateClose, peer: SocketAddr) {
        let count = self.telemetry.gate_closed(why);
        debug!(%peer, ?why, "closing a connection");
        if !worth_saying(count) {
            return;
        }
        let limit = self.max_connections;
        match why {
            GateClose::Refused => {
                warn!(%peer, count, limit, "connection limit reached and every connection has sent a request: closing new connections at once (--max-connections)")
            }
            GateClose::Displaced => {
                warn!(%peer, count, limit, "connection limit reached: closing the oldest connections that have sent no request yet, to make room (--max-connections)")
            }
            GateClose::Idle => {
                warn!(%peer, count, after = ?self.idle_timeout, "closing connections that sent nothing (--idle-connection-timeout)")
            }
            GateClose::SlowHead => {
                warn!(%peer, count, after = ?self.header_timeout, "closing connections that did not send a request's headers in time (--header-read-timeout)")
            }
        }
    }

    /// Closes every connection that has sent no request head yet.
    fn close_unproven(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let unproven = {
            let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut book.unproven)
        };
        for token in unproven.into_values() {
            token.cancel();
        }
    }

    /// `id` sent its first request head: no longer displaced nor timed.
    fn proven(&self, id: u64) {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.unproven.remove(&id);
    }

    fn left(&self, id: u64) {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.open -= 1;
        book.unproven.remove(&id);
    }
}

/// How far a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing received yet.
    Silent,
    /// Part of the first request head, ending in `matched` bytes of
    /// `\r\n\r\n`.
    Head { matched: u8 },
    /// A whole request head arrived.
    Proven,
}

/// What closes a connection that has not sent a request head yet.
#[derive(Debug)]
struct Watch {
    deadline: Pin<Box<Sleep>>,
    displaced: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// A connection the gate admitted: the socket, watched until it has sent
/// its first request head, and counted while it is open.
#[derive(Debug)]
pub struct Gated {
    stream: TcpStream,
    gate: Arc<Gate>,
    id: u64,
    peer: SocketAddr,
    opened: Instant,
    phase: Phase,
    /// `None` once proven.
    watch: Option<Watch>,
}

impl Gated {
    /// Follows the first request head through `bytes`, just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.phase == Phase::Proven {
            return;
        }
        let mut matched = match self.phase {
            Phase::Silent => {
                if let Some(watch) = &mut self.watch {
                    let deadline = self.opened + self.gate.header_timeout;
                    watch.deadline.as_mut().reset(deadline);
                }
                0
            }
            Phase::Head { matched } => matched,
            Phase::Proven => return,
        };
        for &byte in bytes {
            matched = match (matched, byte) {
                (0 | 2, b'\r') => matched + 1,
                (1 | 3, b'\n') => matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if matched == 4 {
                self.phase = Phase::Proven;
                self.watch = None;
                self.gate.proven(self.id);
                return;
            }
        }
        self.phase = Phase::Head { matched };
    }

    /// Closes this connection for `why`.
    fn close(&mut self, why: GateClose) -> io::Error {
        self.watch = None;
        if why == GateClose::Displaced && self.gate.draining.load(Ordering::Relaxed) {
            return io::Error::new(io::ErrorKind::ConnectionAborted, "shutting down");
        }
        self.gate.closed(why, self.peer);
        let (kind, message) = match why {
            GateClose::Displaced => (
                io::ErrorKind::ConnectionAborted,
                "closed to make room: the connection limit was reached and this connection had sent no request",
            ),
            GateClose::Idle => (io::ErrorKind::TimedOut, "sent nothing in time"),
            _ => (
                io::ErrorKind::TimedOut,
                "did not send a request's headers in time",
            ),
        };
        io::Error::new(kind, message)
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.gate.left(self.id);
        self.gate.telemetry.gate_left();
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(watch) = &mut this.watch
            && watch.displaced.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(this.close(GateClose::Displaced)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(watch) = &mut this.watch
                    && watch.deadline.as_mut().poll(cx).is_ready()
                {
                    let why = if this.phase == Phase::Silent {
                        GateClose::Idle
                    } else {
                        GateClose::SlowHead
                    };
                    return Poll::Ready(Err(this.close(why)));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Gated {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
