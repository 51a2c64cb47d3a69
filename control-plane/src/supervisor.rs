//! The supervisor keeps the farm at its size: a reconcile loop over numbered
//! slots (`node-001` … `node-050`), each holding at most one running
//! instance.
//!
//! One task owns the slots; gRPC handlers send it commands and wait for the
//! reply, so slot state is never shared or locked. After every command,
//! instance exit or backoff expiry the task reconciles: it starts what is
//! missing (with bounded parallelism), removes slots beyond the desired size,
//! and tells the registry what the runtime sees, so `ListNodes` shows it.
//! A node that keeps crashing is restarted with exponential backoff.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, future::join_all, stream};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::{
    core::{DomainError, NodeId, RuntimeStatus, RuntimeView},
    runtime::{Instance, InstanceEvent, InstanceExit, InstanceSpec, Runtime, RuntimeError, Signal},
    state::{Members, StateError},
};

/// A run shorter than this counts as a crash loop for backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// Longest wait before restarting a crashing node.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Settings of the supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Nodes to keep running.
    pub desired: u32,
    /// Largest size `Scale` accepts.
    pub max_nodes: u32,
    /// Group managed nodes join.
    pub group: String,
    /// URL of the control plane as nodes reach it.
    pub control_plane: String,
    /// How long a stopping node may take before it is killed.
    pub stop_grace: Duration,
    /// Starts in flight at once.
    pub start_parallelism: usize,
    /// Leave the nodes running at shutdown, for the next control plane to
    /// adopt.
    pub keep_on_shutdown: bool,
}

/// Something done to one managed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    Start,
    Stop,
    Restart,
    Pause,
    Unpause,
    Kill,
    Remove,
}

/// Why a farm operation failed.
#[derive(Debug, Error)]
pub enum FarmError {
    /// The control plane runs without a runtime (`--runtime none`).
    #[error("this control plane runs no nodes (--runtime none)")]
    NoRuntime,
    /// `Scale` beyond the limit.
    #[error("cannot scale to {asked} nodes: at most {max} allowed")]
    TooMany { asked: u32, max: u32 },
    /// The node exists but was not started by this control plane.
    #[error("node {0} is not managed by this control plane")]
    NotManaged(NodeId),
    /// The action needs a running node.
    #[error("node {id} ({name}) is not running")]
    NotRunning { id: NodeId, name: String },
    /// A domain rule refused it (unknown node id, …).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The state could not be updated.
    #[error(transparent)]
    State(#[from] StateError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The supervisor has shut down.
    #[error("the farm is shutting down")]
    ShuttingDown,
}

enum Command {
    Scale {
        nodes: u32,
        reply: oneshot::Sender<Result<u32, FarmError>>,
    },
    Act {
        id: NodeId,
        action: NodeAction,
        reply: oneshot::Sender<Result<(), FarmError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the supervisor task.
#[derive(Debug, Clone)]
pub struct Supervisor {
    commands: mpsc::Sender<CommandBox>,
    desired: Arc<AtomicU32>,
}

/// Boxed so the channel's element stays small.
struct CommandBox(Command);

impl std::fmt::Debug for CommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Supervisor {
    /// Starts the supervisor task: it adopts what the runtime left running,
    /// then brings the farm to size.
    pub fn spawn(
        runtime: Arc<dyn Runtime>,
        state: Members,
        config: SupervisorConfig,
        exits: mpsc::UnboundedReceiver<InstanceEvent>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, rx) = mpsc::channel(64);
        let desired = Arc::new(AtomicU32::new(config.desired));
        let task = Task {
            runtime,
            state,
            desired: Arc::clone(&desired),
            config,
            slots: BTreeMap::new(),
        };
        let handle = tokio::spawn(task.run(rx, exits));
        (Self { commands, desired }, handle)
    }

    /// The size the farm is kept at.
    pub fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, FarmError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(CommandBox(make(reply)))
            .await
            .map_err(|_| FarmError::ShuttingDown)?;
        rx.await.map_err(|_| FarmError::ShuttingDown)
    }

    /// Sets the farm's size; returns the previous one. Starts are issued
    /// before this returns.
    pub async fn scale(&self, nodes: u32) -> Result<u32, FarmError> {
        self.call(|reply| Command::Scale { nodes, reply }).await?
    }

