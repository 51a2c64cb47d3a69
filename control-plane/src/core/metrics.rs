//! Metrics of the farm's nodes: the samples they report with their
//! heartbeats, a short history per node, and the farm (or group) aggregate
//! with latency histograms merged across nodes.
//!
//! Nothing here knows the wire: a [`Sample`] is the domain's copy of a
//! node's report, its latency histogram kept as the V2-serialised bytes the
//! node sent, so a large farm holds a few hundred bytes per sample instead
//! of a histogram's array of counts. Only when an aggregate is computed are
//! they decoded, into the recorded values alone ([`Counts`]), which are
//! recorded straight into one merged histogram: no histogram per node is
//! ever built (at 10,000 nodes that is a quarter of the time).
//! [`MetricsBook`] is what the state keeps behind its own lock; taking a
//! [`MetricsBook::snapshot`] is cheap, and [`aggregate`] does the decoding
//! and merging outside any lock.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use thiserror::Error;

use super::{NodeId, NodeState, NodeView};

/// Samples kept per node: about a minute at one sample a second.
pub const HISTORY: usize = 60;

/// Heartbeat timeouts within which a node's latest sample must have arrived
/// for the node to count as reporting.
pub const REPORTING_TIMEOUTS: u32 = 3;

/// Largest latency histogram accepted, serialised.
pub const MAX_HISTOGRAM_BYTES: usize = 256 * 1024;

/// Most significant figures a reported histogram may carry: each more
/// multiplies the memory decoding it takes by ten.
const MAX_SIGNIFICANT_FIGURES: u32 = 3;

/// Significant figures of merged histograms.
const MERGED_SIGNIFICANT_FIGURES: u8 = 3;

/// First four bytes of an uncompressed V2 histogram.
const V2_COOKIE: u32 = 0x1c84_9313;

/// Bytes of a V2 header: cookie, payload length, normalizing offset,
/// significant figures, lowest and highest trackable value, ratio.
const V2_HEADER: usize = 40;

/// One node's sample, as the control plane keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the node took it (the node's clock).
    pub at: SystemTime,
    /// CPU used, in percent of what the node may use: 0 to 100.
    pub cpu_percent: f64,
    /// CPUs the node may use.
    pub cpu_limit: f64,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub rss_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// Bytes received and sent since the interfaces came up.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes_per_second: f64,
    pub net_tx_bytes_per_second: f64,
    /// Requests since the node started.
    pub requests: u64,
    /// Failed requests since the node started, by gRPC status code.
    pub errors_by_code: BTreeMap<u32, u64>,
    pub requests_per_second: f64,
    /// V2-serialised HDR histogram of the interval's latencies, in
    /// microseconds; empty when no request was served.
    pub latency_histogram: Bytes,
    /// Length of the interval the rates and the histogram cover.
    pub interval_ms: u32,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            at: SystemTime::UNIX_EPOCH,
            cpu_percent: 0.0,
            cpu_limit: 0.0,
            memory_used_bytes: 0,
            memory_limit_bytes: 0,
            rss_bytes: 0,
            disk_used_bytes: 0,
            disk_total_bytes: 0,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
            net_rx_bytes_per_second: 0.0,
            net_tx_bytes_per_second: 0.0,
            requests: 0,
            errors_by_code: BTreeMap::new(),
            requests_per_second: 0.0,
            latency_histogram: Bytes::new(),
            interval_ms: 0,
        }
    }
}

