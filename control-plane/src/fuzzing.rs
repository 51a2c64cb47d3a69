//! Entry points for fuzzing what clients send the control plane, and short
//! property tests of the same.
//!
//! Each entry point takes input as a client could send it, runs the code
//! that reads it, and checks what that code promises of its answer: a panic
//! is a finding, whether the code under test panicked or broke a promise.
//! The fuzz targets in `fuzz/` call them through cargo fuzz (libFuzzer, by
//! libfuzzer-sys; arbitrary shapes the bytes of a [`GrpcWebCall`]), and
//! `scripts/fuzz` runs those. The tests below run the same functions with
//! proptest, on input built from each format's own tokens (near-valid names,
//! lines of the protocol, nested JSON, protobuf messages), a few seconds in
//! all, with the unit tests.
//!
//! Compiled with the `fuzzing` feature, and for the unit tests.

use std::{
    collections::{BTreeMap, HashSet},
    future::poll_fn,
    time::{Duration, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use http::{HeaderMap, Method, StatusCode, header};
use http_body::Body as _;
use serde_json::{Value, json};
use tonic::{body::Body, service::Routes};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{Layer, ServiceExt};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::{
    core::{
        HealthPolicy, Limits, NodeId,
        catalog::{Change, MAX_DEPENDENCIES, MAX_NAME_CHARS, Name, parse_dependencies},
        config::{
            ConfigBook, ConfigEntry, MAX_CONFIG_BYTES, Scope, Write, diff, merge, validate_data,
        },
        names::{
            MAX_ADDRESS_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, MAX_NAME_LEN, validate_address,
            validate_group, validate_labels, validate_name,
        },
    },
    indexer::protocol::{self, Request},
    state::FarmState,
    store::StoreError,
    telemetry::LineCommand,
    transport::{
        Api,
        grpc_web::{GrpcWebOrPlain, GrpcWebOrPlainLayer},
        routes,
    },
};

/// Reads `line` (one line of the catalog's protocol, without its `\n`) as
/// the line server does. A refused line must be counted under the command
/// it names; an accepted one must hold no line break and only valid names,
/// and, written back in canonical form, read as the same request.
pub fn line_protocol(line: &[u8]) {
    let named = named_command(line);
    let request = match protocol::parse(line) {
        Ok(request) => request,
        Err(counted) => {
            assert_eq!(
                counted, named,
                "a refused line is counted as the command it names"
            );
            return;
        }
    };
    assert_eq!(
        request.command(),
        named,
        "an accepted line does what it names"
    );
    assert!(
        !line.contains(&b'\n'),
        "an accepted line holds no line break"
    );
    let names: Vec<&str> = match &request {
        Request::Change(Change::Index { name, dependencies }) => {
            let distinct: HashSet<&Name> = dependencies.iter().collect();
            assert_eq!(
                distinct.len(),
                dependencies.len(),
                "dependencies are kept once"
            );
            std::iter::once(name)
                .chain(dependencies)
                .map(Name::as_str)
                .collect()
        }
        Request::Change(Change::Remove { name }) => vec![name.as_str()],
        Request::Query(name) => vec![name],
    };
    for name in names {
        assert!(is_catalog_name(name), "accepted an invalid name {name:?}");
    }
    let rendered = render(&request);
    assert_eq!(
        protocol::parse(&rendered),
        Ok(request),
        "the canonical form {:?} reads as the request",
        String::from_utf8_lossy(&rendered)
    );
}

/// The command a line names by its first field, as counted.
fn named_command(line: &[u8]) -> LineCommand {
    match line.split(|&b| b == b'|').next() {
        Some(b"INDEX") => LineCommand::Index,
        Some(b"REMOVE") => LineCommand::Remove,
        Some(b"QUERY") => LineCommand::Query,
        _ => LineCommand::Other,
    }
}

/// The line a client sends for `request` (without its `\n`), in canonical
/// form: each dependency once, no empty entries. The protocol has no
/// renderer of its own: answers are the constant lines `OK`, `FAIL` and
/// `ERROR`.
fn render(request: &Request<'_>) -> Vec<u8> {
    let (command, name, dependencies): (&str, &str, &[Name]) = match request {
        Request::Change(Change::Index { name, dependencies }) => {
            ("INDEX", name.as_str(), dependencies)
        }
        Request::Change(Change::Remove { name }) => ("REMOVE", name.as_str(), &[]),
        Request::Query(name) => ("QUERY", name, &[]),
    };
    let dependencies: Vec<&str> = dependencies.iter().map(Name::as_str).collect();
    format!("{command}|{name}|{}", dependencies.join(",")).into_bytes()
}

/// The catalog's naming rule as documented (`core::catalog::Name`): 1 to
/// [`MAX_NAME_CHARS`] printable characters, neither `|` nor `,`. Read here
/// through each general category, where the code reads their groups.
fn is_catalog_name(s: &str) -> bool {
    use GeneralCategory::*;
    let prints = |c: char| {
        c != '|'
            && c != ','
            && !matches!(
                c.general_category(),
                Control
                    | Format
                    | Surrogate
                    | PrivateUse
                    | Unassigned
                    | SpaceSeparator
                    | LineSeparator
                    | ParagraphSeparator
            )
    };
    !s.is_empty() && s.chars().count() <= MAX_NAME_CHARS && s.chars().all(prints)
}

/// Checks each line of `input` (as UTF-8, invalid bytes replaced) with every
/// validator of what clients name: node and group names, addresses, catalog
/// names and dependency lists, node ids; and all its lines together as
/// `key=value` labels. Each must accept exactly what its documentation
/// allows: the length and alphabet of names and labels, an address a node
/// can be dialled at.
pub fn names(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut labels = BTreeMap::new();
    for line in text.split('\n') {
        check_identifier(line);
        check_address(line);
        check_catalog_names(line);
        check_node_id(line);
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        labels.insert(key.to_owned(), value.to_owned());
    }
    let documented = labels.len() <= MAX_LABELS
        && labels
            .iter()
            // The limit counts bytes.
            .all(|(key, value)| is_identifier(key) && value.len() <= MAX_LABEL_VALUE_LEN);
    assert_eq!(
        validate_labels(&labels).is_ok(),
        documented,
        "labels {labels:?}"
    );
}

/// Node and group names, and label keys: 1 to 63 characters of
/// `[A-Za-z0-9._-]` (`registry.proto`).
fn is_identifier(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_identifier(s: &str) {
    let documented = is_identifier(s);
    assert_eq!(validate_name(s).is_ok(), documented, "node name {s:?}");
    assert_eq!(validate_group(s).is_ok(), documented, "group name {s:?}");
}

/// An accepted address fits its limit, ends in a port of decimal digits
/// from 1 to 65535, and is what a node is dialled at: `http://` and it make
/// a URI with that host and port.
fn check_address(s: &str) {
    if validate_address(s).is_err() {
        return;
    }
    assert!(s.len() <= MAX_ADDRESS_LEN, "accepted a long address {s:?}");
    let (host, port) = s.rsplit_once(':').unwrap_or_default();
    assert!(
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
        "accepted address {s:?} whose port is not decimal digits"
    );
    let uri: http::Uri = format!("http://{s}")
        .parse()
        .unwrap_or_else(|err| panic!("accepted address {s:?} makes no URI: {err}"));
    assert_eq!(uri.host(), Some(host), "the host of {s:?}");
    assert!(
        uri.port_u16()
            .is_some_and(|p| p != 0 && port.parse() == Ok(p)),
        "the port of {s:?}"
    );
}

/// Catalog names as documented, and dependency lists: empty entries left
/// out, each name once, at its first place.
fn check_catalog_names(s: &str) {
    assert_eq!(
        Name::check(s).is_ok(),
        is_catalog_name(s),
        "catalog name {s:?}"
    );
    if let Ok(name) = Name::parse(s) {
        assert_eq!(name.as_str(), s);
    }
    let entries: Vec<&str> = s.split(',').filter(|e| !e.is_empty()).collect();
    match parse_dependencies(s.split(',')) {
        Ok(names) => {
            let mut seen = HashSet::new();
            let expected: Vec<&str> = entries.into_iter().filter(|e| seen.insert(*e)).collect();
            let names: Vec<&str> = names.iter().map(Name::as_str).collect();
            assert_eq!(names, expected, "dependencies {s:?}");
        }
        Err(_) => assert!(
            entries.len() > MAX_DEPENDENCIES || entries.iter().any(|e| !is_catalog_name(e)),
            "refused dependencies {s:?}"
        ),
    }
}

/// A node id is `n` and decimal digits, and reads back from how it is
/// shown.
fn check_node_id(s: &str) {
    if let Ok(id) = s.parse::<NodeId>() {
        let digits = s.strip_prefix('n').unwrap_or_default();
        assert!(
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
            "accepted node id {s:?}"
        );
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id), "node id {s:?}");
    }
}

/// Reads the first line of `input` as a scope and the rest as a JSON
/// configuration document, and checks both as a write does. A scope must
/// read back from how it is shown. A document must be accepted exactly when
/// it is an object of at most [`MAX_CONFIG_BYTES`] whose known keys a node
/// can apply (and a node must then read it without a problem); whatever a
/// write or a merge patch stores must pass the same check.
pub fn config(input: &[u8]) {
    let (scope, document) = match input.iter().position(|&b| b == b'\n') {
        Some(end) => (&input[..end], &input[end + 1..]),
        None => (input, &[][..]),
    };
    if let Ok(scope) = std::str::from_utf8(scope) {
        check_scope(scope);
    }
    if let Ok(data) = serde_json::from_slice::<Value>(document) {
        check_document(&data);
    }
}

fn check_scope(s: &str) {
    let mut asked = None;
    let parsed = Scope::parse(s, |given| {
        asked = Some(given.to_owned());
        given.parse()
    });
    if let Some(given) = asked {
        assert!(
            !given.is_empty() && s.strip_prefix("node:") == Some(given.as_str()),
            "scope {s:?} resolved {given:?}"
        );
    }
    let Ok(scope) = parsed else { return };
    match &scope {
        Scope::Global => assert_eq!(s, "global"),
        Scope::Group(group) => {
            assert_eq!(s.strip_prefix("group:"), Some(group.as_str()));
            assert!(is_identifier(group), "scope {s:?}");
        }
        Scope::Node(id) => assert_eq!(
            s.strip_prefix("node:").map(str::parse),
            Some(Ok(*id)),
            "scope {s:?}"
        ),
    }
    assert_eq!(scope.to_string().parse(), Ok(scope), "scope {s:?}");
}

fn check_document(data: &Value) {
    let size = serde_json::to_vec(data).map_or(usize::MAX, |v| v.len());
    let usable = data
        .as_object()
        .is_some_and(|object| farm_api::node::check(object).is_ok());
    let accepted = validate_data(data, 0);
    assert_eq!(
        accepted.is_ok(),
        size <= MAX_CONFIG_BYTES && usable,
        "document of {size} bytes: {accepted:?}"
    );
    if let (Ok(()), Some(object)) = (&accepted, data.as_object()) {
        let (_, problems) = farm_api::node::Settings::from_config(1, object);
        assert!(
            problems.is_empty(),
            "accepted, but a node finds {problems:?}"
        );
    }

    // What a write and a merge patch store passes the same check.
    let base = json!({"workload": {"delay_ms": 5, "error_rate": 0.5}, "tags": [1]});
    let book = ConfigBook::new(
        vec![ConfigEntry {
            scope: Scope::Global,
            version: 1,
            data: base.clone(),
            created_at: UNIX_EPOCH,
            role: "admin".to_owned(),
            rollback_of: 0,
        }],
        1,
    );
    let mut batch = book.batch();
    let replaced = batch
        .prepare(
            Scope::Global,
            Write::Replace(data.clone()),
            0,
            "admin",
            0,
            UNIX_EPOCH,
        )
        .map(|entry| entry.data.clone());
    assert_eq!(
        replaced.as_ref().err(),
        accepted.as_ref().err(),
        "a write is checked"
    );
    if let Ok(stored) = batch
        .prepare(
            Scope::Global,
            Write::Merge(data.clone()),
            0,
            "admin",
            0,
            UNIX_EPOCH,
        )
        .map(|entry| &entry.data)
    {
        assert_eq!(validate_data(stored, 0), Ok(()), "a merge stores {stored}");
    }

    // Layering and diffs.
    if let Some(object) = data.as_object() {
        let mut layered = base.clone();
        merge(&mut layered, data);
        for (key, value) in object {
            if !(value.is_object() && base[key].is_object()) {
                assert_eq!(&layered[key], value, "layering {key:?}");
            }
        }
        assert!(
            diff(data, data).is_empty(),
            "a document differs from itself"
        );
        let changes = diff(&base, data);
        assert_eq!(changes.is_empty(), base == *data);
        assert!(
            changes.windows(2).all(|w| w[0].path() <= w[1].path()),
            "changes sorted by path"
        );
    }
}

/// How a path answers, and so how its answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A gRPC method with one answer: read to its end.
    Unary,
    /// A gRPC method answering with a stream: read to its end, or until it
    /// pauses for [`STREAM_PAUSE`] (a watch never ends by itself).
    Stream,
    /// Not gRPC: plain HTTP, or the dashboard.
    Plain,
}

