//! What rendering `/metrics` costs at 10,000 nodes: the exposition the
//! control plane serves (`exposition::render`, written by prometheus-client)
//! side by side with the hand-written encoder it replaced (kept below,
//! unchanged but for taking the same inputs, as the baseline).
//!
//! Both render one synthetic farm built from the real types: 10,000 nodes
//! named `node-00001`… in 20 groups, nearly all healthy and reporting, a
//! third of them with failures under one or two status codes, 14 gRPC
//! methods with calls, and this process's `/proc` figures. Each round times
//! both, in turn, from the inputs to the text, inputs dropped included (the
//! handler drops them too); the table gives the median of the rounds, and
//! the allocations and bytes allocated of one render (counted by a
//! `stats_alloc` global allocator). Before timing, the bench checks that
//! both texts hold the same series with the same values.
//!
//! Run with `cargo bench -p control-plane --features bench --bench exposition`.

use std::{
    alloc::System,
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use control_plane::exposition::{
    self, BATCH_BUCKETS, BUCKETS, CatalogSnapshot, FarmAggregate, LINE_COMMANDS, LINE_RESULTS,
    Latency, MethodStats, NodeId, NodeMetrics, NodeState, PortSnapshot, ProcessStats, Sample,
    TelemetrySnapshot,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const NODES: u64 = 10_000;
const GROUPS: u64 = 20;
const ROUNDS: usize = 11;
const WARMUP: usize = 2;

/// The methods the control plane serves most, with the codes they end in.
const METHODS: [&str; 14] = [
    "farm.v1.Registry/Register",
    "farm.v1.Registry/Heartbeat",
    "farm.v1.Registry/Deregister",
    "farm.v1.Discovery/Discover",
    "farm.v1.Discovery/Watch",
    "farm.v1.Discovery/ListGroups",
    "farm.v1.Farm/ListNodes",
    "farm.v1.Farm/Scale",
    "farm.v1.Config/GetConfig",
    "farm.v1.Config/PutConfig",
    "farm.v1.Metrics/GetFarmMetrics",
    "farm.v1.Metrics/GetNodeMetrics",
    "farm.v1.Metrics/WatchMetrics",
    "grpc.health.v1.Health/Check",
];

fn farm(rng: &mut StdRng) -> FarmAggregate {
    let mut farm = FarmAggregate {
        at: Some(SystemTime::now()),
        nodes: NODES as u32,
        latency: Latency {
            count: 2_000_000,
            p50_us: 1843.0,
            p90_us: 4211.0,
            p99_us: 12_543.0,
            p999_us: 48_127.0,
            max_us: 60_015.0,
            mean_us: 2231.7,
        },
        ..FarmAggregate::default()
    };
    for id in 1..=NODES {
        let healthy = rng.random_bool(0.97);
        let reporting = healthy && rng.random_bool(0.99);
        let requests = rng.random_range(0..5_000_000u64);
        let mut errors_by_code = BTreeMap::new();
        if rng.random_bool(1.0 / 3.0) {
            errors_by_code.insert(14, rng.random_range(1..requests.max(2) / 100 + 2));
            if rng.random_bool(0.5) {
                errors_by_code.insert(4, rng.random_range(1..1000));
            }
        }
        let sample = Sample {
            at: SystemTime::now(),
            cpu_percent: rng.random_range(0.0..100.0),
            cpu_limit: 0.5,
            memory_used_bytes: rng.random_range(8 << 20..512 << 20),
            memory_limit_bytes: 512 << 20,
            rss_bytes: rng.random_range(8 << 20..64 << 20),
            disk_used_bytes: rng.random_range(1 << 30..200 << 30),
            disk_total_bytes: 250 << 30,
            net_rx_bytes: rng.random_range(0..1 << 40),
            net_tx_bytes: rng.random_range(0..1 << 40),
            net_rx_bytes_per_second: rng.random_range(0.0..1e7),
            net_tx_bytes_per_second: rng.random_range(0.0..1e7),
            requests,
            errors_by_code,
            requests_per_second: rng.random_range(0.0..5000.0),
            interval_ms: 1000,
            ..Sample::default()
        };
        farm.healthy_nodes += u32::from(healthy);
        if reporting {
            farm.reporting_nodes += 1;
            farm.requests += sample.requests;
            farm.errors += sample.errors();
            farm.memory_used_bytes += sample.memory_used_bytes;
            farm.memory_limit_bytes += sample.memory_limit_bytes;
            farm.cpu_percent_max = farm.cpu_percent_max.max(sample.cpu_percent);
            farm.requests_per_second += sample.requests_per_second;
        }
        farm.node_metrics.push(NodeMetrics {
            id: NodeId(id),
            name: format!("node-{id:05}"),
            group: format!("group-{:02}", id % GROUPS),
            state: if healthy {
                NodeState::Healthy
            } else {
                NodeState::Unhealthy
            },
            reporting,
            sample: Some(sample),
            latency: Latency::default(),
        });
    }
    farm
}

fn telemetry(rng: &mut StdRng) -> TelemetrySnapshot {
    let mut rpcs = BTreeMap::new();
    for method in METHODS {
        let mut stats = MethodStats::default();
        for code in ["OK", "NOT_FOUND", "UNAVAILABLE"] {
            let calls = rng.random_range(1..1_000_000);
            stats.codes.insert(code, calls);
            stats.count += calls;
        }
        for bucket in &mut stats.buckets {
            *bucket = stats.count / BUCKETS.len() as u64;
        }
        stats.sum = stats.count as f64 * 0.002;
        rpcs.insert(method, stats);
    }
    TelemetrySnapshot {
        heartbeat_streams: NODES as i64,
        registrations_new: NODES,
        registrations_reattached: 120,
        config_pushes: 3 * NODES,
        samples: 3600 * NODES,
        rpcs,
        // A catalog with its line protocol in use: every family has samples.
        catalog: CatalogSnapshot {
            connections: 1000,
            connections_open: 100,
            connections_refused: 3,
            commands: [[0; LINE_RESULTS.len()]; LINE_COMMANDS.len()]
                .map(|row| row.map(|_| rng.random_range(1..1_000_000))),
            batches: [0; BATCH_BUCKETS.len()].map(|_| rng.random_range(1..10_000)),
            batch_count: 50_000,
            batch_changes: 400_000,
            names: 3204,
        },
        port: PortSnapshot {
            connections: NODES + 500,
            open: NODES + 20,
            closed: [0, 12, 40, 3],
            accept_failures: 0,
            loop_lag_seconds: 0.002,
            shed: 0,
        },
    }
}

/// Every sample line of `text`, by name and labels.
fn series(text: &str) -> BTreeMap<&str, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key, value.parse().ok()?))
        })
        .collect()
}

