//! Several Docker hosts on one machine: extra Docker engines, each in a
//! network namespace of its own, for the tests of a swarm that spans hosts
//! (tasks placed on other hosts, a host cut off the network and back).
//!
//! [`Hosts`] makes a bridge `farmsw<hex>` in the root namespace holding
//! `198.18.N.1/24`, N a third octet nothing on the machine uses (the
//! benchmark range 198.18.0.0/15 is nobody's here), and per engine a
//! namespace `farm-<hex>-<i>` joined to the bridge by a veth pair:
//! `fv<hex>-<i>` on the bridge, `eth0` inside with `198.18.N.(10+i)` and a
//! default route through the bridge. A `dockerd` of the engine's own runs
//! in there, with its data, exec root, pid file, socket
//! (`unix://<dir>/docker.sock`), containerd and log in a folder of its own;
//! its `docker0` and `docker_gwbridge` are made inside its namespace. Each
//! engine can join a swarm as a worker ([`Engine::join`]), whose manager is
//! another engine here ([`Engine::init_swarm`]) or the machine's own, and
//! can be cut off the network and reconnected ([`Engine::cut`]).
//!
//! What it takes from the machine, and why:
//! - Two rules at the top of the root namespace's `FORWARD` chain: the
//!   engines reach each other through the bridge (a bridge's traffic passes
//!   that chain, br_netfilter, whose policy the machine's engine sets to
//!   DROP), and nothing beyond it (no registry, no internet). The root
//!   namespace itself (the bridge's address, the machine's own addresses)
//!   is reachable from every namespace: that is `INPUT`, not `FORWARD`.
//! - The engines enter the network namespace with `nsenter --net`, not
//!   `ip netns exec`: that one mounts the namespace's sysfs over `/sys`,
//!   which hides the cgroup mounts under `/sys/fs/cgroup`, and dockerd
//!   then refuses to start ("Devices cgroup isn't mounted"). They get a
//!   UTS namespace too, so that each swarm node has a host name of its
//!   own (its namespace's name).
//! - The engines never pull: `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` stops
//!   a swarm task from trying to pull an image by tag that it already has
//!   (it always tries otherwise), and images come from the machine's
//!   engine ([`Engine::load_image`]).
//!
//! Everything is removed when the guard drops, after a failed test too;
//! what a killed test left (its owner process gone) is removed by the next
//! [`Hosts`] made on the machine. Every command is bounded in time.

use std::{
    fmt::Write as _,
    fs::{self, File},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};

use crate::{
    docker,
    process::{alive, machine_lock, run_within},
    skip::{installed, skip},
    swarm::try_docker_on,
};

/// Where each [`Hosts`] keeps its engines' folders, under its id.
const STATE_DIR: &str = "/tmp/farm-engines";
/// Held while names and a subnet are chosen and while leftovers are removed.
const LOCK_PATH: &str = "/tmp/farm-engines.lock";
/// How long an `ip`, `iptables` or `umount` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);
/// How long one `docker` command may take.
const DOCKER_LIMIT: Duration = Duration::from_secs(60);
/// How long the engines may take to answer once started.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long the engines may take to stop after SIGTERM before they, and
/// whatever else runs from their folders, are killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long an engine gives its containers to stop when it stops.
const SHUTDOWN_TIMEOUT: &str = "3";
/// The port a swarm manager listens on.
pub const SWARM_PORT: u16 = 2377;

/// Extra Docker engines, each in a network namespace of its own behind a
/// bridge of the root namespace; all removed when dropped.
#[derive(Debug)]
pub struct Hosts {
    /// Four hex digits naming the bridge, the namespaces and the veths.
    id: String,
    /// The subnet's third octet: `198.18.<octet>.0/24`.
    octet: u8,
    dir: PathBuf,
    engines: Vec<Engine>,
}

