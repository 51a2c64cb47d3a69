//! What the farm's tests and benchmarks share, in one place, so that each
//! test file says what it checks and not how a farm is started or polled.
//! A development-only library: every crate of the workspace takes it as a
//! dev-dependency (a cycle cargo allows: it uses their libraries, whose
//! integration tests use it).
//!
//! - [`Farm`] ([`farm`]): a whole control plane in this process on
//!   `127.0.0.1:0`, with real `farm-node` processes or none;
//!   [`ControlPlaneProcess`] ([`process`]): the `control-plane` binary as a
//!   child, for signals and crashes; the binaries' paths, and the guards
//!   that leave no process behind.
//! - [`Node`] ([`node`]): a `farm-node` serving in this process.
//! - [`Api`] ([`api`]): typed clients of the farm's services, with a bearer
//!   token or none, and the waits on its node list.
//! - [`http`]: an HTTP/1.1 client (hyper's) that sends exactly the `Host`,
//!   `Origin` and other headers a test sets; [`grpc_web`]: gRPC-Web frames
//!   and calls over it; [`raw`]: gRPC with message bytes as they are.
//! - [`catalog`]: the dependency set the catalog's tests and benchmark
//!   index (`data/catalog-graph.txt`, Homebrew-shaped), and a client of
//!   the catalog's line protocol that pipelines and retries as a real
//!   client does.
//! - [`eventually`] ([`wait`]): polls until something holds, with a short
//!   backoff, and panics with what it waited for and what it saw last.
//! - [`browser`]: Debian's chromium driven through playwright-core, for
//!   the dashboard's tests: pages to click, fill, wait on and screenshot.
//! - [`swarm`]: a one-node Docker Swarm the swarm tests take in turn, made
//!   and left by them when the engine is in none; [`engines`]: more Docker
//!   engines, each in a network namespace of its own, to join it as other
//!   hosts.
//! - [`docker`] and [`interop`]: the Docker engine and the tools nobody here
//!   wrote (grpcurl, Python's grpcio-tools), skipped with a message when
//!   missing unless the suite requires them ([`skip`]).
//!
//! Everything here panics on failure with a message: it runs inside tests.

pub mod api;
pub mod browser;
pub mod catalog;
pub mod docker;
pub mod engines;
pub mod farm;
pub mod grpc_web;
pub mod http;
pub mod interop;
pub mod node;
pub mod process;
pub mod raw;
pub mod skip;
pub mod swarm;
pub mod wait;

pub use api::{Api, Authed, by_name, healthy, ids_by_name, pid};
pub use farm::{Farm, FarmBuilder};
pub use node::Node;
pub use process::{ControlPlaneProcess, NodeGuard, binary, free_addr};
pub use wait::{eventually, eventually_every, ready_if};

/// The admin token of a control plane started with [`TOKENS`].
pub const ADMIN: &str = "admin-7f3a9c1e5b";
/// The node token of a control plane started with [`TOKENS`].
pub const NODE: &str = "node-2d8e4b6a0f";
/// The viewer token of a control plane started with [`TOKENS`].
pub const VIEWER: &str = "viewer-9b1c5e7d3a";

/// The flags that give the control plane all three tokens.
pub const TOKENS: &[&str] = &[
    "--admin-token",
    ADMIN,
    "--node-token",
    NODE,
    "--viewer-token",
    VIEWER,
];

/// The median of a benchmark's figures, NaN (a figure not measured) left
/// out: the middle one, or the mean of the two middle ones of an even
/// count; NaN when none is left.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// A benchmark's setting: the environment variable `name` parsed, or
/// `default` when it is unset; panics naming a value that does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_its_middle_two() {
        assert_eq!(median(vec![1.11, 0.97, 0.88, 0.88]), 0.925);
        assert_eq!(median(vec![3.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
        assert!(median(vec![f64::NAN]).is_nan());
        assert!(median(Vec::new()).is_nan());
    }
}
