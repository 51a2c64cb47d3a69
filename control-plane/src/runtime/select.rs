//! Choosing and building the runtime the farm's nodes run on: Docker when
//! an engine answers (and a static `farm-node` is at hand for the image),
//! child processes otherwise, a Swarm service when asked, or none at all.

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    DockerError, DockerRuntime, DockerRuntimeConfig, InstanceEvent, ProcessRuntime,
    ProcessRuntimeConfig, Runtime, docker,
    swarm::{NodeImage, SwarmError, SwarmRuntime, SwarmRuntimeConfig},
};
use crate::config::{RuntimeKind, ServeConfig};

/// Process starts in flight at once (a process starts in about a millisecond).
const PROCESS_START_PARALLELISM: usize = 16;
/// Container creates and starts in flight at once: the engine serialises
/// much of the work, and more in flight only queues there.
const DOCKER_START_PARALLELISM: usize = 8;

/// Why no runtime could be set up.
#[derive(Debug, Error)]
pub enum SetupError {
    /// `--runtime process` (or the fallback) without a `farm-node` program.
    #[error(
        "the farm-node program was not found at {0}; build it with `cargo build --release -p farm-node` or pass --node-binary"
    )]
    NodeBinary(PathBuf),
    /// The Docker engine refused the farm's set-up.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The swarm refused the farm's set-up.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// `--node-image-binary` names a program that is not statically linked.
    #[error(
        "the node image needs a statically linked farm-node; {0} is not one (build one with scripts/build-static)"
    )]
    NotStatic(PathBuf),
    /// No static `farm-node` where one is looked for.
    #[error(
        "the node image needs a statically linked farm-node and none was found (looked at {0:?}); build one with scripts/build-static or pass --node-image-binary"
    )]
    NoStaticNode(Vec<PathBuf>),
    /// The farm id file could not be read or written.
    #[error("cannot keep the farm id in {path}: {source}")]
    FarmId {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The runtime the farm runs on.
pub(crate) struct RuntimeParts {
    pub(crate) nodes: Nodes,
    /// Where nodes reach the control plane when not through the listener's
    /// own address: the gateway of the farm's network.
    pub(crate) node_side: Option<IpAddr>,
}

/// Who runs the nodes.
pub(crate) enum Nodes {
    /// The supervisor, one slot at a time, through a runtime.
    Slots {
        runtime: Arc<dyn Runtime>,
        exits: mpsc::UnboundedReceiver<InstanceEvent>,
        /// Starts in flight at once.
        start_parallelism: usize,
    },
    /// Swarm, as the tasks of one service.
    Swarm(Arc<SwarmRuntime>),
}

impl RuntimeParts {
    /// Short name for logs and `GetStatus`: `process`, `docker`, `swarm`.
    pub(crate) fn name(&self) -> &'static str {
        match &self.nodes {
            Nodes::Slots { runtime, .. } => runtime.name(),
            Nodes::Swarm(_) => "swarm",
        }
    }
}

/// The runtime `config` asks for; `None` with `--runtime none`.
pub(crate) async fn build(config: &ServeConfig) -> Result<Option<RuntimeParts>, SetupError> {
    match config.runtime {
        RuntimeKind::None => Ok(None),
        RuntimeKind::Process => process_runtime(config).map(Some),
        RuntimeKind::Docker => {
            let binary = image_binary(config)?;
            docker_runtime(config, binary).await.map(Some)
        }
        RuntimeKind::Swarm => swarm_runtime(config).await.map(Some),
        RuntimeKind::Auto => {
            if let Err(err) = docker::connect(&config.docker.host).await {
                info!(cause = %err, "no Docker engine: nodes run as processes");
                return process_runtime(config).map(Some);
            }
            match image_binary(config) {
                Ok(binary) => docker_runtime(config, binary).await.map(Some),
                Err(err) => {
                    warn!(cause = %err, "a Docker engine answers, but nodes run as processes");
                    process_runtime(config).map(Some)
                }
            }
        }
    }
}