/// The paths calls take: every method the port serves but those in
/// [`LEFT_OUT`], one it does not, and plain HTTP.
pub const PATHS: &[(&str, Reply)] = &[
    ("/farm.v1.Registry/Register", Reply::Unary),
    ("/farm.v1.Registry/Heartbeat", Reply::Stream),
    ("/farm.v1.Registry/Deregister", Reply::Unary),
    ("/farm.v1.Discovery/Discover", Reply::Unary),
    ("/farm.v1.Discovery/Watch", Reply::Stream),
    ("/farm.v1.Discovery/ListGroups", Reply::Unary),
    ("/farm.v1.Farm/ListNodes", Reply::Unary),
    ("/farm.v1.Farm/Scale", Reply::Unary),
    ("/farm.v1.Farm/NodeAction", Reply::Unary),
    ("/farm.v1.Config/GetConfig", Reply::Unary),
    ("/farm.v1.Config/PutConfig", Reply::Unary),
    ("/farm.v1.Config/History", Reply::Unary),
    ("/farm.v1.Config/Rollback", Reply::Unary),
    ("/farm.v1.Config/Diff", Reply::Unary),
    ("/farm.v1.Config/GetEffectiveConfig", Reply::Unary),
    ("/farm.v1.Config/WatchConfig", Reply::Stream),
    ("/farm.v1.Metrics/GetFarmMetrics", Reply::Unary),
    ("/farm.v1.Metrics/GetNodeMetrics", Reply::Unary),
    ("/farm.v1.Metrics/WatchMetrics", Reply::Stream),
    ("/farm.v1.Metrics/GetFarmHistory", Reply::Unary),
    ("/farm.v1.Catalog/Index", Reply::Unary),
    ("/farm.v1.Catalog/Remove", Reply::Unary),
    ("/farm.v1.Catalog/Query", Reply::Unary),
    ("/farm.v1.Catalog/Get", Reply::Unary),
    ("/farm.v1.Catalog/List", Reply::Unary),
    ("/farm.v1.ControlPlane/GetStatus", Reply::Unary),
    ("/grpc.health.v1.Health/Check", Reply::Unary),
    ("/grpc.health.v1.Health/Watch", Reply::Stream),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Reply::Stream,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Reply::Stream,
    ),
    ("/farm.v1.Nothing/Here", Reply::Unary),
    ("/healthz", Reply::Plain),
    ("/metrics", Reply::Plain),
    ("/", Reply::Plain),
];

