//! Bring-up and failure figures of a real farm, printed as a table:
//!
//! - time from starting `control-plane serve` to 50 healthy process nodes;
//! - idle RSS of a farm-node, and of the 50 together;
//! - time from SIGKILL of a node to its absence from `Discover`.
//!
//! Five runs, medians last, with this workspace's release build; then, when
//! `scripts/build-static` has built it, the same with the farm-node the
//! farm runs (static, LTO: `--node-binary`). Everything runs on 127.0.0.1
//! and stops itself. Run with
//! `cargo build --release && scripts/build-static && cargo bench -p control-plane --bench bringup`;
//! `FARM_BENCH_NODES` (50) sizes the farm, `FARM_BENCH_RUNS` (5) counts
//! the runs, and the data folders go where `TMPDIR` says (`/tmp`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use farm_testkit::{
    ControlPlaneProcess, NodeGuard, binary, docker::static_node_binary_path, env_or,
    eventually_every, pid, process::rss_kib, ready_if,
};
use nix::{sys::signal, unistd::Pid};

const RUNS: usize = 5;
const NODES: usize = 50;
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    bring_up: Duration,
    node_rss_kib: Vec<u64>,
    kill_to_gone: Duration,
}

/// One farm of `size` nodes; they run `node` (the `farm-node` beside the
/// control plane when `None`).
async fn one_run(size: usize, node: Option<&Path>) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    // A control plane killed by a failed assertion leaves its nodes running.
    let _cleanup = NodeGuard::new(dir.path());

    let started = Instant::now();
    // Errors only: the kill below is expected and logged as a warning.
    let mut builder =
        ControlPlaneProcess::measured(dir.path(), u32::try_from(size).expect("a farm's size"));
    if let Some(node) = node {
        builder = builder.flags(&["--node-binary", node.to_str().expect("a UTF-8 path")]);
    }
    let mut control_plane = builder.start().await;
    let nodes = control_plane
        // Each poll lists every node: 2 ms apart for 50, proportionally
        // further apart for more, so that the polls stay a small share of
        // the work measured.
        .wait_healthy_every(
            size,
            LIMIT,
            Duration::from_millis(2) * size.div_ceil(NODES) as u32,
        )
        .await;
    let bring_up = started.elapsed();

    // Idle RSS once the farm has settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_rss_kib: Vec<u64> = nodes
        .iter()
        .filter_map(|n| u32::try_from(pid(n)).ok().and_then(rss_kib))
        .collect();

    let victim = &nodes[size / 2];
    let killed = Instant::now();
    signal::kill(Pid::from_raw(pid(victim)), signal::Signal::SIGKILL).expect("kill");
    // The dead process's address; a replacement comes back under the same
    // id on another port.
    eventually_every(
        "the killed node to leave Discover",
        LIMIT,
        Duration::from_micros(500),
        || async {
            let peers = control_plane.discover_peers("", 1000).await;
            ready_if(peers.iter().all(|p| p.address != victim.address), ())
        },
    )
    .await;
    let kill_to_gone = killed.elapsed();

    let status = control_plane.terminate(LIMIT).await;
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
    // Both binaries, or a message saying to build them.
    binary("control-plane");
    binary("farm-node");
    let size = env_or("FARM_BENCH_NODES", NODES).max(1);
    let runs = env_or("FARM_BENCH_RUNS", RUNS).max(1);
    println!("farm bring-up and failure detection, {size} process nodes, {runs} runs\n");
    println!("farm-node: this workspace's release build (target/release)");
    table(size, runs, None).await;
    let built = static_node_binary_path();
    if let Ok(built) = built.canonicalize() {
        println!(
            "\nfarm-node: the one the farm runs, static (scripts/build-static, profile `node`: {})",
            built.display()
        );
        table(size, runs, Some(&built)).await;
    } else {
        println!("\n(no static farm-node: scripts/build-static builds the one the farm runs)");
    }
}

/// `runs` runs of `size` nodes with `node`, a line each, then their medians.
async fn table(size: usize, runs: usize, node: Option<&Path>) {
    println!(
        "{:>4}  {:>14}  {:>16}  {:>18}  {:>16}",
        "run", "bring-up (ms)", "node RSS med KiB", "all nodes RSS MiB", "kill→gone (ms)"
    );
    let mut results = Vec::new();
    for i in 1..=runs {
        let run = one_run(size, node).await;
        let total: u64 = run.node_rss_kib.iter().sum();
        println!(
            "{:>4}  {:>14.1}  {:>16}  {:>18.1}  {:>16.2}",
            i,
            run.bring_up.as_secs_f64() * 1e3,
            median(run.node_rss_kib.clone()),
            total as f64 / 1024.0,
            run.kill_to_gone.as_secs_f64() * 1e3,
        );
        results.push(run);
    }
    let total = |r: &Run| r.node_rss_kib.iter().sum::<u64>();
    println!(
        "{:>4}  {:>14.1}  {:>16}  {:>18.1}  {:>16.2}",
        "med",
        median(results.iter().map(|r| r.bring_up).collect()).as_secs_f64() * 1e3,
        median(
            results
                .iter()
                .map(|r| median(r.node_rss_kib.clone()))
                .collect()
        ),
        median(results.iter().map(total).collect()) as f64 / 1024.0,
        median(results.iter().map(|r| r.kill_to_gone).collect()).as_secs_f64() * 1e3,
    );
}
