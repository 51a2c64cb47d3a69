//! `farm.v1.Registry`: registration and the heartbeat stream.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use farm_api::{
    node::Settings,
    v1::{
        DeregisterRequest, DeregisterResponse, EffectiveConfig, HeartbeatRequest,
        HeartbeatResponse, NodeExit, RegisterRequest, RegisterResponse, registry_server::Registry,
    },
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::WatchStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument};

use super::{
    ApiError, BadRequest, config::effective_message, labels, metrics::sample_from_message,
};
use crate::{
    core::{HealthPolicy, NodeId, RegistrationRequest, config::Effective},
    state::{Configs, ExitAsk, FarmState, Members, Samples},
    telemetry::{StreamGuard, Telemetry},
};

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

/// One node's heartbeat stream: reads its heartbeats and answers each,
/// and pushes configuration changes the moment they are written.
struct HeartbeatStream {
    inbound: Streaming<HeartbeatRequest>,
    members: Members,
    configs: Configs,
    samples: Samples,
    telemetry: Arc<Telemetry>,
    /// Resolves at shutdown: the stream ends with UNAVAILABLE. Made once
    /// and kept, like `Opened::changes`: a wait made afresh for every
    /// heartbeat joined and left the token's list of waiters each time,
    /// under its lock, for every node.
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set once the first message proved the node's identity.
    open: Option<Opened>,
    /// Nothing more is sent once set.
    ended: bool,
}

/// An authenticated stream. Dropping it (the node went away, or the stream
/// ended) records the stream's end.
struct Opened {
    id: NodeId,
    epoch: u64,
    members: Members,
    pusher: Pusher,
    changes: WatchStream<u64>,
    /// Requests to end the node's process.
    exits: mpsc::Receiver<ExitAsk>,
    _counted: StreamGuard,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.members.close_stream(self.id, self.epoch);
        debug!(node.id = %self.id, epoch = self.epoch, "heartbeat stream closed");
    }
}

/// A message read from the node, or what the stream ends with (marking it
/// ended): nothing when the node closed it, the status when a message did
/// not decode or was over the size limit.
fn received(
    ended: &mut bool,
    next: Result<Option<HeartbeatRequest>, Status>,
) -> Result<HeartbeatRequest, Option<Result<HeartbeatResponse, Status>>> {
    match next {
        Ok(Some(message)) => Ok(message),
        Ok(None) => {
            *ended = true;
            Err(None)
        }
        Err(status) => {
            *ended = true;
            Err(Some(Err(status)))
        }
    }
}

impl HeartbeatStream {
    /// The next message to send the node; `None` ends the stream.
    async fn next(&mut self) -> Option<Result<HeartbeatResponse, Status>> {
        if self.ended {
            return None;
        }
        let Some(opened) = self.open.as_mut() else {
            let first = tokio::select! {
                message = self.inbound.message() => message,
                () = &mut self.stopping => Ok(None),
            };
            let first = match received(&mut self.ended, first) {
                Ok(first) => first,
                Err(end) => return end,
            };
            let answer = self.open(&first).and_then(|opened| {
                let opened = self.open.insert(opened);
                beat(opened, &self.samples, &self.telemetry, first)
            });
            self.ended = answer.is_err();
            return Some(answer);
        };
        loop {
            tokio::select! {
                next = self.inbound.message() => {
                    let message = match received(&mut self.ended, next) {
                        Ok(message) => message,
                        Err(end) => return end,
                    };
                    let answer = beat(opened, &self.samples, &self.telemetry, message);
                    self.ended = answer.is_err();
                    return Some(answer);
                }
                changed = opened.changes.next() => {
                    if changed.is_none() {
                        self.ended = true;
                        return None;
                    }
                    opened.pusher.update(self.configs.effective(opened.id).ok());
                    if let Some(config) = opened.pusher.due() {
                        self.telemetry.config_pushed();
                        return Some(Ok(HeartbeatResponse {
                            ack_seq: 0,
                            heartbeat_interval_ms: opened.pusher.interval_ms,
                            config: Some(config),
                            exit: None,
                        }));
                    }
                }
                Some(ask) = opened.exits.recv() => {
                    info!(node.id = %opened.id, immediate = ask.immediate, reason = %ask.reason, "asking the node to end its process");
                    return Some(Ok(HeartbeatResponse {
                        ack_seq: 0,
                        heartbeat_interval_ms: opened.pusher.interval_ms,
                        config: None,
                        exit: Some(NodeExit {
                            immediate: ask.immediate,
                            reason: ask.reason,
                        }),
                    }));
                }
                () = &mut self.stopping => {
                    self.ended = true;
                    return Some(Err(ApiError::ShuttingDown.into()));
                }
            }
        }
    }

