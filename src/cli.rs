//! Flag values every binary of the workspace reads alike, so that the same
//! mistake gets the same message from `control-plane`, `farm-node` and
//! `loadgen`. Each parser fits clap's `value_parser = ...`; clap prefixes
//! its message with the flag (`invalid value 'x' for '--duration
//! <DURATION>': ...`).
//!
//! - [`duration`]: `500ms`, `2s`, `1m30s`, read by humantime (a crate made
//!   for the job), its errors worded here once.
//! - [`read_token_file`]: a bearer token kept in a file (`--token-file`,
//!   `--admin-token-file`, ...), such as a Docker or Swarm secret.

use std::{path::Path, time::Duration};

use humantime::DurationError;
use thiserror::Error;

/// What follows every duration error: what a duration looks like.
const DURATION_EXAMPLES: &str = "examples: 500ms, 2s, 1m30s";

/// Units a duration may use, shortest spelling each (humantime also takes
/// `sec`, `min`, `hours`, ...).
const DURATION_UNITS: &str = "ns, us, ms, s, m, h or d";

/// A flag value that is not a duration. The value itself is not repeated:
/// clap quotes it with the flag's name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{problem} ({DURATION_EXAMPLES})")]
pub struct InvalidDuration {
    /// What is wrong, in a few words.
    problem: String,
}

/// Parses a duration: numbers with units, `500ms`, `2s`, `1m30s`, `1.5s`
/// (and `0` alone).
pub fn duration(text: &str) -> Result<Duration, InvalidDuration> {
    humantime::parse_duration(text).map_err(|err| InvalidDuration {
        problem: describe(text, &err),
    })
}

/// The token held in the file at `path`, its trailing line ends not part
/// of it (a secret written by `echo` ends in one).
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// humantime's error in the words of this workspace: what part of `text`
/// is wrong.
fn describe(text: &str, err: &DurationError) -> String {
    let rest = |at: usize| text.get(at..).unwrap_or_default();
    match err {
        DurationError::Empty => "empty".to_owned(),
        DurationError::InvalidCharacter(at) => match rest(*at).chars().next() {
            Some(c) => format!("{c:?} cannot be part of a duration"),
            None => "not a duration".to_owned(),
        },
        DurationError::NumberExpected(at) => format!("expected a number at {:?}", rest(*at)),
        DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("{value} needs a unit: {DURATION_UNITS}")
        }
        DurationError::UnknownUnit { unit, .. } => {
            format!("unknown unit {unit:?}: use {DURATION_UNITS}")
        }
        DurationError::NumberOverflow => "too large, or finer than a nanosecond".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_wrong_and_show_examples() {
        #[track_caller]
        fn check(text: &str, want: &str) {
            let err = duration(text).expect_err(text);
            assert_eq!(
                err.to_string(),
                format!("{want} (examples: 500ms, 2s, 1m30s)"),
                "{text:?}"
            );
        }
        check("", "empty");
        check("x", "expected a number at \"x\"");
        check("soon", "expected a number at \"soon\"");
        check("5", "5 needs a unit: ns, us, ms, s, m, h or d");
        check(
            "5parsecs",
            "unknown unit \"parsecs\": use ns, us, ms, s, m, h or d",
        );
        check("1s!", "'!' cannot be part of a duration");
        check(
            "99999999999999999999s",
            "too large, or finer than a nanosecond",
        );
    }
}
