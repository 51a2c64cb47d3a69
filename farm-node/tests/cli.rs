//! The `farm-node` binary: signals, bad flags, and flags given through
//! the environment.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use farm_testkit::{Farm, eventually, process::without_farm_env, ready_if};
use nix::{sys::signal, unistd::Pid};
use tokio::process::Command;

/// The binary, with none of the caller's `FARM_*` variables.
fn farm_node() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_farm-node"));
    without_farm_env(command.as_std_mut());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn sigterm_stops_the_node_with_exit_code_0() {
    // No control plane answers: the node serves and keeps retrying anyway.
    let mut child = farm_node()
        .args(["--control-plane", "http://127.0.0.1:1", "--name", "t1"])
        .spawn()
        .expect("spawn");
    // Let it bind and start its agent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    signal::kill(pid, signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn bad_flags_exit_with_code_2_and_say_why() {
    for (args, says) in [
        (&["--name", "x"][..], "--control-plane"),
        (
            &["--control-plane", "127.0.0.1:50051"],
            "--control-plane must be a URL",
        ),
        (
            &[
                "--control-plane",
                "http://127.0.0.1:1",
                "--name",
                "bad name",
            ],
            "--name must be",
        ),
        (
            &[
                "--control-plane",
                "http://127.0.0.1:1",
                "--label",
                "novalue",
            ],
            "KEY=VALUE",
        ),
        (
            &[
                "--control-plane",
                "http://127.0.0.1:1",
                "--listen",
                "nowhere",
            ],
            "--listen",
        ),
        (
            &["--control-plane", "http://127.0.0.1:1", "--threads", "0"],
            "--threads",
        ),
    ] {
        let output = farm_node()
            .args(args)
            .output()
            .await
            .expect("run farm-node");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = farm_node()
        .args(["--control-plane", "http://127.0.0.1:1", "--listen", &addr])
        .output()
        .await
        .expect("run farm-node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_runs_the_node_on_that_many_threads() {
    let cp = Farm::builder().start().await;
    let one = farm_node()
        .args(["--control-plane", &cp.url(), "--name", "one-thread"])
        .spawn()
        .expect("spawn");
    let four = farm_node()
        .args(["--control-plane", &cp.url(), "--name", "four-threads"])
        .env("FARM_NODE_THREADS", "4")
        .spawn()
        .expect("spawn");
    eventually(
        "both nodes to register",
        Duration::from_secs(15),
        || async {
            let nodes = cp.nodes().await;
            ready_if(nodes.len() == 2, ())
        },
    )
    .await;
    let (one, four) = (
        threads(one.id().expect("running")),
        threads(four.id().expect("running")),
    );
    // Four workers beside the main thread, which only waits; one thread
    // runs everything by default (blocking file work may add one).
    assert!(four >= 5, "--threads 4: {four} threads");
    assert!(one < four, "default: {one} threads, --threads 4: {four}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_come_from_farm_node_labels() {
    let cp = Farm::builder().start().await;
    let _node = farm_node()
        .args(["--control-plane", &cp.url(), "--name", "labelled"])
        .env("FARM_NODE_LABELS", "zone=eu-1, tier=web,")
        .spawn()
        .expect("spawn");
    let registered = eventually("the node to register", Duration::from_secs(15), || async {
        let nodes = cp.nodes().await;
        let node = nodes.iter().find(|n| n.name == "labelled").cloned();
        ready_if(node.is_some(), nodes)
    })
    .await;
    let node = registered
        .iter()
        .find(|n| n.name == "labelled")
        .expect("registered");
    assert_eq!(
        node.labels.iter().collect::<BTreeMap<_, _>>(),
        BTreeMap::from([
            (&"tier".to_owned(), &"web".to_owned()),
            (&"zone".to_owned(), &"eu-1".to_owned()),
        ])
    );
}

#[tokio::test]
async fn bad_farm_node_labels_exit_with_code_2_and_say_why() {
    for (labels, says) in [
        (
            "zone",
            "--label must be KEY=VALUE (several: k=v,k2=v2, as FARM_NODE_LABELS holds them), got \"zone\"",
        ),
        ("zone=a,zone=b", "--label zone is given more than once"),
        ("my zone=a", "--label key must be"),
    ] {
        let output = farm_node()
            .args(["--control-plane", "http://127.0.0.1:1"])
            .env("FARM_NODE_LABELS", labels)
            .output()
            .await
            .expect("run farm-node");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{labels:?}: {stderr}");
        assert!(stderr.contains(says), "{labels:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{labels:?}: {stderr}");
    }
}