/// One render's time, allocations and bytes allocated.
fn measure(render: impl FnOnce() -> String) -> (Duration, usize, usize) {
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    let text = render();
    let elapsed = started.elapsed();
    let stats = region.change();
    drop(text);
    (elapsed, stats.allocations, stats.bytes_allocated)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let mut rng = StdRng::seed_from_u64(7);
    let farm = farm(&mut rng);
    let telemetry = telemetry(&mut rng);
    let process = ProcessStats::read();
    let served = |farm: FarmAggregate| {
        exposition::render(farm, telemetry.clone(), process.clone()).expect("render")
    };
    let baseline = |farm: FarmAggregate| {
        let text = hand_written::render(&farm, &telemetry, &process);
        drop(farm);
        text
    };

    let ours = served(farm.clone());
    let theirs = baseline(farm.clone());
    // The baseline predates the catalog: its few dozen series are the
    // served renderer's alone, and left out of the comparison.
    let (mut a, b) = (series(&ours), series(&theirs));
    let total = a.len();
    a.retain(|key, _| !key.starts_with("farm_catalog_"));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same series"
    );
    for (key, value) in &a {
        let other = b[key];
        assert!(
            (value - other).abs() <= 1e-9 * value.abs().max(1.0),
            "{key}: {value} != {other}"
        );
    }

    let (mut times_served, mut times_baseline) = (Vec::new(), Vec::new());
    let (mut allocs_served, mut allocs_baseline) = ((0, 0), (0, 0));
    for round in 0..WARMUP + ROUNDS {
        let input = farm.clone();
        let (time, allocs, bytes) = measure(|| served(input));
        if round >= WARMUP {
            times_served.push(time);
            allocs_served = (allocs, bytes);
        }
        let input = farm.clone();
        let (time, allocs, bytes) = measure(|| baseline(input));
        if round >= WARMUP {
            times_baseline.push(time);
            allocs_baseline = (allocs, bytes);
        }
    }

    println!(
        "/metrics at {NODES} nodes: {total} series ({} of them the catalog's, which only the \
         served renderer writes), {:.1} MiB of text; median of {ROUNDS} renders\n",
        total - a.len(),
        ours.len() as f64 / f64::from(1 << 20)
    );
    println!(
        "{:<30} {:>10} {:>13} {:>15}",
        "", "time ms", "allocations", "MiB allocated"
    );
    for (what, times, (allocs, bytes)) in [
        ("prometheus-client (served)", times_served, allocs_served),
        ("hand-written (replaced)", times_baseline, allocs_baseline),
    ] {
        println!(
            "{what:<30} {:>10.2} {allocs:>13} {:>15.1}",
            median(times).as_secs_f64() * 1e3,
            bytes as f64 / f64::from(1 << 20)
        );
    }
}

