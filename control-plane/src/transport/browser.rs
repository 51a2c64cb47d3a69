//! Which browsers may call: the origin and host checks that keep web pages
//! the user happens to visit from driving the farm.
//!
//! A browser lets any page send requests to `127.0.0.1`; only CORS decides
//! whether the page may read the answer, and a request with side effects
//! (`Farm/Scale`) does its harm either way. DNS rebinding goes further: a
//! page on `evil.example` re-points that name at `127.0.0.1`, and its calls
//! become same-origin in the browser's eyes. So [`BrowserGate`]
//! refuses, before CORS, translation, auth or any handler runs:
//!
//! - a request naming a host (`Host`, or the URI's authority) that is not an
//!   IP address, `localhost` or a name given with `--allowed-host`: HTTP 421;
//! - a request whose `Origin` is neither the origin it was addressed to
//!   (same origin: `http://` plus its `Host`) nor one given with
//!   `--cors-origin`: HTTP 403.
//!
//! Only browser-facing requests are checked: those with an `Origin`,
//! gRPC-Web calls, and every HTTP/1.x request (the plain endpoints too, as
//! DNS rebinding can read `/metrics` like anything else). HTTP/2 gRPC calls
//! without an `Origin` come from grpcurl, generated clients and the nodes,
//! which may dial the control plane by any name (a container gateway, a
//! compose service name): browsers never speak h2c, so they pass untouched.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

use http::{
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header, uri::Authority,
};
use thiserror::Error;
use tonic::body::Body;
use tower_http::validate_request::ValidateRequest;
use tracing::debug;

/// A web origin as browsers send it: `scheme://host[:port]`, the host in
/// lower case and the scheme's default port left out, so equal origins
/// compare equal however they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    scheme: &'static str,
    /// Lower case; an IPv6 address keeps its brackets.
    host: String,
    /// `None` for the scheme's default port.
    port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is tolerated); says
    /// what is wrong otherwise.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if !s.contains("://") {
            return Err("it has no scheme (write http:// or https:// before the host)");
        }
        let uri: Uri = s
            .parse()
            .map_err(|_| "it is not a URL of the form scheme://host[:port]")?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => "http",
            Some("https") => "https",
            _ => return Err("the scheme must be http or https"),
        };
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err("an origin has no path, query or fragment");
        }
        let authority = uri.authority().ok_or("it has no host")?;
        let (host, port) = split_authority(authority)?;
        let default = if scheme == "https" { 443 } else { 80 };
        Ok(Self {
            scheme,
            host,
            port: port.filter(|&p| p != default),
        })
    }

    /// The origin of a page served by this control plane at `host` (a
    /// `Host` header's value): the port only serves plain HTTP.
    fn same_as_host(host: &str) -> Option<Self> {
        let (host, port) = split_authority(&host.parse().ok()?).ok()?;
        Some(Self {
            scheme: "http",
            host,
            port: port.filter(|&p| p != 80),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The host (lower case, IPv6 in brackets) and port of an authority, if it
/// holds nothing else (no user information, a well-formed host).
fn split_authority(authority: &Authority) -> Result<(String, Option<u16>), &'static str> {
    if authority.as_str().contains('@') {
        return Err("it must not carry a user name");
    }
    if authority.as_str().ends_with(':') {
        return Err("its port is empty");
    }
    let host = host_name(authority.host())?;
    Ok((host, authority.port_u16()))
}

/// `host` in lower case if it is an IP address (IPv6 in brackets) or a DNS
/// name: letters, digits, `-`, `_` and inner dots.
fn host_name(host: &str) -> Result<String, &'static str> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(host.to_ascii_lowercase()),
            Err(_) => Err("the address in brackets is not an IPv6 address"),
        };
    }
    if host.contains('*') {
        return Err("wildcards are not supported: list each one");
    }
    let valid = !host.is_empty()
        && !host.starts_with('.')
        && !host.ends_with('.')
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(host.to_ascii_lowercase())
    } else {
        Err("the host is not a DNS name or an IP address")
    }
}

/// Which origins may call beside the same origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum TrustedOrigins {
    /// Only those listed (none by default).
    #[default]
    None,
    /// Those listed with `--cors-origin`.
    Listed(Vec<Origin>),
    /// Every origin: `--cors-origin '*'`.
    Any,
}

