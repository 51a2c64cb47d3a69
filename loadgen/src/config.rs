//! Command-line flags of `loadgen` and their validation into a [`RunConfig`].
//! Every rule about what a run may ask for lives here, so the scheduler only
//! ever sees a consistent configuration.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
// Every duration flag of the workspace reads alike.
use farm_api::{cli::duration, status::MAX_CODE};

/// What `loadgen run`'s exit codes mean (a macro, so that `concat!` can
/// put it in more than one help text).
macro_rules! run_exit_codes {
    () => {
        "  0  the run succeeded
  1  no request succeeded (a target refusing every connection, every request
     failing), a --max-error-rate or --max-p99 threshold was crossed, or the
     report could not be written
  2  bad input: flags, an unreachable control plane, no node to drive"
    };
}

/// What `loadgen swarm`'s exit codes mean.
macro_rules! swarm_exit_codes {
    () => {
        "  0  the swarm ran and its nodes registered
  1  no node could register, or the report could not be written
  2  bad input: flags, an unreachable control plane"
    };
}

/// `loadgen run --help`'s exit codes.
const EXIT_CODES: &str = concat!("Exit codes:\n", run_exit_codes!());
/// `loadgen swarm --help`'s exit codes.
const SWARM_EXIT_CODES: &str = concat!("Exit codes:\n", swarm_exit_codes!());
/// `loadgen --help`: both commands' exit codes.
const ALL_EXIT_CODES: &str = concat!(
    "Exit codes of `loadgen run`:\n",
    run_exit_codes!(),
    "\nExit codes of `loadgen swarm`:\n",
    swarm_exit_codes!()
);

/// `loadgen`: load tests against the farm's nodes.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, after_help = ALL_EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Threads driving the load [default: for `run`, half the CPUs (at
    /// least one), leaving the rest to a farm on the same machine; for
    /// `swarm`, one per CPU]. On one thread, as `h2load` runs by default,
    /// no task ever changes threads.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drives `farm.v1.Workload` on the targets and prints a summary.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Simulates many node agents in one process against a control plane and
    /// reports heartbeat round-trip percentiles.
    #[command(after_help = SWARM_EXIT_CODES)]
    Swarm(crate::swarm::SwarmArgs),
}

/// The CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Threads `run` drives the load on when `--threads` is not given: half the
/// CPUs, at least one, the other half left to the farm, which usually
/// shares the machine. On two CPUs, in three rounds at 4×100 in flight, two
/// threads drove one `farm-node` at 0.59–1.08× of h2load's rate and one
/// thread at 0.98–1.24×: a thread that competes with the target for a CPU
/// takes from what it measures.
pub fn default_run_threads() -> usize {
    (cpus() / 2).max(1)
}

impl Command {
    /// Threads when `--threads` is not given: `run`'s default
    /// ([`default_run_threads`]); for `swarm`, one per CPU, since simulated
    /// nodes are many tasks with little work each, and on one thread 20,000
    /// of them saw a heartbeat p99 of 126 ms against 17 ms on two.
    pub fn default_threads(&self) -> usize {
        match self {
            Command::Run(_) => default_run_threads(),
            Command::Swarm(_) => cpus(),
        }
    }
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

impl Mode {
    /// The mode as its flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Unary => "unary",
            Mode::Stream => "stream",
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("loop").required(true).args(["rate", "max"])))]
#[command(group(clap::ArgGroup::new("aim").required(true).args(["targets", "control_plane"])))]
pub struct RunArgs {
    /// Control plane to discover the targets from: every healthy node it
    /// lists (`Farm.ListNodes`), optionally of one `--group`.
    #[arg(long, value_name = "URL")]
    pub control_plane: Option<String>,
    /// With `--control-plane`: only the nodes of this group.
    #[arg(long, requires = "control_plane")]
    pub group: Option<String>,
    /// Bearer token for `--control-plane`, to list its nodes: the control
    /// plane's `viewer` token (its `--viewer-token`; `admin` works too, the
    /// `node` token does not). Never sent to the targets.
    #[arg(long, env = "FARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Node address to drive (`host:port` or `http://host:port`); repeatable.
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<String>,
    /// Which RPC carries the requests.
    #[arg(long, value_enum, default_value = "unary")]
    pub mode: Mode,
    /// Open loop: this many requests per second in total, latency measured
    /// from each request's scheduled send time (corrected for coordinated
    /// omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: as fast as `--concurrency` requests in flight allow.
    #[arg(long)]
    pub max: bool,
    /// Requests in flight at most [default: 16 in closed loop, 1024 in open
    /// loop, where it only caps how far a slow target can back requests up].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// HTTP/2 connections per target.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// `WorkStream`s per connection (stream mode).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// How long to measure (`30s`, `2m`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// How long to send before measuring.
    #[arg(long, default_value = "0s", value_parser = duration)]
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
    /// Share of requests (0 to 1) the node is asked to fail with
    /// `--fail-code`, spread evenly over the run.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// gRPC status code of the requested failures (1 to 16).
    #[arg(long, default_value_t = 14)]
    pub fail_code: u32,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Write the report as one self-contained HTML page to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// Threshold: the run fails (exit code 1) when more than this share of
    /// the requests sent failed, as a fraction (`0.01`) or a percentage
    /// (`1%`). Requests that could not be sent for want of a connection are
    /// connect errors, not failed requests.
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub max_error_rate: Option<f64>,
    /// Threshold: the run fails (exit code 1) when the p99 latency
    /// (corrected for coordinated omission) is above this (`50ms`, `1s`).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub max_p99: Option<Duration>,
}

