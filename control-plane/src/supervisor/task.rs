//! The supervisor's task: the one owner of slot state.
//!
//! The loop waits on four things at once: commands from the handle, the
//! runtime's instance events, the outcomes of its operations, and the
//! earliest backoff deadline. It never awaits a runtime call itself: starts,
//! stops, signals, removals and adoption run in a [`JoinSet`] and report an
//! [`Outcome`], which the loop applies to the slot before it answers whoever
//! waits for it. A stop that takes its whole grace therefore delays only the
//! `NodeAction` that asked for it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{Id, JoinError, JoinSet},
    time::Instant,
};
use tracing::{error, info, warn};

use super::{
    Command, FarmError, NodeAction, Reply, SupervisorConfig,
    slot::{AfterStop, Busy, Pending, Running, Slot, slot_index, slot_name},
};
use crate::{
    core::NodeId,
    runtime::{Instance, InstanceEvent, InstanceExit, InstanceSpec, Runtime, RuntimeError, Signal},
    state::Members,
};

/// What an operation's task reports to the loop.
#[derive(Debug)]
enum Outcome {
    /// What an earlier control plane left running.
    Adopted(Vec<Instance>),
    /// An operation on a slot ended.
    Slot(u32, Done),
    /// An adopted instance that fits no slot was stopped.
    Discarded,
}

/// How an operation on a slot ended; one variant per kind of [`Busy`].
#[derive(Debug)]
enum Done {
    Started(Result<Instance, RuntimeError>),
    Stopped(Result<(), RuntimeError>),
    Signalled(Result<(), RuntimeError>),
    Removed(Result<(), FarmError>),
    Retired,
}

/// Set once `Shutdown` arrives.
#[derive(Debug)]
struct Draining {
    /// Everyone waiting for the farm to stop.
    replies: Vec<oneshot::Sender<()>>,
    /// Nodes stopped for the shutdown.
    stopped: usize,
}

pub(super) struct Task {
    runtime: Arc<dyn Runtime>,
    state: Members,
    config: SupervisorConfig,
    desired: Arc<AtomicU32>,
    slots: BTreeMap<u32, Slot>,
    /// Operations in flight.
    ops: JoinSet<Outcome>,
    /// The slot of each operation in flight, so one whose task panicked
    /// still frees its slot.
    op_slots: HashMap<Id, u32>,
    /// Until adoption reports, nothing starts and actions wait in
    /// `deferred`.
    adopting: bool,
    deferred: Vec<Pending>,
    draining: Option<Draining>,
    /// Why the runtime's engine does not answer, while it does not: nothing
    /// starts or stops, and commands are refused. Shared with the handle,
    /// for readiness.
    unavailable: watch::Sender<Option<String>>,
}

impl Task {
    pub(super) fn new(
        runtime: Arc<dyn Runtime>,
        state: Members,
        config: SupervisorConfig,
        desired: Arc<AtomicU32>,
        unavailable: watch::Sender<Option<String>>,
    ) -> Self {
        Self {
            runtime,
            state,
            config,
            desired,
            slots: BTreeMap::new(),
            ops: JoinSet::new(),
            op_slots: HashMap::new(),
            adopting: true,
            deferred: Vec::new(),
            draining: None,
            unavailable,
        }
    }

