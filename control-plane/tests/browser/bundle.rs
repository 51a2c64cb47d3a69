//! The dashboard's sources: they type-check (`tsc --noEmit`, strict), their
//! pure logic passes its unit tests (node's test runner), the bundle
//! committed in `web/dist` (which the control plane embeds) is exactly what
//! they build, so it cannot go stale, and the development server's page,
//! on an origin of its own, may call a control plane that trusts that
//! origin and no other. One test, because each step needs `web/gen`, which
//! the first generates from the protos.

use std::{path::Path, process::Command, process::Stdio};

use farm_testkit::{
    Farm,
    browser::{self, Browser, PageOptions},
    free_addr,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::SHOWN;

/// Runs `program args` in `web/`; panics with its output unless it succeeds.
fn run_in_web(program: &str, args: &[&str]) -> String {
    let web = browser::modules_dir();
    let output = Command::new(program)
        .args(args)
        .current_dir(&web)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{program} {}` in web/ failed: {}\n{text}",
        args.join(" "),
        output.status
    );
    text
}

/// Every file of `dir`, by name, sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("a folder entry");
            let bytes = std::fs::read(entry.path()).expect("a file");
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// `npm run dev`'s server, in a process group of its own (esbuild runs a
/// service process beside node): the whole group is killed when dropped.
struct DevServer(tokio::process::Child);

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `npm run dev`'s server (`build.mjs --serve`) on `port`, calling the
/// control plane at `farm`; returns once it serves.
async fn dev_server(port: u16, farm: &str) -> DevServer {
    let mut child = tokio::process::Command::new("node")
        .args(["build.mjs", "--serve", "--port", &port.to_string()])
        .env("FARM_URL", farm)
        .current_dir(browser::modules_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("start the development server");
    let mut lines = BufReader::new(child.stdout.take().expect("its output")).lines();
    let first = tokio::time::timeout(SHOWN, lines.next_line())
        .await
        .expect("the development server starts")
        .expect("its output");
    assert!(
        first.as_deref().is_some_and(|l| l.contains("dashboard on")),
        "{first:?}"
    );
    DevServer(child)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sources_check_and_the_committed_bundle_is_what_they_build() {
    let test = "the_sources_check_and_the_committed_bundle_is_what_they_build";
    let Some(browser) = Browser::launch(test).await else {
        return;
    };
    // Generate, type-check, unit-test.
    let checked = run_in_web("npm", &["run", "--silent", "check"]);
    assert!(checked.contains("# fail 0"), "{checked}");

    let built = tempfile::tempdir().expect("a folder");
    let out = built.path().to_str().expect("a UTF-8 path");
    let report = run_in_web("node", &["build.mjs", "--out", out]);
    let fresh = files(built.path());
    let committed = files(&browser::modules_dir().join("dist"));
    let names = |files: &[(String, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&fresh),
        "web/dist is stale: run `npm run build` in web/ and commit web/dist\n{report}"
    );
    for ((name, committed), (_, fresh)) in committed.iter().zip(&fresh) {
        assert!(
            committed == fresh,
            "web/dist/{name} differs from what the sources build: run `npm run build` in web/ and commit web/dist"
        );
    }
    println!("{report}");

    // The development server's page calls a control plane that trusts its
    // origin; one that does not refuses it, and the page says so.
    let trusted_port = free_addr().port();
    let origin = format!("http://127.0.0.1:{trusted_port}");
    let trusting = Farm::start(2, &["--cors-origin", &origin]).await;
    trusting.wait_healthy(2, SHOWN).await;
    let _server = dev_server(trusted_port, &trusting.url()).await;
    let page = browser.page(&origin, PageOptions::default()).await;
    page.wait_text(".link", "live", SHOWN).await;
    page.wait_text(".tile.state-healthy strong", "2", SHOWN)
        .await;
    page.screenshot("dev-server").await;

    let other_port = free_addr().port();
    let stranger = Farm::start(0, &[]).await;
    let _other = dev_server(other_port, &stranger.url()).await;
    let refused = browser
        .page(
            &format!("http://127.0.0.1:{other_port}"),
            PageOptions::default(),
        )
        .await;
    refused
        .wait_text(".signin .error", "cannot be reached", SHOWN)
        .await;
    refused.screenshot("dev-server-untrusted").await;
}
