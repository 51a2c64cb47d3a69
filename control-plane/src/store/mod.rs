//! The SQLite store: node identities, configuration versions and the
//! dependency catalog survive restarts here.
//!
//! One connection in WAL mode with `synchronous = FULL`, so a write is on disk
//! before the call that made it is acknowledged. Health is not kept: it is
//! rebuilt from heartbeats after a restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, params};
use thiserror::Error;

pub use group_commit::{GroupCommit, Queued, Stopped};

use crate::core::{
    NodeId, StoredNode,
    config::{ConfigEntry, HISTORY_PER_SCOPE, Scope},
};

mod catalog;
mod group_commit;

const CONFIG_COLUMNS: &str = "scope, version, data, created_ms, role, rollback_of";

fn config_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, i64, String, i64, String, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn config_entry(
    (scope, version, data, created_ms, role, rollback_of): (String, i64, String, i64, String, i64),
) -> Result<ConfigEntry, StoreError> {
    let corrupt =
        |what: &str| StoreError::Corrupt(format!("{what} of configuration version {version}"));
    Ok(ConfigEntry {
        scope: scope.parse().map_err(|_| corrupt("scope"))?,
        version: u64::try_from(version).map_err(|_| corrupt("number"))?,
        data: serde_json::from_str(&data).map_err(|_| corrupt("data"))?,
        created_at: UNIX_EPOCH + Duration::from_millis(u64::try_from(created_ms).unwrap_or(0)),
        role,
        rollback_of: u64::try_from(rollback_of).unwrap_or(0),
    })
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

/// `PRAGMA application_id` of the farm's database: "FARM" in ASCII. Older
/// farm databases hold 0, and only the farm's tables.
const APPLICATION_ID: i32 = 0x4641_524D;

/// The tables of the farm's database (SQLite's own, `sqlite_*`, aside).
const TABLES: [&str; 3] = ["nodes", "config_versions", "catalog"];

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be opened or created at this path.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// `farm.db` is not the farm's database: another file, another
    /// program's database, or a damaged one. It is left as it is.
    #[error(
        "{path} is not a database this control plane can use: {reason}. It was left untouched; \
move it away (or point --data-dir elsewhere) to start afresh, or restore it from a copy"
    )]
    Foreign { path: PathBuf, reason: String },
    /// The database was written by a newer version of the control plane.
    #[error(
        "the store at {path} has schema version {found}; this control plane knows {SCHEMA_VERSION}"
    )]
    Schema { path: PathBuf, found: i64 },
    /// A row could not be read back (corrupt or hand-edited database).
    #[error("corrupt row in the store: {0}")]
    Corrupt(String),
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] rusqlite::Error),
    /// A batch of identities could not be written.
    #[error("writing node identities failed: {0}")]
    Batch(String),
    /// A batch of configuration versions could not be written; none of
    /// them was stored.
    #[error("writing configuration versions failed: {0}")]
    ConfigBatch(String),
    /// The disk holding the store is full: the write was not stored, and
    /// reads go on. Writes succeed again once there is room.
    #[error("the disk holding the store is full, so the write was not stored ({0})")]
    DiskFull(String),
    /// The store was closed (the control plane is shutting down).
    #[error("the store is closed")]
    Closed,
    /// A blocking task running store calls failed.
    #[error("a store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether SQLite found no room on the disk.
    pub fn is_disk_full(&self) -> bool {
        let sqlite = match self {
            Self::Open { source, .. } | Self::Query(source) => source,
            Self::DiskFull(_) => return true,
            _ => return false,
        };
        sqlite.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
    }
}

/// Why a batch of writes was not stored, as each of its writers is told:
/// the batch's one error, which is not `Clone`, said in words, and whether
/// it was a full disk.
#[derive(Debug, Clone)]
pub struct BatchFailure {
    message: String,
    disk_full: bool,
}

impl From<&StoreError> for BatchFailure {
    fn from(err: &StoreError) -> Self {
        Self {
            message: err.to_string(),
            disk_full: err.is_disk_full(),
        }
    }
}

