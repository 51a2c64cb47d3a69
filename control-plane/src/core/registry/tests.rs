use std::time::Duration;

use rand::{SeedableRng, rngs::StdRng};

use super::*;

fn policy() -> HealthPolicy {
    HealthPolicy {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(300),
        min_age: Duration::from_millis(500),
        max_age: Duration::from_secs(10),
        group_idle_timeout: Duration::from_secs(5),
        flap: FlapDamping {
            threshold: 3,
            window: Duration::from_secs(10),
            hold: Duration::from_secs(1),
        },
    }
}

struct Fixture {
    registry: Registry,
    now: Now,
    rng: StdRng,
}

impl Fixture {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        let now = Now::read();
        Self {
            registry: Registry::new(policy(), limits, 1000, now),
            now,
            rng: StdRng::seed_from_u64(7),
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.after(Duration::from_millis(ms));
    }

    fn try_register(&mut self, name: &str, group: &str) -> Result<Registered, DomainError> {
        let request = RegistrationRequest {
            name: name.to_owned(),
            address: "127.0.0.1:7000".to_owned(),
            group: group.to_owned(),
            ..Default::default()
        };
        self.registry.register(
            request,
            NewIdentity {
                secret: format!("secret-of-{name}"),
            },
            self.now,
        )
    }

    /// Registers a node and makes it healthy with one heartbeat.
    #[track_caller]
    fn healthy(&mut self, name: &str, group: &str) -> (NodeId, u64) {
        let id = self.try_register(name, group).expect("register").id;
        let epoch = self.registry.open_stream(id).expect("stream");
        self.registry
            .heartbeat(id, epoch, 0, true, self.now)
            .expect("heartbeat");
        (id, epoch)
    }

    fn state(&self, id: NodeId) -> NodeState {
        self.registry.node(id).expect("node").state
    }

    fn discoverable(&mut self, id: NodeId) -> bool {
        self.registry
            .discover("", 0, &BTreeMap::new(), None, &mut self.rng)
            .expect("discover")
            .peers
            .iter()
            .any(|peer| peer.id == id)
    }

    /// One drop and return: silent past its deadline (and its minimum
    /// age), then heard from again on the same stream.
    #[track_caller]
    fn bounce(&mut self, id: NodeId, epoch: u64) {
        self.advance(600);
        self.registry.tick(self.now);
        assert_eq!(self.state(id), NodeState::Unhealthy);
        self.registry
            .heartbeat(id, epoch, 0, true, self.now)
            .expect("heartbeat");
    }
}

#[test]
fn registration_issues_identity_and_first_heartbeat_makes_healthy() {
    let mut f = Fixture::new();
    let registered = f.try_register("node-1", "").expect("register");
    assert_eq!(registered.id, NodeId(1));
    assert!(!registered.reattached);
    assert_eq!(registered.secret.as_deref(), Some("secret-of-node-1"));
    assert_eq!(registered.stored.group, DEFAULT_GROUP);
    assert_eq!(f.state(registered.id), NodeState::Starting);
    let epoch = f.registry.open_stream(registered.id).expect("stream");
    f.registry
        .heartbeat(registered.id, epoch, 0, true, f.now)
        .expect("heartbeat");
    assert_eq!(f.state(registered.id), NodeState::Healthy);
    let kinds: Vec<_> = f.registry.take_events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Joined, EventKind::Changed]);
}

#[test]
fn reattach_requires_the_secret() {
    let mut f = Fixture::new();
    let first = f.try_register("node-1", "").expect("register");
    let mut request = RegistrationRequest {
        name: "node-1".into(),
        address: "127.0.0.1:7001".into(),
        identity: Some((first.id.to_string(), "guess".into())),
        ..Default::default()
    };
    let fresh = || NewIdentity { secret: "x".into() };
    let err = f
        .registry
        .register(request.clone(), fresh(), f.now)
        .unwrap_err();
    assert_eq!(err, DomainError::WrongSecret(first.id));

    request.identity = Some(("n99".into(), "secret-of-node-1".into()));
    let err = f
        .registry
        .register(request.clone(), fresh(), f.now)
        .unwrap_err();
    assert_eq!(err, DomainError::UnknownIdentity(NodeId(99)));

    request.identity = Some((first.id.to_string(), "secret-of-node-1".into()));
    let again = f
        .registry
        .register(request, fresh(), f.now)
        .expect("re-attach");
    assert_eq!(again.id, first.id);
    assert!(again.reattached);
    assert!(again.secret.is_none());
    assert_eq!(
        f.registry.node(first.id).expect("node").address,
        "127.0.0.1:7001"
    );
}

