//! The catalog's line protocol over real sockets, as its clients use it:
//! a hundred clients clearing, indexing, querying and removing the shipped
//! set while malformed lines go by; pipelined batches answered in order;
//! the read timeout, the line and connection limits; loopback unless
//! allowed; `/readyz` and `/metrics`; and what a shutdown or a crash keeps:
//! every change answered `OK`, and no change half there.
//!
//! Control planes run in this process ([`Farm`]) unless a test needs a
//! signal, then as a child ([`ControlPlaneProcess`]). Every loop is
//! bounded in count and every wait in time; no assertion depends on how
//! long something took, except that a stopping control plane exits within
//! its drain time plus a wide margin.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use farm_api::v1::{GetRequest, ListRequest, catalog_client::CatalogClient};
use farm_testkit::{
    ControlPlaneProcess, Farm,
    catalog::{LineClient, Package, Reply, graph, index_line, query_line, remove_line},
    eventually, eventually_every, http,
    process::serve_refused,
    ready_if,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::{Barrier, Semaphore, watch},
    task::JoinSet,
};

/// How long a test's traffic may take before it fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);
/// How long `serve` lets connections drain at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// What a shared, busy machine may add to the drain before the process
/// is gone.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// Malformed lines, each to be answered `ERROR` with the connection kept:
/// the protocol's own examples, then bytes that are not UTF-8 in each
/// field.
const MALFORMED: &[&[u8]] = &[
    b"INDEX|a|b|c\n",
    b"index|a|\n",
    b"INDEX||\n",
    b"INDEX|emacs=elisp\n",
    "INDEX|emacs☃elisp\n".as_bytes(),
    b"BLINDEX|a|\n",
    b"\xc0\xafINDEX|a|\n",
    b"INDEX|\xff\xfe|\n",
    b"QUERY|caf\xe9|\n",
    b"REMOVE|zlib|\xc3\x28\n",
    // A character that does not print (U+200B ZERO WIDTH SPACE).
    "INDEX|zero\u{200b}width|\n".as_bytes(),
];

/// A malformed line goes after every this many well-formed ones: one line
/// in twenty, 5 %.
const MALFORMED_EVERY: usize = 19;

/// Clients of the concurrent run.
const CLIENTS: usize = 100;

/// A hundred clients share the shipped set as a test harness does, each
/// with a part of it, racing: they clear it, index it (retrying what
/// waits on another client's part), query it, remove it (retrying what
/// another's still depends on) and query it again; one line in twenty is
/// malformed. A user relies on each well-formed line getting the rules'
/// answer whatever the other clients do, each malformed one getting
/// `ERROR` on a connection that keeps working, and `/metrics` counting
/// exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_clear_index_query_and_remove_the_whole_set() {
    let farm = Farm::builder().indexer().start().await;
    let addr = farm.indexer_addr();
    let set = graph();
    let mut parts = vec![Vec::new(); CLIENTS];
    for (i, package) in set.iter().enumerate() {
        parts[i % CLIENTS].push(package.clone());
    }
    let phases = Arc::new(Barrier::new(CLIENTS));
    let progress = Arc::new(watch::channel(0usize).0);
    let mut clients = JoinSet::new();
    for (number, part) in parts.into_iter().enumerate() {
        let phases = Arc::clone(&phases);
        let progress = Arc::clone(&progress);
        clients.spawn(async move {
            let mut client = Racer::connect(addr, number, progress).await;
            // As a harness starts: clear what it is about to index.
            client.until_all_ok(&part, Package::remove_line).await;
            phases.wait().await;
            client.until_all_ok(&part, Package::index_line).await;
            phases.wait().await;
            client
                .expect_all(&part, Package::query_line, Reply::Ok)
                .await;
            phases.wait().await;
            client.until_all_ok(&part, Package::remove_line).await;
            phases.wait().await;
            client
                .expect_all(&part, Package::query_line, Reply::Fail)
                .await;
            client.malformed
        });
    }
    let malformed: usize = join_all(&mut clients).await.into_iter().sum();
    // Five passes over the set at least, one line in twenty malformed.
    assert!(malformed >= set.len() / 5, "{malformed} malformed lines");

    let metrics = Metrics::read(farm.addr).await;
    let errors: f64 = ["INDEX", "REMOVE", "QUERY", "other"]
        .iter()
        .map(|command| metrics.commands(command, "error"))
        .sum();
    assert_eq!(errors, malformed as f64, "ERROR answers counted");
    let names = set.len() as f64;
    assert_eq!(metrics.get("farm_catalog_names"), 0.0);
    assert_eq!(metrics.commands("INDEX", "ok"), names);
    assert_eq!(metrics.commands("REMOVE", "ok"), 2.0 * names);
    assert_eq!(metrics.commands("QUERY", "ok"), names);
    assert_eq!(metrics.commands("QUERY", "fail"), names);
    assert_eq!(
        metrics.get("farm_catalog_connections_total"),
        CLIENTS as f64
    );
    // What changed the catalog was written, once: each name indexed once
    // and removed once. Refusals, and removals of names not indexed (the
    // clearing), change nothing and write nothing.
    assert_eq!(
        metrics.get("farm_catalog_write_batch_size_sum"),
        2.0 * names
    );
}

