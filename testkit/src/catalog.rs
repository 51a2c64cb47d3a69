//! The dependency catalog's shared test data and a client of its line
//! protocol, for the tests and the benchmark that speak to a catalog over
//! TCP.
//!
//! [`graph`] is the shipped dependency set, `data/catalog-graph.txt`
//! (written by `data/catalog-graph.py`, whose top says what shape it
//! imitates): about 3,200 Homebrew-style names, one a line as
//! `name|dep1,dep2,...`, in a shuffled order. [`LineClient`] speaks the
//! protocol: one request line `COMMAND|PACKAGE|DEPENDENCIES\n`, one reply
//! line `OK`, `FAIL` or `ERROR` each, in order, pipelined or not; and it
//! indexes or removes a whole set the way a real client does, retrying
//! what the rules refused ([`LineClient::index_all`],
//! [`LineClient::remove_all`]). Anything else from the server (another
//! reply, a closed connection, silence) panics with what was sent and what
//! came back.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// The shipped set as the file holds it.
const GRAPH: &str = include_str!("../data/catalog-graph.txt");

/// How long a reply may take before the client gives up (a hung server
/// fails the test instead of hanging it).
const REPLY_LIMIT: Duration = Duration::from_secs(60);

/// Lines sent at once by [`LineClient::index_all`] and
/// [`LineClient::remove_all`].
const BATCH: usize = 1000;

/// Passes [`LineClient::index_all`] and [`LineClient::remove_all`] make at
/// most: more than the depth of any set they are given.
const MAX_PASSES: usize = 64;

/// The longest request or reply a panic message quotes.
const QUOTE: usize = 200;

/// One name of a dependency set and the names it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub dependencies: Vec<String>,
}

impl Package {
    /// `INDEX|name|dep1,dep2\n`.
    pub fn index_line(&self) -> String {
        index_line(&self.name, &self.dependencies)
    }

    /// `REMOVE|name|\n`.
    pub fn remove_line(&self) -> String {
        remove_line(&self.name)
    }

    /// `QUERY|name|\n`.
    pub fn query_line(&self) -> String {
        query_line(&self.name)
    }
}

/// `INDEX|name|dep1,dep2\n`.
pub fn index_line(name: &str, dependencies: &[String]) -> String {
    format!("INDEX|{name}|{}\n", dependencies.join(","))
}

/// `REMOVE|name|\n`.
pub fn remove_line(name: &str) -> String {
    format!("REMOVE|{name}|\n")
}

/// `QUERY|name|\n`.
pub fn query_line(name: &str) -> String {
    format!("QUERY|{name}|\n")
}

/// The shipped dependency set (`data/catalog-graph.txt`), in the file's
/// shuffled order: every dependency is a name of the set, and there is no
/// cycle.
pub fn graph() -> Vec<Package> {
    parse(GRAPH)
}

/// Reads a set in the data file's format, one `name|dep1,dep2` a line
/// (nothing after `|` for no dependency, empty entries ignored); panics
/// with the line number on a line without `|`.
pub fn parse(text: &str) -> Vec<Package> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(number, line)| {
            let (name, dependencies) = line
                .split_once('|')
                .unwrap_or_else(|| panic!("line {} has no `|`: {line:?}", number + 1));
            Package {
                name: name.to_owned(),
                dependencies: dependencies
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }
        })
        .collect()
}

/// One reply line of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `OK\n`: done, or (QUERY) indexed.
    Ok,
    /// `FAIL\n`: refused by the rules, or (QUERY) not indexed.
    Fail,
    /// `ERROR\n`: the request line was malformed.
    Error,
}

impl Reply {
    /// The reply a whole line (newline included) stands for; `None` for
    /// anything else.
    pub fn from_line(line: &[u8]) -> Option<Self> {
        match line {
            b"OK\n" => Some(Self::Ok),
            b"FAIL\n" => Some(Self::Fail),
            b"ERROR\n" => Some(Self::Error),
            _ => None,
        }
    }
}

/// A connection to a catalog's line listener. Requests are sent exactly as
/// given (the caller writes the newline), so tests can send malformed
/// bytes too.
#[derive(Debug)]
pub struct LineClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    addr: SocketAddr,
    /// The reply being read, kept to save an allocation per reply.
    line: Vec<u8>,
}

