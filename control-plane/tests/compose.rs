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

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use farm_testkit::{
    Api, http, interop,
    process::{Ran, run_within},
    skip,
};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

/// The labels every container of the recipe carries.
const LABELS: [&str; 2] = ["farm.managed=true", "farm.compose=true"];
/// The port every node listens on inside its container.
const NODE_PORT: u16 = 7000;
/// The token variables the recipe reads (from the environment, else
/// `compose/.env`).
const TOKEN_VARS: [&str; 3] = ["FARM_ADMIN_TOKEN", "FARM_NODE_TOKEN", "FARM_VIEWER_TOKEN"];

/// Skips (returns `None`) with a message, or fails when Docker is required.
fn skip<T>(why: &str) -> Option<T> {
    skip::skip("FARM_REQUIRE_DOCKER", "compose", why);
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

fn docker(args: &[&str], limit: Duration) -> Ran {
    run_within(Command::new("docker").args(args), limit).expect("run docker")
}

/// True when a Docker engine answers.
fn engine_answers() -> bool {
    run_within(
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
        run_within(&mut probe, Duration::from_secs(30)).is_ok_and(|r| {
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
        run_within(&mut command, limit).expect("run compose")
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
    let built = run_within(
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

/// The clients of the control plane at `url` (published by compose, so
/// calls are bounded: it may be starting, or gone).
fn control_plane(url: &str) -> Api {
    let channel: Channel = Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    Api::new(channel)
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
    let as_viewer = control_plane(&url).with_token(Some(&viewer));
    let nodes = as_viewer.wait_healthy(3, Duration::from_secs(60)).await;
    let refused = control_plane(&url).try_nodes().await.expect_err("no token");
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
        let response = http::get(*node, "/health").await;
        assert_eq!(response.status, 200, "{node}/health: {response}");
    }

    // grpcurl, through reflection (open), on the published loopback port,
    // with the viewer's token.
    let target = format!("127.0.0.1:{port}");
    let authorization = format!("authorization: Bearer {viewer}");
    let grpcurl = run_within(
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
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !interop::required() => {
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
    let nodes = as_viewer.wait_healthy(5, Duration::from_secs(60)).await;
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
