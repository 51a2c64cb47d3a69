//! Targets from a control plane: the addresses of the farm's healthy nodes.

use std::time::Duration;

use farm_api::{
    Bearer,
    v1::{ListNodesRequest, NodeState, farm_client::FarmClient},
};
use tonic::transport::Endpoint;

use crate::config::target_uri;

/// How long reaching the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no targets came from the control plane.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{0:?} is not a control-plane URL")]
    BadUrl(String),
    #[error("the token is not a valid header value")]
    BadToken,
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the control plane at {url} refused to list its nodes: {status}")]
    Refused { url: String, status: String },
    #[error("the control plane at {url} has no group {group:?}")]
    NoGroup { url: String, group: String },
    #[error("the control plane at {url} has no healthy node{}", group_clause(.group))]
    NoNodes { url: String, group: Option<String> },
}

fn group_clause(group: &Option<String>) -> String {
    group
        .as_ref()
        .map(|g| format!(" in group {g:?}"))
        .unwrap_or_default()
}

/// The addresses of every healthy node the control plane at `url` lists
/// (of `group` only, when given), in address order.
pub async fn healthy_nodes(
    url: &str,
    token: Option<&str>,
    group: Option<&str>,
) -> Result<Vec<String>, DiscoverError> {
    let uri = target_uri(url).map_err(|_| DiscoverError::BadUrl(url.to_owned()))?;
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|_| DiscoverError::BadUrl(url.to_owned()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| DiscoverError::Unreachable {
            url: uri.clone(),
            reason: std::error::Error::source(&err)
                .map_or_else(|| err.to_string(), ToString::to_string),
        })?;
    let bearer = Bearer::new(token).map_err(|_| DiscoverError::BadToken)?;
    let nodes = FarmClient::with_interceptor(channel, bearer)
        .list_nodes(ListNodesRequest {
            group: group.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|status| match (status.code(), group) {
            (tonic::Code::NotFound, Some(group)) => DiscoverError::NoGroup {
                url: uri.clone(),
                group: group.to_owned(),
            },
            _ => DiscoverError::Refused {
                url: uri.clone(),
                status: format!("{:?}: {}", status.code(), status.message()),
            },
        })?
        .into_inner()
        .nodes;
    let mut addresses: Vec<String> = nodes
        .into_iter()
        .filter(|node| node.state == NodeState::Healthy as i32 && !node.address.is_empty())
        .map(|node| node.address)
        .collect();
    if addresses.is_empty() {
        return Err(DiscoverError::NoNodes {
            url: uri,
            group: group.map(str::to_owned),
        });
    }
    crate::targets::sort(&mut addresses);
    Ok(addresses)
}
