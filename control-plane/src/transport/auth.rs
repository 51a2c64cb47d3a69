//! Who is calling: the bearer tokens configured at start-up, the roles they
//! grant, and the tower layer that checks every call before it reaches a
//! service, against the roles the table of services
//! ([`super::services::SERVICES`]) gives each method.
//!
//! With no token configured the control plane is open (a fresh install on
//! loopback) and the layer lets everything through. Once any token is set,
//! every call to a `farm.v1` service must carry `authorization: Bearer
//! <token>`: no or an unknown token is refused as unauthenticated, a role the
//! table does not allow as not permitted (`api::error` picks the codes). Health, reflection and the plain HTTP
//! endpoints stay open: they reveal nothing beyond the schema. The layer sits
//! inside the gRPC-Web translation, so browsers obey the same rules.
//!
//! Tokens are compared in constant time (SHA-256 digests, folded byte by
//! byte) and never logged: [`Token`] has no `Display` and its `Debug` is
//! redacted, and the `authorization` header is taken off a request once it
//! is checked, so no handler can print it.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use Role::{Admin, Node, Viewer};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tonic::{Status, body::Body, transport::server::TcpConnectInfo};
use tower_http::validate_request::ValidateRequest;
use tracing::{debug, warn};

use super::services::{self, Access};

/// A caller's role, granted by the token it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Mutations: configuration, farm actions, load tests; and every read.
    Admin,
    /// Node agents: register, heartbeat, read and watch configuration.
    Node,
    /// Reads and the dashboard.
    Viewer,
}

impl Role {
    /// The role's name, as written in configuration history.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Node => "node",
            Self::Viewer => "viewer",
        }
    }
}

/// How a call's writer is recorded: its role, or `open` when the control
/// plane runs without tokens (no role is attached to requests then).
pub fn writer(role: Option<Role>) -> &'static str {
    role.map_or("open", Role::as_str)
}

/// A bearer token as configured. It is never shown: `Debug` prints
/// `Token(<redacted>)` and there is no `Display`.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
    digest: [u8; 32],
}

impl Token {
    /// Wraps a token as given; [`Token::problem`] says whether it is usable.
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.into(),
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// Why this token cannot be used, if it cannot: it must be non-empty
    /// printable ASCII without spaces, so it travels in a header as it is.
    pub fn problem(&self) -> Option<&'static str> {
        if self.secret.is_empty() {
            Some("must not be empty")
        } else if !self.secret.bytes().all(|b| b.is_ascii_graphic()) {
            Some("must be printable ASCII without spaces")
        } else {
            None
        }
    }

    /// The token itself: only for handing the node token to the nodes the
    /// control plane runs. Never log it.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// Whether both are the same token.
    pub fn same_as(&self, other: &Token) -> bool {
        self.matches(&other.digest)
    }

    /// Whether `digest` is this token's, in time independent of where they
    /// differ.
    fn matches(&self, digest: &[u8; 32]) -> bool {
        let difference = self
            .digest
            .iter()
            .zip(digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Parses a token flag. It never fails, so that clap never echoes a token
/// in an error; [`Token::problem`] is checked with the other settings.
pub fn parse_token(s: &str) -> Result<Token, std::convert::Infallible> {
    Ok(Token::new(s))
}

/// The tokens of each role; none at all means the control plane is open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub admin: Option<Token>,
    pub node: Option<Token>,
    pub viewer: Option<Token>,
}

impl Tokens {
    /// True when no token is configured: every call is let through.
    pub fn is_empty(&self) -> bool {
        self.admin.is_none() && self.node.is_none() && self.viewer.is_none()
    }

    /// Each configured token with its role.
    fn each(&self) -> impl Iterator<Item = (Role, &Token)> {
        [
            (Admin, &self.admin),
            (Node, &self.node),
            (Viewer, &self.viewer),
        ]
        .into_iter()
        .filter_map(|(role, token)| token.as_ref().map(|t| (role, t)))
    }

    /// The role a presented token grants. Every configured token is
    /// compared, whichever matches.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (role, token) in self.each() {
            if token.matches(&digest) {
                found = Some(role);
            }
        }
        found
    }

    /// Decides a call to `path` (`/Service/Method`) carrying `headers`:
    /// `Ok(None)` lets it through without a role (no tokens configured, or
    /// a method open to all), `Ok(Some(role))` lets it through as that
    /// role, `Err` says why it is refused.
    pub fn authorize(&self, path: &str, headers: &HeaderMap) -> Result<Option<Role>, Refusal> {
        if self.is_empty() {
            return Ok(None);
        }
        let access = services::access(path);
        if access == Some(Access::Open) {
            return Ok(None);
        }
        let method = path.strip_prefix('/').unwrap_or(path);
        // Plain HTTP (probes, the dashboard page) stays open; anything
        // addressed to farm.v1, or any other gRPC call, is checked.
        let grpc = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if !grpc && !method.starts_with("farm.v1.") {
            return Ok(None);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Refusal::NoToken {
                method: method.to_owned(),
            })
            .and_then(bearer)?;
        let role = self.role_of(token).ok_or(Refusal::UnknownToken)?;
        // A method no service declares is for admins alone, so a new RPC
        // is closed until the table lists it.
        let roles = match access.unwrap_or(services::ADMINS) {
            Access::Roles(roles) => roles,
            Access::Open => return Ok(None),
        };
        if roles.contains(&role) {
            Ok(Some(role))
        } else {
            Err(Refusal::NotAllowed {
                role,
                method: method.to_owned(),
            })
        }
    }
}

