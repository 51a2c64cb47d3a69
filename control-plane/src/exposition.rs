//! `GET /metrics`: the farm and the control plane itself in the Prometheus
//! text format (version 0.0.4), written by the `prometheus-client` crate.
//!
//! [`render`] is a function of the data it renders, and nothing else: the
//! farm's aggregate listing every node ([`FarmAggregate`], what
//! `Metrics.GetFarmMetrics` returns), the control plane's counters
//! ([`TelemetrySnapshot`]) and the process's figures ([`ProcessStats`]).
//! The handler gathers the three; a test renders fixed ones and compares
//! text. Four parts come out: every reporting node's latest sample as series
//! labelled `node_id`, `name` and `group` (and every node's health); the
//! farm's aggregate; the control plane's calls, streams, registrations,
//! pushes and samples; and the process's CPU time, memory and file
//! descriptors under the conventional `process_*` names.
//!
//! Every name starts with `farm_` (or `process_`), ends with its unit, and
//! has `# HELP` and `# TYPE` lines; the crate escapes label values.
//!
//! prometheus-client's registry is made for metric objects that live as
//! long as the process; these series are rebuilt from each scrape's data
//! (fourteen per node, 140,000 at 10,000 nodes). So each scrape registers
//! [`Collector`]s that own its data in a fresh registry, and they write
//! it family by family with the crate's constant metrics, no metric object
//! per series. The crate has no summary type: the farm's latency summary is
//! written here, in the same format (`benches/exposition.rs` measures the
//! whole at 10,000 nodes).
//!
//! Public, with the types it renders, so that benchmark can build a farm.

use std::fmt::{self, Write as _};

use prometheus_client::{
    collector::Collector,
    encoding::{
        CounterValueEncoder, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabel,
        EncodeLabelSet, EncodeLabelValue, EncodeMetric, GaugeValueEncoder, LabelSetEncoder,
        LabelValueEncoder, NoLabelSet, prometheus_text,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// The rest of what `benches/exposition.rs` builds a farm from (and the
/// tests below).
#[cfg(any(test, feature = "bench"))]
pub use crate::telemetry::MethodStats;
pub use crate::{
    core::{
        NodeId, NodeState,
        metrics::{FarmAggregate, Latency, NodeMetrics, Sample},
    },
    process_stats::ProcessStats,
    telemetry::{
        BATCH_BUCKETS, BUCKETS, CatalogSnapshot, GATE_CLOSES, LINE_COMMANDS, LINE_RESULTS,
        PortSnapshot, TelemetrySnapshot,
    },
};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The whole exposition: nodes, farm, control plane, process. Takes its
/// inputs by value: the crate's collectors own what they write. Fails only
/// if the crate's encoder does, which writing into a `String` does not.
pub fn render(
    farm: FarmAggregate,
    telemetry: TelemetrySnapshot,
    process: ProcessStats,
) -> Result<String, fmt::Error> {
    let latency = farm.latency;
    let mut text = String::new();
    encode(&mut text, Farm(farm))?;
    latency_summary(&mut text, &latency)?;
    let catalog = telemetry.catalog.clone();
    let port = telemetry.port.clone();
    encode(&mut text, ControlPlane(telemetry))?;
    encode(&mut text, Port(port))?;
    encode(&mut text, Catalog(catalog))?;
    encode(&mut text, Process(process))?;
    Ok(text)
}

/// Appends what `collector` writes to `text`.
fn encode(text: &mut String, collector: impl Collector) -> fmt::Result {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    prometheus_text::encode(text, &registry)
}

/// A series' type, as far as these families go.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// A figure as written: counts as integers, the rest as floats.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Real(f64),
}

impl EncodeGaugeValue for Value {
    fn encode(&self, encoder: &mut GaugeValueEncoder) -> fmt::Result {
        match self {
            Value::Int(v) => EncodeGaugeValue::encode(v, encoder),
            Value::Real(v) => EncodeGaugeValue::encode(v, encoder),
        }
    }
}

impl EncodeCounterValue for Value {
    fn encode(&self, encoder: &mut CounterValueEncoder) -> fmt::Result {
        match self {
            Value::Int(v) => EncodeCounterValue::encode(v, encoder),
            Value::Real(v) => EncodeCounterValue::encode(v, encoder),
        }
    }
}

/// Writes one family: its `# HELP` and `# TYPE` lines, then a sample per
/// label set. `name` is the name users see; the crate adds a counter's
/// `_total` itself, so it is taken off here.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    samples: impl IntoIterator<Item = (L, Value)>,
) -> fmt::Result {
    let (name, metric_type) = match kind {
        Kind::Gauge => (name, MetricType::Gauge),
        Kind::Counter => (
            name.strip_suffix("_total").unwrap_or(name),
            MetricType::Counter,
        ),
    };
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            Kind::Gauge => ConstGauge::new(value).encode(sample)?,
            Kind::Counter => ConstCounter::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// Writes a family of one sample without labels.
fn scalar(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    value: Value,
) -> fmt::Result {
    family(encoder, name, help, kind, [([("", ""); 0], value)])
}

/// The labels of a node's series.
#[derive(Debug, Clone, Copy)]
struct NodeLabels<'a> {
    id: NodeId,
    name: &'a str,
    group: &'a str,
}

