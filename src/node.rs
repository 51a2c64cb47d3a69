//! The node's contract: the limits of what a `farm-node` does (longest
//! delay, largest response, its latency histograms, the loads it
//! simulates), and the configuration keys it applies, with the one parser
//! that reads them. The node applies configurations with
//! [`Settings::from_config`]; the control plane refuses, with [`check`],
//! configurations the node could not apply; loadgen and the control plane
//! hold requests to the same limits.
//!
//! Keys may be nested objects (`{"workload": {"delay_ms": 5}}`) or dotted
//! names at the top level (`{"workload.delay_ms": 5}`); when both are
//! present the node uses the nested one. `null` counts as absent. A value
//! of the wrong type or out of range is a [`Problem`]: the node leaves that
//! key unset and applies the others; [`check`] refuses the whole
//! configuration. Keys not in [`KEYS`] belong to the user and are neither
//! read nor checked.

use std::fmt;

use serde_json::{Map, Value};

/// Longest delay a request may ask for, in milliseconds.
pub const MAX_DELAY_MS: u32 = 60_000;
/// Largest response a request may ask for, in bytes: the whole response
/// message then stays under the 4 MiB that gRPC clients accept by default.
pub const MAX_RESPONSE_BYTES: u32 = 4_000_000;
/// Longest CPU work a request may ask for, in microseconds.
pub const MAX_CPU_US: u32 = 1_000_000;
/// Highest latency a histogram holds, in microseconds (one minute: the
/// longest delay a request may ask for); longer ones are recorded as this.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant figures of the latency histograms nodes report.
pub const LATENCY_SIGNIFICANT_FIGURES: u8 = 3;
/// Most memory one simulated load holds, in MiB.
pub const MAX_LOAD_MEMORY_MIB: u32 = 1024;
/// Longest simulated load, in milliseconds (ten minutes).
pub const MAX_LOAD_DURATION_MS: u32 = 600_000;
/// How long a simulated load lasts when its `duration_ms` is unset (0).
pub const DEFAULT_LOAD_DURATION_MS: u32 = 10_000;
/// Shortest heartbeat interval a configuration may set.
pub const MIN_HEARTBEAT_INTERVAL_MS: u32 = 10;
/// Longest heartbeat interval a configuration may set (one hour).
pub const MAX_HEARTBEAT_INTERVAL_MS: u32 = 3_600_000;

/// What values a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// A whole number from `min` to `max`.
    Whole { min: u32, max: u32 },
    /// A number from 0 to 1.
    Rate,
    /// A JSON object: a section such as `workload`, holding keys.
    Object,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Whole { min, max } => write!(f, "a whole number from {min} to {max}"),
            Self::Rate => f.write_str("a number from 0 to 1"),
            Self::Object => f.write_str("an object"),
        }
    }
}

impl Allowed {
    /// `value` as a number, if this allows it. Whole numbers come back
    /// exact.
    fn accept(self, value: &Value) -> Option<f64> {
        let n = value.as_f64()?;
        let fits = match self {
            Self::Whole { min, max } => {
                n.fract() == 0.0 && n >= f64::from(min) && n <= f64::from(max)
            }
            Self::Rate => (0.0..=1.0).contains(&n),
            Self::Object => false,
        };
        fits.then_some(n)
    }
}

/// A configuration key a node applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The object it sits in (`workload`), or empty at the top level.
    pub section: &'static str,
    /// Its name within the section.
    pub name: &'static str,
    /// What values it takes.
    pub allowed: Allowed,
}

impl Key {
    /// The dotted name, e.g. `workload.delay_ms`.
    pub fn path(&self) -> String {
        if self.section.is_empty() {
            self.name.to_owned()
        } else {
            format!("{}.{}", self.section, self.name)
        }
    }

    /// The values `data` gives this key, in the order the node prefers
    /// them (nested, then dotted); `null` counts as absent.
    fn values<'a>(&self, data: &'a Map<String, Value>) -> impl Iterator<Item = &'a Value> {
        let nested = if self.section.is_empty() {
            data.get(self.name)
        } else {
            data.get(self.section)
                .and_then(Value::as_object)
                .and_then(|section| section.get(self.name))
        };
        let dotted = if self.section.is_empty() {
            None
        } else {
            data.get(&self.path())
        };
        nested.into_iter().chain(dotted).filter(|v| !v.is_null())
    }

    /// `value` as this key takes it, or the problem with it.
    fn read(&self, value: &Value) -> Result<f64, Problem> {
        self.allowed.accept(value).ok_or_else(|| Problem {
            key: self.path(),
            value: value.clone(),
            allowed: self.allowed,
        })
    }
}

