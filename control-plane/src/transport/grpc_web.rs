//! gRPC-Web beside plain HTTP/1.1 on one port: gRPC-Web requests (and all
//! HTTP/2) go through tonic-web's translation, every other HTTP/1.1 request
//! straight to the routes, since tonic-web alone answers 400 to plain
//! HTTP/1.1 and this port serves probes and pages too.

use futures::future::{BoxFuture, Either, FutureExt};
use http::{Request, Response, header};
use tonic::body::Body;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Layer, Service};

/// Sends gRPC-Web requests (and all HTTP/2) through tonic-web's translation
/// and every other HTTP/1.1 request straight to the routes: tonic-web alone
/// answers 400 to plain HTTP/1.1, and this port serves probes too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrpcWebOrPlainLayer;

impl<S: Clone> Layer<S> for GrpcWebOrPlainLayer {
    type Service = GrpcWebOrPlain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebOrPlain {
            web: GrpcWebLayer::new().layer(inner.clone()),
            plain: inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct GrpcWebOrPlain<S> {
    web: GrpcWebService<S>,
    plain: S,
}

fn is_grpc_web(request: &Request<Body>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"))
}

impl<S, B> Service<Request<Body>> for GrpcWebOrPlain<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<
        <GrpcWebService<S> as Service<Request<Body>>>::Future,
        BoxFuture<'static, Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::ready!(<GrpcWebService<S> as Service<Request<Body>>>::poll_ready(
            &mut self.web,
            cx
        ))?;
        self.plain.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.version() == http::Version::HTTP_2 || is_grpc_web(&request) {
            Either::Left(self.web.call(request))
        } else {
            Either::Right(
                self.plain
                    .call(request)
                    .map(|result| result.map(|response| response.map(Body::new)))
                    .boxed(),
            )
        }
    }
}
