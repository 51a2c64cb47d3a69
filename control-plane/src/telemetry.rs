//! The control plane's own counters: open heartbeat streams, registrations,
//! configuration pushes, samples received, every gRPC call by method and
//! status code with its duration in fixed buckets, and the catalog's line
//! protocol (connections, commands by result) and write batches.
//!
//! Counting is all this module does. The handlers and the RPC layer count
//! through [`Telemetry`]; `/metrics` takes a [`TelemetrySnapshot`], plain
//! data, and renders it elsewhere (`crate::exposition`), so nothing that
//! counts depends on the text format.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

/// Upper bounds of the RPC duration buckets, in seconds.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the catalog's write batch size buckets.
pub const BATCH_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// The commands of the catalog's line protocol, as counted; `other` for a
/// line whose command is none of them.
pub const LINE_COMMANDS: [&str; 4] = ["INDEX", "REMOVE", "QUERY", "other"];
/// What a line was answered, as counted.
pub const LINE_RESULTS: [&str; 3] = ["ok", "fail", "error"];

/// The control plane's own counters. One per control plane (kept in its
/// state), so several in one process (tests) do not mix.
#[derive(Debug, Default)]
pub struct Telemetry {
    heartbeat_streams: AtomicI64,
    registrations_new: AtomicU64,
    registrations_reattached: AtomicU64,
    config_pushes: AtomicU64,
    samples: AtomicU64,
    /// Calls per method. A `std::sync::Mutex`: held for a few additions at
    /// the end of a call, never across an await.
    rpcs: Mutex<BTreeMap<&'static str, MethodStats>>,
    line_connections: AtomicU64,
    line_connections_open: AtomicI64,
    line_connections_refused: AtomicU64,
    /// By [`LINE_COMMANDS`] then [`LINE_RESULTS`].
    line_commands: [[AtomicU64; LINE_RESULTS.len()]; LINE_COMMANDS.len()],
    /// Batches by size, in [`BATCH_BUCKETS`] (not cumulative).
    batches: [AtomicU64; BATCH_BUCKETS.len()],
    batch_count: AtomicU64,
    batch_changes: AtomicU64,
    port_connections: AtomicU64,
    port_connections_open: AtomicI64,
    /// By [`GateClose`].
    port_closed: [AtomicU64; GATE_CLOSES.len()],
    accept_failures: AtomicU64,
    /// Microseconds, smoothed (`transport::shed`).
    loop_lag_us: AtomicU64,
    calls_shed: AtomicU64,
}

/// Whether the `count`th time something happens is worth a line in the
/// log: the first, then the 1,024th, 2,048th, 4,096th...; the counters
/// count every one.
pub fn worth_saying(count: u64) -> bool {
    count == 1 || (count >= 1024 && count.is_power_of_two())
}

/// Why the port closed a connection before HTTP served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateClose {
    /// The connection limit was reached and every open connection had sent
    /// a request: closed at once.
    Refused,
    /// Closed to make room for a new connection: the oldest that had sent
    /// no request head.
    Displaced,
    /// Sent nothing in time.
    Idle,
    /// Did not send its first request head in time (slowloris).
    SlowHead,
}

/// The label of each [`GateClose`], in its order.
pub const GATE_CLOSES: [&str; 4] = ["refused", "displaced", "idle", "slow_headers"];

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetrySnapshot {
    /// Heartbeat streams open.
    pub heartbeat_streams: i64,
    /// Registrations that created an identity.
    pub registrations_new: u64,
    /// Registrations that re-attached to a stored identity.
    pub registrations_reattached: u64,
    /// Configurations sent down heartbeat streams.
    pub config_pushes: u64,
    /// Metrics samples received from nodes.
    pub samples: u64,
    /// Calls per method (`package.Service/Method`).
    pub rpcs: BTreeMap<&'static str, MethodStats>,
    /// The catalog's line protocol and writes.
    pub catalog: CatalogSnapshot,
    /// The port's connections.
    pub port: PortSnapshot,
}

/// The port's connections at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortSnapshot {
    /// Connections admitted, ever.
    pub connections: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed before HTTP served them, by [`GATE_CLOSES`].
    pub closed: [u64; GATE_CLOSES.len()],
    /// `accept` calls that failed (out of file descriptors, say).
    pub accept_failures: u64,
    /// How late the event loop runs, smoothed, in seconds.
    pub loop_lag_seconds: f64,
    /// Farm-wide reads refused while saturated.
    pub shed: u64,
}