    /// Acts on one managed node.
    pub async fn act(&self, id: NodeId, action: NodeAction) -> Result<(), FarmError> {
        self.call(|reply| Command::Act { id, action, reply })
            .await?
    }

    /// Stops every node (bounded by the stop grace) and ends the task.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}

#[derive(Debug)]
struct Running {
    instance: Instance,
    since: Instant,
    paused: bool,
}

#[derive(Debug)]
struct Slot {
    name: String,
    running: Option<Running>,
    /// Stopped on request: not restarted until started again.
    held: bool,
    /// Consecutive short runs, for backoff.
    failures: u32,
    /// No start before this instant (backoff).
    not_before: Instant,
    starts: u32,
    /// Why it is not running, for the registry.
    reason: String,
}

impl Slot {
    fn new(name: String) -> Self {
        Self {
            name,
            running: None,
            held: false,
            failures: 0,
            not_before: Instant::now(),
            starts: 0,
            reason: "not started yet".to_owned(),
        }
    }

    fn view(&self) -> RuntimeView {
        let (status, runtime_id) = match &self.running {
            Some(r) if r.paused => (RuntimeStatus::Paused, r.instance.id.clone()),
            Some(r) => (RuntimeStatus::Running, r.instance.id.clone()),
            None => (
                RuntimeStatus::Stopped {
                    reason: self.reason.clone(),
                },
                String::new(),
            ),
        };
        RuntimeView {
            status,
            runtime_id,
            starts: self.starts,
        }
    }
}

/// `node-007` for slot 7.
pub fn slot_name(index: u32) -> String {
    format!("node-{index:03}")
}

fn slot_index(name: &str) -> Option<u32> {
    name.strip_prefix("node-")?.parse().ok().filter(|i| *i > 0)
}

/// Wait before the next start after `failures` consecutive crashes: the
/// first restart is immediate, then 0.5 s doubling up to 30 s.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(500)
            .saturating_mul(1 << (n - 2).min(16))
            .min(MAX_BACKOFF),
    }
}

struct Task {
    runtime: Arc<dyn Runtime>,
    state: Members,
    config: SupervisorConfig,
    desired: Arc<AtomicU32>,
    slots: BTreeMap<u32, Slot>,
}

