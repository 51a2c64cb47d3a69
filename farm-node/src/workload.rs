//! `farm.v1.Workload`: the work load tests drive. A request asks for CPU
//! work, a delay, a response size or a failure; the node does exactly that,
//! so one binary can play a fast, slow, heavy or failing server. What a
//! request leaves unasked (no delay, no response size, no failure) comes
//! from the node's configuration ([`Settings`]).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use farm_api::{
    node::{MAX_CPU_US, MAX_DELAY_MS, MAX_RESPONSE_BYTES, Settings},
    status::MAX_CODE,
    v1::{
        InfoRequest, InfoResponse, LoadSpec, SetLogLevelRequest, SetLogLevelResponse,
        SimulateLoadResponse, WorkRequest, WorkResponse, workload_server::Workload,
    },
};
use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::{
    load::{self, Load, Simulator},
    sampler::Metrics,
    settings::NodeConfigData,
};

/// Requests of one `WorkStream` served at once; further ones wait.
pub const STREAM_IN_FLIGHT: usize = 256;

/// What the node is and how it is doing, shared by the agent (which learns
/// the id), the Workload service and the HTTP endpoints.
#[derive(Debug)]
pub struct NodeStatus {
    pub name: String,
    pub group: String,
    /// The registered address, known once the port is bound.
    pub address: String,
    started: Instant,
    node_id: Mutex<String>,
    connected: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
    /// The applied configuration, read by every request: reads vastly
    /// outnumber writes, and a read only copies a few words out.
    settings: RwLock<Settings>,
    /// Request metrics (recorded by `Work` and `WorkStream`) and the
    /// newest sample of the node.
    pub metrics: Arc<Metrics>,
}

