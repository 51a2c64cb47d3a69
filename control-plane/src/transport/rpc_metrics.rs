//! Counts and times every gRPC call that reaches the routes, by method and
//! status code, for `/metrics`. Methods are labelled from the table of
//! services ([`super::services`]), so a caller cannot create series at will:
//! every path no service here declares shares one label.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response, header};
use http_body::Frame;
use tower::{Layer, Service};

use super::services;
use crate::telemetry::Telemetry;

/// The label of calls to paths no service of this port declares.
const OTHER_METHOD: &str = "other";

/// The `method` label of a call to `path` (`/package.Service/Method`):
/// `package.Service/Method`, or [`OTHER_METHOD`].
fn method_label(path: &str) -> &'static str {
    services::method(path).unwrap_or(OTHER_METHOD)
}

fn grpc_status(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get("grpc-status")
        .map(|value| code_name(value.as_bytes()))
}

/// The canonical name of a gRPC status code as `grpc-status` carries it
/// (ASCII digits); `UNKNOWN` for anything else.
fn code_name(code: &[u8]) -> &'static str {
    std::str::from_utf8(code)
        .ok()
        .and_then(|digits| digits.parse::<u32>().ok())
        .and_then(farm_api::status::name)
        .unwrap_or("UNKNOWN")
}

/// Counts every gRPC call that reaches the routes, by method and status
/// code, and how long it took until its last byte (for a stream, its
/// lifetime). Calls refused by the auth layer outside it are not counted.
#[derive(Debug, Clone)]
pub(crate) struct RpcMetricsLayer {
    telemetry: Arc<Telemetry>,
}

impl RpcMetricsLayer {
    pub(crate) fn new(telemetry: Arc<Telemetry>) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            telemetry: Arc::clone(&self.telemetry),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S> Service<Request<Body>> for RpcMetrics<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return Box::pin(self.inner.call(request));
        }
        let mut call = Call {
            telemetry: Arc::clone(&self.telemetry),
            method: method_label(request.uri().path()),
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // A trailers-only response (most errors) carries its status in
            // the headers and no body worth waiting for.
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|inner| Body::new(CountedBody { inner, call })))
        })
    }
}

/// One call being timed; recorded once, at its status or when dropped.
#[derive(Debug)]
struct Call {
    telemetry: Arc<Telemetry>,
    method: &'static str,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if !self.done {
            self.done = true;
            let seconds = self.started.elapsed().as_secs_f64();
            self.telemetry.record_call(self.method, code, seconds);
        }
    }
}

impl Drop for Call {
    /// A response dropped before its trailers: the client went away.
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// A response body that records its call's status when the trailers pass.
struct CountedBody {
    inner: Body,
    call: Call,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish("UNKNOWN"),
            Poll::Ready(None) => this.call.finish("UNKNOWN"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_only_when_served() {
        assert_eq!(
            method_label("/farm.v1.Registry/Register"),
            "farm.v1.Registry/Register"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        // The nodes' service is not served here.
        assert_eq!(method_label("/farm.v1.Workload/Work"), OTHER_METHOD);
        assert_eq!(method_label("/farm.v1.Registry/Nope"), OTHER_METHOD);
        assert_eq!(method_label("/metrics"), OTHER_METHOD);
        assert_eq!(code_name(b"5"), "NOT_FOUND");
        assert_eq!(code_name(b"99"), "UNKNOWN");
    }
}
