//! The SQLite store: node identities survive restarts here.
//!
//! One connection in WAL mode with `synchronous = FULL`, so a write is on disk
//! before the call that made it is acknowledged. Only identities are kept:
//! health is rebuilt from heartbeats after a restart.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, params};
use thiserror::Error;

use crate::core::{NodeId, StoredNode};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be opened or created at this path.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
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
}

/// Handle to the database. Calls are short and synchronous; a
/// `std::sync::Mutex` serialises them (SQLite allows one writer anyway).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (or creates) `farm.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("farm.db");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
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
            );",
        )
        .map_err(open_err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (each call is one statement or transaction), so poisoning is moot.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every stored identity.
    pub fn load_nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        let conn = self.conn();
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
    pub fn upsert_node(&self, node: &StoredNode) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&node.labels)
            .map_err(|e| StoreError::Corrupt(format!("labels: {e}")))?;
        let registered_ms = node
            .registered_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        self.conn().execute(
            "INSERT INTO nodes (id, name, address, grp, labels, secret_hash, registered_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET
                name = excluded.name, address = excluded.address, grp = excluded.grp,
                labels = excluded.labels",
            params![
                i64::try_from(node.id.0).map_err(|_| StoreError::Corrupt("id".into()))?,
                node.name,
                node.address,
                node.group,
                labels,
                node.secret_hash.as_slice(),
                i64::try_from(registered_ms).unwrap_or(i64::MAX),
            ],
        )?;
        Ok(())
    }

    /// Forgets identities.
    pub fn delete_nodes(&self, ids: &[NodeId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare("DELETE FROM nodes WHERE id = ?1")?;
            for id in ids {
                stmt.execute(params![i64::try_from(id.0).unwrap_or(i64::MAX)])?;
            }
        }
        tx.commit()?;
        Ok(())
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
            store.delete_nodes(&[NodeId(2)]).expect("delete");
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