/// Who may call from a browser: the origins trusted beyond the same origin
/// and the host names accepted beside IP addresses and `localhost`. The
/// default allows same-origin calls only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserPolicy {
    /// Origins given with `--cors-origin`.
    origins: TrustedOrigins,
    /// Names given with `--allowed-host`, in lower case.
    hosts: Vec<String>,
}

impl BrowserPolicy {
    /// Trusts one `--cors-origin` value: an origin, or `*` for all.
    pub fn trust_origin(&mut self, value: &str) -> Result<(), &'static str> {
        if value.trim() == "*" {
            self.origins = TrustedOrigins::Any;
            return Ok(());
        }
        let origin = Origin::parse(value.trim())?;
        match &mut self.origins {
            TrustedOrigins::Any => {}
            TrustedOrigins::Listed(list) => list.push(origin),
            none @ TrustedOrigins::None => *none = TrustedOrigins::Listed(vec![origin]),
        }
        Ok(())
    }

    /// Accepts one `--allowed-host` value: a DNS name or an IP address,
    /// without a port (every port of it is accepted).
    pub fn allow_host(&mut self, value: &str) -> Result<(), &'static str> {
        let value = value.trim();
        if value.contains("://") || value.contains('/') {
            return Err("give the host name alone, without a scheme or a path");
        }
        let authority: Authority = value
            .parse()
            .map_err(|_| "the host is not a DNS name or an IP address")?;
        let (host, port) = split_authority(&authority)?;
        if port.is_some() {
            return Err("give the host name without a port: every port of it is allowed");
        }
        self.hosts.push(host);
        Ok(())
    }

    /// Whether every origin may call (`--cors-origin '*'`).
    pub fn any_origin(&self) -> bool {
        self.origins == TrustedOrigins::Any
    }

    /// Whether browsers may address this control plane as `host` (an
    /// authority, a port or not).
    ///
    /// Any IP address passes, not only those of the listeners (which may
    /// be `0.0.0.0`, or the farm network's gateway): DNS rebinding needs a
    /// name the attacker controls, and a page whose own address is an IP
    /// literal is either served from this very port (the same origin) or
    /// stopped by the origin check. Names pass only as `localhost` or when
    /// given with `--allowed-host`.
    fn host_allowed(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<Authority>() else {
            return false;
        };
        let Ok((name, _port)) = split_authority(&authority) else {
            return false;
        };
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        literal.parse::<IpAddr>().is_ok() || name == "localhost" || self.hosts.contains(&name)
    }

    /// Whether a page of `origin` may call a request addressed to `host`.
    fn origin_allowed(&self, origin: &HeaderValue, host: Option<&str>) -> bool {
        if self.any_origin() {
            return true;
        }
        let Some(origin) = origin.to_str().ok().and_then(|o| Origin::parse(o).ok()) else {
            return false;
        };
        // `host` has passed the host check already.
        let same = host.and_then(Origin::same_as_host).as_ref() == Some(&origin);
        same || matches!(&self.origins, TrustedOrigins::Listed(list) if list.contains(&origin))
    }

    /// Decides a request: `Ok` lets it through, `Err` says why not.
    fn check(&self, version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let origin = headers.get(header::ORIGIN);
        let grpc_web = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web"));
        let browser_facing = origin.is_some() || grpc_web || version != Version::HTTP_2;
        if !browser_facing {
            return Ok(());
        }
        // Every name the request carries must pass: a `Host` header (at most
        // one is valid, all are checked) and an absolute URI's authority.
        // A request with neither names no host, so no rebinding hides in it.
        let hosts = headers.get_all(header::HOST).iter();
        for value in hosts {
            match value.to_str() {
                Ok(host) if self.host_allowed(host) => {}
                _ => return Err(Refusal::Host(shown(value))),
            }
        }
        if let Some(authority) = uri.authority()
            && !self.host_allowed(authority.as_str())
        {
            return Err(Refusal::Host(shown_str(authority.as_str())));
        }
        let Some(origin) = origin else {
            return Ok(());
        };
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(uri.authority().map(Authority::as_str));
        if self.origin_allowed(origin, host) {
            Ok(())
        } else {
            Err(Refusal::Origin(shown(origin)))
        }
    }
}

/// How much of a header value a refusal repeats.
const SHOWN: usize = 100;

/// A header value fit to repeat in a log line or a plain-text answer.
fn shown(value: &HeaderValue) -> String {
    value
        .to_str()
        .map_or_else(|_| "(not text)".to_owned(), shown_str)
}

