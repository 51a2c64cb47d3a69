//! Fifty nodes as a Swarm service (or `FARM_BENCH_NODES`), side by side
//! with a plain `docker service create`:
//!
//! - the farm: `control-plane serve --runtime swarm --nodes 50`, timed from
//!   starting the control plane to 50 nodes registered and healthy (image
//!   present; the farm's network, volumes and service are created within
//!   the time);
//! - the baseline: `docker service create --replicas 50` of the same image
//!   (by id, as the farm names it), with the same limits, reservations,
//!   restart policy and endpoint mode, on an attachable overlay network
//!   made beforehand, timed from the command to all 50 tasks running, as
//!   the engine's tasks API reports them (looked at every 20 ms).
//!
//! `FARM_BENCH_ROUNDS` (4) rounds of each, alternating which goes first.
//! Needs a Docker engine that is a swarm manager, or in no swarm (then a
//! one-node swarm is made for the run and left after it), and the static
//! farm-node (`scripts/build-static`). What it creates carries a label and
//! is removed at the end, or when it fails.
//!
//! Run with `scripts/build-static && cargo bench -p control-plane --bench swarm_bringup`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bollard::{Docker, models::TaskState, query_parameters::ListTasksOptionsBuilder};
use farm_testkit::{
    ControlPlaneProcess, binary, docker, env_or, median,
    swarm::{SwarmLock, inspect_service, remove_labelled, try_docker, wait_until_no_containers},
};

const LIMIT: Duration = Duration::from_secs(600);
/// How often each side is looked at.
const POLL: Duration = Duration::from_millis(20);

/// The docker CLI's output, trimmed; panics with its error.
fn docker_ok(args: &[&str]) -> String {
    try_docker(args)
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_owned()
}

/// Removes what carries the bench's label when dropped.
struct Cleanup {
    label: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_labelled(&self.label);
    }
}

struct FarmRun {
    bring_up: Duration,
    image: String,
}

async fn farm_run(nodes: usize, node_binary: &str, cleanup: &Cleanup, round: usize) -> FarmRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = format!("{}r{round}", cleanup.label.replace("farm.bench=", ""));
    std::fs::write(dir.path().join("farm-id"), &id).expect("farm-id");
    let service = format!("farm-{id}");
    let started = Instant::now();
    let size = u32::try_from(nodes).expect("a farm's size");
    let mut farm = ControlPlaneProcess::measured(dir.path(), size)
        .flags(&["--runtime", "swarm", "--node-image-binary", node_binary])
        .start()
        .await;
    farm.wait_healthy_every(nodes, LIMIT, POLL).await;
    let bring_up = started.elapsed();
    let image = inspect_service(&service, "{{.Spec.TaskTemplate.ContainerSpec.Image}}")
        .unwrap_or_else(|e| panic!("{e}"));
    farm.terminate(LIMIT).await;
    wait_until_no_containers(&format!("farm.id={id}"));
    FarmRun { bring_up, image }
}

async fn baseline_run(
    engine: &Docker,
    nodes: usize,
    image: &str,
    cleanup: &Cleanup,
    round: usize,
) -> Duration {
    let name = format!(
        "{}-base-{round}",
        cleanup.label.replace("farm.bench=", "bench-")
    );
    let network = format!("{name}-net");
    docker_ok(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "--label",
        &cleanup.label,
        &network,
    ]);
    let replicas = nodes.to_string();
    let started = Instant::now();
    docker_ok(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--no-resolve-image",
        "--name",
        &name,
        "--label",
        &cleanup.label,
        "--container-label",
        &cleanup.label,
        "--network",
        &network,
        "--endpoint-mode",
        "dnsrr",
        "--replicas",
        &replicas,
        "--limit-cpu",
        "0.5",
        "--limit-memory",
        "128m",
        "--reserve-cpu",
        "0.01",
        "--reserve-memory",
        "16m",
        "--restart-condition",
        "any",
        "--restart-delay",
        "500ms",
        image,
        // Nodes with nowhere to register still run: the baseline only
        // waits for the tasks to run.
        "--control-plane",
        "http://127.0.0.1:1",
        "--listen",
        "0.0.0.0:7000",
    ]);
    let filters = HashMap::from([
        ("service", vec![name.clone()]),
        ("desired-state", vec!["running".to_owned()]),
    ]);
    loop {
        let tasks = engine
            .list_tasks(Some(
                ListTasksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .expect("list the baseline's tasks");
        let running = tasks
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
            .count();
        if running >= nodes {
            break;
        }
        assert!(started.elapsed() < LIMIT, "{running} of {nodes} running");
        tokio::time::sleep(POLL).await;
    }
    let bring_up = started.elapsed();
    docker_ok(&["service", "rm", &name]);
    wait_until_no_containers(&cleanup.label);
    docker_ok(&["network", "rm", &network]);
    bring_up
}

#[tokio::main]
async fn main() {
    let Some(mut lock) = SwarmLock::acquire("swarm_bringup") else {
        std::process::exit(2);
    };
    lock.ensure_swarm();
    binary("control-plane");
    let node_binary = docker::static_node_binary_or_exit();
    let node_binary = node_binary.to_str().expect("a UTF-8 path").to_owned();
    let engine = Docker::connect_with_local_defaults().expect("the engine");
    let cleanup = Cleanup {
        label: format!("farm.bench=b{:06x}", rand::random::<u32>() & 0xff_ffff),
    };
    let version = docker_ok(&[
        "version",
        "--format",
        "{{.Server.Version}} (API {{.Server.APIVersion}})",
    ]);
    let nodes: usize = env_or("FARM_BENCH_NODES", 50usize).max(1);
    let rounds: usize = env_or("FARM_BENCH_ROUNDS", 4usize).max(1);
    println!(
        "{nodes} farm-node Swarm tasks, 0.5 CPU / 128 MiB each, Docker {version}, one-node swarm\n"
    );
    // Builds the image if needed, outside any timing.
    let warm = farm_run(nodes, &node_binary, &cleanup, 0).await;

    println!(
        "{:>5}  {:>12}  {:>22}  {:>8}",
        "round", "farm (s)", "service create (s)", "ratio"
    );
    let (mut farm, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternate which goes first, so drift hits both alike.
        let (f, b) = if round % 2 == 1 {
            let f = farm_run(nodes, &node_binary, &cleanup, round).await;
            let b = baseline_run(&engine, nodes, &warm.image, &cleanup, round).await;
            (f, b)
        } else {
            let b = baseline_run(&engine, nodes, &warm.image, &cleanup, round).await;
            let f = farm_run(nodes, &node_binary, &cleanup, round).await;
            (f, b)
        };
        let (fs, bs) = (f.bring_up.as_secs_f64(), b.as_secs_f64());
        println!("{round:>5}  {fs:>12.2}  {bs:>22.2}  {:>8.2}", fs / bs);
        farm.push(fs);
        plain.push(bs);
        ratios.push(fs / bs);
    }
    let (fm, bm) = (median(farm), median(plain));
    println!(
        "{:>5}  {fm:>12.2}  {bm:>22.2}  {:>8.2}   (median of ratios {:.2})",
        "med",
        fm / bm,
        median(ratios)
    );
    println!("\nnode image {}", warm.image);
    drop(cleanup);
    drop(lock);
}
