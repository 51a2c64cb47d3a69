//! The one port speaks plain HTTP/1.1 and gRPC-Web next to gRPC, to the
//! browsers it trusts: its own pages and the `--cors-origin`s, addressed by
//! an IP address, `localhost` or an `--allowed-host`. Requests are written
//! by hand, byte for byte, as a browser (or an attacker's page) sends them.

mod common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use common::Farm;
use farm_api::v1::{ListNodesRequest, ScaleRequest, farm_client::FarmClient};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::Endpoint;

/// Sends one raw HTTP/1.1 request and returns the whole response.
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// `GET path` addressed to `host`.
async fn get(addr: SocketAddr, path: &str, host: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    http(addr, request.as_bytes()).await
}

/// A gRPC-Web unary call of `path` with `message`, addressed to `host`,
/// from a page of `origin` when given.
async fn grpc_web(
    addr: SocketAddr,
    path: &str,
    host: &str,
    origin: Option<&str>,
    message: &[u8],
) -> String {
    let origin = origin.map_or_else(String::new, |o| format!("origin: {o}\r\n"));
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n\
content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n{origin}\
content-length: {}\r\nConnection: close\r\n\r\n",
        message.len() + 5
    )
    .into_bytes();
    request.push(0);
    request.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    request.extend_from_slice(message);
    http(addr, &request).await
}

/// The CORS preflight a browser sends before a gRPC-Web call from `origin`.
async fn preflight(addr: SocketAddr, host: &str, origin: &str) -> String {
    let request = format!(
        "OPTIONS /farm.v1.Farm/ListNodes HTTP/1.1\r\nHost: {host}\r\n\
origin: {origin}\r\naccess-control-request-method: POST\r\n\
access-control-request-headers: content-type,x-grpc-web,authorization\r\nConnection: close\r\n\r\n"
    );
    http(addr, request.as_bytes()).await.to_ascii_lowercase()
}

/// How many managed nodes `/readyz` says are desired.
async fn desired(farm: &Farm) -> String {
    let readyz = get(farm.addr, "/readyz", &farm.addr.to_string()).await;
    let (_, tail) = readyz.split_once("healthy, ").expect("readyz body");
    tail.trim().to_owned()
}

#[tokio::test]
async fn probes_answer_over_http1() {
    let farm = Farm::start(0, &[]).await;
    let host = farm.addr.to_string();
    let healthz = get(farm.addr, "/healthz", &host).await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert!(healthz.ends_with("ok\n"), "{healthz}");
    let readyz = get(farm.addr, "/readyz", &host).await;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(readyz.contains("ready"), "{readyz}");
    let index = get(farm.addr, "/", &host).await;
    assert!(index.contains("farm.v1.Discovery"), "{index}");
    let missing = get(farm.addr, "/no-such-page", &host).await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    // Probes may dial by name too, and some send no port.
    for host in [
        format!("localhost:{}", farm.addr.port()),
        "localhost".into(),
    ] {
        let healthz = get(farm.addr, "/healthz", &host).await;
        assert!(healthz.starts_with("HTTP/1.1 200"), "{host}: {healthz}");
    }
}

