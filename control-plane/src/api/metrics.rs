//! `farm.v1.Metrics`: the farm's aggregate, one node's recent samples, and
//! a stream of farm snapshots for dashboards. Also the translation of the
//! samples nodes send on their heartbeat streams into the domain's
//! [`Sample`].

use std::{pin::Pin, time::Duration, time::SystemTime};

use farm_api::v1::{
    self, FarmMetrics, GetFarmMetricsRequest, GetNodeMetricsRequest, GetNodeMetricsResponse,
    WatchMetricsRequest, metrics_server::Metrics,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{ApiError, BadRequest, resolve_node, timestamp};
use crate::{
    core::metrics::{FarmAggregate, Latency, NodeMetrics, Sample},
    state::{Members, Samples},
};

/// `WatchMetrics` interval when the request gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Shortest and longest `WatchMetrics` interval, in milliseconds.
const MIN_INTERVAL_MS: u32 = 100;
const MAX_INTERVAL_MS: u32 = 60_000;

/// The Metrics service.
#[derive(Debug, Clone)]
pub struct MetricsService {
    samples: Samples,
    /// Resolves the nodes callers name.
    members: Members,
    /// Cancelled at shutdown: watch streams end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl MetricsService {
    pub fn new(samples: Samples, members: Members, shutdown: CancellationToken) -> Self {
        Self {
            samples,
            members,
            shutdown,
        }
    }
}

/// The snapshot interval a `WatchMetrics` request asks for.
fn watch_interval(interval_ms: u32) -> Result<Duration, BadRequest> {
    match interval_ms {
        0 => Ok(DEFAULT_INTERVAL),
        ms if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) => {
            Ok(Duration::from_millis(u64::from(ms)))
        }
        ms => Err(BadRequest::out_of_range(
            "interval_ms",
            ms,
            format!("between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS} (or 0 for 1000)"),
        )),
    }
}

/// The aggregate of `group`, computed on a blocking thread: at thousands
/// of nodes decoding and merging their histograms takes milliseconds.
async fn farm_metrics(
    samples: &Samples,
    group: &str,
    include_nodes: bool,
) -> Result<FarmAggregate, ApiError> {
    let (samples, group) = (samples.clone(), group.to_owned());
    tokio::task::spawn_blocking(move || samples.farm(&group, include_nodes))
        .await
        .map_err(|e| ApiError::Task {
            what: "the metrics task",
            cause: e.to_string(),
        })?
        .map_err(ApiError::from)
}

#[tonic::async_trait]
impl Metrics for MetricsService {
    async fn get_farm_metrics(
        &self,
        request: Request<GetFarmMetricsRequest>,
    ) -> Result<Response<FarmMetrics>, Status> {
        let request = request.into_inner();
        let farm = farm_metrics(&self.samples, &request.group, request.include_nodes).await?;
        Ok(Response::new(farm_message(farm)))
    }

    async fn get_node_metrics(
        &self,
        request: Request<GetNodeMetricsRequest>,
    ) -> Result<Response<GetNodeMetricsResponse>, Status> {
        let id = resolve_node(&self.members, "node_id", &request.get_ref().node_id)?;
        let (node, history) = self.samples.node(id)?;
        Ok(Response::new(GetNodeMetricsResponse {
            node: Some(node_message(node)),
            history: history.iter().map(sample_message).collect(),
        }))
    }

    type WatchMetricsStream =
        Pin<Box<dyn Stream<Item = Result<FarmMetrics, Status>> + Send + 'static>>;

