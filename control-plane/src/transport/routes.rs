//! Every route of the port: the farm's gRPC services, health, reflection
//! (v1 and v1alpha), the dashboard at `/` (the bundle `web/dist`, embedded
//! at build time), and the plain HTTP endpoints `/healthz`, `/readyz` and
//! `/metrics`.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, routing::get};
use farm_api::v1::{
    catalog_server::CatalogServer, config_server::ConfigServer,
    control_plane_server::ControlPlaneServer, discovery_server::DiscoveryServer,
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
        CatalogService, ConfigService, ControlPlaneService, DiscoveryService, FarmHistory,
        FarmService, LoadTestService, MetricsService, RegistryService,
    },
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
    /// What the control plane says of itself (and `/readyz` answers).
    pub(crate) control_plane: ControlPlaneService,
    /// The farm's last ten minutes (`GetFarmHistory`).
    pub(crate) history: FarmHistory,
}

impl Api {
    /// What the routes serve: the farm's state, and its supervisor when
    /// this control plane runs nodes on `runtime` (`none` otherwise).
    pub(crate) fn new(
        state: FarmState,
        supervisor: Option<Supervisor>,
        runtime: &'static str,
    ) -> Self {
        let shutdown = CancellationToken::new();
        Self {
            load_test: LoadTestService::new(state.members(), shutdown.clone()),
            control_plane: ControlPlaneService::new(
                state.clone(),
                supervisor.clone(),
                runtime,
                shutdown.clone(),
            ),
            history: FarmHistory::default(),
            state,
            supervisor,
            shutdown,
        }
    }

    /// Records the farm's history, a point every `every`, until shutdown.
    pub(crate) fn record_history(&self, every: Duration) {
        tokio::spawn(self.history.clone().record(
            self.state.samples(),
            every,
            self.shutdown.clone(),
        ));
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
                api.history.clone(),
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
        .add_service(ControlPlaneServer::new(api.control_plane.clone()))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let mut routes = routes.routes();
    let http = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(api.clone())
        .merge(dashboard());
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

/// The dashboard: `index.html` at `/`, revalidated on every load (it names
/// the current bundle); the script and stylesheet, whose names carry their
/// content's hash, cached for good. Served gzip or brotli compressed as the
/// browser accepts, with ETags.
fn dashboard() -> axum::Router {
    memory_serve::load!()
        .index_file(Some("/index.html"))
        .html_cache_control(memory_serve::CacheControl::NoCache)
        .cache_control(memory_serve::CacheControl::Long)
        .enable_gzip(true)
        // Release builds brotli-compress at build time; a debug build would
        // compress when it starts, which takes over a second.
        .enable_brotli(!cfg!(debug_assertions))
        .into_router()
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

/// What `GetStatus` says of readiness, for probes.
async fn readyz(State(api): State<Api>) -> (StatusCode, String) {
    let readiness = api.control_plane.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, readiness.text)
}
