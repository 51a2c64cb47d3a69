//! The one port under connections that never make a request: silent ones
//! by the thousand, more than the file limit allows, and slowloris clients
//! that send half a request. Calls and node registrations still get
//! through, the port closes what it must, and `/metrics` says so.
//!
//! Each test runs `control-plane serve` as a child process (under
//! util-linux's `prlimit` where it needs a low file limit) and floods it
//! from plain TCP sockets on loopback; everything closes when the test
//! ends.

use std::{net::SocketAddr, time::Duration};

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use farm_api::v1::{HeartbeatRequest, ListNodesRequest, RegisterRequest};
use farm_testkit::{ControlPlaneProcess, eventually, http, process::cpu_seconds};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::Code;

/// More connections than the low file limits below leave room for.
const FLOOD: usize = 1000;
/// Long enough for a loaded machine; the port answers in milliseconds.
const LIMIT: Duration = Duration::from_secs(60);

/// The value of the series `series` (name and labels, as written) in
/// `/metrics`.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = http::get(addr, "/metrics").await.text();
    http::series(&text, series).unwrap_or_else(|| panic!("{series} in /metrics:\n{text}"))
}

/// `count` connections to `addr` that send nothing.
async fn silent(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let connection = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
            .await
            .expect("the port takes connections within the limit");
        connections.push(connection.expect("connect"));
    }
    connections
}

