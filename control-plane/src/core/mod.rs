//! The domain core: membership, groups and health of the farm's nodes,
//! their versioned configuration, the aggregation of their metrics, and
//! the dependency catalog.
//!
//! Architecture invariant: nothing here imports tonic, prost or bollard, and
//! nothing here does I/O or reads the clock. Callers pass `now` in, so every
//! rule (deadlines, minimum age, drop and purge timeouts) is tested directly
//! and deterministically. The gRPC adapters translate wire messages into these
//! types and [`DomainError`] into status codes in one place.

pub mod catalog;
pub mod config;
mod error;
mod health;
pub mod metrics;
pub(crate) mod names;
mod registry;

pub use error::DomainError;
pub use health::{FlapDamping, HealthPolicy};
pub use names::{NodeId, validate_group};
pub use registry::{
    DEFAULT_GROUP, Discovered, Event, EventKind, GroupView, Limits, NewIdentity, NodeView, Now,
    Registered, RegistrationRequest, Registry, RuntimeStatus, RuntimeView, StoredNode,
};

/// Health as the control plane reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Registered but not yet proven healthy.
    Starting,
    /// Heartbeating within its deadline; the only state that is discovered.
    Healthy,
    /// Its heartbeat stream closed or its deadline passed.
    Unhealthy,
    /// Its process or container is not running.
    Stopped,
}