/// Methods no call takes: they call each selected node at the address it
/// registered with, which fuzzed registrations choose, so a fuzzer would
/// reach out to the network.
pub const LEFT_OUT: &[&str] = &[
    "/farm.v1.Farm/SimulateLoad",
    "/farm.v1.Farm/Broadcast",
    "/farm.v1.LoadTest/Run",
];

/// The content types calls carry: gRPC-Web's four, others the port sends
/// to tonic-web (any starting `application/grpc-web`), and others it
/// routes as plain HTTP.
pub const CONTENT_TYPES: &[&str] = &[
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
    "application/grpc-web+json",
    "application/grpc",
    "application/json",
];

/// How long a streamed answer may pause before it is taken as read.
pub const STREAM_PAUSE: Duration = Duration::from_millis(20);

/// One gRPC-Web call, as fuzzed.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct GrpcWebCall {
    /// Which of [`PATHS`] (its index, modulo their number).
    pub path: u8,
    /// Which of [`CONTENT_TYPES`] (its index, modulo their number); the
    /// answer is asked for in the same.
    pub content_type: u8,
    /// HTTP/2 (which the port always sends through tonic-web) rather than
    /// HTTP/1.1.
    pub http2: bool,
    /// Whether `body` is one message, sent framed (and, for the `-text`
    /// forms, in base64), rather than the raw body.
    pub framed: bool,
    /// The message, or the raw body.
    pub body: Vec<u8>,
}

