//! The service's error type and its one mapping to gRPC status codes.
//! Internal errors are logged here, once, and reach the caller only as a
//! generic message. A store condition that passes says so: a full disk is
//! RESOURCE_EXHAUSTED, a busy or unreachable store UNAVAILABLE (the code gRPC
//! clients retry), each naming the cause and with a retry hint.

use std::time::Duration;

use crate::store::StoreError;

/// The trailer telling a client how many milliseconds to wait before retrying.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";
/// The retry hint when the store is out of space: freeing it takes a person.
pub const STORE_FULL_RETRY: Duration = Duration::from_secs(30);
/// The retry hint when the store is busy, throttled or unreachable.
pub const STORE_BUSY_RETRY: Duration = Duration::from_secs(1);

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
            } => pushback(tonic::Status::resource_exhausted(message), retry_after),
            Error::Store(StoreError::Closed) => {
                tonic::Status::unavailable("the server is shutting down")
            }
            Error::Store(e @ StoreError::Full(_)) => {
                tracing::warn!(error = %e, "store failure");
                let message = format!("{e}; retry once space is freed");
                pushback(
                    tonic::Status::resource_exhausted(message),
                    Some(STORE_FULL_RETRY),
                )
            }
            Error::Store(e @ (StoreError::Busy(_) | StoreError::Unavailable(_))) => {
                tracing::warn!(error = %e, "store failure");
                pushback(
                    tonic::Status::unavailable(format!("{e}; retry")),
                    Some(STORE_BUSY_RETRY),
                )
            }
            Error::Store(e) => {
                tracing::error!(error = %e, "store failure");
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

    fn status(e: StoreError) -> tonic::Status {
        Error::Store(e).into()
    }

    fn pushback_ms(status: &tonic::Status) -> Option<String> {
        status
            .metadata()
            .get(RETRY_PUSHBACK_HEADER)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn a_full_store_is_resource_exhausted_with_a_hint() {
        let s = status(StoreError::Full("SQLite: database or disk is full".into()));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "the store is out of space: SQLite: database or disk is full; retry once space is freed"
        );
        assert_eq!(pushback_ms(&s).as_deref(), Some("30000"));
    }

    #[test]
    fn a_busy_or_unreachable_store_is_unavailable() {
        for (e, message) in [
            (
                StoreError::Busy("DynamoDB throttled the request (ThrottlingException)".into()),
                "the store is busy: DynamoDB throttled the request (ThrottlingException); retry",
            ),
            (
                StoreError::Unavailable("SQLite: disk I/O error".into()),
                "the store is unavailable: SQLite: disk I/O error; retry",
            ),
        ] {
            let s = status(e);
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert_eq!(s.message(), message);
            assert_eq!(pushback_ms(&s).as_deref(), Some("1000"));
        }
    }

    #[test]
    fn bugs_and_corruption_stay_internal_and_say_nothing() {
        for e in [
            StoreError::Internal("sqlite: UNIQUE constraint failed: watches.tenant".into()),
            StoreError::Corrupt("unknown watch state \"X\"".into()),
        ] {
            let s = status(e);
            assert_eq!(s.code(), tonic::Code::Internal);
            assert_eq!(s.message(), "internal error");
            assert!(pushback_ms(&s).is_none());
        }
    }
}
