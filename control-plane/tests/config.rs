//! `farm.v1.Config`: versions, compare-and-set, history, rollback, diff,
//! durability across a crash, watches, pushes to every node, values a node
//! could not apply refused before they are stored, and writes that merge a
//! JSON merge patch into the current version.

use std::{collections::BTreeMap, time::Duration};

use farm_api::v1::{
    ChangeKind, ConfigEvent, DiffRequest, GetEffectiveConfigRequest, GetNodeMetricsRequest,
    HistoryRequest, PutConfigRequest, RegisterRequest, RollbackRequest, WatchConfigRequest,
};
use farm_testkit::{
    ControlPlaneProcess, Farm,
    api::config_data,
    eventually, free_addr, healthy,
    interop::{run, stdout},
    ready_if,
};
use prost_types::{Struct, Value, value::Kind};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// `{"workload": {"delay_ms": n}}`.
fn delay(n: f64) -> Struct {
    let workload = Struct {
        fields: BTreeMap::from([("delay_ms".to_owned(), number(n))]),
    };
    Struct {
        fields: BTreeMap::from([(
            "workload".to_owned(),
            Value {
                kind: Some(Kind::StructValue(workload)),
            },
        )]),
    }
}

fn put(scope: &str, data: Struct, expected: u64) -> PutConfigRequest {
    PutConfigRequest {
        scope: scope.into(),
        data: Some(data),
        expected_version: expected,
        merge: false,
    }
}

/// A write of `patch` merged into `scope`'s current version.
fn merge(scope: &str, patch: serde_json::Value, expected: u64) -> PutConfigRequest {
    PutConfigRequest {
        merge: true,
        ..put(scope, config_data(patch), expected)
    }
}

/// `scope`'s current version and data (as JSON).
async fn current(farm: &Farm, scope: &str) -> (u64, serde_json::Value) {
    let got = farm.current_config(scope).await;
    let data = farm_api::json::struct_to_json(&got.data.expect("data"));
    (got.version, serde_json::Value::Object(data))
}

/// A `WatchConfig` stream of the global scope, from `from_version` (0:
/// from now).
async fn watch_global(farm: &Farm, from_version: u64) -> tonic::Streaming<ConfigEvent> {
    farm.config()
        .watch_config(WatchConfigRequest {
            scope: "global".into(),
            from_version,
            ..Default::default()
        })
        .await
        .expect("WatchConfig")
        .into_inner()
}

fn delay_of(data: &Option<Struct>) -> Option<f64> {
    let workload = data.as_ref()?.fields.get("workload")?;
    let Some(Kind::StructValue(workload)) = &workload.kind else {
        return None;
    };
    match workload.fields.get("delay_ms")?.kind {
        Some(Kind::NumberValue(n)) => Some(n),
        _ => None,
    }
}