/// The encoder `/metrics` used before prometheus-client: the same families
/// written with `format!` and owned label strings.
mod hand_written {
    use std::fmt::Write as _;

    use super::{BUCKETS, FarmAggregate, NodeMetrics, NodeState, ProcessStats, Sample};
    use control_plane::exposition::TelemetrySnapshot;

    pub fn render(
        farm: &FarmAggregate,
        telemetry: &TelemetrySnapshot,
        process: &ProcessStats,
    ) -> String {
        let mut out = Exposition::default();
        nodes(&mut out, farm);
        aggregate(&mut out, farm);
        control_plane(&mut out, telemetry);
        process_figures(&mut out, process);
        out.text
    }

    fn nodes(out: &mut Exposition, farm: &FarmAggregate) {
        let labels = |n: &NodeMetrics| {
            vec![
                ("node_id", n.id.to_string()),
                ("name", n.name.clone()),
                ("group", n.group.clone()),
            ]
        };
        out.family(
            "farm_node_healthy",
            "Whether the node is healthy (1) or not (0).",
            "gauge",
        );
        for node in &farm.node_metrics {
            let healthy = f64::from(u8::from(node.state == NodeState::Healthy));
            out.sample("farm_node_healthy", &labels(node), healthy);
        }
        let reporting: Vec<_> = farm
            .node_metrics
            .iter()
            .filter(|n| n.reporting)
            .filter_map(|n| n.sample.as_ref().map(|s| (labels(n), s)))
            .collect();
        type Figure = fn(&Sample) -> f64;
        let gauges: [(&str, &str, &str, Figure); 13] = [
            (
                "farm_node_cpu_percent",
                "CPU the node uses, in percent of the CPU it may use.",
                "gauge",
                |s| s.cpu_percent,
            ),
            (
                "farm_node_cpu_limit_cores",
                "CPUs the node may use.",
                "gauge",
                |s| s.cpu_limit,
            ),
            (
                "farm_node_memory_used_bytes",
                "Memory the node uses (its container's, else its process's resident set).",
                "gauge",
                |s| s.memory_used_bytes as f64,
            ),
            (
                "farm_node_memory_limit_bytes",
                "Memory the node may use.",
                "gauge",
                |s| s.memory_limit_bytes as f64,
            ),
            (
                "farm_node_resident_memory_bytes",
                "Resident set size of the node's process.",
                "gauge",
                |s| s.rss_bytes as f64,
            ),
            (
                "farm_node_disk_used_bytes",
                "Space used on the file system of the node's cache folder.",
                "gauge",
                |s| s.disk_used_bytes as f64,
            ),
            (
                "farm_node_disk_total_bytes",
                "Size of the file system of the node's cache folder.",
                "gauge",
                |s| s.disk_total_bytes as f64,
            ),
            (
                "farm_node_network_receive_bytes_total",
                "Bytes the node's network interfaces received.",
                "counter",
                |s| s.net_rx_bytes as f64,
            ),
            (
                "farm_node_network_transmit_bytes_total",
                "Bytes the node's network interfaces sent.",
                "counter",
                |s| s.net_tx_bytes as f64,
            ),
            (
                "farm_node_network_receive_bytes_per_second",
                "Bytes received per second over the node's last sampling interval.",
                "gauge",
                |s| s.net_rx_bytes_per_second,
            ),
            (
                "farm_node_network_transmit_bytes_per_second",
                "Bytes sent per second over the node's last sampling interval.",
                "gauge",
                |s| s.net_tx_bytes_per_second,
            ),
            (
                "farm_node_requests_total",
                "Work and WorkStream requests the node served since it started.",
                "counter",
                |s| s.requests as f64,
            ),
            (
                "farm_node_requests_per_second",
                "Requests per second over the node's last sampling interval.",
                "gauge",
                |s| s.requests_per_second,
            ),
        ];
        for (name, help, kind, figure) in gauges {
            out.family(name, help, kind);
            for (labels, sample) in &reporting {
                out.sample(name, labels, figure(sample));
            }
        }
        out.family(
            "farm_node_request_errors_total",
            "Requests the node failed since it started, by gRPC status code.",
            "counter",
        );
        for (labels, sample) in &reporting {
            for (code, count) in &sample.errors_by_code {
                let mut labels = labels.clone();
                labels.push(("code", code.to_string()));
                out.sample("farm_node_request_errors_total", &labels, *count as f64);
            }
        }
    }

