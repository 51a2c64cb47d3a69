//! `LoadTest.Run`: load tests the control plane runs against its own
//! healthy nodes, streamed as they go. Real process nodes count what they
//! serve, so the report is checked against the nodes, not against itself.

use std::{
    collections::BTreeSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use farm_api::v1::{
    LoadMode, LoadTestEvent, LoadTestProgress, LoadTestReport, LoadTestRequest, LoadTestStarted,
    NodeInfo, RegisterRequest, load_test_event::Event,
};
use farm_testkit::{
    ADMIN, Farm, NODE, TOKENS, VIEWER, eventually, eventually_every, grpc_web,
    interop::{run, stdout},
    ready_if,
};
use prost::Message;
use tonic::{Code, Status, Streaming};

/// The longest any single run here may take to deliver its report.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// A short closed-loop unary run.
fn quick(duration_ms: u32) -> LoadTestRequest {
    LoadTestRequest {
        concurrency: 4,
        duration_ms,
        ..Default::default()
    }
}

/// Everything one run streamed.
#[derive(Debug)]
struct Events {
    started: LoadTestStarted,
    progress: Vec<LoadTestProgress>,
    report: LoadTestReport,
}

/// Reads a run's stream to its end, checking its shape: `started` first,
/// `progress` events, `report` last, then the end of the stream.
async fn collect(mut stream: Streaming<LoadTestEvent>) -> Events {
    async fn next(stream: &mut Streaming<LoadTestEvent>) -> Option<LoadTestEvent> {
        tokio::time::timeout(RUN_TIMEOUT, stream.message())
            .await
            .expect("the next event in time")
            .expect("an event, not an error")
    }
    let Some(LoadTestEvent {
        event: Some(Event::Started(started)),
    }) = next(&mut stream).await
    else {
        panic!("the stream opens with `started`");
    };
    let mut progress = Vec::new();
    loop {
        match next(&mut stream).await.and_then(|e| e.event) {
            Some(Event::Progress(p)) => progress.push(p),
            Some(Event::Report(report)) => {
                assert!(
                    next(&mut stream).await.is_none(),
                    "the stream ends after the report"
                );
                return Events {
                    started,
                    progress,
                    report,
                };
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Runs a load test as `token` (none: an open control plane) and reads it
/// to its end.
async fn run_load(
    farm: &Farm,
    request: LoadTestRequest,
    token: Option<&str>,
) -> Result<Events, Status> {
    let stream = farm
        .with_token(token)
        .load_test()
        .run(request)
        .await?
        .into_inner();
    Ok(collect(stream).await)
}

/// Requests each node has served so far (`Workload.Info`), in `nodes` order.
async fn served(nodes: &[NodeInfo]) -> Vec<u64> {
    let mut counts = Vec::with_capacity(nodes.len());
    for node in nodes {
        counts.push(farm_testkit::node::served(&node.address).await);
    }
    counts
}

/// What each node served between two counts.
fn served_between(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

fn addresses(nodes: &[NodeInfo]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.address.clone()).collect()
}

#[track_caller]
fn assert_progress_per_second(events: &Events, seconds: u64) {
    let numbers: Vec<u64> = events.progress.iter().map(|p| p.second).collect();
    assert!(
        numbers.len() as u64 >= seconds,
        "at least one progress event per second: {numbers:?}"
    );
    assert!(
        numbers.iter().zip(1..).all(|(n, expected)| *n == expected),
        "seconds counted from 1: {numbers:?}"
    );
    for p in &events.progress {
        assert!(p.p50_us <= p.p99_us && p.p99_us <= p.max_us, "{p:?}");
        assert!(p.errors <= p.requests, "{p:?}");
        if p.requests > 0 {
            assert!(
                0 < p.uncorrected_p50_us && p.uncorrected_p50_us <= p.uncorrected_p99_us,
                "the uncorrected median is there: {p:?}"
            );
        }
    }
    let in_progress: u64 = events.progress.iter().map(|p| p.requests).sum();
    assert!(
        in_progress <= events.report.requests,
        "progress counts {in_progress}, more than the report's {}",
        events.report.requests
    );
}

/// The report's latency by percentile: from 0 to 99.999 and the maximum,
/// rising, and agreeing with the report's own percentiles.
#[track_caller]
fn assert_spectrum(report: &LoadTestReport) {
    let spectrum = &report.spectrum;
    let percentiles: Vec<f64> = spectrum.iter().map(|p| p.percentile).collect();
    assert_eq!(percentiles.first(), Some(&0.0), "{percentiles:?}");
    assert_eq!(percentiles.last(), Some(&100.0), "ends at the maximum");
    assert!(
        percentiles.iter().any(|p| (p - 99.999).abs() < 1e-6),
        "reaches 99.999: {percentiles:?}"
    );
    assert!(
        spectrum
            .windows(2)
            .all(|w| w[0].percentile < w[1].percentile
                && w[0].latency_us <= w[1].latency_us
                && w[0].uncorrected_latency_us <= w[1].uncorrected_latency_us),
        "rising: {spectrum:?}"
    );
    let latency = report.latency_us.as_ref().expect("latency");
    let uncorrected = report.uncorrected_latency_us.as_ref().expect("latency");
    let last = spectrum.last().expect("points");
    assert_eq!(
        (last.latency_us, last.uncorrected_latency_us),
        (latency.max, uncorrected.max)
    );
    let at = |p: f64| spectrum.iter().find(|s| (s.percentile - p).abs() < 1e-6);
    assert_eq!(
        at(90.0).map(|s| s.latency_us),
        Some(latency.p90),
        "{spectrum:?}"
    );
    assert_eq!(
        at(99.0).map(|s| s.latency_us),
        Some(latency.p99),
        "{spectrum:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_streams_progress_and_a_report_that_matches_the_nodes() {
    let farm = Farm::start(3, &[]).await;
    let nodes = farm.wait_healthy(3, Duration::from_secs(20)).await;

    // Closed loop, unary.
    let before = served(&nodes).await;
    let events = run_load(
        &farm,
        LoadTestRequest {
            concurrency: 6,
            ..quick(2000)
        },
        None,
    )
    .await
    .expect("Run");
    let after = served(&nodes).await;
    assert_eq!(events.started.nodes, 3, "{:?}", events.started);
    assert_eq!(
        events
            .started
            .targets
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        addresses(&nodes)
    );
    assert_eq!(events.started.node_ids.len(), 3);
    let report = &events.report;
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(!report.interrupted, "{report:?}");
    assert_eq!(report.rate, 0.0, "closed loop");
    assert_eq!(report.mode, LoadMode::Unary as i32);
    assert!(
        (1.9..3.0).contains(&report.duration_s),
        "measured about 2 s: {report:?}"
    );
    let latency = report.latency_us.as_ref().expect("latency");
    assert!(latency.p50 > 0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    assert_spectrum(report);
    assert_progress_per_second(&events, 2);
    let each = served_between(&before, &after);
    assert!(each.iter().all(|n| *n > 0), "every node served: {each:?}");
    assert_eq!(
        each.iter().sum::<u64>(),
        report.requests,
        "the report counts what the nodes served ({each:?})"
    );

    // Open loop, on streams: the asked rate is what the nodes see.
    let before = served(&nodes).await;
    let events = run_load(
        &farm,
        LoadTestRequest {
            mode: LoadMode::Stream.into(),
            rate: 300.0,
            concurrency: 16,
            ..quick(2000)
        },
        None,
    )
    .await
    .expect("Run");
    let after = served(&nodes).await;
    let report = &events.report;
    assert_eq!(report.mode, LoadMode::Stream as i32);
    assert_eq!(report.rate, 300.0);
    assert!(
        (270.0..=330.0).contains(&report.throughput_rps),
        "about 300 requests per second: {report:?}"
    );
    assert!(report.kept_up, "{report:?}");
    assert_progress_per_second(&events, 2);
    let each = served_between(&before, &after);
    assert_eq!(each.iter().sum::<u64>(), report.requests, "{each:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requested_failures_are_counted_under_their_code() {
    let farm = Farm::start(2, &[]).await;
    let nodes = farm.wait_healthy(2, Duration::from_secs(20)).await;

    for (mode, fail_code, name) in [
        (LoadMode::Unary, 0, "UNAVAILABLE"),
        (LoadMode::Stream, 9, "FAILED_PRECONDITION"),
    ] {
        let before = served(&nodes).await;
        let events = run_load(
            &farm,
            LoadTestRequest {
                mode: mode.into(),
                error_rate: 0.5,
                fail_code,
                ..quick(1500)
            },
            None,
        )
        .await
        .expect("Run");
        let after = served(&nodes).await;
        let report = &events.report;
        assert_eq!(
            report.errors_by_code.keys().collect::<Vec<_>>(),
            [name],
            "{mode:?}: {report:?}"
        );
        assert_eq!(report.errors_by_code[name], report.errors);
        let share = report.errors as f64 / report.requests as f64;
        assert!(
            (0.35..=0.65).contains(&share),
            "{mode:?}: about half failed, not {share}: {report:?}"
        );
        let in_progress: u64 = events.progress.iter().map(|p| p.errors).sum();
        assert!(
            in_progress > 0 && in_progress <= report.errors,
            "{events:?}"
        );
        assert_eq!(
            served_between(&before, &after).iter().sum::<u64>(),
            report.requests,
            "failures are requests the nodes served too"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_admins_run_load_tests() {
    let farm = Farm::start(1, TOKENS).await;
    // Wait for the node as the admin (the farm's own clients have no token).
    farm.with_token(Some(ADMIN))
        .wait_healthy(1, Duration::from_secs(20))
        .await;

    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("stranger-1234567890"), Code::Unauthenticated),
        (Some(NODE), Code::PermissionDenied),
        (Some(VIEWER), Code::PermissionDenied),
    ] {
        let refused = run_load(&farm, quick(300), token)
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), code, "{token:?}: {refused:?}");
    }
    let events = run_load(&farm, quick(300), Some(ADMIN))
        .await
        .expect("admins run load tests");
    assert!(events.report.requests > 0, "{:?}", events.report);
}

/// A change that spoils a valid request.
type Change = fn(&mut LoadTestRequest);

/// The call failed with `code`, its message naming `needle`.
#[track_caller]
fn expect_refusal(result: Result<Events, Status>, code: Code, needle: &str) {
    match result {
        Ok(events) => panic!("expected {code:?}, got a run: {:?}", events.report),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(needle), "{status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_anything_runs() {
    // No runtime and no node: values are checked before nodes are looked at.
    let farm = Farm::start(0, &[]).await;
    let cases: [(&str, Change); 10] = [
        ("rate", |r| r.rate = -5.0),
        ("rate", |r| r.rate = f64::NAN),
        ("concurrency", |r| r.concurrency = 10_001),
        ("duration_ms", |r| r.duration_ms = 10 * 60 * 1000 + 1),
        ("error_rate", |r| r.error_rate = 1.01),
        ("error_rate", |r| r.error_rate = -0.5),
        ("fail_code", |r| r.fail_code = 17),
        ("mode", |r| r.mode = 9),
        ("delay_ms", |r| r.delay_ms = 60_001),
        ("response_bytes", |r| r.response_bytes = 4_000_001),
    ];
    for (field, change) in cases {
        let mut request = quick(500);
        change(&mut request);
        expect_refusal(
            run_load(&farm, request, None).await,
            Code::InvalidArgument,
            field,
        );
    }

    // Well-formed, but nothing to drive.
    expect_refusal(
        run_load(&farm, quick(500), None).await,
        Code::FailedPrecondition,
        "no healthy node",
    );
    let unknown_group = LoadTestRequest {
        group: "nosuch".into(),
        ..quick(500)
    };
    expect_refusal(
        run_load(&farm, unknown_group, None).await,
        Code::NotFound,
        "nosuch",
    );
    let unknown_node = LoadTestRequest {
        node_ids: vec!["n999999".into()],
        ..quick(500)
    };
    expect_refusal(
        run_load(&farm, unknown_node, None).await,
        Code::NotFound,
        "n999999",
    );
    let malformed = LoadTestRequest {
        node_ids: vec!["not a node".into()],
        ..quick(500)
    };
    expect_refusal(
        run_load(&farm, malformed, None).await,
        Code::InvalidArgument,
        "",
    );

    // A registered node that never sent a heartbeat is not healthy yet.
    let registered = farm
        .registry()
        .register(RegisterRequest {
            name: "silent".into(),
            address: "127.0.0.1:9".into(),
            ..Default::default()
        })
        .await
        .expect("Register")
        .into_inner();
    let silent = LoadTestRequest {
        node_ids: vec![registered.node_id],
        ..quick(500)
    };
    expect_refusal(
        run_load(&farm, silent, None).await,
        Code::FailedPrecondition,
        "no healthy node",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_at_a_time_and_a_caller_who_leaves_stops_it() {
    let farm = Farm::start(1, &[]).await;
    let nodes = farm.wait_healthy(1, Duration::from_secs(20)).await;
    let mut client = farm.load_test();

    // Ten minutes, unless stopped.
    let mut first = client
        .run(quick(10 * 60 * 1000))
        .await
        .expect("Run")
        .into_inner();
    let mut seen_progress = false;
    while !seen_progress {
        let event = tokio::time::timeout(Duration::from_secs(5), first.message())
            .await
            .expect("events in time")
            .expect("an event")
            .and_then(|e| e.event);
        match event {
            Some(Event::Started(_)) => {}
            Some(Event::Progress(p)) => seen_progress = p.requests > 0,
            other => panic!("unexpected {other:?}"),
        }
    }

    let second = client.run(quick(500)).await.map(drop);
    let refused = second.expect_err("a second run at once is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // The caller leaves: the run stops, and the node is left alone: its
    // count holds still for 300 ms.
    drop(first);
    let last = Mutex::new(None);
    eventually_every(
        "no more requests to the node once the caller left",
        Duration::from_secs(5),
        Duration::from_millis(300),
        || async {
            let now = served(&nodes).await;
            let before = last.lock().expect("counts").replace(now.clone());
            ready_if(before.as_ref() == Some(&now), now)
        },
    )
    .await;

    // And the next run may start.
    let events = eventually("the next run to start", Duration::from_secs(5), || async {
        match run_load(&farm, quick(300), None).await {
            Err(status) if status.code() == Code::ResourceExhausted => Err(status),
            Err(status) => panic!("the next run: {status:?}"),
            Ok(events) => Ok(events),
        }
    })
    .await;
    assert!(events.report.requests > 0, "{:?}", events.report);
    assert!(!events.report.interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_ends_with_a_partial_report_when_the_control_plane_stops() {
    let farm = Farm::start(1, &[]).await;
    farm.wait_healthy(1, Duration::from_secs(20)).await;
    let stream = farm
        .load_test()
        .run(quick(10 * 60 * 1000))
        .await
        .expect("Run")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let stopped = Instant::now();
    let (events, _dir) = tokio::join!(collect(stream), farm.stop());
    let report = &events.report;
    assert!(report.interrupted, "{report:?}");
    assert!(report.requests > 0, "{report:?}");
    // The load test stops before the nodes do: none of its requests met a
    // departing node.
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(
        report.duration_s < 60.0,
        "stopped with the control plane: {report:?}"
    );
    assert!(!events.progress.is_empty(), "{events:?}");
    assert!(stopped.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_runs_a_load_test_through_grpc_web() {
    let farm = Farm::start(1, &["--cors-origin", "http://localhost:5173"]).await;
    let nodes = farm.wait_healthy(1, Duration::from_secs(20)).await;

    let shown = grpc_web::call(
        farm.addr,
        "/farm.v1.LoadTest/Run",
        &quick(500).encode_to_vec(),
    )
    .host("localhost")
    .header("origin", "http://localhost:5173")
    .timeout(RUN_TIMEOUT)
    .send()
    .await;
    assert_eq!(shown.status, 200, "{shown}");
    let started = shown
        .grpc_messages()
        .first()
        .map(|m| LoadTestEvent::decode(m.as_slice()).expect("an event"));
    let Some(LoadTestEvent {
        event: Some(Event::Started(started)),
    }) = started
    else {
        panic!("the stream opens with `started`: {shown}");
    };
    assert_eq!(
        started.targets,
        [nodes[0].address.clone()],
        "`started` names the node: {shown}"
    );
    assert_eq!(shown.grpc_status(), Some(0), "OK: {shown}");
    assert_eq!(
        shown.header("access-control-allow-origin"),
        Some("http://localhost:5173"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcurl_runs_a_load_test_and_prints_every_event() {
    let farm = Farm::start(2, &[]).await;
    farm.wait_healthy(2, Duration::from_secs(20)).await;
    let addr = farm.addr.to_string();

    let Some(output) = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"mode": "LOAD_MODE_STREAM", "concurrency": 4, "durationMs": 1500}"#,
            &addr,
            "farm.v1.LoadTest/Run",
        ],
    )
    .await
    else {
        return;
    };
    let printed = stdout(&output, "grpcurl LoadTest/Run");
    let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&printed)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("JSON events");
    let first = &events[0]["started"];
    assert_eq!(first["nodes"], 2, "{printed}");
    assert_eq!(first["targets"].as_array().map(Vec::len), Some(2));
    assert!(
        events.iter().any(|e| e.get("progress").is_some()),
        "{printed}"
    );
    let report = &events.last().expect("events")["report"];
    // uint64 is a string in protobuf's JSON.
    let requests: u64 = report["requests"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("requests in {report}"));
    assert!(requests > 0, "{printed}");
    assert_eq!(report["mode"], "LOAD_MODE_STREAM", "{printed}");
    assert!(report["latencyUs"]["p99"].is_string(), "{printed}");

    let output = run(
        "grpcurl",
        &["-plaintext", &addr, "describe", "farm.v1.LoadTestRequest"],
    )
    .await
    .expect("grpcurl");
    let described = stdout(&output, "grpcurl describe");
    assert!(
        described.contains("0: closed loop"),
        "field documentation is served: {described}"
    );

    let output = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"concurrency": 10001, "durationMs": 1000}"#,
            &addr,
            "farm.v1.LoadTest/Run",
        ],
    )
    .await
    .expect("grpcurl");
    assert!(
        !output.status.success(),
        "concurrency past 10000 is refused"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
}
