//! Extra Docker engines in network namespaces of their own
//! (`farm_testkit::engines`) make a swarm of three hosts on one machine: a
//! manager and two workers, all three extra engines (the machine's own
//! engine and its swarm are never touched; it only lends its image). A
//! replicated service spreads over the three; a worker cut off the network
//! is marked down and its tasks rescheduled on the others, and it comes
//! back ready once reconnected. A container on a worker reaches a listener
//! of the root namespace on the bridge's address, where a control plane
//! would listen.
//!
//! Skipped with a message without root, `ip`, `dockerd` or a machine
//! engine, failing instead when `FARM_REQUIRE_DOCKER=1`. It prints what
//! each step took (`--no-capture`): joining, spreading, noticing a cut-off
//! host with swarm's default heartbeat and with a 1 s one, coming back.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use farm_testkit::{
    docker,
    engines::{Engine, Hosts, wait_until},
    process::run_within,
};

/// The node image, taken from the machine's engine.
const IMAGE: &str = "farm-node:dev";
/// How many tasks the service runs: two per engine.
const REPLICAS: usize = 6;
/// How often a wait looks again: bounds how late a change is seen.
const EVERY: Duration = Duration::from_millis(250);

/// `ip -o -4 addr show docker0` of the root namespace: an engine started
/// wrongly there deletes or renumbers it.
fn root_docker0() -> String {
    run_within(
        Command::new("ip").args(["-o", "-4", "addr", "show", "docker0"]),
        Duration::from_secs(10),
    )
    .map(|ran| {
        ran.stdout
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    })
    .unwrap_or_default()
}

/// Makes sure the machine's engine has the node image: built from the
/// static farm-node, `FROM scratch`, when missing (nothing is pulled).
fn ensure_image() {
    let present = run_within(
        Command::new("docker").args(["image", "inspect", IMAGE]),
        Duration::from_secs(30),
    )
    .is_ok_and(|ran| ran.ok());
    if present {
        return;
    }
    let context = tempfile::tempdir().expect("a build context folder");
    std::fs::copy(
        docker::static_node_binary(),
        context.path().join("farm-node"),
    )
    .expect("copy the static farm-node");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY farm-node /farm-node\nEXPOSE 7000\nENTRYPOINT [\"/farm-node\"]\n",
    )
    .expect("write the Dockerfile");
    run_within(
        Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", IMAGE])
            .arg(context.path()),
        Duration::from_secs(120),
    )
    .expect("run docker build")
    .expect_ok("docker build of the node image");
}

/// The service's running containers on `engine`, as that engine sees them
/// (through its own socket, which a cut leaves working).
fn running_on(engine: &Engine, service: &str) -> Result<usize, String> {
    let label = format!("label=com.docker.swarm.service.name={service}");
    let ids = engine.try_docker(&["ps", "-q", "--filter", &label, "--filter", "status=running"])?;
    Ok(ids.split_whitespace().count())
}

/// The manager's view of the service's tasks meant to run: `(host name,
/// current state)` of each.
fn tasks(manager: &Engine, service: &str) -> Result<Vec<(String, String)>, String> {
    let out = manager.try_docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}}|{{.CurrentState}}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(node, state)| (node.to_owned(), state.to_owned()))
        .collect())
}

/// The tasks of the service that ended in an error, as the manager lists
/// them: what a slow rescheduling went through.
fn failed_tasks(manager: &Engine, service: &str) -> Vec<String> {
    manager
        .try_docker(&[
            "service",
            "ps",
            service,
            "--no-trunc",
            "--format",
            "{{.Name}} on {{.Node}}: {{.CurrentState}}: {{.Error}}",
        ])
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.ends_with(": "))
        .map(str::to_owned)
        .collect()
}

/// `ready`, `down` or `unknown`: the manager's word on a node.
fn node_state(manager: &Engine, node: &str) -> Result<String, String> {
    manager
        .try_docker(&["node", "inspect", node, "--format", "{{.Status.State}}"])
        .map(|s| s.trim().to_owned())
}

