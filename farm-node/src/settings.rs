//! The configuration a node applies: the effective configuration the
//! control plane pushes on the heartbeat stream (a version and a JSON
//! object), and the [`Settings`] read from it.
//!
//! Keys may be nested objects (`{"workload": {"delay_ms": 5}}`) or dotted
//! names at the top level (`{"workload.delay_ms": 5}`); when both are
//! present the nested one is used. A value of the wrong type or out of range
//! is reported as a [`Problem`] and left unset, as if the key were absent;
//! the other keys still apply. Unknown keys are ignored. The settings thus
//! depend on the configuration alone, never on what was applied before, so
//! a configuration read back from the cache gives the same settings.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::workload::{MAX_DELAY_MS, MAX_RESPONSE_BYTES};

/// Shortest heartbeat interval a configuration may set.
pub const MIN_HEARTBEAT_INTERVAL_MS: u32 = 10;
/// Longest heartbeat interval a configuration may set (one hour).
pub const MAX_HEARTBEAT_INTERVAL_MS: u32 = 3_600_000;

/// A configuration as received: its version and its data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeConfigData {
    /// Version of the effective configuration (0: nothing configured).
    pub version: u64,
    /// The merged data, a JSON object.
    pub data: Map<String, Value>,
}

impl NodeConfigData {
    /// Converts the wire form (`farm.v1.EffectiveConfig`).
    pub fn from_proto(config: &farm_api::v1::EffectiveConfig) -> Self {
        Self {
            version: config.version,
            data: config.data.as_ref().map(struct_to_json).unwrap_or_default(),
        }
    }
}

/// What a node does by default, from its configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Settings {
    /// Version of the configuration these settings come from (0: none).
    pub version: u64,
    /// Delay of requests that ask for none (`workload.delay_ms`).
    pub delay_ms: u32,
    /// Response size of requests that ask for none
    /// (`workload.response_bytes`).
    pub response_bytes: u32,
    /// Share of requests asking for no failure that fail with UNAVAILABLE
    /// (`workload.error_rate`, 0 to 1).
    pub error_rate: f64,
    /// Heartbeat interval (`heartbeat_interval_ms`), used when the control
    /// plane names none.
    pub heartbeat_interval_ms: Option<u32>,
}

/// A key whose value could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted name of the key, e.g. `workload.delay_ms`.
    pub key: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl Settings {
    /// Reads the settings from `config`; the problems say which keys were
    /// ignored and why.
    pub fn from_config(config: &NodeConfigData) -> (Self, Vec<Problem>) {
        let mut reader = Reader {
            data: &config.data,
            problems: Vec::new(),
        };
        let settings = Self {
            version: config.version,
            delay_ms: reader
                .whole("workload", "delay_ms", 0, MAX_DELAY_MS)
                .unwrap_or(0),
            response_bytes: reader
                .whole("workload", "response_bytes", 0, MAX_RESPONSE_BYTES)
                .unwrap_or(0),
            error_rate: reader.rate("workload", "error_rate").unwrap_or(0.0),
            heartbeat_interval_ms: reader.whole(
                "",
                "heartbeat_interval_ms",
                MIN_HEARTBEAT_INTERVAL_MS,
                MAX_HEARTBEAT_INTERVAL_MS,
            ),
        };
        (settings, reader.problems)
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

/// Looks keys up in nested or dotted form, collecting problems.
struct Reader<'a> {
    data: &'a Map<String, Value>,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// The value of `section.name` (just `name` when `section` is empty):
    /// nested first, then dotted. `null` counts as absent.
    fn lookup(&mut self, section: &str, name: &str) -> Option<&Value> {
        let data = self.data;
        if section.is_empty() {
            return data.get(name).filter(|v| !v.is_null());
        }
        let nested = match data.get(section) {
            Some(Value::Object(inner)) => inner.get(name).filter(|v| !v.is_null()),
            Some(Value::Null) | None => None,
            Some(other) => {
                let problem = Problem {
                    key: section.to_owned(),
                    reason: format!("expected an object, got {}", kind(other)),
                };
                if !self.problems.contains(&problem) {
                    self.problems.push(problem);
                }
                None
            }
        };
        nested.or_else(|| {
            data.get(&format!("{section}.{name}"))
                .filter(|v| !v.is_null())
        })
    }

    fn problem(&mut self, section: &str, name: &str, reason: String) {
        let key = if section.is_empty() {
            name.to_owned()
        } else {
            format!("{section}.{name}")
        };
        self.problems.push(Problem { key, reason });
    }

    /// A whole number from `min` to `max`.
    fn whole(&mut self, section: &str, name: &str, min: u32, max: u32) -> Option<u32> {
        let value = self.lookup(section, name)?.clone();
        let reason = match value.as_f64() {
            None => format!("expected a whole number, got {}", kind(&value)),
            Some(n) if n.fract() != 0.0 => format!("expected a whole number, got {n}"),
            Some(n) if n < f64::from(min) || n > f64::from(max) => {
                format!("{n} is out of range ({min} to {max})")
            }
            // Whole and in range: the conversion is exact.
            Some(n) => return Some(n as u32),
        };
        self.problem(section, name, reason);
        None
    }

    /// A number from 0 to 1.
    fn rate(&mut self, section: &str, name: &str) -> Option<f64> {
        let value = self.lookup(section, name)?.clone();
        let reason = match value.as_f64() {
            None => format!("expected a number from 0 to 1, got {}", kind(&value)),
            Some(n) if (0.0..=1.0).contains(&n) => return Some(n),
            Some(n) => format!("{n} is out of range (0 to 1)"),
        };
        self.problem(section, name, reason);
        None
    }
}

/// How a value of the wrong type is named in a problem.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 32 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn struct_to_json(data: &prost_types::Struct) -> Map<String, Value> {
    data.fields
        .iter()
        .map(|(key, value)| (key.clone(), value_to_json(value)))
        .collect()
}

