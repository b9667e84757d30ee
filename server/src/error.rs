//! The service's error type and its one mapping to gRPC status codes.
//! Internal errors are logged here, once, and reach the caller only as a
//! generic message.

use crate::store::StoreError;

/// The trailer telling a client how many milliseconds to wait before retrying.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong; nothing was changed.
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// No such watch for this tenant (whether or not another tenant has one).
    #[error("watch not found")]
    NotFound,
    /// The watch is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The tenant is at one of its quotas; `retry_after` when waiting helps.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(error.to_string()),
            Error::NotFound => tonic::Status::not_found(error.to_string()),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Error::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Error::PermissionDenied(m) => tonic::Status::permission_denied(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            Error::ResourceExhausted {
                message,
                retry_after,
            } => {
                let mut status = tonic::Status::resource_exhausted(message);
                if let Some(wait) = retry_after {
                    // gRPC's retry pushback (gRFC A6): clients with a retry policy wait this long.
                    status.metadata_mut().insert(
                        RETRY_PUSHBACK_HEADER,
                        tonic::metadata::MetadataValue::from(wait.as_millis() as u64),
                    );
                }
                status
            }
            Error::Store(StoreError::Closed) => {
                tonic::Status::unavailable("the server is shutting down")
            }
            Error::Store(e) => {
                tracing::error!(error = %e, "store failure");
                tonic::Status::internal("internal error")
            }
        }
    }
}
