//! The library's one error type: what went wrong connecting, configuring, or
//! in a call. It carries the server's `Status` untouched when the server
//! answered, and knows which failures are worth reconnecting for.

use std::{path::PathBuf, time::Duration};

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("TLS options need an https:// endpoint, not {endpoint}")]
    TlsNeedsHttps { endpoint: String },
    #[error("cannot read the CA certificate {path}: {source}")]
    ReadCaCertificate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NotPemCertificate { path: PathBuf },
    #[error("cannot read the client certificate or key {path}: {source}")]
    ReadClientIdentity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("the token is not valid ASCII metadata")]
    InvalidToken,
    #[error("the {0} is not a valid W3C trace context header")]
    InvalidTraceContext(&'static str),
    #[error("{rpc} got no answer within {after:?}")]
    Timeout { rpc: &'static str, after: Duration },
    #[error("the server answered {rpc} without a watch")]
    MissingWatch { rpc: &'static str },
    #[error("the events of watch {watch_id} jumped from seq {last} to {got}")]
    SequenceGap {
        watch_id: String,
        last: u64,
        got: u64,
    },
    #[error("gave up reconnecting to the events of watch {watch_id} after {elapsed:?}: {last}")]
    ReconnectGaveUp {
        watch_id: String,
        elapsed: Duration,
        last: Box<Error>,
    },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] Status),
}

impl Error {
    /// The gRPC code of this error: the server's for a call it answered,
    /// UNAVAILABLE for connection failures, DEADLINE_EXCEEDED for timeouts.
    pub fn code(&self) -> Code {
        match self {
            Error::Status(status) => status.code(),
            Error::Connect { .. } => Code::Unavailable,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::ReconnectGaveUp { last, .. } => last.code(),
            Error::SequenceGap { .. } | Error::MissingWatch { .. } => Code::Internal,
            _ => Code::InvalidArgument,
        }
    }

    /// The server's message for a call it answered; empty for errors that
    /// did not come from the server.
    pub fn message(&self) -> &str {
        match self {
            Error::Status(status) => status.message(),
            _ => "",
        }
    }

    /// The status the server (or the transport) returned, if this is one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    /// Whether the call may succeed if made again after a pause: the server
    /// was unreachable or went away (UNAVAILABLE, a reset connection, a
    /// restart), or did not answer in time. Answers the server chose to give
    /// (NOT_FOUND, INVALID_ARGUMENT, ...) are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            // A status with a source was made here from a transport failure,
            // not sent by the server.
            Error::Status(status) => {
                status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
            }
            _ => false,
        }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
