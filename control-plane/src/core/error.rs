//! The one error type of the domain core. The gRPC adapter maps each variant
//! to a status code in a single `From` impl.

use thiserror::Error;

/// Why a domain operation was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DomainError {
    /// The request itself is malformed: a bad name, address, count or label.
    #[error("{0}")]
    InvalidArgument(String),
    /// A node id or group that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A name already held by another identity.
    #[error("{0}")]
    AlreadyExists(String),
    /// A node id presented with the wrong secret.
    #[error("{0}")]
    PermissionDenied(String),
    /// A group at capacity, or the group limit reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The operation does not apply to this node or farm as it is now.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A compare-and-set lost: the version was not the one expected.
    #[error("{0}")]
    Aborted(String),
}

impl DomainError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}