#[test]
fn a_name_belongs_to_one_identity() {
    let mut f = Fixture::new();
    f.try_register("node-1", "").expect("register");
    let err = f.try_register("node-1", "").unwrap_err();
    assert!(
        matches!(&err, DomainError::NameTaken { name, fresh: true, .. } if name == "node-1"),
        "{err:?}"
    );
}

#[test]
fn group_capacity_and_group_count_are_enforced() {
    let mut f = Fixture::with_limits(Limits {
        group_capacity: 2,
        max_groups: 2,
    });
    f.try_register("a", "room").expect("first");
    f.try_register("b", "room").expect("second");
    let err = f.try_register("c", "room").unwrap_err();
    assert_eq!(
        err,
        DomainError::GroupFull {
            group: "room".into(),
            capacity: 2
        }
    );
    // `default` and `room` exist: a third group is refused.
    let err = f.try_register("d", "other").unwrap_err();
    assert_eq!(
        err,
        DomainError::TooManyGroups {
            group: "other".into(),
            max: 2
        }
    );
    f.try_register("e", "")
        .expect("default group still has room");
}

#[test]
fn stream_close_makes_unhealthy_at_once_and_undiscoverable() {
    let mut f = Fixture::new();
    let (id, epoch) = f.healthy("node-1", "");
    let labels = BTreeMap::new();
    let found = f
        .registry
        .discover("", 10, &labels, None, &mut f.rng)
        .expect("discover");
    assert_eq!(found.peers.len(), 1);
    f.registry.close_stream(id, epoch);
    assert_eq!(f.state(id), NodeState::Unhealthy);
    let found = f
        .registry
        .discover("", 10, &labels, None, &mut f.rng)
        .expect("discover");
    assert!(found.peers.is_empty());
}

#[test]
fn a_superseded_stream_neither_heartbeats_nor_closes() {
    let mut f = Fixture::new();
    let (id, old) = f.healthy("node-1", "");
    let new = f.registry.open_stream(id).expect("stream");
    assert!(f.registry.heartbeat(id, old, 0, true, f.now).is_err());
    f.registry.close_stream(id, old);
    assert_eq!(f.state(id), NodeState::Healthy);
    f.registry.close_stream(id, new);
    assert_eq!(f.state(id), NodeState::Unhealthy);
}

#[test]
fn silence_past_the_deadline_makes_unhealthy_but_not_before_min_age() {
    let mut f = Fixture::new();
    let (id, epoch) = f.healthy("node-1", "");
    f.advance(400); // past the 300 ms deadline, but younger than min age 500 ms
    f.registry.tick(f.now);
    assert_eq!(f.state(id), NodeState::Healthy);
    f.advance(200);
    f.registry.tick(f.now);
    assert_eq!(f.state(id), NodeState::Unhealthy);
    assert!(
        f.registry
            .node(id)
            .expect("node")
            .reason
            .contains("no heartbeat")
    );
    f.registry
        .heartbeat(id, epoch, 0, true, f.now)
        .expect("heartbeat");
    assert_eq!(f.state(id), NodeState::Healthy);
}

