//! The README's walk-through, run as written. Every command of its `sh`
//! blocks, from the `<!-- walk-through` marker to `<!-- end of the
//! walk-through -->`, runs in order in one bash session (so a variable one
//! command sets, the next may use), against a farm started by the README's
//! first command, `./scripts/serve`: Docker containers where an engine
//! answers, processes otherwise. The only change made to the commands is the
//! control plane's addresses: the farm listens on free loopback ports and a
//! data folder of its own instead of `127.0.0.1:50051` (and the catalog's
//! line protocol `127.0.0.1:50052`) and `./farm-data`.
//!
//! A command fails the test when it exits with an error. A command marked
//! `# streams until Ctrl-C` must still be streaming after three seconds,
//! having printed something, and is then interrupted as a user would.
//!
//! Needs grpcurl, jq and curl (`scripts/test` installs them and sets
//! `FARM_REQUIRE_INTEROP=1`, which turns their absence into a failure).

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use farm_testkit::{
    ControlPlaneProcess, NodeGuard,
    docker::DockerCleanup,
    free_addr,
    process::{run_within, without_farm_env},
    skip,
};

const START: &str = "<!-- walk-through";
const END: &str = "<!-- end of the walk-through -->";
const STREAMS: &str = "# streams until Ctrl-C";
/// The address the README's commands use.
const README_ADDR: &str = "127.0.0.1:50051";
/// The catalog's line protocol, where `scripts/serve` puts it: as
/// `host:port`, and as bash's `/dev/tcp/host/port` names it.
const README_INDEXER: [&str; 2] = ["127.0.0.1:50052", "127.0.0.1/50052"];
/// The farm `./scripts/serve` brings up.
const NODES: usize = 50;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The commands of the walk-through's `sh` blocks, in order: lines joined
/// where they end in `\`, comment lines left out.
fn walk_through(readme: &str) -> Vec<String> {
    let start = readme
        .find(START)
        .expect("the README marks its walk-through");
    let end = readme[start..].find(END).expect("and its end") + start;
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut command = String::new();
    for line in readme[start..end].lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        let trimmed = line.trim();
        if !in_block || (command.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#'))) {
            continue;
        }
        command.push_str(line);
        if line.ends_with('\\') {
            command.push('\n');
        } else {
            commands.push(std::mem::take(&mut command));
        }
    }
    commands
}

/// One bash script running `commands` against `addr` (and the line
/// protocol on `indexer`): each is echoed, then run; the first that fails
/// stops the script, named.
fn script(commands: &[String], addr: &str, indexer: SocketAddr) -> String {
    let mut script = String::from(
        r#"set -eEuo pipefail
trap 'echo "walk-through: FAILED with status $?: $BASH_COMMAND" >&2' ERR
# streams CMD...: a stream that must still run after 3 s, having printed.
streams() {
  local out rc=0
  out=$(timeout -s INT 3 "$@") || rc=$?
  # A here-string, not a pipe: printing more than head reads is no SIGPIPE.
  head -n 20 <<<"$out"
  if [ "$rc" != 124 ]; then echo "the stream ended (status $rc) before 3 s" >&2; return 1; fi
  if [ -z "$out" ]; then echo "the stream printed nothing in 3 s" >&2; return 1; fi
}
"#,
    );
    for command in commands {
        let command = command
            .replace(README_ADDR, addr)
            .replace(README_INDEXER[0], &indexer.to_string())
            .replace(
                README_INDEXER[1],
                &format!("{}/{}", indexer.ip(), indexer.port()),
            );
        script.push_str(&format!("cat >&2 <<'COMMAND'\n$ {command}\nCOMMAND\n"));
        match command.strip_suffix(STREAMS) {
            Some(stream) => script.push_str(&format!("streams {}\n", stream.trim_end())),
            None => script.push_str(&format!("{command}\n")),
        }
    }
    script
}

#[test]
fn the_walk_through_is_found_with_its_streams_marked() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let commands = walk_through(&readme);
    assert!(commands.len() >= 40, "{commands:#?}");
    for command in &commands {
        assert!(!command.starts_with('#'), "{command}");
        // A stream the script would wait on forever is marked.
        if command.contains("/Watch") {
            assert!(command.ends_with(STREAMS), "unmarked stream: {command}");
        }
    }
    let script = script(
        &commands,
        "127.0.0.1:1",
        "127.0.0.1:2".parse().expect("address"),
    );
    assert!(!script.contains(README_ADDR));
    assert!(
        !script.contains("50052"),
        "every line-protocol address replaced"
    );
    assert!(script.contains("/dev/tcp/127.0.0.1/2\n"));
    assert!(
        script.contains("streams grpcurl -plaintext -d '{}' 127.0.0.1:1 farm.v1.Discovery/Watch\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_walk_through_command_runs_as_written_against_scripts_serve() {
    for tool in ["grpcurl", "jq", "curl"] {
        if !skip::installed(tool) {
            skip::skip(
                "FARM_REQUIRE_INTEROP",
                "the README walk-through",
                &format!("{tool} is not installed"),
            );
            return;
        }
    }
    let root = root();
    let commands = walk_through(&fs::read_to_string(root.join("README.md")).expect("README"));

    let dir = tempfile::tempdir().expect("a data folder");
    // Removes the farm's containers (or node processes), after a failure too.
    let _containers = DockerCleanup::new(dir.path());
    let _processes = NodeGuard::new(dir.path());
    let addr = free_addr();
    let indexer = free_addr();
    let log = fs::File::create(dir.path().join("serve.log")).expect("serve log");
    let mut command = tokio::process::Command::new(root.join("scripts/serve"));
    without_farm_env(command.as_std_mut())
        .env("FARM_INDEXER_LISTEN", indexer.to_string())
        .current_dir(&root)
        .args(["--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    // Stopped with SIGTERM, as Ctrl-C does, when the test ends or fails.
    let mut serve = ControlPlaneProcess::spawn(&mut command, addr);
    let serve_log = || fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();

    // The first run may build the node image: minutes, not seconds. The
    // outer limit comes first, so that a failure shows serve's log.
    let healthy = tokio::time::timeout(
        Duration::from_secs(300),
        serve.wait_healthy(NODES, Duration::from_secs(330)),
    )
    .await;
    assert!(
        healthy.is_ok(),
        "the farm did not come up:\n{}",
        serve_log()
    );

    let script = script(&commands, &addr.to_string(), indexer);
    let ran = tokio::task::spawn_blocking(move || {
        let mut bash = Command::new("bash");
        without_farm_env(&mut bash)
            .current_dir(root)
            .args(["-c", &script]);
        run_within(&mut bash, Duration::from_secs(600))
    })
    .await
    .expect("the walk-through's thread")
    .expect("run bash");
    assert!(
        ran.ok(),
        "the walk-through failed ({:?}):\n{}\n--- stdout ---\n{}\n--- scripts/serve ---\n{}",
        ran.status,
        ran.stderr,
        ran.stdout,
        serve_log()
    );
    eprintln!("{}", ran.stderr);
    let status = serve.terminate(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "control-plane serve did not stop cleanly ({status:?}):\n{}",
        serve_log()
    );
}
