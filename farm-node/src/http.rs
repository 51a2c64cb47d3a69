//! Plain HTTP on the node's port, so curl, browsers and HTTP load tools can
//! hit the farm too: `/` (what the node is), `/health`, `/slow?ms=N`,
//! `/error/{code}` and `/data/{bytes}`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use farm_api::node::{MAX_DELAY_MS, MAX_RESPONSE_BYTES};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::workload::NodeStatus;

#[derive(Debug, Clone)]
struct Http {
    status: Arc<NodeStatus>,
    shutdown: CancellationToken,
}

/// The node's HTTP routes.
pub fn router(status: Arc<NodeStatus>, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/slow", get(slow))
        .route("/error/{code}", get(error))
        .route("/data/{bytes}", get(data))
        .with_state(Http { status, shutdown })
}

/// For paths nothing serves: gRPC callers get UNIMPLEMENTED as gRPC expects,
/// everyone else an HTTP 404.
pub async fn not_found(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        tonic::Status::unimplemented(format!("{} is not served here", request.uri().path()))
            .into_http()
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message + "\n").into_response()
}

async fn index(State(http): State<Http>) -> String {
    let status = &http.status;
    let id = status.node_id();
    format!(
        "farm-node {version}\n\
         name:      {name}\n\
         id:        {id}\n\
         group:     {group}\n\
         address:   {address}\n\
         connected: {connected}\n\
         uptime:    {uptime}s\n\
         requests:  {requests} ({errors} failed)\n\
         config:    {settings}\n\n\
         gRPC: farm.v1.Workload, grpc.health.v1.Health\n\
         HTTP: /health, /slow?ms=N (N <= {MAX_DELAY_MS}), /error/CODE (400-599), /data/BYTES (<= {MAX_RESPONSE_BYTES})\n",
        version = env!("CARGO_PKG_VERSION"),
        name = status.name,
        id = if id.is_empty() {
            "(not registered yet)"
        } else {
            &id
        },
        group = status.group,
        address = status.address,
        connected = status.connected(),
        uptime = status.uptime().as_secs(),
        requests = status.requests(),
        errors = status.errors(),
        settings = status.settings(),
    )
}

/// 200 while the node serves; 503 once it shuts down.
async fn health(State(http): State<Http>) -> (StatusCode, &'static str) {
    if http.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

#[derive(Debug, Deserialize)]
struct SlowQuery {
    /// How long to wait; 1000 when absent.
    ms: Option<String>,
}

/// Answers after `ms` milliseconds.
async fn slow(State(http): State<Http>, Query(query): Query<SlowQuery>) -> Response {
    let ms = match query.ms.as_deref().map(str::parse::<u32>) {
        None => 1_000,
        Some(Ok(ms)) if ms <= MAX_DELAY_MS => ms,
        Some(_) => {
            return bad_request(format!(
                "ms must be a whole number of milliseconds from 0 to {MAX_DELAY_MS}"
            ));
        }
    };
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(u64::from(ms))) => {
            format!("waited {ms} ms\n").into_response()
        }
        () = http.shutdown.cancelled() => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
        }
    }
}

/// Answers with the HTTP status `code` (400 to 599).
async fn error(Path(code): Path<String>) -> Response {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) if status.is_client_error() || status.is_server_error() => {
            (status, format!("error {code} as requested\n")).into_response()
        }
        _ => bad_request(format!("{code:?} is not an HTTP error status (400 to 599)")),
    }
}

/// Answers with `bytes` bytes.
async fn data(Path(bytes): Path<String>) -> Response {
    match bytes.parse::<u32>() {
        Ok(n) if n <= MAX_RESPONSE_BYTES => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            vec![0u8; n as usize],
        )
            .into_response(),
        _ => bad_request(format!(
            "{bytes:?} is not a size from 0 to {MAX_RESPONSE_BYTES} bytes"
        )),
    }
}