/// `workload.delay_ms`: the delay of requests that ask for none.
pub const DELAY_MS: Key = Key {
    section: "workload",
    name: "delay_ms",
    allowed: Allowed::Whole {
        min: 0,
        max: MAX_DELAY_MS,
    },
};
/// `workload.response_bytes`: the response size of requests that ask for
/// none.
pub const RESPONSE_BYTES: Key = Key {
    section: "workload",
    name: "response_bytes",
    allowed: Allowed::Whole {
        min: 0,
        max: MAX_RESPONSE_BYTES,
    },
};
/// `workload.error_rate`: the share of requests asking for no failure that
/// fail with UNAVAILABLE.
pub const ERROR_RATE: Key = Key {
    section: "workload",
    name: "error_rate",
    allowed: Allowed::Rate,
};
/// `heartbeat_interval_ms`: how often the node heartbeats when the control
/// plane names no interval.
pub const HEARTBEAT_INTERVAL_MS: Key = Key {
    section: "",
    name: "heartbeat_interval_ms",
    allowed: Allowed::Whole {
        min: MIN_HEARTBEAT_INTERVAL_MS,
        max: MAX_HEARTBEAT_INTERVAL_MS,
    },
};

/// Every key a node applies. [`Settings::from_config`] reads each, and
/// [`check`] checks each.
pub const KEYS: [Key; 4] = [DELAY_MS, RESPONSE_BYTES, ERROR_RATE, HEARTBEAT_INTERVAL_MS];

/// A known key whose value a node cannot use.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Dotted name of the key, e.g. `workload.delay_ms`.
    pub key: String,
    /// The value given.
    pub value: Value,
    /// What the key takes.
    pub allowed: Allowed,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Longest value shown whole.
        const SHOWN: usize = 40;
        let mut value = self.value.to_string();
        if value.len() > SHOWN {
            let mut end = SHOWN;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
            value.push('…');
        }
        write!(f, "{} is {value}; it must be {}", self.key, self.allowed)
    }
}

/// The problems of every known key of `data`: sections first, then keys
/// in the order of [`KEYS`].
///
/// Unlike [`Settings::from_config`], which stops at the value the node
/// uses, every form of a key is checked: a dotted value hidden by a nested
/// one today is used as soon as a merge removes the nested one.
fn problems(data: &Map<String, Value>) -> Vec<Problem> {
    let mut found = section_problems(data);
    for key in KEYS {
        found.extend(key.values(data).filter_map(|v| key.read(v).err()));
    }
    found
}

/// Configuration data with known keys a node cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", sentences(.0))]
pub struct InvalidConfig(pub Vec<Problem>);

fn sentences(problems: &[Problem]) -> String {
    let sentences: Vec<String> = problems.iter().map(|p| format!("{p}.")).collect();
    sentences.join(" ")
}

/// Checks configuration data as a node would apply it: the error lists
/// every known key whose value the node would ignore, with the same rules
/// as [`Settings::from_config`].
pub fn check(data: &Map<String, Value>) -> Result<(), InvalidConfig> {
    let found = problems(data);
    if found.is_empty() {
        Ok(())
    } else {
        Err(InvalidConfig(found))
    }
}

/// The sections of [`KEYS`] that `data` holds as something other than an
/// object (or `null`), each once.
fn section_problems(data: &Map<String, Value>) -> Vec<Problem> {
    let mut found: Vec<Problem> = Vec::new();
    for key in KEYS {
        let section = key.section;
        if section.is_empty() || found.iter().any(|p| p.key == section) {
            continue;
        }
        if let Some(value) = data.get(section)
            && !(value.is_null() || value.is_object())
        {
            found.push(Problem {
                key: section.to_owned(),
                value: value.clone(),
                allowed: Allowed::Object,
            });
        }
    }
    found
}

/// What a node does by default, from its configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Settings {
    /// Version of the configuration these settings come from (0: none).
    pub version: u64,
    /// Delay of requests that ask for none ([`DELAY_MS`]).
    pub delay_ms: u32,
    /// Response size of requests that ask for none ([`RESPONSE_BYTES`]).
    pub response_bytes: u32,
    /// Share of requests asking for no failure that fail with UNAVAILABLE
    /// ([`ERROR_RATE`], 0 to 1).
    pub error_rate: f64,
    /// Heartbeat interval ([`HEARTBEAT_INTERVAL_MS`]), used when the
    /// control plane names none.
    pub heartbeat_interval_ms: Option<u32>,
}

