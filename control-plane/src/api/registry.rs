//! `farm.v1.Registry`: registration and the heartbeat stream.

use std::{pin::Pin, sync::Arc, time::Duration};

use farm_api::{
    node::Settings,
    v1::{
        DeregisterRequest, DeregisterResponse, EffectiveConfig, HeartbeatRequest,
        HeartbeatResponse, RegisterRequest, RegisterResponse, registry_server::Registry,
    },
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument};

use super::{
    ApiError, BadRequest, config::effective_message, labels, metrics::sample_from_message,
};
use crate::{
    core::{HealthPolicy, RegistrationRequest, config::Effective},
    state::{Configs, FarmState, Members, Samples},
    telemetry::Telemetry,
};

/// Acknowledgements queued per stream before the node is considered stuck.
const ACK_QUEUE: usize = 16;

/// The Registry service.
#[derive(Debug, Clone)]
pub struct RegistryService {
    members: Members,
    configs: Configs,
    samples: Samples,
    telemetry: Arc<Telemetry>,
    /// Cancelled at shutdown: open heartbeat streams end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl RegistryService {
    pub fn new(state: &FarmState, shutdown: CancellationToken) -> Self {
        Self {
            members: state.members(),
            configs: state.configs(),
            samples: state.samples(),
            telemetry: Arc::clone(state.telemetry()),
            shutdown,
        }
    }
}

fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// What a heartbeat stream owes its node: the effective configuration when
/// it differs from what the node reports and was not sent yet, and the
/// interval to keep.
struct Pusher {
    effective: Option<Effective>,
    policy: HealthPolicy,
    /// Version the node last reported applying.
    reported: u64,
    /// Version last sent on this stream (none yet: `None`).
    pushed: Option<u64>,
    interval_ms: u32,
}

impl Pusher {
    fn new(effective: Option<Effective>, policy: HealthPolicy) -> Self {
        let mut pusher = Self {
            effective: None,
            policy,
            reported: 0,
            pushed: None,
            interval_ms: millis(policy.heartbeat_interval),
        };
        pusher.update(effective);
        pusher
    }

    fn update(&mut self, effective: Option<Effective>) {
        self.interval_ms = millis(effective_interval(effective.as_ref(), self.policy));
        self.effective = effective;
    }

    /// The configuration to send now, if any. A node reporting another
    /// version than the effective one (older, or from a wiped farm) gets it.
    fn due(&mut self) -> Option<EffectiveConfig> {
        let effective = self.effective.as_ref()?;
        if effective.version == self.reported || self.pushed == Some(effective.version) {
            return None;
        }
        self.pushed = Some(effective.version);
        Some(effective_message(effective))
    }
}

/// A node's heartbeat interval: its configured `heartbeat_interval_ms`, as
/// the node itself reads it (`farm_api::node`), at most half the heartbeat
/// timeout (so a configured interval never makes a live node miss its
/// deadline); the default otherwise.
fn effective_interval(effective: Option<&Effective>, policy: HealthPolicy) -> Duration {
    effective
        .and_then(|e| e.data.as_object())
        .and_then(|data| Settings::from_config(0, data).0.heartbeat_interval_ms)
        .map_or(policy.heartbeat_interval, |ms| {
            Duration::from_millis(u64::from(ms)).min(policy.heartbeat_timeout / 2)
        })
}

impl TryFrom<RegisterRequest> for RegistrationRequest {
    type Error = BadRequest;

    fn try_from(request: RegisterRequest) -> Result<Self, BadRequest> {
        let identity = match (request.node_id.is_empty(), request.secret.is_empty()) {
            (true, true) => None,
            (true, false) => return Err(BadRequest::Rule("secret given without node_id")),
            (false, _) => Some((request.node_id, request.secret)),
        };
        Ok(RegistrationRequest {
            name: request.name,
            address: request.address,
            group: request.group,
            labels: labels(request.labels),
            identity,
        })
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    #[instrument(skip_all, fields(node.name = %request.get_ref().name))]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let registered = self
            .members
            .register(request.into_inner().try_into()?)
            .await?;
        let policy = self.members.policy();
        self.telemetry.registered(registered.reattached);
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
        let (members, configs, samples) = (
            self.members.clone(),
            self.configs.clone(),
            self.samples.clone(),
        );
        let telemetry = Arc::clone(&self.telemetry);
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
                let refused = BadRequest::Rule("the first heartbeat must carry node_id and secret");
                let _ = tx.send(Err(refused.into())).await;
                return;
            }
            let (id, epoch) = match members.open_stream(&first.node_id, &first.secret) {
                Ok(opened) => opened,
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
            debug!(node.id = %id, epoch, "heartbeat stream opened");
            let _open = telemetry.heartbeat_stream();
            let policy = members.policy();
            let mut changes = configs.changes();
            let mut pusher = Pusher::new(configs.effective(id).ok(), policy);
            let mut message = first;
            loop {
                if let Err(err) =
                    members.heartbeat(id, epoch, message.config_version, message.serving)
                {
                    let _ = tx.send(Err(err.into())).await;
                    break;
                }
                if let Some(sample) = message.metrics.take() {
                    let sample = sample_from_message(sample, std::time::SystemTime::now());
                    samples.record(id, sample);
                }
                pusher.reported = message.config_version;
                let ack = HeartbeatResponse {
                    ack_seq: message.seq,
                    heartbeat_interval_ms: pusher.interval_ms,
                    config: pusher.due(),
                };
                if ack.config.is_some() {
                    telemetry.config_pushed();
                }
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
                // Wait for the next heartbeat, pushing configuration changes
                // the moment they are written.
                let next = loop {
                    tokio::select! {
                        next = inbound.message() => break next,
                        changed = changes.changed() => {
                            if changed.is_err() {
                                break Ok(None);
                            }
                            pusher.update(configs.effective(id).ok());
                            if let Some(config) = pusher.due() {
                                let push = HeartbeatResponse {
                                    ack_seq: 0,
                                    heartbeat_interval_ms: pusher.interval_ms,
                                    config: Some(config),
                                };
                                telemetry.config_pushed();
                                if tx.send(Ok(push)).await.is_err() {
                                    break Ok(None);
                                }
                            }
                        }
                        () = shutdown.cancelled() => {
                            let _ = tx.send(Err(ApiError::ShuttingDown.into())).await;
                            break Ok(None);
                        }
                    }
                };
                message = match next {
                    Ok(Some(next)) => next,
                    Ok(None) | Err(_) => break,
                };
            }
            members.close_stream(id, epoch);
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
            return Err(BadRequest::Rule("node_id and secret are required").into());
        }
        let id = self
            .members
            .deregister(&request.node_id, &request.secret)
            .await?;
        info!(node.id = %id, "node deregistered");
        Ok(Response::new(DeregisterResponse {}))
    }
}
