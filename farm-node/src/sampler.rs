//! The metrics sampler: once a second (and once at start) it fills a
//! `farm.v1.NodeSample` with the node's CPU, memory, disk and network use
//! and the requests the [`Recorder`] counted, and publishes it for the
//! agent to send with its next heartbeat. Samples and heartbeats both come
//! about once a second and drift past each other: a sample no heartbeat
//! took hands its latency histogram on to the next, so no request's
//! latency is lost.
//!
//! Inside a container the limits that matter are the container's: the CPU
//! and memory limits come from the cgroup file system ([`Cgroup`], v2 or
//! v1) when it sets any, else from the machine. Memory used is the
//! cgroup's usage when the cgroup holds only this process (a container of
//! its own), else the process's RSS.
//!
//! Only what the sample needs is read: this one process (`/proc/self`),
//! not the process table; the one file system holding the cache folder;
//! the network counters of the node's network namespace, from
//! `/proc/net/dev` in one read (sysinfo's `Networks` also resolves every
//! interface's addresses at each refresh: a hundred times the cost).
//! Sampling costs a few file reads a second.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use farm_api::v1::NodeSample;
use hdrhistogram::{Histogram, serialization::V2Serializer};
use sysinfo::{
    DiskRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::latency::{self, Recorder};

/// How often the node samples itself.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Where the cgroup file system is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The byte counters of the network namespace's interfaces.
pub const NET_DEV: &str = "/proc/net/dev";
/// cgroup v1 reports "no memory limit" as a huge number (about 2^63
/// rounded to a page); anything from here up is no limit.
const V1_NO_LIMIT: u64 = 1 << 62;

/// The request recorder and the newest sample: shared by the Workload
/// service (records), the sampler (publishes) and the agent (sends).
#[derive(Debug)]
pub struct Metrics {
    pub recorder: Recorder,
    latest: Mutex<Latest>,
}

/// The newest sample and whether a heartbeat took it.
#[derive(Debug, Default)]
struct Latest {
    sample: Option<NodeSample>,
    taken: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            recorder: Recorder::new(),
            latest: Mutex::new(Latest::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        // A poisoned lock still holds whole samples.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest sample, if the sampler took one.
    pub fn latest(&self) -> Option<NodeSample> {
        self.lock().sample.clone()
    }

    /// The newest sample unless a heartbeat already took it; taking it.
    pub fn take_unsent(&self) -> Option<NodeSample> {
        let mut latest = self.lock();
        if latest.taken {
            return None;
        }
        latest.taken = true;
        latest.sample.clone()
    }

    /// Makes `sample` the newest. When the one it replaces was never
    /// taken, its latency histogram is merged into `sample`'s.
    pub fn publish(&self, mut sample: NodeSample) {
        let mut latest = self.lock();
        if !latest.taken
            && let Some(previous) = &latest.sample
            && !previous.latency_histogram.is_empty()
        {
            sample.latency_histogram =
                latency::merge_serialized(&previous.latency_histogram, &sample.latency_histogram);
        }
        *latest = Latest {
            sample: Some(sample),
            taken: false,
        };
    }
}

/// The cgroup version a mount holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy: `cpu.max`, `memory.max`, `memory.current`.
    V2,
    /// One hierarchy per controller: `cpu/cpu.cfs_quota_us`,
    /// `memory/memory.limit_in_bytes`, ...
    V1,
}

/// The cgroup file system seen from this process (its own cgroup inside a
/// container with a cgroup namespace, or the machine's root outside).
#[derive(Debug, Clone)]
pub struct Cgroup {
    root: PathBuf,
    version: Option<CgroupVersion>,
}

impl Cgroup {
    /// The cgroup file system mounted at `root` (normally [`CGROUP_ROOT`]);
    /// neither version when nothing is there.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let version = if root.join("cgroup.controllers").exists() {
            Some(CgroupVersion::V2)
        } else if root.join("memory").is_dir() || root.join("cpu").is_dir() {
            Some(CgroupVersion::V1)
        } else {
            None
        };
        Self { root, version }
    }

    pub fn version(&self) -> Option<CgroupVersion> {
        self.version
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(path)).ok()
    }

    /// CPUs the cgroup may use, when it sets a quota.
    pub fn cpu_limit(&self) -> Option<f64> {
        match self.version? {
            CgroupVersion::V2 => parse_cpu_max(&self.read("cpu.max")?),
            CgroupVersion::V1 => {
                let dir = ["cpu", "cpu,cpuacct"]
                    .into_iter()
                    .find(|d| self.root.join(d).join("cpu.cfs_quota_us").exists())?;
                parse_cfs_quota(
                    &self.read(&format!("{dir}/cpu.cfs_quota_us"))?,
                    &self.read(&format!("{dir}/cpu.cfs_period_us"))?,
                )
            }
        }
    }

    /// Memory the cgroup may use, when it sets a limit.
    pub fn memory_limit(&self) -> Option<u64> {
        match self.version? {
            CgroupVersion::V2 => parse_memory_max(&self.read("memory.max")?),
            CgroupVersion::V1 => parse_v1_memory_limit(&self.read("memory/memory.limit_in_bytes")?),
        }
    }

    /// Memory the cgroup uses now.
    pub fn memory_used(&self) -> Option<u64> {
        let text = match self.version? {
            CgroupVersion::V2 => self.read("memory.current")?,
            CgroupVersion::V1 => self.read("memory/memory.usage_in_bytes")?,
        };
        text.trim().parse().ok()
    }

    /// Whether `pid` is the only process in the cgroup (a container of its
    /// own), so that the cgroup's usage is the process's.
    pub fn holds_only(&self, pid: u32) -> bool {
        let procs = match self.version {
            Some(CgroupVersion::V2) => self.read("cgroup.procs"),
            Some(CgroupVersion::V1) => self.read("memory/cgroup.procs"),
            None => None,
        };
        procs.is_some_and(|procs| {
            let mut pids = procs.split_whitespace();
            pids.next() == Some(pid.to_string().as_str()) && pids.next().is_none()
        })
    }
}

