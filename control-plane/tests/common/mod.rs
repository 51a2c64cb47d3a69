//! Shared harness: a whole control plane on `127.0.0.1:0` with real
//! `farm-node` processes, and a guard that kills every process a test
//! started, even when the test fails.

#![allow(dead_code, unreachable_pub)]

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use clap::Parser;
use control_plane::config::{Cli, Command, ServeConfig};
use farm_api::v1::{
    DiscoverRequest, ListNodesRequest, NodeActionKind, NodeActionRequest, NodeInfo, NodeState,
    Peer, discovery_client::DiscoveryClient, farm_client::FarmClient,
    registry_client::RegistryClient,
};
use nix::{sys::signal, unistd::Pid};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

/// Tokens of the three roles, for tests of a control plane that has them.
pub const ADMIN: &str = "admin-7f3a9c1e5b";
pub const NODE: &str = "node-2d8e4b6a0f";
pub const VIEWER: &str = "viewer-9b1c5e7d3a";

/// The flags that give the control plane all three tokens.
pub const TOKENS: &[&str] = &[
    "--admin-token",
    ADMIN,
    "--node-token",
    NODE,
    "--viewer-token",
    VIEWER,
];

/// Path of a binary built by this workspace (`control-plane`, `farm-node`).
pub fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_control-plane")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        path.display()
    );
    path
}

/// Kills every node process recorded under a data folder.
pub fn kill_recorded_nodes(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir.join("nodes")) else {
        return;
    };
    for entry in entries.flatten() {
        if let Ok(text) = fs::read_to_string(entry.path().join("instance"))
            && let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok())
        {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
    }
}

/// A control plane running in this test process.
pub struct Farm {
    pub addr: SocketAddr,
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), control_plane::serve::ServeError>>>,
}

/// Flags every test farm uses: fast heartbeats so failures show quickly.
pub const FAST: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "600ms",
    "--min-age",
    "0s",
    "--stop-grace",
    "3s",
];

impl Farm {
    /// Starts a control plane with `nodes` process nodes and extra flags.
    pub async fn start(nodes: u32, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, nodes, extra).await
    }

    /// Starts a control plane on an existing data folder. With no nodes it
    /// runs no runtime at all (`--runtime none`).
    pub async fn start_in(dir: TempDir, nodes: u32, extra: &[&str]) -> Self {
        let data_dir = dir.path().to_str().expect("utf-8 path").to_owned();
        let count = nodes.to_string();
        let mut args = vec!["control-plane", "serve", "--data-dir", &data_dir];
        let node_binary;
        if extra.contains(&"--runtime") {
            // The caller picks the runtime (Docker tests).
            args.extend(["--nodes", &count]);
        } else if nodes == 0 {
            args.extend(["--runtime", "none"]);
        } else {
            node_binary = binary("farm-node").to_str().expect("utf-8 path").to_owned();
            args.extend(["--runtime", "process", "--nodes", &count]);
            args.extend(["--node-binary", &node_binary]);
        }
        args.extend_from_slice(FAST);
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args).expect("flags");
        let Command::Serve(serve) = cli.command;
        let config = ServeConfig::try_from(&serve).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(control_plane::serve::run(config, listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts down like SIGTERM would and waits; returns the data folder.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("shutdown within 20 s")
                .expect("task")
                .expect("clean shutdown");
        }
        // Moving the folder out leaves a dummy behind for Drop.
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("url")
            .connect_lazy()
    }

    pub fn farm(&self) -> FarmClient<Channel> {
        FarmClient::new(self.channel())
    }

    pub fn discovery(&self) -> DiscoveryClient<Channel> {
        DiscoveryClient::new(self.channel())
    }

    pub fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel())
    }

    pub async fn nodes(&self) -> Vec<NodeInfo> {
        self.farm()
            .list_nodes(ListNodesRequest::default())
            .await
            .expect("ListNodes")
            .into_inner()
            .nodes
    }

    /// Waits until `f` holds of the node list, or panics after `timeout`.
    pub async fn wait_nodes(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[NodeInfo]) -> bool,
    ) -> Vec<NodeInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let nodes = self.nodes().await;
            if f(&nodes) {
                return nodes;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}; nodes: {nodes:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until exactly `n` nodes exist and all are healthy.
    pub async fn wait_healthy(&self, n: usize, timeout: Duration) -> Vec<NodeInfo> {
        self.wait_nodes(&format!("{n} healthy nodes"), timeout, |nodes| {
            nodes.len() == n && nodes.iter().all(healthy)
        })
        .await
    }

    pub async fn discover(&self, group: &str, count: u32) -> Vec<String> {
        self.discover_peers(group, count)
            .await
            .into_iter()
            .map(|p| p.id)
            .collect()
    }

    pub async fn discover_peers(&self, group: &str, count: u32) -> Vec<Peer> {
        self.discovery()
            .discover(DiscoverRequest {
                group: group.into(),
                count,
                ..Default::default()
            })
            .await
            .expect("Discover")
            .into_inner()
            .peers
    }

    pub async fn act(&self, id: &str, action: NodeActionKind) -> Result<NodeInfo, tonic::Status> {
        self.farm()
            .node_action(NodeActionRequest {
                node_id: id.into(),
                action: action.into(),
            })
            .await
            .map(|r| r.into_inner().node.expect("node"))
    }
}

