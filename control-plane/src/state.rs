//! Shared state of a running control plane: the registry behind a lock, the
//! store it persists identities to, and the broadcast of membership events.
//!
//! Every mutation takes the lock, changes the registry, persists what must
//! survive a restart, and publishes the registry's new events before letting
//! go, so watchers see events in revision order and never miss one between a
//! snapshot and their subscription.
//!
//! The nodes' metrics samples live in a book of their own behind a second
//! lock, never held together with the registry's: a heartbeat's sample does
//! not wait on membership changes, and an aggregate takes the node list
//! first, then the samples.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use rand::{RngCore, rng};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::{
    core::{
        Discovered, DomainError, Event, GroupView, HealthPolicy, Limits, NewIdentity, NodeId,
        NodeState, NodeView, Now, Registered, RegistrationRequest, Registry, RuntimeView,
        config::{Change, ConfigBook, ConfigEntry, Effective, HISTORY_PER_SCOPE, Scope, diff},
        metrics::{self, FarmAggregate, MetricsBook, NodeMetrics, Sample},
    },
    prometheus::Telemetry,
    store::{NodeWriter, Store, StoreError, wall_micros},
};

/// Events a slow watcher may fall behind by before it is reset.
const EVENT_BUFFER: usize = 8192;
/// Configuration versions a slow watcher may fall behind by before it is
/// resynchronised from the store.
const CONFIG_EVENT_BUFFER: usize = 1024;

