//! The queue a consumer reads ([`Queue`]): receive with a long poll, change
//! the visibility of received messages, delete them. [`SqsQueue`] is SQS;
//! tests and the cluster simulation put a queue of their own behind the same
//! trait. This module only moves messages: what a body means and when a
//! message may be deleted are the consumer's (`super::sqs`).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::{
    Client,
    error::{DisplayErrorContext, SdkError},
    operation::get_queue_attributes::GetQueueAttributesError,
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
        QueueAttributeName,
    },
};

/// Messages per receive, visibility change or delete: SQS's maximum.
pub const BATCH: usize = 10;
/// Visibility timeout assumed when the queue's cannot be read.
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

/// One received message.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    /// What deletes it or changes its visibility (this receive's).
    pub receipt: String,
    pub body: String,
}

/// Why a queue call failed, in words for the log.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueueCallError(pub String);

/// A queue of storage notifications with SQS's semantics: a received
/// message is hidden for the visibility timeout, then comes back unless
/// deleted; delivery is at least once.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The queue's address, for logs and metrics.
    fn url(&self) -> &str;

    /// The queue's visibility timeout.
    async fn visibility(&self) -> Result<Duration, QueueCallError>;

    /// Up to [`BATCH`] messages, waiting at most `wait` (whole seconds) for one.
    async fn receive(&self, wait: Duration) -> Result<Vec<Received>, QueueCallError>;

    /// Hides the messages of `receipts` for `to` from now (zero: visible again).
    async fn change_visibility(
        &self,
        receipts: &[String],
        to: Duration,
    ) -> Result<(), QueueCallError>;

    /// Deletes the messages of `receipts`; how many could not be deleted.
    async fn delete(&self, receipts: &[String]) -> Result<usize, QueueCallError>;
}

/// Why a queue cannot be consumed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// GetQueueAttributes failed: no such queue, no permission to read it,
    /// or SQS could not be reached.
    #[error("{}", DisplayErrorContext(.0))]
    Unreadable(Box<SdkError<GetQueueAttributesError>>),
}

/// An SQS queue.
pub struct SqsQueue {
    client: Client,
    url: String,
}

fn sqs_error(e: impl std::error::Error + 'static) -> QueueCallError {
    QueueCallError(DisplayErrorContext(e).to_string())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Checks that the queue exists and may be read (GetQueueAttributes);
    /// its visibility timeout.
    pub async fn check(&self) -> Result<Duration, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| QueueError::Unreadable(Box::new(e)))?;
        Ok(out
            .attributes
            .and_then(|a| {
                a.get(&QueueAttributeName::VisibilityTimeout)
                    .and_then(|v| v.parse().ok())
            })
            .map_or(DEFAULT_VISIBILITY, Duration::from_secs))
    }
}

#[async_trait]
impl Queue for SqsQueue {
    fn url(&self) -> &str {
        &self.url
    }

    async fn visibility(&self) -> Result<Duration, QueueCallError> {
        self.check().await.map_err(|e| match e {
            QueueError::Unreadable(e) => sqs_error(*e),
        })
    }

    async fn receive(&self, wait: Duration) -> Result<Vec<Received>, QueueCallError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(BATCH as i32)
            .wait_time_seconds(seconds(wait).min(20))
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(Received {
                    receipt: m.receipt_handle?,
                    id: m.message_id.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn change_visibility(
        &self,
        receipts: &[String],
        to: Duration,
    ) -> Result<(), QueueCallError> {
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk.iter().enumerate().filter_map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .visibility_timeout(seconds(to))
                    .build()
                    .ok()
            });
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map_err(sqs_error)?;
        }
        Ok(())
    }

    async fn delete(&self, receipts: &[String]) -> Result<usize, QueueCallError> {
        let mut failed = 0;
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk.iter().enumerate().filter_map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                    .ok()
            });
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map_err(sqs_error)?;
            failed += out.failed.len();
        }
        Ok(failed)
    }
}
