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
    store::{BatchFailure, GroupCommit, Queued, Store, StoreError},
    telemetry::Telemetry,
};

/// Most changes written in one transaction.
const MAX_BATCH: usize = 512;

/// What the writer is asked, in order.
#[derive(Debug)]
enum Op {
    /// Decide and write a change.
    Change(Change),
    /// Whether a name is indexed, once everything queued before is
    /// decided and on disk (a query that follows a client's own changes).
    Query(Name),
}

/// What the writer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Changed(Effect),
    Indexed(bool),
}

/// A decision, or why the batch holding it could not be written.
type Answer = Result<Result<Decided, DomainError>, BatchFailure>;

/// Handle on the catalog; cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// What callers read: every change in it is on disk.
    committed: Arc<RwLock<Graph>>,
    writer: GroupCommit<Op, Answer>,
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
        let answer = self.ask(Op::Change(change));
        async move {
            match answer.await? {
                Decided::Changed(effect) => Ok(effect),
                other => Err(mismatched("a change", other)),
            }
        }
    }

    /// Queues a query behind every change queued so far, so it sees them
    /// (and no later one), and returns the wait for its answer, which
    /// comes once they are on disk. For a client whose own changes are
    /// still on their way; [`Catalog::is_indexed`] answers at once.
    pub fn query_in_order(
        &self,
        name: Name,
    ) -> impl Future<Output = Result<bool, StateError>> + use<> {
        let answer = self.ask(Op::Query(name));
        async move {
            match answer.await? {
                Decided::Indexed(indexed) => Ok(indexed),
                other => Err(mismatched("a query", other)),
            }
        }
    }

    fn ask(&self, op: Op) -> impl Future<Output = Result<Decided, StateError>> + use<> {
        let answer = self.shared.writer.submit(op);
        async move {
            match answer.await {
                Ok(Ok(decided)) => Ok(decided?),
                Ok(Err(failure)) => Err(failure.into_error(StoreError::Batch).into()),
                Err(_) => Err(StoreError::Closed.into()),
            }
        }
    }

    /// Writes what is queued, then stops the writer. Blocks.
    pub(super) fn close(&self) {
        self.shared.writer.close();
    }
}

/// The writer answered `asked` with the other kind of answer (a bug).
fn mismatched(asked: &str, answer: Decided) -> StateError {
    StoreError::Batch(format!(
        "the catalog writer answered {asked} with {answer:?}"
    ))
    .into()
}

/// Decides `batch` against `head`, writes what changes the catalog in one
/// transaction, then shows it to readers and answers every caller.
fn commit(
    store: &Store,
    readers: &RwLock<Graph>,
    head: &mut Graph,
    telemetry: &Telemetry,
    batch: Vec<Queued<Op, Answer>>,
) {
    let decided: Vec<Result<Decided, DomainError>> = batch
        .iter()
        .map(|queued| match &queued.change {
            Op::Change(change) => head.apply(change).map(Decided::Changed),
            Op::Query(name) => Ok(Decided::Indexed(head.is_indexed(name.as_str()))),
        })
        .collect();
    let changing = || {
        batch
            .iter()
            .zip(&decided)
            .filter_map(|(queued, decided)| match (&queued.change, decided) {
                (Op::Change(change), Ok(Decided::Changed(effect))) if effect.changed() => {
                    Some(change)
                }
                _ => None,
            })
    };
    let written = match changing().count() {
        // Nothing to write (queries, refusals, removals of absent names).
        0 => Ok(()),
        count => {
            telemetry.catalog_batch(count);
            store.apply_catalog(changing())
        }
    };
    match written {
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
            let failure = BatchFailure::from(&err);
            for queued in batch {
                queued.answer(Err(failure.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("name")
    }

    fn open(dir: &std::path::Path) -> Catalog {
        let store = Arc::new(Store::open(dir).expect("store"));
        Catalog::open(store, Arc::default()).expect("catalog")
    }

    /// A query queued behind changes sees exactly those before it, and is
    /// answered once they are on disk; readers see only answered changes;
    /// what was answered is there after a reopen.
    #[test]
    fn queries_in_order_see_the_changes_before_them_and_no_later_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = open(dir.path());
        let index = |n: &str, deps: &[&str]| Change::Index {
            name: name(n),
            dependencies: deps.iter().map(|d| name(d)).collect(),
        };
        let queued = (
            catalog.query_in_order(name("a")),
            catalog.submit(index("a", &[])),
            catalog.query_in_order(name("a")),
            catalog.submit(index("b", &["a"])),
            catalog.submit(Change::Remove { name: name("a") }),
            catalog.submit(Change::Remove { name: name("b") }),
            catalog.query_in_order(name("b")),
            catalog.submit(Change::Remove { name: name("a") }),
            catalog.query_in_order(name("a")),
            catalog.submit(index("c", &[])),
        );
        let (before, indexed, after, b, blocked, removed_b, b_gone, removed_a, a_gone, c) =
            futures::executor::block_on(async {
                (
                    queued.0.await,
                    queued.1.await,
                    queued.2.await,
                    queued.3.await,
                    queued.4.await,
                    queued.5.await,
                    queued.6.await,
                    queued.7.await,
                    queued.8.await,
                    queued.9.await,
                )
            });
        assert!(!before.expect("answered"), "before");
        assert_eq!(indexed.expect("answered"), Effect::Added);
        assert!(after.expect("answered"), "after");
        assert_eq!(b.expect("answered"), Effect::Added);
        assert!(
            matches!(
                blocked,
                Err(StateError::Domain(DomainError::HasDependents { .. }))
            ),
            "{blocked:?}"
        );
        assert_eq!(removed_b.expect("answered"), Effect::Removed);
        assert!(!b_gone.expect("answered"), "b_gone");
        assert_eq!(removed_a.expect("answered"), Effect::Removed);
        assert!(!a_gone.expect("answered"), "a_gone");
        assert_eq!(c.expect("answered"), Effect::Added);
        assert!(catalog.is_indexed("c") && !catalog.is_indexed("a"));
        catalog.close();
        assert!(
            futures::executor::block_on(catalog.submit(index("d", &[]))).is_err(),
            "a change after the close is refused"
        );
        let reopened = open(dir.path());
        let page = reopened.list("", None, 10);
        assert_eq!(page.names, [name("c")]);
    }
}
