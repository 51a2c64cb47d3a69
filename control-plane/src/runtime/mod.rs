//! Runtimes start, stop and signal the farm's nodes. Everything that touches
//! processes or containers lives behind the [`Runtime`] trait, so the
//! supervisor never knows which kind of node it keeps at size. Tests of the
//! supervisor use `memory`, a runtime that only records calls.

pub mod docker;
#[cfg(test)]
pub(crate) mod memory;
mod process;
pub(crate) mod select;
pub mod swarm;

use std::{path::Path, time::Duration};

use async_trait::async_trait;
use thiserror::Error;

pub use docker::{DockerError, DockerRuntime, DockerRuntimeConfig};
pub use process::{ProcessRuntime, ProcessRuntimeConfig};

/// What a runtime needs to start one node.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Slot name, which is also the node's name (`node-007`).
    pub slot: String,
    /// Group the node joins.
    pub group: String,
    /// URL of the control plane as the node reaches it.
    pub control_plane: String,
}

/// A running node as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub slot: String,
    /// Runtime handle: `pid:1234` for a process.
    pub id: String,
}

/// Notice that an instance ended, for whatever reason.
#[derive(Debug, Clone)]
pub struct InstanceExit {
    pub slot: String,
    pub id: String,
    /// How it ended, e.g. `killed by signal 9 (SIGKILL)`.
    pub reason: String,
}

/// What a runtime reports on its own: about an instance, or about the
/// engine the instances run on.
#[derive(Debug, Clone)]
pub enum InstanceEvent {
    /// It ended, for whatever reason.
    Exited(InstanceExit),
    /// It was frozen (`paused`) or thawed, by the farm or from outside.
    Paused {
        slot: String,
        id: String,
        paused: bool,
    },
    /// The engine stopped answering (`Some`, saying why), or answers again
    /// (`None`). When it answers again, the exits of instances that ended
    /// meanwhile have been reported before this.
    Engine { unavailable: Option<String> },
}

/// A signal-like action on a running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Kill at once, as a crash would.
    Kill,
    /// Freeze.
    Pause,
    /// Thaw.
    Unpause,
}

/// Why a runtime operation failed. Each variant names the slot.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The node could not be started.
    #[error("cannot start {slot}: {cause}")]
    Start { slot: String, cause: String },
    /// The instance could not be signalled or stopped.
    #[error("cannot {action} {slot} ({id}): {cause}")]
    Control {
        action: &'static str,
        slot: String,
        id: String,
        cause: String,
    },
    /// The slot's state on disk could not be removed.
    #[error("cannot remove the state of {slot}: {cause}")]
    Remove { slot: String, cause: String },
}

/// Starts and controls nodes. Implementations report every instance's end
/// (and, where they can see it, every pause, and their engine going away
/// and coming back) on the channel they were built with.
#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs: `process`, `docker`.
    fn name(&self) -> &'static str;

    /// Finds instances left running by an earlier control plane on the same
    /// data, so they can be adopted instead of started again.
    async fn adopt(&self) -> Vec<Instance>;

    /// Starts a node.
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError>;

    /// Stops a node: asks it to exit, waits up to `grace`, then kills it.
    /// Returns once it is gone.
    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError>;

    /// Kills, pauses or unpauses a node.
    async fn signal(&self, instance: &Instance, signal: Signal) -> Result<(), RuntimeError>;

    /// Removes what the runtime keeps for a slot (its identity cache, its
    /// logs), so the next start of that slot is a fresh node.
    async fn remove(&self, slot: &str) -> Result<(), RuntimeError>;

    /// Releases what the runtime set up for the whole farm (a network, say)
    /// once its nodes are stopped. Never fails: leftovers are only logged.
    async fn close(&self) {}
}

/// Removes a slot's folder; a missing one is already removed.
fn remove_slot_dir(dir: &Path, slot: &str) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::Remove {
            slot: slot.to_owned(),
            cause: format!("{}: {e}", dir.display()),
        }),
    }
}
