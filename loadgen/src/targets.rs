//! The order targets are listed in, wherever a run lists them (the text
//! summary, the JSON and HTML reports, discovered nodes): by socket
//! address, IP then port as numbers, so `172.21.0.2` comes before
//! `172.21.0.10` and port 7002 before 10001; IPv4 before IPv6; names that
//! are not addresses (`node-3:7000`) after every address, by name then
//! port. std's `SocketAddr` order is exactly the address part, so no crate
//! is needed.

use std::{cmp::Ordering, net::SocketAddr};

/// What a target sorts by.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    /// An IP address and port: sorts first, as numbers.
    Address(SocketAddr),
    /// A host name, its port if it has one, and the whole text last so
    /// that distinct targets never compare equal.
    Name(&'a str, Option<u16>, &'a str),
}

/// The sort key of `target`: `host:port`, or a URL such as
/// `http://host:port/`.
fn key(target: &str) -> Key<'_> {
    let authority = target
        .split_once("://")
        .map_or(target, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    if let Ok(address) = authority.parse() {
        return Key::Address(address);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            Key::Name(host, port.parse().ok(), target)
        }
        _ => Key::Name(authority, None, target),
    }
}

/// How `a` and `b` compare in a listing of targets.
pub fn order(a: &str, b: &str) -> Ordering {
    key(a).cmp(&key(b))
}

/// Sorts `targets` into listing order.
pub fn sort<T: AsRef<str>>(targets: &mut [T]) {
    targets.sort_by(|a, b| order(a.as_ref(), b.as_ref()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_sort_as_numbers_and_names_come_after() {
        let mut targets = vec![
            "http://node-b:7000",
            "http://172.21.0.10:7000",
            "http://[::1]:7000",
            "http://node-a:80",
            "http://172.21.0.2:7000",
            "http://127.0.0.1:10001",
            "http://127.0.0.1:7002",
            "http://node-a",
            "http://node-a:7000",
            "http://172.21.0.2:900",
        ];
        sort(&mut targets);
        assert_eq!(
            targets,
            [
                "http://127.0.0.1:7002",
                "http://127.0.0.1:10001",
                "http://172.21.0.2:900",
                "http://172.21.0.2:7000",
                "http://172.21.0.10:7000",
                "http://[::1]:7000",
                "http://node-a",
                "http://node-a:80",
                "http://node-a:7000",
                "http://node-b:7000",
            ]
        );
    }

    #[test]
    fn the_scheme_and_a_path_do_not_matter() {
        assert_eq!(order("10.0.0.2:1", "http://10.0.0.10:1/"), Ordering::Less);
        assert_eq!(
            order("https://10.0.0.10:1", "10.0.0.2:1"),
            Ordering::Greater
        );
        assert_eq!(order("http://a:1", "http://a:1"), Ordering::Equal);
        assert_ne!(order("http://a:1", "https://a:1"), Ordering::Equal);
    }
}
