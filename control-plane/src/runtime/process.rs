//! The process runtime: each node is a `farm-node` child process.
//!
//! Each slot has a folder `<data-dir>/nodes/<slot>/` holding the node's
//! identity cache (written by the node), its log (`node.log`, the previous
//! run's in `node.log.1`) and an `instance` file with the pid and start time
//! of the running process. A restarted control plane reads those files to
//! adopt the processes its predecessor left running; the start time guards
//! against a recycled pid. Children run in their own process group, so a
//! Ctrl-C at the terminal reaches the control plane alone, which then stops
//! them in order.

use std::{
    collections::HashMap,
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use nix::{sys::signal, unistd::Pid};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Instance, InstanceEvent, InstanceExit, InstanceSpec, Runtime, RuntimeError, Signal};
use crate::transport::auth::Token;

/// How often an adopted process (not our child, so not waitable) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(100);
/// How long to wait for a process to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Settings of the process runtime.
#[derive(Debug, Clone)]
pub struct ProcessRuntimeConfig {
    /// The `farm-node` executable.
    pub node_binary: PathBuf,
    /// Parent of the per-slot folders.
    pub nodes_dir: PathBuf,
    /// Token nodes register with (`FARM_NODE_TOKEN`), when tokens are set.
    pub node_token: Option<Token>,
}

/// See the module docs.
#[derive(Debug)]
pub struct ProcessRuntime {
    config: ProcessRuntimeConfig,
    exits: mpsc::UnboundedSender<InstanceEvent>,
    /// Instance id → becomes `true` when the process is gone. Shared with
    /// the watcher tasks, which remove their entry when they report.
    alive: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>>,
}

impl ProcessRuntime {
    /// A runtime that reports every instance's end on `exits`.
    pub fn new(config: ProcessRuntimeConfig, exits: mpsc::UnboundedSender<InstanceEvent>) -> Self {
        Self {
            config,
            exits,
            alive: Arc::default(),
        }
    }

    fn slot_dir(&self, slot: &str) -> PathBuf {
        self.config.nodes_dir.join(slot)
    }

    fn alive(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        lock(&self.alive)
    }

    /// Watches an instance until `ended` resolves with how it ended, then
    /// forgets its record and reports its exit.
    fn watch_instance(
        &self,
        instance: &Instance,
        record: PathBuf,
        ended: impl Future<Output = String> + Send + 'static,
    ) {
        let (gone, rx) = watch::channel(false);
        self.alive().insert(instance.id.clone(), rx);
        let alive = Arc::clone(&self.alive);
        let exits = self.exits.clone();
        let Instance { slot, id } = instance.clone();
        tokio::spawn(async move {
            let reason = ended.await;
            let _ = fs::remove_file(&record);
            let _ = gone.send(true);
            lock(&alive).remove(&id);
            // The supervisor gone means shutdown: nobody needs the notice.
            let _ = exits.send(InstanceEvent::Exited(InstanceExit { slot, id, reason }));
        });
    }