/// Why a state operation failed.
#[derive(Debug, Error)]
pub enum StateError {
    /// The domain refused the operation.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The store failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Cheap handle to the shared state.
#[derive(Debug, Clone)]
pub struct FarmState {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// A `std::sync::Mutex`: every critical section is short, never awaits,
    /// and the heartbeat hot path is a few field writes.
    registry: Mutex<Registry>,
    store: Arc<Store>,
    /// Registrations' identities, written in batches.
    writer: NodeWriter,
    events: broadcast::Sender<Arc<Event>>,
    /// Latest version of every scope. Locked after `registry` when both are
    /// needed, never the other way round.
    config: Mutex<ConfigBook>,
    /// The highest configuration version: heartbeat streams wake on it.
    config_version: watch::Sender<u64>,
    /// Every new configuration version, for `WatchConfig`.
    config_events: broadcast::Sender<Arc<ConfigEntry>>,
    /// The nodes' recent metrics samples. Never held together with
    /// `registry`: the node list is read first, then this.
    metrics: Mutex<MetricsBook>,
    /// The control plane's own counters, for `/metrics`.
    telemetry: Arc<Telemetry>,
}

/// What a new watcher starts from.
#[derive(Debug)]
pub enum WatchStart {
    /// Events after the revision the watcher asked for.
    Replay(Vec<Event>),
    /// The current nodes, at this revision.
    Snapshot(u64, Vec<NodeView>),
}

impl FarmState {
    /// Loads stored identities and starts with them.
    pub fn open(store: Store, policy: HealthPolicy, limits: Limits) -> Result<Self, StoreError> {
        let now = Now::read();
        let mut registry = Registry::new(policy, limits, wall_micros(now.wall), now);
        let stored = store.load_nodes()?;
        if !stored.is_empty() {
            info!(
                nodes = stored.len(),
                "restored node identities from the store"
            );
        }
        registry.restore(stored, now);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (latest, last_version) = store.load_configs()?;
        let book = ConfigBook::new(latest, last_version);
        let (config_version, _) = watch::channel(book.last_version());
        let (config_events, _) = broadcast::channel(CONFIG_EVENT_BUFFER);
        let store = Arc::new(store);
        let writer = NodeWriter::start(Arc::clone(&store))
            .map_err(|e| StoreError::Batch(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(registry),
                store,
                writer,
                events,
                config: Mutex::new(book),
                config_version,
                config_events,
                metrics: Mutex::new(MetricsBook::new()),
                telemetry: Arc::default(),
            }),
        })
    }

    fn book(&self) -> MutexGuard<'_, ConfigBook> {
        // The book changes only by `commit`, after the store has the entry.
        self.shared.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn metrics(&self) -> MutexGuard<'_, MetricsBook> {
        // Every book method leaves it consistent.
        self.shared
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Registry methods leave it consistent at every return; a panic in
        // one would be a bug, and refusing all further work would not help.
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the registry's new events; called with the lock held.
    fn publish(&self, registry: &mut Registry) {
        for event in registry.take_events() {
            // No receivers is fine: nobody is watching.
            let _ = self.shared.events.send(Arc::new(event));
        }
    }

    /// The health policy nodes are held to.
    pub fn policy(&self) -> HealthPolicy {
        self.lock().policy()
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
        let registered = self
            .lock()
            .register(request, NewIdentity { secret }, Now::read())?;
        let persisted = self.shared.writer.upsert(registered.stored.clone()).await;
        let mut registry = self.lock();
        if let Err(err) = persisted {
            if registered.reattached {
                // The identity is already on disk; only its address or
                // labels are stale there, which the next re-attach fixes.
                warn!(node.id = %registered.id, cause = %err, "could not persist re-attachment");
            } else {
                registry.forget(registered.id, Now::read());
                self.publish(&mut registry);
                return Err(err.into());
            }
        }
        self.publish(&mut registry);
        Ok(registered)
    }

    /// Checks a node's credentials and opens its heartbeat stream.
    pub fn open_stream(&self, id: &str, secret: &str) -> Result<(NodeId, u64), StateError> {
        let mut registry = self.lock();
        let id = registry.authenticate(id, secret)?;
        let epoch = registry.open_stream(id)?;
        Ok((id, epoch))
    }

    /// Records a heartbeat.
    pub fn heartbeat(
        &self,
        id: NodeId,
        epoch: u64,
        config_version: u64,
        serving: bool,
    ) -> Result<(), StateError> {
        let mut registry = self.lock();
        registry.heartbeat(id, epoch, config_version, serving, Now::read())?;
        self.publish(&mut registry);
        Ok(())
    }

    /// Records the end of a heartbeat stream.
    pub fn close_stream(&self, id: NodeId, epoch: u64) {
        let mut registry = self.lock();
        registry.close_stream(id, epoch);
        self.publish(&mut registry);
    }

    /// Removes a node that proved its identity.
    pub async fn deregister(&self, id: &str, secret: &str) -> Result<NodeId, StateError> {
        let id = {
            let mut registry = self.lock();
            let id = registry.deregister(id, secret, Now::read())?;
            self.publish(&mut registry);
            id
        };
        self.metrics().remove(id);
        self.shared.writer.delete(id).await?;
        Ok(id)
    }

    /// Removes a node and its identity, whoever manages it.
    pub fn forget(&self, id: NodeId) -> Result<(), StateError> {
        let mut registry = self.lock();
        registry.forget(id, Now::read());
        self.publish(&mut registry);
        drop(registry);
        self.metrics().remove(id);
        self.shared.store.delete_nodes(&[id])?;
        Ok(())
    }

    /// Sets the runtime's view of a managed slot.
    pub fn set_runtime(&self, name: &str, view: Option<RuntimeView>) {
        let mut registry = self.lock();
        registry.set_runtime(name, view);
        self.publish(&mut registry);
    }

    /// The id registered under `name`.
    pub fn id_of(&self, name: &str) -> Option<NodeId> {
        self.lock().id_of(name)
    }

    /// Random healthy peers.
    pub fn discover(
        &self,
        group: &str,
        count: u32,
        labels: &BTreeMap<String, String>,
        exclude: Option<NodeId>,
    ) -> Result<Discovered, DomainError> {
        self.lock()
            .discover(group, count, labels, exclude, &mut rng())
    }

    /// Nodes, ordered by id.
    pub fn list_nodes(&self, group: &str) -> Result<Vec<NodeView>, DomainError> {
        self.lock().list_nodes(group)
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Result<NodeView, DomainError> {
        self.lock().node(id)
    }

    /// Groups.
    pub fn list_groups(&self) -> Vec<GroupView> {
        self.lock().list_groups()
    }

    /// How many nodes are in each state.
    pub fn count_by_state(&self, state: NodeState) -> usize {
        self.lock()
            .count_by_state()
            .get(&state)
            .copied()
            .unwrap_or(0)
    }

    /// Subscribes to events and says where the watcher starts: a replay after
    /// `from_revision` when the history reaches back that far, else a
    /// snapshot. Both happen under one lock, so no event falls in between.
    pub fn watch(
        &self,
        group: &str,
        from_revision: u64,
    ) -> (WatchStart, broadcast::Receiver<Arc<Event>>) {
        let registry = self.lock();
        let receiver = self.shared.events.subscribe();
        let replay = (from_revision > 0)
            .then(|| registry.events_since(from_revision))
            .flatten();
        let start = match replay {
            Some(events) => WatchStart::Replay(events),
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

    /// Applies deadlines and forgets dropped nodes in the store.
    pub fn tick(&self) {
        let mut registry = self.lock();
        let tick = registry.tick(Now::read());
        self.publish(&mut registry);
        drop(registry);
        for name in &tick.purged_groups {
            info!(group = %name, "purged idle empty group");
        }
        if !tick.dropped.is_empty() {
            let mut book = self.metrics();
            for id in &tick.dropped {
                book.remove(*id);
            }
            drop(book);
            info!(nodes = ?tick.dropped.iter().map(ToString::to_string).collect::<Vec<_>>(), "dropped nodes silent past their maximum age");
            if let Err(err) = self.shared.store.delete_nodes(&tick.dropped) {
                warn!(cause = %err, "could not forget dropped nodes in the store");
            }
        }
    }

    /// Runs [`FarmState::tick`] every `period` until the returned task is
    /// aborted.
    pub fn spawn_ticker(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                state.tick();
            }
        })
    }
}

