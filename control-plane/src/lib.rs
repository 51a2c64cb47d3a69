//! The farm's control plane: membership, discovery and orchestration of a
//! farm of `farm-node` agents, served over gRPC, gRPC-Web and HTTP on one
//! port.
//!
//! [`core`] holds the rules and knows nothing of the wire; [`api`] adapts it
//! to `farm.v1`; [`runtime`] and [`supervisor`] run the nodes; [`serve`]
//! wires it all to a listener. The binary in `main.rs` only parses flags,
//! binds the port and installs the shutdown signal.

pub mod api;
pub mod auth;
pub mod config;
pub mod core;
pub mod prometheus;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod state;
pub mod store;
pub mod supervisor;
