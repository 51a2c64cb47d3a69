//! Command-line flags, each also read from a `FARM_NODE_*` environment
//! variable, validated into a [`NodeConfig`] before any I/O happens.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::Parser;
use thiserror::Error;

/// The farm's node agent: registers with a control plane, keeps a heartbeat
/// stream open, and serves `farm.v1.Workload`, `grpc.health.v1.Health` and
/// plain HTTP (`/`, `/health`, `/slow?ms=`, `/error/{code}`, `/data/{bytes}`)
/// on one port.
#[derive(Debug, Parser)]
#[command(name = "farm-node", version, about, long_about = None)]
pub struct NodeArgs {
    /// Control plane to register with, e.g. `http://127.0.0.1:50051`.
    #[arg(long, env = "FARM_NODE_CONTROL_PLANE")]
    pub control_plane: String,

    /// Address to serve on; port 0 picks a free port, and the bound address is
    /// what the node registers.
    #[arg(long, env = "FARM_NODE_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Address to register instead of the bound one (`HOST` or `HOST:PORT`;
    /// without a port the bound port is used). Needed when listening on
    /// 0.0.0.0 or behind a NAT.
    #[arg(long, env = "FARM_NODE_ADVERTISE")]
    pub advertise: Option<String>,

    /// Node name, unique in the farm: 1 to 63 characters of `[A-Za-z0-9._-]`.
    /// Default: the host name and the process id (`web-3-1234`).
    #[arg(long, env = "FARM_NODE_NAME")]
    pub name: Option<String>,

    /// Group (room) to join.
    #[arg(long, env = "FARM_NODE_GROUP", default_value = "default")]
    pub group: String,

    /// A label `KEY=VALUE` that discovery can filter on; the key follows the
    /// naming rule of `--name`. Repeatable, or comma-separated
    /// (`zone=eu-1,tier=web`, as `FARM_NODE_LABELS` holds them), so a value
    /// cannot hold a comma.
    #[arg(
        long = "label",
        value_name = "KEY=VALUE",
        env = "FARM_NODE_LABELS",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,

    /// Folder where the node keeps its identity (id and secret), so that a
    /// restarted node re-attaches under the same id, and the configuration
    /// it applied last (`config.json`), applied again at the next start
    /// before the control plane answers. Without it every start registers a
    /// new identity and starts unconfigured.
    #[arg(long, env = "FARM_NODE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bearer token sent to the control plane (its `node` role).
    #[arg(long, env = "FARM_NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// A file holding the bearer token instead (its trailing newline
    /// ignored), such as a Docker secret: `/run/secrets/NAME`.
    #[arg(
        long,
        value_name = "PATH",
        env = "FARM_NODE_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,

    /// Threads that run the node's work. One, the default, suits a farm:
    /// its nodes share the machine, and on one thread a node spends less
    /// CPU on each message (no hand-over between threads) and starts
    /// fewer threads. More let a node on its own use more cores.
    #[arg(long, env = "FARM_NODE_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
}

/// A flag value that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--control-plane` is not an `http://` or `https://` URL.
    #[error("--control-plane must be a URL such as http://127.0.0.1:50051, got {0:?}")]
    ControlPlaneUrl(String),
    /// `--name` breaks the naming rule.
    #[error("--name must be 1 to 63 characters of A-Z a-z 0-9 . _ -, got {0:?}")]
    Name(String),
    /// `--group` breaks the naming rule.
    #[error("--group must be 1 to 63 characters of A-Z a-z 0-9 . _ -, got {0:?}")]
    Group(String),
    /// `--advertise` is empty or has a bad port.
    #[error("--advertise must be HOST or HOST:PORT with a non-zero port, got {0:?}")]
    Advertise(String),
    /// A `--label` (or an item of `FARM_NODE_LABELS`) is not `KEY=VALUE`.
    #[error(
        "--label must be KEY=VALUE (several: k=v,k2=v2, as FARM_NODE_LABELS holds them), got {0:?}"
    )]
    Label(String),
    /// A label key breaks the naming rule.
    #[error("--label key must be 1 to 63 characters of A-Z a-z 0-9 . _ -, got {0:?}")]
    LabelKey(String),
    /// The same label key was given twice.
    #[error("--label {0} is given more than once")]
    DuplicateLabel(String),
    /// `--token` holds characters that cannot travel in a header.
    #[error("--token must be printable ASCII")]
    Token,
    /// `--token-file` cannot be read.
    #[error("cannot read --token-file {path}: {cause}")]
    TokenFile { path: PathBuf, cause: String },
}

