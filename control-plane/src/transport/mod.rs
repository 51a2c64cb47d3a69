//! The port: gRPC over h2c, gRPC-Web over HTTP/1.1 (with CORS), and plain
//! HTTP, all on one listener, behind one tower stack.
//!
//! [`services`] is the table of what is served; [`routes`] builds the
//! routes from it and `api/`'s handlers; [`browser`] keeps other web pages
//! (and rebound DNS names) out; [`auth`] decides who may call what;
//! [`grpc_web`] lets gRPC-Web and plain HTTP share HTTP/1.1;
//! [`rpc_metrics`] counts the calls; [`calls`] sheds farm-wide reads while
//! saturated ([`shed`] measures it) and bounds the handlers.
//! [`gate`] admits the connections before any of them. [`serve`] stacks
//! them in order.

pub(crate) mod auth;
pub(crate) mod browser;
mod calls;
pub(crate) mod gate;
pub(crate) mod grpc_web;
mod routes;
mod rpc_metrics;
pub(crate) mod services;
pub(crate) mod shed;

use std::{future::Future, sync::Arc, time::Duration};

use http::{HeaderName, header};
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::Server};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    validate_request::ValidateRequestHeaderLayer,
};
use tracing::warn;

pub(crate) use routes::{Api, routes};

use crate::telemetry::Telemetry;

/// How the port serves connections once admitted, and their calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingSettings {
    /// How long a gRPC call's handler may take to answer (a stream: to
    /// start); see [`calls`].
    pub rpc_timeout: Duration,
    /// Most streams (calls) open at once on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`): past it a client's new streams
    /// are refused at once, and gRPC clients wait for a free one.
    pub max_streams: u32,
    /// How late the event loop may run before farm-wide reads are shed
    /// (zero: never); see [`shed`].
    pub shed_lag: Duration,
    /// Unknown tokens one address may present within a minute before all
    /// its calls are refused for the rest of it (0: no limit).
    pub auth_failure_limit: u32,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

/// Serves `routes` on `listener` until `shutdown` resolves, then drains.
/// `gate` admits the connections; `serving` says how each and its calls are served.
/// Browsers may call as `browser` allows; calls to `farm.v1` need one of
/// `tokens` (when any is set).
///
/// The stack, outermost first; each layer sits where it does for the
/// reason on its line.
pub(crate) async fn serve(
    listener: TcpListener,
    (gate, serving): (Arc<gate::Gate>, ServingSettings),
    mut routes: Routes,
    tokens: auth::Tokens,
    browser: browser::BrowserPolicy,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    if browser.any_origin() {
        let address = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        warn!(
            %address,
            "--cors-origin '*': any web page opened in a browser that reaches this port may call the farm"
        );
    }
    let incoming = gate.incoming(listener);
    let router = std::mem::take(routes.axum_router_mut());
    // Innermost, on the routes: counts only the calls every check let in.
    *routes.axum_router_mut() =
        router.layer(rpc_metrics::RpcMetricsLayer::new(Arc::clone(&telemetry)));
    Server::builder()
        // HTTP/1.1 for gRPC-Web and the plain HTTP endpoints.
        .accept_http1(true)
        // Notice dead peers on idle connections (a node frozen mid-stream).
        .http2_keepalive_interval(Some(serving.keepalive_interval))
        .http2_keepalive_timeout(Some(serving.keepalive_timeout))
        // A fast refusal past it, never an unbounded queue of calls.
        .max_concurrent_streams(serving.max_streams)
        // Outermost: foreign hosts and untrusted origins stop before anything runs.
        .layer(ValidateRequestHeaderLayer::custom(
            browser::BrowserGate::new(browser),
        ))
        // Preflights of the origins let through are answered here, not routed.
        .layer(cors())
        // Translate gRPC-Web to gRPC; plain HTTP/1.1 passes by untouched.
        .layer(grpc_web::GrpcWebOrPlainLayer)
        // Inside the translation, so gRPC-Web calls need their token too.
        .layer(ValidateRequestHeaderLayer::custom(auth::AuthGate::new(
            tokens,
            serving.auth_failure_limit,
        )))
        // Inside the checks: only calls let in are shed or take a handler's time.
        .layer(calls::CallsLayer {
            shedder: shed::Shedder::new(serving.shed_lag, telemetry),
            deadline: serving.rpc_timeout,
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// CORS for browsers calling through gRPC-Web: the request's origin (the
/// guard outside has refused every origin not allowed), the gRPC-Web
/// headers in, and the gRPC status headers out. No credentials: nothing on
/// this port reads cookies, and tokens travel in `authorization`, set by
/// the page itself.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .max_age(Duration::from_secs(24 * 60 * 60))
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        // The layer replaces the responses' `Vary`: keep the dashboard's
        // (its files are compressed as each browser accepts).
        .vary([
            header::ORIGIN,
            header::ACCESS_CONTROL_REQUEST_METHOD,
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            header::ACCEPT_ENCODING,
        ])
}
