//! The supervisor's task for a Swarm farm (`--runtime swarm`).
//!
//! Swarm places, starts and replaces the tasks; this task never starts one.
//! It keeps the service's replica count at the farm's size (putting it back
//! when changed from outside), reads the service's tasks every
//! [`POLL`] (and at once when this host's engine reports a change to the
//! farm's containers), and tells the registry what each slot runs: the
//! task's id and the host it is placed on, so `ListNodes` shows them. A
//! slot Swarm no longer keeps a task for (scaled down) is retired: its
//! identity is forgotten and its volume on this host removed.
//!
//! Node actions on a task placed on this engine's host act on its
//! container; Swarm then replaces the task if it ended. A task on another
//! host is out of this engine's reach (Swarm has no call that ends one
//! task): `kill`, `stop` and `restart` ask the node itself to end its
//! process over its heartbeat stream ([`Members::ask_to_exit`]), so its
//! task ends and Swarm replaces it; `pause` and `unpause` are refused
//! (`FAILED_PRECONDITION`), as nothing but that host's engine can freeze a
//! container.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{error, info, warn};

use super::{
    Command, FarmError, NodeAction, Reply, SupervisorConfig,
    slot::{slot_index, slot_name},
};
use crate::{
    core::{NodeId, RuntimeStatus, RuntimeView},
    runtime::{
        RuntimeError,
        swarm::{SwarmRuntime, TaskView, current_tasks},
    },
    state::{ExitAsk, Members},
};

/// How often the service's tasks are read.
const POLL: Duration = Duration::from_millis(500);
/// How often the service's replica count is checked against the farm's
/// size.
const REPLICA_CHECK: Duration = Duration::from_secs(5);
/// How long a slot may be without a task Swarm wants running before it is
/// retired: Swarm creates a replacement in the same step as it ends a
/// task, so only a scaled-down slot stays without one.
const RETIRE_AFTER: Duration = Duration::from_secs(3);
/// Longest wait on one engine request.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a `restart` waits for Swarm's replacement to run.
const REPLACEMENT_WAIT: Duration = Duration::from_secs(60);

/// What the task knows of one slot.
#[derive(Debug)]
struct SwarmSlot {
    name: String,
    /// The task that stands for it now.
    task: TaskView,
    /// Distinct tasks seen in it.
    starts: u32,
    /// Since when no task of it is live.
    lost_at: Option<Instant>,
    /// What the registry was told last.
    published: Option<RuntimeView>,
    /// The Swarm node its tasks were last placed on.
    placed_on: String,
}

pub(super) struct SwarmTask {
    swarm: Arc<SwarmRuntime>,
    state: Members,
    config: SupervisorConfig,
    desired: Arc<AtomicU32>,
    unavailable: watch::Sender<Option<String>>,
    slots: BTreeMap<u32, SwarmSlot>,
    /// Containers the farm paused, shown as paused until thawed.
    paused: HashSet<String>,
    replicas_checked: Instant,
}

impl SwarmTask {
    pub(super) fn new(
        swarm: Arc<SwarmRuntime>,
        state: Members,
        config: SupervisorConfig,
        desired: Arc<AtomicU32>,
        unavailable: watch::Sender<Option<String>>,
    ) -> Self {
        Self {
            swarm,
            state,
            config,
            desired,
            unavailable,
            slots: BTreeMap::new(),
            paused: HashSet::new(),
            replicas_checked: Instant::now(),
        }
    }

    fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let changed = self.swarm.changed();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown(reply, &mut commands).await;
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                    None => return,
                },
                _ = poll.tick() => {}
                () = changed.notified() => {}
            }
            self.poll().await;
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Scale { nodes, reply } => {
                let _ = reply.send(self.scale(nodes).await);
            }
            Command::Act { id, action, reply } => self.act(id, action, reply),
            Command::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    fn engine_gone(&self) -> Option<String> {
        self.unavailable.borrow().clone()
    }

    async fn scale(&mut self, nodes: u32) -> Result<u32, FarmError> {
        if let Some(reason) = self.engine_gone() {
            return Err(FarmError::RuntimeUnavailable(reason));
        }
        if nodes > self.config.max_nodes {
            return Err(FarmError::TooMany {
                asked: nodes,
                max: self.config.max_nodes,
            });
        }
        let previous = self.desired.swap(nodes, Ordering::Relaxed);
        info!(from = previous, to = nodes, "scaling the farm's service");
        match tokio::time::timeout(ENGINE_TIMEOUT, self.swarm.scale(nodes)).await {
            Ok(Ok(())) => Ok(previous),
            Ok(Err(err)) => {
                self.desired.store(previous, Ordering::Relaxed);
                Err(swarm_failed(err.to_string()))
            }
            Err(_) => {
                self.desired.store(previous, Ordering::Relaxed);
                Err(swarm_failed(format!(
                    "the engine did not answer within {ENGINE_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Reads the tasks, tells the registry what changed, retires slots
    /// Swarm dropped, and keeps the replica count.
    async fn poll(&mut self) {
        let tasks = match tokio::time::timeout(ENGINE_TIMEOUT, self.swarm.tasks()).await {
            Ok(Ok(tasks)) => tasks,
            Ok(Err(err)) => return self.engine_failed(err.to_string()).await,
            Err(_) => {
                return self
                    .engine_failed(format!("no answer within {ENGINE_TIMEOUT:?}"))
                    .await;
            }
        };
        if self.engine_gone().is_some() {
            info!("the swarm manager answers again");
            self.unavailable.send_replace(None);
        }
        let now = Instant::now();
        let current = current_tasks(&tasks);
        for (&index, &task) in &current {
            let host = self.swarm.host_of(&task.node_id).await;
            let slot = self.slots.entry(index).or_insert_with(|| SwarmSlot {
                name: slot_name(index),
                task: task.clone(),
                starts: 0,
                lost_at: None,
                published: None,
                placed_on: String::new(),
            });
            if slot.starts == 0 || slot.task.id != task.id {
                if slot.starts > 0 && task.live {
                    info!(slot = %slot.name, task = %task.id, host = %host, "Swarm replaced the slot's task");
                }
                slot.starts += 1;
            }
            if !task.node_id.is_empty() && task.node_id != slot.placed_on {
                if !slot.placed_on.is_empty() {
                    moved(&self.state, &slot.name, &host);
                }
                slot.placed_on = task.node_id.clone();
            }
            slot.task = task.clone();
            slot.lost_at = match (task.live, slot.lost_at) {
                (true, _) => None,
                (false, Some(at)) => Some(at),
                (false, None) => Some(now),
            };
            let paused = task
                .container_id
                .as_ref()
                .is_some_and(|c| self.paused.contains(c));
            let view = view_of(task, slot.starts, host, paused);
            if slot.published.as_ref() != Some(&view) {
                self.state.set_runtime(&slot.name, Some(view.clone()));
                slot.published = Some(view);
            }
        }
        // Slots whose tasks Swarm forgot, and slots without a live task
        // for long enough: scaled down.
        let retired: Vec<u32> = self
            .slots
            .iter()
            .filter(|(index, slot)| {
                !current.contains_key(index)
                    || slot
                        .lost_at
                        .is_some_and(|at| now.duration_since(at) >= RETIRE_AFTER)
            })
            .map(|(index, _)| *index)
            .collect();
        for index in retired {
            if let Some(slot) = self.slots.remove(&index) {
                self.retire(index, slot);
            }
        }
        if now.duration_since(self.replicas_checked) >= REPLICA_CHECK {
            self.replicas_checked = now;
            self.keep_replicas().await;
        }
    }

    /// A slot Swarm no longer runs: its node leaves the farm.
    fn retire(&mut self, index: u32, slot: SwarmSlot) {
        info!(slot = %slot.name, "Swarm dropped the slot: removing its node");
        self.state.set_runtime(&slot.name, None);
        if let Some(container) = &slot.task.container_id {
            self.paused.remove(container);
        }
        let state = self.state.clone();
        let swarm = Arc::clone(&self.swarm);
        let local = self.swarm.is_local(&slot.task);
        tokio::spawn(async move {
            if let Some(id) = state.id_of(&slot.name)
                && let Err(err) = state.forget(id).await
            {
                warn!(slot = %slot.name, cause = %err, "could not forget the node of a dropped slot");
            }
            if local {
                swarm.remove_volume(index).await;
            }
        });
    }

    /// Puts the service's replica count back to the farm's size, and the
    /// service itself back should it have been removed from outside.
    async fn keep_replicas(&mut self) {
        let desired = self.desired();
        match tokio::time::timeout(ENGINE_TIMEOUT, self.swarm.replicas()).await {
            Ok(Ok(Some(replicas))) if replicas != desired => {
                warn!(
                    found = replicas,
                    desired, "the service was scaled outside the farm; putting it back"
                );
                if let Ok(Err(err)) =
                    tokio::time::timeout(ENGINE_TIMEOUT, self.swarm.scale(desired)).await
                {
                    error!(cause = %err, "cannot set the service's replica count");
                }
            }
            Ok(Ok(None)) => {
                warn!("the farm's service was removed from outside; creating it again");
                if let Err(err) = self
                    .swarm
                    .deploy(&self.config.control_plane, &self.config.group, desired)
                    .await
                {
                    error!(cause = %err, "cannot create the farm's service again");
                }
            }
            _ => {}
        }
    }

    /// A request to the engine failed: gone, if a ping fails too.
    async fn engine_failed(&mut self, cause: String) {
        if self.engine_gone().is_some() {
            return;
        }
        match self.swarm.ping().await {
            Err(ping) => {
                let reason = format!(
                    "the swarm manager at {} does not answer: {ping}",
                    self.swarm.service_name()
                );
                warn!(cause = %ping, "the swarm manager does not answer; waiting for it");
                self.unavailable.send_replace(Some(reason));
            }
            Ok(()) => warn!(cause = %cause, "cannot read the service's tasks"),
        }
    }

    fn act(&mut self, id: NodeId, action: NodeAction, reply: Reply) {
        if let Some(reason) = self.engine_gone() {
            return answer(reply, Err(FarmError::RuntimeUnavailable(reason)));
        }
        let node = match self.state.node(id) {
            Ok(node) => node,
            Err(err) => return answer(reply, Err(err.into())),
        };
        let Some((index, slot)) = slot_index(&node.name)
            .and_then(|i| self.slots.get(&i).map(|s| (i, s)))
            .filter(|(_, s)| s.lost_at.is_none() || s.task.live)
        else {
            return answer(reply, Err(FarmError::NotManaged(id)));
        };
        info!(node.id = %id, slot = %slot.name, ?action, "node action");
        let task = slot.task.clone();
        let name = slot.name.clone();
        let local = self.swarm.is_local(&task);
        let container = task.container_id.clone().filter(|_| local);
        let running = task.live && task.state == bollard::models::TaskState::RUNNING;
        let swarm = Arc::clone(&self.swarm);
        let grace = self.config.stop_grace;
        match action {
            // Every slot of a replicated service runs, or is being started.
            NodeAction::Start => answer(reply, Ok(())),
            NodeAction::Pause | NodeAction::Unpause => {
                let pause = action == NodeAction::Pause;
                let Some(container) = container.filter(|_| running) else {
                    return answer(reply, Err(not_here(&name, &task, action, running)));
                };
                if pause {
                    self.paused.insert(container.clone());
                } else {
                    self.paused.remove(&container);
                }
                let state = self.state.clone();
                let paused = self.paused.contains(&container);
                let mut view = self.slots.get(&index).and_then(|s| s.published.clone());
                tokio::spawn(async move {
                    let result = swarm.pause(&container, pause).await.map_err(|e| {
                        control_failed(if pause { "pause" } else { "unpause" }, &name, &task, e)
                    });
                    if result.is_ok()
                        && let Some(view) = view.as_mut()
                    {
                        view.status = if paused {
                            RuntimeStatus::Paused
                        } else {
                            RuntimeStatus::Running
                        };
                        state.set_runtime(&name, Some(view.clone()));
                    }
                    answer(reply, result);
                });
                // The next poll publishes the same view, kept from here.
                if let Some(slot) = self.slots.get_mut(&index) {
                    slot.published = None;
                }
            }
            NodeAction::Kill | NodeAction::Stop | NodeAction::Restart if running && !local => {
                // Out of this engine's reach: the node ends its own process,
                // and Swarm replaces the task.
                let ask = ExitAsk {
                    immediate: action == NodeAction::Kill,
                    reason: format!("NodeAction {} of its task {}", verb(action), task.id),
                };
                if !self.state.ask_to_exit(id, ask) {
                    return answer(
                        reply,
                        Err(FarmError::Unsupported(format!(
                            "{name} runs on another host of the swarm (task {}) and has no heartbeat stream open \
to be asked to {}: the control plane cannot reach that host's engine",
                            task.id,
                            verb(action)
                        ))),
                    );
                }
                tokio::spawn(async move {
                    let result = match action {
                        NodeAction::Restart => replaced(&swarm, index, &task.id).await,
                        _ => Ok(()),
                    };
                    answer(reply, result);
                });
            }
            NodeAction::Kill | NodeAction::Stop | NodeAction::Restart => {
                let Some(container) = container.filter(|_| running) else {
                    return answer(reply, Err(not_here(&name, &task, action, running)));
                };
                self.paused.remove(&container);
                tokio::spawn(async move {
                    let result = match action {
                        NodeAction::Kill => swarm.kill(&container).await,
                        _ => swarm.stop(&container, grace).await,
                    }
                    .map_err(|e| control_failed(verb(action), &name, &task, e));
                    let result = match result {
                        Ok(()) if action == NodeAction::Restart => {
                            replaced(&swarm, index, &task.id).await
                        }
                        other => other,
                    };
                    answer(reply, result);
                });
            }
            NodeAction::Remove => {
                let state = self.state.clone();
                tokio::spawn(async move {
                    let mut result = state.forget(id).await.map_err(FarmError::from);
                    if result.is_ok()
                        && let Some(container) = container
                    {
                        // The next task starts afresh: the registry no
                        // longer knows the identity in its cache.
                        result = swarm
                            .kill(&container)
                            .await
                            .map_err(|e| control_failed("remove", &name, &task, e));
                    }
                    answer(reply, result);
                });
            }
        }
    }

    /// Removes the service, its network, secret and this host's volumes,
    /// unless the nodes are kept; then answers `reply` and whoever else
    /// asks meanwhile.
    async fn shutdown(
        &mut self,
        reply: oneshot::Sender<()>,
        commands: &mut mpsc::Receiver<Command>,
    ) {
        if self.config.keep_on_shutdown {
            info!(
                nodes = self.slots.len(),
                service = %self.swarm.service_name(),
                "leaving the farm's service running"
            );
        } else {
            info!(service = %self.swarm.service_name(), "removing the farm's service");
            self.swarm.remove_all().await;
            for slot in self.slots.values() {
                self.state.set_runtime(
                    &slot.name,
                    Some(RuntimeView {
                        status: RuntimeStatus::Stopped {
                            reason: "stopped: control plane shut down".to_owned(),
                        },
                        runtime_id: String::new(),
                        starts: slot.starts,
                        host: String::new(),
                    }),
                );
            }
            info!(nodes = self.slots.len(), "stopped the farm's nodes");
        }
        let _ = reply.send(());
        commands.close();
        while let Some(command) = commands.recv().await {
            match command {
                Command::Shutdown { reply } => {
                    let _ = reply.send(());
                }
                Command::Scale { reply, .. } => {
                    let _ = reply.send(Err(FarmError::ShuttingDown));
                }
                Command::Act { reply, .. } => answer(reply, Err(FarmError::ShuttingDown)),
            }
        }
    }
}

/// A slot's task placed on another host than before: its identity cache
/// (a volume on the former host) stays behind, so the task there registers
/// anew under the slot's name, which the former identity must give up.
fn moved(state: &Members, name: &str, host: &str) {
    let Some(id) = state.id_of(name) else {
        return;
    };
    info!(slot = %name, node.id = %id, host = %host, "Swarm moved the slot to another host: its node registers anew there");
    let state = state.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        if let Err(err) = state.forget(id).await {
            warn!(slot = %name, cause = %err, "could not forget the identity of a moved slot");
        }
    });
}

/// What the registry is told of a slot's task.
fn view_of(task: &TaskView, starts: u32, host: String, paused: bool) -> RuntimeView {
    use bollard::models::TaskState as S;
    let status = match (task.live, task.state) {
        (true, S::RUNNING) if paused => RuntimeStatus::Paused,
        (true, S::RUNNING) => RuntimeStatus::Running,
        (true, state) => RuntimeStatus::Stopped {
            reason: format!("Swarm task {state}"),
        },
        (false, state) if task.message.is_empty() => RuntimeStatus::Stopped {
            reason: format!("Swarm task {state}"),
        },
        (false, state) => RuntimeStatus::Stopped {
            reason: format!("Swarm task {state}: {}", task.message),
        },
    };
    RuntimeView {
        status,
        runtime_id: task.id.clone(),
        starts,
        host,
    }
}

fn verb(action: NodeAction) -> &'static str {
    match action {
        NodeAction::Start => "start",
        NodeAction::Stop => "stop",
        NodeAction::Restart => "restart",
        NodeAction::Pause => "pause",
        NodeAction::Unpause => "unpause",
        NodeAction::Kill => "kill",
        NodeAction::Remove => "remove",
    }
}

/// Why an action cannot reach a slot's container from here.
fn not_here(name: &str, task: &TaskView, action: NodeAction, running: bool) -> FarmError {
    if !running {
        return FarmError::Unsupported(format!(
            "{name} has no running task (Swarm task {}): nothing to {}",
            task.state,
            verb(action)
        ));
    }
    FarmError::Unsupported(format!(
        "{name} runs on another host of the swarm (task {}): only that host's engine can {} its container, \
and the control plane talks to its own engine only",
        task.id,
        verb(action)
    ))
}

fn control_failed(
    action: &'static str,
    name: &str,
    task: &TaskView,
    err: bollard::errors::Error,
) -> FarmError {
    FarmError::Runtime(RuntimeError::Control {
        action,
        slot: name.to_owned(),
        id: task.id.clone(),
        cause: err.to_string(),
    })
}

fn swarm_failed(cause: String) -> FarmError {
    FarmError::Runtime(RuntimeError::Control {
        action: "scale",
        slot: "the farm's service".to_owned(),
        id: String::new(),
        cause,
    })
}

/// Waits until Swarm runs a task other than `old` in slot `index`.
async fn replaced(swarm: &SwarmRuntime, index: u32, old: &str) -> Result<(), FarmError> {
    let deadline = Instant::now() + REPLACEMENT_WAIT;
    while Instant::now() < deadline {
        if let Ok(tasks) = swarm.tasks().await
            && current_tasks(&tasks).get(&index).is_some_and(|t| {
                t.id != old && t.live && t.state == bollard::models::TaskState::RUNNING
            })
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(FarmError::Runtime(RuntimeError::Start {
        slot: slot_name(index),
        cause: format!("Swarm did not run a new task within {REPLACEMENT_WAIT:?}"),
    }))
}

/// A caller that gave up waiting is fine.
fn answer(reply: Reply, result: Result<(), FarmError>) {
    let _ = reply.send(result);
}