impl<'a> NodeLabels<'a> {
    fn of(node: &'a NodeMetrics) -> Self {
        Self {
            id: node.id,
            name: &node.name,
            group: &node.group,
        }
    }
}

impl EncodeLabelSet for NodeLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        ("node_id", Id(self.id)).encode(encoder.encode_label())?;
        ("name", self.name).encode(encoder.encode_label())?;
        ("group", self.group).encode(encoder.encode_label())
    }
}

/// A node id as a label value (`n42`), written without a `String`.
#[derive(Debug, Clone, Copy)]
struct Id(NodeId);

impl EncodeLabelValue for Id {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        write!(encoder, "{}", self.0)
    }
}

/// A figure of a node's sample.
type Figure = fn(&Sample) -> Value;

/// The series of every reporting node's latest sample.
const NODE_FIGURES: [(&str, &str, Kind, Figure); 13] = [
    (
        "farm_node_cpu_percent",
        "CPU the node uses, in percent of the CPU it may use.",
        Kind::Gauge,
        |s| Value::Real(s.cpu_percent),
    ),
    (
        "farm_node_cpu_limit_cores",
        "CPUs the node may use.",
        Kind::Gauge,
        |s| Value::Real(s.cpu_limit),
    ),
    (
        "farm_node_memory_used_bytes",
        "Memory the node uses (its container's, else its process's resident set).",
        Kind::Gauge,
        |s| Value::Int(s.memory_used_bytes),
    ),
    (
        "farm_node_memory_limit_bytes",
        "Memory the node may use.",
        Kind::Gauge,
        |s| Value::Int(s.memory_limit_bytes),
    ),
    (
        "farm_node_resident_memory_bytes",
        "Resident set size of the node's process.",
        Kind::Gauge,
        |s| Value::Int(s.rss_bytes),
    ),
    (
        "farm_node_disk_used_bytes",
        "Space used on the file system of the node's cache folder.",
        Kind::Gauge,
        |s| Value::Int(s.disk_used_bytes),
    ),
    (
        "farm_node_disk_total_bytes",
        "Size of the file system of the node's cache folder.",
        Kind::Gauge,
        |s| Value::Int(s.disk_total_bytes),
    ),
    (
        "farm_node_network_receive_bytes_total",
        "Bytes the node's network interfaces received.",
        Kind::Counter,
        |s| Value::Int(s.net_rx_bytes),
    ),
    (
        "farm_node_network_transmit_bytes_total",
        "Bytes the node's network interfaces sent.",
        Kind::Counter,
        |s| Value::Int(s.net_tx_bytes),
    ),
    (
        "farm_node_network_receive_bytes_per_second",
        "Bytes received per second over the node's last sampling interval.",
        Kind::Gauge,
        |s| Value::Real(s.net_rx_bytes_per_second),
    ),
    (
        "farm_node_network_transmit_bytes_per_second",
        "Bytes sent per second over the node's last sampling interval.",
        Kind::Gauge,
        |s| Value::Real(s.net_tx_bytes_per_second),
    ),
    (
        "farm_node_requests_total",
        "Work and WorkStream requests the node served since it started.",
        Kind::Counter,
        |s| Value::Int(s.requests),
    ),
    (
        "farm_node_requests_per_second",
        "Requests per second over the node's last sampling interval.",
        Kind::Gauge,
        |s| Value::Real(s.requests_per_second),
    ),
];

/// The nodes and the farm's aggregate (all but its latency summary).
#[derive(Debug)]
struct Farm(FarmAggregate);

impl Collector for Farm {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let farm = &self.0;
        family(
            &mut encoder,
            "farm_node_healthy",
            "Whether the node is healthy (1) or not (0).",
            Kind::Gauge,
            farm.node_metrics.iter().map(|node| {
                let healthy = node.state == NodeState::Healthy;
                (NodeLabels::of(node), Value::Int(u64::from(healthy)))
            }),
        )?;
        let reporting: Vec<_> = farm
            .node_metrics
            .iter()
            .filter(|node| node.reporting)
            .filter_map(|node| Some((NodeLabels::of(node), node.sample.as_ref()?)))
            .collect();
        for (name, help, kind, figure) in NODE_FIGURES {
            let samples = reporting
                .iter()
                .map(|(labels, sample)| (*labels, figure(sample)));
            family(&mut encoder, name, help, kind, samples)?;
        }
        family(
            &mut encoder,
            "farm_node_request_errors_total",
            "Requests the node failed since it started, by gRPC status code.",
            Kind::Counter,
            reporting.iter().flat_map(|(labels, sample)| {
                sample
                    .errors_by_code
                    .iter()
                    .map(|(code, count)| ((*labels, [("code", *code)]), Value::Int(*count)))
            }),
        )?;
        for (name, help, kind, value) in aggregate(farm) {
            scalar(&mut encoder, name, help, kind, value)?;
        }
        Ok(())
    }
}

