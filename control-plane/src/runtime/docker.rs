//! The Docker runtime: each node is a container, driven through the Docker
//! Engine API (bollard).
//!
//! - The image is built by the runtime itself when missing: the statically
//!   linked `farm-node` in an image from scratch, through the engine's build
//!   endpoint. Nothing is pulled. Its tag carries a digest of the binary, so
//!   a new binary gets a new image.
//! - Every container and the farm's network carry the labels
//!   `farm.managed=true` and `farm.id=<farm id>` (and `farm.slot`); adoption,
//!   events and clean-up only ever look at that farm id, so other containers
//!   on the engine are never touched.
//! - Nodes run on a bridge network of the farm's own and reach the control
//!   plane on the network's gateway address.
//! - Exits are learned from the engine's event stream (`die`, `oom`), not by
//!   polling; if that stream breaks, it is reopened and the containers are
//!   listed to catch what was missed.
//! - An engine that stops answering (stopped, restarting, hung) is reported
//!   as gone, and as back once it answers again and the exits it took with
//!   it are reported; the supervisor waits for it meanwhile.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Read,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use bollard::{
    Docker, body_full,
    errors::Error as BollardError,
    models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest},
    query_parameters::{
        BuildImageOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder,
        KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
        RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    },
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{Instance, InstanceEvent, InstanceExit, InstanceSpec, Runtime, RuntimeError, Signal};
use crate::transport::auth::Token;

/// Label on everything the farm creates.
pub const MANAGED_LABEL: &str = "farm.managed";
/// Label naming the farm a container or network belongs to.
pub const FARM_LABEL: &str = "farm.id";
/// Label naming a container's slot.
pub const SLOT_LABEL: &str = "farm.slot";
/// Port nodes listen on inside their containers.
pub const NODE_PORT: u16 = 7000;
/// Tries, 100 ms apart, at removing the farm's network at shutdown.
const NETWORK_REMOVAL_TRIES: u32 = 100;
/// Where a node's slot folder is mounted in its container.
const CACHE_MOUNT: &str = "/cache";
/// How long any one engine request may take (builds and stops included).
const REQUEST_TIMEOUT_S: u64 = 120;
/// Pause before reopening a broken event stream of an engine that answers.
const EVENTS_RETRY: Duration = Duration::from_secs(1);
/// Pause between two pings of an engine that does not answer.
const ENGINE_PROBE: Duration = Duration::from_millis(500);
/// How often an engine whose event stream is quiet is pinged.
const ENGINE_CHECK: Duration = Duration::from_secs(5);
/// How long a ping may take before the engine counts as not answering.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerRuntimeConfig {
    /// Engine address: `unix:///var/run/docker.sock`, a socket path, or
    /// `tcp://host:port`.
    pub host: String,
    /// Statically linked `farm-node` for the image.
    pub node_binary: PathBuf,
    /// Parent of the per-slot folders, mounted as each node's cache.
    pub nodes_dir: PathBuf,
    /// This farm's id, in labels and names.
    pub farm_id: String,
    /// CPU limit of each node, in CPUs.
    pub cpus: f64,
    /// Memory limit of each node, in bytes.
    pub memory: u64,
    /// Token nodes register with (`FARM_NODE_TOKEN`), when tokens are set.
    pub node_token: Option<Token>,
}

/// Why the Docker runtime could not be set up.
#[derive(Debug, Error)]
pub enum DockerError {
    /// Nothing answered at the engine address.
    #[error("no Docker engine answers at {host}: {cause}")]
    Unreachable { host: String, cause: String },
    /// The node binary for the image could not be read.
    #[error("cannot read the node binary {path}: {cause}")]
    Binary { path: PathBuf, cause: String },
    /// The image build failed.
    #[error("cannot build the node image {tag}: {cause}")]
    Build { tag: String, cause: String },
    /// The farm's network could not be found or created.
    #[error("cannot set up the network {name}: {cause}")]
    Network { name: String, cause: String },
}

