//! Command-line flags, each also read from a `FARM_*` environment variable,
//! parsed and validated into a [`ServeConfig`] before any I/O happens.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
// Every duration flag of the workspace reads alike.
use farm_api::cli::{duration, read_token_file};
use thiserror::Error;

pub use crate::indexer::Limits as IndexerLimits;
pub use crate::transport::{ServingSettings, gate::ConnectionLimits};
use crate::{
    core::{FlapDamping, HealthPolicy, Limits},
    transport::{
        auth::{Token, Tokens, parse_token},
        browser::BrowserPolicy,
    },
};

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
    /// Docker if an engine answers (and a static farm-node is at hand for
    /// the image), else child processes.
    Auto,
    /// Nodes are containers of a Docker engine.
    Docker,
    /// Nodes are the tasks of one replicated Docker Swarm service, placed
    /// and restarted by Swarm over the swarm's hosts. The engine at
    /// --docker-host must be a swarm manager.
    Swarm,
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

    /// Flap damping: a node that went from healthy to unhealthy while
    /// connected (a missed heartbeat deadline, or not serving)
    /// `--flap-threshold` times within `--flap-window` is flapping; when
    /// healthy again it stays out of `Discover` (shown unhealthy, the
    /// reason saying so) until it has been healthy this long. Stops,
    /// restarts and crashes do not count. `0s` turns damping off.
    #[arg(long, env = "FARM_FLAP_DAMPING", default_value = "10s", value_parser = duration)]
    pub flap_damping: Duration,

    /// Lapses from healthy within `--flap-window` that make a node flapping
    /// (0: never).
    #[arg(long, env = "FARM_FLAP_THRESHOLD", default_value_t = 3)]
    pub flap_threshold: u32,

    /// The window `--flap-threshold` counts drops in.
    #[arg(long, env = "FARM_FLAP_WINDOW", default_value = "60s", value_parser = duration)]
    pub flap_window: Duration,

    /// How long a stopping node may take before it is killed.
    #[arg(long, env = "FARM_STOP_GRACE", default_value = "5s", value_parser = duration)]
    pub stop_grace: Duration,

    /// CPU limit of each node container, in CPUs.
    #[arg(long, env = "FARM_NODE_CPUS", default_value_t = 0.5)]
    pub node_cpus: f64,

    /// Memory limit of each node container (`128MiB`, `1GiB`, `64m`, bytes).
    #[arg(long, env = "FARM_NODE_MEMORY", default_value = "128MiB", value_parser = bytes)]
    pub node_memory: u64,

    /// Nodes started at once (default: 16 processes, 8 containers).
    #[arg(long, env = "FARM_START_PARALLELISM", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub start_parallelism: Option<u16>,

    /// Leave the nodes running at shutdown instead of stopping them; the
    /// next control plane on the same `--data-dir` adopts them. Every
    /// runtime: `farm-node` processes (found again by the pid recorded
    /// under `<data-dir>/nodes/`), containers (found by the farm id in
    /// `<data-dir>/farm-id`; the farm's network is kept too), and the Swarm
    /// service (found by the same farm id, with its network and secret).
    /// Meanwhile the nodes go on serving and retrying the control plane.
    /// Adopted nodes beyond `--nodes` are stopped.
    #[arg(long, env = "FARM_KEEP_NODES")]
    pub keep_nodes: bool,

    /// Docker engine to use: `unix:///path/to/docker.sock` or `tcp://host:port`.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,

    /// Statically linked farm-node to build the node image from (default:
    /// the first static one of `farm-node` next to this program and the
    /// outputs of `scripts/build-static`).
    #[arg(long, env = "FARM_NODE_IMAGE_BINARY")]
    pub node_image_binary: Option<PathBuf>,

    /// `--runtime swarm`: the URL the nodes reach this control plane at,
    /// e.g. `http://10.0.0.5:50051`. Needed when the swarm has several
    /// hosts: it must be an address every host can route to, and this
    /// control plane checks at start that it answers there. Default: the
    /// swarm's gateway bridge on this host (`docker_gwbridge`), which only
    /// this host's tasks can reach.
    #[arg(long, value_name = "URL", env = "FARM_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// `--runtime swarm`: the node image, e.g. one pushed to your own
    /// registry (`registry.example:5000/farm-node:1`), which every host of
    /// the swarm must be able to pull. It must exist on this engine or
    /// resolve in its registry: this is checked before the service is
    /// created. Default: the image built here from the static farm-node,
    /// which only this host has (fine for a one-host swarm).
    #[arg(long, value_name = "IMAGE", env = "FARM_NODE_IMAGE")]
    pub node_image: Option<String>,

    /// `--runtime swarm`: a Swarm placement constraint on the nodes' tasks,
    /// e.g. `node.role==worker` or `node.labels.zone!=eu-1`. Repeatable, or
    /// comma-separated.
    #[arg(
        long = "placement-constraint",
        value_name = "EXPR",
        env = "FARM_PLACEMENT_CONSTRAINT",
        value_delimiter = ','
    )]
    pub placement_constraints: Vec<String>,

    /// `--runtime swarm`: spread the nodes' tasks evenly over the values of
    /// this Swarm node attribute or label, e.g. `node.labels.zone`.
    /// The default, `node.id`, puts fifty nodes on five hosts ten per host.
    /// `none`: Swarm's own placement only.
    #[arg(
        long,
        value_name = "DESCRIPTOR",
        env = "FARM_PLACEMENT_SPREAD",
        default_value = "node.id"
    )]
    pub placement_spread: String,

    /// `--runtime swarm`: CPUs Swarm reserves for each node when placing it
    /// (a host is only given nodes whose reservations fit). Small by
    /// default (0.01, or --node-cpus when smaller), so a farm of 200 nodes
    /// fits 2 cores; 0: none.
    #[arg(long, env = "FARM_NODE_CPU_RESERVATION")]
    pub node_cpu_reservation: Option<f64>,

    /// `--runtime swarm`: memory Swarm reserves for each node when placing
    /// it (`16MiB`, `64m`, bytes; 0: none). At most --node-memory; by
    /// default 16MiB, or --node-memory when smaller.
    #[arg(long, env = "FARM_NODE_MEMORY_RESERVATION", value_parser = bytes)]
    pub node_memory_reservation: Option<u64>,

    /// Bearer token of the `admin` role: every call, mutations included
    /// (configuration, Scale, NodeAction). Once any token is set, every
    /// farm.v1 call needs one; health, reflection and HTTP stay open.
    #[arg(long, env = "FARM_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub admin_token: Option<Token>,

    /// Bearer token of the `node` role: Register, Heartbeat, Deregister,
    /// discovery and configuration reads. The nodes this control plane runs
    /// are given it; needed whenever tokens are set and nodes run here.
    #[arg(long, env = "FARM_NODE_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub node_token: Option<Token>,

    /// Bearer token of the `viewer` role: discovery, ListNodes and
    /// configuration reads (dashboards).
    #[arg(long, env = "FARM_VIEWER_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub viewer_token: Option<Token>,

    /// A file holding the `admin` token, in place of --admin-token: a
    /// Docker or Swarm secret (`/run/secrets/…`), kept out of the
    /// environment. Trailing line ends are not part of the token.
    #[arg(
        long,
        env = "FARM_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// A file holding the `node` token, in place of --node-token.
    #[arg(
        long,
        env = "FARM_NODE_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "node_token"
    )]
    pub node_token_file: Option<PathBuf>,

    /// A file holding the `viewer` token, in place of --viewer-token.
    #[arg(
        long,
        env = "FARM_VIEWER_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "viewer_token"
    )]
    pub viewer_token_file: Option<PathBuf>,

    /// A web origin (`scheme://host[:port]`, e.g. `http://localhost:5173`)
    /// whose pages may call the API from a browser. Pages served by the
    /// control plane itself (the same origin) always may; no other origin
    /// may unless listed here. Repeatable, or comma-separated. `*` allows
    /// every origin: any web page opened in a browser that reaches this port
    /// could then drive the farm.
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "FARM_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// A host name browsers may address the control plane by (e.g. this
    /// machine's name, or a proxy's), any port. IP addresses and
    /// `localhost` always pass; a browser request naming any other host is
    /// refused (HTTP 421), which stops DNS rebinding. gRPC clients over
    /// HTTP/2 without an `Origin` may use any name. Repeatable, or
    /// comma-separated.
    #[arg(
        long = "allowed-host",
        value_name = "HOST",
        env = "FARM_ALLOWED_HOST",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Address for the dependency catalog's line protocol, off unless
    /// given: plain TCP clients send `INDEX|name|dep1,dep2`, `REMOVE|name|`
    /// or `QUERY|name|`, one line each, and get `OK`, `FAIL` or `ERROR`
    /// back. The same catalog as the gRPC `farm.v1.Catalog`. The protocol
    /// carries no credentials: an address other machines can reach needs
    /// --indexer-allow-remote.
    #[arg(long, value_name = "ADDR", env = "FARM_INDEXER_LISTEN")]
    pub indexer_listen: Option<SocketAddr>,

    /// A line-protocol connection that sends nothing (or reads none of
    /// its answers) this long is closed.
    #[arg(long, env = "FARM_INDEXER_READ_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub indexer_read_timeout: Duration,

    /// Longest line of the line protocol (`64KiB`, bytes, ...), its
    /// newline left out. A longer line is answered `ERROR` and its
    /// connection closed, since what follows cannot be told apart.
    #[arg(long, env = "FARM_INDEXER_MAX_LINE", default_value = "64KiB", value_parser = bytes)]
    pub indexer_max_line: u64,

    /// Most line-protocol connections open at once. Past it, a new
    /// connection is closed at once, and counted in /metrics
    /// (farm_catalog_connections_refused_total).
    #[arg(long, env = "FARM_INDEXER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub indexer_max_connections: u32,

    /// Let --indexer-listen be an address other machines can reach. Anyone
    /// who reaches it can then change the catalog: the line protocol has
    /// no tokens.
    #[arg(long, env = "FARM_INDEXER_ALLOW_REMOTE")]
    pub indexer_allow_remote: bool,

    /// Most connections open at once on the port (gRPC, gRPC-Web, HTTP;
    /// each node holds one). Default: three quarters of the process's file
    /// limit, which is raised to its hard limit at start; the rest is kept
    /// for the nodes' processes and logs, the database and the Docker
    /// socket. At the limit, a new connection takes the place of the oldest
    /// one that has not sent a request yet; when every connection has, the
    /// new one is closed at once. Counted in /metrics
    /// (farm_connections_closed_total).
    #[arg(long, env = "FARM_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,

    /// A connection that sends nothing this long after it opened is closed.
    #[arg(long, env = "FARM_IDLE_CONNECTION_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub idle_connection_timeout: Duration,

    /// An HTTP/1.1 client (gRPC-Web, the dashboard, /metrics) that has not
    /// sent its first request's headers this long after connecting is
    /// closed (slowloris). At most 30s: later requests on a connection get
    /// the HTTP library's own 30s.
    #[arg(long, env = "FARM_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// Most calls open at once on one HTTP/2 connection (its
    /// SETTINGS_MAX_CONCURRENT_STREAMS). A client past it has its new
    /// streams refused at once; gRPC clients wait for a free one instead.
    /// `loadgen swarm` puts 100 nodes on a connection by default.
    #[arg(long, env = "FARM_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024)]
    pub max_streams_per_connection: u32,

    /// Longest a gRPC call's handler may take: a unary call not answered by
    /// then is answered DEADLINE_EXCEEDED; a stream must start by then, and
    /// then runs as long as it is read. Broadcast and SimulateLoad are left
    /// out: they bound each node's call on their own. A client's shorter
    /// deadline (grpc-timeout) is kept.
    #[arg(long, env = "FARM_RPC_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub rpc_timeout: Duration,

    /// When the control plane's event loop runs this late (a smoothed
    /// measure of how long ready work waits for a thread), farm-wide reads
    /// (ListNodes, metrics and history, catalog and configuration-history
    /// reads, GetStatus) are answered UNAVAILABLE at once, so that nodes'
    /// heartbeats and registrations, and writes, keep their time. 0: never
    /// shed. farm_control_plane_event_loop_lag_seconds in /metrics shows it.
    #[arg(long, env = "FARM_SHED_LAG", default_value = "50ms", value_parser = duration)]
    pub shed_lag: Duration,

    /// Unknown tokens one address may present within a minute: past it,
    /// every call from that address, the right token's too, is answered
    /// RESOURCE_EXHAUSTED until the minute is over. 0: no limit.
    #[arg(long, env = "FARM_AUTH_FAILURE_LIMIT", default_value_t = 100)]
    pub auth_failure_limit: u32,

    /// How often an HTTP/2 connection that is quiet is pinged.
    #[arg(long, env = "FARM_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = duration)]
    pub keepalive_interval: Duration,

    /// How long a ping may go unanswered before its connection is closed:
    /// a peer that vanished without closing (a frozen node, a cut cable)
    /// is noticed within --keepalive-interval plus this.
    #[arg(long, env = "FARM_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub keepalive_timeout: Duration,
}

