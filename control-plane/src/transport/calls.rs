//! What a call let in by the port's checks goes through before its
//! handler, in one layer: it is shed while the control plane is saturated
//! ([`Shedder`]), and otherwise bounded by a deadline.
//!
//! The deadline: a gRPC call's handler must answer within
//! `--rpc-timeout`, `DEADLINE_EXCEEDED` past it; a stream must start
//! within it, and then runs for as long as it is read. A client's own
//! `grpc-timeout`, when shorter, is kept by tonic. `Broadcast` and
//! `SimulateLoad` are left out: they call every node they name, 32 at a
//! time, each call bounded on its own, so a large farm legitimately takes
//! longer than any one deadline.
//!
//! The handler's future is dropped at the deadline. Handlers only send
//! commands to the tasks that own state (the supervisor, the store's
//! writers), so a call cut short leaves nothing half done: what it asked
//! for still happens, or not at all, and the next read shows which.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt};
use http::{Request, Response, header};
use tonic::body::Body;
use tower::{Layer, Service};

use super::shed::Shedder;
use crate::api;

/// Calls that fan out to the nodes, each bounded on its own.
const FAN_OUT: [&str; 2] = ["/farm.v1.Farm/Broadcast", "/farm.v1.Farm/SimulateLoad"];

/// Puts [`Calls`] around a service.
#[derive(Debug, Clone)]
pub(crate) struct CallsLayer {
    pub(crate) shedder: Shedder,
    pub(crate) deadline: Duration,
}

impl<S> Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Calls {
            inner,
            layer: self.clone(),
        }
    }
}

/// Sheds a call, or bounds its handler by the deadline.
#[derive(Debug, Clone)]
pub(crate) struct Calls<S> {
    inner: S,
    layer: CallsLayer,
}

impl<S> Service<Request<Body>> for Calls<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if let Some(refusal) = self.layer.shedder.refusal(path) {
            return std::future::ready(Ok(refusal.into_http())).boxed();
        }
        let bounded = is_grpc(&request) && !FAN_OUT.contains(&path);
        let path = bounded.then(|| path.to_owned());
        let answer = self.inner.call(request);
        let Some(path) = path else {
            return answer.boxed();
        };
        let limit = self.layer.deadline;
        async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(api::deadline_exceeded(&path, limit).into_http()),
            }
        }
        .boxed()
    }
}

/// Whether `request` is a gRPC call (gRPC-Web has been translated to gRPC
/// by now).
fn is_grpc(request: &Request<Body>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    /// The deadline alone: nothing is shed.
    fn deadline(limit: Duration) -> CallsLayer {
        CallsLayer {
            shedder: Shedder::never(),
            deadline: limit,
        }
    }

    /// A handler that answers after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(move |_: Request<Body>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        })
    }

    fn call(path: &str, content_type: &str) -> Request<Body> {
        Request::post(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::empty())
            .expect("a request")
    }

    fn grpc_status(response: &Response<Body>) -> Option<(&str, &str)> {
        let header = |name| response.headers().get(name)?.to_str().ok();
        Some((header("grpc-status")?, header("grpc-message")?))
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        let service = deadline(Duration::from_secs(1)).layer(slow(Duration::from_secs(60)));
        let response = service
            .oneshot(call("/farm.v1.Farm/NodeAction", "application/grpc"))
            .await
            .expect("an answer");
        let (code, message) = grpc_status(&response).expect("a gRPC status");
        assert_eq!(code, "4", "DEADLINE_EXCEEDED");
        assert!(message.contains("--rpc-timeout"), "{message}");
        assert!(message.contains("/farm.v1.Farm/NodeAction"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_within_the_deadline_and_those_left_out_are_untouched() {
        let limit = Duration::from_secs(1);
        let within = deadline(limit)
            .layer(slow(Duration::from_millis(900)))
            .oneshot(call("/farm.v1.Farm/ListNodes", "application/grpc+proto"))
            .await
            .expect("an answer");
        assert_eq!(grpc_status(&within), None);
        for (path, content_type) in [
            ("/farm.v1.Farm/Broadcast", "application/grpc"),
            ("/farm.v1.Farm/SimulateLoad", "application/grpc"),
            ("/metrics", "text/plain"),
        ] {
            let response = deadline(limit)
                .layer(slow(Duration::from_secs(60)))
                .oneshot(call(path, content_type))
                .await
                .expect("an answer");
            assert_eq!(grpc_status(&response), None, "{path}");
        }
    }
}