/// Validated settings of a node.
#[derive(Clone)]
pub struct NodeConfig {
    /// Control plane URL.
    pub control_plane: String,
    /// Registered address: `None` means the bound address.
    pub advertise: Option<Advertise>,
    pub name: String,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    pub cache_dir: Option<PathBuf>,
    /// Bearer token, if the control plane asks for one.
    pub token: Option<String>,
    /// How `Workload.SetLogLevel` changes the log filter (set by the binary,
    /// which owns the logger).
    pub log_filter: Option<crate::workload::SetLogFilter>,
}

impl std::fmt::Debug for NodeConfig {
    /// Everything but the token, which is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("control_plane", &self.control_plane)
            .field("advertise", &self.advertise)
            .field("name", &self.name)
            .field("group", &self.group)
            .field("labels", &self.labels)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("log_filter", &self.log_filter.is_some())
            .finish()
    }
}

/// What `--advertise` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertise {
    /// A host; the bound port goes with it.
    Host(String),
    /// A full `host:port`.
    HostPort(String),
}

impl NodeConfig {
    /// Settings for a node named `name` in the default group, with no cache:
    /// what tests and embedders start from.
    pub fn new(control_plane: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            control_plane: control_plane.into(),
            advertise: None,
            name: name.into(),
            group: "default".to_owned(),
            labels: BTreeMap::new(),
            cache_dir: None,
            token: None,
            log_filter: None,
        }
    }

    /// The address to register, given the address the node is bound to and,
    /// for a wildcard bind, the local address of the route to the control
    /// plane (`None`: unknown, loopback is assumed).
    pub fn registered_address(&self, bound: SocketAddr, route: Option<IpAddr>) -> String {
        match &self.advertise {
            Some(Advertise::HostPort(address)) => address.clone(),
            Some(Advertise::Host(host)) => format!("{host}:{}", bound.port()),
            None if bound.ip().is_unspecified() => {
                // The address the control plane sees this node come from is
                // one it (and its other clients) can reach it at: the
                // container's address on its network, say.
                let ip = route
                    .filter(|ip| !ip.is_unspecified())
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                SocketAddr::new(ip, bound.port()).to_string()
            }
            None => bound.to_string(),
        }
    }

    /// `host:port` of the control plane URL.
    pub fn control_plane_authority(&self) -> &str {
        let rest = self
            .control_plane
            .split_once("://")
            .map_or(self.control_plane.as_str(), |(_, rest)| rest);
        rest.split('/').next().unwrap_or(rest)
    }
}

/// `<hostname>-<pid>`: unique among processes of one machine, and among
/// containers (whose processes are all pid 1, but whose hostnames differ).
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let host = if host.is_empty() { "node" } else { &host };
    format!("{host}-{}", std::process::id())
}

fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl NodeArgs {
    /// Reads `--token-file` into the token, the one flag that needs I/O
    /// before the rest is validated.
    pub fn read_token_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.token_file.take() else {
            return Ok(());
        };
        let token = farm_api::cli::read_token_file(&path).map_err(|e| ConfigError::TokenFile {
            path: path.clone(),
            cause: e.to_string(),
        })?;
        self.token = Some(token);
        Ok(())
    }
}