#[test]
fn unmanaged_nodes_are_dropped_after_max_age_managed_ones_are_not() {
    let mut f = Fixture::new();
    let (wild, _) = f.healthy("wild", "");
    let (kept, _) = f.healthy("node-001", "");
    f.registry.set_runtime(
        "node-001",
        Some(RuntimeView {
            status: RuntimeStatus::Running,
            runtime_id: "pid:1".into(),
            starts: 1,
            host: String::new(),
        }),
    );
    f.advance(10_001);
    let tick = f.registry.tick(f.now);
    assert_eq!(tick.dropped, vec![wild]);
    assert!(f.registry.node(wild).is_err());
    assert_eq!(f.state(kept), NodeState::Unhealthy);
}

#[test]
fn empty_groups_are_purged_after_idle_timeout_default_never() {
    let mut f = Fixture::new();
    let (id, _) = f.healthy("a", "room");
    f.registry.forget(id, f.now);
    f.advance(4_000);
    assert!(f.registry.tick(f.now).purged_groups.is_empty());
    f.advance(1_001);
    assert_eq!(
        f.registry.tick(f.now).purged_groups,
        vec!["room".to_owned()]
    );
    let names: Vec<_> = f
        .registry
        .list_groups()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, vec![DEFAULT_GROUP.to_owned()]);
}

#[test]
fn leader_is_lowest_healthy_id_and_moves_on_failure() {
    let mut f = Fixture::new();
    let (a, a_epoch) = f.healthy("a", "room");
    let (b, _) = f.healthy("b", "room");
    let leader = |f: &Fixture| {
        f.registry
            .list_groups()
            .into_iter()
            .find(|g| g.name == "room")
            .and_then(|g| g.leader)
    };
    assert_eq!(leader(&f), Some(a));
    f.registry.take_events();
    f.registry.close_stream(a, a_epoch);
    assert_eq!(leader(&f), Some(b));
    assert!(f.registry.node(b).expect("node").leader);
    let changed: Vec<_> = f
        .registry
        .take_events()
        .into_iter()
        .map(|e| e.node.id)
        .collect();
    assert!(changed.contains(&a) && changed.contains(&b), "{changed:?}");
}

#[test]
fn discover_samples_filters_and_rejects_bad_counts() {
    let mut f = Fixture::new();
    for i in 0..20 {
        f.healthy(&format!("node-{i}"), if i % 2 == 0 { "even" } else { "" });
    }
    let none = BTreeMap::new();
    let a = f
        .registry
        .discover("", 5, &none, None, &mut f.rng)
        .expect("discover");
    let b = f
        .registry
        .discover("", 5, &none, None, &mut f.rng)
        .expect("discover");
    assert_eq!(a.peers.len(), 5);
    assert_eq!(a.matched, 20);
    let ids = |d: &Discovered| d.peers.iter().map(|p| p.id).collect::<BTreeSet<_>>();
    assert_eq!(ids(&a).len(), 5, "no duplicates");
    assert_ne!(ids(&a), ids(&b), "random subsets");
    let even = f
        .registry
        .discover("even", 100, &none, None, &mut f.rng)
        .expect("discover");
    assert_eq!(even.peers.len(), 10);
    assert!(even.peers.iter().all(|p| p.group == "even"));
    let err = f
        .registry
        .discover("", MAX_DISCOVER + 1, &none, None, &mut f.rng)
        .unwrap_err();
    assert_eq!(
        err,
        DomainError::CountOutOfRange {
            count: MAX_DISCOVER + 1,
            max: MAX_DISCOVER
        }
    );
    let unset = f
        .registry
        .discover("even", 0, &none, None, &mut f.rng)
        .expect("count 0 is every match");
    assert_eq!(unset.peers.len(), 10, "count 0 gives every healthy member");
    let err = f
        .registry
        .discover("nope", 1, &none, None, &mut f.rng)
        .unwrap_err();
    assert_eq!(err, DomainError::UnknownGroup("nope".into()));
    let excluded = f.registry.node(NodeId(1)).expect("node").id;
    let all = f
        .registry
        .discover("", 1000, &none, Some(excluded), &mut f.rng)
        .expect("discover");
    assert_eq!(all.peers.len(), 19);
}