    async fn watch_metrics(
        &self,
        request: Request<WatchMetricsRequest>,
    ) -> Result<Response<Self::WatchMetricsStream>, Status> {
        let request = request.into_inner();
        let period = watch_interval(request.interval_ms)?;
        // The first snapshot now: an unknown group fails the call itself.
        let first = farm_metrics(&self.samples, &request.group, request.include_nodes).await?;
        let (tx, rx) = mpsc::channel(1);
        let samples = self.samples.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            // A slow reader gets the next snapshot an interval after the
            // one it took, not a burst of stale ones.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut next = Some(first);
            loop {
                let farm = match next.take() {
                    Some(farm) => farm,
                    // A group purged since the watch began is an empty farm.
                    None => farm_metrics(&samples, &request.group, request.include_nodes)
                        .await
                        .unwrap_or_else(|_| FarmAggregate {
                            at: Some(SystemTime::now()),
                            ..FarmAggregate::default()
                        }),
                };
                if tx.send(Ok(farm_message(farm))).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => {
                        let _ = tx
                            .send(Err(ApiError::ShuttingDown.into()))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The domain's copy of a sample a node sent at `received` (when the
/// node's own time is missing or unusable).
pub(super) fn sample_from_message(message: v1::NodeSample, received: SystemTime) -> Sample {
    let at = message
        .at
        .and_then(|at| SystemTime::try_from(at).ok())
        .unwrap_or(received);
    Sample {
        at,
        cpu_percent: message.cpu_percent,
        cpu_limit: message.cpu_limit,
        memory_used_bytes: message.memory_used_bytes,
        memory_limit_bytes: message.memory_limit_bytes,
        rss_bytes: message.rss_bytes,
        disk_used_bytes: message.disk_used_bytes,
        disk_total_bytes: message.disk_total_bytes,
        net_rx_bytes: message.net_rx_bytes,
        net_tx_bytes: message.net_tx_bytes,
        net_rx_bytes_per_second: message.net_rx_bytes_per_second,
        net_tx_bytes_per_second: message.net_tx_bytes_per_second,
        requests: message.requests,
        errors_by_code: message.errors_by_code.into_iter().collect(),
        requests_per_second: message.requests_per_second,
        latency_histogram: message.latency_histogram.into(),
        interval_ms: message.interval_ms,
    }
    .sanitized()
}

fn sample_message(sample: &Sample) -> v1::NodeSample {
    v1::NodeSample {
        at: Some(timestamp(sample.at)),
        cpu_percent: sample.cpu_percent,
        cpu_limit: sample.cpu_limit,
        memory_used_bytes: sample.memory_used_bytes,
        memory_limit_bytes: sample.memory_limit_bytes,
        rss_bytes: sample.rss_bytes,
        disk_used_bytes: sample.disk_used_bytes,
        disk_total_bytes: sample.disk_total_bytes,
        net_rx_bytes: sample.net_rx_bytes,
        net_tx_bytes: sample.net_tx_bytes,
        net_rx_bytes_per_second: sample.net_rx_bytes_per_second,
        net_tx_bytes_per_second: sample.net_tx_bytes_per_second,
        requests: sample.requests,
        errors_by_code: sample
            .errors_by_code
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect(),
        requests_per_second: sample.requests_per_second,
        latency_histogram: sample.latency_histogram.to_vec(),
        interval_ms: sample.interval_ms,
    }
}

fn latency_message(latency: Latency) -> v1::LatencySummary {
    v1::LatencySummary {
        count: latency.count,
        p50_us: latency.p50_us,
        p90_us: latency.p90_us,
        p99_us: latency.p99_us,
        p999_us: latency.p999_us,
        max_us: latency.max_us,
    }
}

fn node_message(node: NodeMetrics) -> v1::NodeMetrics {
    v1::NodeMetrics {
        node_id: node.id.to_string(),
        name: node.name,
        group: node.group,
        sample: node.sample.as_ref().map(sample_message),
        latency: Some(latency_message(node.latency)),
    }
}

fn farm_message(farm: FarmAggregate) -> FarmMetrics {
    FarmMetrics {
        at: farm.at.map(timestamp),
        nodes: farm.nodes,
        healthy_nodes: farm.healthy_nodes,
        reporting_nodes: farm.reporting_nodes,
        cpu_percent_avg: farm.cpu_percent_avg,
        cpu_percent_max: farm.cpu_percent_max,
        memory_used_bytes: farm.memory_used_bytes,
        memory_limit_bytes: farm.memory_limit_bytes,
        net_rx_bytes_per_second: farm.net_rx_bytes_per_second,
        net_tx_bytes_per_second: farm.net_tx_bytes_per_second,
        requests_per_second: farm.requests_per_second,
        requests: farm.requests,
        errors: farm.errors,
        error_rate: farm.error_rate,
        latency: Some(latency_message(farm.latency)),
        node_metrics: farm.node_metrics.into_iter().map(node_message).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_outside_the_range_are_refused() {
        assert_eq!(watch_interval(0).ok(), Some(DEFAULT_INTERVAL));
        assert_eq!(watch_interval(100).ok(), Some(Duration::from_millis(100)));
        assert_eq!(watch_interval(60_000).ok(), Some(Duration::from_secs(60)));
        for ms in [1, 99, 60_001, u32::MAX] {
            let err = watch_interval(ms).expect_err("out of range");
            assert!(
                matches!(
                    err,
                    BadRequest::OutOfRange {
                        field: "interval_ms",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn samples_survive_the_round_trip_and_bad_figures_are_cleaned() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let message = v1::NodeSample {
            at: Some(timestamp(at)),
            cpu_percent: 42.5,
            memory_used_bytes: 7,
            requests: 10,
            errors_by_code: [(13, 2)].into_iter().collect(),
            requests_per_second: f64::NAN,
            latency_histogram: vec![1, 2, 3],
            interval_ms: 1000,
            ..Default::default()
        };
        let sample = sample_from_message(message.clone(), SystemTime::UNIX_EPOCH);
        assert_eq!(sample.at, at);
        assert_eq!(sample.errors(), 2);
        assert_eq!(sample.requests_per_second, 0.0);
        let back = sample_message(&sample);
        assert_eq!(
            back,
            v1::NodeSample {
                requests_per_second: 0.0,
                ..message
            }
        );
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let undated = sample_from_message(v1::NodeSample::default(), received);
        assert_eq!(undated.at, received);
    }
}
