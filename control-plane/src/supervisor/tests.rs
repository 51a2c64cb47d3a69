//! The reconcile loop against the in-memory runtime, on tokio's paused
//! clock: no process runs and no test sleeps. The registry is a real
//! `FarmState` over a store in a temporary folder, with the slots' nodes
//! registered up front, so each test reads what `ListNodes` would show.
//!
//! Nothing here waits on the wall clock. `until` and `settle` only yield to
//! the loop and its operations, which never moves the paused clock; time
//! moves only by `advance`, or, when every task waits for a timer, by
//! tokio's auto-advance, which is how a test sees that a call was held up
//! by a slow one: the clock has moved.

use std::{sync::Arc, time::Duration};

use tempfile::TempDir;
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, advance},
};

use super::{FarmError, NodeAction, Supervisor, SupervisorConfig};
use crate::{
    core::{NodeId, NodeState, NodeView, RegistrationRequest},
    runtime::{
        Signal,
        memory::{Call, MemoryRuntime},
    },
    state::{FarmState, Members},
};

const GRACE: Duration = Duration::from_secs(5);

fn config(desired: u32, start_parallelism: usize) -> SupervisorConfig {
    SupervisorConfig {
        desired,
        max_nodes: 10,
        group: "default".to_owned(),
        control_plane: "http://127.0.0.1:1".to_owned(),
        stop_grace: GRACE,
        start_parallelism,
        keep_on_shutdown: false,
    }
}

struct Farm {
    state: Members,
    runtime: Arc<MemoryRuntime>,
    supervisor: Supervisor,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl Farm {
    /// A supervisor over a registry holding `node-001` … `node-005`, with
    /// the runtime prepared by `prepare` before the loop starts.
    async fn start(config: SupervisorConfig, prepare: impl FnOnce(&MemoryRuntime)) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let state = FarmState::open_default(dir.path()).await.members();
        // Registered before the loop runs: the store's writer answers from a
        // thread, and waiting on it may let the paused clock auto-advance.
        for index in 1..=5 {
            state
                .register(RegistrationRequest {
                    name: super::slot::slot_name(index),
                    address: format!("127.0.0.1:{}", 7000 + index),
                    group: String::new(),
                    labels: Default::default(),
                    identity: None,
                })
                .await
                .expect("register");
        }
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let runtime = Arc::new(MemoryRuntime::new(exits_tx));
        prepare(&runtime);
        let (supervisor, task) = Supervisor::spawn(runtime.clone(), state.clone(), config, exits);
        settle().await;
        Self {
            state,
            runtime,
            supervisor,
            task,
            _dir: dir,
        }
    }

    fn id(&self, slot: &str) -> NodeId {
        self.state.id_of(slot).expect("registered")
    }

    /// What `ListNodes` shows of `slot`'s node.
    fn view(&self, slot: &str) -> NodeView {
        self.state.node(self.id(slot)).expect("node")
    }

    fn starts(&self, slot: &str) -> usize {
        self.runtime.starts_of(slot)
    }

    /// Runs `action` in a task of its own, as a gRPC handler would.
    fn act(&self, slot: &str, action: NodeAction) -> JoinHandle<Result<(), FarmError>> {
        let supervisor = self.supervisor.clone();
        let id = self.id(slot);
        tokio::spawn(async move { supervisor.act(id, action).await })
    }

    fn stops_of(&self, slot: &str) -> Vec<String> {
        self.runtime
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Stop { slot: s, id } if s == slot => Some(id),
                _ => None,
            })
            .collect()
    }
}

/// Lets the loop and its operations run until nothing is left to do at
/// this instant. Never moves the clock.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// Yields to the loop until `done` holds; fails if it never does at this
/// instant (within 5 s of real time).
///
/// The store's writer answers from its own thread (forgetting a node waits
/// for it), so between yields the writer gets real time: a blocking sleep
/// keeps the runtime busy, so the paused clock does not auto-advance.
#[track_caller]
fn until(what: &'static str, mut done: impl FnMut() -> bool) -> impl Future<Output = ()> {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_micros(100));
        }
        panic!("{caller}: never happened: {what}");
    }
}

