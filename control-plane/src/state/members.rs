//! The [`Members`] handle: nodes, their identities, groups and health, the
//! healthy index `Discover` samples from, and the membership events `Watch`
//! streams.
//!
//! Every mutation takes the registry's lock, changes it, and publishes its
//! new events before letting go, so watchers see events in revision order
//! and never miss one between a snapshot and their subscription.

use std::{collections::BTreeMap, sync::Arc};

use futures::future::join_all;
use rand::{RngCore, rng};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use super::{Shared, StateError};
use crate::core::{
    Discovered, DomainError, Event, GroupView, HealthPolicy, NewIdentity, NodeId, NodeView, Now,
    Registered, RegistrationRequest, RuntimeView,
};

/// What a new watcher starts from.
#[derive(Debug)]
pub enum WatchStart {
    /// Events after the revision the watcher asked for (the first field).
    Replay(u64, Vec<Event>),
    /// The current nodes, at this revision.
    Snapshot(u64, Vec<NodeView>),
}

/// A request to a node to end its process, sent over its heartbeat stream:
/// how a node action reaches a node whose host the control plane cannot act
/// on (a Swarm task on another host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitAsk {
    /// End at once (a kill), rather than shut down gracefully (a stop).
    pub immediate: bool,
    /// Why, for the node's log.
    pub reason: String,
}

/// Handle on the farm's membership.
#[derive(Debug, Clone)]
pub struct Members {
    shared: Arc<Shared>,
}

impl Members {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The health policy nodes are held to.
    pub fn policy(&self) -> HealthPolicy {
        self.shared.registry().policy()
    }

    /// Registers or re-attaches a node; the identity is on disk before this
    /// returns.
    ///
    /// The registry's lock is not held while the identity is written: the
    /// write joins the next batch of the [`NodeWriter`] (one sync to disk for
    /// all registrations in flight), and the registration is published once
    /// it is on disk. Until then the node is only `STARTING` in the registry:
    /// it cannot heartbeat, so it cannot be discovered, before it has its
    /// answer.
    pub async fn register(&self, request: RegistrationRequest) -> Result<Registered, StateError> {
        let secret = new_secret();
        let registered =
            self.shared
                .registry()
                .register(request, NewIdentity { secret }, Now::read())?;
        let persisted = self.shared.writer.upsert(registered.stored.clone()).await;
        let mut registry = self.shared.registry();
        if let Err(err) = persisted {
            if registered.reattached {
                // The identity is already on disk; only its address or
                // labels are stale there, which the next re-attach fixes.
                warn!(node.id = %registered.id, cause = %err, "could not persist re-attachment");
            } else {
                registry.forget(registered.id, Now::read());
                self.shared.publish(&mut registry);
                return Err(err.into());
            }
        }
        self.shared.publish(&mut registry);
        Ok(registered)
    }

    /// Checks a node's credentials and opens its heartbeat stream.
    pub fn open_stream(&self, id: &str, secret: &str) -> Result<(NodeId, u64), StateError> {
        let mut registry = self.shared.registry();
        let id = registry.authenticate(id, secret)?;
        let epoch = registry.open_stream(id)?;
        Ok((id, epoch))
    }

    /// Where requests to end `id`'s process reach its heartbeat stream of
    /// `epoch` ([`Members::ask_to_exit`]); replaces an older stream's.
    pub fn exit_asks(&self, id: NodeId, epoch: u64) -> mpsc::Receiver<ExitAsk> {
        let (tx, rx) = mpsc::channel(1);
        self.shared.exits().insert(id, (epoch, tx));
        rx
    }

    /// Asks the node `id` to end its process, over its open heartbeat
    /// stream. False when it has none open to hear it.
    pub fn ask_to_exit(&self, id: NodeId, ask: ExitAsk) -> bool {
        let exits = self.shared.exits();
        exits
            .get(&id)
            .is_some_and(|(_, asks)| asks.try_send(ask).is_ok())
    }

    /// Records a heartbeat.
    pub fn heartbeat(
        &self,
        id: NodeId,
        epoch: u64,
        config_version: u64,
        serving: bool,
    ) -> Result<(), StateError> {
        let mut registry = self.shared.registry();
        registry.heartbeat(id, epoch, config_version, serving, Now::read())?;
        self.shared.publish(&mut registry);
        Ok(())
    }

    /// Records the end of a heartbeat stream.
    pub fn close_stream(&self, id: NodeId, epoch: u64) {
        {
            let mut registry = self.shared.registry();
            registry.close_stream(id, epoch);
            self.shared.publish(&mut registry);
        }
        let mut exits = self.shared.exits();
        if exits.get(&id).is_some_and(|(open, _)| *open == epoch) {
            exits.remove(&id);
        }
    }

