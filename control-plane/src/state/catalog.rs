//! The dependency catalog, shared by the line protocol and
//! `farm.v1.Catalog`: one graph, one writer, one table.
//!
//! Changes are decided in the order they arrive by the catalog's writer
//! thread ([`GroupCommit`]), against its own copy of the graph that runs
//! ahead of the disk, and written in batches: one transaction and one sync
//! for whatever arrived while the last batch was written. Only once a
//! batch is on disk are its changes applied to the graph callers read, and
//! answered. So every answer, a write's or a read's, shows only what is on
//! disk: a crash loses nothing anyone was told, and a change is never half
//! applied (a batch is one transaction). A failed write leaves the disk as
//! it was; the writer's copy goes back to what readers see.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use tracing::error;

use super::StateError;
use crate::{
    core::{
        DomainError,
        catalog::{Change, Described, Effect, Graph, Name, Page},
    },
    store::{GroupCommit, Queued, Store, StoreError},
    telemetry::Telemetry,
};

/// Most changes written in one transaction.
const MAX_BATCH: usize = 512;

/// A decision, or why the batch holding it could not be written.
type Answer = Result<Result<Effect, DomainError>, String>;

/// Handle on the catalog; cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// What callers read: every change in it is on disk.
    committed: Arc<RwLock<Graph>>,
    writer: GroupCommit<Change, Answer>,
}

impl Catalog {
    /// Loads the catalog from `store` and starts its writer. Blocks on the
    /// disk.
    pub(super) fn open(store: Arc<Store>, telemetry: Arc<Telemetry>) -> Result<Self, StoreError> {
        let stored = store.load_catalog()?;
        let graph = Graph::restore(stored).map_err(|missing| {
            StoreError::Corrupt(format!(
                "the catalog holds a dependency on {missing:?}, which it does not hold"
            ))
        })?;
        let committed = Arc::new(RwLock::new(graph.clone()));
        let mut head = graph;
        let readers = Arc::clone(&committed);
        let writer = GroupCommit::start("farm-catalog-writer", MAX_BATCH, move |batch| {
            commit(&store, &readers, &mut head, &telemetry, batch);
        })
        .map_err(|e| StoreError::Batch(format!("cannot start the catalog writer: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared { committed, writer }),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Graph> {
        // Graph methods leave it consistent at every return.
        self.shared
            .committed
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` is indexed.
    pub fn is_indexed(&self, name: &str) -> bool {
        self.read().is_indexed(name)
    }

    /// `name`'s dependencies and dependents.
    pub fn get(&self, name: &Name) -> Result<Described, DomainError> {
        self.read()
            .get(name.as_str())
            .ok_or_else(|| DomainError::NotIndexed(name.to_string()))
    }

    /// Up to `limit` names starting with `prefix`, in order, after `after`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Page {
        self.read().list(prefix, after, limit)
    }

    /// How many names are indexed.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Queues `change` at once (the order of calls is the order of
    /// decisions) and returns the wait for its answer, which comes once
    /// the change is on disk.
    pub fn submit(
        &self,
        change: Change,
    ) -> impl Future<Output = Result<Effect, StateError>> + use<> {
        let answer = self.shared.writer.submit(change);
        async move {
            match answer.await {
                Ok(Ok(decided)) => Ok(decided?),
                Ok(Err(message)) => Err(StoreError::Batch(message).into()),
                Err(_) => Err(StoreError::Closed.into()),
            }
        }
    }

    /// Writes what is queued, then stops the writer. Blocks.
    pub(super) fn close(&self) {
        self.shared.writer.close();
    }
}

/// Decides `batch` against `head`, writes what changes the catalog in one
/// transaction, then shows it to readers and answers every caller.
fn commit(
    store: &Store,
    readers: &RwLock<Graph>,
    head: &mut Graph,
    telemetry: &Telemetry,
    batch: Vec<Queued<Change, Answer>>,
) {
    telemetry.catalog_batch(batch.len());
    let decided: Vec<Result<Effect, DomainError>> = batch
        .iter()
        .map(|queued| head.apply(&queued.change))
        .collect();
    let changing = || {
        batch
            .iter()
            .zip(&decided)
            .filter(|(_, decided)| decided.as_ref().is_ok_and(|e| e.changed()))
            .map(|(queued, _)| &queued.change)
    };
    match store.apply_catalog(changing()) {
        Ok(()) => {
            let mut graph = readers.write().unwrap_or_else(|e| e.into_inner());
            for change in changing() {
                // Decided against the same graph, so accepted again.
                if let Err(err) = graph.apply(change) {
                    error!(cause = %err, "the catalog's readers and writer disagree");
                }
            }
            drop(graph);
            for (queued, decided) in batch.into_iter().zip(decided) {
                queued.answer(Ok(decided));
            }
        }
        Err(err) => {
            error!(cause = %err, changes = batch.len(), "writing the catalog failed; nothing of this batch was acknowledged");
            *head = readers.read().unwrap_or_else(|e| e.into_inner()).clone();
            let message = err.to_string();
            for queued in batch {
                queued.answer(Err(message.clone()));
            }
        }
    }
}
