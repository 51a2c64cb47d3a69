//! The agent loop: register (re-attaching under the cached identity), then
//! keep one bidirectional heartbeat stream open at the interval the control
//! plane asks for. When the control plane goes away, reconnect with
//! exponential backoff and full jitter, and re-attach under the same id.
//!
//! Configuration comes down the same stream: the agent applies each pushed
//! configuration at once, reports its version in an immediate heartbeat
//! (and in every one after), and hands it to the cache writer
//! ([`crate::cache::keep_latest`]), a task beside the loop that saves the
//! latest applied configuration so that the next start applies it before
//! the control plane answers. The loop never waits for the disk; versions
//! arriving during a save, or in the short spacing after it, are written
//! once, as the newest, and the latest is on disk before [`Agent::run`]
//! returns.

use std::{sync::Arc, time::Duration};

use farm_api::Bearer;
use farm_api::v1::{
    HeartbeatRequest, NodeExit, NodeSample, RegisterRequest, RegisterResponse,
    registry_client::RegistryClient,
};
use rand::Rng;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tracing::{debug, error, info, warn};

use crate::{
    cache::{self, ConfigCache},
    config::NodeConfig,
    identity::{Identity, IdentityStore},
    settings::NodeConfigData,
    workload::NodeStatus,
};

/// First reconnect delay (before jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay (before jitter).
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Interval used until the control plane names one.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest interval the node accepts, whatever it is told.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

type Client = RegistryClient<InterceptedService<Channel, Bearer>>;

/// A connection to the control plane that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The control plane URL is not a valid endpoint.
    #[error("invalid control plane URL {url:?}: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    /// The token cannot travel in a header.
    #[error("the token cannot be sent as a header value")]
    Token,
}

/// Exponential backoff with full jitter: each delay is drawn uniformly from
/// zero to the current ceiling, which doubles up to the cap. Nodes that lost
/// the same control plane at the same moment spread their reconnects.
#[derive(Debug)]
pub struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            ceiling: BACKOFF_BASE,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let delay = rand::rng().random_range(Duration::ZERO..=self.ceiling);
        self.ceiling = (self.ceiling * 2).min(BACKOFF_CAP);
        delay
    }

    /// Back to the shortest delay, after a connection that worked.
    pub fn reset(&mut self) {
        self.ceiling = BACKOFF_BASE;
    }
}

/// How a heartbeat stream ended.
enum StreamEnd {
    /// The node is shutting down.
    Shutdown,
    /// The control plane does not know (or no longer accepts) this identity.
    Forgotten(Status),
    /// The connection or the stream broke; re-attach.
    Lost(String),
}

/// The agent: everything it needs to register and heartbeat.
#[derive(Debug)]
pub struct Agent {
    client: Client,
    config: NodeConfig,
    status: Arc<NodeStatus>,
    identities: IdentityStore,
    configs: ConfigCache,
    /// The configuration applied last (version 0 and empty before any);
    /// the cache writer saves what it holds.
    applied: watch::Sender<NodeConfigData>,
    shutdown: CancellationToken,
    /// Set when the control plane asks the node to end its process.
    asked: watch::Sender<Option<NodeExit>>,
}

impl Agent {
    /// Prepares the agent; connects lazily, so a control plane that is not
    /// up yet is retried rather than fatal.
    pub fn new(
        config: NodeConfig,
        status: Arc<NodeStatus>,
        shutdown: CancellationToken,
        asked: watch::Sender<Option<NodeExit>>,
    ) -> Result<Self, AgentError> {
        let url_err = |source| AgentError::Url {
            url: config.control_plane.clone(),
            source,
        };
        let endpoint = Endpoint::from_shared(config.control_plane.clone())
            .map_err(url_err)?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            // A control plane frozen mid-stream is noticed by pings too.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let token = Bearer::new(config.token.as_deref()).map_err(|_| AgentError::Token)?;
        let client = RegistryClient::with_interceptor(endpoint.connect_lazy(), token);
        let identities = IdentityStore::new(config.cache_dir.as_deref());
        let configs = ConfigCache::new(config.cache_dir.as_deref());
        Ok(Self {
            client,
            config,
            status,
            identities,
            configs,
            applied: watch::Sender::new(NodeConfigData::default()),
            shutdown,
            asked,
        })
    }

    /// The newest sample if no heartbeat carried it yet.
    fn next_sample(&self) -> Option<NodeSample> {
        self.status.metrics.take_unsent()
    }

    /// Applies the cached configuration, if any: a node runs as it was
    /// last configured whether or not the control plane answers.
    pub fn apply_cached_config(&mut self) {
        if let Some(cached) = self.configs.load() {
            self.status.apply_config(&cached, "cache");
            // Already on disk: the cache writer starts from it.
            self.applied.send_replace(cached);
        }
    }