fn shown_str(value: &str) -> String {
    value.chars().take(SHOWN).collect()
}

/// Why a browser-facing request was refused before anything else ran.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum Refusal {
    /// The request names a host that is no IP address, not `localhost` and
    /// not an `--allowed-host` (a rebound DNS name, for one).
    #[error(
        "the host {0:?} is not a name of this control plane; if it is, start the control plane \
with --allowed-host NAME (FARM_ALLOWED_HOST)"
    )]
    Host(String),
    /// The request comes from a page of another origin that no
    /// `--cors-origin` trusts.
    #[error(
        "pages of the origin {0:?} may not call this control plane; to allow them, start it with \
--cors-origin ORIGIN (FARM_CORS_ORIGIN)"
    )]
    Origin(String),
}

impl Refusal {
    /// 421 Misdirected Request for a wrong host, 403 Forbidden for an
    /// untrusted origin; gRPC-Web calls get the same (a browser shows a
    /// page no gRPC status of a failed CORS call anyway).
    fn status(&self) -> StatusCode {
        match self {
            Self::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::Origin(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The answer: the status and a line saying why, as plain text.
    fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::new(format!("refused: {self}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

/// Refuses browser-facing requests from untrusted origins or naming
/// foreign hosts (see the module docs), as tower-http's request validation:
/// refused requests are answered here and never reach the layers inside.
#[derive(Debug, Clone)]
pub(crate) struct BrowserGate {
    policy: Arc<BrowserPolicy>,
}

impl BrowserGate {
    /// A gate enforcing `policy`.
    pub(crate) fn new(policy: BrowserPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<B> ValidateRequest<B> for BrowserGate {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<Body>> {
        self.policy
            .check(request.version(), request.uri(), request.headers())
            .map_err(|refusal| {
                let headers = request.headers();
                debug!(
                    path = request.uri().path(),
                    origin = headers.get(header::ORIGIN).map(shown),
                    host = headers.get(header::HOST).map(shown),
                    %refusal,
                    "browser request refused"
                );
                refusal.into_response()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowing(origins: &[&str], hosts: &[&str]) -> BrowserPolicy {
        let mut policy = BrowserPolicy::default();
        for origin in origins {
            policy.trust_origin(origin).expect(origin);
        }
        for host in hosts {
            policy.allow_host(host).expect(host);
        }
        policy
    }

    /// A request's fate: `None` passes, `Some(status)` is refused with it.
    #[track_caller]
    fn check(
        policy: &BrowserPolicy,
        version: Version,
        host: Option<&str>,
        origin: Option<&str>,
        content_type: &str,
        want: Option<u16>,
    ) {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        }
        if let Some(origin) = origin {
            headers.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("origin"),
            );
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("content type"),
        );
        let uri = Uri::from_static("/farm.v1.Farm/Scale");
        let got = policy
            .check(version, &uri, &headers)
            .err()
            .map(|r| r.status().as_u16());
        assert_eq!(got, want, "host {host:?}, origin {origin:?}");
    }

    const H1: Version = Version::HTTP_11;
    const H2: Version = Version::HTTP_2;
    const WEB: &str = "application/grpc-web+proto";
    const GRPC: &str = "application/grpc";

    #[test]
    fn rebound_names_are_refused_and_addresses_pass() {
        let open = BrowserPolicy::default();
        for host in [
            "127.0.0.1:50051",
            "127.0.0.1",
            "127.9.8.7:1",
            "[::1]:50051",
            "[::ffff:127.0.0.1]:80",
            "0.0.0.0:50051",
            "172.18.0.1:50051",
            "localhost:50051",
            "LOCALHOST",
        ] {
            check(&open, H1, Some(host), None, "text/plain", None);
            check(&open, H2, Some(host), None, WEB, None);
        }
        for host in [
            "evil.example:50051",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.example",
            "user@127.0.0.1",
            "[not-v6]:1",
            "127.0.0.1:",
        ] {
            check(&open, H1, Some(host), None, "text/plain", Some(421));
            check(&open, H2, Some(host), None, WEB, Some(421));
        }
    }

    #[test]
    fn h2_grpc_without_an_origin_is_not_a_browser() {
        let open = BrowserPolicy::default();
        // Nodes and grpcurl may dial by any name.
        check(&open, H2, Some("control-plane:50051"), None, GRPC, None);
        // With an Origin it is checked like any browser call.
        check(
            &open,
            H2,
            Some("control-plane:50051"),
            Some("http://control-plane:50051"),
            GRPC,
            Some(421),
        );
        // HTTP/1.1 without a Host names no host at all.
        check(&open, H1, None, None, "text/plain", None);
    }

    #[test]
    fn only_the_same_origin_by_default() {
        let open = BrowserPolicy::default();
        let host = Some("127.0.0.1:50051");
        for same in ["http://127.0.0.1:50051", "HTTP://127.0.0.1:50051"] {
            check(&open, H1, host, Some(same), WEB, None);
        }
        for other in [
            "https://evil.example",
            "http://127.0.0.1:50052",
            "https://127.0.0.1:50051",
            "http://localhost:50051",
            "null",
            "*",
        ] {
            check(&open, H1, host, Some(other), WEB, Some(403));
        }
        // Port 80 is left out of origins, and may be left out of hosts.
        check(
            &open,
            H1,
            Some("localhost:80"),
            Some("http://localhost"),
            WEB,
            None,
        );
        check(
            &open,
            H1,
            Some("[::1]:7"),
            Some("http://[::1]:7"),
            WEB,
            None,
        );
        // The host check comes first: a rebound page is same-origin to the
        // browser, and refused for its name.
        check(
            &open,
            H1,
            Some("evil.example:50051"),
            Some("http://evil.example:50051"),
            WEB,
            Some(421),
        );
    }

    #[test]
    fn configured_origins_and_hosts_pass() {
        let policy = allowing(
            &["http://localhost:5173", "https://Farm.Example:443/"],
            &["farm.example", "Build-Box"],
        );
        let host = Some("127.0.0.1:50051");
        check(&policy, H1, host, Some("http://localhost:5173"), WEB, None);
        check(&policy, H1, host, Some("https://farm.example"), WEB, None);
        check(
            &policy,
            H1,
            host,
            Some("http://localhost:5174"),
            WEB,
            Some(403),
        );
        check(
            &policy,
            H1,
            host,
            Some("http://farm.example"),
            WEB,
            Some(403),
        );
        check(&policy, H1, Some("farm.example:8080"), None, WEB, None);
        check(
            &policy,
            H1,
            Some("build-box:50051"),
            Some("http://build-box:50051"),
            WEB,
            None,
        );
        check(&policy, H1, Some("farm.example.evil"), None, WEB, Some(421));

        let any = allowing(&["*"], &[]);
        assert!(any.any_origin());
        check(&any, H1, host, Some("https://evil.example"), WEB, None);
        check(&any, H1, host, Some("null"), WEB, None);
        // '*' opens origins, not hosts.
        check(
            &any,
            H1,
            Some("evil.example"),
            Some("http://evil.example"),
            WEB,
            Some(421),
        );
    }

    #[test]
    fn malformed_settings_say_what_is_wrong() {
        #[track_caller]
        fn origin(value: &str, want: &str) {
            let err = BrowserPolicy::default()
                .trust_origin(value)
                .expect_err(value);
            assert!(err.contains(want), "{value}: {err}");
        }
        origin("evil.example", "no scheme");
        origin("localhost:5173", "no scheme");
        origin("http://evil.example/app", "no path");
        origin("http://evil.example/?q", "no path");
        origin("ftp://evil.example", "http or https");
        origin("http://user@evil.example", "user name");
        origin("http://*.example", "wildcards");
        origin("http://", "not a URL");
        origin("", "no scheme");

        #[track_caller]
        fn host(value: &str, want: &str) {
            let err = BrowserPolicy::default().allow_host(value).expect_err(value);
            assert!(err.contains(want), "{value}: {err}");
        }
        host("http://farm.example", "without a scheme");
        host("farm.example/x", "without a scheme");
        host("farm.example:8080", "without a port");
        host("*.example", "wildcards");
        host("", "not a DNS name");
        host("bad name", "not a DNS name");

        let policy = allowing(&["http://LOCALHOST:80", "http://[::1]:5173"], &["[::1]"]);
        assert_eq!(
            policy.origins,
            TrustedOrigins::Listed(vec![
                Origin::parse("http://localhost").expect("origin"),
                Origin::parse("http://[::1]:5173").expect("origin"),
            ])
        );
        assert_eq!(
            Origin::parse("https://a.example:8443").map(|o| o.to_string()),
            Ok("https://a.example:8443".to_owned())
        );
    }
}