    /// Waits until the instance is gone, up to `timeout`. True if it is.
    async fn wait_gone(&self, id: &str, timeout: Duration) -> bool {
        let Some(mut rx) = self.alive().get(id).cloned() else {
            return true;
        };
        tokio::time::timeout(timeout, rx.wait_for(|gone| *gone))
            .await
            .is_ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: nothing to poison.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses `pid:1234`.
fn pid_of(instance: &Instance) -> Option<Pid> {
    instance
        .id
        .strip_prefix("pid:")
        .and_then(|pid| pid.parse().ok())
        .map(Pid::from_raw)
}

/// Start time of a process in clock ticks since boot, and whether it is a
/// zombie; `None` when there is no such process.
fn proc_stat(pid: i32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let zombie = *fields.first()? == "Z";
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

/// True when `/proc/<pid>/cmdline` is a farm-node started for `slot`.
fn is_node_for_slot(pid: i32, slot: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_node = args
        .first()
        .is_some_and(|arg0| Path::new(&*String::from_utf8_lossy(arg0)).ends_with("farm-node"));
    is_node
        && args
            .windows(2)
            .any(|w| w[0] == b"--name" && w[1] == slot.as_bytes())
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(0), _) => "exited cleanly".to_owned(),
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => {
                let name = signal::Signal::try_from(sig).map_or("?", |s| s.as_str());
                format!("killed by signal {sig} ({name})")
            }
            (None, None) => "exited".to_owned(),
        },
        Err(err) => format!("could not be waited for: {err}"),
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn adopt(&self) -> Vec<Instance> {
        let Ok(entries) = fs::read_dir(&self.config.nodes_dir) else {
            return Vec::new();
        };
        let mut adopted = Vec::new();
        for entry in entries.flatten() {
            let slot = entry.file_name().to_string_lossy().into_owned();
            let record = entry.path().join("instance");
            let Ok(text) = fs::read_to_string(&record) else {
                continue;
            };
            let mut parts = text.split_whitespace().map(str::parse::<i64>);
            let (Some(Ok(pid)), Some(Ok(start))) = (parts.next(), parts.next()) else {
                warn!(slot = %slot, "ignoring malformed instance record");
                let _ = fs::remove_file(&record);
                continue;
            };
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            let alive = proc_stat(pid)
                .is_some_and(|(s, zombie)| !zombie && i64::try_from(s).is_ok_and(|s| s == start));
            if !alive || !is_node_for_slot(pid, &slot) {
                let _ = fs::remove_file(&record);
                continue;
            }
            let instance = Instance {
                slot: slot.clone(),
                id: format!("pid:{pid}"),
            };
            let start = u64::try_from(start).unwrap_or_default();
            self.watch_instance(&instance, record, async move {
                let mut poll = tokio::time::interval(ADOPTED_POLL);
                loop {
                    poll.tick().await;
                    if !proc_stat(pid).is_some_and(|(s, zombie)| s == start && !zombie) {
                        return "exited (adopted process: no exit status)".to_owned();
                    }
                }
            });
            info!(slot = %slot, pid, "adopted running node");
            adopted.push(instance);
        }
        adopted
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let err = |cause: String| RuntimeError::Start {
            slot: spec.slot.clone(),
            cause,
        };
        let dir = self.slot_dir(&spec.slot);
        fs::create_dir_all(&dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let log_path = dir.join("node.log");
        if log_path.exists() {
            let _ = fs::rename(&log_path, dir.join("node.log.1"));
        }
        let log = fs::File::create(&log_path)
            .map_err(|e| err(format!("creating {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| err(format!("duplicating the log handle: {e}")))?;

        let mut command = tokio::process::Command::new(&self.config.node_binary);
        command
            .arg("--control-plane")
            .arg(&spec.control_plane)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--name",
                &spec.slot,
                "--group",
                &spec.group,
            ])
            .arg("--cache-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        // The control plane's own FARM_* settings are not the node's.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FARM_") {
                command.env_remove(key);
            }
        }
        // The node token travels in the environment, not on the command
        // line, where anyone on the machine could read it.
        if let Some(token) = &self.config.node_token {
            command.env("FARM_NODE_TOKEN", token.expose());
        }
        let mut child = command.spawn().map_err(|e| {
            err(format!(
                "spawning {}: {e}",
                self.config.node_binary.display()
            ))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| err("the process exited before it could be watched".into()))?;
        let pid = i32::try_from(pid).map_err(|_| err(format!("pid {pid} out of range")))?;
        let id = format!("pid:{pid}");
        let record = dir.join("instance");
        if let Some((start, _)) = proc_stat(pid)
            && let Err(e) = fs::write(&record, format!("{pid} {start}\n"))
        {
            warn!(slot = %spec.slot, cause = %e, "could not record the instance; a restarted control plane will not adopt it");
        }
        let instance = Instance {
            slot: spec.slot.clone(),
            id,
        };
        self.watch_instance(
            &instance,
            record,
            async move { describe(child.wait().await) },
        );
        debug!(slot = %spec.slot, pid, "started node process");
        Ok(instance)
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError> {
        let control_err = |cause: String| RuntimeError::Control {
            action: "stop",
            slot: instance.slot.clone(),
            id: instance.id.clone(),
            cause,
        };
        let pid = pid_of(instance).ok_or_else(|| control_err("not a process id".into()))?;
        if self.alive().get(&instance.id).is_none() {
            return Ok(());
        }
        // A paused process only acts on SIGTERM once it runs again.
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let _ = signal::kill(pid, signal::Signal::SIGCONT);
        if self.wait_gone(&instance.id, grace).await {
            return Ok(());
        }
        warn!(slot = %instance.slot, grace = ?grace, "node did not stop in time; killing it");
        let _ = signal::kill(pid, signal::Signal::SIGKILL);
        if self.wait_gone(&instance.id, KILL_WAIT).await {
            Ok(())
        } else {
            Err(control_err("still running after SIGKILL".into()))
        }
    }

    async fn signal(&self, instance: &Instance, action: Signal) -> Result<(), RuntimeError> {
        let (name, sig) = match action {
            Signal::Kill => ("kill", signal::Signal::SIGKILL),
            Signal::Pause => ("pause", signal::Signal::SIGSTOP),
            Signal::Unpause => ("unpause", signal::Signal::SIGCONT),
        };
        let control_err = |cause: String| RuntimeError::Control {
            action: name,
            slot: instance.slot.clone(),
            id: instance.id.clone(),
            cause,
        };
        let pid = pid_of(instance).ok_or_else(|| control_err("not a process id".into()))?;
        signal::kill(pid, sig).map_err(|e| control_err(e.to_string()))
    }

    async fn remove(&self, slot: &str) -> Result<(), RuntimeError> {
        super::remove_slot_dir(&self.slot_dir(slot), slot)
    }
}
