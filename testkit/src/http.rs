//! An HTTP/1.1 client for tests: hyper's connection-level client
//! (`hyper::client::conn::http1`, over tokio through hyper-util), one new
//! connection per request, sending exactly the headers the test sets.
//! hyper adds no `Host` at this level, so a request is addressed to any
//! name a browser (or an attacker's page) would send; [`Request::new`] puts
//! the address dialled there until [`Request::host`] changes it.
//!
//! [`Request::send`] reads the whole response; [`Request::open`] returns
//! the head at once and the body as it arrives, for streams.

use std::{fmt, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header::HOST};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long a request may take unless [`Request::timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request, to be sent over a connection of its own.
#[derive(Debug, Clone)]
pub struct Request {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
}

/// `GET path` at `addr`: the whole response.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    Request::get(addr, path).send().await
}

impl Request {
    /// `method path`, to be sent to `addr`, with `Host: <addr>`.
    pub fn new(method: Method, addr: SocketAddr, path: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            HOST,
            HeaderValue::from_str(&addr.to_string()).expect("an address is a header value"),
        );
        Self {
            addr,
            method,
            path: path.to_owned(),
            headers,
            body: Bytes::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn get(addr: SocketAddr, path: &str) -> Self {
        Self::new(Method::GET, addr, path)
    }

    pub fn options(addr: SocketAddr, path: &str) -> Self {
        Self::new(Method::OPTIONS, addr, path)
    }

    /// `POST path` with `body` (and its `content-length`).
    pub fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Self {
        Self::new(Method::POST, addr, path).body(body)
    }

    /// `Host: host`, in place of the address dialled.
    pub fn host(self, host: &str) -> Self {
        self.header("host", host)
    }

    /// Sets header `name` to `value` (replacing an earlier value).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
        let value = HeaderValue::from_str(value).expect("a header value");
        self.headers.insert(name, value);
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// How long the whole exchange may take (10 s unless set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and reads the whole response.
    pub async fn send(self) -> Response {
        let (timeout, what) = (self.timeout, self.describe());
        tokio::time::timeout(timeout, async {
            let mut open = self.exchange(&what).await;
            let mut body = Vec::new();
            while let Some(chunk) = open.chunk().await {
                body.extend_from_slice(&chunk);
            }
            Response {
                version: open.version,
                status: open.status,
                headers: open.headers,
                body: body.into(),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no whole response within {timeout:?}"))
    }

    /// Sends the request; returns once the response's head is in, its body
    /// to be read as it arrives.
    pub async fn open(self) -> Streaming {
        let (timeout, what) = (self.timeout, self.describe());
        tokio::time::timeout(timeout, self.exchange(&what))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {timeout:?}"))
    }

    /// Sends the request and waits for the response's head, without a
    /// time limit of its own.
    async fn exchange(self, what: &str) -> Streaming {
        let exchange = async {
            let stream = TcpStream::connect(self.addr).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut request = http::Request::builder()
                .method(self.method)
                .uri(self.path.as_str())
                .body(Full::new(self.body))
                .map_err(std::io::Error::other)?;
            *request.headers_mut() = self.headers;
            let response = sender.send_request(request).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
        };
        let response = exchange.await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let (head, body) = response.into_parts();
        Streaming {
            version: head.version,
            status: head.status,
            headers: head.headers,
            body,
        }
    }

    fn describe(&self) -> String {
        format!("{} {} at {}", self.method, self.path, self.addr)
    }
}

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, chunked transfer decoded.
    pub body: Bytes,
}

impl Response {
    /// The value of header `name`, if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Display for Response {
    /// The response as it came: status line, headers, blank line, body.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}\r\n", self.version, self.status)?;
        for (name, value) in &self.headers {
            write!(
                f,
                "{name}: {}\r\n",
                String::from_utf8_lossy(value.as_bytes())
            )?;
        }
        write!(f, "\r\n{}", self.text())
    }
}

/// A response whose body is read as it arrives.
#[derive(Debug)]
pub struct Streaming {
    pub version: Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
}

impl Streaming {
    /// The next piece of the body; `None` at its end. Panics when the
    /// connection breaks.
    pub async fn chunk(&mut self) -> Option<Bytes> {
        loop {
            let frame = self.body.frame().await?.expect("the response body");
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }
}

/// The value of one series (its name and labels as written, e.g.
/// `farm_calls_shed_total` or `farm_connections_closed_total{reason="idle"}`)
/// in a `/metrics` text; `None` when it is not there.
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