/// The farm as `GetFarmMetrics` sees it, but for its latency summary.
fn aggregate(farm: &FarmAggregate) -> [(&'static str, &'static str, Kind, Value); 14] {
    [
        (
            "farm_nodes",
            "Nodes registered.",
            Kind::Gauge,
            Value::Int(u64::from(farm.nodes)),
        ),
        (
            "farm_nodes_healthy",
            "Nodes healthy.",
            Kind::Gauge,
            Value::Int(u64::from(farm.healthy_nodes)),
        ),
        (
            "farm_nodes_reporting",
            "Nodes with a recent metrics sample (within three heartbeat timeouts).",
            Kind::Gauge,
            Value::Int(u64::from(farm.reporting_nodes)),
        ),
        (
            "farm_cpu_average_percent",
            "CPU percent averaged over the reporting nodes.",
            Kind::Gauge,
            Value::Real(farm.cpu_percent_avg),
        ),
        (
            "farm_cpu_max_percent",
            "Highest CPU percent of a reporting node.",
            Kind::Gauge,
            Value::Real(farm.cpu_percent_max),
        ),
        (
            "farm_memory_used_bytes",
            "Memory used by the reporting nodes, summed.",
            Kind::Gauge,
            Value::Int(farm.memory_used_bytes),
        ),
        (
            "farm_memory_limit_bytes",
            "Memory the reporting nodes may use, summed.",
            Kind::Gauge,
            Value::Int(farm.memory_limit_bytes),
        ),
        (
            "farm_network_receive_bytes_per_second",
            "Bytes the reporting nodes receive per second, summed.",
            Kind::Gauge,
            Value::Real(farm.net_rx_bytes_per_second),
        ),
        (
            "farm_network_transmit_bytes_per_second",
            "Bytes the reporting nodes send per second, summed.",
            Kind::Gauge,
            Value::Real(farm.net_tx_bytes_per_second),
        ),
        (
            "farm_requests_per_second",
            "Requests the reporting nodes serve per second, summed.",
            Kind::Gauge,
            Value::Real(farm.requests_per_second),
        ),
        (
            "farm_requests_total",
            "Requests the reporting nodes served since they started, summed.",
            Kind::Counter,
            Value::Int(farm.requests),
        ),
        (
            "farm_request_errors_total",
            "Requests the reporting nodes failed since they started, summed.",
            Kind::Counter,
            Value::Int(farm.errors),
        ),
        (
            "farm_request_error_ratio",
            "Failed share of the requests of the nodes' last sampling interval (0 to 1).",
            Kind::Gauge,
            Value::Real(farm.error_rate),
        ),
        (
            "farm_request_latency_max_seconds",
            "Slowest request of the nodes' last sampling interval.",
            Kind::Gauge,
            Value::Real(farm.latency.max_us / 1e6),
        ),
    ]
}

/// The farm's merged latency as a summary. prometheus-client has no summary
/// type (its `MetricType` has counter, gauge, histogram, info and unknown),
/// so this one family is written here, to the same format; its only label
/// values are the fixed quantiles, which need no escaping.
fn latency_summary(out: &mut String, latency: &Latency) -> fmt::Result {
    let name = "farm_request_latency_seconds";
    writeln!(
        out,
        "# HELP {name} Latency of the requests of the nodes' last sampling interval, their histograms merged."
    )?;
    writeln!(out, "# TYPE {name} summary")?;
    for (quantile, us) in [
        ("0.5", latency.p50_us),
        ("0.9", latency.p90_us),
        ("0.99", latency.p99_us),
        ("0.999", latency.p999_us),
    ] {
        writeln!(out, "{name}{{quantile=\"{quantile}\"}} {}", Float(us / 1e6))?;
    }
    let sum = latency.mean_us * latency.count as f64 / 1e6;
    writeln!(out, "{name}_sum {}", Float(sum))?;
    writeln!(out, "{name}_count {}", latency.count)
}

/// A float as the text format writes it (Rust's shortest form, and
/// `NaN`, `+Inf`, `-Inf`).
struct Float(f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v.is_finite() => write!(f, "{v}"),
            v if v.is_nan() => f.write_str("NaN"),
            v if v > 0.0 => f.write_str("+Inf"),
            _ => f.write_str("-Inf"),
        }
    }
}

/// The control plane's own counters.
#[derive(Debug)]
struct ControlPlane(TelemetrySnapshot);

