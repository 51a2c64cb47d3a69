//! Group commit: changes from many callers written in batches, one
//! transaction and one sync to disk per batch.
//!
//! A [`GroupCommit`] owns a thread that takes what is queued, in order, up
//! to a batch's size, and hands it to a commit function; changes that
//! arrive while one batch commits go together in the next. Each caller
//! waits for its own answer without holding a thread, so writes scale with
//! the callers in flight instead of queuing behind one sync each. The
//! node identities, the configuration versions and the catalog each have
//! one.

use std::{
    sync::{Mutex, mpsc},
    thread::JoinHandle,
};

use tokio::sync::oneshot;

/// One change waiting in a batch, and where its answer goes.
#[derive(Debug)]
pub struct Queued<C, R> {
    pub change: C,
    done: Reply<R>,
}

impl<C, R> Queued<C, R> {
    /// Answers the caller; one that gave up waiting is fine.
    pub fn answer(self, answer: R) {
        self.done.answer(answer);
    }

    /// The change, to be consumed, and where its answer goes.
    pub fn into_parts(self) -> (C, Reply<R>) {
        (self.change, self.done)
    }
}

/// Where the answer to one queued change goes.
#[derive(Debug)]
pub struct Reply<R>(oneshot::Sender<R>);

impl<R> Reply<R> {
    /// Answers the caller; one that gave up waiting is fine.
    pub fn answer(self, answer: R) {
        let _ = self.0.send(answer);
    }
}

/// What the thread is asked to do.
#[derive(Debug)]
enum Job<T> {
    Change(T),
    /// Finish what is queued, then end.
    Close,
}

/// The writer stopped before answering: the change may or may not be on
/// disk, and was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// A thread that commits queued changes in batches.
#[derive(Debug)]
pub struct GroupCommit<C, R> {
    jobs: mpsc::Sender<Job<Queued<C, R>>>,
    /// The thread, until [`GroupCommit::close`] joins it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<C: Send + 'static, R: Send + 'static> GroupCommit<C, R> {
    /// Starts the thread `name`: it hands batches of at most `max` changes,
    /// in the order they were queued, to `commit`, which answers each. It
    /// ends when closed or dropped.
    pub fn start(
        name: &str,
        max: usize,
        mut commit: impl FnMut(Vec<Queued<C, R>>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job<Queued<C, R>>>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut closing = false;
                while !closing && let Ok(first) = queue.recv() {
                    let mut batch = Vec::new();
                    let mut next = Some(first);
                    while let Some(job) = next.take() {
                        match job {
                            Job::Change(queued) => batch.push(queued),
                            Job::Close => closing = true,
                        }
                        if batch.len() < max {
                            next = queue.try_recv().ok();
                        }
                    }
                    if !batch.is_empty() {
                        commit(batch);
                    }
                }
            })?;
        Ok(Self {
            jobs,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `change` now (so the order of calls is the order of commits)
    /// and returns the wait for its answer.
    pub fn submit(&self, change: C) -> impl Future<Output = Result<R, Stopped>> + use<C, R> {
        let (done, answer) = oneshot::channel();
        let sent = self
            .jobs
            .send(Job::Change(Queued {
                change,
                done: Reply(done),
            }))
            .is_ok();
        async move {
            if !sent {
                return Err(Stopped);
            }
            answer.await.map_err(|_| Stopped)
        }
    }

    /// Commits what is queued, then stops the thread and waits for it.
    /// Later changes are refused. Blocks: call from a blocking thread.
    pub fn close(&self) {
        let _ = self.jobs.send(Job::Close);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("a store writer's thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes are committed in the order queued, in batches no larger than
    /// asked; queued ones are committed at the close, later ones refused.
    #[test]
    fn batches_keep_order_and_size_and_the_close_finishes_the_queue() {
        let (seen, batches) = std::sync::mpsc::channel();
        let writer = GroupCommit::start("test-writer", 4, move |batch: Vec<Queued<u32, u32>>| {
            let _ = seen.send(batch.iter().map(|q| q.change).collect::<Vec<_>>());
            for queued in batch {
                let answer = queued.change * 10;
                queued.answer(answer);
            }
        })
        .expect("thread");
        let waits: Vec<_> = (0..10).map(|i| writer.submit(i)).collect();
        writer.close();
        let answers: Vec<u32> = waits
            .into_iter()
            .map(|w| futures::executor::block_on(w).expect("answered"))
            .collect();
        assert_eq!(answers, (0..10).map(|i| i * 10).collect::<Vec<_>>());
        let committed: Vec<Vec<u32>> = batches.try_iter().collect();
        assert!(committed.iter().all(|b| b.len() <= 4), "{committed:?}");
        assert_eq!(committed.concat(), (0..10).collect::<Vec<_>>());
        assert_eq!(
            futures::executor::block_on(writer.submit(99)),
            Err(Stopped),
            "a change after the close is refused"
        );
    }
}
