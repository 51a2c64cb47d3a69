//! Unary gRPC calls on one HTTP/2 connection, with only what a load
//! generator needs of HTTP/2 (RFC 9113) written here.
//!
//! Why not the `h2` crate, which every other HTTP/2 path of the farm uses:
//! profiled with `perf` against one `farm-node`, 4 connections × 16
//! requests in flight, one thread, loadgen on `h2` spent 5.3 µs of CPU per
//! request, 3.0 µs of it in user space, where h2load spent 3.9 µs, 1.2 µs in
//! user space (nghttp2). The difference is `h2`'s general machinery: a
//! header map built and hashed per request and per answer, HPACK encoding
//! of the same request every time, events moved through its stream store,
//! a lock per step. On a machine the target shares, that CPU is taken from
//! the target: loadgen reached 0.76–1.00× of h2load's rate. Here a request
//! is its header block (encoded once for the run), patched with its stream
//! id, and its message; an answer is read for its HTTP status and
//! `grpc-status` only. HPACK decoding, whose dynamic table must follow
//! every header block the server sends, is `loona-hpack`'s.
//!
//! What is kept of the protocol: the server's settings (concurrent streams,
//! initial window, frame size), flow control both ways (a request body
//! waits for window, split to the frame size; answers are given a window of
//! 2³¹−1 and the connection's is topped up), PING answered, GOAWAY and
//! RST_STREAM honoured, CONTINUATION and padding read. Server push is
//! refused in the settings; a PUSH_PROMISE ends the connection.
//!
//! One task per connection (the [`Driver`]) reads and writes; callers add
//! their frames to a shared buffer under a `std` mutex, wake the driver
//! once per batch, and wait for their answer on a oneshot channel.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::task::AtomicWaker;
use loona_hpack::{Decoder, encoder::encode_integer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::{Semaphore, oneshot},
};

use super::dial::io_reason;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

// Settings.
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

const FRAME_HEADER: usize = 9;
/// The largest frame this side accepts: the protocol's default, never
/// raised in our settings.
const MAX_FRAME: usize = 16_384;
/// The largest flow-control window.
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Every window's size until the settings say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
/// Bytes received on the connection after which its window is topped up.
const TOP_UP: u32 = 1 << 30;
/// Concurrent streams allowed when the server sets no limit.
const UNLIMITED_STREAMS: usize = 1 << 20;
/// The largest stream id.
const LAST_STREAM_ID: u32 = (1 << 31) - 1;
/// Read buffer: room for a whole frame of the largest size this side
/// accepts, several times over.
const READ_BUFFER: usize = 4 * (FRAME_HEADER + MAX_FRAME);
/// Passes through the driver's loop before it lets other tasks run.
const DRIVER_PASSES: usize = 32;

/// How a call was answered, as far as HTTP/2 knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// An HTTP status other than 200.
    Http(u16),
    /// The gRPC status, from the trailers or a trailers-only answer;
    /// `None` when the answer ended without one.
    Grpc(Option<i32>),
    /// The stream was reset, with this HTTP/2 error code.
    Reset(u32),
}

/// Why a call has no [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// Not sent: the connection takes no new streams (it has ended, is
    /// going away, or has used up its stream ids).
    NotSent,
    /// The connection was lost (or went away) with the call on it.
    Lost(String),
}

type Answer = Result<Outcome, Failure>;

/// A stream whose answer is awaited.
#[derive(Debug)]
struct Stream {
    answer: oneshot::Sender<Answer>,
    /// What of the request body is not sent yet.
    unsent: Bytes,
    /// This stream's send window beyond the server's initial one: what
    /// WINDOW_UPDATE frames granted, less what was sent.
    window: i64,
    /// The answer's headers have come; what comes next is trailers.
    headers: bool,
}

