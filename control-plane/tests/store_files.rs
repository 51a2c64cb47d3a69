//! A `farm.db` that is not the farm's: random bytes, another program's
//! SQLite database, the farm's own database damaged. The control plane
//! refuses to start, names the file and says why, and leaves the file
//! exactly as it was.

use std::{path::Path, process::Command, time::Duration};

use farm_testkit::{
    ControlPlaneProcess, binary,
    process::{run_within, without_farm_env},
};
use sha2::{Digest, Sha256};

/// Runs `control-plane serve` on `dir`; it must exit (refusing) within the
/// limit. Returns its exit code and standard error.
fn serve_on(dir: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(binary("control-plane"));
    without_farm_env(&mut command)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--runtime", "none", "--listen", "127.0.0.1:0"]);
    let ran = run_within(&mut command, Duration::from_secs(20)).expect("run control-plane");
    let Some(status) = ran.status else {
        panic!(
            "serve started on {} and kept running:\n{}",
            dir.display(),
            ran.stderr
        );
    };
    (status.code(), ran.stderr)
}

fn digest(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).expect("read farm.db")).into()
}

/// Refused, naming the file and `why`, and the file untouched.
#[track_caller]
fn refused(dir: &Path, why: &str) {
    let db = dir.join("farm.db");
    let before = digest(&db);
    let (code, stderr) = serve_on(dir);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
    assert!(stderr.contains("left untouched"), "{stderr}");
    assert_eq!(digest(&db), before, "farm.db was changed");
    assert!(
        !dir.join("farm.db-wal").exists(),
        "a write-ahead log was started beside it"
    );
}

#[test]
fn random_bytes_are_not_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("farm.db"), bytes).expect("write");
    refused(dir.path(), "not a SQLite database");
}

#[test]
fn another_programs_database_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = rusqlite::Connection::open(dir.path().join("farm.db")).expect("create");
    other
        .execute_batch(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT);
             INSERT INTO accounts (owner) VALUES ('someone');",
        )
        .expect("another program's table");
    drop(other);
    refused(dir.path(), "tables the farm does not use (accounts)");

    // One that marks itself as another program's, even with no tables.
    let marked = tempfile::tempdir().expect("tempdir");
    let other = rusqlite::Connection::open(marked.path().join("farm.db")).expect("create");
    other
        .pragma_update(None, "application_id", 0x1234_5678)
        .expect("application id");
    drop(other);
    refused(marked.path(), "belongs to another program");
}

#[tokio::test]
async fn a_damaged_farm_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A farm database with something in it, closed cleanly.
    let mut farm = ControlPlaneProcess::builder(dir.path()).start().await;
    for i in 0..200 {
        farm.put_config("global", serde_json::json!({ "change": i }))
            .await;
    }
    assert!(farm.terminate(Duration::from_secs(20)).await.success());
    let db = std::fs::read(dir.path().join("farm.db")).expect("read");
    let pages = db.len() / 4096;
    assert!(pages >= 4, "{pages} pages");
    // Its second page overwritten: SQLite cannot read its tables.
    // A data page's cells overwritten: SQLite's check finds them.
    for (page, at) in [(1, 0..4096), (pages - 2, 100..300)] {
        let copy = tempfile::tempdir().expect("tempdir");
        let mut bytes = db.clone();
        bytes[page * 4096 + at.start..page * 4096 + at.end].fill(0xAB);
        std::fs::write(copy.path().join("farm.db"), bytes).expect("write");
        refused(copy.path(), "damaged");
    }
}