    /// Adopts what the runtime left running, then keeps the farm at size
    /// until `Shutdown` has stopped it (or every handle is gone).
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut exits: mpsc::UnboundedReceiver<InstanceEvent>,
    ) {
        let runtime = Arc::clone(&self.runtime);
        self.ops
            .spawn(async move { Outcome::Adopted(runtime.adopt().await) });
        loop {
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                Some(event) = exits.recv() => match event {
                    InstanceEvent::Exited(exit) => self.on_exit(exit),
                    InstanceEvent::Paused { slot, id, paused } => self.on_pause(&slot, &id, paused),
                    InstanceEvent::Engine { unavailable } => self.on_engine(unavailable),
                },
                Some(joined) = self.ops.join_next_with_id() => self.on_joined(joined),
                () = sleep_until(wake) => {}
            }
            if self.draining.is_some() && self.ops.is_empty() {
                self.finish();
                return;
            }
            self.reconcile();
        }
    }

    fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    /// Why the runtime's engine does not answer, while it does not.
    fn engine_gone(&self) -> Option<String> {
        self.unavailable.borrow().clone()
    }

    /// The runtime's engine went away (`Some`) or came back (`None`). Back,
    /// the exits of what it lost are in already: those slots start now,
    /// whatever backoff failed starts meanwhile had built up.
    fn on_engine(&mut self, unavailable: Option<String>) {
        match &unavailable {
            Some(reason) => {
                warn!(cause = %reason, "the runtime's engine is gone: holding starts, refusing commands")
            }
            None => {
                info!("the runtime's engine is back: starting what it lost");
                for slot in self.slots.values_mut() {
                    if slot.busy.is_none() && slot.running.is_none() && !slot.held {
                        slot.reset_backoff();
                    }
                }
            }
        }
        self.unavailable.send_replace(unavailable);
    }

    fn publish(&self, index: u32) {
        if let Some(slot) = self.slots.get(&index)
            && !slot.stray
        {
            self.state.set_runtime(&slot.name, Some(slot.view()));
        }
    }

    /// Runs `op` for slot `index` as a task of its own.
    fn spawn(&mut self, index: u32, op: impl Future<Output = Done> + Send + 'static) {
        let handle = self
            .ops
            .spawn(async move { Outcome::Slot(index, op.await) });
        self.op_slots.insert(handle.id(), index);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Scale { nodes, reply } => {
                let _ = reply.send(self.scale(nodes));
            }
            Command::Act { id, action, reply } => self.on_act(Pending { id, action, reply }),
            Command::Shutdown { reply } => self.begin_shutdown(reply),
        }
    }

    fn scale(&mut self, nodes: u32) -> Result<u32, FarmError> {
        if self.draining.is_some() {
            return Err(FarmError::ShuttingDown);
        }
        if let Some(reason) = self.engine_gone() {
            return Err(FarmError::RuntimeUnavailable(reason));
        }
        if nodes > self.config.max_nodes {
            return Err(FarmError::TooMany {
                asked: nodes,
                max: self.config.max_nodes,
            });
        }
        let previous = self.desired.swap(nodes, Ordering::Relaxed);
        info!(from = previous, to = nodes, "scaling the farm");
        self.reconcile();
        Ok(previous)
    }

    /// The earliest backoff expiry of a slot waiting to start, if any. A
    /// slot already due waits for a start to end instead, which wakes the
    /// loop anyway.
    fn next_wake(&self) -> Option<Instant> {
        if self.adopting || self.draining.is_some() || self.unavailable.borrow().is_some() {
            return None;
        }
        let now = Instant::now();
        self.slots
            .range(..=self.desired())
            .filter_map(|(_, s)| s.wakes_at())
            .filter(|at| *at > now)
            .min()
    }

    /// Brings the slots to the desired size and starts what should run;
    /// nothing while the runtime's engine is gone.
    fn reconcile(&mut self) {
        if self.adopting || self.draining.is_some() || self.unavailable.borrow().is_some() {
            return;
        }
        let desired = self.desired();
        for index in 1..=desired {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.slots.entry(index) {
                slot.insert(Slot::new(slot_name(index)));
                self.publish(index);
            }
        }
        let beyond: Vec<u32> = self
            .slots
            .range(desired + 1..)
            .filter(|(_, s)| s.busy.is_none())
            .map(|(i, _)| *i)
            .collect();
        for index in beyond {
            self.retire(index);
        }
        // At most `start_parallelism` starts in flight, a `Start` or
        // `Restart` asked for included (those do not wait for a place).
        let starting = self
            .slots
            .values()
            .filter(|s| matches!(s.busy, Some(Busy::Starting { .. })))
            .count();
        let free = self
            .config
            .start_parallelism
            .max(1)
            .saturating_sub(starting);
        let now = Instant::now();
        let due: Vec<u32> = self
            .slots
            .range(..=desired)
            .filter(|(_, s)| s.due(now))
            .map(|(i, _)| *i)
            .take(free)
            .collect();
        for index in due {
            self.start(index, None);
        }
    }

    fn on_adopted(&mut self, instances: Vec<Instance>) {
        self.adopting = false;
        let desired = self.desired();
        for instance in instances {
            match slot_index(&instance.slot).filter(|i| !self.slots.contains_key(i)) {
                Some(index) => {
                    let mut slot = Slot::new(slot_name(index));
                    slot.starts = 1;
                    slot.stray = index > desired;
                    if slot.stray {
                        info!(slot = %instance.slot, "stopping adopted node beyond the farm's size");
                    }
                    slot.running = Some(Running {
                        instance,
                        since: Instant::now(),
                        paused: false,
                    });
                    self.slots.insert(index, slot);
                    self.publish(index);
                }
                None => {
                    info!(slot = %instance.slot, "stopping adopted node that fits no slot");
                    let runtime = Arc::clone(&self.runtime);
                    let grace = self.config.stop_grace;
                    self.ops.spawn(async move {
                        if let Err(err) = runtime.stop(&instance, grace).await {
                            warn!(cause = %err, "could not stop adopted node");
                        }
                        Outcome::Discarded
                    });
                }
            }
        }
        // The slots exist before the actions that waited for them.
        self.reconcile();
        for pending in std::mem::take(&mut self.deferred) {
            self.on_act(pending);
        }
        let indexes: Vec<u32> = self.slots.keys().copied().collect();
        for index in indexes {
            self.settle(index);
        }
    }

    fn on_act(&mut self, pending: Pending) {
        if self.draining.is_some() {
            return answer(pending.reply, Err(FarmError::ShuttingDown));
        }
        if self.adopting {
            return self.deferred.push(pending);
        }
        if let Some(reason) = self.engine_gone() {
            return answer(pending.reply, Err(FarmError::RuntimeUnavailable(reason)));
        }
        let id = pending.id;
        let node = match self.state.node(id) {
            Ok(node) => node,
            Err(err) => return answer(pending.reply, Err(err.into())),
        };
        let desired = self.desired();
        let Some((index, slot)) = slot_index(&node.name)
            .filter(|i| *i <= desired)
            .and_then(|i| self.slots.get_mut(&i).map(|s| (i, s)))
            .filter(|(_, s)| !s.stray)
        else {
            return answer(pending.reply, Err(FarmError::NotManaged(id)));
        };
        info!(node.id = %id, slot = %slot.name, action = ?pending.action, "node action");
        if slot.busy.is_some() || !slot.queued.is_empty() {
            slot.queued.push_back(pending);
        } else {
            self.apply(index, pending);
        }
    }

    /// Carries out an action on an idle slot.
    fn apply(&mut self, index: u32, Pending { id, action, reply }: Pending) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return answer(reply, Err(FarmError::NotManaged(id)));
        };
        match action {
            NodeAction::Start => {
                slot.held = false;
                slot.reset_backoff();
                if slot.running.is_some() {
                    answer(reply, Ok(()));
                } else {
                    self.start(index, Some(reply));
                }
            }
            NodeAction::Stop => self.stop(index, AfterStop::Hold, Some(reply)),
            NodeAction::Restart => self.stop(index, AfterStop::Restart, Some(reply)),
            NodeAction::Remove => self.remove(index, id, reply),
            NodeAction::Kill | NodeAction::Pause | NodeAction::Unpause => {
                let Some(running) = &slot.running else {
                    let name = slot.name.clone();
                    return answer(reply, Err(FarmError::NotRunning { id, name }));
                };
                let signal = match action {
                    NodeAction::Pause => Signal::Pause,
                    NodeAction::Unpause => Signal::Unpause,
                    _ => Signal::Kill,
                };
                let instance = running.instance.clone();
                slot.busy = Some(Busy::Signalling { signal, reply });
                let runtime = Arc::clone(&self.runtime);
                self.spawn(index, async move {
                    Done::Signalled(runtime.signal(&instance, signal).await)
                });
            }
        }
    }

    fn start(&mut self, index: u32, reply: Option<Reply>) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        slot.busy = Some(Busy::Starting { reply });
        slot.early_exits.clear();
        let spec = InstanceSpec {
            slot: slot.name.clone(),
            group: self.config.group.clone(),
            control_plane: self.config.control_plane.clone(),
        };
        let runtime = Arc::clone(&self.runtime);
        self.spawn(
            index,
            async move { Done::Started(runtime.start(&spec).await) },
        );
    }

    fn started(
        &mut self,
        index: u32,
        reply: Option<Reply>,
        result: Result<Instance, RuntimeError>,
    ) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        let early_exits = std::mem::take(&mut slot.early_exits);
        let result = match result {
            Ok(instance) => {
                slot.starts += 1;
                match early_exits.into_iter().find(|e| e.id == instance.id) {
                    Some(exit) => {
                        let delay = slot.crashed(Duration::ZERO, &exit.reason);
                        warn!(slot = %slot.name, reason = %exit.reason, restart_in = ?delay, "node exited as it started");
                    }
                    None => {
                        slot.running = Some(Running {
                            instance,
                            since: Instant::now(),
                            paused: false,
                        });
                    }
                }
                Ok(())
            }
            Err(err) => {
                let delay = slot.start_failed(err.to_string());
                error!(slot = %slot.name, cause = %err, retry_in = ?delay, "could not start node");
                Err(err.into())
            }
        };
        self.publish(index);
        if let Some(reply) = reply {
            answer(reply, result);
        }
    }

    /// Stops the slot's instance, if any, then does `then`.
    fn stop(&mut self, index: u32, then: AfterStop, reply: Option<Reply>) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        let Some(running) = slot.running.take() else {
            return self.stopped(index, then, reply, Ok(()));
        };
        slot.busy = Some(Busy::Stopping { then, reply });
        let runtime = Arc::clone(&self.runtime);
        let grace = self.config.stop_grace;
        self.spawn(index, async move {
            Done::Stopped(runtime.stop(&running.instance, grace).await)
        });
    }

    fn stopped(
        &mut self,
        index: u32,
        then: AfterStop,
        reply: Option<Reply>,
        result: Result<(), RuntimeError>,
    ) {
        let shutting_down = self.draining.is_some();
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        if let Err(err) = &result {
            error!(slot = %slot.name, cause = %err, "could not stop node");
        }
        slot.reason = match then {
            AfterStop::Shutdown => "stopped: control plane shut down",
            AfterStop::Hold | AfterStop::Restart => "stopped on request",
        }
        .to_owned();
        slot.held = then == AfterStop::Hold;
        slot.reset_backoff();
        self.publish(index);
        let result = result.map_err(FarmError::from);
        match (then, reply) {
            (AfterStop::Restart, Some(reply)) if result.is_ok() && !shutting_down => {
                self.start(index, Some(reply));
            }
            (AfterStop::Restart, Some(reply)) if result.is_ok() => {
                answer(reply, Err(FarmError::ShuttingDown));
            }
            (_, Some(reply)) => answer(reply, result),
            (_, None) => {}
        }
    }

    /// `Remove`: stops the node, forgets its identity and removes the
    /// slot's state; the slot then starts a fresh node.
    fn remove(&mut self, index: u32, id: NodeId, reply: Reply) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        let instance = slot.running.take().map(|r| r.instance);
        slot.reason = "removed".to_owned();
        slot.busy = Some(Busy::Removing { reply });
        let runtime = Arc::clone(&self.runtime);
        let state = self.state.clone();
        let name = slot.name.clone();
        let grace = self.config.stop_grace;
        self.spawn(index, async move {
            Done::Removed(remove_node(&*runtime, &state, &name, id, instance, grace).await)
        });
    }

    fn removed(&mut self, index: u32, reply: Reply, result: Result<(), FarmError>) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        slot.held = false;
        slot.reset_backoff();
        if result.is_ok() {
            slot.starts = 0;
        }
        self.publish(index);
        answer(reply, result);
    }

    /// Takes a slot beyond the farm's size out: stops its node and, unless
    /// it is a stray, forgets its identity and state. The slot is dropped
    /// once that is done.
    fn retire(&mut self, index: u32) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        for pending in slot.queued.drain(..) {
            answer(pending.reply, Err(FarmError::NotManaged(pending.id)));
        }
        let instance = slot.running.take().map(|r| r.instance);
        slot.busy = Some(Busy::Retiring);
        "removed: the farm was scaled down".clone_into(&mut slot.reason);
        let runtime = Arc::clone(&self.runtime);
        let state = self.state.clone();
        let name = slot.name.clone();
        let keep_identity = slot.stray;
        let grace = self.config.stop_grace;
        // Stopped from now on: out of Discover while its node still runs
        // through its grace, or registers after a start that was in flight.
        self.publish(index);
        self.spawn(index, async move {
            retire_slot(&*runtime, &state, &name, instance, grace, keep_identity).await;
            Done::Retired
        });
    }

    fn on_joined(&mut self, joined: Result<(Id, Outcome), JoinError>) {
        let (task, outcome) = match joined {
            Ok(joined) => joined,
            Err(err) => {
                error!(cause = %err, "a supervisor operation failed");
                let Some(index) = self.op_slots.remove(&err.id()) else {
                    // Adoption or a stray's stop: only adoption matters.
                    if self.adopting {
                        self.on_adopted(Vec::new());
                    }
                    return;
                };
                let done = self
                    .slots
                    .get(&index)
                    .and_then(|s| s.busy.as_ref().map(|b| failed(b, &s.name, &err)));
                if let Some(done) = done {
                    self.on_done(index, done);
                }
                return;
            }
        };
        self.op_slots.remove(&task);
        match outcome {
            Outcome::Adopted(instances) => self.on_adopted(instances),
            Outcome::Slot(index, done) => self.on_done(index, done),
            Outcome::Discarded => {}
        }
    }

    /// Applies an operation's outcome to its slot, then lets the slot take
    /// its next action.
    fn on_done(&mut self, index: u32, done: Done) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        match (slot.busy.take(), done) {
            (Some(Busy::Starting { reply }), Done::Started(result)) => {
                self.started(index, reply, result);
            }
            (Some(Busy::Stopping { then, reply }), Done::Stopped(result)) => {
                self.stopped(index, then, reply, result);
            }
            (Some(Busy::Signalling { signal, reply }), Done::Signalled(result)) => {
                self.signalled(index, signal, reply, result);
            }
            (Some(Busy::Removing { reply }), Done::Removed(result)) => {
                self.removed(index, reply, result);
            }
            (Some(Busy::Retiring), Done::Retired) => {
                if let Some(slot) = self.slots.remove(&index) {
                    for pending in slot.queued {
                        answer(pending.reply, Err(FarmError::NotManaged(pending.id)));
                    }
                }
                return;
            }
            (busy, done) => {
                // Each slot has one operation in flight, and reports only it.
                error!(slot = %slot.name, ?busy, ?done, "an outcome does not match the operation in flight");
                slot.busy = busy;
                return;
            }
        }
        self.settle(index);
    }

    fn signalled(
        &mut self,
        index: u32,
        signal: Signal,
        reply: Reply,
        result: Result<(), RuntimeError>,
    ) {
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        match &result {
            Ok(()) => {
                if let Some(running) = slot.running.as_mut()
                    && signal != Signal::Kill
                {
                    running.paused = signal == Signal::Pause;
                }
            }
            Err(err) => warn!(slot = %slot.name, cause = %err, ?signal, "could not signal node"),
        }
        self.publish(index);
        answer(reply, result.map_err(FarmError::from));
    }

    /// After an operation on an idle slot: the next queued action, or while
    /// shutting down, a stop.
    fn settle(&mut self, index: u32) {
        let keep = self.config.keep_on_shutdown;
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        if let Some(draining) = &mut self.draining {
            for pending in slot.queued.drain(..) {
                answer(pending.reply, Err(FarmError::ShuttingDown));
            }
            if !keep && slot.busy.is_none() && slot.running.is_some() {
                draining.stopped += 1;
                self.stop(index, AfterStop::Shutdown, None);
            }
            return;
        }
        if index > self.desired() {
            return; // reconciling retires it and answers what waits
        }
        if let Some(reason) = self.engine_gone() {
            if let Some(slot) = self.slots.get_mut(&index) {
                for pending in slot.queued.drain(..) {
                    let err = FarmError::RuntimeUnavailable(reason.clone());
                    answer(pending.reply, Err(err));
                }
            }
            return;
        }
        while let Some(pending) = self
            .slots
            .get_mut(&index)
            .filter(|s| s.busy.is_none())
            .and_then(|s| s.queued.pop_front())
        {
            self.apply(index, pending);
        }
    }

    /// An instance ended. Unless it was being stopped on purpose, that is a
    /// crash: the slot restarts after its backoff.
    fn on_exit(&mut self, exit: InstanceExit) {
        let Some(index) = slot_index(&exit.slot) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&index) else {
            return;
        };
        match &slot.running {
            Some(running) if running.instance.id == exit.id => {
                let ran = running.since.elapsed();
                let delay = slot.crashed(ran, &exit.reason);
                warn!(
                    slot = %slot.name,
                    reason = %exit.reason,
                    ran = ?ran,
                    restart_in = ?delay,
                    "node exited unexpectedly"
                );
                self.publish(index);
            }
            _ if matches!(slot.busy, Some(Busy::Starting { .. })) => {
                slot.early_exits.push(exit);
            }
            _ => {} // an instance stopped on purpose
        }
    }

    /// A pause seen by the runtime, whoever caused it (`docker pause` too).
    fn on_pause(&mut self, slot: &str, id: &str, paused: bool) {
        let Some(index) = slot_index(slot) else {
            return;
        };
        if let Some(running) = self
            .slots
            .get_mut(&index)
            .and_then(|s| s.running.as_mut())
            .filter(|r| r.instance.id == id && r.paused != paused)
        {
            running.paused = paused;
            info!(
                slot,
                paused, "node paused or resumed outside the farm's actions"
            );
            self.publish(index);
        }
    }

    fn begin_shutdown(&mut self, reply: oneshot::Sender<()>) {
        if let Some(draining) = &mut self.draining {
            return draining.replies.push(reply);
        }
        self.draining = Some(Draining {
            replies: vec![reply],
            stopped: 0,
        });
        for pending in self.deferred.drain(..) {
            answer(pending.reply, Err(FarmError::ShuttingDown));
        }
        if self.config.keep_on_shutdown {
            let running = self.slots.values().filter(|s| s.running.is_some()).count();
            info!(nodes = running, "leaving the farm's nodes running");
        }
        let indexes: Vec<u32> = self.slots.keys().copied().collect();
        for index in indexes {
            self.settle(index);
        }
    }

    /// Every operation has ended: tells the registry and those waiting.
    fn finish(&mut self) {
        let Some(draining) = self.draining.take() else {
            return;
        };
        if !self.config.keep_on_shutdown {
            for slot in self.slots.values_mut() {
                slot.reason = "stopped: control plane shut down".to_owned();
            }
            let indexes: Vec<u32> = self.slots.keys().copied().collect();
            for index in indexes {
                self.publish(index);
            }
            info!(nodes = draining.stopped, "stopped the farm's nodes");
        }
        for reply in draining.replies {
            let _ = reply.send(());
        }
    }
}