#[test]
fn runtime_stop_overrides_health_and_is_visible() {
    let mut f = Fixture::new();
    let (id, _) = f.healthy("node-001", "");
    f.registry.set_runtime(
        "node-001",
        Some(RuntimeView {
            status: RuntimeStatus::Stopped {
                reason: "exited: killed by signal 9".into(),
            },
            runtime_id: String::new(),
            starts: 1,
            host: String::new(),
        }),
    );
    let view = f.registry.node(id).expect("node");
    assert_eq!(view.state, NodeState::Stopped);
    assert!(view.managed);
    assert_eq!(view.reason, "exited: killed by signal 9");
    let none = BTreeMap::new();
    assert!(
        f.registry
            .discover("", 5, &none, None, &mut f.rng)
            .expect("discover")
            .peers
            .is_empty()
    );
}

#[test]
fn events_resume_from_a_revision_or_report_a_gap() {
    let mut f = Fixture::new();
    let start = f.registry.revision();
    f.healthy("a", "");
    let mid = f.registry.revision();
    f.healthy("b", "");
    let replay = f.registry.events_since(mid).expect("in history");
    assert!(replay.iter().all(|e| e.revision > mid));
    assert_eq!(replay.first().map(|e| e.node.name.as_str()), Some("b"));
    assert_eq!(f.registry.events_since(start).expect("all").len(), 4);
    assert!(f.registry.events_since(f.registry.revision() + 5).is_none());
    assert!(f.registry.events_since(1).is_none());
}

#[test]
fn restore_brings_identities_back_as_starting() {
    let mut f = Fixture::new();
    let first = f.try_register("node-1", "room").expect("register");
    let mut g = Fixture::new();
    g.registry.restore(vec![first.stored.clone()], g.now);
    assert_eq!(g.state(first.id), NodeState::Starting);
    let next = g.try_register("node-2", "").expect("register");
    assert!(next.id > first.id, "ids are never reused");
    let request = RegistrationRequest {
        name: "node-1".into(),
        address: "127.0.0.1:7000".into(),
        group: "room".into(),
        identity: Some((first.id.to_string(), "secret-of-node-1".into())),
        ..Default::default()
    };
    let back = g
        .registry
        .register(
            request,
            NewIdentity {
                secret: "unused".into(),
            },
            g.now,
        )
        .expect("re-attach");
    assert!(back.reattached);
}