/// Thousands of lines sent in one write are answered one for one, in
/// order, each as the rules decide it after the lines before it: a QUERY
/// right after an INDEX that was answered OK is OK, a QUERY right after a
/// REMOVE that was answered OK is FAIL. A user relies on this to pipeline
/// without waiting for each answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_lines_are_answered_in_order() {
    let farm = Farm::builder().indexer().start().await;
    let set = graph();
    // The set in its shuffled order, where many a dependency comes later:
    // every INDEX, then every QUERY; then INDEX and QUERY in pairs for the
    // first names refused; then the same for REMOVE, where many a
    // dependent is still there. The pairs each wait for the disk before
    // their QUERY, so there are only a few of them.
    const PAIRS: usize = 100;
    let mut steps: Vec<(Op, &Package)> = Vec::new();
    steps.extend(set.iter().map(|p| (Op::Index, p)));
    steps.extend(set.iter().map(|p| (Op::Query, p)));
    let mut model = Model::default();
    let mut expected: Vec<Reply> = steps.iter().map(|(op, p)| model.answer(*op, p)).collect();
    let refused: Vec<&Package> = set.iter().filter(|p| !model.holds(p)).collect();
    for package in refused.into_iter().take(PAIRS) {
        for op in [Op::Index, Op::Query] {
            steps.push((op, package));
            expected.push(model.answer(op, package));
        }
    }
    let mut removals: Vec<(Op, &Package)> = set.iter().map(|p| (Op::Remove, p)).collect();
    removals.extend(set.iter().map(|p| (Op::Query, p)));
    for (op, package) in removals {
        steps.push((op, package));
        expected.push(model.answer(op, package));
    }
    let kept: Vec<&Package> = set.iter().filter(|p| model.holds(p)).collect();
    for package in kept.into_iter().take(PAIRS) {
        for op in [Op::Remove, Op::Query] {
            steps.push((op, package));
            expected.push(model.answer(op, package));
        }
    }
    let lines: Vec<String> = steps.iter().map(|(op, p)| op.line(p)).collect();
    let pairs = |first: Op, second: Reply| {
        steps
            .windows(2)
            .zip(expected.windows(2))
            .filter(|(s, e)| {
                s[0].0 == first
                    && s[1].0 == Op::Query
                    && s[0].1 == s[1].1
                    && e == &[Reply::Ok, second]
            })
            .count()
    };
    let (index_then_query, remove_then_query) =
        (pairs(Op::Index, Reply::Ok), pairs(Op::Remove, Reply::Fail));
    assert!(
        index_then_query > 10 && remove_then_query > 10,
        "the batch must hold both orders: {index_then_query} INDEX then QUERY, {remove_then_query} REMOVE then QUERY"
    );

    let mut client = LineClient::connect(farm.indexer_addr()).await;
    let replies = client.pipeline(&lines).await;
    if let Some(at) = (0..lines.len()).find(|&i| replies[i] != expected[i]) {
        panic!(
            "line {} of {}, {:?}, was answered {:?}; the rules say {:?}",
            at + 1,
            lines.len(),
            lines[at],
            replies[at],
            expected[at]
        );
    }
    let names = Metrics::read(farm.addr).await.get("farm_catalog_names");
    assert_eq!(names, model.indexed.len() as f64);
}

/// Bytes after the last newline when a client closes are not a command:
/// the complete line before them is answered, the torn one is not, and
/// changes nothing. A user relies on a client that dies mid-line leaving
/// nothing half-sent in the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_last_newline_at_close_are_not_a_command() {
    let farm = Farm::builder().indexer().start().await;
    let addr = farm.indexer_addr();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"QUERY|x|\nINDEX|x|")
        .await
        .expect("send a line and a torn one");
    stream.shutdown().await.expect("close the sending side");
    // The server closes once it has seen the end: whatever it did with the
    // torn line, it has done.
    let mut answers = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut answers))
        .await
        .expect("the server closes the connection")
        .expect("read the answers");
    assert_eq!(
        String::from_utf8_lossy(&answers),
        "FAIL\n",
        "one answer, to the complete line"
    );

    let mut client = LineClient::connect(addr).await;
    assert_eq!(
        client.request("QUERY|x|\n").await,
        Reply::Fail,
        "x was not indexed"
    );
    // The same bytes with their newline do index it.
    assert_eq!(client.request("INDEX|x|\n").await, Reply::Ok);
    assert_eq!(client.request("QUERY|x|\n").await, Reply::Ok);
}

