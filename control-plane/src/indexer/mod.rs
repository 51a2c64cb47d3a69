//! The catalog's line protocol on a listener of its own
//! (`--indexer-listen`): plain TCP clients index, remove and query names
//! one line at a time ([`protocol`]), in the same catalog `farm.v1.Catalog`
//! serves.
//!
//! One task per connection reads what has arrived, answers every complete
//! line in it, in order, and writes the answers at once: a client that
//! pipelines gets one write per batch of lines. Its changes go to the
//! catalog's writer together, so they share a sync to disk; a query behind
//! them goes to the writer too, and is answered in their order: it sees
//! them, and none that came after it. A change is
//! answered `OK` only once it is on disk; if the disk fails, the
//! connection is closed without an answer (nothing was acknowledged).
//!
//! Limits: a connection idle (or not reading its answers) for the read
//! timeout is closed; a line longer than the limit is answered `ERROR` and
//! its connection closed, since the stream cannot be resynchronised; past
//! the connection limit, new connections are closed at once and counted.
//! At shutdown the listener stops accepting, each connection answers the
//! lines it has received and closes, all within the drain time.

pub(crate) mod protocol;

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    core::catalog::Name,
    state::{Catalog, StateError},
    telemetry::{LineCommand, LineResult, Telemetry},
};
use protocol::{ERROR, FAIL, OK, Request};

/// The line protocol's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection that sends nothing (or reads nothing) this long is
    /// closed.
    pub read_timeout: Duration,
    /// Longest line, in bytes, without its `\n`.
    pub max_line: usize,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    /// The defaults of `control-plane serve`'s flags.
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(30),
            max_line: 64 << 10,
            max_connections: 10_000,
        }
    }
}

/// Most answers a connection queues before writing them: a client that
/// pipelines without end is answered as it goes.
const MAX_QUEUED: usize = 4096;

/// Bytes read from a socket at a time.
const READ_SIZE: usize = 4096;
/// Pause after a failed `accept` (out of file descriptors, say), so the
/// loop does not spin while the cause lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether the listener accepts connections, for `/readyz`.
#[derive(Debug, Clone)]
pub struct Status {
    pub address: SocketAddr,
    accepting: Arc<AtomicBool>,
}

impl Status {
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }
}

/// The line-protocol server, before it runs.
#[derive(Debug)]
pub struct LineServer {
    listener: TcpListener,
    catalog: Catalog,
    limits: Limits,
    telemetry: Arc<Telemetry>,
    status: Status,
}

impl LineServer {
    pub fn new(
        listener: TcpListener,
        catalog: Catalog,
        limits: Limits,
        telemetry: Arc<Telemetry>,
    ) -> std::io::Result<Self> {
        let status = Status {
            address: listener.local_addr()?,
            accepting: Arc::new(AtomicBool::new(false)),
        };
        Ok(Self {
            listener,
            catalog,
            limits,
            telemetry,
            status,
        })
    }

    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Accepts connections until `stop` is cancelled; then lets every
    /// connection answer what it received and close, for at most `drain`,
    /// and closes the rest.
    pub async fn run(self, stop: CancellationToken, drain: Duration) {
        let Self {
            listener,
            catalog,
            limits,
            telemetry,
            status,
        } = self;
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut connections = JoinSet::new();
        status.accepting.store(true, Ordering::Relaxed);
        info!(address = %status.address, ?limits, "serving the catalog's line protocol");
        loop {
            // Finished connections leave nothing behind.
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(cause = %err, "cannot accept a catalog connection; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refused(&telemetry, peer, limits.max_connections);
                drop(stream);
                continue;
            };
            let connection = Connection {
                catalog: catalog.clone(),
                limits,
                telemetry: Arc::clone(&telemetry),
                stop: stop.clone(),
            };
            let opened = telemetry.line_connection();
            connections.spawn(async move {
                if let Err(err) = connection.serve(stream).await {
                    debug!(%peer, cause = %err, "catalog connection ended");
                }
                drop((opened, slot));
            });
        }
        status.accepting.store(false, Ordering::Relaxed);
        drop(listener);
        let open = connections.len();
        if open > 0 {
            info!(
                connections = open,
                "answering what catalog connections sent, then closing them"
            );
        }
        let drained = tokio::time::timeout(drain, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(connections = connections.len(), after = ?drain, "catalog connections still open after draining; closing them");
            connections.shutdown().await;
        }
    }
}