#[tokio::test]
async fn versions_history_rollback_and_diff() {
    let farm = Farm::start(0, &[]).await;
    let mut client = farm.config();

    let empty = farm.current_config("global").await;
    assert_eq!(empty.version, 0);

    let v1 = client
        .put_config(put("global", delay(10.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    let v2 = client
        .put_config(put("global", delay(20.0), v1))
        .await
        .expect("compare-and-set put")
        .into_inner()
        .version;
    assert!(v2 > v1);
    let stale = client
        .put_config(put("global", delay(30.0), v1))
        .await
        .expect_err("stale expected_version");
    assert_eq!(stale.code(), Code::Aborted);
    assert!(
        stale.message().contains(&format!("version {v2}")),
        "{stale:?}"
    );

    let current = farm.current_config("global").await;
    assert_eq!(current.version, v2);
    assert_eq!(delay_of(&current.data), Some(20.0));
    assert_eq!(
        current.role, "open",
        "no tokens: writes are recorded as open"
    );

    let v3 = client
        .rollback(RollbackRequest {
            scope: "global".into(),
            version: v1,
            expected_version: v2,
        })
        .await
        .expect("Rollback")
        .into_inner()
        .version;
    let history = client
        .history(HistoryRequest {
            scope: "global".into(),
            ..Default::default()
        })
        .await
        .expect("History")
        .into_inner()
        .versions;
    let listed: Vec<(u64, Option<f64>, u64)> = history
        .iter()
        .map(|v| (v.version, delay_of(&v.data), v.rollback_of))
        .collect();
    assert_eq!(
        listed,
        [
            (v3, Some(10.0), v1),
            (v2, Some(20.0), 0),
            (v1, Some(10.0), 0)
        ]
    );
    let missing = client
        .rollback(RollbackRequest {
            scope: "global".into(),
            version: v3 + 100,
            expected_version: 0,
        })
        .await
        .expect_err("no such version");
    assert_eq!(missing.code(), Code::NotFound);

    let diff = client
        .diff(DiffRequest {
            scope: "global".into(),
            from_version: v1,
            to_version: v2,
        })
        .await
        .expect("Diff")
        .into_inner();
    assert_eq!(diff.changes.len(), 1);
    assert_eq!(diff.changes[0].path, "workload.delay_ms");
    assert_eq!(diff.changes[0].kind, ChangeKind::Changed as i32);
    let from_nothing = client
        .diff(DiffRequest {
            scope: "global".into(),
            from_version: 0,
            to_version: 0,
        })
        .await
        .expect("Diff")
        .into_inner();
    assert_eq!(from_nothing.to_version, v3);
    assert_eq!(from_nothing.changes[0].kind, ChangeKind::Added as i32);
}

/// Every call that takes a node takes its name as well as its id: a node's
/// scope (`node:node-001`, kept and answered as `node:n1`), its effective
/// configuration, its metrics. A rollback that names no version undoes
/// the scope's last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_named_by_name_and_a_bare_rollback_undoes_the_last_write() {
    let farm = Farm::start(1, &[]).await;
    let node = farm
        .wait_healthy(1, Duration::from_secs(20))
        .await
        .remove(0);
    let by_name = format!("node:{}", node.name);
    let by_id = format!("node:{}", node.id);
    let mut client = farm.config();

    let first = client
        .put_config(put(&by_name, delay(7.0), 0))
        .await
        .expect("a node's scope by its name")
        .into_inner();
    assert_eq!(first.scope, by_id, "kept under the node's id");
    let effective = client
        .get_effective_config(GetEffectiveConfigRequest {
            node_id: node.name.clone(),
        })
        .await
        .expect("effective configuration by name")
        .into_inner();
    assert_eq!(
        (effective.version, delay_of(&effective.data)),
        (first.version, Some(7.0))
    );
    let metrics = farm
        .metrics()
        .get_node_metrics(GetNodeMetricsRequest {
            node_id: node.name.clone(),
        })
        .await
        .expect("metrics by name")
        .into_inner();
    assert_eq!(metrics.node.expect("the node").node_id, node.id);
    let unknown = client
        .put_config(put("node:node-404", delay(1.0), 0))
        .await
        .expect_err("no node has that name");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Undo: the version before the current one comes back.
    let second = client
        .put_config(put(&by_name, delay(9.0), first.version))
        .await
        .expect("put")
        .into_inner();
    let undone = client
        .rollback(RollbackRequest {
            scope: by_name.clone(),
            ..Default::default()
        })
        .await
        .expect("a rollback without a version")
        .into_inner();
    assert!(undone.version > second.version);
    let current = farm.current_config(&by_id).await;
    assert_eq!(
        (current.version, delay_of(&current.data)),
        (undone.version, Some(7.0))
    );
    assert_eq!(
        farm.versions(&by_id).await,
        [undone.version, second.version, first.version]
    );

    // A scope with a single version has nothing to undo, and keeps it.
    let only = farm.put_config("global", json!({"k": 1})).await;
    let nothing = client
        .rollback(RollbackRequest {
            scope: "global".into(),
            ..Default::default()
        })
        .await
        .expect_err("nothing to undo");
    assert_eq!(nothing.code(), Code::FailedPrecondition, "{nothing:?}");
    assert_eq!(farm.versions("global").await, [only]);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let farm = Farm::start(0, &[]).await;
    let mut client = farm.config();
    let big = Struct {
        fields: BTreeMap::from([(
            "blob".to_owned(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(70 * 1024))),
            },
        )]),
    };
    let cases: Vec<(PutConfigRequest, Code)> = vec![
        (put("", delay(1.0), 0), Code::InvalidArgument),
        (put("everything", delay(1.0), 0), Code::InvalidArgument),
        (put("group:", delay(1.0), 0), Code::InvalidArgument),
        (put("node:n 7", delay(1.0), 0), Code::InvalidArgument),
        (put("node:node-404", delay(1.0), 0), Code::NotFound),
        (put("node:n999", delay(1.0), 0), Code::NotFound),
        (put("group:nowhere", delay(1.0), 0), Code::NotFound),
        (
            PutConfigRequest {
                scope: "global".into(),
                data: None,
                expected_version: 0,
                merge: false,
            },
            Code::InvalidArgument,
        ),
        (put("global", big, 0), Code::InvalidArgument),
    ];
    for (request, code) in cases {
        let scope = request.scope.clone();
        let unset = request.data.is_none();
        let status = client
            .put_config(request)
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), code, "{scope:?}: {status:?}");
        assert!(!status.message().is_empty());
        // Unset data is refused by name, not read as `{}` (which would
        // empty the scope).
        assert!(
            !unset || status.message().starts_with("data is required"),
            "{status:?}"
        );
    }
    assert!(farm.versions("global").await.is_empty(), "nothing stored");
    let watch = client
        .watch_config(WatchConfigRequest {
            scope: "global".into(),
            node_id: "n1".into(),
            from_version: 0,
        })
        .await
        .expect_err("both scope and node");
    assert_eq!(watch.code(), Code::InvalidArgument);
    let effective = client
        .get_effective_config(GetEffectiveConfigRequest {
            node_id: "n404".into(),
        })
        .await
        .expect_err("unknown node");
    assert_eq!(effective.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compare_and_set_has_exactly_one_winner() {
    let farm = Farm::start(0, &[]).await;
    let base = farm
        .config()
        .put_config(put("global", delay(0.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let mut client = farm.config();
            tokio::spawn(async move {
                client
                    .put_config(put("global", delay(f64::from(i)), base))
                    .await
                    .map(|r| r.into_inner().version)
            })
        })
        .collect();
    let mut won = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(version) => won.push(version),
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one compare-and-set wins: {won:?}");
    let current = farm.current_config("global").await;
    assert_eq!(current.version, won[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_put_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let mut first = ControlPlaneProcess::start_at(dir.path(), 0, addr).await;
    let version = first
        .config()
        .put_config(put("global", delay(42.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    // At once: the acknowledgement means it is on disk.
    first.kill().await;

    let second = ControlPlaneProcess::start_at(dir.path(), 0, addr).await;
    let got = second.current_config("global").await;
    assert_eq!(got.version, version);
    assert_eq!(delay_of(&got.data), Some(42.0));
    // And the counter goes on from there.
    let next = second
        .config()
        .put_config(put("global", delay(43.0), version))
        .await
        .expect("put after restart")
        .into_inner()
        .version;
    assert!(next > version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_replays_then_streams_and_resumes() {
    let farm = Farm::start(0, &[]).await;
    let mut client = farm.config();
    let v1 = client
        .put_config(put("global", delay(1.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    let mut watch = watch_global(&farm, 0).await;
    let first = watch.next().await.expect("event").expect("ok");
    assert_eq!((first.version, first.snapshot), (v1, false));
    // Another scope's write is not this watch's business.
    client
        .put_config(put("group:default", delay(9.0), 0))
        .await
        .expect("put another scope");
    let v2 = client
        .put_config(put("global", delay(2.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    let second = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("live event")
        .expect("event")
        .expect("ok");
    assert_eq!(second.version, v2);
    assert_eq!(delay_of(&second.data), Some(2.0));

    // Resuming from v1 gives what came after, in order.
    let v3 = client
        .put_config(put("global", delay(3.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    let mut resumed = watch_global(&farm, v1).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(resumed.next().await.expect("event").expect("ok").version);
    }
    assert_eq!(seen, [v2, v3]);

    // A node's effective configuration: global merged with its own.
    let node = farm
        .registry()
        .register(RegisterRequest {
            name: "watched".into(),
            address: "127.0.0.1:7000".into(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let mut effective = client
        .watch_config(WatchConfigRequest {
            node_id: node.node_id.clone(),
            ..Default::default()
        })
        .await
        .expect("WatchConfig node")
        .into_inner();
    assert_eq!(
        effective.next().await.expect("event").expect("ok").version,
        v3
    );
    let v4 = client
        .put_config(put(&format!("node:{}", node.node_id), delay(4.0), 0))
        .await
        .expect("put node scope")
        .into_inner()
        .version;
    let changed = effective.next().await.expect("event").expect("ok");
    assert_eq!(changed.version, v4);
    assert_eq!(delay_of(&changed.data), Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_all_fifty_nodes() {
    let farm = Farm::start(50, &[]).await;
    farm.wait_healthy(50, Duration::from_secs(30)).await;
    let mut client = farm.config();
    let version = client
        .put_config(put("global", delay(1.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    farm.wait_nodes("all 50 applied", Duration::from_secs(20), |nodes| {
        nodes.len() == 50
            && nodes
                .iter()
                .all(|n| healthy(n) && n.config_version == version)
    })
    .await;

    // A group layer and a node layer on top; each node reports the highest
    // version among its layers.
    let nodes = farm.nodes().await;
    let one = &nodes[7];
    let group_version = client
        .put_config(put("group:default", delay(2.0), 0))
        .await
        .expect("put group")
        .into_inner()
        .version;
    let node_version = client
        .put_config(put(&format!("node:{}", one.id), delay(3.0), 0))
        .await
        .expect("put node")
        .into_inner()
        .version;
    let nodes = farm
        .wait_nodes("layers applied", Duration::from_secs(20), |nodes| {
            nodes.iter().all(|n| {
                let want = if n.id == one.id {
                    node_version
                } else {
                    group_version
                };
                n.config_version == want
            })
        })
        .await;
    assert_eq!(nodes.len(), 50);
    let effective = client
        .get_effective_config(GetEffectiveConfigRequest {
            node_id: one.id.clone(),
        })
        .await
        .expect("GetEffectiveConfig")
        .into_inner();
    assert_eq!(effective.version, node_version);
    assert_eq!(delay_of(&effective.data), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_before_the_kept_history_starts_with_a_snapshot() {
    let farm = Farm::start(0, &[]).await;
    let mut client = farm.config();
    let first = client
        .put_config(put("global", delay(0.0), 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    // One more than the history keeps: the first version is dropped.
    let mut last = first;
    for i in 1..=1000 {
        last = client
            .put_config(put("global", delay(f64::from(i)), 0))
            .await
            .expect("put")
            .into_inner()
            .version;
    }
    let history = client
        .history(HistoryRequest {
            scope: "global".into(),
            limit: 1000,
            before_version: 0,
        })
        .await
        .expect("History")
        .into_inner()
        .versions;
    assert_eq!(history.len(), 1000);
    assert!(history.iter().all(|v| v.version != first), "oldest dropped");

    let mut watch = watch_global(&farm, first - 1).await;
    let event = watch.next().await.expect("event").expect("ok");
    assert!(event.snapshot, "history gone: a snapshot");
    assert_eq!(event.version, last);
    assert_eq!(delay_of(&event.data), Some(1000.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_version_in_order_while_writers_race() {
    let farm = Farm::start(0, &[]).await;
    let mut watch = watch_global(&farm, 0).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut client = farm.config();
            tokio::spawn(async move {
                for i in 0..25 {
                    client
                        .put_config(put("global", delay(f64::from(w * 100 + i)), 0))
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let mut versions = Vec::new();
    while versions.len() < 200 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of 200 versions arrived", versions.len()))
            .expect("event")
            .expect("ok");
        versions.push(event.version);
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "in order: {versions:?}"
    );
}

/// Many `PutConfig` calls in flight at once (written in batches, one sync
/// each): every acknowledged version is in `History` with the data its
/// writer sent, the versions are dense and in order, and a `WatchConfig`
/// stream opened before sees every one of them, in order, with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_all_land_dense_and_in_order_and_a_watch_sees_each() {
    const WRITERS: u32 = 16;
    const EACH: u32 = 30;
    let farm = Farm::start(0, &[]).await;
    let mut watch = watch_global(&farm, 0).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut client = farm.config();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..EACH {
                    let delay_ms = f64::from(w * 1000 + i);
                    let version = client
                        .put_config(put("global", delay(delay_ms), 0))
                        .await
                        .expect("put")
                        .into_inner()
                        .version;
                    acked.push((version, delay_ms));
                }
                acked
            })
        })
        .collect();
    // Each acknowledged version and the delay its writer sent.
    let mut acked = BTreeMap::new();
    for writer in writers {
        let mine = writer.await.expect("writer");
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0),
            "one writer's versions grow: {mine:?}"
        );
        for (version, delay_ms) in mine {
            assert!(
                acked.insert(version, delay_ms).is_none(),
                "version {version} acknowledged twice"
            );
        }
    }
    let total = (WRITERS * EACH) as usize;
    let versions: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(versions.len(), total);
    let first = versions[0];
    assert_eq!(
        versions,
        (first..first + total as u64).collect::<Vec<_>>(),
        "dense"
    );

    let history = farm
        .config()
        .history(HistoryRequest {
            scope: "global".into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("History")
        .into_inner()
        .versions;
    let kept: Vec<(u64, Option<f64>)> = history
        .iter()
        .rev()
        .map(|v| (v.version, delay_of(&v.data)))
        .collect();
    let want: Vec<(u64, Option<f64>)> = acked.iter().map(|(v, d)| (*v, Some(*d))).collect();
    assert_eq!(
        kept, want,
        "History holds every acknowledged version, in order"
    );

    let mut seen = Vec::with_capacity(total);
    while seen.len() < total {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} versions arrived", seen.len()))
            .expect("event")
            .expect("ok");
        seen.push((event.version, delay_of(&event.data)));
    }
    assert_eq!(seen, want, "the watch sees every version, in order");
}

/// Distinct heartbeat times of the node seen while polling for `window`.
async fn heartbeats_seen(farm: &Farm, window: Duration) -> usize {
    let until = tokio::time::Instant::now() + window;
    let mut seen = std::collections::HashSet::new();
    while tokio::time::Instant::now() < until {
        if let Some(at) = farm.nodes().await.first().and_then(|n| n.last_heartbeat) {
            seen.insert((at.seconds, at.nanos));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_interval_ms_changes_how_often_a_node_heartbeats() {
    // Default interval 200 ms in these tests; the configured one is 40 ms.
    let farm = Farm::start(1, &[]).await;
    farm.wait_healthy(1, Duration::from_secs(20)).await;
    let before = heartbeats_seen(&farm, Duration::from_millis(800)).await;
    let fast = Struct {
        fields: BTreeMap::from([("heartbeat_interval_ms".to_owned(), number(40.0))]),
    };
    let version = farm
        .config()
        .put_config(put("global", fast, 0))
        .await
        .expect("put")
        .into_inner()
        .version;
    farm.wait_nodes("applied", Duration::from_secs(10), |nodes| {
        nodes.iter().all(|n| n.config_version == version)
    })
    .await;
    let after = heartbeats_seen(&farm, Duration::from_millis(800)).await;
    assert!(
        before <= 6,
        "about 4 heartbeats in 800 ms at 200 ms: {before}"
    );
    assert!(
        after >= 10,
        "about 20 heartbeats in 800 ms at 40 ms: {after}"
    );
}

#[tokio::test]
async fn values_a_node_cannot_apply_are_refused_and_nothing_is_stored() {
    let farm = Farm::start(0, &[]).await;
    let mut client = farm.config();
    let cases = [
        (
            json!({"workload": {"delay_ms": -5}}),
            "workload.delay_ms is -5; it must be a whole number from 0 to 60000.",
        ),
        (
            json!({"workload": {"delay_ms": "abc"}}),
            "workload.delay_ms is \"abc\"; it must be a whole number from 0 to 60000.",
        ),
        (
            json!({"workload.delay_ms": 1.5}),
            "workload.delay_ms is 1.5; it must be a whole number from 0 to 60000.",
        ),
        (
            json!({"workload": {"response_bytes": 4_000_001}}),
            "workload.response_bytes is 4000001; it must be a whole number from 0 to 4000000.",
        ),
        (
            json!({"workload": {"error_rate": 2}}),
            "workload.error_rate is 2; it must be a number from 0 to 1.",
        ),
        (
            json!({"workload.error_rate": true}),
            "workload.error_rate is true; it must be a number from 0 to 1.",
        ),
        (
            json!({"heartbeat_interval_ms": 5}),
            "heartbeat_interval_ms is 5; it must be a whole number from 10 to 3600000.",
        ),
        (
            json!({"workload": "fast"}),
            "workload is \"fast\"; it must be an object.",
        ),
        // The nested value hides the dotted one from a node today; a merge
        // that drops the nested one would make the node use it.
        (
            json!({"workload": {"delay_ms": 5}, "workload.delay_ms": "abc"}),
            "workload.delay_ms is \"abc\"; it must be a whole number from 0 to 60000.",
        ),
        // Every problem, one sentence each.
        (
            json!({"workload": {"delay_ms": -5, "error_rate": "x"}, "heartbeat_interval_ms": 0}),
            "workload.delay_ms is -5; it must be a whole number from 0 to 60000. \
             workload.error_rate is \"x\"; it must be a number from 0 to 1. \
             heartbeat_interval_ms is 0; it must be a whole number from 10 to 3600000.",
        ),
    ];
    for (bad, said) in &cases {
        let status = client
            .put_config(put("global", config_data(bad.clone()), 0))
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert_eq!(status.message(), *said, "{bad}");
    }
    assert_eq!(farm.versions("global").await, [0u64; 0], "nothing stored");

    // Keys the farm does not know are the user's own, whatever they hold;
    // `null` leaves a known key unset.
    let mine = json!({
        "workload": {"delay_ms": 150, "delay": "slow"},
        "workload.owner": "me",
        "mine": {"delay_ms": "abc", "error_rate": 7},
        "heartbeat_interval_ms": null,
    });
    let version = client
        .put_config(put("global", config_data(mine.clone()), 0))
        .await
        .expect("unknown keys pass")
        .into_inner()
        .version;
    let stored = farm.current_config("global").await;
    assert_eq!(stored.version, version);
    let stored = farm_api::json::struct_to_json(&stored.data.expect("data"));
    assert_eq!(serde_json::Value::Object(stored), mine);

    // A refused write leaves the latest version as it was, even one whose
    // compare-and-set would have passed.
    let status = client
        .put_config(put("global", delay(-5.0), version))
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(farm.versions("global").await, [version]);
}

#[tokio::test]
async fn a_rollback_to_a_version_a_node_cannot_apply_is_refused() {
    // Versions stored before the farm checked values may hold anything:
    // a first control plane creates the store, and they are written into
    // it as an older version of the farm would have.
    let dir = Farm::start(0, &[]).await.stop().await;
    {
        let db = rusqlite::Connection::open(dir.path().join("farm.db")).expect("store");
        for (version, data) in [
            (1, json!({"workload": {"delay_ms": -5}})),
            (2, json!({"workload": {"delay_ms": "abc"}, "mine": 1})),
            (3, json!({"workload": {"delay_ms": 20}})),
            (4, json!({"workload": {"delay_ms": 30}})),
        ] {
            db.execute(
                "INSERT INTO config_versions (version, scope, data, created_ms, role, rollback_of) \
                 VALUES (?1, 'global', ?2, 1700000000000, 'admin', 0)",
                rusqlite::params![version, data.to_string()],
            )
            .expect("insert");
        }
    }
    let farm = Farm::start_in(dir, 0, &[]).await;
    let mut client = farm.config();
    let rollback = |version: u64| RollbackRequest {
        scope: "global".into(),
        version,
        expected_version: 4,
    };
    for (version, said) in [
        (1, "workload.delay_ms is -5;"),
        (2, "workload.delay_ms is \"abc\";"),
    ] {
        let status = client
            .rollback(rollback(version))
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .starts_with(&format!("version {version} cannot be restored")),
            "{status:?}"
        );
        assert!(status.message().contains(said), "{status:?}");
    }
    let versions = farm.versions("global").await;
    assert_eq!(versions, [4, 3, 2, 1], "nothing stored");

    // A version a node can apply is restored as before.
    let restored = client
        .rollback(rollback(3))
        .await
        .expect("Rollback")
        .into_inner()
        .version;
    assert_eq!(restored, 5);
    let current = farm.current_config("global").await;
    assert_eq!((current.version, delay_of(&current.data)), (5, Some(20.0)));
}

#[tokio::test]
async fn a_merge_patches_the_current_version_and_a_whole_write_still_replaces() {
    let farm = Farm::start(0, &[]).await;
    let mut client = farm.config();
    let base = json!({
        "workload": {"delay_ms": 5, "error_rate": 0.1},
        "tags": ["a", "b"],
        "owner": "me",
        "drop": 1,
    });
    let v1 = farm.put_config("global", base).await;

    // One key changes, the others stay; `null` deletes; nested objects
    // merge; arrays replace.
    let patch = json!({"workload": {"delay_ms": 9}, "tags": ["c"], "drop": null});
    let v2 = client
        .put_config(merge("global", patch, v1))
        .await
        .expect("merge")
        .into_inner()
        .version;
    assert!(v2 > v1);
    let merged = json!({
        "workload": {"delay_ms": 9, "error_rate": 0.1},
        "tags": ["c"],
        "owner": "me",
    });
    assert_eq!(current(&farm, "global").await, (v2, merged.clone()));

    // A merge that changes nothing is a new version all the same, as a
    // whole write of the same data is.
    let v3 = client
        .put_config(merge("global", json!({"owner": "me"}), v2))
        .await
        .expect("merge changing nothing")
        .into_inner()
        .version;
    assert!(v3 > v2);
    assert_eq!(current(&farm, "global").await, (v3, merged));
    assert_eq!(farm.versions("global").await, [v3, v2, v1]);

    // `merge: false` (the default) replaces the whole configuration.
    let v4 = client
        .put_config(put("global", config_data(json!({"only": 1})), v3))
        .await
        .expect("whole write")
        .into_inner()
        .version;
    assert_eq!(current(&farm, "global").await, (v4, json!({"only": 1})));
}

/// Each merge applies to the version it follows, never to one read before
/// another write landed: merges racing on one scope lose no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_racing_on_one_scope_lose_no_key() {
    let farm = Farm::start(0, &[]).await;
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let mut client = farm.config();
            tokio::spawn(async move {
                client
                    .put_config(merge("global", json!({format!("k{i}"): i}), 0))
                    .await
                    .expect("merge")
                    .into_inner()
                    .version
            })
        })
        .collect();
    let mut last = 0;
    for writer in writers {
        last = last.max(writer.await.expect("writer"));
    }
    let want: serde_json::Map<String, serde_json::Value> =
        (0..20).map(|i| (format!("k{i}"), json!(i))).collect();
    assert_eq!(
        current(&farm, "global").await,
        (last, serde_json::Value::Object(want))
    );
    assert_eq!(farm.versions("global").await.len(), 20);
}

#[tokio::test]
async fn a_merge_into_a_scope_never_written_patches_an_empty_object() {
    let farm = Farm::start(0, &[]).await;
    let version = farm
        .config()
        .put_config(merge(
            "group:default",
            json!({"workload": {"delay_ms": 7}, "nothing": null}),
            0,
        ))
        .await
        .expect("merge")
        .into_inner()
        .version;
    assert_eq!(
        current(&farm, "group:default").await,
        (version, json!({"workload": {"delay_ms": 7}}))
    );
}

#[tokio::test]
async fn a_merge_with_a_stale_expected_version_is_aborted_and_stores_nothing() {
    let farm = Farm::start(0, &[]).await;
    let v1 = farm.put_config("global", json!({"a": 1, "b": 1})).await;
    let v2 = farm.put_config("global", json!({"a": 2})).await;
    let status = farm
        .config()
        .put_config(merge("global", json!({"b": 3}), v1))
        .await
        .expect_err("stale expected_version");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains(&format!("version {v2}")),
        "{status:?}"
    );
    assert_eq!(farm.versions("global").await, [v2, v1], "nothing stored");
    assert_eq!(current(&farm, "global").await, (v2, json!({"a": 2})));
}

#[tokio::test]
async fn a_merge_whose_result_a_node_cannot_apply_is_refused_and_stores_nothing() {
    let farm = Farm::start(0, &[]).await;
    let mut client = farm.config();
    let blob = |kib: usize| json!("x".repeat(kib * 1024));
    let base = json!({"workload": {"delay_ms": 5}, "first": blob(40)});
    let version = farm.put_config("global", base.clone()).await;

    let status = client
        .put_config(merge("global", json!({"workload": {"delay_ms": -5}}), 0))
        .await
        .expect_err("unusable");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "workload.delay_ms is -5; it must be a whole number from 0 to 60000."
    );

    // 30 KiB more fits on its own (a whole write of it would pass) but not
    // on top of the 40 KiB already there: the limit applies to the result.
    let more = json!({"second": blob(30)});
    let status = client
        .put_config(merge("global", more.clone(), version))
        .await
        .expect_err("too large once merged");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("the limit is 65536"),
        "{status:?}"
    );
    assert_eq!(farm.versions("global").await, [version], "nothing stored");
    assert_eq!(current(&farm, "global").await, (version, base));

    // Deleting the first blob in the same patch makes room.
    let patch = json!({"first": null, "second": blob(30)});
    let merged = client
        .put_config(merge("global", patch, version))
        .await
        .expect("fits once merged")
        .into_inner()
        .version;
    let want = json!({"workload": {"delay_ms": 5}, "second": blob(30)});
    assert_eq!(current(&farm, "global").await, (merged, want));
    let whole = client
        .put_config(put("global", config_data(more), merged))
        .await
        .expect("30 KiB alone fits");
    assert!(whole.into_inner().version > merged);
}

/// Through grpcurl, so the JSON name users type (`merge`) is covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_merges_with_merge_true_and_replaces_without_it() {
    let farm = Farm::start(0, &[]).await;
    let addr = farm.addr.to_string();
    let base = farm
        .put_config(
            "global",
            json!({"workload": {"delay_ms": 5, "error_rate": 0.1}, "owner": "me"}),
        )
        .await;
    let put_config = |request: &'static str| {
        let addr = addr.clone();
        async move {
            let output = run(
                "grpcurl",
                &[
                    "-plaintext",
                    "-d",
                    request,
                    &addr,
                    "farm.v1.Config/PutConfig",
                ],
            )
            .await?;
            let reply: serde_json::Value =
                serde_json::from_str(&stdout(&output, "grpcurl PutConfig")).expect("JSON reply");
            // grpcurl prints 64-bit numbers as strings.
            let version = reply["version"].as_str().expect("version").parse::<u64>();
            Some(version.expect("a number"))
        }
    };

    let Some(merged) = put_config(
        r#"{"scope": "global", "data": {"workload": {"delay_ms": 20}, "owner": null}, "merge": true}"#,
    )
    .await
    else {
        return;
    };
    assert!(merged > base);
    assert_eq!(
        current(&farm, "global").await,
        (
            merged,
            json!({"workload": {"delay_ms": 20, "error_rate": 0.1}})
        )
    );

    let replaced = put_config(r#"{"scope": "global", "data": {"workload": {"delay_ms": 30}}}"#)
        .await
        .expect("grpcurl");
    assert_eq!(
        current(&farm, "global").await,
        (replaced, json!({"workload": {"delay_ms": 30}}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_applies_the_merged_configuration() {
    let farm = Farm::start(1, &[]).await;
    let node = farm
        .wait_healthy(1, Duration::from_secs(20))
        .await
        .remove(0);
    farm.put_config(
        "global",
        json!({"workload": {"delay_ms": 5, "response_bytes": 64}, "owner": "me"}),
    )
    .await;
    let version = farm
        .config()
        .put_config(merge(
            "global",
            json!({"workload": {"response_bytes": 128}, "owner": null}),
            0,
        ))
        .await
        .expect("merge")
        .into_inner()
        .version;
    farm.wait_config(&node.name, version, Duration::from_secs(10))
        .await;
    // What the node applied, as it keeps it in its cache folder.
    let cache = farm
        .dir
        .path()
        .join("nodes")
        .join(&node.name)
        .join("config.json");
    let want = json!({"workload": {"delay_ms": 5, "response_bytes": 128}});
    eventually(
        format!("{} to hold version {version}", cache.display()),
        Duration::from_secs(10),
        || async {
            let cached = std::fs::read(&cache)
                .ok()
                .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok());
            let held = cached.map(|c| (c["version"].clone(), c["data"].clone()));
            ready_if(held == Some((json!(version), want.clone())), held)
        },
    )
    .await;
}