/// A client that sends nothing for the read timeout is closed, whether it
/// never sent anything or stopped half-way through a line, while a client
/// beside it that keeps sending is served on. A user relies on idle
/// connections not holding their slot for ever, and on a busy one never
/// being cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_its_read_timeout_and_a_busy_one_is_not() {
    /// Requests the busy client may send while waiting for the others to
    /// be closed.
    const MAX_BUSY: usize = 1_000_000;
    let farm = Farm::builder()
        .indexer()
        .flags(&["--indexer-read-timeout", "1s"])
        .start()
        .await;
    let addr = farm.indexer_addr();
    let mut silent = LineClient::connect(addr).await;
    let mut halfway = LineClient::connect(addr).await;
    halfway.send("QUERY|zlib").await;
    let mut busy = LineClient::connect(addr).await;
    let done = Arc::new(AtomicBool::new(false));
    let busy_task = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut answered = 0;
            while !done.load(Ordering::Relaxed) {
                assert!(
                    answered < MAX_BUSY,
                    "the silent clients were still open after {MAX_BUSY} requests of the busy one"
                );
                assert_eq!(busy.request("QUERY|zlib|\n").await, Reply::Fail);
                answered += 1;
            }
            (busy, answered)
        }
    });
    // Twenty read timeouts: closed at the first, whatever the machine.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        (
            silent.reply_or_close().await,
            halfway.reply_or_close().await,
        )
    })
    .await
    .expect("the silent clients are closed");
    done.store(true, Ordering::Relaxed);
    let (mut busy, answered) = busy_task.await.expect("the busy client");
    assert_eq!(closed, (None, None), "closed, with no answer");
    assert!(answered > 0);
    assert_eq!(
        busy.request("QUERY|zlib|\n").await,
        Reply::Fail,
        "the busy client is still served"
    );
}

/// A line longer than `--indexer-max-line` is answered `ERROR` and its
/// connection closed, since what follows it cannot be told apart; the
/// lines pipelined before it are answered first, and a line of exactly
/// the limit is served. The same for a line that passes the limit before
/// its newline arrives. A user relies on the limit bounding what one
/// client makes the server hold, without losing the answers already due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_is_answered_error_and_its_connection_closed() {
    const MAX_LINE: usize = 1024;
    let farm = Farm::builder()
        .indexer()
        .flags(&["--indexer-max-line", "1KiB"])
        .start()
        .await;
    let addr = farm.indexer_addr();
    let query = |bytes: usize| format!("QUERY|{}|\n", "n".repeat(bytes - "QUERY||".len()));
    let (longest, overlong) = (query(MAX_LINE), query(MAX_LINE + 1));
    assert_eq!(
        longest.len(),
        MAX_LINE + 1,
        "the limit leaves out the newline"
    );

    let mut client = LineClient::connect(addr).await;
    let batch = [
        "INDEX|a|\n",
        "QUERY|a|\n",
        longest.as_str(),
        overlong.as_str(),
        "QUERY|a|\n",
    ]
    .concat();
    client.send(batch).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let answer = client.reply_or_close().await;
        answers.push(answer);
        if answer.is_none() {
            break;
        }
    }
    use Reply::{Error, Fail, Ok};
    assert_eq!(
        answers,
        [Some(Ok), Some(Ok), Some(Fail), Some(Error), None],
        "INDEX, QUERY, the longest line, the overlong one, then closed"
    );

    // No newline in sight past the limit: the same.
    let mut client = LineClient::connect(addr).await;
    client.send("QUERY|a|\n").await;
    client
        .send(format!("INDEX|{}", "n".repeat(2 * MAX_LINE)))
        .await;
    assert_eq!(client.reply_or_close().await, Some(Ok));
    assert_eq!(client.reply_or_close().await, Some(Error));
    assert_eq!(client.reply_or_close().await, None);

    let mut client = LineClient::connect(addr).await;
    assert_eq!(
        client.request("QUERY|a|\n").await,
        Ok,
        "other clients go on"
    );
}

