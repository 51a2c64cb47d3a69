//! The request recorder the Workload service writes to and the sampler
//! reads: request and failure counts since start (atomics), and an HDR
//! histogram of the latency of the requests of the current sampling
//! interval, which the sampler swaps out once a second.
//!
//! The hot path is two relaxed atomic adds and one short critical section
//! (an array increment in the histogram); a `std::sync::Mutex` fits because
//! nothing is awaited while it is held and holders never block on I/O.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use farm_api::{
    node::{LATENCY_SIGNIFICANT_FIGURES, MAX_LATENCY_US},
    status::MAX_CODE,
};
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer, V2Serializer},
};

/// gRPC `UNKNOWN`: where a code out of range is counted.
const UNKNOWN: usize = tonic::Code::Unknown as usize;
/// Status codes counted apart: 0 to [`MAX_CODE`].
const CODES: usize = MAX_CODE as usize + 1;

/// An empty latency histogram: microseconds from 1 to [`MAX_LATENCY_US`],
/// [`LATENCY_SIGNIFICANT_FIGURES`] significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, LATENCY_SIGNIFICANT_FIGURES)
        .expect("constant histogram bounds are valid")
}

/// `histogram` in V2 serialisation (appended to `out`); nothing when it is
/// empty.
pub fn serialize(serializer: &mut V2Serializer, histogram: &Histogram<u64>, out: &mut Vec<u8>) {
    if histogram.is_empty() {
        return;
    }
    // Writing to a Vec cannot fail, and the histogram's own counts always
    // encode.
    if let Err(err) = serializer.serialize(histogram, out) {
        tracing::warn!(cause = ?err, "cannot serialise the latency histogram");
        out.clear();
    }
}

/// Two V2-serialised histograms merged into one (V2-serialised); if either
/// cannot be read, `newer` as it is.
pub fn merge_serialized(older: &[u8], newer: &[u8]) -> Vec<u8> {
    let read = |bytes: &[u8]| -> Option<Histogram<u64>> {
        if bytes.is_empty() {
            return Some(new_histogram());
        }
        Deserializer::new().deserialize(&mut &bytes[..]).ok()
    };
    let (Some(mut merged), Some(newer_histogram)) = (read(older), read(newer)) else {
        return newer.to_vec();
    };
    if merged.add(&newer_histogram).is_err() {
        return newer.to_vec();
    }
    let mut out = Vec::new();
    serialize(&mut V2Serializer::new(), &merged, &mut out);
    out
}

/// Requests of `Work` and `WorkStream`: counts since start and the latency
/// histogram of the current interval.
#[derive(Debug)]
pub struct Recorder {
    requests: AtomicU64,
    /// Requests answered with each status code (index), 0 included.
    by_code: [AtomicU64; CODES],
    /// Latency (µs) of the requests answered since the last [`Self::swap`].
    interval: Mutex<Histogram<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            interval: Mutex::new(new_histogram()),
        }
    }

    /// Records one answered request: how long it took from its receipt to
    /// its answer, and its status code (0 for success).
    pub fn record(&self, latency: Duration, code: u32) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let index = usize::try_from(code)
            .ok()
            .filter(|&c| c < CODES)
            .unwrap_or(UNKNOWN);
        self.by_code[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // A poisoned histogram is still a whole histogram.
        self.interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    /// Requests recorded since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Failed requests since start, by status code (codes never seen are
    /// absent).
    pub fn errors_by_code(&self) -> HashMap<u32, u64> {
        self.by_code
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(code, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then_some((code as u32, count))
            })
            .collect()
    }

    /// Hands the current interval's histogram over in `spare` (which must
    /// be empty) and starts a new interval with `spare`'s old storage: no
    /// allocation, and the lock is held for a pointer swap.
    pub fn swap(&self, spare: &mut Histogram<u64>) {
        debug_assert!(spare.is_empty());
        let mut current = self.interval.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *current, spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_failures_by_code() {
        let recorder = Recorder::new();
        for _ in 0..5 {
            recorder.record(Duration::from_millis(2), 0);
        }
        recorder.record(Duration::from_millis(1), 14);
        recorder.record(Duration::from_millis(1), 14);
        recorder.record(Duration::from_millis(1), 5);
        // Out of range: counted as UNKNOWN.
        recorder.record(Duration::from_millis(1), 99);
        assert_eq!(recorder.requests(), 9);
        assert_eq!(
            recorder.errors_by_code(),
            HashMap::from([(14, 2), (5, 1), (2, 1)])
        );
    }

    #[test]
    fn the_interval_histogram_round_trips_through_v2() {
        let recorder = Recorder::new();
        recorder.record(Duration::from_micros(250), 0);
        recorder.record(Duration::from_millis(3), 0);
        recorder.record(Duration::from_millis(40), 4);
        // Zero and over-long latencies are clamped into the bounds.
        recorder.record(Duration::ZERO, 0);
        recorder.record(Duration::from_secs(3600), 0);

        let mut spare = new_histogram();
        recorder.swap(&mut spare);
        assert_eq!(spare.len(), 5);
        let mut bytes = Vec::new();
        serialize(&mut V2Serializer::new(), &spare, &mut bytes);
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .expect("a V2 histogram");
        assert_eq!(decoded, spare);
        assert_eq!(decoded.len(), 5);
        assert_eq!(decoded.min(), 1);
        assert!(decoded.equivalent(decoded.max(), MAX_LATENCY_US));
        assert!(decoded.equivalent(decoded.value_at_quantile(0.5), 3_000));

        // The next interval starts empty; the totals carry on.
        spare.reset();
        recorder.swap(&mut spare);
        assert!(spare.is_empty());
        let mut bytes = Vec::new();
        serialize(&mut V2Serializer::new(), &spare, &mut bytes);
        assert!(bytes.is_empty(), "an empty interval serialises to nothing");
        assert_eq!(recorder.requests(), 5);
    }
}
