//! Processes: the workspace's binaries, a `control-plane serve` child
//! ([`ControlPlaneProcess`]) for what only a real process shows (SIGKILL,
//! SIGTERM, a restart on the same port), with the catalog's line protocol
//! on a port of its own if asked, the guards that leave no process
//! behind when a test fails half-way ([`NodeGuard`]), commands run to
//! their end within a time limit ([`run_within`]), and `serve` refusing
//! flags before it binds anything ([`serve_refused`]); for benchmarks, a
//! long-lived child stopped when dropped ([`ChildGuard`]), a process's
//! resident memory ([`rss_kib`]) and the disk's own sync rate
//! ([`fsync_probe`]).
//!
//! Node processes are found two ways: the pid a control plane records in
//! `<data-dir>/nodes/<slot>/instance`, and any `farm-node` whose command
//! line names the data folder (one started but not yet recorded).

use std::{
    fs::{self, File, OpenOptions},
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child as StdChild, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    fcntl::{Flock, FlockArg},
    sys::signal::{self, Signal},
    unistd::Pid,
};

use crate::{
    api::{Api, deref_to_api},
    farm::Builder,
    http,
    wait::eventually,
};

/// How long a control plane child may take to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(20);
/// How long a dropped control plane child may take to stop after SIGTERM
/// before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(20);

/// What a command bounded in time printed, and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// `None` when it was killed for running past its time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Whether it ran to its end and succeeded.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The standard output of a command that must have succeeded.
    pub fn expect_ok(self, what: &str) -> String {
        assert!(
            self.ok(),
            "{what} failed ({}):\n{}\n{}",
            self.status
                .map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// An exclusive lock on the file at `path` (made when missing), held
/// until dropped: how tests, each run in a process of its own, take a
/// machine-wide resource in turn.
pub fn machine_lock(path: &str) -> Flock<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    Flock::lock(file, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("lock {path}: {e}"))
}

/// Runs `command` to its end, or until `limit`, when it is killed; from a
/// test without a runtime. `Err` only when it cannot start (a missing
/// program: `NotFound`).
pub fn run_within(command: &mut Command, limit: Duration) -> std::io::Result<Ran> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait()? {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    };
    Ok(Ran {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Removes the farm's variables (`FARM_*`) of the caller's shell from
/// `command`'s environment, so none of them changes what a test sees.
pub fn without_farm_env(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FARM_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `control-plane serve` on a data folder of its own, without a
/// runtime, with `args` and, of the farm's variables, only `env`: for
/// flags it must refuse before binding anything. Returns its exit code and
/// standard error.
pub fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("a temporary data folder");
    let mut command = Command::new(binary("control-plane"));
    without_farm_env(&mut command)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--runtime", "none"])
        .args(args)
        .envs(env.iter().copied());
    // A serve that accepts the flags keeps serving: fail, do not hang.
    let ran = run_within(&mut command, Duration::from_secs(10)).expect("run control-plane");
    let Some(status) = ran.status else {
        panic!("serve accepted {args:?} and kept running:\n{}", ran.stderr);
    };
    (status.code(), ran.stderr)
}

/// Path of a binary this workspace builds (`control-plane`, `farm-node`,
/// `loadgen`): next to the running test or benchmark, whose executable
/// sits in `target/<profile>/deps`. Panics when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, \
         `--release` for benchmarks)",
        path.display()
    );
    path
}

/// The text `--help` gives for `flag` (as it shows, e.g. `--token
/// <TOKEN>`): from there to the next flag.
pub fn flag_help<'a>(help: &'a str, flag: &str) -> &'a str {
    help.split(flag)
        .nth(1)
        .and_then(|rest| rest.split("\n      --").next())
        .unwrap_or_else(|| panic!("no {flag} in: {help}"))
}

/// A loopback address that was free a moment ago (bound, then released):
/// for a child process that must be told its port.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
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

/// Every live `farm-node` process whose command line mentions `data_dir`.
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

