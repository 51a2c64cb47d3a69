//! The `farm-node` binary: signals and bad flags.

use std::{process::Stdio, time::Duration};

use nix::{sys::signal, unistd::Pid};
use tokio::process::Command;

fn farm_node() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_farm-node"));
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