/// Why a call was refused before it reached a service.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Tokens are configured and the call carries none.
    #[error("{method} needs a token: send the metadata `authorization: Bearer <token>`")]
    NoToken { method: String },
    /// The `authorization` metadata is not `Bearer <token>`.
    #[error("the authorization metadata must be `Bearer <token>`")]
    NotBearer,
    /// `Bearer` with nothing after it.
    #[error("the bearer token is empty")]
    EmptyToken,
    /// A token that is none of the configured ones.
    #[error("the bearer token is not one this control plane knows")]
    UnknownToken,
    /// A known token whose role may not call this method.
    #[error("the {} role may not call {method}", role.as_str())]
    NotAllowed { role: Role, method: String },
    /// The caller's address presented too many unknown tokens lately:
    /// every call from it is refused, the right token's too, for a while.
    #[error(
        "too many unknown tokens from {peer}: its calls are refused for another {}s (--auth-failure-limit)",
        retry_after.as_secs().max(1)
    )]
    TooManyGuesses { peer: IpAddr, retry_after: Duration },
}

/// The token of an `authorization: Bearer <token>` header (the scheme in
/// any case).
fn bearer(value: &HeaderValue) -> Result<&[u8], Refusal> {
    let value = value.as_bytes();
    let scheme = b"bearer ";
    match value.get(..scheme.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(scheme) => {
            let token = value[scheme.len()..].trim_ascii();
            if token.is_empty() {
                Err(Refusal::EmptyToken)
            } else {
                Ok(token)
            }
        }
        _ => Err(Refusal::NotBearer),
    }
}

/// Checks every call against the configured [`Tokens`] (see the module
/// docs), as tower-http's request validation: refused calls are answered
/// with their gRPC status and never reach the routes; allowed ones reach
/// them with their [`Role`] in the request's extensions and without their
/// `authorization` header.
#[derive(Debug, Clone)]
pub struct AuthGate {
    tokens: Arc<Tokens>,
    guesses: Arc<Guesses>,
}

impl AuthGate {
    /// A gate enforcing `tokens` (none: everything passes), refusing every
    /// call from an address that presented more than `guesses` unknown
    /// tokens within a minute, until that minute is over (0: no limit).
    pub fn new(tokens: Tokens, guesses: u32) -> Self {
        Self {
            tokens: Arc::new(tokens),
            guesses: Arc::new(Guesses::new(guesses, GUESS_WINDOW)),
        }
    }
}

/// The window unknown tokens are counted over, per address.
const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// Addresses followed at once; past it, those whose window is over are
/// forgotten first.
const GUESSERS: usize = 10_000;

/// Unknown tokens per caller address, each in a fixed window from its
/// first: past the limit, the address is refused until its window ends.
/// Tokens are long and random, so this does not stop a guess from
/// succeeding in the end; it stops a guesser from spending the control
/// plane's CPU and filling its log.
#[derive(Debug)]
struct Guesses {
    limit: u32,
    window: Duration,
    by_peer: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    unknown: u32,
}

