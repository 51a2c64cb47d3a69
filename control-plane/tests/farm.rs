//! The farm as a user drives it: fifty process nodes come up healthy, are
//! discoverable in random subsets, scale, and obey node actions.

use std::{collections::BTreeSet, time::Duration};

use farm_api::v1::{DiscoverRequest, ListGroupsRequest, NodeActionKind, NodeState, ScaleRequest};
use farm_testkit::{
    Farm, binary, by_name, healthy, pid,
    process::{alive, node_processes},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_come_up_healthy_and_are_discovered_in_random_subsets() {
    let farm = Farm::start(50, &[]).await;
    let nodes = farm.wait_healthy(50, Duration::from_secs(30)).await;
    let names: BTreeSet<_> = nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(names.len(), 50);
    assert!(names.contains("node-001") && names.contains("node-050"));
    for node in &nodes {
        assert!(node.id.starts_with('n'), "{node:?}");
        assert!(node.address.starts_with("127.0.0.1:"), "{node:?}");
        assert_eq!(node.group, "default");
        assert!(node.managed);
        assert!(alive(pid(node)));
    }

    let first: BTreeSet<_> = farm.discover("", 5).await.into_iter().collect();
    assert_eq!(first.len(), 5, "5 distinct peers");
    let mut differs = false;
    for _ in 0..10 {
        let next: BTreeSet<_> = farm.discover("", 5).await.into_iter().collect();
        assert_eq!(next.len(), 5);
        differs |= next != first;
    }
    assert!(differs, "repeated Discover calls return different subsets");
    assert_eq!(farm.discover("default", 100).await.len(), 50);

    let groups = farm
        .discovery()
        .list_groups(ListGroupsRequest {})
        .await
        .expect("ListGroups")
        .into_inner()
        .groups;
    let default = groups
        .iter()
        .find(|g| g.name == "default")
        .expect("default group");
    assert_eq!((default.members, default.healthy), (50, 50));
    let lowest = nodes
        .iter()
        .map(|n| n.id[1..].parse::<u64>().expect("numeric id"))
        .min()
        .expect("nodes");
    assert_eq!(default.leader_id, format!("n{lowest}"), "lowest id leads");

    let dir = farm.dir.path().to_owned();
    let pids: Vec<i32> = nodes.iter().map(pid).collect();
    farm.stop().await;
    for pid in pids {
        assert!(!alive(pid), "node process {pid} left behind");
    }
    assert!(node_processes(&dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_filters_by_group_and_labels() {
    let farm = Farm::start(3, &[]).await;
    farm.wait_healthy(3, Duration::from_secs(20)).await;
    // A node of another group, registered as any outside agent would.
    let node = tokio::process::Command::new(binary("farm-node"))
        .args([
            "--control-plane",
            &farm.url(),
            "--name",
            "edge-1",
            "--group",
            "edge",
        ])
        .args(["--label", "zone=west"])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn farm-node");
    farm.wait_healthy(4, Duration::from_secs(20)).await;
    let edge = farm.discover("edge", 10).await;
    assert_eq!(edge.len(), 1);
    let all = farm.nodes().await;
    assert_eq!(by_name(&all, "edge-1").id, edge[0]);
    assert!(!by_name(&all, "edge-1").managed);

    let mut labels = std::collections::HashMap::new();
    labels.insert("zone".to_owned(), "west".to_owned());
    let west = farm
        .discovery()
        .discover(DiscoverRequest {
            count: 10,
            labels,
            ..Default::default()
        })
        .await
        .expect("Discover")
        .into_inner();
    assert_eq!(west.peers.len(), 1);
    assert_eq!(west.peers[0].name, "edge-1");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down() {
    let farm = Farm::start(50, &[]).await;
    farm.wait_healthy(50, Duration::from_secs(30)).await;
    let response = farm
        .farm()
        .scale(ScaleRequest { nodes: Some(60) })
        .await
        .expect("Scale")
        .into_inner();
    assert_eq!((response.previous, response.desired), (50, 60));
    let nodes = farm.wait_healthy(60, Duration::from_secs(30)).await;
    let removed: Vec<i32> = nodes
        .iter()
        .filter(|n| n.name.as_str() > "node-040")
        .map(pid)
        .collect();
    assert_eq!(removed.len(), 20);

    farm.farm()
        .scale(ScaleRequest { nodes: Some(40) })
        .await
        .expect("Scale");
    let nodes = farm.wait_healthy(40, Duration::from_secs(30)).await;
    assert!(nodes.iter().all(|n| n.name.as_str() <= "node-040"));
    assert!(
        removed.iter().all(|p| !alive(*p)),
        "removed nodes' processes are gone"
    );
    assert_eq!(farm.discover("", 1000).await.len(), 40);

    let err = farm
        .farm()
        .scale(ScaleRequest {
            nodes: Some(1_000_000),
        })
        .await
        .expect_err("too many");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // `{}` is refused, not read as 0 (which would stop every node).
    let err = farm
        .farm()
        .scale(ScaleRequest { nodes: None })
        .await
        .expect_err("no size");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("nodes is required"), "{err:?}");
    assert_eq!(farm.discover("", 1000).await.len(), 40, "nothing stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_actions_stop_start_restart_kill_pause_remove() {
    let farm = Farm::start(3, &[]).await;
    let nodes = farm.wait_healthy(3, Duration::from_secs(20)).await;
    let target = by_name(&nodes, "node-002").clone();
    let first_pid = pid(&target);

    // stop: held stopped, not replaced.
    let stopped = farm
        .act(&target.id, NodeActionKind::Stop)
        .await
        .expect("stop");
    assert_eq!(stopped.state, NodeState::Stopped as i32);
    assert!(!alive(first_pid));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = farm.nodes().await;
    assert_eq!(by_name(&now, "node-002").state, NodeState::Stopped as i32);
    assert!(!farm.discover("", 10).await.contains(&target.id));

    // start: back under the same identity.
    farm.act(&target.id, NodeActionKind::Start)
        .await
        .expect("start");
    let now = farm.wait_healthy(3, Duration::from_secs(10)).await;
    let started = by_name(&now, "node-002");
    assert_eq!(started.id, target.id, "identity kept");
    assert_ne!(pid(started), first_pid);

    // restart: a new process, same identity.
    let before = pid(started);
    farm.act(&target.id, NodeActionKind::Restart)
        .await
        .expect("restart");
    let now = farm
        .wait_nodes("restarted node healthy", Duration::from_secs(10), |nodes| {
            let n = by_name(nodes, "node-002");
            healthy(n) && pid(n) != before
        })
        .await;
    assert_eq!(by_name(&now, "node-002").id, target.id);

    // kill: a crash; the farm replaces it.
    let before = pid(by_name(&now, "node-002"));
    farm.act(&target.id, NodeActionKind::Kill)
        .await
        .expect("kill");
    let now = farm
        .wait_nodes("killed node replaced", Duration::from_secs(10), |nodes| {
            let n = by_name(nodes, "node-002");
            healthy(n) && n.runtime_id != format!("pid:{before}")
        })
        .await;
    assert!(!alive(before));
    assert!(by_name(&now, "node-002").starts >= 4);

    // pause: turns unhealthy after the deadline; unpause: healthy again.
    // A node may be named by its name as well as by its id.
    let paused = farm
        .act("node-002", NodeActionKind::Pause)
        .await
        .expect("pause by name");
    assert_eq!(paused.id, target.id, "the name resolves to the node's id");
    farm.wait_nodes("paused node unhealthy", Duration::from_secs(10), |nodes| {
        by_name(nodes, "node-002").state == NodeState::Unhealthy as i32
    })
    .await;
    farm.act("node-002", NodeActionKind::Unpause)
        .await
        .expect("unpause by name");
    farm.wait_healthy(3, Duration::from_secs(10)).await;

    // remove: a fresh identity takes the slot.
    farm.act(&target.id, NodeActionKind::Remove)
        .await
        .expect("remove");
    let now = farm
        .wait_nodes(
            "removed node replaced by a fresh one",
            Duration::from_secs(10),
            |nodes| {
                nodes.len() == 3
                    && nodes.iter().all(healthy)
                    && nodes
                        .iter()
                        .any(|n| n.name == "node-002" && n.id != target.id)
            },
        )
        .await;
    assert!(now.iter().all(|n| n.id != target.id));

    // Acting on what is not there, or not ours.
    let err = farm
        .act("n9999", NodeActionKind::Stop)
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = farm
        .act("node-999", NodeActionKind::Stop)
        .await
        .expect_err("unknown name");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().contains("no node named \"node-999\""),
        "{err:?}"
    );
    let err = farm
        .act("node 2", NodeActionKind::Stop)
        .await
        .expect_err("neither an id nor a name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let any = &now[0].id;
    let err = farm
        .act(any, NodeActionKind::Unspecified)
        .await
        .expect_err("no action");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