/// What a call was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub http: StatusCode,
    /// The gRPC status code, from the headers or the trailers, if any.
    pub grpc: Option<String>,
    /// Whether the body was read to its end (not a stream that paused).
    pub complete: bool,
}

/// Why the routes could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The temporary data folder or the runtime could not be made.
    #[error("cannot make the data folder or the runtime: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reflection could not read the descriptor sets.
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The port's routes, as `serve` builds them for a control plane running
/// no nodes, behind its gRPC-Web layer, over a store in a temporary folder:
/// set up once, called many times, in memory (no socket).
///
/// Unlike `serve`'s, no ticker applies deadlines and no history is
/// recorded: the farm changes only by the calls.
#[derive(Debug)]
pub struct GrpcWeb {
    runtime: tokio::runtime::Runtime,
    service: GrpcWebOrPlain<Routes>,
    // Kept: health answers as it does while serving.
    _health: HealthReporter,
    // Last: the store's files.
    _data: tempfile::TempDir,
}

impl GrpcWeb {
    /// Opens a store in a new temporary folder and builds the routes on
    /// it, on a runtime of one thread.
    pub fn new() -> Result<Self, HarnessError> {
        let data = tempfile::tempdir()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (health, routes) = runtime.block_on(async {
            let state = FarmState::open(
                data.path().to_owned(),
                HealthPolicy::default(),
                Limits::default(),
            )
            .await?;
            let api = Api::new(state, None, "none");
            let (health, health_service) = tonic_health::server::health_reporter();
            health.set_service_status("", ServingStatus::Serving).await;
            Ok::<_, HarnessError>((health, routes(&api, health_service)?))
        })?;
        Ok(Self {
            runtime,
            service: GrpcWebOrPlainLayer.layer(routes),
            _health: health,
            _data: data,
        })
    }