/// Metrics: the samples nodes report, and the control plane's own counters.
impl FarmState {
    /// Keeps node `id`'s latest sample (its heartbeat was accepted).
    pub fn record_sample(&self, id: NodeId, sample: Sample) {
        self.metrics().record(id, sample, Now::read().mono);
        self.shared.telemetry.sample_received();
    }

    /// The aggregate of `group` (empty: the whole farm), listing every node
    /// when `include_nodes` is set. Errors: an unknown group.
    pub fn farm_metrics(
        &self,
        group: &str,
        include_nodes: bool,
    ) -> Result<FarmAggregate, DomainError> {
        let (nodes, fresh) = {
            let registry = self.lock();
            let nodes = registry.list_nodes(group)?;
            (
                nodes,
                metrics::freshness(registry.policy().heartbeat_timeout),
            )
        };
        let now = Now::read();
        let entries = {
            let mut book = self.metrics();
            if group.is_empty() && book.len() > nodes.len() {
                // Samples of a stream that raced its node's removal.
                let ids: HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
                book.retain(|id| ids.contains(&id));
            }
            book.snapshot(nodes, now.mono, fresh)
        };
        Ok(metrics::aggregate(entries, now.wall, include_nodes))
    }

    /// Node `id`'s latest metrics and its kept samples, oldest first.
    pub fn node_metrics(&self, id: NodeId) -> Result<(NodeMetrics, Vec<Sample>), DomainError> {
        let (view, fresh) = {
            let registry = self.lock();
            let view = registry.node(id)?;
            (
                view,
                metrics::freshness(registry.policy().heartbeat_timeout),
            )
        };
        let now = Now::read();
        let (entry, history) = {
            let book = self.metrics();
            let entry = book.snapshot(vec![view], now.mono, fresh).pop();
            (entry, book.history(id))
        };
        let entry = entry.ok_or(DomainError::UnknownNode(id))?;
        Ok((metrics::node_metrics(entry), history))
    }

    /// The control plane's own counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.shared.telemetry
    }
}

/// Configuration: every write is on disk before the book (and so any
/// reader or node) sees it.
impl FarmState {
    /// The latest version of `scope`, if ever written.
    pub fn get_config(&self, scope: &Scope) -> Option<ConfigEntry> {
        self.book().latest(scope).cloned()
    }