impl LineClient {
    /// Connects to `addr` (no Nagle delay: one small line per round trip).
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the catalog at {addr}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
            addr,
            line: Vec::with_capacity(16),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one line (its newline included) and reads its reply.
    pub async fn request(&mut self, line: impl AsRef<[u8]>) -> Reply {
        let line = line.as_ref();
        self.send(line).await;
        self.reply_to(|| quote(line)).await
    }

    /// Sends `lines` back to back on the connection, all in flight at
    /// once, and reads their replies, in order. Writes and reads run
    /// together, so a batch larger than the sockets' buffers cannot
    /// deadlock.
    pub async fn pipeline<L: AsRef<[u8]>>(&mut self, lines: &[L]) -> Vec<Reply> {
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.as_ref().len()).sum());
        for line in lines {
            bytes.extend_from_slice(line.as_ref());
        }
        let Self {
            reader,
            writer,
            addr,
            line,
        } = self;
        let write = async {
            writer
                .write_all(&bytes)
                .await
                .unwrap_or_else(|e| panic!("cannot send {} lines to {addr}: {e}", lines.len()));
        };
        let read = async {
            let mut replies = Vec::with_capacity(lines.len());
            for (i, sent) in lines.iter().enumerate() {
                let what = || {
                    format!(
                        "line {} of {}, {}",
                        i + 1,
                        lines.len(),
                        quote(sent.as_ref())
                    )
                };
                replies.push(read_reply(reader, line, *addr, what).await);
            }
            replies
        };
        let ((), replies) = tokio::join!(write, read);
        replies
    }

    /// Writes bytes without reading anything back (a torn line, a line
    /// past the limit).
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.writer
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("cannot send {} to {}: {e}", quote(bytes), self.addr));
    }

    /// Reads the next reply; panics on anything but a reply line.
    pub async fn reply(&mut self) -> Reply {
        self.reply_to(|| "what was sent before".to_owned()).await
    }

    /// The next reply, or `None` once the server has closed the
    /// connection (end of stream or reset); panics on anything else.
    pub async fn reply_or_close(&mut self) -> Option<Reply> {
        self.line.clear();
        let read = self.reader.read_until(b'\n', &mut self.line);
        match tokio::time::timeout(REPLY_LIMIT, read).await {
            Err(_) => panic!("{} sent no reply within {REPLY_LIMIT:?}", self.addr),
            Ok(Ok(0) | Err(_)) if self.line.is_empty() => None,
            Ok(_) => Some(Reply::from_line(&self.line).unwrap_or_else(|| {
                panic!(
                    "{} answered {}, not OK, FAIL or ERROR",
                    self.addr,
                    quote(&self.line)
                )
            })),
        }
    }

    async fn reply_to(&mut self, sent: impl FnOnce() -> String) -> Reply {
        read_reply(&mut self.reader, &mut self.line, self.addr, sent).await
    }

    /// Indexes every package the way a real client does: INDEX for each
    /// (pipelined, [`BATCH`] lines at a time), then again for those
    /// answered FAIL (a dependency not indexed yet), pass after pass, until
    /// all are OK. Returns the number of passes. Panics on ERROR, and when
    /// a pass makes no progress (a dependency that is not in the set, a
    /// cycle) or after [`MAX_PASSES`].
    pub async fn index_all(&mut self, packages: &[Package]) -> usize {
        self.until_all_ok("INDEX", packages, Package::index_line)
            .await
    }

    /// Removes every package the way a real client does: REMOVE for each,
    /// again for those answered FAIL (still a dependency of another), until
    /// all are OK; the reverse of [`index_all`](Self::index_all), with the
    /// same bounds and panics.
    pub async fn remove_all(&mut self, packages: &[Package]) -> usize {
        self.until_all_ok("REMOVE", packages, Package::remove_line)
            .await
    }

    async fn until_all_ok(
        &mut self,
        command: &str,
        packages: &[Package],
        line: fn(&Package) -> String,
    ) -> usize {
        let mut pending: Vec<&Package> = packages.iter().collect();
        for pass in 1..=MAX_PASSES {
            let mut refused = Vec::new();
            for chunk in pending.chunks(BATCH) {
                let lines: Vec<String> = chunk.iter().map(|p| line(p)).collect();
                let replies = self.pipeline(&lines).await;
                for (package, reply) in chunk.iter().zip(replies) {
                    match reply {
                        Reply::Ok => {}
                        Reply::Fail => refused.push(*package),
                        Reply::Error => panic!(
                            "{} answered ERROR to {}",
                            self.addr,
                            quote(line(package).as_bytes())
                        ),
                    }
                }
            }
            if refused.is_empty() {
                return pass;
            }
            assert!(
                refused.len() < pending.len(),
                "{command} does not converge at {}: pass {pass} refused all {} left, e.g. {}",
                self.addr,
                refused.len(),
                quote(line(refused[0]).as_bytes())
            );
            pending = refused;
        }
        panic!(
            "{command} of {} names at {} still refused {} after {MAX_PASSES} passes",
            packages.len(),
            self.addr,
            pending.len()
        );
    }
}

