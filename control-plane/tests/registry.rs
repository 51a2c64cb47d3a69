//! The Registry and Discovery contracts over a real socket: identities
//! cannot be taken over, limits hold, bad input gets a clear status and
//! never a panic, and Watch streams membership events.

use std::time::Duration;

use farm_api::v1::{
    DeregisterRequest, DiscoverRequest, EventKind, HeartbeatRequest, ListNodesRequest,
    NodeActionKind, RegisterRequest, RegisterResponse, WatchEvent, WatchRequest,
};
use farm_testkit::Farm;
use tokio_stream::StreamExt;
use tonic::Code;

fn request(name: &str, group: &str) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        address: "127.0.0.1:7000".into(),
        group: group.into(),
        ..Default::default()
    }
}

async fn register(
    farm: &Farm,
    request: RegisterRequest,
) -> Result<RegisterResponse, tonic::Status> {
    farm.registry()
        .register(request)
        .await
        .map(|r| r.into_inner())
}

/// Opens a heartbeat stream and waits for the first acknowledgement.
async fn heartbeat_once(farm: &Farm, id: &str, secret: &str) -> Result<u64, tonic::Status> {
    let first = HeartbeatRequest {
        node_id: id.into(),
        secret: secret.into(),
        seq: 1,
        serving: true,
        ..Default::default()
    };
    let outbound = tokio_stream::iter([first]).chain(tokio_stream::pending());
    let mut inbound = farm.registry().heartbeat(outbound).await?.into_inner();
    match inbound.next().await {
        Some(Ok(ack)) => Ok(ack.ack_seq),
        Some(Err(status)) => Err(status),
        None => Err(tonic::Status::unknown("stream ended")),
    }
}

#[tokio::test]
async fn identities_cannot_be_taken_over() {
    let farm = Farm::start(0, &[]).await;
    let issued = register(&farm, request("alpha", ""))
        .await
        .expect("register");
    assert!(issued.node_id.starts_with('n'));
    assert_eq!(issued.secret.len(), 64);

    let mut thief = request("alpha", "");
    thief.node_id = issued.node_id.clone();
    thief.secret = "0".repeat(64);
    let err = register(&farm, thief.clone())
        .await
        .expect_err("wrong secret");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = heartbeat_once(&farm, &issued.node_id, &thief.secret)
        .await
        .expect_err("wrong secret on the stream");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Claiming the name without the identity is refused too.
    let err = register(&farm, request("alpha", ""))
        .await
        .expect_err("name held");
    assert_eq!(err.code(), Code::AlreadyExists);

    thief.secret = issued.secret.clone();
    let again = register(&farm, thief).await.expect("the rightful owner");
    assert!(again.reattached);
    assert_eq!(again.node_id, issued.node_id);
    assert!(again.secret.is_empty(), "the secret is never shown twice");
    assert_eq!(
        heartbeat_once(&farm, &issued.node_id, &issued.secret)
            .await
            .expect("ack"),
        1
    );

    let err = farm
        .registry()
        .deregister(DeregisterRequest {
            node_id: issued.node_id.clone(),
            secret: "nope".into(),
        })
        .await
        .expect_err("wrong secret");
    assert_eq!(err.code(), Code::PermissionDenied);
    farm.registry()
        .deregister(DeregisterRequest {
            node_id: issued.node_id.clone(),
            secret: issued.secret.clone(),
        })
        .await
        .expect("deregister");
    assert!(farm.nodes().await.is_empty());
}

#[tokio::test]
async fn group_capacity_and_group_count_limits() {
    let farm = Farm::start(0, &["--group-capacity", "2", "--max-groups", "2"]).await;
    register(&farm, request("a", "room"))
        .await
        .expect("first member");
    register(&farm, request("b", "room"))
        .await
        .expect("second member");
    let err = register(&farm, request("c", "room"))
        .await
        .expect_err("room full");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("full"), "{}", err.message());
    let err = register(&farm, request("d", "other"))
        .await
        .expect_err("too many groups");
    assert_eq!(err.code(), Code::ResourceExhausted);
    register(&farm, request("e", ""))
        .await
        .expect("default group has room");
}