impl NodeStatus {
    pub fn new(name: String, group: String, address: String) -> Self {
        Self {
            name,
            group,
            address,
            started: Instant::now(),
            node_id: Mutex::new(String::new()),
            connected: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            settings: RwLock::new(Settings::default()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The settings of the applied configuration.
    pub fn settings(&self) -> Settings {
        // A poisoned lock still holds whole settings (they are `Copy`).
        *self.settings.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `config` (from `source`: the control plane or the cache) at
    /// once; keys that cannot be used are reported and ignored.
    pub fn apply_config(&self, config: &NodeConfigData, source: &str) -> Settings {
        let (settings, problems) = config.settings();
        for problem in &problems {
            warn!(config.version = config.version, key = %problem.key, cause = %problem, "ignoring a configuration key");
        }
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = settings;
        info!(config.version = settings.version, from = source, settings = %settings, "configuration applied");
        settings
    }

    /// Id issued by the control plane; empty before the first registration.
    pub fn node_id(&self) -> String {
        // A poisoned lock still holds a whole String.
        self.node_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_node_id(&self, id: &str) {
        let mut current = self.node_id.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != id {
            id.clone_into(&mut current);
        }
    }

    /// Whether a heartbeat stream is open right now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Requests served by `Work` and `WorkStream`.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Of those, the ones answered with a failure.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Checks a request's asks against the limits.
fn validate(request: &WorkRequest) -> Result<(), Status> {
    if request.delay_ms > MAX_DELAY_MS {
        return Err(Status::invalid_argument(format!(
            "delay_ms {} is above the limit of {MAX_DELAY_MS}",
            request.delay_ms
        )));
    }
    if request.response_bytes > MAX_RESPONSE_BYTES {
        return Err(Status::invalid_argument(format!(
            "response_bytes {} is above the limit of {MAX_RESPONSE_BYTES}",
            request.response_bytes
        )));
    }
    if request.cpu_us > MAX_CPU_US {
        return Err(Status::invalid_argument(format!(
            "cpu_us {} is above the limit of {MAX_CPU_US}",
            request.cpu_us
        )));
    }
    if request.fail_code > MAX_CODE {
        return Err(Status::invalid_argument(format!(
            "fail_code {} is not a gRPC status code (1 to {MAX_CODE})",
            request.fail_code
        )));
    }
    Ok(())
}

/// Fills in what `request` leaves to the node's configuration: its delay
/// and response size when it asks for none, and, when it asks for no
/// failure and `fails` (drawn at the configured error rate), UNAVAILABLE.
fn resolve(settings: &Settings, mut request: WorkRequest, fails: bool) -> WorkRequest {
    if request.delay_ms == 0 {
        request.delay_ms = settings.delay_ms;
    }
    if request.response_bytes == 0 {
        request.response_bytes = settings.response_bytes;
    }
    if request.fail_code == 0 && fails {
        request.fail_code = Code::Unavailable as u32;
        request.fail_message = format!(
            "failed on purpose at the configured error rate (workload.error_rate = {}, configuration version {})",
            settings.error_rate, settings.version
        );
    }
    request
}

/// Burns the CPU for `micros` on this thread.
fn spin(micros: u32) {
    let until = Instant::now() + Duration::from_micros(u64::from(micros));
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..256u64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}

/// Changes the process's log filter; returns the previous one.
pub type SetLogFilter = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// The Workload service.
#[derive(Clone)]
pub struct WorkloadService {
    status: Arc<NodeStatus>,
    /// Cancelled at shutdown: waiting requests and open streams end.
    shutdown: CancellationToken,
    simulator: Arc<Simulator>,
    /// How `SetLogLevel` reaches the process's logger, when it can.
    log_filter: Option<SetLogFilter>,
}

impl std::fmt::Debug for WorkloadService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadService")
            .field("status", &self.status)
            .field("log_filter", &self.log_filter.is_some())
            .finish_non_exhaustive()
    }
}

impl WorkloadService {
    pub fn new(status: Arc<NodeStatus>, shutdown: CancellationToken) -> Self {
        Self {
            status,
            shutdown,
            simulator: Arc::default(),
            log_filter: None,
        }
    }

    /// Lets `SetLogLevel` change the process's log filter through `set`.
    pub fn with_log_filter(mut self, set: Option<SetLogFilter>) -> Self {
        self.log_filter = set;
        self
    }

    /// `request` with the node's configured defaults filled in.
    fn resolve(&self, request: WorkRequest) -> WorkRequest {
        let settings = self.status.settings();
        let fails = request.fail_code == 0
            && settings.error_rate > 0.0
            && settings.fails(rand::random::<f64>());
        resolve(&settings, request, fails)
    }

    /// Does what `request` (resolved) asks. `Err` is the failure it asked for (or a
    /// refusal of its asks); the caller decides how to deliver it. Its
    /// latency, from `received`, and code are recorded.
    async fn serve(&self, request: WorkRequest, received: Instant) -> Result<WorkResponse, Status> {
        self.status.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.perform(request).await;
        if result.is_err() {
            self.status.errors.fetch_add(1, Ordering::Relaxed);
        }
        let code = result.as_ref().map_or_else(|s| s.code() as u32, |_| 0);
        self.status
            .metrics
            .recorder
            .record(received.elapsed(), code);
        result
    }

    async fn perform(&self, request: WorkRequest) -> Result<WorkResponse, Status> {
        validate(&request)?;
        if request.cpu_us > 0 {
            let micros = request.cpu_us;
            if micros < 1_000 {
                spin(micros);
            } else {
                // Longer work leaves the async workers free for other requests.
                tokio::task::spawn_blocking(move || spin(micros))
                    .await
                    .map_err(|e| Status::internal(format!("CPU work failed: {e}")))?;
            }
        }
        if request.delay_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))) => {}
                () = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("the node is shutting down"));
                }
            }
        }
        if request.fail_code != 0 {
            let message = if request.fail_message.is_empty() {
                "failure requested by the caller".to_owned()
            } else {
                request.fail_message
            };
            return Err(Status::new(Code::from(request.fail_code as i32), message));
        }
        Ok(WorkResponse {
            id: request.id,
            payload: vec![0; request.response_bytes as usize],
            code: 0,
            message: String::new(),
            node_id: self.status.node_id(),
        })
    }

    /// A `WorkStream` answer: failures travel in-band.
    fn in_band(&self, id: u64, result: Result<WorkResponse, Status>) -> WorkResponse {
        result.unwrap_or_else(|status| WorkResponse {
            id,
            payload: Vec::new(),
            code: status.code() as u32,
            message: status.message().to_owned(),
            node_id: self.status.node_id(),
        })
    }
}

