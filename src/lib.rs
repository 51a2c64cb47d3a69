//! The `farm.v1` gRPC API and the node's contract, shared by `farm-node`,
//! `loadgen` and `control-plane` so that each of them holds a node to the
//! same rules:
//!
//! - [`v1`]: message types, clients and servers generated from
//!   `proto/farm/v1/*.proto`, and [`FILE_DESCRIPTOR_SET`] for server
//!   reflection; the servers decode with [`codec::ServerCodec`], which
//!   answers a request that does not decode with `INVALID_ARGUMENT`.
//! - [`node`]: what a node does and accepts: its limits, the configuration
//!   keys it applies and the one parser that reads them, which the control
//!   plane also uses to refuse configurations a node could not apply.
//! - [`json`]: JSON ↔ `google.protobuf.Struct`, the form configurations
//!   travel in.
//! - [`status`]: gRPC status codes by their canonical names.
//! - [`cli`]: flag values every binary parses alike (durations), so the
//!   same mistake gets the same message everywhere.
//! - [`Bearer`]: the one way every client presents its token.

pub mod cli;
pub mod codec;
pub mod json;
pub mod node;
pub mod status;

/// Generated `farm.v1` types, clients (`*_client`) and servers (`*_server`).
pub mod v1 {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    // Messages and clients.
    tonic::include_proto!("farm.v1");
    // Servers, generated apart with their own codec (see `build.rs`).
    include!(concat!(env!("OUT_DIR"), "/server/farm.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `farm.v1` and its imports, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("farm_descriptor");

/// Presents a token to the control plane: adds `authorization: Bearer
/// <token>` to every call of a client built `with_interceptor`, or nothing
/// when no token is set.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

/// A token that cannot travel in a header (control characters, non-ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the token is not a valid header value")
    }
}

impl std::error::Error for InvalidToken {}

impl Bearer {
    /// The interceptor for `token` (none: calls go without one).
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        token
            .map(|t| format!("Bearer {t}").parse().map_err(|_| InvalidToken))
            .transpose()
            .map(Self)
    }

    /// The header value sent, if any.
    pub fn value(&self) -> Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        self.0.as_ref()
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
