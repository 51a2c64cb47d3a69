//! Configuration pushes, measured on a real farm:
//!
//! - 100 changes of the global configuration on a farm of 50 process
//!   nodes, each timed from `PutConfig` acknowledged to every node having
//!   applied it and reported so (seen on a `Discovery.Watch` stream, which
//!   carries each node's `config_version`); p50, p99 and max;
//! - `PutConfig` throughput (16 writers, every write on disk before it is
//!   acknowledged) with no watcher, with 100 `WatchConfig` streams, with the
//!   50 nodes following every version, and with both.
//!
//! - beside the propagation, the machine's floor for it: the same number of
//!   processes, each a one-thread tokio program like a node, sent a
//!   128-byte message over plain loopback TCP, each answering at once, timed
//!   from the first send to the last answer; once with every answer
//!   acknowledged in turn (as every heartbeat is), once without. No
//!   gRPC, HTTP/2, disk or registry: what is left is waking the processes.
//!
//! Everything runs on 127.0.0.1 and stops itself.
//! Run with `cargo build --release && cargo bench -p control-plane --bench config_push`;
//! `FARM_BENCH_PARTS=p` runs the propagation alone, `f` the floor alone, `t`
//! the throughput alone (default `pft`), for instance under a profiler;
//! `FARM_BENCH_NODES` (50) and `FARM_BENCH_CHANGES` (100) size the
//! propagation.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use farm_api::v1::{PutConfigRequest, WatchConfigRequest};
use farm_testkit::{
    Api, ControlPlaneProcess, binary, env_or,
    process::{cpu_seconds, node_processes},
};
use prost_types::{Struct, Value, value::Kind};
use tokio_stream::StreamExt;

const NODES: usize = 50;
const CHANGES: usize = 100;
const WRITES: usize = 2000;
const WRITERS: usize = 16;
const WATCHERS: usize = 100;
const LIMIT: Duration = Duration::from_secs(60);

/// A control plane of `nodes` process nodes (none: no runtime) on a data
/// folder of its own, healthy; stopped with SIGTERM when dropped.
async fn start_farm(dir: &tempfile::TempDir, nodes: usize) -> ControlPlaneProcess {
    let size = u32::try_from(nodes).expect("a farm's size");
    let farm = ControlPlaneProcess::measured(dir.path(), size)
        .start()
        .await;
    farm.wait_healthy(nodes, LIMIT).await;
    farm
}

fn delay(n: usize) -> Struct {
    let workload = Struct {
        fields: BTreeMap::from([(
            "delay_ms".to_owned(),
            Value {
                kind: Some(Kind::NumberValue((n % 2) as f64)),
            },
        )]),
    };
    Struct {
        fields: BTreeMap::from([
            (
                "workload".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(workload)),
                },
            ),
            (
                "change".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(n as f64)),
                },
            ),
        ]),
    }
}

