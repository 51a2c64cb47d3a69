//! Restarts of the control plane: identities survive in the store; after a
//! clean shutdown the nodes come back under their ids, after a crash the
//! running nodes are adopted and re-attach without duplicates.

use std::{collections::BTreeMap, time::Duration};

use farm_testkit::{
    ControlPlaneProcess, Farm, NodeGuard, ids_by_name, pid,
    process::{alive, node_processes},
};

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
    let guard = NodeGuard::new(dir.path());
    let mut first = ControlPlaneProcess::start(dir.path(), 5).await;
    let before = first.wait_healthy(5, Duration::from_secs(20)).await;
    let pids: BTreeMap<String, i32> = before.iter().map(|n| (n.name.clone(), pid(n))).collect();

    first.kill().await;
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
    let status = second.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    assert!(node_processes(dir.path()).is_empty());
    drop(guard);
}