    /// Checks the credentials the first message carries and opens the
    /// node's stream.
    fn open(&self, first: &HeartbeatRequest) -> Result<Opened, Status> {
        if first.node_id.is_empty() || first.secret.is_empty() {
            return Err(
                BadRequest::Rule("the first heartbeat must carry node_id and secret").into(),
            );
        }
        let (id, epoch) = self.members.open_stream(&first.node_id, &first.secret)?;
        debug!(node.id = %id, epoch, "heartbeat stream opened");
        Ok(Opened {
            id,
            epoch,
            members: self.members.clone(),
            pusher: Pusher::new(self.configs.effective(id).ok(), self.members.policy()),
            changes: WatchStream::from_changes(self.configs.changes()),
            exits: self.members.exit_asks(id, epoch),
            _counted: self.telemetry.heartbeat_stream(),
        })
    }
}

/// Records one heartbeat and its sample, and answers it (with the
/// configuration when the node reports another version than it should run).
fn beat(
    opened: &mut Opened,
    samples: &Samples,
    telemetry: &Telemetry,
    mut message: HeartbeatRequest,
) -> Result<HeartbeatResponse, Status> {
    opened.members.heartbeat(
        opened.id,
        opened.epoch,
        message.config_version,
        message.serving,
    )?;
    if let Some(sample) = message.metrics.take() {
        samples.record(opened.id, sample_from_message(sample, SystemTime::now()));
    }
    opened.pusher.reported = message.config_version;
    let ack = HeartbeatResponse {
        ack_seq: message.seq,
        heartbeat_interval_ms: opened.pusher.interval_ms,
        config: opened.pusher.due(),
        exit: None,
    };
    if ack.config.is_some() {
        telemetry.config_pushed();
    }
    Ok(ack)
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
        // The response starts at once and its body does the work: the
        // node's first message (its credentials) is read when the body is
        // first polled, so a client that waits for response headers before
        // sending cannot deadlock, and no task or queue of our own sits
        // between a heartbeat and its acknowledgement.
        let stream = HeartbeatStream {
            inbound: request.into_inner(),
            members: self.members.clone(),
            configs: self.configs.clone(),
            samples: self.samples.clone(),
            telemetry: Arc::clone(&self.telemetry),
            stopping: Box::pin(self.shutdown.clone().cancelled_owned()),
            open: None,
            ended: false,
        };
        // Boxed: the state moves in and out of each step's future.
        let acks = futures::stream::unfold(Box::new(stream), |mut stream| async move {
            let next = stream.next().await?;
            Some((next, stream))
        });
        Ok(Response::new(Box::pin(acks)))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use farm_api::v1::registry_server::RegistryServer;
    use farm_node::{Ended, NodeConfig};
    use farm_testkit::{Node, eventually, ready_if};
    use tokio::net::TcpListener;
    use tonic::transport::{Server, server::TcpIncoming};

    use super::*;
    use crate::core::NodeState;

    /// The path a node action takes to a node whose host the control plane
    /// cannot act on: a real node, asked over its heartbeat stream, ends its
    /// run as asked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_asked_to_exit_over_its_stream_ends_as_asked() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let state = FarmState::open_default(dir.path()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let service = RegistryServer::new(RegistryService::new(&state, CancellationToken::new()));
        let server = tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let members = state.members();
        for (name, immediate) in [("killed", true), ("stopped", false)] {
            let node = Node::start(NodeConfig::new(&url, name)).await;
            let id = eventually(
                format!("{name} to heartbeat"),
                Duration::from_secs(15),
                || async {
                    let id = members.id_of(name);
                    let healthy = id
                        .and_then(|id| members.node(id).ok())
                        .is_some_and(|n| n.state == NodeState::Healthy);
                    ready_if(healthy, id).map(|id| id.expect("registered"))
                },
            )
            .await;
            let ask = ExitAsk {
                immediate,
                reason: "test".into(),
            };
            assert!(members.ask_to_exit(id, ask.clone()), "{name} has a stream");
            assert_eq!(
                node.ended().await.expect("the node's run"),
                Ended::Asked { immediate },
                "{name}"
            );
            // Its stream closed with it: nothing hears a second request.
            eventually(
                format!("{name}'s stream to close"),
                Duration::from_secs(15),
                || async { ready_if(!members.ask_to_exit(id, ask.clone()), ()) },
            )
            .await;
        }
        server.abort();
    }
}
