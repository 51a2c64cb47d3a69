//! A whole control plane in this process on `127.0.0.1:0` (`--runtime
//! none`: no nodes of its own), for the tests that need one.

#![allow(dead_code)]

use clap::Parser;
use control_plane::config::{Cli, Command as CpCommand, ServeConfig};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

/// A control plane serving in this process; stops when dropped.
pub struct ControlPlane {
    pub url: String,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), control_plane::serve::ServeError>>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ControlPlane {
    /// Starts one with `extra` flags after `serve --runtime none --nodes 0`.
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_str().expect("utf-8 path").to_owned();
        let mut args = vec![
            "control-plane",
            "serve",
            "--runtime",
            "none",
            "--nodes",
            "0",
            "--data-dir",
            &data_dir,
        ];
        args.extend_from_slice(extra);
        let Ok(Cli {
            command: CpCommand::Serve(serve),
        }) = Cli::try_parse_from(args)
        else {
            panic!("control-plane flags");
        };
        let config = ServeConfig::try_from(&serve).expect("control-plane config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(control_plane::serve::run(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            url,
            _dir: dir,
            _stop: stop,
            task,
        }
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect_lazy()
    }
}