fn value_to_json(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(inner)) => Value::Object(struct_to_json(inner)),
    }
}

/// A Struct number (always a double) as JSON: whole numbers as integers, so
/// the cache reads as it was written; NaN and infinities, which JSON cannot
/// hold, as null.
fn number(n: f64) -> Value {
    /// 2^53: every whole number below it is exact in a double.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() < EXACT {
        // Whole and in range: the conversion is exact.
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost_types::{Struct, value::Kind};
    use serde_json::json;

    use super::*;

    fn config(data: Value) -> NodeConfigData {
        let Value::Object(data) = data else {
            panic!("an object")
        };
        NodeConfigData { version: 7, data }
    }

    #[track_caller]
    fn check(data: Value, want: Settings, problems: &[&str]) {
        let (got, found) = Settings::from_config(&config(data));
        assert_eq!(got, Settings { version: 7, ..want });
        let found: Vec<String> = found.iter().map(|p| p.key.clone()).collect();
        assert_eq!(found, problems, "problem keys");
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
        check(
            json!({
                "workload": {"delay_ms": 150, "response_bytes": 1000, "error_rate": 0.25},
                "heartbeat_interval_ms": 500,
            }),
            all,
            &[],
        );
        check(
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
        check(
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
        check(json!({}), Settings::default(), &[]);
        check(
            json!({"workload": {"delay": 5, "delay_ms": null}, "other": {"delay_ms": 3}, "workload.x": 1}),
            Settings::default(),
            &[],
        );
    }

    #[test]
    fn bad_values_are_ignored_and_the_rest_applied() {
        check(
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
        check(
            json!({
                "workload": {"delay_ms": 60_001, "response_bytes": 100, "error_rate": -0.1},
            }),
            Settings {
                response_bytes: 100,
                ..Settings::default()
            },
            &["workload.delay_ms", "workload.error_rate"],
        );
        check(
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
        check(
            json!({"workload": {"delay_ms": 60_000, "response_bytes": 4_000_000, "error_rate": 0}}),
            Settings {
                delay_ms: 60_000,
                response_bytes: 4_000_000,
                ..Settings::default()
            },
            &[],
        );
        // A `workload` that is not an object is reported once; dotted keys
        // still apply.
        check(
            json!({"workload": 5, "workload.delay_ms": 20}),
            Settings {
                delay_ms: 20,
                ..Settings::default()
            },
            &["workload"],
        );
        let (_, problems) = Settings::from_config(&config(json!({"workload": {"delay_ms": "x"}})));
        assert_eq!(
            problems[0].to_string(),
            "workload.delay_ms: expected a whole number, got the string \"x\""
        );
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

    #[test]
    fn structs_become_json() {
        fn value(kind: Kind) -> prost_types::Value {
            prost_types::Value { kind: Some(kind) }
        }
        let inner = Struct {
            fields: BTreeMap::from([
                ("delay_ms".into(), value(Kind::NumberValue(150.0))),
                ("error_rate".into(), value(Kind::NumberValue(0.5))),
            ]),
        };
        let data = Struct {
            fields: BTreeMap::from([
                ("workload".into(), value(Kind::StructValue(inner))),
                ("name".into(), value(Kind::StringValue("x".into()))),
                ("on".into(), value(Kind::BoolValue(true))),
                ("nothing".into(), value(Kind::NullValue(0))),
                ("unset".into(), prost_types::Value { kind: None }),
                ("nan".into(), value(Kind::NumberValue(f64::NAN))),
                (
                    "list".into(),
                    value(Kind::ListValue(prost_types::ListValue {
                        values: vec![value(Kind::NumberValue(-2.0))],
                    })),
                ),
            ]),
        };
        let json = Value::Object(struct_to_json(&data));
        assert_eq!(
            json,
            json!({
                "workload": {"delay_ms": 150, "error_rate": 0.5},
                "name": "x",
                "on": true,
                "nothing": null,
                "unset": null,
                "nan": null,
                "list": [-2],
            })
        );
        assert_eq!(
            json.to_string().find("150.0"),
            None,
            "whole numbers stay whole"
        );
        let proto = farm_api::v1::EffectiveConfig {
            version: 3,
            data: Some(data),
        };
        let (settings, problems) = Settings::from_config(&NodeConfigData::from_proto(&proto));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.version, 3);
        assert_eq!(settings.delay_ms, 150);
        assert_eq!(settings.error_rate, 0.5);
        let empty = farm_api::v1::EffectiveConfig {
            version: 0,
            data: None,
        };
        assert_eq!(
            NodeConfigData::from_proto(&empty),
            NodeConfigData::default()
        );
    }
}
