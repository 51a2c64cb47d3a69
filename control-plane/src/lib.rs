//! The farm's control plane: membership, discovery and orchestration of a
//! farm of `farm-node` agents, served over gRPC, gRPC-Web and HTTP on one
//! port.
//!
//! `core` holds the rules and knows nothing of the wire; `state` shares
//! them between tasks and persists them through `store`; `api` adapts them
//! to `farm.v1`; `transport` serves the port, and `indexer` the catalog's
//! line protocol on a listener of its own; `runtime` and `supervisor`
//! run the nodes; [`serve`] wires it all to a listener and shuts it down in
//! order. `telemetry` counts the control plane's own work, `process_stats`
//! reads the process's figures, and `exposition` renders them with the
//! farm's metrics for `/metrics`. The binary in `main.rs` only parses flags
//! ([`config`]), binds the port and installs the shutdown signal.

pub mod config;
pub mod serve;

/// Public only to `benches/exposition.rs` (cargo feature `bench`), which
/// renders a synthetic farm of 10,000 nodes with it.
#[cfg(feature = "bench")]
pub mod exposition;
#[cfg(not(feature = "bench"))]
mod exposition;

/// Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`),
/// and their short property tests, which run with the unit tests.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

mod api;
mod core;
mod indexer;
mod process_stats;
mod runtime;
mod state;
mod store;
mod supervisor;
mod telemetry;
mod transport;
