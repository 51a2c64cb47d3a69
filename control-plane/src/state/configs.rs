//! The [`Configs`] handle: configuration versions per scope, the layered
//! effective configuration of each node, and the announcements that push a
//! change to nodes and watchers.
//!
//! Writes (`PutConfig`, `Rollback`) go through one writer thread, a
//! [`GroupCommit`]: it takes every write queued, decides each in order
//! against the book and the writes before it in the same batch, stores the
//! batch's versions in one transaction (one sync to disk for all of them),
//! and only then commits them into the book, announces them in version
//! order and answers each caller. So every version is on disk before the
//! book (and so any reader or node) sees it, and writes scale with the
//! callers in flight instead of queuing behind one sync each. `WatchConfig`
//! streams get every version ([`Configs::subscribe`]); heartbeat streams
//! wake on [`Configs::changes`], paced while writes keep coming
//! ([`FOLLOW_PACE`]), and push the latest. Reads of the store run on a
//! blocking thread: the async methods hand them over.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tracing::error;

use super::{Shared, StateError};
use crate::{
    core::{
        DomainError, NodeId,
        config::{
            Change, ConfigBook, ConfigEntry, Effective, HISTORY_PER_SCOPE, Scope, Write, diff,
        },
    },
    store::{BatchFailure, GroupCommit, Queued, Store, StoreError},
};

/// Most configuration versions written in one transaction.
const MAX_BATCH: usize = 512;

/// Shortest time between two wake-ups of [`Configs::changes`] while
/// versions keep coming. A version written after a quiet moment wakes the
/// followers (each node's heartbeat stream) at once; under a stream of
/// writes they wake at most this often, each time reading the latest, so
/// the pushes to the nodes (each a message, a report and an
/// acknowledgement, per node) do not grow with the rate of writes.
const FOLLOW_PACE: Duration = Duration::from_millis(20);

/// The book of each scope's latest version and the announcements of new
/// versions; shared by the handles (which read) and the writer's thread
/// (which alone changes them).
#[derive(Debug)]
pub(super) struct ConfigState {
    /// Latest version of every scope: only versions on disk. Locked after
    /// the registry when both are needed, never the other way round.
    book: Mutex<ConfigBook>,
    /// The highest configuration version, sent once per batch.
    version: watch::Sender<u64>,
    /// The same, paced ([`FOLLOW_PACE`]) by [`ConfigState::pace`]:
    /// heartbeat streams wake on it.
    paced: Arc<watch::Sender<u64>>,
    /// Every new configuration version, for `WatchConfig`.
    events: broadcast::Sender<Arc<ConfigEntry>>,
}

impl ConfigState {
    /// `book` as loaded from the store; `events` holds up to
    /// `event_buffer` versions for a slow watcher.
    pub(super) fn new(book: ConfigBook, event_buffer: usize) -> Self {
        let (version, _) = watch::channel(book.last_version());
        let paced = Arc::new(watch::Sender::new(book.last_version()));
        let (events, _) = broadcast::channel(event_buffer);
        Self {
            book: Mutex::new(book),
            version,
            paced,
            events,
        }
    }

    /// Passes each new highest version on to the followers, at once after
    /// a quiet moment, then at most once per [`FOLLOW_PACE`] (the latest
    /// of those written meanwhile); to run as a task. Ends once the state
    /// is dropped, after passing on the last version.
    pub(super) fn pace(&self) -> impl Future<Output = ()> + Send + 'static {
        pace(
            self.version.subscribe(),
            Arc::clone(&self.paced),
            FOLLOW_PACE,
        )
    }

    pub(super) fn book(&self) -> MutexGuard<'_, ConfigBook> {
        // The book changes only by `commit_all`, after the store has the
        // entries, and every book method leaves it consistent.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A write queued for the writer, its scope's node or group checked.
#[derive(Debug)]
struct Pending {
    scope: Scope,
    write: Write,
    /// Compare-and-set: the version the scope must be at (0: any).
    expected: u64,
    role: &'static str,
    /// The version a rollback restores; 0 for a write.
    rollback_of: u64,
}

