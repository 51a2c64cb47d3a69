//! What a node keeps in `--cache-dir` besides its identity: the last
//! configuration it applied, in `<cache-dir>/config.json`, so that a node
//! started while the control plane is away runs as it was configured.
//! Files are written atomically (temporary file, fsync, rename, fsync of the
//! folder): a crash mid-write leaves the old file or the new one, never half
//! of each.
//!
//! The applied configuration is saved in the background ([`keep_latest`]):
//! the agent hands each configuration it applies to a watch channel and
//! goes on, and one task saves the latest whenever it changed, at most once
//! per [`SAVE_SPACING`], so versions arriving during a save (or soon after
//! it) are written once, as the newest of them, and the heartbeat loop
//! never waits for the disk.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
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

/// Shortest time between two saves while configurations keep coming: a
/// configuration applied after a quiet moment is saved at once, and a
/// stream of them costs each node at most a few syncs a second.
pub const SAVE_SPACING: Duration = Duration::from_millis(500);

/// Saves the configurations `latest` is sent into `cache`: at each change,
/// the newest one, on a blocking thread, then no other for
/// [`SAVE_SPACING`] (cut short once `shutdown` is cancelled); those sent
/// meanwhile are coalesced into the next save. A value the receiver has
/// already seen is not saved (a new receiver has seen the one the channel
/// holds: the one read from the cache). Ends once the sender is gone and
/// its last configuration saved: awaiting this at shutdown keeps the
/// latest applied configuration. A failed save is logged; the next change
/// tries again.
pub async fn keep_latest(
    cache: ConfigCache,
    latest: watch::Receiver<NodeConfigData>,
    shutdown: CancellationToken,
) {
    let save: Save = Arc::new(move |config| cache.save(config));
    save_latest(latest, save, SAVE_SPACING, shutdown).await;
}

/// A way to save a configuration (the cache's, or a test's).
type Save = Arc<dyn Fn(&NodeConfigData) -> io::Result<()> + Send + Sync>;

/// [`keep_latest`] with `save` and `spacing`.
async fn save_latest(
    mut latest: watch::Receiver<NodeConfigData>,
    save: Save,
    spacing: Duration,
    shutdown: CancellationToken,
) {
    while latest.changed().await.is_ok() {
        let config = latest.borrow_and_update().clone();
        let save = Arc::clone(&save);
        match tokio::task::spawn_blocking(move || save(&config)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(cause = %err, "cannot cache the configuration; a restart without the control plane will not apply it");
            }
            Err(err) => warn!(cause = %err, "caching the configuration failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(spacing) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use serde_json::{Value, json};
    use tokio::sync::oneshot;

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

    fn version(version: u64) -> NodeConfigData {
        let Value::Object(data) = json!({"workload": {"delay_ms": version % 7}, "v": version})
        else {
            unreachable!("an object")
        };
        NodeConfigData { version, data }
    }

    /// Versions sent while a save is under way (held here until all are
    /// sent) are coalesced: the next save writes the newest of them, and
    /// the file ends with it. What the channel held at the start is not
    /// saved again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versions_sent_during_a_slow_save_are_saved_once_as_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(Some(dir.path()));
        let saved = Arc::new(Mutex::new(Vec::new()));
        let (started, save_started) = oneshot::channel::<()>();
        let (release, held) = mpsc::channel::<()>();
        // The first save waits until the test releases it.
        let gate = Mutex::new(Some((started, held)));
        let save: Save = {
            let saved = Arc::clone(&saved);
            let cache = cache.clone();
            Arc::new(move |config: &NodeConfigData| {
                let first = gate.lock().expect("gate").take();
                if let Some((started, held)) = first {
                    let _ = started.send(());
                    let _ = held.recv();
                }
                saved.lock().expect("saved").push(config.version);
                cache.save(config)
            })
        };
        let (latest, receiver) = watch::channel(version(0));
        let writer = tokio::spawn(save_latest(
            receiver,
            save,
            Duration::ZERO,
            CancellationToken::new(),
        ));
        latest.send_replace(version(1));
        save_started.await.expect("the first save starts");
        for v in 2..=100 {
            latest.send_replace(version(v));
        }
        release.send(()).expect("release");
        drop(latest);
        writer.await.expect("writer");
        assert_eq!(*saved.lock().expect("saved"), [1, 100]);
        assert_eq!(cache.load(), Some(version(100)));
    }

    /// Closing the channel right after sending still saves what was sent;
    /// closing it with nothing new saves nothing; a failed save is logged
    /// and the next change is saved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_version_sent_is_saved_before_the_writer_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(Some(dir.path()));
        let (latest, receiver) = watch::channel(version(3));
        let writer = tokio::spawn(keep_latest(
            cache.clone(),
            receiver,
            CancellationToken::new(),
        ));
        drop(latest);
        writer.await.expect("writer");
        assert_eq!(cache.load(), None, "the value it started with is not saved");

        let (latest, receiver) = watch::channel(version(3));
        let shutdown = CancellationToken::new();
        let writer = tokio::spawn(keep_latest(cache.clone(), receiver, shutdown.clone()));
        for v in 4..=40 {
            latest.send_replace(version(v));
        }
        shutdown.cancel();
        drop(latest);
        writer.await.expect("writer");
        assert_eq!(cache.load(), Some(version(40)));

        let (tried, mut attempts) = tokio::sync::mpsc::unbounded_channel();
        let save: Save = Arc::new(move |config: &NodeConfigData| {
            let _ = tried.send(config.version);
            if config.version == 41 {
                return Err(io::Error::other("disk full"));
            }
            cache.save(config)
        });
        let (latest, receiver) = watch::channel(version(40));
        let writer = tokio::spawn(save_latest(
            receiver,
            save,
            Duration::ZERO,
            CancellationToken::new(),
        ));
        latest.send_replace(version(41));
        assert_eq!(attempts.recv().await, Some(41), "tried and failed");
        latest.send_replace(version(42));
        drop(latest);
        writer.await.expect("writer");
        assert_eq!(attempts.recv().await, Some(42), "the next change is saved");
        assert_eq!(ConfigCache::new(Some(dir.path())).load(), Some(version(42)));
    }

    /// After a save, the next waits out the spacing: versions sent
    /// meanwhile are coalesced into one save of the newest. The shutdown
    /// cuts the spacing short, and the newest is saved before the writer
    /// ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spacing_coalesces_versions_and_the_shutdown_cuts_it_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(Some(dir.path()));
        let (tried, mut attempts) = tokio::sync::mpsc::unbounded_channel();
        let save: Save = {
            let cache = cache.clone();
            Arc::new(move |config: &NodeConfigData| {
                let _ = tried.send(config.version);
                cache.save(config)
            })
        };
        let (latest, receiver) = watch::channel(version(0));
        let shutdown = CancellationToken::new();
        let writer = tokio::spawn(save_latest(
            receiver,
            save,
            Duration::from_secs(3600),
            shutdown.clone(),
        ));
        latest.send_replace(version(1));
        assert_eq!(attempts.recv().await, Some(1));
        for v in 2..=30 {
            latest.send_replace(version(v));
        }
        shutdown.cancel();
        drop(latest);
        tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("the shutdown cuts an hour's spacing short")
            .expect("writer");
        let mut rest = Vec::new();
        while let Ok(v) = attempts.try_recv() {
            rest.push(v);
        }
        assert_eq!(rest, [30], "one save for versions 2 to 30");
        assert_eq!(cache.load(), Some(version(30)));
    }
}
