//! The one error type of the domain core. Each variant says what happened,
//! in the domain's words; the gRPC adapter (`api::error`) decides which
//! status code each becomes, in one place.

use farm_api::node::InvalidConfig;
use thiserror::Error;

use super::{NodeId, catalog::NameList, config::Scope};

fn restoring(version: u64) -> String {
    if version == 0 {
        String::new()
    } else {
        format!("version {version} cannot be restored, a node could not apply it: ")
    }
}

/// Why a domain operation was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DomainError {
    /// A node id that is not `n` followed by digits.
    #[error("malformed node id {0:?}: expected `n` followed by digits, e.g. `n7`")]
    MalformedNodeId(String),
    /// A reference to a node that is neither an id nor a valid node name.
    #[error(
        "{0:?} is neither a node id (`n` followed by digits, e.g. `n7`) nor a node name (e.g. `node-007`)"
    )]
    MalformedNodeRef(String),
    /// A node name, group name or label key that breaks the naming rules;
    /// `problem` says how.
    #[error("{what} {problem}")]
    InvalidName {
        /// `node name`, `group name` or `label key`.
        what: &'static str,
        problem: String,
    },
    /// An address that is not `host:port`.
    #[error("address {given:?} {problem}; expected host:port")]
    InvalidAddress {
        given: String,
        problem: &'static str,
    },
    /// More labels than a node may carry.
    #[error("{count} labels given; at most {max} allowed")]
    TooManyLabels { count: usize, max: usize },
    /// A label value longer than allowed.
    #[error("value of label {key:?} is {len} characters long; at most {max} allowed")]
    LabelTooLong { key: String, len: usize, max: usize },
    /// A `Discover` count above the largest answer.
    #[error("count must be between 1 and {max}, got {count}")]
    CountOutOfRange { count: u32, max: u32 },
    /// A scope that is not `global`, `group:<name>` or `node:<id>`.
    #[error("scope {0:?} is not `global`, `group:<name>` or `node:<id>`")]
    MalformedScope(String),
    /// Configuration data that is not a JSON object.
    #[error("configuration data must be a JSON object")]
    ConfigNotObject,
    /// Configuration data above the size limit.
    #[error("configuration data is {size} bytes as JSON; the limit is {max}")]
    ConfigTooLarge { size: usize, max: usize },
    /// Configuration data nested deeper than the limit.
    #[error("configuration data is nested {depth} levels deep; the limit is {max}")]
    ConfigTooDeep { depth: usize, max: usize },
    /// Configuration data holding a known key with a value a node could
    /// not apply (checked with the node's own parser).
    #[error("{}{problems}", restoring(*.rollback_of))]
    UnusableConfig {
        /// The version a rollback would restore; 0 for a write.
        rollback_of: u64,
        problems: InvalidConfig,
    },
    /// A node proving its identity without its secret.
    #[error("secret of node {0} is missing")]
    MissingSecret(NodeId),
    /// No node has this id.
    #[error("no node with id {0}")]
    UnknownNode(NodeId),
    /// No node is registered under this name.
    #[error("no node named {0:?}")]
    UnknownNodeName(String),
    /// A node presented an identity this control plane does not know (it
    /// was removed, or the farm's data was wiped).
    #[error("unknown node id {0}; register without node_id to get a new identity")]
    UnknownIdentity(NodeId),
    /// No group has this name.
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    /// A rollback to "the version before" of a scope with one version or
    /// none.
    #[error("{0} has no earlier version to roll back to")]
    NoEarlierVersion(Scope),
    /// A configuration version no longer (or never) in a scope's history.
    #[error("{scope} has no version {version} in its history")]
    UnknownVersion { scope: Scope, version: u64 },
    /// A node id presented with another node's secret.
    #[error("wrong secret for node {0}")]
    WrongSecret(NodeId),
    /// A name already held by another node.
    #[error("name {name:?} is held by node {holder}{}", if *.fresh {
        "; re-register with its node_id and secret, or pick another name"
    } else {
        ""
    })]
    NameTaken {
        name: String,
        holder: NodeId,
        /// The caller asked for a new identity (rather than re-attaching).
        fresh: bool,
    },
    /// A group at its capacity.
    #[error("group {group:?} is full ({capacity} members)")]
    GroupFull { group: String, capacity: u32 },
    /// A new group when the farm has as many as it may.
    #[error("cannot create group {group:?}: the farm already has the maximum of {max} groups")]
    TooManyGroups { group: String, max: u32 },
    /// A heartbeat on a stream a newer one of the same node replaced.
    #[error("heartbeat stream of node {0} was superseded by a newer one")]
    StreamSuperseded(NodeId),
    /// A node the control plane runs asked to deregister itself.
    #[error("node {0} is managed by the control plane; remove it with Farm.NodeAction")]
    ManagedNode(NodeId),
    /// A catalog name that breaks the naming rules; `problem` says how.
    #[error("package name {given:?} {problem}")]
    InvalidPackageName { given: String, problem: String },
    /// A dependency list longer than one entry may have.
    #[error("more than {max} dependencies given")]
    TooManyDependencies { max: usize },
    /// An index of a name whose dependencies are not all indexed.
    #[error("cannot index {name:?}: not indexed yet: {missing}")]
    MissingDependencies { name: String, missing: NameList },
    /// A removal of a name that other indexed names depend on.
    #[error("cannot remove {name:?}: indexed names depend on it: {dependents}")]
    HasDependents { name: String, dependents: NameList },
    /// A name the catalog does not hold.
    #[error("{0:?} is not indexed")]
    NotIndexed(String),
    /// A compare-and-set lost: the scope moved on since the caller read it.
    #[error("{scope} is at version {current}, not the expected {expected}")]
    VersionConflict {
        scope: Scope,
        expected: u64,
        current: u64,
    },
}
