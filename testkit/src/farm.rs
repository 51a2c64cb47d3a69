//! A whole control plane in this process: `control_plane::serve::run` on a
//! listener of `127.0.0.1:0`, with flags parsed as the binary parses them,
//! real `farm-node` processes (`--runtime process`) or none (`--runtime
//! none`), on a data folder of its own. It is stopped like SIGTERM would
//! stop it, by [`Farm::stop`] or when dropped, and no node process of its
//! data folder outlives it, even when the test fails half-way.

use std::{net::SocketAddr, ops::Deref, time::Duration};

use clap::Parser;
use control_plane::{
    config::{Cli, Command, ServeConfig},
    serve::ServeError,
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    api::Api,
    process::{binary, kill_nodes},
};

/// Timing flags for tests: heartbeats every 200 ms, a node unhealthy after
/// 600 ms of silence at any age, three seconds for a node to stop.
pub const FAST: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "600ms",
    "--min-age",
    "0s",
    "--stop-grace",
    "3s",
];

/// How long a stopping control plane may take.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A control plane running in this test process; its clients (without a
/// token) through `Deref`.
#[derive(Debug)]
pub struct Farm {
    pub addr: SocketAddr,
    /// The data folder (`--data-dir`).
    pub dir: TempDir,
    api: Api,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

/// How to start a [`Farm`]: [`Farm::builder`].
#[derive(Debug)]
pub struct FarmBuilder {
    nodes: u32,
    flags: Vec<String>,
    timing: Vec<String>,
    dir: Option<TempDir>,
    listener: Option<TcpListener>,
}

impl FarmBuilder {
    /// Process nodes to run; with none, no runtime at all (`--runtime
    /// none`). Flags naming `--runtime` choose it instead.
    pub fn nodes(mut self, nodes: u32) -> Self {
        self.nodes = nodes;
        self
    }

    /// More flags of `control-plane serve`.
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    /// Timing flags in place of [`FAST`] (none: the product's defaults).
    pub fn timing(mut self, flags: &[&str]) -> Self {
        self.timing = flags.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// An existing data folder, such as one [`Farm::stop`] returned.
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// A listener bound already: a restarted control plane takes its old
    /// port.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Starts serving; returns once the port is bound (the farm's nodes
    /// come up after).
    pub async fn start(self) -> Farm {
        let dir = match self.dir {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("a temporary data folder"),
        };
        let data_dir = dir.path().to_str().expect("a UTF-8 path").to_owned();
        let count = self.nodes.to_string();
        let mut args = vec!["control-plane", "serve", "--data-dir", &data_dir];
        args.extend(["--nodes", &count]);
        let node_binary;
        if self.flags.iter().any(|f| f == "--runtime") {
            // The caller picks the runtime (Docker tests).
        } else if self.nodes == 0 {
            args.extend(["--runtime", "none"]);
        } else {
            node_binary = binary("farm-node")
                .to_str()
                .expect("a UTF-8 path")
                .to_owned();
            args.extend(["--runtime", "process", "--node-binary", &node_binary]);
        }
        args.extend(self.timing.iter().map(String::as_str));
        args.extend(self.flags.iter().map(String::as_str));
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("flags {args:?}: {e}"));
        let Command::Serve(serve) = cli.command;
        let config = ServeConfig::try_from(&serve).expect("a valid configuration");
        let listener = match self.listener {
            Some(listener) => listener,
            None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let addr = listener.local_addr().expect("the bound address");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(control_plane::serve::run(config, listener, async {
            let _ = rx.await;
        }));
        Farm {
            addr,
            dir,
            api: Api::at(addr),
            shutdown: Some(tx),
            task: Some(task),
        }
    }
}

impl Farm {
    /// Starts a control plane with `nodes` process nodes, [`FAST`] timing
    /// and `extra` flags.
    pub async fn start(nodes: u32, extra: &[&str]) -> Self {
        Self::builder().nodes(nodes).flags(extra).start().await
    }

    /// [`Farm::start`] on an existing data folder.
    pub async fn start_in(dir: TempDir, nodes: u32, extra: &[&str]) -> Self {
        Self::builder()
            .dir(dir)
            .nodes(nodes)
            .flags(extra)
            .start()
            .await
    }

    /// A farm of no nodes, [`FAST`] timing, a fresh data folder and a port
    /// of its own, until changed.
    pub fn builder() -> FarmBuilder {
        FarmBuilder {
            nodes: 0,
            flags: Vec::new(),
            timing: FAST.iter().map(|f| (*f).to_owned()).collect(),
            dir: None,
            listener: None,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down like SIGTERM would and waits until it has (a clean
    /// shutdown, within 20 s); returns the data folder.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STOP_LIMIT, task)
                .await
                .expect("shutdown within 20 s")
                .expect("the control plane's task")
                .expect("a clean shutdown");
        }
        // Moving the folder out leaves an empty one behind for `Drop`.
        std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("a temporary folder"),
        )
    }
}

impl Deref for Farm {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for Farm {
    /// Stops the control plane the way SIGTERM would (its supervisor would
    /// otherwise replace the nodes killed here), waiting for it where the
    /// runtime allows (a multi-thread one), then kills whatever node
    /// process of this farm is left.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle)
                    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(|| {
                        handle.block_on(async {
                            let _ = tokio::time::timeout(STOP_LIMIT, task).await;
                        });
                    });
                }
                _ => task.abort(),
            }
        }
        kill_nodes(self.dir.path());
    }
}