/// Waits until every task of the service runs, `REPLICAS` of them, none on
/// `away` (cut off), with `per_engine` containers running on each other
/// engine (any split when `None`); returns how long that took.
fn wait_converged(
    what: &str,
    hosts: &Hosts,
    service: &str,
    away: Option<&Engine>,
    per_engine: Option<usize>,
    limit: Duration,
) -> Duration {
    let manager = &hosts[0];
    let (_, took) = wait_until(what, limit, EVERY, || {
        let tasks = tasks(manager, service)?;
        let running = tasks
            .iter()
            .filter(|(node, state)| {
                state.starts_with("Running") && away.is_none_or(|a| node != a.name())
            })
            .count();
        let mut counts = Vec::new();
        for engine in hosts.engines() {
            if away.is_some_and(|a| a.name() == engine.name()) {
                continue;
            }
            counts.push((engine.name().to_owned(), running_on(engine, service)?));
        }
        let total: usize = counts.iter().map(|(_, n)| n).sum();
        let spread = per_engine.is_none_or(|n| counts.iter().all(|(_, c)| *c == n));
        if tasks.len() == REPLICAS && running == REPLICAS && total == REPLICAS && spread {
            Ok(())
        } else {
            Err(format!("tasks {tasks:?}, containers running {counts:?}"))
        }
    });
    took
}

/// Cuts `engine` off, measures until the manager marks it down and until
/// its tasks run elsewhere, reconnects it, and measures until it is ready
/// again and has stopped the tasks it kept running while cut off.
fn cut_and_reconnect(hosts: &Hosts, engine: &Engine, node: &str, service: &str, label: &str) {
    let manager = &hosts[0];
    let before = running_on(engine, service).expect("count its containers");
    assert!(before > 0, "{} runs none of the tasks", engine.name());
    let cut = Instant::now();
    engine.cut();
    let (_, down) = wait_until(
        &format!("{label}: the manager to mark {} down", engine.name()),
        Duration::from_secs(120),
        EVERY,
        || node_state(manager, node).and_then(|s| if s == "down" { Ok(()) } else { Err(s) }),
    );
    wait_converged(
        &format!("{label}: the tasks of {} to run elsewhere", engine.name()),
        hosts,
        service,
        Some(engine),
        None,
        Duration::from_secs(120),
    );
    let rescheduled = cut.elapsed();
    let kept = running_on(engine, service).expect("count its containers");
    for line in failed_tasks(manager, service) {
        eprintln!("{label}: a task failed on the way: {line}");
    }
    eprintln!(
        "{label}: cut {} ({before} tasks): marked down after {:.1?}, all {REPLICAS} tasks running \
         on the others after {:.1?}; meanwhile it still runs {kept} containers of its own",
        engine.name(),
        down,
        rescheduled,
    );
    let reconnected = Instant::now();
    engine.reconnect();
    let (_, ready) = wait_until(
        &format!("{label}: {} to be ready again", engine.name()),
        Duration::from_secs(120),
        EVERY,
        || node_state(manager, node).and_then(|s| if s == "ready" { Ok(()) } else { Err(s) }),
    );
    wait_until(
        &format!("{label}: {} to stop the tasks it kept", engine.name()),
        Duration::from_secs(120),
        EVERY,
        || match running_on(engine, service)? {
            0 => Ok(()),
            n => Err(format!("{n} still running")),
        },
    );
    let cleared = reconnected.elapsed();
    eprintln!(
        "{label}: reconnected {}: ready after {ready:.1?}, its stale containers stopped after \
         {cleared:.1?}",
        engine.name(),
    );
    wait_converged(
        &format!("{label}: all tasks running after the reconnection"),
        hosts,
        service,
        None,
        None,
        Duration::from_secs(60),
    );
}

