//! `loadgen swarm`'s flags and their validation into a [`SwarmConfig`]:
//! every rule about what a swarm may ask for lives here, so the engine only
//! ever sees a consistent configuration.

use std::{path::PathBuf, time::Duration};

use clap::Args;
// Every duration flag of the workspace reads alike.
use farm_api::{Bearer, cli::duration, node::MIN_HEARTBEAT_INTERVAL_MS};

use crate::config::target_uri;

/// Simulated nodes per HTTP/2 connection when `--connections` is not given
/// (servers commonly allow 100 to 200 concurrent streams on one).
const NODES_PER_CONNECTION: usize = 100;
/// Most simulated nodes one run may ask for.
const MAX_NODES: usize = 1_000_000;
/// Shortest heartbeat interval accepted (the control plane's own minimum).
const MIN_HEARTBEAT: Duration = Duration::from_millis(MIN_HEARTBEAT_INTERVAL_MS as u64);

/// Flags of `loadgen swarm`.
#[derive(Debug, Args)]
pub struct SwarmArgs {
    /// Control plane to simulate nodes against (`http://host:port`).
    #[arg(long, env = "FARM_CONTROL_PLANE")]
    pub control_plane: String,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Interval between one node's heartbeats.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub heartbeat: Duration,
    /// How long to measure, once every node has registered (or failed to).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub duration: Duration,
    /// HTTP/2 connections the nodes are spread over (default: one per 100
    /// nodes).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Registrations (and, at the end, deregistrations) in flight at once.
    #[arg(long, default_value_t = 32)]
    pub register_concurrency: usize,
    /// Group the nodes join (empty: the control plane's default group).
    #[arg(long, default_value = "")]
    pub group: String,
    /// Longest the registration of all nodes may take; measurement starts
    /// then with the nodes registered so far.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub ramp_timeout: Duration,
    /// Longest the deregistration of all nodes may take at the end.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub cleanup_timeout: Duration,
    /// Deadline of each Register and Deregister call.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub rpc_timeout: Duration,
    /// Bearer token the simulated nodes register and heartbeat with: the
    /// control plane's `node` token (its `--node-token`; `admin` works too,
    /// `viewer` does not), from the variable `farm-node --token` reads.
    #[arg(long, env = "FARM_NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Each heartbeat carries a simulated metrics sample (CPU, memory and
    /// request rate that drift over time, no latency histogram), so that
    /// dashboards have every node's load to show.
    #[arg(long)]
    pub samples: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// What is wrong with the flags of a swarm.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SwarmConfigError {
    /// The control plane URL does not parse, or is not `http://host:port`.
    #[error("{0:?} is not a control plane URL (expected http://host:port)")]
    BadUrl(String),
    /// `--nodes` is zero or beyond what one process can simulate.
    #[error("--nodes must be 1 to {MAX_NODES}, not {0}")]
    BadNodes(usize),
    /// The heartbeat interval is below the control plane's minimum.
    #[error("--heartbeat must be at least {MIN_HEARTBEAT_INTERVAL_MS}ms, not {0:?}")]
    HeartbeatTooShort(Duration),
    /// A count flag (`--connections`, `--register-concurrency`) is zero.
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    /// A time flag is zero.
    #[error("--{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The token cannot be sent as a header value.
    #[error("--token cannot be sent as a header value (empty, or not visible ASCII)")]
    BadToken,
}

/// A validated swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The control plane's URI (`http://host:port`).
    pub control_plane: String,
    pub nodes: usize,
    /// Interval between one node's heartbeats.
    pub heartbeat: Duration,
    /// Measured time, after the ramp.
    pub duration: Duration,
    /// HTTP/2 connections; node `i` uses connection `i % connections`.
    pub connections: usize,
    /// Registrations and deregistrations in flight at once.
    pub register_concurrency: usize,
    /// Group to join; empty for the default group.
    pub group: String,
    pub ramp_timeout: Duration,
    pub cleanup_timeout: Duration,
    pub rpc_timeout: Duration,
    /// The token presented, if any.
    pub token: Bearer,
    /// Part of every node name, so runs never collide: `swarm-<run_id>-<i>`.
    pub run_id: String,
    /// Whether heartbeats carry simulated metrics samples.
    pub samples: bool,
}

impl SwarmConfig {
    /// A swarm of `nodes` against `control_plane` with the defaults of the
    /// flags otherwise.
    pub fn new(control_plane: &str, nodes: usize) -> Result<Self, SwarmConfigError> {
        let mut config = Self {
            control_plane: control_plane_uri(control_plane)?,
            nodes,
            heartbeat: Duration::from_secs(1),
            duration: Duration::from_secs(30),
            connections: nodes.div_ceil(NODES_PER_CONNECTION).max(1),
            register_concurrency: 32,
            group: String::new(),
            ramp_timeout: Duration::from_secs(120),
            cleanup_timeout: Duration::from_secs(60),
            rpc_timeout: Duration::from_secs(10),
            token: Bearer::default(),
            run_id: run_id(),
            samples: false,
        };
        config.validate()?;
        config.connections = config.connections.min(nodes).max(1);
        Ok(config)
    }