#[tokio::test]
async fn a_cross_origin_preflight_is_refused() {
    let farm = Farm::start(0, &[]).await;
    let host = farm.addr.to_string();

    let shown = preflight(farm.addr, &host, "https://evil.example").await;
    assert!(shown.starts_with("http/1.1 403"), "{shown}");
    assert!(!shown.contains("access-control-allow-origin"), "{shown}");
    assert!(shown.contains("--cors-origin"), "says which flag: {shown}");

    // Without a preflight (a browser sends none for some requests, a
    // script outside a browser never does), the call itself is refused.
    let shown = grpc_web(
        farm.addr,
        "/farm.v1.Discovery/ListGroups",
        &host,
        Some("https://evil.example"),
        &[],
    )
    .await;
    assert!(shown.starts_with("HTTP/1.1 403"), "{shown}");
    assert!(!shown.contains("default"), "no data: {shown}");

    // The control plane's own pages may call it.
    let own = format!("http://{host}");
    let shown = preflight(farm.addr, &host, &own).await;
    assert!(shown.starts_with("http/1.1 200"), "{shown}");
    assert!(
        shown.contains(&format!("access-control-allow-origin: {own}")),
        "{shown}"
    );
    let shown = grpc_web(
        farm.addr,
        "/farm.v1.Discovery/ListGroups",
        &host,
        Some(&own),
        &[],
    )
    .await;
    assert!(shown.starts_with("HTTP/1.1 200"), "{shown}");
    assert!(shown.contains("default"), "the default group: {shown}");
    assert!(shown.contains("grpc-status:0"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_rebinding_post_is_refused_and_changes_nothing() {
    let farm = Farm::start(2, &[]).await;
    farm.wait_healthy(2, Duration::from_secs(20)).await;
    assert_eq!(desired(&farm).await, "2 managed nodes desired");
    let scale_to_one = ScaleRequest { nodes: 1 }.encode_to_vec();
    let rebound = format!("evil.example:{}", farm.addr.port());

    // `evil.example` now resolves to 127.0.0.1: the browser sends the page's
    // own name as Host, and its origin (the same one, or any other).
    for origin in [
        "https://evil.example".to_owned(),
        format!("http://{rebound}"),
    ] {
        let shown = grpc_web(
            farm.addr,
            "/farm.v1.Farm/Scale",
            &rebound,
            Some(&origin),
            &scale_to_one,
        )
        .await;
        assert!(shown.starts_with("HTTP/1.1 421"), "{origin}: {shown}");
        assert!(shown.contains("--allowed-host"), "{shown}");
        assert!(!shown.contains("grpc-status"), "no handler ran: {shown}");
    }
    // Reading is refused too.
    let metrics = get(farm.addr, "/metrics", &rebound).await;
    assert!(metrics.starts_with("HTTP/1.1 421"), "{metrics}");
    assert!(!metrics.contains("farm_"), "{metrics}");

    assert_eq!(desired(&farm).await, "2 managed nodes desired");
    let nodes = farm.nodes().await;
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    assert!(nodes.iter().all(common::healthy), "{nodes:#?}");

    // The same call from the control plane's own page does scale: the
    // refusal above is what kept the farm at two.
    let host = farm.addr.to_string();
    let shown = grpc_web(
        farm.addr,
        "/farm.v1.Farm/Scale",
        &host,
        Some(&format!("http://{host}")),
        &scale_to_one,
    )
    .await;
    assert!(shown.starts_with("HTTP/1.1 200"), "{shown}");
    assert!(shown.contains("grpc-status:0"), "{shown}");
    assert_eq!(desired(&farm).await, "1 managed nodes desired");
}

#[tokio::test]
async fn a_configured_origin_may_call() {
    let dev = "http://localhost:5173";
    let farm = Farm::start(0, &["--cors-origin", dev]).await;
    let host = farm.addr.to_string();

    let shown = preflight(farm.addr, &host, dev).await;
    assert!(shown.starts_with("http/1.1 200"), "{shown}");
    assert!(
        shown.contains(&format!("access-control-allow-origin: {dev}")),
        "{shown}"
    );
    assert!(shown.contains("access-control-allow-headers"), "{shown}");
    assert!(
        !shown.contains("access-control-allow-credentials"),
        "{shown}"
    );

    let shown = grpc_web(
        farm.addr,
        "/farm.v1.Discovery/ListGroups",
        &host,
        Some(dev),
        &[],
    )
    .await;
    assert!(shown.starts_with("HTTP/1.1 200"), "{shown}");
    let lower = shown.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/grpc-web+proto"),
        "{shown}"
    );
    assert!(shown.contains("default"), "the default group: {shown}");
    assert!(
        shown.contains("grpc-status:0"),
        "trailers carry OK: {shown}"
    );
    assert!(
        lower.contains(&format!("access-control-allow-origin: {dev}")),
        "{shown}"
    );
    assert!(
        lower.contains("access-control-expose-headers") && lower.contains("grpc-status"),
        "{shown}"
    );

    // Only that one: another port is another origin.
    let shown = preflight(farm.addr, &host, "http://localhost:5174").await;
    assert!(shown.starts_with("http/1.1 403"), "{shown}");

    // `*` opens every origin, when asked for, and still no foreign host.
    let open = Farm::start(0, &["--cors-origin", "*"]).await;
    let host = open.addr.to_string();
    let shown = preflight(open.addr, &host, "https://anyone.example").await;
    assert!(shown.starts_with("http/1.1 200"), "{shown}");
    assert!(
        shown.contains("access-control-allow-origin: https://anyone.example"),
        "{shown}"
    );
    let shown = preflight(open.addr, "anyone.example", "https://anyone.example").await;
    assert!(shown.starts_with("http/1.1 421"), "{shown}");
}

#[tokio::test]
async fn allowed_hosts_pass_and_grpc_clients_dial_by_any_name() {
    let farm = Farm::start(0, &["--allowed-host", "farm.example"]).await;
    let port = farm.addr.port();
    let index = get(farm.addr, "/", &format!("farm.example:{port}")).await;
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    let page = format!("http://farm.example:{port}");
    let shown = preflight(farm.addr, &format!("farm.example:{port}"), &page).await;
    assert!(shown.starts_with("http/1.1 200"), "same origin: {shown}");
    let other = get(farm.addr, "/", &format!("other.example:{port}")).await;
    assert!(other.starts_with("HTTP/1.1 421"), "{other}");

    // Over h2 without an Origin, a client (a node on a container network,
    // grpcurl through a tunnel) may use any name.
    let channel = Endpoint::from_shared(farm.url())
        .expect("url")
        .origin(
            format!("http://control-plane.internal:{port}")
                .parse()
                .expect("uri"),
        )
        .connect_lazy();
    FarmClient::new(channel.clone())
        .list_nodes(ListNodesRequest::default())
        .await
        .expect("a gRPC client by any name");
    // One that claims to be a page of another origin is a browser call.
    let mut request = tonic::Request::new(ListNodesRequest::default());
    request
        .metadata_mut()
        .insert("origin", "https://evil.example".parse().expect("value"));
    let refused = FarmClient::new(channel)
        .list_nodes(request)
        .await
        .expect_err("an untrusted origin");
    assert!(refused.message().contains("421"), "{refused:?}");
}

/// Runs `control-plane serve` with `args` and `env`, which must refuse to
/// start; returns its exit code and standard error.
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(common::binary("control-plane"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--runtime", "none", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("FARM_CORS_ORIGIN")
        .env_remove("FARM_ALLOWED_HOST")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run control-plane");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn malformed_origins_and_hosts_are_usage_errors() {
    let (code, stderr) = serve_refused(&["--cors-origin", "evil.example"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--cors-origin \"evil.example\" is not an origin"),
        "{stderr}"
    );
    assert!(stderr.contains("no scheme"), "{stderr}");
    let (code, stderr) = serve_refused(
        &[],
        &[(
            "FARM_CORS_ORIGIN",
            "http://localhost:5173,https://evil.example/path",
        )],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no path"), "{stderr}");
    let (code, stderr) = serve_refused(&[], &[("FARM_ALLOWED_HOST", "farm.example:8080")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--allowed-host") && stderr.contains("without a port"),
        "{stderr}"
    );

    let help = std::process::Command::new(common::binary("control-plane"))
        .args(["serve", "--help"])
        .output()
        .expect("run control-plane");
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--cors-origin <ORIGIN>",
        "FARM_CORS_ORIGIN",
        "`*` allows every origin",
        "--allowed-host <HOST>",
        "FARM_ALLOWED_HOST",
        "DNS rebinding",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}
