//! The one listener: gRPC over h2c, gRPC-Web over HTTP/1.1 (with CORS), and
//! plain HTTP (`/`, `/healthz`, `/readyz`, `/metrics`), all on the same
//! port.

use std::{future::Future, time::Duration};

use axum::{extract::State, http::StatusCode, routing::get};
use farm_api::v1::{
    config_server::ConfigServer, discovery_server::DiscoveryServer, farm_server::FarmServer,
    load_test_server::LoadTestServer, metrics_server::MetricsServer,
    registry_server::RegistryServer,
};
use futures::future::{BoxFuture, Either, FutureExt};
use http::{HeaderName, header};
use http::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::{
    service::Routes,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    api::{
        ConfigService, DiscoveryService, FarmService, MetricsService, RegistryService,
        loadtest::LoadTestService,
    },
    core::NodeState,
    state::FarmState,
    supervisor::Supervisor,
};

/// Largest request message accepted.
const MAX_DECODE: usize = 4 * 1024 * 1024;
/// Largest response message sent.
const MAX_ENCODE: usize = 16 * 1024 * 1024;

/// Services advertised by reflection.
const SERVED: [&str; 9] = [
    "farm.v1.Registry",
    "farm.v1.Config",
    "farm.v1.Discovery",
    "farm.v1.Farm",
    "farm.v1.Metrics",
    "farm.v1.LoadTest",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What the routes serve.
#[derive(Debug, Clone)]
pub struct Api {
    pub state: FarmState,
    /// `None` when the control plane runs no nodes.
    pub supervisor: Option<Supervisor>,
    /// Cancelled at shutdown: long-lived streams end, `/readyz` turns 503.
    pub shutdown: CancellationToken,
}

/// Builds every route of the port: the farm services, health, reflection
/// (v1 and v1alpha) and the HTTP endpoints.
pub fn routes(
    api: &Api,
    health: HealthServer<impl Health>,
) -> Result<Routes, tonic_reflection::server::Error> {
    // Advertise what this port serves; the descriptor set also holds the
    // nodes' Workload service, which is not served here.
    let reflection = || {
        SERVED
            .iter()
            .fold(tonic_reflection::server::Builder::configure(), |b, name| {
                b.with_service_name(*name)
            })
            .register_encoded_file_descriptor_set(farm_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let registry = RegistryService::new(api.state.clone(), api.shutdown.clone());
    let discovery = DiscoveryService::new(api.state.clone(), api.shutdown.clone());
    let farm = FarmService::new(api.state.clone(), api.supervisor.clone());
    let config = ConfigService::new(api.state.clone(), api.shutdown.clone());
    let metrics = MetricsService::new(api.state.clone(), api.shutdown.clone());
    let loadtest = LoadTestService::new(api.state.clone(), api.shutdown.clone());
    let mut routes = Routes::builder();
    routes
        .add_service(
            RegistryServer::new(registry)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            DiscoveryServer::new(discovery)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            FarmServer::new(farm)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            ConfigServer::new(config)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            MetricsServer::new(metrics)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            LoadTestServer::new(loadtest)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let mut routes = routes.routes();
    let http = axum::Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(api.clone());
    let grpc = std::mem::take(routes.axum_router_mut());
    // Innermost: counts and times the calls that passed the auth layer.
    let counted = crate::prometheus::RpcMetricsLayer::new(api.state.telemetry().clone());
    *routes.axum_router_mut() = grpc.merge(http).fallback(not_found).layer(counted);
    Ok(routes)
}

/// For paths nothing serves: gRPC callers get UNIMPLEMENTED as gRPC expects,
/// browsers and probes an HTTP 404.
async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
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

async fn index() -> &'static str {
    concat!(
        "farm control plane ",
        env!("CARGO_PKG_VERSION"),
        "\n\n",
        "gRPC (h2c) and gRPC-Web on this port: farm.v1.Registry, farm.v1.Discovery, farm.v1.Farm,\n",
        "farm.v1.Config, farm.v1.Metrics, farm.v1.LoadTest,\n",
        "grpc.health.v1.Health, and server reflection (grpcurl -plaintext HOST:PORT list).\n\n",
        "HTTP: /healthz (alive), /readyz (serving, and how many nodes are healthy),\n",
        "/metrics (the farm and the control plane in the Prometheus text format)\n",
    )
}

/// The farm and the control plane in the Prometheus text format, rendered
/// on a blocking thread (it reads `/proc` and merges every node's
/// histogram).
async fn metrics_text(State(api): State<Api>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::task::spawn_blocking(move || crate::prometheus::render(&api.state)).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, crate::prometheus::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics failed: {err}\n"),
        )
            .into_response(),
    }
}

/// Ready while serving; the body says how much of the farm is healthy.
async fn readyz(State(api): State<Api>) -> (StatusCode, String) {
    if api.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    let healthy = api.state.count_by_state(NodeState::Healthy);
    let desired = api.supervisor.as_ref().map_or(0, Supervisor::desired);
    (
        StatusCode::OK,
        format!("ready: {healthy} nodes healthy, {desired} managed nodes desired\n"),
    )
}

/// CORS for browsers calling through gRPC-Web: any origin, the gRPC-Web
/// headers in, and the gRPC status headers out.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
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
}

/// Serves `routes` on `listener` until `shutdown` resolves, then drains.
/// Calls to `farm.v1` need one of `tokens` (when any is set).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    tokens: crate::auth::Tokens,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        // HTTP/1.1 for gRPC-Web and the plain HTTP endpoints.
        .accept_http1(true)
        // Notice dead peers on idle connections (a node frozen mid-stream).
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // Outermost: answer CORS preflights before anything else runs.
        .layer(cors())
        // Translate gRPC-Web to gRPC; plain HTTP/1.1 passes by untouched.
        .layer(GrpcWebOrPlainLayer)
        // Inside the translation, so gRPC-Web calls are checked too; refused
        // calls never reach the routes.
        .layer(crate::auth::AuthLayer::new(tokens))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Sends gRPC-Web requests (and all HTTP/2) through tonic-web's translation
/// and every other HTTP/1.1 request straight to the routes: tonic-web alone
/// answers 400 to plain HTTP/1.1, and this port serves probes too.
#[derive(Debug, Clone, Copy)]
struct GrpcWebOrPlainLayer;

impl<S: Clone> Layer<S> for GrpcWebOrPlainLayer {
    type Service = GrpcWebOrPlain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebOrPlain {
            web: GrpcWebLayer::new().layer(inner.clone()),
            plain: inner,
        }
    }
}

#[derive(Debug, Clone)]
struct GrpcWebOrPlain<S> {
    web: GrpcWebService<S>,
    plain: S,
}

fn is_grpc_web(request: &Request<Body>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"))
}

impl<S, B> Service<Request<Body>> for GrpcWebOrPlain<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<
        <GrpcWebService<S> as Service<Request<Body>>>::Future,
        BoxFuture<'static, Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::ready!(<GrpcWebService<S> as Service<Request<Body>>>::poll_ready(
            &mut self.web,
            cx
        ))?;
        self.plain.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.version() == http::Version::HTTP_2 || is_grpc_web(&request) {
            Either::Left(self.web.call(request))
        } else {
            Either::Right(
                self.plain
                    .call(request)
                    .map(|result| result.map(|response| response.map(Body::new)))
                    .boxed(),
            )
        }
    }
}