    /// Writes a new version of `scope`. The scope's node or group must
    /// exist. Blocks on the store: call from a blocking task.
    pub fn put_config(
        &self,
        scope: Scope,
        data: Value,
        expected: u64,
        role: &str,
        rollback_of: u64,
    ) -> Result<ConfigEntry, StateError> {
        {
            let registry = self.lock();
            match &scope {
                Scope::Global => {}
                Scope::Node(id) => {
                    registry.node(*id)?;
                }
                Scope::Group(name) => {
                    if !registry.list_groups().iter().any(|g| &g.name == name) {
                        return Err(DomainError::UnknownGroup(name.clone()).into());
                    }
                }
            }
        }
        let mut book = self.book();
        let entry = book.prepare(scope, data, expected, role, rollback_of, SystemTime::now())?;
        self.shared.store.insert_config(&entry)?;
        book.commit(entry.clone());
        // Announced under the book's lock, so watchers see versions in the
        // order they were written, even when writes race.
        self.shared.config_version.send_replace(entry.version);
        let _ = self.shared.config_events.send(Arc::new(entry.clone()));
        drop(book);
        Ok(entry)
    }

    /// Writes a new version of `scope` with the data of its `version`.
    pub fn rollback_config(
        &self,
        scope: Scope,
        version: u64,
        expected: u64,
        role: &str,
    ) -> Result<ConfigEntry, StateError> {
        let old = self
            .shared
            .store
            .config_version(&scope, version)?
            .ok_or_else(|| DomainError::UnknownVersion {
                scope: scope.clone(),
                version,
            })?;
        self.put_config(scope, old.data, expected, role, version)
    }

    /// Versions of `scope` below `before` (0: from the newest), newest first.
    pub fn config_history(
        &self,
        scope: &Scope,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ConfigEntry>, StateError> {
        Ok(self.shared.store.config_history(scope, before, limit)?)
    }

    /// Changes of `scope` from version `from` (0: empty) to `to` (0: the
    /// current); returns the resolved versions too.
    pub fn config_diff(
        &self,
        scope: &Scope,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64, Vec<Change>), StateError> {
        let to = if to == 0 {
            self.book().version_of(scope)
        } else {
            to
        };
        let data_of = |version: u64| -> Result<Value, StateError> {
            if version == 0 {
                return Ok(Value::Object(serde_json::Map::new()));
            }
            Ok(self
                .shared
                .store
                .config_version(scope, version)?
                .ok_or_else(|| DomainError::UnknownVersion {
                    scope: scope.clone(),
                    version,
                })?
                .data)
        };
        let changes = diff(&data_of(from)?, &data_of(to)?);
        Ok((from, to, changes))
    }

    /// The effective configuration of node `id`.
    pub fn effective_config(&self, id: NodeId) -> Result<Effective, StateError> {
        let group = self.lock().node(id)?.group;
        Ok(self.book().effective(id, &group))
    }

    /// Wakes whenever a configuration version is written.
    pub fn config_changes(&self) -> watch::Receiver<u64> {
        self.shared.config_version.subscribe()
    }

    /// Every new configuration version from now on.
    pub fn subscribe_config(&self) -> broadcast::Receiver<Arc<ConfigEntry>> {
        self.shared.config_events.subscribe()
    }

    /// Kept versions of `scope` after `after`, oldest first, and whether the
    /// history still reaches back to `after` (false: versions were dropped
    /// and a snapshot is needed).
    pub fn config_since(
        &self,
        scope: &Scope,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<ConfigEntry>, bool), StateError> {
        let store = &self.shared.store;
        let entries = store.config_after(scope, after, limit)?;
        // History is pruned only once a scope holds the most versions kept;
        // until then it is whole. Once pruned, it reaches back to `after`
        // only if `after` is not older than the oldest kept version.
        let complete = match store.oldest_config_version(scope)? {
            None => true,
            Some(oldest) if after >= oldest => true,
            Some(_) => store.config_count(scope)? < HISTORY_PER_SCOPE,
        };
        Ok((entries, complete))
    }
}

/// 32 random bytes, hex-encoded: a node's secret.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
