//! Node ids and the validation of everything a client names: node names,
//! groups, addresses and labels. Limits are documented in `registry.proto`.

use std::{collections::BTreeMap, fmt, str::FromStr};

use super::DomainError;

/// Longest node or group name.
pub const MAX_NAME_LEN: usize = 63;
/// Most labels a node may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 255;
/// Longest address (`host:port`).
pub const MAX_ADDRESS_LEN: usize = 255;

/// A node's stable identity, shown as `n<number>` (e.g. `n7`). Ordered by
/// number, which is what makes "the lowest id" a group's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl FromStr for NodeId {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('n')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .map(NodeId)
            .ok_or_else(|| DomainError::MalformedNodeId(truncate(s)))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn validate_identifier(what: &'static str, value: &str) -> Result<(), DomainError> {
    let invalid = |problem: String| Err(DomainError::InvalidName { what, problem });
    if value.is_empty() {
        return invalid("must not be empty".to_owned());
    }
    if value.len() > MAX_NAME_LEN {
        return invalid(format!(
            "is {} characters long; at most {MAX_NAME_LEN} allowed",
            value.len()
        ));
    }
    if let Some(bad) = value.chars().find(|c| !is_name_char(*c)) {
        return invalid(format!(
            "{:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed",
            truncate(value)
        ));
    }
    Ok(())
}

/// Checks a node name: 1 to 63 characters of `[A-Za-z0-9._-]`.
pub fn validate_name(name: &str) -> Result<(), DomainError> {
    validate_identifier("node name", name)
}

/// Checks a group name: same rules as node names.
pub fn validate_group(group: &str) -> Result<(), DomainError> {
    validate_identifier("group name", group)
}

/// Checks an address: `host:port` with a non-zero port, the host an IP
/// address (IPv6 in brackets) or a DNS name.
pub fn validate_address(address: &str) -> Result<(), DomainError> {
    let bad = |problem: &'static str| DomainError::InvalidAddress {
        given: truncate(address),
        problem,
    };
    if address.len() > MAX_ADDRESS_LEN {
        return Err(bad("is too long"));
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    // Decimal digits alone: `u16::from_str` takes a leading `+` too.
    let digits = port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(0) => return Err(bad("has port 0")),
        Ok(_) if digits => {}
        _ => return Err(bad("has no valid port")),
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| bad("has a malformed IPv6 host"));
    }
    let host_ok = !host.is_empty()
        && host.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if host_ok {
        Ok(())
    } else {
        Err(bad("has a malformed host"))
    }
}

/// Checks labels: at most 32, keys like names, values up to 255 characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), DomainError> {
    if labels.len() > MAX_LABELS {
        return Err(DomainError::TooManyLabels {
            count: labels.len(),
            max: MAX_LABELS,
        });
    }
    for (key, value) in labels {
        validate_identifier("label key", key)?;
        if value.len() > MAX_LABEL_VALUE_LEN {
            return Err(DomainError::LabelTooLong {
                key: key.clone(),
                len: value.len(),
                max: MAX_LABEL_VALUE_LEN,
            });
        }
    }
    Ok(())
}

/// Shortens user input quoted back in an error message.
pub(crate) fn truncate(s: &str) -> String {
    const KEEP: usize = 80;
    if s.chars().count() <= KEEP {
        s.to_owned()
    } else {
        let mut short: String = s.chars().take(KEEP).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_address(address: &str, ok: bool) {
        assert_eq!(validate_address(address).is_ok(), ok, "address {address:?}");
    }

    #[test]
    fn addresses() {
        check_address("127.0.0.1:8080", true);
        check_address("[::1]:8080", true);
        check_address("node-7.farm:80", true);
        check_address("127.0.0.1", false);
        check_address("127.0.0.1:0", false);
        check_address(":80", false);
        check_address("host:99999", false);
        check_address("0:+80", false);
        check_address("[::1]:+8080", false);
        check_address("[::1:80", false);
        check_address("a b:80", false);
        check_address(&format!("{}:1", "a".repeat(300)), false);
    }

    #[test]
    fn node_ids_round_trip_and_reject_garbage() {
        assert_eq!("n42".parse::<NodeId>(), Ok(NodeId(42)));
        assert_eq!(NodeId(42).to_string(), "n42");
        for bad in ["", "n", "42", "n-1", "nx", "n99999999999999999999999"] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("node-007").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("ünïcode").is_err());
    }
}
