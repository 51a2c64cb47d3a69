//! `farm.v1.Registry`: registration and the heartbeat stream.

use std::pin::Pin;

use farm_api::v1::{
    DeregisterRequest, DeregisterResponse, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse, registry_server::Registry,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument};

use super::labels;
use crate::{core::RegistrationRequest, state::FarmState};

/// Acknowledgements queued per stream before the node is considered stuck.
const ACK_QUEUE: usize = 16;

/// The Registry service.
#[derive(Debug, Clone)]
pub struct RegistryService {
    state: FarmState,
    /// Cancelled at shutdown: open heartbeat streams end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl RegistryService {
    pub fn new(state: FarmState, shutdown: CancellationToken) -> Self {
        Self { state, shutdown }
    }
}

fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl Registry for RegistryService {
    #[instrument(skip_all, fields(node.name = %request.get_ref().name))]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        let identity = match (request.node_id.is_empty(), request.secret.is_empty()) {
            (true, true) => None,
            (true, false) => {
                return Err(Status::invalid_argument("secret given without node_id"));
            }
            (false, _) => Some((request.node_id, request.secret)),
        };
        let state = self.state.clone();
        let registered = tokio::task::spawn_blocking(move || {
            state.register(RegistrationRequest {
                name: request.name,
                address: request.address,
                group: request.group,
                labels: labels(request.labels),
                identity,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("registration task failed: {e}")))??;
        let policy = self.state.policy();
        if registered.reattached {
            debug!(node.id = %registered.id, "node re-attached");
        } else {
            info!(node.id = %registered.id, "node registered");
        }
        Ok(Response::new(RegisterResponse {
            node_id: registered.id.to_string(),
            secret: registered.secret.unwrap_or_default(),
            heartbeat_interval_ms: millis(policy.heartbeat_interval),
            heartbeat_timeout_ms: millis(policy.heartbeat_timeout),
            reattached: registered.reattached,
        }))
    }

    type HeartbeatStream =
        Pin<Box<dyn Stream<Item = Result<HeartbeatResponse, Status>> + Send + 'static>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let mut inbound = request.into_inner();
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        // The response starts at once; the node's first message (its
        // credentials) is read in the task, so a client that waits for
        // response headers before sending cannot deadlock.
        tokio::spawn(async move {
            let first = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => message,
                    _ => return,
                },
                () = shutdown.cancelled() => return,
            };
            if first.node_id.is_empty() || first.secret.is_empty() {
                let _ = tx
                    .send(Err(Status::invalid_argument(
                        "the first heartbeat must carry node_id and secret",
                    )))
                    .await;
                return;
            }
            let (id, epoch) = match state.open_stream(&first.node_id, &first.secret) {
                Ok(opened) => opened,
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
            debug!(node.id = %id, epoch, "heartbeat stream opened");
            let interval = millis(state.policy().heartbeat_interval);
            let mut message = first;
            loop {
                if let Err(err) =
                    state.heartbeat(id, epoch, message.config_version, message.serving)
                {
                    let _ = tx.send(Err(err.into())).await;
                    break;
                }
                let ack = HeartbeatResponse {
                    ack_seq: message.seq,
                    heartbeat_interval_ms: interval,
                    config: None,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
                message = tokio::select! {
                    next = inbound.message() => match next {
                        Ok(Some(next)) => next,
                        Ok(None) | Err(_) => break,
                    },
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the control plane is shutting down"))).await;
                        break;
                    }
                };
            }
            state.close_stream(id, epoch);
            debug!(node.id = %id, epoch, "heartbeat stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let request = request.into_inner();
        if request.node_id.is_empty() || request.secret.is_empty() {
            return Err(Status::invalid_argument("node_id and secret are required"));
        }
        let state = self.state.clone();
        let id = tokio::task::spawn_blocking(move || {
            state.deregister(&request.node_id, &request.secret)
        })
        .await
        .map_err(|e| Status::internal(format!("deregistration task failed: {e}")))??;
        info!(node.id = %id, "node deregistered");
        Ok(Response::new(DeregisterResponse {}))
    }
}