/// One extra engine: its namespace, its address on the bridge and its
/// `dockerd`.
#[derive(Debug)]
pub struct Engine {
    /// The namespace's name, and the engine's host name.
    name: String,
    /// The veth's end on the bridge, in the root namespace.
    veth: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    dockerd: Option<Child>,
}

impl Hosts {
    /// Whether extra engines can be made here: root, `ip`, `nsenter`,
    /// `unshare`, `iptables`, `dockerd` and a machine engine to take images
    /// from. Says why `test` is skipped when not (a failure under
    /// `FARM_REQUIRE_DOCKER=1`).
    pub fn available(test: &str) -> bool {
        const VAR: &str = "FARM_REQUIRE_DOCKER";
        if !is_root() {
            return skip(VAR, test, "extra Docker engines need root");
        }
        for program in ["ip", "nsenter", "unshare", "iptables", "dockerd", "docker"] {
            if !installed(program) {
                return skip(VAR, test, &format!("{program} is not installed"));
            }
        }
        docker::available(test)
    }

    /// `count` engines on a subnet of 198.18.0.0/15 that nothing here uses;
    /// returns once each answers.
    pub fn start(count: usize) -> Self {
        Self::create(count, None)
    }

    /// `count` engines on `198.18.<octet>.0/24`, which must be unused.
    pub fn start_on(count: usize, octet: u8) -> Self {
        Self::create(count, Some(octet))
    }

    fn create(count: usize, octet: Option<u8>) -> Self {
        assert!(
            (1..=200).contains(&count),
            "between 1 and 200 engines, not {count}"
        );
        // The machine's lock on names and subnets.
        let lock = machine_lock(LOCK_PATH);
        sweep_leftovers();
        let id = loop {
            let id = format!("{:04x}", rand::random::<u16>());
            if !Path::new(&format!("/sys/class/net/farmsw{id}")).exists()
                && !Path::new(STATE_DIR).join(&id).exists()
            {
                break id;
            }
        };
        let used = used_octets();
        let octet = match octet {
            Some(octet) => {
                assert!(
                    !used.contains(&octet),
                    "198.18.{octet}.0/24 is in use on this machine"
                );
                octet
            }
            None => {
                let free: Vec<u8> = (16..=250).filter(|o| !used.contains(o)).collect();
                assert!(!free.is_empty(), "no free /24 left in 198.18.16-250");
                free[rand::random_range(0..free.len())]
            }
        };
        let dir = Path::new(STATE_DIR).join(&id);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::write(dir.join("owner"), owner_of(std::process::id()))
            .unwrap_or_else(|e| panic!("write {}/owner: {e}", dir.display()));
        // From here on, a panic drops the guard, which removes what exists.
        let mut hosts = Hosts {
            id,
            octet,
            dir,
            engines: Vec::with_capacity(count),
        };
        let bridge = hosts.bridge();
        let gateway = format!("{}/24", hosts.gateway());
        iptables(&[
            "-I", "FORWARD", "-i", &bridge, "!", "-o", &bridge, "-j", "DROP",
        ]);
        iptables(&[
            "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &gateway, "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        // The subnet is taken (the bridge holds it): others may choose.
        drop(lock);
        for index in 0..count {
            let engine = hosts.add_engine(index);
            hosts.engines.push(engine);
        }
        for engine in &mut hosts.engines {
            engine.wait_until_answering();
        }
        hosts
    }

    /// Namespace, veth pair and addresses of engine `index`, and its
    /// dockerd started.
    fn add_engine(&self, index: usize) -> Engine {
        let name = format!("farm-{}-{index}", self.id);
        let veth = format!("fv{}-{index}", self.id);
        let octet = u8::try_from(10 + index).expect("at most 245 engines");
        let addr = Ipv4Addr::new(198, 18, self.octet, octet);
        let dir = self.dir.join(format!("e{index}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut engine = Engine {
            name,
            veth,
            addr,
            dir,
            dockerd: None,
        };
        let ns = engine.name.clone();
        ip(&["netns", "add", &ns]);
        let veth = engine.veth.clone();
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"]);
        let cidr = format!("{addr}/24");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let gateway = self.gateway().to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &gateway]);
        engine.spawn_dockerd();
        engine
    }

    /// The engines, in the order of their addresses (`.10`, `.11`, ...).
    pub fn engines(&self) -> &[Engine] {
        &self.engines
    }

    /// The root namespace's address on the bridge, `198.18.N.1`: where the
    /// engines, and their containers, reach this machine.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.octet, 1)
    }

