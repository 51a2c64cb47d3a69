//! Fifty farm-node containers, side by side with plain `docker run`:
//!
//! - the farm: `control-plane serve --runtime docker --nodes 50`, timed from
//!   starting the control plane to 50 nodes registered and healthy (image
//!   present; the farm's network is created within the time);
//! - the baseline: 50 parallel `docker run -d` of the same image, with the
//!   same limits, on a network made beforehand, timed from the first
//!   `docker run` to 50 nodes registered and healthy with an idle control
//!   plane (`--runtime none`) started beforehand;
//! - first, a sweep of the farm's start parallelism.
//!
//! Also prints the memory of the 50 containers (`docker stats`) and the
//! image size. Needs a Docker engine (`scripts/docker-engine`) and the static
//! farm-node (`scripts/build-static`). Everything it creates carries a label
//! and is removed at the end, or when it fails.
//!
//! Run with `scripts/build-static && cargo bench -p control-plane --bench docker_bringup`.

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
};

const NODES: usize = 50;
const ROUNDS: usize = 5;
const SWEEP: [u16; 4] = [4, 8, 16, 32];
const SWEEP_ROUNDS: usize = 3;
const LIMIT: Duration = Duration::from_secs(180);

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

async fn farm_run(node_binary: &Path, cleanup: &Cleanup, parallelism: Option<u16>) -> FarmRun {
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
    let mut farm = ControlPlaneProcess::measured(dir.path(), NODES as u32)
        .flags(&flags)
        .start()
        .await;
    let nodes = farm
        .wait_healthy_every(NODES, LIMIT, Duration::from_millis(5))
        .await;
    let bring_up = started.elapsed();
    let ids: Vec<String> = nodes.into_iter().map(|n| n.runtime_id).collect();
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

async fn baseline_run(image: &str, cleanup: &Cleanup, round: usize) -> Duration {
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
    let mut idle = ControlPlaneProcess::measured(dir.path(), 0)
        .listen(addr)
        .start()
        .await;
    let url = format!("http://{addr}");
    let started = Instant::now();
    let runs: Vec<_> = (1..=NODES)
        .map(|i| {
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
                .args(["--label", &label, image, "--control-plane", &url])
                .args([
                    "--listen",
                    "0.0.0.0:7000",
                    "--name",
                    &format!("bench-{i:03}"),
                ])
                .stdout(Stdio::null())
                .status()
        })
        .collect();
    for status in futures::future::join_all(runs).await {
        assert!(status.expect("docker run").success(), "docker run failed");
    }
    // Fifty nodes the idle control plane does not run.
    idle.wait_healthy_every(NODES, LIMIT, Duration::from_millis(5))
        .await;
    let bring_up = started.elapsed();
    idle.terminate(LIMIT).await;
    cleanup.sweep();
    bring_up
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    if !docker::available("docker_bringup") {
        std::process::exit(2);
    }
    binary("control-plane");
    let node_binary = docker::static_node_binary_path();
    if !node_binary.is_file() {
        eprintln!(
            "{} is missing: run scripts/build-static",
            node_binary.display()
        );
        std::process::exit(2);
    }
    let cleanup = Cleanup {
        bench: format!("b{:06x}", rand::random::<u32>() & 0xff_ffff),
        farms: Mutex::new(Vec::new()),
    };
    let engine = docker_ok(&[
        "version",
        "--format",
        "{{.Server.Version}} (API {{.Server.APIVersion}})",
    ]);
    println!("{NODES} farm-node containers, 0.5 CPU / 128 MiB each, Docker {engine}\n");

    // Builds the image if needed, outside any timing.
    let warm = farm_run(&node_binary, &cleanup, None).await;
    let size = docker_ok(&["image", "inspect", "--format", "{{.Size}}", &warm.image]);
    let size_mb = size.parse::<f64>().unwrap_or(0.0) / 1e6;

    println!("start parallelism sweep ({SWEEP_ROUNDS} runs each, median to {NODES} healthy)");
    for degree in SWEEP {
        let mut times = Vec::new();
        for _ in 0..SWEEP_ROUNDS {
            let run = farm_run(&node_binary, &cleanup, Some(degree)).await;
            times.push(run.bring_up.as_secs_f64());
        }
        println!("  {degree:>3} at once: {:>6.2} s", median(times));
    }

    println!(
        "\n{:>5}  {:>12}  {:>16}  {:>8}  {:>18}",
        "round", "farm (s)", "docker run (s)", "ratio", "50 nodes mem (MiB)"
    );
    let (mut farm, mut plain, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        // Alternate which goes first, so drift hits both alike.
        let (f, b) = if round % 2 == 1 {
            let f = farm_run(&node_binary, &cleanup, None).await;
            let b = baseline_run(&warm.image, &cleanup, round).await;
            (f, b)
        } else {
            let b = baseline_run(&warm.image, &cleanup, round).await;
            let f = farm_run(&node_binary, &cleanup, None).await;
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
    }
    let (fm, bm) = (median(farm), median(plain));
    println!(
        "{:>5}  {fm:>12.2}  {bm:>16.2}  {:>8.2}  {:>18.1}",
        "med",
        fm / bm,
        median(memory)
    );
    println!("\nnode image {}: {size_mb:.2} MB", warm.image);
}
