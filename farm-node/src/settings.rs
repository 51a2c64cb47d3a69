//! The configuration a node applies: the effective configuration the
//! control plane pushes on the heartbeat stream (a version and a JSON
//! object), as received and as cached, and the [`Settings`] read from it
//! with the parser of the node's contract (`farm_api::node`), the same one
//! the control plane checks configurations with before it stores them.
//!
//! A value a node cannot use is reported and left unset, the other keys
//! still apply; the settings depend on the configuration alone, so a
//! configuration read back from the cache gives the same settings.

use farm_api::node::{Problem, Settings};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
            data: config
                .data
                .as_ref()
                .map(farm_api::json::struct_to_json)
                .unwrap_or_default(),
        }
    }

    /// The settings this configuration gives, and the keys left unset.
    pub fn settings(&self) -> (Settings, Vec<Problem>) {
        Settings::from_config(self.version, &self.data)
    }
}

#[cfg(test)]
mod tests {
    use prost_types::{Struct, value::Kind};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pushed_configuration_gives_its_settings() {
        fn value(kind: Kind) -> prost_types::Value {
            prost_types::Value { kind: Some(kind) }
        }
        let inner = Struct {
            fields: [
                ("delay_ms".to_owned(), value(Kind::NumberValue(150.0))),
                ("error_rate".to_owned(), value(Kind::NumberValue(0.5))),
            ]
            .into(),
        };
        let data = Struct {
            fields: [
                ("workload".to_owned(), value(Kind::StructValue(inner))),
                ("name".to_owned(), value(Kind::StringValue("x".into()))),
                (
                    "heartbeat_interval_ms".to_owned(),
                    value(Kind::NumberValue(5.0)),
                ),
            ]
            .into(),
        };
        let proto = farm_api::v1::EffectiveConfig {
            version: 3,
            data: Some(data),
        };
        let config = NodeConfigData::from_proto(&proto);
        assert_eq!(config.version, 3);
        assert_eq!(
            Value::Object(config.data.clone()),
            json!({
                "workload": {"delay_ms": 150, "error_rate": 0.5},
                "name": "x",
                "heartbeat_interval_ms": 5,
            })
        );
        let (settings, problems) = config.settings();
        assert_eq!(
            (settings.version, settings.delay_ms, settings.error_rate),
            (3, 150, 0.5)
        );
        assert_eq!(settings.heartbeat_interval_ms, None, "5 ms is too short");
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            ["heartbeat_interval_ms is 5; it must be a whole number from 10 to 3600000"]
        );
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
