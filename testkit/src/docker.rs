//! The Docker engine, for the tests and benchmarks that need one: whether
//! it answers (without one they are skipped with a message, unless
//! `FARM_REQUIRE_DOCKER=1` makes that a failure), the static `farm-node`
//! the node image is built from, the `docker` CLI, and a farm id whose
//! containers and network are removed by label when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::skip::skip;

/// Whether a Docker engine answers here; says why `test` is skipped when
/// not, and fails instead when `FARM_REQUIRE_DOCKER=1`.
pub fn available(test: &str) -> bool {
    let answers = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    answers
        || skip(
            "FARM_REQUIRE_DOCKER",
            test,
            "no Docker engine answers (scripts/docker-engine starts one)",
        )
}

/// The statically linked farm-node that `scripts/build-static` builds, if
/// it is there.
pub fn static_node_binary_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-gnu/container/farm-node")
}

/// The statically linked farm-node; panics when it was not built.
pub fn static_node_binary() -> PathBuf {
    let path = static_node_binary_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-static (scripts/test does when a Docker engine answers)",
        path.display()
    );
    path
}

/// For a benchmark: the static farm-node, or the process ends (status 2)
/// saying how to build it.
pub fn static_node_binary_or_exit() -> PathBuf {
    let path = static_node_binary_path();
    if !path.is_file() {
        eprintln!("{} is missing: run scripts/build-static", path.display());
        std::process::exit(2);
    }
    path
}

/// Runs the docker CLI, which must succeed; returns its standard output.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Ids of the containers carrying `label` (`key=value`), running or not.
pub fn containers_labelled(label: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// Removes, as far as it can, every container and network carrying any of
/// `labels`; never fails.
pub fn remove_labelled(labels: &[String]) {
    for label in labels {
        let filter = format!("label={label}");
        let listed = |args: &[&str]| {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let containers = listed(&["ps", "-aq", "--filter", &filter]);
        let containers: Vec<&str> = containers.split_whitespace().collect();
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&containers)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for network in listed(&["network", "ls", "-q", "--filter", &filter]).split_whitespace() {
            let _ = Command::new("docker")
                .args(["network", "rm", network])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A farm id chosen by the test (written to the data folder before the
/// control plane starts), whose containers and network are removed by
/// label when dropped: after a failed test too. Containers a test makes
/// itself carry `farm.test=<id>` and go the same way.
#[derive(Debug)]
pub struct DockerCleanup {
    pub id: String,
}

impl DockerCleanup {
    pub fn new(data_dir: &Path) -> Self {
        let id = format!("t{:08x}", rand::random::<u32>());
        fs::write(data_dir.join("farm-id"), format!("{id}\n")).expect("write farm-id");
        Self { id }
    }

    /// The label selecting this farm's containers.
    pub fn label(&self) -> String {
        format!("farm.id={}", self.id)
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        remove_labelled(&[self.label(), format!("farm.test={}", self.id)]);
        // The farm's network is labelled too, but named after the farm:
        // removed by name should its label have gone.
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("farm-{}", self.id)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
