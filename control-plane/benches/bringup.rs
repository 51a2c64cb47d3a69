//! Bring-up and failure figures of a real farm, printed as a table:
//!
//! - time from starting `control-plane serve` to 50 healthy process nodes;
//! - idle RSS of a farm-node, and of the 50 together;
//! - time from SIGKILL of a node to its absence from `Discover`.
//!
//! Five runs, medians last. Everything runs on 127.0.0.1 and stops itself.
//! Run with `cargo build --release && cargo bench -p control-plane --bench bringup`.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use farm_api::v1::{
    DiscoverRequest, ListNodesRequest, NodeInfo, NodeState, discovery_client::DiscoveryClient,
    farm_client::FarmClient,
};
use nix::{sys::signal, unistd::Pid};

#[path = "../tests/common/mod.rs"]
mod common;
use tonic::transport::{Channel, Endpoint};

const RUNS: usize = 5;
const NODES: usize = 50;
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    bring_up: Duration,
    node_rss_kib: Vec<u64>,
    kill_to_gone: Duration,
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn pid_of(node: &NodeInfo) -> i32 {
    node.runtime_id
        .strip_prefix("pid:")
        .and_then(|p| p.parse().ok())
        .expect("process node")
}

async fn list(channel: &Channel) -> Vec<NodeInfo> {
    FarmClient::new(channel.clone())
        .list_nodes(ListNodesRequest::default())
        .await
        .map(|r| r.into_inner().nodes)
        .unwrap_or_default()
}

/// Kills the nodes recorded under a data folder when a run ends early: a
/// control plane killed by a failed assertion leaves its nodes running.
struct KillNodesOnDrop<'a>(&'a Path);

impl Drop for KillNodesOnDrop<'_> {
    fn drop(&mut self) {
        common::kill_recorded_nodes(self.0);
    }
}

async fn one_run(binary: &Path) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = KillNodesOnDrop(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_lazy();

    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args([
            "serve",
            "--runtime",
            "process",
            "--listen",
            &addr.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--nodes", &NODES.to_string()])
        // Errors only: the kill below is expected and logged as a warning.
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn control-plane");
    let nodes = loop {
        let nodes = list(&channel).await;
        if nodes.len() == NODES && nodes.iter().all(|n| n.state == NodeState::Healthy as i32) {
            break nodes;
        }
        assert!(
            started.elapsed() < LIMIT,
            "farm not healthy within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let bring_up = started.elapsed();

    // Idle RSS once the farm has settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_rss_kib: Vec<u64> = nodes.iter().filter_map(|n| rss_kib(pid_of(n))).collect();

    let victim = &nodes[NODES / 2];
    let mut discovery = DiscoveryClient::new(channel.clone());
    let killed = Instant::now();
    signal::kill(Pid::from_raw(pid_of(victim)), signal::Signal::SIGKILL).expect("kill");
    let kill_to_gone = loop {
        let peers = discovery
            .discover(DiscoverRequest {
                count: 1000,
                ..Default::default()
            })
            .await
            .expect("Discover")
            .into_inner()
            .peers;
        // The dead process's address; a replacement comes back under the
        // same id on another port.
        if peers.iter().all(|p| p.address != victim.address) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < LIMIT, "killed node never left Discover");
        tokio::time::sleep(Duration::from_micros(500)).await;
    };

    signal::kill(
        Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid")),
        signal::Signal::SIGTERM,
    )
    .expect("term");
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("control plane exits")
        .expect("wait");
    assert!(status.success(), "control plane exited with {status}");
    Run {
        bring_up,
        node_rss_kib,
        kill_to_gone,
    }
}

fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
    values.sort_unstable();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let binary = Path::new(env!("CARGO_BIN_EXE_control-plane"));
    let node = binary.with_file_name("farm-node");
    assert!(
        node.is_file(),
        "{} is missing: `cargo build --release` first",
        node.display()
    );
    println!("farm bring-up and failure detection, {NODES} process nodes, {RUNS} runs\n");
    println!(
        "{:>4}  {:>14}  {:>16}  {:>18}  {:>16}",
        "run", "bring-up (ms)", "node RSS med KiB", "50 nodes RSS MiB", "kill→gone (ms)"
    );
    let mut runs = Vec::new();
    for i in 1..=RUNS {
        let run = one_run(binary).await;
        let total: u64 = run.node_rss_kib.iter().sum();
        println!(
            "{:>4}  {:>14.1}  {:>16}  {:>18.1}  {:>16.2}",
            i,
            run.bring_up.as_secs_f64() * 1e3,
            median(run.node_rss_kib.clone()),
            total as f64 / 1024.0,
            run.kill_to_gone.as_secs_f64() * 1e3,
        );
        runs.push(run);
    }
    let total = |r: &Run| r.node_rss_kib.iter().sum::<u64>();
    println!(
        "{:>4}  {:>14.1}  {:>16}  {:>18.1}  {:>16.2}",
        "med",
        median(runs.iter().map(|r| r.bring_up).collect()).as_secs_f64() * 1e3,
        median(
            runs.iter()
                .map(|r| median(r.node_rss_kib.clone()))
                .collect()
        ),
        median(runs.iter().map(total).collect()) as f64 / 1024.0,
        median(runs.iter().map(|r| r.kill_to_gone).collect()).as_secs_f64() * 1e3,
    );
}
