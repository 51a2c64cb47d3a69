//! The one table of what this port serves: every service, and who may call
//! each of its methods.
//!
//! Reflection advertises exactly these services, `grpc.health.v1` reports
//! each as serving, the auth layer takes each method's roles from here, the
//! RPC metrics label calls by the methods listed here. Adding a service is one row here, its handlers in `api/`, and
//! its `add_service` in `routes.rs`; a unit test below fails until every
//! method of the API has its row.

use std::{collections::HashMap, sync::OnceLock};

use farm_api::v1::{
    catalog_server, config_server, control_plane_server, discovery_server, farm_server,
    load_test_server, metrics_server, registry_server,
};

use super::auth::Role::{self, Admin, Node, Viewer};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Everyone, whatever the tokens: it reveals nothing beyond the schema.
    Open,
    /// Callers presenting the token of one of these roles (once any token
    /// is configured).
    Roles(&'static [Role]),
}

/// Everyone with a token.
const ANY: Access = Access::Roles(&[Admin, Node, Viewer]);
/// Node agents, besides admins.
const NODES: Access = Access::Roles(&[Admin, Node]);
/// Admins and viewers: reads of the farm as a whole.
const READERS: Access = Access::Roles(&[Admin, Viewer]);
/// Admins alone: every mutation of the farm or its configuration.
pub(crate) const ADMINS: Access = Access::Roles(&[Admin]);
/// The standard services.
const OPEN: Access = Access::Open;

/// One service of this port.
#[derive(Debug)]
pub(crate) struct Service {
    /// Its full name, as reflection lists it and health reports it.
    pub(crate) name: &'static str,
    /// Each method's name and who may call it.
    pub(crate) methods: &'static [(&'static str, Access)],
}

/// The name `grpc.health.v1` is served under.
pub(crate) const HEALTH: &str = "grpc.health.v1.Health";

/// Every service this port serves.
pub(crate) const SERVICES: &[Service] = &[
    // A node's own lifecycle (its secret proves which node it is).
    Service {
        name: registry_server::SERVICE_NAME,
        methods: &[
            ("Register", NODES),
            ("Heartbeat", NODES),
            ("Deregister", NODES),
        ],
    },
    // Peers and membership: nodes find each other, dashboards watch.
    Service {
        name: discovery_server::SERVICE_NAME,
        methods: &[("Discover", ANY), ("Watch", ANY), ("ListGroups", ANY)],
    },
    // The farm as the control plane runs it.
    Service {
        name: farm_server::SERVICE_NAME,
        methods: &[
            ("ListNodes", READERS),
            ("Scale", ADMINS),
            ("NodeAction", ADMINS),
            ("SimulateLoad", ADMINS),
            ("Broadcast", ADMINS),
        ],
    },
    // Configuration: nodes and viewers read, admins write.
    Service {
        name: config_server::SERVICE_NAME,
        methods: &[
            ("GetConfig", ANY),
            ("History", ANY),
            ("Diff", ANY),
            ("GetEffectiveConfig", ANY),
            ("WatchConfig", ANY),
            ("PutConfig", ADMINS),
            ("Rollback", ADMINS),
        ],
    },
    // Metrics: every role reads (nodes may look at the farm's load).
    Service {
        name: metrics_server::SERVICE_NAME,
        methods: &[
            ("GetFarmMetrics", ANY),
            ("GetNodeMetrics", ANY),
            ("WatchMetrics", ANY),
            ("GetFarmHistory", ANY),
        ],
    },
    // Load tests drive every node of the farm: admins alone.
    Service {
        name: load_test_server::SERVICE_NAME,
        methods: &[("Run", ADMINS)],
    },
    // The dependency catalog (also on the line protocol): admins change
    // it, every role reads.
    Service {
        name: catalog_server::SERVICE_NAME,
        methods: &[
            ("Index", ADMINS),
            ("Remove", ADMINS),
            ("Query", ANY),
            ("Get", ANY),
            ("List", ANY),
        ],
    },
    // The control plane itself: every role may ask who it is to it.
    Service {
        name: control_plane_server::SERVICE_NAME,
        methods: &[("GetStatus", ANY)],
    },
    Service {
        name: HEALTH,
        methods: &[("Check", OPEN), ("Watch", OPEN)],
    },
    Service {
        name: "grpc.reflection.v1.ServerReflection",
        methods: &[("ServerReflectionInfo", OPEN)],
    },
    Service {
        name: "grpc.reflection.v1alpha.ServerReflection",
        methods: &[("ServerReflectionInfo", OPEN)],
    },
];