    /// Sends `call` through the gRPC-Web layer to the routes and reads the
    /// whole answer. A gRPC-Web answer with status 200 from a gRPC path must
    /// be whole frames, its trailers last, and, once read to its end, carry
    /// a gRPC status.
    pub fn call(&self, call: &GrpcWebCall) -> Answer {
        let (path, reply) = PATHS[usize::from(call.path) % PATHS.len()];
        let content_type = CONTENT_TYPES[usize::from(call.content_type) % CONTENT_TYPES.len()];
        let text = content_type.starts_with("application/grpc-web-text");
        let body = if call.framed {
            let framed = frame(&call.body);
            if text {
                BASE64.encode(framed).into_bytes()
            } else {
                framed
            }
        } else {
            call.body.clone()
        };
        let version = if call.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let request = http::Request::builder()
            .method(Method::POST)
            .uri(path)
            .version(version)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, content_type)
            .header("x-grpc-web", "1")
            .body(Body::new(axum::body::Body::from(body)))
            .expect("constant paths and headers are valid");
        self.runtime.block_on(async {
            let Ok(response) = self.service.clone().oneshot(request).await;
            let (parts, body) = response.into_parts();
            let read = read(body, reply).await;
            let grpc_web = parts.status == StatusCode::OK
                && reply != Reply::Plain
                && parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web"));
            let mut grpc = grpc_status(&parts.headers).or_else(|| grpc_status(&read.trailers));
            if grpc_web {
                let text = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web-text"));
                let trailers = check_frames(&read.data, text, read.complete);
                grpc = grpc.or(trailers);
                assert!(
                    !read.complete || grpc.is_some(),
                    "a gRPC-Web answer from {path} without a gRPC status"
                );
            }
            Answer {
                http: parts.status,
                grpc,
                complete: read.complete,
            }
        })
    }
}