#[track_caller]
fn check(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, case: &str) {
    match result {
        Ok(value) => panic!("{case}: expected {code:?}, got {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{case}: {}", status.message());
            assert!(!status.message().is_empty(), "{case}: message explains");
        }
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_status() {
    let farm = Farm::start(0, &[]).await;
    let mut registry = farm.registry();
    let cases: Vec<(&str, RegisterRequest, Code)> = vec![
        ("empty name", request("", ""), Code::InvalidArgument),
        (
            "oversized name",
            request(&"x".repeat(64), ""),
            Code::InvalidArgument,
        ),
        (
            "name with a slash",
            request("a/b", ""),
            Code::InvalidArgument,
        ),
        (
            "bad group",
            request("ok", "no spaces"),
            Code::InvalidArgument,
        ),
        (
            "no port",
            RegisterRequest {
                address: "127.0.0.1".into(),
                ..request("ok", "")
            },
            Code::InvalidArgument,
        ),
        (
            "port zero",
            RegisterRequest {
                address: "127.0.0.1:0".into(),
                ..request("ok", "")
            },
            Code::InvalidArgument,
        ),
        (
            "unknown id",
            RegisterRequest {
                node_id: "n424242".into(),
                secret: "s".into(),
                ..request("ok", "")
            },
            Code::NotFound,
        ),
        (
            "malformed id",
            RegisterRequest {
                node_id: "node7".into(),
                secret: "s".into(),
                ..request("ok", "")
            },
            Code::InvalidArgument,
        ),
        (
            "secret without id",
            RegisterRequest {
                secret: "s".into(),
                ..request("ok", "")
            },
            Code::InvalidArgument,
        ),
        (
            "too many labels",
            RegisterRequest {
                labels: (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..request("ok", "")
            },
            Code::InvalidArgument,
        ),
    ];
    for (case, req, code) in cases {
        check(registry.register(req).await, code, case);
    }

    let mut discovery = farm.discovery();
    let discover = |count, group: &str, exclude: &str| DiscoverRequest {
        count,
        group: group.into(),
        exclude_id: exclude.into(),
        ..Default::default()
    };
    check(
        discovery.discover(discover(u32::MAX, "", "")).await,
        Code::InvalidArgument,
        "huge count",
    );
    check(
        discovery.discover(discover(1, "nope", "")).await,
        Code::NotFound,
        "unknown group",
    );
    check(
        discovery.discover(discover(1, "", "x y")).await,
        Code::InvalidArgument,
        "an exclude_id that is neither an id nor a name",
    );
    check(
        discovery.discover(discover(1, "", "no-such-node")).await,
        Code::NotFound,
        "an exclude_id naming no node",
    );
    check(
        farm.farm()
            .list_nodes(ListNodesRequest {
                group: "nope".into(),
            })
            .await,
        Code::NotFound,
        "unknown group in ListNodes",
    );
    check(
        farm.act("n77", NodeActionKind::Stop).await,
        Code::NotFound,
        "unknown node",
    );
    check(
        farm.act("", NodeActionKind::Stop).await,
        Code::InvalidArgument,
        "empty node id",
    );

    // A heartbeat stream that does not start with credentials.
    check(
        heartbeat_once(&farm, "", "").await,
        Code::InvalidArgument,
        "anonymous heartbeat",
    );
    check(
        heartbeat_once(&farm, "n1", "s").await,
        Code::NotFound,
        "heartbeat of unknown node",
    );

    // A message above the size limit.
    let huge = RegisterRequest {
        labels: [("big".to_owned(), "x".repeat(5 * 1024 * 1024))].into(),
        ..request("ok", "")
    };
    check(
        registry.register(huge).await,
        Code::OutOfRange,
        "oversized message",
    );

    // And the server is still fine.
    register(&farm, request("fine", ""))
        .await
        .expect("still serving");
}

async fn next(watch: &mut tonic::Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("event within 5 s")
        .expect("stream open")
        .expect("event")
}

/// A watcher that asks for batches gets the snapshot in events of up to
/// 1,000 nodes each, every node once, then SYNCED, then live events as
/// usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_batched_snapshot_carries_every_node_in_few_events() {
    let farm = Farm::start(0, &[]).await;
    let names: Vec<String> = (0..2500).map(|i| format!("batched-{i:04}")).collect();
    futures::future::try_join_all(names.iter().map(|n| register(&farm, request(n, ""))))
        .await
        .expect("register");
    let mut watch = farm
        .discovery()
        .watch(WatchRequest {
            batch_snapshot: true,
            ..Default::default()
        })
        .await
        .expect("Watch")
        .into_inner();
    let mut sizes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let event = next(&mut watch).await;
        if event.kind == EventKind::Synced as i32 {
            break;
        }
        assert_eq!(event.kind, EventKind::Snapshot as i32, "{event:?}");
        assert!(event.node.is_none(), "the nodes come in `nodes`");
        sizes.push(event.nodes.len());
        seen.extend(event.nodes.into_iter().map(|n| n.name));
    }
    assert_eq!(sizes, [1000, 1000, 500]);
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        names,
        "every node once"
    );

    register(&farm, request("late", ""))
        .await
        .expect("register");
    // Live events follow, one node each (the registered nodes, which never
    // heartbeat, may change state meanwhile).
    let joined = loop {
        let event = next(&mut watch).await;
        assert!(event.nodes.is_empty(), "{event:?}");
        if event.kind == EventKind::Joined as i32 {
            break event;
        }
    };
    assert_eq!(joined.node.map(|n| n.name).as_deref(), Some("late"));
}

#[tokio::test]
async fn watch_streams_membership_and_resumes() {
    let farm = Farm::start(0, &[]).await;
    register(&farm, request("early", ""))
        .await
        .expect("register");
    let mut watch = farm.watch().await;
    let snapshot = next(&mut watch).await;
    assert_eq!(snapshot.kind, EventKind::Snapshot as i32);
    assert_eq!(
        snapshot.node.as_ref().map(|n| n.name.as_str()),
        Some("early")
    );
    let synced = next(&mut watch).await;
    assert_eq!(synced.kind, EventKind::Synced as i32);

    let late = register(&farm, request("late", ""))
        .await
        .expect("register");
    let joined = next(&mut watch).await;
    assert_eq!(joined.kind, EventKind::Joined as i32);
    assert_eq!(
        joined.node.as_ref().map(|n| n.id.clone()),
        Some(late.node_id.clone())
    );
    let resume_from = joined.revision;

    heartbeat_once(&farm, &late.node_id, &late.secret)
        .await
        .expect("healthy");
    let changed = next(&mut watch).await;
    assert_eq!(changed.kind, EventKind::Changed as i32);

    // A second watcher resuming after `joined` replays what came next.
    let mut resumed = farm
        .discovery()
        .watch(WatchRequest {
            from_revision: resume_from,
            ..Default::default()
        })
        .await
        .expect("Watch")
        .into_inner();
    let replayed = next(&mut resumed).await;
    assert_eq!(replayed.revision, changed.revision);
    assert_eq!(replayed.kind, EventKind::Changed as i32);
    // Then SYNCED: the watcher is caught up.
    let synced = next(&mut resumed).await;
    assert_eq!(synced.kind, EventKind::Synced as i32);
    assert_eq!(synced.revision, changed.revision);
}