    fn aggregate(out: &mut Exposition, farm: &FarmAggregate) {
        let gauges: [(&str, &str, &str, f64); 14] = [
            (
                "farm_nodes",
                "Nodes registered.",
                "gauge",
                f64::from(farm.nodes),
            ),
            (
                "farm_nodes_healthy",
                "Nodes healthy.",
                "gauge",
                f64::from(farm.healthy_nodes),
            ),
            (
                "farm_nodes_reporting",
                "Nodes with a recent metrics sample (within three heartbeat timeouts).",
                "gauge",
                f64::from(farm.reporting_nodes),
            ),
            (
                "farm_cpu_average_percent",
                "CPU percent averaged over the reporting nodes.",
                "gauge",
                farm.cpu_percent_avg,
            ),
            (
                "farm_cpu_max_percent",
                "Highest CPU percent of a reporting node.",
                "gauge",
                farm.cpu_percent_max,
            ),
            (
                "farm_memory_used_bytes",
                "Memory used by the reporting nodes, summed.",
                "gauge",
                farm.memory_used_bytes as f64,
            ),
            (
                "farm_memory_limit_bytes",
                "Memory the reporting nodes may use, summed.",
                "gauge",
                farm.memory_limit_bytes as f64,
            ),
            (
                "farm_network_receive_bytes_per_second",
                "Bytes the reporting nodes receive per second, summed.",
                "gauge",
                farm.net_rx_bytes_per_second,
            ),
            (
                "farm_network_transmit_bytes_per_second",
                "Bytes the reporting nodes send per second, summed.",
                "gauge",
                farm.net_tx_bytes_per_second,
            ),
            (
                "farm_requests_per_second",
                "Requests the reporting nodes serve per second, summed.",
                "gauge",
                farm.requests_per_second,
            ),
            (
                "farm_requests_total",
                "Requests the reporting nodes served since they started, summed.",
                "counter",
                farm.requests as f64,
            ),
            (
                "farm_request_errors_total",
                "Requests the reporting nodes failed since they started, summed.",
                "counter",
                farm.errors as f64,
            ),
            (
                "farm_request_error_ratio",
                "Failed share of the requests of the nodes' last sampling interval (0 to 1).",
                "gauge",
                farm.error_rate,
            ),
            (
                "farm_request_latency_max_seconds",
                "Slowest request of the nodes' last sampling interval.",
                "gauge",
                farm.latency.max_us / 1e6,
            ),
        ];
        for (name, help, kind, value) in gauges {
            out.family(name, help, kind);
            out.scalar(name, value);
        }
        let name = "farm_request_latency_seconds";
        out.family(
            name,
            "Latency of the requests of the nodes' last sampling interval, their histograms merged.",
            "summary",
        );
        let latency = &farm.latency;
        for (quantile, us) in [
            ("0.5", latency.p50_us),
            ("0.9", latency.p90_us),
            ("0.99", latency.p99_us),
            ("0.999", latency.p999_us),
        ] {
            out.sample(name, &[("quantile", quantile.to_owned())], us / 1e6);
        }
        out.scalar(
            "farm_request_latency_seconds_sum",
            latency.mean_us * latency.count as f64 / 1e6,
        );
        out.scalar("farm_request_latency_seconds_count", latency.count as f64);
    }

