//! Watchers too slow to keep up: a `Discovery.Watch` client that stops
//! reading while the membership changes thousands of times is told
//! (`RESET`) and given a fresh snapshot, and a `WatchConfig` client that
//! stops reading while thousands of versions are written still sees every
//! one of them, in order, and a `WatchMetrics` client that stops reading
//! gets the newest snapshot when it reads again, not a backlog. None holds
//! more than a bounded queue in the control plane meanwhile.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use farm_api::v1::{EventKind, RegisterRequest, WatchConfigRequest, WatchMetricsRequest};
use farm_testkit::{Api, ControlPlaneProcess};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

/// Long enough for a loaded machine.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_watcher_that_falls_behind_is_reset_to_a_fresh_snapshot() {
    // Each registration is an event, and each node turning unhealthy
    // without heartbeats another: far more than the event buffer (8,192)
    // and the stream's queues hold.
    const NODES: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = ControlPlaneProcess::builder(dir.path()).start().await;
    // A client with HTTP/2's smallest windows: it takes in 64 KiB before the
    // control plane must hold what follows.
    let channel = Endpoint::from_shared(format!("http://{}", farm.addr))
        .expect("the farm's URL")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_lazy();
    let mut watch = Api::new(channel).watch().await;
    // The (empty) snapshot: synced.
    let first = watch.next().await.expect("open").expect("an event");
    assert_eq!(first.kind(), EventKind::Synced);

    // The watcher reads nothing while the farm grows.
    let workers: Vec<_> = (0..16)
        .map(|worker| {
            let mut registry = farm.registry();
            tokio::spawn(async move {
                for i in (worker..NODES).step_by(16) {
                    registry
                        .register(RegisterRequest {
                            name: format!("watched-{i}"),
                            address: "127.0.0.1:1".to_owned(),
                            ..Default::default()
                        })
                        .await
                        .expect("Register");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("registering");
    }
    // Then it reads: it was told it fell behind, and the snapshot after
    // holds every node.
    let mut reset = false;
    let mut known = HashSet::new();
    loop {
        let event = tokio::time::timeout(LIMIT, watch.next())
            .await
            .expect("events within the limit")
            .expect("the stream stays open")
            .expect("an event");
        match event.kind() {
            EventKind::Reset => {
                reset = true;
                known.clear();
            }
            EventKind::Snapshot | EventKind::Joined | EventKind::Changed => {
                if let Some(node) = event.node {
                    known.insert(node.name);
                }
            }
            EventKind::Synced if reset => break,
            _ => {}
        }
        if !reset && known.len() == NODES {
            break;
        }
    }
    assert!(reset, "the watcher was never told it fell behind");
    assert_eq!(known.len(), NODES, "the snapshot after the reset");
}

#[tokio::test]
async fn a_slow_config_watcher_still_sees_every_version_in_order() {
    // More versions than the live buffer (1,024) and the stream's queue.
    const VERSIONS: u64 = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = ControlPlaneProcess::builder(dir.path()).start().await;
    let mut watch = farm
        .config()
        .watch_config(WatchConfigRequest {
            scope: "global".into(),
            ..Default::default()
        })
        .await
        .expect("WatchConfig")
        .into_inner();
    // Eight writers, nothing read meanwhile.
    let writers: Vec<_> = (0..8u64)
        .map(|writer| {
            let api = farm.with_token(None);
            tokio::spawn(async move {
                for i in (writer..VERSIONS).step_by(8) {
                    api.put_config("global", serde_json::json!({ "change": i }))
                        .await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writing");
    }
    // Every version, in order, each with the data written under it.
    let mut seen = BTreeMap::new();
    let mut last = 0;
    while last < VERSIONS {
        let event = tokio::time::timeout(LIMIT, watch.next())
            .await
            .expect("versions within the limit")
            .expect("the stream stays open")
            .expect("a version");
        if event.version == 0 {
            continue;
        }
        assert_eq!(event.version, last + 1, "versions in order, none skipped");
        last = event.version;
        seen.insert(event.version, event.data);
    }
    assert_eq!(seen.len() as u64, VERSIONS);
    assert!(seen.values().all(Option::is_some));
}

#[tokio::test]
async fn a_metrics_watcher_that_stops_reading_gets_the_newest_snapshot_not_a_backlog() {
    const PAUSE: Duration = Duration::from_secs(3);
    const WINDOW: u32 = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = ControlPlaneProcess::builder(dir.path()).start().await;
    // A window of 64 bytes: a few snapshots (an empty farm's are small),
    // no more, can be on their way while the client reads nothing.
    let channel = Endpoint::from_shared(format!("http://{}", farm.addr))
        .expect("the farm's URL")
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(65_535)
        .connect_lazy();
    let mut stream = Api::new(channel)
        .metrics()
        .watch_metrics(WatchMetricsRequest {
            interval_ms: 100,
            ..Default::default()
        })
        .await
        .expect("WatchMetrics")
        .into_inner();
    let at = |snapshot: &farm_api::v1::FarmMetrics| {
        std::time::SystemTime::try_from(snapshot.at.expect("a time")).expect("a valid time")
    };
    let first = stream.next().await.expect("open").expect("a snapshot");
    let size = prost::Message::encoded_len(&first);

    // Thirty snapshots' time without reading.
    let paused = std::time::SystemTime::now();
    tokio::time::sleep(PAUSE).await;
    let mut stale = 0;
    let fresh = loop {
        let snapshot = tokio::time::timeout(LIMIT, stream.next())
            .await
            .expect("a snapshot within the limit")
            .expect("the stream stays open")
            .expect("a snapshot");
        if at(&snapshot) >= paused + PAUSE - Duration::from_millis(500) {
            break snapshot;
        }
        stale += 1;
    };
    eprintln!(
        "after {PAUSE:?} unread at 100 ms: {stale} snapshots of {size} bytes from before, \
         then one {:?} old",
        std::time::SystemTime::now()
            .duration_since(at(&fresh))
            .unwrap_or_default()
    );
    // What the window held, and the one the control plane had taken to
    // send: never the thirty a queue would have kept.
    assert!(
        stale <= WINDOW as usize / size + 2,
        "{stale} stale snapshots of {size} bytes"
    );
    drop(stream);
}