/// A caller that gave up waiting is fine.
fn answer(reply: Reply, result: Result<(), FarmError>) {
    let _ = reply.send(result);
}

/// The outcome of an operation whose task panicked.
fn failed(busy: &Busy, slot: &str, err: &JoinError) -> Done {
    let slot = slot.to_owned();
    let cause = format!("its task failed: {err}");
    let control = |action| RuntimeError::Control {
        action,
        slot: slot.clone(),
        id: String::new(),
        cause: cause.clone(),
    };
    match busy {
        Busy::Starting { .. } => Done::Started(Err(RuntimeError::Start {
            slot: slot.clone(),
            cause: cause.clone(),
        })),
        Busy::Stopping { .. } => Done::Stopped(Err(control("stop"))),
        Busy::Signalling { .. } => Done::Signalled(Err(control("signal"))),
        Busy::Removing { .. } => Done::Removed(Err(RuntimeError::Remove {
            slot: slot.clone(),
            cause: cause.clone(),
        }
        .into())),
        Busy::Retiring => Done::Retired,
    }
}

async fn remove_node(
    runtime: &dyn Runtime,
    state: &Members,
    name: &str,
    id: NodeId,
    instance: Option<Instance>,
    grace: Duration,
) -> Result<(), FarmError> {
    if let Some(instance) = instance {
        runtime.stop(&instance, grace).await?;
    }
    state.forget(id).await?;
    runtime.remove(name).await?;
    Ok(())
}

async fn retire_slot(
    runtime: &dyn Runtime,
    state: &Members,
    name: &str,
    instance: Option<Instance>,
    grace: Duration,
    keep_identity: bool,
) {
    if let Some(instance) = instance
        && let Err(err) = runtime.stop(&instance, grace).await
    {
        warn!(slot = %name, cause = %err, "could not stop node being removed");
    }
    if keep_identity {
        return;
    }
    if let Some(id) = state.id_of(name)
        && let Err(err) = state.forget(id).await
    {
        warn!(slot = %name, cause = %err, "could not forget node being removed");
    }
    state.set_runtime(name, None);
    if let Err(err) = runtime.remove(name).await {
        warn!(slot = %name, cause = %err, "could not remove slot state");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
