//! Shared state of a running control plane, as three handles on one
//! [`Arc`]: [`Members`] (the registry of nodes, groups and health, and its
//! membership events), [`Configs`] (configuration versions and their
//! pushes) and [`Samples`] (the nodes' metrics). Each service holds the
//! handles it needs; all of them see the same state. The dependency
//! [`Catalog`] shares only the store with them.
//!
//! Store I/O never runs on an async worker: node identities and
//! configuration versions go through writer threads of their own (the
//! [`NodeWriter`]'s, the configuration's; a caller awaits its batch without
//! holding a thread), and every configuration read runs on a blocking
//! thread, so a slow disk sync stalls no other call.
//!
//! Locks: the registry, the configuration book and the metrics book each
//! have their own `std::sync::Mutex` (every critical section is short and
//! never awaits). When two are needed the registry is locked first, and the
//! metrics book is never held with either.

mod catalog;
mod configs;
mod members;
mod samples;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use thiserror::Error;
use tokio::sync::{broadcast, mpsc};
use tracing::info;

pub use catalog::Catalog;
pub use configs::Configs;
use configs::{ConfigState, ConfigWriter};
pub use members::{ExitAsk, Members, WatchStart};
pub use samples::Samples;

use crate::{
    core::{
        DomainError, Event, HealthPolicy, Limits, NodeId, Now, Registry, config::ConfigBook,
        metrics::MetricsBook,
    },
    store::{NodeWriter, Store, StoreError, wall_micros},
    telemetry::Telemetry,
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

/// The whole state: where the handles come from.
#[derive(Debug, Clone)]
pub struct FarmState {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    registry: Mutex<Registry>,
    store: Arc<Store>,
    /// Registrations' identities and removals, written in batches.
    writer: NodeWriter,
    events: broadcast::Sender<Arc<Event>>,
    /// Latest version of every scope and its announcements. The book is
    /// locked after `registry` when both are needed, never the other way
    /// round.
    config: Arc<ConfigState>,
    /// Configuration writes, decided and written in batches.
    config_writer: ConfigWriter,
    /// The nodes' recent metrics samples. Never held together with
    /// `registry`: the node list is read first, then this.
    metrics: Mutex<MetricsBook>,
    /// The control plane's own counters, for `/metrics`.
    telemetry: Arc<Telemetry>,
    /// The dependency catalog, with its own writer.
    catalog: Catalog,
    /// Where each open heartbeat stream takes requests to end its node's
    /// process, with the stream's epoch. Never held with another lock.
    exits: Mutex<HashMap<NodeId, (u64, mpsc::Sender<ExitAsk>)>>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Registry methods leave it consistent at every return; a panic in
        // one would be a bug, and refusing all further work would not help.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn exits(&self) -> MutexGuard<'_, HashMap<NodeId, (u64, mpsc::Sender<ExitAsk>)>> {
        self.exits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn book(&self) -> MutexGuard<'_, ConfigBook> {
        self.config.book()
    }

    fn metrics(&self) -> MutexGuard<'_, MetricsBook> {
        // Every book method leaves it consistent.
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the registry's new events; called with its lock held, so
    /// watchers see events in revision order.
    fn publish(&self, registry: &mut Registry) {
        for event in registry.take_events() {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(event));
        }
    }
}

#[cfg(test)]
impl FarmState {
    /// [`FarmState::open`] in `dir` with the default health policy and
    /// limits, for unit tests.
    pub(crate) async fn open_default(dir: &std::path::Path) -> Self {
        Self::open(dir.to_owned(), HealthPolicy::default(), Limits::default())
            .await
            .expect("state")
    }
}

impl FarmState {
    /// Opens the store in `dir`, loads the stored identities and
    /// configuration, and starts the writers and the task that paces
    /// configuration pushes. The disk is read on a blocking thread.
    pub async fn open(
        dir: std::path::PathBuf,
        policy: HealthPolicy,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let state = tokio::task::spawn_blocking(move || Self::open_blocking(&dir, policy, limits))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        // Ends with the state.
        drop(tokio::spawn(state.shared.config.pace()));
        Ok(state)
    }

    fn open_blocking(
        dir: &std::path::Path,
        policy: HealthPolicy,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let store = Store::open(dir)?;
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
        let config = Arc::new(ConfigState::new(
            ConfigBook::new(latest, last_version),
            CONFIG_EVENT_BUFFER,
        ));
        let store = Arc::new(store);
        let writer = NodeWriter::start(Arc::clone(&store))
            .map_err(|e| StoreError::Batch(format!("cannot start the writer: {e}")))?;
        let config_writer =
            ConfigWriter::start(Arc::clone(&store), Arc::clone(&config)).map_err(|e| {
                StoreError::ConfigBatch(format!("cannot start the configuration writer: {e}"))
            })?;
        let telemetry = Arc::new(Telemetry::default());
        let catalog = Catalog::open(Arc::clone(&store), Arc::clone(&telemetry))?;
        if catalog.len() > 0 {
            info!(names = catalog.len(), "restored the catalog from the store");
        }
        Ok(Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(registry),
                store,
                writer,
                events,
                config,
                config_writer,
                metrics: Mutex::new(MetricsBook::new()),
                telemetry,
                catalog,
                exits: Mutex::default(),
            }),
        })
    }

    /// Nodes, groups, health and membership events.
    pub fn members(&self) -> Members {
        Members::new(Arc::clone(&self.shared))
    }

    /// Configuration versions and their pushes.
    pub fn configs(&self) -> Configs {
        Configs::new(Arc::clone(&self.shared))
    }

    /// The nodes' metrics samples.
    pub fn samples(&self) -> Samples {
        Samples::new(Arc::clone(&self.shared))
    }

    /// The dependency catalog.
    pub fn catalog(&self) -> Catalog {
        self.shared.catalog.clone()
    }

    /// The control plane's own counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.shared.telemetry
    }

    /// Applies deadlines every `period` (and forgets, in the store, nodes
    /// dropped for silence) until the returned task is aborted.
    pub fn spawn_ticker(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let members = self.members();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                members.tick().await;
            }
        })
    }

    /// Closes the store once every write in flight is on disk: the writers'
    /// threads finish their queues and end, and the write-ahead log is
    /// folded into the database. Later writes fail as if the disk were gone.
    pub async fn close(&self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            shared.writer.close();
            shared.config_writer.close();
            shared.catalog.close();
            shared.store.close()
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}
