//! Waiting until something holds: a node list, a file, a count. A test
//! that waits for another process, a socket or the disk cannot know when
//! it will be so; it looks, pauses, and looks again, up to a limit, and
//! then fails saying what it waited for and what it saw last.
//!
//! The pauses grow from 5 ms to 100 ms (backon's exponential backoff, no
//! jitter): quick when the wait is short, few looks when it is long. Time
//! is tokio's, so a test on a paused clock waits without sleeping. Each
//! look may itself take until a few seconds past the limit; a look that
//! takes longer fails the wait too.

use std::{
    fmt::{Debug, Display},
    future::Future,
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

/// The first pause after a look that did not see it.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two looks.
const LONGEST_PAUSE: Duration = Duration::from_millis(100);
/// How long past the limit the last look may take.
const LAST_LOOK: Duration = Duration::from_secs(5);

/// `Ok(value)` when `holds`, else `Err(value)`: the value is what was seen,
/// returned once it holds and shown if it never does.
pub fn ready_if<T>(holds: bool, value: T) -> Result<T, T> {
    if holds { Ok(value) } else { Err(value) }
}

/// Looks with `look` until it returns `Ok`, pausing a little longer each
/// time; returns that value. Panics after `timeout` with `what` and the
/// `Err` of the last look.
///
/// ```no_run
/// # async fn f(farm: &farm_testkit::Farm) {
/// use std::time::Duration;
/// use farm_testkit::{eventually, ready_if};
/// let nodes = eventually("three nodes", Duration::from_secs(20), || async {
///     let nodes = farm.nodes().await;
///     ready_if(nodes.len() == 3, nodes)
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<T, O, F, Fut>(what: impl Display, timeout: Duration, look: F) -> T
where
    O: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, O>>,
{
    let pauses = ExponentialBuilder::new()
        .with_min_delay(FIRST_PAUSE)
        .with_max_delay(LONGEST_PAUSE)
        .without_max_times()
        .build();
    poll(what, timeout, pauses, look).await
}

/// [`eventually`] with the same pause between every two looks: for
/// measurements, where the pause bounds how late the change is seen.
pub async fn eventually_every<T, O, F, Fut>(
    what: impl Display,
    timeout: Duration,
    every: Duration,
    look: F,
) -> T
where
    O: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, O>>,
{
    poll(what, timeout, std::iter::repeat(every), look).await
}

async fn poll<T, O, F, Fut>(
    what: impl Display,
    timeout: Duration,
    mut pauses: impl Iterator<Item = Duration>,
    mut look: F,
) -> T
where
    O: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, O>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut looks = 0u32;
    loop {
        looks += 1;
        let seen = match tokio::time::timeout_at(deadline + LAST_LOOK, look()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => seen,
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {what}: look {looks} did not finish"
            ),
        };
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what} ({looks} looks); last seen: {seen:#?}"
            );
        }
        let pause = pauses.next().unwrap_or(LONGEST_PAUSE);
        tokio::time::sleep_until((now + pause).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_what_the_first_successful_look_saw() {
        let looks = AtomicU32::new(0);
        let seen = eventually("the third look", Duration::from_secs(1), || async {
            let n = looks.fetch_add(1, Ordering::Relaxed) + 1;
            ready_if(n == 3, n)
        })
        .await;
        assert_eq!(seen, 3);
        assert_eq!(looks.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_to_a_tenth_of_a_second() {
        let started = Instant::now();
        let times = std::sync::Mutex::new(Vec::new());
        eventually("eight looks", Duration::from_secs(10), || async {
            let mut times = times.lock().expect("times");
            times.push(started.elapsed());
            ready_if(times.len() == 8, ())
        })
        .await;
        let millis: Vec<u128> = times
            .into_inner()
            .expect("times")
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(millis, [0, 5, 15, 35, 75, 155, 255, 355]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_pause_is_kept() {
        let started = Instant::now();
        let times = std::sync::Mutex::new(Vec::new());
        eventually_every(
            "three looks",
            Duration::from_secs(1),
            Duration::from_millis(20),
            || async {
                let mut times = times.lock().expect("times");
                times.push(started.elapsed().as_millis());
                ready_if(times.len() == 3, ())
            },
        )
        .await;
        assert_eq!(times.into_inner().expect("times"), [0, 20, 40]);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for the impossible (10 looks); last seen: 10")]
    async fn gives_up_at_the_limit_naming_the_wait_and_the_last_sight() {
        let looks = AtomicU32::new(0);
        // Looks at 0, 5, 15, 35, 75, 155, 255, 355, 455 and 500 ms: the
        // last one at the limit itself.
        eventually::<(), _, _, _>("the impossible", Duration::from_millis(500), || async {
            Err(looks.fetch_add(1, Ordering::Relaxed) + 1)
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "look 1 did not finish")]
    async fn a_look_that_hangs_fails_the_wait() {
        eventually::<(), (), _, _>("an answer", Duration::from_millis(100), || {
            std::future::pending()
        })
        .await;
    }
}