/// `message` in a gRPC(-Web) data frame: flags (none), length, message.
fn frame(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// An answer's body as read.
struct Read {
    data: Vec<u8>,
    trailers: HeaderMap,
    /// Read to its end, without error.
    complete: bool,
}

/// Reads `body` to its end; a stream, until it pauses for
/// [`STREAM_PAUSE`].
async fn read(body: Body, reply: Reply) -> Read {
    let mut body = std::pin::pin!(body);
    let mut read = Read {
        data: Vec::new(),
        trailers: HeaderMap::new(),
        complete: false,
    };
    loop {
        let next = poll_fn(|cx| body.as_mut().poll_frame(cx));
        let frame = if reply == Reply::Stream {
            match tokio::time::timeout(STREAM_PAUSE, next).await {
                Ok(frame) => frame,
                Err(_) => return read,
            }
        } else {
            next.await
        };
        match frame {
            None => {
                read.complete = true;
                return read;
            }
            // A body that fails midway is an answer too.
            Some(Err(_)) => return read,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => read.data.extend_from_slice(&data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        read.trailers.extend(trailers);
                    }
                }
            },
        }
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Checks that a gRPC-Web body is whole frames (base64, each frame padded
/// on its own, for `-text`), nothing after the trailers frame, and returns
/// the gRPC status the trailers carry. A body cut short may end midway.
fn check_frames(body: &[u8], text: bool, complete: bool) -> Option<String> {
    let decoded;
    let mut rest = if text {
        let whole = body.len() - body.len() % 4;
        assert!(!complete || whole == body.len(), "base64 of whole quanta");
        decoded = body[..whole]
            .chunks(4)
            .map(|quantum| BASE64.decode(quantum))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|err| panic!("a gRPC-Web text answer is not base64: {err}"))
            .concat();
        &decoded[..]
    } else {
        body
    };
    let mut status = None;
    let mut trailers_seen = false;
    while !rest.is_empty() {
        let Some(&[flags, a, b, c, d]) = rest.get(..5) else {
            assert!(!complete, "a gRPC-Web answer ends midway through a frame");
            break;
        };
        let length = u32::from_be_bytes([a, b, c, d]) as usize;
        let Some(payload) = rest.get(5..5 + length) else {
            assert!(!complete, "a gRPC-Web answer ends midway through a frame");
            break;
        };
        assert!(!trailers_seen, "a frame after the trailers");
        assert_eq!(flags & 0x7e, 0, "frame flags {flags:#x}");
        if flags & 0x80 != 0 {
            trailers_seen = true;
            status = String::from_utf8_lossy(payload)
                .split("\r\n")
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("grpc-status")
                        .then(|| value.trim().to_owned())
                });
            assert!(status.is_some(), "trailers without grpc-status");
        }
        rest = &rest[5 + length..];
    }
    status
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use farm_api::v1::{PutConfigRequest, RegisterRequest};
    use proptest::{
        collection::vec,
        prelude::*,
        sample::{Index, select},
        test_runner::TestRunner,
    };
    use prost::Message as _;

    use super::*;
    use crate::transport::services::SERVICES;

    /// Cases per property: enough to reach each branch of the generated
    /// forms many times, few enough for a second or two.
    fn cases(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            ..ProptestConfig::default()
        }
    }

    fn string(
        chars: impl Strategy<Value = char> + 'static,
        len: std::ops::Range<usize>,
    ) -> BoxedStrategy<String> {
        vec(chars, len).prop_map(String::from_iter).boxed()
    }

    /// `c`, `n` times: names and values at their limits.
    fn repeated(c: char, n: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
        n.prop_map(move |n| std::iter::repeat_n(c, n).collect())
            .boxed()
    }

    /// Catalog names: mostly printable characters, ASCII or not, some that
    /// are refused (separators, white space, controls, format, private-use
    /// and unassigned characters), and some at the length limit.
    fn catalog_name() -> BoxedStrategy<String> {
        const PRINTS: &[char] = &[
            'a', 'z', 'Q', '0', '+', '@', '.', '-', '=', 'é', '日', '☃', '\u{301}', '∑',
        ];
        const REFUSED: &[char] = &[
            '|', ',', ' ', '\t', '\r', '\u{7f}', '\u{a0}', '\u{85}', '\u{200b}', '\u{feff}',
            '\u{ad}', '\u{202e}', '\u{378}', '\u{e000}', '\u{2028}', '\u{3000}', '\u{ffff}',
        ];
        let c = prop_oneof![12 => select(PRINTS), 1 => select(REFUSED)];
        prop_oneof![
            8 => string(c, 0..8),
            1 => repeated('x', MAX_NAME_CHARS - 1..=MAX_NAME_CHARS + 1),
            1 => repeated('日', MAX_NAME_CHARS - 1..=MAX_NAME_CHARS + 1),
        ]
        .boxed()
    }

    /// Lines of the protocol: its commands, near misses, and separators
    /// around catalog names; sometimes with a byte that is not UTF-8 or a
    /// separator spliced in, sometimes random bytes.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let command = prop_oneof![
            6 => select(&["INDEX", "REMOVE", "QUERY"][..]),
            1 => select(&["index", "BLINDEX", "", " QUERY", "QUERY "][..]),
        ];
        let separator = || prop_oneof![8 => Just("|"), 1 => Just(""), 1 => Just("||")];
        let dependencies = vec(catalog_name(), 0..5).prop_map(|names| names.join(","));
        let shaped = (
            command,
            separator(),
            catalog_name(),
            separator(),
            dependencies,
        )
            .prop_map(|(c, s, name, t, deps)| format!("{c}{s}{name}{t}{deps}").into_bytes());
        let spliced = (
            shaped.clone(),
            any::<Index>(),
            select(&[0xff, 0x80, b'\n', b'|', b','][..]),
        )
            .prop_map(|(mut line, at, byte)| {
                line.insert(at.index(line.len() + 1), byte);
                line
            });
        prop_oneof![6 => shaped, 1 => spliced, 1 => vec(any::<u8>(), 0..32)]
    }

    /// Node and group names and label keys: mostly their alphabet, some
    /// characters outside it, some at the length limit.
    fn identifier() -> BoxedStrategy<String> {
        const ALPHABET: &[char] = &['a', 'Z', '0', '9', '.', '_', '-'];
        const OUTSIDE: &[char] = &[' ', '/', ':', 'ü', '\0', '+', '日'];
        let c = prop_oneof![12 => select(ALPHABET), 1 => select(OUTSIDE)];
        prop_oneof![
            6 => string(c, 0..10),
            1 => repeated('a', MAX_NAME_LEN - 1..=MAX_NAME_LEN + 1),
            1 => repeated('é', MAX_NAME_LEN / 2 - 1..=MAX_NAME_LEN / 2 + 1),
        ]
        .boxed()
    }

    /// `host:port`: DNS names, IPv4, bracketed IPv6 and near misses, with
    /// ports in range and not.
    fn address() -> BoxedStrategy<String> {
        let host = prop_oneof![
            vec("[a-z0-9-]{0,6}", 1..4).prop_map(|labels| labels.join(".")),
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
            "[\\[\\]:.a-f0-9%_ ]{0,10}",
            repeated('a', MAX_ADDRESS_LEN - 4..=MAX_ADDRESS_LEN),
        ];
        let port = prop_oneof![
            any::<u16>().prop_map(|p| p.to_string()),
            select(&["", "0", "+80", "080", "65536", "-1", " 80", "8o", "٣"][..])
                .prop_map(str::to_owned),
        ];
        prop_oneof![
            6 => (host, port).prop_map(|(host, port)| format!("{host}:{port}")),
            1 => "[a-z0-9:.\\[\\]]{0,12}",
        ]
        .boxed()
    }

    /// `key=value`, values up to and past the limit, in bytes and in
    /// characters.
    fn label() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            "[a-z0-9 ]{0,8}",
            repeated('v', MAX_LABEL_VALUE_LEN - 1..=MAX_LABEL_VALUE_LEN + 1),
            repeated(
                'é',
                MAX_LABEL_VALUE_LEN / 2 - 1..=MAX_LABEL_VALUE_LEN / 2 + 1
            ),
        ];
        (identifier(), value).prop_map(|(key, value)| format!("{key}={value}"))
    }

    fn scope() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("global".to_owned()),
            identifier().prop_map(|g| format!("group:{g}")),
            prop_oneof!["n[0-9]{0,3}", "n0[0-9]{1,2}", identifier()]
                .prop_map(|n| format!("node:{n}")),
            "[a-z:]{0,8}",
        ]
    }

    /// JSON around the keys a node applies: numbers at and past their
    /// ranges, other values where numbers belong, nested sections, dotted
    /// keys.
    fn json_value() -> impl Strategy<Value = Value> {
        let number = prop_oneof![
            (-2i64..70_000).prop_map(Value::from),
            select(
                &[
                    0.0, 0.5, 1.0, 1.000_001, -0.0, -0.1, 1e300, 59_999.5, 60_000.0, 60_001.0
                ][..]
            )
            .prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            number,
            "[a-z0-9 ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::from),
                vec((json_key(), inner), 0..5)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    fn json_key() -> impl Strategy<Value = String> {
        select(
            &[
                "workload",
                "delay_ms",
                "response_bytes",
                "error_rate",
                "heartbeat_interval_ms",
                "workload.delay_ms",
                "workload.response_bytes",
                "workload.error_rate",
                "tags",
                "",
            ][..],
        )
        .prop_map(str::to_owned)
    }

    /// Configuration documents: objects mostly, other values, and objects
    /// at the size limit.
    fn document() -> impl Strategy<Value = Value> {
        // `{"blob":""}` is 11 bytes: these cross the limit.
        let blob =
            (MAX_CONFIG_BYTES - 20..MAX_CONFIG_BYTES).prop_map(|n| json!({"blob": "x".repeat(n)}));
        prop_oneof![
            6 => vec((json_key(), json_value()), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            1 => json_value(),
            1 => blob,
        ]
    }

    /// Protobuf messages of any shape: fields 1 to 7 of each wire type the
    /// API uses, strings as the API's messages take them (names, addresses,
    /// scopes), nested messages (labels, JSON structs, selectors).
    fn protobuf() -> impl Strategy<Value = Vec<u8>> {
        fn key(field: u32, wire: u32, out: &mut Vec<u8>) {
            varint(u64::from(field << 3 | wire), out);
        }
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push(v as u8 | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn delimited(field: u32, bytes: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            key(field, 2, &mut out);
            varint(bytes.len() as u64, &mut out);
            out.extend_from_slice(bytes);
            out
        }
        let text = prop_oneof![
            identifier(),
            address(),
            scope(),
            catalog_name(),
            Just(String::new())
        ];
        let number = prop_oneof![Just(0u64), Just(1), 0u64..100_000, any::<u64>()];
        let double = select(&[0.0f64, 0.5, 1.0, -5.0, 100.0, 1e9][..]);
        let field = prop_oneof![
            (1u32..8, number).prop_map(|(field, v)| {
                let mut out = Vec::new();
                key(field, 0, &mut out);
                varint(v, &mut out);
                out
            }),
            (1u32..8, text).prop_map(|(field, s)| delimited(field, s.as_bytes())),
            (1u32..8, double).prop_map(|(field, d)| {
                let mut out = Vec::new();
                key(field, 1, &mut out);
                out.extend_from_slice(&d.to_le_bytes());
                out
            }),
        ];
        let field = field.prop_recursive(3, 24, 4, |inner| {
            (1u32..8, vec(inner, 0..4))
                .prop_map(|(field, fields)| delimited(field, &fields.concat()))
        });
        vec(field, 0..6).prop_map(|fields| fields.concat())
    }

    fn grpc_web_call() -> impl Strategy<Value = GrpcWebCall> {
        let content_type = prop_oneof![6 => 0u8..4, 1 => any::<u8>()];
        let body = prop_oneof![6 => protobuf(), 1 => vec(any::<u8>(), 0..64)];
        (
            any::<u8>(),
            content_type,
            proptest::bool::weighted(0.1),
            proptest::bool::weighted(0.9),
            body,
        )
            .prop_map(|(path, content_type, http2, framed, body)| GrpcWebCall {
                path,
                content_type,
                http2,
                framed,
                body,
            })
    }

    proptest! {
        #![proptest_config(cases(2000))]

        #[test]
        fn protocol_lines(line in line()) {
            line_protocol(&line);
        }

        #[test]
        fn every_socket_address_is_an_address(ip in any::<IpAddr>(), port in 1u16..) {
            let address = SocketAddr::new(ip, port).to_string();
            prop_assert!(validate_address(&address).is_ok(), "{}", address);
        }
    }

    proptest! {
        #![proptest_config(cases(1000))]

        #[test]
        fn names_and_labels(lines in prop_oneof![
            vec(prop_oneof![identifier(), address(), catalog_name(), scope(), label().boxed()], 0..12),
            // Around the most labels a node carries.
            vec(label(), MAX_LABELS - 4..MAX_LABELS + 4),
        ]) {
            names(lines.join("\n").as_bytes());
        }
    }

    proptest! {
        #![proptest_config(cases(500))]

        #[test]
        fn scopes_and_documents(scope in scope(), document in document(), pretty in any::<bool>()) {
            let json = if pretty {
                serde_json::to_string_pretty(&document)
            } else {
                serde_json::to_string(&document)
            };
            let json = json.map_err(|err| TestCaseError::fail(err.to_string()))?;
            config(format!("{scope}\n{json}").as_bytes());
        }
    }

    /// One set of routes for every case: each call sees the farm the calls
    /// before it made, as the fuzz target's do.
    #[test]
    fn grpc_web_calls() {
        let farm = GrpcWeb::new().expect("the routes start");
        let mut runner = TestRunner::new(cases(300));
        if let Err(err) = runner.run(&grpc_web_call(), |call| {
            farm.call(&call);
            Ok(())
        }) {
            panic!("{err}");
        }
    }

    fn path(path: &str) -> u8 {
        let index = PATHS
            .iter()
            .position(|(p, _)| *p == path)
            .expect("a path called");
        u8::try_from(index).expect("fewer than 256 paths")
    }

    /// The harness reaches the services: well-formed calls succeed, in
    /// both of gRPC-Web's forms, and bad ones are refused as gRPC.
    #[test]
    fn grpc_web_calls_reach_the_services() {
        let farm = GrpcWeb::new().expect("the routes start");
        let register = |name: &str, content_type| GrpcWebCall {
            path: path("/farm.v1.Registry/Register"),
            content_type,
            http2: false,
            framed: true,
            body: RegisterRequest {
                name: name.to_owned(),
                address: "127.0.0.1:7000".to_owned(),
                ..RegisterRequest::default()
            }
            .encode_to_vec(),
        };
        for (call, status) in [
            (register("node-1", 0), "0"),
            (register("node-2", 3), "0"),
            // INVALID_ARGUMENT.
            (register("no/slash", 0), "3"),
            (
                GrpcWebCall {
                    path: path("/farm.v1.Config/PutConfig"),
                    content_type: 1,
                    http2: false,
                    framed: true,
                    body: PutConfigRequest {
                        scope: "zone:a".to_owned(),
                        ..PutConfigRequest::default()
                    }
                    .encode_to_vec(),
                },
                "3",
            ),
            // UNIMPLEMENTED.
            (
                GrpcWebCall {
                    path: path("/farm.v1.Nothing/Here"),
                    content_type: 0,
                    http2: false,
                    framed: true,
                    body: Vec::new(),
                },
                "12",
            ),
        ] {
            let answer = farm.call(&call);
            assert_eq!(
                (answer.http, answer.grpc.as_deref(), answer.complete),
                (StatusCode::OK, Some(status), true),
                "{call:?}"
            );
        }
    }

    /// Every method the port serves is called, or left out on purpose.
    #[test]
    fn every_method_is_called_or_left_out() {
        for service in SERVICES {
            for (method, _) in service.methods {
                let path = format!("/{}/{method}", service.name);
                assert!(
                    PATHS.iter().any(|(p, _)| *p == path) != LEFT_OUT.contains(&path.as_str()),
                    "{path} is called or left out, not both"
                );
            }
        }
    }
}
