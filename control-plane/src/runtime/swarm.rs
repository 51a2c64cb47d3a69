//! The Swarm runtime: the farm's nodes are the tasks of one replicated
//! Docker Swarm service, driven through the Engine API's services, tasks,
//! secrets and nodes endpoints (bollard). Swarm places the tasks on the
//! swarm's hosts and replaces those that end; the control plane keeps the
//! service's replica count at the farm's size and watches the tasks
//! (`supervisor::swarm`).
//!
//! - **Slots.** A task's slot is its node's name: `node-{{printf "%03s"
//!   .Task.Slot}}` in the service template gives `node-007`, as the other
//!   runtimes name their slots. Each slot keeps its identity cache in a
//!   volume of its own (`farm-<id>-node-7`) on the host its task runs on,
//!   so a task replaced on the same host re-attaches under the same id.
//! - **Labels.** The service, its network, its secret, its containers and
//!   its volumes carry `farm.managed=true` and `farm.id=<farm id>`;
//!   adoption and clean-up only ever look at that farm id.
//! - **Network.** An attachable overlay network of the farm's own. Tasks
//!   reach the control plane on the swarm's gateway bridge of their host
//!   (`docker_gwbridge`), or at `--advertise-url` when the swarm spans
//!   hosts.
//! - **The node token** reaches tasks as a Swarm secret
//!   (`/run/secrets/farm-node-token`, read through `FARM_NODE_TOKEN_FILE`),
//!   never in the service's environment. Secrets cannot change, so the
//!   secret's name carries a digest of the token: a new token is a new
//!   secret.
//! - **Restarts are Swarm's.** The restart policy is `any` with a short
//!   delay, and the control plane never starts a task itself: it only
//!   sets the replica count, and signals or stops a task's container for a
//!   `NodeAction`, after which Swarm replaces the task. The two never act
//!   on the same task.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bollard::{
    Docker,
    errors::Error as BollardError,
    models::{
        EndpointSpec, EndpointSpecModeEnum, Limit, LocalNodeState, Mount, MountType,
        MountVolumeOptions, NetworkAttachmentConfig, NetworkCreateRequest, ResourceObject,
        SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
        ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
        ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec,
        TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets, TaskSpecPlacement,
        TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
        TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
    },
    query_parameters::{
        EventsOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
        ListNetworksOptionsBuilder, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
        ListTasksOptionsBuilder, ListVolumesOptionsBuilder, StopContainerOptionsBuilder,
        UpdateServiceOptionsBuilder,
    },
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::docker::{
    self, DockerError, FARM_LABEL, MANAGED_LABEL, NODE_PORT, is_not_found, lock, status_of,
};
use crate::transport::auth::Token;

/// Where a node's identity cache is mounted in its task's container.
const CACHE_MOUNT: &str = "/cache";
/// Name of the token's file in a task (`/run/secrets/<this>`).
const TOKEN_FILE: &str = "farm-node-token";
/// The gateway bridge Swarm attaches every task to, for traffic that
/// leaves the swarm's networks.
const GATEWAY_BRIDGE: &str = "docker_gwbridge";
/// How long the removal of the service's containers is waited for at
/// shutdown, before the network and the volumes are removed.
const REMOVAL_WAIT: Duration = Duration::from_secs(60);
/// Tries at a change of the service whose version moved meanwhile.
const UPDATE_TRIES: u32 = 5;
/// How long Swarm waits before replacing a task that ended.
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// Settings of the Swarm runtime.
#[derive(Debug, Clone)]
pub struct SwarmRuntimeConfig {
    /// Engine address, as for the Docker runtime: a manager of the swarm.
    pub host: String,
    /// This farm's id, in labels and names.
    pub farm_id: String,
    /// The image the tasks run.
    pub image: NodeImage,
    /// CPU limit of each node, in CPUs.
    pub cpus: f64,
    /// Memory limit of each node, in bytes.
    pub memory: u64,
    /// CPUs reserved for each node when placing it (0: none).
    pub cpu_reservation: f64,
    /// Bytes reserved for each node when placing it (0: none).
    pub memory_reservation: u64,
    /// Placement constraints, as Swarm reads them.
    pub constraints: Vec<String>,
    /// Spread preference descriptor (`node.id`, `node.labels.zone`).
    pub spread: Option<String>,
    /// Token nodes register with, when tokens are set.
    pub node_token: Option<Token>,
    /// How long a stopping node may take before it is killed.
    pub stop_grace: Duration,
}