type Answer = Result<ConfigEntry, StateError>;

/// The configuration's writer thread (see the module's documentation).
#[derive(Debug)]
pub(super) struct ConfigWriter(GroupCommit<Pending, Answer>);

impl ConfigWriter {
    /// Starts the writer's thread over `store` and `state`; it ends when
    /// the writer is closed or dropped.
    pub(super) fn start(store: Arc<Store>, state: Arc<ConfigState>) -> std::io::Result<Self> {
        GroupCommit::start(
            "farm-config-writer",
            MAX_BATCH,
            move |batch: Vec<Queued<Pending, Answer>>| {
                let (writes, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(Queued::into_parts).unzip();
                let answers = write_batch(&store, &state, writes, SystemTime::now());
                for (reply, answer) in replies.into_iter().zip(answers) {
                    reply.answer(answer);
                }
            },
        )
        .map(Self)
    }

    /// Queues `pending` now (the order of calls is the order of versions)
    /// and returns the wait for its answer, which comes once its version
    /// is on disk and announced, or refused.
    fn submit(&self, pending: Pending) -> impl Future<Output = Answer> + use<> {
        let answer = self.0.submit(pending);
        async move {
            answer
                .await
                .unwrap_or_else(|_stopped| Err(StoreError::Closed.into()))
        }
    }

    /// Writes what is queued, then stops the thread and waits for it.
    /// Later writes are refused ([`StoreError::Closed`]). Blocks: call
    /// from a blocking thread.
    pub(super) fn close(&self) {
        self.0.close();
    }
}

/// [`ConfigState::pace`] with `pace`.
async fn pace(mut written: watch::Receiver<u64>, paced: Arc<watch::Sender<u64>>, pace: Duration) {
    while written.changed().await.is_ok() {
        let version = *written.borrow_and_update();
        paced.send_replace(version);
        tokio::time::sleep(pace).await;
    }
}

/// How the writer decided one write of a batch.
enum Decision {
    /// Prepared: this entry of the batch.
    Prepared(usize),
    /// Refused by its own rules. `tentative`: decided against a version
    /// of the same batch, so true only if the batch reaches the disk.
    Refused { error: DomainError, tentative: bool },
}

/// Writes one batch and returns each write's answer, in order.
///
/// Under the book's lock, each write is decided in order against the
/// latest versions, those prepared before it in the batch included (a
/// compare-and-set checks, and a merge patches, the version that would
/// precede it); a refused one is not part of the batch. The lock is then
/// released while the batch's versions are stored in one transaction: the
/// book stays as it was (the writer's thread alone changes it), and readers
/// go on seeing only what is on disk. Once the transaction is on disk, the
/// versions are committed into the book and announced in version order
/// under the lock, then answered. If the transaction fails, the book and
/// the store stay as before the batch (nothing was committed, the
/// transaction is rolled back), nothing is announced, and every write of
/// the batch, and every refusal decided against one of them, is answered
/// with the failure.
fn write_batch(
    store: &Store,
    state: &ConfigState,
    writes: Vec<Pending>,
    now: SystemTime,
) -> Vec<Answer> {
    let mut decisions = Vec::with_capacity(writes.len());
    let entries = {
        let book = state.book();
        let mut batch = book.batch();
        for pending in writes {
            let tentative = batch.touches(&pending.scope);
            let prepared = batch.prepare(
                pending.scope,
                pending.write,
                pending.expected,
                pending.role,
                pending.rollback_of,
                now,
            );
            decisions.push(match prepared {
                Ok(_) => Decision::Prepared(batch.entries().len() - 1),
                Err(error) => Decision::Refused { error, tentative },
            });
        }
        batch.into_entries()
    };
    let written = if entries.is_empty() {
        Ok(())
    } else {
        store.insert_configs(&entries)
    };
    match written {
        Ok(()) => {
            publish(state, &entries);
            decisions
                .into_iter()
                .map(|decision| match decision {
                    Decision::Prepared(index) => Ok(entries[index].clone()),
                    Decision::Refused { error, .. } => Err(error.into()),
                })
                .collect()
        }
        Err(err) => {
            error!(cause = %err, versions = entries.len(), "writing configuration versions failed; none of them was acknowledged");
            let failure = BatchFailure::from(&err);
            decisions
                .into_iter()
                .map(|decision| match decision {
                    Decision::Refused {
                        error,
                        tentative: false,
                    } => Err(error.into()),
                    _ => Err(failure.clone().into_error(StoreError::ConfigBatch).into()),
                })
                .collect()
        }
    }
}

/// Commits `entries` (on disk) into the book and announces them in
/// version order, under the book's lock: a reader of the book never sees
/// a version before it is announced, nor announcements out of order.
fn publish(state: &ConfigState, entries: &[ConfigEntry]) {
    let Some(last) = entries.last() else {
        return;
    };
    let mut book = state.book();
    book.commit_all(entries.iter().cloned());
    for entry in entries {
        // No receivers is fine: nobody is watching.
        let _ = state.events.send(Arc::new(entry.clone()));
    }
    state.version.send_replace(last.version);
    drop(book);
}

/// Handle on the farm's configuration.
#[derive(Debug, Clone)]
pub struct Configs {
    shared: Arc<Shared>,
}

impl Configs {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The latest version of `scope`, if ever written.
    pub fn latest(&self, scope: &Scope) -> Option<ConfigEntry> {
        self.shared.book().latest(scope).cloned()
    }

