//! What taking metrics costs, on a real farm of 50 process nodes that each
//! sample themselves once a second and send the sample with a heartbeat:
//!
//! - the control plane's CPU (percent of one core) while it takes in 50
//!   samples a second, with and without a `WatchMetrics` stream and
//!   `/metrics` scraped once a second;
//! - a node's CPU (percent of one core) and RSS, idle but sampling.
//!
//! Each figure is the median of 5 windows of 10 s. Everything runs on
//! 127.0.0.1 and stops itself.
//! Run with `cargo build --release && cargo bench -p control-plane --bench metrics_cost`.

use std::time::{Duration, Instant};

use farm_api::v1::WatchMetricsRequest;
use farm_testkit::{ControlPlaneProcess, binary, http, pid, process::rss_kib};
use tokio_stream::StreamExt;

const NODES: usize = 50;
const WINDOWS: usize = 5;
const WINDOW: Duration = Duration::from_secs(10);

/// CPU seconds a process has run, summed over its threads, to the
/// nanosecond (`/proc/PID/task/*/schedstat`; `/proc/PID/stat` counts 10 ms
/// ticks, too coarse for an idle node).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Percent of one core used by each of `pids` over one window, as medians
/// over the windows: (control plane, median node).
async fn measure(control_plane: u32, nodes: &[u32]) -> (f64, f64) {
    let (mut cp, mut node) = (Vec::new(), Vec::new());
    for _ in 0..WINDOWS {
        let cp_before = cpu_seconds(control_plane);
        let nodes_before: Vec<f64> = nodes.iter().map(|p| cpu_seconds(*p)).collect();
        let started = Instant::now();
        tokio::time::sleep(WINDOW).await;
        let elapsed = started.elapsed().as_secs_f64();
        cp.push((cpu_seconds(control_plane) - cp_before) / elapsed * 100.0);
        let per_node: Vec<f64> = nodes
            .iter()
            .zip(nodes_before)
            .map(|(p, before)| (cpu_seconds(*p) - before) / elapsed * 100.0)
            .collect();
        node.push(median(per_node));
    }
    (median(cp), median(node))
}

#[tokio::main]
async fn main() {
    binary("farm-node");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut control_plane = ControlPlaneProcess::measured(dir.path(), NODES as u32)
        .start()
        .await;
    let nodes = control_plane
        .wait_healthy(NODES, Duration::from_secs(60))
        .await;
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| u32::try_from(pid(n)).expect("a pid"))
        .collect();
    // Let start-up settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (cp_idle, node_cpu) = measure(control_plane.id(), &pids).await;
    let mut rss: Vec<f64> = pids
        .iter()
        .map(|p| rss_kib(*p).unwrap_or(0) as f64)
        .collect();
    rss.sort_by(f64::total_cmp);
    let node_rss = rss[rss.len() / 2];

    // A dashboard's load on top: one WatchMetrics stream and a scrape a
    // second.
    let mut watch = control_plane
        .metrics()
        .watch_metrics(WatchMetricsRequest {
            include_nodes: true,
            ..Default::default()
        })
        .await
        .expect("WatchMetrics")
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut snapshots = 0u32;
        while let Some(Ok(_)) = watch.next().await {
            snapshots += 1;
        }
        snapshots
    });
    let addr = control_plane.addr;
    let scraper = tokio::spawn(async move {
        let mut bytes = 0;
        for _ in 0..(WINDOWS as u64 * WINDOW.as_secs() + 5) {
            bytes = http::get(addr, "/metrics").await.body.len();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        bytes
    });
    let (cp_watched, _) = measure(control_plane.id(), &pids).await;
    scraper.abort();
    control_plane.terminate(Duration::from_secs(60)).await;
    let snapshots = watcher.await.unwrap_or(0);

    println!(
        "{NODES} process nodes sampling once a second; medians of {WINDOWS} windows of {WINDOW:?}\n"
    );
    println!(
        "control plane CPU, taking in {NODES} samples/s:            {cp_idle:>6.2} % of a core"
    );
    println!(
        "  with a WatchMetrics stream and /metrics scraped at 1 Hz: {cp_watched:>6.2} % of a core ({snapshots} snapshots)"
    );
    println!(
        "farm-node CPU, idle and sampling (median node):           {node_cpu:>6.2} % of a core"
    );
    println!(
        "farm-node RSS, idle and sampling (median node):           {:>6.1} MiB",
        node_rss / 1024.0
    );
}