/// Where the node image comes from.
#[derive(Debug, Clone)]
pub enum NodeImage {
    /// Built on this engine from a static farm-node (a one-host swarm).
    Build(PathBuf),
    /// Named by the user: on this engine already, or in a registry every
    /// host can pull from.
    Named(String),
}

/// Why the Swarm runtime could not be set up, or a change of the service
/// failed.
#[derive(Debug, Error)]
pub enum SwarmError {
    /// The engine does not answer, or the image could not be built.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The engine is not a manager of a swarm.
    #[error(
        "--runtime swarm needs the Docker engine at {host} to be a swarm manager, and it is not ({state}). \
Make it the manager of a new one-host swarm with `docker swarm init --advertise-addr <an address of this host>` \
(127.0.0.1 will do for one host), or point --docker-host at a manager of your swarm. \
The control plane never creates or leaves a swarm by itself"
    )]
    NotManager { host: String, state: String },
    /// `--node-image` is neither on this engine nor in its registry.
    #[error(
        "the node image {image} does not resolve: it is not on this engine, and its registry says: {cause}. \
Push it to a registry every host of the swarm can pull from (see the README), or leave --node-image out on a one-host swarm"
    )]
    Image { image: String, cause: String },
    /// An engine request failed.
    #[error("cannot {action}: {cause}")]
    Engine { action: String, cause: String },
}

fn engine(action: impl Into<String>) -> impl FnOnce(BollardError) -> SwarmError {
    let action = action.into();
    move |err| SwarmError::Engine {
        action,
        cause: err.to_string(),
    }
}

/// One task of the farm's service, as the control plane reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub id: String,
    pub slot: u32,
    /// The Swarm node it is placed on (empty before placement).
    pub node_id: String,
    pub state: TaskState,
    /// Swarm wants it running (desired state `ready` or `running`); false
    /// once Swarm shuts it down, replaces it or removes it.
    pub live: bool,
    /// Swarm's words on its state (`started`, `task: non-zero exit (137)`).
    pub message: String,
    /// Its container, once it has one.
    pub container_id: Option<String>,
    /// Swarm's version of the task: a higher one was changed later.
    pub version: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct SwarmRuntime {
    docker: Docker,
    config: SwarmRuntimeConfig,
    image: String,
    /// The Swarm node id of this engine: tasks placed here are reached
    /// through their containers.
    local_node: String,
    /// Host names of the swarm's nodes, by id.
    hosts: Mutex<HashMap<String, String>>,
    gateway: IpAddr,
    /// Signalled when the engine reports a change to the farm's containers
    /// here, so the tasks are read again at once.
    changed: Arc<Notify>,
    events: tokio::task::JoinHandle<()>,
}

impl Drop for SwarmRuntime {
    fn drop(&mut self) {
        self.events.abort();
    }
}

