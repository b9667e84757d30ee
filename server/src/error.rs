//! The service's error type and its one mapping to gRPC status codes.
//! Internal errors are logged here, once, and reach the caller only as a
//! generic message.

use crate::store::StoreError;

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