/// Past `--indexer-max-connections`, a new connection is accepted and
/// closed at once, with no answer, and counted in `/metrics`; the open
/// ones go on, and once one closes a new one is served. A user relies on
/// the limit protecting the server without hurting the clients it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_a_new_connection_is_closed_at_once() {
    let farm = Farm::builder()
        .indexer()
        // Idle connections stay open: only the limit closes one here.
        .flags(&["--indexer-max-connections", "3"])
        .flags(&["--indexer-read-timeout", "10min"])
        .start()
        .await;
    let addr = farm.indexer_addr();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut client = LineClient::connect(addr).await;
        assert_eq!(client.request("QUERY|a|\n").await, Reply::Fail);
        open.push(client);
    }
    let mut fourth = LineClient::connect(addr).await;
    // Counted as it is closed: once counted, it is closed.
    eventually(
        "the fourth connection to be refused",
        Duration::from_secs(10),
        || async {
            let metrics = Metrics::read(farm.addr).await;
            let refused = metrics.get("farm_catalog_connections_refused_total");
            ready_if(refused == 1.0, refused)
        },
    )
    .await;
    assert_eq!(
        fourth.reply_or_close().await,
        None,
        "the fourth connection is closed, with no answer"
    );
    for client in &mut open {
        assert_eq!(client.request("QUERY|a|\n").await, Reply::Fail);
    }
    let metrics = Metrics::read(farm.addr).await;
    assert_eq!(metrics.get("farm_catalog_connections_refused_total"), 1.0);
    assert_eq!(metrics.get("farm_catalog_connections_open"), 3.0);

    drop(open.pop());
    // Its slot is free once the server has seen it close.
    let mut fifth = eventually(
        "a new connection to be served after one closed",
        Duration::from_secs(10),
        || async {
            let mut client = LineClient::connect(addr).await;
            client.send("QUERY|a|\n").await;
            match client.reply_or_close().await {
                Some(reply) => Ok((client, reply)),
                None => Err("closed at once"),
            }
        },
    )
    .await;
    assert_eq!(fifth.1, Reply::Fail);
    assert_eq!(fifth.0.request("INDEX|a|\n").await, Reply::Ok);
    for client in &mut open {
        assert_eq!(client.request("QUERY|a|\n").await, Reply::Ok);
    }
}

/// SIGTERM while clients pipeline changes: the control plane answers
/// every line it read, closes the connections and exits cleanly within
/// its drain time; after a restart on the same data every change it
/// answered OK holds, and no change it did not answer took effect. A user
/// relies on a deploy losing nothing it acknowledged, and doing nothing
/// it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_while_clients_send_keeps_every_acknowledged_change() {
    stop_while_clients_send_then_restart(Stop::Shutdown).await;
}

/// SIGKILL while clients pipeline changes, then a restart on the same
/// data: every change answered OK holds (an indexed name answers QUERY
/// OK, a removed one FAIL), and every change never answered is there whole
/// or not at all: a name that is there has exactly the dependencies sent,
/// all of them there. A user relies on a crash losing nothing
/// acknowledged and leaving nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_change_and_leaves_none_half_there() {
    stop_while_clients_send_then_restart(Stop::Crash).await;
}

/// Starts a control plane with senders pipelining changes at it, stops it
/// as `stop` says once some are acknowledged, restarts it on the same data
/// and checks what it kept.
async fn stop_while_clients_send_then_restart(stop: Stop) {
    let dir = tempfile::tempdir().expect("a data folder");
    let mut control_plane = ControlPlaneProcess::builder(dir.path())
        .indexer()
        .start()
        .await;
    let (mut clients, acked) = start_senders(control_plane.indexer_addr());
    wait_for_acknowledgements(&acked).await;

    match stop {
        Stop::Shutdown => {
            let status = control_plane.terminate(DRAIN + STOP_MARGIN).await;
            assert!(status.success(), "{status:?}");
        }
        Stop::Crash => control_plane.kill().await,
    }
    let traffic = join_all(&mut clients).await;

    let restarted = ControlPlaneProcess::builder(dir.path())
        .indexer()
        .start()
        .await;
    check_after_restart(&restarted, &traffic, stop).await;
}