impl Sample {
    /// Failed requests since the node started, all codes together.
    pub fn errors(&self) -> u64 {
        self.errors_by_code
            .values()
            .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// The sample with every figure made usable: rates and percentages that
    /// are not finite or negative become 0, the CPU share is kept within 0
    /// to 100, and a histogram too large to accept is dropped. Nodes are
    /// trusted to report, not to report well.
    pub fn sanitized(mut self) -> Self {
        fn rate(value: f64) -> f64 {
            if value.is_finite() && value > 0.0 {
                value
            } else {
                0.0
            }
        }
        self.cpu_percent = rate(self.cpu_percent).min(100.0);
        self.cpu_limit = rate(self.cpu_limit);
        self.net_rx_bytes_per_second = rate(self.net_rx_bytes_per_second);
        self.net_tx_bytes_per_second = rate(self.net_tx_bytes_per_second);
        self.requests_per_second = rate(self.requests_per_second);
        if self.latency_histogram.len() > MAX_HISTOGRAM_BYTES {
            self.latency_histogram = Bytes::new();
        }
        self
    }

    /// The recorded latencies of the sample's histogram (none when it
    /// carries none).
    pub fn latencies(&self) -> Result<Counts, HistogramError> {
        decode(&self.latency_histogram)
    }
}

/// Why a reported latency histogram could not be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HistogramError {
    /// Larger than [`MAX_HISTOGRAM_BYTES`].
    #[error("the histogram takes {0} bytes, more than the {MAX_HISTOGRAM_BYTES} accepted")]
    TooLarge(usize),
    /// Not an uncompressed V2 histogram, or one whose header promises more
    /// than its bytes hold.
    #[error("not an uncompressed V2 HDR histogram")]
    NotV2,
    /// Finer than [`MAX_SIGNIFICANT_FIGURES`].
    #[error("the histogram has {0} significant figures, more than {MAX_SIGNIFICANT_FIGURES}")]
    TooPrecise(u32),
    /// The bytes did not decode.
    #[error("the histogram does not decode: {0}")]
    Corrupt(String),
}

/// The values a histogram recorded: `(value, count)` pairs in increasing
/// order, each value the lowest of its bucket. As long as a few hundred
/// bytes of a report are, where the histogram itself would take a buffer
/// of counts for every bucket in its range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    values: Vec<(u64, u64)>,
    total: u64,
}

impl Counts {
    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Each recorded value with its count, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.values.iter().copied()
    }
}

