//! Connecting, and connecting again, without hammering a target that
//! refuses. Each connection has a [`Dialer`]: its attempts are made one at
//! a time, whoever needs the connection queueing for the next turn, and are
//! spaced by exponential backoff with jitter (50 ms doubling to 500 ms,
//! each delay plus up to itself again: never more than 1 s), back to the
//! shortest delay once a connection has answered. A connection that fails
//! before answering anything is a failed attempt, not a failed request:
//! requests that were never sent are not requests. Every failed attempt is
//! counted in the run's [`Tally`], by target, for the report.
//!
//! What a connection is (an HTTP/2 connection, a stream) is the caller's
//! business: the dialer takes its "current connection" and "one attempt"
//! as closures, and owns the waiting, the checking again, the time limit
//! and the counting around them.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::{sync::MutexGuard, time::Instant};

use crate::report::{ConnectErrors, code_name};

/// How long one connection attempt (or the opening of a stream) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest pause after a failed attempt.
const FIRST_DELAY: Duration = Duration::from_millis(50);
/// Longest pause before jitter (with it, up to twice this).
const LONGEST_DELAY: Duration = Duration::from_millis(500);

/// The backoff of one connection. backon: its exponential backoff adds
/// up to the delay again as jitter, so targets that refused many
/// connections at once do not see them all come back together.
fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_DELAY)
        .with_max_delay(LONGEST_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Connection failures of a whole run, by target. A `std` mutex: held to
/// count one failure or take a copy, and failures are spaced by backoff.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    by_target: Mutex<BTreeMap<String, ConnectErrors>>,
}

impl Tally {
    fn update(&self, target: &str, change: impl FnOnce(&mut ConnectErrors)) {
        // A key allocated every time: updates come at the backoff's pace
        // or once per connection.
        change(
            self.by_target
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(target.to_owned())
                .or_default(),
        );
    }

    /// Failed attempts so far, every target together.
    pub(crate) fn total(&self) -> u64 {
        self.by_target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|e| e.count)
            .sum()
    }

    /// The targets that had at least one failed attempt.
    pub(crate) fn failing(&self) -> BTreeMap<String, ConnectErrors> {
        self.by_target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, e)| e.count > 0)
            .map(|(t, e)| (t.clone(), e.clone()))
            .collect()
    }
}

/// When the next attempt may be made.
#[derive(Debug)]
struct Schedule {
    backoff: ExponentialBackoff,
    /// `None`: at once (no attempt has failed since the last success).
    not_before: Option<Instant>,
}

/// The (re)connecting of one connection to `target`.
#[derive(Debug)]
pub(crate) struct Dialer {
    /// The target as the report names it.
    target: String,
    /// Held by whoever is making an attempt, so that there is one at a
    /// time and the others wait for its outcome. tokio's mutex is fair:
    /// waiters take their turns in order.
    turn: tokio::sync::Mutex<()>,
    /// A `std` mutex: held to read or update the schedule, never across an
    /// await.
    schedule: Mutex<Schedule>,
    tally: Arc<Tally>,
}

impl Dialer {
    pub(crate) fn new(target: String, tally: Arc<Tally>) -> Self {
        Self {
            target,
            turn: tokio::sync::Mutex::new(()),
            schedule: Mutex::new(Schedule {
                backoff: backoff(),
                not_before: None,
            }),
            tally,
        }
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for this connection's turn to make an attempt, and for the
    /// backoff after the last failure to pass. The attempt is made while
    /// the guard is held; callers check first whether the one before them
    /// has connected meanwhile.
    async fn turn(&self) -> MutexGuard<'_, ()> {
        let turn = self.turn.lock().await;
        let not_before = self.schedule().not_before;
        if let Some(at) = not_before {
            tokio::time::sleep_until(at).await;
        }
        turn
    }

    /// Whether the last attempt failed (and no connection answered since).
    fn failing(&self) -> bool {
        self.schedule().not_before.is_some()
    }

    /// The connection `current` finds, once there is one: made by
    /// `connect` (one attempt) whenever it is this caller's turn and the
    /// caller before has not made one meanwhile, as often as the backoff
    /// allows.
    pub(crate) async fn get_or_connect<T, F>(
        &self,
        current: impl Fn() -> Option<T>,
        connect: impl Fn() -> F,
    ) -> T
    where
        F: Future<Output = Option<T>>,
    {
        loop {
            if let Some(connection) = current() {
                return connection;
            }
            let _turn = self.turn().await;
            if let Some(connection) = current() {
                return connection;
            }
            if let Some(connection) = connect().await {
                return connection;
            }
        }
    }

    /// One attempt (`connect`) before the run starts, so that the first
    /// requests do not measure it; skipped when `current` finds a
    /// connection or an attempt has just failed (the run tries again at
    /// the backoff's pace).
    pub(crate) async fn prepare<T, F>(
        &self,
        current: impl Fn() -> Option<T>,
        connect: impl FnOnce() -> F,
    ) where
        F: Future<Output = Option<T>>,
    {
        if self.failing() {
            return;
        }
        let _turn = self.turn().await;
        if current().is_none() && !self.failing() {
            connect().await;
        }
    }