    /// Removes a node that proved its identity.
    pub async fn deregister(&self, id: &str, secret: &str) -> Result<NodeId, StateError> {
        let id = {
            let mut registry = self.shared.registry();
            let id = registry.deregister(id, secret, Now::read())?;
            self.shared.publish(&mut registry);
            id
        };
        self.shared.metrics().remove(id);
        self.shared.writer.delete(id).await?;
        Ok(id)
    }

    /// Removes a node and its identity, whoever manages it; resolves once
    /// the identity is gone from the disk.
    pub async fn forget(&self, id: NodeId) -> Result<(), StateError> {
        {
            let mut registry = self.shared.registry();
            registry.forget(id, Now::read());
            self.shared.publish(&mut registry);
        }
        self.shared.metrics().remove(id);
        self.shared.writer.delete(id).await?;
        Ok(())
    }

    /// Sets the runtime's view of a managed slot.
    pub fn set_runtime(&self, name: &str, view: Option<RuntimeView>) {
        let mut registry = self.shared.registry();
        registry.set_runtime(name, view);
        self.shared.publish(&mut registry);
    }

    /// The id registered under `name`.
    pub fn id_of(&self, name: &str) -> Option<NodeId> {
        self.shared.registry().id_of(name)
    }

    /// The node a caller names by its id or its name
    /// ([`Registry::resolve`](crate::core::Registry::resolve)).
    pub fn resolve(&self, given: &str) -> Result<NodeId, DomainError> {
        self.shared.registry().resolve(given)
    }

    /// Random healthy peers.
    pub fn discover(
        &self,
        group: &str,
        count: u32,
        labels: &BTreeMap<String, String>,
        exclude: Option<NodeId>,
    ) -> Result<Discovered, DomainError> {
        self.shared
            .registry()
            .discover(group, count, labels, exclude, &mut rng())
    }

    /// Nodes, ordered by id.
    pub fn list_nodes(&self, group: &str) -> Result<Vec<NodeView>, DomainError> {
        self.shared.registry().list_nodes(group)
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Result<NodeView, DomainError> {
        self.shared.registry().node(id)
    }

    /// Groups.
    pub fn list_groups(&self) -> Vec<GroupView> {
        self.shared.registry().list_groups()
    }

    /// How many nodes are healthy (O(1)).
    pub fn healthy_count(&self) -> usize {
        self.shared.registry().healthy_count()
    }

    /// Subscribes to events and says where the watcher starts: a replay after
    /// `from_revision` when the history reaches back that far, else a
    /// snapshot. Both happen under one lock, so no event falls in between.
    pub fn watch(
        &self,
        group: &str,
        from_revision: u64,
    ) -> (WatchStart, broadcast::Receiver<Arc<Event>>) {
        let registry = self.shared.registry();
        let receiver = self.shared.events.subscribe();
        let replay = (from_revision > 0)
            .then(|| registry.events_since(from_revision))
            .flatten();
        let start = match replay {
            Some(events) => WatchStart::Replay(from_revision, events),
            None => {
                let (revision, nodes) = registry.snapshot(group);
                WatchStart::Snapshot(revision, nodes)
            }
        };
        (start, receiver)
    }

    /// Subscribes to live events only.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.events.subscribe()
    }

    /// Applies deadlines, and forgets in the store the nodes dropped for
    /// silence.
    pub async fn tick(&self) {
        let tick = {
            let mut registry = self.shared.registry();
            let tick = registry.tick(Now::read());
            self.shared.publish(&mut registry);
            tick
        };
        for name in &tick.purged_groups {
            info!(group = %name, "purged idle empty group");
        }
        if tick.dropped.is_empty() {
            return;
        }
        {
            let mut book = self.shared.metrics();
            for id in &tick.dropped {
                book.remove(*id);
            }
        }
        info!(nodes = ?tick.dropped.iter().map(ToString::to_string).collect::<Vec<_>>(), "dropped nodes silent past their maximum age");
        // All at once: they join one batch of the writer.
        let deletes = tick.dropped.iter().map(|id| self.shared.writer.delete(*id));
        for (id, result) in tick.dropped.iter().zip(join_all(deletes).await) {
            if let Err(err) = result {
                warn!(node.id = %id, cause = %err, "could not forget a dropped node in the store");
            }
        }
    }
}

/// 32 random bytes, hex-encoded: a node's secret.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
