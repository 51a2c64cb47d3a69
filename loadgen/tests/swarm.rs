//! `loadgen swarm` against a whole control plane running in this process on
//! `127.0.0.1:0` (`--runtime none`: no nodes but the simulated ones), and
//! the binary's handling of bad input.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use farm_api::v1::{DiscoverRequest, GetFarmMetricsRequest, NodeInfo, NodeState};
use farm_testkit::{
    Farm, NODE, TOKENS, VIEWER, eventually,
    process::{flag_help, run_within, without_farm_env},
};
use loadgen::swarm::{SwarmConfig, SwarmReport};
use serde_json::json;
use tokio::task::JoinHandle;

/// A control plane with the product's timing and no runtime, plus `flags`.
/// It runs in the test's process, where the swarm's own work makes its
/// event loop late: no reads are shed for that (the product sheds past
/// 50 ms of lag), as these tests read the farm to check the swarm.
async fn control_plane(flags: &[&str]) -> Farm {
    Farm::builder()
        .timing(&["--shed-lag", "0s"])
        .flags(flags)
        .start()
        .await
}

/// The nodes of the swarm `run_id`.
async fn swarm_nodes(cp: &Farm, run_id: &str) -> Vec<NodeInfo> {
    let prefix = format!("swarm-{run_id}-");
    cp.nodes()
        .await
        .into_iter()
        .filter(|n| n.name.starts_with(&prefix))
        .collect()
}

/// How many healthy peers of the swarm `run_id` Discover matches.
async fn discoverable(cp: &Farm, run_id: &str) -> u32 {
    cp.discovery()
        .discover(DiscoverRequest {
            group: String::new(),
            count: 1000,
            labels: [("loadgen.swarm".to_owned(), run_id.to_owned())].into(),
            exclude_id: String::new(),
        })
        .await
        .expect("Discover")
        .into_inner()
        .matched
}

/// Waits until `holds` of the swarm's nodes, or panics after `limit`.
async fn wait_swarm(
    cp: &Farm,
    run_id: &str,
    what: &str,
    limit: Duration,
    holds: impl Fn(&[NodeInfo]) -> bool,
) {
    eventually(what, limit, || async {
        let nodes = swarm_nodes(cp, run_id).await;
        if holds(&nodes) {
            Ok(())
        } else {
            Err(format!("{} swarm nodes", nodes.len()))
        }
    })
    .await;
}

fn swarm_config(url: &str, nodes: usize, heartbeat_ms: u64, duration_ms: u64) -> SwarmConfig {
    let mut config = SwarmConfig::new(url, nodes).expect("swarm config");
    config.heartbeat = Duration::from_millis(heartbeat_ms);
    config.duration = Duration::from_millis(duration_ms);
    config.ramp_timeout = Duration::from_secs(20);
    config.cleanup_timeout = Duration::from_secs(10);
    config
}

/// Runs a swarm in a task, so the test can look at the farm meanwhile.
fn spawn_swarm(config: &SwarmConfig) -> JoinHandle<SwarmReport> {
    let config = config.clone();
    tokio::spawn(async move {
        loadgen::swarm::swarm(&config, std::future::pending())
            .await
            .expect("swarm")
    })
}