/// A share as a fraction (`0.01`) or a percentage (`1%`), 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.trim().strip_suffix('%') {
        Some(percent) => (percent.trim(), 100.0),
        None => (text.trim(), 1.0),
    };
    let share = number
        .parse::<f64>()
        .map(|n| n / scale)
        .map_err(|_| format!("{text:?} is not a fraction (0.01) or a percentage (1%)"))?;
    if !(0.0..=1.0).contains(&share) {
        return Err(format!("{text:?} is not between 0 and 1 (0% and 100%)"));
    }
    Ok(share)
}

/// What is wrong with the flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no target: give --target ADDR or --control-plane URL")]
    NoTarget,
    #[error("--rate must be a positive number of requests per second, not {0}")]
    BadRate(f64),
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--duration must be longer than zero")]
    ZeroDuration,
    #[error("--error-rate must be between 0 and 1, not {0}")]
    BadErrorRate(f64),
    #[error("--fail-code must be 1 to {MAX_CODE}, not {0}")]
    BadFailCode(u32),
    #[error("{0:?} is not a target address")]
    BadTarget(String),
    #[error("--response-bytes may be at most {MAX_RESPONSE_BYTES}, not {0}")]
    BadResponseBytes(u32),
    #[error("--delay-ms may be at most {MAX_DELAY_MS}, not {0}")]
    BadDelay(u32),
    /// The error-rate threshold is not a share from 0 to 1.
    #[error("--max-error-rate must be between 0 and 1, not {0}")]
    BadMaxErrorRate(f64),
    /// The p99 threshold is zero, which every run would cross.
    #[error("--max-p99 must be longer than zero")]
    ZeroMaxP99,
}

/// The largest response and the longest delay a node accepts.
pub use farm_api::node::{MAX_DELAY_MS, MAX_RESPONSE_BYTES};
/// Default in-flight cap of a closed-loop run.
pub const CLOSED_CONCURRENCY: usize = 16;
/// Default in-flight cap of an open-loop run.
pub const OPEN_CONCURRENCY: usize = 1024;
/// How long a run measures unless told (`--duration`'s default).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// The in-flight cap of a run that names none: an open loop (a rate)
/// only caps how far a slow target backs requests up.
pub fn default_concurrency(open_loop: bool) -> usize {
    if open_loop {
        OPEN_CONCURRENCY
    } else {
        CLOSED_CONCURRENCY
    }
}

