//! Fifty farm-node containers (or `FARM_BENCH_NODES`), side by side with
//! plain `docker run`:
//!
//! - the farm: `control-plane serve --runtime docker --nodes 50`, timed from
//!   starting the control plane to 50 nodes registered and healthy (image
//!   present; the farm's network is created within the time);
//! - the baseline: parallel `docker run -d` of the same image, with the
//!   same limits, on a network made beforehand, at most 50 at once (each
//!   `docker` client process holds about 30 MiB: 500 at once would hold
//!   15 GiB), timed from the first `docker run` to every node registered
//!   and healthy with an idle control plane (`--runtime none`) started
//!   beforehand, and looked at as often as the farm is;
//! - first, a sweep of the farm's start parallelism (`FARM_BENCH_SWEEP=0`
//!   leaves it out).
//!
//! `FARM_BENCH_ROUNDS` (5) farm and baseline runs, alternating which goes
//! first; an even count puts each first equally often. The ratio is also
//! given apart for each order, as the order can move a round by 10-15 %.
//!
//! Also prints the memory of the 50 containers (`docker stats`) and the
//! image size. Needs a Docker engine (`scripts/docker-engine`) and the static
//! farm-node (`scripts/build-static`). Everything it creates carries a label
//! and is removed at the end, or when it fails.
//!
//! Run with `scripts/build-static && cargo bench -p control-plane --bench docker_bringup`;
//! 500 nodes: `FARM_BENCH_NODES=500 FARM_BENCH_ROUNDS=4 FARM_BENCH_SWEEP=0`
//! before `cargo bench` (about 30 minutes).

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use farm_testkit::{
    ControlPlaneProcess, binary,
    docker::{self, remove_labelled},
    env_or, median,
};
use futures::StreamExt;

const SWEEP: [u16; 4] = [4, 8, 16, 32];
const SWEEP_ROUNDS: usize = 3;
const LIMIT: Duration = Duration::from_secs(600);
/// `docker run` client processes at once in the baseline.
const DOCKER_RUNS_AT_ONCE: usize = 50;

/// Pause between looks at the node list while waiting for `nodes` to be
/// healthy: 5 ms for 50, proportionally longer for more. Each look lists
/// every node: at 500 nodes, about 1 ms of the control plane's CPU and
/// 0.7 ms of the bench's, which looks 5 ms apart would take from the
/// engine being measured.
fn poll(nodes: usize) -> Duration {
    Duration::from_millis(5) * u32::try_from(nodes.div_ceil(50)).unwrap_or(u32::MAX)
}

/// Farm ids and labels created so far, removed on drop.
struct Cleanup {
    bench: String,
    farms: Mutex<Vec<String>>,
}

impl Cleanup {
    fn sweep(&self) {
        let mut labels = vec![format!("farm.bench={}", self.bench)];
        labels.extend(
            self.farms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|id| format!("farm.id={id}")),
        );
        remove_labelled(&labels);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// The docker CLI's output, trimmed.
fn docker_ok(args: &[&str]) -> String {
    docker::docker(args).trim().to_owned()
}

/// A loopback-free port on `ip` (a Docker network's gateway).
fn free_port(ip: &str) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Parses `docker stats` memory such as `1.5MiB`.
fn mib(text: &str) -> f64 {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(0.0);
    number
        * match unit {
            "B" => 1.0 / 1_048_576.0,
            "KiB" | "kB" => 1.0 / 1024.0,
            "GiB" | "GB" => 1024.0,
            _ => 1.0,
        }
}

struct FarmRun {
    bring_up: Duration,
    memory_mib: f64,
    image: String,
}

async fn farm_run(
    nodes: usize,
    node_binary: &Path,
    cleanup: &Cleanup,
    parallelism: Option<u16>,
) -> FarmRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = format!(
        "{}f{}",
        cleanup.bench,
        cleanup.farms.lock().map_or(0, |f| f.len())
    );
    std::fs::write(dir.path().join("farm-id"), &id).expect("farm-id");
    cleanup
        .farms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(id);
    let node_binary = node_binary.to_str().expect("a UTF-8 path");
    let mut flags = vec!["--runtime", "docker", "--node-image-binary", node_binary];
    let parallelism = parallelism.map(|n| n.to_string());
    if let Some(n) = &parallelism {
        flags.extend(["--start-parallelism", n]);
    }
    let started = Instant::now();
    let size = u32::try_from(nodes).expect("a farm's size");
    let mut farm = ControlPlaneProcess::measured(dir.path(), size)
        .flags(&flags)
        .start()
        .await;
    let healthy = farm.wait_healthy_every(nodes, LIMIT, poll(nodes)).await;
    let bring_up = started.elapsed();
    let ids: Vec<String> = healthy.into_iter().map(|n| n.runtime_id).collect();
    let mut stats = vec!["stats", "--no-stream", "--format", "{{.MemUsage}}"];
    stats.extend(ids.iter().map(String::as_str));
    let memory_mib = docker_ok(&stats)
        .lines()
        .filter_map(|l| l.split('/').next())
        .map(mib)
        .sum();
    let image = docker_ok(&["inspect", "--format", "{{.Config.Image}}", &ids[0]]);
    farm.terminate(LIMIT).await;
    FarmRun {
        bring_up,
        memory_mib,
        image,
    }
}