    /// Writes a new version of `scope` (compare-and-set against
    /// `expected` unless 0) and announces it once it is on disk. The
    /// scope's node or group must exist.
    pub async fn put(
        &self,
        scope: Scope,
        write: Write,
        expected: u64,
        role: &'static str,
    ) -> Result<ConfigEntry, StateError> {
        self.submit(Pending {
            scope,
            write,
            expected,
            role,
            rollback_of: 0,
        })
        .await
    }

    /// Writes a new version of `scope` with the data of its `version`.
    /// Version 0 undoes the scope's last write: it restores the version
    /// before the current one, expecting the current one (unless
    /// `expected` names another), so a write landing meanwhile is not the
    /// one undone.
    pub async fn rollback(
        &self,
        scope: Scope,
        version: u64,
        expected: u64,
        role: &'static str,
    ) -> Result<ConfigEntry, StateError> {
        let resolved = scope.clone();
        let (version, expected, old) = self
            .blocking(move |configs| {
                let scope = resolved;
                let (version, expected) = match version {
                    0 => {
                        let last = configs.shared.store.config_history(&scope, 0, 2)?;
                        let [current, previous] = last.as_slice() else {
                            return Err(DomainError::NoEarlierVersion(scope).into());
                        };
                        let expected = if expected == 0 {
                            current.version
                        } else {
                            expected
                        };
                        (previous.version, expected)
                    }
                    version => (version, expected),
                };
                let old = configs.stored(&scope, version)?;
                Ok((version, expected, old))
            })
            .await?;
        self.submit(Pending {
            scope,
            write: Write::Replace(old),
            expected,
            role,
            rollback_of: version,
        })
        .await
    }

    /// Hands a write whose scope exists to the writer and waits for its
    /// answer.
    async fn submit(&self, pending: Pending) -> Result<ConfigEntry, StateError> {
        self.check_scope(&pending.scope)?;
        self.shared.config_writer.submit(pending).await
    }

    /// Refuses a scope whose node or group does not exist.
    fn check_scope(&self, scope: &Scope) -> Result<(), StateError> {
        let registry = self.shared.registry();
        match scope {
            Scope::Global => {}
            Scope::Node(id) => {
                registry.group_of(*id)?;
            }
            Scope::Group(name) if !registry.has_group(name) => {
                return Err(DomainError::UnknownGroup(name.clone()).into());
            }
            Scope::Group(_) => {}
        }
        Ok(())
    }