/// Logs a connection refused at the limit: the first, then at each power
/// of two, so a flood is visible without flooding the log.
fn refused(telemetry: &Telemetry, peer: SocketAddr, max: usize) {
    let count = telemetry.line_connection_refused();
    if count.is_power_of_two() {
        warn!(%peer, refused = count, limit = max, "catalog connection limit reached; closing new connections at once");
    }
}

/// An answer in the order of its line: ready, or waiting for the writer
/// (a change, or a query behind this connection's changes).
enum Answer {
    Now(LineCommand, LineResult),
    Later(
        LineCommand,
        Pin<Box<dyn Future<Output = Result<LineResult, StateError>> + Send>>,
    ),
}

/// Answers not yet written, in the order of their lines, and the names
/// the connection's changes among them are about.
#[derive(Default)]
struct Queue {
    answers: VecDeque<Answer>,
    changing: HashSet<Name>,
}

/// How taking what has arrived ended, besides the socket holding no more.
#[derive(Debug, Default)]
struct Taken {
    /// A line longer than the limit came.
    overlong: bool,
    /// The client closed its side.
    closed: bool,
    /// [`MAX_QUEUED`] answers wait.
    full: bool,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("a line longer than {0} bytes")]
    Overlong(usize),
    #[error("the catalog could not write a change: {0}")]
    Store(StateError),
}

