//! The node's identity (id and secret issued by the control plane), kept in
//! `<cache-dir>/identity.json` so a restarted node re-attaches under the same
//! id. Written atomically (temporary file, fsync, rename, fsync of the
//! folder): a crash mid-write leaves the old identity or the new one, never
//! half of each.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::cache::write_atomically;

/// An identity issued by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub secret: String,
}

/// Where an identity is kept; without a cache folder, only in memory.
#[derive(Debug)]
pub struct IdentityStore {
    path: Option<PathBuf>,
}

const FILE: &str = "identity.json";

impl IdentityStore {
    pub fn new(cache_dir: Option<&Path>) -> Self {
        Self {
            path: cache_dir.map(|dir| dir.join(FILE)),
        }
    }

    /// The cached identity. A missing file is no identity; an unreadable or
    /// corrupt one is reported and treated as none (the node registers anew).
    pub fn load(&self) -> Option<Identity> {
        let path = self.path.as_ref()?;
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                warn!(path = %path.display(), cause = %err, "cannot read the cached identity; registering anew");
                return None;
            }
        };
        match serde_json::from_slice::<Identity>(&text) {
            Ok(identity) if !identity.node_id.is_empty() && !identity.secret.is_empty() => {
                Some(identity)
            }
            Ok(_) => {
                warn!(path = %path.display(), "the cached identity is incomplete; registering anew");
                None
            }
            Err(err) => {
                warn!(path = %path.display(), cause = %err, "the cached identity is corrupt; registering anew");
                None
            }
        }
    }

    /// Keeps `identity` for the next start.
    pub fn save(&self, identity: &Identity) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(identity).map_err(io::Error::other)?;
        write_atomically(path, &bytes)
    }

    /// Forgets the cached identity (the control plane no longer knows it).
    pub fn clear(&self) {
        if let Some(path) = &self.path
            && let Err(err) = fs::remove_file(path)
            && err.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), cause = %err, "cannot remove the stale identity");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = IdentityStore::new(Some(dir.path()));
        assert_eq!(store.load(), None);
        let identity = Identity {
            node_id: "n7".into(),
            secret: "s".into(),
        };
        store.save(&identity).expect("save");
        assert_eq!(store.load(), Some(identity.clone()));
        assert_eq!(IdentityStore::new(Some(dir.path())).load(), Some(identity));

        fs::write(dir.path().join(FILE), b"{not json").expect("write");
        assert_eq!(store.load(), None);
        fs::write(dir.path().join(FILE), br#"{"node_id":"","secret":""}"#).expect("write");
        assert_eq!(store.load(), None);
        store.clear();
        assert!(!dir.path().join(FILE).exists());
        store.clear();
    }

    #[test]
    fn without_a_folder_nothing_is_kept() {
        let store = IdentityStore::new(None);
        store
            .save(&Identity {
                node_id: "n1".into(),
                secret: "s".into(),
            })
            .expect("save");
        assert_eq!(store.load(), None);
    }
}
