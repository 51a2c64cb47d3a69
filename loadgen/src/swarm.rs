//! `loadgen swarm`: many simulated node agents in one process, to measure
//! the control plane at scales no single machine can host as real nodes.
//!
//! Each simulated node does what a `farm-node` agent does on the wire, and
//! nothing else: it registers under a new identity (`swarm-<run>-<i>`, a
//! made-up address), keeps one `Registry.Heartbeat` stream open, beats at a
//! fixed interval, applies every configuration pushed down that stream and
//! reports its version in an immediate heartbeat. The round trip of every
//! heartbeat (send to the acknowledgement carrying its `seq`) goes into an
//! HDR histogram.
//!
//! A run has three phases, each bounded in time: the ramp (registrations,
//! at most `register_concurrency` in flight; each node starts heartbeating
//! as soon as it is registered), the measurement (`duration`, starting once
//! every registration has been answered), and the cleanup (every node closes
//! its stream and is deregistered, so the control plane is left as found).
//! Heartbeats are spread evenly over the interval, and the streams over
//! several HTTP/2 connections, since servers cap the streams of one.
//!
//! `args` turns the flags into a [`SwarmConfig`], `engine` runs the swarm,
//! `report` renders its [`SwarmReport`]. Stopping early (Ctrl-C) is the
//! caller's `stop` future: nothing here handles signals or prints.

mod args;
mod engine;
mod report;

pub use args::{SwarmArgs, SwarmConfig, SwarmConfigError};
pub use engine::{Phase, SwarmError, SwarmProgress, swarm, swarm_with_progress};
pub use report::SwarmReport;
