//! Command-line flags of `loadgen` and their validation into a [`RunConfig`].
//! Every rule about what a run may ask for lives here, so the scheduler only
//! ever sees a consistent configuration.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `loadgen`: load tests against the farm's nodes.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drives `farm.v1.Workload` on the targets and prints a summary.
    Run(RunArgs),
}

/// Which RPC carries the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `Workload/Work`: one RPC per request.
    Unary,
    /// `Workload/WorkStream`: requests as messages of long-lived streams.
    Stream,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("loop").required(true).args(["rate", "max"])))]
pub struct RunArgs {
    /// Node address to drive (`host:port` or `http://host:port`); repeatable.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Which RPC carries the requests.
    #[arg(long, value_enum, default_value = "unary")]
    pub mode: Mode,
    /// Open loop: this many requests per second in total, latency measured
    /// from each request's scheduled send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: as fast as `--concurrency` requests in flight allow.
    #[arg(long)]
    pub max: bool,
    /// Requests in flight at most (closed loop: always).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// HTTP/2 connections per target.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Streams per connection (stream mode).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long to send before measuring.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Request payload size in bytes.
    #[arg(long, default_value_t = 0)]
    pub payload: usize,
    /// Response payload size the node is asked for, in bytes.
    #[arg(long, default_value_t = 0)]
    pub response_bytes: u32,
    /// Delay the node is asked to wait before answering, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u32,
    /// Ask every Nth request to fail with `--fail-code` (0: none).
    #[arg(long, default_value_t = 0)]
    pub fail_every: u64,
    /// gRPC status code of the requested failures (1 to 16).
    #[arg(long, default_value_t = 14)]
    pub fail_code: u32,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What is wrong with the flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no target: give --target ADDR at least once")]
    NoTarget,
    #[error("--rate must be a positive number of requests per second, not {0}")]
    BadRate(f64),
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--duration must be longer than zero")]
    ZeroDuration,
    #[error("--fail-code must be 1 to 16, not {0}")]
    BadFailCode(u32),
    #[error("{0:?} is not a target address")]
    BadTarget(String),
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Target URIs (`http://host:port`).
    pub targets: Vec<String>,
    pub mode: Mode,
    /// `Some`: open loop at this total rate; `None`: closed loop.
    pub rate: Option<f64>,
    pub concurrency: usize,
    /// Connections per target.
    pub connections: usize,
    /// Streams per connection.
    pub streams: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub payload: usize,
    pub response_bytes: u32,
    pub delay_ms: u32,
    /// Every Nth request asks for `fail_code` (0: none).
    pub fail_every: u64,
    pub fail_code: u32,
}

impl RunConfig {
    /// A closed-loop unary run against `targets` with defaults otherwise.
    pub fn closed(targets: Vec<String>, concurrency: usize, duration: Duration) -> Self {
        Self {
            targets,
            mode: Mode::Unary,
            rate: None,
            concurrency,
            connections: 1,
            streams: 1,
            duration,
            warmup: Duration::ZERO,
            payload: 0,
            response_bytes: 0,
            delay_ms: 0,
            fail_every: 0,
            fail_code: 14,
        }
    }
}

fn target_uri(target: &str) -> Result<String, ConfigError> {
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    uri.parse::<tonic::transport::Uri>()
        .map_err(|_| ConfigError::BadTarget(target.to_owned()))?;
    Ok(uri)
}

impl TryFrom<&RunArgs> for RunConfig {
    type Error = ConfigError;

    fn try_from(args: &RunArgs) -> Result<Self, Self::Error> {
        if args.targets.is_empty() {
            return Err(ConfigError::NoTarget);
        }
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ConfigError::BadRate(rate));
        }
        for (name, value) in [
            ("concurrency", args.concurrency),
            ("connections", args.connections),
            ("streams", args.streams),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if args.duration.is_zero() {
            return Err(ConfigError::ZeroDuration);
        }
        if args.fail_every > 0 && !(1..=16).contains(&args.fail_code) {
            return Err(ConfigError::BadFailCode(args.fail_code));
        }
        Ok(Self {
            targets: args
                .targets
                .iter()
                .map(|t| target_uri(t))
                .collect::<Result<_, _>>()?,
            mode: args.mode,
            rate: args.rate,
            concurrency: args.concurrency,
            connections: args.connections,
            streams: args.streams,
            duration: args.duration,
            warmup: args.warmup,
            payload: args.payload,
            response_bytes: args.response_bytes,
            delay_ms: args.delay_ms,
            fail_every: args.fail_every,
            fail_code: args.fail_code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let cli = Cli::try_parse_from(["loadgen", "run"].iter().chain(args))
            .map_err(|e| e.kind().to_string())?;
        let Command::Run(args) = cli.command;
        RunConfig::try_from(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_become_a_run() {
        let config = parse(&[
            "--target",
            "127.0.0.1:7001",
            "--target",
            "http://[::1]:7002",
            "--rate",
            "250",
            "--duration",
            "1m",
            "--mode",
            "stream",
        ])
        .expect("valid");
        assert_eq!(
            config.targets,
            ["http://127.0.0.1:7001", "http://[::1]:7002"]
        );
        assert_eq!(config.rate, Some(250.0));
        assert_eq!(config.duration, Duration::from_secs(60));
        assert_eq!(config.mode, Mode::Stream);
        assert_eq!((config.connections, config.streams), (1, 1));
    }

    #[test]
    fn bad_runs_are_refused() {
        let target = ["--target", "127.0.0.1:7001"];
        let with = |more: &[&'static str]| {
            let mut all = target.to_vec();
            all.extend_from_slice(more);
            parse(&all)
        };
        assert!(with(&["--rate", "0"]).is_err_and(|e| e.contains("--rate")));
        assert!(with(&["--rate", "-3"]).is_err());
        assert!(with(&["--rate", "NaN"]).is_err());
        assert!(with(&["--rate", "5", "--max"]).is_err());
        assert!(with(&[]).is_err(), "neither --rate nor --max");
        assert!(with(&["--max", "--concurrency", "0"]).is_err());
        assert!(with(&["--max", "--duration", "0s"]).is_err());
        assert!(with(&["--max", "--fail-every", "2", "--fail-code", "17"]).is_err());
        assert!(parse(&["--max"]).is_err_and(|e| e.contains("no target")));
    }
}