/// One client's connection.
struct Connection {
    catalog: Catalog,
    limits: Limits,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream) -> Result<(), ConnectionError> {
        stream.set_nodelay(true)?;
        let mut input = BytesMut::new();
        let mut output = Vec::new();
        let mut queue = Queue::default();
        // Whether the socket may hold more than was read.
        let mut more = false;
        // Made once, not per read: each would register with the shared
        // token, and a timer, anew.
        let stopped = self.stop.clone().cancelled_owned();
        tokio::pin!(stopped);
        let idle = tokio::time::sleep(self.limits.read_timeout);
        tokio::pin!(idle);
        loop {
            // Answer every line that has arrived, in one write.
            let taken = self.take_available(&stream, &mut input, &mut queue, more)?;
            self.settle(&mut queue, &mut output).await?;
            if taken.overlong {
                self.telemetry
                    .line_answered(LineCommand::Other, LineResult::Error);
                output.extend_from_slice(ERROR);
            }
            if !output.is_empty() {
                self.timed(stream.write_all(&output)).await??;
                output.clear();
            }
            if taken.overlong {
                return Err(ConnectionError::Overlong(self.limits.max_line));
            }
            if taken.closed {
                // Bytes after the last newline are not a command.
                return Ok(());
            }
            if taken.full {
                // More lines may be in hand already, and more on the socket.
                more = true;
                continue;
            }
            if input.capacity() - input.len() < READ_SIZE / 4 {
                input.reserve(READ_SIZE);
            }
            let room = input.capacity() - input.len();
            idle.as_mut()
                .reset(tokio::time::Instant::now() + self.limits.read_timeout);
            let read = tokio::select! {
                read = stream.read_buf(&mut input) => read?,
                () = &mut idle => return Err(ConnectionError::Idle(self.limits.read_timeout)),
                () = &mut stopped => {
                    // Shutting down: answer what has already arrived, then close.
                    loop {
                        let taken = self.take_available(&stream, &mut input, &mut queue, true)?;
                        self.settle(&mut queue, &mut output).await?;
                        if !taken.full || taken.overlong {
                            break;
                        }
                    }
                    self.timed(stream.write_all(&output)).await??;
                    return Ok(());
                }
            };
            if read == 0 {
                return Ok(());
            }
            more = read == room;
        }
    }

    /// Takes the complete lines of `input` into the queue, then reads on
    /// while the socket already holds more (a pipelining client's batch
    /// reaches the writer whole, and shares one sync), until it holds no
    /// more, the client closed, a line is too long, or [`MAX_QUEUED`]
    /// answers wait.
    ///
    /// `more` says whether the socket may hold more: the last read filled
    /// the buffer. A read that did not found it empty, and a client with
    /// one request in flight costs no second read.
    fn take_available(
        &self,
        stream: &TcpStream,
        input: &mut BytesMut,
        queue: &mut Queue,
        mut more: bool,
    ) -> Result<Taken, ConnectionError> {
        let mut taken = Taken::default();
        loop {
            if self.take_lines(input, queue) {
                taken.overlong = true;
                return Ok(taken);
            }
            if queue.answers.len() >= MAX_QUEUED {
                taken.full = true;
                return Ok(taken);
            }
            if !more {
                return Ok(taken);
            }
            if input.capacity() - input.len() < READ_SIZE / 4 {
                input.reserve(READ_SIZE);
            }
            let room = input.capacity() - input.len();
            match stream.try_read_buf(input) {
                Ok(0) => {
                    taken.closed = true;
                    return Ok(taken);
                }
                Ok(n) => more = n == room,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(taken),
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Waits at most the read timeout for `io`.
    async fn timed<T>(&self, io: impl Future<Output = T>) -> Result<T, ConnectionError> {
        tokio::time::timeout(self.limits.read_timeout, io)
            .await
            .map_err(|_| ConnectionError::Idle(self.limits.read_timeout))
    }

    /// Takes each complete line out of `input` and queues its answer.
    /// Returns whether a line is longer than the limit: what follows it
    /// cannot be read.
    ///
    /// Framing is `memchr` over the connection's own buffer rather than
    /// tokio-util's codecs: `LinesCodec` ends the stream at the first
    /// non-UTF-8 line (here an `ERROR`, and the connection goes on), and
    /// both it and `AnyDelimiterCodec` hand the bytes after the last
    /// newline over as a line at the end of the stream (here not a
    /// command); and answering every line already read before writing
    /// needs the buffer in hand anyway.
    fn take_lines(&self, input: &mut BytesMut, queue: &mut Queue) -> bool {
        while let Some(end) = memchr::memchr(b'\n', input) {
            if end > self.limits.max_line {
                return true;
            }
            let line = input.split_to(end + 1);
            let request = match protocol::parse(&line[..end]) {
                Ok(request) => request,
                Err(command) => {
                    queue
                        .answers
                        .push_back(Answer::Now(command, LineResult::Error));
                    continue;
                }
            };
            let command = request.command();
            let answer = match request {
                Request::Change(change) => {
                    queue.changing.insert(change.name().clone());
                    let written = self.catalog.submit(change);
                    Answer::Later(
                        command,
                        Box::pin(async move { written.await.map(|_| LineResult::Ok) }),
                    )
                }
                // Behind a change of this connection to the same name: the
                // writer answers it in their order, so it sees that change,
                // and after it, so what it saw is on disk.
                Request::Query(name) if queue.changing.contains(name) => match Name::parse(name) {
                    Ok(name) => {
                        let indexed = self.catalog.query_in_order(name);
                        Answer::Later(command, Box::pin(async move { indexed.await.map(found) }))
                    }
                    Err(_) => Answer::Now(command, LineResult::Error),
                },
                // Whether a name is indexed changes only by a change to it,
                // so changes of this connection to other names, still on
                // their way, do not matter: what readers see (on disk) is
                // the answer, now.
                Request::Query(name) => Answer::Now(command, found(self.catalog.is_indexed(name))),
            };
            queue.answers.push_back(answer);
        }
        input.len() > self.limits.max_line
    }

    /// Writes every queued answer into `output`, in order, waiting for the
    /// changes to be on disk.
    async fn settle(&self, queue: &mut Queue, output: &mut Vec<u8>) -> Result<(), ConnectionError> {
        // Every change of the queue will be answered: none is on its way.
        queue.changing.clear();
        let answers = &mut queue.answers;
        while let Some(answer) = answers.pop_front() {
            let (command, result) = match answer {
                Answer::Now(command, result) => (command, result),
                Answer::Later(command, answer) => match answer.await {
                    Ok(result) => (command, result),
                    // Names were checked when the line was read: only the
                    // rules refuse here.
                    Err(StateError::Domain(_)) => (command, LineResult::Fail),
                    Err(err @ StateError::Store(_)) => {
                        error!(cause = %err, "closing a catalog connection: a change could not be written");
                        answers.clear();
                        return Err(ConnectionError::Store(err));
                    }
                },
            };
            self.telemetry.line_answered(command, result);
            output.extend_from_slice(match result {
                LineResult::Ok => OK,
                LineResult::Fail => FAIL,
                LineResult::Error => ERROR,
            });
        }
        Ok(())
    }
}

/// A query's answer: `OK` when indexed.
fn found(indexed: bool) -> LineResult {
    if indexed {
        LineResult::Ok
    } else {
        LineResult::Fail
    }
}
