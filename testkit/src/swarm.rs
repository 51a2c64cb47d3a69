//! A one-node Docker Swarm for the tests of `--runtime swarm`, and its
//! clean-up.
//!
//! Tests take the machine's engine one at a time ([`SwarmLock`], a file
//! lock, since the test runner runs each test in a process of its own).
//! Holding it, a test that finds the engine outside any swarm makes it the
//! manager of a one-node swarm ([`SwarmLock::ensure_swarm`]) and leaves that
//! swarm when it is done, also when it fails; a swarm it did not create is
//! used as it is and never left. The swarm the tests create marks its node
//! with the label `farm.test.swarm=1`, so a test that was killed before
//! leaving (SIGKILL, a cancelled run) is recognised as the creator by the
//! next one, which leaves it in its place.
//!
//! Whatever a test's farm creates (the service, its network, secret and
//! volumes) carries the farm id the test chose, and is removed by that
//! label when the [`SwarmFarm`] guard drops; nothing else in the swarm is
//! touched.

use std::{fs::File, path::Path, process::Command, time::Duration};

use nix::fcntl::Flock;

use crate::{
    docker::{self, DockerCleanup},
    process::{machine_lock, run_within},
};

/// Where the tests' lock lives: one per machine.
const LOCK_PATH: &str = "/tmp/farm-swarm-tests.lock";
/// The node label that marks a swarm the tests created.
const CREATED_LABEL: &str = "farm.test.swarm";
/// How long one `docker` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Runs `docker args` on the machine's engine, bounded in time; its
/// output, or why it failed.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    try_docker_on(None, args)
}

/// Runs `docker -H host args` (the machine's engine when `host` is
/// `None`), bounded in time; its output, or why it failed.
pub fn try_docker_on(host: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("docker");
    if let Some(host) = host {
        command.arg("-H").arg(host);
    }
    command.args(args);
    let ran =
        run_within(&mut command, COMMAND_LIMIT).map_err(|e| format!("docker {args:?}: {e}"))?;
    match ran.status {
        Some(status) if status.success() => Ok(ran.stdout),
        Some(status) => Err(format!("docker {args:?}: {status}: {}", ran.stderr.trim())),
        None => Err(format!("docker {args:?}: no end within {COMMAND_LIMIT:?}")),
    }
}

/// `docker service inspect --format format service`, trimmed.
pub fn inspect_service(service: &str, format: &str) -> Result<String, String> {
    try_docker(&["service", "inspect", "--format", format, service])
        .map(|out| out.trim().to_owned())
}

