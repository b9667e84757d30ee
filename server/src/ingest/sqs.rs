//! SQS consumers: long-poll a queue of storage notifications, parse each body
//! with the same parser as `IngestS3Events`, record, and delete messages only
//! once what they carried is durable. A body that cannot be parsed is left in
//! the queue, so its redrive policy moves it to the dead-letter queue; it is
//! counted and logged, never dropped silently.
//!
//! Each consumer also advances its [`Watermarks`] mark: a receive that
//! started at `t` and came back short of a full batch, after everything
//! received before it was recorded, means every notification sent before `t`
//! is counted.
//!
//! A decision about instant `t` waits for every consumer's mark to pass `t`.
//! So a consumer never long-polls past the earliest instant a decision wants
//! ([`Watermarks::next_wanted`]): it sizes its wait to end by then, and from
//! then confirms with receives of [`CONFIRM_WAIT`] until no wanted instant
//! has passed (a decision that waited for it wants the next one at once: a
//! polling sample). "The queue has caught up" costs about a second, not a
//! full long poll.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{
    Audience, Document, Ingest, IngestReport, Watermarks, parse_document,
    queue::{DEFAULT_VISIBILITY, Queue, Received},
};
use crate::clock::{Clock, Timestamp};

pub use super::queue::BATCH;
/// How long one receive waits for messages: SQS's maximum.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);
/// The wait of a receive that confirms the queue has caught up: the shortest
/// long poll (a zero-wait short poll asks only some of SQS's servers).
pub const CONFIRM_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed receive or record before trying again.
const BACKOFF: Duration = Duration::from_secs(1);

/// What a queue's consumers have done, for logs and metrics.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub received: AtomicU64,
    pub deleted: AtomicU64,
    /// Bodies that were not notifications; left for the dead-letter queue.
    pub unparseable: AtomicU64,
    /// Batches whose recording failed and were made visible again.
    pub failed_batches: AtomicU64,
    pub counted: AtomicU64,
}

pub struct QueueConsumer {
    pub queue: Arc<dyn Queue>,
    /// This consumer's slot in the watermarks.
    pub mark: usize,
    pub ingest: Arc<Ingest>,
    pub watermarks: Arc<Watermarks>,
    pub clock: Clock,
    pub wait: Duration,
    pub stats: Arc<QueueStats>,
    /// After a crash: no receive started before this moves the mark (what
    /// the earlier process received is hidden in the queue until then).
    pub hold_until: Option<tokio::time::Instant>,
    /// In a cluster: until when this replica is in touch with the table
    /// (its heartbeat landed recently enough). Past it, the consumer takes
    /// nothing off the queue: the others may stop waiting for this
    /// replica's watermark, and a message it took and could not record would
    /// be hidden from their confirming receives while they decide.
    pub in_touch: Option<tokio::sync::watch::Receiver<Option<tokio::time::Instant>>>,
}

/// What a consumer does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Receive, waiting at most this long for messages.
    Receive(Duration),
    /// Pause until the wanted instant (less than a second away), then confirm.
    PauseUntil(Timestamp),
}

/// The next step at `now` for a consumer configured with `wait`, given the
/// earliest instant a decision wants the marks past: a long poll that ends by
/// that instant, a pause when it is under a second away, a confirming receive
/// once it has come (while that decision waits for other consumers, or is
/// about to want its next instant).
fn next_step(now: Timestamp, wanted: Option<Timestamp>, wait: Duration) -> Next {
    match wanted {
        None => Next::Receive(wait),
        Some(at) if at <= now => Next::Receive(wait.min(CONFIRM_WAIT)),
        Some(at) => {
            // SQS waits in whole seconds.
            let whole = Duration::from_secs(now.until(at).as_secs());
            if whole.is_zero() {
                Next::PauseUntil(at)
            } else {
                Next::Receive(wait.min(whole))
            }
        }
    }
}

