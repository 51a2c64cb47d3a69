//! What `/proc/self` tells about this process: CPU time, memory, start
//! time, open and allowed file descriptors, threads. `/metrics` exposes them
//! under the conventional `process_*` names, and beside them the tokio
//! runtime's live tasks (`farm_control_plane_tasks`), which no file tells.
//!
//! [`ProcessStats::read`] does the I/O; [`ProcessStats::parse`] turns the
//! files' text into figures and is tested on fixed text. A figure whose file
//! is missing or unreadable (another OS, a locked-down `/proc`) is `None`.

/// Linux reports CPU times in `/proc` in units of 1/100 s (`USER_HZ`)
/// whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` tells about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time spent, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    /// File descriptors open.
    pub open_fds: Option<u64>,
    /// Most file descriptors the process may open (the soft limit; `None`
    /// when unlimited).
    pub max_fds: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
    /// Tasks alive on the tokio runtime it was read from (`None` outside
    /// one): a task leak shows here before it shows in memory.
    pub tasks: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits`,
    /// `/proc/self/fd` and the boot time from `/proc/stat`, and the
    /// current tokio runtime's count of live tasks.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat");
        let mut stats = Self::parse(
            stat.as_deref().unwrap_or_default(),
            read("/proc/self/status").as_deref().unwrap_or_default(),
            read("/proc/self/limits").as_deref().unwrap_or_default(),
            read("/proc/stat").as_deref().unwrap_or_default(),
        );
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        stats.tasks = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.metrics().num_alive_tasks() as u64);
        stats
    }

    /// Parses the text of `/proc/self/stat`, `/proc/self/status`,
    /// `/proc/self/limits` and `/proc/stat`.
    pub fn parse(stat: &str, status: &str, limits: &str, system: &str) -> Self {
        // Fields after the command name, which may hold spaces and
        // parentheses: the first here is field 3 (state) of proc(5).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let cpu_seconds = field(14)
            .zip(field(15))
            .map(|(user, system)| user.saturating_add(system) as f64 / USER_HZ);
        let boot = system
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let start_time_seconds = boot
            .zip(field(22))
            .map(|(b, ticks)| b + ticks as f64 / USER_HZ);
        let kib = |key: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(key)?.trim();
                let number = value.strip_suffix("kB").unwrap_or(value).trim();
                number.parse::<u64>().ok()?.checked_mul(1024)
            })
        };
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|soft| soft.parse::<u64>().ok());
        Self {
            cpu_seconds,
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: field(23),
            start_time_seconds,
            open_fds: None,
            max_fds,
            threads: field(20),
            tasks: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_parse_proc_files() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let status = "Name:\tcontrol-plane\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let system = "cpu  1 2 3\nbtime 1700000000\n";
        let stats = ProcessStats::parse(stat, status, limits, system);
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.resident_bytes, Some(10240 * 1024));
        assert_eq!(stats.virtual_bytes, Some(104857600));
        assert_eq!(stats.threads, Some(7));
        assert_eq!(stats.max_fds, Some(1024));
        assert_eq!(stats.start_time_seconds, Some(1700000000.0 + 123.45));
        assert_eq!(ProcessStats::parse("", "", "", ""), ProcessStats::default());
        let live = ProcessStats::read();
        assert!(live.resident_bytes.is_some_and(|b| b > 0), "{live:?}");
        assert!(live.open_fds.is_some_and(|n| n > 0), "{live:?}");
        assert!(live.cpu_seconds.is_some(), "{live:?}");
        assert_eq!(live.tasks, None, "no runtime, no tasks");
    }

    #[tokio::test]
    async fn process_stats_count_the_runtimes_live_tasks() {
        let before = ProcessStats::read().tasks.expect("read on a runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stopped.await;
        });
        assert_eq!(ProcessStats::read().tasks, Some(before + 1));
        let _ = stop.send(());
        task.await.expect("the task");
        assert_eq!(ProcessStats::read().tasks, Some(before));
    }
}
