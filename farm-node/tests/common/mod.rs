//! Shared harness: an in-process control plane and in-process nodes on
//! `127.0.0.1:0`, and a plain HTTP/1.1 client over a TCP socket.

#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use control_plane::config::{Cli, Command, ServeConfig};
use farm_api::v1::{
    ListNodesRequest, NodeInfo, NodeState, PutConfigRequest, config_client::ConfigClient,
    farm_client::FarmClient,
};
use farm_node::NodeConfig;
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::{Channel, Endpoint};

/// A control plane running no nodes of its own, in this test process.
pub struct ControlPlane {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), control_plane::serve::ServeError>>>,
}

impl ControlPlane {
    pub async fn start(data: &TempDir) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(data, listener).await
    }

    /// Starts on `listener`: a restarted control plane takes its old port.
    pub async fn start_on(data: &TempDir, listener: TcpListener) -> Self {
        let dir = data.path().to_str().expect("utf-8 path");
        let cli = Cli::try_parse_from([
            "control-plane",
            "serve",
            "--data-dir",
            dir,
            "--runtime",
            "none",
            "--heartbeat-interval",
            "100ms",
            "--heartbeat-timeout",
            "500ms",
            "--min-age",
            "0s",
        ])
        .expect("flags");
        let Command::Serve(args) = cli.command;
        let config = ServeConfig::try_from(&args).expect("config");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(control_plane::serve::run(config, listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn farm(&self) -> FarmClient<Channel> {
        FarmClient::new(channel(self.addr))
    }

    pub fn config(&self) -> ConfigClient<Channel> {
        ConfigClient::new(channel(self.addr))
    }

    /// Writes `data` (a JSON object) as the configuration of `scope`;
    /// returns the new version.
    pub async fn put_config(&self, scope: &str, data: serde_json::Value) -> u64 {
        self.config()
            .put_config(PutConfigRequest {
                scope: scope.into(),
                data: Some(farm_api::json::json_to_struct(&object(data))),
                expected_version: 0,
            })
            .await
            .expect("PutConfig")
            .into_inner()
            .version
    }

    /// Waits until the node named `name` reports applying `version`;
    /// returns it.
    pub async fn wait_config(&self, name: &str, version: u64) -> NodeInfo {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let nodes = self.nodes().await;
            if let Some(node) = nodes.iter().find(|n| n.name == name)
                && node.config_version == version
            {
                return node.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {name} to apply configuration {version}: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn nodes(&self) -> Vec<NodeInfo> {
        self.farm()
            .list_nodes(ListNodesRequest::default())
            .await
            .map(|r| r.into_inner().nodes)
            .unwrap_or_default()
    }

    /// Waits until the node named `name` is healthy; returns it.
    pub async fn wait_healthy(&self, name: &str) -> NodeInfo {
        self.wait_for(name, NodeState::Healthy).await
    }

    pub async fn wait_for(&self, name: &str, state: NodeState) -> NodeInfo {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let nodes = self.nodes().await;
            if let Some(node) = nodes.iter().find(|n| n.name == name)
                && node.state == state as i32
            {
                return node.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {name} to be {state:?}: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts down like SIGTERM would and waits.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("shutdown within 20 s")
                .expect("task")
                .expect("clean shutdown");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A farm-node running in this test process.
pub struct Node {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), farm_node::NodeError>>>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
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

    pub fn channel(&self) -> Channel {
        channel(self.addr)
    }

    /// Stops like SIGTERM would; returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), farm_node::NodeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops within 10 s")
            .expect("task")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_lazy()
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` over a fresh HTTP/1.1 connection, as curl would send it.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..end]).expect("hex"), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

/// A JSON object's map.
pub fn object(data: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(fields) = data else {
        panic!("configuration data must be an object, got {data}")
    };
    fields
}
