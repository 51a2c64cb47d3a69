//! The farm as a Swarm service over three hosts on one machine: the
//! machine's engine manages a swarm the test makes, and two more engines,
//! each in a network namespace of the test's own
//! (`farm_testkit::engines`), join it as workers. The node image reaches
//! them by `docker save` and `docker load`; no registry is contacted.
//!
//! The control plane listens on the bridge that joins the namespaces
//! (`198.18.N.1`), with tokens (it listens beyond loopback), and gives that
//! address to the nodes with `--advertise-url`. The swarm keeps Swarm's
//! default dispatcher heartbeat (5 s): it declares a cut host down after
//! about three of them, while the farm sees its nodes miss their heartbeats
//! within three of its own intervals (1 s here).
//!
//! Skipped with a message when extra engines cannot be made here (not
//! root, tools missing), failing instead when `FARM_REQUIRE_DOCKER=1`; also
//! skipped when the machine's engine is in a swarm the tests did not make,
//! which the test must not change.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use farm_api::v1::{NodeActionKind, NodeInfo, NodeState, ScaleRequest};
use farm_testkit::{
    ADMIN, Api, Farm, TOKENS, docker,
    engines::{Engine, Hosts, SWARM_PORT},
    swarm::{SwarmFarm, SwarmLock, inspect_service, try_docker},
};
use tokio::net::TcpListener;
use tonic::Code;

/// The farm's heartbeat interval, and its timeout: three intervals.
const INTERVAL: Duration = Duration::from_secs(1);
const TIMING: &[&str] = &[
    "--heartbeat-interval",
    "1s",
    "--heartbeat-timeout",
    "3s",
    "--min-age",
    "0s",
    "--stop-grace",
    "3s",
];

/// Nodes per host name.
fn spread(nodes: &[NodeInfo]) -> BTreeMap<String, usize> {
    let mut by_host = BTreeMap::new();
    for node in nodes {
        *by_host.entry(node.host.clone()).or_default() += 1;
    }
    by_host
}

/// The manager's view of a swarm node: `ready`, `down`, ...
fn node_state(id: &str) -> String {
    try_docker(&["node", "inspect", "--format", "{{.Status.State}}", id])
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| e)
}

