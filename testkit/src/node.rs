//! A `farm-node` serving in this process: `farm_node::run` on a listener of
//! `127.0.0.1:0` (or one given, to come back on the same port), stopped
//! like SIGTERM would stop it, by [`Node::stop`] or when dropped.

use std::{net::SocketAddr, time::Duration};

use farm_api::v1::{InfoRequest, workload_client::WorkloadClient};
use farm_node::{Ended, NodeConfig, NodeError};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::api::lazy_channel;

/// A control plane address nothing answers at: a node given it serves
/// alone, its agent retrying in the background.
pub const NOWHERE: &str = "http://127.0.0.1:1";

/// How long a stopping node may take.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A farm-node running in this test process.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<Ended, NodeError>>>,
}

impl Node {
    /// Serves `config` on a free loopback port.
    pub async fn start(config: NodeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(config, listener).await
    }

    /// Serves `config` on `listener`.
    pub async fn start_on(config: NodeConfig, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("the bound address");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(farm_node::run(config, listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A node named `name` with no control plane to talk to ([`NOWHERE`]):
    /// its workload side serves regardless.
    pub async fn lone(name: &str) -> Self {
        Self::start(NodeConfig::new(NOWHERE, name)).await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn channel(&self) -> Channel {
        lazy_channel(&self.url())
    }

    pub fn workload(&self) -> WorkloadClient<Channel> {
        WorkloadClient::new(self.channel())
    }

    /// Stops like SIGTERM would; returns what `run` returned (within 10 s).
    pub async fn stop(mut self) -> Result<Ended, NodeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.ended().await
    }

    /// Waits (10 s at most) for the node to end by itself; what `run`
    /// returned.
    pub async fn ended(mut self) -> Result<Ended, NodeError> {
        let task = self.task.take().expect("running");
        tokio::time::timeout(STOP_LIMIT, task)
            .await
            .expect("stops within 10 s")
            .expect("the node's task")
    }
}

impl Drop for Node {
    /// Starts the node's shutdown, as SIGTERM would, without waiting for it.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Requests the node at `address` (`host:port` or a URL) has served so
/// far, by its `Workload.Info`.
pub async fn served(address: &str) -> u64 {
    let url = if address.starts_with("http://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    WorkloadClient::new(lazy_channel(&url))
        .info(InfoRequest {})
        .await
        .expect("Workload.Info")
        .into_inner()
        .requests
}
