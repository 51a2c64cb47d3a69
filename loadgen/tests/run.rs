//! Runs against real farm-node servers on `127.0.0.1:0`, in this process,
//! and against targets that refuse or drop connections; the binary's exit
//! codes, thresholds and summary.

use std::{ffi::OsStr, fmt::Debug, process::Command, time::Duration};

use farm_node::NodeConfig;
use farm_testkit::{
    Node,
    node::{NOWHERE, served},
    process::{flag_help, free_addr, run_within},
};
use loadgen::{Mode, RunConfig};
use tokio::net::TcpListener;

/// A farm-node serving on loopback, with no control plane; stops when
/// dropped.
async fn node() -> Node {
    Node::lone("t1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_loop_counts_add_up_in_both_modes() {
    let node = node().await;
    for mode in [Mode::Unary, Mode::Stream] {
        let mut config = RunConfig::closed(vec![node.url()], 8, Duration::from_millis(500));
        config.mode = mode;
        config.connections = 2;
        config.streams = 2;
        config.error_rate = 0.1;
        config.fail_code = 5;
        let report = loadgen::run(&config, std::future::pending())
            .await
            .expect("run");
        assert!(report.requests > 50, "{mode:?}: {report:?}");
        assert!(!report.interrupted);
        // Every tenth request built fails; a few in flight when the run is
        // cut off may be lost, so the count is within the concurrency of a
        // tenth.
        let expected = report.requests / 10;
        let not_found = report.errors_by_code.get("NOT_FOUND").copied().unwrap_or(0);
        assert_eq!(report.errors, not_found, "{mode:?}: {report:?}");
        assert!(
            not_found.abs_diff(expected) <= 8,
            "{mode:?}: {not_found} errors for {} requests",
            report.requests
        );
        let h = &report.uncorrected_latency_us;
        assert!(h.p50 <= h.p99 && h.p99 <= h.max && h.max > 0);
        let rps = report.requests as f64 / report.duration_s;
        assert!((rps - report.throughput_rps).abs() < 1e-6);
    }
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_run_leaves_no_connection_open() {
    // In a long-lived process (the control plane runs load tests for its
    // users), every run's connections must end with it.
    let node = node().await;
    let before = open_fds();
    for mode in [Mode::Unary, Mode::Stream] {
        for _ in 0..3 {
            let mut config = RunConfig::closed(vec![node.url()], 4, Duration::from_millis(200));
            config.mode = mode;
            config.connections = 4;
            loadgen::run(&config, std::future::pending())
                .await
                .expect("run");
        }
    }
    // Both ends are in this process: each connection left open would be
    // two descriptors.
    farm_testkit::eventually(
        "the runs' connections to close",
        Duration::from_secs(10),
        || async {
            let now = open_fds();
            if now <= before + 2 {
                Ok(())
            } else {
                Err(format!("{before} descriptors before, {now} now"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_loop_holds_the_rate() {
    let node = node().await;
    for mode in [Mode::Unary, Mode::Stream] {
        let mut config = RunConfig::closed(vec![node.url()], 64, Duration::from_secs(2));
        config.mode = mode;
        config.rate = Some(500.0);
        let report = loadgen::run(&config, std::future::pending())
            .await
            .expect("run");
        // Every scheduled request is sent and waited for: the count is the
        // rate times the duration, give or take the schedule's rounding.
        assert!(
            (990..=1010).contains(&report.requests),
            "{mode:?}: {} requests",
            report.requests
        );
        assert!(report.kept_up && report.missed == 0, "{report:?}");
        assert_eq!(report.errors, 0);
        // Second by second too, within a generous band.
        assert_eq!(report.intervals.len(), 2, "{:?}", report.intervals);
        for interval in &report.intervals {
            assert!(
                (400.0..=600.0).contains(&interval.throughput_rps),
                "{mode:?}: {interval:?}"
            );
        }
        let counted: u64 = report.intervals.iter().map(|i| i.requests).sum();
        assert_eq!(counted, report.requests);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_the_target_cannot_keep_up_with_is_reported_not_lowered() {
    // 20 ms per request, 2 in flight: 100 rps at most, 400 asked.
    let node = node().await;
    let mut config = RunConfig::closed(vec![node.url()], 2, Duration::from_secs(1));
    config.rate = Some(400.0);
    config.delay_ms = 20;
    let report = loadgen::run(&config, std::future::pending())
        .await
        .expect("run");
    assert!(!report.kept_up, "{report:?}");
    assert!(
        report.missed >= 200 && report.requests + report.missed >= 390,
        "{} sent, {} missed",
        report.requests,
        report.missed
    );
    assert!(report.throughput_rps < 150.0, "{report:?}");
    let mut text = Vec::new();
    report.write_text(&mut text).expect("text");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.contains("did not keep up"), "{text}");
}

/// A `Workload` server that answers at once, except that it holds every
/// request that arrives during one stall until the stall is over.
mod stalling {
    use std::{pin::Pin, time::Duration};

    use farm_api::v1::{
        InfoRequest, InfoResponse, LoadSpec, SetLogLevelRequest, SetLogLevelResponse,
        SimulateLoadResponse, WorkRequest, WorkResponse,
        workload_server::{Workload, WorkloadServer},
    };
    use tokio::{net::TcpListener, time::Instant};
    use tonic::{Request, Response, Status, Streaming};

    pub struct Stalling {
        pub from: Instant,
        pub until: Instant,
    }

    #[tonic::async_trait]
    impl Workload for Stalling {
        async fn work(
            &self,
            request: Request<WorkRequest>,
        ) -> Result<Response<WorkResponse>, Status> {
            let now = Instant::now();
            if now >= self.from && now < self.until {
                tokio::time::sleep_until(self.until).await;
            }
            Ok(Response::new(WorkResponse {
                id: request.into_inner().id,
                ..WorkResponse::default()
            }))
        }

        type WorkStreamStream =
            Pin<Box<dyn futures::Stream<Item = Result<WorkResponse, Status>> + Send>>;

        async fn work_stream(
            &self,
            _: Request<Streaming<WorkRequest>>,
        ) -> Result<Response<Self::WorkStreamStream>, Status> {
            Err(Status::unimplemented("unary only"))
        }

        async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
            Err(Status::unimplemented("unary only"))
        }

        async fn simulate_load(
            &self,
            _: Request<LoadSpec>,
        ) -> Result<Response<SimulateLoadResponse>, Status> {
            Err(Status::unimplemented("unary only"))
        }

        async fn set_log_level(
            &self,
            _: Request<SetLogLevelRequest>,
        ) -> Result<Response<SetLogLevelResponse>, Status> {
            Err(Status::unimplemented("unary only"))
        }
    }

    /// Serves on loopback, stalling for `stall` from `after` on; the address.
    pub async fn serve(after: Duration, stall: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let from = Instant::now() + after;
        let service = WorkloadServer::new(Stalling {
            from,
            until: from + stall,
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stall_shows_in_the_corrected_p99_and_hides_from_the_uncorrected() {
    // One request in flight, as a client that waits for each answer: while
    // the target stalls, the request in flight waits and the rest cannot be
    // sent. Only the corrected figures count the requests that were due
    // during the stall. 600 ms of stall in 2 s at 500 rps: the 50 requests
    // due in its first 100 ms (5%) waited at least 500 ms.
    let addr = stalling::serve(Duration::from_millis(500), Duration::from_millis(600)).await;
    let mut config = RunConfig::closed(vec![addr], 1, Duration::from_secs(2));
    config.rate = Some(500.0);
    let report = loadgen::run(&config, std::future::pending())
        .await
        .expect("run");
    let (c, u) = (&report.latency_us, &report.uncorrected_latency_us);
    assert!(c.p99 >= 500_000, "corrected {c:?}");
    // Half the stall: a busy machine delays a few requests by tens of
    // milliseconds, never by the stall's length.
    assert!(u.p99 < 250_000, "uncorrected {u:?}");
    assert!(u.max >= 500_000, "the stalled request itself: {u:?}");
    // Every request due is sent or reported missed; on a busy machine the
    // catch-up after the stall may not send them all within the run.
    assert!(report.requests + report.missed >= 990, "{report:?}");
    assert!(report.requests >= 800, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_target_shows_in_the_corrected_latency() {
    // 50 ms per request with one request in flight: 20 rps at most, against
    // 100 rps asked. Requests queue behind each other; only the corrected
    // figures see the wait.
    let node = node().await;
    let mut config = RunConfig::closed(vec![node.url()], 1, Duration::from_secs(1));
    config.rate = Some(100.0);
    config.delay_ms = 50;
    let report = loadgen::run(&config, std::future::pending())
        .await
        .expect("run");
    let (c, u) = (&report.latency_us, &report.uncorrected_latency_us);
    assert!(u.p99 < 100_000, "{u:?}");
    assert!(c.p99 > 3 * u.p99, "corrected {c:?} uncorrected {u:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_early_gives_a_partial_report() {
    let node = node().await;
    let config = RunConfig::closed(vec![node.url()], 4, Duration::from_secs(30));
    let report = loadgen::run(&config, tokio::time::sleep(Duration::from_millis(300)))
        .await
        .expect("run");
    assert!(report.interrupted);
    assert!(report.duration_s < 1.0 && report.requests > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_writes_the_json_fields() {
    let node = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let (code, text, progress) = loadgen(args(&[
        "run",
        "--target",
        &node.url(),
        "--mode",
        "stream",
        "--rate",
        "100",
        "--duration",
        "1500ms",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]))
    .await;
    assert_eq!(code, Some(0), "{text}\n{progress}");
    assert!(text.contains("p99.9"), "{text}");
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    for key in [
        "requests",
        "errors",
        "errors_by_code",
        "throughput_rps",
        "mode",
        "rate",
        "duration_s",
    ] {
        assert!(value.get(key).is_some(), "{key} missing: {value}");
    }
    for key in ["latency_us", "uncorrected_latency_us"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(value[key][p].is_u64(), "{key}.{p} missing: {value}");
        }
    }
    assert_eq!(value["mode"], "stream");
    assert_eq!(value["kept_up"], true);
    // The full spectrum, rising to the maximum.
    let spectrum = value["spectrum"].as_array().expect("spectrum");
    assert!(spectrum.len() > 40, "{spectrum:?}");
    let last = spectrum.last().expect("points");
    assert_eq!(last["percentile"], 100.0);
    assert_eq!(last["latency_us"], value["latency_us"]["max"]);
    // Second by second: a 1.5 s run has two intervals, the last one half.
    let intervals = value["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 2, "{intervals:?}");
    let counted: u64 = intervals
        .iter()
        .map(|i| i["requests"].as_u64().expect("requests"))
        .sum();
    assert_eq!(Some(counted), value["requests"].as_u64());
    for interval in intervals {
        assert!(interval["latency_us"]["p99"].is_u64(), "{interval}");
    }
    // Progress went to standard error, a line a second (not a terminal).
    let seconds = progress
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains("req/s"))
        .count();
    assert_eq!(seconds, 2, "{progress}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_writes_a_self_contained_html_report() {
    let node = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let html = dir.path().join("report.html");
    let (code, stdout, stderr) = loadgen(args(&[
        "run",
        "--target",
        &node.url(),
        "--max",
        "--duration",
        "2s",
        "--error-rate",
        "0.25",
        "--fail-code",
        "8",
        "--payload",
        "300",
        "--response-bytes",
        "4096",
        "--html",
        html.to_str().expect("utf-8 path"),
    ]))
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.starts_with("<!doctype html>"), "{page}");
    for needed in [
        "Latency by percentile",
        "Throughput, second by second",
        "Latency, second by second",
        "RESOURCE_EXHAUSTED",
        "<polyline",
        "<th>Payload</th><td>300 bytes per request</td>",
        "<th>Response</th><td>4096 bytes (4 KiB) asked per answer</td>",
    ] {
        assert!(page.contains(needed), "{needed} missing");
    }
    // Nothing to fetch: it opens anywhere as it is.
    for external in ["<script", "src=", "href=", "url("] {
        assert!(!page.contains(external), "{external} in the page");
    }
}

#[test]
fn bad_input_exits_2() {
    for args in [
        &["run", "--target", "127.0.0.1:1", "--rate", "0"][..],
        &["run", "--target", "127.0.0.1:1", "--rate", "10", "--max"],
        &["run", "--max"],
        &[
            "run",
            "--target",
            "127.0.0.1:1",
            "--max",
            "--duration",
            "ten",
        ],
        &[
            "run",
            "--target",
            "127.0.0.1:1",
            "--max",
            "--max-error-rate",
            "2",
        ],
        &[
            "run",
            "--target",
            "127.0.0.1:1",
            "--max",
            "--max-error-rate",
            "lots",
        ],
        &[
            "run",
            "--target",
            "127.0.0.1:1",
            "--max",
            "--max-p99",
            "fast",
        ],
        &["run", "--target", "127.0.0.1:1", "--max", "--max-p99", "0s"],
        &["run", "--target", "127.0.0.1:1", "--max", "--no-such-flag"],
    ] {
        let (code, stdout, stderr) = loadgen_blocking(args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}\n{stderr}");
        assert!(!stderr.is_empty(), "{args:?}: no message");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_spread_over_targets_and_add_up_to_what_nodes_served() {
    let (a, b) = (node().await, node().await);
    for mode in [Mode::Unary, Mode::Stream] {
        let before = served(&a.url()).await + served(&b.url()).await;
        let mut config = RunConfig::closed(vec![a.url(), b.url()], 6, Duration::from_millis(400));
        config.mode = mode;
        let report = loadgen::run(&config, std::future::pending())
            .await
            .expect("run");
        // Let requests cut off at the end finish on the nodes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (on_a, on_b) = (served(&a.url()).await, served(&b.url()).await);
        let total = on_a + on_b - before;
        assert!(
            total >= report.requests && total <= report.requests + 6,
            "{mode:?}: nodes served {total}, loadgen counted {}",
            report.requests
        );
        assert!(report.requests > 0 && report.errors == 0, "{report:?}");
    }
    assert!(served(&a.url()).await > 0 && served(&b.url()).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_prints_a_partial_report() {
    let node = node().await;
    let addr = node.url();
    let out = tokio::task::spawn_blocking(move || {
        let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["run", "--target", &addr, "--max", "--duration", "60s"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("loadgen runs");
        std::thread::sleep(Duration::from_millis(700));
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        child.wait_with_output().expect("loadgen ends")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stopped early") && text.contains("Requests:"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_and_streams_are_opened_again_after_a_node_restarts() {
    for mode in [Mode::Stream, Mode::Unary] {
        let first = node().await;
        let addr = first.url();
        let mut config = RunConfig::closed(vec![addr.clone()], 4, Duration::from_millis(1500));
        config.mode = mode;
        let run = tokio::spawn(async move { loadgen::run(&config, std::future::pending()).await });
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = TcpListener::bind(addr.trim_start_matches("http://"))
            .await
            .expect("the port again");
        let _again = Node::start_on(NodeConfig::new(NOWHERE, "t1"), listener).await;
        let report = run.await.expect("join").expect("run");
        let after = served(&addr).await;
        assert!(
            after > 10,
            "{mode:?}: the restarted node served {after}: {report:?}"
        );
        assert!(report.requests > after, "{mode:?}: {report:?}");
    }
}

/// A farm-node's `Workload` behind an HTTP/2 server with tight limits: at
/// most 3 streams at once, 16 KiB stream windows. Stops when the returned
/// sender is dropped.
async fn tight_server() -> (String, tokio::sync::oneshot::Sender<()>) {
    use farm_api::v1::workload_server::WorkloadServer;
    use farm_node::workload::{NodeStatus, WorkloadService};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let status = std::sync::Arc::new(NodeStatus::new(
        "tight".into(),
        "default".into(),
        addr.to_string(),
    ));
    let service = WorkloadService::new(status, tokio_util::sync::CancellationToken::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(3))
            .initial_stream_window_size(Some(16_384))
            .initial_connection_window_size(Some(65_535))
            .add_service(WorkloadServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (format!("http://{addr}"), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_s_stream_limit_and_windows_are_respected() {
    let (url, _stop) = tight_server().await;
    // Twelve in flight on one connection the server allows three streams;
    // requests and answers many times the windows and the frame size.
    let mut config = RunConfig::closed(vec![url], 12, Duration::from_millis(800));
    config.connections = 1;
    config.payload = 100_000;
    config.response_bytes = 300_000;
    let report = loadgen::run(&config, std::future::pending())
        .await
        .expect("run");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.connect_errors, 0, "{report:?}");
    assert!(report.requests > 20, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warmup_requests_are_not_counted() {
    let node = node().await;
    let mut config = RunConfig::closed(vec![node.url()], 4, Duration::from_millis(500));
    config.rate = Some(100.0);
    config.warmup = Duration::from_millis(500);
    let report = loadgen::run(&config, std::future::pending())
        .await
        .expect("run");
    assert!((45..=55).contains(&report.requests), "{report:?}");
    assert!((report.duration_s - 0.5).abs() < 0.05, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminal_gets_a_progress_bar() {
    // `script` (util-linux) runs loadgen on a pseudo-terminal.
    let node = node().await;
    let command = format!(
        "{} run --target {} --rate 200 --duration 2s",
        env!("CARGO_BIN_EXE_loadgen"),
        node.url()
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .output()
            .expect("script runs")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // Redrawn in place: a carriage return and a line clear before each bar.
    assert!(text.matches("\r\x1b[2K[").count() >= 2, "{text:?}");
    assert!(text.contains("#####") && text.contains("req/s"), "{text:?}");
    assert!(text.contains("Summary"), "{text:?}");
}

/// How long one run of the binary may take before it is killed (the
/// longest asks for 2 s).
const LIMIT: Duration = Duration::from_secs(30);

/// Runs the loadgen binary with `args`, killed after [`LIMIT`]: its exit
/// code, stdout and stderr.
fn loadgen_blocking<A: AsRef<OsStr> + Debug>(args: &[A]) -> (Option<i32>, String, String) {
    let ran = run_within(
        Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args),
        LIMIT,
    )
    .expect("loadgen runs");
    let status = ran
        .status
        .unwrap_or_else(|| panic!("loadgen {args:?} still running after {LIMIT:?}"));
    (status.code(), ran.stdout, ran.stderr)
}

/// [`loadgen_blocking`] from a test's runtime, off its threads.
async fn loadgen(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || loadgen_blocking(&args))
        .await
        .expect("join")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_target_fails_with_exit_1_and_is_not_hammered() {
    let target = free_addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    for mode in ["unary", "stream"] {
        let json = dir.path().join(format!("{mode}.json"));
        let (code, stdout, stderr) = loadgen(args(&[
            "--threads",
            "1",
            "run",
            "--target",
            &target,
            "--mode",
            mode,
            "--max",
            "--connections",
            "4",
            "--concurrency",
            "400",
            "--duration",
            "2s",
            "--json",
            json.to_str().expect("utf-8 path"),
        ]))
        .await;
        assert_eq!(code, Some(1), "{mode}: {stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "FAILED: no request could be sent: connection refused to {target}"
            )),
            "{mode}: {stdout}"
        );
        assert!(stdout.contains("Connect errors:"), "{mode}: {stdout}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
        // Requests that were never sent are not requests.
        assert_eq!(report["requests"], 0, "{mode}: {report}");
        assert_eq!(report["errors"], 0, "{mode}: {report}");
        assert_eq!(report["passed"], false, "{mode}: {report}");
        let by_target = &report["connect_errors_by_target"][format!("http://{target}")];
        assert_eq!(by_target["last_error"], "connection refused", "{report}");
        assert_eq!(by_target["established"], 0, "{report}");
        // Four connections, each tried again at the backoff's pace: a few
        // dozen attempts in 2 s, not one per request (thousands).
        let attempts = report["connect_errors"].as_u64().expect("connect_errors");
        assert!(
            (4..100).contains(&attempts),
            "{mode}: {attempts} connection attempts"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_that_drops_every_connection_is_asked_again_at_the_backoffs_pace() {
    // Accepts and closes at once, counting: the attempts as the target sees them.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = std::sync::Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(socket);
        }
    });
    for mode in [Mode::Unary, Mode::Stream] {
        let before = accepted.load(std::sync::atomic::Ordering::Relaxed);
        let mut config = RunConfig::closed(vec![addr.clone()], 200, Duration::from_millis(1500));
        config.mode = mode;
        config.connections = 2;
        let report = loadgen::run(&config, std::future::pending())
            .await
            .expect("run");
        let accepts = accepted.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(
            (report.requests, report.errors),
            (0, 0),
            "{mode:?}: {report:?}"
        );
        assert!(!report.passed, "{mode:?}: {report:?}");
        assert!(report.connect_errors >= 2, "{mode:?}: {report:?}");
        // Two connections at the backoff's pace for 1.5 s: a handful each.
        assert!(
            (2..60).contains(&accepts),
            "{mode:?}: {accepts} connections accepted"
        );
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_that_comes_up_late_is_reached() {
    for mode in [Mode::Unary, Mode::Stream] {
        let addr = free_addr();
        let target = format!("http://{addr}");
        let mut config = RunConfig::closed(vec![target.clone()], 8, Duration::from_millis(1500));
        config.mode = mode;
        config.connections = 2;
        let run = tokio::spawn(async move { loadgen::run(&config, std::future::pending()).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = TcpListener::bind(addr).await.expect("the port again");
        let _late = Node::start_on(NodeConfig::new(NOWHERE, "late"), listener).await;
        let report = run.await.expect("join").expect("run");
        assert!(report.passed, "{mode:?}: {report:?}");
        assert!(
            report.requests > 0 && report.errors == 0,
            "{mode:?}: {report:?}"
        );
        let errors = &report.connect_errors_by_target[&target];
        assert!(
            errors.count >= 1 && errors.established >= 1,
            "{mode:?}: {errors:?}"
        );
        assert_eq!(errors.last_error, "connection refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossed_thresholds_exit_1_and_are_named() {
    let node = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    // A fifth of the requests fail, each takes 20 ms: over 1% and over 5 ms.
    let (code, stdout, stderr) = loadgen(args(&[
        "run",
        "--target",
        &node.url(),
        "--max",
        "--duration",
        "1s",
        "--error-rate",
        "0.2",
        "--delay-ms",
        "20",
        "--max-error-rate",
        "1%",
        "--max-p99",
        "5ms",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]))
    .await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAILED: --max-error-rate crossed: ")
            && stdout.contains("% of the requests failed, more than 1.00%"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAILED: --max-p99 crossed") && stdout.contains("above 5.00 ms"),
        "{stdout}"
    );
    assert!(!stdout.contains("no request"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["passed"], false);
    let thresholds = &report["thresholds"];
    assert_eq!(thresholds["max_error_rate"]["limit"], 0.01, "{thresholds}");
    assert_eq!(
        thresholds["max_error_rate"]["crossed"], true,
        "{thresholds}"
    );
    let rate = thresholds["max_error_rate"]["actual"].as_f64();
    assert!(
        rate.is_some_and(|r| (0.15..0.25).contains(&r)),
        "{thresholds}"
    );
    assert_eq!(thresholds["max_p99_us"]["limit"], 5000.0, "{thresholds}");
    assert_eq!(thresholds["max_p99_us"]["crossed"], true, "{thresholds}");
    assert!(
        thresholds["max_p99_us"]["actual"].as_f64() >= Some(20_000.0),
        "{thresholds}"
    );

    // The same run within generous limits succeeds.
    let (code, stdout, stderr) = loadgen(args(&[
        "run",
        "--target",
        &node.url(),
        "--max",
        "--duration",
        "1s",
        "--error-rate",
        "0.2",
        "--max-error-rate",
        "0.5",
        "--max-p99",
        "30s",
    ]))
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Thresholds:") && !stdout.contains("FAILED"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_where_every_request_fails_exits_1() {
    let node = node().await;
    let (code, stdout, stderr) = loadgen(args(&[
        "run",
        "--target",
        &node.url(),
        "--rate",
        "50",
        "--duration",
        "1s",
        "--error-rate",
        "1",
    ]))
    .await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAILED: no request succeeded: all") && stdout.contains(" failed"),
        "{stdout}"
    );
}

/// The message clap printed after the flag of its `invalid value` line.
#[track_caller]
fn invalid_value_message(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: invalid value "))
        .and_then(|l| l.split_once("': "))
        .map_or_else(|| panic!("no invalid value line: {stderr}"), |(_, m)| m)
}

#[test]
fn a_bad_duration_gets_the_same_message_from_every_binary() {
    let want = farm_api::cli::duration("x")
        .expect_err("not a duration")
        .to_string();
    assert!(want.contains("examples: 500ms"), "{want}");
    let (code, stderr) = farm_testkit::process::serve_refused(&["--heartbeat-timeout", "x"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("'--heartbeat-timeout <HEARTBEAT_TIMEOUT>'"),
        "{stderr}"
    );
    assert_eq!(invalid_value_message(&stderr), want, "{stderr}");
    for args in [
        &["run", "--target", "127.0.0.1:1", "--max", "--duration", "x"][..],
        &[
            "swarm",
            "--control-plane",
            "127.0.0.1:1",
            "--heartbeat",
            "x",
        ],
    ] {
        let (code, stdout, stderr) = loadgen_blocking(args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}\n{stderr}");
        assert_eq!(invalid_value_message(&stderr), want, "{args:?}: {stderr}");
    }
}

#[test]
fn help_documents_the_exit_codes_and_thresholds() {
    for (args, title) in [
        (&["--help"][..], "Exit codes of `loadgen run`:"),
        (&["run", "--help"], "Exit codes:"),
    ] {
        let (code, help, stderr) = loadgen_blocking(args);
        assert_eq!(code, Some(0), "{args:?}: {help}\n{stderr}");
        assert!(help.contains(title), "{args:?}: {help}");
        for code in [
            "0  the run succeeded",
            "1  no request succeeded",
            "2  bad input",
        ] {
            assert!(help.contains(code), "{args:?}: {code} missing: {help}");
        }
    }
    let (_, help, _) = loadgen_blocking(&["--help"]);
    assert!(
        help.contains("Exit codes of `loadgen swarm`:\n  0  the swarm ran"),
        "{help}"
    );
    let (_, help, _) = loadgen_blocking(&["run", "--help"]);
    assert!(
        help.contains("--max-error-rate <SHARE>") && help.contains("--max-p99 <DURATION>"),
        "{help}"
    );
    // The token is a viewer's, from FARM_TOKEN (the swarm's is a node's).
    let token = flag_help(&help, "--token <TOKEN>");
    assert!(
        token.contains("`viewer` token") && token.contains("[env: FARM_TOKEN"),
        "{token}"
    );
}