/// Decodes the counts of a V2 histogram without building the histogram:
/// the header is checked first, so no report can make the control plane
/// allocate more than its bytes justify, and bucket indexes that would
/// overflow are refused.
pub fn decode(bytes: &[u8]) -> Result<Counts, HistogramError> {
    if bytes.is_empty() {
        return Ok(Counts::default());
    }
    if bytes.len() > MAX_HISTOGRAM_BYTES {
        return Err(HistogramError::TooLarge(bytes.len()));
    }
    if bytes.len() < V2_HEADER {
        return Err(HistogramError::NotV2);
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let long = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let payload_len = word(4) as usize;
    if word(0) != V2_COOKIE || payload_len > bytes.len() - V2_HEADER {
        return Err(HistogramError::NotV2);
    }
    let figures = word(12);
    if figures > MAX_SIGNIFICANT_FIGURES {
        return Err(HistogramError::TooPrecise(figures));
    }
    let lowest = long(16);
    if word(8) != 0 || lowest == 0 || f64::from_bits(long(32)) != 1.0 {
        return Err(HistogramError::Corrupt(
            "unsupported header (offset, lowest value or ratio)".into(),
        ));
    }
    // The bucket layout, as hdrhistogram derives it from the header.
    let unit_magnitude = 63 - lowest.leading_zeros();
    let largest_single_unit = 2 * 10u64.pow(figures);
    let count_magnitude = (largest_single_unit as f64).log2().ceil() as u32;
    let half_magnitude = count_magnitude.saturating_sub(1);
    let mut payload = &bytes[V2_HEADER..V2_HEADER + payload_len];
    let mut counts = Counts::default();
    let mut index: u64 = 0;
    let corrupt = |what: &str| HistogramError::Corrupt(what.to_owned());
    while !payload.is_empty() {
        let (raw, used) = varint(payload).ok_or_else(|| corrupt("truncated number"))?;
        payload = &payload[used..];
        // Zig-zag: negative numbers are runs of empty buckets.
        let number = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        if number < 0 {
            index = index
                .checked_add(number.unsigned_abs())
                .ok_or_else(|| corrupt("bucket index overflows"))?;
            continue;
        }
        if number > 0 {
            let value = bucket_value(index, half_magnitude, unit_magnitude)
                .ok_or_else(|| corrupt("bucket index beyond any value"))?;
            let count = number as u64;
            counts.values.push((value, count));
            counts.total = counts
                .total
                .checked_add(count)
                .ok_or_else(|| corrupt("counts overflow"))?;
        }
        index += 1;
    }
    Ok(counts)
}

/// One number of a V2 payload (LEB128, at most nine bytes, the ninth
/// taken whole) and the bytes it took.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(9).enumerate() {
        if i == 8 {
            return Some((value | (u64::from(*b) << 56), 9));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The lowest value of bucket `index` of a histogram whose sub-buckets
/// take `half_magnitude + 1` bits and whose unit is `2^unit_magnitude`.
fn bucket_value(index: u64, half_magnitude: u32, unit_magnitude: u32) -> Option<u64> {
    let half = 1u64 << half_magnitude;
    let mut bucket = (index >> half_magnitude) as i64 - 1;
    let mut sub_bucket = (index & (half - 1)) + half;
    if bucket < 0 {
        sub_bucket -= half;
        bucket = 0;
    }
    let shift = u32::try_from(bucket).ok()?.checked_add(unit_magnitude)?;
    if shift + half_magnitude + 1 > 64 {
        return None;
    }
    Some(sub_bucket << shift)
}

/// Latency percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Values the histogram holds.
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Mean, for sums (the Prometheus summary's `_sum`).
    pub mean_us: f64,
}

impl Latency {
    /// The percentiles of `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let at = |q: f64| histogram.value_at_quantile(q) as f64;
        Self {
            count: histogram.len(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: histogram.max() as f64,
            mean_us: histogram.mean(),
        }
    }

    /// The percentiles of `counts`, as [`Latency::of`] would give them for
    /// the same values recorded in a histogram shaped like `reference`.
    pub fn of_counts(counts: &Counts, reference: &Histogram<u64>) -> Self {
        if counts.is_empty() {
            return Self::default();
        }
        let total = counts.len();
        let at = |q: f64| {
            // Like hdrhistogram: the first value whose cumulative count
            // reaches the quantile's share, at the top of its bucket.
            let wanted = ((q.min(1.0) * total as f64).ceil() as u64).max(1);
            let mut seen = 0u64;
            for (value, count) in counts.iter() {
                seen += count;
                if seen >= wanted {
                    return reference.highest_equivalent(value) as f64;
                }
            }
            0.0
        };
        let max = counts.values.last().map_or(0, |(v, _)| *v);
        let mean = counts.iter().fold(0.0, |sum, (value, count)| {
            sum + reference.median_equivalent(value) as f64 * count as f64 / total as f64
        });
        Self {
            count: total,
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: reference.highest_equivalent(max) as f64,
            mean_us: mean,
        }
    }
}

/// The samples of one node.
#[derive(Debug)]
struct Series {
    /// Oldest first, at most [`HISTORY`].
    samples: VecDeque<Sample>,
    /// When the latest sample arrived (the control plane's clock: nodes'
    /// clocks may disagree with it).
    received: Instant,
}

/// The recent samples of every node that reported one.
#[derive(Debug, Default)]
pub struct MetricsBook {
    series: HashMap<NodeId, Series>,
}

impl MetricsBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `sample` as node `id`'s latest, received at `received`; the
    /// oldest beyond [`HISTORY`] is dropped.
    pub fn record(&mut self, id: NodeId, sample: Sample, received: Instant) {
        let series = self.series.entry(id).or_insert_with(|| Series {
            samples: VecDeque::with_capacity(HISTORY),
            received,
        });
        if series.samples.len() == HISTORY {
            series.samples.pop_front();
        }
        series.samples.push_back(sample);
        series.received = received;
    }

    /// Forgets node `id`'s samples; true if it had any.
    pub fn remove(&mut self, id: NodeId) -> bool {
        self.series.remove(&id).is_some()
    }

    /// Keeps only the samples of nodes for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(NodeId) -> bool) {
        self.series.retain(|id, _| keep(*id));
    }

    /// Nodes with samples.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Node `id`'s latest sample.
    #[cfg(test)]
    pub fn latest(&self, id: NodeId) -> Option<&Sample> {
        self.series.get(&id).and_then(|s| s.samples.back())
    }

    /// Node `id`'s kept samples, oldest first.
    pub fn history(&self, id: NodeId) -> Vec<Sample> {
        self.series
            .get(&id)
            .map(|s| s.samples.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What [`aggregate`] needs of each of `nodes`, taken at `now`: a node
    /// is reporting when its latest sample arrived within `fresh`. Cheap
    /// (histograms are shared bytes), so the lock is held briefly.
    pub fn snapshot(&self, nodes: Vec<NodeView>, now: Instant, fresh: Duration) -> Vec<NodeEntry> {
        nodes
            .into_iter()
            .map(|view| {
                let series = self.series.get(&view.id);
                let latest = series.and_then(|s| s.samples.back()).cloned();
                let previous = series.and_then(|s| {
                    let n = s.samples.len();
                    (n >= 2).then(|| &s.samples[n - 2])
                });
                let reporting =
                    series.is_some_and(|s| now.saturating_duration_since(s.received) <= fresh);
                NodeEntry {
                    previous: previous.map(|p| (p.requests, p.errors())),
                    latest,
                    reporting,
                    view,
                }
            })
            .collect()
    }
}

/// One node as an aggregate sees it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub view: NodeView,
    /// Its latest sample, however old.
    pub latest: Option<Sample>,
    /// Requests and errors of the sample before it: the interval's counts
    /// are the difference.
    pub previous: Option<(u64, u64)>,
    /// Whether the latest sample is recent enough to count.
    pub reporting: bool,
}

impl NodeEntry {
    /// Requests and failed requests of the latest sampling interval: the
    /// difference from the previous sample, or the totals when there is
    /// none or the counters went back (the node restarted).
    fn interval_counts(&self) -> (u64, u64) {
        let Some(latest) = &self.latest else {
            return (0, 0);
        };
        let (requests, errors) = (latest.requests, latest.errors());
        match self.previous {
            Some((r, e)) if r <= requests && e <= errors => (requests - r, errors - e),
            _ => (requests, errors),
        }
    }
}

/// One node's metrics in an aggregate.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    pub id: NodeId,
    pub name: String,
    pub group: String,
    pub state: NodeState,
    pub reporting: bool,
    pub sample: Option<Sample>,
    /// Percentiles of the sample's histogram.
    pub latency: Latency,
}