/// Whether the server closed `connection` (it reads the end, or an error).
async fn closed_by_server(connection: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(1), connection.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn node(name: &str) -> RegisterRequest {
    RegisterRequest {
        name: name.to_owned(),
        address: "127.0.0.1:1".to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn silent_connections_past_the_limit_do_not_lock_out_calls_or_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The soft limit is raised to the hard one at start, and three quarters
    // of it (384) may be connections.
    let farm = ControlPlaneProcess::builder(dir.path())
        .file_limit(256, 512)
        .start()
        .await;
    assert_eq!(metric(farm.addr, "process_max_fds").await, 512.0);

    let mut flood = silent(farm.addr, FLOOD).await;
    // A call and a registration beside them, each on a connection of its
    // own, opened after the flood.
    let nodes = tokio::time::timeout(LIMIT, farm.try_nodes())
        .await
        .expect("a call answered beside the flood");
    assert_eq!(nodes.expect("ListNodes").len(), 0);
    let registered = tokio::time::timeout(LIMIT, farm.registry().register(node("flooded")))
        .await
        .expect("a registration answered beside the flood")
        .expect("Register")
        .into_inner();
    assert!(!registered.node_id.is_empty());

    // Room was made by closing the oldest silent connections, never more
    // than the limit was open, and the clients saw their connections close.
    let displaced = metric(
        farm.addr,
        r#"farm_connections_closed_total{reason="displaced"}"#,
    )
    .await;
    assert!(
        displaced >= (FLOOD - 384) as f64,
        "{displaced} silent connections closed to make room for {FLOOD} over a limit of 384"
    );
    assert!(metric(farm.addr, "farm_connections_open").await <= 384.0);
    let mut seen_closed = 0;
    for connection in &mut flood {
        if closed_by_server(connection).await {
            seen_closed += 1;
        }
    }
    assert!(
        seen_closed as f64 >= displaced - 4.0,
        "{seen_closed} closed seen by the clients, {displaced} counted"
    );
    stops_cleanly(farm).await;
}

/// After its flood, the control plane still shuts down in order.
async fn stops_cleanly(mut farm: ControlPlaneProcess) {
    let status = farm.terminate(LIMIT).await;
    assert!(status.success(), "the control plane ended with {status}");
}

#[tokio::test]
async fn running_out_of_descriptors_pauses_accepting_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A connection limit above the file limit: accepting runs out of
    // descriptors. Silent connections are closed after a second.
    let farm = ControlPlaneProcess::builder(dir.path())
        .file_limit(256, 256)
        .flags(&[
            "--max-connections",
            "5000",
            "--idle-connection-timeout",
            "1s",
        ])
        .start()
        .await;
    let cpu_before = cpu_seconds(farm.id());
    let flood = silent(farm.addr, FLOOD / 2).await;
    // Once the silent ones are closed, descriptors come back, and calls
    // and registrations are answered again.
    let registered = eventually("a registration after the flood", LIMIT, || async {
        farm.registry().register(node("after-the-flood")).await
    })
    .await;
    assert!(!registered.into_inner().node_id.is_empty());
    let failures = metric(farm.addr, "farm_accept_failures_total").await;
    assert!(failures >= 1.0, "accept failed {failures} times");
    let idle = metric(farm.addr, r#"farm_connections_closed_total{reason="idle"}"#).await;
    assert!(idle >= 1.0, "{idle} idle connections closed");
    // Not a timing assertion: a figure to read in the test's output. Before
    // accepting paused, the process spun on `accept` at a whole core.
    println!(
        "{failures} failed accepts; control plane CPU over the flood: {:.2} s",
        cpu_seconds(farm.id()) - cpu_before
    );
    drop(flood);
    stops_cleanly(farm).await;
}

#[tokio::test]
async fn slowloris_connections_are_closed_and_do_not_slow_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = ControlPlaneProcess::builder(dir.path())
        .flags(&["--header-read-timeout", "2s"])
        .start()
        .await;
    // Half a request each: a request line and one header, never the blank
    // line that ends them.
    let mut slow = Vec::with_capacity(FLOOD);
    for connection in silent(farm.addr, FLOOD).await {
        let mut connection = connection;
        connection
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .expect("half a request");
        slow.push(connection);
    }
    let started = std::time::Instant::now();
    let nodes = tokio::time::timeout(LIMIT, farm.try_nodes())
        .await
        .expect("a call answered beside slowloris");
    assert!(nodes.is_ok(), "{nodes:?}");
    println!(
        "ListNodes beside {FLOOD} slowloris connections: {:?}",
        started.elapsed()
    );
    // Each is closed once the header timeout has passed.
    for (i, connection) in slow.iter_mut().enumerate() {
        let mut rest = Vec::new();
        let end = tokio::time::timeout(LIMIT, connection.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("slowloris connection {i} still open"));
        assert!(
            end.is_err() || rest.is_empty(),
            "connection {i} was answered: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    let closed = metric(
        farm.addr,
        r#"farm_connections_closed_total{reason="slow_headers"}"#,
    )
    .await;
    assert_eq!(closed, FLOOD as f64);
    stops_cleanly(farm).await;
}

#[tokio::test]
async fn calls_past_the_stream_limit_wait_for_a_free_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = ControlPlaneProcess::builder(dir.path())
        .flags(&["--max-streams-per-connection", "2"])
        .start()
        .await;
    // Two streams that stay open take the connection's two.
    let first = farm.watch().await;
    let second = farm.watch().await;
    // A third call on the same connection is held by the client, not
    // answered beside them...
    let mut third = Box::pin(farm.try_nodes());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third call ran beside two open streams"
    );
    // ...until a stream ends.
    drop(first);
    let nodes = tokio::time::timeout(LIMIT, third)
        .await
        .expect("answered once a stream is free");
    assert!(nodes.is_ok(), "{nodes:?}");
    drop(second);
    stops_cleanly(farm).await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = ControlPlaneProcess::builder(dir.path())
        .flags(&["--keepalive-interval", "1s", "--keepalive-timeout", "1s"])
        .start()
        .await;
    // An HTTP/2 client that says hello, then goes quiet without closing (a
    // frozen process, a cut cable): it never answers a ping.
    let mut quiet = TcpStream::connect(farm.addr).await.expect("connect");
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    quiet
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let mut received = Vec::new();
    // Read until the control plane closes it (cleanly or with a reset).
    let _end = tokio::time::timeout(LIMIT, quiet.read_to_end(&mut received))
        .await
        .expect("closed by the control plane");
    // It was pinged before it was closed: a PING frame (type 6) came.
    assert!(
        frames(&received).contains(&6),
        "frame types received: {:?}",
        frames(&received)
    );
    stops_cleanly(farm).await;
}

