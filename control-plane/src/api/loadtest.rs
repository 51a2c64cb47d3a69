//! `farm.v1.LoadTest`: load tests run inside the control plane with the
//! `loadgen` engine against the farm's own healthy nodes, streamed as they
//! go: the targets, one progress event per measured second, and the final
//! report.
//!
//! One load test runs at a time per control plane (a second caller gets
//! RESOURCE_EXHAUSTED): a run saturates the nodes, and two at once would
//! measure each other. The run stops early when its caller goes away
//! (cancels, or drops the connection) and when the control plane shuts
//! down; the caller still connected then gets the partial report.

use std::{collections::HashSet, pin::Pin, sync::Arc, time::Duration};

use farm_api::v1::{
    LatencyPercentiles, LoadMode, LoadTestEvent, LoadTestProgress, LoadTestReport, LoadTestRequest,
    LoadTestStarted, PercentilePoint, load_test_event::Event, load_test_server::LoadTest,
};
use futures::Stream;
use loadgen::{Mode, Percentiles, Report, RunConfig, RunError, Thresholds, report::Interval};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{ApiError, BadRequest, resolve_node};
use crate::{
    core::{NodeState, NodeView},
    state::Members,
};

/// Longest measurement and longest warm-up a run may ask for.
const MAX_DURATION_MS: u32 = 10 * 60 * 1000;
/// Most requests in flight a run may ask for.
const MAX_CONCURRENCY: u32 = 10_000;
/// Most connections per target, and streams per connection.
const MAX_CONNECTIONS: u32 = 100;
const MAX_STREAMS: u32 = 100;
/// Largest request payload and response a run may ask for: what a node
/// accepts (its responses must fit gRPC's default 4 MiB message limit).
const MAX_BYTES: u32 = farm_api::node::MAX_RESPONSE_BYTES;
/// Longest delay a node accepts, in milliseconds.
const MAX_DELAY_MS: u32 = farm_api::node::MAX_DELAY_MS;
/// Status code of requested failures when the request names none.
const DEFAULT_FAIL_CODE: u32 = tonic::Code::Unavailable as u32;

/// The LoadTest service.
#[derive(Debug, Clone)]
pub struct LoadTestService {
    members: Members,
    /// Cancelled at shutdown: a running load test stops and reports.
    shutdown: CancellationToken,
    /// One permit: held by the running load test until its engine has
    /// returned, shared by every clone of the service.
    running: Arc<Semaphore>,
}

impl LoadTestService {
    pub fn new(members: Members, shutdown: CancellationToken) -> Self {
        Self {
            members,
            shutdown,
            running: Arc::new(Semaphore::new(1)),
        }
    }

