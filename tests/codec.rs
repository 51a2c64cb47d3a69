//! The generated clients and servers decode apart: a response a client
//! cannot decode is the server's fault and stays INTERNAL (the servers'
//! side, INVALID_ARGUMENT for a request that does not decode, is tested over
//! the real control plane in `control-plane/tests/decode.rs`).

use std::{convert::Infallible, future::Ready};

use farm_api::v1::{GetConfigRequest, config_client::ConfigClient};
use farm_testkit::raw::Raw;
use tonic::{
    Code, Request, Response, Status,
    body::Body,
    codegen::{BoxFuture, Context, Poll, Service, http},
    server::{NamedService, UnaryService},
    transport::{Endpoint, Server, server::TcpIncoming},
};

/// A `farm.v1.Config` that answers every call with a truncated message.
#[derive(Debug, Clone)]
struct Truncated;

impl NamedService for Truncated {
    const NAME: &'static str = "farm.v1.Config";
}

impl UnaryService<Vec<u8>> for Truncated {
    type Response = Vec<u8>;
    type Future = Ready<Result<Response<Vec<u8>>, Status>>;

    fn call(&mut self, _: Request<Vec<u8>>) -> Self::Future {
        // Field 1 (scope) announces 9 bytes and carries 1.
        std::future::ready(Ok(Response::new(vec![0x0a, 0x09, b'g'])))
    }
}

impl Service<http::Request<Body>> for Truncated {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(Raw)
                .unary(Truncated, request)
                .await)
        })
    }
}

#[tokio::test]
async fn a_response_that_does_not_decode_is_internal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        Server::builder()
            .add_service(Truncated)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_lazy();
    let status = ConfigClient::new(channel)
        .get_config(GetConfigRequest {
            scope: "global".into(),
        })
        .await
        .expect_err("a truncated response");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    server.abort();
}