    /// Applies a configuration pushed by the control plane, unless it is the
    /// one already applied, and hands it to the cache writer; `true` when
    /// it was applied.
    fn apply_pushed(&mut self, pushed: NodeConfigData) -> bool {
        if *self.applied.borrow() == pushed {
            return false;
        }
        self.status.apply_config(&pushed, "control plane");
        self.applied.send_replace(pushed);
        true
    }

    /// Runs until shutdown, the cache writer beside it; returns once the
    /// latest applied configuration is cached. Never deregisters: a stopped
    /// node keeps its identity and re-attaches when it starts again.
    pub async fn run(mut self) {
        let writer = tokio::spawn(cache::keep_latest(
            self.configs.clone(),
            self.applied.subscribe(),
            self.shutdown.clone(),
        ));
        self.attach().await;
        // Closes the channel: the writer saves what it has not saved yet,
        // then ends.
        drop(self);
        if let Err(err) = writer.await {
            warn!(cause = %err, "the configuration cache writer failed");
        }
    }

    /// Registers and heartbeats, re-attaching after any loss, until
    /// shutdown.
    async fn attach(&mut self) {
        let mut identity = self.identities.load();
        let mut backoff = Backoff::new();
        let mut last_problem = String::new();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let (identity_now, registered) = match self.register(identity.clone()).await {
                Ok(registered) => registered,
                Err(RegisterError::Stale(status)) => {
                    warn!(code = ?status.code(), cause = status.message(), "the control plane refused the cached identity; registering anew");
                    self.identities.clear();
                    identity = None;
                    continue;
                }
                Err(RegisterError::Failed(status)) => {
                    let problem = format!("{:?}: {}", status.code(), status.message());
                    if problem != last_problem {
                        // Said once per kind of problem, not at every retry.
                        if status.code() == Code::Unavailable {
                            warn!(control_plane = %self.config.control_plane, cause = %problem, "cannot reach the control plane; retrying");
                        } else {
                            error!(control_plane = %self.config.control_plane, cause = %problem, "registration refused; retrying");
                        }
                        last_problem = problem;
                    }
                    if !self.pause(backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
            };
            if registered.reattached {
                info!(node.id = %identity_now.node_id, "re-attached to the control plane");
            } else {
                info!(node.id = %identity_now.node_id, "registered with the control plane");
            }
            last_problem.clear();
            self.status.set_node_id(&identity_now.node_id);
            let end = self
                .heartbeat(&identity_now, &registered, &mut backoff)
                .await;
            self.status.set_connected(false);
            match end {
                StreamEnd::Shutdown => return,
                StreamEnd::Forgotten(status) => {
                    warn!(node.id = %identity_now.node_id, code = ?status.code(), cause = status.message(), "the control plane forgot this node; registering anew");
                    self.identities.clear();
                    identity = None;
                }
                StreamEnd::Lost(cause) => {
                    warn!(node.id = %identity_now.node_id, %cause, "heartbeat stream lost; re-attaching");
                    identity = Some(identity_now);
                }
            }
            if !self.pause(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Sleeps, unless shutdown comes first (then `false`).
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    async fn register(
        &mut self,
        identity: Option<Identity>,
    ) -> Result<(Identity, RegisterResponse), RegisterError> {
        let reattaching = identity.is_some();
        let (node_id, secret) = identity.map(|i| (i.node_id, i.secret)).unwrap_or_default();
        let request = RegisterRequest {
            name: self.config.name.clone(),
            address: self.status.address.clone(),
            group: self.config.group.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            node_id: node_id.clone(),
            secret: secret.clone(),
        };
        let response = tokio::select! {
            response = self.client.register(request) => response,
            () = self.shutdown.cancelled() => {
                return Err(RegisterError::Failed(Status::cancelled("shutting down")));
            }
        };
        let response = match response {
            Ok(response) => response.into_inner(),
            Err(status)
                if reattaching
                    && matches!(status.code(), Code::NotFound | Code::PermissionDenied) =>
            {
                return Err(RegisterError::Stale(status));
            }
            Err(status) => return Err(RegisterError::Failed(status)),
        };
        let identity = if response.secret.is_empty() {
            Identity {
                node_id: response.node_id.clone(),
                secret,
            }
        } else {
            let identity = Identity {
                node_id: response.node_id.clone(),
                secret: response.secret.clone(),
            };
            if let Err(err) = self.identities.save(&identity) {
                warn!(cause = %err, "cannot cache the identity; a restart will register a new node");
            }
            identity
        };
        if identity.secret.is_empty() {
            return Err(RegisterError::Failed(Status::internal(
                "the control plane issued an identity without a secret",
            )));
        }
        Ok((identity, response))
    }

    /// One heartbeat stream, from its first message to its end.
    async fn heartbeat(
        &mut self,
        identity: &Identity,
        registered: &RegisterResponse,
        backoff: &mut Backoff,
    ) -> StreamEnd {
        let configured = self.status.settings().heartbeat_interval_ms;
        let mut interval = interval_of(registered.heartbeat_interval_ms, configured);
        // Without an acknowledgement for this long the control plane is
        // considered gone (a frozen process keeps its socket open).
        let timeout = Duration::from_millis(u64::from(registered.heartbeat_timeout_ms));
        let stall = timeout.max(interval * 3) + interval;

        let (tx, rx) = mpsc::channel(4);
        let mut seq = 1;
        let first = HeartbeatRequest {
            node_id: identity.node_id.clone(),
            secret: identity.secret.clone(),
            seq,
            config_version: self.applied.borrow().version,
            serving: true,
            metrics: self.next_sample(),
        };
        if tx.send(first).await.is_err() {
            return StreamEnd::Lost("the stream closed before its first message".into());
        }
        let response = tokio::select! {
            response = self.client.heartbeat(ReceiverStream::new(rx)) => response,
            () = self.shutdown.cancelled() => return StreamEnd::Shutdown,
        };
        let mut acks = match response {
            Ok(response) => response.into_inner(),
            Err(status) => return end_of(status),
        };
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return StreamEnd::Shutdown,
                _ = ticker.tick() => {
                    if last_ack.elapsed() > stall {
                        return StreamEnd::Lost(format!("no acknowledgement for {:?}", last_ack.elapsed()));
                    }
                    seq += 1;
                    let beat = HeartbeatRequest {
                        seq,
                        config_version: self.applied.borrow().version,
                        serving: true,
                        metrics: self.next_sample(),
                        ..Default::default()
                    };
                    // A full queue means the control plane is not reading:
                    // skip this beat; the stall check above decides.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(beat) {
                        return StreamEnd::Lost("the request stream closed".into());
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        last_ack = Instant::now();
                        if let Some(exit) = ack.exit {
                            warn!(node.id = %identity.node_id, immediate = exit.immediate, reason = %exit.reason, "the control plane asks this node to end its process");
                            self.asked.send_replace(Some(exit));
                            return StreamEnd::Shutdown;
                        }
                        if !self.status.connected() {
                            self.status.set_connected(true);
                            backoff.reset();
                            debug!(node.id = %identity.node_id, "heartbeat stream open");
                        }
                        if let Some(pushed) = &ack.config
                            && self.apply_pushed(NodeConfigData::from_proto(pushed))
                        {
                            // Report the new version now rather than at the
                            // next tick; if the queue is full, that tick
                            // reports it.
                            seq += 1;
                            let beat = HeartbeatRequest {
                                seq,
                                config_version: self.applied.borrow().version,
                                serving: true,
                                ..Default::default()
                            };
                            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(beat) {
                                return StreamEnd::Lost("the request stream closed".into());
                            }
                        }
                        // A message that only pushes a configuration may name
                        // no interval: keep the current one.
                        if ack.heartbeat_interval_ms != 0 {
                            let asked = interval_of(ack.heartbeat_interval_ms, None);
                            if asked != interval {
                                info!(from = ?interval, to = ?asked, "heartbeat interval changed");
                                interval = asked;
                                ticker = tokio::time::interval_at(Instant::now() + interval, interval);
                                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            }
                        }
                    }
                    Ok(None) => return StreamEnd::Lost("the control plane closed the stream".into()),
                    Err(status) => return end_of(status),
                },
            }
        }
    }
}

enum RegisterError {
    /// The cached identity is unknown or refused: register anew.
    Stale(Status),
    /// Anything else: retry after a pause.
    Failed(Status),
}

fn end_of(status: Status) -> StreamEnd {
    match status.code() {
        Code::NotFound | Code::PermissionDenied => StreamEnd::Forgotten(status),
        code => StreamEnd::Lost(format!("{code:?}: {}", status.message())),
    }
}

/// The interval to keep: the one the control plane names, else the
/// configured one, else the default.
fn interval_of(millis: u32, configured: Option<u32>) -> Duration {
    match (millis, configured) {
        (0, None | Some(0)) => DEFAULT_INTERVAL,
        (0, Some(millis)) | (millis, _) => {
            Duration::from_millis(u64::from(millis)).max(MIN_INTERVAL)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new();
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let before = backoff.ceiling;
            let delay = backoff.next_delay();
            assert!(delay <= before, "{delay:?} above ceiling {before:?}");
            ceilings.push(before);
        }
        assert_eq!(ceilings[0], BACKOFF_BASE);
        assert_eq!(ceilings[1], BACKOFF_BASE * 2);
        assert_eq!(*ceilings.last().expect("ceilings"), BACKOFF_CAP);
        backoff.reset();
        assert_eq!(backoff.ceiling, BACKOFF_BASE);
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(interval_of(0, None), DEFAULT_INTERVAL);
        assert_eq!(interval_of(1, None), MIN_INTERVAL);
        assert_eq!(interval_of(250, None), Duration::from_millis(250));
        // The control plane's interval wins over the configured one, which
        // wins over the default.
        assert_eq!(interval_of(250, Some(40)), Duration::from_millis(250));
        assert_eq!(interval_of(0, Some(40)), Duration::from_millis(40));
        assert_eq!(interval_of(0, Some(0)), DEFAULT_INTERVAL);
    }
}