/// Names of what carries `label` (`key=value`) on the machine's engine,
/// of one kind: `service`, `network`, `secret`, `volume`, `container`.
pub fn labelled(label: &str, kind: &str) -> Vec<String> {
    let filter = format!("label={label}");
    let args: Vec<&str> = match kind {
        "container" => vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
        kind => vec![kind, "ls", "--filter", &filter, "--format", "{{.Name}}"],
    };
    try_docker(&args)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Waits (a minute at most) until no container carrying `label` is left:
/// a removed service's tasks take a moment to go.
pub fn wait_until_no_containers(label: &str) {
    for _ in 0..120 {
        if labelled(label, "container").is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Removes, as far as it can, the services carrying `label`, and once
/// their containers are gone, its secrets, networks and volumes; never
/// fails.
pub fn remove_labelled(label: &str) {
    // The services first: their tasks' containers then go, and the
    // networks, secrets and volumes can follow.
    for service in labelled(label, "service") {
        let _ = try_docker(&["service", "rm", &service]);
    }
    wait_until_no_containers(label);
    for kind in ["secret", "network", "volume"] {
        for name in labelled(label, kind) {
            let _ = try_docker(&[kind, "rm", &name]);
        }
    }
}

/// The engine's swarm state: `inactive`, `active`, ... and whether it is a
/// manager.
pub fn swarm_state() -> (String, bool) {
    let out = try_docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ])
    .unwrap_or_default();
    let mut words = out.split_whitespace();
    let state = words.next().unwrap_or("unknown").to_owned();
    (state, words.next() == Some("true"))
}

/// The machine's engine, held by this test alone among the swarm tests.
#[derive(Debug)]
pub struct SwarmLock {
    _lock: Flock<File>,
    /// This test made the swarm, and leaves it when dropped.
    created: bool,
}

impl SwarmLock {
    /// Waits for the other swarm tests to finish with the engine. `None`
    /// when no engine answers (the test is skipped, or fails under
    /// `FARM_REQUIRE_DOCKER=1`).
    pub fn acquire(test: &str) -> Option<Self> {
        if !docker::available(test) {
            return None;
        }
        let lock = machine_lock(LOCK_PATH);
        let mut held = Self {
            _lock: lock,
            created: false,
        };
        // A swarm an earlier test made and could not leave is this one's to
        // leave.
        let (state, manager) = swarm_state();
        if state == "active" && manager && Self::marked() {
            held.created = true;
        }
        Some(held)
    }

    fn marked() -> bool {
        try_docker(&[
            "node",
            "inspect",
            "self",
            "--format",
            &format!("{{{{index .Spec.Labels \"{CREATED_LABEL}\"}}}}"),
        ])
        .is_ok_and(|label| label.trim() == "1")
    }

    /// Whether the engine is outside any swarm now.
    pub fn outside_swarm(&self) -> bool {
        swarm_state().0 == "inactive"
    }

    /// Makes sure the engine manages a swarm: a one-node swarm on
    /// 127.0.0.1 when it is in none. Panics when the engine is a worker of
    /// a swarm (a test cannot run a farm from there).
    pub fn ensure_swarm(&mut self) {
        let (state, manager) = swarm_state();
        match (state.as_str(), manager) {
            ("active", true) => {}
            ("inactive", _) => self.init(&["--advertise-addr", "127.0.0.1"]),
            (state, _) => panic!(
                "the engine's swarm state is {state} and it is not a manager: the swarm tests need a manager or no swarm"
            ),
        }
    }

    /// Makes the engine the manager of a swarm of this test's own, made
    /// with `init_flags` (an address other engines reach, a heartbeat of its
    /// own): a swarm the tests made before is left first. False, touching
    /// nothing, when the engine is in a swarm the tests did not make.
    pub fn own_swarm(&mut self, init_flags: &[&str]) -> bool {
        match swarm_state().0.as_str() {
            "inactive" => {}
            "active" if self.created => {
                try_docker(&["swarm", "leave", "--force"])
                    .unwrap_or_else(|e| panic!("leave the tests' earlier swarm: {e}"));
            }
            _ => return false,
        }
        self.init(init_flags);
        true
    }

    /// `docker swarm init init_flags`, marking the swarm as the tests'.
    fn init(&mut self, init_flags: &[&str]) {
        let mut args = vec!["swarm", "init"];
        args.extend(init_flags);
        try_docker(&args).unwrap_or_else(|e| panic!("make a swarm: {e}"));
        self.created = true;
        let node = try_docker(&["info", "--format", "{{.Swarm.NodeID}}"])
            .unwrap_or_else(|e| panic!("the swarm node's id: {e}"));
        try_docker(&[
            "node",
            "update",
            "--label-add",
            &format!("{CREATED_LABEL}=1"),
            node.trim(),
        ])
        .unwrap_or_else(|e| panic!("mark the test's swarm: {e}"));
    }
}

impl Drop for SwarmLock {
    fn drop(&mut self) {
        if self.created {
            // The gateway bridge outlives the swarm: removed too, to leave
            // the engine as it was found.
            let _ = try_docker(&["swarm", "leave", "--force"]);
            // Its last endpoints may take a moment to go after leaving
            // (and the engine sometimes keeps a stale one until it
            // restarts: the bridge then stays, harmless, and is reused).
            for _ in 0..6 {
                let gone = try_docker(&["network", "rm", "docker_gwbridge"]).is_ok()
                    || try_docker(&["network", "inspect", "docker_gwbridge"]).is_err();
                if gone {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// A farm id chosen by the test, whose service, network, secrets, volumes
/// and containers are removed by that id's label when dropped.
#[derive(Debug)]
pub struct SwarmFarm {
    pub cleanup: DockerCleanup,
}

impl SwarmFarm {
    /// Writes a fresh farm id into `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            cleanup: DockerCleanup::new(data_dir),
        }
    }

    /// The farm's id.
    pub fn id(&self) -> &str {
        &self.cleanup.id
    }

    /// The farm's service (and network) name.
    pub fn service(&self) -> String {
        format!("farm-{}", self.cleanup.id)
    }

    /// `docker service inspect` of the farm's service with `format`.
    pub fn inspect(&self, format: &str) -> String {
        inspect_service(&self.service(), format).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Names of what carries this farm's label, of one kind (`service`,
    /// `network`, `secret`, `volume`, `container`).
    pub fn labelled(&self, kind: &str) -> Vec<String> {
        labelled(&self.cleanup.label(), kind)
    }

    /// Asserts that nothing carrying the farm's label is left on the
    /// machine's engine (after the control plane's shutdown).
    pub fn assert_removed(&self) {
        for kind in ["service", "container", "network", "secret", "volume"] {
            let left = self.labelled(kind);
            assert!(left.is_empty(), "shutdown leaves no {kind}: {left:?}");
        }
    }
}

impl Drop for SwarmFarm {
    fn drop(&mut self) {
        remove_labelled(&self.cleanup.label());
        // DockerCleanup's own drop removes what is left of the containers.
    }
}