/// The catalog's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogSnapshot {
    /// Line-protocol connections accepted, ever.
    pub connections: u64,
    /// Line-protocol connections open now.
    pub connections_open: u64,
    /// Connections closed at once because the limit was reached.
    pub connections_refused: u64,
    /// Lines answered, by [`LINE_COMMANDS`] then [`LINE_RESULTS`].
    pub commands: [[u64; LINE_RESULTS.len()]; LINE_COMMANDS.len()],
    /// Write batches by size, in [`BATCH_BUCKETS`] (not cumulative;
    /// larger batches are in `batch_count` only).
    pub batches: [u64; BATCH_BUCKETS.len()],
    pub batch_count: u64,
    /// Changes in every batch, summed.
    pub batch_changes: u64,
    /// Names indexed now (read from the catalog, not counted here).
    pub names: u64,
}

/// Calls of one gRPC method.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MethodStats {
    /// Calls by status code name.
    pub codes: BTreeMap<&'static str, u64>,
    /// Calls that took at most each of [`BUCKETS`] and more than the bound
    /// before it (not cumulative); longer calls are in `count` only.
    pub buckets: [u64; BUCKETS.len()],
    /// Calls finished.
    pub count: u64,
    /// Seconds, summed.
    pub sum: f64,
}

/// Keeps the heartbeat stream gauge up while it lives.
#[derive(Debug)]
pub struct StreamGuard(Arc<Telemetry>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.heartbeat_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the open line-protocol connections gauge up while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Telemetry>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.line_connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A line of the catalog's protocol, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCommand {
    Index,
    Remove,
    Query,
    /// None of the three.
    Other,
}

/// What a line was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineResult {
    Ok,
    Fail,
    Error,
}

impl Telemetry {
    /// Counts an open heartbeat stream until the guard drops.
    pub fn heartbeat_stream(self: &Arc<Self>) -> StreamGuard {
        self.heartbeat_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(Arc::clone(self))
    }

