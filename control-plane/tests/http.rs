//! The one port speaks plain HTTP/1.1 and gRPC-Web next to gRPC, to the
//! browsers it trusts: its own pages and the `--cors-origin`s, addressed by
//! an IP address, `localhost` or an `--allowed-host`. Every request names
//! its `Host` and `Origin` exactly, as a browser (or an attacker's page)
//! sends them.

use std::{net::SocketAddr, time::Duration};

use farm_api::v1::{ListNodesRequest, ScaleRequest, farm_client::FarmClient};
use farm_testkit::{
    Farm, binary, grpc_web, healthy,
    http::{Request, Response},
    process,
};
use http::Version;
use prost::Message;
use tonic::transport::Endpoint;

/// `GET path` addressed to `host`.
async fn get(addr: SocketAddr, path: &str, host: &str) -> Response {
    Request::get(addr, path).host(host).send().await
}

/// A gRPC-Web unary call of `path` with `message`, addressed to `host`,
/// from a page of `origin`.
async fn grpc_web(
    addr: SocketAddr,
    path: &str,
    host: &str,
    origin: &str,
    message: &[u8],
) -> Response {
    grpc_web::call(addr, path, message)
        .host(host)
        .header("origin", origin)
        .send()
        .await
}

/// The CORS preflight a browser sends before a gRPC-Web call from `origin`.
async fn preflight(addr: SocketAddr, host: &str, origin: &str) -> Response {
    grpc_web::preflight(addr, "/farm.v1.Farm/ListNodes", origin)
        .host(host)
        .send()
        .await
}

/// How many managed nodes `/readyz` says are desired.
async fn desired(farm: &Farm) -> String {
    let readyz = get(farm.addr, "/readyz", &farm.addr.to_string())
        .await
        .text();
    let (_, tail) = readyz.split_once("healthy, ").expect("readyz body");
    tail.trim().to_owned()
}

