//! The supervisor keeps the farm at its size: a reconcile loop over numbered
//! slots (`node-001` … `node-050`), each holding at most one running
//! instance.
//!
//! One task owns the slots (`task.rs`); gRPC handlers send it commands, so
//! slot state is never shared or locked. The task never waits on the runtime
//! itself: every start, stop, signal and removal runs as a task of its own
//! and reports its outcome back to the loop, and each slot records the
//! operation it has in flight (`slot.rs`), so nothing is started twice and
//! a slow stop holds up only its own slot. After every command, outcome,
//! instance exit or backoff expiry the task reconciles: it starts what is
//! missing (at most `start_parallelism` starts in flight, the next one as
//! soon as one ends), retires slots beyond the desired size, and tells the
//! registry what the runtime sees, so `ListNodes` shows it. A node that
//! keeps crashing is restarted with exponential backoff.
//!
//! While the runtime's engine does not answer, nothing is started or
//! stopped, and `Scale` and node actions are refused at once
//! ([`FarmError::RuntimeUnavailable`]) rather than left to hang on it; once
//! it answers again, every slot whose node it lost starts at once, its
//! backoff forgotten.

mod slot;
mod swarm;
mod task;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use self::task::Task;
use crate::{
    core::{DomainError, NodeId},
    runtime::{InstanceEvent, Runtime, RuntimeError, swarm::SwarmRuntime},
    state::{Members, StateError},
};

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
    /// The runtime's engine does not answer; the reason names it.
    #[error("{0}; retry once it is back")]
    RuntimeUnavailable(String),
    /// The runtime cannot do this to this node; the reason says why.
    #[error("{0}")]
    Unsupported(String),
}

/// What the handle asks of the task.
#[derive(Debug)]
enum Command {
    Scale {
        nodes: u32,
        reply: oneshot::Sender<Result<u32, FarmError>>,
    },
    Act {
        id: NodeId,
        action: NodeAction,
        reply: Reply,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the supervisor task.
#[derive(Debug, Clone)]
pub struct Supervisor {
    commands: mpsc::Sender<Command>,
    desired: Arc<AtomicU32>,
    /// Why the runtime's engine does not answer, while it does not.
    unavailable: watch::Receiver<Option<String>>,
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
        let (unavailable_tx, unavailable) = watch::channel(None);
        let task = Task::new(runtime, state, config, Arc::clone(&desired), unavailable_tx);
        let handle = tokio::spawn(task.run(rx, exits));
        (
            Self {
                commands,
                desired,
                unavailable,
            },
            handle,
        )
    }

    /// Starts the supervisor task of a Swarm farm, whose service
    /// [`SwarmRuntime::deploy`] has set up: Swarm runs the nodes, the task
    /// keeps the service at size and tells the registry about its tasks.
    pub fn spawn_swarm(
        swarm: Arc<SwarmRuntime>,
        state: Members,
        config: SupervisorConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, rx) = mpsc::channel(64);
        let desired = Arc::new(AtomicU32::new(config.desired));
        let (unavailable_tx, unavailable) = watch::channel(None);
        let task =
            swarm::SwarmTask::new(swarm, state, config, Arc::clone(&desired), unavailable_tx);
        let handle = tokio::spawn(task.run(rx));
        (
            Self {
                commands,
                desired,
                unavailable,
            },
            handle,
        )
    }

    /// The size the farm is kept at.
    pub fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    /// Why the runtime's engine does not answer, while it does not.
    pub fn unavailable(&self) -> Option<String> {
        self.unavailable.borrow().clone()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, FarmError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| FarmError::ShuttingDown)?;
        rx.await.map_err(|_| FarmError::ShuttingDown)
    }

    /// Sets the farm's size; returns the previous one. Starts are issued and
    /// retirements begun before this returns; it waits for none of them.
    pub async fn scale(&self, nodes: u32) -> Result<u32, FarmError> {
        self.call(|reply| Command::Scale { nodes, reply }).await?
    }

    /// Acts on one managed node; returns once the action is done (`Stop`:
    /// the node is gone; `Start`, `Restart`: the new instance runs; `Remove`:
    /// the identity is forgotten). Actions on one node run one after the
    /// other; other nodes and `Scale` do not wait for them.
    pub async fn act(&self, id: NodeId, action: NodeAction) -> Result<(), FarmError> {
        self.call(|reply| Command::Act { id, action, reply })
            .await?
    }

    /// Stops every node (bounded by the stop grace) and ends the task.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}

/// Where a `NodeAction`'s outcome goes.
type Reply = oneshot::Sender<Result<(), FarmError>>;