fn process_runtime(config: &ServeConfig) -> Result<RuntimeParts, SetupError> {
    let node_binary = match &config.node_binary {
        Some(path) => path.clone(),
        None => default_node_binary(),
    };
    if !node_binary.is_file() {
        return Err(SetupError::NodeBinary(node_binary));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = ProcessRuntime::new(
        ProcessRuntimeConfig {
            node_binary,
            nodes_dir: config.data_dir.join("nodes"),
            node_token: config.tokens.node.clone(),
        },
        tx,
    );
    Ok(RuntimeParts {
        nodes: Nodes::Slots {
            runtime: Arc::new(runtime),
            exits: rx,
            start_parallelism: PROCESS_START_PARALLELISM,
        },
        node_side: None,
    })
}

async fn docker_runtime(
    config: &ServeConfig,
    node_binary: PathBuf,
) -> Result<RuntimeParts, SetupError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = DockerRuntime::start(
        DockerRuntimeConfig {
            host: config.docker.host.clone(),
            node_binary,
            nodes_dir: config.data_dir.join("nodes"),
            farm_id: farm_id(&config.data_dir)?,
            cpus: config.docker.cpus,
            memory: config.docker.memory,
            node_token: config.tokens.node.clone(),
        },
        tx,
    )
    .await?;
    let gateway = runtime.gateway();
    Ok(RuntimeParts {
        nodes: Nodes::Slots {
            runtime: Arc::new(runtime),
            exits: rx,
            start_parallelism: DOCKER_START_PARALLELISM,
        },
        node_side: Some(gateway),
    })
}

async fn swarm_runtime(config: &ServeConfig) -> Result<RuntimeParts, SetupError> {
    let image = match &config.swarm.node_image {
        Some(image) => NodeImage::Named(image.clone()),
        None => NodeImage::Build(image_binary(config)?),
    };
    let runtime = SwarmRuntime::start(SwarmRuntimeConfig {
        host: config.docker.host.clone(),
        farm_id: farm_id(&config.data_dir)?,
        image,
        cpus: config.docker.cpus,
        memory: config.docker.memory,
        cpu_reservation: config.swarm.cpu_reservation,
        memory_reservation: config.swarm.memory_reservation,
        constraints: config.swarm.constraints.clone(),
        spread: config.swarm.spread.clone(),
        node_token: config.tokens.node.clone(),
        stop_grace: config.stop_grace,
    })
    .await?;
    // With --advertise-url, nodes dial that; else this host's gateway
    // bridge.
    let node_side = config
        .swarm
        .advertise_url
        .is_none()
        .then(|| runtime.gateway());
    Ok(RuntimeParts {
        nodes: Nodes::Swarm(Arc::new(runtime)),
        node_side,
    })
}

/// The statically linked farm-node the node image is built from.
fn image_binary(config: &ServeConfig) -> Result<PathBuf, SetupError> {
    if let Some(path) = &config.docker.image_binary {
        return if docker::is_static_executable(path) {
            Ok(path.clone())
        } else {
            Err(SetupError::NotStatic(path.clone()))
        };
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_default();
    // Next to this program, then where scripts/build-static puts it.
    let target = exe_dir.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        exe_dir.join("farm-node"),
        target.join("x86_64-unknown-linux-gnu/container/farm-node"),
        exe_dir.join("../x86_64-unknown-linux-gnu/container/farm-node"),
    ];
    candidates
        .iter()
        .find(|path| docker::is_static_executable(path))
        .cloned()
        .ok_or_else(|| SetupError::NoStaticNode(candidates.to_vec()))
}

/// This farm's id: made up once, then kept in the data folder, so a
/// restarted control plane recognises its containers.
fn farm_id(data_dir: &std::path::Path) -> Result<String, SetupError> {
    let path = data_dir.join("farm-id");
    let err = |source| SetupError::FarmId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Ok(id.to_owned());
            }
            Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{id:?} is not a farm id (1 to 32 of a-z 0-9)"),
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:08x}", rand::random::<u32>());
            std::fs::write(&path, format!("{id}\n")).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

/// `farm-node` next to this executable, where cargo puts it.
fn default_node_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("farm-node")))
        .unwrap_or_else(|| PathBuf::from("farm-node"))
}
