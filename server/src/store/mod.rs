//! State: watches, their counters, the keys they have seen and their event
//! logs. [`Store`] is the only way the rest of the service reads or changes
//! state, and every call is scoped to a tenant. Backends: [`sqlite`] (the
//! embedded default) and [`dynamodb`] (shared by many replicas).
//!
//! A store assigns each event its `seq` (the watch's `last_seq + 1`) in the
//! same transaction that changes the watch, so the log has no gaps and every
//! committed change is in it.
//!
//! The outbox: when [`Store::apply`] appends an event the watch's notify
//! targets want, it writes one [`Delivery`] per target in the same
//! transaction ([`outbox_for`]), so a decision that committed is always
//! delivered, even after a crash. The delivery task claims due entries with a
//! lease ([`Store::claim_deliveries`]) and records each attempt
//! ([`Store::finish_delivery`]), fenced by that lease.
//!
//! Errors: each backend turns its own errors into a [`StoreError`] where it
//! meets them, classified; no backend error type leaves this module.

pub mod dynamodb;
pub mod measured;
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    policy::Policy,
    watch::{
        Bucket, EventKind, Labels, Lifecycle, NotifyTarget, Prefix, TenantId, TraceContext, Watch,
        WatchEvent, WatchId, WatchState,
    },
};

/// What went wrong in the store. Backends classify their errors where they
/// convert them: a condition that passes (no space, contention, an outage) is
/// [`Full`](Self::Full), [`Busy`](Self::Busy) or
/// [`Unavailable`](Self::Unavailable), and their text names the cause in words
/// safe to show a caller; anything else is a bug or damage.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// No space left for the store's data (a full disk); a write fails until
    /// space is freed, and nothing of it was kept.
    #[error("the store is out of space: {0}")]
    Full(String),
    /// Too much at once: locked, throttled or conflicting writes. A retry
    /// shortly after is likely to succeed.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// The store could not be reached or failed to answer (I/O errors,
    /// network failures, timeouts, the service's own failures).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other failure of the backend: a bug, not a condition to wait out.
    #[error("store failure: {0}")]
    Internal(String),
    #[error("the store is closed")]
    Closed,
    /// The write was fenced off: another replica holds the shard's lease now.
    #[error("the lease of shard {shard} was lost; another replica owns it")]
    Fenced { shard: u32 },
    #[error("{0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Whether waiting (or freeing space) can make the same call succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Full(_) | Self::Busy(_) | Self::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A watch to create.
#[derive(Clone, Debug)]
pub struct NewWatch {
    pub tenant: TenantId,
    pub id: WatchId,
    pub bucket: Bucket,
    pub prefix: Prefix,
    pub policy: Policy,
    pub labels: Labels,
    pub client_token: Option<String>,
    pub created_at: Timestamp,
    pub trace: TraceContext,
}

/// The result of [`Store::create_watch`].
#[derive(Clone, Debug)]
pub enum Created {
    /// A new watch, with its STARTED event.
    New {
        watch: Watch,
        events: Vec<WatchEvent>,
    },
    /// The tenant already has a watch with this client token.
    Existing(Watch),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    Created,
    Removed,
}

/// One notification routed to one watch.
#[derive(Clone, Debug)]
pub struct Activity {
    pub tenant: TenantId,
    pub watch_id: WatchId,
    pub kind: ActivityKind,
    pub key: String,
    /// S3's per-key ordering token (see [`is_later`]); empty when the notification had none.
    pub sequencer: String,
}

