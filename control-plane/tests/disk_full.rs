//! A data folder whose disk fills up: on a small tmpfs of the test's own
//! (so root: `scripts/test` runs as root), writes are refused with a clear
//! status and never acknowledged, reads keep working, and once space comes
//! back the farm writes again without a restart, every acknowledged write
//! still there.

use std::{io::Write, path::Path, process::Command, time::Duration};

use farm_api::v1::{GetConfigRequest, HistoryRequest, PutConfigRequest, RegisterRequest};
use farm_testkit::{ControlPlaneProcess, api::config_data};
use tonic::Code;

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped (also when
/// the test fails).
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs on {} (needs root)",
            dir.display()
        );
        Self(dir)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Fills the file system of `dir` with `filler` until it is full.
fn fill(filler: &Path) {
    let mut file = std::fs::File::create(filler).expect("create the filler");
    let chunk = vec![0xAB; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    // The last bytes a chunk could not hold.
    while file.write_all(&[0xAB]).is_ok() {}
    let _ = file.sync_all();
}

fn put(n: u64) -> PutConfigRequest {
    PutConfigRequest {
        scope: "global".into(),
        data: Some(config_data(
            serde_json::json!({ "change": n, "pad": "x".repeat(4000) }),
        )),
        expected_version: 0,
        merge: false,
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    if uid.stdout.trim_ascii() != b"0" {
        eprintln!(
            "a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart: skipped, mounting a tmpfs needs root"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let _tmpfs = Tmpfs::mount(dir.path(), "8m");
    let data = dir.path().join("farm");
    let mut farm = ControlPlaneProcess::builder(&data).start().await;
    let mut config = farm.config();
    let mut acknowledged = 0;
    for n in 0..5 {
        acknowledged = config
            .put_config(put(n))
            .await
            .expect("room")
            .into_inner()
            .version;
    }
    fill(&dir.path().join("filler"));

    // Writes are refused, clearly, and none is acknowledged.
    let mut refused = None;
    for n in 5..200 {
        match config.put_config(put(n)).await {
            Ok(response) => acknowledged = response.into_inner().version,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("a write refused on a full disk");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("full"), "{refused:?}");
    let registration = farm
        .registry()
        .register(RegisterRequest {
            name: "on-a-full-disk".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .expect_err("a registration acknowledged on a full disk");
    assert_eq!(
        registration.code(),
        Code::ResourceExhausted,
        "{registration:?}"
    );

    // Reads keep working, and show only what was acknowledged.
    let current = config
        .get_config(GetConfigRequest {
            scope: "global".into(),
        })
        .await
        .expect("GetConfig on a full disk")
        .into_inner();
    assert_eq!(current.version, acknowledged);
    assert!(farm.try_nodes().await.is_ok());

    // Space comes back: writes succeed again, without a restart, the
    // next version right after the last acknowledged one.
    std::fs::remove_file(dir.path().join("filler")).expect("free the space");
    let next = config
        .put_config(put(1000))
        .await
        .expect("a write once space is back")
        .into_inner()
        .version;
    assert_eq!(next, acknowledged + 1);

    // Everything acknowledged is there after a restart, and nothing else.
    assert!(farm.terminate(Duration::from_secs(20)).await.success());
    let farm = ControlPlaneProcess::builder(&data).start().await;
    let history = farm
        .config()
        .history(HistoryRequest {
            scope: "global".into(),
            ..Default::default()
        })
        .await
        .expect("History")
        .into_inner();
    let versions: Vec<u64> = history.versions.iter().map(|v| v.version).collect();
    let expected: Vec<u64> = (1..=next).rev().collect();
    assert_eq!(versions, expected);
}