/// The farm, or a group, at one moment.
#[derive(Debug, Clone, Default)]
pub struct FarmAggregate {
    pub at: Option<SystemTime>,
    /// Registered nodes.
    pub nodes: u32,
    pub healthy_nodes: u32,
    /// Nodes whose latest sample is recent: every figure below is theirs.
    pub reporting_nodes: u32,
    pub cpu_percent_avg: f64,
    pub cpu_percent_max: f64,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub net_rx_bytes_per_second: f64,
    pub net_tx_bytes_per_second: f64,
    pub requests_per_second: f64,
    /// Since the nodes started.
    pub requests: u64,
    pub errors: u64,
    /// Failed share of the latest interval's requests: 0 to 1.
    pub error_rate: f64,
    /// The reporting nodes' latest histograms merged.
    pub latency: Latency,
    /// Histograms that could not be decoded and were left out.
    pub bad_histograms: u32,
    /// Every node, by id, when asked for.
    pub node_metrics: Vec<NodeMetrics>,
    /// Every node's load in columns, when asked for.
    pub loads: Option<NodeLoads>,
}

/// What an aggregate lists beside its totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Detail {
    /// Every node's metrics ([`FarmAggregate::node_metrics`]).
    pub nodes: bool,
    /// Every node's load in columns ([`FarmAggregate::loads`]).
    pub loads: bool,
}

impl Detail {
    /// The totals alone.
    pub const TOTALS: Self = Self {
        nodes: false,
        loads: false,
    };
    /// The totals and every node's metrics.
    pub const NODES: Self = Self {
        nodes: true,
        loads: false,
    };
}

/// The load of the nodes that have a sample, in columns (entry `i` of each
/// is node `ids[i]`'s), ordered by id: what a grid of thousands of nodes
/// needs, without their histograms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLoads {
    pub ids: Vec<NodeId>,
    /// CPU used, in percent of what the node may use.
    pub cpu_percent: Vec<f32>,
    pub memory_used_bytes: Vec<f64>,
    pub memory_limit_bytes: Vec<f64>,
    pub requests_per_second: Vec<f32>,
}