impl Task {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<CommandBox>,
        mut exits: mpsc::UnboundedReceiver<InstanceEvent>,
    ) {
        self.adopt().await;
        self.reconcile().await;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(CommandBox(Command::Scale { nodes, reply })) => {
                        let _ = reply.send(self.scale(nodes).await);
                    }
                    Some(CommandBox(Command::Act { id, action, reply })) => {
                        let result = self.act(id, action).await;
                        if result.is_ok() {
                            self.reconcile().await;
                        }
                        let _ = reply.send(result);
                    }
                    Some(CommandBox(Command::Shutdown { reply })) => {
                        self.stop_all().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
                Some(event) = exits.recv() => match event {
                    InstanceEvent::Exited(exit) => self.on_exit(exit),
                    InstanceEvent::Paused { slot, id, paused } => self.on_pause(&slot, &id, paused),
                },
                () = sleep_until(wake) => {}
            }
            self.reconcile().await;
        }
    }

    fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    fn publish(&self, index: u32) {
        if let Some(slot) = self.slots.get(&index) {
            self.state.set_runtime(&slot.name, Some(slot.view()));
        }
    }

    async fn adopt(&mut self) {
        let adopted = self.runtime.adopt().await;
        let desired = self.desired();
        for instance in adopted {
            match slot_index(&instance.slot).filter(|i| *i <= desired) {
                Some(index) => {
                    let slot = self
                        .slots
                        .entry(index)
                        .or_insert_with(|| Slot::new(slot_name(index)));
                    slot.starts = 1;
                    slot.running = Some(Running {
                        instance,
                        since: Instant::now(),
                        paused: false,
                    });
                    self.publish(index);
                }
                None => {
                    info!(slot = %instance.slot, "stopping adopted node beyond the farm's size");
                    if let Err(err) = self.runtime.stop(&instance, self.config.stop_grace).await {
                        warn!(cause = %err, "could not stop adopted node");
                    }
                }
            }
        }
    }

    /// The earliest backoff expiry of a slot waiting to start, if any.
    fn next_wake(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| s.running.is_none() && !s.held)
            .map(|s| s.not_before)
            .min()
    }

    async fn scale(&mut self, nodes: u32) -> Result<u32, FarmError> {
        if nodes > self.config.max_nodes {
            return Err(FarmError::TooMany {
                asked: nodes,
                max: self.config.max_nodes,
            });
        }
        let previous = self.desired.swap(nodes, Ordering::Relaxed);
        info!(from = previous, to = nodes, "scaling the farm");
        self.reconcile().await;
        Ok(previous)
    }

    async fn act(&mut self, id: NodeId, action: NodeAction) -> Result<(), FarmError> {
        let node = self.state.node(id)?;
        let index = slot_index(&node.name)
            .filter(|i| self.slots.contains_key(i))
            .ok_or(FarmError::NotManaged(id))?;
        let grace = self.config.stop_grace;
        let runtime = Arc::clone(&self.runtime);
        let slot = self
            .slots
            .get_mut(&index)
            .ok_or(FarmError::NotManaged(id))?;
        let not_running = || FarmError::NotRunning {
            id,
            name: node.name.clone(),
        };
        info!(node.id = %id, slot = %slot.name, ?action, "node action");
        match action {
            NodeAction::Start => {
                slot.held = false;
                slot.failures = 0;
                slot.not_before = Instant::now();
            }
            NodeAction::Stop | NodeAction::Restart | NodeAction::Remove => {
                if let Some(running) = slot.running.take() {
                    slot.reason = "stopped on request".to_owned();
                    runtime.stop(&running.instance, grace).await?;
                }
                slot.held = action == NodeAction::Stop;
                slot.failures = 0;
                slot.not_before = Instant::now();
                if action == NodeAction::Remove {
                    slot.starts = 0;
                    self.state.forget(id).await?;
                    runtime.remove(&node.name).await?;
                }
            }
            NodeAction::Pause | NodeAction::Unpause => {
                let running = slot.running.as_mut().ok_or_else(not_running)?;
                let pause = action == NodeAction::Pause;
                let signal = if pause {
                    Signal::Pause
                } else {
                    Signal::Unpause
                };
                runtime.signal(&running.instance, signal).await?;
                running.paused = pause;
            }
            NodeAction::Kill => {
                let running = slot.running.as_ref().ok_or_else(not_running)?;
                runtime.signal(&running.instance, Signal::Kill).await?;
            }
        }
        self.publish(index);
        Ok(())
    }

    /// A pause seen by the runtime, whoever caused it (`docker pause` too).
    fn on_pause(&mut self, slot: &str, id: &str, paused: bool) {
        let found = self.slots.iter_mut().find(|(_, s)| {
            s.running
                .as_ref()
                .is_some_and(|r| r.instance.id == id && r.instance.slot == slot)
        });
        if let Some((index, s)) = found
            && let Some(running) = s.running.as_mut()
            && running.paused != paused
        {
            running.paused = paused;
            let index = *index;
            info!(
                slot,
                paused, "node paused or resumed outside the farm's actions"
            );
            self.publish(index);
        }
    }

    fn on_exit(&mut self, exit: InstanceExit) {
        let Some((index, slot)) = self.slots.iter_mut().find(|(_, s)| {
            s.running
                .as_ref()
                .is_some_and(|r| r.instance.id == exit.id && r.instance.slot == exit.slot)
        }) else {
            return; // an instance we stopped on purpose
        };
        let index = *index;
        let ran = slot
            .running
            .take()
            .map(|r| r.since.elapsed())
            .unwrap_or_default();
        slot.failures = if ran >= STABLE_RUN {
            1
        } else {
            slot.failures + 1
        };
        let delay = backoff(slot.failures);
        slot.not_before = Instant::now() + delay;
        slot.reason = format!("{}; restarting", exit.reason);
        warn!(
            slot = %slot.name,
            reason = %exit.reason,
            ran = ?ran,
            restart_in = ?delay,
            "node exited unexpectedly"
        );
        self.publish(index);
    }

    /// Brings the slots to the desired size and starts what should run.
    async fn reconcile(&mut self) {
        let desired = self.desired();
        for index in 1..=desired {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.slots.entry(index) {
                slot.insert(Slot::new(slot_name(index)));
                self.publish(index);
            }
        }
        let extra: Vec<u32> = self.slots.range(desired + 1..).map(|(i, _)| *i).collect();
        if !extra.is_empty() {
            self.remove_slots(extra).await;
        }

        let now = Instant::now();
        let due: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.running.is_none() && !s.held && s.not_before <= now)
            .map(|(i, _)| *i)
            .collect();
        if due.is_empty() {
            return;
        }
        let specs: Vec<(u32, InstanceSpec)> = due
            .into_iter()
            .map(|index| {
                let spec = InstanceSpec {
                    slot: slot_name(index),
                    group: self.config.group.clone(),
                    control_plane: self.config.control_plane.clone(),
                };
                (index, spec)
            })
            .collect();
        let runtime = &self.runtime;
        let results: Vec<(u32, Result<Instance, RuntimeError>)> = stream::iter(specs)
            .map(|(index, spec)| async move { (index, runtime.start(&spec).await) })
            .buffer_unordered(self.config.start_parallelism.max(1))
            .collect()
            .await;
        for (index, result) in results {
            let Some(slot) = self.slots.get_mut(&index) else {
                continue;
            };
            match result {
                Ok(instance) => {
                    slot.starts += 1;
                    slot.running = Some(Running {
                        instance,
                        since: Instant::now(),
                        paused: false,
                    });
                }
                Err(err) => {
                    slot.failures += 1;
                    let delay = backoff(slot.failures).max(Duration::from_millis(500));
                    slot.not_before = Instant::now() + delay;
                    slot.reason = err.to_string();
                    error!(slot = %slot.name, cause = %err, retry_in = ?delay, "could not start node");
                }
            }
            self.publish(index);
        }
    }

    /// Stops the nodes of these slots and forgets them entirely.
    async fn remove_slots(&mut self, indexes: Vec<u32>) {
        let removed: Vec<Slot> = indexes
            .into_iter()
            .filter_map(|i| self.slots.remove(&i))
            .collect();
        let grace = self.config.stop_grace;
        let runtime = &self.runtime;
        let state = &self.state;
        join_all(removed.into_iter().map(|slot| async move {
            if let Some(running) = &slot.running
                && let Err(err) = runtime.stop(&running.instance, grace).await
            {
                warn!(slot = %slot.name, cause = %err, "could not stop node being removed");
            }
            if let Some(id) = state.id_of(&slot.name)
                && let Err(err) = state.forget(id).await
            {
                warn!(slot = %slot.name, cause = %err, "could not forget node being removed");
            }
            state.set_runtime(&slot.name, None);
            if let Err(err) = runtime.remove(&slot.name).await {
                warn!(cause = %err, "could not remove slot state");
            }
        }))
        .await;
    }

    /// Stops every running node, in parallel, each bounded by the grace.
    async fn stop_all(&mut self) {
        if self.config.keep_on_shutdown {
            let running = self.slots.values().filter(|s| s.running.is_some()).count();
            info!(nodes = running, "leaving the farm's nodes running");
            return;
        }
        let grace = self.config.stop_grace;
        let runtime = &self.runtime;
        let running: Vec<(String, Instance)> = self
            .slots
            .values_mut()
            .filter_map(|s| {
                s.reason = "stopped: control plane shut down".to_owned();
                s.running.take().map(|r| (s.name.clone(), r.instance))
            })
            .collect();
        let count = running.len();
        let results = join_all(
            running
                .iter()
                .map(|(_, instance)| runtime.stop(instance, grace)),
        )
        .await;
        for ((name, _), result) in running.iter().zip(results) {
            if let Err(err) = result {
                error!(slot = %name, cause = %err, "could not stop node");
            }
        }
        let indexes: Vec<u32> = self.slots.keys().copied().collect();
        for index in indexes {
            self.publish(index);
        }
        info!(nodes = count, "stopped the farm's nodes");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_immediately_then_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn slot_names_round_trip() {
        assert_eq!(slot_name(7), "node-007");
        assert_eq!(slot_index("node-007"), Some(7));
        assert_eq!(slot_index("node-1234"), Some(1234));
        assert_eq!(slot_index("node-0"), None);
        assert_eq!(slot_index("other-1"), None);
    }
}
