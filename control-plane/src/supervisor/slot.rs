//! One numbered place in the farm: what runs there, what is being done to
//! it, and what the registry is told about it.
//!
//! A slot has at most one operation in flight ([`Busy`]); the loop neither
//! starts nor retires a busy slot, and `NodeAction`s asked meanwhile wait in
//! the slot's queue. Deadlines use tokio's clock, so tests with a paused
//! clock drive backoff with `advance`.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

use super::{NodeAction, Reply};
use crate::{
    core::{NodeId, RuntimeStatus, RuntimeView},
    runtime::{Instance, InstanceExit, Signal},
};

/// A run shorter than this counts as a crash loop for backoff.
pub(super) const STABLE_RUN: Duration = Duration::from_secs(10);
/// Longest wait before restarting a crashing node.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest wait before retrying a start that failed.
pub(super) const START_RETRY: Duration = Duration::from_millis(500);

/// The instance a slot runs.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) instance: Instance,
    pub(super) since: Instant,
    pub(super) paused: bool,
}

/// The operation a slot has in flight. Replies wait here for its outcome.
#[derive(Debug)]
pub(super) enum Busy {
    /// A start; `Start` or `Restart` may be waiting for it.
    Starting { reply: Option<Reply> },
    /// A stop of the slot's instance, then `then`.
    Stopping {
        then: AfterStop,
        reply: Option<Reply>,
    },
    /// `Kill`, `Pause` or `Unpause` being delivered.
    Signalling { signal: Signal, reply: Reply },
    /// `Remove`: stop, forget the identity, remove the slot's state.
    Removing { reply: Reply },
    /// Leaving the farm: beyond its size. Once done the slot is dropped.
    Retiring,
}

/// What follows a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterStop {
    /// `Stop`: held stopped until `Start`.
    Hold,
    /// `Restart`: started again at once.
    Restart,
    /// The control plane is shutting down.
    Shutdown,
}

/// A `NodeAction` waiting for the slot's operation in flight to end.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) id: NodeId,
    pub(super) action: NodeAction,
    pub(super) reply: Reply,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) name: String,
    pub(super) running: Option<Running>,
    pub(super) busy: Option<Busy>,
    /// Actions asked while busy, applied in order once it is not.
    pub(super) queued: VecDeque<Pending>,
    /// Exits reported while a start was in flight: the new instance may die
    /// before the start's outcome reaches the loop.
    pub(super) early_exits: Vec<InstanceExit>,
    /// Stopped on request: not restarted until started again.
    pub(super) held: bool,
    /// Consecutive short runs or failed starts, for backoff.
    pub(super) failures: u32,
    /// No start before this instant (backoff).
    pub(super) not_before: Instant,
    pub(super) starts: u32,
    /// Why it is not running, for the registry.
    pub(super) reason: String,
    /// Adopted beyond the farm's size: retiring it stops the node but keeps
    /// its identity and state, as a smaller farm's restart should.
    pub(super) stray: bool,
}

impl Slot {
    pub(super) fn new(name: String) -> Self {
        Self {
            name,
            running: None,
            busy: None,
            queued: VecDeque::new(),
            early_exits: Vec::new(),
            held: false,
            failures: 0,
            not_before: Instant::now(),
            starts: 0,
            reason: "not started yet".to_owned(),
            stray: false,
        }
    }

    /// True when nothing runs or is being done here and it may start now.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.busy.is_none() && self.running.is_none() && !self.held && self.not_before <= now
    }

    /// When this slot will want to start, if it waits for its backoff.
    pub(super) fn wakes_at(&self) -> Option<Instant> {
        (self.busy.is_none() && self.running.is_none() && !self.held).then_some(self.not_before)
    }

    /// Its instance ended without being asked to: counts the failure and
    /// sets the backoff. Returns the wait before the next start.
    pub(super) fn crashed(&mut self, ran: Duration, reason: &str) -> Duration {
        self.running = None;
        self.failures = if ran >= STABLE_RUN {
            1
        } else {
            self.failures + 1
        };
        let delay = backoff(self.failures);
        self.not_before = Instant::now() + delay;
        self.reason = format!("{reason}; restarting");
        delay
    }

    /// A start failed: retried after the backoff, and never at once.
    pub(super) fn start_failed(&mut self, cause: String) -> Duration {
        self.failures += 1;
        let delay = backoff(self.failures).max(START_RETRY);
        self.not_before = Instant::now() + delay;
        self.reason = cause;
        delay
    }

    /// Clears the backoff: the next start may happen now.
    pub(super) fn reset_backoff(&mut self) {
        self.failures = 0;
        self.not_before = Instant::now();
    }

    pub(super) fn view(&self) -> RuntimeView {
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
            host: String::new(),
        }
    }
}

/// `node-007` for slot 7.
pub fn slot_name(index: u32) -> String {
    format!("node-{index:03}")
}

pub(super) fn slot_index(name: &str) -> Option<u32> {
    name.strip_prefix("node-")?.parse().ok().filter(|i| *i > 0)
}

/// Wait before the next start after `failures` consecutive crashes: the
/// first restart is immediate, then 0.5 s doubling up to 30 s.
pub(super) fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(500)
            .saturating_mul(1 << (n - 2).min(16))
            .min(MAX_BACKOFF),
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
