//! Load shedding: when the control plane is saturated, the farm-wide reads
//! a dashboard makes are answered `UNAVAILABLE` at once, so that the nodes'
//! heartbeats and registrations, and every write, keep their time.
//!
//! Saturation is measured where it hurts: how late the event loop runs.
//! [`measure_lag`] asks to be woken every 10 ms and records how much later
//! it was, smoothed; ready work that waits for a thread makes it late,
//! whatever the work is. Past `--shed-lag`, [`ShedLayer`] refuses the
//! methods of [`SHEDDABLE`] before their handlers run. Nothing else is ever
//! shed: a node's heartbeat stream, its registration, its configuration
//! reads, discovery, writes, health and plain HTTP.

use std::{
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt};
use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::warn;

use crate::{api, telemetry::Telemetry};

/// The reads shed first: farm-wide views, each costing the more the larger
/// the farm, made by dashboards and people rather than nodes.
pub(crate) const SHEDDABLE: [&str; 12] = [
    "/farm.v1.Farm/ListNodes",
    "/farm.v1.Metrics/GetFarmMetrics",
    "/farm.v1.Metrics/GetNodeMetrics",
    "/farm.v1.Metrics/WatchMetrics",
    "/farm.v1.Metrics/GetFarmHistory",
    "/farm.v1.Discovery/ListGroups",
    "/farm.v1.Config/History",
    "/farm.v1.Config/Diff",
    "/farm.v1.Catalog/Query",
    "/farm.v1.Catalog/Get",
    "/farm.v1.Catalog/List",
    "/farm.v1.ControlPlane/GetStatus",
];

/// How often the event loop's lateness is sampled.
const TICK: Duration = Duration::from_millis(10);

/// Samples how late the event loop runs into `telemetry`, every [`TICK`],
/// smoothed over about the last eight samples; ends once `telemetry` is
/// dropped.
pub(crate) async fn measure_lag(telemetry: Weak<Telemetry>) {
    let mut smoothed = Duration::ZERO;
    loop {
        let due = tokio::time::Instant::now() + TICK;
        tokio::time::sleep_until(due).await;
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        // An exponentially weighted mean, weight 1/8: one slow tick is
        // noise, a run of them is saturation.
        smoothed = (smoothed * 7 + late) / 8;
        let Some(telemetry) = telemetry.upgrade() else {
            return;
        };
        telemetry.set_loop_lag(smoothed);
    }
}

/// Puts [`Shed`] around a service: past `threshold` of lag (zero: never),
/// the methods of [`SHEDDABLE`] are refused.
#[derive(Debug, Clone)]
pub(crate) struct ShedLayer {
    pub(crate) threshold: Duration,
    pub(crate) telemetry: Arc<Telemetry>,
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            threshold: self.threshold,
            telemetry: Arc::clone(&self.telemetry),
        }
    }
}

/// Refuses sheddable reads while the event loop runs late.
#[derive(Debug, Clone)]
pub(crate) struct Shed<S> {
    inner: S,
    threshold: Duration,
    telemetry: Arc<Telemetry>,
}

impl<S> Service<Request<Body>> for Shed<S>
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
        if !self.threshold.is_zero() && SHEDDABLE.contains(&request.uri().path()) {
            let lag = self.telemetry.loop_lag();
            if lag > self.threshold {
                let shed = self.telemetry.call_shed();
                if shed == 1 || (shed >= 1024 && shed.is_power_of_two()) {
                    warn!(
                        ?lag,
                        threshold = ?self.threshold,
                        shed,
                        "saturated: answering farm-wide reads UNAVAILABLE so that nodes keep their time (--shed-lag)"
                    );
                }
                let status = api::overloaded(request.uri().path(), lag);
                return std::future::ready(Ok(status.into_http())).boxed();
            }
        }
        self.inner.call(request).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::services;

    #[test]
    fn every_sheddable_method_is_served() {
        for path in SHEDDABLE {
            assert!(services::access(path).is_some(), "{path} is not served");
        }
    }
}
