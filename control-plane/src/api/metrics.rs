//! `farm.v1.Metrics`: the farm's aggregate, one node's recent samples, and
//! a stream of farm snapshots for dashboards. Also the translation of the
//! samples nodes send on their heartbeat streams into the domain's
//! [`Sample`].

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime},
};

use farm_api::v1::{
    self, FarmMetrics, GetFarmHistoryRequest, GetFarmHistoryResponse, GetFarmMetricsRequest,
    GetNodeMetricsRequest, GetNodeMetricsResponse, WatchMetricsRequest, metrics_server::Metrics,
};
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Request, Response, Status};

use super::{ApiError, BadRequest, resolve_node, timestamp};
use crate::{
    core::{
        DomainError,
        metrics::{Detail, FarmAggregate, Latency, NodeLoads, NodeMetrics, Sample},
    },
    state::{Members, Samples},
};

/// `WatchMetrics` interval when the request gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Shortest and longest `WatchMetrics` interval, in milliseconds.
const MIN_INTERVAL_MS: u32 = 100;
const MAX_INTERVAL_MS: u32 = 60_000;
/// How long a feed keeps running after its last stream ended: a dashboard
/// reloaded, or opened again, finds its latest snapshot at once instead of
/// waiting for a first one (at 10,000 nodes the longest part of opening
/// it on a busy machine).
const LINGER: Duration = Duration::from_secs(10);

/// How far back `GetFarmHistory` goes, and how many points it keeps at most.
const HISTORY_SPAN: Duration = Duration::from_secs(600);
const HISTORY_POINTS: usize = 600;

/// The whole farm's figures over the last ten minutes, for
/// `GetFarmHistory`: a dashboard opened now draws them before its
/// `WatchMetrics` stream adds the seconds that follow.
#[derive(Debug, Clone, Default)]
pub struct FarmHistory {
    /// Oldest first, with when each was taken.
    points: Arc<Mutex<VecDeque<(Instant, FarmMetrics)>>>,
}

impl FarmHistory {
    /// Takes a point every `every` (without per-node detail: at 10,000
    /// nodes one costs some 50 ms of CPU) until `shutdown`.
    pub async fn record(self, samples: Samples, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match farm_metrics(&samples, "", Detail::default()).await {
                Ok(point) => self.push(Instant::now(), point),
                Err(error) => tracing::warn!(%error, "the farm's history skipped a point"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, FarmMetrics)>> {
        // Each change leaves the list whole, whatever panicked.
        self.points.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, taken: Instant, point: FarmMetrics) {
        let mut points = self.lock();
        points.push_back((taken, point));
        while points.len() > HISTORY_POINTS
            || points
                .front()
                .is_some_and(|(at, _)| taken.duration_since(*at) > HISTORY_SPAN)
        {
            points.pop_front();
        }
    }

    /// The points kept, oldest first.
    fn points(&self) -> Vec<FarmMetrics> {
        self.lock().iter().map(|(_, point)| point.clone()).collect()
    }
}

/// The Metrics service.
#[derive(Debug, Clone)]
pub struct MetricsService {
    samples: Samples,
    /// Resolves the nodes callers name.
    members: Members,
    /// Cancelled at shutdown: watch streams end with UNAVAILABLE.
    shutdown: CancellationToken,
    /// The snapshot feeds `WatchMetrics` streams share.
    feeds: Feeds,
    history: FarmHistory,
}

impl MetricsService {
    pub fn new(
        samples: Samples,
        members: Members,
        history: FarmHistory,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            samples,
            members,
            shutdown,
            feeds: Feeds::default(),
            history,
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

/// The aggregate of `group` as a message, computed on a blocking thread:
/// at thousands of nodes decoding and merging their histograms, and
/// writing out every node, takes milliseconds.
async fn farm_metrics(
    samples: &Samples,
    group: &str,
    detail: Detail,
) -> Result<FarmMetrics, ApiError> {
    let (samples, group) = (samples.clone(), group.to_owned());
    tokio::task::spawn_blocking(move || samples.farm_with(&group, detail).map(farm_message))
        .await
        .map_err(|e| ApiError::Task {
            what: "the metrics task",
            cause: e.to_string(),
        })?
        .map_err(ApiError::from)
}

/// What a `WatchMetrics` stream follows: every stream asking for the same
/// group, interval and detail shares one feed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FeedKey {
    group: String,
    period: Duration,
    detail: Detail,
}

/// One snapshot of a feed, shared by all its streams.
#[derive(Debug)]
struct Snapshot {
    farm: FarmMetrics,
    /// Why the group could not be aggregated (it is unknown, or was
    /// purged): the farm is then empty. A stream that would start on such
    /// a snapshot fails instead.
    refused: Option<DomainError>,
}

/// A running feed: one task computing a snapshot every interval and
/// publishing it on a watch channel, so a slow stream skips to the latest
/// instead of queueing. Its streams hold it; it stops [`LINGER`] after the
/// last one ended.
#[derive(Debug)]
struct Feed {
    key: FeedKey,
    /// `None` until the first snapshot is computed.
    latest: watch::Receiver<Option<Arc<Snapshot>>>,
    feeds: Feeds,
    /// Stops the task when the feed is dropped.
    _stop: DropGuard,
}

impl Drop for Feed {
    fn drop(&mut self) {
        let mut running = self.feeds.lock();
        // A feed for the same key started since this one lost its last
        // stream must stay.
        if running
            .get(&self.key)
            .is_some_and(|feed| feed.strong_count() == 0)
        {
            running.remove(&self.key);
        }
    }
}

/// The running feeds, by what they follow.
#[derive(Debug, Clone, Default)]
struct Feeds {
    running: Arc<Mutex<HashMap<FeedKey, Weak<Feed>>>>,
}

impl Feeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FeedKey, Weak<Feed>>> {
        // The map stays consistent whatever panicked while holding it.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The feed of `key`, started if none runs.
    fn join(&self, key: FeedKey, samples: &Samples, shutdown: &CancellationToken) -> Arc<Feed> {
        let mut running = self.lock();
        if let Some(feed) = running.get(&key).and_then(Weak::upgrade) {
            return feed;
        }
        let (tx, latest) = watch::channel(None);
        let stop = CancellationToken::new();
        let feed = Arc::new(Feed {
            key: key.clone(),
            latest,
            feeds: self.clone(),
            _stop: stop.clone().drop_guard(),
        });
        running.insert(key.clone(), Arc::downgrade(&feed));
        tokio::spawn(run_feed(samples.clone(), key, tx, stop, shutdown.clone()));
        feed
    }
}

/// A feed's task: a snapshot at once, then one every interval, until the
/// feed is dropped or the control plane shuts down (which drops `tx`, and
/// so ends the streams).
async fn run_feed(
    samples: Samples,
    key: FeedKey,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(key.period);
    // Late by more than an interval (a busy machine): the next snapshot an
    // interval after the late one, not a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
            () = shutdown.cancelled() => return,
        }
        let snapshot = match farm_metrics(&samples, &key.group, key.detail).await {
            Ok(farm) => Snapshot {
                farm,
                refused: None,
            },
            Err(error) => Snapshot {
                farm: FarmMetrics {
                    at: Some(timestamp(SystemTime::now())),
                    ..FarmMetrics::default()
                },
                refused: match error {
                    ApiError::Domain(refused) => Some(refused),
                    _ => None,
                },
            },
        };
        tx.send_replace(Some(Arc::new(snapshot)));
    }
}

/// Keeps a feed running while a stream lives, and for [`LINGER`] after
/// (less when the control plane shuts down first).
struct Lease {
    feed: Option<Arc<Feed>>,
    shutdown: CancellationToken,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (Some(feed), Ok(runtime)) = (self.feed.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let shutdown = self.shutdown.clone();
        runtime.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = shutdown.cancelled() => {}
            }
            drop(feed);
        });
    }
}

