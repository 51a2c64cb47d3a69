//! `farm.v1.ControlPlane`: who the caller is to this control plane, and how
//! the control plane itself is doing. Its readiness is also what `/readyz`
//! answers, so both say the same thing.

use std::{
    net::SocketAddr,
    time::{Duration, UNIX_EPOCH},
};

use farm_api::v1::{self, ControlPlaneStatus, GetStatusRequest, control_plane_server};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    indexer, process_stats::ProcessStats, state::FarmState, supervisor::Supervisor,
    transport::auth::Role,
};

/// What the control plane says of itself.
#[derive(Debug, Clone)]
pub struct ControlPlaneService {
    state: FarmState,
    supervisor: Option<Supervisor>,
    /// The runtime's name, or `none`.
    runtime: &'static str,
    shutdown: CancellationToken,
    indexer: Option<indexer::Status>,
}

/// Whether the control plane serves, in the words `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// `ready: …` lines when ready, `not ready: …` or `shutting down`
    /// otherwise; each line ends in `\n`.
    pub text: String,
}

impl ControlPlaneService {
    pub fn new(
        state: FarmState,
        supervisor: Option<Supervisor>,
        runtime: &'static str,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            state,
            supervisor,
            runtime,
            shutdown,
            indexer: None,
        }
    }

    /// Tells it where the catalog's line protocol is served.
    pub fn with_indexer(mut self, indexer: indexer::Status) -> Self {
        self.indexer = Some(indexer);
        self
    }

    /// The managed nodes the farm is kept at (0 without a runtime).
    fn desired(&self) -> u32 {
        self.supervisor.as_ref().map_or(0, Supervisor::desired)
    }

    /// Ready while serving, while the runtime's engine (if any) answers,
    /// and while the catalog's listener (if any) accepts; says how much of
    /// the farm is healthy, and where the catalog listens.
    pub fn readiness(&self) -> Readiness {
        if self.shutdown.is_cancelled() {
            return Readiness {
                ready: false,
                text: "shutting down\n".to_owned(),
            };
        }
        if let Some(reason) = self.supervisor.as_ref().and_then(Supervisor::unavailable) {
            return Readiness {
                ready: false,
                text: format!("not ready: {reason}\n"),
            };
        }
        let healthy = self.state.members().healthy_count();
        let desired = self.desired();
        let mut text = format!("ready: {healthy} nodes healthy, {desired} managed nodes desired\n");
        if let Some(indexer) = &self.indexer {
            let address = indexer.address;
            if !indexer.accepting() {
                return Readiness {
                    ready: false,
                    text: format!(
                        "not ready: the catalog line protocol is not accepting on {address}\n"
                    ),
                };
            }
            text.push_str(&format!("catalog line protocol: accepting on {address}\n"));
        }
        Readiness { ready: true, text }
    }

    fn status(&self, role: Option<Role>, process: ProcessStats) -> ControlPlaneStatus {
        let readiness = self.readiness();
        let telemetry = self.state.telemetry().snapshot();
        let (calls, failed_calls) = telemetry.rpcs.values().fold((0, 0), |(all, failed), m| {
            let ok = m.codes.get("OK").copied().unwrap_or(0);
            (all + m.count, failed + m.count.saturating_sub(ok))
        });
        let started_at = process
            .start_time_seconds
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map(|since| prost_types::Timestamp::from(UNIX_EPOCH + since));
        ControlPlaneStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // With no tokens configured every call passes without a role,
            // and may do what an admin may.
            role: match role {
                None | Some(Role::Admin) => v1::Role::Admin,
                Some(Role::Node) => v1::Role::Node,
                Some(Role::Viewer) => v1::Role::Viewer,
            }
            .into(),
            tokens_required: role.is_some(),
            started_at,
            runtime: self.runtime.to_owned(),
            desired_nodes: self.desired(),
            ready: readiness.ready,
            not_ready_reason: if readiness.ready {
                String::new()
            } else {
                readiness.text.trim_end().to_owned()
            },
            resident_bytes: process.resident_bytes.unwrap_or(0),
            cpu_seconds: process.cpu_seconds.unwrap_or(0.0),
            open_fds: process.open_fds.unwrap_or(0),
            max_fds: process.max_fds.unwrap_or(0),
            threads: process.threads.unwrap_or(0),
            heartbeat_streams: u64::try_from(telemetry.heartbeat_streams).unwrap_or(0),
            calls,
            failed_calls,
            catalog_line_address: self
                .indexer
                .as_ref()
                .map(|i| i.address)
                .as_ref()
                .map(SocketAddr::to_string)
                .unwrap_or_default(),
            catalog_names: self.state.catalog().len() as u64,
        }
    }
}

#[tonic::async_trait]
impl control_plane_server::ControlPlane for ControlPlaneService {
    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<ControlPlaneStatus>, Status> {
        let role = request.extensions().get::<Role>().copied();
        // `/proc` is read off the async workers.
        let process = tokio::task::spawn_blocking(ProcessStats::read)
            .await
            .unwrap_or_default();
        Ok(Response::new(self.status(role, process)))
    }
}