impl NodeLoads {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            cpu_percent: Vec::with_capacity(n),
            memory_used_bytes: Vec::with_capacity(n),
            memory_limit_bytes: Vec::with_capacity(n),
            requests_per_second: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, id: NodeId, sample: &Sample) {
        self.ids.push(id);
        self.cpu_percent.push(sample.cpu_percent as f32);
        self.memory_used_bytes.push(sample.memory_used_bytes as f64);
        self.memory_limit_bytes
            .push(sample.memory_limit_bytes as f64);
        self.requests_per_second
            .push(sample.requests_per_second as f32);
    }
}

/// One node's metrics: its latest sample and that sample's percentiles (a
/// histogram that does not decode gives none).
pub fn node_metrics(entry: NodeEntry) -> NodeMetrics {
    let latency = match (entry.latest.as_ref().map(Sample::latencies), reference()) {
        (Some(Ok(counts)), Some(reference)) => Latency::of_counts(&counts, &reference),
        _ => Latency::default(),
    };
    NodeMetrics {
        id: entry.view.id,
        name: entry.view.name,
        group: entry.view.group,
        state: entry.view.state,
        reporting: entry.reporting,
        sample: entry.latest,
        latency,
    }
}

/// Computes the aggregate of `entries` at `at`, with every node's metrics
/// or loads as `detail` asks.
pub fn aggregate(mut entries: Vec<NodeEntry>, at: SystemTime, detail: Detail) -> FarmAggregate {
    entries.sort_by_key(|e| e.view.id);
    let mut loads = detail
        .loads
        .then(|| NodeLoads::with_capacity(entries.len()));
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let mut farm = FarmAggregate {
        at: Some(at),
        nodes: count(entries.len()),
        healthy_nodes: count(
            entries
                .iter()
                .filter(|e| e.view.state == NodeState::Healthy)
                .count(),
        ),
        ..FarmAggregate::default()
    };
    // Grows to whatever range the nodes report; every node's values are
    // recorded into it directly, never through a histogram of their own.
    let Some(mut merged) = reference() else {
        return farm;
    };
    if let Some(loads) = &mut loads {
        for entry in &entries {
            if let Some(sample) = &entry.latest {
                loads.push(entry.view.id, sample);
            }
        }
    }
    farm.loads = loads;
    let (mut cpu_sum, mut interval_requests, mut interval_errors) = (0.0, 0u64, 0u64);
    for entry in entries {
        let counts = match entry.latest.as_ref().map(Sample::latencies) {
            Some(Ok(counts)) => counts,
            Some(Err(_)) => {
                farm.bad_histograms += 1;
                Counts::default()
            }
            None => Counts::default(),
        };
        if entry.reporting
            && let Some(sample) = &entry.latest
        {
            farm.reporting_nodes += 1;
            cpu_sum += sample.cpu_percent;
            farm.cpu_percent_max = farm.cpu_percent_max.max(sample.cpu_percent);
            farm.memory_used_bytes = farm
                .memory_used_bytes
                .saturating_add(sample.memory_used_bytes);
            farm.memory_limit_bytes = farm
                .memory_limit_bytes
                .saturating_add(sample.memory_limit_bytes);
            farm.net_rx_bytes_per_second += sample.net_rx_bytes_per_second;
            farm.net_tx_bytes_per_second += sample.net_tx_bytes_per_second;
            farm.requests_per_second += sample.requests_per_second;
            farm.requests = farm.requests.saturating_add(sample.requests);
            farm.errors = farm.errors.saturating_add(sample.errors());
            let (requests, errors) = entry.interval_counts();
            interval_requests = interval_requests.saturating_add(requests);
            interval_errors = interval_errors.saturating_add(errors);
            for (value, count) in counts.iter() {
                if merged.record_n(value, count).is_err() {
                    farm.bad_histograms += 1;
                    break;
                }
            }
        }
        if detail.nodes {
            farm.node_metrics.push(NodeMetrics {
                id: entry.view.id,
                name: entry.view.name,
                group: entry.view.group,
                state: entry.view.state,
                reporting: entry.reporting,
                latency: Latency::of_counts(&counts, &merged),
                sample: entry.latest,
            });
        }
    }
    if farm.reporting_nodes > 0 {
        farm.cpu_percent_avg = cpu_sum / f64::from(farm.reporting_nodes);
    }
    if interval_requests > 0 {
        farm.error_rate =
            (interval_errors.min(interval_requests) as f64) / interval_requests as f64;
    }
    farm.latency = Latency::of(&merged);
    farm
}