/// Whether a notification with `sequencer` is a later event for its key than
/// the one recorded with `stored`. S3 sequencers are hex strings that order
/// the events of one key; the shorter is padded with zeros on the right before
/// comparing. A notification without one is never taken as later: without a
/// sequencer a redelivery and an overwrite look the same, and only the
/// redelivery is common.
pub fn is_later(sequencer: &str, stored: &str) -> bool {
    if sequencer.is_empty() {
        return false;
    }
    let width = sequencer.len().max(stored.len());
    let pad = |s: &str| format!("{:0<width$}", s.to_ascii_uppercase());
    pad(sequencer) > pad(stored)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Accepted: the counters moved.
    Counted,
    /// Already seen (same key, no later sequencer): nothing changed.
    Duplicate,
    /// The watch no longer takes activity (finished, or gone).
    NotLive,
}

#[derive(Clone, Debug, Default)]
pub struct RecordOutcome {
    /// One per activity, in order.
    pub results: Vec<Recorded>,
    /// Each watch whose counters moved, after the change, with its PROGRESS event.
    pub updated: Vec<(Watch, Vec<WatchEvent>)>,
}

/// What a lifecycle change expects the watch to still be; a store applies the
/// change only when all of it holds (optimistic concurrency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    pub state: WatchState,
    pub generation: u32,
    /// `None` accepts any counters (cancellation does not care).
    pub activity: Option<u64>,
}

impl Guard {
    /// Expects `watch` exactly as it is, counters included.
    pub fn exact(watch: &Watch) -> Self {
        Self {
            state: watch.lifecycle.state,
            generation: watch.lifecycle.generation,
            activity: Some(watch.counters.activity()),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub state: Option<WatchState>,
    pub labels: Labels,
    pub limit: usize,
    /// Start after this watch (the previous page's last).
    pub after: Option<WatchId>,
}

/// Proof that the writer still holds the lease of the watch's shard (see
/// [`crate::cluster`]): a fenced write also requires the lease item to name
/// `owner` at `version`, so a replica that lost the lease cannot write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub shard: u32,
    pub owner: String,
    pub version: u64,
}

#[derive(Clone, Debug)]
pub enum Applied {
    Done {
        watch: Watch,
        events: Vec<WatchEvent>,
    },
    /// The guard did not hold; here is the watch as it is now.
    Conflict(Watch),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
        }
    }
}

/// One event on its way to one notify target: an outbox entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub tenant: TenantId,
    pub watch_id: WatchId,
    /// The event delivered.
    pub seq: u64,
    pub generation: u32,
    /// Index of the target in the watch's `policy.notify.targets`.
    pub target_index: u32,
    pub target: NotifyTarget,
    /// The document sent, fixed when the event was decided, so every attempt
    /// sends (and signs) the same bytes.
    pub body: String,
    /// The W3C trace context of the event, sent as `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub created_at: Timestamp,
    /// When the next attempt is due; while an attempt runs, when its lease ends.
    pub next_attempt_at: Timestamp,
    #[serde(default)]
    pub last_status: String,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
}

impl Delivery {
    /// `watch_id:generation:seq`: the same on every attempt and every target,
    /// so a receiver can drop repeats.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.watch_id, self.generation, self.seq)
    }
}

/// The outbox entries for `events` just appended to `watch` (after the
/// change): one per notify target for each event the targets want.
pub fn outbox_for(watch: &Watch, events: &[WatchEvent], now: Timestamp) -> Vec<Delivery> {
    let notify = &watch.policy.notify;
    let mut out = Vec::new();
    for event in events.iter().filter(|e| notify.wants(&e.kind)) {
        let body = crate::delivery::body(watch, event);
        for (i, target) in notify.targets.iter().enumerate() {
            out.push(Delivery {
                tenant: watch.tenant.clone(),
                watch_id: watch.id.clone(),
                seq: event.seq,
                generation: event.generation,
                target_index: u32::try_from(i).unwrap_or(u32::MAX),
                target: target.clone(),
                body: body.clone(),
                traceparent: crate::delivery::traceparent_of(watch),
                state: DeliveryState::Pending,
                attempts: 0,
                created_at: now,
                next_attempt_at: now,
                last_status: String::new(),
                last_error: String::new(),
                finished_at: None,
            });
        }
    }
    out
}

