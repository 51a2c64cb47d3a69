//! Failures from outside: a node killed with SIGKILL leaves Discover at once
//! and is replaced; a frozen node turns unhealthy after its deadline and
//! healthy again when it resumes; a node that keeps doing so is damped.

use std::time::{Duration, Instant};

use farm_api::v1::NodeState;
use farm_testkit::{Farm, by_name, eventually, healthy, pid, process::alive, ready_if};
use nix::{sys::signal, unistd::Pid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_discover_quickly_and_is_replaced() {
    let farm = Farm::start(10, &[]).await;
    let nodes = farm.wait_healthy(10, Duration::from_secs(20)).await;
    let victim = by_name(&nodes, "node-004").clone();
    assert!(farm.discover("", 100).await.contains(&victim.id));

    signal::kill(Pid::from_raw(pid(&victim)), signal::Signal::SIGKILL).expect("kill");
    // The dead process's address leaves Discover (its replacement may be
    // back under the same id within milliseconds, on a new port). Generous
    // bound for a shared machine; the benchmark measures the real figure.
    eventually(
        "the killed node's address to leave Discover",
        Duration::from_secs(3),
        || async {
            let peers = farm.discover_peers("", 100).await;
            ready_if(!peers.iter().any(|p| p.address == victim.address), peers)
        },
    )
    .await;

    let nodes = farm
        .wait_nodes("replacement healthy", Duration::from_secs(15), |nodes| {
            let n = by_name(nodes, "node-004");
            nodes.len() == 10 && nodes.iter().all(healthy) && pid(n) != pid(&victim)
        })
        .await;
    let replacement = by_name(&nodes, "node-004");
    assert_eq!(
        replacement.id, victim.id,
        "the replacement re-attaches under the same id"
    );
    assert_eq!(replacement.starts, 2);
    assert!(farm.discover("", 100).await.contains(&victim.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_turns_unhealthy_and_sigcont_healthy_again() {
    let farm = Farm::start(3, &[]).await;
    let nodes = farm.wait_healthy(3, Duration::from_secs(20)).await;
    let frozen = by_name(&nodes, "node-001").clone();
    let process = Pid::from_raw(pid(&frozen));
    signal::kill(process, signal::Signal::SIGSTOP).expect("stop");
    let stopped_at = Instant::now();
    let now = farm
        .wait_nodes("frozen node unhealthy", Duration::from_secs(10), |nodes| {
            by_name(nodes, "node-001").state == NodeState::Unhealthy as i32
        })
        .await;
    // Not before its deadline (600 ms in these tests).
    assert!(stopped_at.elapsed() >= Duration::from_millis(500));
    assert!(
        by_name(&now, "node-001")
            .state_reason
            .contains("no heartbeat")
    );
    assert!(!farm.discover("", 10).await.contains(&frozen.id));
    assert!(alive(pid(&frozen)), "a frozen node is not replaced");

    signal::kill(process, signal::Signal::SIGCONT).expect("continue");
    let now = farm.wait_healthy(3, Duration::from_secs(10)).await;
    assert_eq!(pid(by_name(&now, "node-001")), pid(&frozen), "same process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_keeps_crashing_is_restarted_with_backoff() {
    let farm = Farm::start(2, &[]).await;
    farm.wait_healthy(2, Duration::from_secs(20)).await;
    // Kill the same slot as soon as it comes back, four times.
    let mut last_pid = 0;
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let nodes = farm
            .wait_nodes("node-001 running again", Duration::from_secs(20), |nodes| {
                let n = by_name(nodes, "node-001");
                !n.runtime_id.is_empty() && pid(n) != last_pid
            })
            .await;
        let n = by_name(&nodes, "node-001");
        last_pid = pid(n);
        let killed = Instant::now();
        signal::kill(Pid::from_raw(last_pid), signal::Signal::SIGKILL).expect("kill");
        farm.wait_nodes("node-001 back", Duration::from_secs(20), |nodes| {
            let n = by_name(nodes, "node-001");
            !n.runtime_id.is_empty() && n.runtime_id != format!("pid:{last_pid}")
        })
        .await;
        gaps.push(killed.elapsed());
    }
    // First restart immediate, then 0.5 s, 1 s, 2 s: the last gap is longer.
    assert!(gaps[3] >= Duration::from_millis(1500), "gaps {gaps:?}");
    assert!(gaps[0] < gaps[3], "gaps {gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_stays_out_of_discover_until_healthy_for_the_hold() {
    let hold = Duration::from_secs(3);
    // The tests' timing, with damping: three lapses within a minute hold
    // a node for 3 s.
    let timing: Vec<&str> = farm_testkit::farm::FAST
        .chunks(2)
        .filter(|pair| pair[0] != "--flap-threshold")
        .flatten()
        .copied()
        .chain(["--flap-threshold", "3", "--flap-damping", "3s"])
        .collect();
    let farm = Farm::builder().nodes(2).timing(&timing).start().await;
    let nodes = farm.wait_healthy(2, Duration::from_secs(20)).await;
    let flapper = by_name(&nodes, "node-001").clone();
    let process = Pid::from_raw(pid(&flapper));
    // Every change of the node, as a dashboard or a client library sees it.
    let mut watch = farm.watch().await;

    // Two drops: the node comes back at once each time.
    for _ in 0..2 {
        signal::kill(process, signal::Signal::SIGSTOP).expect("stop");
        farm.wait_nodes("frozen node unhealthy", Duration::from_secs(10), |nodes| {
            by_name(nodes, "node-001").state == NodeState::Unhealthy as i32
        })
        .await;
        signal::kill(process, signal::Signal::SIGCONT).expect("continue");
        farm.wait_healthy(2, Duration::from_secs(10)).await;
    }

    // The third: heartbeating again, it is held out of Discover.
    signal::kill(process, signal::Signal::SIGSTOP).expect("stop");
    farm.wait_nodes("frozen node unhealthy", Duration::from_secs(10), |nodes| {
        by_name(nodes, "node-001").state == NodeState::Unhealthy as i32
    })
    .await;
    let resumed = Instant::now();
    signal::kill(process, signal::Signal::SIGCONT).expect("continue");
    let held = farm
        .wait_nodes(
            "the node held as flapping",
            Duration::from_secs(10),
            |nodes| {
                by_name(nodes, "node-001")
                    .state_reason
                    .starts_with("flapping")
            },
        )
        .await;
    let held = by_name(&held, "node-001");
    assert_eq!(held.state, NodeState::Unhealthy as i32);
    assert!(
        !farm.discover("", 10).await.contains(&flapper.id),
        "held out of Discover"
    );
    let back = farm.wait_healthy(2, Duration::from_secs(20)).await;
    assert!(
        resumed.elapsed() >= hold,
        "back after {:?}, before the {hold:?} hold",
        resumed.elapsed()
    );
    assert_eq!(by_name(&back, "node-001").state_reason, "");
    assert!(farm.discover("", 10).await.contains(&flapper.id));

    // The Watch stream said so: held, then healthy.
    let mut said = Vec::new();
    while said
        .last()
        .is_none_or(|(state, _)| *state != NodeState::Healthy as i32)
        || said
            .iter()
            .all(|(_, reason): &(i32, String)| !reason.starts_with("flapping"))
    {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a watch event in time")
            .expect("watch")
            .expect("the stream goes on");
        if let Some(node) = event.node.filter(|node| node.id == flapper.id) {
            said.push((node.state, node.state_reason));
        }
    }
    assert!(
        said.iter()
            .any(|(state, reason)| *state == NodeState::Unhealthy as i32
                && reason.starts_with("flapping: unhealthy 3 times")),
        "{said:?}"
    );
}
