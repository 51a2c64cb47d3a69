//! Every route of the port: the farm's gRPC services, health, reflection
//! (v1 and v1alpha), and the plain HTTP endpoints `/`, `/healthz`,
//! `/readyz` and `/metrics`.

use axum::{extract::State, http::StatusCode, routing::get};
use farm_api::v1::{
    catalog_server::CatalogServer, config_server::ConfigServer, discovery_server::DiscoveryServer,
    farm_server::FarmServer, load_test_server::LoadTestServer, metrics_server::MetricsServer,
    registry_server::RegistryServer,
};
use http::header;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::pb::health_server::{Health, HealthServer};

use super::services;
use crate::{
    api::{
        CatalogService, ConfigService, DiscoveryService, FarmService, LoadTestService,
        MetricsService, RegistryService,
    },
    core::NodeState,
    exposition::{self, ProcessStats},
    state::FarmState,
    supervisor::Supervisor,
};

/// Largest request message accepted.
const MAX_DECODE: usize = 4 * 1024 * 1024;
/// Largest response message sent.
const MAX_ENCODE: usize = 16 * 1024 * 1024;

/// What the routes serve.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) state: FarmState,
    /// `None` when the control plane runs no nodes.
    pub(crate) supervisor: Option<Supervisor>,
    /// Cancelled at shutdown: long-lived streams end, `/readyz` turns 503.
    pub(crate) shutdown: CancellationToken,
    /// The load tests, one at a time.
    pub(crate) load_test: LoadTestService,
    /// The catalog's line protocol, when served.
    pub(crate) indexer: Option<crate::indexer::Status>,
}

impl Api {
    /// What the routes serve: the farm's state, and its supervisor when
    /// this control plane runs nodes.
    pub(crate) fn new(state: FarmState, supervisor: Option<Supervisor>) -> Self {
        let shutdown = CancellationToken::new();
        Self {
            load_test: LoadTestService::new(state.members(), shutdown.clone()),
            state,
            supervisor,
            shutdown,
            indexer: None,
        }
    }

    /// Tells every service to stop: streams end, a running load test stops
    /// and reports, `/readyz` turns 503.
    pub(crate) fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Resolves once no load test runs.
    pub(crate) async fn idle(&self) {
        self.load_test.idle().await;
    }
}

/// Builds every route of the port.
pub(crate) fn routes(
    api: &Api,
    health: HealthServer<impl Health>,
) -> Result<Routes, tonic_reflection::server::Error> {
    // Advertise what this port serves; the descriptor set also holds the
    // nodes' Workload service, which is not served here.
    let reflection = || {
        services::names()
            .fold(tonic_reflection::server::Builder::configure(), |b, name| {
                b.with_service_name(name)
            })
            .register_encoded_file_descriptor_set(farm_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (state, shutdown) = (&api.state, &api.shutdown);
    let mut routes = Routes::builder();
    routes
        .add_service(
            RegistryServer::new(RegistryService::new(state, shutdown.clone()))
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            DiscoveryServer::new(DiscoveryService::new(state.members(), shutdown.clone()))
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            FarmServer::new(FarmService::new(state.members(), api.supervisor.clone()))
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            ConfigServer::new(ConfigService::new(
                state.configs(),
                state.members(),
                shutdown.clone(),
            ))
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            MetricsServer::new(MetricsService::new(
                state.samples(),
                state.members(),
                shutdown.clone(),
            ))
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            LoadTestServer::new(api.load_test.clone())
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_ENCODE),
        )
        .add_service(
            CatalogServer::new(CatalogService::new(state.catalog()))
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
    *routes.axum_router_mut() = grpc.merge(http).fallback(not_found);
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
        crate::api::unimplemented(request.uri().path()).into_http()
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

/// What this port is, for a person who opens it in a browser or curl.
async fn index() -> String {
    let services: Vec<&str> = services::names().collect();
    format!(
        "farm control plane {}\n\n\
         gRPC (h2c) and gRPC-Web on this port:\n  {}\n\
         List them with `grpcurl -plaintext HOST:PORT list`.\n\n\
         HTTP: /healthz (alive), /readyz (serving, and how many nodes are healthy),\n\
         /metrics (the farm and the control plane in the Prometheus text format)\n",
        env!("CARGO_PKG_VERSION"),
        services.join("\n  "),
    )
}

/// The farm and the control plane in the Prometheus text format. The
/// farm's aggregate, the counters and `/proc` are gathered and rendered on
/// a blocking thread (the aggregate merges every node's histogram).
async fn metrics_text(State(api): State<Api>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let scrape = move || {
        // The whole farm always exists, so this cannot fail.
        let farm = api.state.samples().farm("", true).unwrap_or_default();
        let mut telemetry = api.state.telemetry().snapshot();
        telemetry.catalog.names = api.state.catalog().len() as u64;
        exposition::render(farm, telemetry, ProcessStats::read())
    };
    let rendered = match tokio::task::spawn_blocking(scrape).await {
        Ok(rendered) => rendered.map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], text).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics failed: {err}\n"),
        )
            .into_response(),
    }
}

/// Ready while serving, and while the catalog's listener (if any) accepts;
/// the body says how much of the farm is healthy, and where the catalog
/// listens.
async fn readyz(State(api): State<Api>) -> (StatusCode, String) {
    if api.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    let healthy = api.state.members().count_by_state(NodeState::Healthy);
    let desired = api.supervisor.as_ref().map_or(0, Supervisor::desired);
    let mut body = format!("ready: {healthy} nodes healthy, {desired} managed nodes desired\n");
    let mut status = StatusCode::OK;
    if let Some(indexer) = &api.indexer {
        let address = indexer.address;
        if indexer.accepting() {
            body.push_str(&format!("catalog line protocol: accepting on {address}\n"));
        } else {
            status = StatusCode::SERVICE_UNAVAILABLE;
            body = format!("not ready: the catalog line protocol is not accepting on {address}\n");
        }
    }
    (status, body)
}