/// A client that sends without ever reading its answers cannot hold a
/// shutdown past the drain time: the process exits long before that
/// client's read timeout; while it drains, `/readyz` says 503 and the
/// catalog's port takes no new connection. A user relies on SIGTERM
/// stopping the control plane in bounded time whatever a client does, and
/// on load balancers seeing it leave first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_cannot_hold_a_shutdown_past_the_drain() {
    /// Bytes the client may send: answers to far more than any buffers
    /// hold.
    const MAX_SENT: usize = 64 << 20;
    const CHUNK: usize = 64 << 10;
    let dir = tempfile::tempdir().expect("a data folder");
    let mut control_plane = ControlPlaneProcess::builder(dir.path())
        .indexer()
        .flags(&["--indexer-read-timeout", "120s"])
        .start()
        .await;
    // A small receive buffer of its own, so the answers back up soon.
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let stream = socket
        .connect(control_plane.indexer_addr())
        .await
        .expect("connect");
    let (_unread, mut write) = stream.into_split();
    // Empty lines: each is answered ERROR, six bytes back for one sent.
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let sent = Arc::clone(&sent);
        async move {
            let empty = vec![b'\n'; CHUNK];
            while sent.load(Ordering::Relaxed) < MAX_SENT && write.write_all(&empty).await.is_ok() {
                sent.fetch_add(CHUNK, Ordering::Relaxed);
            }
        }
    });
    // The answers back up in the buffers between the two ends until the
    // server's write blocks, for as long as nobody reads. Then the count
    // of answers stands still while the connection is open and has lines
    // the server has not read, and the server serves /metrics meanwhile.
    let api = control_plane.addr;
    let last = std::cell::Cell::new(None);
    eventually_every(
        "the server's answers to back up",
        LIMIT,
        Duration::from_millis(250),
        || async {
            let metrics = Metrics::read(api).await;
            let answered = metrics.commands("other", "error") as usize;
            let open = metrics.get("farm_catalog_connections_open");
            let unread = sent.load(Ordering::Relaxed) > answered;
            let before = last.replace(Some(answered));
            let stuck = before == Some(answered) && answered > 0 && unread && open == 1.0;
            ready_if(stuck, (answered, open))
        },
    )
    .await;

    let indexer = control_plane.indexer_addr();
    let draining = async {
        let readyz = eventually("/readyz to say 503", DRAIN + STOP_MARGIN, || async {
            let response = http::get(api, "/readyz").await;
            ready_if(response.status == 503, response.to_string())
        })
        .await;
        // Meanwhile the catalog's port takes no new connection (one may
        // get in just before it closes).
        eventually(
            "the catalog's port to refuse connections",
            DRAIN,
            || async { ready_if(TcpStream::connect(indexer).await.is_err(), ()) },
        )
        .await;
        readyz
    };
    let (status, readyz) = tokio::join!(control_plane.terminate(DRAIN + STOP_MARGIN), draining);
    assert!(status.success(), "{status:?}");
    assert!(readyz.contains("shutting down"), "{readyz}");
    tokio::time::timeout(LIMIT, sender)
        .await
        .expect("the client's writes end with the connection")
        .expect("the sending task");
}

/// `--indexer-listen` on an address other machines can reach is refused
/// before anything is bound, unless `--indexer-allow-remote` is given:
/// exit code 2, and the message names the flag that would allow it. A
/// user relies on never exposing a protocol without credentials by
/// mistake.
#[test]
fn a_non_loopback_address_needs_allow_remote() {
    #[track_caller]
    fn check(args: &[&str], env: &[(&str, &str)]) {
        let (code, stderr) = serve_refused(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("--indexer-allow-remote"),
            "{args:?} {env:?}: {stderr}"
        );
    }
    check(&["--indexer-listen", "0.0.0.0:0"], &[]);
    check(&["--indexer-listen", "[::]:0"], &[]);
    check(&["--indexer-listen", "192.0.2.1:7000"], &[]);
    check(&[], &[("FARM_INDEXER_LISTEN", "0.0.0.0:0")]);
}

/// `/readyz` says where the catalog's line protocol accepts while it does,
/// and says nothing of it when it is not served. A user relies on
/// readiness covering the catalog's port too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_catalog_listener_while_it_accepts() {
    let farm = Farm::builder().indexer().start().await;
    let accepting = format!(
        "catalog line protocol: accepting on {}",
        farm.indexer_addr()
    );
    let ready = ready_body(farm.addr).await;
    assert!(ready.contains(&accepting), "{ready}");

    let without = Farm::builder().start().await;
    let ready = ready_body(without.addr).await;
    assert!(!ready.contains("catalog"), "{ready}");
}

/// The body of `/readyz` once it answers 200 (a control plane just
/// started may not be ready yet).
async fn ready_body(addr: SocketAddr) -> String {
    eventually("/readyz to say 200", Duration::from_secs(10), || async {
        let response = http::get(addr, "/readyz").await;
        ready_if(response.status == 200, response.to_string())
    })
    .await
}

/// Waits for every task, at most [`LIMIT`]; a task's panic is the test's.
async fn join_all<T: 'static>(tasks: &mut JoinSet<T>) -> Vec<T> {
    let joined = tokio::time::timeout(LIMIT, async {
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(value) => done.push(value),
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            }
        }
        done
    })
    .await;
    joined.unwrap_or_else(|_| panic!("{} tasks still running after {LIMIT:?}", tasks.len()))
}

