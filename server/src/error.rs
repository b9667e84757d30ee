//! The service's error type, by meaning, and its one mapping to gRPC status
//! codes. Internal errors are logged here, once, and reach the caller only as
//! a generic message. A condition that passes says so, with a retry hint in
//! gRPC's pushback trailer: too much asked (or a full disk) is
//! RESOURCE_EXHAUSTED, a busy or unreachable dependency UNAVAILABLE (the code
//! gRPC clients retry), a concurrent change that won ABORTED. Each layer turns
//! its own errors into these where it meets them (the store's in
//! [`crate::store`]); this module knows none of them.

use std::time::Duration;

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
    /// The server is shutting down, or a dependency is busy or unreachable:
    /// the same call is likely to succeed later (after `retry_after`, when known).
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A concurrent change won over this one; retrying the call is likely to succeed.
    #[error("{0}")]
    Aborted(String),
    /// The tenant is at one of its quotas, or the store is out of space;
    /// `retry_after` when waiting helps.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A bug or damaged data, not a condition to wait out.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// UNAVAILABLE without a hint (the server is shutting down, or a stream ended).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after: None,
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
            Error::Unavailable {
                message,
                retry_after,
            } => pushback(tonic::Status::unavailable(message), retry_after),
            Error::Aborted(m) => tonic::Status::aborted(m),
            Error::ResourceExhausted {
                message,
                retry_after,
            } => pushback(tonic::Status::resource_exhausted(message), retry_after),
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

/// Adds gRPC's retry pushback (gRFC A6) to `status`: clients with a retry
/// policy wait this long.
fn pushback(mut status: tonic::Status, wait: Option<Duration>) -> tonic::Status {
    if let Some(wait) = wait {
        status.metadata_mut().insert(
            RETRY_PUSHBACK_HEADER,
            tonic::metadata::MetadataValue::from(wait.as_millis() as u64),
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_becomes_the_pushback_trailer_and_internal_errors_say_nothing() {
        let busy: tonic::Status = Error::Unavailable {
            message: "the store is busy; retry".into(),
            retry_after: Some(Duration::from_secs(1)),
        }
        .into();
        assert_eq!(busy.code(), tonic::Code::Unavailable);
        assert_eq!(busy.metadata().get(RETRY_PUSHBACK_HEADER).unwrap(), "1000");
        let bug: tonic::Status = Error::Internal("UNIQUE constraint failed".into()).into();
        assert_eq!(bug.code(), tonic::Code::Internal);
        assert_eq!(bug.message(), "internal error");
        assert!(bug.metadata().get(RETRY_PUSHBACK_HEADER).is_none());
        let lost: tonic::Status = Error::Aborted("the watch changed; retry".into()).into();
        assert_eq!(lost.code(), tonic::Code::Aborted);
    }
}