/// Parses a size: a number with an optional unit (`k`, `m`, `g`, `KiB`,
/// `MiB`, `GiB`, `KB`, `MB`, `GB`; single letters are binary, as Docker's).
fn bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 128MiB, 1GiB, 64m)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit in {s:?} (examples: 128MiB, 1GiB, 64m)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A flag combination that cannot work.
#[derive(Debug, Error, PartialEq)]
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
    #[error("--node-cpus must be between 0.01 and 64, got {0}")]
    Cpus(f64),
    #[error("--node-memory must be at least 6MiB (the engine's minimum), got {0} bytes")]
    Memory(u64),
    /// A Swarm reservation out of its range.
    #[error("{flag} must be {allowed}, got {given}")]
    Reservation {
        flag: &'static str,
        allowed: &'static str,
        given: String,
    },
    /// A flag of `--runtime swarm` given with another runtime.
    #[error("{0} applies to --runtime swarm only")]
    SwarmOnly(&'static str),
    /// `--advertise-url` is not a URL nodes can use.
    #[error(
        "--advertise-url {value:?} is not a URL nodes can reach: {problem} (e.g. http://10.0.0.5:50051)"
    )]
    AdvertiseUrl {
        value: String,
        problem: &'static str,
    },
    /// A `--placement-constraint` is not `ATTRIBUTE==VALUE` or
    /// `ATTRIBUTE!=VALUE`.
    #[error(
        "--placement-constraint {0:?} is not ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE (e.g. node.role==worker)"
    )]
    Constraint(String),
    /// A token flag holds something that cannot be a token (the token
    /// itself is never shown).
    #[error("{flag} {problem}")]
    Token {
        flag: &'static str,
        problem: &'static str,
    },
    /// Two roles were given the same token, so it would not say which role
    /// calls.
    #[error("{0} and {1} are the same token: each role needs its own")]
    SameToken(&'static str, &'static str),
    /// A token file could not be read.
    #[error("{flag} {path}: cannot read it: {cause}")]
    TokenFile {
        flag: &'static str,
        path: PathBuf,
        cause: String,
    },
    /// `--listen` reaches beyond this machine and no token is set.
    #[error(
        "--listen {0} is reachable from other machines, and no token is set: anyone could change the farm. \
Set --admin-token, --node-token and --viewer-token (FARM_ADMIN_TOKEN, FARM_NODE_TOKEN, FARM_VIEWER_TOKEN), \
or listen on loopback (127.0.0.1, ::1), where no token is needed"
    )]
    OpenBeyondLoopback(SocketAddr),
    /// Tokens are set and this control plane runs nodes, but they would
    /// have no token to register with.
    #[error(
        "tokens are set but --node-token is not: the nodes this control plane runs need it to register \
(or use --runtime none, where nodes come from elsewhere)"
    )]
    NoNodeToken,
    /// A `--cors-origin` value is not an origin.
    #[error(
        "--cors-origin {value:?} is not an origin: {problem} \
(an origin is scheme://host[:port], e.g. http://localhost:5173)"
    )]
    CorsOrigin {
        value: String,
        problem: &'static str,
    },
    /// `--indexer-listen` reaches beyond this machine without
    /// `--indexer-allow-remote`.
    #[error(
        "--indexer-listen {0} is reachable from other machines, and the catalog's line protocol carries no credentials: \
anyone could change the catalog. Listen on loopback (127.0.0.1, ::1), or add --indexer-allow-remote"
    )]
    IndexerBeyondLoopback(SocketAddr),
    /// A line-protocol limit out of its range.
    #[error("{flag} must be {allowed}, got {given}")]
    IndexerLimit {
        flag: &'static str,
        allowed: &'static str,
        given: String,
    },
    /// A limit of the port out of its range.
    #[error("{flag} must be {allowed}, got {given}")]
    PortLimit {
        flag: &'static str,
        allowed: &'static str,
        given: String,
    },
    /// An `--allowed-host` value is not a host name.
    #[error("--allowed-host {value:?} is not a host name: {problem} (e.g. farm.example)")]
    AllowedHost {
        value: String,
        problem: &'static str,
    },
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
    pub docker: DockerSettings,
    pub swarm: SwarmSettings,
    /// Nodes started at once, if not the runtime's default.
    pub start_parallelism: Option<usize>,
    /// Leave nodes running at shutdown.
    pub keep_nodes: bool,
    /// Bearer tokens of each role; none means every call is let through.
    pub tokens: Tokens,
    /// Which browser pages may call, by origin, and which host names
    /// browsers may use.
    pub browser: BrowserPolicy,
    /// The catalog's line protocol, if served.
    pub indexer: Option<IndexerConfig>,
    /// Which connections the port admits, and for how long.
    pub connections: ConnectionLimits,
    /// How admitted connections and their calls are served.
    pub serving: ServingSettings,
}

