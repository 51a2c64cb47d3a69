//! `farm.v1.Config`: versioned configuration per scope, and its pushes.
//!
//! Data is checked before it is stored, by a write or a rollback, with the
//! parser nodes apply it with (`farm_api::node`): a known key holding a value
//! a node would ignore is refused; keys the farm does not know are the
//! user's own and pass.

use std::pin::Pin;

use farm_api::{
    json,
    node::{self, InvalidConfig},
    v1::{
        self, ChangeKind, ConfigEvent, DiffRequest, DiffResponse, EffectiveConfig,
        GetConfigRequest, GetConfigResponse, GetEffectiveConfigRequest, HistoryRequest,
        HistoryResponse, PutConfigRequest, PutConfigResponse, RollbackRequest, RollbackResponse,
        WatchConfigRequest, config_server::Config,
    },
};
use futures::Stream;
use serde_json::Value;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{parse_node_id, timestamp};
use crate::{
    auth::{Role, writer},
    core::config::{Change, ConfigEntry, Effective, HISTORY_PER_SCOPE, Scope},
    state::{FarmState, StateError},
};

/// Events queued per watcher before it is considered stuck.
const WATCH_QUEUE: usize = 64;

/// The Config service.
#[derive(Debug, Clone)]
pub struct ConfigService {
    state: FarmState,
    /// Cancelled at shutdown: open watches end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl ConfigService {
    pub fn new(state: FarmState, shutdown: CancellationToken) -> Self {
        Self { state, shutdown }
    }

    /// Runs a blocking state call (store I/O) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(FarmState) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, Status> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || call(state))
            .await
            .map_err(|e| Status::internal(format!("configuration task failed: {e}")))?
            .map_err(Status::from)
    }
}

fn parse_scope(scope: &str) -> Result<Scope, Status> {
    if scope.is_empty() {
        return Err(Status::invalid_argument(
            "scope is required: `global`, `group:<name>` or `node:<id>`",
        ));
    }
    Ok(scope.parse()?)
}

/// Stored data (always a JSON object) in its wire form.
fn wire_data(data: &Value) -> prost_types::Struct {
    data.as_object()
        .map(json::json_to_struct)
        .unwrap_or_default()
}

/// The answer to configuration data holding known keys with values a node
/// could not apply (of version `rollback_of`, for a rollback):
/// INVALID_ARGUMENT, one sentence per key, naming its value and what it
/// takes.
fn unusable_config(err: &InvalidConfig, rollback_of: Option<u64>) -> Status {
    match rollback_of {
        None => Status::invalid_argument(err.to_string()),
        Some(version) => Status::invalid_argument(format!(
            "version {version} cannot be restored, a node could not apply it: {err}"
        )),
    }
}

fn version_message(entry: &ConfigEntry) -> v1::ConfigVersion {
    v1::ConfigVersion {
        scope: entry.scope.to_string(),
        version: entry.version,
        data: Some(wire_data(&entry.data)),
        created_at: Some(timestamp(entry.created_at)),
        role: entry.role.clone(),
        rollback_of: entry.rollback_of,
    }
}

fn event(entry: &ConfigEntry, snapshot: bool) -> ConfigEvent {
    ConfigEvent {
        scope: entry.scope.to_string(),
        version: entry.version,
        data: Some(wire_data(&entry.data)),
        created_at: Some(timestamp(entry.created_at)),
        role: entry.role.clone(),
        snapshot,
    }
}

/// The wire form of an effective configuration.
pub fn effective_message(effective: &Effective) -> EffectiveConfig {
    EffectiveConfig {
        version: effective.version,
        data: Some(wire_data(&effective.data)),
    }
}

fn change_message(change: Change) -> v1::ConfigChange {
    let (path, kind, old, new) = match change {
        Change::Added { path, new } => (path, ChangeKind::Added, None, Some(new)),
        Change::Removed { path, old } => (path, ChangeKind::Removed, Some(old), None),
        Change::Changed { path, old, new } => (path, ChangeKind::Changed, Some(old), Some(new)),
    };
    v1::ConfigChange {
        path,
        kind: kind.into(),
        old_value: old.as_ref().map(json::from_json),
        new_value: new.as_ref().map(json::from_json),
    }
}

type EventSender = mpsc::Sender<Result<ConfigEvent, Status>>;