impl Settings {
    /// Reads the settings from version `version` of the configuration,
    /// `data`; the problems say which keys were left unset and why. The
    /// settings depend on the configuration alone, never on what was
    /// applied before.
    pub fn from_config(version: u64, data: &Map<String, Value>) -> (Self, Vec<Problem>) {
        let mut problems = section_problems(data);
        let mut read = |key: Key| {
            let value = key.values(data).next()?;
            key.read(value).map_err(|p| problems.push(p)).ok()
        };
        // Whole numbers within u32 limits: the conversions are exact.
        let settings = Self {
            version,
            delay_ms: read(DELAY_MS).map_or(0, |n| n as u32),
            response_bytes: read(RESPONSE_BYTES).map_or(0, |n| n as u32),
            error_rate: read(ERROR_RATE).unwrap_or(0.0),
            heartbeat_interval_ms: read(HEARTBEAT_INTERVAL_MS).map(|n| n as u32),
        };
        (settings, problems)
    }

    /// Whether a request asking for no failure should fail, given a number
    /// drawn uniformly from `[0, 1)`.
    pub fn fails(&self, draw: f64) -> bool {
        draw < self.error_rate
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version == 0 {
            return f.write_str("none");
        }
        write!(
            f,
            "version {} (workload.delay_ms={}, workload.response_bytes={}, workload.error_rate={}",
            self.version, self.delay_ms, self.response_bytes, self.error_rate
        )?;
        if let Some(ms) = self.heartbeat_interval_ms {
            write!(f, ", heartbeat_interval_ms={ms}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(data: Value) -> Map<String, Value> {
        let Value::Object(data) = data else {
            panic!("an object")
        };
        data
    }

    /// Reads `data` as a node would, and checks it as the control plane
    /// would: both must find the keys in `problems`.
    #[track_caller]
    fn check_case(data: Value, want: Settings, problems: &[&str]) {
        let data = object(data);
        let (got, found) = Settings::from_config(7, &data);
        assert_eq!(got, Settings { version: 7, ..want });
        let found: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(found, problems, "problem keys");
        match check(&data) {
            Ok(()) => assert!(problems.is_empty(), "check passed {data:?}"),
            Err(InvalidConfig(refused)) => {
                assert!(!problems.is_empty(), "check refused {refused:?}");
                for key in problems {
                    assert!(refused.iter().any(|p| p.key == *key), "{key}: {refused:?}");
                }
            }
        }
    }

    #[test]
    fn nested_and_dotted_keys() {
        let all = Settings {
            delay_ms: 150,
            response_bytes: 1000,
            error_rate: 0.25,
            heartbeat_interval_ms: Some(500),
            ..Settings::default()
        };
        check_case(
            json!({
                "workload": {"delay_ms": 150, "response_bytes": 1000, "error_rate": 0.25},
                "heartbeat_interval_ms": 500,
            }),
            all,
            &[],
        );
        check_case(
            json!({
                "workload.delay_ms": 150,
                "workload.response_bytes": 1000.0,
                "workload.error_rate": 0.25,
                "heartbeat_interval_ms": 500,
            }),
            all,
            &[],
        );
        // Nested wins over dotted; the two forms mix.
        check_case(
            json!({
                "workload": {"delay_ms": 150},
                "workload.delay_ms": 9,
                "workload.error_rate": 1,
            }),
            Settings {
                delay_ms: 150,
                error_rate: 1.0,
                ..Settings::default()
            },
            &[],
        );
        // Nothing configured, unknown keys, nulls.
        check_case(json!({}), Settings::default(), &[]);
        check_case(
            json!({
                "workload": {"delay": 5, "delay_ms": null},
                "other": {"delay_ms": "x"},
                "workload.x": "y",
                "heartbeat_interval_ms": null,
            }),
            Settings::default(),
            &[],
        );
        check_case(json!({"workload": null}), Settings::default(), &[]);
    }

    #[test]
    fn bad_values_are_ignored_and_the_rest_applied() {
        check_case(
            json!({
                "workload": {
                    "delay_ms": "150",
                    "response_bytes": 1.5,
                    "error_rate": 1.01,
                },
                "heartbeat_interval_ms": 5,
            }),
            Settings::default(),
            &[
                "workload.delay_ms",
                "workload.response_bytes",
                "workload.error_rate",
                "heartbeat_interval_ms",
            ],
        );
        check_case(
            json!({
                "workload": {"delay_ms": 60_001, "response_bytes": 100, "error_rate": -0.1},
            }),
            Settings {
                response_bytes: 100,
                ..Settings::default()
            },
            &["workload.delay_ms", "workload.error_rate"],
        );
        check_case(
            json!({
                "workload": {"delay_ms": -1, "response_bytes": 4_000_001, "error_rate": true},
                "heartbeat_interval_ms": [1000],
            }),
            Settings::default(),
            &[
                "workload.delay_ms",
                "workload.response_bytes",
                "workload.error_rate",
                "heartbeat_interval_ms",
            ],
        );
        // The limits themselves are allowed.
        check_case(
            json!({
                "workload": {"delay_ms": 60_000, "response_bytes": 4_000_000, "error_rate": 0},
                "heartbeat_interval_ms": 3_600_000,
            }),
            Settings {
                delay_ms: 60_000,
                response_bytes: 4_000_000,
                heartbeat_interval_ms: Some(3_600_000),
                ..Settings::default()
            },
            &[],
        );
        check_case(
            json!({"heartbeat_interval_ms": 10, "workload.error_rate": 1.0}),
            Settings {
                heartbeat_interval_ms: Some(10),
                error_rate: 1.0,
                ..Settings::default()
            },
            &[],
        );
        // A `workload` that is not an object is reported once; dotted keys
        // still apply.
        check_case(
            json!({"workload": 5, "workload.delay_ms": 20}),
            Settings {
                delay_ms: 20,
                ..Settings::default()
            },
            &["workload"],
        );
    }

    #[test]
    fn a_problem_names_the_key_the_value_and_what_is_allowed() {
        let said = |data: Value| -> Vec<String> {
            problems(&object(data))
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            said(json!({"workload": {"delay_ms": -5}})),
            ["workload.delay_ms is -5; it must be a whole number from 0 to 60000"]
        );
        assert_eq!(
            said(json!({"workload.delay_ms": "abc", "workload.error_rate": 2})),
            [
                "workload.delay_ms is \"abc\"; it must be a whole number from 0 to 60000",
                "workload.error_rate is 2; it must be a number from 0 to 1",
            ]
        );
        assert_eq!(
            said(json!({"workload": [1], "heartbeat_interval_ms": 0.5})),
            [
                "workload is [1]; it must be an object",
                "heartbeat_interval_ms is 0.5; it must be a whole number from 10 to 3600000",
            ]
        );
        // Long values are cut, on a character boundary.
        let long = said(json!({"workload": {"response_bytes": "é".repeat(100)}}));
        assert_eq!(
            long,
            [format!(
                "workload.response_bytes is \"{}…; it must be a whole number from 0 to 4000000",
                "é".repeat(19)
            )]
        );
        let err = check(&object(
            json!({"workload": {"delay_ms": -5, "error_rate": "x"}}),
        ))
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "workload.delay_ms is -5; it must be a whole number from 0 to 60000. \
             workload.error_rate is \"x\"; it must be a number from 0 to 1."
        );
    }

    #[test]
    fn the_check_sees_values_the_node_does_not_use_yet() {
        // The nested value hides the dotted one from the node today; a
        // merge that drops the nested one would make the node use it.
        let data = object(json!({"workload": {"delay_ms": 5}, "workload.delay_ms": "abc"}));
        let (settings, ignored) = Settings::from_config(1, &data);
        assert_eq!((settings.delay_ms, ignored.len()), (5, 0));
        let Err(InvalidConfig(refused)) = check(&data) else {
            panic!("the dotted value is refused")
        };
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].value, json!("abc"));
    }

    #[test]
    fn every_key_is_both_read_and_checked() {
        for key in KEYS {
            let path = key.path();
            let bad = json!("not a number");
            for data in [
                json!({ path.clone(): bad.clone() }),
                if key.section.is_empty() {
                    json!({ key.name: bad.clone() })
                } else {
                    json!({ key.section: { key.name: bad.clone() } })
                },
            ] {
                let data = object(data);
                let (settings, found) = Settings::from_config(1, &data);
                assert_eq!(
                    settings,
                    Settings {
                        version: 1,
                        ..Settings::default()
                    }
                );
                assert_eq!(found.len(), 1, "{path}: {found:?}");
                assert_eq!(found[0].key, path);
                assert_eq!(check(&data), Err(InvalidConfig(found)), "{path}");
            }
            // The largest value allowed is applied, and passes.
            let top = match key.allowed {
                Allowed::Whole { max, .. } => json!(max),
                Allowed::Rate => json!(1.0),
                Allowed::Object => unreachable!("keys hold values"),
            };
            let data = object(json!({ path.clone(): top }));
            let (settings, found) = Settings::from_config(1, &data);
            assert!(found.is_empty(), "{path}: {found:?}");
            assert_ne!(
                settings,
                Settings {
                    version: 1,
                    ..Settings::default()
                },
                "{path} is applied"
            );
            assert_eq!(check(&data), Ok(()));
        }
    }

    #[test]
    fn error_rate_draws() {
        let never = Settings::default();
        let always = Settings {
            error_rate: 1.0,
            ..Settings::default()
        };
        let half = Settings {
            error_rate: 0.5,
            ..Settings::default()
        };
        for draw in [0.0, 0.3, 0.999_999] {
            assert!(!never.fails(draw));
            assert!(always.fails(draw));
        }
        assert!(half.fails(0.49));
        assert!(!half.fails(0.5));
    }
}