/// Where and how the catalog's line protocol is served.
#[derive(Debug, Clone, Copy)]
pub struct IndexerConfig {
    pub listen: SocketAddr,
    pub limits: IndexerLimits,
}

/// Settings of the Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Engine address.
    pub host: String,
    /// CPU limit per node, in CPUs.
    pub cpus: f64,
    /// Memory limit per node, in bytes.
    pub memory: u64,
    /// Static farm-node for the image, if given.
    pub image_binary: Option<PathBuf>,
}

/// Settings of the Swarm runtime.
#[derive(Debug, Clone)]
pub struct SwarmSettings {
    /// Where nodes reach the control plane, if not the gateway bridge.
    pub advertise_url: Option<String>,
    /// The node image, if not the one built here.
    pub node_image: Option<String>,
    /// Placement constraints, as Swarm reads them.
    pub constraints: Vec<String>,
    /// The spread preference's descriptor, if any.
    pub spread: Option<String>,
    /// CPUs reserved per node (0: none).
    pub cpu_reservation: f64,
    /// Bytes reserved per node (0: none).
    pub memory_reservation: u64,
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
        if !(0.01..=64.0).contains(&args.node_cpus) {
            return Err(ConfigError::Cpus(args.node_cpus));
        }
        if args.node_memory < 6 << 20 {
            return Err(ConfigError::Memory(args.node_memory));
        }
        let swarm = swarm(args)?;
        let tokens = tokens(args)?;
        let browser = browser(args)?;
        let indexer = indexer(args)?;
        let (connections, serving) = port(args)?;
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
                flap: FlapDamping {
                    threshold: args.flap_threshold,
                    window: args.flap_window,
                    hold: args.flap_damping,
                },
            },
            limits: Limits {
                group_capacity: args.group_capacity,
                max_groups: args.max_groups,
            },
            stop_grace: args.stop_grace,
            docker: DockerSettings {
                host: args.docker_host.clone(),
                cpus: args.node_cpus,
                memory: args.node_memory,
                image_binary: args.node_image_binary.clone(),
            },
            swarm,
            start_parallelism: args.start_parallelism.map(usize::from),
            keep_nodes: args.keep_nodes,
            tokens,
            browser,
            indexer,
            connections,
            serving,
        })
    }
}