    fn control_plane(out: &mut Exposition, telemetry: &TelemetrySnapshot) {
        let rpcs = &telemetry.rpcs;
        out.family(
            "farm_control_plane_rpc_total",
            "gRPC calls the control plane finished, by method and status code.",
            "counter",
        );
        for (method, stats) in rpcs {
            for (code, count) in &stats.codes {
                out.sample(
                    "farm_control_plane_rpc_total",
                    &[
                        ("method", (*method).to_owned()),
                        ("code", (*code).to_owned()),
                    ],
                    *count as f64,
                );
            }
        }
        out.family(
            "farm_control_plane_rpc_duration_seconds",
            "How long gRPC calls took until their last byte (streams: their lifetime), by method.",
            "histogram",
        );
        for (method, stats) in rpcs {
            let mut cumulative = 0;
            for (le, count) in BUCKETS.iter().zip(stats.buckets) {
                cumulative += count;
                out.sample(
                    "farm_control_plane_rpc_duration_seconds_bucket",
                    &[("method", (*method).to_owned()), ("le", number(*le))],
                    cumulative as f64,
                );
            }
            out.sample(
                "farm_control_plane_rpc_duration_seconds_bucket",
                &[("method", (*method).to_owned()), ("le", "+Inf".to_owned())],
                stats.count as f64,
            );
            out.sample(
                "farm_control_plane_rpc_duration_seconds_sum",
                &[("method", (*method).to_owned())],
                stats.sum,
            );
            out.sample(
                "farm_control_plane_rpc_duration_seconds_count",
                &[("method", (*method).to_owned())],
                stats.count as f64,
            );
        }
        out.family(
            "farm_control_plane_heartbeat_streams",
            "Heartbeat streams open.",
            "gauge",
        );
        out.scalar(
            "farm_control_plane_heartbeat_streams",
            telemetry.heartbeat_streams as f64,
        );
        out.family(
            "farm_control_plane_registrations_total",
            "Registrations accepted: new identities, and identities re-attached.",
            "counter",
        );
        for (kind, count) in [
            ("new", telemetry.registrations_new),
            ("reattached", telemetry.registrations_reattached),
        ] {
            out.sample(
                "farm_control_plane_registrations_total",
                &[("kind", kind.to_owned())],
                count as f64,
            );
        }
        for (name, help, count) in [
            (
                "farm_control_plane_config_pushes_total",
                "Effective configurations sent to nodes on their heartbeat streams.",
                telemetry.config_pushes,
            ),
            (
                "farm_control_plane_samples_total",
                "Metrics samples received from nodes.",
                telemetry.samples,
            ),
        ] {
            out.family(name, help, "counter");
            out.scalar(name, count as f64);
        }
    }

    fn process_figures(out: &mut Exposition, stats: &ProcessStats) {
        let int = |v: Option<u64>| v.map(|v| v as f64);
        let figures = [
            (
                "process_cpu_seconds_total",
                "User and system CPU time the process spent, in seconds.",
                "counter",
                stats.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size of the process, in bytes.",
                "gauge",
                int(stats.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size of the process, in bytes.",
                "gauge",
                int(stats.virtual_bytes),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                "gauge",
                stats.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                "gauge",
                int(stats.open_fds),
            ),
            (
                "process_max_fds",
                "Most file descriptors the process may open.",
                "gauge",
                int(stats.max_fds),
            ),
            (
                "process_threads",
                "Threads of the process.",
                "gauge",
                int(stats.threads),
            ),
        ];
        for (name, help, kind, value) in figures {
            if let Some(value) = value {
                out.family(name, help, kind);
                out.scalar(name, value);
            }
        }
    }

    /// The text being written, family by family.
    #[derive(Debug, Default)]
    struct Exposition {
        text: String,
    }

    impl Exposition {
        fn family(&mut self, name: &str, help: &str, kind: &str) {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(self.text, "# HELP {name} {help}");
            let _ = writeln!(self.text, "# TYPE {name} {kind}");
        }

        fn scalar(&mut self, name: &str, value: f64) {
            self.sample(name, &[], value);
        }

        fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
            self.text.push_str(name);
            if !labels.is_empty() {
                self.text.push('{');
                for (i, (key, value)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    self.text.push_str(key);
                    self.text.push_str("=\"");
                    escape_label(&mut self.text, value);
                    self.text.push('"');
                }
                self.text.push('}');
            }
            self.text.push(' ');
            self.text.push_str(&number(value));
            self.text.push('\n');
        }
    }

    fn escape_label(out: &mut String, value: &str) {
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
    }

    fn number(value: f64) -> String {
        if value.is_nan() {
            "NaN".to_owned()
        } else if value.is_infinite() {
            if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
        } else {
            format!("{value}")
        }
    }
}