/// The deadline buckets decide as a scan of every node at every tick would,
/// up to one bucket late: whatever the mix of registrations, heartbeats,
/// closed streams, runtime changes, removals and uneven ticks, after each
/// tick no node is past a deadline it should have been held to (beyond the
/// grain), and no node was marked or dropped before its deadline.
#[test]
fn deadline_checks_match_a_full_scan_within_one_grain() {
    use rand::Rng;
    let policy = policy();
    let slack = CHECK_GRAIN;
    for seed in 0..20 {
        let mut f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(seed);
        // node id -> open stream epoch
        let mut streams: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut names = 0u32;
        for _ in 0..400 {
            match rng.random_range(0..100) {
                0..12 => {
                    names += 1;
                    let (id, epoch) = f.healthy(&format!("n-{names}"), "");
                    streams.insert(id, epoch);
                }
                12..14 => {
                    names += 1;
                    f.try_register(&format!("n-{names}"), "").expect("register");
                }
                14..50 => {
                    let ids: Vec<_> = streams.keys().copied().collect();
                    if let Some(id) = ids.get(rng.random_range(0..ids.len().max(1))) {
                        let epoch = streams[id];
                        if f.registry.heartbeat(*id, epoch, 0, true, f.now).is_err() {
                            streams.remove(id);
                        }
                    }
                }
                50..53 => {
                    if let Some((&id, &epoch)) = streams.iter().next() {
                        f.registry.close_stream(id, epoch);
                        streams.remove(&id);
                    }
                }
                53..57 => {
                    let name = format!("n-{}", rng.random_range(1..=names.max(1)));
                    let view = rng.random_bool(0.5).then(|| RuntimeView {
                        status: RuntimeStatus::Running,
                        runtime_id: "pid:1".into(),
                        starts: 1,
                        host: String::new(),
                    });
                    f.registry.set_runtime(&name, view);
                }
                57..59 => {
                    let ids: Vec<_> = f.registry.nodes.keys().copied().collect();
                    if let Some(id) = ids.get(rng.random_range(0..ids.len().max(1))) {
                        f.registry.forget(*id, f.now);
                        streams.remove(id);
                    }
                }
                _ => {
                    f.advance(rng.random_range(1..1500));
                    let before: BTreeMap<NodeId, NodeState> = f
                        .registry
                        .nodes
                        .iter()
                        .map(|(id, r)| (*id, r.health))
                        .collect();
                    let tick = f.registry.tick(f.now);
                    let now = f.now.mono;
                    for id in &tick.dropped {
                        // Dropped: silent past the maximum age, not managed.
                        assert!(!f.registry.nodes.contains_key(id), "seed {seed}");
                        streams.remove(id);
                    }
                    for (id, record) in &f.registry.nodes {
                        let silence = now.saturating_duration_since(record.last_heard);
                        let managed = f.registry.runtime.contains_key(&record.stored.name);
                        assert!(
                            managed || silence <= policy.max_age + slack,
                            "seed {seed}: {id} silent {silence:?} and kept"
                        );
                        let old_enough = now.saturating_duration_since(record.attached_at)
                            >= policy.min_age + slack;
                        if silence > policy.heartbeat_timeout + slack && old_enough {
                            assert_eq!(
                                record.health,
                                NodeState::Unhealthy,
                                "seed {seed}: {id} silent {silence:?}"
                            );
                        }
                        if before.get(id) != Some(&NodeState::Unhealthy)
                            && record.health == NodeState::Unhealthy
                        {
                            assert!(
                                silence > policy.heartbeat_timeout,
                                "seed {seed}: {id} marked after only {silence:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_healthy_count_follows_every_way_in_and_out_of_health() {
    let mut f = Fixture::new();
    let (a, a_epoch) = f.healthy("node-001", "");
    let (b, _) = f.healthy("node-002", "web");
    let c = f.try_register("node-003", "").expect("register").id;
    // Registered but not yet heartbeating: not healthy.
    assert_eq!(f.registry.healthy_count(), 2);
    // The runtime reports a node stopped: it no longer counts.
    f.registry.set_runtime(
        "node-002",
        Some(RuntimeView {
            status: RuntimeStatus::Stopped {
                reason: "stopped by hand".into(),
            },
            runtime_id: "pid:2".into(),
            starts: 1,
            host: String::new(),
        }),
    );
    assert_eq!(f.state(b), NodeState::Stopped);
    assert_eq!(f.registry.healthy_count(), 1);
    f.registry.close_stream(a, a_epoch);
    assert_eq!(f.registry.healthy_count(), 0);
    let epoch = f.registry.open_stream(c).expect("stream");
    f.registry
        .heartbeat(c, epoch, 0, true, f.now)
        .expect("heartbeat");
    assert_eq!(f.registry.healthy_count(), 1);
    // Silence past the deadline (and the minimum age), then a node that
    // leaves.
    f.advance(1_000);
    f.registry.tick(f.now);
    assert_eq!(f.state(c), NodeState::Unhealthy);
    assert_eq!(f.registry.healthy_count(), 0);
    let (d, _) = f.healthy("node-004", "");
    assert_eq!(f.registry.healthy_count(), 1);
    f.registry.forget(d, f.now);
    assert_eq!(f.registry.healthy_count(), 0);
}

#[test]
fn a_node_that_drops_now_and_then_returns_to_discover_at_once() {
    let mut f = Fixture::new();
    let (id, epoch) = f.healthy("node-1", "");
    for _ in 0..2 {
        f.bounce(id, epoch);
        assert_eq!(f.state(id), NodeState::Healthy);
        assert!(f.discoverable(id));
    }
    // Drops older than the window are forgotten: a third one much later
    // returns at once too.
    f.advance(11_000);
    f.registry
        .heartbeat(id, epoch, 0, true, f.now)
        .expect("heartbeat");
    f.bounce(id, epoch);
    assert_eq!(f.state(id), NodeState::Healthy);
    assert!(f.discoverable(id));
}

#[test]
fn a_flapping_node_stays_out_of_discover_until_healthy_for_the_hold() {
    let mut f = Fixture::new();
    let (id, epoch) = f.healthy("node-1", "");
    for _ in 0..2 {
        f.bounce(id, epoch);
    }
    f.registry.take_events();
    // The third drop within the window: healthy again, but held out.
    f.bounce(id, epoch);
    let view = f.registry.node(id).expect("node");
    assert_eq!(view.state, NodeState::Unhealthy);
    assert!(view.reason.starts_with("flapping"), "{}", view.reason);
    assert!(!f.discoverable(id));
    let said: Vec<_> = f
        .registry
        .take_events()
        .into_iter()
        .map(|e| (e.node.state, e.node.reason))
        .collect();
    assert!(
        said.iter().any(|(state, reason)| *state == NodeState::Unhealthy
            && reason.starts_with("flapping")),
        "{said:?}"
    );

    // Heartbeats go on; before the hold has passed it is still held.
    for _ in 0..4 {
        f.advance(200);
        f.registry
            .heartbeat(id, epoch, 0, true, f.now)
            .expect("heartbeat");
        f.registry.tick(f.now);
    }
    assert_eq!(f.state(id), NodeState::Unhealthy);
    assert!(!f.discoverable(id));
    f.advance(200);
    f.registry
        .heartbeat(id, epoch, 0, true, f.now)
        .expect("heartbeat");
    f.advance(20);
    f.registry.tick(f.now);
    let view = f.registry.node(id).expect("node");
    assert_eq!(view.state, NodeState::Healthy);
    assert_eq!(view.reason, "");
    assert!(f.discoverable(id));
    let last = f.registry.take_events().pop().expect("an event");
    assert_eq!(last.node.state, NodeState::Healthy);
}

#[test]
fn a_drop_during_the_hold_starts_it_again() {
    let mut f = Fixture::new();
    let (id, epoch) = f.healthy("node-1", "");
    for _ in 0..3 {
        f.bounce(id, epoch);
    }
    assert!(!f.discoverable(id));
    f.advance(200);
    f.registry
        .heartbeat(id, epoch, 0, true, f.now)
        .expect("heartbeat");
    // Silent again during the 1 s hold, and back: a fresh hold from now.
    f.bounce(id, epoch);
    f.advance(500);
    f.registry
        .heartbeat(id, epoch, 0, true, f.now)
        .expect("heartbeat");
    f.registry.tick(f.now);
    assert!(!f.discoverable(id), "the hold restarted with the drop");
    f.advance(500);
    f.registry
        .heartbeat(id, epoch, 0, true, f.now)
        .expect("heartbeat");
    f.registry.tick(f.now);
    assert!(f.discoverable(id));
}

#[test]
fn damping_with_a_zero_threshold_is_off() {
    let mut f = Fixture::new();
    let mut policy = policy();
    policy.flap.threshold = 0;
    f.registry = Registry::new(policy, Limits::default(), 1000, f.now);
    let (id, epoch) = f.healthy("node-1", "");
    for _ in 0..10 {
        f.bounce(id, epoch);
        assert!(f.discoverable(id));
    }
}

#[test]
fn stops_restarts_and_crashes_are_not_flapping() {
    let mut f = Fixture::new();
    let (id, mut epoch) = f.healthy("node-1", "");
    for _ in 0..5 {
        // The stream closes (the process ended) and a new one opens.
        f.registry.close_stream(id, epoch);
        assert_eq!(f.state(id), NodeState::Unhealthy);
        f.advance(100);
        epoch = f.registry.open_stream(id).expect("stream");
        f.registry
            .heartbeat(id, epoch, 0, true, f.now)
            .expect("heartbeat");
        assert!(f.discoverable(id));
    }
}