/// Moves the clock by `by` and lets everything due run.
async fn pass(by: Duration) {
    advance(by).await;
    settle().await;
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[tokio::test(start_paused = true)]
async fn a_crashing_node_is_restarted_at_once_then_after_a_growing_backoff() {
    let farm = Farm::start(config(1, 4), |_| {}).await;
    assert_eq!(farm.starts("node-001"), 1);

    // First crash: back at once.
    farm.runtime.crash("node-001").expect("running");
    until("restarted", || farm.starts("node-001") == 2).await;

    // A crash right after a start: 0.5 s, then 1 s.
    for wait in [ms(500), ms(1000)] {
        let before = farm.starts("node-001");
        farm.runtime.crash("node-001").expect("running");
        settle().await;
        let view = farm.view("node-001");
        assert_eq!(view.state, NodeState::Stopped);
        assert_eq!(view.reason, "exited with code 1; restarting");
        assert_eq!(view.runtime_id, "");
        pass(wait - ms(1)).await;
        assert_eq!(farm.starts("node-001"), before, "not before {wait:?}");
        pass(ms(1)).await;
        assert_eq!(farm.starts("node-001"), before + 1, "after {wait:?}");
    }

    // A run long enough to count as stable resets the backoff.
    pass(Duration::from_secs(10)).await;
    let before = farm.starts("node-001");
    farm.runtime.crash("node-001").expect("running");
    until("restarted at once", || {
        farm.starts("node-001") == before + 1
    })
    .await;
    let view = farm.view("node-001");
    let running = farm.runtime.alive("node-001").expect("running");
    assert_eq!(view.runtime_id, running.id);
    assert_eq!(view.starts, 5);
}

#[tokio::test(start_paused = true)]
async fn while_the_engine_is_gone_nothing_starts_and_commands_are_refused_at_once() {
    let farm = Farm::start(config(3, 4), |_| {}).await;
    // Two quick crashes each: the next would wait out a backoff of 1 s.
    for slot in ["node-001", "node-002"] {
        for wait in [ms(0), ms(500)] {
            let before = farm.starts(slot);
            farm.runtime.crash(slot).expect("running");
            settle().await;
            pass(wait).await;
            until("restarted", || farm.starts(slot) == before + 1).await;
        }
    }
    assert_eq!(farm.supervisor.unavailable(), None);

    let gone = "the Docker engine at unix:///x.sock does not answer: no such socket";
    farm.runtime.engine(Some(gone));
    settle().await;
    assert_eq!(farm.supervisor.unavailable().as_deref(), Some(gone));
    // What the engine took with it is reported; nothing starts meanwhile,
    // not even past the backoff.
    let lost = farm.runtime.crash("node-001").expect("running");
    settle().await;
    let starts = farm.starts("node-001");
    pass(Duration::from_secs(5)).await;

    // Commands are refused without waiting on the engine, saying why.
    let refused = tokio::time::timeout(ms(1), farm.supervisor.scale(4))
        .await
        .expect("answered at once");
    assert!(
        matches!(&refused, Err(FarmError::RuntimeUnavailable(why)) if why == gone),
        "{refused:?}"
    );
    assert_eq!(farm.supervisor.desired(), 3, "the size is kept");
    let refused = tokio::time::timeout(ms(1), farm.act("node-003", NodeAction::Restart))
        .await
        .expect("answered at once")
        .expect("join");
    assert!(
        matches!(refused, Err(FarmError::RuntimeUnavailable(_))),
        "{refused:?}"
    );
    assert!(farm.stops_of("node-003").is_empty());
    settle().await;
    assert_eq!(farm.starts("node-001"), starts, "no start while it is gone");
    assert_eq!(farm.view("node-001").state, NodeState::Stopped);

    // Back: what it lost starts at once, a backoff of 1 s forgotten; the
    // node it kept is left alone.
    farm.runtime.crash("node-002").expect("running");
    settle().await;
    let starts_2 = farm.starts("node-002");
    farm.runtime.engine(None);
    until("restarted once the engine is back", || {
        farm.starts("node-001") == starts + 1 && farm.starts("node-002") == starts_2 + 1
    })
    .await;
    assert_eq!(farm.supervisor.unavailable(), None);
    let back = farm.runtime.alive("node-001").expect("running");
    assert_ne!(back.id, lost.id);
    assert_eq!(farm.starts("node-003"), 1);
    farm.supervisor
        .scale(4)
        .await
        .expect("scale once it is back");
    until("scaled", || farm.starts("node-004") == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_start_is_retried_after_backoff_without_holding_up_others() {
    let farm = Farm::start(config(2, 4), |rt| rt.fail_starts("node-001", 2)).await;
    assert_eq!(farm.starts("node-001"), 1);
    assert!(
        farm.runtime.alive("node-002").is_some(),
        "the other slot runs"
    );
    let view = farm.view("node-001");
    assert_eq!(view.state, NodeState::Stopped);
    assert!(view.reason.contains("injected start failure"), "{view:?}");

    // Failed starts are retried after at least 0.5 s.
    pass(ms(499)).await;
    assert_eq!(farm.starts("node-001"), 1);
    pass(ms(1)).await;
    assert_eq!(farm.starts("node-001"), 2);
    pass(ms(499)).await;
    assert_eq!(farm.starts("node-001"), 2);
    pass(ms(1)).await;
    assert_eq!(farm.starts("node-001"), 3);

    let running = farm.runtime.alive("node-001").expect("third start worked");
    let view = farm.view("node-001");
    assert_eq!(view.runtime_id, running.id);
    assert_eq!(view.starts, 1, "only starts that worked count");
    assert_eq!(farm.starts("node-002"), 1);
}

#[tokio::test(start_paused = true)]
async fn starts_in_flight_stay_within_the_limit_and_a_freed_place_is_taken_at_once() {
    let farm = Farm::start(config(4, 2), |rt| {
        rt.delay_starts("node-001", ms(1000));
        rt.delay_starts("node-002", ms(3000));
        rt.delay_starts("node-003", ms(1000));
        rt.delay_starts("node-004", ms(1000));
    })
    .await;
    let started = || {
        (1..=4)
            .map(|i| farm.starts(&super::slot::slot_name(i)))
            .collect::<Vec<_>>()
    };
    assert_eq!(started(), [1, 1, 0, 0], "two at a time");

    pass(ms(1000)).await;
    assert!(farm.runtime.alive("node-001").is_some());
    assert!(farm.runtime.alive("node-002").is_none(), "still starting");
    assert_eq!(started(), [1, 1, 1, 0], "the freed place is taken at once");

    pass(ms(1000)).await;
    assert_eq!(started(), [1, 1, 1, 1]);
    pass(ms(1000)).await;
    assert_eq!(farm.runtime.alive_count(), 4);
    assert!(!farm.view("node-004").runtime_id.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_slow_start_holds_up_neither_a_restart_nor_a_scale() {
    let farm = Farm::start(config(2, 3), |rt| rt.delay_starts("node-002", ms(3000))).await;
    let t0 = Instant::now();
    farm.runtime.crash("node-001").expect("running");
    until("node-001 restarted", || farm.starts("node-001") == 2).await;
    farm.supervisor.scale(3).await.expect("scale");
    until("node-003 started", || {
        farm.runtime.alive("node-003").is_some()
    })
    .await;
    assert_eq!(Instant::now(), t0, "nothing waited for node-002's start");
    assert!(farm.runtime.alive("node-002").is_none(), "still starting");

    pass(ms(3000)).await;
    let running = farm.runtime.alive("node-002").expect("started");
    assert_eq!(farm.view("node-002").runtime_id, running.id);
    assert_eq!(farm.starts("node-002"), 1, "started once");
}

#[tokio::test(start_paused = true)]
async fn scale_down_during_starts_stops_what_they_produce() {
    let farm = Farm::start(config(4, 2), |rt| {
        for slot in ["node-001", "node-002", "node-003", "node-004"] {
            rt.delay_starts(slot, ms(1000));
        }
    })
    .await;
    assert_eq!((farm.starts("node-001"), farm.starts("node-002")), (1, 1));
    let node_002 = farm.id("node-002");

    let t0 = Instant::now();
    assert_eq!(farm.supervisor.scale(1).await.expect("scale"), 4);
    assert_eq!(Instant::now(), t0, "Scale does not wait for starts");
    assert_eq!(farm.supervisor.desired(), 1);

    pass(ms(1000)).await;
    let started = farm.runtime.calls().into_iter().find_map(|c| match c {
        Call::Stop { slot, id } if slot == "node-002" => Some(id),
        _ => None,
    });
    assert!(started.is_some(), "node-002's new instance is stopped");
    until("node-002 removed", || {
        farm.runtime.calls().contains(&Call::Remove {
            slot: "node-002".to_owned(),
        })
    })
    .await;
    assert!(
        farm.state.node(node_002).is_err(),
        "its identity is forgotten"
    );
    assert_eq!(farm.runtime.alive_count(), 1);
    assert!(farm.runtime.alive("node-001").is_some());

    pass(Duration::from_secs(60)).await;
    assert_eq!((farm.starts("node-003"), farm.starts("node-004")), (0, 0));
    assert_eq!(farm.runtime.alive_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn scale_down_and_back_up_during_a_start_keeps_its_node() {
    let farm = Farm::start(config(2, 2), |rt| rt.delay_starts("node-002", ms(1000))).await;
    farm.supervisor.scale(1).await.expect("scale down");
    farm.supervisor.scale(3).await.expect("scale up");
    settle().await;
    assert_eq!(farm.starts("node-003"), 1, "the new slot starts at once");

    pass(ms(1000)).await;
    assert_eq!(farm.starts("node-002"), 1);
    assert!(farm.stops_of("node-002").is_empty());
    let running = farm.runtime.alive("node-002").expect("kept");
    assert_eq!(farm.view("node-002").runtime_id, running.id);
    assert_eq!(farm.runtime.alive_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_killed_node_is_replaced() {
    let farm = Farm::start(config(2, 4), |_| {}).await;
    let first = farm.runtime.alive("node-001").expect("running");
    assert_eq!(farm.view("node-001").runtime_id, first.id);

    farm.act("node-001", NodeAction::Kill)
        .await
        .expect("join")
        .expect("kill");
    assert!(farm.runtime.calls().contains(&Call::Signal {
        slot: "node-001".to_owned(),
        id: first.id.clone(),
        signal: Signal::Kill,
    }));
    until("replaced", || farm.starts("node-001") == 2).await;
    let second = farm.runtime.alive("node-001").expect("replacement running");
    assert_ne!(second.id, first.id);
    let view = farm.view("node-001");
    assert_eq!(view.runtime_id, second.id);
    assert_eq!(view.starts, 2);
    assert!(view.managed);
    assert!(farm.stops_of("node-001").is_empty(), "a kill is not a stop");
    assert_eq!(farm.starts("node-002"), 1, "the other node is left alone");
}

#[tokio::test(start_paused = true)]
async fn a_stop_hanging_for_its_grace_delays_neither_scale_nor_a_replacement() {
    let farm = Farm::start(config(3, 4), |rt| rt.delay_stops("node-001", GRACE)).await;
    let t0 = Instant::now();
    let stop = farm.act("node-001", NodeAction::Stop);
    until("stop began", || !farm.stops_of("node-001").is_empty()).await;

    assert_eq!(farm.supervisor.scale(5).await.expect("scale"), 3);
    assert_eq!(Instant::now(), t0, "Scale did not wait for the stop");
    until("new slots started", || {
        farm.starts("node-004") == 1 && farm.starts("node-005") == 1
    })
    .await;
    farm.runtime.crash("node-002").expect("running");
    until("crashed node replaced", || farm.starts("node-002") == 2).await;
    assert_eq!(Instant::now(), t0, "nothing waited for the stop");
    assert!(!stop.is_finished(), "the stop itself still runs");

    // The stop ends with its grace; the caller hears of it then.
    pass(GRACE).await;
    assert!(stop.is_finished());
    stop.await.expect("join").expect("stop");
    let view = farm.view("node-001");
    assert_eq!(view.state, NodeState::Stopped);
    assert_eq!(view.reason, "stopped on request");
    pass(Duration::from_secs(60)).await;
    assert_eq!(farm.starts("node-001"), 1, "held stopped");
}

/// A node the farm scaled away is stopped, and out of `Discover`, from the
/// moment its removal starts, not only once its stop (here a whole grace)
/// is over.
#[tokio::test(start_paused = true)]
async fn a_node_scaled_away_shows_stopped_while_its_stop_runs() {
    let farm = Farm::start(config(3, 4), |rt| rt.delay_stops("node-003", GRACE)).await;
    until("three started", || farm.starts("node-003") == 1).await;
    farm.supervisor.scale(2).await.expect("scale");
    until("its stop began", || !farm.stops_of("node-003").is_empty()).await;
    let view = farm.view("node-003");
    assert_eq!(
        (view.state, view.reason.as_str()),
        (NodeState::Stopped, "removed: the farm was scaled down")
    );
    pass(GRACE).await;
    until("forgotten", || farm.state.id_of("node-003").is_none()).await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_node_is_held_until_started() {
    let farm = Farm::start(config(2, 4), |_| {}).await;
    let first = farm.runtime.alive("node-001").expect("running");
    farm.act("node-001", NodeAction::Stop)
        .await
        .expect("join")
        .expect("stop");
    assert_eq!(farm.stops_of("node-001"), [first.id]);
    assert_eq!(farm.view("node-001").state, NodeState::Stopped);

    pass(Duration::from_secs(60)).await;
    assert_eq!(farm.starts("node-001"), 1);
    let paused = farm.act("node-001", NodeAction::Pause).await.expect("join");
    assert!(
        matches!(paused, Err(FarmError::NotRunning { .. })),
        "{paused:?}"
    );

    farm.act("node-001", NodeAction::Start)
        .await
        .expect("join")
        .expect("start");
    // Answered once the node runs.
    let second = farm.runtime.alive("node-001").expect("running again");
    let view = farm.view("node-001");
    assert_eq!(view.runtime_id, second.id);
    assert_eq!(view.starts, 2);
    assert_ne!(view.state, NodeState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn an_action_asked_during_a_start_acts_on_what_it_produced() {
    let farm = Farm::start(config(1, 4), |rt| rt.delay_starts("node-001", ms(1000))).await;
    let stop = farm.act("node-001", NodeAction::Stop);
    settle().await;
    assert!(!stop.is_finished(), "waits for the start");
    assert!(farm.stops_of("node-001").is_empty());

    pass(ms(1000)).await;
    stop.await.expect("join").expect("stop");
    let produced = farm
        .runtime
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Stop { .. }))
        .count();
    assert_eq!(produced, 1, "the started instance is stopped");
    assert_eq!(farm.runtime.alive_count(), 0);
    assert_eq!(farm.view("node-001").state, NodeState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn restart_keeps_the_identity_and_remove_forgets_it() {
    let farm = Farm::start(config(1, 4), |_| {}).await;
    let id = farm.id("node-001");
    let first = farm.runtime.alive("node-001").expect("running");

    farm.act("node-001", NodeAction::Restart)
        .await
        .expect("join")
        .expect("restart");
    let second = farm.runtime.alive("node-001").expect("running again");
    assert_ne!(second.id, first.id);
    assert_eq!(farm.stops_of("node-001"), [first.id]);
    assert_eq!(farm.view("node-001").id, id);
    assert_eq!(farm.view("node-001").runtime_id, second.id);

    farm.act("node-001", NodeAction::Remove)
        .await
        .expect("join")
        .expect("remove");
    assert!(farm.state.node(id).is_err(), "identity forgotten");
    assert!(farm.runtime.calls().contains(&Call::Remove {
        slot: "node-001".to_owned()
    }));
    until("a fresh node started", || farm.starts("node-001") == 3).await;
    assert!(farm.runtime.alive("node-001").is_some());
}

#[tokio::test(start_paused = true)]
async fn an_instance_dying_as_it_starts_counts_as_a_crash() {
    let farm = Farm::start(config(1, 4), |rt| rt.die_on_start("node-001", 2)).await;
    // The first death restarts at once; the second waits 0.5 s.
    until("restarted once", || farm.starts("node-001") == 2).await;
    settle().await;
    assert_eq!(farm.starts("node-001"), 2);
    let view = farm.view("node-001");
    assert_eq!(view.state, NodeState::Stopped);
    assert_eq!(view.reason, "exited with code 2; restarting");

    pass(ms(500)).await;
    assert_eq!(farm.starts("node-001"), 3);
    let running = farm.runtime.alive("node-001").expect("third one lives");
    assert_eq!(farm.view("node-001").runtime_id, running.id);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_node_even_one_still_starting() {
    let farm = Farm::start(config(3, 4), |rt| rt.delay_starts("node-003", ms(1000))).await;
    assert_eq!(farm.runtime.alive_count(), 2);
    let supervisor = farm.supervisor.clone();
    let shutdown = tokio::spawn(async move { supervisor.shutdown().await });
    until("running nodes stopped", || {
        farm.stops_of("node-001").len() == 1 && farm.stops_of("node-002").len() == 1
    })
    .await;
    assert!(!shutdown.is_finished(), "waits for the start in flight");
    let refused = farm.supervisor.scale(4).await;
    assert!(
        matches!(refused, Err(FarmError::ShuttingDown)),
        "{refused:?}"
    );

    pass(ms(1000)).await;
    shutdown.await.expect("join");
    assert_eq!(farm.stops_of("node-003").len(), 1);
    assert_eq!(farm.runtime.alive_count(), 0);
    until("the task ended", || farm.task.is_finished()).await;
    for slot in ["node-001", "node-002", "node-003"] {
        let view = farm.view(slot);
        assert_eq!(view.state, NodeState::Stopped);
        assert_eq!(view.reason, "stopped: control plane shut down");
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_can_leave_the_nodes_running() {
    let config = SupervisorConfig {
        keep_on_shutdown: true,
        ..config(2, 4)
    };
    let farm = Farm::start(config, |_| {}).await;
    farm.supervisor.shutdown().await;
    until("the task ended", || farm.task.is_finished()).await;
    assert_eq!(farm.runtime.alive_count(), 2);
    assert!(
        !farm
            .runtime
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Stop { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn adoption_keeps_nodes_within_the_size_and_stops_the_rest() {
    let farm = Farm::start(config(2, 4), |rt| {
        rt.leave_running("node-001");
        rt.leave_running("node-004");
    })
    .await;
    let adopted = farm.runtime.alive("node-001").expect("adopted");
    assert_eq!(farm.starts("node-001"), 0, "adopted, not started");
    assert_eq!(farm.view("node-001").runtime_id, adopted.id);
    assert_eq!(farm.starts("node-002"), 1);
    assert_eq!(farm.stops_of("node-004").len(), 1);
    assert!(farm.runtime.alive("node-004").is_none());
    assert!(
        !farm
            .runtime
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Remove { .. })),
        "a stray's state is kept"
    );
    assert!(farm.state.id_of("node-004").is_some(), "and its identity");
}

#[tokio::test(start_paused = true)]
async fn actions_asked_during_adoption_wait_for_it() {
    let farm = Farm::start(config(2, 4), |rt| {
        rt.leave_running("node-001");
        rt.delay_adoption(ms(1000));
    })
    .await;
    let adopted = farm.runtime.alive("node-001").expect("left running");
    let stop_adopted = farm.act("node-001", NodeAction::Stop);
    let stop_new = farm.act("node-002", NodeAction::Stop);
    settle().await;
    assert_eq!(farm.starts("node-002"), 0, "nothing starts before adoption");
    assert!(!stop_adopted.is_finished() && !stop_new.is_finished());

    pass(ms(1000)).await;
    stop_adopted
        .await
        .expect("join")
        .expect("stop the adopted node");
    stop_new
        .await
        .expect("join")
        .expect("stop the started node");
    assert_eq!(farm.stops_of("node-001"), [adopted.id]);
    assert_eq!(farm.starts("node-001"), 0);
    assert_eq!(farm.stops_of("node-002").len(), 1);
    assert_eq!(farm.runtime.alive_count(), 0);
    for slot in ["node-001", "node-002"] {
        assert_eq!(farm.view(slot).state, NodeState::Stopped);
    }
}
