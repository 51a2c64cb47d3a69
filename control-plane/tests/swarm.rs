//! The farm as a Docker Swarm service (`--runtime swarm`), on the machine's
//! real engine. The tests take the engine in turn (`farm_testkit::swarm`):
//! one that finds it outside any swarm makes it a one-node swarm and
//! leaves it at its end, also when it fails. Each farm has an id the test
//! chose, and what it created is removed by that id's label even when a
//! test fails; nothing else in the swarm is touched. Skipped with a message
//! when no engine answers, failing instead when `FARM_REQUIRE_DOCKER=1`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use farm_api::v1::{NodeInfo, ScaleRequest, WorkRequest, workload_client::WorkloadClient};
use farm_testkit::{
    ADMIN, Api, ControlPlaneProcess, Farm, NODE, TOKENS, VIEWER, binary, docker, free_addr,
    ids_by_name,
    process::{run_within, without_farm_env},
    swarm::{SwarmFarm, SwarmLock, inspect_service, remove_labelled, swarm_state, try_docker},
};

fn swarm_flags(binary: &str) -> Vec<&str> {
    vec!["--runtime", "swarm", "--node-image-binary", binary]
}

/// `(name, id, task id)` of every node, sorted.
fn identities(nodes: &[NodeInfo]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.id.clone(), n.runtime_id.clone()))
        .collect();
    v.sort();
    v
}

/// Ids of the service's tasks Swarm wants running.
fn running_tasks(farm: &SwarmFarm) -> Vec<String> {
    try_docker(&[
        "service",
        "ps",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}}",
        &farm.service(),
    ])
    .expect("docker service ps")
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// What a farm test starts from: the engine held as a swarm manager, the
/// static farm-node, and a data folder whose farm id is the test's own.
/// `None` (the test skipped) when no engine answers. Dropped in the order
/// of its fields: the farm's service first, the swarm last.
struct Setup {
    swarm: SwarmFarm,
    dir: TempDir,
    binary: String,
    _lock: SwarmLock,
}

