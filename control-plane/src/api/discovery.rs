//! `farm.v1.Discovery`: random healthy peers, the membership event stream,
//! and groups.

use std::{pin::Pin, sync::Arc};

use farm_api::v1::{
    DiscoverRequest, DiscoverResponse, EventKind as WireKind, GroupInfo, ListGroupsRequest,
    ListGroupsResponse, WatchEvent, WatchRequest, discovery_server::Discovery,
};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{labels, node_info, peer, resolve_node, timestamp};
use crate::{
    core::{Event, EventKind, NodeView, validate_group},
    state::{Members, WatchStart},
};

/// Events queued per watcher before it counts as slow.
const WATCH_QUEUE: usize = 256;
/// Nodes per SNAPSHOT event when the watcher asks for batches.
const SNAPSHOT_BATCH: usize = 1000;

/// The Discovery service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    members: Members,
    /// Cancelled at shutdown: watch streams end.
    shutdown: CancellationToken,
}

impl DiscoveryService {
    pub fn new(members: Members, shutdown: CancellationToken) -> Self {
        Self { members, shutdown }
    }
}

fn wire_event(revision: u64, kind: WireKind, node: Option<NodeView>) -> WatchEvent {
    WatchEvent {
        revision,
        kind: kind.into(),
        node: node.map(node_info),
        nodes: Vec::new(),
    }
}

/// The events of a snapshot of `nodes` at `revision`, SYNCED last: one
/// event per node, or with `batch`, up to [`SNAPSHOT_BATCH`] nodes each.
fn snapshot_events(revision: u64, nodes: Vec<NodeView>, batch: bool) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = if batch {
        let mut nodes = nodes.into_iter().map(node_info).peekable();
        std::iter::from_fn(|| {
            nodes.peek()?;
            Some(WatchEvent {
                revision,
                kind: WireKind::Snapshot.into(),
                node: None,
                nodes: nodes.by_ref().take(SNAPSHOT_BATCH).collect(),
            })
        })
        .collect()
    } else {
        nodes
            .into_iter()
            .map(|node| wire_event(revision, WireKind::Snapshot, Some(node)))
            .collect()
    };
    events.push(wire_event(revision, WireKind::Synced, None));
    events
}

fn live_event(event: &Event) -> WatchEvent {
    let kind = match event.kind {
        EventKind::Joined => WireKind::Joined,
        EventKind::Left => WireKind::Left,
        EventKind::Changed => WireKind::Changed,
    };
    wire_event(event.revision, kind, Some(event.node.clone()))
}

/// Feeds one watcher: its starting point, then live events, resetting with
/// a fresh snapshot whenever it falls too far behind; snapshots in batches
/// when it asked for them.
async fn feed_watcher(
    members: Members,
    group: String,
    batch: bool,
    start: WatchStart,
    mut events: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
    shutdown: CancellationToken,
) {
    let in_group = |node: &NodeView| group.is_empty() || node.group == group;
    let mut start = Some(start);
    let mut seen = 0;
    loop {
        if let Some(start) = start.take() {
            let initial: Vec<WatchEvent> = match start {
                WatchStart::Replay(from, replayed) => {
                    seen = replayed.last().map_or(from, |e| e.revision);
                    // SYNCED after the replay too: the watcher is caught up.
                    replayed
                        .iter()
                        .filter(|e| in_group(&e.node))
                        .map(live_event)
                        .chain([wire_event(seen, WireKind::Synced, None)])
                        .collect()
                }
                WatchStart::Snapshot(revision, nodes) => {
                    seen = revision;
                    snapshot_events(revision, nodes, batch)
                }
            };
            for event in initial {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
        let received = tokio::select! {
            received = events.recv() => received,
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
        };
        match received {
            Ok(event) => {
                if event.revision <= seen || !in_group(&event.node) {
                    continue;
                }
                seen = event.revision;
                if tx.send(Ok(live_event(&event))).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if tx
                    .send(Ok(wire_event(seen, WireKind::Reset, None)))
                    .await
                    .is_err()
                {
                    return;
                }
                let (fresh, receiver) = members.watch(&group, 0);
                events = receiver;
                start = Some(fresh);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    async fn discover(
        &self,
        request: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverResponse>, Status> {
        let request = request.into_inner();
        let exclude = if request.exclude_id.is_empty() {
            None
        } else {
            Some(resolve_node(
                &self.members,
                "exclude_id",
                &request.exclude_id,
            )?)
        };
        let found = self.members.discover(
            &request.group,
            request.count,
            &labels(request.labels),
            exclude,
        )?;
        Ok(Response::new(DiscoverResponse {
            peers: found.peers.into_iter().map(peer).collect(),
            matched: found.matched,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        if !request.group.is_empty() {
            validate_group(&request.group)?;
        }
        let (start, events) = self.members.watch(&request.group, request.from_revision);
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        tokio::spawn(feed_watcher(
            self.members.clone(),
            request.group,
            request.batch_snapshot,
            start,
            events,
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_groups(
        &self,
        _request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let groups = self
            .members
            .list_groups()
            .into_iter()
            .map(|g| GroupInfo {
                name: g.name,
                members: g.members,
                healthy: g.healthy,
                capacity: g.capacity,
                leader_id: g.leader.map(|id| id.to_string()).unwrap_or_default(),
                created_at: Some(timestamp(g.created_at)),
                empty_since: g.empty_since.map(timestamp),
            })
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }
}