fn put(n: usize) -> PutConfigRequest {
    PutConfigRequest {
        scope: "global".into(),
        data: Some(delay(n)),
        expected_version: 0,
        merge: false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Puts per second with `WRITERS` concurrent writers.
async fn throughput(api: &Api) -> f64 {
    let started = Instant::now();
    let per_writer = WRITES / WRITERS;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut client = api.config();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    client
                        .put_config(put(w * per_writer + i))
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    (per_writer * WRITERS) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // A process of the floor's, started by this bench itself.
    if let Ok(addr) = std::env::var(floor::CHILD) {
        floor::child(&addr);
        return;
    }
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(bench());
}

async fn bench() {
    binary("farm-node");
    let parts: String = env_or("FARM_BENCH_PARTS", "pft".to_owned());
    let nodes = env_or("FARM_BENCH_NODES", NODES).max(1);
    let changes = env_or("FARM_BENCH_CHANGES", CHANGES).max(1);
    let farm = if parts.contains('p') {
        Some(propagation(nodes, changes).await)
    } else {
        None
    };
    if parts.contains('f') {
        floor::table(nodes, changes, farm).await;
    }
    if parts.contains('t') {
        throughput_table().await;
    }
}

/// `changes` changes on a farm of `nodes_wanted` nodes, one after another,
/// each timed from its acknowledgement to the first and to the last of the
/// nodes applying it; returns the median of the last.
async fn propagation(nodes_wanted: usize, changes: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = start_farm(&dir, nodes_wanted).await;
    let mut config = farm.config();
    let mut watch = farm.watch().await;
    // Each node's reported version, from the snapshot then every event.
    let mut applied: HashMap<String, u64> = HashMap::new();
    // CPU of the control plane and of the nodes, over the changes.
    let nodes = node_processes(dir.path());
    let node_cpu = || -> f64 {
        nodes
            .iter()
            .map(|pid| cpu_seconds(u32::try_from(*pid).expect("a pid")))
            .sum()
    };
    let cpu_before = (cpu_seconds(farm.id()), node_cpu());
    let mut ack_to_first = Vec::with_capacity(changes);
    let mut ack_to_all = Vec::with_capacity(changes);
    let mut put_latency = Vec::with_capacity(changes);
    for n in 0..changes {
        let sent = Instant::now();
        let version = config
            .put_config(put(n))
            .await
            .expect("put")
            .into_inner()
            .version;
        let acked = Instant::now();
        put_latency.push(acked - sent);
        let mut first = None;
        while applied.len() < nodes_wanted || applied.values().any(|v| *v < version) {
            let event = tokio::time::timeout(LIMIT, watch.next())
                .await
                .expect("nodes apply within the limit")
                .expect("watch open")
                .expect("event");
            if let Some(node) = event.node {
                if node.config_version >= version && first.is_none() {
                    first = Some(acked.elapsed());
                }
                applied.insert(node.id, node.config_version);
            }
        }
        ack_to_all.push(acked.elapsed());
        ack_to_first.push(first.unwrap_or_default());
        // Changes one after another, not piled up.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = (
        cpu_seconds(farm.id()) - cpu_before.0,
        node_cpu() - cpu_before.1,
    );
    ack_to_first.sort();
    ack_to_all.sort();
    put_latency.sort();
    println!("{changes} changes of the global configuration, {nodes_wanted} process nodes\n");
    println!("{:<44} {:>8} {:>8} {:>8}", "", "p50 ms", "p99 ms", "max ms");
    println!(
        "{:<44} {:>8.2} {:>8.2} {:>8.2}",
        "PutConfig round trip (acknowledged on disk)",
        ms(percentile(&put_latency, 50.0)),
        ms(percentile(&put_latency, 99.0)),
        ms(*put_latency.last().expect("samples")),
    );
    for (what, samples) in [
        ("acknowledged -> applied on the first node", &ack_to_first),
        ("acknowledged -> applied on every node", &ack_to_all),
    ] {
        println!(
            "{:<44} {:>8.2} {:>8.2} {:>8.2}",
            what,
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 99.0)),
            ms(*samples.last().expect("samples")),
        );
    }
    println!(
        "CPU per change (ticks of 10 ms, summed over the {changes}): control plane {:.2} ms, the {} nodes {:.2} ms",
        cpu.0 * 1e3 / changes as f64,
        nodes.len(),
        cpu.1 * 1e3 / changes as f64,
    );
    percentile(&ack_to_all, 50.0)
}

/// `PutConfig` throughput in the four settings, as a table.
async fn throughput_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = start_farm(&dir, NODES).await;
    // Throughput: on the 50-node farm (its nodes following every version),
    // then with 100 WatchConfig streams as well; then on a farm of no nodes,
    // alone and with the watchers.
    let nodes_only = throughput(&farm).await;
    let (nodes_and_watchers, delivered_a) = with_watchers(&farm).await;
    drop(farm);
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let bare = start_farm(&bare_dir, 0).await;
    let alone = throughput(&bare).await;
    let (watchers_only, delivered_b) = with_watchers(&bare).await;
    drop(bare);

    println!(
        "\nPutConfig throughput, {WRITERS} writers, {WRITES} writes, each on disk before its acknowledgement"
    );
    let row = |what: &str, rate: f64| {
        println!("  {what:<40} {rate:>8.0} puts/s  {:>5.2}x", rate / alone);
    };
    row("no watchers", alone);
    row(&format!("{WATCHERS} WatchConfig streams"), watchers_only);
    row(&format!("{NODES} nodes"), nodes_only);
    row(
        &format!("{NODES} nodes + {WATCHERS} WatchConfig streams"),
        nodes_and_watchers,
    );
    println!(
        "  versions reached the watchers: {} of {}",
        delivered_a + delivered_b,
        2 * WRITES * WATCHERS
    );
}

/// Throughput while `WATCHERS` streams follow every version, and how many
/// versions reached them.
async fn with_watchers(api: &Api) -> (f64, usize) {
    let current = api
        .config()
        .get_config(farm_api::v1::GetConfigRequest {
            scope: "global".into(),
        })
        .await
        .expect("GetConfig")
        .into_inner()
        .version;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut stream = api
            .config()
            .watch_config(WatchConfigRequest {
                scope: "global".into(),
                from_version: current,
                ..Default::default()
            })
            .await
            .expect("WatchConfig")
            .into_inner();
        watchers.push(tokio::spawn(async move {
            let mut seen = 0usize;
            while seen < WRITES {
                match stream.next().await {
                    Some(Ok(_)) => seen += 1,
                    _ => break,
                }
            }
            seen
        }));
    }
    let rate = throughput(api).await;
    // Every watcher receives every version (one bounded wait for all).
    let counts =
        tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(watchers)).await;
    let delivered = counts
        .map(|all| all.into_iter().map(|c| c.unwrap_or(0)).sum())
        .unwrap_or(0);
    (rate, delivered)
}

