//! The one listener: gRPC over h2c, gRPC-Web over HTTP/1.1 (with CORS), and
//! plain HTTP (`/`, `/healthz`, `/readyz`), all on the same port.

use std::{future::Future, time::Duration};

use axum::{extract::State, http::StatusCode, routing::get};
use farm_api::v1::{
    discovery_server::DiscoveryServer, farm_server::FarmServer, registry_server::RegistryServer,
};
use http::{HeaderName, header};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    api::{DiscoveryService, FarmService, RegistryService},
    core::NodeState,
    state::FarmState,
    supervisor::Supervisor,
};

/// Largest request message accepted.
const MAX_DECODE: usize = 4 * 1024 * 1024;
/// Largest response message sent.
const MAX_ENCODE: usize = 16 * 1024 * 1024;

/// Services advertised by reflection.
const SERVED: [&str; 6] = [
    "farm.v1.Registry",
    "farm.v1.Discovery",
    "farm.v1.Farm",
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
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let mut routes = routes.routes();
    let http = axum::Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(api.clone());
    let grpc = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = grpc.merge(http);
    Ok(routes)
}

async fn index() -> &'static str {
    concat!(
        "farm control plane ",
        env!("CARGO_PKG_VERSION"),
        "\n\n",
        "gRPC (h2c) and gRPC-Web on this port: farm.v1.Registry, farm.v1.Discovery, farm.v1.Farm,\n",
        "grpc.health.v1.Health, and server reflection (grpcurl -plaintext HOST:PORT list).\n\n",
        "HTTP: /healthz (alive), /readyz (serving, and how many nodes are healthy)\n",
    )
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
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
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
        // Translate gRPC-Web to gRPC; other requests pass through untouched.
        .layer(GrpcWebLayer::new())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
