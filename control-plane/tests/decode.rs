//! Requests that do not decode are the caller's fault: the control plane
//! answers them with INVALID_ARGUMENT and one short sentence, whatever the
//! service, and stores nothing.

use farm_api::v1::PutConfigRequest;
use farm_testkit::{Farm, raw};
use prost::Message;
use prost_types::{Struct, Value, value::Kind};
use tonic::{Code, Status};

/// Calls `path` with `body` as the request message.
async fn send(farm: &Farm, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    raw::call(farm.channel(), path, body).await
}

/// A configuration whose data is `depth` objects deep.
fn nested(depth: usize) -> Struct {
    let mut data = Struct::default();
    for _ in 1..depth {
        let inner = Value {
            kind: Some(Kind::StructValue(data)),
        };
        data = Struct {
            fields: [("a".to_owned(), inner)].into(),
        };
    }
    data
}

#[track_caller]
fn refused(status: &Status, reason: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        format!("the request could not be decoded: {reason}")
    );
}

#[tokio::test]
async fn requests_that_do_not_decode_are_invalid_arguments() {
    let farm = Farm::start(0, &[]).await;

    // A configuration 90 objects deep, from the generated client: prost
    // encodes any depth, and decodes 100 levels at most.
    let status = farm
        .config()
        .put_config(PutConfigRequest {
            scope: "global".into(),
            data: Some(nested(90)),
            expected_version: 0,
            merge: false,
        })
        .await
        .expect_err("too deep");
    refused(&status, "it is nested too deeply");

    const PUT: &str = "/farm.v1.Config/PutConfig";
    let whole = PutConfigRequest {
        scope: "global".into(),
        data: Some(nested(3)),
        expected_version: 0,
        merge: false,
    }
    .encode_to_vec();
    let truncated = whole[..whole.len() - 2].to_vec();
    let status = send(&farm, PUT, truncated).await.expect_err("truncated");
    refused(&status, "it is truncated");
    // Field 1 (scope) holding two bytes that are not UTF-8.
    let status = send(&farm, PUT, vec![0x0a, 0x02, 0xc3, 0x28])
        .await
        .expect_err("not UTF-8");
    refused(&status, "a string is not valid UTF-8");
    // Garbage, on other services too.
    for path in [
        PUT,
        "/farm.v1.Farm/ListNodes",
        "/farm.v1.Discovery/Discover",
        "/farm.v1.Registry/Register",
        "/farm.v1.Metrics/GetFarmMetrics",
    ] {
        let status = send(&farm, path, vec![0x0f, 0xff, 0xff])
            .await
            .expect_err("garbage");
        refused(&status, "it is not a valid protobuf message");
    }

    // None of it was stored; the same bytes well formed are accepted.
    assert!(farm.versions("global").await.is_empty(), "nothing stored");
    send(&farm, PUT, whole).await.expect("well formed");
    let current = farm.current_config("global").await;
    assert_eq!(current.version, 1);
}