    /// Resolves once no load test runs: its engine has returned and its
    /// report (or error) is queued for its caller.
    pub async fn idle(&self) {
        // The semaphore is never closed, so acquiring only waits.
        let _ = self.running.acquire().await;
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<LoadTestEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl LoadTest for LoadTestService {
    type RunStream = EventStream;

    async fn run(
        &self,
        request: Request<LoadTestRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let request = request.into_inner();
        check(&request)?;
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown.into());
        }
        let permit = Arc::clone(&self.running)
            .try_acquire_owned()
            .map_err(|_| ApiError::LoadTestRunning)?;
        let nodes = select(&self.members, &request.group, &request.node_ids)?;
        let targets = nodes
            .iter()
            .map(|n| {
                loadgen::config::target_uri(&n.address).map_err(|e| ApiError::NodeAddress {
                    node: n.id.to_string(),
                    cause: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = run_config(&request, targets)?;

        info!(
            nodes = nodes.len(),
            mode = ?config.mode,
            rate = config.rate.unwrap_or(0.0),
            concurrency = config.concurrency,
            duration_ms = request.duration_ms,
            error_rate = config.error_rate,
            "load test started"
        );
        // Unbounded, yet bounded by the run: one event per measured second
        // (ten minutes at most) plus two, so a slow reader loses nothing and
        // never slows the engine down.
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Ok(LoadTestEvent {
            event: Some(Event::Started(LoadTestStarted {
                targets: nodes.iter().map(|n| n.address.clone()).collect(),
                nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
                node_ids: nodes.iter().map(|n| n.id.to_string()).collect(),
            })),
        }));
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let gone = tx.clone();
            let stop = async move {
                tokio::select! {
                    // The caller cancelled or went away: nobody reads.
                    () = gone.closed() => {}
                    () = shutdown.cancelled() => {}
                }
            };
            let progress_tx = tx.clone();
            let progress = move |interval: &Interval| {
                // A caller gone is noticed by `stop`.
                let _ = progress_tx.send(Ok(progress_event(interval)));
            };
            let result = loadgen::run_with_progress(&config, stop, progress).await;
            match result {
                Ok(report) => {
                    info!(
                        requests = report.requests,
                        errors = report.errors,
                        throughput_rps = report.throughput_rps,
                        p99_us = report.latency_us.p99,
                        interrupted = report.interrupted,
                        "load test finished"
                    );
                    let _ = tx.send(Ok(report_event(&report)));
                }
                Err(err) => {
                    warn!(cause = %err, "load test failed");
                    let _ = tx.send(Err(ApiError::LoadTest(err).into()));
                }
            }
            // The engine's requests are over and the outcome is queued: the
            // next load test may start, even before this caller has read the
            // end of its stream.
            drop(permit);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// Checks every value of a request before any node is looked at, so a bad
/// request is INVALID_ARGUMENT whatever the farm's state.
fn check(request: &LoadTestRequest) -> Result<(), BadRequest> {
    mode(request.mode)?;
    if !(request.rate.is_finite() && request.rate >= 0.0) {
        return Err(BadRequest::out_of_range(
            "rate",
            request.rate,
            "a number of requests per second, 0 or more (0: closed loop)",
        ));
    }
    for (field, value, max) in [
        ("concurrency", request.concurrency, MAX_CONCURRENCY),
        ("duration_ms", request.duration_ms, MAX_DURATION_MS),
        ("connections", request.connections, MAX_CONNECTIONS),
        ("streams", request.streams, MAX_STREAMS),
        ("warmup_ms", request.warmup_ms, MAX_DURATION_MS),
        ("payload_bytes", request.payload_bytes, MAX_BYTES),
        ("response_bytes", request.response_bytes, MAX_BYTES),
        ("delay_ms", request.delay_ms, MAX_DELAY_MS),
    ] {
        if value > max {
            return Err(BadRequest::out_of_range(
                field,
                value,
                format!("at most {max}"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&request.error_rate) {
        return Err(BadRequest::out_of_range(
            "error_rate",
            request.error_rate,
            "between 0 and 1",
        ));
    }
    if request.fail_code > farm_api::status::MAX_CODE {
        return Err(BadRequest::out_of_range(
            "fail_code",
            request.fail_code,
            format!(
                "a gRPC status code from 1 to {} (0: UNAVAILABLE)",
                farm_api::status::MAX_CODE
            ),
        ));
    }
    Ok(())
}

fn mode(mode: i32) -> Result<Mode, BadRequest> {
    match LoadMode::try_from(mode) {
        Ok(LoadMode::Unspecified | LoadMode::Unary) => Ok(Mode::Unary),
        Ok(LoadMode::Stream) => Ok(Mode::Stream),
        Err(_) => Err(BadRequest::out_of_range(
            "mode",
            mode,
            "one of LOAD_MODE_UNARY, LOAD_MODE_STREAM",
        )),
    }
}

fn load_mode(mode: Mode) -> LoadMode {
    match mode {
        Mode::Unary => LoadMode::Unary,
        Mode::Stream => LoadMode::Stream,
    }
}

/// The engine's run for a checked request against `targets`; the engine's
/// own validation has the last word.
fn run_config(request: &LoadTestRequest, targets: Vec<String>) -> Result<RunConfig, ApiError> {
    let config = RunConfig {
        targets,
        mode: mode(request.mode)?,
        rate: (request.rate > 0.0).then_some(request.rate),
        // Unset: loadgen's own defaults (for the loop the rate implies).
        concurrency: match request.concurrency {
            0 => loadgen::config::default_concurrency(request.rate > 0.0),
            n => n as usize,
        },
        connections: request.connections.max(1) as usize,
        streams: request.streams.max(1) as usize,
        duration: match request.duration_ms {
            0 => loadgen::config::DEFAULT_DURATION,
            ms => Duration::from_millis(u64::from(ms)),
        },
        warmup: Duration::from_millis(u64::from(request.warmup_ms)),
        payload: request.payload_bytes as usize,
        response_bytes: request.response_bytes,
        delay_ms: request.delay_ms,
        error_rate: request.error_rate,
        fail_code: match request.fail_code {
            0 => DEFAULT_FAIL_CODE,
            code => code,
        },
        // The request has no thresholds to check.
        thresholds: Thresholds::default(),
    };
    config.validate().map_err(RunError::Config)?;
    Ok(config)
}

/// The healthy nodes a request selects, ordered by id: the members of
/// `group` (every node when empty), only those listed in `node_ids` when
/// any is. An unknown group or node id is NOT_FOUND; no healthy node left
/// is FAILED_PRECONDITION.
fn select(members: &Members, group: &str, node_ids: &[String]) -> Result<Vec<NodeView>, ApiError> {
    let mut nodes = members.list_nodes(group)?;
    if !node_ids.is_empty() {
        let mut wanted = HashSet::with_capacity(node_ids.len());
        for id in node_ids {
            let id = resolve_node(members, "node_ids", id)?;
            // Each must exist, in the group or not.
            members.node(id)?;
            wanted.insert(id);
        }
        nodes.retain(|n| wanted.contains(&n.id));
    }
    nodes.retain(|n| n.state == NodeState::Healthy);
    if nodes.is_empty() {
        return Err(ApiError::NoHealthyNode {
            group: group.to_owned(),
        });
    }
    Ok(nodes)
}

fn progress_event(interval: &Interval) -> LoadTestEvent {
    LoadTestEvent {
        event: Some(Event::Progress(LoadTestProgress {
            second: interval.second,
            requests: interval.requests,
            errors: interval.errors,
            throughput_rps: interval.throughput_rps,
            p50_us: interval.latency_us.p50,
            p90_us: interval.latency_us.p90,
            p99_us: interval.latency_us.p99,
            max_us: interval.latency_us.max,
            uncorrected_p50_us: interval.uncorrected_latency_us.p50,
            uncorrected_p99_us: interval.uncorrected_latency_us.p99,
            connect_errors: interval.connect_errors,
        })),
    }
}

fn percentiles(p: &Percentiles) -> LatencyPercentiles {
    LatencyPercentiles {
        p50: p.p50,
        p90: p.p90,
        p99: p.p99,
        p999: p.p999,
        p9999: p.p9999,
        max: p.max,
        mean: p.mean,
    }
}

fn report_event(report: &Report) -> LoadTestEvent {
    LoadTestEvent {
        event: Some(Event::Report(LoadTestReport {
            requests: report.requests,
            errors: report.errors,
            errors_by_code: report
                .errors_by_code
                .iter()
                .map(|(code, n)| (code.clone(), *n))
                .collect(),
            rate: report.rate.unwrap_or(0.0),
            throughput_rps: report.throughput_rps,
            missed: report.missed,
            kept_up: report.kept_up,
            duration_s: report.duration_s,
            latency_us: Some(percentiles(&report.latency_us)),
            uncorrected_latency_us: Some(percentiles(&report.uncorrected_latency_us)),
            interrupted: report.interrupted,
            mode: load_mode(report.mode).into(),
            connect_errors: report.connect_errors,
            spectrum: report
                .spectrum
                .iter()
                .map(|p| PercentilePoint {
                    percentile: p.percentile,
                    latency_us: p.latency_us,
                    uncorrected_latency_us: p.uncorrected_latency_us,
                })
                .collect(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> LoadTestRequest {
        LoadTestRequest {
            concurrency: 4,
            duration_ms: 1000,
            ..Default::default()
        }
    }

    /// `change` applied to a valid request makes it INVALID_ARGUMENT, with
    /// `field` named in the message.
    #[track_caller]
    fn refused(field: &str, change: impl FnOnce(&mut LoadTestRequest)) {
        let mut request = valid();
        change(&mut request);
        let err = check(&request).expect_err("refused");
        assert!(
            matches!(&err, BadRequest::OutOfRange { field: f, .. } if *f == field),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_invalid_arguments() {
        refused("rate", |r| r.rate = -1.0);
        refused("rate", |r| r.rate = f64::NAN);
        refused("rate", |r| r.rate = f64::INFINITY);
        refused("concurrency", |r| r.concurrency = MAX_CONCURRENCY + 1);
        refused("duration_ms", |r| r.duration_ms = MAX_DURATION_MS + 1);
        refused("warmup_ms", |r| r.warmup_ms = MAX_DURATION_MS + 1);
        refused("connections", |r| r.connections = MAX_CONNECTIONS + 1);
        refused("streams", |r| r.streams = MAX_STREAMS + 1);
        refused("payload_bytes", |r| r.payload_bytes = MAX_BYTES + 1);
        refused("response_bytes", |r| r.response_bytes = MAX_BYTES + 1);
        refused("delay_ms", |r| r.delay_ms = MAX_DELAY_MS + 1);
        refused("error_rate", |r| r.error_rate = 1.5);
        refused("error_rate", |r| r.error_rate = -0.1);
        refused("error_rate", |r| r.error_rate = f64::NAN);
        refused("fail_code", |r| r.fail_code = 17);
        refused("mode", |r| r.mode = 7);
    }

    #[test]
    fn defaults_fill_in() {
        let request = LoadTestRequest {
            rate: 250.0,
            mode: LoadMode::Stream.into(),
            duration_ms: MAX_DURATION_MS,
            error_rate: 0.5,
            ..valid()
        };
        check(&request).expect("valid");
        let config =
            run_config(&request, vec!["http://127.0.0.1:7001".into()]).expect("valid config");
        assert_eq!(config.rate, Some(250.0));
        assert_eq!(config.mode, Mode::Stream);
        assert_eq!((config.connections, config.streams), (1, 1));
        assert_eq!(config.fail_code, DEFAULT_FAIL_CODE);
        assert_eq!(config.duration, Duration::from_secs(600));

        let closed = run_config(&valid(), vec!["http://127.0.0.1:7001".into()]).expect("valid");
        assert_eq!(closed.rate, None, "rate 0 is closed loop");
        assert_eq!(closed.mode, Mode::Unary);
    }

    /// An empty request is a valid one: every unset field takes the default
    /// `loadgen run` takes for its flag.
    #[test]
    fn an_empty_request_takes_loadgens_defaults() {
        let targets = || vec!["http://127.0.0.1:7001".to_owned()];
        let empty = LoadTestRequest::default();
        check(&empty).expect("an empty request is valid");
        let closed = run_config(&empty, targets()).expect("valid");
        assert_eq!(closed.rate, None);
        assert_eq!(closed.concurrency, loadgen::config::CLOSED_CONCURRENCY);
        assert_eq!(closed.duration, Duration::from_secs(10));
        assert_eq!(closed.warmup, Duration::ZERO);

        let open = LoadTestRequest {
            rate: 100.0,
            ..LoadTestRequest::default()
        };
        let open = run_config(&open, targets()).expect("valid");
        assert_eq!(open.concurrency, loadgen::config::OPEN_CONCURRENCY);
    }
}
