//! Load shedding: when the control plane is saturated, the farm-wide reads
//! a dashboard makes are answered `UNAVAILABLE` at once, so that the nodes'
//! heartbeats and registrations, and every write, keep their time.
//!
//! Saturation is measured where it hurts: how late the event loop runs.
//! [`measure_lag`] asks to be woken every 10 ms and records how much later
//! it was, smoothed; ready work that waits for a thread makes it late,
//! whatever the work is. Past `--shed-lag`, [`Shedder`] refuses the
//! methods of [`SHEDDABLE`] before their handlers run. Nothing else is ever
//! shed: a node's heartbeat stream, its registration, its configuration
//! reads, discovery, writes, health and plain HTTP.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use tonic::Status;
use tracing::warn;

use crate::{
    api,
    telemetry::{Telemetry, worth_saying},
};

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

/// Decides whether a call is shed: past `threshold` of lag (zero: never),
/// the methods of [`SHEDDABLE`] are refused.
#[derive(Debug, Clone)]
pub(crate) struct Shedder {
    threshold: Duration,
    /// Where the lag is read and the calls shed are counted; `None` never
    /// sheds.
    telemetry: Option<Arc<Telemetry>>,
}

impl Shedder {
    /// Sheds past `threshold` of the lag `telemetry` holds (zero: never).
    pub(crate) fn new(threshold: Duration, telemetry: Arc<Telemetry>) -> Self {
        Self {
            threshold,
            telemetry: (!threshold.is_zero()).then_some(telemetry),
        }
    }

    /// Sheds nothing.
    #[cfg(test)]
    pub(crate) fn never() -> Self {
        Self {
            threshold: Duration::ZERO,
            telemetry: None,
        }
    }

    /// The answer to a call of `path` if it is shed now: counted, and said
    /// in the log the first time and now and then after.
    pub(crate) fn refusal(&self, path: &str) -> Option<Status> {
        let telemetry = self.telemetry.as_ref()?;
        if !SHEDDABLE.contains(&path) {
            return None;
        }
        let lag = telemetry.loop_lag();
        if lag <= self.threshold {
            return None;
        }
        let shed = telemetry.call_shed();
        if worth_saying(shed) {
            warn!(
                ?lag,
                threshold = ?self.threshold,
                shed,
                "saturated: answering farm-wide reads UNAVAILABLE so that nodes keep their time (--shed-lag)"
            );
        }
        Some(api::overloaded(path, lag))
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