    /// Counts a successful registration.
    pub fn registered(&self, reattached: bool) {
        let counter = if reattached {
            &self.registrations_reattached
        } else {
            &self.registrations_new
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a configuration sent down a heartbeat stream.
    pub fn config_pushed(&self) {
        self.config_pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a metrics sample received from a node.
    pub fn sample_received(&self) {
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished call of `method` with status `code` that took
    /// `seconds`.
    pub(crate) fn record_call(&self, method: &'static str, code: &'static str, seconds: f64) {
        let mut rpcs = self.rpcs.lock().unwrap_or_else(|e| e.into_inner());
        let stats = rpcs.entry(method).or_default();
        *stats.codes.entry(code).or_default() += 1;
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            stats.buckets[i] += 1;
        }
        stats.count += 1;
        stats.sum += seconds;
    }

    /// Counts an accepted line-protocol connection, open until the guard
    /// drops.
    pub fn line_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.line_connections.fetch_add(1, Ordering::Relaxed);
        self.line_connections_open.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(Arc::clone(self))
    }

    /// Counts a connection closed at once for the connection limit;
    /// returns how many were, ever.
    pub fn line_connection_refused(&self) -> u64 {
        self.line_connections_refused
            .fetch_add(1, Ordering::Relaxed)
            + 1
    }

    /// Counts a connection the port admitted.
    pub fn gate_opened(&self) {
        self.port_connections.fetch_add(1, Ordering::Relaxed);
        self.port_connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an admitted connection gone.
    pub fn gate_left(&self) {
        self.port_connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection the port closed for `why`; returns how many
    /// were, ever, for that reason.
    pub fn gate_closed(&self, why: GateClose) -> u64 {
        self.port_closed[why as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a failed `accept`; returns how many failed, ever.
    pub fn accept_failed(&self) -> u64 {
        self.accept_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records how late the event loop runs.
    pub fn set_loop_lag(&self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.loop_lag_us.store(micros, Ordering::Relaxed);
    }

    /// How late the event loop runs, as last recorded.
    pub fn loop_lag(&self) -> Duration {
        Duration::from_micros(self.loop_lag_us.load(Ordering::Relaxed))
    }

    /// Counts a call shed; returns how many were, ever.
    pub fn call_shed(&self) -> u64 {
        self.calls_shed.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts an answered line.
    pub fn line_answered(&self, command: LineCommand, result: LineResult) {
        self.line_commands[command as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a catalog write batch of `size` changes.
    pub fn catalog_batch(&self, size: usize) {
        let size = size as u64;
        if let Some(i) = BATCH_BUCKETS.iter().position(|le| size <= *le) {
            self.batches[i].fetch_add(1, Ordering::Relaxed);
        }
        self.batch_count.fetch_add(1, Ordering::Relaxed);
        self.batch_changes.fetch_add(size, Ordering::Relaxed);
    }

    /// Every counter now. The calls are copied under their lock (one entry
    /// per method served, a few dozen at most); the other counters are read
    /// one by one, so they need not agree to the call.
    pub fn snapshot(&self) -> TelemetrySnapshot {
        let rpcs = self.rpcs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        TelemetrySnapshot {
            heartbeat_streams: self.heartbeat_streams.load(Ordering::Relaxed),
            registrations_new: self.registrations_new.load(Ordering::Relaxed),
            registrations_reattached: self.registrations_reattached.load(Ordering::Relaxed),
            config_pushes: self.config_pushes.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
            rpcs,
            catalog: CatalogSnapshot {
                connections: self.line_connections.load(Ordering::Relaxed),
                connections_open: u64::try_from(self.line_connections_open.load(Ordering::Relaxed))
                    .unwrap_or(0),
                connections_refused: self.line_connections_refused.load(Ordering::Relaxed),
                commands: self
                    .line_commands
                    .each_ref()
                    .map(|results| results.each_ref().map(|n| n.load(Ordering::Relaxed))),
                batches: self.batches.each_ref().map(|n| n.load(Ordering::Relaxed)),
                batch_count: self.batch_count.load(Ordering::Relaxed),
                batch_changes: self.batch_changes.load(Ordering::Relaxed),
                names: 0,
            },
            port: PortSnapshot {
                connections: self.port_connections.load(Ordering::Relaxed),
                open: u64::try_from(self.port_connections_open.load(Ordering::Relaxed))
                    .unwrap_or(0),
                closed: self
                    .port_closed
                    .each_ref()
                    .map(|n| n.load(Ordering::Relaxed)),
                accept_failures: self.accept_failures.load(Ordering::Relaxed),
                loop_lag_seconds: self.loop_lag().as_secs_f64(),
                shed: self.calls_shed.load(Ordering::Relaxed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_fill_buckets_and_codes() {
        let telemetry = Telemetry::default();
        telemetry.record_call("farm.v1.Registry/Register", "OK", 0.0002);
        telemetry.record_call("farm.v1.Registry/Register", "OK", 0.0001);
        telemetry.record_call("farm.v1.Registry/Register", "NOT_FOUND", 20.0);
        let stats = &telemetry.snapshot().rpcs["farm.v1.Registry/Register"];
        assert_eq!(
            stats.codes,
            BTreeMap::from([("NOT_FOUND", 1), ("OK", 2)]),
            "by code"
        );
        // A bound is inclusive; a call past the last bound is in no bucket.
        let mut buckets = [0; BUCKETS.len()];
        buckets[0] = 1;
        buckets[1] = 1;
        assert_eq!(stats.buckets, buckets);
        assert_eq!(stats.count, 3);
        assert!((stats.sum - 20.0003).abs() < 1e-9, "{}", stats.sum);
    }

    #[test]
    fn the_catalog_counts_connections_lines_and_batches() {
        let telemetry = Arc::new(Telemetry::default());
        let first = telemetry.line_connection();
        let _second = telemetry.line_connection();
        assert_eq!(telemetry.line_connection_refused(), 1);
        assert_eq!(telemetry.line_connection_refused(), 2);
        drop(first);
        telemetry.line_answered(LineCommand::Index, LineResult::Ok);
        telemetry.line_answered(LineCommand::Index, LineResult::Ok);
        telemetry.line_answered(LineCommand::Query, LineResult::Fail);
        telemetry.line_answered(LineCommand::Other, LineResult::Error);
        telemetry.catalog_batch(1);
        telemetry.catalog_batch(3);
        telemetry.catalog_batch(512);
        let catalog = telemetry.snapshot().catalog;
        assert_eq!(
            (
                catalog.connections,
                catalog.connections_open,
                catalog.connections_refused
            ),
            (2, 1, 2)
        );
        assert_eq!(catalog.commands[0], [2, 0, 0], "INDEX");
        assert_eq!(catalog.commands[2], [0, 1, 0], "QUERY");
        assert_eq!(catalog.commands[3], [0, 0, 1], "other");
        let mut batches = [0; BATCH_BUCKETS.len()];
        batches[0] = 1;
        batches[2] = 1;
        batches[9] = 1;
        assert_eq!(catalog.batches, batches);
        assert_eq!((catalog.batch_count, catalog.batch_changes), (3, 516));
    }

    #[test]
    fn gauges_and_counters_follow_what_happens() {
        let telemetry = Arc::new(Telemetry::default());
        let first = telemetry.heartbeat_stream();
        let second = telemetry.heartbeat_stream();
        telemetry.registered(false);
        telemetry.registered(false);
        telemetry.registered(true);
        telemetry.config_pushed();
        telemetry.sample_received();
        telemetry.sample_received();
        drop(first);
        assert_eq!(
            telemetry.snapshot(),
            TelemetrySnapshot {
                heartbeat_streams: 1,
                registrations_new: 2,
                registrations_reattached: 1,
                config_pushes: 1,
                samples: 2,
                rpcs: BTreeMap::new(),
                catalog: CatalogSnapshot::default(),
                port: PortSnapshot::default(),
            }
        );
        drop(second);
        assert_eq!(
            telemetry.snapshot().heartbeat_streams,
            0,
            "every stream closed"
        );
    }
}
