//! An in-memory runtime for tests of the supervisor: no processes, no
//! containers, only a record of every call and a few knobs.
//!
//! Each call is recorded with its slot when it begins, so a test can assert
//! what the supervisor asked for and in which order, even while a slow call
//! is still running. A test can make the next starts of a slot fail, make a
//! slot's starts or stops take a while (on tokio's clock, so a paused clock
//! advances through them), make an instance die while its start is still
//! returning, and report a crash of a slot's instance on the events channel,
//! as a real runtime does when a process exits on its own, or its engine
//! going away and coming back. Stopping or
//! killing an instance also reports its exit, as real runtimes do.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Instance, InstanceEvent, InstanceExit, InstanceSpec, Runtime, RuntimeError, Signal};

/// One call the supervisor made, with the slot it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Adopt,
    Start {
        slot: String,
    },
    Stop {
        slot: String,
        id: String,
    },
    Signal {
        slot: String,
        id: String,
        signal: Signal,
    },
    Remove {
        slot: String,
    },
}

/// See the module docs.
#[derive(Debug)]
pub struct MemoryRuntime {
    exits: mpsc::UnboundedSender<InstanceEvent>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    /// Instances alive, by id.
    alive: HashMap<String, Instance>,
    next_id: u64,
    /// Instances `adopt` hands over.
    adoptable: Vec<Instance>,
    /// How long `adopt` takes.
    adopt_delay: Option<Duration>,
    /// Slot → how many of its next starts fail.
    failing_starts: HashMap<String, u32>,
    /// Slot → how many of its next starts produce an instance that is
    /// already dead when the start returns.
    dying_starts: HashMap<String, u32>,
    /// Slot → how long each of its starts takes.
    start_delay: HashMap<String, Duration>,
    /// Slot → how long each of its stops takes.
    stop_delay: HashMap<String, Duration>,
}

impl MemoryRuntime {
    /// A runtime that reports exits on `exits`.
    pub fn new(exits: mpsc::UnboundedSender<InstanceEvent>) -> Self {
        Self {
            exits,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is a few map operations: nothing to poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in the order they began.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many starts of `slot` began.
    pub fn starts_of(&self, slot: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| matches!(c, Call::Start { slot: s } if s == slot))
            .count()
    }

    /// The instance of `slot` alive now, if any.
    pub fn alive(&self, slot: &str) -> Option<Instance> {
        self.lock().alive.values().find(|i| i.slot == slot).cloned()
    }

    /// How many instances are alive.
    pub fn alive_count(&self) -> usize {
        self.lock().alive.len()
    }

    /// Leaves an instance of `slot` running for `adopt` to find.
    pub fn leave_running(&self, slot: &str) -> Instance {
        let mut inner = self.lock();
        let instance = inner.instance(slot);
        inner.adoptable.push(instance.clone());
        instance
    }

    /// Makes `adopt` take `delay`.
    pub fn delay_adoption(&self, delay: Duration) {
        self.lock().adopt_delay = Some(delay);
    }

    /// Makes the next `count` starts of `slot` fail.
    pub fn fail_starts(&self, slot: &str, count: u32) {
        self.lock().failing_starts.insert(slot.to_owned(), count);
    }

    /// Makes the next `count` starts of `slot` succeed with an instance
    /// whose exit is reported before the start returns.
    pub fn die_on_start(&self, slot: &str, count: u32) {
        self.lock().dying_starts.insert(slot.to_owned(), count);
    }

    /// Makes every start of `slot` take `delay`.
    pub fn delay_starts(&self, slot: &str, delay: Duration) {
        self.lock().start_delay.insert(slot.to_owned(), delay);
    }

    /// Makes every stop of `slot` take `delay` (a node ignoring SIGTERM
    /// until it is killed at the end of the grace).
    pub fn delay_stops(&self, slot: &str, delay: Duration) {
        self.lock().stop_delay.insert(slot.to_owned(), delay);
    }

    /// Ends the instance of `slot` as a crash would and reports it. Returns
    /// the instance, or `None` when none of that slot is alive.
    pub fn crash(&self, slot: &str) -> Option<Instance> {
        let instance = self.alive(slot)?;
        self.end(&instance, "exited with code 1");
        Some(instance)
    }

    /// Reports the engine gone, saying why (`Some`), or back (`None`), as
    /// the Docker runtime does when its engine stops answering.
    pub fn engine(&self, unavailable: Option<&str>) {
        let _ = self.exits.send(InstanceEvent::Engine {
            unavailable: unavailable.map(str::to_owned),
        });
    }

    /// Forgets a live instance and reports its exit; an instance already
    /// gone is not reported twice.
    fn end(&self, instance: &Instance, reason: &str) {
        if self.lock().alive.remove(&instance.id).is_some() {
            // Nobody listening means the supervisor has ended.
            let _ = self.exits.send(InstanceEvent::Exited(InstanceExit {
                slot: instance.slot.clone(),
                id: instance.id.clone(),
                reason: reason.to_owned(),
            }));
        }
    }
}

impl Inner {
    /// A new live instance of `slot`.
    fn instance(&mut self, slot: &str) -> Instance {
        self.next_id += 1;
        let instance = Instance {
            slot: slot.to_owned(),
            id: format!("mem:{}", self.next_id),
        };
        self.alive.insert(instance.id.clone(), instance.clone());
        instance
    }