/// Kills (SIGKILL) every node process recorded under a data folder.
pub(crate) fn kill_recorded_nodes(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir.join("nodes")) else {
        return;
    };
    for entry in entries.flatten() {
        if let Ok(text) = fs::read_to_string(entry.path().join("instance"))
            && let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok())
        {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Kills every node process of a data folder, recorded or not.
pub(crate) fn kill_nodes(data_dir: &Path) {
    kill_recorded_nodes(data_dir);
    for pid in node_processes(data_dir) {
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills the node processes of a data folder when dropped: a control plane
/// killed (or left) by a failed test leaves its nodes running.
#[derive(Debug)]
pub struct NodeGuard(PathBuf);

impl NodeGuard {
    pub fn new(data_dir: &Path) -> Self {
        Self(data_dir.to_owned())
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        kill_nodes(&self.0);
    }
}

/// `control-plane serve` as a child process; its clients (without a
/// token) through `Deref`. Dropped while running, it gets SIGTERM, and
/// SIGKILL if it has not stopped twenty seconds later.
#[derive(Debug)]
pub struct ControlPlaneProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Where the catalog's line protocol listens, if it does.
    indexer: Option<SocketAddr>,
    api: Api,
}

/// How to start a [`ControlPlaneProcess`].
pub type ProcessBuilder = Builder<Child>;

/// A child's data folder, its address if chosen, and whether it is quiet.
#[derive(Debug)]
pub struct Child {
    data_dir: PathBuf,
    addr: Option<SocketAddr>,
    quiet: bool,
    /// Another build of the control plane; this workspace's when `None`.
    program: Option<PathBuf>,
    /// Its soft and hard limits on open files, if not this process's.
    file_limit: Option<(u64, u64)>,
}

impl ProcessBuilder {
    /// Where to listen (a free loopback port unless given): a restarted
    /// control plane listens where its nodes expect it.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.kind.addr = Some(addr);
        self
    }

    /// Runs another build of the control plane (a benchmark comparing two
    /// builds) instead of this workspace's.
    pub fn program(mut self, path: &Path) -> Self {
        self.kind.program = Some(path.to_owned());
        self
    }

    /// Starts it under these soft and hard limits on open files (through
    /// util-linux's `prlimit`, which then runs it in its own place).
    pub fn file_limit(mut self, soft: u64, hard: u64) -> Self {
        self.kind.file_limit = Some((soft, hard));
        self
    }

    /// As a measurement wants it: only errors logged, and none of the
    /// farm's variables (`FARM_*`) from the caller's shell.
    pub(crate) fn quiet(mut self) -> Self {
        self.kind.quiet = true;
        self
    }

    /// Starts it; returns once its port accepts connections (within 20 s).
    /// With [`Builder::indexer`], the catalog's line protocol listens on
    /// a port of 127.0.0.1 the child picks (`:0`, so no other process can
    /// take it first), and this returns once `/readyz` says where it
    /// accepts (a connection to find out would be counted in /metrics).
    pub async fn start(self) -> ControlPlaneProcess {
        let addr = self.kind.addr.unwrap_or_else(free_addr);
        let program = self
            .kind
            .program
            .clone()
            .unwrap_or_else(|| binary("control-plane"));
        let mut command = match self.kind.file_limit {
            Some((soft, hard)) => {
                let mut command = tokio::process::Command::new("prlimit");
                command
                    .arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(program);
                command
            }
            None => tokio::process::Command::new(program),
        };
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .args(self.serve_args(&self.kind.data_dir, false));
        if self.indexer {
            command.args(["--indexer-listen", "127.0.0.1:0"]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.kind.quiet {
            without_farm_env(command.as_std_mut()).env("RUST_LOG", "error");
        }
        let mut process = ControlPlaneProcess::spawn(&mut command, addr);
        eventually("the control plane to listen", LISTEN_LIMIT, || async {
            tokio::net::TcpStream::connect(addr).await.map(drop)
        })
        .await;
        if self.indexer {
            const ACCEPTING: &str = "catalog line protocol: accepting on ";
            let what = format!("/readyz to say {ACCEPTING:?}");
            let indexer = eventually(what, LISTEN_LIMIT, || async {
                let body = http::get(addr, "/readyz").await.text();
                let accepting = body
                    .lines()
                    .find_map(|line| line.strip_prefix(ACCEPTING)?.parse().ok());
                accepting.ok_or(body)
            })
            .await;
            process.indexer = Some(indexer);
        }
        process
    }
}

impl ControlPlaneProcess {
    /// A control plane that `command` runs (`control-plane serve`, or a
    /// script that `exec`s it), to serve on `addr`; returns at once.
    pub fn spawn(command: &mut tokio::process::Command, addr: SocketAddr) -> Self {
        let child = command
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the control plane");
        ControlPlaneProcess {
            child,
            addr,
            indexer: None,
            api: Api::at(addr),
        }
    }

    /// `nodes` nodes on `data_dir` as a measurement wants them: the
    /// product's timing, only errors logged, none of the farm's variables
    /// from the caller's shell.
    pub fn measured(data_dir: &Path, nodes: u32) -> ProcessBuilder {
        Self::builder(data_dir).nodes(nodes).timing(&[]).quiet()
    }

    /// `control-plane serve` on `data_dir`, its options to be chosen:
    /// no nodes (so no runtime), a free loopback port, [`FAST`](crate::FAST) timing.
    pub fn builder(data_dir: &Path) -> ProcessBuilder {
        Builder::new(Child {
            data_dir: data_dir.to_owned(),
            addr: None,
            quiet: false,
            program: None,
            file_limit: None,
        })
    }

    /// `nodes` process nodes on a free port of 127.0.0.1.
    pub async fn start(data_dir: &Path, nodes: u32) -> Self {
        Self::builder(data_dir).nodes(nodes).start().await
    }

    /// `nodes` process nodes on `addr`.
    pub async fn start_at(data_dir: &Path, nodes: u32, addr: SocketAddr) -> Self {
        Self::builder(data_dir)
            .nodes(nodes)
            .listen(addr)
            .start()
            .await
    }

    /// `nodes` nodes on `addr`, with `extra` flags (which choose the
    /// runtime).
    pub async fn start_with(data_dir: &Path, nodes: u32, addr: SocketAddr, extra: &[&str]) -> Self {
        Self::builder(data_dir)
            .nodes(nodes)
            .listen(addr)
            .flags(extra)
            .start()
            .await
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the catalog's line protocol listens; panics unless started
    /// with [`Builder::indexer`].
    pub fn indexer_addr(&self) -> SocketAddr {
        self.indexer.expect(
            "the control plane was started without the catalog's line protocol (`.indexer()`)",
        )
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.id()).expect("a pid"))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// SIGKILL, as a crash; returns once it is gone.
    pub async fn kill(&mut self) {
        signal::kill(self.pid(), Signal::SIGKILL).expect("SIGKILL the control plane");
        let _ = self.child.wait().await;
    }

    /// SIGTERM; returns how it exited, within `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        signal::kill(self.pid(), Signal::SIGTERM).expect("SIGTERM the control plane");
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the control plane did not exit within {limit:?}"))
            .expect("its exit status")
    }
}

deref_to_api!(ControlPlaneProcess);

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) else {
            return;
        };
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + DROP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // `kill_on_drop` sends SIGKILL.
    }
}

