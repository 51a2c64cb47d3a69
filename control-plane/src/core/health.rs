//! The health policy: how often nodes heartbeat and what silence means.

use std::time::Duration;

/// Timing rules of the bootstrap-server semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// How often nodes are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a healthy node turns unhealthy.
    pub heartbeat_timeout: Duration,
    /// A node younger than this (since it last registered) is not marked
    /// unhealthy for a missed deadline: it may still be starting up.
    pub min_age: Duration,
    /// Silence after which a node that is not managed by this control plane
    /// is dropped from the farm altogether.
    pub max_age: Duration,
    /// How long an empty group lives before it is purged.
    pub group_idle_timeout: Duration,
    /// Flap damping: what makes a node flapping, and how long it must stay
    /// healthy before it is put back into `Discover`.
    pub flap: FlapDamping,
}

/// A node that went from healthy to unhealthy while connected (silent past
/// its deadline, or reporting it does not serve) `threshold` times within
/// `window` is flapping: when it is healthy again it stays out of
/// `Discover` (shown unhealthy, the reason saying why) until it has been
/// healthy for `hold`. A single lapse returns at once, and a node whose
/// stream closed (stopped, restarted, crashed) does not count: the
/// supervisor's backoff answers those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlapDamping {
    /// Lapses from healthy within `window` that make a node flapping; 0
    /// turns damping off.
    pub threshold: u32,
    pub window: Duration,
    pub hold: Duration,
}

impl Default for FlapDamping {
    fn default() -> Self {
        Self {
            threshold: 3,
            window: Duration::from_secs(60),
            hold: Duration::from_secs(10),
        }
    }
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(1000),
            heartbeat_timeout: Duration::from_millis(3000),
            min_age: Duration::from_secs(2),
            max_age: Duration::from_secs(60),
            group_idle_timeout: Duration::from_secs(60),
            flap: FlapDamping::default(),
        }
    }
}
