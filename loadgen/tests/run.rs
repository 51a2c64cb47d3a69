//! Runs against real farm-node servers on `127.0.0.1:0`, in this process.

use std::{process::Command, time::Duration};

use farm_node::NodeConfig;
use loadgen::{Mode, RunConfig};
use tokio::{net::TcpListener, sync::oneshot};

/// A farm-node serving on loopback; stops when dropped.
struct Node {
    addr: String,
    _stop: oneshot::Sender<()>,
}

async fn node() -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(farm_node::run(
        NodeConfig::new("http://127.0.0.1:1", "t1"),
        listener,
        async {
            let _ = rx.await;
        },
    ));
    Node {
        addr: format!("http://{addr}"),
        _stop: tx,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_loop_counts_add_up_in_both_modes() {
    let node = node().await;
    for mode in [Mode::Unary, Mode::Stream] {
        let mut config = RunConfig::closed(vec![node.addr.clone()], 8, Duration::from_millis(500));
        config.mode = mode;
        config.connections = 2;
        config.streams = 2;
        config.fail_every = 10;
        config.fail_code = 5;
        let report = loadgen::run(&config, std::future::pending())
            .await
            .expect("run");
        assert!(report.requests > 50, "{mode:?}: {report:?}");
        assert!(!report.interrupted);
        // Every tenth request built fails; a few in flight at the end are
        // dropped, so the count is within the concurrency of a tenth.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_loop_holds_the_rate() {
    let node = node().await;
    let mut config = RunConfig::closed(vec![node.addr.clone()], 16, Duration::from_secs(2));
    config.rate = Some(200.0);
    let report = loadgen::run(&config, std::future::pending())
        .await
        .expect("run");
    assert!(
        (350..=450).contains(&report.requests),
        "{} requests",
        report.requests
    );
    assert_eq!(report.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_target_shows_in_the_corrected_latency() {
    // 50 ms per request with one request in flight: 20 rps at most, against
    // 100 rps asked. Requests queue behind each other; only the corrected
    // figures see the wait.
    let node = node().await;
    let mut config = RunConfig::closed(vec![node.addr.clone()], 1, Duration::from_secs(1));
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
    let config = RunConfig::closed(vec![node.addr.clone()], 4, Duration::from_secs(30));
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
    let addr = node.addr.clone();
    let out = tokio::task::spawn_blocking({
        let json = json.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_loadgen"))
                .args([
                    "run", "--target", &addr, "--mode", "stream", "--rate", "100",
                ])
                .args(["--duration", "500ms", "--json"])
                .arg(&json)
                .output()
                .expect("loadgen runs")
        }
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
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
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(args)
            .output()
            .expect("loadgen runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}

async fn served(addr: &str) -> u64 {
    let mut client = farm_api::v1::workload_client::WorkloadClient::connect(addr.to_owned())
        .await
        .expect("connect");
    client
        .info(farm_api::v1::InfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_spread_over_targets_and_add_up_to_what_nodes_served() {
    let (a, b) = (node().await, node().await);
    for mode in [Mode::Unary, Mode::Stream] {
        let before = served(&a.addr).await + served(&b.addr).await;
        let mut config = RunConfig::closed(
            vec![a.addr.clone(), b.addr.clone()],
            6,
            Duration::from_millis(400),
        );
        config.mode = mode;
        let report = loadgen::run(&config, std::future::pending())
            .await
            .expect("run");
        // Let requests cut off at the end finish on the nodes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (on_a, on_b) = (served(&a.addr).await, served(&b.addr).await);
        let total = on_a + on_b - before;
        assert!(
            total >= report.requests && total <= report.requests + 6,
            "{mode:?}: nodes served {total}, loadgen counted {}",
            report.requests
        );
        assert!(report.requests > 0 && report.errors == 0, "{report:?}");
    }
    assert!(served(&a.addr).await > 0 && served(&b.addr).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_prints_a_partial_report() {
    let node = node().await;
    let addr = node.addr.clone();
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
async fn streams_are_opened_again_after_a_node_restarts() {
    let first = node().await;
    let addr = first.addr.clone();
    let mut config = RunConfig::closed(vec![addr.clone()], 4, Duration::from_millis(1500));
    config.mode = Mode::Stream;
    let run = tokio::spawn(async move { loadgen::run(&config, std::future::pending()).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listener = TcpListener::bind(addr.trim_start_matches("http://"))
        .await
        .expect("the port again");
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(farm_node::run(
        NodeConfig::new("http://127.0.0.1:1", "t1"),
        listener,
        async {
            let _ = rx.await;
        },
    ));
    let report = run.await.expect("join").expect("run");
    let after = served(&addr).await;
    assert!(after > 10, "the restarted node served {after}: {report:?}");
    assert!(report.requests > after, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warmup_requests_are_not_counted() {
    let node = node().await;
    let mut config = RunConfig::closed(vec![node.addr.clone()], 4, Duration::from_millis(500));
    config.rate = Some(100.0);
    config.warmup = Duration::from_millis(500);
    let report = loadgen::run(&config, std::future::pending())
        .await
        .expect("run");
    assert!((45..=55).contains(&report.requests), "{report:?}");
    assert!((report.duration_s - 0.5).abs() < 0.05, "{report:?}");
}