/// What a `WatchMetrics` stream holds between two snapshots.
struct Watcher {
    /// Keeps the feed running; its token ends the stream at shutdown.
    lease: Lease,
    latest: watch::Receiver<Option<Arc<Snapshot>>>,
}

impl Watcher {
    /// The next snapshot (the newest, however many were skipped), or
    /// UNAVAILABLE at shutdown.
    async fn next(mut self) -> Option<(Result<FarmMetrics, Status>, Option<Self>)> {
        let shut = || Some((Err(ApiError::ShuttingDown.into()), None));
        tokio::select! {
            biased;
            () = self.lease.shutdown.cancelled() => shut(),
            changed = self.latest.changed() => match changed {
                Ok(()) => {
                    let snapshot = self.latest.borrow_and_update().clone();
                    let farm = snapshot.map(|s| s.farm.clone()).unwrap_or_default();
                    Some((Ok(farm), Some(self)))
                }
                // The feed stopped: only shutdown does that to a watched one.
                Err(_) => shut(),
            },
        }
    }
}

#[tonic::async_trait]
impl Metrics for MetricsService {
    async fn get_farm_metrics(
        &self,
        request: Request<GetFarmMetricsRequest>,
    ) -> Result<Response<FarmMetrics>, Status> {
        let request = request.into_inner();
        let detail = Detail {
            nodes: request.include_nodes,
            loads: request.include_loads,
        };
        let farm = farm_metrics(&self.samples, &request.group, detail).await?;
        Ok(Response::new(farm))
    }

    async fn get_farm_history(
        &self,
        _request: Request<GetFarmHistoryRequest>,
    ) -> Result<Response<GetFarmHistoryResponse>, Status> {
        Ok(Response::new(GetFarmHistoryResponse {
            points: self.history.points(),
        }))
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
        let key = FeedKey {
            period: watch_interval(request.interval_ms)?,
            group: request.group,
            detail: Detail {
                nodes: request.include_nodes,
                loads: request.include_loads,
            },
        };
        let feed = self.feeds.join(key, &self.samples, &self.shutdown);
        let mut latest = feed.latest.clone();
        // The first snapshot at once: the feed's latest, or its first when
        // it has just started. An unknown group fails the call itself.
        let first = tokio::select! {
            first = latest.wait_for(Option::is_some) => first.ok().and_then(|s| s.clone()),
            () = self.shutdown.cancelled() => None,
        };
        let first = first.ok_or(ApiError::ShuttingDown)?;
        if let Some(refused) = &first.refused {
            return Err(ApiError::from(refused.clone()).into());
        }
        latest.borrow_and_update();
        let watcher = Watcher {
            lease: Lease {
                feed: Some(feed),
                shutdown: self.shutdown.clone(),
            },
            latest,
        };
        let head = futures::stream::once(std::future::ready(Ok(first.farm.clone())));
        let rest =
            futures::stream::unfold(
                Some(watcher),
                |watcher| async move { watcher?.next().await },
            );
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            head, rest,
        ))))
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
        loads: farm.loads.map(loads_message),
    }
}

fn loads_message(loads: NodeLoads) -> v1::NodeLoads {
    v1::NodeLoads {
        node_ids: loads.ids.iter().map(ToString::to_string).collect(),
        cpu_percent: loads.cpu_percent,
        memory_used_bytes: loads.memory_used_bytes,
        memory_limit_bytes: loads.memory_limit_bytes,
        requests_per_second: loads.requests_per_second,
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
