//! What a node keeps in `--cache-dir` besides its identity: the last
//! configuration it applied, in `<cache-dir>/config.json`, so that a node
//! started while the control plane is away runs as it was configured.
//! Files are written atomically (temporary file, fsync, rename, fsync of the
//! folder): a crash mid-write leaves the old file or the new one, never half
//! of each.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use tracing::warn;

use crate::settings::NodeConfigData;

/// Writes `bytes` to `path` atomically and durably, creating its folder.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(dir) = dir {
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Where the applied configuration is kept; without a cache folder, nowhere.
#[derive(Debug, Clone)]
pub struct ConfigCache {
    path: Option<PathBuf>,
}

const FILE: &str = "config.json";

impl ConfigCache {
    pub fn new(cache_dir: Option<&Path>) -> Self {
        Self {
            path: cache_dir.map(|dir| dir.join(FILE)),
        }
    }

    /// The cached configuration. A missing file is none; an unreadable or
    /// corrupt one is reported and treated as none.
    pub fn load(&self) -> Option<NodeConfigData> {
        let path = self.path.as_ref()?;
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                warn!(path = %path.display(), cause = %err, "cannot read the cached configuration; ignoring it");
                return None;
            }
        };
        match serde_json::from_slice::<NodeConfigData>(&text) {
            Ok(config) => Some(config),
            Err(err) => {
                warn!(path = %path.display(), cause = %err, "the cached configuration is corrupt; ignoring it");
                None
            }
        }
    }

    /// Keeps `config` for the next start.
    pub fn save(&self, config: &NodeConfigData) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
        write_atomically(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn sample() -> NodeConfigData {
        let Value::Object(data) = json!({
            "workload": {"delay_ms": 150, "error_rate": 0.25},
            "workload.response_bytes": 10,
            "extra": [1, "two", null],
        }) else {
            unreachable!("an object")
        };
        NodeConfigData { version: 12, data }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(Some(dir.path()));
        assert_eq!(cache.load(), None);
        let config = sample();
        cache.save(&config).expect("save");
        assert_eq!(cache.load(), Some(config.clone()));
        let again = ConfigCache::new(Some(dir.path())).load().expect("cached");
        assert_eq!(again, config);
        let (settings, problems) = again.settings();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            (settings.version, settings.delay_ms, settings.response_bytes),
            (12, 150, 10)
        );
        assert!(!dir.path().join("config.json.tmp").exists());

        // A newer version replaces the file.
        let newer = NodeConfigData {
            version: 13,
            data: serde_json::Map::new(),
        };
        cache.save(&newer).expect("save");
        assert_eq!(cache.load(), Some(newer));
    }

    #[test]
    fn a_corrupt_cache_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(Some(dir.path()));
        let path = dir.path().join(FILE);
        for corrupt in [
            &b"{\"version\": 3, \"data\": {"[..],
            b"",
            b"\xff\xfe",
            b"[]",
            br#"{"version": -1, "data": {}}"#,
            br#"{"version": 3, "data": [1]}"#,
        ] {
            fs::write(&path, corrupt).expect("write");
            assert_eq!(cache.load(), None, "{:?}", String::from_utf8_lossy(corrupt));
        }
        // A folder where the file should be: unreadable, not fatal.
        fs::remove_file(&path).expect("remove");
        fs::create_dir(&path).expect("mkdir");
        assert_eq!(cache.load(), None);
        // And saving over a broken file repairs it.
        fs::remove_dir(&path).expect("rmdir");
        fs::write(&path, b"garbage").expect("write");
        cache.save(&sample()).expect("save");
        assert_eq!(cache.load(), Some(sample()));
    }

    #[test]
    fn without_a_folder_nothing_is_kept() {
        let cache = ConfigCache::new(None);
        cache.save(&sample()).expect("save");
        assert_eq!(cache.load(), None);
    }

    #[test]
    fn the_folder_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(Some(&dir.path().join("a/b")));
        cache.save(&sample()).expect("save");
        assert_eq!(cache.load(), Some(sample()));
    }
}