impl Collector for ControlPlane {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let telemetry = &self.0;
        family(
            &mut encoder,
            "farm_control_plane_rpc_total",
            "gRPC calls the control plane finished, by method and status code.",
            Kind::Counter,
            telemetry.rpcs.iter().flat_map(|(method, stats)| {
                stats.codes.iter().map(move |(code, count)| {
                    ([("method", *method), ("code", *code)], Value::Int(*count))
                })
            }),
        )?;
        let mut durations = encoder.encode_descriptor(
            "farm_control_plane_rpc_duration_seconds",
            "How long gRPC calls took until their last byte (streams: their lifetime), by method.",
            None,
            MetricType::Histogram,
        )?;
        for (method, stats) in &telemetry.rpcs {
            // Counts per bucket, not cumulative: the crate adds them up.
            let buckets: Vec<(f64, u64)> = BUCKETS.into_iter().zip(stats.buckets).collect();
            let labels = [("method", *method)];
            durations
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(stats.sum, stats.count, &buckets, None)?;
        }
        scalar(
            &mut encoder,
            "farm_control_plane_heartbeat_streams",
            "Heartbeat streams open.",
            Kind::Gauge,
            Value::Int(u64::try_from(telemetry.heartbeat_streams).unwrap_or(0)),
        )?;
        family(
            &mut encoder,
            "farm_control_plane_registrations_total",
            "Registrations accepted: new identities, and identities re-attached.",
            Kind::Counter,
            [
                ([("kind", "new")], Value::Int(telemetry.registrations_new)),
                (
                    [("kind", "reattached")],
                    Value::Int(telemetry.registrations_reattached),
                ),
            ],
        )?;
        scalar(
            &mut encoder,
            "farm_control_plane_config_pushes_total",
            "Effective configurations sent to nodes on their heartbeat streams.",
            Kind::Counter,
            Value::Int(telemetry.config_pushes),
        )?;
        scalar(
            &mut encoder,
            "farm_control_plane_samples_total",
            "Metrics samples received from nodes.",
            Kind::Counter,
            Value::Int(telemetry.samples),
        )
    }
}

/// The port's connections: admitted, open, and closed before they were
/// served, by why.
#[derive(Debug)]
struct Port(PortSnapshot);

impl Collector for Port {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let port = &self.0;
        scalar(
            &mut encoder,
            "farm_connections_total",
            "Connections the port (gRPC, gRPC-Web, HTTP) admitted.",
            Kind::Counter,
            Value::Int(port.connections),
        )?;
        scalar(
            &mut encoder,
            "farm_connections_open",
            "Connections open on the port.",
            Kind::Gauge,
            Value::Int(port.open),
        )?;
        family(
            &mut encoder,
            "farm_connections_closed_total",
            "Connections the port closed before serving them: refused (at --max-connections, every connection busy), displaced (the oldest that had sent no request, to make room), idle (sent nothing within --idle-connection-timeout), slow_headers (no request headers within --header-read-timeout).",
            Kind::Counter,
            GATE_CLOSES
                .iter()
                .zip(port.closed)
                .map(|(reason, count)| ([("reason", *reason)], Value::Int(count))),
        )?;
        scalar(
            &mut encoder,
            "farm_accept_failures_total",
            "Connections the port could not accept (out of file descriptors, say); accepting pauses after each.",
            Kind::Counter,
            Value::Int(port.accept_failures),
        )?;
        scalar(
            &mut encoder,
            "farm_control_plane_event_loop_lag_seconds",
            "How late the control plane's event loop runs, smoothed: ready work waiting for a thread. Past --shed-lag, farm-wide reads are shed.",
            Kind::Gauge,
            Value::Real(port.loop_lag_seconds),
        )?;
        scalar(
            &mut encoder,
            "farm_calls_shed_total",
            "Farm-wide reads (ListNodes, metrics, history, catalog reads, GetStatus) answered UNAVAILABLE while the control plane was saturated.",
            Kind::Counter,
            Value::Int(port.shed),
        )
    }
}

/// The dependency catalog: its line protocol's connections and commands,
/// its size, and how its writes were batched.
#[derive(Debug)]
struct Catalog(CatalogSnapshot);

impl Collector for Catalog {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let catalog = &self.0;
        scalar(
            &mut encoder,
            "farm_catalog_names",
            "Names indexed in the dependency catalog.",
            Kind::Gauge,
            Value::Int(catalog.names),
        )?;
        scalar(
            &mut encoder,
            "farm_catalog_connections_total",
            "Line-protocol connections accepted.",
            Kind::Counter,
            Value::Int(catalog.connections),
        )?;
        scalar(
            &mut encoder,
            "farm_catalog_connections_open",
            "Line-protocol connections open.",
            Kind::Gauge,
            Value::Int(catalog.connections_open),
        )?;
        scalar(
            &mut encoder,
            "farm_catalog_connections_refused_total",
            "Line-protocol connections closed at once: the connection limit was reached.",
            Kind::Counter,
            Value::Int(catalog.connections_refused),
        )?;
        family(
            &mut encoder,
            "farm_catalog_commands_total",
            "Line-protocol lines answered, by command (`other`: none of the three) and result (ok, fail, error).",
            Kind::Counter,
            LINE_COMMANDS
                .iter()
                .zip(catalog.commands)
                .flat_map(|(command, results)| {
                    LINE_RESULTS
                        .iter()
                        .zip(results)
                        .map(move |(result, count)| {
                            (
                                [("command", *command), ("result", *result)],
                                Value::Int(count),
                            )
                        })
                }),
        )?;
        let mut batches = encoder.encode_descriptor(
            "farm_catalog_write_batch_size",
            "Changes written to disk together, in one transaction and one sync (line protocol and gRPC).",
            None,
            MetricType::Histogram,
        )?;
        // Counts per bucket, not cumulative: the crate adds them up.
        let buckets: Vec<(f64, u64)> = BATCH_BUCKETS
            .into_iter()
            .map(|le| le as f64)
            .zip(catalog.batches)
            .collect();
        batches.encode_histogram::<NoLabelSet>(
            catalog.batch_changes as f64,
            catalog.batch_count,
            &buckets,
            None,
        )
    }
}

