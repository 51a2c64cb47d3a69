//! The one port speaks plain HTTP/1.1 and gRPC-Web next to gRPC.

mod common;

use std::time::Duration;

use common::Farm;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends one raw HTTP/1.1 request and returns the whole response.
async fn http(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("read");
    response
}

fn text(response: &[u8]) -> String {
    String::from_utf8_lossy(response).into_owned()
}

#[tokio::test]
async fn probes_answer_over_http1() {
    let farm = Farm::start(0, &[]).await;
    let healthz = text(
        &http(
            farm.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert!(healthz.ends_with("ok\n"), "{healthz}");
    let readyz = text(
        &http(
            farm.addr,
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(readyz.contains("ready"), "{readyz}");
    let index = text(
        &http(
            farm.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(index.contains("farm.v1.Discovery"), "{index}");
    let missing = text(
        &http(
            farm.addr,
            b"GET /no-such-page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[tokio::test]
async fn grpc_web_calls_and_cors_preflight_work() {
    let farm = Farm::start(0, &[]).await;
    // ListGroups with an empty request message: a 5-byte gRPC-Web frame.
    let request = b"POST /farm.v1.Discovery/ListGroups HTTP/1.1\r\nHost: x\r\n\
content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
origin: http://localhost:5173\r\ncontent-length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0";
    let response = http(farm.addr, request).await;
    let shown = text(&response);
    assert!(shown.starts_with("HTTP/1.1 200"), "{shown}");
    assert!(
        shown
            .to_ascii_lowercase()
            .contains("content-type: application/grpc-web+proto"),
        "{shown}"
    );
    assert!(
        shown.contains("default"),
        "the message names the default group: {shown}"
    );
    assert!(
        shown.contains("grpc-status:0"),
        "trailers frame carries OK: {shown}"
    );
    assert!(
        shown
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: http://localhost:5173"),
        "{shown}"
    );

    let preflight = b"OPTIONS /farm.v1.Farm/ListNodes HTTP/1.1\r\nHost: x\r\n\
origin: http://localhost:5173\r\naccess-control-request-method: POST\r\n\
access-control-request-headers: content-type,x-grpc-web,authorization\r\nConnection: close\r\n\r\n";
    let shown = text(&http(farm.addr, preflight).await).to_ascii_lowercase();
    assert!(shown.starts_with("http/1.1 200"), "{shown}");
    assert!(
        shown.contains("access-control-allow-origin: http://localhost:5173"),
        "{shown}"
    );
    assert!(shown.contains("access-control-allow-headers"), "{shown}");
}