impl Drop for Farm {
    /// Stops the control plane the way SIGTERM would (its supervisor would
    /// otherwise replace the nodes killed here), then kills whatever node
    /// process of this farm is left, even when the test failed half-way.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle)
                    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(|| {
                        handle.block_on(async {
                            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
                        });
                    });
                }
                _ => task.abort(),
            }
        }
        kill_recorded_nodes(self.dir.path());
        for pid in node_processes(self.dir.path()) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
    }
}

pub fn healthy(node: &NodeInfo) -> bool {
    node.state == NodeState::Healthy as i32
}

pub fn pid(node: &NodeInfo) -> i32 {
    node.runtime_id
        .strip_prefix("pid:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("node {} has no pid: {:?}", node.name, node.runtime_id))
}

pub fn by_name<'a>(nodes: &'a [NodeInfo], name: &str) -> &'a NodeInfo {
    nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node named {name}"))
}

/// A control plane run as its own process (for kill -9 and signal tests).
pub struct ControlPlaneProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl ControlPlaneProcess {
    /// Starts `control-plane serve` on a free port of 127.0.0.1.
    pub async fn start(data_dir: &Path, nodes: u32) -> Self {
        // Ask the OS for a free port, then hand it to the child.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        Self::start_at(data_dir, nodes, addr).await
    }

    /// Starts `control-plane serve` on `addr`: a restarted control plane
    /// listens where its nodes expect it.
    pub async fn start_at(data_dir: &Path, nodes: u32, addr: SocketAddr) -> Self {
        Self::start_with(data_dir, nodes, addr, &["--runtime", "process"]).await
    }

    /// Starts `control-plane serve` on `addr` with extra flags.
    pub async fn start_with(data_dir: &Path, nodes: u32, addr: SocketAddr, extra: &[&str]) -> Self {
        let child = tokio::process::Command::new(binary("control-plane"))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--nodes")
            .arg(nodes.to_string())
            .args(extra)
            .args(FAST)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn control-plane");
        let process = Self { child, addr };
        process.wait_ready().await;
        process
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(Instant::now() < deadline, "control plane did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("url")
            .connect_lazy()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id().expect("running")).expect("pid"))
    }

    pub async fn nodes(&self) -> Vec<NodeInfo> {
        FarmClient::new(self.channel())
            .list_nodes(ListNodesRequest::default())
            .await
            .map(|r| r.into_inner().nodes)
            .unwrap_or_default()
    }

    pub async fn wait_healthy(&self, n: usize, timeout: Duration) -> Vec<NodeInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let nodes = self.nodes().await;
            if nodes.len() == n && nodes.iter().all(healthy) {
                return nodes;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} healthy nodes: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Every farm-node process whose command line mentions `data_dir`.
pub fn node_processes(data_dir: &Path) -> Vec<i32> {
    let needle = data_dir.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let cmd = String::from_utf8_lossy(&cmd);
                cmd.contains("farm-node") && cmd.contains(&needle)
            })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Whether a Docker engine answers here. Without one, Docker tests are
/// skipped with a message, unless `FARM_REQUIRE_DOCKER=1` makes that a
/// failure.
pub fn docker_available(test: &str) -> bool {
    let answers = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let required = std::env::var("FARM_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    if !answers {
        assert!(
            !required,
            "{test}: FARM_REQUIRE_DOCKER=1 but no Docker engine answers (scripts/docker-engine starts one)"
        );
        eprintln!("{test}: skipped, no Docker engine answers (scripts/docker-engine starts one)");
        return false;
    }
    true
}

/// The statically linked farm-node that `scripts/build-static` builds.
pub fn static_node_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-gnu/container/farm-node");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-static (scripts/test does when a Docker engine answers)",
        path.display()
    );
    path
}

/// Runs the docker CLI; returns its standard output.
pub fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker")
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

/// Ids of the containers carrying a label, running or not.
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

/// A farm id chosen by the test (written to the data folder before the
/// control plane starts), whose containers and network are removed by label
/// when dropped: after a failed test too. Containers a test makes itself
/// carry `farm.test=<id>` and go the same way.
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
        let id = &self.id;
        let mut ids: Vec<String> = Vec::new();
        for label in [format!("farm.id={id}"), format!("farm.test={id}")] {
            if let Ok(output) = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label={label}")])
                .output()
            {
                ids.extend(
                    String::from_utf8_lossy(&output.stdout)
                        .split_whitespace()
                        .map(str::to_owned),
                );
            }
        }
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &format!("farm-{id}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether missing interop tools (grpcurl, Python with grpcio-tools) fail
/// the suite instead of skipping: `scripts/test` sets `FARM_REQUIRE_INTEROP=1`.
pub fn interop_required() -> bool {
    std::env::var_os("FARM_REQUIRE_INTEROP").is_some_and(|v| v == "1")
}

/// Runs a tool; `None` (skip) when it is missing and not required.
pub async fn run(program: &str, args: &[&str]) -> Option<std::process::Output> {
    run_with_env(program, args, &[]).await
}

/// [`run`] with extra environment variables.
pub async fn run_with_env(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Option<std::process::Output> {
    match tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !interop_required() => {
            eprintln!("skipping: {program} is not installed (scripts/test installs it)");
            None
        }
        Err(err) => panic!("cannot run {program}: {err}"),
    }
}

/// A tool's standard output, after checking it succeeded.
pub fn stdout(output: &std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}