/// Accepts one connection on `listener` (non-blocking) within `limit`.
fn accept_within(listener: &TcpListener, limit: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((_, peer)) => return Some(peer),
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(EVERY),
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

#[test]
fn docker_engines_in_namespaces_make_a_swarm_that_reschedules_a_cut_hosts_tasks() {
    const TEST: &str =
        "docker_engines_in_namespaces_make_a_swarm_that_reschedules_a_cut_hosts_tasks";
    if !Hosts::available(TEST) {
        return;
    }
    let whole = Instant::now();
    let docker0 = root_docker0();
    ensure_image();

    let started = Instant::now();
    let hosts = Hosts::start(3);
    eprintln!(
        "3 engines on {} (bridge {}) answered after {:.1?}",
        hosts.subnet(),
        hosts.bridge(),
        started.elapsed()
    );
    let [manager, first, second] = [&hosts[0], &hosts[1], &hosts[2]];
    // Each engine's docker0 is its own, in its namespace.
    for engine in hosts.engines() {
        let ran = run_within(
            engine
                .command("ip")
                .args(["-o", "-4", "addr", "show", "docker0"]),
            Duration::from_secs(10),
        )
        .expect("run ip in the namespace");
        assert!(
            ran.stdout.contains("inet "),
            "{} has no docker0 of its own: {ran:?}",
            engine.name()
        );
    }
    assert_eq!(
        root_docker0(),
        docker0,
        "the root namespace's docker0 changed"
    );

    let t = Instant::now();
    let token = manager.init_swarm();
    eprintln!("swarm init on {} took {:.1?}", manager.name(), t.elapsed());
    let mut nodes = vec![manager.node_id()];
    for worker in [first, second] {
        let t = Instant::now();
        worker.join(&token, &manager.manager_addr());
        eprintln!("{} joined in {:.1?}", worker.name(), t.elapsed());
        nodes.push(worker.node_id());
    }
    let (_, took) = wait_until("three ready nodes", Duration::from_secs(60), EVERY, || {
        let states: Vec<String> = nodes
            .iter()
            .map(|n| node_state(manager, n))
            .collect::<Result<_, _>>()?;
        if states.iter().all(|s| s == "ready") {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    });
    eprintln!("all three nodes ready {took:.1?} after the last join");
    let hostnames = manager.docker(&["node", "ls", "--format", "{{.Hostname}}"]);
    for engine in hosts.engines() {
        assert!(
            hostnames.lines().any(|h| h == engine.name()),
            "no node named {} in {hostnames:?}",
            engine.name()
        );
    }

    let t = Instant::now();
    hosts.load_image(IMAGE);
    eprintln!(
        "{IMAGE} loaded into the three engines in {:.1?}",
        t.elapsed()
    );

    let id = format!("{:08x}", rand::random::<u32>());
    let label = format!("farm.test={id}");
    let network = format!("farm-eng-{id}");
    let service = format!("farm-eng-{id}");
    manager.docker(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "--label",
        &label,
        &network,
    ]);
    let replicas = REPLICAS.to_string();
    // --no-resolve-image: the CLI would ask a registry for the tag's
    // digest. DNS round robin: this kernel has no IPVS, which a virtual IP
    // needs.
    manager.docker(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &service,
        "--label",
        &label,
        "--container-label",
        &label,
        "--network",
        &network,
        "--endpoint-mode",
        "dnsrr",
        "--no-resolve-image",
        "--replicas",
        &replicas,
        "--restart-delay",
        "1s",
        IMAGE,
        "--control-plane",
        &format!("http://{}:1", hosts.gateway()),
        "--listen",
        "0.0.0.0:7000",
    ]);
    let took = wait_converged(
        "two running tasks on each engine",
        &hosts,
        &service,
        None,
        Some(2),
        Duration::from_secs(120),
    );
    eprintln!("{REPLICAS} tasks running, two per engine, {took:.1?} after service create");

    // A container on a worker, on the swarm's overlay network, reaches a
    // listener of the root namespace on the bridge's address.
    let listener = TcpListener::bind((hosts.gateway(), 0)).expect("listen on the bridge's address");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("its port").port();
    let t = Instant::now();
    let probe = second.docker(&[
        "run",
        "-d",
        "--label",
        &label,
        "--network",
        &network,
        IMAGE,
        "--control-plane",
        &format!("http://{}:{port}", hosts.gateway()),
        "--listen",
        "0.0.0.0:7000",
    ]);
    let peer = accept_within(&listener, Duration::from_secs(30));
    let logs = second.try_docker(&["logs", &probe]).unwrap_or_default();
    second.docker(&["rm", "-f", &probe]);
    let peer = peer.unwrap_or_else(|| {
        panic!(
            "a container on {} did not reach {}:{port}; its log:\n{logs}",
            second.name(),
            hosts.gateway()
        )
    });
    eprintln!(
        "a container on {}'s overlay network reached {}:{port} of the root namespace after \
         {:.1?}, from {peer}",
        second.name(),
        hosts.gateway(),
        t.elapsed()
    );
    assert_eq!(
        peer.ip(),
        second.addr(),
        "seen from the engine's address (NAT)"
    );

    // Swarm's default heartbeat (5 s).
    cut_and_reconnect(&hosts, second, &nodes[2], &service, "default heartbeat");

    // A shorter heartbeat: the workers learn it at their next heartbeat.
    manager.docker(&["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    thread::sleep(Duration::from_secs(6));
    cut_and_reconnect(&hosts, first, &nodes[1], &service, "1 s heartbeat");

    let t = Instant::now();
    drop(hosts);
    eprintln!("teardown took {:.1?}", t.elapsed());
    assert_eq!(
        root_docker0(),
        docker0,
        "the root namespace's docker0 changed"
    );
    eprintln!("whole test: {:.1?}", whole.elapsed());
}