    /// Versions of `scope` below `before` (0: from the newest), newest first.
    pub async fn history(
        &self,
        scope: Scope,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ConfigEntry>, StateError> {
        self.blocking(move |configs| {
            Ok(configs.shared.store.config_history(&scope, before, limit)?)
        })
        .await
    }

    /// Changes of `scope` from version `from` (0: empty) to `to` (0: the
    /// current); returns the resolved versions too.
    pub async fn diff(
        &self,
        scope: Scope,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64, Vec<Change>), StateError> {
        self.blocking(move |configs| configs.diff_blocking(&scope, from, to))
            .await
    }

    /// Kept versions of `scope` after `after`, oldest first, and whether the
    /// history still reaches back to `after` (false: versions were dropped
    /// and a snapshot is needed).
    pub async fn since(
        &self,
        scope: Scope,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<ConfigEntry>, bool), StateError> {
        self.blocking(move |configs| configs.since_blocking(&scope, after, limit))
            .await
    }

    /// Runs store calls on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Self) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || call(&this))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The data of `scope`'s `version`, from the store.
    fn stored(&self, scope: &Scope, version: u64) -> Result<Value, StateError> {
        let entry = self.shared.store.config_version(scope, version)?;
        let entry = entry.ok_or_else(|| DomainError::UnknownVersion {
            scope: scope.clone(),
            version,
        })?;
        Ok(entry.data)
    }

    fn diff_blocking(
        &self,
        scope: &Scope,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64, Vec<Change>), StateError> {
        let to = if to == 0 {
            self.shared.book().version_of(scope)
        } else {
            to
        };
        let data_of = |version: u64| -> Result<Value, StateError> {
            if version == 0 {
                return Ok(Value::Object(serde_json::Map::new()));
            }
            self.stored(scope, version)
        };
        let changes = diff(&data_of(from)?, &data_of(to)?);
        Ok((from, to, changes))
    }

    /// The effective configuration of node `id`.
    pub fn effective(&self, id: NodeId) -> Result<Effective, StateError> {
        let group = self.shared.registry().group_of(id)?.to_owned();
        Ok(self.shared.book().effective(id, &group))
    }

    /// Wakes when configuration versions were written: at once after a
    /// quiet moment, at most once per [`FOLLOW_PACE`] (20 ms) while writes
    /// keep coming. Holds the highest version; the book has it.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.config.paced.subscribe()
    }

    /// Every new configuration version from now on, in version order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ConfigEntry>> {
        self.shared.config.events.subscribe()
    }

    fn since_blocking(
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::UNIX_EPOCH};

    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde_json::json;
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;
    use crate::state::FarmState;

    fn open(dir: &std::path::Path) -> (Arc<Store>, Arc<ConfigState>) {
        let store = Store::open(dir).expect("store");
        let (latest, last) = store.load_configs().expect("load");
        let state = ConfigState::new(ConfigBook::new(latest, last), 4096);
        (Arc::new(store), Arc::new(state))
    }

    fn pending(scope: &Scope, write: Write, expected: u64) -> Pending {
        Pending {
            scope: scope.clone(),
            write,
            expected,
            role: "admin",
            rollback_of: 0,
        }
    }

    fn group(name: &str) -> Scope {
        Scope::Group(name.to_owned())
    }

    /// Versions of `scope` on disk, oldest first.
    fn stored(store: &Store, scope: &Scope) -> Vec<u64> {
        let mut versions: Vec<u64> = store
            .config_history(scope, 0, HISTORY_PER_SCOPE)
            .expect("history")
            .iter()
            .map(|e| e.version)
            .collect();
        versions.reverse();
        versions
    }

    fn versions(answers: &[Answer]) -> Vec<Result<u64, String>> {
        answers
            .iter()
            .map(|a| a.as_ref().map(|e| e.version).map_err(|e| e.to_string()))
            .collect()
    }