impl TryFrom<NodeArgs> for NodeConfig {
    type Error = ConfigError;

    fn try_from(args: NodeArgs) -> Result<Self, ConfigError> {
        let url = args.control_plane.trim_end_matches('/').to_owned();
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            return Err(ConfigError::ControlPlaneUrl(args.control_plane));
        }
        let name = args.name.unwrap_or_else(default_name);
        if !valid_name(&name) {
            return Err(ConfigError::Name(name));
        }
        if !valid_name(&args.group) {
            return Err(ConfigError::Group(args.group));
        }
        let advertise = args.advertise.map(parse_advertise).transpose()?;
        let labels = labels(&args.labels)?;
        let token = args.token.filter(|t| !t.is_empty());
        if token
            .as_deref()
            .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::Token);
        }
        Ok(Self {
            control_plane: url,
            advertise,
            name,
            group: args.group,
            labels,
            cache_dir: args.cache_dir,
            token,
            log_filter: None,
        })
    }
}

/// The labels of `--label` values: each `KEY=VALUE`, keys named as nodes
/// are and given once. Blank items (`FARM_NODE_LABELS=`, a trailing comma)
/// add nothing; blanks around an item are dropped.
fn labels(given: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut labels = BTreeMap::new();
    for item in given.iter().map(|item| item.trim()) {
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::Label(item.to_owned()))?;
        if !valid_name(key) {
            return Err(ConfigError::LabelKey(key.to_owned()));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(ConfigError::DuplicateLabel(key.to_owned()));
        }
    }
    Ok(labels)
}

