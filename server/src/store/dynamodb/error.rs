//! DynamoDB's errors as [`StoreError`]s, classified where they are met:
//! no answer, throttling, conflicts and the service's own failures pass
//! (`Unavailable`, `Busy`); a request DynamoDB refuses is a bug
//! (`Internal`). Messages name the cause, never the endpoint; no SDK error
//! type leaves the store.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::store::StoreError;

/// Classifies an SDK error: no answer, throttling, conflicts and the
/// service's own failures pass; anything else is a bug.
pub(super) fn aws<E>(e: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::TimeoutError(_) => {
            StoreError::Unavailable("DynamoDB did not answer in time".into())
        }
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            StoreError::Unavailable("DynamoDB did not answer in time".into())
        }
        SdkError::DispatchFailure(failure) => {
            // The innermost cause (an OS error, say): the chain above it may name the endpoint.
            let mut cause = failure
                .as_connector_error()
                .map(|c| c as &dyn std::error::Error);
            while let Some(inner) = cause.and_then(|c| c.source()) {
                cause = Some(inner);
            }
            StoreError::Unavailable(match cause {
                Some(cause) => format!("DynamoDB could not be reached ({cause})"),
                None => "DynamoDB could not be reached".into(),
            })
        }
        SdkError::ResponseError(_) => {
            StoreError::Unavailable("DynamoDB's response could not be read".into())
        }
        SdkError::ServiceError(service) => {
            service_error(e.code(), service.raw().status().as_u16(), || {
                DisplayErrorContext(&e).to_string()
            })
        }
        _ => StoreError::Internal(format!("dynamodb: {}", DisplayErrorContext(&e))),
    }
}

/// Classifies an error DynamoDB answered with, by its code and HTTP status.
pub(super) fn service_error(
    code: Option<&str>,
    status: u16,
    detail: impl FnOnce() -> String,
) -> StoreError {
    match code {
        Some(
            code @ ("ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "ThrottlingException"
            | "Throttling"),
        ) => StoreError::Busy(format!("DynamoDB throttled the request ({code})")),
        Some(code @ ("TransactionConflictException" | "TransactionInProgressException")) => {
            StoreError::Busy(format!("a conflicting DynamoDB transaction ({code})"))
        }
        Some(code @ ("InternalServerError" | "ServiceUnavailable")) => {
            StoreError::Unavailable(format!("DynamoDB failed ({code})"))
        }
        _ if status >= 500 => StoreError::Unavailable(format!("DynamoDB failed (HTTP {status})")),
        _ => StoreError::Internal(format!("dynamodb: {}", detail())),
    }
}

/// An SDK builder's error (a missing required field) as a store error.
pub(super) fn built(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Internal(format!("dynamodb request: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_dynamodb::{
        Client,
        config::{BehaviorVersion, Credentials, Region, retry::RetryConfig},
        error::ConnectorError,
        operation::get_item::GetItemError,
    };

    use super::*;
    use crate::{
        store::{Store, dynamodb::DynamoStore},
        watch::{TenantId, WatchId},
    };

    #[test]
    fn throttling_and_conflicts_are_busy() {
        for code in [
            "ProvisionedThroughputExceededException",
            "RequestLimitExceeded",
            "ThrottlingException",
            "TransactionConflictException",
        ] {
            let e = service_error(Some(code), 400, String::new);
            assert!(
                matches!(&e, StoreError::Busy(m) if m.contains(code)),
                "{e:?}"
            );
        }
    }

    #[test]
    fn the_service_failing_is_unavailable() {
        let e = service_error(Some("InternalServerError"), 500, String::new);
        assert!(matches!(&e, StoreError::Unavailable(_)), "{e:?}");
        let e = service_error(None, 503, String::new);
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("503")),
            "{e:?}"
        );
    }

    #[test]
    fn requests_it_refuses_are_bugs() {
        for code in ["ValidationException", "ResourceNotFoundException"] {
            let e = service_error(Some(code), 400, || format!("{code}: details"));
            assert!(
                matches!(&e, StoreError::Internal(m) if m.contains(code)),
                "{e:?}"
            );
        }
    }

    #[test]
    fn no_answer_is_unavailable() {
        let e = aws(SdkError::<GetItemError>::timeout_error("slow"));
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("in time")),
            "{e:?}"
        );
        let refused = ConnectorError::io("connection refused".into());
        let e = aws(SdkError::<GetItemError>::dispatch_failure(refused));
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m == "DynamoDB could not be reached (connection refused)"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn an_endpoint_nobody_listens_on_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // the listener is closed again at once
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .build();
        let store = DynamoStore::new(Client::from_conf(config), "t", Duration::from_secs(60));
        let tenant = TenantId::parse("tenant", "acme").unwrap();
        let e = store
            .get_watch(&tenant, &WatchId::generate())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Unavailable(m)
                if m.contains("could not be reached") && !m.contains("127.0.0.1")),
            "the cause, not the endpoint: {e:?}"
        );
    }
}
