//! The node's errors, and how each should reach a client.

use std::path::PathBuf;

use crate::code::CodeError;
use crate::envs::EnvError;
use crate::function::InvalidFunction;
use crate::images::ImageError;
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("function {0:?} does not exist (`ember ls` lists deployed functions)")]
    NotFound(String),
    #[error(
        "layer version {0:?} does not exist on this node (list-layer-versions lists those \
         published here)"
    )]
    LayerNotFound(String),
    #[error(transparent)]
    Invalid(#[from] InvalidFunction),
    #[error("function {0:?} does not exist yet, so its first deploy must include code")]
    CodeRequired(String),
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "function {function:?} is at its limit of {max_instances} instances and {queue_depth} \
         queued requests; retry later or raise max_instances"
    )]
    Throttled {
        function: String,
        max_instances: u32,
        queue_depth: usize,
    },
    #[error(transparent)]
    Sandbox(#[from] ember_sandbox::SandboxError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshots::SnapshotError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the snapshot store: {0}")]
    Store(String),
    #[error("function {0:?} was changed by another request meanwhile: read it again and retry")]
    Changed(String),
    #[error("{what} is in use by {by}: {hint}")]
    InUse {
        what: String,
        by: String,
        hint: &'static str,
    },
    #[error("another ember daemon is using {0}; stop it or choose another --home")]
    HomeLocked(PathBuf),
    #[error("{what} {path} failed")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How an error should reach a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeErrorKind {
    NotFound,
    BadRequest,
    /// The request was fine but could not be satisfied (e.g. pip failed).
    Unprocessable,
    Throttled,
    /// The request conflicts with the state it would change (retry after reading it again).
    Conflict,
    Internal,
}

impl NodeError {
    pub fn kind(&self) -> NodeErrorKind {
        match self {
            NodeError::NotFound(_) | NodeError::LayerNotFound(_) => NodeErrorKind::NotFound,
            NodeError::Invalid(_) | NodeError::CodeRequired(_) => NodeErrorKind::BadRequest,
            NodeError::Code(e) if e.is_user_error() => NodeErrorKind::BadRequest,
            NodeError::Env(e) if e.is_user_error() => NodeErrorKind::Unprocessable,
            NodeError::Image(e) if e.is_user_error() => NodeErrorKind::NotFound,
            NodeError::Snapshot(e) if e.is_user_error() => NodeErrorKind::NotFound,
            NodeError::Image(ImageError::NeedsSandbox) => NodeErrorKind::Unprocessable,
            NodeError::Image(ImageError::Build { .. } | ImageError::Verify { .. }) => {
                NodeErrorKind::Unprocessable
            }
            NodeError::Config(_) => NodeErrorKind::BadRequest,
            NodeError::Throttled { .. } => NodeErrorKind::Throttled,
            NodeError::Changed(_) | NodeError::InUse { .. } => NodeErrorKind::Conflict,
            _ => NodeErrorKind::Internal,
        }
    }
}