fn set_up(test: &str) -> Option<Setup> {
    let mut lock = SwarmLock::acquire(test)?;
    lock.ensure_swarm();
    let binary = docker::static_node_binary()
        .to_str()
        .expect("utf-8 path")
        .to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let swarm = SwarmFarm::new(dir.path());
    Some(Setup {
        swarm,
        dir,
        binary,
        _lock: lock,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swarm_tasks_come_up_scale_and_are_replaced_under_their_ids() {
    let test = "fifty_swarm_tasks_come_up_scale_and_are_replaced_under_their_ids";
    let Some(setup) = set_up(test) else {
        return;
    };
    let swarm = &setup.swarm;
    let started = Instant::now();
    let farm = Farm::start_in(setup.dir, 50, &swarm_flags(&setup.binary)).await;
    let nodes = farm.wait_healthy(50, Duration::from_secs(300)).await;
    eprintln!("{test}: 50 tasks healthy in {:.1?}", started.elapsed());

    // Every node is a task of the farm's service, named after its slot,
    // and placed on a host ListNodes names.
    let tasks = running_tasks(swarm);
    assert_eq!(tasks.len(), 50, "one task per node");
    let mut names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    let slots: Vec<String> = (1..=50).map(|i| format!("node-{i:03}")).collect();
    assert_eq!(names, slots, "slot names");
    for node in &nodes {
        assert!(node.managed, "{} is managed", node.name);
        assert!(
            tasks.contains(&node.runtime_id),
            "{} is a task of the service: {}",
            node.name,
            node.runtime_id
        );
        assert!(!node.host.is_empty(), "{} names its host", node.name);
    }

    // Limits, reservations, labels, restart policy and network, as Swarm
    // holds them.
    let template = ".Spec.TaskTemplate";
    assert_eq!(
        swarm.inspect(&format!(
            "{{{{{template}.Resources.Limits.NanoCPUs}}}} {{{{{template}.Resources.Limits.MemoryBytes}}}}"
        )),
        "500000000 134217728",
        "0.5 CPU and 128 MiB"
    );
    assert_eq!(
        swarm.inspect(&format!(
            "{{{{{template}.Resources.Reservations.NanoCPUs}}}} {{{{{template}.Resources.Reservations.MemoryBytes}}}}"
        )),
        "10000000 16777216",
        "0.01 CPU and 16 MiB reserved"
    );
    let image = swarm.inspect(&format!("{{{{{template}.ContainerSpec.Image}}}}"));
    assert!(
        image.starts_with("sha256:"),
        "the farm's own image is named by id, which Swarm never pulls: {image}"
    );
    assert_eq!(
        swarm.inspect(r#"{{index .Spec.Labels "farm.managed"}} {{index .Spec.Labels "farm.id"}}"#),
        format!("true {}", swarm.id())
    );
    assert_eq!(
        swarm.inspect(&format!(
            "{{{{{template}.RestartPolicy.Condition}}}} {{{{.Spec.Mode.Replicated.Replicas}}}}"
        )),
        "any 50"
    );
    assert_eq!(
        try_docker(&[
            "network",
            "inspect",
            "--format",
            r#"{{.Driver}} {{.Attachable}} {{index .Labels "farm.id"}}"#,
            &swarm.service(),
        ])
        .expect("the farm's network")
        .trim(),
        format!("overlay true {}", swarm.id()),
        "an attachable overlay network of the farm's own"
    );
    assert_eq!(
        swarm.labelled("volume").len(),
        50,
        "a volume per slot, labelled"
    );

    // A node answers at the address it registered, from this host.
    let node = &nodes[0];
    let mut client = WorkloadClient::connect(format!("http://{}", node.address))
        .await
        .expect("connect to a task");
    let response = client
        .work(WorkRequest {
            id: 5,
            response_bytes: 32,
            ..Default::default()
        })
        .await
        .expect("Work")
        .into_inner();
    assert_eq!(
        (response.node_id.as_str(), response.payload.len()),
        (node.id.as_str(), 32)
    );

    // Scale sets the service's replica count; Swarm adds and drops tasks.
    let before = ids_by_name(&nodes);
    let scaled = Instant::now();
    farm.farm()
        .scale(ScaleRequest { nodes: Some(60) })
        .await
        .expect("Scale to 60");
    let nodes = farm.wait_healthy(60, Duration::from_secs(180)).await;
    eprintln!("{test}: 60 healthy {:.1?} after Scale", scaled.elapsed());
    assert_eq!(swarm.inspect("{{.Spec.Mode.Replicated.Replicas}}"), "60");
    let after = ids_by_name(&nodes);
    for (name, id) in &before {
        assert_eq!(
            after.get(name),
            Some(id),
            "{name} kept its id while scaling up"
        );
    }
    let scaled = Instant::now();
    farm.farm()
        .scale(ScaleRequest { nodes: Some(40) })
        .await
        .expect("Scale to 40");
    let nodes = farm.wait_healthy(40, Duration::from_secs(180)).await;
    eprintln!("{test}: 40 nodes left {:.1?} after Scale", scaled.elapsed());
    assert_eq!(swarm.inspect("{{.Spec.Mode.Replicated.Replicas}}"), "40");
    assert_eq!(running_tasks(swarm).len(), 40);
    let left = ids_by_name(&nodes);
    for (name, id) in &left {
        assert_eq!(
            after.get(name),
            Some(id),
            "{name} kept its id while scaling down"
        );
    }

    // A task's container killed from outside: Swarm replaces the task, and
    // its node re-attaches under the same id from its slot's volume.
    let victim = nodes[0].clone();
    let container = try_docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.task.id={}", victim.runtime_id),
    ])
    .expect("docker ps");
    let container = container.trim();
    assert!(!container.is_empty(), "the victim's container");
    let killed = Instant::now();
    try_docker(&["kill", container]).expect("docker kill");
    let nodes = farm
        .wait_nodes(
            "the killed node back healthy under its id, in a new task",
            Duration::from_secs(120),
            |nodes| {
                nodes.len() == 40
                    && nodes.iter().all(farm_testkit::healthy)
                    && nodes.iter().any(|n| {
                        n.id == victim.id && n.runtime_id != victim.runtime_id && n.starts == 2
                    })
            },
        )
        .await;
    eprintln!(
        "{test}: killed task replaced and healthy in {:.1?}",
        killed.elapsed()
    );
    let back = nodes.iter().find(|n| n.id == victim.id).expect("victim");
    assert_eq!(back.name, victim.name);

    // SIGTERM (here: stop) removes the service, its network, secret and
    // volumes.
    let stopping = Instant::now();
    farm.stop().await;
    eprintln!("{test}: removed in {:.1?}", stopping.elapsed());
    swarm.assert_removed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_adopts_its_swarm_service_after_kill_9() {
    let test = "a_restarted_control_plane_adopts_its_swarm_service_after_kill_9";
    let Some(setup) = set_up(test) else {
        return;
    };
    let swarm = &setup.swarm;
    let addr = free_addr();
    let mut flags = swarm_flags(&setup.binary);
    flags.extend(TOKENS);
    let mut first = ControlPlaneProcess::start_with(setup.dir.path(), 4, addr, &flags).await;
    let api = Api::at(addr).with_token(Some(ADMIN));
    let before = api.wait_healthy(4, Duration::from_secs(120)).await;

    // The node token reaches the tasks as a secret, never in the spec.
    let secrets = swarm.inspect(
        "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{.File.Name}}{{end}}",
    );
    assert!(
        secrets.starts_with(&format!("farm-{}-node-token-", swarm.id()))
            && secrets.ends_with(" farm-node-token"),
        "{secrets}"
    );
    let spec = swarm.inspect("{{json .Spec}}");
    assert!(
        !spec.contains(NODE),
        "the token is not in the service's spec"
    );

    first.kill().await;
    assert_eq!(
        running_tasks(swarm).len(),
        4,
        "the service outlives a crashed control plane"
    );
    let mut second = ControlPlaneProcess::start_with(setup.dir.path(), 4, addr, &flags).await;
    let after = api.wait_healthy(4, Duration::from_secs(120)).await;
    assert_eq!(
        identities(&before),
        identities(&after),
        "the same tasks, adopted, under the same ids"
    );
    assert_eq!(swarm.labelled("service").len(), 1, "no second service");

    let status = second.terminate(Duration::from_secs(90)).await;
    assert!(status.success(), "{status:?}");
    swarm.assert_removed();
}

/// Runs `control-plane serve` with `args` on a fresh data folder, which
/// must refuse to start; returns its standard error.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = SwarmFarm::new(dir.path());
    let mut command = Command::new(binary("control-plane"));
    without_farm_env(&mut command)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--nodes", "2"])
        .args(args);
    let ran = run_within(&mut command, Duration::from_secs(60)).expect("run control-plane");
    let status = ran
        .status
        .expect("serve refuses, and does not keep running");
    assert_eq!(status.code(), Some(1), "{}", ran.stderr);
    for kind in ["service", "network", "secret"] {
        let left = _cleanup.labelled(kind);
        assert!(
            left.is_empty(),
            "a refused start creates no {kind}: {left:?}"
        );
    }
    ran.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_runtime_refuses_what_cannot_work_before_creating_anything() {
    let test = "the_swarm_runtime_refuses_what_cannot_work_before_creating_anything";
    let Some(mut lock) = SwarmLock::acquire(test) else {
        return;
    };
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    if lock.outside_swarm() {
        let stderr = refused(&swarm_flags(binary));
        assert!(
            stderr.contains("to be a swarm manager, and it is not (it is not part of a swarm)")
                && stderr.contains("docker swarm init --advertise-addr"),
            "{stderr}"
        );
        assert_eq!(
            swarm_state().0,
            "inactive",
            "the control plane never makes a swarm by itself"
        );
    } else {
        eprintln!("{test}: the engine is in a swarm already; the non-manager case is not tried");
    }
    lock.ensure_swarm();

    let mut flags = swarm_flags(binary);
    flags.extend(["--advertise-url", "http://127.0.0.1:1"]);
    let stderr = refused(&flags);
    assert!(
        stderr.contains("--advertise-url http://127.0.0.1:1 does not reach this control plane"),
        "{stderr}"
    );

    // A registry on loopback that is not there: the image cannot resolve.
    let stderr = refused(&[
        "--runtime",
        "swarm",
        "--node-image",
        "127.0.0.1:1/farm-node:missing",
    ]);
    assert!(
        stderr.contains("the node image 127.0.0.1:1/farm-node:missing does not resolve"),
        "{stderr}"
    );
}

/// Removes a stack, and what its services leave behind, when dropped.
struct StackGuard {
    name: String,
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        let _ = try_docker(&["stack", "rm", &self.name]);
        remove_labelled(&format!("com.docker.stack.namespace={}", self.name));
    }
}

/// An image's id (`sha256:…`).
fn image_id(image: &str) -> String {
    try_docker(&["image", "inspect", "--format", "{{.Id}}", image])
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_farm_deploys_as_a_stack_with_its_count_limits_and_secret_tokens() {
    let test = "the_farm_deploys_as_a_stack_with_its_count_limits_and_secret_tokens";
    let Some(mut lock) = SwarmLock::acquire(test) else {
        return;
    };
    lock.ensure_swarm();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    run_within(
        &mut Command::new(root.join("compose/build-images")),
        Duration::from_secs(20 * 60),
    )
    .expect("run compose/build-images")
    .expect_ok("compose/build-images");
    let secrets = tempfile::tempdir().expect("tempdir");
    for (role, token) in [("admin", ADMIN), ("node", NODE), ("viewer", VIEWER)] {
        std::fs::write(secrets.path().join(format!("{role}-token")), token)
            .expect("write a token file");
    }
    let guard = StackGuard {
        name: format!("farmt{}", std::process::id()),
    };
    let addr = free_addr();
    let started = Instant::now();
    let mut deploy = Command::new("docker");
    deploy
        .args(["stack", "deploy", "--resolve-image", "never", "-c"])
        .arg(root.join("compose/stack.yaml"))
        .arg(&guard.name)
        .env("FARM_NODES", "10")
        .env("FARM_PORT", addr.port().to_string())
        .env("FARM_SECRETS", secrets.path())
        // By id: no engine tries to pull them by tag.
        .env("FARM_NODE_IMAGE", image_id("farm-node:dev"))
        .env(
            "FARM_CONTROL_PLANE_IMAGE",
            image_id("farm-control-plane:dev"),
        );
    run_within(&mut deploy, Duration::from_secs(120))
        .expect("run docker stack deploy")
        .expect_ok("docker stack deploy");

    let api = Api::at(addr).with_token(Some(VIEWER));
    let nodes = api.wait_healthy(10, Duration::from_secs(180)).await;
    eprintln!(
        "{test}: 10 nodes healthy {:.1?} after deploy",
        started.elapsed()
    );
    assert!(
        nodes.iter().all(|n| !n.managed),
        "Swarm runs them, not the control plane"
    );
    // Nodes start beside the control plane, before its name resolves: each
    // waits for it, and registers its address on the stack's network, not
    // loopback.
    for node in &nodes {
        let address: std::net::SocketAddr = node.address.parse().expect("an address");
        assert!(
            !address.ip().is_loopback(),
            "{} registered {}, which nobody else can reach",
            node.name,
            node.address
        );
    }
    let refused = Api::at(addr)
        .farm()
        .list_nodes(farm_api::v1::ListNodesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let node_service = format!("{}_node", guard.name);
    let inspect =
        |format: &str| inspect_service(&node_service, format).unwrap_or_else(|e| panic!("{e}"));
    let template = ".Spec.TaskTemplate";
    assert_eq!(inspect("{{.Spec.Mode.Replicated.Replicas}}"), "10");
    assert_eq!(
        inspect(&format!(
            "{{{{{template}.Resources.Limits.NanoCPUs}}}} {{{{{template}.Resources.Limits.MemoryBytes}}}}"
        )),
        "500000000 134217728",
        "0.5 CPU and 128 MiB, as compose.yaml"
    );
    assert_eq!(
        inspect(r#"{{index .Spec.Labels "farm.managed"}} {{index .Spec.Labels "farm.compose"}}"#),
        "true true"
    );
    let spec = inspect("{{json .Spec}}");
    for token in [ADMIN, NODE, VIEWER] {
        assert!(!spec.contains(token), "no token in the node service's spec");
    }
    let control_plane = inspect_service(&format!("{}_control-plane", guard.name), "{{json .Spec}}")
        .expect("the control plane's service");
    for token in [ADMIN, NODE, VIEWER] {
        assert!(
            !control_plane.contains(token),
            "no token in the control plane's spec"
        );
    }
    assert!(
        inspect(&format!(
            "{{{{range {template}.ContainerSpec.Secrets}}}}{{{{.SecretName}}}}{{{{end}}}}"
        ))
        .contains("farm-node-token"),
        "the node token reaches the nodes as a secret"
    );

    drop(guard);
}
