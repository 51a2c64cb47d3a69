//! A whole control plane in this process: `control_plane::serve::run` on a
//! listener of `127.0.0.1:0`, with flags parsed as the binary parses them,
//! real `farm-node` processes (`--runtime process`) or none (`--runtime
//! none`), on a data folder of its own, and the catalog's line protocol
//! on a second listener of `127.0.0.1:0` if asked ([`Builder::indexer`]).
//! It is stopped like SIGTERM would stop it, by [`Farm::stop`] or when
//! dropped, and no node process of its data folder outlives it, even when
//! the test fails half-way.

use std::{net::SocketAddr, path::Path, time::Duration};

use clap::Parser;
use control_plane::{
    config::{Cli, Command, ServeConfig},
    serve::{Listeners, ServeError},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    api::{Api, deref_to_api},
    process::{binary, kill_nodes},
};

/// Timing flags for tests: heartbeats every 200 ms, a node unhealthy after
/// 600 ms of silence at any age, three seconds for a node to stop, no
/// reads shed for lateness and no flap damping: a test's own work shares
/// the machine (or, in process, the control plane's event loop), so a node
/// may miss a 600 ms deadline now and then, and a test of something else
/// must neither see its reads refused nor wait out a flapping node's hold.
/// The tests of shedding set `--shed-lag`, those of damping
/// `--flap-threshold`.
pub const FAST: &[&str] = &[
    "--shed-lag",
    "0s",
    "--flap-threshold",
    "0",
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
    /// Where the catalog's line protocol listens, if it does.
    indexer: Option<SocketAddr>,
    api: Api,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

/// How to start a control plane: in this process ([`Farm::builder`],
/// `K` = [`InProcess`]) or as a child (`ControlPlaneProcess::builder`,
/// `K` = `process::Child`). The flags are the binary's either way.
#[derive(Debug)]
pub struct Builder<K> {
    nodes: u32,
    flags: Vec<String>,
    timing: Vec<String>,
    /// Whether to serve the catalog's line protocol.
    pub(crate) indexer: bool,
    /// What only one way of running it has.
    pub(crate) kind: K,
}

/// How to start a [`Farm`].
pub type FarmBuilder = Builder<InProcess>;

/// A data folder and a listener of the test's own, if given.
#[derive(Debug, Default)]
pub struct InProcess {
    dir: Option<TempDir>,
    listener: Option<TcpListener>,
}

impl<K> Builder<K> {
    /// No nodes, [`FAST`] timing, no other flag.
    pub(crate) fn new(kind: K) -> Self {
        Self {
            nodes: 0,
            flags: Vec::new(),
            timing: FAST.iter().map(|f| (*f).to_owned()).collect(),
            indexer: false,
            kind,
        }
    }

    /// Serves the catalog's line protocol too, on a loopback port of its
    /// own (`--indexer-listen`); its limits are the `--indexer-*` flags
    /// given to [`flags`](Self::flags), or their defaults.
    pub fn indexer(mut self) -> Self {
        self.indexer = true;
        self
    }

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

    /// The arguments of `control-plane serve` on `data_dir`: the nodes, the
    /// runtime (none without nodes, else processes, unless the flags
    /// choose), the timing, the flags. `name_node_binary` names this
    /// build's `farm-node`, which the binary finds beside itself but a
    /// control plane in a test process does not.
    pub(crate) fn serve_args(&self, data_dir: &Path, name_node_binary: bool) -> Vec<String> {
        let data_dir = data_dir.to_str().expect("a UTF-8 path");
        let mut args = ["--data-dir", data_dir, "--nodes", &self.nodes.to_string()]
            .map(str::to_owned)
            .to_vec();
        if self.flags.iter().any(|f| f == "--runtime") {
            // The caller picks the runtime (Docker tests).
        } else if self.nodes == 0 {
            args.extend(["--runtime".into(), "none".into()]);
        } else {
            args.extend(["--runtime".into(), "process".into()]);
            if name_node_binary {
                let node = binary("farm-node");
                let node = node.to_str().expect("a UTF-8 path").to_owned();
                args.extend(["--node-binary".into(), node]);
            }
        }
        args.extend(self.timing.iter().cloned());
        args.extend(self.flags.iter().cloned());
        args
    }
}

impl FarmBuilder {
    /// An existing data folder, such as one [`Farm::stop`] returned.
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.kind.dir = Some(dir);
        self
    }

    /// A listener bound already: a restarted control plane takes its old
    /// port.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.kind.listener = Some(listener);
        self
    }

    /// Starts serving; returns once the port is bound (the farm's nodes
    /// come up after).
    pub async fn start(mut self) -> Farm {
        let dir = match self.kind.dir.take() {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("a temporary data folder"),
        };
        let mut args = self.serve_args(dir.path(), true);
        // Bound here, like the API's port. Naming it in the flags makes the
        // configuration carry the `--indexer-*` limits, as the binary's.
        let indexer = if self.indexer {
            let listener = TcpListener::bind("127.0.0.1:0").await;
            Some(listener.expect("bind the catalog's port"))
        } else {
            None
        };
        let indexer_addr = indexer
            .as_ref()
            .map(|l| l.local_addr().expect("the catalog's bound address"));
        if let Some(addr) = indexer_addr {
            args.extend(["--indexer-listen".to_owned(), addr.to_string()]);
        }
        let command_line = ["control-plane", "serve"]
            .into_iter()
            .chain(args.iter().map(String::as_str));
        let cli =
            Cli::try_parse_from(command_line).unwrap_or_else(|e| panic!("flags {args:?}: {e}"));
        let Command::Serve(serve) = cli.command;
        let config = ServeConfig::try_from(&serve).expect("a valid configuration");
        let listener = match self.kind.listener.take() {
            Some(listener) => listener,
            None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let addr = listener.local_addr().expect("the bound address");
        let (tx, rx) = oneshot::channel();
        let listeners = Listeners {
            api: listener,
            indexer,
        };
        let task = tokio::spawn(control_plane::serve::run(config, listeners, async {
            let _ = rx.await;
        }));
        Farm {
            addr,
            dir,
            indexer: indexer_addr,
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
        Builder::new(InProcess::default())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the catalog's line protocol listens; panics unless started
    /// with [`Builder::indexer`].
    pub fn indexer_addr(&self) -> SocketAddr {
        self.indexer
            .expect("the farm was started without the catalog's line protocol (`.indexer()`)")
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

deref_to_api!(Farm);

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