    /// The engines' subnet, `198.18.N.0/24`.
    pub fn subnet(&self) -> String {
        format!("198.18.{}.0/24", self.octet)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("farmsw{}", self.id)
    }

    /// Loads `image` from the machine's engine into every engine.
    pub fn load_image(&self, image: &str) {
        for engine in &self.engines {
            engine.load_image(image);
        }
    }
}

impl std::ops::Index<usize> for Hosts {
    type Output = Engine;

    fn index(&self, index: usize) -> &Engine {
        &self.engines[index]
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        teardown(&self.id, &self.dir, &mut self.engines);
    }
}

impl Engine {
    /// Starts its dockerd in its namespaces (network, and UTS for its host
    /// name), logging to `dockerd.log` in its folder.
    fn spawn_dockerd(&mut self) {
        let log = File::create(self.dir.join("dockerd.log"))
            .unwrap_or_else(|e| panic!("create {}/dockerd.log: {e}", self.dir.display()));
        let err_log = log.try_clone().expect("a second handle on the log");
        let dir = self.dir.display().to_string();
        let mut command = Command::new("nsenter");
        // nsenter, unshare and sh each exec the next: the child is dockerd.
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .args(["unshare", "--uts", "--", "sh", "-c"])
            .arg(r#"hostname "$0" && exec "$@""#)
            .arg(&self.name)
            .arg("dockerd")
            .args(["--data-root", &format!("{dir}/data")])
            .args(["--exec-root", &format!("{dir}/exec")])
            .args(["--pidfile", &format!("{dir}/dockerd.pid")])
            .args(["-H", &self.host()])
            .args(["--shutdown-timeout", SHUTDOWN_TIMEOUT])
            // A containerd of its own is started under the exec root unless
            // the machine runs one at the standard socket; then these keep
            // the engines' containers apart.
            .args(["--containerd-namespace", &format!("moby-{}", self.name)])
            .args([
                "--containerd-plugins-namespace",
                &format!("plugins-{}", self.name),
            ])
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start dockerd in {}: {e}", self.name));
        self.dockerd = Some(child);
    }

    fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(child) = self.dockerd.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "dockerd in {} exited ({status}):\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            if self
                .try_docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd in {} did not answer within {START_LIMIT:?}:\n{}",
                self.name,
                self.log_tail(30)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its namespace's name, which is also its host name (a swarm node's
    /// `Description.Hostname`, what `docker node ls` and `service ps`
    /// show).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the bridge, `198.18.N.(10+i)`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `unix://<its folder>/docker.sock`, for `docker -H`.
    pub fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// `program` to be run in its network namespace (`nsenter --net`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        command
    }