/// An empty histogram of the merged shape (it resizes itself): what
/// values are recorded into, and what says which values share a bucket.
fn reference() -> Option<Histogram<u64>> {
    Histogram::new(MERGED_SIGNIFICANT_FIGURES).ok()
}

/// How recent a sample must be to count: [`REPORTING_TIMEOUTS`] heartbeat
/// timeouts.
pub fn freshness(heartbeat_timeout: Duration) -> Duration {
    heartbeat_timeout.saturating_mul(REPORTING_TIMEOUTS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use farm_api::node::{LATENCY_SIGNIFICANT_FIGURES, MAX_LATENCY_US};
    use hdrhistogram::serialization::{Serializer, V2Serializer};

    use super::*;

    /// `values` in a histogram shaped as a node's, serialised as it sends it.
    fn histogram(values: &[u64]) -> Bytes {
        let mut h =
            Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, LATENCY_SIGNIFICANT_FIGURES)
                .expect("histogram");
        for v in values {
            h.record(*v).expect("record");
        }
        let mut out = Vec::new();
        V2Serializer::new()
            .serialize(&h, &mut out)
            .expect("serialize");
        out.into()
    }

    fn view(id: u64, state: NodeState) -> NodeView {
        NodeView {
            id: NodeId(id),
            name: format!("node-{id}"),
            address: "127.0.0.1:1".into(),
            group: "default".into(),
            labels: BTreeMap::new(),
            state,
            reason: String::new(),
            config_version: 0,
            registered_at: SystemTime::UNIX_EPOCH,
            last_heartbeat: None,
            managed: false,
            runtime_id: String::new(),
            starts: 0,
            leader: false,
            host: String::new(),
        }
    }

    fn sample(cpu: f64, memory: u64, requests: u64, errors: u64, latencies: &[u64]) -> Sample {
        Sample {
            cpu_percent: cpu,
            memory_used_bytes: memory,
            memory_limit_bytes: 1000,
            net_rx_bytes_per_second: 10.0,
            net_tx_bytes_per_second: 20.0,
            requests,
            requests_per_second: requests as f64,
            errors_by_code: if errors > 0 {
                BTreeMap::from([(13, errors)])
            } else {
                BTreeMap::new()
            },
            latency_histogram: histogram(latencies),
            interval_ms: 1000,
            ..Sample::default()
        }
    }

    const FRESH: Duration = Duration::from_secs(3);

    #[test]
    fn history_keeps_the_last_sixty_samples() {
        let mut book = MetricsBook::new();
        let t = Instant::now();
        for i in 0..100 {
            book.record(NodeId(1), sample(i as f64 % 100.0, i, i, 0, &[]), t);
        }
        let history = book.history(NodeId(1));
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0].memory_used_bytes, 40);
        assert_eq!(
            book.latest(NodeId(1)).map(|s| s.memory_used_bytes),
            Some(99)
        );
        assert!(book.remove(NodeId(1)));
        assert!(book.history(NodeId(1)).is_empty());
        assert!(!book.remove(NodeId(1)));
    }

    #[test]
    fn aggregate_sums_averages_and_merges() {
        let mut book = MetricsBook::new();
        let t = Instant::now();
        book.record(NodeId(1), sample(10.0, 100, 50, 5, &[100, 200, 300]), t);
        book.record(NodeId(2), sample(30.0, 300, 150, 0, &[1000]), t);
        // Silent for too long: not reporting, left out of every figure.
        book.record(NodeId(3), sample(90.0, 900, 900, 900, &[5]), t);
        let nodes = vec![
            view(1, NodeState::Healthy),
            view(2, NodeState::Healthy),
            view(3, NodeState::Unhealthy),
            view(4, NodeState::Starting),
        ];
        let mut entries = book.snapshot(nodes, t + Duration::from_secs(1), FRESH);
        entries[2].reporting = false;
        let farm = aggregate(entries, SystemTime::UNIX_EPOCH, Detail::NODES);
        assert_eq!(farm.nodes, 4);
        assert_eq!(farm.healthy_nodes, 2);
        assert_eq!(farm.reporting_nodes, 2);
        assert_eq!(farm.cpu_percent_avg, 20.0);
        assert_eq!(farm.cpu_percent_max, 30.0);
        assert_eq!(farm.memory_used_bytes, 400);
        assert_eq!(farm.memory_limit_bytes, 2000);
        assert_eq!(farm.net_rx_bytes_per_second, 20.0);
        assert_eq!(farm.net_tx_bytes_per_second, 40.0);
        assert_eq!(farm.requests_per_second, 200.0);
        assert_eq!(farm.requests, 200);
        assert_eq!(farm.errors, 5);
        assert_eq!(farm.error_rate, 5.0 / 200.0);
        assert_eq!(farm.latency.count, 4);
        assert_eq!(farm.latency.max_us, 1000.0);
        assert!(
            (199.0..=201.0).contains(&farm.latency.p50_us),
            "{:?}",
            farm.latency
        );
        assert_eq!(farm.bad_histograms, 0);
        assert_eq!(farm.node_metrics.len(), 4);
        assert_eq!(farm.node_metrics[0].latency.count, 3);
        assert!(farm.node_metrics[3].sample.is_none());
        assert!(!farm.node_metrics[2].reporting);
    }

    #[test]
    fn reporting_means_a_recent_sample() {
        let mut book = MetricsBook::new();
        let t = Instant::now();
        book.record(NodeId(1), sample(10.0, 1, 1, 0, &[]), t);
        let nodes = || vec![view(1, NodeState::Healthy)];
        assert!(book.snapshot(nodes(), t + FRESH, FRESH)[0].reporting);
        let late = book.snapshot(nodes(), t + FRESH + Duration::from_millis(1), FRESH);
        assert!(!late[0].reporting);
        assert_eq!(
            aggregate(late, SystemTime::UNIX_EPOCH, Detail::TOTALS).reporting_nodes,
            0
        );
    }

    #[test]
    fn error_rate_covers_the_latest_interval() {
        let mut book = MetricsBook::new();
        let t = Instant::now();
        book.record(NodeId(1), sample(0.0, 0, 1000, 500, &[]), t);
        book.record(NodeId(1), sample(0.0, 0, 1100, 510, &[]), t);
        let farm = aggregate(
            book.snapshot(vec![view(1, NodeState::Healthy)], t, FRESH),
            SystemTime::UNIX_EPOCH,
            Detail::TOTALS,
        );
        assert_eq!(farm.error_rate, 0.1);
        // A restarted node's counters start again from zero.
        book.record(NodeId(1), sample(0.0, 0, 10, 5, &[]), t);
        let farm = aggregate(
            book.snapshot(vec![view(1, NodeState::Healthy)], t, FRESH),
            SystemTime::UNIX_EPOCH,
            Detail::TOTALS,
        );
        assert_eq!(farm.error_rate, 0.5);
    }

    #[test]
    fn bad_histograms_are_refused_before_allocating() {
        assert_eq!(decode(&[]), Ok(Counts::default()));
        assert_eq!(
            decode(b"not a histogram at all"),
            Err(HistogramError::NotV2)
        );
        let good = histogram(&[1, 2, 3]);
        let mut lying = good.to_vec();
        lying[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&lying), Err(HistogramError::NotV2));
        let mut precise = good.to_vec();
        precise[12..16].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(decode(&precise), Err(HistogramError::TooPrecise(5)));
        let mut corrupt = good.to_vec();
        corrupt.truncate(V2_HEADER + 1);
        corrupt[4..8].copy_from_slice(&1u32.to_be_bytes());
        corrupt[V2_HEADER] = 0xff;
        assert!(decode(&corrupt).is_err());
        assert_eq!(
            decode(&vec![0; MAX_HISTOGRAM_BYTES + 1]),
            Err(HistogramError::TooLarge(MAX_HISTOGRAM_BYTES + 1))
        );
        assert_eq!(decode(&good).expect("decodes").len(), 3);
        assert!(decode(&histogram(&[])).expect("decodes").is_empty());
        // A run of empty buckets past any value is refused, not wrapped.
        let mut far = good[..V2_HEADER].to_vec();
        // -(2^40) zig-zagged, then a count of 1.
        let mut run = (1u64 << 41) - 1;
        while run >= 0x80 {
            far.push((run as u8 & 0x7f) | 0x80);
            run >>= 7;
        }
        far.push(run as u8);
        far.push(2);
        let payload = (far.len() - V2_HEADER) as u32;
        far[4..8].copy_from_slice(&payload.to_be_bytes());
        assert!(
            matches!(decode(&far), Err(HistogramError::Corrupt(_))),
            "{:?}",
            decode(&far)
        );

        let mut book = MetricsBook::new();
        let t = Instant::now();
        let mut bad = sample(1.0, 1, 1, 0, &[]);
        bad.latency_histogram =
            Bytes::from_static(b"garbage garbage garbage garbage garbage garbage");
        book.record(NodeId(1), bad, t);
        book.record(NodeId(2), sample(1.0, 1, 1, 0, &[7]), t);
        let farm = aggregate(
            book.snapshot(
                vec![view(1, NodeState::Healthy), view(2, NodeState::Healthy)],
                t,
                FRESH,
            ),
            SystemTime::UNIX_EPOCH,
            Detail::TOTALS,
        );
        assert_eq!(farm.bad_histograms, 1);
        assert_eq!(farm.latency.count, 1);
        assert_eq!(farm.reporting_nodes, 2);
    }

    /// Decoding without a histogram gives what hdrhistogram's own
    /// deserializer and merge give, to the bucket.
    #[test]
    fn counts_match_hdrhistogram() {
        use hdrhistogram::serialization::Deserializer;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let reference = reference().expect("histogram");
        let mut merged_by_add = Histogram::<u64>::new(3).expect("histogram");
        let mut merged = Histogram::<u64>::new(3).expect("histogram");
        for round in 0..40 {
            // Spreads from microseconds to a minute, some empty.
            let n = next() % 500;
            let scale = 1 + next() % MAX_LATENCY_US;
            let values: Vec<u64> = (0..n).map(|_| 1 + next() % scale).collect();
            let bytes = histogram(&values);
            let counts = decode(&bytes).expect("decodes");
            let decoded: Histogram<u64> = Deserializer::new()
                .deserialize(&mut &bytes[..])
                .expect("deserializes");
            assert_eq!(counts.len(), decoded.len(), "round {round}");
            let expected = if decoded.is_empty() {
                Latency::default()
            } else {
                Latency::of(&decoded)
            };
            let got = Latency::of_counts(&counts, &reference);
            assert_eq!(
                (
                    got.count,
                    got.p50_us,
                    got.p90_us,
                    got.p99_us,
                    got.p999_us,
                    got.max_us
                ),
                (
                    expected.count,
                    expected.p50_us,
                    expected.p90_us,
                    expected.p99_us,
                    expected.p999_us,
                    expected.max_us
                ),
                "round {round}"
            );
            assert!((got.mean_us - expected.mean_us).abs() <= 1e-6 * expected.mean_us.max(1.0));
            merged_by_add.add(&decoded).expect("add");
            for (value, count) in counts.iter() {
                merged.record_n(value, count).expect("record");
            }
            assert_eq!(
                Latency::of(&merged),
                Latency::of(&merged_by_add),
                "round {round}"
            );
        }
        assert!(merged.len() > 1000);
    }

    #[test]
    fn sanitizing_keeps_figures_usable() {
        let s = Sample {
            cpu_percent: 250.0,
            cpu_limit: f64::NAN,
            requests_per_second: -3.0,
            net_rx_bytes_per_second: f64::INFINITY,
            latency_histogram: Bytes::from(vec![0; MAX_HISTOGRAM_BYTES + 1]),
            ..Sample::default()
        }
        .sanitized();
        assert_eq!(s.cpu_percent, 100.0);
        assert_eq!(s.cpu_limit, 0.0);
        assert_eq!(s.requests_per_second, 0.0);
        assert_eq!(s.net_rx_bytes_per_second, 0.0);
        assert!(s.latency_histogram.is_empty());
    }

    #[test]
    fn retain_drops_forgotten_nodes() {
        let mut book = MetricsBook::new();
        let t = Instant::now();
        for id in 1..=3 {
            book.record(NodeId(id), Sample::default(), t);
        }
        book.retain(|id| id != NodeId(2));
        assert_eq!(book.len(), 2);
        assert!(book.latest(NodeId(2)).is_none());
    }
}