impl Guesses {
    fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            by_peer: Mutex::new(HashMap::new()),
        }
    }

    /// How long `peer` is still refused, if it is.
    fn refused(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let by_peer = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        let window = by_peer.get(&peer)?;
        let ends = window.started + self.window;
        (window.unknown >= self.limit && now < ends).then(|| ends - now)
    }

    /// Counts an unknown token from `peer`; `true` when that reached the
    /// limit.
    fn unknown(&self, peer: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut by_peer = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        if by_peer.len() >= GUESSERS && !by_peer.contains_key(&peer) {
            let window = self.window;
            by_peer.retain(|_, w| now < w.started + window);
            if by_peer.len() >= GUESSERS {
                return false;
            }
        }
        let window = by_peer.entry(peer).or_insert(Window {
            started: now,
            unknown: 0,
        });
        if now >= window.started + self.window {
            *window = Window {
                started: now,
                unknown: 0,
            };
        }
        window.unknown += 1;
        window.unknown == self.limit
    }
}

impl<B> ValidateRequest<B> for AuthGate {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<Body>> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map(|addr| addr.ip().to_canonical());
        let now = Instant::now();
        if let Some(peer) = peer
            && let Some(retry_after) = self.guesses.refused(peer, now)
        {
            let refusal = Refusal::TooManyGuesses { peer, retry_after };
            debug!(path = request.uri().path(), %refusal, "call refused");
            return Err(Status::from(refusal).into_http());
        }
        match self
            .tokens
            .authorize(request.uri().path(), request.headers())
        {
            Ok(None) => Ok(()),
            Ok(Some(role)) => {
                request.headers_mut().remove(header::AUTHORIZATION);
                request.extensions_mut().insert(role);
                Ok(())
            }
            Err(refusal) => {
                debug!(path = request.uri().path(), %refusal, "call refused");
                if let (Refusal::UnknownToken, Some(peer)) = (&refusal, peer)
                    && self.guesses.unknown(peer, now)
                {
                    warn!(%peer, limit = self.guesses.limit, window = ?self.guesses.window, "too many unknown tokens from one address: refusing its calls until the window ends (--auth-failure-limit)");
                }
                Err(Status::from(refusal).into_http())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            admin: Some(Token::new("admin-secret")),
            node: Some(Token::new("node-secret")),
            viewer: Some(Token::new("viewer-secret")),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[track_caller]
    fn check(
        tokens: &Tokens,
        path: &str,
        authorization: Option<&str>,
        want: Result<Option<Role>, Code>,
    ) {
        let headers = match authorization {
            Some(value) => headers(&[("authorization", value)]),
            None => headers(&[]),
        };
        let got = tokens
            .authorize(path, &headers)
            .map_err(|refusal| Status::from(refusal).code());
        assert_eq!(got, want, "{path} with {authorization:?}");
    }

    #[test]
    fn roles_follow_the_table() {
        let t = tokens();
        check(
            &t,
            "/farm.v1.Farm/Scale",
            Some("Bearer admin-secret"),
            Ok(Some(Admin)),
        );
        check(
            &t,
            "/farm.v1.Farm/Scale",
            Some("Bearer viewer-secret"),
            Err(Code::PermissionDenied),
        );
        check(
            &t,
            "/farm.v1.Farm/Scale",
            Some("Bearer node-secret"),
            Err(Code::PermissionDenied),
        );
        check(
            &t,
            "/farm.v1.Farm/ListNodes",
            Some("Bearer viewer-secret"),
            Ok(Some(Viewer)),
        );
        check(
            &t,
            "/farm.v1.Farm/ListNodes",
            Some("Bearer node-secret"),
            Err(Code::PermissionDenied),
        );
        check(
            &t,
            "/farm.v1.Registry/Register",
            Some("bearer node-secret"),
            Ok(Some(Node)),
        );
        check(
            &t,
            "/farm.v1.Registry/Register",
            Some("Bearer viewer-secret"),
            Err(Code::PermissionDenied),
        );
        check(
            &t,
            "/farm.v1.Config/GetConfig",
            Some("BEARER  viewer-secret "),
            Ok(Some(Viewer)),
        );
        check(
            &t,
            "/farm.v1.Config/PutConfig",
            Some("Bearer node-secret"),
            Err(Code::PermissionDenied),
        );
    }

    #[test]
    fn missing_wrong_and_malformed_tokens_are_unauthenticated() {
        let t = tokens();
        check(
            &t,
            "/farm.v1.Discovery/Discover",
            None,
            Err(Code::Unauthenticated),
        );
        check(
            &t,
            "/farm.v1.Discovery/Discover",
            Some("Bearer nope"),
            Err(Code::Unauthenticated),
        );
        check(
            &t,
            "/farm.v1.Discovery/Discover",
            Some("Bearer "),
            Err(Code::Unauthenticated),
        );
        check(
            &t,
            "/farm.v1.Discovery/Discover",
            Some("admin-secret"),
            Err(Code::Unauthenticated),
        );
        check(
            &t,
            "/farm.v1.Discovery/Discover",
            Some("Basic YWRtaW4="),
            Err(Code::Unauthenticated),
        );
        check(
            &t,
            "/farm.v1.Discovery/Discover",
            Some("Bearer admin-secretx"),
            Err(Code::Unauthenticated),
        );
    }

    #[test]
    fn unknown_methods_are_for_admins_alone() {
        let t = tokens();
        check(
            &t,
            "/farm.v1.Farm/Unlisted",
            Some("Bearer viewer-secret"),
            Err(Code::PermissionDenied),
        );
        check(
            &t,
            "/farm.v1.Farm/Unlisted",
            Some("Bearer admin-secret"),
            Ok(Some(Admin)),
        );
        check(&t, "/other.Service/Call", None, Err(Code::Unauthenticated));
        check(
            &t,
            "/other.Service/Call",
            Some("Bearer node-secret"),
            Err(Code::PermissionDenied),
        );
    }

    #[test]
    fn health_reflection_and_plain_http_stay_open() {
        let t = tokens();
        check(&t, "/grpc.health.v1.Health/Check", None, Ok(None));
        check(
            &t,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            None,
            Ok(None),
        );
        check(
            &t,
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            None,
            Ok(None),
        );
        for path in ["/", "/healthz", "/readyz"] {
            assert_eq!(
                t.authorize(path, &HeaderMap::new())
                    .map_err(|r| Status::from(r).code()),
                Ok(None)
            );
        }
        // A farm.v1 path is checked whatever its content type says.
        assert_eq!(
            t.authorize("/farm.v1.Farm/Scale", &HeaderMap::new())
                .map_err(|r| Status::from(r).code()),
            Err(Code::Unauthenticated)
        );
    }

    #[test]
    fn without_tokens_everything_is_open() {
        let open = Tokens::default();
        check(&open, "/farm.v1.Farm/Scale", None, Ok(None));
        check(
            &open,
            "/farm.v1.Farm/Scale",
            Some("Bearer anything"),
            Ok(None),
        );
    }

    #[test]
    fn a_single_token_closes_the_api() {
        let t = Tokens {
            viewer: Some(Token::new("v")),
            ..Tokens::default()
        };
        check(
            &t,
            "/farm.v1.Farm/ListNodes",
            None,
            Err(Code::Unauthenticated),
        );
        check(
            &t,
            "/farm.v1.Farm/ListNodes",
            Some("Bearer v"),
            Ok(Some(Viewer)),
        );
        check(
            &t,
            "/farm.v1.Farm/Scale",
            Some("Bearer v"),
            Err(Code::PermissionDenied),
        );
    }

    #[test]
    fn tokens_never_show() {
        let t = tokens();
        let shown = format!("{t:?} {:?}", Token::new("s3cr3t"));
        assert!(
            !shown.contains("secret") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(shown.contains("redacted"), "{shown}");
        let status = t
            .authorize(
                "/farm.v1.Farm/ListNodes",
                &headers(&[("authorization", "Bearer guess-me")]),
            )
            .expect_err("unknown token");
        assert!(!status.to_string().contains("guess-me"), "{status:?}");
    }

    #[test]
    fn token_problems() {
        assert_eq!(Token::new("").problem(), Some("must not be empty"));
        assert!(Token::new("has space").problem().is_some());
        assert!(Token::new("tab\there").problem().is_some());
        assert!(Token::new("caf\u{e9}").problem().is_some());
        assert_eq!(Token::new("Ab0-_.~+/=").problem(), None);
    }

    #[test]
    fn guesses_are_counted_per_address_in_windows() {
        let guesses = Guesses::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(!guesses.unknown(a, start));
        assert!(!guesses.unknown(a, start));
        assert_eq!(guesses.refused(a, start), None, "two of three");
        assert!(guesses.unknown(a, start), "the third reaches the limit");
        let later = start + Duration::from_secs(20);
        assert_eq!(guesses.refused(a, later), Some(Duration::from_secs(40)));
        assert_eq!(guesses.refused(b, later), None, "another address");
        // The window ends: refused no more, counted afresh.
        let next = start + Duration::from_secs(60);
        assert_eq!(guesses.refused(a, next), None);
        assert!(!guesses.unknown(a, next));
        assert_eq!(guesses.refused(a, next), None);
        // No limit.
        let open = Guesses::new(0, Duration::from_secs(60));
        for _ in 0..10 {
            assert!(!open.unknown(a, start));
        }
        assert_eq!(open.refused(a, start), None);
    }
}
