//! The `compose/` recipe: its file renders with the limits and labels the
//! product promises, and a real compose run of the control plane and a few
//! nodes (images from `compose/build-images`) answers a Rust client and grpcurl,
//! with the bearer tokens the recipe passes to the control plane and nodes.
//!
//! They need a Docker engine and `docker-compose` (Debian's, v1) or the
//! `docker compose` plugin (`FARM_COMPOSE="docker compose"` picks one). When
//! either is missing they are skipped with a message, unless
//! `FARM_REQUIRE_DOCKER=1` (set by `.ci/run`), where they fail. Traffic goes
//! only to 127.0.0.1 and to this test's own containers; every container,
//! network and volume of a run is removed afterwards, even when it fails.

mod common;

use std::{
    collections::BTreeSet,
    io::Read,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::healthy;
use farm_api::v1::{ListNodesRequest, NodeInfo, farm_client::FarmClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, transport::Endpoint};

/// The labels every container of the recipe carries.
const LABELS: [&str; 2] = ["farm.managed=true", "farm.compose=true"];
/// The port every node listens on inside its container.
const NODE_PORT: u16 = 7000;
/// The token variables the recipe reads (from the environment, else
/// `compose/.env`).
const TOKEN_VARS: [&str; 3] = ["FARM_ADMIN_TOKEN", "FARM_NODE_TOKEN", "FARM_VIEWER_TOKEN"];

fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}

