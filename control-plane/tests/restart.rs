//! Restarts of the control plane: identities survive in the store; after a
//! clean shutdown the nodes come back under their ids, after a crash the
//! running nodes are adopted and re-attach without duplicates.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{ControlPlaneProcess, Farm, alive, kill_recorded_nodes, node_processes, pid};
use nix::{sys::signal, unistd::Pid};

fn ids_by_name(nodes: &[farm_api::v1::NodeInfo]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.id.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_keeps_identities() {
    let farm = Farm::start(5, &[]).await;
    let before = ids_by_name(&farm.wait_healthy(5, Duration::from_secs(20)).await);
    let dir = farm.stop().await;
    assert!(
        node_processes(dir.path()).is_empty(),
        "nodes stopped with the control plane"
    );

    let farm = Farm::start_in(dir, 5, &[]).await;
    let after = ids_by_name(&farm.wait_healthy(5, Duration::from_secs(20)).await);
    assert_eq!(before, after);
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_running_nodes_are_adopted_and_reattach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = KillOnDrop(dir.path().to_owned());
    let mut first = ControlPlaneProcess::start(dir.path(), 5).await;
    let before = first.wait_healthy(5, Duration::from_secs(20)).await;
    let pids: BTreeMap<String, i32> = before.iter().map(|n| (n.name.clone(), pid(n))).collect();

    signal::kill(first.pid(), signal::Signal::SIGKILL).expect("kill control plane");
    let _ = first.child.wait().await;
    assert!(
        pids.values().all(|p| alive(*p)),
        "nodes outlive a crashed control plane"
    );

    // Back on the same address: the nodes reconnect to it by themselves.
    let mut second = ControlPlaneProcess::start_at(dir.path(), 5, first.addr).await;
    let after = second.wait_healthy(5, Duration::from_secs(20)).await;
    assert_eq!(
        ids_by_name(&before),
        ids_by_name(&after),
        "same identities, no duplicates"
    );
    let adopted: BTreeMap<String, i32> = after.iter().map(|n| (n.name.clone(), pid(n))).collect();
    assert_eq!(
        pids, adopted,
        "the same processes were adopted, none started anew"
    );
    assert_eq!(node_processes(dir.path()).len(), 5);

    // SIGTERM: exit 0, no node left behind.
    signal::kill(second.pid(), signal::Signal::SIGTERM).expect("term");
    let status = tokio::time::timeout(Duration::from_secs(20), second.child.wait())
        .await
        .expect("exits within 20 s")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(node_processes(dir.path()).is_empty());
    drop(guard);
}

/// Kills leftover nodes if the test fails half-way.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_recorded_nodes(&self.0);
        for pid in node_processes(&self.0) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
    }
}
