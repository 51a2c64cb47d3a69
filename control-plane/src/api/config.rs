//! `farm.v1.Config`: versioned configuration per scope, and its pushes.
//!
//! A write replaces a scope's data whole or, with `merge`, applies a JSON
//! merge patch to it. Data is checked before it is stored, by a write (after
//! the merge) or a rollback (see `core::config::validate_data`): a known key
//! holding a value a node would ignore is refused; keys the farm does not
//! know are the user's own.

use std::pin::Pin;

use farm_api::{
    json,
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

use super::{ApiError, BadRequest, resolve_node, timestamp};
use crate::{
    core::config::{Change, ConfigEntry, Effective, HISTORY_PER_SCOPE, Scope, Write},
    state::{Configs, Members},
    transport::auth::{Role, writer},
};

/// Events queued per watcher before it is considered stuck.
const WATCH_QUEUE: usize = 64;

/// The Config service.
#[derive(Debug, Clone)]
pub struct ConfigService {
    configs: Configs,
    /// Resolves the nodes callers name.
    members: Members,
    /// Cancelled at shutdown: open watches end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl ConfigService {
    pub fn new(configs: Configs, members: Members, shutdown: CancellationToken) -> Self {
        Self {
            configs,
            members,
            shutdown,
        }
    }

    /// The scope a request names; a node's scope may name it by id
    /// (`node:n7`) or by name (`node:node-007`), and is kept by id.
    fn scope(&self, scope: &str) -> Result<Scope, ApiError> {
        if scope.is_empty() {
            return Err(BadRequest::Missing {
                field: "scope",
                hint: ": `global`, `group:<name>` or `node:<id or name>`",
            }
            .into());
        }
        Ok(Scope::parse(scope, |node| self.members.resolve(node))?)
    }
}

/// Stored data (always a JSON object) in its wire form.
fn wire_data(data: &Value) -> prost_types::Struct {
    data.as_object()
        .map(json::json_to_struct)
        .unwrap_or_default()
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
    configs: Configs,
    id: crate::core::NodeId,
    from: u64,
    tx: EventSender,
    shutdown: CancellationToken,
) {
    let mut changes = configs.changes();
    let mut last = from;
    loop {
        changes.mark_unchanged();
        match configs.effective(id) {
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
                let _ = tx.send(Err(ApiError::ShuttingDown.into())).await;
                return;
            }
            () = tx.closed() => return,
        }
    }
}

/// Streams every version of `scope` after `from`: the kept history, then
/// live versions; a snapshot when the history no longer reaches back.
async fn watch_scope(
    configs: Configs,
    scope: Scope,
    from: u64,
    tx: EventSender,
    shutdown: CancellationToken,
) {
    let mut live = configs.subscribe();
    let mut last = from;
    let mut catch_up = true;
    loop {
        if catch_up {
            catch_up = false;
            let since = configs.since(scope.clone(), last, HISTORY_PER_SCOPE).await;
            let (entries, complete) = match since {
                Ok(found) => found,
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
            let events: Vec<ConfigEvent> = if complete {
                entries.iter().map(|e| event(e, false)).collect()
            } else {
                configs
                    .latest(&scope)
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
                let _ = tx.send(Err(ApiError::ShuttingDown.into())).await;
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
        let scope = self.scope(&request.get_ref().scope)?;
        let response = match self.configs.latest(&scope) {
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
        let scope = self.scope(&request.scope)?;
        let data = request
            .data
            .as_ref()
            .map(json::struct_to_json)
            .ok_or(BadRequest::Missing {
                field: "data",
                hint: " (a JSON object)",
            })?;
        let expected = request.expected_version;
        let write = if request.merge {
            Write::Merge(Value::Object(data))
        } else {
            Write::Replace(Value::Object(data))
        };
        let entry = self.configs.put(scope, write, expected, role).await?;
        info!(scope = %entry.scope, version = entry.version, merge = request.merge, role, "configuration written");
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
        let scope = self.scope(&request.scope)?;
        let limit = match request.limit {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(BadRequest::out_of_range("limit", n, "at most 1000").into());
            }
        };
        let before = request.before_version;
        let entries = self.configs.history(scope, before, limit).await?;
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
        let scope = self.scope(&request.scope)?;
        let (version, expected) = (request.version, request.expected_version);
        let entry = self
            .configs
            .rollback(scope, version, expected, role)
            .await?;
        info!(scope = %entry.scope, version = entry.version, rollback_of = version, role, "configuration rolled back");
        Ok(Response::new(RollbackResponse {
            scope: entry.scope.to_string(),
            version: entry.version,
        }))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let request = request.into_inner();
        let scope = self.scope(&request.scope)?;
        let (from, to) = (request.from_version, request.to_version);
        let (from, to, changes) = self.configs.diff(scope, from, to).await?;
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
        let id = resolve_node(&self.members, "node_id", &request.get_ref().node_id)?;
        let effective = self.configs.effective(id)?;
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
        let configs = self.configs.clone();
        let shutdown = self.shutdown.clone();
        match (request.scope.is_empty(), request.node_id.is_empty()) {
            (false, true) => {
                let scope = self.scope(&request.scope)?;
                tokio::spawn(watch_scope(
                    configs,
                    scope,
                    request.from_version,
                    tx,
                    shutdown,
                ));
            }
            (true, false) => {
                let id = resolve_node(&self.members, "node_id", &request.node_id)?;
                // Unknown nodes are refused before the stream starts.
                self.configs.effective(id)?;
                tokio::spawn(watch_node(configs, id, request.from_version, tx, shutdown));
            }
            _ => {
                return Err(BadRequest::Rule("give exactly one of scope and node_id").into());
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