    /// Runs `docker -H <this engine> args`, bounded in time; its output, or
    /// why it failed.
    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        try_docker_on(Some(&self.host()), args).map_err(|e| format!("{}: {e}", self.name))
    }

    /// [`Engine::try_docker`], which must succeed; its output, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        self.try_docker(args)
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_owned()
    }

    /// Copies `image` from the machine's engine into this one (`docker
    /// save`, then `docker load` here, through a file of its folder: each
    /// step bounded in time). Nothing is pulled.
    pub fn load_image(&self, image: &str) {
        let tar = self
            .dir
            .join(format!("image-{:08x}.tar", rand::random::<u32>()));
        let tar_path = tar.display().to_string();
        let saved = run_within(
            Command::new("docker").args(["save", "-o", &tar_path, image]),
            DOCKER_LIMIT,
        )
        .expect("run docker save");
        saved.expect_ok(&format!("docker save {image} from the machine's engine"));
        let loaded = self.try_docker(&["load", "-i", &tar_path]);
        let _ = fs::remove_file(&tar);
        loaded.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Makes this engine the manager of a new swarm, advertised on its
    /// address; returns the worker join token.
    pub fn init_swarm(&self) -> String {
        let addr = self.addr.to_string();
        self.docker(&["swarm", "init", "--advertise-addr", &addr]);
        self.docker(&["swarm", "join-token", "-q", "worker"])
    }

    /// Where workers join a swarm this engine manages: `ADDR:2377`.
    pub fn manager_addr(&self) -> String {
        format!("{}:{SWARM_PORT}", self.addr)
    }

    /// Joins the swarm whose manager is at `manager_addr` (`HOST` or
    /// `HOST:PORT`, 2377 by default) with `token`, advertising its own
    /// address. The manager must be reachable from the namespace: another
    /// engine here, or the machine's engine advertised on an address of
    /// the root namespace (the bridge's, or one of the machine's own), not
    /// 127.0.0.1 (the namespace's own loopback).
    pub fn join(&self, token: &str, manager_addr: &str) {
        let manager = if manager_addr.contains(':') {
            manager_addr.to_owned()
        } else {
            format!("{manager_addr}:{SWARM_PORT}")
        };
        let addr = self.addr.to_string();
        self.docker(&[
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            &addr,
            &manager,
        ]);
    }

    /// Its swarm node id (empty outside a swarm): for the manager to remove
    /// it (`docker node rm --force`) once this engine is gone.
    pub fn node_id(&self) -> String {
        self.docker(&["info", "--format", "{{.Swarm.NodeID}}"])
    }

    /// Cuts it off the network: its veth's end on the bridge goes down. Its
    /// engine and containers keep running, unseen: a network partition.
    pub fn cut(&self) {
        ip(&["link", "set", &self.veth, "down"]);
    }

    /// Undoes [`Engine::cut`].
    pub fn reconnect(&self) {
        ip(&["link", "set", &self.veth, "up"]);
    }

    /// The last `lines` lines of its dockerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Looks with `look` every `every` until it returns `Ok`, for at most
/// `limit`; returns what it saw and how long that took. Panics after
/// `limit` with `what` and the last `Err`. For tests without a runtime,
/// whose looks block (a `docker` command).
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut look: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        match look() {
            Ok(value) => return (value, started.elapsed()),
            Err(seen) if started.elapsed() > limit => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => thread::sleep(every),
        }
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// Runs `ip args`, which must succeed.
fn ip(args: &[&str]) {
    run_within(Command::new("ip").args(args), COMMAND_LIMIT)
        .expect("run ip")
        .expect_ok(&format!("ip {}", args.join(" ")));
}

/// Runs `iptables -w args`, which must succeed.
fn iptables(args: &[&str]) {
    run_within(
        Command::new("iptables").args(["-w", "10"]).args(args),
        COMMAND_LIMIT,
    )
    .expect("run iptables")
    .expect_ok(&format!("iptables {}", args.join(" ")));
}

/// Runs a command of the clean-up, ignoring how it ends; whether it
/// succeeded.
fn quietly(program: &str, args: &[&str]) -> bool {
    run_within(Command::new(program).args(args), COMMAND_LIMIT).is_ok_and(|ran| ran.ok())
}

/// The third octets of 198.18.x that an address or route here uses.
fn used_octets() -> Vec<u8> {
    let mut text = String::new();
    for args in [&["-o", "-4", "addr"][..], &["-4", "route"][..]] {
        if let Ok(ran) = run_within(Command::new("ip").args(args), COMMAND_LIMIT) {
            text.push_str(&ran.stdout);
        }
    }
    text.split(|c: char| c.is_whitespace() || c == '/')
        .filter_map(|word| word.strip_prefix("198.18."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}

/// What identifies process `pid` across pid reuse: its pid and start time.
fn owner_of(pid: u32) -> String {
    let start = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            // starttime is field 22, the 20th after ')'.
            rest.split_whitespace().nth(19).map(str::to_owned)
        })
        .unwrap_or_default();
    format!("{pid} {start}")
}

/// Removes, under the lock, what [`Hosts`] of processes now gone left.
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let owner = fs::read_to_string(entry.path().join("owner")).unwrap_or_default();
        let pid = owner.split_whitespace().next().and_then(|p| p.parse().ok());
        let owned = pid.is_some_and(|pid: u32| {
            alive(i32::try_from(pid).unwrap_or(-1)) && owner_of(pid) == owner.trim()
        });
        if !owned {
            teardown(&id, &entry.path(), &mut []);
        }
    }
}