/// Reads one reply line into `line`; panics, naming what was `sent`, on
/// silence, a closed connection or anything but a reply.
async fn read_reply(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
    addr: SocketAddr,
    sent: impl FnOnce() -> String,
) -> Reply {
    line.clear();
    let read = reader.read_until(b'\n', line);
    let outcome = match tokio::time::timeout(REPLY_LIMIT, read).await {
        Err(_) => format!("no reply within {REPLY_LIMIT:?}"),
        Ok(Err(e)) => format!("a read error ({e})"),
        Ok(Ok(0)) => "a closed connection".to_owned(),
        Ok(Ok(_)) => match Reply::from_line(line) {
            Some(reply) => return reply,
            None => quote(line),
        },
    };
    panic!("sent {} to {addr}, got {outcome}", sent());
}

/// Bytes as a debug string, cut to [`QUOTE`] characters.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() <= QUOTE {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(QUOTE).collect();
        format!("{cut:?}… ({} bytes)", bytes.len())
    }
}

/// The depth of each package of `set`: the edges on its longest chain of
/// dependencies down to a package without any. `None` when there is a
/// cycle or a dependency outside the set.
pub fn depths(set: &[Package]) -> Option<HashMap<&str, usize>> {
    let by_name: HashMap<&str, &Package> = set.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut depth: HashMap<&str, usize> = HashMap::with_capacity(set.len());
    // Kahn's algorithm, in passes: a package is placed once all its
    // dependencies are.
    let mut pending: Vec<&Package> = set.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut later = Vec::new();
        for package in pending {
            let mut deepest = None;
            let mut ready = true;
            for dependency in &package.dependencies {
                by_name.get(dependency.as_str())?;
                match depth.get(dependency.as_str()) {
                    Some(d) => deepest = deepest.max(Some(*d)),
                    None => ready = false,
                }
            }
            if ready {
                depth.insert(&package.name, deepest.map_or(0, |d| d + 1));
            } else {
                later.push(package);
            }
        }
        if later.len() == before {
            return None;
        }
        pending = later;
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        net::TcpListener,
    };

    use super::*;

    /// A loose check of a shipped name: 1 to 1024 characters, none of `|`,
    /// `,`, whitespace or control characters. (The catalog also refuses
    /// characters that do not print; the tests index the whole set, which
    /// checks that.)
    fn valid_name(name: &str) -> bool {
        let count = name.chars().count();
        (1..=1024).contains(&count)
            && name
                .chars()
                .all(|c| c != '|' && c != ',' && !c.is_whitespace() && !c.is_control())
    }

    #[test]
    fn the_shipped_set_is_complete_acyclic_and_large() {
        let set = graph();
        assert!(set.len() >= 3000, "only {} names", set.len());
        let names: HashSet<&str> = set.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), set.len(), "a name appears twice");
        for package in &set {
            assert!(valid_name(&package.name), "invalid name {:?}", package.name);
            for dependency in &package.dependencies {
                assert!(
                    names.contains(dependency.as_str()),
                    "{} depends on {dependency}, which is not in the set",
                    package.name
                );
            }
            let distinct: HashSet<&String> = package.dependencies.iter().collect();
            assert_eq!(
                distinct.len(),
                package.dependencies.len(),
                "{} names a dependency twice",
                package.name
            );
        }
        let depth = depths(&set).expect("no cycle");
        let deepest = depth.values().max().copied().unwrap_or(0);
        assert!((10..=15).contains(&deepest), "deepest chain {deepest}");
    }

    #[test]
    fn the_shipped_set_has_the_names_clients_must_handle() {
        let set = graph();
        let count = |test: fn(&str) -> bool| set.iter().filter(|p| test(&p.name)).count();
        assert!(count(|n| n.contains('+')) >= 10);
        assert!(count(|n| n.contains('@')) >= 10);
        assert!(count(|n| n.contains('.')) >= 10);
        assert!(count(|n| !n.is_ascii()) >= 10);
        for real in ["gtk+3", "libsigc++", "openssl@3", "python@3.12", "c-ares"] {
            assert!(set.iter().any(|p| p.name == real), "no {real}");
        }
        // Non-ASCII names appear as dependencies too.
        assert!(
            set.iter()
                .flat_map(|p| &p.dependencies)
                .any(|d| !d.is_ascii())
        );
    }

    #[test]
    fn the_shipped_set_has_homebrews_shape() {
        let set = graph();
        let small = set.iter().filter(|p| p.dependencies.len() <= 4).count();
        assert!(
            small * 10 >= set.len() * 7,
            "{small} with 0 to 4 dependencies"
        );
        let widest = set.iter().map(|p| p.dependencies.len()).max().unwrap_or(0);
        assert!((30..=45).contains(&widest), "widest list {widest}");
        let mut dependents: HashMap<&str, usize> = HashMap::new();
        for dependency in set.iter().flat_map(|p| &p.dependencies) {
            *dependents.entry(dependency).or_default() += 1;
        }
        let popular = dependents.values().filter(|n| **n >= 100).count();
        assert!(popular >= 20, "{popular} names with 100 dependents or more");
    }

    #[test]
    fn the_shipped_order_is_not_topological() {
        // A client reading top to bottom meets dependencies it has not
        // indexed yet, and must retry.
        let set = graph();
        let mut seen = HashSet::new();
        let mut early = 0;
        for package in &set {
            if package.dependencies.iter().any(|d| !seen.contains(d)) {
                early += 1;
            }
            seen.insert(package.name.clone());
        }
        assert!(
            early * 4 >= set.len(),
            "only {early} lines come before a dependency"
        );
    }

    #[test]
    fn parsing_ignores_empty_entries() {
        let set = parse("a|\nb|a,,\nc|,a,b\n\n");
        let deps: Vec<(&str, Vec<&str>)> = set
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.dependencies.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            deps,
            [("a", vec![]), ("b", vec!["a"]), ("c", vec!["a", "b"])]
        );
    }

    #[test]
    #[should_panic(expected = "line 2 has no `|`")]
    fn parsing_names_a_line_without_a_separator() {
        parse("a|\nb\n");
    }

    #[test]
    fn depths_refuse_cycles_and_unknown_names() {
        assert!(depths(&parse("a|b\nb|a\n")).is_none());
        assert!(depths(&parse("a|b\n")).is_none());
        let chain = parse("c|b\nb|a\na|\n");
        let depth = depths(&chain).expect("acyclic");
        assert_eq!((depth["a"], depth["b"], depth["c"]), (0, 1, 2));
    }

    #[test]
    fn request_lines_are_byte_exact() {
        let package = Package {
            name: "gtk+3".into(),
            dependencies: vec!["glib".into(), "cairo".into()],
        };
        assert_eq!(package.index_line(), "INDEX|gtk+3|glib,cairo\n");
        assert_eq!(package.remove_line(), "REMOVE|gtk+3|\n");
        assert_eq!(package.query_line(), "QUERY|gtk+3|\n");
        assert_eq!(index_line("zlib", &[]), "INDEX|zlib|\n");
    }

    #[test]
    fn only_the_three_reply_lines_are_replies() {
        assert_eq!(Reply::from_line(b"OK\n"), Some(Reply::Ok));
        assert_eq!(Reply::from_line(b"FAIL\n"), Some(Reply::Fail));
        assert_eq!(Reply::from_line(b"ERROR\n"), Some(Reply::Error));
        for other in [&b"OK"[..], b"ok\n", b"OK\r\n", b"FAIL \n", b"\n", b""] {
            assert_eq!(Reply::from_line(other), None, "{other:?}");
        }
    }

    /// A server on 127.0.0.1:0 that answers each line with `answer(line)`
    /// (a reply without its newline, or `None` to close), one connection.
    async fn server(answer: fn(&str, &mut Rules) -> Option<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut rules = Rules::default();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(reply) = answer(&line, &mut rules) else {
                    return;
                };
                if write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        addr
    }

    /// INDEX and REMOVE as the protocol's rules have them, for the retry
    /// helpers: dependencies must be indexed, dependents block a removal.
    #[derive(Default)]
    struct Rules {
        dependencies: HashMap<String, Vec<String>>,
        dependents: HashMap<String, usize>,
    }

    fn catalog(line: &str, rules: &mut Rules) -> Option<&'static str> {
        let mut fields = line.split('|');
        let (command, name) = (fields.next()?, fields.next()?.to_owned());
        let deps: Vec<String> = fields
            .next()?
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect();
        let Rules {
            dependencies,
            dependents,
        } = rules;
        let indexed = dependencies.contains_key(&name);
        Some(match command {
            "INDEX" if deps.iter().all(|d| dependencies.contains_key(d)) => {
                for dep in &deps {
                    *dependents.entry(dep.clone()).or_default() += 1;
                }
                for old in dependencies.insert(name, deps).unwrap_or_default() {
                    *dependents.entry(old).or_default() -= 1;
                }
                "OK"
            }
            "REMOVE" if dependents.get(&name).is_some_and(|n| *n > 0) => "FAIL",
            "REMOVE" => {
                for old in dependencies.remove(&name).unwrap_or_default() {
                    *dependents.entry(old).or_default() -= 1;
                }
                "OK"
            }
            "QUERY" if indexed => "OK",
            "INDEX" | "QUERY" => "FAIL",
            _ => "ERROR",
        })
    }

    #[tokio::test]
    async fn pipelined_replies_come_back_in_order() {
        let addr = server(catalog).await;
        let mut client = LineClient::connect(addr).await;
        let lines = [
            "QUERY|a|\n",
            "INDEX|b|a\n",
            "INDEX|a|\n",
            "INDEX|b|a\n",
            "NOPE|a|\n",
            "QUERY|b|\n",
            "REMOVE|a|\n",
        ];
        let replies = client.pipeline(&lines).await;
        use Reply::{Error, Fail, Ok};
        assert_eq!(replies, [Fail, Fail, Ok, Ok, Error, Ok, Fail]);
        assert_eq!(client.request("REMOVE|b|\n").await, Ok);
        assert_eq!(client.request(b"REMOVE|a|\n").await, Ok);
    }

    #[tokio::test]
    async fn a_large_batch_does_not_deadlock() {
        // Far more than the sockets' buffers hold, each way.
        let addr = server(catalog).await;
        let mut client = LineClient::connect(addr).await;
        let name = "n".repeat(1000);
        let lines = vec![query_line(&name); 5000];
        let replies = client.pipeline(&lines).await;
        assert!(replies.iter().all(|r| *r == Reply::Fail));
    }

    #[tokio::test]
    async fn the_whole_set_is_indexed_and_removed_with_retries() {
        let addr = server(catalog).await;
        let mut client = LineClient::connect(addr).await;
        let set = graph();
        let passes = client.index_all(&set).await;
        // The shuffled order needs retries, at most one pass per level.
        let deepest = depths(&set).expect("acyclic").into_values().max();
        assert!(
            passes > 1 && passes <= deepest.unwrap_or(0) + 1,
            "{passes} passes"
        );
        for package in [&set[0], &set[set.len() / 2]] {
            assert_eq!(client.request(package.query_line()).await, Reply::Ok);
        }
        let removal = client.remove_all(&set).await;
        assert!(removal > 1, "{removal} passes");
        let queries: Vec<String> = set.iter().map(Package::query_line).collect();
        let replies = client.pipeline(&queries).await;
        assert!(replies.iter().all(|r| *r == Reply::Fail));
    }

    #[tokio::test]
    #[should_panic(expected = "does not converge")]
    async fn indexing_a_set_with_a_missing_dependency_panics() {
        let addr = server(catalog).await;
        let mut client = LineClient::connect(addr).await;
        client.index_all(&parse("a|\nb|a,missing\n")).await;
    }

    #[tokio::test]
    #[should_panic(expected = r#"sent "QUERY|a|\n" to"#)]
    async fn a_closed_connection_names_the_request() {
        let addr = server(|_, _| None).await;
        let mut client = LineClient::connect(addr).await;
        client.request("QUERY|a|\n").await;
    }

    #[tokio::test]
    #[should_panic(expected = r#"got "MAYBE\n""#)]
    async fn an_unknown_reply_is_quoted() {
        let addr = server(|_, _| Some("MAYBE")).await;
        let mut client = LineClient::connect(addr).await;
        client.request("QUERY|a|\n").await;
    }

    #[tokio::test]
    async fn a_close_is_seen_as_such() {
        let addr = server(|line, _| (line == "QUERY|a|").then_some("FAIL")).await;
        let mut client = LineClient::connect(addr).await;
        client.send("QUERY|a|\nbye\n").await;
        assert_eq!(client.reply_or_close().await, Some(Reply::Fail));
        assert_eq!(client.reply_or_close().await, None);
    }
}