impl SwarmRuntime {
    /// Connects, and checks that the engine is a swarm manager and that the
    /// image resolves (building it if it is the farm's own), and finds the
    /// gateway bridge's address. Nothing of the farm's is created until
    /// [`SwarmRuntime::deploy`], once the control plane's address is known
    /// and checked.
    pub async fn start(config: SwarmRuntimeConfig) -> Result<Self, SwarmError> {
        let docker = docker::connect(&config.host).await?;
        let info = docker
            .info()
            .await
            .map_err(engine("read the engine's state"))?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm.local_node_state.unwrap_or(LocalNodeState::EMPTY);
        if state != LocalNodeState::ACTIVE || swarm.control_available != Some(true) {
            let state = match state {
                LocalNodeState::ACTIVE => "it is a worker of a swarm".to_owned(),
                LocalNodeState::INACTIVE | LocalNodeState::EMPTY => {
                    "it is not part of a swarm".to_owned()
                }
                other => format!("its swarm state is {other}"),
            };
            return Err(SwarmError::NotManager {
                host: config.host.clone(),
                state,
            });
        }
        let local_node = swarm.node_id.unwrap_or_default();
        info!(
            host = %config.host,
            engine = %info.server_version.unwrap_or_default(),
            swarm_nodes = swarm.nodes.unwrap_or(0),
            managers = swarm.managers.unwrap_or(0),
            "connected to a swarm manager"
        );
        let image = match &config.image {
            // Named by id: Swarm's executor tries to pull an image named by
            // tag before every task, even one it has, but never one named
            // by id. So no engine of the swarm asks a registry for it;
            // `docker save` and `docker load` keep the id, so an image
            // copied to other hosts that way is found there too.
            NodeImage::Build(binary) => docker::ensure_image(&docker, binary).await?.id,
            NodeImage::Named(image) => {
                resolve_image(&docker, image).await?;
                image.clone()
            }
        };
        let gateway = gateway_bridge(&docker).await?;
        let changed = Arc::new(Notify::new());
        let events = tokio::spawn(watch_containers(
            docker.clone(),
            config.farm_id.clone(),
            Arc::clone(&changed),
        ));
        Ok(Self {
            docker,
            config,
            image,
            local_node,
            hosts: Mutex::default(),
            gateway,
            changed,
            events,
        })
    }

    /// Where this host's tasks reach the control plane: the gateway of the
    /// swarm's gateway bridge.
    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// The farm's service (and network, and secret) name.
    pub fn service_name(&self) -> String {
        format!("farm-{}", self.config.farm_id)
    }

    fn volume_name(&self, slot: u32) -> String {
        format!("farm-{}-node-{slot}", self.config.farm_id)
    }

