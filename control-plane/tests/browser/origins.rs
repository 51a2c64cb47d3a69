//! A page's gRPC-Web calls by origin: the control plane's own pages and a
//! `--cors-origin` may call; a page of any other origin may not, nor one
//! whose name was re-pointed at this machine (DNS rebinding). The pages
//! make raw calls with `fetch` (`grpc_web.mjs`), as any script could.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use farm_api::v1::ScaleRequest;
use farm_testkit::{
    Farm,
    browser::{self, CHROMIUM},
    healthy,
    http::Request,
};
use prost::Message;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long the browser may take for every case together.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

/// A page on another origin: `/` answers a small HTML page (and closes the
/// connection); any other request is passed on to `farm` byte for byte, as
/// happens once the page's name is re-pointed at this machine.
async fn serve_pages(listener: TcpListener, farm: SocketAddr) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buffer = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
                if head.len() > 64 * 1024 {
                    return;
                }
            }
            if head.starts_with(b"GET / ") {
                let page = "<!doctype html><title>another origin</title><p>another origin</p>";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
connection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                return;
            }
            let Ok(mut upstream) = TcpStream::connect(farm).await else {
                return;
            };
            if upstream.write_all(&head).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
            }
        });
    }
}

/// Runs the browser over `cases`; returns what each page saw, by name.
async fn run_browser(cases: &Value) -> Vec<Value> {
    let profile = tempfile::tempdir().expect("profile folder");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/grpc_web.mjs");
    let child = tokio::process::Command::new("node")
        .arg(script)
        .arg(CHROMIUM)
        .arg(browser::modules_dir())
        .arg(profile.path())
        .arg(cases.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let output = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .expect("the browser finishes in time")
        .expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser script failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    results.as_array().expect("a list of results").clone()
}

/// The result named `name`.
fn case<'a>(results: &'a [Value], name: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no result for {name}: {results:#?}"))
}

/// Asserts a call went through and its answer names the node.
#[track_caller]
fn answered(result: &Value, node: &str) {
    assert_eq!(result["fetched"], true, "{result:#}");
    assert_eq!(result["http_status"], 200, "{result:#}");
    assert_eq!(result["grpc_status"], "0", "{result:#}");
    let message: Vec<u8> = result["messages"][0]
        .as_array()
        .unwrap_or_else(|| panic!("one message: {result:#}"))
        .iter()
        .map(|b| u8::try_from(b.as_u64().expect("a byte")).expect("a byte"))
        .collect();
    assert!(
        message.windows(node.len()).any(|w| w == node.as_bytes()),
        "the node list names {node}: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_calls_from_the_same_origin_only() {
    if !browser::available("a_real_browser_calls_from_the_same_origin_only") {
        return;
    }
    let trusted = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stranger = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let rebound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let trusted_origin = format!("http://{}", trusted.local_addr().expect("addr"));
    let stranger_origin = format!("http://{}", stranger.local_addr().expect("addr"));
    let rebound_origin = format!(
        "http://evil.example:{}",
        rebound.local_addr().expect("addr").port()
    );

    let farm = Farm::start(1, &["--cors-origin", &trusted_origin]).await;
    let nodes = farm.wait_healthy(1, Duration::from_secs(20)).await;
    let node = nodes[0].name.clone();
    for listener in [trusted, stranger, rebound] {
        tokio::spawn(serve_pages(listener, farm.addr));
    }

    let list = "/farm.v1.Farm/ListNodes";
    let own = farm.url();
    let by_name = format!("http://localhost:{}", farm.addr.port());
    let cases = json!([
        {"name": "same origin", "page": format!("{own}/"), "url": list, "message": []},
        {"name": "same origin by name", "page": format!("{by_name}/"), "url": list, "message": []},
        {"name": "configured origin", "page": format!("{trusted_origin}/"),
         "url": format!("{own}{list}"), "message": []},
        {"name": "other origin", "page": format!("{stranger_origin}/"),
         "url": format!("{own}{list}"), "message": []},
        // The attacker's page came from evil.example; the name now leads to
        // the control plane, so the call is same-origin to the browser.
        {"name": "rebound name", "page": format!("{rebound_origin}/"),
         "url": "/farm.v1.Farm/Scale",
         "message": ScaleRequest { nodes: Some(0) }.encode_to_vec()},
    ]);
    let results = run_browser(&cases).await;

    let same = case(&results, "same origin");
    assert_eq!(same["origin"], own, "{same:#}");
    answered(same, &node);
    answered(case(&results, "same origin by name"), &node);
    let configured = case(&results, "configured origin");
    assert_eq!(configured["origin"], trusted_origin, "{configured:#}");
    answered(configured, &node);

    let other = case(&results, "other origin");
    assert_eq!(other["origin"], stranger_origin, "{other:#}");
    assert_eq!(other["fetched"], false, "CORS blocks it: {other:#}");
    assert!(
        other["error"].as_str().is_some_and(|e| e.contains("fetch")),
        "{other:#}"
    );

    let rebound = case(&results, "rebound name");
    assert_eq!(rebound["page_status"], 200, "the page loaded: {rebound:#}");
    assert_eq!(rebound["origin"], rebound_origin, "{rebound:#}");
    assert_eq!(
        rebound["fetched"], true,
        "same origin to the browser: {rebound:#}"
    );
    assert_eq!(rebound["http_status"], 421, "{rebound:#}");
    assert_eq!(
        rebound["grpc_status"],
        Value::Null,
        "no handler ran: {rebound:#}"
    );
    assert!(
        rebound["text"]
            .as_str()
            .is_some_and(|t| t.contains("--allowed-host")),
        "the page is told why: {rebound:#}"
    );
    let readyz = Request::get(farm.addr, "/readyz").send().await.text();
    assert!(readyz.contains("1 managed nodes desired"), "{readyz}");
    let nodes = farm.nodes().await;
    assert!(
        nodes.len() == 1 && nodes.iter().all(healthy),
        "the farm kept its node: {nodes:#?}"
    );
}