/// Removes everything of the [`Hosts`] `id` whose folder is `dir`: stops
/// its engines (SIGTERM, then SIGKILL to whatever still runs from its
/// folder), unmounts what they left mounted, and deletes the veths, the
/// namespaces, the `FORWARD` rules, the bridge and the folder. Found by
/// name, so it also removes a half-made one; never fails, bounded in time.
fn teardown(id: &str, dir: &Path, engines: &mut [Engine]) {
    let bridge = format!("farmsw{id}");
    let needle = format!("{}/", dir.display());
    // dockerd stops its containers and its containerd.
    let dockerds: Vec<i32> = processes_mentioning(&needle)
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.starts_with(b"dockerd\0") || cmd.ends_with(b"/dockerd\0"))
        })
        .collect();
    for pid in &dockerds {
        let _ = signal::kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !processes_mentioning(&needle).is_empty() {
        for engine in engines.iter_mut() {
            if let Some(child) = engine.dockerd.as_mut() {
                let _ = child.try_wait();
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    for pid in processes_mentioning(&needle) {
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for engine in engines.iter_mut() {
        if let Some(mut child) = engine.dockerd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for mount in mounts_under(&needle) {
        quietly("umount", &["-l", &mount]);
    }
    for name in names_in("/sys/class/net", &format!("fv{id}-")) {
        quietly("ip", &["link", "del", &name]);
    }
    for name in names_in("/run/netns", &format!("farm-{id}-")) {
        quietly("ip", &["netns", "del", &name]);
    }
    for rule in [
        &["-i", &bridge, "-o", &bridge, "-j", "ACCEPT"][..],
        &["-i", &bridge, "!", "-o", &bridge, "-j", "DROP"][..],
    ] {
        // Once each, or more if a rule was added twice.
        for _ in 0..4 {
            let mut args = vec!["-w", "10", "-D", "FORWARD"];
            args.extend_from_slice(rule);
            if !quietly("iptables", &args) {
                break;
            }
        }
    }
    if Path::new("/sys/class/net").join(&bridge).exists() {
        quietly("ip", &["link", "del", &bridge]);
    }
    // A folder with something still mounted in it is left, not emptied.
    if mounts_under(&needle).is_empty() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Live processes whose command line holds `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = needle.as_bytes();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.windows(needle.len()).any(|w| w == needle))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Mount points under `prefix` (which ends with `/`), deepest first.
fn mounts_under(prefix: &str) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|point| point.starts_with(prefix))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    mounts.dedup();
    mounts
}

/// A mount point as `/proc/self/mountinfo` escapes it (`\040` for a
/// space), unescaped.
fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                let _ = out.write_char(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Names in folder `dir` that start with `prefix`.
fn names_in(dir: &str, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::unescape_mount;

    #[test]
    fn a_mount_point_with_a_space_is_unescaped() {
        assert_eq!(unescape_mount(r"/tmp/a\040b/c"), "/tmp/a b/c");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount(r"/odd\x"), r"/odd\x");
    }
}