/// A (resolved) request that needs no waiting is answered by the stream's reader itself;
/// spawning a task for it would cost more than the work.
fn is_instant(request: &WorkRequest) -> bool {
    request.delay_ms == 0 && request.cpu_us == 0
}

#[tonic::async_trait]
impl Workload for WorkloadService {
    async fn work(&self, request: Request<WorkRequest>) -> Result<Response<WorkResponse>, Status> {
        let received = Instant::now();
        let request = self.resolve(request.into_inner());
        self.serve(request, received).await.map(Response::new)
    }

    type WorkStreamStream =
        Pin<Box<dyn Stream<Item = Result<WorkResponse, Status>> + Send + 'static>>;

    async fn work_stream(
        &self,
        request: Request<Streaming<WorkRequest>>,
    ) -> Result<Response<Self::WorkStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let service = self.clone();
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(STREAM_IN_FLIGHT));
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    () = service.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                        return;
                    }
                };
                let request = match next {
                    Ok(Some(request)) => service.resolve(request),
                    // The caller closed its side: answers still owed go out,
                    // then the stream ends when the last sender drops.
                    Ok(None) => return,
                    // The caller went away (or sent garbage): nobody to answer.
                    Err(_) => return,
                };
                let received = Instant::now();
                let id = request.id;
                if is_instant(&request) {
                    let response = service.in_band(id, service.serve(request, received).await);
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let tx = tx.clone();
                let service = service.clone();
                tokio::spawn(async move {
                    let response = service.in_band(id, service.serve(request, received).await);
                    let _ = tx.send(Ok(response)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let status = &self.status;
        Ok(Response::new(InfoResponse {
            node_id: status.node_id(),
            name: status.name.clone(),
            group: status.group.clone(),
            address: status.address.clone(),
            pid: std::process::id(),
            uptime_s: status.uptime().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            requests: status.requests(),
            connected: status.connected(),
        }))
    }

    async fn simulate_load(
        &self,
        request: Request<LoadSpec>,
    ) -> Result<Response<SimulateLoadResponse>, Status> {
        let spec = request.into_inner();
        // The node's limits, as its latest sample gives them.
        let (cpus, memory) = match self.status.metrics.latest() {
            Some(s) if s.cpu_limit > 0.0 && s.memory_limit_bytes > 0 => {
                (s.cpu_limit, s.memory_limit_bytes)
            }
            _ => load::capacity_now(),
        };
        let load = Load::new(spec.cpu_percent, spec.memory_mib, spec.duration_ms, memory)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let until = self.simulator.start(load, cpus);
        Ok(Response::new(SimulateLoadResponse {
            until: Some(until.into()),
        }))
    }

    async fn set_log_level(
        &self,
        request: Request<SetLogLevelRequest>,
    ) -> Result<Response<SetLogLevelResponse>, Status> {
        let set = self.log_filter.as_ref().ok_or_else(|| {
            Status::failed_precondition("this node's log filter cannot be changed at run time")
        })?;
        let filter = request.into_inner().filter;
        let previous = set(&filter).map_err(Status::invalid_argument)?;
        info!(filter = %filter, previous = %previous, "log filter changed");
        Ok(Response::new(SetLogLevelResponse { previous }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn configured(data: Value) -> WorkloadService {
        let Value::Object(data) = data else {
            panic!("an object")
        };
        let status = Arc::new(NodeStatus::new(
            "n".into(),
            "default".into(),
            "127.0.0.1:1".into(),
        ));
        status.apply_config(&NodeConfigData { version: 4, data }, "test");
        WorkloadService::new(status, CancellationToken::new())
    }

    async fn work(service: &WorkloadService, request: WorkRequest) -> Result<WorkResponse, Status> {
        service
            .work(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test(start_paused = true)]
    async fn configured_defaults_apply_to_requests_that_ask_for_none() {
        let service = configured(json!({"workload": {"delay_ms": 150, "response_bytes": 1000}}));
        assert_eq!(service.status.settings().version, 4);

        let started = tokio::time::Instant::now();
        let response = work(&service, WorkRequest::default()).await.expect("Work");
        assert_eq!(started.elapsed(), Duration::from_millis(150));
        assert_eq!(response.payload.len(), 1000);

        // What a request asks for wins.
        let started = tokio::time::Instant::now();
        let response = work(
            &service,
            WorkRequest {
                delay_ms: 20,
                response_bytes: 3,
                ..Default::default()
            },
        )
        .await
        .expect("Work");
        assert_eq!(started.elapsed(), Duration::from_millis(20));
        assert_eq!(response.payload.len(), 3);

        // A node with nothing configured answers at once with nothing.
        let plain = configured(json!({}));
        let started = tokio::time::Instant::now();
        let response = work(&plain, WorkRequest::default()).await.expect("Work");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(response.payload.is_empty());
    }

    #[tokio::test]
    async fn the_error_rate_fails_that_share_of_requests() {
        let always = configured(json!({"workload.error_rate": 1.0}));
        for _ in 0..50 {
            let status = work(&always, WorkRequest::default())
                .await
                .expect_err("configured to fail");
            assert_eq!(status.code(), Code::Unavailable);
            assert!(
                status.message().contains("configured error rate"),
                "{}",
                status.message()
            );
        }
        // A requested failure keeps its own code and message.
        let status = work(
            &always,
            WorkRequest {
                fail_code: Code::NotFound as u32,
                fail_message: "asked".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("asked to fail");
        assert_eq!((status.code(), status.message()), (Code::NotFound, "asked"));
        assert_eq!(always.status.errors(), 51);

        let never = configured(json!({"workload": {"error_rate": 0}}));
        for _ in 0..50 {
            work(&never, WorkRequest::default())
                .await
                .expect("no failure configured");
        }

        let half = configured(json!({"workload": {"error_rate": 0.5}}));
        let mut failed = 0;
        for _ in 0..400 {
            if work(&half, WorkRequest::default()).await.is_err() {
                failed += 1;
            }
        }
        // Binomial(400, 0.5): 200 +- 20 is three standard deviations.
        assert!((140..=260).contains(&failed), "{failed} of 400 failed");
    }

    #[test]
    fn resolve_fills_only_what_is_unasked() {
        let settings = Settings {
            version: 9,
            delay_ms: 5,
            response_bytes: 6,
            error_rate: 1.0,
            heartbeat_interval_ms: None,
        };
        let resolved = resolve(&settings, WorkRequest::default(), true);
        assert_eq!((resolved.delay_ms, resolved.response_bytes), (5, 6));
        assert_eq!(resolved.fail_code, Code::Unavailable as u32);
        assert!(resolved.fail_message.contains("version 9"));
        let asked = WorkRequest {
            delay_ms: 1,
            response_bytes: 2,
            fail_code: 3,
            ..Default::default()
        };
        let resolved = resolve(&settings, asked.clone(), true);
        assert_eq!(resolved, asked);
        let resolved = resolve(&settings, WorkRequest::default(), false);
        assert_eq!(resolved.fail_code, 0);
        assert!(!is_instant(&resolve(
            &settings,
            WorkRequest::default(),
            false
        )));
    }

    #[test]
    fn limits_are_checked() {
        let ok = WorkRequest {
            delay_ms: MAX_DELAY_MS,
            response_bytes: MAX_RESPONSE_BYTES,
            cpu_us: MAX_CPU_US,
            fail_code: 16,
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        for bad in [
            WorkRequest {
                delay_ms: MAX_DELAY_MS + 1,
                ..Default::default()
            },
            WorkRequest {
                response_bytes: MAX_RESPONSE_BYTES + 1,
                ..Default::default()
            },
            WorkRequest {
                cpu_us: MAX_CPU_US + 1,
                ..Default::default()
            },
            WorkRequest {
                fail_code: 17,
                ..Default::default()
            },
        ] {
            assert_eq!(
                validate(&bad).expect_err("refused").code(),
                Code::InvalidArgument
            );
        }
    }
}
