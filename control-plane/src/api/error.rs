//! Every way a call can fail, and the one place their gRPC status codes
//! are chosen.
//!
//! Handlers return `Result<_, ApiError>` internally (or any error that
//! converts into one) and tonic's `Status` only at their edge, through the
//! single `From<ApiError> for Status` below. Requests are read into domain
//! types with `TryFrom`, whose failures are [`BadRequest`]s.

use std::time::Duration;

use thiserror::Error;
use tonic::{Code, Status};

use crate::{
    core::DomainError, state::StateError, store::StoreError, supervisor::FarmError,
    transport::auth::Refusal,
};

/// A request the caller got wrong before any rule of the farm was asked.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BadRequest {
    /// A field that must be set is empty.
    #[error("{field} is required{hint}")]
    Missing {
        field: &'static str,
        /// What the field takes, starting with `: `, or nothing.
        hint: &'static str,
    },
    /// A number or enum value outside what the field takes.
    #[error("{field} must be {allowed}, not {given}")]
    OutOfRange {
        field: &'static str,
        given: String,
        allowed: String,
    },
    /// A rule about how fields go together, in one sentence.
    #[error("{0}")]
    Rule(&'static str),
}

impl BadRequest {
    /// `field` is required.
    pub fn missing(field: &'static str) -> Self {
        Self::Missing { field, hint: "" }
    }

    /// `field` holds `given`, which is not `allowed`.
    pub fn out_of_range(field: &'static str, given: impl ToString, allowed: impl ToString) -> Self {
        Self::OutOfRange {
            field,
            given: given.to_string(),
            allowed: allowed.to_string(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// A rule of the farm refused it.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The store failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The supervisor refused or failed.
    #[error(transparent)]
    Farm(#[from] FarmError),
    /// The call came while the control plane shuts down.
    #[error("the control plane is shutting down")]
    ShuttingDown,
    /// A load test is running; one runs at a time.
    #[error("a load test is already running")]
    LoadTestRunning,
    /// A selection of nodes that leaves none healthy to drive.
    #[error("no healthy node{} matches the selection", in_group(.group))]
    NoHealthyNode { group: String },
    /// A selection that names no node at all.
    #[error("no node is selected")]
    NoNodeSelected,
    /// The load test engine refused the run or failed during it.
    #[error("load test failed: {0}")]
    LoadTest(#[from] loadgen::RunError),
    /// A node's registered address is not one the engine can dial.
    #[error("node {node} has a bad address: {cause}")]
    NodeAddress { node: String, cause: String },
    /// A blocking task of the control plane itself failed.
    #[error("{what} failed: {cause}")]
    Task { what: &'static str, cause: String },
}

/// Why the control plane's own call to one node failed, reported in that
/// node's result (not as the status of the whole call).
#[derive(Debug, Error)]
pub enum NodeCallError {
    /// No connection to the node could be made in time.
    #[error("cannot reach the node at {address}: {cause}")]
    Unreachable { address: String, cause: String },
    /// The node answered with an error.
    #[error(transparent)]
    Answered(#[from] Status),
}

impl From<NodeCallError> for Status {
    fn from(err: NodeCallError) -> Self {
        match err {
            NodeCallError::Unreachable { .. } => Status::new(Code::Unavailable, err.to_string()),
            NodeCallError::Answered(status) => status,
        }
    }
}

fn in_group(group: &str) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!(" in group {group:?}")
    }
}

impl From<StateError> for ApiError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::Domain(err) => Self::Domain(err),
            StateError::Store(err) => Self::Store(err),
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        Status::new(code(&err), err.to_string())
    }
}

fn code(err: &ApiError) -> Code {
    use loadgen::RunError;
    match err {
        ApiError::BadRequest(_) | ApiError::NoNodeSelected => Code::InvalidArgument,
        ApiError::Domain(err) => domain(err),
        ApiError::Store(err) => store(err),
        ApiError::Farm(err) => farm(err),
        ApiError::ShuttingDown => Code::Unavailable,
        ApiError::LoadTestRunning => Code::ResourceExhausted,
        ApiError::NoHealthyNode { .. } => Code::FailedPrecondition,
        // Checked before the run; the engine's rules are the last word.
        ApiError::LoadTest(RunError::Config(_)) => Code::InvalidArgument,
        ApiError::LoadTest(_) | ApiError::NodeAddress { .. } | ApiError::Task { .. } => {
            Code::Internal
        }
    }
}

/// A store failure: the write was not acknowledged. A full disk is
/// `RESOURCE_EXHAUSTED` (it lasts until someone makes room); anything
/// else `UNAVAILABLE`, and the client may retry.
fn store(err: &StoreError) -> Code {
    if err.is_disk_full() {
        Code::ResourceExhausted
    } else {
        Code::Unavailable
    }
}

fn domain(err: &DomainError) -> Code {
    use DomainError as E;
    match err {
        E::MalformedNodeId(_)
        | E::MalformedNodeRef(_)
        | E::InvalidName { .. }
        | E::InvalidAddress { .. }
        | E::TooManyLabels { .. }
        | E::LabelTooLong { .. }
        | E::CountOutOfRange { .. }
        | E::MalformedScope(_)
        | E::ConfigNotObject
        | E::ConfigTooLarge { .. }
        | E::ConfigTooDeep { .. }
        | E::UnusableConfig { .. }
        | E::MissingSecret(_)
        | E::InvalidPackageName { .. }
        | E::TooManyDependencies { .. } => Code::InvalidArgument,
        // A node told NOT_FOUND or PERMISSION_DENIED for its identity
        // forgets it and registers afresh.
        E::UnknownNode(_)
        | E::UnknownNodeName(_)
        | E::UnknownIdentity(_)
        | E::UnknownGroup(_)
        | E::UnknownVersion { .. }
        | E::NotIndexed(_) => Code::NotFound,
        E::WrongSecret(_) => Code::PermissionDenied,
        E::NameTaken { .. } => Code::AlreadyExists,
        E::GroupFull { .. } | E::TooManyGroups { .. } => Code::ResourceExhausted,
        // The stream must end; the node opens a new one if it still runs.
        E::StreamSuperseded(_) | E::ManagedNode(_) | E::NoEarlierVersion(_) => {
            Code::FailedPrecondition
        }
        // The catalog's rules: the caller indexes the dependencies first,
        // or removes the dependents first.
        E::MissingDependencies { .. } | E::HasDependents { .. } => Code::FailedPrecondition,
        E::VersionConflict { .. } => Code::Aborted,
    }
}

fn farm(err: &FarmError) -> Code {
    match err {
        FarmError::Domain(err) | FarmError::State(StateError::Domain(err)) => domain(err),
        FarmError::State(StateError::Store(err)) => store(err),
        FarmError::TooMany { .. } => Code::InvalidArgument,
        FarmError::NoRuntime
        | FarmError::NotManaged(_)
        | FarmError::NotRunning { .. }
        | FarmError::Unsupported(_) => Code::FailedPrecondition,
        FarmError::Runtime(_) => Code::Internal,
        // The engine may come back: the same call succeeds then.
        FarmError::ShuttingDown | FarmError::RuntimeUnavailable(_) => Code::Unavailable,
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        let code = match refusal {
            Refusal::NotAllowed { .. } => Code::PermissionDenied,
            Refusal::NoToken { .. }
            | Refusal::NotBearer
            | Refusal::EmptyToken
            | Refusal::UnknownToken => Code::Unauthenticated,
            Refusal::TooManyGuesses { .. } => Code::ResourceExhausted,
        };
        Status::new(code, refusal.to_string())
    }
}

/// The answer to a call whose handler did not answer within `limit`
/// (`--rpc-timeout`).
pub fn deadline_exceeded(path: &str, limit: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "{path} did not answer within {limit:?} (the control plane's --rpc-timeout)"
    ))
}

/// The answer to a farm-wide read shed while the control plane is
/// saturated (its event loop `lag` late).
pub fn overloaded(path: &str, lag: Duration) -> Status {
    Status::unavailable(format!(
        "the control plane is saturated (its event loop runs {lag:.0?} late): {path} is shed so that nodes keep their time; retry shortly (--shed-lag)"
    ))
}

/// The answer to a gRPC call of a path no service here serves.
pub fn unimplemented(path: &str) -> Status {
    Status::unimplemented(format!("{path} is not served here"))
}

/// `?` on domain, state and request errors in handlers that return
/// `Status`.
macro_rules! into_status {
    ($($from:ty),*) => {$(
        impl From<$from> for Status {
            fn from(err: $from) -> Self {
                ApiError::from(err).into()
            }
        }
    )*};
}
into_status!(BadRequest, DomainError, StateError, FarmError, StoreError);

#[cfg(test)]
mod tests {