/// What callers and the driver share.
#[derive(Debug)]
struct State {
    /// Frames to write, in order.
    out: Vec<u8>,
    /// The driver has been woken to write `out` and has not yet taken it.
    flush_asked: bool,
    streams: HashMap<u32, Stream>,
    /// Streams whose body waits for window, oldest first.
    waiting: VecDeque<u32>,
    next_id: u32,
    /// The connection's send window.
    window: i64,
    /// The server's initial stream window.
    initial_window: i64,
    /// The server's largest frame.
    max_frame: usize,
    /// The server's limit on concurrent streams, as the permits stand.
    max_streams: usize,
    /// Permits still to take back after the limit was lowered.
    deficit: usize,
    /// No new stream is to be opened.
    going_away: bool,
    /// The connection has ended, and why.
    ended: Option<String>,
}

impl State {
    /// Writes a frame's header to `out`.
    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream: u32) {
        let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        self.out.extend_from_slice(&len[1..]);
        self.out.extend_from_slice(&[kind, flags]);
        self.out.extend_from_slice(&stream.to_be_bytes());
    }

    /// Sends as much of the waiting bodies as the windows allow, in order.
    fn send_bodies(&mut self) {
        while let Some(&id) = self.waiting.front() {
            let Some(stream) = self.streams.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            let room = (self.initial_window + stream.window)
                .min(self.window)
                .min(self.max_frame as i64);
            let len = usize::try_from(room).unwrap_or(0).min(stream.unsent.len());
            if len == 0 && !stream.unsent.is_empty() {
                return;
            }
            let chunk = stream.unsent.split_to(len);
            stream.window -= len as i64;
            let last = stream.unsent.is_empty();
            self.window -= len as i64;
            self.frame_header(len, DATA, if last { END_STREAM } else { 0 }, id);
            self.out.extend_from_slice(&chunk);
            if last {
                self.waiting.pop_front();
            }
        }
    }
}

/// One HTTP/2 connection's shared side: what callers use.
#[derive(Debug)]
pub(super) struct Wire {
    state: Mutex<State>,
    /// One per stream that may be opened; taken for good by a caller and
    /// given back by the driver when the stream ends.
    permits: Semaphore,
    driver: AtomicWaker,
    /// Every request's header block.
    headers: Bytes,
}

impl Wire {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one request with `body` (a gRPC message frame) and waits for
    /// its answer.
    pub(super) async fn call(&self, body: Bytes) -> Answer {
        // Closed: the connection has ended.
        let Ok(permit) = self.permits.acquire().await else {
            return Err(Failure::NotSent);
        };
        // Given back by the driver when the stream ends.
        permit.forget();
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut state = self.state();
            if state.ended.is_some() {
                return Err(Failure::NotSent);
            }
            if state.going_away || state.next_id > LAST_STREAM_ID {
                state.going_away = true;
                self.release(&mut state);
                return Err(Failure::NotSent);
            }
            let id = state.next_id;
            state.next_id += 2;
            state.frame_header(self.headers.len(), HEADERS, END_HEADERS, id);
            state.out.extend_from_slice(&self.headers);
            state.streams.insert(
                id,
                Stream {
                    answer: tx,
                    unsent: body,
                    window: 0,
                    headers: false,
                },
            );
            state.waiting.push_back(id);
            state.send_bodies();
            !std::mem::replace(&mut state.flush_asked, true)
        };
        if wake {
            self.driver.wake();
        }
        rx.await
            .unwrap_or_else(|_| Err(Failure::Lost("the connection's task ended".to_owned())))
    }

    /// A stream ended: its permit back, unless the limit was lowered.
    fn release(&self, state: &mut State) {
        if state.deficit > 0 {
            state.deficit -= 1;
        } else {
            self.permits.add_permits(1);
        }
    }

    /// The server's limit on concurrent streams is now `limit`.
    fn limit_streams(&self, state: &mut State, limit: usize) {
        let limit = limit.min(UNLIMITED_STREAMS);
        if limit > state.max_streams {
            let mut more = limit - state.max_streams;
            let settled = more.min(state.deficit);
            state.deficit -= settled;
            more -= settled;
            self.permits.add_permits(more);
        } else {
            state.deficit += state.max_streams - limit;
            let taken = self.permits.forget_permits(state.deficit);
            state.deficit -= taken;
        }
        state.max_streams = limit;
    }

    /// Ends stream `id` with `answer`.
    fn finish(&self, state: &mut State, id: u32, answer: Answer) {
        if let Some(stream) = state.streams.remove(&id) {
            let _ = stream.answer.send(answer);
            self.release(state);
        }
    }

    /// The connection is over: every stream on it is lost.
    fn end(&self, why: String) {
        let mut state = self.state();
        if state.ended.is_some() {
            return;
        }
        state.ended = Some(why.clone());
        state.waiting.clear();
        for (_, stream) in state.streams.drain() {
            let _ = stream.answer.send(Err(Failure::Lost(why.clone())));
        }
        drop(state);
        self.permits.close();
    }
}