/// The types of the HTTP/2 frames in `bytes`, in order.
fn frames(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn a_saturated_control_plane_sheds_farm_wide_reads_and_keeps_heartbeats() {
    const NODES: usize = 3000;
    const READERS: usize = 32;
    let dir = tempfile::tempdir().expect("tempdir");
    // The product's timing, with shedding past 5 ms of lag.
    let farm = ControlPlaneProcess::builder(dir.path())
        .timing(&["--shed-lag", "5ms"])
        .start()
        .await;
    // A farm large enough that listing it costs: registered directly.
    let registering: Vec<_> = (0..16)
        .map(|worker| {
            let mut registry = farm.registry();
            tokio::spawn(async move {
                for i in (worker..NODES).step_by(16) {
                    registry
                        .register(node(&format!("listed-{i}")))
                        .await
                        .expect("Register");
                }
            })
        })
        .collect();
    for worker in registering {
        worker.await.expect("registering");
    }
    // One node heartbeats every 50 ms throughout.
    let beating = farm
        .registry()
        .register(node("beating"))
        .await
        .expect("Register")
        .into_inner();
    let (beats, rx) = tokio::sync::mpsc::channel(16);
    let mut acks = farm
        .registry()
        .heartbeat(ReceiverStream::new(rx))
        .await
        .expect("Heartbeat")
        .into_inner();
    let sent = Arc::new(AtomicU64::new(0));
    let heart = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            for seq in 1..=80u64 {
                let beat = HeartbeatRequest {
                    node_id: beating.node_id.clone(),
                    secret: beating.secret.clone(),
                    seq,
                    serving: true,
                    ..Default::default()
                };
                if beats.send(beat).await.is_err() {
                    return;
                }
                sent.store(seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Meanwhile, readers list the whole farm as fast as they are answered.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let mut farm_client = farm.farm();
            tokio::spawn(async move {
                let (mut served, mut shed) = (0u64, 0u64);
                while tokio::time::Instant::now() < until {
                    match farm_client.list_nodes(ListNodesRequest::default()).await {
                        Ok(_) => served += 1,
                        Err(status) if status.code() == Code::Unavailable => {
                            assert!(status.message().contains("saturated"), "{status:?}");
                            shed += 1;
                        }
                        Err(status) => panic!("ListNodes: {status:?}"),
                    }
                }
                (served, shed)
            })
        })
        .collect();
    let (mut served, mut shed) = (0, 0);
    for reader in readers {
        let (s, d) = reader.await.expect("reader");
        served += s;
        shed += d;
    }
    heart.await.expect("heartbeats");
    // Every heartbeat was acknowledged, in order, none refused.
    let mut acknowledged = 0;
    while acknowledged < sent.load(Ordering::Relaxed) {
        let ack = tokio::time::timeout(LIMIT, acks.next())
            .await
            .expect("acknowledged within the limit")
            .expect("the stream stays open")
            .expect("an acknowledgement");
        acknowledged += 1;
        assert_eq!(ack.ack_seq, acknowledged);
    }
    println!(
        "{served} ListNodes of {NODES} nodes served, {shed} shed, {acknowledged} heartbeats acknowledged"
    );
    assert!(shed > 0, "no read was shed ({served} served)");
    assert!(served > 0, "every read was shed");
    assert!(metric(farm.addr, "farm_calls_shed_total").await >= shed as f64);
    // Once the readers are gone, reads are served again.
    eventually("ListNodes served again", LIMIT, || farm.try_nodes()).await;
    stops_cleanly(farm).await;
}