/// A client of the concurrent run. It pipelines its lines with a malformed
/// one after every [`MALFORMED_EVERY`] and checks each of those is
/// answered `ERROR`; what the rules refuse it sends again once another
/// client has made progress. (`LineClient::index_all` sends only
/// well-formed lines, and wants each pass over its set to make progress
/// on its own, which a part of the set waiting on other parts need not.)
struct Racer {
    client: LineClient,
    /// Well-formed lines sent, which places the malformed ones.
    sent: usize,
    /// Malformed lines sent.
    malformed: usize,
    /// Changes answered OK to all the clients together.
    progress: Arc<watch::Sender<usize>>,
    seen: watch::Receiver<usize>,
}

impl Racer {
    /// Passes of one part [`Racer::until_all_ok`] may make: each either
    /// succeeds with one line or waits for another client's success, of
    /// which there are as many as the set has names.
    const MAX_PASSES: usize = 10_000;
    /// How long no client may make progress before the run fails.
    const STALL: Duration = Duration::from_secs(30);

    async fn connect(addr: SocketAddr, number: usize, progress: Arc<watch::Sender<usize>>) -> Self {
        Self {
            client: LineClient::connect(addr).await,
            // Each client's malformed lines fall in other places.
            sent: number,
            malformed: 0,
            seen: progress.subscribe(),
            progress,
        }
    }

    /// Sends `lines` with the malformed ones among them; returns the
    /// answers to `lines`, in order.
    async fn send(&mut self, lines: &[String]) -> Vec<Reply> {
        let mut batch: Vec<&[u8]> =
            Vec::with_capacity(lines.len() + lines.len() / MALFORMED_EVERY + 1);
        let mut planted = Vec::new();
        for line in lines {
            batch.push(line.as_bytes());
            self.sent += 1;
            if self.sent.is_multiple_of(MALFORMED_EVERY) {
                planted.push(batch.len());
                batch.push(MALFORMED[(self.sent / MALFORMED_EVERY) % MALFORMED.len()]);
            }
        }
        self.malformed += planted.len();
        let mut replies = self.client.pipeline(&batch).await;
        for &at in planted.iter().rev() {
            let reply = replies.remove(at);
            assert_eq!(
                reply,
                Reply::Error,
                "the malformed {:?}",
                String::from_utf8_lossy(batch[at])
            );
        }
        replies
    }

    /// Sends `line` of each package until each is answered OK.
    async fn until_all_ok(&mut self, packages: &[Package], line: fn(&Package) -> String) {
        let mut pending: Vec<&Package> = packages.iter().collect();
        for _ in 0..Self::MAX_PASSES {
            if pending.is_empty() {
                return;
            }
            let before = *self.seen.borrow_and_update();
            let lines: Vec<String> = pending.iter().map(|p| line(p)).collect();
            let replies = self.send(&lines).await;
            let mut refused = Vec::new();
            for ((package, sent), reply) in pending.iter().zip(&lines).zip(replies) {
                match reply {
                    Reply::Ok => {}
                    Reply::Fail => refused.push(*package),
                    Reply::Error => panic!("the well-formed {sent:?} was answered ERROR"),
                }
            }
            let done = pending.len() - refused.len();
            if done > 0 {
                self.progress.send_modify(|n| *n += done);
            } else {
                // Nothing of this part can go before another client's next
                // success.
                let next = self.seen.wait_for(|n| *n > before);
                tokio::time::timeout(Self::STALL, next)
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "no client made progress for {:?}; still refused: {:?}",
                            Self::STALL,
                            &lines[..lines.len().min(5)]
                        )
                    })
                    .expect("the progress count lives");
            }
            pending = refused;
        }
        panic!(
            "{} lines still refused after {} passes",
            pending.len(),
            Self::MAX_PASSES
        );
    }

    /// Sends `line` of each package once; each must be answered `expected`.
    async fn expect_all(
        &mut self,
        packages: &[Package],
        line: fn(&Package) -> String,
        expected: Reply,
    ) {
        let lines: Vec<String> = packages.iter().map(line).collect();
        let replies = self.send(&lines).await;
        for (sent, reply) in lines.iter().zip(replies) {
            assert_eq!(reply, expected, "{sent:?}");
        }
    }
}

/// A line of the pipelining test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Index,
    Remove,
    Query,
}

impl Op {
    fn line(self, package: &Package) -> String {
        match self {
            Op::Index => package.index_line(),
            Op::Remove => package.remove_line(),
            Op::Query => package.query_line(),
        }
    }
}

/// The catalog's rules, kept by the test: the answer each line should get.
#[derive(Debug, Default)]
struct Model<'a> {
    /// Each indexed name's dependencies.
    indexed: HashMap<&'a str, &'a [String]>,
    /// How many indexed names depend on each name.
    dependents: HashMap<&'a str, usize>,
}

impl<'a> Model<'a> {
    fn holds(&self, package: &Package) -> bool {
        self.indexed.contains_key(package.name.as_str())
    }