/// Skips (returns `None`) with a message, or fails when Docker is required.
fn skip<T>(why: &str) -> Option<T> {
    assert!(
        !required("FARM_REQUIRE_DOCKER"),
        "FARM_REQUIRE_DOCKER=1 but {why}"
    );
    eprintln!("skipping: {why}");
    None
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn compose_file() -> PathBuf {
    root().join("compose/compose.yaml")
}

/// What a bounded command printed, and how it ended.
struct Ran {
    /// `None` when it was killed for running past its time limit.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The standard output of a command that must succeed.
    fn expect_ok(self, what: &str) -> String {
        assert!(
            self.ok(),
            "{what} failed ({}):\n{}\n{}",
            self.status
                .map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// Runs a command to its end or until `limit`, when it is killed. `Err` only
/// when it cannot start (a missing program: `NotFound`).
fn run(command: &mut Command, limit: Duration) -> std::io::Result<Ran> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait()? {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(50)),
        }
    };
    Ok(Ran {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn docker(args: &[&str], limit: Duration) -> Ran {
    run(Command::new("docker").args(args), limit).expect("run docker")
}

/// True when a Docker engine answers.
fn engine_answers() -> bool {
    run(
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(20),
    )
    .is_ok_and(|r| r.ok())
}

/// The compose command: `FARM_COMPOSE` if set (e.g. `docker compose`), else
/// `docker-compose`, else the `docker compose` plugin; `None` when none runs.
fn compose_command() -> Option<Vec<String>> {
    let candidates: Vec<Vec<String>> = match std::env::var("FARM_COMPOSE") {
        Ok(chosen) if !chosen.trim().is_empty() => {
            vec![chosen.split_whitespace().map(str::to_owned).collect()]
        }
        _ => vec![
            vec!["docker-compose".to_owned()],
            vec!["docker".to_owned(), "compose".to_owned()],
        ],
    };
    candidates.into_iter().find(|command| {
        let mut probe = Command::new(&command[0]);
        probe.args(&command[1..]).arg("version");
        run(&mut probe, Duration::from_secs(30)).is_ok_and(|r| {
            if r.ok() {
                let version = r.stdout.lines().next().unwrap_or_default();
                eprintln!("compose: {} ({version})", command.join(" "));
            }
            r.ok()
        })
    })
}

/// A compose command, and the calls of one project: every call names the
/// recipe's file and the project, with the file's defaults whatever the
/// caller's shell says, plus `env`.
struct Compose {
    command: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn new(command: Vec<String>, env: &[(&str, String)]) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            command,
            project: format!("farmtest{}x{nanos}", std::process::id()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn run(&self, args: &[&str], limit: Duration) -> Ran {
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .arg("-f")
            .arg(compose_file())
            .args(["-p", &self.project])
            .args(args)
            .env_remove("FARM_NODE_IMAGE")
            .env_remove("FARM_CONTROL_PLANE_IMAGE")
            .env_remove("FARM_NODE_GROUP")
            .env_remove(TOKEN_VARS[0])
            .env_remove(TOKEN_VARS[1])
            .env_remove(TOKEN_VARS[2])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        run(&mut command, limit).expect("run compose")
    }
}

/// A compose project that runs containers: dropping it removes every
/// container, network and volume it created, even when the test failed.
struct Project(Compose);

impl std::ops::Deref for Project {
    type Target = Compose;

    fn deref(&self) -> &Compose {
        &self.0
    }
}

impl Project {
    /// Ids of this project's containers carrying the recipe's labels, of one
    /// service or of all.
    fn containers(&self, service: Option<&str>) -> Vec<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let service = service.map(|s| format!("label=com.docker.compose.service={s}"));
        let labels = LABELS.map(|l| format!("label={l}"));
        let mut args = vec!["ps", "-aq", "--no-trunc", "--filter", &project];
        for label in labels.iter().chain(&service) {
            args.extend(["--filter", label]);
        }
        docker(&args, Duration::from_secs(30))
            .expect_ok("docker ps")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Removes every container, network and volume of the project.
    fn tear_down(&self) {
        let down = self.run(
            &["down", "-v", "--remove-orphans", "-t", "5"],
            Duration::from_secs(120),
        );
        if !down.ok() {
            eprintln!("compose down failed:\n{}\n{}", down.stdout, down.stderr);
        }
        // Whatever `down` missed, by label.
        let project = format!("label=com.docker.compose.project={}", self.project);
        for kind in ["container", "network", "volume"] {
            let mut list = vec![kind, "ls", "-q", "--filter", &project];
            if kind == "container" {
                list.push("-a");
            }
            let ids = docker(&list, Duration::from_secs(30)).stdout;
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() {
                continue;
            }
            let mut remove = vec![kind, "rm"];
            if kind != "network" {
                remove.push("-f");
            }
            remove.extend(ids);
            docker(&remove, Duration::from_secs(60));
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if thread::panicking() {
            let logs = self.run(
                &["logs", "--no-color", "--tail", "30"],
                Duration::from_secs(30),
            );
            eprintln!("compose logs:\n{}{}", logs.stdout, logs.stderr);
        }
        self.tear_down();
    }
}

// A small reader for the block-style YAML `compose config` prints.

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(s)
}

/// `key: value` of a mapping line (`value` empty for a nested block).
fn entry(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    let (key, value) = line
        .split_once(": ")
        .or_else(|| line.strip_suffix(':').map(|k| (k, "")))?;
    Some((unquote(key), unquote(value)))
}

/// The lines nested under the mapping keys of `path`.
fn section<'a>(yaml: &'a str, path: &[&str]) -> Vec<&'a str> {
    let mut lines: Vec<&str> = yaml.lines().filter(|l| !l.trim().is_empty()).collect();
    for key in path {
        let top = lines.iter().map(|l| indent(l)).min().unwrap_or(0);
        let Some(start) = lines
            .iter()
            .position(|l| indent(l) == top && entry(l).is_some_and(|(k, _)| k == *key))
        else {
            return Vec::new();
        };
        let rest = &lines[start + 1..];
        // A list may sit at its key's indentation.
        let end = rest
            .iter()
            .position(|l| {
                indent(l) < top || (indent(l) == top && !l.trim_start().starts_with("- "))
            })
            .unwrap_or(rest.len());
        lines = rest[..end].to_vec();
    }
    lines
}

/// The scalar at `path` (its last element a key), quotes removed.
fn scalar<'a>(yaml: &'a str, path: &[&str]) -> Option<&'a str> {
    let (key, parent) = path.split_last()?;
    let lines = if parent.is_empty() {
        yaml.lines().collect()
    } else {
        section(yaml, parent)
    };
    let top = lines.iter().map(|l| indent(l)).min()?;
    lines
        .iter()
        .filter(|l| indent(l) == top)
        .filter_map(|l| entry(l))
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `key=value` pairs of a mapping or a list of `key=value`.
fn labels(yaml: &str, path: &[&str]) -> BTreeSet<String> {
    section(yaml, path)
        .iter()
        .filter_map(|l| match l.trim().strip_prefix("- ") {
            Some(item) => Some(unquote(item).to_owned()),
            None => entry(l).map(|(k, v)| format!("{k}={v}")),
        })
        .collect()
}

/// Bytes of a compose memory size: `134217728`, `128m`, `128M`, `128mb`.
fn bytes(size: &str) -> Option<u64> {
    let size = size.trim().to_ascii_lowercase();
    let size = size.strip_suffix('b').unwrap_or(&size);
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match &size[digits.len()..] {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    digits.parse::<u64>().ok().map(|n| n * unit)
}

fn assert_recipe_labels(yaml: &str, service: &str) {
    let labels = labels(yaml, &["services", service, "labels"]);
    for label in LABELS {
        assert!(
            labels.contains(label),
            "{service} lacks label {label}: {labels:?}"
        );
    }
}

#[test]
fn the_compose_file_validates_with_limits_labels_and_a_local_port() {
    let Some(compose) =
        compose_command().or_else(|| skip("no compose runs (docker-compose or docker compose)"))
    else {
        return;
    };
    let yaml = Compose::new(compose, &[("FARM_PORT", "50123".to_owned())])
        .run(&["config"], Duration::from_secs(60))
        .expect_ok("compose config");

    let node = &["services", "node"];
    let cpus = scalar(&yaml, &[node[0], node[1], "cpus"]).expect("node cpus");
    assert_eq!(cpus.parse::<f64>().ok(), Some(0.5), "cpus: {cpus}\n{yaml}");
    let memory = scalar(&yaml, &[node[0], node[1], "mem_limit"]).expect("node mem_limit");
    assert_eq!(
        bytes(memory),
        Some(128 << 20),
        "mem_limit: {memory}\n{yaml}"
    );
    let scale = scalar(&yaml, &["services", "node", "scale"])
        .or_else(|| scalar(&yaml, &["services", "node", "deploy", "replicas"]));
    assert_eq!(scale, Some("50"), "fifty nodes by default:\n{yaml}");
    assert_eq!(
        scalar(
            &yaml,
            &["services", "node", "environment", "FARM_NODE_CONTROL_PLANE"]
        ),
        Some("http://control-plane:50051")
    );

    for service in ["control-plane", "node"] {
        assert_recipe_labels(&yaml, service);
        assert_eq!(
            scalar(&yaml, &["services", service, "pull_policy"]),
            Some("never"),
            "{service} must never be pulled:\n{yaml}"
        );
    }
    assert_eq!(
        scalar(&yaml, &["services", "node", "image"]),
        Some("farm-node:dev")
    );
    assert_eq!(
        scalar(&yaml, &["services", "control-plane", "image"]),
        Some("farm-control-plane:dev")
    );
    assert_eq!(
        scalar(
            &yaml,
            &["services", "control-plane", "environment", "FARM_RUNTIME"]
        ),
        Some("none")
    );

    // Published on loopback only, at FARM_PORT; node ports not at all.
    let ports = section(&yaml, &["services", "control-plane", "ports"]).join("\n");
    for part in ["127.0.0.1", "50123", "50051"] {
        assert!(ports.contains(part), "port lacks {part}:\n{ports}");
    }
    assert!(
        section(&yaml, &["services", "node", "ports"]).is_empty(),
        "node ports are not published:\n{yaml}"
    );

    // The data folder lives in a named volume.
    let volumes = section(&yaml, &["services", "control-plane", "volumes"]).join("\n");
    assert!(
        volumes.contains("data") && volumes.contains("/data"),
        "{volumes}"
    );
    assert!(
        !section(&yaml, &["volumes", "data"]).is_empty()
            || scalar(&yaml, &["volumes", "data"]).is_some(),
        "named volume `data`:\n{yaml}"
    );
}

/// The token variables of the control plane, and the node's node token.
fn tokens_of(yaml: &str) -> (Vec<String>, Option<String>) {
    let control_plane = TOKEN_VARS
        .iter()
        .map(|var| {
            scalar(yaml, &["services", "control-plane", "environment", var])
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let node = scalar(yaml, &["services", "node", "environment", TOKEN_VARS[1]]).map(str::to_owned);
    (control_plane, node)
}

#[test]
fn the_control_plane_and_nodes_get_tokens() {
    let Some(compose) =
        compose_command().or_else(|| skip("no compose runs (docker-compose or docker compose)"))
    else {
        return;
    };
    // The control plane listens on 0.0.0.0 in its container, so it needs
    // tokens: compose/.env gives examples, each role its own.
    let yaml = Compose::new(compose.clone(), &[])
        .run(&["config"], Duration::from_secs(60))
        .expect_ok("compose config");
    assert_eq!(
        scalar(
            &yaml,
            &["services", "control-plane", "environment", "FARM_LISTEN"]
        ),
        Some("0.0.0.0:50051")
    );
    let (tokens, node) = tokens_of(&yaml);
    assert!(tokens.iter().all(|t| !t.is_empty()), "{yaml}");
    assert_eq!(
        tokens.iter().collect::<BTreeSet<_>>().len(),
        3,
        "one token per role"
    );
    assert_eq!(node.as_ref(), Some(&tokens[1]), "nodes get the node token");

    // The environment wins over compose/.env.
    let env: Vec<(&str, String)> = TOKEN_VARS
        .iter()
        .map(|var| (*var, format!("{}-from-env", var.to_ascii_lowercase())))
        .collect();
    let yaml = Compose::new(compose.clone(), &env)
        .run(&["config"], Duration::from_secs(60))
        .expect_ok("compose config");
    let (tokens, node) = tokens_of(&yaml);
    let given: Vec<String> = env.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(tokens, given);
    assert_eq!(node.as_ref(), Some(&given[1]));

    // Without them anywhere, compose says which one is missing.
    let empty = tempfile::NamedTempFile::new().expect("empty env file");
    let empty = empty.path().to_str().expect("utf-8 path").to_owned();
    let refused =
        Compose::new(compose, &[]).run(&["--env-file", &empty, "config"], Duration::from_secs(60));
    assert!(
        !refused.ok(),
        "config without tokens must fail:\n{}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("FARM_ADMIN_TOKEN") || refused.stderr.contains("FARM_NODE_TOKEN"),
        "{}",
        refused.stderr
    );
}

/// Builds the images (cheap when the binaries did not change: cargo and the
/// build cache have nothing to do) and returns their sizes in bytes.
fn build_images() -> Vec<(String, u64)> {
    let started = Instant::now();
    let built = run(
        &mut Command::new(root().join("compose/build-images")),
        Duration::from_secs(20 * 60),
    )
    .expect("run compose/build-images");
    let listed = built.expect_ok("compose/build-images");
    eprintln!(
        "compose/build-images took {:.1?}:\n{}",
        started.elapsed(),
        listed.trim_end()
    );
    ["farm-node:dev", "farm-control-plane:dev"]
        .into_iter()
        .map(|image| {
            let size = docker(
                &["image", "inspect", "--format", "{{.Size}}", image],
                Duration::from_secs(30),
            )
            .expect_ok("docker image inspect");
            (image.to_owned(), size.trim().parse().expect("image size"))
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `IP:7000` of each of the project's node containers.
fn node_addresses(project: &Project) -> BTreeSet<SocketAddr> {
    project
        .containers(Some("node"))
        .iter()
        .map(|id| {
            let ip = docker(
                &[
                    "inspect",
                    "--format",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                    id,
                ],
                Duration::from_secs(30),
            )
            .expect_ok("docker inspect");
            let ip: IpAddr = ip
                .split_whitespace()
                .next()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or_else(|| panic!("container {id} has no IP: {ip:?}"));
            SocketAddr::new(ip, NODE_PORT)
        })
        .collect()
}

/// Lists the nodes of the control plane at `url`, as the holder of `token`
/// (none: without `authorization`).
async fn list_nodes(url: &str, token: Option<&str>) -> Result<Vec<NodeInfo>, tonic::Status> {
    let channel = Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut request = tonic::Request::new(ListNodesRequest::default());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    FarmClient::new(channel)
        .list_nodes(request)
        .await
        .map(|reply| reply.into_inner().nodes)
}

/// Waits until the control plane at `url` lists exactly `n` nodes, all
/// healthy (asked with the viewer's `token`).
async fn wait_healthy(url: &str, token: &str, n: usize, timeout: Duration) -> Vec<NodeInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match list_nodes(url, Some(token)).await {
            Ok(nodes) => {
                if nodes.len() == n && nodes.iter().all(healthy) {
                    return nodes;
                }
                format!("{nodes:#?}")
            }
            Err(status) => status.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "no {n} healthy nodes at {url} within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET path` over HTTP/1.1 on a node's port; returns the status line.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr} timed out"))
        .unwrap_or_else(|err| panic!("GET {path} on {addr}: {err}"));
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn addresses<'a>(found: impl IntoIterator<Item = &'a str>) -> BTreeSet<SocketAddr> {
    found
        .into_iter()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("not an IP:port: {a:?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_farm_comes_up_answers_grpcurl_and_scales() {
    let Some(compose) =
        compose_command().or_else(|| skip("no compose runs (docker-compose or docker compose)"))
    else {
        return;
    };
    if !engine_answers() {
        skip::<()>("no Docker engine answers");
        return;
    }

    let sizes = build_images();
    for (image, size) in &sizes {
        eprintln!("{image}: {:.1} MiB", *size as f64 / f64::from(1 << 20));
        assert!(
            *size < 64 << 20,
            "{image} is {size} bytes: a static binary from scratch"
        );
    }

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // Tokens of this run, through the environment (over compose/.env's).
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let [admin, node, viewer] = ["admin", "node", "viewer"].map(|role| format!("{role}-{nanos:x}"));
    let project = Project(Compose::new(
        compose,
        &[
            ("FARM_PORT", port.to_string()),
            (TOKEN_VARS[0], admin),
            (TOKEN_VARS[1], node),
            (TOKEN_VARS[2], viewer.clone()),
        ],
    ));
    let started = Instant::now();
    project
        .run(&["up", "-d", "--scale", "node=3"], Duration::from_secs(180))
        .expect_ok("compose up");
    let up = started.elapsed();
    // Nodes registered with the node token; reads need a token.
    let nodes = wait_healthy(&url, &viewer, 3, Duration::from_secs(60)).await;
    let refused = list_nodes(&url, None).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    eprintln!(
        "compose up -d --scale node=3: {up:.1?}; 3 nodes healthy after {:.1?}",
        started.elapsed()
    );

    // Each registered address is a node container's own IP and port.
    let containers = node_addresses(&project);
    assert_eq!(containers.len(), 3, "three node containers");
    assert_eq!(
        addresses(nodes.iter().map(|n| n.address.as_str())),
        containers,
        "registered addresses are the containers' IPs: {nodes:#?}"
    );
    let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), 3, "unique names: {names:?}");

    // Resource limits and labels are applied to the running containers.
    for id in project.containers(None) {
        let inspected = docker(
            &[
                "inspect",
                "--format",
                "{{index .Config.Labels \"com.docker.compose.service\"}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
                id.as_str(),
            ],
            Duration::from_secs(30),
        )
        .expect_ok("docker inspect");
        let fields: Vec<&str> = inspected.split_whitespace().collect();
        if fields.first() == Some(&"node") {
            assert_eq!(
                fields[1..],
                ["500000000", "134217728"],
                "0.5 CPU and 128 MiB per node"
            );
        }
    }
    assert_eq!(
        project.containers(None).len(),
        4,
        "a control plane and 3 nodes, labelled"
    );

    // The host reaches the nodes on their container IPs.
    for node in &containers {
        let status = http_get(*node, "/health").await;
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "{node}/health: {status}"
        );
    }

    // grpcurl, through reflection (open), on the published loopback port,
    // with the viewer's token.
    let target = format!("127.0.0.1:{port}");
    let authorization = format!("authorization: Bearer {viewer}");
    let grpcurl = run(
        Command::new("grpcurl").args([
            "-plaintext",
            "-max-time",
            "20",
            "-H",
            &authorization,
            "-d",
            r#"{"count":3}"#,
            &target,
            "farm.v1.Discovery/Discover",
        ]),
        Duration::from_secs(30),
    );
    match grpcurl {
        Err(err)
            if err.kind() == std::io::ErrorKind::NotFound && !required("FARM_REQUIRE_INTEROP") =>
        {
            eprintln!("skipping grpcurl: it is not installed (scripts/test installs it)");
        }
        ran => {
            let reply = ran.expect("run grpcurl").expect_ok("grpcurl Discover");
            let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
            let peers = reply["peers"].as_array().expect("peers");
            assert_eq!(peers.len(), 3, "{reply}");
            assert_eq!(
                addresses(
                    peers
                        .iter()
                        .map(|p| p["address"].as_str().expect("address"))
                ),
                containers,
                "{reply}"
            );
            for peer in peers {
                assert!(
                    peer["id"].as_str().is_some_and(|id| id.starts_with('n')),
                    "{peer}"
                );
            }
        }
    }

    // Scaling up adds nodes to the same farm.
    let scaling = Instant::now();
    project
        .run(&["up", "-d", "--scale", "node=5"], Duration::from_secs(180))
        .expect_ok("compose up --scale node=5");
    let nodes = wait_healthy(&url, &viewer, 5, Duration::from_secs(60)).await;
    eprintln!("scaled to 5 healthy nodes in {:.1?}", scaling.elapsed());
    assert_eq!(
        addresses(nodes.iter().map(|n| n.address.as_str())),
        node_addresses(&project)
    );

    let stopping = Instant::now();
    project.tear_down();
    eprintln!("compose down -v: {:.1?}", stopping.elapsed());
    assert!(
        project.containers(None).is_empty(),
        "no container is left after down"
    );
    let volumes = docker(
        &[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", project.project),
        ],
        Duration::from_secs(30),
    )
    .expect_ok("docker volume ls");
    assert!(volumes.trim().is_empty(), "volumes left: {volumes}");
}