    /// Property: a batch answers each write as writing them one at a time
    /// would, whatever the batches' sizes. Writes race: compare-and-sets
    /// read the version readers see before their batch (so several in a
    /// batch expect the same one), merges add and delete keys, some data
    /// is refused. Versions stay dense and in order, on disk and
    /// announced.
    #[test]
    fn batches_answer_as_writing_one_at_a_time_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, state) = open(dir.path());
        let mut announced = state.events.subscribe();
        let mut model = ConfigBook::default();
        let mut accepted: Vec<ConfigEntry> = Vec::new();
        let scopes = [Scope::Global, group("a"), group("b")];
        let mut rng = StdRng::seed_from_u64(20_250_101);
        for round in 0..40 {
            let size = rng.random_range(1..=24);
            let writes: Vec<Pending> = (0..size)
                .map(|_| {
                    let scope = &scopes[rng.random_range(0..scopes.len())];
                    let key = format!("k{}", rng.random_range(0..6));
                    let write = match rng.random_range(0..10) {
                        0..=3 => Write::Merge(json!({ key: rng.random_range(0..100) })),
                        4..=5 => Write::Merge(json!({ key: null })),
                        6..=8 => Write::Replace(json!({ key: "whole" })),
                        _ => Write::Merge(json!({"workload": {"delay_ms": -1}})),
                    };
                    let seen = state.book().version_of(scope);
                    let expected = match rng.random_range(0..4) {
                        0 => 0,
                        1 => seen.saturating_sub(1),
                        _ => seen,
                    };
                    pending(scope, write, expected)
                })
                .collect();
            let want: Vec<Result<(u64, Value), String>> = writes
                .iter()
                .map(|w| {
                    let prepared = model
                        .batch()
                        .prepare(
                            w.scope.clone(),
                            w.write.clone(),
                            w.expected,
                            w.role,
                            0,
                            UNIX_EPOCH,
                        )
                        .cloned();
                    prepared
                        .map(|entry| {
                            model.commit_all([entry.clone()]);
                            accepted.push(entry.clone());
                            (entry.version, entry.data)
                        })
                        .map_err(|e| e.to_string())
                })
                .collect();
            let got: Vec<Result<(u64, Value), String>> =
                write_batch(&store, &state, writes, UNIX_EPOCH)
                    .into_iter()
                    .map(|a| a.map(|e| (e.version, e.data)).map_err(|e| e.to_string()))
                    .collect();
            assert_eq!(got, want, "round {round}");
        }
        let book = state.book();
        assert_eq!(book.last_version(), model.last_version());
        for scope in &scopes {
            assert_eq!(book.latest(scope), model.latest(scope), "{scope}");
            let want: Vec<u64> = accepted
                .iter()
                .filter(|e| &e.scope == scope)
                .map(|e| e.version)
                .collect();
            assert_eq!(stored(&store, scope), want, "{scope} on disk");
        }
        let last = model.last_version();
        assert!(last > 100, "enough writes were accepted: {last}");
        let seen: Vec<u64> = std::iter::from_fn(|| announced.try_recv().ok())
            .map(|e| e.version)
            .collect();
        assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "announced in order");
        assert_eq!(*state.version.borrow(), last);
    }

    /// A transaction that fails half-way (the batch's second version is
    /// already on disk, from elsewhere) leaves the book and the store as
    /// they were and announces nothing; its writes, and a refusal decided
    /// against one of them, are answered with the failure, while a
    /// refusal of its own stands. The next batch takes the same versions.
    #[test]
    fn a_failed_transaction_leaves_the_book_and_the_store_as_they_were() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, state) = open(dir.path());
        let first = write_batch(
            &store,
            &state,
            vec![
                pending(&Scope::Global, Write::Replace(json!({"a": 1})), 0),
                pending(&group("a"), Write::Replace(json!({"g": 1})), 0),
            ],
            UNIX_EPOCH,
        );
        assert_eq!(versions(&first), [Ok(1), Ok(2)]);
        let foreign = ConfigEntry {
            scope: group("other"),
            version: 4,
            data: json!({}),
            created_at: UNIX_EPOCH,
            role: "admin".into(),
            rollback_of: 0,
        };
        store
            .insert_config(&foreign)
            .expect("a row the book does not know");

        let book_before = {
            let book = state.book();
            (
                book.last_version(),
                book.latest(&Scope::Global).cloned(),
                book.latest(&group("a")).cloned(),
            )
        };
        let mut announced = state.events.subscribe();
        let mut woken = state.version.subscribe();
        woken.mark_unchanged();
        let answers = write_batch(
            &store,
            &state,
            vec![
                // Version 3, then 4, which the store already holds.
                pending(&Scope::Global, Write::Merge(json!({"b": 2})), 1),
                pending(&Scope::Global, Write::Merge(json!({"c": 3})), 3),
                // Refused against version 4 of this batch.
                pending(&Scope::Global, Write::Replace(json!({"x": 1})), 1),
                // Refused whatever the batch.
                pending(
                    &group("a"),
                    Write::Merge(json!({"workload": {"delay_ms": -1}})),
                    0,
                ),
            ],
            UNIX_EPOCH,
        );
        for (i, answer) in answers.iter().take(3).enumerate() {
            assert!(
                matches!(answer, Err(StateError::Store(StoreError::ConfigBatch(_)))),
                "write {i}: {answer:?}"
            );
        }
        assert!(
            matches!(
                answers[3],
                Err(StateError::Domain(DomainError::UnusableConfig { .. }))
            ),
            "{:?}",
            answers[3]
        );
        let book_after = {
            let book = state.book();
            (
                book.last_version(),
                book.latest(&Scope::Global).cloned(),
                book.latest(&group("a")).cloned(),
            )
        };
        assert_eq!(book_after, book_before, "the book is as before the batch");
        assert_eq!(stored(&store, &Scope::Global), [1], "nothing of it on disk");
        assert_eq!(stored(&store, &group("a")), [2]);
        assert_eq!(stored(&store, &group("other")), [4]);
        assert_eq!(announced.try_recv().err(), Some(TryRecvError::Empty));
        assert!(!woken.has_changed().expect("open"), "nobody woken");

        let next = write_batch(
            &store,
            &state,
            vec![pending(&Scope::Global, Write::Merge(json!({"b": 2})), 1)],
            UNIX_EPOCH,
        );
        assert_eq!(versions(&next), [Ok(3)]);
        assert_eq!(
            state.book().latest(&Scope::Global).map(|e| e.data.clone()),
            Some(json!({"a": 1, "b": 2}))
        );
        assert_eq!(announced.try_recv().map(|e| e.version), Ok(3));
    }

    /// The writer's thread: writes get versions in the order they were
    /// queued; the close writes what is queued and refuses what comes
    /// after; on a closed store, every write fails and the book stays.
    #[test]
    fn the_writer_finishes_its_queue_at_the_close_and_fails_on_a_closed_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, state) = open(dir.path());
        let writer = ConfigWriter::start(Arc::clone(&store), Arc::clone(&state)).expect("writer");
        let queued: Vec<_> = (0..50)
            .map(|i| writer.submit(pending(&Scope::Global, Write::Replace(json!({"i": i})), 0)))
            .collect();
        writer.close();
        let answered: Vec<u64> = queued
            .into_iter()
            .map(|w| futures::executor::block_on(w).expect("written").version)
            .collect();
        assert_eq!(answered, (1..=50).collect::<Vec<_>>());
        let late = futures::executor::block_on(writer.submit(pending(
            &Scope::Global,
            Write::Replace(json!({})),
            0,
        )));
        assert!(
            matches!(late, Err(StateError::Store(StoreError::Closed))),
            "{late:?}"
        );

        store.close().expect("close");
        let writer = ConfigWriter::start(Arc::clone(&store), Arc::clone(&state)).expect("writer");
        let failed = futures::executor::block_on(writer.submit(pending(
            &Scope::Global,
            Write::Replace(json!({})),
            0,
        )));
        assert!(
            matches!(
                &failed,
                Err(StateError::Store(StoreError::ConfigBatch(message))) if message.contains("closed")
            ),
            "{failed:?}"
        );
        assert_eq!(state.book().last_version(), 50);
        assert_eq!(
            state.book().latest(&Scope::Global).map(|e| e.data.clone()),
            Some(json!({"i": 49}))
        );
        writer.close();
    }

    /// Writers racing through [`Configs::put`], each compare-and-setting
    /// the version it last read: exactly one wins per version, each win
    /// makes the next version, and the scope's history is dense and in
    /// order, every merge kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_compare_and_sets_win_once_per_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = FarmState::open_default(dir.path()).await;
        let configs = state.configs();
        let mut announced = configs.subscribe();
        let first = configs
            .put(Scope::Global, Write::Replace(json!({})), 0, "admin")
            .await
            .expect("first");
        assert_eq!(first.version, 1);
        let writers: Vec<_> = (0..12)
            .map(|w| {
                let configs = configs.clone();
                tokio::spawn(async move {
                    let mut tries = Vec::new();
                    for i in 0..20 {
                        let seen = configs.latest(&Scope::Global).map_or(0, |e| e.version);
                        let write = Write::Merge(json!({ format!("w{w}"): i }));
                        let answer = configs.put(Scope::Global, write, seen, "admin").await;
                        tries.push((w, i, seen, answer));
                    }
                    tries
                })
            })
            .collect();
        let mut won = BTreeMap::new();
        let mut last_win = BTreeMap::new();
        for writer in writers {
            for (w, i, seen, answer) in writer.await.expect("writer") {
                match answer {
                    Ok(entry) => {
                        assert_eq!(entry.version, seen + 1, "a win makes the next version");
                        assert!(
                            won.insert(seen, w).is_none(),
                            "two writers won on version {seen}"
                        );
                        last_win.insert(w, i);
                    }
                    Err(StateError::Domain(DomainError::VersionConflict {
                        expected,
                        current,
                        ..
                    })) => assert!(expected == seen && current > seen),
                    Err(other) => panic!("{other}"),
                }
            }
        }
        let last = 1 + won.len() as u64;
        assert_eq!(
            won.keys().copied().collect::<Vec<_>>(),
            (1..last).collect::<Vec<_>>(),
            "one win per version, none skipped"
        );
        let history = configs
            .history(Scope::Global, 0, HISTORY_PER_SCOPE)
            .await
            .expect("history");
        let mut on_disk: Vec<u64> = history.iter().map(|e| e.version).collect();
        on_disk.reverse();
        assert_eq!(on_disk, (1..=last).collect::<Vec<_>>());
        let want: serde_json::Map<String, Value> = last_win
            .iter()
            .map(|(w, i)| (format!("w{w}"), json!(i)))
            .collect();
        assert_eq!(
            configs.latest(&Scope::Global).map(|e| e.data),
            Some(Value::Object(want))
        );
        let seen: Vec<u64> = std::iter::from_fn(|| announced.try_recv().ok())
            .map(|e| e.version)
            .collect();
        assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "announced in order");
        state.close().await.expect("close");
    }

    /// Lets every other task run (the clock is paused: no timer fires).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// The pace: a version after a quiet moment passes at once; those
    /// written while the pace runs wait for its end and pass as one, the
    /// latest; once the writer is gone the pacer ends.
    #[tokio::test(start_paused = true)]
    async fn followers_wake_at_once_then_once_per_pace_for_the_latest() {
        let (written, receiver) = watch::channel(0_u64);
        let paced = Arc::new(watch::Sender::new(0_u64));
        let mut follower = paced.subscribe();
        let pacer = tokio::spawn(pace(receiver, Arc::clone(&paced), FOLLOW_PACE));
        written.send_replace(1);
        settle().await;
        assert_eq!(
            follower.has_changed().ok(),
            Some(true),
            "passed without waiting"
        );
        assert_eq!(*follower.borrow_and_update(), 1);
        for version in 2..=9 {
            written.send_replace(version);
        }
        settle().await;
        assert_eq!(
            follower.has_changed().ok(),
            Some(false),
            "held until the pace ends"
        );
        follower.changed().await.expect("woken when the pace ends");
        assert_eq!(*follower.borrow_and_update(), 9, "2 to 9 pass as one");
        drop(written);
        pacer.await.expect("the pacer ends with the writer");
        assert_eq!(follower.has_changed().ok(), Some(false));
    }
}
