//! The farm's control plane: membership, discovery and orchestration of a farm
//! of `farm-node` agents, served over gRPC, gRPC-Web and HTTP on one port.
pub mod core;