    /// Takes one from a per-slot countdown; true if there was one.
    fn take(counts: &mut HashMap<String, u32>, slot: &str) -> bool {
        match counts.get_mut(slot) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl Runtime for MemoryRuntime {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn adopt(&self) -> Vec<Instance> {
        let delay = {
            let mut inner = self.lock();
            inner.calls.push(Call::Adopt);
            inner.adopt_delay
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        std::mem::take(&mut self.lock().adoptable)
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let slot = &spec.slot;
        let delay = {
            let mut inner = self.lock();
            inner.calls.push(Call::Start { slot: slot.clone() });
            inner.start_delay.get(slot).copied()
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let (instance, dies) = {
            let mut inner = self.lock();
            if Inner::take(&mut inner.failing_starts, slot) {
                return Err(RuntimeError::Start {
                    slot: slot.clone(),
                    cause: "injected start failure".to_owned(),
                });
            }
            let dies = Inner::take(&mut inner.dying_starts, slot);
            (inner.instance(slot), dies)
        };
        if dies {
            self.end(&instance, "exited with code 2");
            // Let the exit reach the supervisor before the start returns.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        Ok(instance)
    }

    async fn stop(&self, instance: &Instance, _grace: Duration) -> Result<(), RuntimeError> {
        let delay = {
            let mut inner = self.lock();
            inner.calls.push(Call::Stop {
                slot: instance.slot.clone(),
                id: instance.id.clone(),
            });
            inner.stop_delay.get(&instance.slot).copied()
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.end(instance, "exited cleanly");
        Ok(())
    }

    async fn signal(&self, instance: &Instance, signal: Signal) -> Result<(), RuntimeError> {
        let known = {
            let mut inner = self.lock();
            inner.calls.push(Call::Signal {
                slot: instance.slot.clone(),
                id: instance.id.clone(),
                signal,
            });
            inner.alive.contains_key(&instance.id)
        };
        if !known {
            return Err(RuntimeError::Control {
                action: "signal",
                slot: instance.slot.clone(),
                id: instance.id.clone(),
                cause: "no such instance".to_owned(),
            });
        }
        if signal == Signal::Kill {
            self.end(instance, "killed by signal 9 (SIGKILL)");
        }
        Ok(())
    }

    async fn remove(&self, slot: &str) -> Result<(), RuntimeError> {
        self.lock().calls.push(Call::Remove {
            slot: slot.to_owned(),
        });
        Ok(())
    }
}