    use super::*;
    use crate::core::{NodeId, config::Scope};

    /// The codes clients act on: a node forgets its identity on NOT_FOUND
    /// and PERMISSION_DENIED, a writer retries a lost compare-and-set
    /// (ABORTED), a full group is RESOURCE_EXHAUSTED.
    #[test]
    fn domain_errors_keep_their_codes() {
        let id = NodeId(7);
        for (err, code) in [
            (DomainError::UnknownIdentity(id), Code::NotFound),
            (DomainError::UnknownNode(id), Code::NotFound),
            (
                DomainError::UnknownNodeName("node-007".into()),
                Code::NotFound,
            ),
            (DomainError::WrongSecret(id), Code::PermissionDenied),
            (
                DomainError::NameTaken {
                    name: "a".into(),
                    holder: id,
                    fresh: true,
                },
                Code::AlreadyExists,
            ),
            (
                DomainError::GroupFull {
                    group: "g".into(),
                    capacity: 2,
                },
                Code::ResourceExhausted,
            ),
            (
                DomainError::VersionConflict {
                    scope: Scope::Global,
                    expected: 1,
                    current: 2,
                },
                Code::Aborted,
            ),
            (DomainError::StreamSuperseded(id), Code::FailedPrecondition),
            (
                DomainError::MalformedNodeId("x".into()),
                Code::InvalidArgument,
            ),
        ] {
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }
}