    /// Makes one attempt, `connecting`, within [`CONNECT_TIMEOUT`]: what it
    /// connected, or `None` when it failed (its reason counted) or took
    /// too long (counted as `connect timed out`).
    pub(crate) async fn attempt<T>(
        &self,
        connecting: impl Future<Output = Result<T, String>>,
    ) -> Option<T> {
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connected)) => Some(connected),
            Ok(Err(reason)) => {
                self.failed(reason);
                None
            }
            Err(_) => {
                self.failed("connect timed out".to_owned());
                None
            }
        }
    }

    /// An attempt failed, or a connection ended before it answered
    /// anything: counted, and the next attempt put off.
    pub(crate) fn failed(&self, reason: String) {
        tracing::debug!(target = %self.target, %reason, "cannot connect");
        self.tally.update(&self.target, |errors| {
            errors.count += 1;
            errors.last_error = reason;
        });
        let mut schedule = self.schedule();
        // Never `None` without a maximum number of attempts.
        let delay = schedule.backoff.next().unwrap_or(LONGEST_DELAY);
        schedule.not_before = Some(Instant::now() + delay);
    }

    /// A connection answered: the next failure starts again from the
    /// shortest delay.
    pub(crate) fn established(&self) {
        self.tally
            .update(&self.target, |errors| errors.established += 1);
        let mut schedule = self.schedule();
        schedule.backoff = backoff();
        schedule.not_before = None;
    }
}

/// What a failed attempt ran into, in a few words (`connection refused`):
/// the first I/O error among `err` and its causes, else the innermost
/// cause.
pub(crate) fn reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err;
    let mut next = Some(err);
    while let Some(cause) = next {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io_reason(io);
        }
        if let Some(h2) = cause.downcast_ref::<h2::Error>()
            && let Some(io) = h2.get_io()
        {
            return io_reason(io);
        }
        innermost = cause;
        next = cause.source();
    }
    innermost.to_string()
}

/// An I/O error in a few words.
pub(crate) fn io_reason(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
        ErrorKind::TimedOut => "connect timed out".to_owned(),
        ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => "connection closed".to_owned(),
        _ => err.to_string(),
    }
}

/// Why a stream could not be opened: the connection's failure when there
/// is one under the status, else the status the target answered with.
pub(crate) fn status_reason(status: &tonic::Status) -> String {
    if let Some(cause) = std::error::Error::source(status) {
        return reason(cause);
    }
    let name = code_name(status.code() as i32);
    match status.message() {
        "" => name.to_owned(),
        message => format!("{name}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// `callers` tasks that each keep asking for a turn and failing, for
    /// `run` of (paused) time; the attempts made.
    async fn hammer(dialer: &Arc<Dialer>, callers: usize, run: Duration) -> u64 {
        let attempts = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + run;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..callers {
            let (dialer, attempts) = (Arc::clone(dialer), Arc::clone(&attempts));
            tasks.spawn(async move {
                loop {
                    let Ok(_turn) = tokio::time::timeout_at(end, dialer.turn()).await else {
                        return;
                    };
                    attempts.fetch_add(1, Ordering::Relaxed);
                    dialer.failed("connection refused".to_owned());
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        attempts.load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn many_callers_make_one_attempt_per_backoff() {
        let tally = Arc::new(Tally::default());
        let dialer = Arc::new(Dialer::new("http://127.0.0.1:1".into(), Arc::clone(&tally)));
        // Delays of at least 50, 100, 200, 400, 500, 500, ... ms: the first
        // attempt at once, then at most 7 more in 3 s, whatever the number
        // of callers; at least 3 more (each delay at most twice as long).
        let attempts = hammer(&dialer, 400, Duration::from_secs(3)).await;
        assert!((4..=8).contains(&attempts), "{attempts} attempts");
        let failing = tally.failing();
        let errors = &failing["http://127.0.0.1:1"];
        assert_eq!(errors.count, attempts);
        assert_eq!(errors.established, 0);
        assert_eq!(errors.last_error, "connection refused");
        assert_eq!(tally.total(), attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_answers_resets_the_backoff() {
        let dialer = Dialer::new("t".into(), Arc::default());
        for _ in 0..6 {
            dialer.failed("connection refused".into());
        }
        assert!(dialer.failing());
        // Six failures in a row: the turn waits out the longest delay
        // (with its jitter, up to twice that).
        let before = Instant::now();
        drop(dialer.turn().await);
        let waited = before.elapsed();
        assert!(
            waited >= LONGEST_DELAY && waited <= 2 * LONGEST_DELAY,
            "{waited:?}"
        );
        dialer.established();
        assert!(!dialer.failing());
        let before = Instant::now();
        drop(dialer.turn().await);
        assert_eq!(before.elapsed(), Duration::ZERO);
        // The next failure waits the shortest delay again. Up to twice
        // that with its jitter, and timers round up to the millisecond, so
        // a jittered 99.6 ms is waited as 100 ms.
        dialer.failed("connection refused".into());
        let before = Instant::now();
        drop(dialer.turn().await);
        let waited = before.elapsed();
        assert!(
            waited >= FIRST_DELAY && waited <= 2 * FIRST_DELAY,
            "{waited:?}"
        );
    }

    /// An error with an I/O error as its cause, as connectors return.
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Connect(#[source] std::io::Error);

    #[test]
    fn reasons_are_short() {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(reason(&refused()), "connection refused");
        assert_eq!(reason(&Connect(refused())), "connection refused");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(reason(&Connect(reset)), "connection reset");
        let status = tonic::Status::unimplemented("no WorkStream here");
        assert_eq!(status_reason(&status), "UNIMPLEMENTED: no WorkStream here");
    }
}
