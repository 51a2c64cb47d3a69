//! Crash consistency: the control plane is killed with SIGKILL twenty times,
//! each at a random moment, while configuration writers (with CAS), nodes
//! registering and leaving, and catalog clients of the line protocol all
//! run. After each restart every acknowledged write is there, a write in
//! flight at the kill is there whole or not at all, SQLite finds the
//! database sound, the farm's own nodes re-attach under their ids, and
//! `WatchConfig` watchers that resume from their last version have seen
//! every version, in order.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use farm_api::v1::{
    DeregisterRequest, GetConfigRequest, HistoryRequest, NodeInfo, PutConfigRequest,
    RegisterRequest, WatchConfigRequest,
};
use farm_testkit::{
    ControlPlaneProcess, NodeGuard, api::config_data, free_addr, healthy, ids_by_name,
};
use rand::Rng;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::watch,
    task::JoinHandle,
};

const KILLS: usize = 20;
const NODES: usize = 3;
/// Configuration scopes written, one writer each; none reaches the history
/// kept per scope (1,000 versions) within the test.
const SCOPES: [&str; 2] = ["global", "group:default"];
/// Writes per writer and round, at most.
const WRITES_PER_ROUND: u32 = 30;

/// Starts (or restarts) the control plane on `addr` and `dir`.
async fn start(dir: &Path, addr: SocketAddr) -> ControlPlaneProcess {
    ControlPlaneProcess::builder(dir)
        .nodes(NODES as u32)
        .listen(addr)
        .indexer()
        // The registered test nodes never heartbeat: keep them listed
        // for the whole test.
        .flags(&["--max-age", "600s"])
        .start()
        .await
}

/// Copies the database as the kill left it (its write-ahead log too) and
/// runs SQLite's own check on the copy, so the restart still recovers
/// from exactly what the crash left.
fn integrity_check(dir: &Path) -> String {
    let copy = tempfile::tempdir().expect("tempdir");
    for name in ["farm.db", "farm.db-wal"] {
        let from = dir.join(name);
        if from.exists() {
            std::fs::copy(&from, copy.path().join(name)).expect("copy the database");
        }
    }
    let db = rusqlite::Connection::open(copy.path().join("farm.db")).expect("open the copy");
    db.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check")
}

/// What one writer knows of its scope: every version acknowledged (or found
/// stored after a kill), with its data, and the write in flight at a kill.
#[derive(Debug, Default)]
struct Scope {
    versions: Vec<(u64, prost_types::Struct)>,
    in_flight: Option<prost_types::Struct>,
    writes: u32,
    /// Writes in flight at a kill: found stored after it, and not.
    resolved: [u32; 2],
}

/// What the registering client knows: nodes it was told were registered
/// (with their secrets, when it has them) and names it was told are gone.
#[derive(Debug, Default)]
struct Registrations {
    present: BTreeMap<String, (String, Option<String>)>,
    gone: BTreeSet<String>,
    next: u32,
    in_flight: Option<Pending>,
}

#[derive(Debug, Clone)]
enum Pending {
    Register(String),
    Deregister(String),
}

/// The catalog client's view: names indexed or removed with an `OK`.
#[derive(Debug, Default)]
struct Catalog {
    indexed: BTreeSet<String>,
    removed: BTreeSet<String>,
    next: u32,
    in_flight: Option<String>,
}