    fn validate(&self) -> Result<(), SwarmConfigError> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(SwarmConfigError::BadNodes(self.nodes));
        }
        if self.heartbeat < MIN_HEARTBEAT {
            return Err(SwarmConfigError::HeartbeatTooShort(self.heartbeat));
        }
        for (name, value) in [
            ("connections", self.connections),
            ("register-concurrency", self.register_concurrency),
        ] {
            if value == 0 {
                return Err(SwarmConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("duration", self.duration),
            ("ramp-timeout", self.ramp_timeout),
            ("cleanup-timeout", self.cleanup_timeout),
            ("rpc-timeout", self.rpc_timeout),
        ] {
            if value.is_zero() {
                return Err(SwarmConfigError::ZeroDuration(name));
            }
        }
        Ok(())
    }
}

impl TryFrom<&SwarmArgs> for SwarmConfig {
    type Error = SwarmConfigError;

    fn try_from(args: &SwarmArgs) -> Result<Self, Self::Error> {
        let token = args
            .token
            .as_deref()
            .map(|t| {
                if t.is_empty() {
                    return Err(SwarmConfigError::BadToken);
                }
                Ok(t)
            })
            .transpose()?;
        let token = Bearer::new(token).map_err(|_| SwarmConfigError::BadToken)?;
        let config = Self {
            control_plane: control_plane_uri(&args.control_plane)?,
            nodes: args.nodes,
            heartbeat: args.heartbeat,
            duration: args.duration,
            connections: args
                .connections
                .unwrap_or_else(|| args.nodes.div_ceil(NODES_PER_CONNECTION)),
            register_concurrency: args.register_concurrency,
            group: args.group.clone(),
            ramp_timeout: args.ramp_timeout,
            cleanup_timeout: args.cleanup_timeout,
            rpc_timeout: args.rpc_timeout,
            token,
            run_id: run_id(),
            samples: args.samples,
        };
        config.validate()?;
        Ok(Self {
            // More connections than nodes would stay idle.
            connections: config.connections.min(config.nodes),
            ..config
        })
    }
}

/// `http://host:port` from a URL, or from a bare `host:port`.
fn control_plane_uri(url: &str) -> Result<String, SwarmConfigError> {
    let bad = || SwarmConfigError::BadUrl(url.to_owned());
    let uri = target_uri(url).map_err(|_| bad())?;
    let parsed = uri.parse::<tonic::transport::Uri>().map_err(|_| bad())?;
    if parsed.scheme_str() != Some("http") || parsed.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(uri)
}

/// A short id for this run: eight hex digits from the clock and the pid.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    // A multiplicative hash so that close clocks give distant ids.
    format!("{:08x}", mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<SwarmConfig, String> {
        let cli = Cli::try_parse_from(["loadgen", "swarm"].iter().chain(args))
            .map_err(|e| e.kind().to_string())?;
        let Command::Swarm(args) = cli.command else {
            return Err("not a swarm".to_owned());
        };
        SwarmConfig::try_from(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_become_a_swarm() {
        let config = parse(&[
            "--control-plane",
            "127.0.0.1:50051",
            "--nodes",
            "2500",
            "--heartbeat",
            "500ms",
            "--duration",
            "1m",
            "--token",
            "s3cret",
        ])
        .expect("valid");
        assert_eq!(config.control_plane, "http://127.0.0.1:50051");
        assert_eq!(config.nodes, 2500);
        assert_eq!(config.connections, 25);
        assert_eq!(config.heartbeat, Duration::from_millis(500));
        assert_eq!(config.duration, Duration::from_secs(60));
        assert_eq!(
            config.token.value().and_then(|t| t.to_str().ok()),
            Some("Bearer s3cret")
        );
        let few = parse(&["--control-plane", "http://[::1]:1", "--nodes", "3"]).expect("valid");
        assert_eq!(few.connections, 1);
        let capped = parse(&[
            "--control-plane",
            "h:1",
            "--nodes",
            "3",
            "--connections",
            "9",
        ])
        .expect("valid");
        assert_eq!(capped.connections, 3);
    }

    #[test]
    fn bad_swarms_are_refused() {
        let cp = ["--control-plane", "127.0.0.1:50051"];
        let with = |more: &[&'static str]| {
            let mut all = cp.to_vec();
            all.extend_from_slice(more);
            parse(&all)
        };
        assert!(with(&["--nodes", "0"]).is_err_and(|e| e.contains("--nodes")));
        assert!(with(&["--heartbeat", "1ms"]).is_err_and(|e| e.contains("--heartbeat")));
        assert!(with(&["--duration", "0s"]).is_err_and(|e| e.contains("--duration")));
        assert!(with(&["--duration", "soon"]).is_err());
        assert!(with(&["--connections", "0"]).is_err_and(|e| e.contains("--connections")));
        assert!(with(&["--token", "a\nb"]).is_err_and(|e| e.contains("--token")));
        for url in ["https://127.0.0.1:1", "http://", "not a url", "ftp://x:1"] {
            assert!(
                parse(&["--control-plane", url]).is_err_and(|e| e.contains("URL")),
                "{url}"
            );
        }
    }
}
