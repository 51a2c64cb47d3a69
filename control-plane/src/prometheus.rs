//! `GET /metrics`: the farm and the control plane itself in the Prometheus
//! text format (version 0.0.4).
//!
//! Three parts: every reporting node's latest sample as series labelled
//! `node_id`, `name` and `group`; the farm's aggregate (the same figures
//! `Metrics.GetFarmMetrics` returns); and the control plane's own
//! counters ([`Telemetry`]): calls and their durations per gRPC method
//! (counted by [`RpcMetricsLayer`]), open heartbeat streams, registrations,
//! configuration pushes, samples received, and the process's CPU time,
//! memory and file descriptors read from `/proc/self`.
//!
//! Every name starts with `farm_` (or `process_`, the conventional names of
//! process metrics), ends with its unit, and has `# HELP` and `# TYPE`
//! lines; label values are escaped.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use crate::{
    core::{NodeState, metrics::FarmAggregate},
    state::FarmState,
};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the RPC duration buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The control plane's own counters. One per control plane (kept in its
/// state), so several in one process (tests) do not mix.
#[derive(Debug, Default)]
pub struct Telemetry {
    heartbeat_streams: AtomicI64,
    registrations_new: AtomicU64,
    registrations_reattached: AtomicU64,
    config_pushes: AtomicU64,
    samples: AtomicU64,
    /// Calls per method. A `std::sync::Mutex`: held for a few additions at
    /// the end of a call, never across an await.
    rpcs: Mutex<BTreeMap<&'static str, MethodStats>>,
}

/// Calls of one gRPC method.
#[derive(Debug, Default, Clone)]
struct MethodStats {
    /// Calls by status code name.
    codes: BTreeMap<&'static str, u64>,
    /// Calls at or below each of [`BUCKETS`] (not cumulative here).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    /// Seconds, summed.
    sum: f64,
}

/// Keeps the heartbeat stream gauge up while it lives.
#[derive(Debug)]
pub struct StreamGuard(Arc<Telemetry>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.heartbeat_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Telemetry {
    /// Counts an open heartbeat stream until the guard drops.
    pub fn heartbeat_stream(self: &Arc<Self>) -> StreamGuard {
        self.heartbeat_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(Arc::clone(self))
    }

    /// Counts a successful registration.
    pub fn registered(&self, reattached: bool) {
        let counter = if reattached {
            &self.registrations_reattached
        } else {
            &self.registrations_new
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a configuration sent down a heartbeat stream.
    pub fn config_pushed(&self) {
        self.config_pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a metrics sample received from a node.
    pub fn sample_received(&self) {
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Open heartbeat streams.
    pub fn heartbeat_streams(&self) -> i64 {
        self.heartbeat_streams.load(Ordering::Relaxed)
    }

    pub(crate) fn record_call(&self, method: &'static str, code: &'static str, seconds: f64) {
        let mut rpcs = self.rpcs.lock().unwrap_or_else(|e| e.into_inner());
        let stats = rpcs.entry(method).or_default();
        *stats.codes.entry(code).or_default() += 1;
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            stats.buckets[i] += 1;
        }
        stats.count += 1;
        stats.sum += seconds;
    }
}

/// The whole exposition: nodes, farm, control plane, process.
pub fn render(state: &FarmState) -> String {
    let mut out = Exposition::default();
    // The whole farm always exists, so this cannot fail.
    let farm = state.samples().farm("", true).unwrap_or_default();
    nodes(&mut out, &farm);
    aggregate(&mut out, &farm);
    control_plane(&mut out, state.telemetry());
    process(&mut out);
    out.text
}

/// Every node's health, and the latest sample of each reporting node.
fn nodes(out: &mut Exposition, farm: &FarmAggregate) {
    let labels = |n: &crate::core::metrics::NodeMetrics| {
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
    type Figure = fn(&crate::core::metrics::Sample) -> f64;
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

/// The farm as `GetFarmMetrics` sees it.
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

/// The control plane's own counters.
fn control_plane(out: &mut Exposition, telemetry: &Telemetry) {
    let rpcs = telemetry
        .rpcs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    out.family(
        "farm_control_plane_rpc_total",
        "gRPC calls the control plane finished, by method and status code.",
        "counter",
    );
    for (method, stats) in &rpcs {
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
    for (method, stats) in &rpcs {
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
        telemetry.heartbeat_streams() as f64,
    );
    out.family(
        "farm_control_plane_registrations_total",
        "Registrations accepted: new identities, and identities re-attached.",
        "counter",
    );
    for (kind, counter) in [
        ("new", &telemetry.registrations_new),
        ("reattached", &telemetry.registrations_reattached),
    ] {
        out.sample(
            "farm_control_plane_registrations_total",
            &[("kind", kind.to_owned())],
            counter.load(Ordering::Relaxed) as f64,
        );
    }
    for (name, help, counter) in [
        (
            "farm_control_plane_config_pushes_total",
            "Effective configurations sent to nodes on their heartbeat streams.",
            &telemetry.config_pushes,
        ),
        (
            "farm_control_plane_samples_total",
            "Metrics samples received from nodes.",
            &telemetry.samples,
        ),
    ] {
        out.family(name, help, "counter");
        out.scalar(name, counter.load(Ordering::Relaxed) as f64);
    }
}

/// The process's own figures, from `/proc/self`; left out where unreadable.
fn process(out: &mut Exposition) {
    let stats = ProcessStats::read();
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
            stats.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size of the process, in bytes.",
            "gauge",
            stats.virtual_bytes,
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
            stats.open_fds,
        ),
        (
            "process_max_fds",
            "Most file descriptors the process may open.",
            "gauge",
            stats.max_fds,
        ),
        (
            "process_threads",
            "Threads of the process.",
            "gauge",
            stats.threads,
        ),
    ];
    for (name, help, kind, value) in figures {
        if let Some(value) = value {
            out.family(name, help, kind);
            out.scalar(name, value);
        }
    }
}

/// Linux reports CPU times in `/proc` in units of 1/100 s (`USER_HZ`)
/// whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` tells about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub threads: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits`,
    /// `/proc/self/fd` and the boot time from `/proc/stat`.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat");
        let mut stats = Self::parse(
            stat.as_deref().unwrap_or_default(),
            read("/proc/self/status").as_deref().unwrap_or_default(),
            read("/proc/self/limits").as_deref().unwrap_or_default(),
            read("/proc/stat").as_deref().unwrap_or_default(),
        );
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as f64);
        stats
    }

    /// Parses the text of `/proc/self/stat`, `/proc/self/status`,
    /// `/proc/self/limits` and `/proc/stat`.
    pub fn parse(stat: &str, status: &str, limits: &str, system: &str) -> Self {
        // Fields after the command name, which may hold spaces and
        // parentheses: the first here is field 3 (state) of proc(5).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) / USER_HZ);
        let boot = system
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let start_time_seconds = boot.zip(field(22)).map(|(b, t)| b + t / USER_HZ);
        let kib = |key: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(key)?.trim();
                let number = value.strip_suffix("kB").unwrap_or(value).trim();
                number.parse::<f64>().ok().map(|n| n * 1024.0)
            })
        };
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|soft| soft.parse::<f64>().ok());
        Self {
            cpu_seconds,
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: field(23),
            start_time_seconds,
            open_fds: None,
            max_fds,
            threads: field(20),
        }
    }
}