async fn baseline_run(nodes: usize, image: &str, cleanup: &Cleanup, round: usize) -> Duration {
    let label = format!("farm.bench={}", cleanup.bench);
    let network = format!("farm-bench-{}-{round}", cleanup.bench);
    docker_ok(&["network", "create", "--label", &label, &network]);
    let gateway = docker_ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &network,
    ]);
    let addr = free_port(&gateway);
    let dir = tempfile::tempdir().expect("tempdir");
    // Listening beyond loopback, it wants tokens; the nodes get theirs.
    let node_token = format!("node-{}", cleanup.bench);
    let viewer_token = format!("viewer-{}", cleanup.bench);
    let admin_token = format!("admin-{}", cleanup.bench);
    let mut idle = ControlPlaneProcess::measured(dir.path(), 0)
        .listen(addr)
        .flags(&[
            "--node-token",
            &node_token,
            "--viewer-token",
            &viewer_token,
            "--admin-token",
            &admin_token,
        ])
        .start()
        .await;
    let node_env = format!("FARM_NODE_TOKEN={node_token}");
    let url = format!("http://{addr}");
    let started = Instant::now();
    let run = |i: usize| {
        tokio::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--network",
                &network,
                "--cpus",
                "0.5",
                "--memory",
                "128m",
            ])
            .args(["--env", &node_env, "--label", &label, image])
            .args(["--control-plane", &url])
            .args([
                "--listen",
                "0.0.0.0:7000",
                "--name",
                &format!("bench-{i:03}"),
            ])
            .stdout(Stdio::null())
            .status()
    };
    let runs = async {
        let statuses: Vec<_> = futures::stream::iter(1..=nodes)
            .map(run)
            .buffer_unordered(DOCKER_RUNS_AT_ONCE)
            .collect()
            .await;
        for status in statuses {
            assert!(status.expect("docker run").success(), "docker run failed");
        }
    };
    // Nodes the idle control plane does not run, looked at from the first
    // `docker run` on, as the farm is from its start.
    let viewer = idle.with_token(Some(&viewer_token));
    let healthy = viewer.wait_healthy_every(nodes, LIMIT, poll(nodes));
    tokio::join!(runs, healthy);
    let bring_up = started.elapsed();
    idle.terminate(LIMIT).await;
    cleanup.sweep();
    bring_up
}

#[tokio::main]
async fn main() {
    if !docker::available("docker_bringup") {
        std::process::exit(2);
    }
    binary("control-plane");
    let node_binary = docker::static_node_binary_or_exit();
    let cleanup = Cleanup {
        bench: format!("b{:06x}", rand::random::<u32>() & 0xff_ffff),
        farms: Mutex::new(Vec::new()),
    };
    let engine = docker_ok(&[
        "version",
        "--format",
        "{{.Server.Version}} (API {{.Server.APIVersion}})",
    ]);
    let nodes: usize = env_or("FARM_BENCH_NODES", 50usize).max(1);
    let rounds: usize = env_or("FARM_BENCH_ROUNDS", 5usize).max(1);
    let sweep: u8 = env_or("FARM_BENCH_SWEEP", 1u8);
    println!("{nodes} farm-node containers, 0.5 CPU / 128 MiB each, Docker {engine}\n");

    // Builds the image if needed, outside any timing.
    let warm = farm_run(nodes, &node_binary, &cleanup, None).await;
    let size = docker_ok(&["image", "inspect", "--format", "{{.Size}}", &warm.image]);
    let size_mb = size.parse::<f64>().unwrap_or(0.0) / 1e6;

    if sweep != 0 {
        println!("start parallelism sweep ({SWEEP_ROUNDS} runs each, median to {nodes} healthy)");
        for degree in SWEEP {
            let mut times = Vec::new();
            for _ in 0..SWEEP_ROUNDS {
                let run = farm_run(nodes, &node_binary, &cleanup, Some(degree)).await;
                times.push(run.bring_up.as_secs_f64());
            }
            println!("  {degree:>3} at once: {:>6.2} s", median(times));
        }
    }

    println!(
        "\n{:>5}  {:>12}  {:>16}  {:>8}  {:>18}",
        "round",
        "farm (s)",
        "docker run (s)",
        "ratio",
        format!("{nodes} nodes mem (MiB)")
    );
    let (mut farm, mut plain, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    // Ratios by which went first: the order can move a round by 10-15 %.
    let (mut farm_first, mut farm_second) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternate which goes first, so drift hits both alike.
        let (f, b) = if round % 2 == 1 {
            let f = farm_run(nodes, &node_binary, &cleanup, None).await;
            let b = baseline_run(nodes, &warm.image, &cleanup, round).await;
            (f, b)
        } else {
            let b = baseline_run(nodes, &warm.image, &cleanup, round).await;
            let f = farm_run(nodes, &node_binary, &cleanup, None).await;
            (f, b)
        };
        let (fs, bs) = (f.bring_up.as_secs_f64(), b.as_secs_f64());
        println!(
            "{round:>5}  {fs:>12.2}  {bs:>16.2}  {:>8.2}  {:>18.1}",
            fs / bs,
            f.memory_mib
        );
        farm.push(fs);
        plain.push(bs);
        memory.push(f.memory_mib);
        if round % 2 == 1 {
            farm_first.push(fs / bs);
        } else {
            farm_second.push(fs / bs);
        }
    }
    let (fm, bm) = (median(farm), median(plain));
    println!(
        "{:>5}  {fm:>12.2}  {bm:>16.2}  {:>8.2}  {:>18.1}",
        "med",
        fm / bm,
        median(memory)
    );
    if !farm_second.is_empty() {
        let (first, second) = (farm_first.len(), farm_second.len());
        println!(
            "median ratio with the farm run first: {:.2} ({first} rounds), second: {:.2} ({second} rounds)",
            median(farm_first),
            median(farm_second),
        );
    }
    println!("\nnode image {}: {size_mb:.2} MB", warm.image);
}