/// Limits a run must stay within to succeed, in the spirit of k6's
/// thresholds: crossing one makes the run fail (exit code 1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// Highest share (0 to 1) of the requests sent that may fail.
    pub max_error_rate: Option<f64>,
    /// Highest p99 latency, corrected for coordinated omission.
    pub max_p99: Option<Duration>,
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Target URIs (`http://host:port`).
    pub targets: Vec<String>,
    pub mode: Mode,
    /// `Some`: open loop at this total rate; `None`: closed loop.
    pub rate: Option<f64>,
    /// Requests in flight at most.
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
    /// Share of requests asked to fail with `fail_code` (0 to 1).
    pub error_rate: f64,
    pub fail_code: u32,
    /// Limits the run must stay within to succeed.
    pub thresholds: Thresholds,
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
            error_rate: 0.0,
            fail_code: 14,
            thresholds: Thresholds::default(),
        }
    }

    /// Builds a run from the flags and the targets (given with `--target`
    /// or discovered from `--control-plane`), and validates it.
    pub fn from_args(args: &RunArgs, targets: &[String]) -> Result<Self, ConfigError> {
        let config = Self {
            targets: targets
                .iter()
                .map(|t| target_uri(t))
                .collect::<Result<_, _>>()?,
            mode: args.mode,
            rate: args.rate,
            concurrency: args
                .concurrency
                .unwrap_or_else(|| default_concurrency(args.rate.is_some())),
            connections: args.connections,
            streams: args.streams,
            duration: args.duration,
            warmup: args.warmup,
            payload: args.payload,
            response_bytes: args.response_bytes,
            delay_ms: args.delay_ms,
            error_rate: args.error_rate,
            fail_code: args.fail_code,
            thresholds: Thresholds {
                max_error_rate: args.max_error_rate,
                max_p99: args.max_p99,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule a run must obey.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.targets.is_empty() {
            return Err(ConfigError::NoTarget);
        }
        for target in &self.targets {
            target
                .parse::<tonic::transport::Uri>()
                .map_err(|_| ConfigError::BadTarget(target.clone()))?;
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ConfigError::BadRate(rate));
        }
        for (name, value) in [
            ("concurrency", self.concurrency),
            ("connections", self.connections),
            ("streams", self.streams),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.duration.is_zero() {
            return Err(ConfigError::ZeroDuration);
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(ConfigError::BadErrorRate(self.error_rate));
        }
        if self.error_rate > 0.0 && !(1..=MAX_CODE).contains(&self.fail_code) {
            return Err(ConfigError::BadFailCode(self.fail_code));
        }
        if self.response_bytes > MAX_RESPONSE_BYTES {
            return Err(ConfigError::BadResponseBytes(self.response_bytes));
        }
        if self.delay_ms > MAX_DELAY_MS {
            return Err(ConfigError::BadDelay(self.delay_ms));
        }
        if let Some(share) = self.thresholds.max_error_rate
            && !(0.0..=1.0).contains(&share)
        {
            return Err(ConfigError::BadMaxErrorRate(share));
        }
        if self.thresholds.max_p99 == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroMaxP99);
        }
        Ok(())
    }

    /// What is about to run, in one line.
    pub fn describe(&self) -> String {
        let shape = match self.rate {
            Some(rate) => format!(
                "{rate} req/s (open loop, at most {} in flight)",
                self.concurrency
            ),
            None => format!("closed loop, {} in flight", self.concurrency),
        };
        let warmup = if self.warmup.is_zero() {
            String::new()
        } else {
            format!(
                " after {} of warm-up",
                humantime::format_duration(self.warmup)
            )
        };
        format!(
            "loadgen: {} requests to {} target{} for {}{warmup}, {shape}",
            self.mode.name(),
            self.targets.len(),
            if self.targets.len() == 1 { "" } else { "s" },
            humantime::format_duration(self.duration),
        )
    }
}

/// `host:port` or a URL as a target URI (`http://host:port`).
pub fn target_uri(target: &str) -> Result<String, ConfigError> {
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    uri.parse::<tonic::transport::Uri>()
        .map_err(|_| ConfigError::BadTarget(target.to_owned()))?;
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let cli = Cli::try_parse_from(["loadgen", "run"].iter().chain(args))
            .map_err(|e| e.kind().to_string())?;
        let Command::Run(args) = cli.command else {
            return Err("not a run".to_owned());
        };
        RunConfig::from_args(&args, &args.targets).map_err(|e| e.to_string())
    }

    /// The defaults the flags show are the ones the control plane's
    /// `LoadTest.Run` takes for unset fields.
    #[test]
    fn unset_flags_take_the_shared_defaults() {
        let closed = parse(&["--target", "127.0.0.1:1", "--max"]).expect("valid");
        assert_eq!(closed.duration, DEFAULT_DURATION);
        assert_eq!(closed.concurrency, default_concurrency(false));
        let open = parse(&["--target", "127.0.0.1:1", "--rate", "5"]).expect("valid");
        assert_eq!(open.concurrency, default_concurrency(true));
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
        assert_eq!(config.thresholds, Thresholds::default());
    }

    #[test]
    fn thresholds_take_fractions_percentages_and_durations() {
        let with = |more: &[&str]| {
            let mut all = vec!["--target", "127.0.0.1:7001", "--max"];
            all.extend_from_slice(more);
            parse(&all)
        };
        let config = with(&["--max-error-rate", "0.01", "--max-p99", "50ms"]).expect("valid");
        assert_eq!(
            config.thresholds,
            Thresholds {
                max_error_rate: Some(0.01),
                max_p99: Some(Duration::from_millis(50)),
            }
        );
        let percent = with(&["--max-error-rate", "2.5%"]).expect("valid");
        assert_eq!(percent.thresholds.max_error_rate, Some(0.025));
        for bad in [
            &["--max-error-rate", "1.5"][..],
            &["--max-error-rate", "150%"],
            &["--max-error-rate", "-0.1"],
            &["--max-error-rate", "some"],
            &["--max-p99", "soon"],
            &["--max-p99", "0s"],
        ] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
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
        assert!(with(&["--max", "--error-rate", "0.1", "--fail-code", "17"]).is_err());
        assert!(with(&["--max", "--error-rate", "1.5"]).is_err_and(|e| e.contains("between")));
        assert!(with(&["--max", "--delay-ms", "60001"]).is_err());
        assert!(
            parse(&["--max"]).is_err(),
            "neither --target nor --control-plane"
        );
        assert!(
            parse(&["--max", "--target", "a:1", "--control-plane", "http://b:2"]).is_err(),
            "both --target and --control-plane"
        );
    }
}