#[tokio::test]
async fn probes_answer_over_http1() {
    let farm = Farm::start(0, &[]).await;
    let host = farm.addr.to_string();
    let healthz = get(farm.addr, "/healthz", &host).await;
    assert_eq!(
        (healthz.version, healthz.status.as_u16()),
        (Version::HTTP_11, 200),
        "{healthz}"
    );
    assert!(healthz.text().ends_with("ok\n"), "{healthz}");
    let readyz = get(farm.addr, "/readyz", &host).await;
    assert_eq!(readyz.status, 200, "{readyz}");
    assert!(readyz.text().contains("ready"), "{readyz}");
    let index = get(farm.addr, "/", &host).await;
    assert!(
        index.text().contains(r#"<div id="app">"#),
        "the dashboard: {index}"
    );
    let missing = get(farm.addr, "/no-such-page", &host).await;
    assert_eq!(missing.status, 404, "{missing}");
    // Probes may dial by name too, and some send no port.
    for host in [
        format!("localhost:{}", farm.addr.port()),
        "localhost".into(),
    ] {
        let healthz = get(farm.addr, "/healthz", &host).await;
        assert_eq!(healthz.status, 200, "{host}: {healthz}");
    }
}

/// The dashboard: `/` is its page, revalidated at every load (it names the
/// current bundle); the script it names is cached for good, and compressed
/// for browsers that accept it.
#[tokio::test]
async fn the_dashboard_is_served_compressed_and_cached() {
    let farm = Farm::start(0, &[]).await;
    let host = farm.addr.to_string();
    let page = get(farm.addr, "/", &host).await;
    assert_eq!(page.status, 200, "{page}");
    assert_eq!(page.header("content-type"), Some("text/html"), "{page}");
    assert_eq!(page.header("cache-control"), Some("no-cache"), "{page}");
    let etag = page.header("etag").expect("an ETag");
    let again = Request::get(farm.addr, "/")
        .host(&host)
        .header("if-none-match", etag)
        .send()
        .await;
    assert_eq!(again.status, 304, "unchanged: {again}");

    let html = page.text();
    let script = html
        .split(r#"<script type="module" src=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the page names its script: {html}"));
    let plain = get(farm.addr, script, &host).await;
    assert_eq!(plain.status, 200, "{script}");
    assert_eq!(plain.header("content-type"), Some("text/javascript"));
    assert_eq!(
        plain.header("cache-control"),
        Some("max-age=31536000, immutable")
    );
    let zipped = Request::get(farm.addr, script)
        .host(&host)
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert!(
        zipped
            .header("vary")
            .is_some_and(|v| v.contains("accept-encoding")),
        "caches keep the encodings apart: {:?}",
        zipped.headers
    );
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&zipped.body[..]),
        &mut unzipped,
    )
    .expect("gzip");
    assert_eq!(unzipped, plain.body, "the same script");
    assert!(
        zipped.body.len() * 2 < plain.body.len(),
        "{} bytes gzipped of {}",
        zipped.body.len(),
        plain.body.len()
    );

    // The chunks the script imports, which the page fetches beside it.
    let chunks: Vec<&str> = html
        .split(r#"<link rel="modulepreload" href=""#)
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(!chunks.is_empty(), "the page preloads its chunks: {html}");
    for chunk in chunks {
        let served = get(farm.addr, chunk, &host).await;
        assert_eq!(served.status, 200, "{chunk}");
        assert_eq!(served.header("content-type"), Some("text/javascript"));
        assert_eq!(
            served.header("cache-control"),
            Some("max-age=31536000, immutable"),
            "{chunk}"
        );
    }
}

#[tokio::test]
async fn a_cross_origin_preflight_is_refused() {
    let farm = Farm::start(0, &[]).await;
    let host = farm.addr.to_string();

    let shown = preflight(farm.addr, &host, "https://evil.example").await;
    assert_eq!(shown.status, 403, "{shown}");
    assert!(
        !shown
            .to_string()
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{shown}"
    );
    assert!(
        shown.text().contains("--cors-origin"),
        "says which flag: {shown}"
    );

    // Without a preflight (a browser sends none for some requests, a
    // script outside a browser never does), the call itself is refused.
    let shown = grpc_web(
        farm.addr,
        "/farm.v1.Discovery/ListGroups",
        &host,
        "https://evil.example",
        &[],
    )
    .await;
    assert_eq!(shown.status, 403, "{shown}");
    assert!(!shown.to_string().contains("default"), "no data: {shown}");

    // The control plane's own pages may call it.
    let own = format!("http://{host}");
    let shown = preflight(farm.addr, &host, &own).await;
    assert_eq!(shown.status, 200, "{shown}");
    assert_eq!(
        shown.header("access-control-allow-origin"),
        Some(own.as_str()),
        "{shown}"
    );
    let shown = grpc_web(farm.addr, "/farm.v1.Discovery/ListGroups", &host, &own, &[]).await;
    assert_eq!(shown.status, 200, "{shown}");
    assert!(
        shown.text().contains("default"),
        "the default group: {shown}"
    );
    assert_eq!(shown.grpc_status(), Some(0), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_rebinding_post_is_refused_and_changes_nothing() {
    let farm = Farm::start(2, &[]).await;
    farm.wait_healthy(2, Duration::from_secs(20)).await;
    assert_eq!(desired(&farm).await, "2 managed nodes desired");
    let scale_to_one = ScaleRequest { nodes: Some(1) }.encode_to_vec();
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
            &origin,
            &scale_to_one,
        )
        .await;
        assert_eq!(shown.status, 421, "{origin}: {shown}");
        assert!(shown.text().contains("--allowed-host"), "{shown}");
        assert!(
            !shown.to_string().contains("grpc-status"),
            "no handler ran: {shown}"
        );
    }
    // Reading is refused too.
    let metrics = get(farm.addr, "/metrics", &rebound).await;
    assert_eq!(metrics.status, 421, "{metrics}");
    assert!(!metrics.to_string().contains("farm_"), "{metrics}");

    assert_eq!(desired(&farm).await, "2 managed nodes desired");
    let nodes = farm.nodes().await;
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    assert!(nodes.iter().all(healthy), "{nodes:#?}");

    // The same call from the control plane's own page does scale: the
    // refusal above is what kept the farm at two.
    let host = farm.addr.to_string();
    let shown = grpc_web(
        farm.addr,
        "/farm.v1.Farm/Scale",
        &host,
        &format!("http://{host}"),
        &scale_to_one,
    )
    .await;
    assert_eq!(shown.status, 200, "{shown}");
    assert_eq!(shown.grpc_status(), Some(0), "{shown}");
    assert_eq!(desired(&farm).await, "1 managed nodes desired");
}

#[tokio::test]
async fn a_configured_origin_may_call() {
    let dev = "http://localhost:5173";
    let farm = Farm::start(0, &["--cors-origin", dev]).await;
    let host = farm.addr.to_string();

    let shown = preflight(farm.addr, &host, dev).await;
    assert_eq!(shown.status, 200, "{shown}");
    assert_eq!(
        shown.header("access-control-allow-origin"),
        Some(dev),
        "{shown}"
    );
    assert!(
        shown.headers.contains_key("access-control-allow-headers"),
        "{shown}"
    );
    assert!(
        !shown
            .to_string()
            .to_ascii_lowercase()
            .contains("access-control-allow-credentials"),
        "{shown}"
    );

    let shown = grpc_web(farm.addr, "/farm.v1.Discovery/ListGroups", &host, dev, &[]).await;
    assert_eq!(shown.status, 200, "{shown}");
    assert_eq!(
        shown.header("content-type"),
        Some(grpc_web::CONTENT_TYPE),
        "{shown}"
    );
    assert!(
        shown.text().contains("default"),
        "the default group: {shown}"
    );
    assert_eq!(shown.grpc_status(), Some(0), "trailers carry OK: {shown}");
    assert_eq!(
        shown.header("access-control-allow-origin"),
        Some(dev),
        "{shown}"
    );
    assert!(
        shown
            .header("access-control-expose-headers")
            .is_some_and(|h| h.to_ascii_lowercase().contains("grpc-status")),
        "{shown}"
    );

    // Only that one: another port is another origin.
    let shown = preflight(farm.addr, &host, "http://localhost:5174").await;
    assert_eq!(shown.status, 403, "{shown}");

    // `*` opens every origin, when asked for, and still no foreign host.
    let open = Farm::start(0, &["--cors-origin", "*"]).await;
    let host = open.addr.to_string();
    let shown = preflight(open.addr, &host, "https://anyone.example").await;
    assert_eq!(shown.status, 200, "{shown}");
    assert_eq!(
        shown.header("access-control-allow-origin"),
        Some("https://anyone.example"),
        "{shown}"
    );
    let shown = preflight(open.addr, "anyone.example", "https://anyone.example").await;
    assert_eq!(shown.status, 421, "{shown}");
}

#[tokio::test]
async fn allowed_hosts_pass_and_grpc_clients_dial_by_any_name() {
    let farm = Farm::start(0, &["--allowed-host", "farm.example"]).await;
    let port = farm.addr.port();
    let index = get(farm.addr, "/", &format!("farm.example:{port}")).await;
    assert_eq!(index.status, 200, "{index}");
    let page = format!("http://farm.example:{port}");
    let shown = preflight(farm.addr, &format!("farm.example:{port}"), &page).await;
    assert_eq!(shown.status, 200, "same origin: {shown}");
    let other = get(farm.addr, "/", &format!("other.example:{port}")).await;
    assert_eq!(other.status, 421, "{other}");

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

/// Runs `control-plane serve` on a free port with `args` and `env`, which
/// must refuse to start; returns its exit code and standard error.
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    process::serve_refused(&[&["--listen", "127.0.0.1:0"], args].concat(), env)
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

    let help = std::process::Command::new(binary("control-plane"))
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

/// A page of the control plane's own origin indexes and queries the
/// catalog through gRPC-Web, as the dashboard does.
#[tokio::test]
async fn the_catalog_answers_grpc_web_from_the_same_origin() {
    use farm_api::v1::{IndexRequest, QueryRequest, QueryResponse};
    let farm = Farm::start(0, &[]).await;
    let host = farm.addr.to_string();
    let origin = format!("http://{host}");
    let index = IndexRequest {
        name: "gtk+".into(),
        dependencies: vec![],
    }
    .encode_to_vec();
    let shown = grpc_web(farm.addr, "/farm.v1.Catalog/Index", &host, &origin, &index).await;
    assert_eq!(shown.grpc_status(), Some(0), "{shown}");
    for (name, indexed) in [("gtk+", true), ("GTK+", false)] {
        let query = QueryRequest { name: name.into() }.encode_to_vec();
        let shown = grpc_web(farm.addr, "/farm.v1.Catalog/Query", &host, &origin, &query).await;
        assert_eq!(shown.grpc_status(), Some(0), "{shown}");
        let messages = shown.grpc_messages();
        let reply = QueryResponse::decode(messages[0].as_slice()).expect("QueryResponse");
        assert_eq!(reply.indexed, indexed, "{name}");
    }
    farm.stop().await;
}