/// The text being written, family by family.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its help and type lines.
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line without labels.
    fn scalar(&mut self, name: &str, value: f64) {
        self.sample(name, &[], value);
    }

    /// One sample line.
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

/// Escapes a label value: backslash, double quote and line feed.
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

/// A value as the text format writes it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_values_written_as_prometheus_reads_them() {
        let mut out = Exposition::default();
        out.family("farm_x_bytes", "Help with a \\ and\na line.", "gauge");
        out.sample("farm_x_bytes", &[("name", "a\"b\\c\nd".to_owned())], 1.5);
        out.sample("farm_x_bytes", &[("name", "inf".to_owned())], f64::INFINITY);
        out.scalar("farm_x_bytes", f64::NAN);
        assert_eq!(
            out.text,
            "# HELP farm_x_bytes Help with a \\\\ and\\na line.\n\
             # TYPE farm_x_bytes gauge\n\
             farm_x_bytes{name=\"a\\\"b\\\\c\\nd\"} 1.5\n\
             farm_x_bytes{name=\"inf\"} +Inf\n\
             farm_x_bytes NaN\n"
        );
        assert_eq!(number(0.0001), "0.0001");
        assert_eq!(number(3.0), "3");
    }

    #[test]
    fn process_stats_parse_proc_files() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let status = "Name:\tcontrol-plane\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let system = "cpu  1 2 3\nbtime 1700000000\n";
        let stats = ProcessStats::parse(stat, status, limits, system);
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.resident_bytes, Some(10240.0 * 1024.0));
        assert_eq!(stats.virtual_bytes, Some(104857600.0));
        assert_eq!(stats.threads, Some(7.0));
        assert_eq!(stats.max_fds, Some(1024.0));
        assert_eq!(stats.start_time_seconds, Some(1700000000.0 + 123.45));
        assert_eq!(ProcessStats::parse("", "", "", ""), ProcessStats::default());
        let live = ProcessStats::read();
        assert!(live.resident_bytes.is_some_and(|b| b > 0.0), "{live:?}");
        assert!(live.cpu_seconds.is_some(), "{live:?}");
    }

    #[test]
    fn calls_fill_buckets_and_codes() {
        let telemetry = Telemetry::default();
        telemetry.record_call("farm.v1.Registry/Register", "OK", 0.0002);
        telemetry.record_call("farm.v1.Registry/Register", "NOT_FOUND", 20.0);
        let mut out = Exposition::default();
        control_plane(&mut out, &telemetry);
        let text = out.text;
        assert!(text.contains(
            "farm_control_plane_rpc_total{method=\"farm.v1.Registry/Register\",code=\"OK\"} 1\n"
        ));
        assert!(text.contains(
            "farm_control_plane_rpc_duration_seconds_bucket{method=\"farm.v1.Registry/Register\",le=\"0.00025\"} 1\n"
        ));
        assert!(text.contains(
            "farm_control_plane_rpc_duration_seconds_bucket{method=\"farm.v1.Registry/Register\",le=\"10\"} 1\n"
        ));
        assert!(text.contains(
            "farm_control_plane_rpc_duration_seconds_bucket{method=\"farm.v1.Registry/Register\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains(
            "farm_control_plane_rpc_duration_seconds_count{method=\"farm.v1.Registry/Register\"} 2\n"
        ));
    }
}