/// The farm's containers an engine still runs.
fn containers_on(engine: &Engine, farm: &SwarmFarm) -> Vec<String> {
    engine
        .try_docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label={}", farm.cleanup.label()),
        ])
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_spread_over_three_hosts_leave_a_cut_host_and_it_comes_back() {
    let test = "thirty_nodes_spread_over_three_hosts_leave_a_cut_host_and_it_comes_back";
    if !Hosts::available(test) {
        return;
    }
    // Dropped in reverse: the farm's service first, then the swarm, then
    // the engines.
    let hosts = Hosts::start(2);
    let Some(mut lock) = SwarmLock::acquire(test) else {
        return;
    };
    let gateway = hosts.gateway().to_string();
    let listen = format!("{gateway}:{SWARM_PORT}");
    if !lock.own_swarm(&["--advertise-addr", &gateway, "--listen-addr", &listen]) {
        eprintln!(
            "{test}: SKIPPED: the engine is in a swarm the tests did not make, and joining engines to it would change it"
        );
        return;
    }
    let token = try_docker(&["swarm", "join-token", "-q", "worker"]).expect("the join token");
    for engine in hosts.engines() {
        engine.join(token.trim(), &gateway);
    }
    let workers: Vec<String> = hosts.engines().iter().map(Engine::node_id).collect();
    farm_testkit::eventually("both workers ready", Duration::from_secs(60), || async {
        let states: Vec<String> = workers.iter().map(|id| node_state(id)).collect();
        farm_testkit::ready_if(states.iter().all(|s| s == "ready"), states)
    })
    .await;

    // A farm of none at first: the image exists once the control plane
    // built it, and is then copied to the workers before any task is
    // placed there.
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let swarm = SwarmFarm::new(dir.path());
    let listener = TcpListener::bind((hosts.gateway(), 0))
        .await
        .expect("listen on the bridge");
    let advertise = format!("http://{}", listener.local_addr().expect("address"));
    let mut flags = vec![
        "--runtime",
        "swarm",
        "--node-image-binary",
        binary,
        "--advertise-url",
        &advertise,
    ];
    flags.extend(TOKENS);
    let farm = Farm::builder()
        .dir(dir)
        .listener(listener)
        .nodes(0)
        .flags(&flags)
        .timing(TIMING)
        .start()
        .await;
    let api = Api::at(farm.addr).with_token(Some(ADMIN));
    let image = farm_testkit::eventually(
        "the farm's service created",
        Duration::from_secs(120),
        || async {
            inspect_service(
                &swarm.service(),
                "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            )
        },
    )
    .await;
    let tag = try_docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoTags 0}}",
        &image,
    ])
    .expect("the image's tag");
    let copying = Instant::now();
    hosts.load_image(tag.trim());
    eprintln!(
        "{test}: image copied to 2 engines in {:.1?}",
        copying.elapsed()
    );

    // Thirty nodes, ten per host.
    let started = Instant::now();
    api.farm()
        .scale(ScaleRequest { nodes: Some(30) })
        .await
        .expect("Scale to 30");
    let nodes = api.wait_healthy(30, Duration::from_secs(300)).await;
    eprintln!(
        "{test}: 30 nodes healthy on 3 hosts in {:.1?}",
        started.elapsed()
    );
    let by_host = spread(&nodes);
    assert_eq!(by_host.len(), 3, "three hosts: {by_host:?}");
    assert!(by_host.values().all(|&n| n == 10), "{by_host:?}");
    for engine in hosts.engines() {
        assert_eq!(by_host.get(engine.name()), Some(&10), "{by_host:?}");
    }

    // On another host, pause is refused, and a kill reaches the node over
    // its heartbeat stream: it ends, and Swarm runs its slot again.
    let remote = hosts[0].name();
    let victim = nodes
        .iter()
        .find(|n| n.host == remote)
        .expect("a node on the first worker")
        .clone();
    let refused = api
        .act(&victim.id, NodeActionKind::Pause)
        .await
        .expect_err("pause on another host");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("another host"),
        "{}",
        refused.message()
    );
    let killed = Instant::now();
    api.act(&victim.id, NodeActionKind::Kill)
        .await
        .expect("kill on another host");
    let nodes = api
        .wait_nodes(
            "the killed node's slot healthy again in a new task",
            Duration::from_secs(120),
            |nodes| {
                nodes.len() == 30
                    && nodes.iter().all(farm_testkit::healthy)
                    && nodes
                        .iter()
                        .any(|n| n.name == victim.name && n.runtime_id != victim.runtime_id)
            },
        )
        .await;
    let back = nodes
        .iter()
        .find(|n| n.name == victim.name)
        .expect("the slot");
    eprintln!(
        "{test}: a node on another host killed and back in {:.1?} (on {}, {} id)",
        killed.elapsed(),
        back.host,
        if back.id == victim.id { "same" } else { "new" }
    );
    if back.host == victim.host {
        assert_eq!(back.id, victim.id, "same host, same volume, same id");
    }

    // Cut the second worker off: its nodes turn unhealthy within three
    // heartbeat intervals, and Swarm runs their slots on the other hosts,
    // where they register.
    let cut = &hosts[1];
    let cut_ids: Vec<String> = nodes
        .iter()
        .filter(|n| n.host == cut.name())
        .map(|n| n.id.clone())
        .collect();
    let cut_names: Vec<String> = nodes
        .iter()
        .filter(|n| n.host == cut.name())
        .map(|n| n.name.clone())
        .collect();
    assert!(!cut_ids.is_empty(), "nodes on the worker to cut");
    let cutting = Instant::now();
    cut.cut();
    loop {
        let nodes = api.nodes().await;
        let unhealthy = nodes
            .iter()
            .filter(|n| cut_ids.contains(&n.id) && n.state() == NodeState::Unhealthy)
            .count();
        if unhealthy == cut_ids.len() {
            break;
        }
        let seen: Vec<(&str, NodeState, &str)> = nodes
            .iter()
            .filter(|n| cut_ids.contains(&n.id))
            .map(|n| (n.name.as_str(), n.state(), n.state_reason.as_str()))
            .collect();
        assert!(
            cutting.elapsed() < Duration::from_secs(30),
            "the cut host's nodes turn unhealthy: {unhealthy} of {} did: {seen:?}",
            cut_ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detected = cutting.elapsed();
    eprintln!(
        "{test}: the cut host's {} nodes unhealthy {detected:.1?} after the cut ({:.1} heartbeat intervals)",
        cut_ids.len(),
        detected.as_secs_f64() / INTERVAL.as_secs_f64()
    );
    // Three intervals, and the deadline check's own step.
    assert!(
        detected <= INTERVAL * 3 + Duration::from_secs(2),
        "unhealthy within three heartbeat intervals: {detected:?}"
    );
    let nodes = api
        .wait_nodes(
            "the cut host's slots healthy on the other hosts",
            Duration::from_secs(180),
            |nodes| {
                nodes.len() == 30
                    && nodes.iter().all(farm_testkit::healthy)
                    && nodes.iter().all(|n| n.host != cut.name())
            },
        )
        .await;
    eprintln!(
        "{test}: its slots healthy on the other hosts {:.1?} after the cut; swarm node {}",
        cutting.elapsed(),
        node_state(&workers[1])
    );
    let by_host = spread(&nodes);
    assert_eq!(by_host.len(), 2, "{by_host:?}");
    assert!(by_host.values().all(|&n| n == 15), "{by_host:?}");
    for name in &cut_names {
        let node = nodes.iter().find(|n| &n.name == name).expect("slot");
        assert!(
            !cut_ids.contains(&node.id),
            "{name} registered anew on {}: its identity stayed on the cut host",
            node.host
        );
    }

    // Reconnected, the host is ready again; Swarm ends the tasks it kept
    // running there unseen, and places new ones on it.
    let reconnecting = Instant::now();
    cut.reconnect();
    farm_testkit::eventually(
        "the reconnected worker ready, its stale containers gone",
        Duration::from_secs(120),
        || async {
            let state = node_state(&workers[1]);
            let left = containers_on(cut, &swarm);
            farm_testkit::ready_if(state == "ready" && left.is_empty(), (state, left))
        },
    )
    .await;
    eprintln!(
        "{test}: reconnected host ready and cleared in {:.1?}",
        reconnecting.elapsed()
    );
    api.farm()
        .scale(ScaleRequest { nodes: Some(33) })
        .await
        .expect("Scale to 33");
    let nodes = api.wait_healthy(33, Duration::from_secs(120)).await;
    let by_host = spread(&nodes);
    eprintln!("{test}: after Scale to 33: {by_host:?}");
    assert!(
        by_host.get(cut.name()).is_some_and(|&n| n > 0),
        "the reconnected host takes nodes again: {by_host:?}"
    );
    let all_healthy = api.nodes().await;
    assert!(all_healthy.iter().all(farm_testkit::healthy));

    farm.stop().await;
    swarm.assert_removed();
    drop(lock);
    drop(hosts);
}