    /// Wakes when the engine reports a change to the farm's containers on
    /// this host.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            (FARM_LABEL.to_owned(), self.config.farm_id.clone()),
        ])
    }

    fn label_filter(&self) -> HashMap<&'static str, Vec<String>> {
        HashMap::from([(
            "label",
            vec![format!("{FARM_LABEL}={}", self.config.farm_id)],
        )])
    }

    /// Creates the farm's network, secret and service with `replicas`
    /// tasks, or adopts the ones an earlier control plane left (found by
    /// its farm id) and brings the service's spec and replica count to this
    /// one's. Returns whether it adopted.
    pub async fn deploy(
        &self,
        control_plane: &str,
        group: &str,
        replicas: u32,
    ) -> Result<bool, SwarmError> {
        ensure_network(&self.docker, &self.config.farm_id).await?;
        let secret = match &self.config.node_token {
            Some(token) => Some(self.ensure_secret(token).await?),
            None => None,
        };
        let spec = self.spec(control_plane, group, replicas, secret.as_ref());
        let name = self.service_name();
        let existing = self
            .docker
            .list_services(Some(
                ListServicesOptionsBuilder::new()
                    .filters(&self.label_filter())
                    .build(),
            ))
            .await
            .map_err(engine("list the swarm's services"))?;
        let adopted = existing
            .iter()
            .any(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name.as_str()));
        if adopted {
            info!(service = %name, replicas, "adopting the farm's service");
            self.update(|current| {
                // A forced update counter set by hand is kept: resetting it
                // would replace every task.
                let force = current.task_template.as_ref().and_then(|t| t.force_update);
                let mut spec = spec.clone();
                if let Some(template) = spec.task_template.as_mut() {
                    template.force_update = force;
                }
                *current = spec;
            })
            .await?;
        } else {
            info!(service = %name, replicas, image = %self.image, "creating the farm's service");
            self.docker
                .create_service(spec, None)
                .await
                .map_err(engine(format!("create the service {name}")))?;
        }
        self.remove_stale_secrets(secret.as_ref().map(|(_, name)| name.as_str()))
            .await;
        Ok(adopted)
    }

    /// The service as this farm wants it.
    fn spec(
        &self,
        control_plane: &str,
        group: &str,
        replicas: u32,
        secret: Option<&(String, String)>,
    ) -> ServiceSpec {
        let c = &self.config;
        let name_template = r#"node-{{printf "%03s" .Task.Slot}}"#;
        let mut env = vec![
            format!("FARM_NODE_CONTROL_PLANE={control_plane}"),
            format!("FARM_NODE_LISTEN=0.0.0.0:{NODE_PORT}"),
            format!("FARM_NODE_NAME={name_template}"),
            format!("FARM_NODE_GROUP={group}"),
            format!("FARM_NODE_CACHE_DIR={CACHE_MOUNT}"),
        ];
        let secrets = secret.map(|(id, name)| {
            env.push(format!("FARM_NODE_TOKEN_FILE=/run/secrets/{TOKEN_FILE}"));
            vec![TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(TOKEN_FILE.to_owned()),
                    uid: Some("0".to_owned()),
                    gid: Some("0".to_owned()),
                    mode: Some(0o400),
                }),
                secret_id: Some(id.clone()),
                secret_name: Some(name.clone()),
            }]
        });
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        let placement = TaskSpecPlacement {
            constraints: (!c.constraints.is_empty()).then(|| c.constraints.clone()),
            preferences: c.spread.as_ref().map(|descriptor| {
                vec![TaskSpecPlacementPreferences {
                    spread: Some(TaskSpecPlacementSpread {
                        spread_descriptor: Some(descriptor.clone()),
                    }),
                }]
            }),
            ..Default::default()
        };
        ServiceSpec {
            name: Some(self.service_name()),
            labels: Some(self.labels()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(self.image.clone()),
                    labels: Some(self.labels()),
                    hostname: Some(name_template.to_owned()),
                    env: Some(env),
                    mounts: Some(vec![Mount {
                        target: Some(CACHE_MOUNT.to_owned()),
                        source: Some(format!("farm-{}-node-{{{{.Task.Slot}}}}", c.farm_id)),
                        typ: Some(MountType::VOLUME),
                        volume_options: Some(MountVolumeOptions {
                            labels: Some(self.labels()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    secrets,
                    stop_signal: Some("SIGTERM".to_owned()),
                    stop_grace_period: Some(nanos(c.stop_grace)),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some((c.cpus * 1e9) as i64),
                        memory_bytes: Some(bytes(c.memory)),
                        ..Default::default()
                    }),
                    reservations: Some(ResourceObject {
                        nano_cpus: Some((c.cpu_reservation * 1e9) as i64),
                        memory_bytes: Some(bytes(c.memory_reservation)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                // Swarm alone replaces tasks that end, whatever the cause;
                // the control plane never starts one.
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(nanos(RESTART_DELAY)),
                    max_attempts: Some(0),
                    window: Some(0),
                }),
                placement: Some(placement),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.service_name()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(i64::from(replicas)),
                }),
                ..Default::default()
            }),
            // A new image or setting replaces a tenth of the farm at a
            // time, each task stopped before its replacement starts (the
            // replacement takes over its slot's volume), and goes on past
            // a failed task: the control plane reports those.
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(i64::from(replicas.div_ceil(10).max(1))),
                delay: Some(0),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
                monitor: Some(nanos(Duration::from_secs(5))),
                max_failure_ratio: Some(1.0),
                order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
            }),
            // Nodes register their own addresses: no virtual IP needed.
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ports: None,
            }),
            ..Default::default()
        }
    }

    /// The secret holding `token`, created if missing: `(id, name)`.
    async fn ensure_secret(&self, token: &Token) -> Result<(String, String), SwarmError> {
        let digest = hex::encode(Sha256::digest(token.expose().as_bytes()));
        let name = format!("farm-{}-node-token-{}", self.config.farm_id, &digest[..12]);
        let existing = self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::new()
                    .filters(&HashMap::from([("name", vec![name.clone()])]))
                    .build(),
            ))
            .await
            .map_err(engine("list the swarm's secrets"))?;
        if let Some(id) = existing
            .into_iter()
            .find(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name.as_str()))
            .and_then(|s| s.id)
        {
            return Ok((id, name));
        }
        use base64::Engine as _;
        let created = self
            .docker
            .create_secret(SecretSpec {
                name: Some(name.clone()),
                labels: Some(self.labels()),
                data: Some(base64::engine::general_purpose::STANDARD.encode(token.expose())),
                ..Default::default()
            })
            .await
            .map_err(engine(format!("create the secret {name}")))?;
        debug!(secret = %name, "created the node token's secret");
        Ok((created.id, name))
    }

    /// Removes this farm's secrets other than `keep` (an earlier token's,
    /// once the service no longer uses it), or all of them.
    async fn remove_stale_secrets(&self, keep: Option<&str>) {
        let secrets = match self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::new()
                    .filters(&self.label_filter())
                    .build(),
            ))
            .await
        {
            Ok(secrets) => secrets,
            Err(err) => {
                warn!(cause = %err, "cannot list the farm's secrets");
                return;
            }
        };
        for secret in secrets {
            let name = secret.spec.and_then(|s| s.name).unwrap_or_default();
            if Some(name.as_str()) == keep {
                continue;
            }
            let Some(id) = secret.id else { continue };
            match self.docker.delete_secret(&id).await {
                Ok(()) => debug!(secret = %name, "removed a secret of this farm"),
                Err(err) if is_not_found(&err) => {}
                // In use by tasks still being replaced: the next start
                // removes it.
                Err(err) => debug!(secret = %name, cause = %err, "secret not removed yet"),
            }
        }
    }

    /// Reads the service, changes its spec with `change`, and writes it
    /// back; tried again when the service changed meanwhile.
    async fn update(&self, change: impl Fn(&mut ServiceSpec)) -> Result<(), SwarmError> {
        let name = self.service_name();
        let mut last = None;
        for _ in 0..UPDATE_TRIES {
            let service = self
                .docker
                .inspect_service(&name, None)
                .await
                .map_err(engine(format!("read the service {name}")))?;
            let version = service.version.and_then(|v| v.index).unwrap_or(0);
            let mut spec = service.spec.unwrap_or_default();
            change(&mut spec);
            let options = UpdateServiceOptionsBuilder::new()
                .version(i32::try_from(version).unwrap_or(i32::MAX))
                .build();
            match self.docker.update_service(&name, spec, options, None).await {
                Ok(_) => return Ok(()),
                // "update out of sequence": someone changed it meanwhile.
                Err(err)
                    if status_of(&err) == Some(500) && err.to_string().contains("sequence") =>
                {
                    last = Some(err);
                }
                Err(err) => return Err(engine(format!("update the service {name}"))(err)),
            }
        }
        Err(SwarmError::Engine {
            action: format!("update the service {name}"),
            cause: last.map_or_else(String::new, |e| e.to_string()),
        })
    }

    /// The service's replica count; `None` when the service is gone.
    pub async fn replicas(&self) -> Result<Option<u32>, SwarmError> {
        let name = self.service_name();
        match self.docker.inspect_service(&name, None).await {
            Ok(service) => Ok(Some(
                service
                    .spec
                    .and_then(|s| s.mode)
                    .and_then(|m| m.replicated)
                    .and_then(|r| r.replicas)
                    .and_then(|r| u32::try_from(r).ok())
                    .unwrap_or(0),
            )),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(engine(format!("read the service {name}"))(err)),
        }
    }

    /// Sets the service's replica count.
    pub async fn scale(&self, replicas: u32) -> Result<(), SwarmError> {
        self.update(|spec| {
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(i64::from(replicas)),
                }),
                ..Default::default()
            });
            if let Some(update) = spec.update_config.as_mut() {
                update.parallelism = Some(i64::from(replicas.div_ceil(10).max(1)));
            }
        })
        .await
    }

    /// Every task of the service Swarm still keeps, live or ended.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, SwarmError> {
        let filters = HashMap::from([("service", vec![self.service_name()])]);
        let tasks = self
            .docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(engine("list the service's tasks"))?;
        Ok(tasks
            .into_iter()
            .filter_map(|task| {
                let status = task.status.unwrap_or_default();
                let message = match status.err.filter(|e| !e.is_empty()) {
                    Some(err) => err,
                    None => status.message.unwrap_or_default(),
                };
                Some(TaskView {
                    id: task.id?,
                    slot: u32::try_from(task.slot?).ok()?,
                    node_id: task.node_id.unwrap_or_default(),
                    state: status.state.unwrap_or(TaskState::NEW),
                    live: matches!(
                        task.desired_state,
                        Some(TaskState::READY | TaskState::RUNNING)
                    ),
                    message,
                    container_id: status
                        .container_status
                        .and_then(|c| c.container_id)
                        .filter(|c| !c.is_empty()),
                    version: task.version.and_then(|v| v.index).unwrap_or(0),
                })
            })
            .collect())
    }

    /// The host name of the Swarm node `node_id`, asked of the swarm the
    /// first time.
    pub async fn host_of(&self, node_id: &str) -> String {
        if node_id.is_empty() {
            return String::new();
        }
        if let Some(host) = lock(&self.hosts).get(node_id) {
            return host.clone();
        }
        match self.docker.list_nodes(None).await {
            Ok(nodes) => {
                let mut hosts = lock(&self.hosts);
                for node in nodes {
                    if let (Some(id), Some(host)) =
                        (node.id, node.description.and_then(|d| d.hostname))
                    {
                        hosts.insert(id, host);
                    }
                }
                hosts.get(node_id).cloned().unwrap_or_default()
            }
            Err(err) => {
                debug!(cause = %err, "cannot list the swarm's nodes");
                String::new()
            }
        }
    }

    /// Whether `task` runs on this engine's host, where its container can
    /// be reached.
    pub fn is_local(&self, task: &TaskView) -> bool {
        task.node_id == self.local_node
    }

    /// Kills the container of a task on this host; Swarm replaces it.
    pub async fn kill(&self, container: &str) -> Result<(), BollardError> {
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        self.docker.kill_container(container, Some(options)).await
    }

    /// Stops the container of a task on this host (SIGTERM, then SIGKILL
    /// after the grace); Swarm replaces it.
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<(), BollardError> {
        let _ = self.docker.unpause_container(container).await;
        let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        match self.docker.stop_container(container, Some(options)).await {
            Err(err) if !matches!(status_of(&err), Some(304 | 404)) => Err(err),
            _ => Ok(()),
        }
    }

    /// Freezes or thaws the container of a task on this host.
    pub async fn pause(&self, container: &str, pause: bool) -> Result<(), BollardError> {
        if pause {
            self.docker.pause_container(container).await
        } else {
            self.docker.unpause_container(container).await
        }
    }

    /// Whether the engine answers; why not otherwise.
    pub async fn ping(&self) -> Result<(), String> {
        docker::ping(&self.docker).await
    }

    /// Removes a slot's volume on this host, once no container holds it
    /// (its task may still be stopping); a missing one is already gone.
    pub async fn remove_volume(&self, slot: u32) {
        let name = self.volume_name(slot);
        for _ in 0..50 {
            match self
                .docker
                .remove_volume(
                    &name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => {
                    debug!(volume = %name, "removed the slot's volume");
                    return;
                }
                Err(err) if is_not_found(&err) => return,
                // 409: still in use.
                Err(err) if status_of(&err) == Some(409) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => {
                    warn!(volume = %name, cause = %err, "cannot remove the slot's volume");
                    return;
                }
            }
        }
        warn!(volume = %name, "the slot's volume is still in use; left in place");
    }

    /// Removes the service, then, once its containers on this host are
    /// gone, the farm's network, secret and this host's volumes. Volumes on
    /// other hosts stay (the README says how to remove them). Never fails:
    /// leftovers are logged.
    pub async fn remove_all(&self) {
        let name = self.service_name();
        match self.docker.delete_service(&name).await {
            Ok(()) => info!(service = %name, "removed the farm's service"),
            Err(err) if is_not_found(&err) => {}
            Err(err) => warn!(service = %name, cause = %err, "cannot remove the farm's service"),
        }
        let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
        let filters = self.label_filter();
        loop {
            let left = self
                .docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::new()
                        .all(true)
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map(|c| c.len())
                .unwrap_or(0);
            if left == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    containers = left,
                    "the service's containers are still being removed"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.remove_stale_secrets(None).await;
        let mut removed = false;
        for _ in 0..100 {
            match self.docker.remove_network(&name).await {
                Ok(()) => {
                    removed = true;
                    break;
                }
                Err(err) if is_not_found(&err) => {
                    removed = true;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if !removed {
            warn!(network = %name, "could not remove the farm's network");
        }
        match self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
        {
            Ok(list) => {
                for volume in list.volumes.unwrap_or_default() {
                    if let Err(err) = self
                        .docker
                        .remove_volume(
                            &volume.name,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await
                        && !is_not_found(&err)
                    {
                        warn!(volume = %volume.name, cause = %err, "cannot remove a volume of the farm");
                    }
                }
            }
            Err(err) => warn!(cause = %err, "cannot list the farm's volumes"),
        }
    }
}

/// Checks that `image` is on this engine, or else that its registry knows
/// it (the one check that may contact a registry, and only for an image
/// the user named).
async fn resolve_image(docker: &Docker, image: &str) -> Result<(), SwarmError> {
    if docker.inspect_image(image).await.is_ok() {
        debug!(image, "the node image is on this engine");
        return Ok(());
    }
    match tokio::time::timeout(
        Duration::from_secs(30),
        docker.inspect_registry_image(image, None),
    )
    .await
    {
        Ok(Ok(_)) => {
            info!(image, "the node image resolves in its registry");
            Ok(())
        }
        Ok(Err(err)) => Err(SwarmError::Image {
            image: image.to_owned(),
            cause: err.to_string(),
        }),
        Err(_) => Err(SwarmError::Image {
            image: image.to_owned(),
            cause: "no answer within 30 s".to_owned(),
        }),
    }
}

/// The farm's overlay network, attachable and labelled; created if missing.
async fn ensure_network(docker: &Docker, farm_id: &str) -> Result<(), SwarmError> {
    let name = format!("farm-{farm_id}");
    let err = |cause: String| {
        SwarmError::Docker(DockerError::Network {
            name: name.clone(),
            cause,
        })
    };
    let filters = HashMap::from([("label", vec![format!("{FARM_LABEL}={farm_id}")])]);
    let existing = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|e| err(e.to_string()))?;
    if let Some(network) = existing
        .iter()
        .find(|n| n.name.as_deref() == Some(name.as_str()))
    {
        if network.driver.as_deref() != Some("overlay") {
            return Err(err(format!(
                "a network of that name exists with the {} driver (left by --runtime docker?); remove it with `docker network rm {name}`",
                network.driver.as_deref().unwrap_or("unknown")
            )));
        }
        return Ok(());
    }
    info!(network = %name, "creating the farm's overlay network");
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("overlay".into()),
        attachable: Some(true),
        labels: Some(HashMap::from([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            (FARM_LABEL.to_owned(), farm_id.to_owned()),
        ])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => Ok(()),
        Err(e) if status_of(&e) == Some(409) => Ok(()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// The gateway address of this host's `docker_gwbridge`, where its tasks
/// reach the host. Swarm creates that bridge when the first task starts
/// here; as the address is needed before (the control plane listens on
/// it), it is created here when missing, with the options the engine's
/// documentation gives for it. It is the engine's, not the farm's: it is
/// not labelled and never removed.
async fn gateway_bridge(docker: &Docker) -> Result<IpAddr, SwarmError> {
    let err = |cause: String| {
        SwarmError::Docker(DockerError::Network {
            name: GATEWAY_BRIDGE.to_owned(),
            cause,
        })
    };
    let network = match docker.inspect_network(GATEWAY_BRIDGE, None).await {
        Ok(network) => network,
        Err(e) if status_of(&e) == Some(404) => {
            info!(
                network = GATEWAY_BRIDGE,
                "creating the engine's gateway bridge (Swarm would on its first task)"
            );
            let request = NetworkCreateRequest {
                name: GATEWAY_BRIDGE.to_owned(),
                driver: Some("bridge".into()),
                options: Some(HashMap::from(
                    [
                        ("com.docker.network.bridge.name", GATEWAY_BRIDGE),
                        ("com.docker.network.bridge.enable_icc", "false"),
                        ("com.docker.network.bridge.enable_ip_masquerade", "true"),
                    ]
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
                )),
                ..Default::default()
            };
            match docker.create_network(request).await {
                Ok(_) => {}
                // Swarm made it meanwhile.
                Err(e) if status_of(&e) == Some(409) => {}
                Err(e) => return Err(err(e.to_string())),
            }
            docker
                .inspect_network(GATEWAY_BRIDGE, None)
                .await
                .map_err(|e| err(e.to_string()))?
        }
        Err(e) => return Err(err(e.to_string())),
    };
    network
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.gateway)
        .find_map(|g| g.parse::<IpAddr>().ok())
        .ok_or_else(|| err("it has no gateway address".into()))
}

/// Wakes `changed` whenever one of the farm's containers on this host dies,
/// starts, or is paused or thawed; reopens the stream when it ends.
async fn watch_containers(docker: Docker, farm_id: String, changed: Arc<Notify>) {
    loop {
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![format!("{FARM_LABEL}={farm_id}")]),
            (
                "event",
                ["die", "start", "pause", "unpause"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
        while let Some(event) = events.next().await {
            if event.is_err() {
                break;
            }
            changed.notify_one();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Per slot, the task that stands for it: the live one (the newest, should
/// Swarm hold two), or else the one changed last.
pub fn current_tasks(tasks: &[TaskView]) -> BTreeMap<u32, &TaskView> {
    let mut current: BTreeMap<u32, &TaskView> = BTreeMap::new();
    for task in tasks {
        let better = match current.get(&task.slot) {
            None => true,
            Some(held) => (task.live, task.version) > (held.live, held.version),
        };
        if better {
            current.insert(task.slot, task);
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, slot: u32, live: bool, version: u64) -> TaskView {
        TaskView {
            id: id.to_owned(),
            slot,
            node_id: "n".to_owned(),
            state: if live {
                TaskState::RUNNING
            } else {
                TaskState::FAILED
            },
            live,
            message: String::new(),
            container_id: None,
            version,
        }
    }

    #[test]
    fn a_slot_stands_for_its_live_task_over_newer_ended_ones() {
        let tasks = [
            task("old", 1, false, 90),
            task("new", 1, true, 80),
            task("gone", 2, false, 10),
            task("gone-later", 2, false, 20),
        ];
        let current = current_tasks(&tasks);
        assert_eq!(current[&1].id, "new");
        assert_eq!(current[&2].id, "gone-later");
    }
}