/// The HTTP/2 header block of every request to `path` on `authority`:
/// `POST`, `http`, `:path`, `:authority`, `content-type: application/grpc`
/// and `te: trailers`, each without indexing, so that the same bytes are
/// valid for every request whatever the server's dynamic table holds.
pub(super) fn request_headers(authority: &str, path: &str) -> Bytes {
    fn string(block: &mut Vec<u8>, text: &str) {
        block.extend(encode_integer(text.len(), 7));
        block.extend_from_slice(text.as_bytes());
    }
    // Static table: 3 `:method: POST`, 6 `:scheme: http`, 4 `:path`,
    // 1 `:authority`, 31 `content-type`.
    let mut block = vec![0x80 | 3, 0x80 | 6];
    for (index, value) in [(4, path), (1, authority), (31, "application/grpc")] {
        block.extend(encode_integer(index, 4));
        string(&mut block, value);
    }
    block.push(0);
    string(&mut block, "te");
    string(&mut block, "trailers");
    Bytes::from(block)
}

/// Connects to `authority`, exchanges the connection prefaces and reads
/// the server's settings: the connection's shared side, and its driver, to
/// be spawned.
pub(super) async fn connect(
    authority: &str,
    headers: Bytes,
) -> Result<(Arc<Wire>, Driver), String> {
    let mut io = TcpStream::connect(authority)
        .await
        .map_err(|err| io_reason(&err))?;
    io.set_nodelay(true).map_err(|err| io_reason(&err))?;
    let mut hello = PREFACE.to_vec();
    // SETTINGS: no push, every stream's window as large as can be.
    hello.extend_from_slice(&[0, 0, 12, SETTINGS, 0, 0, 0, 0, 0]);
    for (id, value) in [
        (SETTINGS_ENABLE_PUSH, 0),
        (SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW),
    ] {
        hello.extend_from_slice(&id.to_be_bytes());
        hello.extend_from_slice(&value.to_be_bytes());
    }
    // WINDOW_UPDATE: the connection's window as large, too.
    hello.extend_from_slice(&[0, 0, 4, WINDOW_UPDATE, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&(MAX_WINDOW - DEFAULT_WINDOW as u32).to_be_bytes());
    io.write_all(&hello).await.map_err(|err| io_reason(&err))?;

    let wire = Arc::new(Wire {
        state: Mutex::new(State {
            out: Vec::new(),
            flush_asked: false,
            streams: HashMap::new(),
            waiting: VecDeque::new(),
            next_id: 1,
            window: DEFAULT_WINDOW,
            initial_window: DEFAULT_WINDOW,
            max_frame: MAX_FRAME,
            max_streams: 0,
            deficit: 0,
            going_away: false,
            ended: None,
        }),
        permits: Semaphore::new(0),
        driver: AtomicWaker::new(),
        headers,
    });
    let mut driver = Driver {
        io,
        wire: Arc::clone(&wire),
        buffer: vec![0; READ_BUFFER].into_boxed_slice(),
        filled: 0,
        writing: Vec::new(),
        written: 0,
        reader: Reader::default(),
    };
    // The server's preface is a SETTINGS frame; until it is read whole,
    // nothing is known of its limits.
    // (A frame too large to be read is read_frames' error to report.)
    let whole = |buffer: &[u8], filled: usize| {
        filled >= FRAME_HEADER
            && (frame_len(buffer) > MAX_FRAME || filled >= FRAME_HEADER + frame_len(buffer))
    };
    while !whole(&driver.buffer, driver.filled) {
        let read = driver
            .io
            .read(&mut driver.buffer[driver.filled..])
            .await
            .map_err(|err| format!("HTTP/2 handshake failed: {}", io_reason(&err)))?;
        if read == 0 {
            return Err("HTTP/2 handshake failed: connection closed".to_owned());
        }
        driver.filled += read;
    }
    if driver.buffer[3] != SETTINGS || driver.buffer[4] & ACK != 0 {
        return Err(
            "HTTP/2 handshake failed: the server did not start with its settings".to_owned(),
        );
    }
    // No limit stated: unlimited, as the protocol says.
    wire.limit_streams(&mut wire.state(), UNLIMITED_STREAMS);
    driver
        .read_frames()
        .map_err(|err| format!("HTTP/2 handshake failed: {err}"))?;
    Ok((wire, driver))
}

/// A header block being read: its stream, whether it ends the stream, and
/// its bytes so far (HEADERS, then CONTINUATION frames).
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// What reading frames keeps between them.
#[derive(Default)]
struct Reader {
    /// Follows every header block the server sends, whichever stream.
    decoder: Decoder<'static>,
    block: Option<Block>,
    /// DATA bytes received since the connection's window was last topped up.
    received: u32,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("block", &self.block)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// A connection error: the connection cannot go on.
type ConnectionError = String;

impl Reader {
    /// Handles one frame.
    fn frame(
        &mut self,
        wire: &Wire,
        kind: u8,
        flags: u8,
        id: u32,
        payload: &[u8],
    ) -> Result<(), ConnectionError> {
        if let Some(block) = &mut self.block {
            if kind != CONTINUATION || id != block.stream {
                return Err("a header block was interrupted by another frame".to_owned());
            }
            block.bytes.extend_from_slice(payload);
            if flags & END_HEADERS != 0 {
                self.header_block(wire)?;
            }
            return Ok(());
        }
        match kind {
            DATA => self.data(wire, flags, id, payload),
            HEADERS => {
                if id == 0 {
                    return Err("HEADERS on stream 0".to_owned());
                }
                let mut payload = unpad(flags, payload)?;
                if flags & PRIORITY != 0 {
                    payload = payload
                        .get(5..)
                        .ok_or_else(|| "HEADERS too short for its priority".to_owned())?;
                }
                self.block = Some(Block {
                    stream: id,
                    end_stream: flags & END_STREAM != 0,
                    bytes: payload.to_vec(),
                });
                if flags & END_HEADERS != 0 {
                    self.header_block(wire)?;
                }
                Ok(())
            }
            CONTINUATION => Err("CONTINUATION without a header block".to_owned()),
            RST_STREAM => {
                let code =
                    u32_at(payload).ok_or_else(|| "RST_STREAM of the wrong size".to_owned())?;
                let mut state = wire.state();
                wire.finish(&mut state, id, Ok(Outcome::Reset(code)));
                Ok(())
            }
            SETTINGS => settings(wire, flags, id, payload),
            PING => {
                if payload.len() != 8 {
                    return Err("PING of the wrong size".to_owned());
                }
                if flags & ACK == 0 {
                    let mut state = wire.state();
                    state.frame_header(8, PING, ACK, 0);
                    state.out.extend_from_slice(payload);
                }
                Ok(())
            }
            GOAWAY => {
                let last =
                    u32_at(payload).ok_or_else(|| "GOAWAY too short".to_owned())? & LAST_STREAM_ID;
                let code = payload.get(4..8).and_then(u32_at).unwrap_or(0);
                let mut state = wire.state();
                state.going_away = true;
                let unanswered: Vec<u32> = state
                    .streams
                    .keys()
                    .copied()
                    .filter(|id| *id > last)
                    .collect();
                for id in unanswered {
                    let why = format!("the target went away (GOAWAY, error code {code})");
                    wire.finish(&mut state, id, Err(Failure::Lost(why)));
                }
                Ok(())
            }
            WINDOW_UPDATE => {
                let increment = u32_at(payload)
                    .ok_or_else(|| "WINDOW_UPDATE of the wrong size".to_owned())?
                    & MAX_WINDOW;
                let mut state = wire.state();
                if id == 0 {
                    state.window += i64::from(increment);
                } else if let Some(stream) = state.streams.get_mut(&id) {
                    stream.window += i64::from(increment);
                }
                state.send_bodies();
                Ok(())
            }
            PUSH_PROMISE => Err("PUSH_PROMISE, though push is disabled".to_owned()),
            // PRIORITY and unknown types are ignored, as the protocol says.
            _ => Ok(()),
        }
    }

    fn data(
        &mut self,
        wire: &Wire,
        flags: u8,
        id: u32,
        payload: &[u8],
    ) -> Result<(), ConnectionError> {
        if id == 0 {
            return Err("DATA on stream 0".to_owned());
        }
        // The whole frame counts against the window, padding too.
        self.received += u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut state = wire.state();
        if self.received >= TOP_UP {
            let received = std::mem::take(&mut self.received);
            state.frame_header(4, WINDOW_UPDATE, 0, 0);
            state.out.extend_from_slice(&received.to_be_bytes());
        }
        unpad(flags, payload)?;
        if flags & END_STREAM != 0 {
            // Ended without trailers: no gRPC status.
            wire.finish(&mut state, id, Ok(Outcome::Grpc(None)));
        }
        Ok(())
    }

    /// A whole header block: decoded (the decoder must see every block),
    /// and the stream answered once its status is known.
    fn header_block(&mut self, wire: &Wire) -> Result<(), ConnectionError> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let (mut status, mut grpc) = (None, None);
        self.decoder
            .decode_with_cb(&block.bytes, |name, value| match &*name {
                b":status" => status = parse::<u16>(&value),
                b"grpc-status" => grpc = parse::<i32>(&value),
                _ => {}
            })
            .map_err(|err| format!("cannot decode a header block: {err}"))?;
        let mut state = wire.state();
        let Some(stream) = state.streams.get_mut(&block.stream) else {
            return Ok(());
        };
        let outcome = if stream.headers {
            // Trailers.
            Some(Outcome::Grpc(grpc))
        } else {
            stream.headers = true;
            match status {
                Some(200) if grpc.is_some() || block.end_stream => Some(Outcome::Grpc(grpc)),
                Some(200) => None,
                Some(other) => Some(Outcome::Http(other)),
                None => Some(Outcome::Http(0)),
            }
        };
        if let Some(outcome) = outcome {
            if !block.end_stream {
                // Answered: the rest of the stream is not wanted.
                state.frame_header(4, RST_STREAM, 0, block.stream);
                state
                    .out
                    .extend_from_slice(&u32::from(h2::Reason::CANCEL).to_be_bytes());
            }
            wire.finish(&mut state, block.stream, Ok(outcome));
        }
        Ok(())
    }
}

fn settings(wire: &Wire, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnectionError> {
    if id != 0 || !payload.len().is_multiple_of(6) {
        return Err("malformed SETTINGS".to_owned());
    }
    if flags & ACK != 0 {
        return Ok(());
    }
    let mut state = wire.state();
    for setting in payload.chunks_exact(6) {
        let value = u32_at(&setting[2..]).unwrap_or(0);
        match u16::from_be_bytes([setting[0], setting[1]]) {
            SETTINGS_MAX_CONCURRENT_STREAMS => {
                wire.limit_streams(&mut state, usize::try_from(value).unwrap_or(usize::MAX));
            }
            SETTINGS_INITIAL_WINDOW_SIZE => {
                if value > MAX_WINDOW {
                    return Err("SETTINGS_INITIAL_WINDOW_SIZE over 2³¹−1".to_owned());
                }
                state.initial_window = i64::from(value);
            }
            SETTINGS_MAX_FRAME_SIZE => {
                if !(16_384..=16_777_215).contains(&value) {
                    return Err(format!("SETTINGS_MAX_FRAME_SIZE of {value}"));
                }
                state.max_frame = value as usize;
            }
            // The header table size binds our encoder, which indexes
            // nothing; the rest concern a server.
            _ => {}
        }
    }
    state.frame_header(0, SETTINGS, ACK, 0);
    state.send_bodies();
    Ok(())
}

/// A frame's payload without its padding.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], ConnectionError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or_else(|| "padded frame without its pad length".to_owned())?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|len| &rest[..len])
        .ok_or_else(|| "padding longer than the frame".to_owned())
}

/// The payload length a frame header (at the start of `head`) gives.
fn frame_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

fn u32_at(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

fn parse<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Reads and writes one connection until it ends; resolves to why. Every
/// stream still on it is then lost.
#[derive(Debug)]
pub(super) struct Driver {
    io: TcpStream,
    wire: Arc<Wire>,
    buffer: Box<[u8]>,
    filled: usize,
    /// Frames being written, taken from the shared state, and how much of
    /// them is written.
    writing: Vec<u8>,
    written: usize,
    reader: Reader,
}

impl Driver {
    /// Handles every whole frame in the buffer, and moves what is left of
    /// the next one to its start.
    fn read_frames(&mut self) -> Result<(), ConnectionError> {
        let mut at = 0;
        while self.filled - at >= FRAME_HEADER {
            let head = &self.buffer[at..at + FRAME_HEADER];
            let len = frame_len(head);
            if len > MAX_FRAME {
                return Err(format!(
                    "a frame of {len} bytes, over the {MAX_FRAME} allowed"
                ));
            }
            if self.filled - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (head[3], head[4]);
            let id = u32_at(&head[5..]).unwrap_or(0) & LAST_STREAM_ID;
            let payload = &self.buffer[at + FRAME_HEADER..at + FRAME_HEADER + len];
            self.reader.frame(&self.wire, kind, flags, id, payload)?;
            at += FRAME_HEADER + len;
        }
        self.buffer.copy_within(at..self.filled, 0);
        self.filled -= at;
        Ok(())
    }

    /// One pass: writes what can be written, reads what can be read.
    /// `Ok(true)`: something moved.
    fn pass(&mut self, cx: &mut Context<'_>) -> Result<bool, String> {
        let mut moved = false;
        if self.written == self.writing.len() {
            self.writing.clear();
            self.written = 0;
            let mut state = self.wire.state();
            state.flush_asked = false;
            std::mem::swap(&mut self.writing, &mut state.out);
        }
        while self.written < self.writing.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.writing[self.written..]) {
                Poll::Ready(Ok(0)) => return Err("connection closed".to_owned()),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    moved = true;
                }
                Poll::Ready(Err(err)) => return Err(io_reason(&err)),
                Poll::Pending => break,
            }
        }
        let mut read = ReadBuf::new(&mut self.buffer[self.filled..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    let state = self.wire.state();
                    return Err(if state.going_away && state.streams.is_empty() {
                        "closed by the target after going away".to_owned()
                    } else {
                        "closed by the target".to_owned()
                    });
                }
                self.filled += n;
                self.read_frames()?;
                moved = true;
            }
            Poll::Ready(Err(err)) => return Err(io_reason(&err)),
            Poll::Pending => {}
        }
        Ok(moved)
    }
}

impl Future for Driver {
    type Output = String;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<String> {
        self.wire.driver.register(cx.waker());
        for _ in 0..DRIVER_PASSES {
            match self.pass(cx) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(why) => {
                    self.wire.end(why.clone());
                    return Poll::Ready(why);
                }
            }
        }
        // Others' turn; this task goes on right after.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.wire.end("the connection's task ended".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_block_decodes_to_the_request_every_time() {
        let block = request_headers("127.0.0.1:7000", "/farm.v1.Workload/Work");
        let mut decoder = Decoder::new();
        for _ in 0..3 {
            let headers: Vec<(String, String)> = decoder
                .decode(&block)
                .expect("decodes")
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            let expected = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/farm.v1.Workload/Work"),
                (":authority", "127.0.0.1:7000"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ];
            assert_eq!(
                headers,
                expected.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec()
            );
        }
    }

    #[test]
    fn padding_is_taken_off_and_checked() {
        assert_eq!(unpad(0, b"abc"), Ok(&b"abc"[..]));
        assert_eq!(unpad(PADDED, b"\x02abcxx"), Ok(&b"abc"[..]));
        assert!(unpad(PADDED, b"\x09abc").is_err());
        assert!(unpad(PADDED, b"").is_err());
    }
}
