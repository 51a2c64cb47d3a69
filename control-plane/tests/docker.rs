//! The farm in containers of a real Docker engine. Skipped with a message
//! when no engine answers, failing instead when `FARM_REQUIRE_DOCKER=1`.
//! Every farm here has a test-chosen id; its containers and network are
//! removed by label even when a test fails.

use std::{process::Stdio, time::Duration};

use farm_api::v1::{
    NodeActionKind, NodeState, ScaleRequest, WorkRequest, workload_client::WorkloadClient,
};
use farm_testkit::{
    ControlPlaneProcess, Farm, binary, by_name,
    docker::{self, DockerCleanup, containers_labelled},
    free_addr, healthy,
};

fn docker_flags(binary: &str) -> Vec<&str> {
    vec!["--runtime", "docker", "--node-image-binary", binary]
}

fn inspect(container: &str, format: &str) -> String {
    docker::docker(&["inspect", "--format", format, container])
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_containers_come_up_healthy_with_limits_and_labels() {
    if !docker::available("fifty_containers_come_up_healthy_with_limits_and_labels") {
        return;
    }
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cleanup = DockerCleanup::new(dir.path());
    let farm = Farm::start_in(dir, 50, &docker_flags(binary)).await;
    let nodes = farm.wait_healthy(50, Duration::from_secs(180)).await;

    let containers = containers_labelled(&cleanup.label());
    assert_eq!(containers.len(), 50, "one container per node");
    for node in &nodes {
        assert!(
            containers.contains(&node.runtime_id),
            "{} runs in a container of this farm: {}",
            node.name,
            node.runtime_id
        );
    }
    let one = &nodes[0].runtime_id;
    assert_eq!(
        inspect(one, "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}"),
        "500000000 134217728",
        "0.5 CPU and 128 MiB"
    );
    assert_eq!(
        inspect(
            one,
            "{{index .Config.Labels \"farm.managed\"}} {{index .Config.Labels \"farm.id\"}}"
        ),
        format!("true {}", cleanup.id)
    );
    assert_eq!(
        inspect(
            one,
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}"
        ),
        format!("farm-{}", cleanup.id),
        "on the farm's own network"
    );

    // The registered address is the container's, and it serves Workload.
    let node = &nodes[0];
    let mut client = WorkloadClient::connect(format!("http://{}", node.address))
        .await
        .expect("connect to the node's container");
    let response = client
        .work(WorkRequest {
            id: 9,
            response_bytes: 64,
            ..Default::default()
        })
        .await
        .expect("Work")
        .into_inner();
    assert_eq!((response.id, response.payload.len()), (9, 64));
    assert_eq!(response.node_id, node.id);

    farm.stop().await;
    assert!(
        containers_labelled(&cleanup.label()).is_empty(),
        "shutdown removes the farm's containers"
    );
    let networks = docker::docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label={}", cleanup.label()),
    ]);
    assert!(networks.trim().is_empty(), "and its network: {networks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_containers_are_replaced_and_actions_reach_the_container() {
    if !docker::available("killed_containers_are_replaced_and_actions_reach_the_container") {
        return;
    }
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cleanup = DockerCleanup::new(dir.path());
    let farm = Farm::start_in(dir, 3, &docker_flags(binary)).await;
    let nodes = farm.wait_healthy(3, Duration::from_secs(60)).await;

    // Killed from outside: noticed through the engine's events, replaced
    // under the same identity.
    let victim = by_name(&nodes, "node-002").clone();
    docker::docker(&["kill", &victim.runtime_id]);
    let nodes = farm
        .wait_nodes(
            "killed container replaced",
            Duration::from_secs(30),
            |nodes| {
                let n = by_name(nodes, "node-002");
                nodes.iter().all(healthy) && n.runtime_id != victim.runtime_id
            },
        )
        .await;
    let replacement = by_name(&nodes, "node-002");
    assert_eq!(replacement.id, victim.id);
    assert_eq!(replacement.starts, 2);
    assert_eq!(containers_labelled(&cleanup.label()).len(), 3);

    // Pause freezes the container: unhealthy after the deadline; unpause
    // brings it back.
    let paused = by_name(&nodes, "node-001").clone();
    farm.act(&paused.id, NodeActionKind::Pause)
        .await
        .expect("pause");
    assert_eq!(inspect(&paused.runtime_id, "{{.State.Paused}}"), "true");
    farm.wait_nodes("paused node unhealthy", Duration::from_secs(10), |nodes| {
        by_name(nodes, "node-001").state == NodeState::Unhealthy as i32
    })
    .await;
    farm.act(&paused.id, NodeActionKind::Unpause)
        .await
        .expect("unpause");
    farm.wait_nodes("unpaused node healthy", Duration::from_secs(10), |nodes| {
        healthy(by_name(nodes, "node-001"))
    })
    .await;

    // A pause from outside the farm shows in the node's state too.
    docker::docker(&["pause", &paused.runtime_id]);
    farm.wait_nodes("outside pause seen", Duration::from_secs(10), |nodes| {
        let n = by_name(nodes, "node-001");
        n.state == NodeState::Unhealthy as i32 && n.state_reason.contains("paused")
    })
    .await;
    docker::docker(&["unpause", &paused.runtime_id]);
    farm.wait_nodes("outside unpause seen", Duration::from_secs(10), |nodes| {
        let n = by_name(nodes, "node-001");
        healthy(n) && !n.state_reason.contains("paused")
    })
    .await;

    // Stop removes the container and holds the slot; start brings a new one.
    let stopped = by_name(&nodes, "node-003").clone();
    farm.act(&stopped.id, NodeActionKind::Stop)
        .await
        .expect("stop");
    assert_eq!(containers_labelled(&cleanup.label()).len(), 2);
    farm.act(&stopped.id, NodeActionKind::Start)
        .await
        .expect("start");
    let nodes = farm
        .wait_nodes("restarted slot healthy", Duration::from_secs(30), |nodes| {
            nodes.iter().all(healthy) && by_name(nodes, "node-003").runtime_id != stopped.runtime_id
        })
        .await;
    assert_eq!(by_name(&nodes, "node-003").id, stopped.id);

    // Remove: a fresh node with a new identity takes the slot.
    farm.act(&stopped.id, NodeActionKind::Remove)
        .await
        .expect("remove");
    let nodes = farm
        .wait_nodes("removed slot refilled", Duration::from_secs(30), |nodes| {
            nodes.len() == 3 && nodes.iter().all(healthy)
        })
        .await;
    assert_ne!(by_name(&nodes, "node-003").id, stopped.id);

    // Scale creates and removes containers.
    farm.farm()
        .scale(ScaleRequest { nodes: Some(5) })
        .await
        .expect("scale up");
    farm.wait_healthy(5, Duration::from_secs(60)).await;
    assert_eq!(containers_labelled(&cleanup.label()).len(), 5);
    farm.farm()
        .scale(ScaleRequest { nodes: Some(2) })
        .await
        .expect("scale down");
    farm.wait_nodes("scaled down to 2", Duration::from_secs(30), |nodes| {
        nodes.len() == 2 && nodes.iter().all(healthy)
    })
    .await;
    assert_eq!(containers_labelled(&cleanup.label()).len(), 2);
    farm.stop().await;
    assert!(containers_labelled(&cleanup.label()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_adopts_its_containers_and_only_those() {
    if !docker::available("a_restarted_control_plane_adopts_its_containers_and_only_those") {
        return;
    }
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cleanup = DockerCleanup::new(dir.path());
    let addr = free_addr();
    let flags = docker_flags(binary);
    let mut first = ControlPlaneProcess::start_with(dir.path(), 3, addr, &flags).await;
    let before = first.wait_healthy(3, Duration::from_secs(60)).await;
    let image = inspect(&before[0].runtime_id, "{{.Config.Image}}");

    // A container that is not this farm's, named like its next node would be.
    let foreign_name = format!("farm-{}-node-004", cleanup.id);
    docker::docker(&[
        "run",
        "-d",
        "--name",
        &foreign_name,
        "--label",
        &format!("farm.test={}", cleanup.id),
        "--network",
        "none",
        &image,
        "--control-plane",
        "http://127.0.0.1:1",
    ]);

    first.kill().await;
    assert_eq!(
        containers_labelled(&cleanup.label()).len(),
        3,
        "containers outlive a crashed control plane"
    );

    let mut second = ControlPlaneProcess::start_with(dir.path(), 3, addr, &flags).await;
    let after = second.wait_healthy(3, Duration::from_secs(60)).await;
    let ids = |nodes: &[farm_api::v1::NodeInfo]| {
        let mut v: Vec<(String, String, String)> = nodes
            .iter()
            .map(|n| (n.name.clone(), n.id.clone(), n.runtime_id.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "same containers, same identities"
    );
    assert_eq!(
        containers_labelled(&cleanup.label()).len(),
        3,
        "none created anew"
    );

    let foreign_id = inspect(&foreign_name, "{{.Id}}");
    let status = second.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}");
    assert!(containers_labelled(&cleanup.label()).is_empty());
    assert_eq!(
        inspect(&foreign_name, "{{.Id}} {{.State.Running}}"),
        format!("{foreign_id} true"),
        "the foreign container is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_nodes_leaves_containers_for_the_next_control_plane() {
    if !docker::available("keep_nodes_leaves_containers_for_the_next_control_plane") {
        return;
    }
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cleanup = DockerCleanup::new(dir.path());
    let addr = free_addr();
    let mut keep = docker_flags(binary);
    keep.push("--keep-nodes");
    let mut first = ControlPlaneProcess::start_with(dir.path(), 2, addr, &keep).await;
    let before = first.wait_healthy(2, Duration::from_secs(60)).await;
    let status = first.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}");
    let left = containers_labelled(&cleanup.label());
    assert_eq!(left.len(), 2, "--keep-nodes leaves the containers running");

    let mut second =
        ControlPlaneProcess::start_with(dir.path(), 2, addr, &docker_flags(binary)).await;
    let after = second.wait_healthy(2, Duration::from_secs(60)).await;
    let runtime_ids = |nodes: &[farm_api::v1::NodeInfo]| {
        let mut v: Vec<String> = nodes.iter().map(|n| n.runtime_id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(runtime_ids(&before), runtime_ids(&after), "adopted");
    assert!(second.terminate(Duration::from_secs(60)).await.success());
    assert!(containers_labelled(&cleanup.label()).is_empty());
}

#[tokio::test]
async fn docker_runtime_without_an_engine_names_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(binary("control-plane"))
        .args(["serve", "--runtime", "docker", "--listen", "127.0.0.1:0"])
        .args(["--docker-host", "unix:///nonexistent/farm-test.sock"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run control-plane");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no Docker engine answers at unix:///nonexistent/farm-test.sock"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_the_reason_given_and_the_node_comes_back() {
    if !docker::available("an_oom_kill_is_the_reason_given_and_the_node_comes_back") {
        return;
    }
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cleanup = DockerCleanup::new(dir.path());
    let mut flags = docker_flags(binary);
    flags.extend(["--node-memory", "12MiB"]);
    let farm = Farm::start_in(dir, 1, &flags).await;
    let nodes = farm.wait_healthy(1, Duration::from_secs(60)).await;
    let node = nodes[0].clone();
    assert_eq!(
        inspect(&node.runtime_id, "{{.HostConfig.Memory}}"),
        "12582912"
    );

    // Every change of the node is on the Watch stream: the short-lived
    // "OOM-killed" reason cannot be missed between polls.
    let mut watch = farm.watch().await;
    // Responses far beyond the container's memory, all at once.
    let address = format!("http://{}", node.address);
    let load: Vec<_> = (0..8)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move {
                let Ok(mut client) = WorkloadClient::connect(address).await else {
                    return;
                };
                let _ = client
                    .work(WorkRequest {
                        response_bytes: 4_000_000,
                        delay_ms: 200,
                        ..Default::default()
                    })
                    .await;
            })
        })
        .collect();
    let reason = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = tokio_stream::StreamExt::next(&mut watch)
                .await
                .expect("stream open")
                .expect("event");
            if let Some(n) = event.node
                && n.state_reason.contains("OOM")
            {
                return n.state_reason;
            }
        }
    })
    .await
    .expect("an OOM kill is reported within 30 s");
    assert!(reason.contains("OOM-killed"), "{reason}");
    for task in load {
        let _ = task.await;
    }
    let back = farm
        .wait_nodes(
            "node back after the OOM kill",
            Duration::from_secs(30),
            |nodes| {
                nodes.len() == 1 && healthy(&nodes[0]) && nodes[0].runtime_id != node.runtime_id
            },
        )
        .await;
    assert_eq!(back[0].id, node.id);
    assert_eq!(containers_labelled(&cleanup.label()).len(), 1);
    farm.stop().await;
}