/// A long-lived child process (a server a benchmark measures), stopped
/// when dropped, on panic too: SIGTERM, then SIGKILL after three seconds.
/// Its stdin is a pipe held open, so a child that stops at the end of its
/// input lives exactly as long as this.
#[derive(Debug)]
pub struct ChildGuard {
    child: StdChild,
    _stdin: Option<ChildStdin>,
}

impl ChildGuard {
    /// Starts `command` (`what` names it in a panic).
    pub fn spawn(command: &mut Command, what: &str) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdin = child.stdin.take();
        Self {
            child,
            _stdin: stdin,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout, if the command piped it and it was not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Whether it has exited (and how).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user and system) process `pid` has used, from
/// `/proc/PID/stat` (clock ticks of 10 ms); NaN once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The command name may hold spaces: the fields start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15, the 12th and 13th after ')'.
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of
/// `/proc/<pid>/status`); `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How fast the disk under `dir` syncs: serial 4 KiB writes, each followed
/// by `fdatasync`, for one second. Returns syncs per second, and the p50
/// and p99 of one write and sync, in µs: the floor under every durable
/// write a benchmark measures there.
pub fn fsync_probe(dir: &Path) -> (f64, f64, f64) {
    use std::os::unix::fs::FileExt;
    let file = tempfile::tempfile_in(dir).expect("probe file");
    let block = [0x5au8; 4096];
    let mut micros = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        file.write_all_at(&block, (micros.len() as u64 % 64) * 4096)
            .expect("write");
        file.sync_data().expect("fdatasync");
        micros.push(t.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    (
        micros.len() as f64 / started.elapsed().as_secs_f64(),
        at(0.5),
        at(0.99),
    )
}