/// cgroup v2 `cpu.max`: `"$QUOTA $PERIOD"` in microseconds, or `"max ..."`
/// for no limit.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period = fields.next().unwrap_or("100000");
    if quota == "max" {
        return None;
    }
    cpus(quota.parse().ok()?, period.parse().ok()?)
}

/// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`; a quota of -1 is
/// no limit.
pub fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    cpus(u64::try_from(quota).ok()?, u64::try_from(period).ok()?)
}

fn cpus(quota: u64, period: u64) -> Option<f64> {
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// cgroup v2 `memory.max`: bytes, or `"max"` for no limit.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok().filter(|&bytes| bytes > 0)
}

/// cgroup v1 `memory.limit_in_bytes`: bytes; absurdly large means none.
pub fn parse_v1_memory_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse()
        .ok()
        .filter(|&bytes| bytes > 0 && bytes < V1_NO_LIMIT)
}

/// CPU use in percent of `cpu_limit` CPUs, from the CPU time used over a
/// wall-clock interval; 0 to 100.
pub fn cpu_percent(cpu_time: Duration, interval: Duration, cpu_limit: f64) -> f64 {
    let available = interval.as_secs_f64() * cpu_limit;
    if available <= 0.0 {
        return 0.0;
    }
    (cpu_time.as_secs_f64() / available * 100.0).clamp(0.0, 100.0)
}

/// Bytes received and sent on every interface but loopback, from the text
/// of `/proc/net/dev` (two header lines, then `name: rx_bytes ...` with
/// the sent bytes as the ninth number). Loopback traffic is counted twice
/// (sent and received) and never leaves the machine.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let mut fields = counters.split_whitespace();
            let rx: u64 = fields.next()?.parse().ok()?;
            let tx: u64 = fields.nth(7)?.parse().ok()?;
            Some((rx, tx))
        })
        .fold((0, 0), |(rx, tx), (r, t)| {
            (rx.saturating_add(r), tx.saturating_add(t))
        })
}

