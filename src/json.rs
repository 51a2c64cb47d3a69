//! JSON ↔ `google.protobuf.Struct`: configurations travel as `Struct` and
//! are stored, merged, checked and cached as JSON objects.
//!
//! A `Struct` number is always a double. Whole numbers below 2^53 (exact in
//! a double) become JSON integers, so `150` reads back as `150` and not
//! `150.0`; NaN and the infinities, which JSON cannot hold, become `null`.
//! Every other value maps one to one, so JSON → `Struct` → JSON gives back
//! what it was given, except for integers beyond 2^53, which a double
//! rounds.

use prost_types::{ListValue, Struct, Value as ProtoValue, value::Kind};
use serde_json::{Map, Number, Value};

/// A `Struct` as a JSON object.
pub fn struct_to_json(data: &Struct) -> Map<String, Value> {
    data.fields
        .iter()
        .map(|(key, value)| (key.clone(), to_json(value)))
        .collect()
}

/// A `google.protobuf.Value` as JSON (an unset kind: `null`).
fn to_json(value: &ProtoValue) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(to_json).collect()),
        Some(Kind::StructValue(inner)) => Value::Object(struct_to_json(inner)),
    }
}

/// A JSON object as a `Struct`.
pub fn json_to_struct(data: &Map<String, Value>) -> Struct {
    Struct {
        fields: data
            .iter()
            .map(|(key, value)| (key.clone(), from_json(value)))
            .collect(),
    }
}

/// JSON as a `google.protobuf.Value`.
pub fn from_json(value: &Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        // Without serde_json's arbitrary precision every number has a
        // double; `null` would only stand for one that had none.
        Value::Number(n) => n.as_f64().map_or(Kind::NullValue(0), Kind::NumberValue),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(from_json).collect(),
        }),
        Value::Object(inner) => Kind::StructValue(json_to_struct(inner)),
    };
    ProtoValue { kind: Some(kind) }
}

/// A double as JSON: whole numbers below 2^53 as integers, NaN and the
/// infinities as `null`.
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
    use serde_json::json;

    use super::*;

    fn proto(kind: Kind) -> ProtoValue {
        ProtoValue { kind: Some(kind) }
    }

    #[track_caller]
    fn round_trip(data: Value) {
        let Value::Object(object) = &data else {
            panic!("an object")
        };
        let back = Value::Object(struct_to_json(&json_to_struct(object)));
        assert_eq!(back, data);
        assert_eq!(back.to_string(), data.to_string(), "the same text");
    }

    #[test]
    fn json_survives_a_round_trip() {
        round_trip(json!({}));
        round_trip(json!({
            "workload": {"delay_ms": 150, "error_rate": 0.25, "response_bytes": 0},
            "workload.delay_ms": -3,
            "tags": ["a", true, null, 1.5, {"k": []}],
            "empty": {},
            "big": 9_007_199_254_740_991i64,
            "small": -9_007_199_254_740_991i64,
            "tiny": 1e-300,
            "huge": 1e300,
            "text": "ünïcødé \u{0} \"quoted\"",
        }));
        // Deep nesting, objects in lists in objects.
        let mut deep = json!({"leaf": 1});
        for i in 0..40 {
            deep = if i % 2 == 0 {
                json!({ "level": deep })
            } else {
                json!({ "list": [deep, i] })
            };
        }
        round_trip(deep);
    }

    #[test]
    fn doubles_become_json_numbers() {
        let cases = [
            (150.0, json!(150)),
            (-2.0, json!(-2)),
            (-0.0, json!(0)),
            (0.5, json!(0.5)),
            (9_007_199_254_740_991.0, json!(9_007_199_254_740_991i64)),
            // Beyond 2^53 a whole double need not be the integer meant.
            (9_007_199_254_740_992.0, json!(9_007_199_254_740_992.0)),
            (1e300, json!(1e300)),
            (f64::NAN, Value::Null),
            (f64::INFINITY, Value::Null),
            (f64::NEG_INFINITY, Value::Null),
        ];
        for (n, want) in cases {
            let got = to_json(&proto(Kind::NumberValue(n)));
            assert_eq!(got, want, "{n}");
            assert_eq!(got.to_string(), want.to_string(), "{n}");
        }
        assert_eq!(to_json(&proto(Kind::NumberValue(150.0))).to_string(), "150");
    }

    #[test]
    fn structs_become_json_objects() {
        let inner = Struct {
            fields: [
                ("delay_ms".to_owned(), proto(Kind::NumberValue(150.0))),
                ("nan".to_owned(), proto(Kind::NumberValue(f64::NAN))),
            ]
            .into(),
        };
        let data = Struct {
            fields: [
                ("workload".to_owned(), proto(Kind::StructValue(inner))),
                ("name".to_owned(), proto(Kind::StringValue("x".into()))),
                ("on".to_owned(), proto(Kind::BoolValue(true))),
                ("nothing".to_owned(), proto(Kind::NullValue(0))),
                ("unset".to_owned(), ProtoValue { kind: None }),
                (
                    "list".to_owned(),
                    proto(Kind::ListValue(ListValue {
                        values: vec![proto(Kind::NumberValue(-2.5)), ProtoValue { kind: None }],
                    })),
                ),
            ]
            .into(),
        };
        assert_eq!(
            Value::Object(struct_to_json(&data)),
            json!({
                "workload": {"delay_ms": 150, "nan": null},
                "name": "x",
                "on": true,
                "nothing": null,
                "unset": null,
                "list": [-2.5, null],
            })
        );
        assert_eq!(struct_to_json(&Struct::default()), Map::new());
    }

    #[test]
    fn json_becomes_proto_values() {
        assert_eq!(from_json(&json!(null)), proto(Kind::NullValue(0)));
        assert_eq!(from_json(&json!(7)), proto(Kind::NumberValue(7.0)));
        assert_eq!(
            from_json(&json!(u64::MAX)),
            proto(Kind::NumberValue(u64::MAX as f64))
        );
        assert_eq!(
            from_json(&json!({"a": [false]})),
            proto(Kind::StructValue(Struct {
                fields: [(
                    "a".to_owned(),
                    proto(Kind::ListValue(ListValue {
                        values: vec![proto(Kind::BoolValue(false))]
                    }))
                )]
                .into()
            }))
        );
    }
}