impl BatchFailure {
    /// The error a writer of the batch gets: [`StoreError::DiskFull`], or
    /// what `other` makes of the message.
    pub fn into_error(self, other: fn(String) -> StoreError) -> StoreError {
        if self.disk_full {
            StoreError::DiskFull(self.message)
        } else {
            other(self.message)
        }
    }
}

/// Handle to the database. Calls are short and synchronous; a
/// `std::sync::Mutex` serialises them (SQLite allows one writer anyway).
#[derive(Debug)]
pub struct Store {
    /// `None` once closed.
    conn: Mutex<Option<Connection>>,
}

/// The open connection, locked.
struct Conn<'a>(MutexGuard<'a, Option<Connection>>);

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.0.as_ref().expect("checked open when locked")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.0.as_mut().expect("checked open when locked")
    }
}

/// Whether the file at `path`, if any, starts as a SQLite database does.
/// A missing or empty file is a new database.
fn check_header(path: &Path) -> Result<(), String> {
    let mut header = [0u8; 16];
    let read = match std::fs::File::open(path) {
        Ok(mut file) => std::io::Read::read(&mut file, &mut header),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(format!("it cannot be read ({err})")),
    };
    match read {
        Ok(0) => Ok(()),
        Ok(n) if n == header.len() && &header == SQLITE_HEADER => Ok(()),
        Ok(_) => Err("it is not a SQLite database (it does not start with SQLite's header)".into()),
        Err(err) => Err(format!("it cannot be read ({err})")),
    }
}

