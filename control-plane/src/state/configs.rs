//! The [`Configs`] handle: configuration versions per scope, the layered
//! effective configuration of each node, and the announcements that push a
//! change to nodes and watchers.
//!
//! Every write is on disk before the book (and so any reader or node) sees
//! it; versions are announced in the order they were written. Store calls
//! run on a blocking thread: the async methods hand them over.

use std::{sync::Arc, time::SystemTime};

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::{Shared, StateError};
use crate::{
    core::{
        DomainError, NodeId,
        config::{Change, ConfigEntry, Effective, HISTORY_PER_SCOPE, Scope, Write, diff},
    },
    store::StoreError,
};

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
        self.blocking(move |configs| configs.write(scope, write, expected, role, 0))
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
        self.blocking(move |configs| {
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
            configs.write(scope, Write::Replace(old), expected, role, version)
        })
        .await
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

    /// [`Configs::put`] on the calling thread. The book's lock is held from
    /// reading the current version (which a merge applies to and the
    /// compare-and-set checks) until the new one is stored and announced.
    fn write(
        &self,
        scope: Scope,
        write: Write,
        expected: u64,
        role: &'static str,
        rollback_of: u64,
    ) -> Result<ConfigEntry, StateError> {
        {
            let registry = self.shared.registry();
            match &scope {
                Scope::Global => {}
                Scope::Node(id) => {
                    registry.group_of(*id)?;
                }
                Scope::Group(name) if !registry.has_group(name) => {
                    return Err(DomainError::UnknownGroup(name.clone()).into());
                }
                Scope::Group(_) => {}
            }
        }
        let mut book = self.shared.book();
        let entry = book.prepare(scope, write, expected, role, rollback_of, SystemTime::now())?;
        self.shared.store.insert_config(&entry)?;
        book.commit(entry.clone());
        // Announced under the book's lock, so watchers see versions in the
        // order they were written, even when writes race.
        self.shared.config_version.send_replace(entry.version);
        let _ = self.shared.config_events.send(Arc::new(entry.clone()));
        drop(book);
        Ok(entry)
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

    /// Wakes whenever a configuration version is written.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.config_version.subscribe()
    }

    /// Every new configuration version from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ConfigEntry>> {
        self.shared.config_events.subscribe()
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