/// Streams a node's effective configuration each time it changes.
async fn watch_node(
    state: FarmState,
    id: crate::core::NodeId,
    from: u64,
    tx: EventSender,
    shutdown: CancellationToken,
) {
    let mut changes = state.config_changes();
    let mut last = from;
    loop {
        changes.mark_unchanged();
        match state.effective_config(id) {
            Ok(effective) if effective.version > last => {
                last = effective.version;
                let event = ConfigEvent {
                    scope: Scope::Node(id).to_string(),
                    version: effective.version,
                    data: Some(wire_data(&effective.data)),
                    created_at: None,
                    role: String::new(),
                    snapshot: false,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the control plane is shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
        }
    }
}

/// Streams every version of `scope` after `from`: the kept history, then
/// live versions; a snapshot when the history no longer reaches back.
async fn watch_scope(
    state: FarmState,
    scope: Scope,
    from: u64,
    tx: EventSender,
    shutdown: CancellationToken,
) {
    let mut live = state.subscribe_config();
    let mut last = from;
    let mut catch_up = true;
    loop {
        if catch_up {
            catch_up = false;
            let scope_at = scope.clone();
            let state_at = state.clone();
            let since = tokio::task::spawn_blocking(move || {
                state_at.config_since(&scope_at, last, HISTORY_PER_SCOPE)
            })
            .await;
            let (entries, complete) = match since {
                Ok(Ok(found)) => found,
                Ok(Err(err)) => {
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
                Err(err) => {
                    let _ = tx.send(Err(Status::internal(err.to_string()))).await;
                    return;
                }
            };
            let events: Vec<ConfigEvent> = if complete {
                entries.iter().map(|e| event(e, false)).collect()
            } else {
                state
                    .get_config(&scope)
                    .map(|e| event(&e, true))
                    .into_iter()
                    .collect()
            };
            for event in events {
                if event.version <= last {
                    continue;
                }
                last = event.version;
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
        let next = tokio::select! {
            next = live.recv() => next,
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the control plane is shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
        };
        match next {
            Ok(entry) if entry.scope == scope && entry.version > last => {
                last = entry.version;
                if tx.send(Ok(event(&entry, false))).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            // Fell behind: read what was missed from the store.
            Err(RecvError::Lagged(_)) => catch_up = true,
            Err(RecvError::Closed) => return,
        }
    }
}

#[tonic::async_trait]
impl Config for ConfigService {
    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let scope = parse_scope(&request.get_ref().scope)?;
        let response = match self.state.get_config(&scope) {
            Some(entry) => GetConfigResponse {
                scope: scope.to_string(),
                version: entry.version,
                data: Some(wire_data(&entry.data)),
                updated_at: Some(timestamp(entry.created_at)),
                role: entry.role,
            },
            None => GetConfigResponse {
                scope: scope.to_string(),
                version: 0,
                data: Some(prost_types::Struct::default()),
                updated_at: None,
                role: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn put_config(
        &self,
        request: Request<PutConfigRequest>,
    ) -> Result<Response<PutConfigResponse>, Status> {
        let role = writer(request.extensions().get::<Role>().copied());
        let request = request.into_inner();
        let scope = parse_scope(&request.scope)?;
        let data = request
            .data
            .as_ref()
            .map(json::struct_to_json)
            .ok_or_else(|| Status::invalid_argument("data is required (a JSON object)"))?;
        node::check(&data).map_err(|err| unusable_config(&err, None))?;
        let expected = request.expected_version;
        let entry = self
            .blocking(move |state| state.put_config(scope, Value::Object(data), expected, role, 0))
            .await?;
        info!(scope = %entry.scope, version = entry.version, role, "configuration written");
        Ok(Response::new(PutConfigResponse {
            scope: entry.scope.to_string(),
            version: entry.version,
        }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let request = request.into_inner();
        let scope = parse_scope(&request.scope)?;
        let limit = match request.limit {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Status::invalid_argument(format!("limit {n} is above 1000")));
            }
        };
        let before = request.before_version;
        let entries = self
            .blocking(move |state| state.config_history(&scope, before, limit))
            .await?;
        Ok(Response::new(HistoryResponse {
            versions: entries.iter().map(version_message).collect(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        let role = writer(request.extensions().get::<Role>().copied());
        let request = request.into_inner();
        let scope = parse_scope(&request.scope)?;
        if request.version == 0 {
            return Err(Status::invalid_argument("version is required"));
        }
        let (version, expected) = (request.version, request.expected_version);
        let entry = self
            .blocking(move |state| {
                // The target is checked as a write would be; it cannot have
                // changed by the time it is written again: stored versions
                // never change.
                let target = state.config_history(&scope, version.saturating_add(1), 1)?;
                if let Some(data) = target
                    .first()
                    .filter(|entry| entry.version == version)
                    .and_then(|entry| entry.data.as_object())
                    && let Err(err) = node::check(data)
                {
                    return Ok(Err(err));
                }
                state
                    .rollback_config(scope, version, expected, role)
                    .map(Ok)
            })
            .await?
            .map_err(|err| unusable_config(&err, Some(version)))?;
        info!(scope = %entry.scope, version = entry.version, rollback_of = version, role, "configuration rolled back");
        Ok(Response::new(RollbackResponse {
            scope: entry.scope.to_string(),
            version: entry.version,
        }))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let request = request.into_inner();
        let scope = parse_scope(&request.scope)?;
        let (from, to) = (request.from_version, request.to_version);
        let (from, to, changes) = self
            .blocking(move |state| state.config_diff(&scope, from, to))
            .await?;
        Ok(Response::new(DiffResponse {
            from_version: from,
            to_version: to,
            changes: changes.into_iter().map(change_message).collect(),
        }))
    }

    async fn get_effective_config(
        &self,
        request: Request<GetEffectiveConfigRequest>,
    ) -> Result<Response<EffectiveConfig>, Status> {
        let id = parse_node_id("node_id", &request.get_ref().node_id)?;
        let effective = self.state.effective_config(id)?;
        Ok(Response::new(effective_message(&effective)))
    }

    type WatchConfigStream =
        Pin<Box<dyn Stream<Item = Result<ConfigEvent, Status>> + Send + 'static>>;

    async fn watch_config(
        &self,
        request: Request<WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        match (request.scope.is_empty(), request.node_id.is_empty()) {
            (false, true) => {
                let scope = parse_scope(&request.scope)?;
                tokio::spawn(watch_scope(
                    state,
                    scope,
                    request.from_version,
                    tx,
                    shutdown,
                ));
            }
            (true, false) => {
                let id = parse_node_id("node_id", &request.node_id)?;
                // Unknown nodes are refused before the stream starts.
                self.state.effective_config(id)?;
                tokio::spawn(watch_node(state, id, request.from_version, tx, shutdown));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of scope and node_id",
                ));
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