/// Whether an open SQLite database is the farm's (or new) and whole:
/// its application id, its tables, and SQLite's own quick check. Reads
/// only.
fn check_contents(conn: &Connection) -> Result<(), String> {
    let query = |err: rusqlite::Error| match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            format!("it is damaged: SQLite says {err}")
        }
        _ => format!("SQLite cannot read it ({err})"),
    };
    let id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(query)?;
    if id != 0 && id != APPLICATION_ID {
        return Err(format!(
            "it belongs to another program (its application id is {id:#x}, the farm's {APPLICATION_ID:#x})"
        ));
    }
    let mut statement = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .map_err(query)?;
    let others: Vec<String> = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(query)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query)?
        .into_iter()
        .filter(|name| !TABLES.contains(&name.as_str()))
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "it holds tables the farm does not use ({}): another program's database",
            others.join(", ")
        ));
    }
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut check| {
            check
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(query)?;
    if problems != ["ok"] {
        return Err(format!(
            "it is damaged: SQLite's check says {}",
            problems.join("; ")
        ));
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) `farm.db` in `dir`. A file there that is not the
    /// farm's database (not SQLite, another program's tables or
    /// application id) or that fails SQLite's check is refused before
    /// anything is written to it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("farm.db");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let foreign = |reason: String| StoreError::Foreign {
            path: path.clone(),
            reason,
        };
        check_header(&path).map_err(foreign)?;
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        check_contents(&conn).map_err(foreign)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path,
                found: version,
            });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS nodes (
                id            INTEGER PRIMARY KEY,
                name          TEXT NOT NULL UNIQUE,
                address       TEXT NOT NULL,
                grp           TEXT NOT NULL,
                labels        TEXT NOT NULL,
                secret_hash   BLOB NOT NULL,
                registered_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS config_versions (
                version     INTEGER PRIMARY KEY,
                scope       TEXT NOT NULL,
                data        TEXT NOT NULL,
                created_ms  INTEGER NOT NULL,
                role        TEXT NOT NULL,
                rollback_of INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS config_by_scope ON config_versions (scope, version);
            CREATE TABLE IF NOT EXISTS catalog (
                name         TEXT PRIMARY KEY,
                dependencies TEXT NOT NULL
            ) WITHOUT ROWID;",
        )
        .map_err(open_err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(Some(conn)),
        })
    }

    fn conn(&self) -> Result<Conn<'_>, StoreError> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (each call is one statement or transaction), so poisoning is moot.
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(StoreError::Closed);
        }
        Ok(Conn(guard))
    }

    /// Closes the database: the write-ahead log is folded into it and the
    /// file released. Every later call fails with [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        match conn {
            Some(conn) => conn.close().map_err(|(_, err)| StoreError::Query(err)),
            None => Ok(()),
        }
    }

    /// Every stored identity.
    pub fn load_nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, name, address, grp, labels, secret_hash, registered_ms FROM nodes ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Vec<u8>>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })?;
        let mut nodes = Vec::new();
        for row in rows {
            let (id, name, address, group, labels, hash, registered_ms) = row?;
            let labels: BTreeMap<String, String> = serde_json::from_str(&labels)
                .map_err(|e| StoreError::Corrupt(format!("labels of node n{id}: {e}")))?;
            let secret_hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("secret hash of node n{id}")))?;
            nodes.push(StoredNode {
                id: NodeId(u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("id {id}")))?),
                name,
                address,
                group,
                labels,
                secret_hash,
                registered_at: UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(registered_ms).unwrap_or(0)),
            });
        }
        Ok(nodes)
    }

    /// Inserts or updates one identity.
    #[cfg(test)]
    pub fn upsert_node(&self, node: &StoredNode) -> Result<(), StoreError> {
        upsert(&*self.conn()?, node)
    }

    /// Applies `changes` in order in one transaction: one sync to disk for
    /// all of them.
    fn apply<'a>(&self, changes: impl IntoIterator<Item = &'a Change>) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        for change in changes {
            match change {
                Change::Upsert(node) => upsert(&tx, node)?,
                Change::Delete(id) => {
                    tx.prepare_cached("DELETE FROM nodes WHERE id = ?1")?
                        .execute(params![i64::try_from(id.0).unwrap_or(i64::MAX)])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The latest version of every scope, and the highest version written.
    pub fn load_configs(&self) -> Result<(Vec<ConfigEntry>, u64), StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {CONFIG_COLUMNS} FROM config_versions
             WHERE version IN (SELECT MAX(version) FROM config_versions GROUP BY scope)"
        ))?;
        let rows: Vec<_> = stmt.query_map([], config_row)?.collect::<Result<_, _>>()?;
        let latest = rows
            .into_iter()
            .map(config_entry)
            .collect::<Result<Vec<_>, _>>()?;
        let last: Option<i64> =
            conn.query_row("SELECT MAX(version) FROM config_versions", [], |r| r.get(0))?;
        Ok((latest, u64::try_from(last.unwrap_or(0)).unwrap_or(0)))
    }

    /// Stores a new version (durably, before returning) and drops the
    /// scope's versions beyond the last [`HISTORY_PER_SCOPE`].
    #[cfg(test)]
    pub fn insert_config(&self, entry: &ConfigEntry) -> Result<(), StoreError> {
        self.insert_configs(std::slice::from_ref(entry))
    }

    /// Stores new versions in one transaction, so one sync to disk for all
    /// of them (durably, before returning), and drops each scope's versions
    /// beyond its last [`HISTORY_PER_SCOPE`]. On an error nothing of them
    /// is stored.
    pub fn insert_configs(&self, entries: &[ConfigEntry]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut scopes = BTreeSet::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO config_versions (scope, version, data, created_ms, role, rollback_of)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for entry in entries {
                let data = serde_json::to_string(&entry.data)
                    .map_err(|e| StoreError::Corrupt(format!("configuration data: {e}")))?;
                let created_ms = entry
                    .created_at
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let scope = entry.scope.to_string();
                insert.execute(params![
                    scope,
                    to_i64(entry.version),
                    data,
                    i64::try_from(created_ms).unwrap_or(i64::MAX),
                    entry.role,
                    to_i64(entry.rollback_of),
                ])?;
                scopes.insert(scope);
            }
            let mut prune = tx.prepare_cached(
                "DELETE FROM config_versions WHERE scope = ?1 AND version <= (
                    SELECT version FROM config_versions WHERE scope = ?1
                    ORDER BY version DESC LIMIT 1 OFFSET ?2)",
            )?;
            for scope in &scopes {
                prune.execute(params![
                    scope,
                    i64::try_from(HISTORY_PER_SCOPE).unwrap_or(i64::MAX)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Versions of `scope` below `before` (0: all), newest first, at most
    /// `limit`.
    pub fn config_history(
        &self,
        scope: &Scope,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ConfigEntry>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {CONFIG_COLUMNS} FROM config_versions
             WHERE scope = ?1 AND (?2 = 0 OR version < ?2)
             ORDER BY version DESC LIMIT ?3"
        ))?;
        let rows: Vec<_> = stmt
            .query_map(
                params![scope.to_string(), to_i64(before), to_i64(limit as u64)],
                config_row,
            )?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(config_entry).collect()
    }

    /// Versions of `scope` above `after`, oldest first, at most `limit`.
    pub fn config_after(
        &self,
        scope: &Scope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ConfigEntry>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {CONFIG_COLUMNS} FROM config_versions
             WHERE scope = ?1 AND version > ?2 ORDER BY version LIMIT ?3"
        ))?;
        let rows: Vec<_> = stmt
            .query_map(
                params![scope.to_string(), to_i64(after), to_i64(limit as u64)],
                config_row,
            )?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(config_entry).collect()
    }

    /// One version of `scope`, if kept.
    pub fn config_version(
        &self,
        scope: &Scope,
        version: u64,
    ) -> Result<Option<ConfigEntry>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(
                &format!(
                    "SELECT {CONFIG_COLUMNS} FROM config_versions WHERE scope = ?1 AND version = ?2"
                ),
                params![scope.to_string(), to_i64(version)],
                config_row,
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        row.map(config_entry).transpose()
    }

    /// How many versions of `scope` are kept.
    pub fn config_count(&self, scope: &Scope) -> Result<usize, StoreError> {
        let count: i64 = self.conn()?.query_row(
            "SELECT COUNT(*) FROM config_versions WHERE scope = ?1",
            params![scope.to_string()],
            |r| r.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// The oldest version of `scope` still kept.
    pub fn oldest_config_version(&self, scope: &Scope) -> Result<Option<u64>, StoreError> {
        let oldest: Option<i64> = self.conn()?.query_row(
            "SELECT MIN(version) FROM config_versions WHERE scope = ?1",
            params![scope.to_string()],
            |r| r.get(0),
        )?;
        Ok(oldest.and_then(|v| u64::try_from(v).ok()))
    }
}

/// Microseconds since the epoch, for revisions that keep growing across
/// restarts.
pub fn wall_micros(now: SystemTime) -> u64 {
    u64::try_from(
        now.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(0)
}

fn upsert(conn: &Connection, node: &StoredNode) -> Result<(), StoreError> {
    let labels = serde_json::to_string(&node.labels)
        .map_err(|e| StoreError::Corrupt(format!("labels: {e}")))?;
    let registered_ms = node
        .registered_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    conn.prepare_cached(
        "INSERT INTO nodes (id, name, address, grp, labels, secret_hash, registered_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(id) DO UPDATE SET
            name = excluded.name, address = excluded.address, grp = excluded.grp,
            labels = excluded.labels",
    )?
    .execute(params![
        i64::try_from(node.id.0).map_err(|_| StoreError::Corrupt("id".into()))?,
        node.name,
        node.address,
        node.group,
        labels,
        node.secret_hash.as_slice(),
        i64::try_from(registered_ms).unwrap_or(i64::MAX),
    ])?;
    Ok(())
}

/// Most identities written in one transaction.
const MAX_BATCH: usize = 512;

/// A change to the stored identities.
#[derive(Debug)]
enum Change {
    Upsert(StoredNode),
    Delete(NodeId),
}

/// Writes node identities and their removals in batches ([`GroupCommit`]):
/// each caller waits until its change is on disk; registrations and
/// deregistrations scale with the callers in flight.
#[derive(Debug)]
pub struct NodeWriter(GroupCommit<Change, Result<(), BatchFailure>>);

impl NodeWriter {
    /// Starts the writer's thread; it ends when the writer is closed or
    /// dropped.
    pub fn start(store: std::sync::Arc<Store>) -> std::io::Result<Self> {
        GroupCommit::start(
            "farm-node-writer",
            MAX_BATCH,
            move |batch: Vec<Queued<Change, _>>| {
                let written = store
                    .apply(batch.iter().map(|q| &q.change))
                    .map_err(|e| BatchFailure::from(&e));
                for queued in batch {
                    queued.answer(written.clone());
                }
            },
        )
        .map(Self)
    }

    /// Writes what is queued, then stops the thread and waits for it.
    /// Later writes fail. Blocks: call from a blocking thread.
    pub fn close(&self) {
        self.0.close();
    }

    /// Queues `node` at once, to be written with whatever else is waiting;
    /// the future resolves once it is on disk. Waiting holds no thread.
    pub fn upsert(&self, node: StoredNode) -> impl Future<Output = Result<(), StoreError>> + use<> {
        self.write(Change::Upsert(node))
    }

    /// Queues the removal of the identity `id` at once; the future resolves
    /// once that is on disk.
    pub fn delete(&self, id: NodeId) -> impl Future<Output = Result<(), StoreError>> + use<> {
        self.write(Change::Delete(id))
    }

    /// Queues `change` now (so the order of calls is the order on disk) and
    /// returns the wait for its batch.
    fn write(&self, change: Change) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let written = self.0.submit(change);
        async move {
            match written.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(failure)) => Err(failure.into_error(StoreError::Batch)),
                Err(Stopped) => Err(StoreError::Batch("the writer has stopped".to_owned())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, name: &str) -> StoredNode {
        StoredNode {
            id: NodeId(id),
            name: name.into(),
            address: "127.0.0.1:1".into(),
            group: "default".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            secret_hash: [7; 32],
            registered_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        }
    }

    #[test]
    fn identities_survive_reopening() {
        let dir = tempdir();
        {
            let store = Store::open(&dir).expect("open");
            store.upsert_node(&node(1, "a")).expect("insert");
            store.upsert_node(&node(2, "b")).expect("insert");
            let mut moved = node(1, "a");
            moved.address = "127.0.0.1:2".into();
            store.upsert_node(&moved).expect("update");
            store.apply([&Change::Delete(NodeId(2))]).expect("delete");
        }
        let store = Store::open(&dir).expect("reopen");
        let nodes = store.load_nodes().expect("load");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].address, "127.0.0.1:2");
        assert_eq!(
            nodes[0],
            StoredNode {
                address: "127.0.0.1:2".into(),
                ..node(1, "a")
            }
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn batched_writes_and_removals_from_many_callers_all_reach_the_disk() {
        let dir = tempdir();
        {
            let store = std::sync::Arc::new(Store::open(&dir).expect("open"));
            let writer = std::sync::Arc::new(NodeWriter::start(store).expect("writer"));
            let callers: Vec<_> = (0..8u64)
                .map(|t| {
                    let writer = std::sync::Arc::clone(&writer);
                    std::thread::spawn(move || {
                        for i in 0..50u64 {
                            let id = t * 1000 + i + 1;
                            futures::executor::block_on(writer.upsert(node(id, &format!("n{id}"))))
                                .expect("written");
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.join().expect("caller");
            }
            futures::executor::block_on(writer.delete(NodeId(1))).expect("deleted");
        }
        let nodes = Store::open(&dir)
            .expect("reopen")
            .load_nodes()
            .expect("load");
        assert_eq!(nodes.len(), 399);
        assert!(nodes.iter().any(|n| n.name == "n7050"));
        assert!(!nodes.iter().any(|n| n.name == "n1"));
        std::fs::remove_dir_all(dir).ok();
    }

    /// Closing writes what was queued before it, refuses what comes after,
    /// and leaves a database that opens again with every write in it.
    #[test]
    fn closing_finishes_queued_writes_and_refuses_later_ones() {
        let dir = tempdir();
        {
            let store = std::sync::Arc::new(Store::open(&dir).expect("open"));
            let writer = NodeWriter::start(std::sync::Arc::clone(&store)).expect("writer");
            let queued: Vec<_> = (1..=20u64)
                .map(|id| writer.upsert(node(id, &format!("n{id}"))))
                .collect();
            writer.close();
            for write in queued {
                futures::executor::block_on(write).expect("written before the close");
            }
            let late = futures::executor::block_on(writer.upsert(node(99, "late")));
            assert!(late.is_err(), "a write after the close is refused");
            store.close().expect("close");
            assert!(matches!(store.load_nodes(), Err(StoreError::Closed)));
        }
        let nodes = Store::open(&dir)
            .expect("reopen")
            .load_nodes()
            .expect("load");
        assert_eq!(nodes.len(), 20);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn configuration_versions_survive_reopening_and_history_is_bounded() {
        let dir = tempdir();
        let entry = |scope: &str, version: u64| ConfigEntry {
            scope: scope.parse().expect("scope"),
            version,
            data: serde_json::json!({"v": version}),
            created_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + version),
            role: "admin".into(),
            rollback_of: 0,
        };
        {
            let store = Store::open(&dir).expect("open");
            for v in 1..=(HISTORY_PER_SCOPE as u64 + 5) {
                store.insert_config(&entry("global", v)).expect("insert");
            }
            store
                .insert_config(&entry("group:edge", 2_000))
                .expect("insert");
        }
        let store = Store::open(&dir).expect("reopen");
        let (mut latest, last) = store.load_configs().expect("load");
        latest.sort_by_key(|e| e.version);
        assert_eq!(last, 2_000);
        assert_eq!(
            latest,
            vec![entry("global", 1_005), entry("group:edge", 2_000)]
        );
        let global = Scope::Global;
        assert_eq!(
            store.oldest_config_version(&global).expect("oldest"),
            Some(6)
        );
        let page = store.config_history(&global, 1_004, 2).expect("history");
        assert_eq!(
            page.iter().map(|e| e.version).collect::<Vec<_>>(),
            [1_003, 1_002]
        );
        let after = store.config_after(&global, 1_002, 10).expect("after");
        assert_eq!(
            after.iter().map(|e| e.version).collect::<Vec<_>>(),
            [1_003, 1_004, 1_005]
        );
        assert_eq!(store.config_version(&global, 5).expect("query"), None);
        assert_eq!(
            store.config_version(&global, 6).expect("query"),
            Some(entry("global", 6))
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// A batch is one transaction that keeps each scope's bound, whatever
    /// the scopes it mixes; a batch that fails stores nothing of itself.
    #[test]
    fn a_batch_of_versions_is_stored_whole_or_not_at_all() {
        let dir = tempdir();
        let entry = |scope: &str, version: u64| ConfigEntry {
            scope: scope.parse().expect("scope"),
            version,
            data: serde_json::json!({"v": version}),
            created_at: UNIX_EPOCH,
            role: "admin".into(),
            rollback_of: 0,
        };
        let store = Store::open(&dir).expect("open");
        let batch: Vec<ConfigEntry> = (1..=(HISTORY_PER_SCOPE as u64 + 10))
            .map(|v| entry(if v % 2 == 0 { "global" } else { "group:a" }, v))
            .chain((0..3).map(|i| entry("group:b", 5_000 + i)))
            .collect();
        store.insert_configs(&batch).expect("one transaction");
        for (scope, count, oldest) in [
            ("global", HISTORY_PER_SCOPE / 2 + 5, 2),
            ("group:a", HISTORY_PER_SCOPE / 2 + 5, 1),
            ("group:b", 3, 5_000),
        ] {
            let scope: Scope = scope.parse().expect("scope");
            assert_eq!(store.config_count(&scope).expect("count"), count, "{scope}");
            assert_eq!(
                store.oldest_config_version(&scope).expect("oldest"),
                Some(oldest)
            );
        }
        let more: Vec<ConfigEntry> = (0..(HISTORY_PER_SCOPE as u64))
            .map(|i| entry("global", 6_000 + i * 2))
            .collect();
        store.insert_configs(&more).expect("one transaction");
        assert_eq!(
            store.config_count(&Scope::Global).expect("count"),
            HISTORY_PER_SCOPE
        );
        assert_eq!(
            store.oldest_config_version(&Scope::Global).expect("oldest"),
            Some(6_000)
        );
        // The second entry takes a version already stored: nothing of the
        // batch is kept, the first entry included.
        let clash = [entry("group:c", 9_000), entry("group:c", 5_000)];
        assert!(store.insert_configs(&clash).is_err());
        assert_eq!(
            store
                .config_count(&"group:c".parse().expect("scope"))
                .expect("count"),
            0
        );
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "farm-store-test-{}-{}",
            std::process::id(),
            wall_micros(SystemTime::now())
        ));
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }
}