/// The process's own figures; those it could not read are left out.
#[derive(Debug)]
struct Process(ProcessStats);

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = &self.0;
        let figures = [
            (
                "process_cpu_seconds_total",
                "User and system CPU time the process spent, in seconds.",
                Kind::Counter,
                stats.cpu_seconds.map(Value::Real),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size of the process, in bytes.",
                Kind::Gauge,
                stats.resident_bytes.map(Value::Int),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size of the process, in bytes.",
                Kind::Gauge,
                stats.virtual_bytes.map(Value::Int),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                Kind::Gauge,
                stats.start_time_seconds.map(Value::Real),
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                Kind::Gauge,
                stats.open_fds.map(Value::Int),
            ),
            (
                "process_max_fds",
                "Most file descriptors the process may open.",
                Kind::Gauge,
                stats.max_fds.map(Value::Int),
            ),
            (
                "process_threads",
                "Threads of the process.",
                Kind::Gauge,
                stats.threads.map(Value::Int),
            ),
            (
                "farm_control_plane_tasks",
                "Tasks alive on the control plane's tokio runtime.",
                Kind::Gauge,
                stats.tasks.map(Value::Int),
            ),
        ];
        for (name, help, kind, value) in figures {
            if let Some(value) = value {
                scalar(&mut encoder, name, help, kind, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;

    /// Two nodes, one reporting with failures, one not.
    fn farm() -> FarmAggregate {
        let sample = Sample {
            cpu_percent: 12.5,
            cpu_limit: 0.5,
            memory_used_bytes: 104_857_600,
            memory_limit_bytes: 134_217_728,
            rss_bytes: 52_428_800,
            disk_used_bytes: 1 << 30,
            disk_total_bytes: 10 << 30,
            net_rx_bytes: 1000,
            net_tx_bytes: 2000,
            net_rx_bytes_per_second: 100.0,
            net_tx_bytes_per_second: 200.25,
            requests: 4500,
            errors_by_code: BTreeMap::from([(13, 10), (14, 5)]),
            requests_per_second: 450.0,
            ..Sample::default()
        };
        FarmAggregate {
            at: Some(SystemTime::UNIX_EPOCH),
            nodes: 2,
            healthy_nodes: 1,
            reporting_nodes: 1,
            cpu_percent_avg: 12.5,
            cpu_percent_max: 12.5,
            memory_used_bytes: 104_857_600,
            memory_limit_bytes: 134_217_728,
            net_rx_bytes_per_second: 100.0,
            net_tx_bytes_per_second: 200.25,
            requests_per_second: 450.0,
            requests: 4500,
            errors: 15,
            error_rate: 0.01,
            latency: Latency {
                count: 400,
                p50_us: 1500.0,
                p90_us: 2000.0,
                p99_us: 5000.0,
                p999_us: 60000.0,
                max_us: 60100.0,
                mean_us: 1750.0,
            },
            bad_histograms: 0,
            node_metrics: vec![
                NodeMetrics {
                    id: NodeId(1),
                    name: "web-1".to_owned(),
                    group: "web".to_owned(),
                    state: NodeState::Healthy,
                    reporting: true,
                    sample: Some(sample.clone()),
                    latency: Latency::default(),
                },
                NodeMetrics {
                    id: NodeId(2),
                    name: "a\"b\\c\nd".to_owned(),
                    group: "default".to_owned(),
                    state: NodeState::Unhealthy,
                    reporting: false,
                    sample: Some(sample),
                    latency: Latency::default(),
                },
            ],
            loads: None,
        }
    }

    /// The control plane after two registrations and a re-attachment, and
    /// a catalog of 3,000 names served to two line-protocol clients.
    fn telemetry() -> TelemetrySnapshot {
        let mut commands = [[0; LINE_RESULTS.len()]; LINE_COMMANDS.len()];
        commands[0] = [3000, 12, 1];
        commands[2] = [500, 40, 0];
        commands[3] = [0, 0, 2];
        let mut batches = [0; BATCH_BUCKETS.len()];
        batches[0] = 10;
        batches[3] = 3;
        TelemetrySnapshot {
            heartbeat_streams: 1,
            registrations_new: 2,
            registrations_reattached: 1,
            config_pushes: 3,
            samples: 40,
            rpcs: BTreeMap::from([("farm.v1.Registry/Register", calls())]),
            catalog: CatalogSnapshot {
                connections: 3,
                connections_open: 2,
                connections_refused: 1,
                commands,
                batches,
                batch_count: 13,
                batch_changes: 3012,
                names: 3000,
            },
            port: PortSnapshot {
                connections: 9,
                open: 4,
                closed: [0, 1, 3, 1],
                accept_failures: 2,
                loop_lag_seconds: 0.0015,
                shed: 7,
            },
        }
    }

    /// A process whose memory and descriptors could be read, and little
    /// else.
    fn process() -> ProcessStats {
        ProcessStats {
            cpu_seconds: Some(1.25),
            resident_bytes: Some(10 << 20),
            open_fds: Some(27),
            tasks: Some(42),
            ..ProcessStats::default()
        }
    }

    #[test]
    fn fixed_data_renders_to_the_text_dashboards_scrape() {
        let text = render(farm(), telemetry(), process()).expect("render");
        // Every name, label, help and type users rely on, in order; the
        // unreporting node only has its health; counters keep `_total` on
        // their HELP and TYPE lines; label values are escaped; histogram
        // buckets are cumulative up to `+Inf`, which holds the 20 s call.
        let expected = r#"# HELP farm_node_healthy Whether the node is healthy (1) or not (0).
# TYPE farm_node_healthy gauge
farm_node_healthy{node_id="n1",name="web-1",group="web"} 1
farm_node_healthy{node_id="n2",name="a\"b\\c\nd",group="default"} 0
# HELP farm_node_cpu_percent CPU the node uses, in percent of the CPU it may use.
# TYPE farm_node_cpu_percent gauge
farm_node_cpu_percent{node_id="n1",name="web-1",group="web"} 12.5
# HELP farm_node_cpu_limit_cores CPUs the node may use.
# TYPE farm_node_cpu_limit_cores gauge
farm_node_cpu_limit_cores{node_id="n1",name="web-1",group="web"} 0.5
# HELP farm_node_memory_used_bytes Memory the node uses (its container's, else its process's resident set).
# TYPE farm_node_memory_used_bytes gauge
farm_node_memory_used_bytes{node_id="n1",name="web-1",group="web"} 104857600
# HELP farm_node_memory_limit_bytes Memory the node may use.
# TYPE farm_node_memory_limit_bytes gauge
farm_node_memory_limit_bytes{node_id="n1",name="web-1",group="web"} 134217728
# HELP farm_node_resident_memory_bytes Resident set size of the node's process.
# TYPE farm_node_resident_memory_bytes gauge
farm_node_resident_memory_bytes{node_id="n1",name="web-1",group="web"} 52428800
# HELP farm_node_disk_used_bytes Space used on the file system of the node's cache folder.
# TYPE farm_node_disk_used_bytes gauge
farm_node_disk_used_bytes{node_id="n1",name="web-1",group="web"} 1073741824
# HELP farm_node_disk_total_bytes Size of the file system of the node's cache folder.
# TYPE farm_node_disk_total_bytes gauge
farm_node_disk_total_bytes{node_id="n1",name="web-1",group="web"} 10737418240
# HELP farm_node_network_receive_bytes_total Bytes the node's network interfaces received.
# TYPE farm_node_network_receive_bytes_total counter
farm_node_network_receive_bytes_total{node_id="n1",name="web-1",group="web"} 1000
# HELP farm_node_network_transmit_bytes_total Bytes the node's network interfaces sent.
# TYPE farm_node_network_transmit_bytes_total counter
farm_node_network_transmit_bytes_total{node_id="n1",name="web-1",group="web"} 2000
# HELP farm_node_network_receive_bytes_per_second Bytes received per second over the node's last sampling interval.
# TYPE farm_node_network_receive_bytes_per_second gauge
farm_node_network_receive_bytes_per_second{node_id="n1",name="web-1",group="web"} 100.0
# HELP farm_node_network_transmit_bytes_per_second Bytes sent per second over the node's last sampling interval.
# TYPE farm_node_network_transmit_bytes_per_second gauge
farm_node_network_transmit_bytes_per_second{node_id="n1",name="web-1",group="web"} 200.25
# HELP farm_node_requests_total Work and WorkStream requests the node served since it started.
# TYPE farm_node_requests_total counter
farm_node_requests_total{node_id="n1",name="web-1",group="web"} 4500
# HELP farm_node_requests_per_second Requests per second over the node's last sampling interval.
# TYPE farm_node_requests_per_second gauge
farm_node_requests_per_second{node_id="n1",name="web-1",group="web"} 450.0
# HELP farm_node_request_errors_total Requests the node failed since it started, by gRPC status code.
# TYPE farm_node_request_errors_total counter
farm_node_request_errors_total{node_id="n1",name="web-1",group="web",code="13"} 10
farm_node_request_errors_total{node_id="n1",name="web-1",group="web",code="14"} 5
# HELP farm_nodes Nodes registered.
# TYPE farm_nodes gauge
farm_nodes 2
# HELP farm_nodes_healthy Nodes healthy.
# TYPE farm_nodes_healthy gauge
farm_nodes_healthy 1
# HELP farm_nodes_reporting Nodes with a recent metrics sample (within three heartbeat timeouts).
# TYPE farm_nodes_reporting gauge
farm_nodes_reporting 1
# HELP farm_cpu_average_percent CPU percent averaged over the reporting nodes.
# TYPE farm_cpu_average_percent gauge
farm_cpu_average_percent 12.5
# HELP farm_cpu_max_percent Highest CPU percent of a reporting node.
# TYPE farm_cpu_max_percent gauge
farm_cpu_max_percent 12.5
# HELP farm_memory_used_bytes Memory used by the reporting nodes, summed.
# TYPE farm_memory_used_bytes gauge
farm_memory_used_bytes 104857600
# HELP farm_memory_limit_bytes Memory the reporting nodes may use, summed.
# TYPE farm_memory_limit_bytes gauge
farm_memory_limit_bytes 134217728
# HELP farm_network_receive_bytes_per_second Bytes the reporting nodes receive per second, summed.
# TYPE farm_network_receive_bytes_per_second gauge
farm_network_receive_bytes_per_second 100.0
# HELP farm_network_transmit_bytes_per_second Bytes the reporting nodes send per second, summed.
# TYPE farm_network_transmit_bytes_per_second gauge
farm_network_transmit_bytes_per_second 200.25
# HELP farm_requests_per_second Requests the reporting nodes serve per second, summed.
# TYPE farm_requests_per_second gauge
farm_requests_per_second 450.0
# HELP farm_requests_total Requests the reporting nodes served since they started, summed.
# TYPE farm_requests_total counter
farm_requests_total 4500
# HELP farm_request_errors_total Requests the reporting nodes failed since they started, summed.
# TYPE farm_request_errors_total counter
farm_request_errors_total 15
# HELP farm_request_error_ratio Failed share of the requests of the nodes' last sampling interval (0 to 1).
# TYPE farm_request_error_ratio gauge
farm_request_error_ratio 0.01
# HELP farm_request_latency_max_seconds Slowest request of the nodes' last sampling interval.
# TYPE farm_request_latency_max_seconds gauge
farm_request_latency_max_seconds 0.0601
# HELP farm_request_latency_seconds Latency of the requests of the nodes' last sampling interval, their histograms merged.
# TYPE farm_request_latency_seconds summary
farm_request_latency_seconds{quantile="0.5"} 0.0015
farm_request_latency_seconds{quantile="0.9"} 0.002
farm_request_latency_seconds{quantile="0.99"} 0.005
farm_request_latency_seconds{quantile="0.999"} 0.06
farm_request_latency_seconds_sum 0.7
farm_request_latency_seconds_count 400
# HELP farm_control_plane_rpc_total gRPC calls the control plane finished, by method and status code.
# TYPE farm_control_plane_rpc_total counter
farm_control_plane_rpc_total{method="farm.v1.Registry/Register",code="NOT_FOUND"} 1
farm_control_plane_rpc_total{method="farm.v1.Registry/Register",code="OK"} 1
# HELP farm_control_plane_rpc_duration_seconds How long gRPC calls took until their last byte (streams: their lifetime), by method.
# TYPE farm_control_plane_rpc_duration_seconds histogram
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.0001"} 0
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.00025"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.0005"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.001"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.0025"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.005"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.01"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.025"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.05"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.1"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.25"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="0.5"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="1"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="2.5"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="5"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="10"} 1
farm_control_plane_rpc_duration_seconds_bucket{method="farm.v1.Registry/Register",le="+Inf"} 2
farm_control_plane_rpc_duration_seconds_sum{method="farm.v1.Registry/Register"} 20.0002
farm_control_plane_rpc_duration_seconds_count{method="farm.v1.Registry/Register"} 2
# HELP farm_control_plane_heartbeat_streams Heartbeat streams open.
# TYPE farm_control_plane_heartbeat_streams gauge
farm_control_plane_heartbeat_streams 1
# HELP farm_control_plane_registrations_total Registrations accepted: new identities, and identities re-attached.
# TYPE farm_control_plane_registrations_total counter
farm_control_plane_registrations_total{kind="new"} 2
farm_control_plane_registrations_total{kind="reattached"} 1
# HELP farm_control_plane_config_pushes_total Effective configurations sent to nodes on their heartbeat streams.
# TYPE farm_control_plane_config_pushes_total counter
farm_control_plane_config_pushes_total 3
# HELP farm_control_plane_samples_total Metrics samples received from nodes.
# TYPE farm_control_plane_samples_total counter
farm_control_plane_samples_total 40
# HELP farm_connections_total Connections the port (gRPC, gRPC-Web, HTTP) admitted.
# TYPE farm_connections_total counter
farm_connections_total 9
# HELP farm_connections_open Connections open on the port.
# TYPE farm_connections_open gauge
farm_connections_open 4
# HELP farm_connections_closed_total Connections the port closed before serving them: refused (at --max-connections, every connection busy), displaced (the oldest that had sent no request, to make room), idle (sent nothing within --idle-connection-timeout), slow_headers (no request headers within --header-read-timeout).
# TYPE farm_connections_closed_total counter
farm_connections_closed_total{reason="refused"} 0
farm_connections_closed_total{reason="displaced"} 1
farm_connections_closed_total{reason="idle"} 3
farm_connections_closed_total{reason="slow_headers"} 1
# HELP farm_accept_failures_total Connections the port could not accept (out of file descriptors, say); accepting pauses after each.
# TYPE farm_accept_failures_total counter
farm_accept_failures_total 2
# HELP farm_control_plane_event_loop_lag_seconds How late the control plane's event loop runs, smoothed: ready work waiting for a thread. Past --shed-lag, farm-wide reads are shed.
# TYPE farm_control_plane_event_loop_lag_seconds gauge
farm_control_plane_event_loop_lag_seconds 0.0015
# HELP farm_calls_shed_total Farm-wide reads (ListNodes, metrics, history, catalog reads, GetStatus) answered UNAVAILABLE while the control plane was saturated.
# TYPE farm_calls_shed_total counter
farm_calls_shed_total 7
# HELP farm_catalog_names Names indexed in the dependency catalog.
# TYPE farm_catalog_names gauge
farm_catalog_names 3000
# HELP farm_catalog_connections_total Line-protocol connections accepted.
# TYPE farm_catalog_connections_total counter
farm_catalog_connections_total 3
# HELP farm_catalog_connections_open Line-protocol connections open.
# TYPE farm_catalog_connections_open gauge
farm_catalog_connections_open 2
# HELP farm_catalog_connections_refused_total Line-protocol connections closed at once: the connection limit was reached.
# TYPE farm_catalog_connections_refused_total counter
farm_catalog_connections_refused_total 1
# HELP farm_catalog_commands_total Line-protocol lines answered, by command (`other`: none of the three) and result (ok, fail, error).
# TYPE farm_catalog_commands_total counter
farm_catalog_commands_total{command="INDEX",result="ok"} 3000
farm_catalog_commands_total{command="INDEX",result="fail"} 12
farm_catalog_commands_total{command="INDEX",result="error"} 1
farm_catalog_commands_total{command="REMOVE",result="ok"} 0
farm_catalog_commands_total{command="REMOVE",result="fail"} 0
farm_catalog_commands_total{command="REMOVE",result="error"} 0
farm_catalog_commands_total{command="QUERY",result="ok"} 500
farm_catalog_commands_total{command="QUERY",result="fail"} 40
farm_catalog_commands_total{command="QUERY",result="error"} 0
farm_catalog_commands_total{command="other",result="ok"} 0
farm_catalog_commands_total{command="other",result="fail"} 0
farm_catalog_commands_total{command="other",result="error"} 2
# HELP farm_catalog_write_batch_size Changes written to disk together, in one transaction and one sync (line protocol and gRPC).
# TYPE farm_catalog_write_batch_size histogram
farm_catalog_write_batch_size_bucket{le="1"} 10
farm_catalog_write_batch_size_bucket{le="2"} 10
farm_catalog_write_batch_size_bucket{le="4"} 10
farm_catalog_write_batch_size_bucket{le="8"} 13
farm_catalog_write_batch_size_bucket{le="16"} 13
farm_catalog_write_batch_size_bucket{le="32"} 13
farm_catalog_write_batch_size_bucket{le="64"} 13
farm_catalog_write_batch_size_bucket{le="128"} 13
farm_catalog_write_batch_size_bucket{le="256"} 13
farm_catalog_write_batch_size_bucket{le="512"} 13
farm_catalog_write_batch_size_bucket{le="+Inf"} 13
farm_catalog_write_batch_size_sum 3012.0
farm_catalog_write_batch_size_count 13
# HELP process_cpu_seconds_total User and system CPU time the process spent, in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.25
# HELP process_resident_memory_bytes Resident memory size of the process, in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 10485760
# HELP process_open_fds Open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 27
# HELP farm_control_plane_tasks Tasks alive on the control plane's tokio runtime.
# TYPE farm_control_plane_tasks gauge
farm_control_plane_tasks 42
"#;
        if text != expected {
            for (n, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
                assert_eq!(got, want, "line {}", n + 1);
            }
            assert_eq!(text.lines().count(), expected.lines().count(), "{text}");
        }
    }

    #[test]
    fn an_empty_farm_declares_its_families_without_samples() {
        let text = render(
            FarmAggregate::default(),
            TelemetrySnapshot::default(),
            ProcessStats::default(),
        )
        .expect("render");
        for family in [
            "farm_node_healthy gauge",
            "farm_node_cpu_percent gauge",
            "farm_node_request_errors_total counter",
            "farm_control_plane_rpc_total counter",
            "farm_control_plane_rpc_duration_seconds histogram",
        ] {
            assert!(text.contains(&format!("# TYPE {family}\n")), "{family}");
        }
        assert!(!text.contains("farm_node_healthy{"), "{text}");
        assert!(!text.contains("farm_control_plane_rpc_total{"), "{text}");
        assert!(text.contains("\nfarm_nodes 0\n"), "{text}");
        assert!(
            text.contains("\nfarm_request_latency_seconds{quantile=\"0.99\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("process_"), "unread figures are left out");
    }

    #[test]
    fn summary_values_are_written_as_prometheus_reads_them() {
        assert_eq!(Float(0.0025).to_string(), "0.0025");
        assert_eq!(Float(3.0).to_string(), "3");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
    }

    /// Register: one OK call of 0.2 ms, one NOT_FOUND of 20 s.
    fn calls() -> MethodStats {
        let mut buckets = [0; BUCKETS.len()];
        buckets[1] = 1;
        MethodStats {
            codes: BTreeMap::from([("NOT_FOUND", 1), ("OK", 1)]),
            buckets,
            count: 2,
            sum: 20.0002,
        }
    }
}