/// The name of every service served.
pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    SERVICES.iter().map(|s| s.name)
}

/// A served method: its `package.Service/Method` label and who may call it.
#[derive(Debug, Clone, Copy)]
struct Served {
    label: &'static str,
    access: Access,
}

/// Every served method by its request path (`/package.Service/Method`),
/// built from [`SERVICES`] on first use: a lookup per call, no lock.
fn served(path: &str) -> Option<Served> {
    static BY_PATH: OnceLock<HashMap<String, Served>> = OnceLock::new();
    BY_PATH
        .get_or_init(|| {
            let mut by_path = HashMap::new();
            for service in SERVICES {
                for (method, access) in service.methods {
                    // One string per served method, for the life of the
                    // process: metric labels borrow it.
                    let label: &'static str =
                        Box::leak(format!("{}/{method}", service.name).into_boxed_str());
                    let served = Served {
                        label,
                        access: *access,
                    };
                    by_path.insert(format!("/{label}"), served);
                }
            }
            by_path
        })
        .get(path)
        .copied()
}

/// Who may call the method at `path`; `None` for a path no service here
/// declares.
pub(crate) fn access(path: &str) -> Option<Access> {
    served(path).map(|s| s.access)
}

/// `package.Service/Method` for a served method's `path`, as a static
/// string for labels.
pub(crate) fn method(path: &str) -> Option<&'static str> {
    served(path).map(|s| s.label)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// Every method of every service this port serves from its descriptor
    /// sets (all but the nodes' `Workload`), as `package.Service/Method`.
    fn described() -> BTreeSet<String> {
        let sets = [
            farm_api::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = BTreeSet::new();
        for bytes in sets {
            let set = prost_types::FileDescriptorSet::decode(bytes).expect("descriptor set");
            for file in &set.file {
                for service in &file.service {
                    let name = format!("{}.{}", file.package(), service.name());
                    if name == "farm.v1.Workload" {
                        continue;
                    }
                    for method in &service.method {
                        methods.insert(format!("{name}/{}", method.name()));
                    }
                }
            }
        }
        methods
    }

    /// The table lists every method of the farm's API, of health and of
    /// reflection, once each, and nothing else; every farm method needs a
    /// token, and admins may call all of them.
    #[test]
    fn the_table_covers_the_api() {
        let mut listed = BTreeSet::new();
        for service in SERVICES {
            for (method, access) in service.methods {
                let path = format!("{}/{method}", service.name);
                assert!(listed.insert(path.clone()), "{path} is listed twice");
                match access {
                    Access::Roles(roles) => {
                        assert!(roles.contains(&Admin), "admins may call {path}");
                    }
                    Access::Open => assert!(
                        !service.name.starts_with("farm."),
                        "{path} must need a token"
                    ),
                }
            }
        }
        let described = described();
        let missing: Vec<_> = described.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "decide who may call {missing:?}: add them to transport::services::SERVICES"
        );
        let unknown: Vec<_> = listed.difference(&described).collect();
        assert!(unknown.is_empty(), "not served here: {unknown:?}");
    }

    #[test]
    fn paths_find_their_method() {
        assert_eq!(access("/farm.v1.Farm/Scale"), Some(ADMINS));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Some(Access::Open));
        assert_eq!(access("/farm.v1.Workload/Work"), None);
        assert_eq!(access("/farm.v1.Farm"), None);
        assert_eq!(
            method("/farm.v1.Config/PutConfig"),
            Some("farm.v1.Config/PutConfig")
        );
        // Made once: the same label each time.
        assert!(std::ptr::eq(
            method("/farm.v1.Config/PutConfig").expect("served"),
            method("/farm.v1.Config/PutConfig").expect("served")
        ));
    }
}