/// Per second over `interval` of a counter that went from `before` to
/// `now` (0 if it went back, as when an interface was recreated).
fn rate(before: u64, now: u64, interval: Duration) -> f64 {
    let secs = interval.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / secs
}

/// What the previous sample read, for the rates of the next.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    cpu_ms: u64,
    net_rx: u64,
    net_tx: u64,
    requests: u64,
}

/// Takes samples. Holds the sysinfo state it refreshes, so each sample
/// reads only what changed.
pub struct Sampler {
    metrics: Arc<Metrics>,
    pid: Pid,
    system: System,
    /// Where the network counters are read (normally [`NET_DEV`]).
    net_dev: PathBuf,
    /// The disks listed at start and the index of the one holding the
    /// cache folder (or the working folder).
    disks: Option<Disks>,
    disk: Option<usize>,
    cgroup: Cgroup,
    /// Whether the cgroup's memory usage is this process's own.
    own_cgroup: bool,
    machine_cpus: f64,
    machine_memory: u64,
    previous: Option<Reading>,
    /// The interval histogram taken from the recorder, emptied after each
    /// sample and handed back at the next swap.
    spare: Histogram<u64>,
    serializer: V2Serializer,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("pid", &self.pid)
            .field("cgroup", &self.cgroup)
            .field("own_cgroup", &self.own_cgroup)
            .field("disk", &self.disk)
            .field("machine_cpus", &self.machine_cpus)
            .field("machine_memory", &self.machine_memory)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler of this process, reading the cgroup file system at
    /// `cgroup_root` and the disk holding `folder` (the cache folder; the
    /// working folder when `None`). Fails only where sysinfo cannot read
    /// this system at all.
    pub fn new(
        metrics: Arc<Metrics>,
        folder: Option<&Path>,
        cgroup_root: &Path,
    ) -> Result<Self, sysinfo::Error> {
        let pid = Pid::from_u32(std::process::id());
        let mut system = System::new()?;
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let machine_memory = system.total_memory();
        let machine_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        // Only the mount points: the one disk sampled is measured later.
        let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing())
            .inspect_err(|err| warn!(cause = %err, "cannot list the disks; no disk figures"))
            .ok();
        let disk = disks.as_ref().and_then(|disks| disk_of(disks, folder));
        let cgroup = Cgroup::new(cgroup_root);
        let own_cgroup = cgroup.holds_only(std::process::id());
        debug!(
            cgroup = ?cgroup.version(),
            own_cgroup,
            disk = ?disks.as_ref().zip(disk).map(|(d, i)| d[i].mount_point().to_owned()),
            "sampler ready"
        );
        Ok(Self {
            metrics,
            pid,
            system,
            net_dev: PathBuf::from(NET_DEV),
            disks,
            disk,
            cgroup,
            own_cgroup,
            machine_cpus,
            machine_memory,
            previous: None,
            spare: latency::new_histogram(),
            serializer: V2Serializer::new(),
        })
    }

    /// Takes a sample now. The first one has no rates (nothing to compare
    /// with): its `interval_ms` is 0.
    pub fn sample(&mut self) -> NodeSample {
        let now = Instant::now();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let (cpu_ms, rss) = self
            .system
            .process(self.pid)
            .map_or((0, 0), |p| (p.accumulated_cpu_time(), p.memory()));

        let (net_rx, net_tx) = std::fs::read_to_string(&self.net_dev)
            .map(|text| parse_net_dev(&text))
            .unwrap_or_default();

        let disk = self
            .disks
            .as_mut()
            .zip(self.disk)
            .and_then(|(disks, index)| disks.get_mut(index));
        let (disk_used, disk_total) = match disk {
            Some(disk) => {
                disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
                let total = disk.total_space();
                (total.saturating_sub(disk.available_space()), total)
            }
            None => (0, 0),
        };

        let cpu_limit = self
            .cgroup
            .cpu_limit()
            .map_or(self.machine_cpus, |limit| limit.min(self.machine_cpus));
        let memory_limit = self
            .cgroup
            .memory_limit()
            .map_or(self.machine_memory, |limit| {
                if self.machine_memory > 0 {
                    limit.min(self.machine_memory)
                } else {
                    limit
                }
            });
        let memory_used = if self.own_cgroup {
            self.cgroup.memory_used().unwrap_or(rss)
        } else {
            rss
        };

        let recorder = &self.metrics.recorder;
        let requests = recorder.requests();
        // Clearing writes every count: an idle node's histograms then
        // never touch their pages.
        if !self.spare.is_empty() {
            self.spare.reset();
        }
        recorder.swap(&mut self.spare);
        let mut histogram = Vec::new();
        latency::serialize(&mut self.serializer, &self.spare, &mut histogram);

        let reading = Reading {
            at: now,
            cpu_ms,
            net_rx,
            net_tx,
            requests,
        };
        let mut sample = NodeSample {
            at: Some(prost_types::Timestamp::from(SystemTime::now())),
            cpu_limit,
            memory_used_bytes: memory_used,
            memory_limit_bytes: memory_limit,
            rss_bytes: rss,
            disk_used_bytes: disk_used,
            disk_total_bytes: disk_total,
            net_rx_bytes: net_rx,
            net_tx_bytes: net_tx,
            requests,
            errors_by_code: recorder.errors_by_code(),
            latency_histogram: histogram,
            ..Default::default()
        };
        if let Some(before) = self.previous {
            let interval = now.saturating_duration_since(before.at);
            sample.interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
            sample.cpu_percent = cpu_percent(
                Duration::from_millis(cpu_ms.saturating_sub(before.cpu_ms)),
                interval,
                cpu_limit,
            );
            sample.net_rx_bytes_per_second = rate(before.net_rx, net_rx, interval);
            sample.net_tx_bytes_per_second = rate(before.net_tx, net_tx, interval);
            sample.requests_per_second = rate(before.requests, requests, interval);
        }
        self.previous = Some(reading);
        sample
    }

    /// Samples at once, then every `period`, publishing each sample, until
    /// `shutdown`.
    pub async fn run(mut self, period: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    let sample = self.sample();
                    self.metrics.publish(sample);
                }
            }
        }
    }
}