/// Connects to the engine at `host` and negotiates the API version (the
/// engine may be older, like Debian's 20.10, or refuse old versions, like
/// Docker 29).
pub async fn connect(host: &str) -> Result<Docker, DockerError> {
    let unreachable = |cause: String| DockerError::Unreachable {
        host: host.to_owned(),
        cause,
    };
    let docker = if let Some(addr) = host.strip_prefix("tcp://") {
        Docker::connect_with_http(
            &format!("http://{addr}"),
            REQUEST_TIMEOUT_S,
            bollard::API_DEFAULT_VERSION,
        )
    } else {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        if !Path::new(path).exists() {
            return Err(unreachable("no such socket".into()));
        }
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
    }
    .map_err(|e| unreachable(e.to_string()))?;
    let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
        .await
        .map_err(|_| unreachable("no answer within 5 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(Duration::from_secs(5), docker.ping())
        .await
        .map_err(|_| unreachable("no answer within 5 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// Whether `path` is an ELF executable with no program interpreter: one a
/// container from scratch can run.
pub fn is_static_executable(path: &Path) -> bool {
    fn check(path: &Path) -> Option<bool> {
        // The ELF header and program headers sit at the start of the file;
        // no need to read the whole binary.
        let mut bytes = Vec::new();
        fs::File::open(path)
            .ok()?
            .take(64 * 1024)
            .read_to_end(&mut bytes)
            .ok()?;
        let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        // 64-bit little-endian ELF only (the x86_64 build).
        if bytes.get(..6)? != b"\x7fELF\x02\x01" {
            return Some(false);
        }
        let phoff = usize::try_from(u64_at(0x20)?).ok()?;
        let phentsize = usize::from(u16_at(0x36)?);
        let phnum = usize::from(u16_at(0x38)?);
        const PT_INTERP: u32 = 3;
        for i in 0..phnum {
            if u32_at(phoff + i * phentsize)? == PT_INTERP {
                return Some(false);
            }
        }
        Some(true)
    }
    check(path).unwrap_or(false)
}

/// See the module docs.
#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    config: DockerRuntimeConfig,
    image: String,
    network: String,
    gateway: IpAddr,
    /// Containers this runtime started or adopted, by id → slot. An entry
    /// leaves when its `die` event is reported.
    known: Arc<Mutex<HashMap<String, String>>>,
    events: JoinHandle<()>,
}

impl Drop for DockerRuntime {
    fn drop(&mut self) {
        self.events.abort();
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: nothing to poison.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine answered 404.
pub(crate) fn is_not_found(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The engine answered 409 (a name in use) or 304 (nothing to do).
pub(crate) fn status_of(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerRuntime {
    /// Connects, makes sure the image and the network exist, and starts
    /// watching the engine's events. Every exit of this farm's containers is
    /// reported on `exits`.
    pub async fn start(
        config: DockerRuntimeConfig,
        exits: mpsc::UnboundedSender<InstanceEvent>,
    ) -> Result<Self, DockerError> {
        let docker = connect(&config.host).await?;
        let version = docker
            .version()
            .await
            .ok()
            .and_then(|v| v.version)
            .unwrap_or_else(|| "unknown".into());
        info!(host = %config.host, engine = %version, api = %docker.client_version(), "connected to the Docker engine");
        let image = ensure_image(&docker, &config.node_binary).await?.tag;
        let (network, gateway) = ensure_network(&docker, &config.farm_id).await?;
        let known: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let events = tokio::spawn(watch_events(
            docker.clone(),
            config.host.clone(),
            config.farm_id.clone(),
            Arc::clone(&known),
            exits,
        ));
        Ok(Self {
            docker,
            config,
            image,
            network,
            gateway,
            known,
            events,
        })
    }

    /// The address nodes reach the control plane at: the gateway of the
    /// farm's network.
    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    fn container_name(&self, slot: &str) -> String {
        format!("farm-{}-{slot}", self.config.farm_id)
    }

    fn labels(&self, slot: &str) -> HashMap<String, String> {
        HashMap::from([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            (FARM_LABEL.to_owned(), self.config.farm_id.clone()),
            (SLOT_LABEL.to_owned(), slot.to_owned()),
        ])
    }

    fn body(&self, spec: &InstanceSpec, cache: &Path) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(spec.slot.clone()),
            cmd: Some(vec![
                "--control-plane".into(),
                spec.control_plane.clone(),
                "--listen".into(),
                format!("0.0.0.0:{NODE_PORT}"),
                "--name".into(),
                spec.slot.clone(),
                "--group".into(),
                spec.group.clone(),
                "--cache-dir".into(),
                CACHE_MOUNT.into(),
            ]),
            labels: Some(self.labels(&spec.slot)),
            // In the environment rather than the command line.
            env: self
                .config
                .node_token
                .as_ref()
                .map(|token| vec![format!("FARM_NODE_TOKEN={}", token.expose())]),
            stop_signal: Some("SIGTERM".into()),
            host_config: Some(HostConfig {
                nano_cpus: Some((self.config.cpus * 1e9) as i64),
                memory: Some(i64::try_from(self.config.memory).unwrap_or(i64::MAX)),
                // No swap: the memory limit is the node's whole memory.
                memory_swap: Some(i64::try_from(self.config.memory).unwrap_or(i64::MAX)),
                network_mode: Some(self.network.clone()),
                binds: Some(vec![format!("{}:{CACHE_MOUNT}", cache.display())]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), BollardError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(err) if !is_not_found(&err) => Err(err),
            _ => Ok(()),
        }
    }

    async fn create(&self, spec: &InstanceSpec, cache: &Path) -> Result<String, BollardError> {
        let name = self.container_name(&spec.slot);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        match self
            .docker
            .create_container(Some(options.clone()), self.body(spec, cache))
            .await
        {
            Ok(created) => Ok(created.id),
            Err(err) if status_of(&err) == Some(409) => {
                // A container of this slot left behind (stopped, or by a
                // crash between create and start) is replaced; one that is
                // not this farm's is left alone.
                let owner = self
                    .docker
                    .inspect_container(&name, None)
                    .await?
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(FARM_LABEL).cloned());
                if owner.as_deref() != Some(self.config.farm_id.as_str()) {
                    return Err(err);
                }
                debug!(container = %name, "replacing a leftover container");
                self.remove_container(&name).await?;
                let created = self
                    .docker
                    .create_container(Some(options), self.body(spec, cache))
                    .await?;
                Ok(created.id)
            }
            Err(err) => Err(err),
        }
    }
}

/// The node image, as [`ensure_image`] found or built it.
#[derive(Debug, Clone)]
pub(crate) struct NodeImageRef {
    /// `farm-node:<digest of the binary>`.
    pub tag: String,
    /// The engine's id of it (`sha256:…`).
    pub id: String,
}

/// Digest-tagged image holding `binary` as `/farm-node`; built if missing.
pub(crate) async fn ensure_image(
    docker: &Docker,
    binary: &Path,
) -> Result<NodeImageRef, DockerError> {
    let read_err = |cause: String| DockerError::Binary {
        path: binary.to_owned(),
        cause,
    };
    let mut bytes = Vec::new();
    fs::File::open(binary)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| read_err(e.to_string()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let tag = format!("farm-node:{}", &digest[..16]);
    let build_err = |cause: String| DockerError::Build {
        tag: tag.clone(),
        cause,
    };
    let found = |id: Option<String>| {
        id.filter(|id| id.starts_with("sha256:"))
            .map(|id| NodeImageRef {
                tag: tag.clone(),
                id,
            })
            .ok_or_else(|| build_err("the engine gives it no id".into()))
    };
    if let Ok(image) = docker.inspect_image(&tag).await {
        debug!(image = %tag, "node image present");
        return found(image.id);
    }
    info!(image = %tag, binary = %binary.display(), "building the node image from scratch");
    let dockerfile = "FROM scratch\n\
                      COPY farm-node /farm-node\n\
                      EXPOSE 7000\n\
                      STOPSIGNAL SIGTERM\n\
                      ENTRYPOINT [\"/farm-node\"]\n";
    let context = build_context(&[
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("farm-node", &bytes, 0o755),
    ])
    .map_err(|e| build_err(format!("packing the build context: {e}")))?;
    let labels = HashMap::from([(MANAGED_LABEL, "true")]);
    let options = BuildImageOptionsBuilder::new()
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let mut progress = docker.build_image(options, None, Some(body_full(context.into())));
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| build_err(e.to_string()))?;
        if let Some(detail) = step.error_detail {
            return Err(build_err(detail.message.unwrap_or_default()));
        }
    }
    let image = docker
        .inspect_image(&tag)
        .await
        .map_err(|e| build_err(format!("the build finished but the image is missing: {e}")))?;
    info!(image = %tag, "node image built");
    found(image.id)
}

/// A tar archive of `(name, contents, mode)` entries.
fn build_context(files: &[(&str, &[u8], u32)]) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    for (name, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        archive.append_data(&mut header, name, *contents)?;
    }
    archive.into_inner()
}

/// The farm's bridge network (created if missing) and its gateway address.
async fn ensure_network(docker: &Docker, farm_id: &str) -> Result<(String, IpAddr), DockerError> {
    let name = format!("farm-{farm_id}");
    let err = |cause: String| DockerError::Network {
        name: name.clone(),
        cause,
    };
    let filters = HashMap::from([("label", vec![format!("{FARM_LABEL}={farm_id}")])]);
    let existing = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|e| err(e.to_string()))?;
    if !existing.iter().any(|n| n.name.as_deref() == Some(&name)) {
        info!(network = %name, "creating the farm's network");
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([
                (MANAGED_LABEL.to_owned(), "true".to_owned()),
                (FARM_LABEL.to_owned(), farm_id.to_owned()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => {}
            // Created meanwhile by someone else with the same farm id.
            Err(e) if status_of(&e) == Some(409) => {}
            Err(e) => return Err(err(e.to_string())),
        }
    }
    let network = docker
        .inspect_network(&name, None)
        .await
        .map_err(|e| err(e.to_string()))?;
    let gateway = network
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.gateway)
        .find_map(|g| g.parse::<IpAddr>().ok())
        .ok_or_else(|| err("the network has no gateway address".into()))?;
    Ok((name, gateway))
}

/// Whether the engine answers a ping in time; why not otherwise.
pub(crate) async fn ping(docker: &Docker) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
    }
}

/// Reports every `die` of this farm's known containers, with the reason,
/// and the engine going away and coming back.
///
/// The engine counts as gone when its event stream ends and a ping finds
/// nothing answering, or when a ping of a quiet stream goes unanswered (an
/// engine that hangs keeps its stream open). It is then pinged every
/// [`ENGINE_PROBE`]; once it answers, the stream is reopened, the exits
/// missed meanwhile are reported (an engine that stopped took its
/// containers with it, unless live-restore is on), and only then is the
/// engine reported back.
async fn watch_events(
    docker: Docker,
    host: String,
    farm_id: String,
    known: Arc<Mutex<HashMap<String, String>>>,
    exits: mpsc::UnboundedSender<InstanceEvent>,
) {
    let report = |id: &str, reason: String| {
        if let Some(slot) = lock(&known).remove(id) {
            let _ = exits.send(InstanceEvent::Exited(InstanceExit {
                slot,
                id: id.to_owned(),
                reason,
            }));
        }
    };
    // Why the engine is gone, as reported; `None` while it answers.
    let mut gone: Option<String> = None;
    let went = |gone: &mut Option<String>, cause: String| {
        if gone.is_none() {
            let reason = format!("the Docker engine at {host} does not answer: {cause}");
            warn!(host = %host, cause = %cause, "the Docker engine does not answer; waiting for it");
            let _ = exits.send(InstanceEvent::Engine {
                unavailable: Some(reason.clone()),
            });
            *gone = Some(reason);
        }
    };
    let mut oom_killed = HashSet::new();
    let mut first = true;
    loop {
        if gone.is_some()
            && let Err(cause) = ping(&docker).await
        {
            debug!(cause = %cause, "the Docker engine still does not answer");
            tokio::time::sleep(ENGINE_PROBE).await;
            continue;
        }
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![format!("{FARM_LABEL}={farm_id}")]),
            (
                "event",
                vec![
                    "die".to_owned(),
                    "oom".to_owned(),
                    "pause".to_owned(),
                    "unpause".to_owned(),
                ],
            ),
        ]);
        let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
        if !first {
            // Whatever died while the stream was down.
            let running = match running_containers(&docker, &farm_id).await {
                Ok(running) => running,
                Err(cause) => {
                    went(&mut gone, cause);
                    tokio::time::sleep(ENGINE_PROBE).await;
                    continue;
                }
            };
            let ids: Vec<String> = lock(&known).keys().cloned().collect();
            for id in ids.iter().filter(|id| !running.contains(*id)) {
                report(
                    id,
                    "exited while the engine's events were not watched".into(),
                );
            }
        }
        first = false;
        if gone.take().is_some() {
            info!(host = %host, "the Docker engine answers again");
            let _ = exits.send(InstanceEvent::Engine { unavailable: None });
        }
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + ENGINE_CHECK, ENGINE_CHECK);
        // Why the engine seems gone, if the stream's end says so.
        let broke = loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = check.tick() => match ping(&docker).await {
                    Ok(()) => continue,
                    Err(cause) => break Some(cause),
                },
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(err)) => {
                    warn!(cause = %err, "the engine's event stream broke");
                    break None;
                }
                None => {
                    debug!("the engine's event stream ended");
                    break None;
                }
            };
            let Some(actor) = event.actor else { continue };
            let Some(id) = actor.id else { continue };
            match event.action.as_deref() {
                Some("oom") => {
                    oom_killed.insert(id);
                }
                Some(action @ ("pause" | "unpause")) => {
                    if let Some(slot) = lock(&known).get(&id).cloned() {
                        let _ = exits.send(InstanceEvent::Paused {
                            slot,
                            id,
                            paused: action == "pause",
                        });
                    }
                }
                Some("die") => {
                    let code = actor
                        .attributes
                        .as_ref()
                        .and_then(|a| a.get("exitCode"))
                        .cloned()
                        .unwrap_or_else(|| "?".into());
                    let reason = if oom_killed.remove(&id) {
                        format!("OOM-killed (exit code {code})")
                    } else {
                        match code.as_str() {
                            "137" => "container killed (exit code 137, SIGKILL)".to_owned(),
                            _ => format!("container exited with code {code}"),
                        }
                    };
                    report(&id, reason);
                }
                _ => {}
            }
        };
        // The stream ended: the engine went away, or only the stream did.
        match broke.or(ping(&docker).await.err()) {
            Some(cause) => went(&mut gone, cause),
            None => tokio::time::sleep(EVENTS_RETRY).await,
        }
    }
}

