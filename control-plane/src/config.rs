//! Command-line flags, each also read from a `FARM_*` environment variable,
//! parsed and validated into a [`ServeConfig`] before any I/O happens.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use thiserror::Error;

use crate::core::{HealthPolicy, Limits};

/// gRPC control plane for a simulated server farm.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the farm's gRPC, gRPC-Web and HTTP API on one port, and run the
    /// farm's nodes.
    Serve(ServeArgs),
}

/// Where nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// The best runtime available here: child processes.
    Auto,
    /// Nodes are `farm-node` child processes.
    Process,
    /// Run no nodes: serve the registry for nodes started elsewhere.
    None,
}

/// Flags of `control-plane serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC, gRPC-Web and HTTP on.
    #[arg(long, env = "FARM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Folder for the registry database and each node's files.
    #[arg(long, env = "FARM_DATA_DIR", default_value = "./farm-data")]
    pub data_dir: PathBuf,

    /// Where nodes run.
    #[arg(long, env = "FARM_RUNTIME", value_enum, default_value_t = RuntimeKind::Auto)]
    pub runtime: RuntimeKind,

    /// Number of nodes to bring up and keep running.
    #[arg(long, env = "FARM_NODES", default_value_t = 50)]
    pub nodes: u32,

    /// Largest farm `Farm.Scale` may ask for.
    #[arg(long, env = "FARM_MAX_NODES", default_value_t = 1000)]
    pub max_nodes: u32,

    /// The `farm-node` executable (default: next to this program).
    #[arg(long, env = "FARM_NODE_BINARY")]
    pub node_binary: Option<PathBuf>,

    /// How often nodes heartbeat (e.g. `1s`, `250ms`).
    #[arg(long, env = "FARM_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = duration)]
    pub heartbeat_interval: Duration,

    /// Silence after which a node is marked unhealthy.
    #[arg(long, env = "FARM_HEARTBEAT_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub heartbeat_timeout: Duration,

    /// Minimum age (since registering) before a missed heartbeat counts.
    #[arg(long, env = "FARM_MIN_AGE", default_value = "2s", value_parser = duration)]
    pub min_age: Duration,

    /// Silence after which a node not run by this control plane is dropped.
    #[arg(long, env = "FARM_MAX_AGE", default_value = "60s", value_parser = duration)]
    pub max_age: Duration,

    /// Most members of one group.
    #[arg(long, env = "FARM_GROUP_CAPACITY", default_value_t = 10_000)]
    pub group_capacity: u32,

    /// Most groups, `default` included.
    #[arg(long, env = "FARM_MAX_GROUPS", default_value_t = 1_000)]
    pub max_groups: u32,

    /// How long an empty group lives before it is purged.
    #[arg(long, env = "FARM_GROUP_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub group_idle_timeout: Duration,

    /// How long a stopping node may take before it is killed.
    #[arg(long, env = "FARM_STOP_GRACE", default_value = "5s", value_parser = duration)]
    pub stop_grace: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 1m)"))
}

/// A flag combination that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--heartbeat-interval must be at least 10ms, got {0:?}")]
    IntervalTooShort(Duration),
    #[error(
        "--heartbeat-timeout ({timeout:?}) must be longer than --heartbeat-interval ({interval:?})"
    )]
    TimeoutNotAboveInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("--max-age ({max_age:?}) must be longer than --heartbeat-timeout ({timeout:?})")]
    MaxAgeNotAboveTimeout {
        max_age: Duration,
        timeout: Duration,
    },
    #[error("--nodes {nodes} is above --max-nodes {max}")]
    TooManyNodes { nodes: u32, max: u32 },
    #[error("--group-capacity and --max-groups must be at least 1")]
    ZeroLimit,
}

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub runtime: RuntimeKind,
    pub nodes: u32,
    pub max_nodes: u32,
    pub node_binary: Option<PathBuf>,
    pub policy: HealthPolicy,
    pub limits: Limits,
    pub stop_grace: Duration,
}

impl TryFrom<&ServeArgs> for ServeConfig {
    type Error = ConfigError;

    fn try_from(args: &ServeArgs) -> Result<Self, Self::Error> {
        if args.heartbeat_interval < Duration::from_millis(10) {
            return Err(ConfigError::IntervalTooShort(args.heartbeat_interval));
        }
        if args.heartbeat_timeout <= args.heartbeat_interval {
            return Err(ConfigError::TimeoutNotAboveInterval {
                timeout: args.heartbeat_timeout,
                interval: args.heartbeat_interval,
            });
        }
        if args.max_age <= args.heartbeat_timeout {
            return Err(ConfigError::MaxAgeNotAboveTimeout {
                max_age: args.max_age,
                timeout: args.heartbeat_timeout,
            });
        }
        if args.nodes > args.max_nodes {
            return Err(ConfigError::TooManyNodes {
                nodes: args.nodes,
                max: args.max_nodes,
            });
        }
        if args.group_capacity == 0 || args.max_groups == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        Ok(Self {
            data_dir: args.data_dir.clone(),
            runtime: args.runtime,
            nodes: args.nodes,
            max_nodes: args.max_nodes,
            node_binary: args.node_binary.clone(),
            policy: HealthPolicy {
                heartbeat_interval: args.heartbeat_interval,
                heartbeat_timeout: args.heartbeat_timeout,
                min_age: args.min_age,
                max_age: args.max_age,
                group_idle_timeout: args.group_idle_timeout,
            },
            limits: Limits {
                group_capacity: args.group_capacity,
                max_groups: args.max_groups,
            },
            stop_grace: args.stop_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeConfig, String> {
        let cli = Cli::try_parse_from(["control-plane", "serve"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Serve(args) = cli.command;
        ServeConfig::try_from(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["control-plane", "serve"]).expect("parse");
        let Command::Serve(args) = cli.command;
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(args.nodes, 50);
        assert_eq!(args.runtime, RuntimeKind::Auto);
        assert_eq!(args.data_dir, PathBuf::from("./farm-data"));
    }

    #[test]
    fn bad_combinations_are_refused() {
        assert!(
            parse(&["--heartbeat-interval", "5s"])
                .unwrap_err()
                .contains("--heartbeat-timeout")
        );
        assert!(
            parse(&["--nodes", "2000"])
                .unwrap_err()
                .contains("--max-nodes")
        );
        assert!(
            parse(&["--heartbeat-interval", "soon"])
                .unwrap_err()
                .contains("examples")
        );
        assert!(
            parse(&["--max-age", "1s"])
                .unwrap_err()
                .contains("--max-age")
        );
        assert!(parse(&["--heartbeat-interval", "250ms", "--heartbeat-timeout", "1s"]).is_ok());
    }
}
