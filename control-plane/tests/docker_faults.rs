//! The farm in Docker when the engine or the network fails under it: the
//! engine stopping and coming back, and one node's container cut off from
//! the farm's network. Skipped with a message when no engine can be had,
//! failing instead when `FARM_REQUIRE_DOCKER=1`.
//!
//! Stopping an engine stops every container on it, so the engine that
//! stops here is one of the test's own ([`PrivateEngine`]): a second
//! `dockerd` with its own socket, folders and bridge, which leaves the
//! machine's engine, and the tests running on it, alone. The figures are
//! printed, never asserted: the machine is shared.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use farm_api::v1::{NodeActionKind, NodeState, ScaleRequest};
use farm_testkit::{
    Farm, by_name,
    docker::{self, DockerCleanup, containers_labelled},
    eventually, healthy, http, ids_by_name,
    process::run_within,
    ready_if,
    skip::{installed, skip},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tempfile::TempDir;
use tonic::Code;

/// How long a private engine may take to answer, or to stop.
const ENGINE_LIMIT: Duration = Duration::from_secs(30);
/// How long a call refused for the engine's absence may take: far less
/// than the engine requests' own timeout (two minutes), which a call
/// left to reach the engine would wait out.
const REFUSAL_LIMIT: Duration = Duration::from_secs(10);

fn docker_flags<'a>(binary: &'a str, host: Option<&'a str>) -> Vec<&'a str> {
    let mut flags = vec!["--runtime", "docker", "--node-image-binary", binary];
    if let Some(host) = host {
        flags.extend(["--docker-host", host]);
    }
    flags
}

/// Runs a command that must succeed; returns its standard output.
fn run(program: &str, args: &[&str]) -> String {
    run_within(Command::new(program).args(args), ENGINE_LIMIT)
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
        .expect_ok(&format!("{program} {args:?}"))
}

/// Runs a command whose failure does not matter (clean-up).
fn try_run(program: &str, args: &[&str]) -> String {
    run_within(Command::new(program).args(args), ENGINE_LIMIT)
        .map(|ran| ran.stdout)
        .unwrap_or_default()
}

/// A `dockerd` of the test's own, beside the machine's engine: its own
/// socket, data and exec folders, pid file and configuration file, all in
/// a temporary folder, and a bridge of its own on a private range for its
/// default network. It touches no firewall rule (`--iptables=false`), so
/// it cannot disturb the machine engine's chains; its containers reach the
/// host on their network's gateway and the host reaches them on their
/// addresses, which is all the farm needs. The farm's network takes a
/// subnet from the engines' usual pools, where each engine skips the
/// subnets the host already routes.
///
/// What would delete the machine engine's bridge `docker0` is left out:
/// `--bridge none` (an engine without a default bridge deletes it at
/// start) and `--default-address-pool` (with one, an engine restarting
/// without live-restore deletes it too).
///
/// Dropped, it removes its containers and networks, stops, and removes its
/// bridges and folders: after a failed test too.
struct PrivateEngine {
    dir: TempDir,
    /// The bridge made for its default network.
    bridge: String,
    /// Ids of the networks it has had, whose bridges (`br-<id>`) outlive
    /// a stopped engine.
    networks: Vec<String>,
    dockerd: Option<Child>,
}

impl PrivateEngine {
    /// Whether one can run here; says why `test` is skipped when not.
    fn possible(test: &str) -> bool {
        let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            return skip("FARM_REQUIRE_DOCKER", test, "a second dockerd needs root");
        }
        for program in ["dockerd", "docker", "ip"] {
            if !installed(program) {
                return skip(
                    "FARM_REQUIRE_DOCKER",
                    test,
                    &format!("{program} is not installed (scripts/docker-engine installs Docker)"),
                );
            }
        }
        true
    }

    /// Makes the bridge and the folders, and starts the engine.
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("farm-engine-")
            .tempdir()
            .expect("a folder for the engine");
        let tag: u32 = rand::random();
        let bridge = format!("fe{tag:08x}");
        // Its default bridge on a private range no engine takes by itself.
        let address = format!("10.213.{}.1/24", 128 + tag % 120);
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        let mut engine = Self {
            dir,
            bridge,
            networks: Vec::new(),
            dockerd: None,
        };
        run("ip", &["addr", "add", &address, "dev", &engine.bridge]);
        run("ip", &["link", "set", &engine.bridge, "up"]);
        fs::write(engine.path("daemon.json"), "{}\n").expect("write daemon.json");
        engine.resume().await;
        engine
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `unix://<folder>/docker.sock`.
    fn host(&self) -> String {
        format!("unix://{}", self.path("docker.sock").display())
    }

    /// The docker CLI against this engine; must succeed.
    fn docker(&self, args: &[&str]) -> String {
        let host = self.host();
        let mut all = vec!["-H", host.as_str()];
        all.extend(args);
        run("docker", &all)
    }

    fn answers(&self) -> bool {
        Command::new("docker")
            .args([
                "-H",
                &self.host(),
                "version",
                "--format",
                "{{.Server.Version}}",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the engine on its folders (again, after [`stop`]) and waits
    /// until it answers.
    async fn resume(&mut self) {
        assert!(self.dockerd.is_none(), "the engine runs already");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dockerd.log"))
            .expect("open the engine's log");
        let path = |name: &str| self.path(name).display().to_string();
        let child = Command::new("dockerd")
            .args(["--host", &self.host()])
            .args(["--data-root", &path("data")])
            .args(["--exec-root", &path("exec")])
            .args(["--pidfile", &path("docker.pid")])
            .args(["--config-file", &path("daemon.json")])
            .args(["--bridge", &self.bridge])
            .args(["--iptables=false", "--ip-forward=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.dockerd = Some(child);
        let answered = eventually("the private engine to answer", ENGINE_LIMIT, || async {
            ready_if(self.answers(), self.log_tail())
        });
        answered.await;
    }

    /// Asks the engine to stop as its service would (SIGTERM); it stops
    /// its containers, then exits ([`Self::wait_stopped`]).
    fn terminate(&mut self) {
        self.note_networks();
        let child = self.dockerd.as_ref().expect("the engine runs");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM to dockerd");
    }

    /// Waits until the engine has exited.
    async fn wait_stopped(&mut self) {
        let mut child = self.dockerd.take().expect("the engine runs");
        let deadline = Instant::now() + ENGINE_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // It did not stop: killed, with the containerd it started.
        let _ = child.kill();
        let _ = child.wait();
        if let Ok(text) = fs::read_to_string(self.path("exec/containerd/containerd.pid"))
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        panic!(
            "the private engine did not stop within {ENGINE_LIMIT:?}: {}",
            self.log_tail()
        );
    }

    /// Remembers the ids of its networks, for their bridges.
    fn note_networks(&mut self) {
        let host = self.host();
        let listed = try_run(
            "docker",
            &["-H", &host, "network", "ls", "-q", "--no-trunc"],
        );
        for id in listed.split_whitespace() {
            if !self.networks.iter().any(|n| n == id) {
                self.networks.push(id.to_owned());
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.path("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let host = self.host();
            let docker = |args: &[&str]| {
                let mut all = vec!["-H", host.as_str()];
                all.extend(args);
                try_run("docker", &all)
            };
            // Everything on it is this test's.
            let containers = docker(&["ps", "-aq"]);
            let containers: Vec<&str> = containers.split_whitespace().collect();
            if !containers.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(containers);
                docker(&args);
            }
            self.note_networks();
            for network in
                docker(&["network", "ls", "-q", "--filter", "type=custom"]).split_whitespace()
            {
                docker(&["network", "rm", network]);
            }
            // Not a panic while unwinding from another.
            let mut child = self.dockerd.take();
            if let Some(child) = &mut child {
                let _ = kill(
                    Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
                    Signal::SIGTERM,
                );
                let deadline = Instant::now() + ENGINE_LIMIT;
                while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for id in &self.networks {
            let name = format!("br-{}", &id[..12.min(id.len())]);
            if Path::new("/sys/class/net").join(&name).exists() {
                try_run("ip", &["link", "del", &name]);
            }
        }
        try_run("ip", &["link", "del", &self.bridge]);
        // Mounts a killed engine may have left, deepest first, before its
        // folder goes.
        let root = self.dir.path().display().to_string();
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in ours {
            try_run("umount", &["-l", mount]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_engine_that_stops_and_comes_back_gets_its_farm_back() {
    const TEST: &str = "a_docker_engine_that_stops_and_comes_back_gets_its_farm_back";
    if !PrivateEngine::possible(TEST) {
        return;
    }
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let mut engine = PrivateEngine::start().await;
    let host = engine.host();
    // The node image is built in the private engine by the runtime itself,
    // from the same static binary.
    let farm = Farm::start_in(
        tempfile::tempdir().expect("tempdir"),
        3,
        &docker_flags(binary, Some(&host)),
    )
    .await;
    let before = farm.wait_healthy(3, Duration::from_secs(60)).await;
    let running = engine.docker(&["ps", "-q", "--filter", "label=farm.managed=true"]);
    assert_eq!(running.split_whitespace().count(), 3, "{running}");

    // The engine stops, as its service would; its containers go with it.
    let stopping = Instant::now();
    engine.terminate();
    let readyz = eventually(
        "/readyz to say the engine is gone",
        ENGINE_LIMIT,
        || async {
            let response = http::get(farm.addr, "/readyz").await;
            let text = response.text();
            ready_if(
                response.status == 503 && text.contains("Docker engine"),
                (response.status, text),
            )
        },
    )
    .await;
    let noticed_in = stopping.elapsed();
    assert!(readyz.1.contains(&host), "names the engine: {}", readyz.1);
    engine.wait_stopped().await;
    let stopped_in = stopping.elapsed();

    // Commands are refused at once, naming the engine.
    let asked = Instant::now();
    let scale = tokio::time::timeout(
        REFUSAL_LIMIT,
        farm.farm().scale(ScaleRequest { nodes: Some(4) }),
    )
    .await
    .expect("Scale answers without waiting on the engine")
    .expect_err("Scale refused while the engine is gone");
    let scale_in = asked.elapsed();
    assert_eq!(scale.code(), Code::Unavailable, "{scale:?}");
    assert!(scale.message().contains("Docker engine"), "{scale:?}");
    let asked = Instant::now();
    let restart = tokio::time::timeout(
        REFUSAL_LIMIT,
        farm.act(&by_name(&before, "node-001").id, NodeActionKind::Restart),
    )
    .await
    .expect("NodeAction answers without waiting on the engine")
    .expect_err("NodeAction refused while the engine is gone");
    let act_in = asked.elapsed();
    assert_eq!(restart.code(), Code::Unavailable, "{restart:?}");
    // The nodes went with their containers.
    farm.wait_nodes(
        "no node healthy without the engine",
        ENGINE_LIMIT,
        |nodes| !nodes.iter().any(healthy),
    )
    .await;

    // Back: the missing containers are made again, and the nodes
    // re-attach from their cached identities.
    engine.resume().await;
    let back = Instant::now();
    let after = farm
        .wait_nodes(
            "every node healthy again in a new container",
            Duration::from_secs(60),
            |nodes| {
                nodes.len() == 3
                    && nodes.iter().all(healthy)
                    && nodes
                        .iter()
                        .all(|n| n.runtime_id != by_name(&before, &n.name).runtime_id)
            },
        )
        .await;
    let recovered_in = back.elapsed();
    assert_eq!(ids_by_name(&before), ids_by_name(&after), "same identities");
    let readyz = http::get(farm.addr, "/readyz").await;
    assert_eq!(readyz.status, 200, "{}", readyz.text());
    let running = engine.docker(&["ps", "-q", "--filter", "label=farm.managed=true"]);
    assert_eq!(running.split_whitespace().count(), 3, "{running}");
    farm.farm()
        .scale(ScaleRequest { nodes: Some(3) })
        .await
        .expect("Scale accepted again");

    println!(
        "after SIGTERM: /readyz 503 in {noticed_in:.2?}, engine exited in {stopped_in:.2?}; \
Scale refused in {scale_in:.2?}, NodeAction in {act_in:.2?}; \
engine back to all {} nodes healthy: {recovered_in:.2?}",
        after.len()
    );
    farm.stop().await;
    let left = engine.docker(&["ps", "-aq"]);
    assert!(
        left.trim().is_empty(),
        "shutdown removes the containers: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_node_cut_off_from_the_farm_network_leaves_discover_and_comes_back() {
    const TEST: &str = "a_docker_node_cut_off_from_the_farm_network_leaves_discover_and_comes_back";
    if !docker::available(TEST) {
        return;
    }
    const INTERVAL: Duration = Duration::from_millis(250);
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cleanup = DockerCleanup::new(dir.path());
    let farm = Farm::builder()
        .dir(dir)
        .nodes(2)
        .timing(&[
            "--shed-lag",
            "0s",
            "--heartbeat-interval",
            "250ms",
            // Three intervals.
            "--heartbeat-timeout",
            "750ms",
            "--min-age",
            "0s",
            "--stop-grace",
            "3s",
        ])
        .flags(&docker_flags(binary, None))
        .start()
        .await;
    let nodes = farm.wait_healthy(2, Duration::from_secs(60)).await;
    let victim = by_name(&nodes, "node-002").clone();
    let other = by_name(&nodes, "node-001").clone();
    let network = format!("farm-{}", cleanup.id);
    let discovered = farm.discover("", 10).await;
    assert!(discovered.contains(&victim.id), "{discovered:?}");

    // Cut off: its heartbeats stop arriving, though its container runs on.
    let cut = Instant::now();
    docker::docker(&["network", "disconnect", &network, &victim.runtime_id]);
    let disconnect_took = cut.elapsed();
    farm.wait_nodes(
        "the cut-off node unhealthy",
        Duration::from_secs(30),
        |nodes| by_name(nodes, "node-002").state == NodeState::Unhealthy as i32,
    )
    .await;
    let unhealthy_in = cut.elapsed();
    eventually(
        "the cut-off node out of Discover",
        Duration::from_secs(10),
        || async {
            let ids = farm.discover("", 10).await;
            ready_if(!ids.contains(&victim.id) && ids.contains(&other.id), ids)
        },
    )
    .await;
    let undiscovered_in = cut.elapsed();
    let nodes = farm.nodes().await;
    assert!(
        healthy(by_name(&nodes, "node-001")),
        "the other node is fine"
    );
    let cut_off = by_name(&nodes, "node-002");
    assert_eq!(
        (&cut_off.runtime_id, cut_off.starts),
        (&victim.runtime_id, 1),
        "not replaced: its container still runs"
    );

    // Connected again: it re-attaches under the same id.
    let joined = Instant::now();
    docker::docker(&["network", "connect", &network, &victim.runtime_id]);
    let connect_took = joined.elapsed();
    let nodes = farm
        .wait_nodes(
            "the reconnected node healthy",
            Duration::from_secs(30),
            |nodes| healthy(by_name(nodes, "node-002")),
        )
        .await;
    let healthy_in = joined.elapsed();
    eventually(
        "the reconnected node in Discover",
        Duration::from_secs(10),
        || async {
            let ids = farm.discover("", 10).await;
            ready_if(ids.contains(&victim.id), ids)
        },
    )
    .await;
    let discovered_in = joined.elapsed();
    let back = by_name(&nodes, "node-002");
    assert_eq!(back.id, victim.id, "the same identity");
    assert_eq!(back.runtime_id, victim.runtime_id, "the same container");

    // From the start of each docker command, which itself took a while.
    println!(
        "cut off (docker network disconnect took {disconnect_took:.2?}): unhealthy after \
{unhealthy_in:.2?}, out of Discover after {undiscovered_in:.2?} (3 heartbeat intervals: {:.2?}); \
reconnected (docker network connect took {connect_took:.2?}, address {} then {}): healthy after \
{healthy_in:.2?}, in Discover after {discovered_in:.2?}",
        INTERVAL * 3,
        victim.address,
        back.address,
    );
    farm.stop().await;
    assert!(containers_labelled(&cleanup.label()).is_empty());
}