/// The floor of a push to every node: processes woken over loopback TCP,
/// with nothing else in the way.
mod floor {
    use std::{
        process::Stdio,
        time::{Duration, Instant},
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        sync::{mpsc, watch},
    };

    use super::{LIMIT, ms, percentile};

    /// Set to the parent's address in each process this bench starts.
    pub const CHILD: &str = "FARM_BENCH_FLOOR_CHILD";
    /// Every message is this long: a pushed configuration is about as long.
    const LEN: usize = 128;
    const PUSH: u8 = 1;
    const ANSWER: u8 = 2;
    const ACK: u8 = 3;

    /// One process: answers each push at once, takes acknowledgements,
    /// ends when the parent closes the connection. On one thread, as a
    /// node runs.
    pub fn child(addr: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            stream.set_nodelay(true).expect("TCP_NODELAY");
            let mut message = [0u8; LEN];
            while stream.read_exact(&mut message).await.is_ok() {
                if message[0] == PUSH {
                    message[0] = ANSWER;
                    if stream.write_all(&message).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// `changes` pushes to `processes` processes, 20 ms apart, with and
    /// without acknowledgements, as a table beside the farm's median.
    pub async fn table(processes: usize, changes: usize, farm: Option<Duration>) {
        println!(
            "\nThe floor: {processes} processes over plain loopback TCP, {changes} pushes, timed from the first send to the last answer"
        );
        println!("{:<44} {:>8} {:>8} {:>8}", "", "p50 ms", "p99 ms", "max ms");
        for acknowledged in [true, false] {
            let mut samples = pushes(processes, changes, acknowledged).await;
            samples.sort();
            let what = if acknowledged {
                "each answer acknowledged (as heartbeats are)"
            } else {
                "answers not acknowledged"
            };
            let p50 = percentile(&samples, 50.0);
            println!(
                "{what:<44} {:>8.2} {:>8.2} {:>8.2}",
                ms(p50),
                ms(percentile(&samples, 99.0)),
                ms(*samples.last().expect("samples")),
            );
            if let Some(farm) = farm {
                println!(
                    "{:<44} {:>8.2}x",
                    "  the farm's p50 against it",
                    farm.as_secs_f64() / p50.as_secs_f64()
                );
            }
        }
    }

    async fn pushes(processes: usize, changes: usize, acknowledged: bool) -> Vec<Duration> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let exe = std::env::current_exe().expect("this bench's path");
        // Killed when dropped, also when the bench fails.
        let children: Vec<_> = (0..processes)
            .map(|_| {
                tokio::process::Command::new(&exe)
                    .env(CHILD, &addr)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("start a process of the floor")
            })
            .collect();
        let (push, pushed) = watch::channel(0u64);
        let (answered, mut answers) = mpsc::unbounded_channel::<u64>();
        let mut connections = Vec::with_capacity(processes);
        for _ in 0..processes {
            let (mut stream, _) = tokio::time::timeout(LIMIT, listener.accept())
                .await
                .expect("the processes connect within the limit")
                .expect("accept");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            let mut pushed = pushed.clone();
            let answered = answered.clone();
            connections.push(tokio::spawn(async move {
                let mut message = [0u8; LEN];
                while pushed.changed().await.is_ok() {
                    let change = *pushed.borrow_and_update();
                    message[0] = PUSH;
                    message[1..9].copy_from_slice(&change.to_le_bytes());
                    stream.write_all(&message).await.expect("push");
                    stream.read_exact(&mut message).await.expect("answer");
                    assert_eq!(message[0], ANSWER, "an answer");
                    answered.send(change).expect("the bench waits");
                    if acknowledged {
                        message[0] = ACK;
                        stream.write_all(&message).await.expect("ack");
                    }
                }
            }));
        }
        let mut samples = Vec::with_capacity(changes);
        for change in 1..=changes as u64 {
            let sent = Instant::now();
            push.send(change).expect("connections wait");
            let mut seen = 0;
            while seen < processes {
                let answer = tokio::time::timeout(LIMIT, answers.recv())
                    .await
                    .expect("answers within the limit")
                    .expect("connections open");
                if answer == change {
                    seen += 1;
                }
            }
            samples.push(sent.elapsed());
            // As the farm's changes: one after another, not piled up.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Closing the connections ends the processes.
        drop(push);
        for connection in connections {
            connection.await.expect("connection");
        }
        for mut child in children {
            child.wait().await.expect("a process of the floor ends");
        }
        samples
    }
}