/// Ids of this farm's running (or paused) containers; why not, if the
/// engine cannot be asked.
async fn running_containers(docker: &Docker, farm_id: &str) -> Result<HashSet<String>, String> {
    let filters = HashMap::from([("label", vec![format!("{FARM_LABEL}={farm_id}")])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| e.to_string())?;
    Ok(containers
        .into_iter()
        .filter(|c| {
            matches!(
                c.state,
                Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::PAUSED)
            )
        })
        .filter_map(|c| c.id)
        .collect())
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn adopt(&self) -> Vec<Instance> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{FARM_LABEL}={}", self.config.farm_id)],
        )]);
        let containers = match self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
        {
            Ok(containers) => containers,
            Err(err) => {
                warn!(cause = %err, "cannot list the farm's containers; adopting none");
                return Vec::new();
            }
        };
        let mut adopted = Vec::new();
        for container in containers {
            let Some(id) = container.id else { continue };
            let slot = container
                .labels
                .as_ref()
                .and_then(|l| l.get(SLOT_LABEL))
                .cloned();
            let live = matches!(
                container.state,
                Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::PAUSED)
            );
            match slot {
                Some(slot) if live => {
                    info!(slot = %slot, container = %&id[..12.min(id.len())], "adopted running container");
                    lock(&self.known).insert(id.clone(), slot.clone());
                    adopted.push(Instance { slot, id });
                }
                _ => {
                    debug!(container = %id, "removing a stopped container of this farm");
                    if let Err(err) = self.remove_container(&id).await {
                        warn!(container = %id, cause = %err, "cannot remove a stopped container");
                    }
                }
            }
        }
        adopted
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let err = |cause: String| RuntimeError::Start {
            slot: spec.slot.clone(),
            cause,
        };
        let cache = self.config.nodes_dir.join(&spec.slot);
        fs::create_dir_all(&cache)
            .map_err(|e| err(format!("creating {}: {e}", cache.display())))?;
        let cache = fs::canonicalize(&cache)
            .map_err(|e| err(format!("resolving {}: {e}", cache.display())))?;
        let name = self.container_name(&spec.slot);
        let id = self
            .create(spec, &cache)
            .await
            .map_err(|e| err(format!("creating container {name}: {e}")))?;
        // Known before it starts, so that even an instant death is reported.
        lock(&self.known).insert(id.clone(), spec.slot.clone());
        if let Err(e) = self.docker.start_container(&id, None).await {
            lock(&self.known).remove(&id);
            if let Err(cleanup) = self.remove_container(&id).await {
                warn!(container = %name, cause = %cleanup, "cannot remove a container that failed to start");
            }
            return Err(err(format!("starting container {name}: {e}")));
        }
        debug!(slot = %spec.slot, container = %name, "started node container");
        Ok(Instance {
            slot: spec.slot.clone(),
            id,
        })
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError> {
        let control_err = |cause: String| RuntimeError::Control {
            action: "stop",
            slot: instance.slot.clone(),
            id: instance.id.clone(),
            cause,
        };
        // A paused container only acts on SIGTERM once it runs again.
        let _ = self.docker.unpause_container(&instance.id).await;
        let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        match self
            .docker
            .stop_container(&instance.id, Some(options))
            .await
        {
            // 304: already stopped; 404: already gone.
            Err(e) if !matches!(status_of(&e), Some(304 | 404)) => {
                return Err(control_err(e.to_string()));
            }
            _ => {}
        }
        self.remove_container(&instance.id)
            .await
            .map_err(|e| control_err(format!("removing: {e}")))
    }

    async fn signal(&self, instance: &Instance, signal: Signal) -> Result<(), RuntimeError> {
        let (action, result) = match signal {
            Signal::Kill => (
                "kill",
                self.docker
                    .kill_container(
                        &instance.id,
                        Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
                    )
                    .await,
            ),
            Signal::Pause => ("pause", self.docker.pause_container(&instance.id).await),
            Signal::Unpause => ("unpause", self.docker.unpause_container(&instance.id).await),
        };
        result.map_err(|e| RuntimeError::Control {
            action,
            slot: instance.slot.clone(),
            id: instance.id.clone(),
            cause: e.to_string(),
        })
    }

    async fn remove(&self, slot: &str) -> Result<(), RuntimeError> {
        super::remove_slot_dir(&self.config.nodes_dir.join(slot), slot)
    }

    async fn close(&self) {
        // The network goes with the last container. The engine may still be
        // releasing the endpoints of containers just removed (seconds for
        // fifty on a loaded machine): retry a while.
        let name = &self.network;
        let mut last = None;
        for _ in 0..NETWORK_REMOVAL_TRIES {
            match self.docker.remove_network(name).await {
                Ok(()) => {
                    debug!(network = %name, "removed the farm's network");
                    return;
                }
                Err(err) if is_not_found(&err) => return,
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(err) = last {
            warn!(network = %name, cause = %err, "could not remove the farm's network");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_told_from_static_ones() {
        // The test binary itself links dynamically (no +crt-static here).
        let me = std::env::current_exe().expect("current exe");
        assert!(!is_static_executable(&me));
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("script");
        fs::write(&text, "#!/bin/sh\n").expect("write");
        assert!(!is_static_executable(&text));
        assert!(!is_static_executable(&dir.path().join("missing")));
    }

    #[test]
    fn build_context_is_a_tar_of_the_files() {
        let bytes = build_context(&[
            ("Dockerfile", b"FROM scratch\n", 0o644),
            ("bin", b"\x7fELF", 0o755),
        ])
        .expect("tar");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path().expect("path").display().to_string(),
                    e.header().mode().expect("mode"),
                    e.size(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("Dockerfile".to_owned(), 0o644, 13),
                ("bin".to_owned(), 0o755, 4)
            ]
        );
    }
}