fn parse_advertise(s: String) -> Result<Advertise, ConfigError> {
    if s.is_empty() {
        return Err(ConfigError::Advertise(s));
    }
    // `[v6]:port`, `host:port`, a bare v6 address, or a bare host.
    let port = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((_, port)) => Some(port),
            None if rest.ends_with(']') => None,
            None => return Err(ConfigError::Advertise(s)),
        }
    } else if s.matches(':').count() == 1 {
        s.split_once(':').map(|(_, port)| port)
    } else {
        None
    };
    match port {
        None => Ok(Advertise::Host(s)),
        Some(port) if port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(Advertise::HostPort(s)),
        Some(_) => Err(ConfigError::Advertise(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NodeConfig, ConfigError> {
        let args = NodeArgs::try_parse_from(
            ["farm-node", "--control-plane", "http://127.0.0.1:50051"]
                .iter()
                .chain(args),
        )
        .expect("flags parse");
        NodeConfig::try_from(args)
    }

    #[test]
    fn defaults() {
        let config = parse(&["--name", "a"]).expect("valid");
        assert_eq!(config.group, "default");
        assert_eq!(config.control_plane, "http://127.0.0.1:50051");
        let bound: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(config.registered_address(bound, None), "127.0.0.1:4000");
        let any: SocketAddr = "0.0.0.0:4000".parse().expect("addr");
        assert_eq!(config.registered_address(any, None), "127.0.0.1:4000");
        let route = "172.18.0.5".parse().ok();
        assert_eq!(config.registered_address(any, route), "172.18.0.5:4000");
        assert_eq!(config.control_plane_authority(), "127.0.0.1:50051");
        let unnamed = NodeConfig::try_from(
            NodeArgs::try_parse_from(["farm-node", "--control-plane", "http://cp:1/"])
                .expect("flags"),
        )
        .expect("valid");
        assert!(valid_name(&unnamed.name), "{}", unnamed.name);
        assert!(unnamed.name.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(unnamed.control_plane_authority(), "cp:1");
    }

    #[test]
    fn labels_are_repeated_or_comma_separated() {
        let want = BTreeMap::from([
            ("tier".to_owned(), "web".to_owned()),
            ("zone".to_owned(), "eu-1".to_owned()),
            ("note".to_owned(), "a=b".to_owned()),
        ]);
        for args in [
            &[
                "--label",
                "zone=eu-1",
                "--label",
                "tier=web",
                "--label",
                "note=a=b",
            ][..],
            &["--label", "zone=eu-1,tier=web,note=a=b"],
            &["--label", " zone=eu-1 , tier=web,,note=a=b,"],
        ] {
            assert_eq!(parse(args).expect("valid").labels, want, "{args:?}");
        }
        assert!(parse(&["--label", ""]).expect("valid").labels.is_empty());
        assert_eq!(
            parse(&["--label", "empty="]).expect("valid").labels,
            BTreeMap::from([("empty".to_owned(), String::new())])
        );
    }

    #[test]
    fn the_token_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "from-a-file\n").expect("write");
        let path = path.to_str().expect("utf-8");
        let mut args = NodeArgs::try_parse_from([
            "farm-node",
            "--control-plane",
            "http://cp:1",
            "--token-file",
            path,
        ])
        .expect("flags");
        args.read_token_file().expect("read");
        let config = NodeConfig::try_from(args).expect("valid");
        assert_eq!(config.token.as_deref(), Some("from-a-file"));

        let mut missing = NodeArgs::try_parse_from([
            "farm-node",
            "--control-plane",
            "http://cp:1",
            "--token-file",
            "/nonexistent/token",
        ])
        .expect("flags");
        let err = missing.read_token_file().expect_err("no such file");
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
        assert!(
            NodeArgs::try_parse_from([
                "farm-node",
                "--control-plane",
                "http://cp:1",
                "--token",
                "t",
                "--token-file",
                path
            ])
            .is_err(),
            "one or the other"
        );
    }

    #[test]
    fn the_token_is_never_printed() {
        let config = parse(&["--token", "s3cret-value"]).expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret-value"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn advertise_forms() {
        let bound: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        let check = |flag: &str, want: &str| {
            let config = parse(&["--advertise", flag]).expect("valid");
            assert_eq!(config.registered_address(bound, None), want, "{flag}");
        };
        check("node-7", "node-7:7000");
        check("node-7:80", "node-7:80");
        check("[::1]:80", "[::1]:80");
        check("[::1]", "[::1]:7000");
        for bad in ["", "host:0", "host:x", "[::1"] {
            assert!(
                matches!(parse(&["--advertise", bad]), Err(ConfigError::Advertise(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_values() {
        #[track_caller]
        fn check(args: &[&str], want: fn(&ConfigError) -> bool) {
            let err = parse(args).expect_err("must be refused");
            assert!(want(&err), "{args:?} gave {err}");
        }
        check(&["--name", ""], |e| matches!(e, ConfigError::Name(_)));
        check(&["--name", "has space"], |e| {
            matches!(e, ConfigError::Name(_))
        });
        check(&["--name", &"x".repeat(64)], |e| {
            matches!(e, ConfigError::Name(_))
        });
        check(&["--group", "a/b"], |e| matches!(e, ConfigError::Group(_)));
        check(&["--label", "a=1", "--label", "a=2"], |e| {
            matches!(e, ConfigError::DuplicateLabel(_))
        });
        check(&["--token", "bad token"], |e| {
            matches!(e, ConfigError::Token)
        });
        let url = NodeArgs::try_parse_from(["farm-node", "--control-plane", "127.0.0.1:50051"])
            .expect("flags parse");
        assert!(matches!(
            NodeConfig::try_from(url),
            Err(ConfigError::ControlPlaneUrl(_))
        ));
        check(&["--label", "x"], |e| *e == ConfigError::Label("x".into()));
        check(&["--label", "=v"], |e| {
            *e == ConfigError::LabelKey("".into())
        });
        check(&["--label", "a b=v"], |e| {
            *e == ConfigError::LabelKey("a b".into())
        });
        check(&["--label", "a=1,a=2"], |e| {
            *e == ConfigError::DuplicateLabel("a".into())
        });
    }
}
