//! `loadgen`: load tests against the farm's nodes. It drives
//! `farm.v1.Workload` (`Work` unary, or `WorkStream` as messages of
//! long-lived streams) in closed loop (a fixed number of requests in flight)
//! or open loop (a constant total rate, latency measured from each request's
//! scheduled send time so that a stalled target cannot hide its stall:
//! coordinated omission), records latency into HDR histograms per worker,
//! merges them, and reports percentiles as a table, JSON or an HTML page,
//! judged against the thresholds the user set. A target that refuses
//! connections is asked again with backoff, its refusals counted apart from
//! the requests.
//! `swarm` simulates many node agents against a control plane.
//!
//! The CLI in `main.rs` only parses flags and prints; everything else is
//! here, for the control plane's `LoadTest.Run` to reuse.

pub mod config;
pub mod discover;
pub mod html;
pub mod progress;
pub mod report;
pub mod run;
pub mod swarm;
pub mod targets;

pub use config::{Cli, Command, ConfigError, Mode, RunArgs, RunConfig, Thresholds};
pub use report::{ConnectErrors, Interval, Percentiles, Recorder, Report};
pub use run::{RunError, run, run_with_progress};