    /// Applies `op` on `package` as the rules say; returns the answer.
    fn answer(&mut self, op: Op, package: &'a Package) -> Reply {
        let name = package.name.as_str();
        match op {
            Op::Query if self.indexed.contains_key(name) => Reply::Ok,
            Op::Query => Reply::Fail,
            Op::Index => {
                let deps = &package.dependencies;
                if !deps.iter().all(|d| self.indexed.contains_key(d.as_str())) {
                    return Reply::Fail;
                }
                if let Some(old) = self.indexed.insert(name, deps) {
                    self.forget(old);
                }
                for dependency in deps {
                    *self.dependents.entry(dependency).or_default() += 1;
                }
                Reply::Ok
            }
            Op::Remove => {
                if self.dependents.get(name).is_some_and(|n| *n > 0) {
                    return Reply::Fail;
                }
                if let Some(old) = self.indexed.remove(name) {
                    self.forget(old);
                }
                Reply::Ok
            }
        }
    }

    fn forget(&mut self, dependencies: &[String]) {
        for dependency in dependencies {
            if let Some(n) = self.dependents.get_mut(dependency.as_str()) {
                *n -= 1;
            }
        }
    }
}

/// Clients sending changes to a control plane that is about to stop.
const SENDERS: usize = 4;
/// Steps each sender may take (three lines each): far more than it gets to
/// before the control plane stops.
const STEPS: usize = 20_000;
/// Lines a sender writes at once.
const BATCH: usize = 150;
/// Lines a sender has unanswered at most.
const WINDOW: usize = 1500;
/// Changes answered OK to all the senders before the control plane is
/// stopped: well into the run.
const ACKNOWLEDGED: usize = 2000;

/// A change the shutdown and crash tests send.
#[derive(Debug, Clone)]
enum Sent {
    Index {
        name: String,
        dependencies: Vec<String>,
    },
    Remove {
        name: String,
    },
}

impl Sent {
    fn name(&self) -> &str {
        match self {
            Sent::Index { name, .. } | Sent::Remove { name } => name,
        }
    }

    fn line(&self) -> String {
        match self {
            Sent::Index { name, dependencies } => index_line(name, dependencies),
            Sent::Remove { name } => remove_line(name),
        }
    }
}

/// Sender `client`'s changes: at each step a name depending on the two
/// before it, and a name indexed then removed.
fn changes(client: usize) -> Vec<Sent> {
    let chained = |i: usize| format!("s{client}-chain-{i}");
    let mut changes = Vec::with_capacity(3 * STEPS);
    for i in 0..STEPS {
        changes.push(Sent::Index {
            name: chained(i),
            dependencies: (i.saturating_sub(2)..i).rev().map(chained).collect(),
        });
        let brief = format!("s{client}-brief-{i}");
        changes.push(Sent::Index {
            name: brief.clone(),
            dependencies: Vec::new(),
        });
        changes.push(Sent::Remove { name: brief });
    }
    changes
}

/// What one sender wrote and what came back before its connection ended.
#[derive(Debug)]
struct Traffic {
    /// Every change written, in order (the last ones maybe not whole).
    sent: Vec<Sent>,
    /// The answers, in order: one to each of the first `replies.len()`
    /// changes.
    replies: Vec<Reply>,
}

/// Starts [`SENDERS`] senders at `addr`; returns them and the count of
/// changes answered OK to them.
fn start_senders(addr: SocketAddr) -> (JoinSet<Traffic>, Arc<AtomicUsize>) {
    let acked = Arc::new(AtomicUsize::new(0));
    let mut senders = JoinSet::new();
    for client in 0..SENDERS {
        senders.spawn(send_until_closed(addr, changes(client), Arc::clone(&acked)));
    }
    (senders, acked)
}

async fn wait_for_acknowledgements(acked: &AtomicUsize) {
    eventually(
        format!("{ACKNOWLEDGED} changes acknowledged"),
        LIMIT,
        || async {
            let now = acked.load(Ordering::Relaxed);
            ready_if(now >= ACKNOWLEDGED, now)
        },
    )
    .await;
}

