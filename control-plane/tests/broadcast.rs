//! `Farm.Broadcast` and `Farm.SimulateLoad` against real process nodes.

use std::time::Duration;

use farm_api::v1::{
    BroadcastRequest, InfoRequest, LoadSpec, LogLevelCommand, NodeActionKind, NodeSelector,
    SimulateLoadRequest, broadcast_request::Command,
};
use farm_testkit::{Farm, by_name, eventually, pid, ready_if};
use tonic::Code;

/// CPU ticks (user + system) a process has used.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    stat.rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().expect("ticks"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reports_every_node_including_a_stopped_one() {
    let farm = Farm::start(3, &[]).await;
    let nodes = farm.wait_healthy(3, Duration::from_secs(20)).await;
    let stopped = by_name(&nodes, "node-002").clone();
    farm.act(&stopped.id, NodeActionKind::Stop)
        .await
        .expect("stop");

    let response = farm
        .farm()
        .broadcast(BroadcastRequest {
            nodes: None,
            command: Some(Command::Info(InfoRequest {})),
        })
        .await
        .expect("Broadcast")
        .into_inner();
    assert_eq!(response.results.len(), 3, "{response:?}");
    assert_eq!((response.succeeded, response.failed), (2, 1));
    for result in &response.results {
        if result.node_id == stopped.id {
            assert_eq!(result.code, Code::Unavailable as u32, "{result:?}");
            assert!(result.message.contains("cannot reach"), "{result:?}");
        } else {
            assert_eq!(result.code, 0, "{result:?}");
            let info: serde_json::Value = serde_json::from_str(&result.output).expect("json");
            assert_eq!(info["node_id"], result.node_id.as_str());
            assert_eq!(info["name"], result.name.as_str());
        }
    }

    // The log filter of the running nodes, by group.
    let levels = farm
        .farm()
        .broadcast(BroadcastRequest {
            nodes: Some(NodeSelector {
                node_ids: vec![by_name(&nodes, "node-001").id.clone()],
                group: String::new(),
            }),
            command: Some(Command::LogLevel(LogLevelCommand {
                filter: "debug".into(),
            })),
        })
        .await
        .expect("Broadcast")
        .into_inner();
    assert_eq!(levels.succeeded, 1, "{levels:?}");
    assert!(levels.results[0].output.contains("previous"), "{levels:?}");
    let bad = farm
        .farm()
        .broadcast(BroadcastRequest {
            nodes: Some(NodeSelector {
                node_ids: vec![by_name(&nodes, "node-001").id.clone()],
                group: String::new(),
            }),
            command: Some(Command::LogLevel(LogLevelCommand {
                filter: "=[not a filter".into(),
            })),
        })
        .await
        .expect("Broadcast")
        .into_inner();
    assert_eq!(bad.results[0].code, Code::InvalidArgument as u32, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_load_burns_cpu_on_the_chosen_node_only() {
    let farm = Farm::start(3, &[]).await;
    let nodes = farm.wait_healthy(3, Duration::from_secs(20)).await;
    let busy = by_name(&nodes, "node-001").clone();
    let idle = by_name(&nodes, "node-003").clone();
    let (busy_before, idle_before) = (cpu_ticks(pid(&busy)), cpu_ticks(pid(&idle)));
    let response = farm
        .farm()
        .simulate_load(SimulateLoadRequest {
            nodes: Some(NodeSelector {
                node_ids: vec![busy.id.clone()],
                group: String::new(),
            }),
            load: Some(LoadSpec {
                cpu_percent: 50.0,
                memory_mib: 16,
                duration_ms: 3000,
            }),
        })
        .await
        .expect("SimulateLoad")
        .into_inner();
    assert_eq!(response.succeeded, 1, "{response:?}");
    // Half the machine's CPUs for three seconds is 1.5 core-seconds on a
    // 2-CPU machine; a quarter core-second shows it burns, while the
    // simulation still runs, however busy the machine is.
    let busy_used = eventually(
        "the loaded node to burn 25 ticks of CPU",
        Duration::from_secs(3),
        || async {
            let used = cpu_ticks(pid(&busy)) - busy_before;
            ready_if(used >= 25, used)
        },
    )
    .await;
    let idle_used = cpu_ticks(pid(&idle)) - idle_before;
    assert!(
        idle_used < 10,
        "an idle node used {idle_used} ticks while the other burnt {busy_used}"
    );
}

#[tokio::test]
async fn bad_simulations_are_refused_before_any_node_is_asked() {
    let farm = Farm::start(0, &[]).await;
    /// Refused with `code`, in a message that says `says`.
    #[track_caller]
    fn check(
        result: Result<tonic::Response<farm_api::v1::BroadcastResponse>, tonic::Status>,
        code: Code,
        says: &str,
    ) {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(says), "{says:?}: {status:?}");
    }
    let load = |cpu_percent, memory_mib, duration_ms| {
        Some(LoadSpec {
            cpu_percent,
            memory_mib,
            duration_ms,
        })
    };
    let mut client = farm.farm();
    for (spec, says) in [
        (load(150.0, 0, 1000), "cpu_percent"),
        (load(10.0, 4096, 1000), "memory_mib"),
        (load(10.0, 0, 700_000), "duration_ms"),
        (None, "load is required"),
        // A valid load (duration unset: its default), refused only because
        // no node is registered.
        (load(10.0, 0, 0), "no node is selected"),
    ] {
        check(
            client
                .simulate_load(SimulateLoadRequest {
                    nodes: None,
                    load: spec,
                })
                .await,
            Code::InvalidArgument,
            says,
        );
    }
    check(
        client
            .simulate_load(SimulateLoadRequest {
                nodes: Some(NodeSelector {
                    node_ids: vec!["n404".into()],
                    group: String::new(),
                }),
                load: load(10.0, 0, 1000),
            })
            .await,
        Code::NotFound,
        "n404",
    );
    // No node registered: nothing to send to.
    check(
        client
            .broadcast(BroadcastRequest {
                nodes: None,
                command: Some(Command::Info(InfoRequest {})),
            })
            .await,
        Code::InvalidArgument,
        "no node is selected",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_load_shows_in_that_nodes_metrics_within_two_seconds() {
    use farm_api::v1::GetNodeMetricsRequest;
    let farm = Farm::start(2, &[]).await;
    let nodes = farm.wait_healthy(2, Duration::from_secs(20)).await;
    let busy = by_name(&nodes, "node-001").clone();
    let idle = by_name(&nodes, "node-002").clone();
    let mut metrics = farm.metrics();
    let cpu = |node_id: String| {
        let mut metrics = metrics.clone();
        async move {
            metrics
                .get_node_metrics(GetNodeMetricsRequest { node_id })
                .await
                .expect("GetNodeMetrics")
                .into_inner()
                .node
                .and_then(|n| n.sample)
                .map_or(0.0, |s| s.cpu_percent)
        }
    };
    let asked = std::time::Instant::now();
    farm.farm()
        .simulate_load(SimulateLoadRequest {
            nodes: Some(NodeSelector {
                node_ids: vec![busy.id.clone()],
                group: String::new(),
            }),
            load: Some(LoadSpec {
                cpu_percent: 60.0,
                memory_mib: 32,
                duration_ms: 4000,
            }),
        })
        .await
        .expect("SimulateLoad");
    // Two seconds promised; a shared machine gets some slack.
    eventually(
        "the loaded node's CPU to reach 25%",
        Duration::from_secs(4).saturating_sub(asked.elapsed()),
        || async {
            let busy_cpu = cpu(busy.id.clone()).await;
            ready_if(busy_cpu >= 25.0, busy_cpu)
        },
    )
    .await;
    let idle_cpu = cpu(idle.id.clone()).await;
    assert!(idle_cpu < 15.0, "an idle node shows {idle_cpu}% CPU");
    let memory = metrics
        .get_node_metrics(GetNodeMetricsRequest {
            node_id: busy.id.clone(),
        })
        .await
        .expect("GetNodeMetrics")
        .into_inner()
        .node
        .and_then(|n| n.sample)
        .map_or(0, |s| s.rss_bytes);
    assert!(
        memory >= 32 << 20,
        "the held memory shows in the RSS: {memory}"
    );
}