/// What [`Store::claim_deliveries`] found.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// Due entries, now leased: `next_attempt_at` is the lease's end.
    pub deliveries: Vec<Delivery>,
    /// The earliest `next_attempt_at` of the pending entries left unclaimed.
    pub next_due: Option<Timestamp>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a watch with its STARTED event, unless the tenant already has
    /// one with the same client token.
    async fn create_watch(&self, new: NewWatch) -> Result<Created>;

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>>;

    /// The tenant's watches, newest first.
    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>>;

    /// Records routed activities exactly once each, durably, at `now`.
    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome>;

    /// Sets the watch's lifecycle and appends `events`, if `guard` holds.
    /// `Err`s only on failure; a missing watch is `Ok(None)`.
    async fn apply(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        guard: Guard,
        lifecycle: Lifecycle,
        events: Vec<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Applied>>;

    /// [`Store::apply`], refused with [`StoreError::Fenced`] unless `fence`
    /// still holds. Only a store shared by replicas can fence.
    #[allow(clippy::too_many_arguments)]
    async fn apply_fenced(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        guard: Guard,
        lifecycle: Lifecycle,
        events: Vec<EventKind>,
        now: Timestamp,
        fence: &Fence,
    ) -> Result<Option<Applied>> {
        let _ = (tenant, id, guard, lifecycle, events, now, fence);
        Err(StoreError::Unsupported(
            "this store cannot fence writes; clusters need --store dynamodb",
        ))
    }

    /// The watches of `keys` that exist, strongly consistent (any order).
    async fn watches(&self, keys: &[crate::watch::WatchKey]) -> Result<Vec<Watch>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.extend(self.get_watch(&key.tenant, &key.id).await?);
        }
        Ok(out)
    }

    /// Up to `limit` events with `seq > after_seq`, in order.
    async fn events_after(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<WatchEvent>>;

    /// Every watch that still takes activity at `now` (ACTIVE, or completed
    /// with its late window open), for the observer to arm at startup.
    async fn live_watches(&self, now: Timestamp) -> Result<Vec<Watch>>;

    /// Releases what a finished watch no longer needs once no activity can
    /// count into it (its seen keys; on DynamoDB every item gets its TTL).
    async fn retire(&self, tenant: &TenantId, id: &WatchId, now: Timestamp) -> Result<()>;

    /// Leases up to `limit` pending deliveries due at `now` until `lease_until`
    /// (no one else claims them before then; a crashed attempt is retried after).
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed>;

    /// Records an attempt: writes `delivery` (its new state, attempts, status)
    /// if it is still leased until `lease` (else changes nothing: `Ok(None)`),
    /// appending `event` to the watch's log in the same transaction.
    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        event: Option<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Vec<WatchEvent>>>;

    /// The watch's deliveries, by event then target.
    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>>;

    /// Makes everything committed durable and stops accepting writes.
    async fn close(&self) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::is_later;

    #[test]
    fn sequencers_order_events_of_one_key() {
        assert!(is_later("0055AED6DCD90281E6", "0055AED6DCD90281E5"));
        assert!(
            !is_later("0055AED6DCD90281E5", "0055AED6DCD90281E5"),
            "a redelivery"
        );
        assert!(
            !is_later("0055AED6DCD90281E4", "0055AED6DCD90281E5"),
            "an older event arriving late"
        );
        assert!(
            is_later("0055AED6DCD90281E501", "0055AED6DCD90281E5"),
            "padded on the right"
        );
        assert!(
            !is_later("0055AED6DCD90281E500", "0055AED6DCD90281E5"),
            "equal once padded"
        );
        assert!(
            is_later("0055aed6dcd90281e6", "0055AED6DCD90281E5"),
            "case does not matter"
        );
        assert!(is_later("01", ""), "a sequencer is later than none");
        assert!(!is_later("", "01"));
        assert!(!is_later("", ""));
    }
}