/// CPUs Swarm reserves per node unless told otherwise: enough to spread
/// nodes by what hosts have left, small enough for 200 nodes on 2 cores.
const DEFAULT_CPU_RESERVATION: f64 = 0.01;
/// Memory Swarm reserves per node unless told otherwise: about what an idle
/// `farm-node` uses.
const DEFAULT_MEMORY_RESERVATION: u64 = 16 << 20;

/// The Swarm runtime's flags, each checked; given with another runtime,
/// they are refused rather than ignored.
fn swarm(args: &ServeArgs) -> Result<SwarmSettings, ConfigError> {
    if args.runtime != RuntimeKind::Swarm {
        let given = [
            ("--advertise-url", args.advertise_url.is_some()),
            ("--node-image", args.node_image.is_some()),
            (
                "--placement-constraint",
                !args.placement_constraints.is_empty(),
            ),
            (
                "--node-cpu-reservation",
                args.node_cpu_reservation.is_some(),
            ),
            (
                "--node-memory-reservation",
                args.node_memory_reservation.is_some(),
            ),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            return Err(ConfigError::SwarmOnly(flag));
        }
    }
    let cpu_reservation = args
        .node_cpu_reservation
        .unwrap_or(DEFAULT_CPU_RESERVATION.min(args.node_cpus));
    if !(0.0..=args.node_cpus).contains(&cpu_reservation) {
        return Err(ConfigError::Reservation {
            flag: "--node-cpu-reservation",
            allowed: "between 0 and --node-cpus",
            given: cpu_reservation.to_string(),
        });
    }
    let memory_reservation = args
        .node_memory_reservation
        .unwrap_or(DEFAULT_MEMORY_RESERVATION.min(args.node_memory));
    if memory_reservation > args.node_memory {
        return Err(ConfigError::Reservation {
            flag: "--node-memory-reservation",
            allowed: "at most --node-memory",
            given: format!("{memory_reservation} bytes"),
        });
    }
    let advertise_url = args
        .advertise_url
        .as_deref()
        .map(advertise_url)
        .transpose()?;
    let constraints = args
        .placement_constraints
        .iter()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .map(|c| {
            let well_formed = ["==", "!="].iter().any(|op| {
                c.split_once(op)
                    .is_some_and(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty())
            });
            if well_formed {
                Ok(c)
            } else {
                Err(ConfigError::Constraint(c))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spread = match args.placement_spread.trim() {
        "" | "none" => None,
        descriptor => Some(descriptor.to_owned()),
    };
    Ok(SwarmSettings {
        advertise_url,
        node_image: args.node_image.clone().filter(|i| !i.trim().is_empty()),
        constraints,
        spread,
        cpu_reservation,
        memory_reservation,
    })
}

/// `http://host:port` (or `https://`), with nothing after it: what nodes
/// are given as their control plane's address.
fn advertise_url(value: &str) -> Result<String, ConfigError> {
    let err = |problem| ConfigError::AdvertiseUrl {
        value: value.to_owned(),
        problem,
    };
    let uri: http::Uri = value.parse().map_err(|_| err("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(err("the scheme must be http or https"));
    }
    let authority = uri.authority().ok_or_else(|| err("it names no host"))?;
    if authority.host().is_empty() {
        return Err(err("it names no host"));
    }
    if authority.as_str().contains('@') {
        return Err(err("it may not carry credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(err("it may not have a path or a query"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(err("0.0.0.0 and :: are not addresses to reach"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// The port's limits, each in its range.
fn port(args: &ServeArgs) -> Result<(ConnectionLimits, ServingSettings), ConfigError> {
    let short = |flag, given: Duration| {
        (given < Duration::from_millis(10)).then(|| ConfigError::PortLimit {
            flag,
            allowed: "at least 10ms",
            given: format!("{given:?}"),
        })
    };
    let durations = [
        ("--idle-connection-timeout", args.idle_connection_timeout),
        ("--header-read-timeout", args.header_read_timeout),
        ("--keepalive-interval", args.keepalive_interval),
        ("--keepalive-timeout", args.keepalive_timeout),
        ("--rpc-timeout", args.rpc_timeout),
    ];
    if let Some(err) = durations.into_iter().find_map(|(flag, d)| short(flag, d)) {
        return Err(err);
    }
    if args.header_read_timeout > MAX_HEADER_READ_TIMEOUT {
        return Err(ConfigError::PortLimit {
            flag: "--header-read-timeout",
            allowed: "at most 30s (the HTTP library's own limit)",
            given: format!("{:?}", args.header_read_timeout),
        });
    }
    for (flag, value) in [
        ("--max-connections", args.max_connections.unwrap_or(1)),
        (
            "--max-streams-per-connection",
            args.max_streams_per_connection,
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::PortLimit {
                flag,
                allowed: "at least 1",
                given: "0".to_owned(),
            });
        }
    }
    Ok((
        ConnectionLimits {
            max_connections: args.max_connections.map(|n| n as usize),
            idle_timeout: args.idle_connection_timeout,
            header_timeout: args.header_read_timeout,
        },
        ServingSettings {
            rpc_timeout: args.rpc_timeout,
            shed_lag: args.shed_lag,
            auth_failure_limit: args.auth_failure_limit,
            max_streams: args.max_streams_per_connection,
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
        },
    ))
}

/// Longest `--header-read-timeout`: hyper closes a request whose head takes
/// longer anyway.
const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The line protocol's settings, if `--indexer-listen` is given: on
/// loopback unless allowed beyond, each limit in its range.
fn indexer(args: &ServeArgs) -> Result<Option<IndexerConfig>, ConfigError> {
    let Some(listen) = args.indexer_listen else {
        return Ok(None);
    };
    if !is_loopback(listen.ip()) && !args.indexer_allow_remote {
        return Err(ConfigError::IndexerBeyondLoopback(listen));
    }
    if args.indexer_read_timeout < Duration::from_millis(10) {
        return Err(ConfigError::IndexerLimit {
            flag: "--indexer-read-timeout",
            allowed: "at least 10ms",
            given: format!("{:?}", args.indexer_read_timeout),
        });
    }
    let max_line = match usize::try_from(args.indexer_max_line) {
        Ok(line) if (MIN_LINE..=MAX_LINE).contains(&line) => line,
        _ => {
            return Err(ConfigError::IndexerLimit {
                flag: "--indexer-max-line",
                allowed: "between 1KiB and 64MiB",
                given: format!("{} bytes", args.indexer_max_line),
            });
        }
    };
    if args.indexer_max_connections == 0 {
        return Err(ConfigError::IndexerLimit {
            flag: "--indexer-max-connections",
            allowed: "at least 1",
            given: "0".to_owned(),
        });
    }
    Ok(Some(IndexerConfig {
        listen,
        limits: IndexerLimits {
            read_timeout: args.indexer_read_timeout,
            max_line,
            max_connections: args.indexer_max_connections as usize,
        },
    }))
}

/// Shortest `--indexer-max-line`: room for a long name and then some.
const MIN_LINE: usize = 1 << 10;
/// Longest `--indexer-max-line`.
const MAX_LINE: usize = 64 << 20;

/// The browser policy of `args`: each origin and host name well-formed.
/// Empty values (`FARM_CORS_ORIGIN=`, a trailing comma) add nothing.
fn browser(args: &ServeArgs) -> Result<BrowserPolicy, ConfigError> {
    let given = |values: &[String]| {
        values
            .iter()
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .collect::<Vec<String>>()
    };
    let mut policy = BrowserPolicy::default();
    for value in given(&args.cors_origins) {
        if let Err(problem) = policy.trust_origin(&value) {
            return Err(ConfigError::CorsOrigin { value, problem });
        }
    }
    for value in given(&args.allowed_hosts) {
        if let Err(problem) = policy.allow_host(&value) {
            return Err(ConfigError::AllowedHost { value, problem });
        }
    }
    Ok(policy)
}

/// A role's token: given, or read from its file.
fn token_of(
    given: &Option<Token>,
    file: &Option<PathBuf>,
    flag: &'static str,
) -> Result<Option<Token>, ConfigError> {
    let Some(path) = file else {
        return Ok(given.clone());
    };
    let token = read_token_file(path).map_err(|e| ConfigError::TokenFile {
        flag,
        path: path.clone(),
        cause: e.to_string(),
    })?;
    Ok(Some(Token::new(&token)))
}

/// The tokens of `args`, each usable and distinct; none only on loopback.
fn tokens(args: &ServeArgs) -> Result<Tokens, ConfigError> {
    let admin = token_of(
        &args.admin_token,
        &args.admin_token_file,
        "--admin-token-file",
    )?;
    let node = token_of(&args.node_token, &args.node_token_file, "--node-token-file")?;
    let viewer = token_of(
        &args.viewer_token,
        &args.viewer_token_file,
        "--viewer-token-file",
    )?;
    let flags = [
        ("--admin-token", &admin),
        ("--node-token", &node),
        ("--viewer-token", &viewer),
    ];
    for (flag, token) in flags {
        if let Some(problem) = token.as_ref().and_then(Token::problem) {
            return Err(ConfigError::Token { flag, problem });
        }
    }
    for (i, (first, a)) in flags.iter().enumerate() {
        for (second, b) in &flags[i + 1..] {
            if let (Some(a), Some(b)) = (a, b)
                && a.same_as(b)
            {
                return Err(ConfigError::SameToken(first, second));
            }
        }
    }
    let tokens = Tokens {
        admin: admin.clone(),
        node: node.clone(),
        viewer: viewer.clone(),
    };
    if tokens.is_empty() && !is_loopback(args.listen.ip()) {
        return Err(ConfigError::OpenBeyondLoopback(args.listen));
    }
    if !tokens.is_empty() && tokens.node.is_none() && args.runtime != RuntimeKind::None {
        return Err(ConfigError::NoNodeToken);
    }
    Ok(tokens)
}

/// Whether only this machine can reach `ip` (127.0.0.0/8, ::1, and
/// 127.0.0.0/8 mapped into IPv6).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
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
    fn container_limits() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.docker.cpus, 0.5);
        assert_eq!(config.docker.memory, 128 << 20);
        assert_eq!(
            parse(&["--node-memory", "64m"]).expect("64m").docker.memory,
            64 << 20
        );
        assert_eq!(
            parse(&["--node-memory", "1GiB"])
                .expect("1GiB")
                .docker
                .memory,
            1 << 30
        );
        assert_eq!(
            parse(&["--node-memory", "100MB"])
                .expect("MB")
                .docker
                .memory,
            100_000_000
        );
        assert!(
            parse(&["--node-memory", "1m"])
                .unwrap_err()
                .contains("at least")
        );
        assert!(
            parse(&["--node-memory", "lots"])
                .unwrap_err()
                .contains("examples")
        );
        assert!(
            parse(&["--node-memory", "5parsecs"])
                .unwrap_err()
                .contains("unit")
        );
        assert!(
            parse(&["--node-cpus", "0"])
                .unwrap_err()
                .contains("--node-cpus")
        );
    }

    #[test]
    fn swarm_reservations_fit_the_limits_and_swarm_flags_stay_with_swarm() {
        let swarm = parse(&["--runtime", "swarm"]).expect("defaults").swarm;
        assert_eq!(swarm.cpu_reservation, 0.01);
        assert_eq!(swarm.memory_reservation, 16 << 20);
        assert_eq!(swarm.spread.as_deref(), Some("node.id"));
        // Small nodes get reservations no larger than their limits.
        let small = parse(&["--runtime", "swarm", "--node-memory", "8MiB"]).expect("8MiB");
        assert_eq!(small.swarm.memory_reservation, 8 << 20);
        // Other runtimes neither need nor check reservations.
        assert!(parse(&["--runtime", "docker", "--node-memory", "8MiB"]).is_ok());
        assert!(
            parse(&["--runtime", "swarm", "--node-memory-reservation", "1GiB"])
                .unwrap_err()
                .contains("at most --node-memory")
        );
        assert!(
            parse(&["--runtime", "swarm", "--node-cpu-reservation", "2"])
                .unwrap_err()
                .contains("--node-cpu-reservation")
        );
        for flag in [
            ["--node-cpu-reservation", "0.1"],
            ["--node-memory-reservation", "32MiB"],
            ["--node-image", "farm-node:1"],
            ["--placement-constraint", "node.role==worker"],
        ] {
            let error = parse(&["--runtime", "docker", flag[0], flag[1]]).unwrap_err();
            assert!(error.contains("--runtime swarm only"), "{error}");
        }
        assert!(
            parse(&["--runtime", "swarm", "--placement-constraint", "node.role"])
                .unwrap_err()
                .contains("node.role")
        );
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

    #[test]
    fn the_port_has_limits_by_default_and_refuses_ones_that_cannot_work() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(
            config.connections,
            ConnectionLimits {
                max_connections: None,
                idle_timeout: Duration::from_secs(10),
                header_timeout: Duration::from_secs(10),
            }
        );
        assert_eq!(
            config.serving,
            ServingSettings {
                rpc_timeout: Duration::from_secs(30),
                shed_lag: Duration::from_millis(50),
                auth_failure_limit: 100,
                max_streams: 1024,
                keepalive_interval: Duration::from_secs(10),
                keepalive_timeout: Duration::from_secs(5),
            }
        );
        let limit =
            |flag: &'static str, allowed: &'static str, given: &str| ConfigError::PortLimit {
                flag,
                allowed,
                given: given.to_owned(),
            };
        refused(
            &["--header-read-timeout", "31s"],
            limit(
                "--header-read-timeout",
                "at most 30s (the HTTP library's own limit)",
                "31s",
            ),
        );
        refused(
            &["--max-connections", "0"],
            limit("--max-connections", "at least 1", "0"),
        );
        refused(
            &["--max-streams-per-connection", "0"],
            limit("--max-streams-per-connection", "at least 1", "0"),
        );
        refused(
            &["--keepalive-timeout", "1ms"],
            limit("--keepalive-timeout", "at least 10ms", "1ms"),
        );
        let chosen = parse(&[
            "--max-connections",
            "300",
            "--idle-connection-timeout",
            "2s",
        ])
        .expect("chosen limits");
        assert_eq!(chosen.connections.max_connections, Some(300));
        assert_eq!(chosen.connections.idle_timeout, Duration::from_secs(2));
    }

    #[track_caller]
    fn refused(args: &[&str], want: ConfigError) {
        let cli = Cli::try_parse_from(["control-plane", "serve"].iter().chain(args))
            .expect("flags parse");
        let Command::Serve(args) = cli.command;
        let err = ServeConfig::try_from(&args).expect_err("must be refused");
        assert_eq!(err, want);
    }

    #[test]
    fn the_line_protocol_is_off_unless_asked_and_stays_on_loopback_unless_allowed() {
        assert!(parse(&[]).expect("defaults").indexer.is_none());
        let config = parse(&["--indexer-listen", "127.0.0.1:7000"]).expect("loopback");
        let indexer = config.indexer.expect("on");
        assert_eq!(indexer.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(
            indexer.limits,
            IndexerLimits {
                read_timeout: Duration::from_secs(30),
                max_line: 64 << 10,
                max_connections: 10_000,
            }
        );
        refused(
            &["--indexer-listen", "0.0.0.0:7000"],
            ConfigError::IndexerBeyondLoopback("0.0.0.0:7000".parse().expect("address")),
        );
        let err = parse(&["--indexer-listen", "[::]:7000"]).expect_err("beyond loopback");
        assert!(err.contains("--indexer-allow-remote"), "{err}");
        let allowed = parse(&[
            "--indexer-listen",
            "0.0.0.0:7000",
            "--indexer-allow-remote",
            "--indexer-read-timeout",
            "2s",
            "--indexer-max-line",
            "1KiB",
            "--indexer-max-connections",
            "5",
        ])
        .expect("allowed");
        assert_eq!(
            allowed.indexer.expect("on").limits,
            IndexerLimits {
                read_timeout: Duration::from_secs(2),
                max_line: 1024,
                max_connections: 5,
            }
        );
        for (flag, value) in [
            ("--indexer-read-timeout", "0s"),
            ("--indexer-max-line", "100"),
            ("--indexer-max-line", "1GiB"),
            ("--indexer-max-connections", "0"),
        ] {
            let err =
                parse(&["--indexer-listen", "127.0.0.1:0", flag, value]).expect_err("out of range");
            assert!(err.starts_with(flag), "{err}");
        }
    }

    #[test]
    fn loopback_needs_no_token() {
        for listen in [
            "127.0.0.1:50051",
            "127.9.8.7:0",
            "[::1]:0",
            "[::ffff:127.0.0.1]:0",
        ] {
            let config = parse(&["--listen", listen]).expect(listen);
            assert!(config.tokens.is_empty());
        }
    }

    #[test]
    fn listening_beyond_loopback_needs_a_token() {
        for listen in [
            "0.0.0.0:50051",
            "[::]:0",
            "192.168.1.10:0",
            "[::ffff:10.0.0.1]:0",
        ] {
            let args = ["--listen", listen];
            let err = parse(&args).expect_err(listen);
            assert!(err.contains("reachable from other machines"), "{err}");
            assert!(err.contains("--admin-token"), "{err}");
            refused(
                &args,
                ConfigError::OpenBeyondLoopback(listen.parse().expect("address")),
            );
        }
        let config = parse(&[
            "--listen",
            "0.0.0.0:50051",
            "--admin-token",
            "a",
            "--node-token",
            "n",
            "--viewer-token",
            "v",
        ])
        .expect("with tokens");
        assert!(config.tokens.admin.is_some() && config.tokens.node.is_some());
        // Any one token closes the API, so it is enough to listen widely
        // (with no nodes run here, which would need the node token).
        assert!(
            parse(&[
                "--listen",
                "0.0.0.0:0",
                "--runtime",
                "none",
                "--viewer-token",
                "v"
            ])
            .is_ok()
        );
    }

    #[test]
    fn tokens_come_from_files_as_secrets_give_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.to_str().expect("utf-8").to_owned()
        };
        let admin = file("admin", "admin-from-file\n");
        let node = file("node", "node-from-file");
        let config = parse(&[
            "--admin-token-file",
            &admin,
            "--node-token-file",
            &node,
            "--viewer-token",
            "viewer-given",
        ])
        .expect("tokens from files");
        let tokens = &config.tokens;
        assert!(
            tokens
                .admin
                .as_ref()
                .is_some_and(|t| t.same_as(&Token::new("admin-from-file"))),
            "one trailing newline is not the token's"
        );
        assert!(
            tokens
                .node
                .as_ref()
                .is_some_and(|t| t.same_as(&Token::new("node-from-file")))
        );
        let missing = parse(&["--admin-token-file", "/nonexistent/admin"]).expect_err("missing");
        assert!(
            missing.contains("--admin-token-file /nonexistent/admin: cannot read it"),
            "{missing}"
        );
        let both = parse(&["--admin-token", "a", "--admin-token-file", &admin]).expect_err("both");
        assert!(both.contains("cannot be used with"), "{both}");
        let empty = file("empty", "\n");
        let refused =
            parse(&["--viewer-token-file", &empty, "--node-token", "n"]).expect_err("empty");
        assert!(refused.contains("--viewer-token"), "{refused}");
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        refused(
            &["--admin-token", ""],
            ConfigError::Token {
                flag: "--admin-token",
                problem: "must not be empty",
            },
        );
        let err = parse(&["--viewer-token", "top secret", "--node-token", "n"]).expect_err("space");
        assert!(
            err.contains("--viewer-token") && !err.contains("top secret"),
            "{err}"
        );
        refused(
            &[
                "--admin-token",
                "same",
                "--node-token",
                "x",
                "--viewer-token",
                "same",
            ],
            ConfigError::SameToken("--admin-token", "--viewer-token"),
        );
        refused(
            &["--admin-token", "a", "--runtime", "process"],
            ConfigError::NoNodeToken,
        );
        assert!(parse(&["--admin-token", "a", "--runtime", "none"]).is_ok());

        let cli = Cli::try_parse_from([
            "control-plane",
            "serve",
            "--admin-token",
            "admin-secret",
            "--node-token",
            "node-secret",
        ])
        .expect("parse");
        let Command::Serve(args) = &cli.command;
        let config = ServeConfig::try_from(args).expect("config");
        let shown = format!("{cli:?} {config:?}");
        assert!(!shown.contains("-secret"), "{shown}");
        assert_eq!(
            config.tokens.node.as_ref().map(Token::expose),
            Some("node-secret")
        );
    }

    #[test]
    fn browser_flags_are_checked() {
        let err = parse(&["--cors-origin", "evil.example"]).expect_err("no scheme");
        assert!(
            err.contains("--cors-origin \"evil.example\"") && err.contains("no scheme"),
            "{err}"
        );
        let err = parse(&["--cors-origin", "http://a.example/app"]).expect_err("a path");
        assert!(err.contains("no path"), "{err}");
        let err = parse(&["--allowed-host", "farm.example:80"]).expect_err("a port");
        assert!(
            err.contains("--allowed-host") && err.contains("without a port"),
            "{err}"
        );

        let config = parse(&[]).expect("defaults");
        assert_eq!(config.browser, BrowserPolicy::default());
        assert!(!config.browser.any_origin());

        let mut want = BrowserPolicy::default();
        want.trust_origin("http://localhost:5173").expect("origin");
        want.trust_origin("https://farm.example").expect("origin");
        want.allow_host("farm.example").expect("host");
        want.allow_host("build-box").expect("host");
        // Repeated, or comma-separated as the variables hold them.
        let config = parse(&[
            "--cors-origin",
            "http://localhost:5173,https://farm.example",
            "--allowed-host",
            "farm.example",
            "--allowed-host",
            "build-box",
        ])
        .expect("valid");
        assert_eq!(config.browser, want);

        assert_eq!(
            parse(&["--cors-origin", "", "--allowed-host", ""])
                .expect("empty values add nothing")
                .browser,
            BrowserPolicy::default()
        );
        assert!(
            parse(&["--cors-origin", "*"])
                .expect("every origin")
                .browser
                .any_origin()
        );
    }
}
