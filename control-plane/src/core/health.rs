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
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(1000),
            heartbeat_timeout: Duration::from_millis(3000),
            min_age: Duration::from_secs(2),
            max_age: Duration::from_secs(60),
            group_idle_timeout: Duration::from_secs(60),
        }
    }
}