impl QueueConsumer {
    /// Consumes until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let url = self.queue.url().to_owned();
        let visibility = match self.queue.visibility().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(queue = %url, error = %e, "cannot read the visibility timeout");
                DEFAULT_VISIBILITY
            }
        };
        tracing::info!(queue = %url, ?visibility, wait = ?self.wait, "consuming notifications");
        while !shutdown.is_cancelled() {
            let wanted = self.watermarks.next_wanted();
            let wait = match next_step(self.clock.now(), wanted, self.wait) {
                Next::Receive(wait) => wait,
                Next::PauseUntil(at) => {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(self.clock.instant_at(at)) => continue,
                    }
                }
            };
            // A long poll ends while this replica is still in touch.
            let wait = match self.wait_in_touch(&shutdown).await {
                None => return,
                Some(Some(left)) => wait.min(Duration::from_secs(left.as_secs())),
                Some(None) => wait,
            };
            let started = self.clock.now();
            let held = self
                .hold_until
                .is_some_and(|until| tokio::time::Instant::now() < until);
            let messages = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                received = self.queue.receive(wait) => match received {
                    Ok(messages) => messages,
                    Err(e) => {
                        tracing::warn!(queue = %url, error = %e, "receive failed; retrying");
                        tokio::time::sleep(BACKOFF).await;
                        continue;
                    }
                },
            };
            let full = messages.len() >= BATCH;
            if self.process(messages, visibility).await {
                if !full && !held {
                    self.watermarks.advance(self.mark, started);
                }
            } else {
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }

    /// Returns once this replica is in touch with the cluster's table, with
    /// how long it stays so if no heartbeat lands (at once, with no bound,
    /// outside a cluster); `None` when shut down first.
    async fn wait_in_touch(&self, shutdown: &CancellationToken) -> Option<Option<Duration>> {
        let Some(in_touch) = &self.in_touch else {
            return Some(None);
        };
        let left = |until: &Option<tokio::time::Instant>| {
            until.map(|until| until.saturating_duration_since(tokio::time::Instant::now()))
        };
        let mut in_touch = in_touch.clone();
        // Room for at least the shortest long poll.
        let touching = |until: &Option<tokio::time::Instant>| {
            until.is_some_and(|until| until > tokio::time::Instant::now() + CONFIRM_WAIT)
        };
        if touching(&in_touch.borrow_and_update()) {
            return Some(left(&in_touch.borrow()));
        }
        tracing::warn!(queue = %self.queue.url(),
            "this replica's heartbeat has not reached the table lately; taking nothing off the queue until it does");
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                changed = in_touch.changed() => {
                    changed.ok()?;
                    if touching(&in_touch.borrow_and_update()) {
                        return Some(left(&in_touch.borrow()));
                    }
                }
            }
        }
    }

    /// Records one received batch; true when everything parseable is durable.
    async fn process(&self, messages: Vec<Received>, visibility: Duration) -> bool {
        if messages.is_empty() {
            return true;
        }
        self.stats
            .received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        let mut notifications = Vec::new();
        let mut done = Vec::new();
        for m in messages {
            match parse_document(&m.body) {
                Ok(Document::Records(records)) => {
                    notifications.extend(records);
                    done.push(m.receipt);
                }
                Ok(Document::Test) => done.push(m.receipt),
                Err(reason) => {
                    self.stats.unparseable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(queue = %self.queue.url(), message_id = %m.id, %reason,
                        "not a storage notification; leaving it for the dead-letter queue");
                }
            }
        }
        let mut report = IngestReport::default();
        let mut record = Box::pin(self.ingest.record(
            &notifications,
            Audience::AllowedTenants,
            &mut report,
        ));
        let half = (visibility / 2).max(Duration::from_secs(1));
        let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let recorded = loop {
            tokio::select! {
                biased;
                recorded = &mut record => break recorded,
                _ = extend.tick() => self.set_visibility(&done, visibility).await,
            }
        };
        drop(record);
        if let Err(e) = recorded {
            self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(queue = %self.queue.url(), error = %e, "recording a batch failed; making it visible again");
            self.set_visibility(&done, Duration::ZERO).await;
            return false;
        }
        self.stats
            .counted
            .fetch_add(report.counted, Ordering::Relaxed);
        // A message that could not be deleted comes back as a duplicate: harmless.
        match self.queue.delete(&done).await {
            Ok(failed) => {
                self.stats
                    .deleted
                    .fetch_add((done.len() - failed) as u64, Ordering::Relaxed);
                if failed > 0 {
                    tracing::warn!(queue = %self.queue.url(), failed, "some recorded messages could not be deleted");
                }
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue.url(), error = %e, "cannot delete recorded messages");
            }
        }
        true
    }

    async fn set_visibility(&self, receipts: &[String], to: Duration) {
        if let Err(e) = self.queue.change_visibility(receipts, to).await {
            tracing::warn!(queue = %self.queue.url(), error = %e, "cannot change message visibility");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = DEFAULT_WAIT;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn with_nothing_wanted_a_consumer_long_polls() {
        assert_eq!(next_step(at(0), None, WAIT), Next::Receive(WAIT));
    }

    #[test]
    fn a_long_poll_ends_by_the_next_wanted_instant() {
        assert_eq!(
            next_step(at(0), Some(at(3_700)), WAIT),
            Next::Receive(Duration::from_secs(3)),
            "whole seconds, rounded down: back before 3.7s"
        );
        assert_eq!(
            next_step(at(0), Some(at(3_600_000)), WAIT),
            Next::Receive(WAIT),
            "never longer than the configured wait"
        );
        assert_eq!(
            next_step(at(0), Some(at(5_000)), Duration::ZERO),
            Next::Receive(Duration::ZERO),
            "short polling stays short"
        );
    }

    #[test]
    fn under_a_second_ahead_it_pauses_then_confirms_with_a_short_wait() {
        assert_eq!(
            next_step(at(0), Some(at(999)), WAIT),
            Next::PauseUntil(at(999))
        );
        assert_eq!(
            next_step(at(999), Some(at(999)), WAIT),
            Next::Receive(CONFIRM_WAIT),
            "the confirming receive starts at or after the wanted instant"
        );
        assert_eq!(
            next_step(at(60_000), Some(at(999)), WAIT),
            Next::Receive(CONFIRM_WAIT)
        );
    }
}