/// Whether a call failed because the control plane went away (the kill)
/// rather than because it refused the call.
fn broken(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

fn test_address(name: &str) -> String {
    // Unmanaged nodes that never heartbeat: no one dials them.
    let n: u32 = name.trim_start_matches("ext-").parse().unwrap_or(0);
    format!("127.0.0.1:{}", 20_000 + n)
}

fn test_labels(name: &str) -> std::collections::HashMap<String, String> {
    [("crash".to_owned(), name.to_owned())].into()
}

async fn write_config(
    api: farm_testkit::Api,
    scope: &'static str,
    state: Arc<Mutex<Scope>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = api.config();
    for _ in 0..WRITES_PER_ROUND {
        if *stop.borrow() {
            return;
        }
        let (expected, data) = {
            let mut s = state.lock().expect("scope");
            s.writes += 1;
            let data = config_data(serde_json::json!({ "writer": scope, "seq": s.writes }));
            s.in_flight = Some(data.clone());
            (s.versions.last().map_or(0, |(v, _)| *v), data)
        };
        let reply = client
            .put_config(PutConfigRequest {
                scope: scope.to_owned(),
                data: Some(data.clone()),
                expected_version: expected,
                merge: false,
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(status) if broken(&status) => return, // Resolved after the restart.
            Err(status) => panic!("PutConfig {scope}: {status:?}"),
        };
        {
            let mut s = state.lock().expect("scope");
            s.versions.push((reply.into_inner().version, data));
            s.in_flight = None;
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

async fn register_and_leave(
    api: farm_testkit::Api,
    state: Arc<Mutex<Registrations>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = api.registry();
    loop {
        if *stop.borrow() {
            return;
        }
        // Every third step removes the oldest node it holds a secret of.
        let step = {
            let mut s = state.lock().expect("registrations");
            s.next += 1;
            let leaving = s
                .next
                .is_multiple_of(3)
                .then(|| {
                    s.present
                        .iter()
                        .find(|(_, (_, secret))| secret.is_some())
                        .map(|(name, (id, secret))| (name.clone(), id.clone(), secret.clone()))
                })
                .flatten();
            let pending = match &leaving {
                Some((name, _, _)) => Pending::Deregister(name.clone()),
                None => Pending::Register(format!("ext-{}", s.next)),
            };
            s.in_flight = Some(pending.clone());
            (pending, leaving)
        };
        match step {
            (Pending::Deregister(name), Some((_, id, secret))) => {
                let reply = client
                    .deregister(DeregisterRequest {
                        node_id: id,
                        secret: secret.unwrap_or_default(),
                    })
                    .await;
                match reply {
                    Ok(_) => {}
                    Err(status) if broken(&status) => return,
                    Err(status) => panic!("Deregister {name}: {status:?}"),
                }
                let mut s = state.lock().expect("registrations");
                s.present.remove(&name);
                s.gone.insert(name);
                s.in_flight = None;
            }
            (Pending::Register(name), _) => {
                let reply = client
                    .register(RegisterRequest {
                        name: name.clone(),
                        address: test_address(&name),
                        labels: test_labels(&name),
                        ..Default::default()
                    })
                    .await;
                let reply = match reply {
                    Ok(reply) => reply.into_inner(),
                    Err(status) if broken(&status) => return,
                    Err(status) => panic!("Register {name}: {status:?}"),
                };
                let mut s = state.lock().expect("registrations");
                s.present.insert(name, (reply.node_id, Some(reply.secret)));
                s.in_flight = None;
            }
            (Pending::Deregister(_), None) => unreachable!("a removal names its node"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(15)) => {}
        }
    }
}

/// One request line, one reply line; `None` when the connection broke.
async fn line(stream: &mut BufReader<TcpStream>, request: &str) -> Option<String> {
    stream.get_mut().write_all(request.as_bytes()).await.ok()?;
    let mut reply = String::new();
    match stream.read_line(&mut reply).await {
        Ok(n) if n > 0 => Some(reply.trim_end().to_owned()),
        _ => None,
    }
}

async fn index_and_remove(
    addr: SocketAddr,
    state: Arc<Mutex<Catalog>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let mut stream = BufReader::new(stream);
    loop {
        if *stop.borrow() {
            return;
        }
        let request = {
            let mut s = state.lock().expect("catalog");
            s.next += 1;
            let request = if s.next.is_multiple_of(3)
                && let Some(name) = s.indexed.first().cloned()
            {
                format!("REMOVE|{name}|\n")
            } else {
                format!("INDEX|pkg-{}|\n", s.next)
            };
            s.in_flight = Some(request.clone());
            request
        };
        let Some(reply) = line(&mut stream, &request).await else {
            return;
        };
        assert_eq!(reply, "OK", "{request:?}");
        {
            let mut s = state.lock().expect("catalog");
            let mut parts = request.split('|');
            let (command, name) = (parts.next().expect("command"), parts.next().expect("name"));
            if command == "INDEX" {
                s.indexed.insert(name.to_owned());
            } else {
                s.indexed.remove(name);
                s.removed.insert(name.to_owned());
            }
            s.in_flight = None;
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

/// Follows `scope` across every restart, resuming after the last version it
/// saw; records the versions in the order they came.
async fn follow(
    addr: SocketAddr,
    scope: &'static str,
    seen: Arc<Mutex<Vec<u64>>>,
    mut done: watch::Receiver<bool>,
) {
    let api = farm_testkit::Api::at(addr);
    while !*done.borrow() {
        let from = seen.lock().expect("seen").last().copied().unwrap_or(0);
        let stream = api
            .config()
            .watch_config(WatchConfigRequest {
                scope: scope.to_owned(),
                node_id: String::new(),
                from_version: from,
            })
            .await;
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            loop {
                tokio::select! {
                    _ = done.changed() => return,
                    event = stream.message() => match event {
                        Ok(Some(event)) => {
                            assert!(!event.snapshot, "{scope}: versions skipped by a snapshot");
                            seen.lock().expect("seen").push(event.version);
                        }
                        _ => break,
                    },
                }
            }
        }
        tokio::select! {
            _ = done.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn history(api: &farm_testkit::Api, scope: &str) -> Vec<(u64, prost_types::Struct)> {
    let mut versions: Vec<_> = api
        .config()
        .history(HistoryRequest {
            scope: scope.to_owned(),
            limit: 1000,
            before_version: 0,
        })
        .await
        .expect("History")
        .into_inner()
        .versions
        .into_iter()
        .map(|v| (v.version, v.data.unwrap_or_default()))
        .collect();
    versions.sort_by_key(|(v, _)| *v);
    versions
}

/// After a restart: every acknowledged version is there, and at most the
/// one write in flight besides, whole.
async fn check_scope(api: &farm_testkit::Api, scope: &str, state: &Mutex<Scope>, round: usize) {
    let stored = history(api, scope).await;
    let last = {
        let mut s = state.lock().expect("scope");
        let known = s.versions.len();
        assert!(
            stored.len() == known || stored.len() == known + 1,
            "round {round}, {scope}: {known} versions known, {} stored",
            stored.len()
        );
        assert_eq!(
            stored[..known],
            s.versions[..],
            "round {round}, {scope}: an acknowledged version lost or changed"
        );
        if let Some((version, data)) = stored.get(known) {
            assert_eq!(
                Some(data),
                s.in_flight.as_ref(),
                "round {round}, {scope}: a version nobody wrote, or half of one"
            );
            s.versions.push((*version, data.clone()));
            s.resolved[0] += 1;
        } else if s.in_flight.is_some() {
            s.resolved[1] += 1;
        }
        s.in_flight = None;
        s.versions.last().map_or(0, |(v, _)| *v)
    };
    let current = api
        .config()
        .get_config(GetConfigRequest {
            scope: scope.to_owned(),
        })
        .await
        .expect("GetConfig")
        .into_inner();
    assert_eq!(current.version, last, "round {round}, {scope}");
}

fn check_registrations(nodes: &[NodeInfo], state: &Mutex<Registrations>, round: usize) {
    let listed: BTreeMap<&str, &NodeInfo> = nodes
        .iter()
        .filter(|n| n.name.starts_with("ext-"))
        .map(|n| (n.name.as_str(), n))
        .collect();
    let mut s = state.lock().expect("registrations");
    // A removal in flight is resolved below.
    let leaving = match &s.in_flight {
        Some(Pending::Deregister(name)) => Some(name.clone()),
        _ => None,
    };
    for (name, (id, _)) in &s.present {
        if leaving.as_ref() == Some(name) {
            continue;
        }
        let node = listed
            .get(name.as_str())
            .unwrap_or_else(|| panic!("round {round}: registered {name} lost"));
        assert_eq!(&node.id, id, "round {round}: {name} under another id");
    }
    for name in &s.gone {
        assert!(
            !listed.contains_key(name.as_str()),
            "round {round}: {name} left and came back"
        );
    }
    match s.in_flight.take() {
        Some(Pending::Register(name)) => {
            if let Some(node) = listed.get(name.as_str()) {
                // Stored whole, or not at all.
                assert_eq!(node.address, test_address(&name), "round {round}");
                assert_eq!(node.labels, test_labels(&name), "round {round}");
                s.present.insert(name, (node.id.clone(), None));
            }
        }
        Some(Pending::Deregister(name)) if !listed.contains_key(name.as_str()) => {
            s.present.remove(&name);
            s.gone.insert(name);
        }
        Some(Pending::Deregister(_)) | None => {}
    }
    let known: BTreeSet<&str> = s.present.keys().map(String::as_str).collect();
    let unknown: Vec<_> = listed.keys().filter(|n| !known.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "round {round}: nodes nobody registered: {unknown:?}"
    );
}

async fn check_catalog(addr: SocketAddr, state: &Mutex<Catalog>, round: usize) {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.expect("the line protocol"));
    let (indexed, removed, in_flight) = {
        let mut s = state.lock().expect("catalog");
        (s.indexed.clone(), s.removed.clone(), s.in_flight.take())
    };
    // A removal in flight is resolved below.
    let removing = in_flight
        .as_deref()
        .and_then(|request| request.strip_prefix("REMOVE|"))
        .and_then(|rest| rest.split('|').next());
    for name in indexed
        .iter()
        .filter(|name| Some(name.as_str()) != removing)
    {
        let reply = line(&mut stream, &format!("QUERY|{name}|\n")).await;
        assert_eq!(reply.as_deref(), Some("OK"), "round {round}: {name} lost");
    }
    for name in &removed {
        let reply = line(&mut stream, &format!("QUERY|{name}|\n")).await;
        assert_eq!(reply.as_deref(), Some("FAIL"), "round {round}: {name} back");
    }
    if let Some(request) = in_flight {
        let mut parts = request.split('|');
        let (command, name) = (parts.next().expect("command"), parts.next().expect("name"));
        let there = line(&mut stream, &format!("QUERY|{name}|\n"))
            .await
            .as_deref()
            == Some("OK");
        let mut s = state.lock().expect("catalog");
        match (command, there) {
            ("INDEX", true) => {
                s.indexed.insert(name.to_owned());
            }
            ("REMOVE", false) => {
                s.indexed.remove(name);
                s.removed.insert(name.to_owned());
            }
            _ => {}
        }
    }
}

/// The farm's own nodes' ids by name (the registered test nodes aside).
fn managed_ids(nodes: &[NodeInfo]) -> BTreeMap<String, String> {
    let managed: Vec<NodeInfo> = nodes.iter().filter(|n| n.managed).cloned().collect();
    ids_by_name(&managed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = NodeGuard::new(dir.path());
    let addr = free_addr();
    let mut control_plane = start(dir.path(), addr).await;
    let first = control_plane
        .wait_healthy(NODES, Duration::from_secs(30))
        .await;
    let identities = managed_ids(&first);
    assert_eq!(identities.len(), NODES);

    let scopes: Vec<Arc<Mutex<Scope>>> = SCOPES.iter().map(|_| Arc::default()).collect();
    let registrations = Arc::new(Mutex::new(Registrations::default()));
    let catalog = Arc::new(Mutex::new(Catalog::default()));
    let (done, done_rx) = watch::channel(false);
    let seen: Vec<Arc<Mutex<Vec<u64>>>> = SCOPES.iter().map(|_| Arc::default()).collect();
    let followers: Vec<JoinHandle<()>> = SCOPES
        .iter()
        .zip(&seen)
        .map(|(scope, seen)| tokio::spawn(follow(addr, scope, seen.clone(), done_rx.clone())))
        .collect();

    let mut rng = rand::rng();
    let mut recoveries = Vec::new();
    for round in 1..=KILLS {
        let (stop, stop_rx) = watch::channel(false);
        let api = farm_testkit::Api::at(addr);
        let mut work: Vec<JoinHandle<()>> = SCOPES
            .iter()
            .zip(&scopes)
            .map(|(scope, state)| {
                tokio::spawn(write_config(
                    api.clone(),
                    scope,
                    state.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        work.push(tokio::spawn(register_and_leave(
            api.clone(),
            registrations.clone(),
            stop_rx.clone(),
        )));
        work.push(tokio::spawn(index_and_remove(
            control_plane.indexer_addr(),
            catalog.clone(),
            stop_rx,
        )));

        let moment = Duration::from_millis(rng.random_range(50..600));
        tokio::time::sleep(moment).await;
        control_plane.kill().await;
        let _ = stop.send(true);
        for task in work {
            task.await.expect("a client task");
        }
        assert_eq!(integrity_check(dir.path()), "ok", "round {round}");

        let killed = Instant::now();
        control_plane = start(dir.path(), addr).await;
        let nodes = control_plane
            .wait_nodes(
                "the farm's nodes healthy",
                Duration::from_secs(30),
                |nodes| nodes.iter().filter(|n| n.managed && healthy(n)).count() == NODES,
            )
            .await;
        recoveries.push(killed.elapsed());
        assert_eq!(
            managed_ids(&nodes),
            identities,
            "round {round}: the farm's nodes re-attach under their ids"
        );
        for (scope, state) in SCOPES.iter().zip(&scopes) {
            check_scope(&control_plane, scope, state, round).await;
        }
        check_registrations(&nodes, &registrations, round);
        check_catalog(control_plane.indexer_addr(), &catalog, round).await;
        eprintln!(
            "round {round}: killed {moment:?} in, whole again after {:?}",
            killed.elapsed()
        );
    }

    // The watchers, resumed after every kill, saw every version in order.
    for ((scope, state), seen) in SCOPES.iter().zip(&scopes).zip(&seen) {
        let expected: Vec<u64> = state
            .lock()
            .expect("scope")
            .versions
            .iter()
            .map(|(v, _)| *v)
            .collect();
        farm_testkit::eventually("the watchers to catch up", Duration::from_secs(10), || {
            let seen = seen.lock().expect("seen").clone();
            let expected = expected.clone();
            async move {
                if seen.len() >= expected.len() {
                    Ok(())
                } else {
                    Err(seen.len())
                }
            }
        })
        .await;
        assert_eq!(*seen.lock().expect("seen"), expected, "{scope}");
    }
    let _ = done.send(true);
    for follower in followers {
        follower.await.expect("a watcher");
    }

    let status = control_plane.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    drop(guard);
    let writes: usize = scopes
        .iter()
        .map(|s| s.lock().expect("scope").versions.len())
        .sum();
    let [stored, not_stored] = scopes.iter().fold([0, 0], |[a, b], s| {
        let [x, y] = s.lock().expect("scope").resolved;
        [a + x, b + y]
    });
    let registrations = registrations.lock().expect("registrations");
    let catalog = catalog.lock().expect("catalog");
    recoveries.sort();
    // Every kind of write went on through the kills.
    assert!(writes > KILLS, "{writes} configuration versions");
    assert!(registrations.gone.len() > KILLS, "{registrations:?}");
    assert!(catalog.removed.len() > KILLS, "{catalog:?}");
    eprintln!(
        "{KILLS} kills: {writes} configuration versions ({stored} writes in flight at a kill \
         found stored, {not_stored} not), {} nodes registered and {} left, {} names indexed \
         and {} removed; restart to whole farm, median {:?}, worst {:?}",
        registrations.present.len() + registrations.gone.len(),
        registrations.gone.len(),
        catalog.indexed.len() + catalog.removed.len(),
        catalog.removed.len(),
        recoveries[recoveries.len() / 2],
        recoveries[recoveries.len() - 1],
    );
}