/// The index of the disk whose mount point holds `folder` (the working
/// folder when `None`): the longest mount point that is a prefix of it.
fn disk_of(disks: &Disks, folder: Option<&Path>) -> Option<usize> {
    let folder = match folder {
        Some(folder) => folder.to_path_buf(),
        None => std::env::current_dir().ok()?,
    };
    // The cache folder may not exist yet: its nearest existing ancestor is
    // on the same file system.
    let resolved = folder
        .ancestors()
        .find_map(|p| p.canonicalize().ok())
        .unwrap_or(folder);
    disks
        .iter()
        .enumerate()
        .filter(|(_, d)| resolved.starts_with(d.mount_point()))
        .max_by_key(|(_, d)| d.mount_point().as_os_str().len())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn cgroup_v2_limits_and_usage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        write(root, "cgroup.controllers", "cpu memory io\n");
        write(root, "cpu.max", "50000 100000\n");
        write(root, "memory.max", "134217728\n");
        write(root, "memory.current", "4194304\n");
        write(root, "cgroup.procs", "1\n");
        let cgroup = Cgroup::new(root);
        assert_eq!(cgroup.version(), Some(CgroupVersion::V2));
        assert_eq!(cgroup.cpu_limit(), Some(0.5));
        assert_eq!(cgroup.memory_limit(), Some(128 << 20));
        assert_eq!(cgroup.memory_used(), Some(4 << 20));
        assert!(cgroup.holds_only(1));
        assert!(!cgroup.holds_only(7));

        // No limits set.
        write(root, "cpu.max", "max 100000\n");
        write(root, "memory.max", "max\n");
        write(root, "cgroup.procs", "1\n7\n");
        assert_eq!(cgroup.cpu_limit(), None);
        assert_eq!(cgroup.memory_limit(), None);
        assert!(!cgroup.holds_only(1), "another process shares the cgroup");
    }

    #[test]
    fn cgroup_v1_limits_and_usage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        write(root, "cpu,cpuacct/cpu.cfs_quota_us", "150000\n");
        write(root, "cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        write(root, "memory/memory.limit_in_bytes", "268435456\n");
        write(root, "memory/memory.usage_in_bytes", "1048576\n");
        write(root, "memory/cgroup.procs", "1\n");
        let cgroup = Cgroup::new(root);
        assert_eq!(cgroup.version(), Some(CgroupVersion::V1));
        assert_eq!(cgroup.cpu_limit(), Some(1.5));
        assert_eq!(cgroup.memory_limit(), Some(256 << 20));
        assert_eq!(cgroup.memory_used(), Some(1 << 20));
        assert!(cgroup.holds_only(1));

        // No quota; the "unlimited" memory limit v1 reports.
        write(root, "cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
        write(
            root,
            "memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(cgroup.cpu_limit(), None);
        assert_eq!(cgroup.memory_limit(), None);
    }

    #[test]
    fn no_cgroup_file_system() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cgroup = Cgroup::new(dir.path().join("absent"));
        assert_eq!(cgroup.version(), None);
        assert_eq!(cgroup.cpu_limit(), None);
        assert_eq!(cgroup.memory_limit(), None);
        assert_eq!(cgroup.memory_used(), None);
        assert!(!cgroup.holds_only(1));
    }

    #[track_caller]
    fn check_cpu_max(text: &str, expected: Option<f64>) {
        assert_eq!(parse_cpu_max(text), expected, "cpu.max {text:?}");
    }

    #[test]
    fn cpu_max_forms() {
        check_cpu_max("200000 100000", Some(2.0));
        check_cpu_max("25000 100000\n", Some(0.25));
        check_cpu_max("50000", Some(0.5));
        check_cpu_max("max 100000", None);
        check_cpu_max("max", None);
        check_cpu_max("", None);
        check_cpu_max("garbage 100000", None);
        check_cpu_max("0 100000", None);
        assert_eq!(parse_cfs_quota("50000", "100000"), Some(0.5));
        assert_eq!(parse_cfs_quota("-1", "100000"), None);
        assert_eq!(parse_cfs_quota("50000", "0"), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("0"), None);
        assert_eq!(parse_memory_max("1024\n"), Some(1024));
        assert_eq!(parse_v1_memory_limit("1024"), Some(1024));
        assert_eq!(parse_v1_memory_limit("9223372036854775807"), None);
        assert_eq!(parse_v1_memory_limit("x"), None);
    }

    #[test]
    fn cpu_percent_is_of_the_limit() {
        let second = Duration::from_secs(1);
        // Half a CPU-second in one second: half of one CPU, all of a
        // half-CPU limit, an eighth of four CPUs.
        let half = Duration::from_millis(500);
        assert!((cpu_percent(half, second, 1.0) - 50.0).abs() < 1e-9);
        assert!((cpu_percent(half, second, 0.5) - 100.0).abs() < 1e-9);
        assert!((cpu_percent(half, second, 4.0) - 12.5).abs() < 1e-9);
        // Over two seconds, a quarter of one CPU.
        assert!((cpu_percent(half, 2 * second, 1.0) - 25.0).abs() < 1e-9);
        // Clock-tick rounding can exceed the limit: clamped to 100.
        assert_eq!(cpu_percent(2 * second, second, 1.0), 100.0);
        // No interval or no limit: nothing to divide by.
        assert_eq!(cpu_percent(half, Duration::ZERO, 1.0), 0.0);
        assert_eq!(cpu_percent(half, second, 0.0), 0.0);
        assert_eq!(rate(100, 1100, 2 * second), 500.0);
        assert_eq!(rate(1100, 100, second), 0.0);
    }

    fn with_latencies(micros: &[u64]) -> NodeSample {
        let mut histogram = latency::new_histogram();
        for &us in micros {
            histogram.record(us).expect("in range");
        }
        let mut bytes = Vec::new();
        latency::serialize(&mut V2Serializer::new(), &histogram, &mut bytes);
        NodeSample {
            latency_histogram: bytes,
            ..Default::default()
        }
    }

    fn count(sample: &NodeSample) -> u64 {
        if sample.latency_histogram.is_empty() {
            return 0;
        }
        hdrhistogram::serialization::Deserializer::new()
            .deserialize::<u64, _>(&mut sample.latency_histogram.as_slice())
            .expect("a V2 histogram")
            .len()
    }

    #[test]
    fn a_sample_no_heartbeat_took_hands_its_latencies_on() {
        let metrics = Metrics::new();
        assert_eq!(metrics.take_unsent(), None);
        metrics.publish(with_latencies(&[100, 200]));
        metrics.publish(with_latencies(&[300]));
        let sent = metrics.take_unsent().expect("a sample");
        assert_eq!(count(&sent), 3);
        assert_eq!(metrics.take_unsent(), None, "each sample is sent once");
        assert_eq!(metrics.latest(), Some(sent));

        // Once taken, the next sample holds only its own interval.
        metrics.publish(with_latencies(&[400]));
        assert_eq!(count(&metrics.take_unsent().expect("a sample")), 1);
        // Empty intervals carry nothing on and stay empty.
        metrics.publish(with_latencies(&[]));
        metrics.publish(with_latencies(&[]));
        assert_eq!(count(&metrics.take_unsent().expect("a sample")), 0);
    }

    #[test]
    fn network_counters_leave_out_loopback() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 9000000     100    0    0    0     0          0         0  9000000     100    0    0    0     0       0          0
  eth0:    1500      10    0    0    0     0          0         0      700       7    0    0    0     0       0          0
  eth1:100       1    0    0    0     0          0         0       50       1    0    0    0     0       0          0
";
        assert_eq!(parse_net_dev(text), (1600, 750));
        assert_eq!(parse_net_dev(""), (0, 0));
        assert_eq!(parse_net_dev("garbage\nheader\n eth0: x y\n"), (0, 0));
    }

    #[test]
    fn samples_this_process() {
        let metrics = Arc::new(Metrics::new());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sampler = Sampler::new(metrics.clone(), Some(dir.path()), Path::new(CGROUP_ROOT))
            .expect("a sampler");
        let first = sampler.sample();
        assert_eq!(first.interval_ms, 0);
        assert!(first.rss_bytes > 0);
        assert!(first.memory_limit_bytes > 0);
        assert!(first.cpu_limit > 0.0);
        assert!(first.disk_total_bytes >= first.disk_used_bytes);
        assert!(first.disk_total_bytes > 0, "{first:?}");
        assert!(first.latency_histogram.is_empty());

        metrics.recorder.record(Duration::from_millis(5), 0);
        metrics.recorder.record(Duration::from_millis(7), 9);
        std::thread::sleep(Duration::from_millis(20));
        let second = sampler.sample();
        assert!(second.interval_ms >= 20, "{second:?}");
        assert_eq!(second.requests, 2);
        assert_eq!(second.errors_by_code, [(9, 1)].into());
        assert!(second.requests_per_second > 0.0);
        assert!((0.0..=100.0).contains(&second.cpu_percent));
        let histogram: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut second.latency_histogram.as_slice())
            .expect("a V2 histogram");
        assert_eq!(histogram.len(), 2);
    }
}
