//! The [`Samples`] handle: each node's recent metrics samples, and the
//! aggregates of the farm and its groups computed from them.

use std::{collections::HashSet, sync::Arc};

use super::Shared;
use crate::core::{
    DomainError, NodeId, Now,
    metrics::{self, Detail, FarmAggregate, NodeMetrics, Sample},
};

/// Handle on the nodes' metrics.
#[derive(Debug, Clone)]
pub struct Samples {
    shared: Arc<Shared>,
}

impl Samples {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Keeps node `id`'s latest sample (its heartbeat was accepted).
    pub fn record(&self, id: NodeId, sample: Sample) {
        self.shared.metrics().record(id, sample, Now::read().mono);
        self.shared.telemetry.sample_received();
    }

    /// The aggregate of `group` (empty: the whole farm), listing every node
    /// when `include_nodes` is set. Errors: an unknown group.
    pub fn farm(&self, group: &str, include_nodes: bool) -> Result<FarmAggregate, DomainError> {
        let detail = if include_nodes {
            Detail::NODES
        } else {
            Detail::TOTALS
        };
        self.farm_with(group, detail)
    }

    /// The aggregate of `group` (empty: the whole farm), with every node's
    /// metrics or loads as `detail` asks. Errors: an unknown group.
    pub fn farm_with(&self, group: &str, detail: Detail) -> Result<FarmAggregate, DomainError> {
        let (nodes, fresh) = {
            let registry = self.shared.registry();
            let nodes = registry.list_nodes(group)?;
            (
                nodes,
                metrics::freshness(registry.policy().heartbeat_timeout),
            )
        };
        let now = Now::read();
        let entries = {
            let mut book = self.shared.metrics();
            if group.is_empty() && book.len() > nodes.len() {
                // Samples of a stream that raced its node's removal.
                let ids: HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
                book.retain(|id| ids.contains(&id));
            }
            book.snapshot(nodes, now.mono, fresh)
        };
        Ok(metrics::aggregate(entries, now.wall, detail))
    }

    /// Node `id`'s latest metrics and its kept samples, oldest first.
    pub fn node(&self, id: NodeId) -> Result<(NodeMetrics, Vec<Sample>), DomainError> {
        let (view, fresh) = {
            let registry = self.shared.registry();
            let view = registry.node(id)?;
            (
                view,
                metrics::freshness(registry.policy().heartbeat_timeout),
            )
        };
        let now = Now::read();
        let (entry, history) = {
            let book = self.shared.metrics();
            let entry = book.snapshot(vec![view], now.mono, fresh).pop();
            (entry, book.history(id))
        };
        let entry = entry.ok_or(DomainError::UnknownNode(id))?;
        Ok((metrics::node_metrics(entry), history))
    }
}