async fn finished(task: JoinHandle<SwarmReport>, limit: Duration) -> SwarmReport {
    tokio::time::timeout(limit, task)
        .await
        .expect("swarm finished in time")
        .expect("swarm task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_nodes_register_heartbeat_and_leave() {
    let cp = control_plane(&[]).await;
    let config = swarm_config(&cp.url(), 1000, 250, 2000);
    assert_eq!(config.connections, 10);
    let run_id = config.run_id.clone();
    let started = Instant::now();
    let task = spawn_swarm(&config);
    wait_swarm(
        &cp,
        &run_id,
        "1000 healthy swarm nodes",
        Duration::from_secs(20),
        |nodes| nodes.len() == 1000 && nodes.iter().all(|n| n.state == NodeState::Healthy as i32),
    )
    .await;
    assert_eq!(discoverable(&cp, &run_id).await, 1000);
    let report = finished(task, Duration::from_secs(25)).await;
    eprintln!("swarm of 1000 took {:?}", started.elapsed());

    assert_eq!(
        (report.nodes, report.registered),
        (1000, 1000),
        "{report:#?}"
    );
    assert_eq!(report.errors(), 0, "{report:#?}");
    assert!(!report.interrupted);
    // Measured for the 2 s asked: never less; more only by what a busy
    // machine delays the end (once 0.5 s under the whole suite), and it
    // stops by itself.
    assert!(
        report.duration_s >= 1.99 && report.duration_s < 10.0,
        "{report:#?}"
    );
    // 4 beats a second each for 2 s would be about 8000 sent, nearly all
    // acknowledged; a busy machine sends fewer and has more in flight at
    // the end (the rate is the benchmark's to measure, not this test's).
    // Every node beats, and is answered, more than once.
    assert!(report.heartbeats_sent >= 2 * 1000, "{report:#?}");
    assert!(
        report.heartbeats_acked >= 2 * 1000 && report.heartbeats_acked <= report.heartbeats_sent,
        "{report:#?}"
    );
    for p in [&report.heartbeat_rtt_us, &report.register_us] {
        assert!(p.p50 > 0 && p.p50 <= p.p90 && p.p90 <= p.p99, "{report:#?}");
        assert!(p.p99 <= p.p999 && p.p999 <= p.max, "{report:#?}");
    }
    assert_eq!((report.deregistered, report.left_registered), (1000, 0));
    let mut text = Vec::new();
    report.write_text(&mut text).expect("text");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(
        text.contains("1000 of 1000") && text.contains("p99.9"),
        "{text}"
    );

    // Left as found.
    assert!(swarm_nodes(&cp, &run_id).await.is_empty());
    assert_eq!(discoverable(&cp, &run_id).await, 0);
}

/// With samples, every simulated node reports a load a dashboard can
/// show: within the ranges a real node's would be, and not all alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_report_samples_when_asked() {
    let cp = control_plane(&[]).await;
    let mut config = swarm_config(&cp.url(), 50, 200, 5000);
    config.samples = true;
    let run_id = config.run_id.clone();
    let task = spawn_swarm(&config);
    let farm = eventually(
        "all 50 simulated nodes reporting",
        Duration::from_secs(20),
        || async {
            let farm = cp
                .metrics()
                .get_farm_metrics(GetFarmMetricsRequest {
                    include_loads: true,
                    ..Default::default()
                })
                .await
                .expect("GetFarmMetrics")
                .into_inner();
            if farm.reporting_nodes == 50 {
                Ok(farm)
            } else {
                Err(format!("{} reporting", farm.reporting_nodes))
            }
        },
    )
    .await;
    let loads = farm.loads.expect("loads");
    assert_eq!(loads.node_ids.len(), 50);
    for i in 0..50 {
        assert!((5.0..=95.0).contains(&loads.cpu_percent[i]), "{loads:?}");
        assert!(loads.memory_used_bytes[i] < loads.memory_limit_bytes[i]);
        assert!(loads.requests_per_second[i] > 0.0);
    }
    let distinct: BTreeSet<u32> = loads.cpu_percent.iter().map(|c| c.to_bits()).collect();
    assert!(distinct.len() > 10, "nodes differ: {distinct:?}");
    let report = finished(task, Duration::from_secs(30)).await;
    assert_eq!(report.errors(), 0, "{report:#?}");
    assert!(swarm_nodes(&cp, &run_id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_has_exactly_the_agreed_fields() {
    let cp = control_plane(&[]).await;
    let report = loadgen::swarm::swarm(
        &swarm_config(&cp.url(), 20, 100, 500),
        std::future::pending(),
    )
    .await
    .expect("swarm");
    let mut json = Vec::new();
    report.write_json(&mut json).expect("json");
    let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("object").keys().cloned().collect()
    };
    let expected: BTreeSet<String> = [
        "nodes",
        "registered",
        "heartbeats",
        "errors",
        "errors_by_code",
        "heartbeat_rtt_us",
        "register_us",
        "config_pushes",
        "registration_s",
        "duration_s",
        "interrupted",
    ]
    .map(String::from)
    .into();
    assert_eq!(keys(&json), expected);
    let percentiles: BTreeSet<String> = ["p50", "p90", "p99", "p999", "max"]
        .map(String::from)
        .into();
    assert_eq!(keys(&json["heartbeat_rtt_us"]), percentiles);
    assert_eq!(keys(&json["register_us"]), percentiles);
    assert_eq!(json["nodes"], 20);
    assert_eq!(json["registered"], 20);
    assert_eq!(json["errors"], 0);
    assert_eq!(json["errors_by_code"], serde_json::json!({}));
    assert_eq!(json["interrupted"], false);
    assert_eq!(json["config_pushes"], 0);
    let registration = json["registration_s"].as_f64().expect("seconds");
    assert!(registration > 0.0 && registration < 60.0, "{json}");
    assert!(json["heartbeats"].as_u64().expect("count") >= 20 * 4);
    assert!(json["heartbeat_rtt_us"]["p99"].as_u64().expect("p99") > 0);
    assert!(json["duration_s"].as_f64().expect("seconds") >= 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_put_during_a_swarm_reaches_every_simulated_node() {
    let cp = control_plane(&[]).await;
    let config = swarm_config(&cp.url(), 50, 200, 3000);
    let run_id = config.run_id.clone();
    let task = spawn_swarm(&config);
    wait_swarm(
        &cp,
        &run_id,
        "50 healthy swarm nodes",
        Duration::from_secs(10),
        |nodes| nodes.len() == 50 && nodes.iter().all(|n| n.state == NodeState::Healthy as i32),
    )
    .await;
    let version = cp
        .put_config("global", json!({"workload": {"delay_ms": 1}}))
        .await;
    assert!(version > 0);
    // Each simulated node applies the push and reports its version.
    wait_swarm(
        &cp,
        &run_id,
        "every node on the new config",
        Duration::from_secs(5),
        |nodes| nodes.len() == 50 && nodes.iter().all(|n| n.config_version == version),
    )
    .await;
    let report = finished(task, Duration::from_secs(20)).await;
    assert!(report.config_pushes >= 50, "{report:#?}");
    assert_eq!(report.errors(), 0, "{report:#?}");
    assert!(swarm_nodes(&cp, &run_id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_stop_gives_a_partial_report_and_still_cleans_up() {
    let cp = control_plane(&[]).await;
    let config = swarm_config(&cp.url(), 200, 200, 60_000);
    let run_id = config.run_id.clone();
    let started = Instant::now();
    let report = loadgen::swarm::swarm(&config, tokio::time::sleep(Duration::from_secs(2)))
        .await
        .expect("swarm");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(report.interrupted, "{report:#?}");
    assert_eq!(report.registered, 200, "{report:#?}");
    // Measured for a fraction of the 60 s asked (the stop came 2 s after
    // the start, ramp included; a busy machine may wake the stop late).
    assert!(report.duration_s < 10.0, "{report:#?}");
    assert_eq!(report.deregistered, 200, "{report:#?}");
    assert!(swarm_nodes(&cp, &run_id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_and_its_absence_is_reported() {
    let cp = control_plane(&[
        "--admin-token",
        "swarm-admin-token",
        "--node-token",
        "swarm-node-token",
        "--viewer-token",
        "swarm-viewer-token",
    ])
    .await;
    let mut config = swarm_config(&cp.url(), 10, 100, 300);
    config.token = farm_api::Bearer::new(Some("swarm-node-token")).expect("header value");
    let report = loadgen::swarm::swarm(&config, std::future::pending())
        .await
        .expect("swarm");
    assert_eq!((report.registered, report.errors()), (10, 0), "{report:#?}");
    assert_eq!(report.deregistered, 10);

    config.token = farm_api::Bearer::default();
    let report = loadgen::swarm::swarm(&config, std::future::pending())
        .await
        .expect("swarm");
    assert_eq!(report.registered, 0, "{report:#?}");
    assert_eq!(
        report.errors_by_code(),
        BTreeMap::from([("UNAUTHENTICATED".to_owned(), 10)])
    );
}

/// Runs `loadgen swarm` with `args` and, of the farm's variables, only
/// `env`, killing it after 20 s; (exit code, stdout, stderr).
fn loadgen_with(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    without_farm_env(&mut command)
        .arg("swarm")
        .args(args)
        .envs(env.iter().copied());
    let ran = run_within(&mut command, Duration::from_secs(20)).expect("spawn loadgen");
    let status = ran
        .status
        .unwrap_or_else(|| panic!("loadgen {args:?} still running after 20 s"));
    (status.code(), ran.stdout, ran.stderr)
}

/// Runs `loadgen swarm` with `args` and no farm variable; (exit code,
/// stderr).
fn loadgen(args: &[&str]) -> (Option<i32>, String) {
    let (code, _, stderr) = loadgen_with(args, &[]);
    (code, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_the_node_token_from_farm_node_token() {
    let cp = control_plane(TOKENS).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("swarm.json");
    let url = cp.url();
    let args = [
        "--control-plane",
        url.as_str(),
        "--nodes",
        "5",
        "--heartbeat",
        "100ms",
        "--duration",
        "300ms",
        "--quiet",
        "--json",
        json.to_str().expect("utf-8 path"),
    ];
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json")
    };
    let swarm = |env: &'static [(&'static str, &'static str)]| {
        let args = args.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            loadgen_with(&args, env)
        })
    };

    // The node token, where farm-node reads it.
    let (code, stdout, stderr) = swarm(&[("FARM_NODE_TOKEN", NODE)]).await.expect("join");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = read();
    assert_eq!(
        (report["registered"].as_u64(), report["errors"].as_u64()),
        (Some(5), Some(0)),
        "{report}"
    );

    // `loadgen run`'s variable is not the swarm's: even holding the node
    // token, it is not sent.
    let (code, stdout, stderr) = swarm(&[("FARM_TOKEN", NODE)]).await.expect("join");
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let report = read();
    assert_eq!(report["registered"], 0, "{report}");
    assert_eq!(
        report["errors_by_code"],
        json!({"UNAUTHENTICATED": 5}),
        "{report}"
    );

    // A viewer token is not enough to be a node.
    let (code, _, _) = swarm(&[("FARM_NODE_TOKEN", VIEWER)]).await.expect("join");
    assert_eq!(code, Some(1));
    assert_eq!(read()["errors_by_code"], json!({"PERMISSION_DENIED": 5}));
}

#[test]
fn help_names_the_token_role_and_variable() {
    let (code, help, stderr) = loadgen_with(&["--help"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let token = flag_help(&help, "--token <TOKEN>");
    assert!(
        token.contains("`node` token") && token.contains("[env: FARM_NODE_TOKEN"),
        "{token}"
    );
    // Its exit codes (`loadgen --help` lists them beside `run`'s).
    let codes = help
        .split_once("Exit codes:")
        .unwrap_or_else(|| panic!("no exit codes in {help}"))
        .1;
    for code in [
        "0  the swarm ran and its nodes registered",
        "1  no node could register",
        "2  bad input",
    ] {
        assert!(codes.contains(code), "{code} missing: {help}");
    }
}

#[track_caller]
fn check_refused(args: &[&str], says: &str) {
    let (code, stderr) = loadgen(args);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        stderr.contains(says),
        "{args:?} should say {says:?}: {stderr}"
    );
}

#[test]
fn bad_input_exits_with_2() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let closed = format!("http://{closed}");
    let cp = ["--control-plane", closed.as_str()];
    let with = |more: &[&'static str]| {
        let mut all = cp.to_vec();
        all.extend_from_slice(more);
        all
    };
    check_refused(&with(&["--nodes", "0"]), "--nodes");
    check_refused(&with(&["--duration", "forever"]), "--duration");
    check_refused(&with(&["--heartbeat", "1ms"]), "--heartbeat");
    check_refused(&["--control-plane", "http://"], "URL");
    check_refused(&["--control-plane", "not a url"], "URL");
    check_refused(&["--nodes", "10"], "--control-plane");
    check_refused(
        &with(&["--nodes", "10", "--duration", "1s"]),
        "cannot connect",
    );
}