/// Pipelines `changes` to `addr`, [`BATCH`] lines a write and at most
/// [`WINDOW`] unanswered, reading answers as they come, until all are
/// answered or the connection ends; counts OK answers in `acked`.
async fn send_until_closed(
    addr: SocketAddr,
    mut changes: Vec<Sent>,
    acked: Arc<AtomicUsize>,
) -> Traffic {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    let (read, mut write) = stream.into_split();
    let window = Semaphore::new(WINDOW);
    let sending = async {
        let mut written = 0;
        for batch in changes.chunks(BATCH) {
            let Ok(permits) = window.acquire_many(batch.len() as u32).await else {
                break;
            };
            permits.forget();
            let bytes: String = batch.iter().map(Sent::line).collect();
            written += batch.len();
            if write.write_all(bytes.as_bytes()).await.is_err() {
                break;
            }
        }
        written
    };
    let reading = async {
        let mut reader = BufReader::new(read);
        let mut replies = Vec::new();
        let mut line = Vec::new();
        while replies.len() < changes.len() {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(_) if line.ends_with(b"\n") => {}
                // Closed or reset; a torn answer is none.
                _ => break,
            }
            let reply = Reply::from_line(&line)
                .unwrap_or_else(|| panic!("{addr} answered {:?}", String::from_utf8_lossy(&line)));
            if reply == Reply::Ok {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            replies.push(reply);
            window.add_permits(1);
        }
        window.close();
        replies
    };
    let (written, replies) = tokio::join!(sending, reading);
    changes.truncate(written);
    Traffic {
        sent: changes,
        replies,
    }
}

/// How the control plane stopped before its restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: it answered every line it read before closing.
    Shutdown,
    /// SIGKILL: lines it read may have been written, unanswered.
    Crash,
}

/// After a restart on the data the senders wrote: every change answered OK
/// holds, a change never answered is there whole or not at all (after a
/// shutdown: not at all), and nothing else is there.
async fn check_after_restart(control_plane: &ControlPlaneProcess, traffic: &[Traffic], stop: Stop) {
    // Each name's state after its last change answered; after a crash,
    // `None` when a change to it was never answered. After a shutdown a
    // change never answered was never read, so it changed nothing.
    let mut last: HashMap<&str, Option<bool>> = HashMap::new();
    let mut sent_with: HashMap<&str, &[String]> = HashMap::new();
    for sender in traffic {
        for (i, change) in sender.sent.iter().enumerate() {
            let state = match (sender.replies.get(i), change) {
                (Some(Reply::Ok), Sent::Index { .. }) => Some(true),
                (Some(Reply::Ok), Sent::Remove { .. }) => Some(false),
                (Some(other), _) => panic!("{:?} was answered {other:?}", change.line()),
                (None, _) if stop == Stop::Shutdown => {
                    last.get(change.name()).copied().unwrap_or(Some(false))
                }
                (None, _) => None,
            };
            last.insert(change.name(), state);
            if let Sent::Index { name, dependencies } = change {
                sent_with.insert(name, dependencies);
            }
        }
    }
    let acknowledged: usize = traffic.iter().map(|t| t.replies.len()).sum();
    assert!(acknowledged >= ACKNOWLEDGED, "{acknowledged} answers");

    let names: Vec<&str> = last.keys().copied().collect();
    let queries: Vec<String> = names.iter().map(|n| query_line(n)).collect();
    let mut client = LineClient::connect(control_plane.indexer_addr()).await;
    let replies = client.pipeline(&queries).await;
    let indexed: HashSet<&str> = names
        .iter()
        .zip(&replies)
        .filter(|(_, r)| **r == Reply::Ok)
        .map(|(n, _)| *n)
        .collect();
    for name in &names {
        if let Some(holds) = last[name] {
            let what = if holds { "indexed" } else { "not indexed" };
            assert_eq!(
                indexed.contains(name),
                holds,
                "{name} must be {what} after the restart ({stop:?})"
            );
        }
    }
    let mut catalog = CatalogClient::new(control_plane.channel());
    for &name in &indexed {
        let dependencies = sent_with[name];
        for dependency in dependencies {
            assert!(
                indexed.contains(dependency.as_str()),
                "{name} is indexed, its dependency {dependency} is not"
            );
        }
        if last[name].is_none() {
            let got = catalog
                .get(GetRequest {
                    name: name.to_owned(),
                })
                .await
                .expect("Get")
                .into_inner();
            assert_eq!(
                got.dependencies, dependencies,
                "{name}, never answered, is there with other dependencies than sent"
            );
        }
    }
    let total = catalog
        .list(ListRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("List")
        .into_inner()
        .total;
    assert_eq!(total, indexed.len() as u64, "names there that nobody sent");
}

/// The samples of a control plane's `/metrics`, by series as exposed
/// (`name{labels}`).
struct Metrics(HashMap<String, f64>);

impl Metrics {
    async fn read(addr: SocketAddr) -> Self {
        let body = http::get(addr, "/metrics").await.text();
        let samples = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self(samples)
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("/metrics has no {series}"))
    }

    /// `farm_catalog_commands_total` of `command` and `result`.
    fn commands(&self, command: &str, result: &str) -> f64 {
        self.get(&format!(
            "farm_catalog_commands_total{{command=\"{command}\",result=\"{result}\"}}"
        ))
    }
}
