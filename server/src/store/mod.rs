//! State: watches, their counters, the keys they have seen and their event
//! logs. [`Store`] is the only way the rest of the service reads or changes
//! state, and every call is scoped to a tenant. Backends: [`sqlite`] (the
//! embedded default), [`dynamodb`] (shared by many replicas) and [`memory`]
//! (DynamoDB's semantics in one process, for cluster tests). In front of
//! the backend, outermost first: [`publishing`] (hands every committed event
//! to the hub, once), [`cached`] (SQLite only: a watch this process wrote is
//! read back from memory) and [`measured`] (traces and times each write).
//!
//! A store assigns each event its `seq` (the watch's `last_seq + 1`) in the
//! same transaction that changes the watch, so the log has no gaps and every
//! committed change is in it.
//!
//! What a change does is decided once, in `rules` (the new watch, guards,
//! `seq`s, how a notification counts, the outbox entries): a backend reads,
//! asks those rules, and writes the result in its own transaction; it never
//! re-decides any of it.
//!
//! The outbox: when [`Store::apply`] appends an event the watch's notify
//! targets want, it writes one [`Delivery`] per target in the same
//! transaction ([`outbox_for`]), so a decision that committed is always
//! delivered, even after a crash. The delivery task claims due entries with a
//! lease ([`Store::claim_deliveries`]) and records each attempt
//! ([`Store::finish_delivery`]), fenced by that lease.
//!
//! Counting: a watch keeps a seen record per activity kind and key, holding
//! one of the key's sequencers, and one per further distinct sequencer of the
//! key; [`KeyEvent`] says how a notification counts against them. The
//! counters are a function of which notifications were recorded, never of
//! their order or of redeliveries. A created key's seen record also keeps
//! the size, event time and generation of its first counted notification:
//! the watch's manifest, which [`Store::list_objects`] pages in key order.
//!
//! Errors: each backend turns its own errors into a [`StoreError`] where it
//! meets them, classified; no backend error type leaves this module.

pub mod cached;
pub mod cluster_table;
pub mod dynamodb;
pub mod measured;
pub mod memory;
pub mod publishing;
mod rules;
pub mod sqlite;

pub use cluster_table::{ClusterTable, ClusterView, LeaseItem, ReplicaItem, RouteEntry, shard_of};
pub use rules::{KeyEvent, outbox_for, sequencer_identity};

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    error::Error,
    watch::{
        EventKind, Labels, Lifecycle, NotifyTarget, Policy, Source, TenantId, TraceContext, Watch,
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

/// The retry hint when the store is out of space: freeing it takes a person.
pub const FULL_RETRY: Duration = Duration::from_secs(30);
/// The retry hint when the store is busy, throttled or unreachable.
pub const BUSY_RETRY: Duration = Duration::from_secs(1);

/// What a store condition means to a caller: a full disk is exhausted
/// space, contention and outages pass (UNAVAILABLE with a hint), a write
/// fenced off by another replica is retried there; anything else is a bug
/// or damage (logged when it reaches a caller, which hears nothing of it).
impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => Error::unavailable("the server is shutting down"),
            StoreError::Full(_) => {
                tracing::warn!(error = %e, "store failure");
                Error::ResourceExhausted {
                    message: format!("{e}; retry once space is freed"),
                    retry_after: Some(FULL_RETRY),
                }
            }
            StoreError::Busy(_) | StoreError::Unavailable(_) | StoreError::Fenced { .. } => {
                tracing::warn!(error = %e, "store failure");
                Error::Unavailable {
                    message: format!("{e}; retry"),
                    retry_after: Some(BUSY_RETRY),
                }
            }
            StoreError::Corrupt(_) | StoreError::Internal(_) | StoreError::Unsupported(_) => {
                Error::Internal(format!("store failure: {e}"))
            }
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A watch to create.
#[derive(Clone, Debug)]
pub struct NewWatch {
    pub tenant: TenantId,
    pub id: WatchId,
    pub source: Source,
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
    /// The creation of the watch's marker object (`policy.marker`): counted
    /// in `marker_count`, never as an object.
    Marker,
}

/// One notification routed to one watch.
#[derive(Clone, Debug)]
pub struct Activity {
    pub tenant: TenantId,
    pub watch_id: WatchId,
    pub kind: ActivityKind,
    pub key: String,
    /// S3's per-key ordering token (see [`sequencer_identity`]); empty when the notification had none.
    pub sequencer: String,
    /// The object's size in bytes, as the notification (or listing) told it; 0 when it did not.
    pub size: u64,
    /// The notification's `eventTime` (a listing's `LastModified`), when it had one.
    pub event_time: Option<Timestamp>,
}

/// One object of a watch's manifest: a created key as its seen record keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub key: String,
    /// The size the key's first counted notification carried.
    pub size: u64,
    /// The sequencer the seen record holds (empty when none was told).
    pub sequencer: String,
    pub event_time: Option<Timestamp>,
    /// The generation the key was first counted in.
    pub generation: u32,
    /// When the key was first counted (its first notification's arrival, or
    /// the listing that found it); `None` for keys counted before it was kept.
    pub recorded_at: Option<Timestamp>,
    /// Whether a removal of the key was recorded.
    pub removed: bool,
}

/// A page of [`Store::list_objects`].
#[derive(Clone, Debug, Default)]
pub struct ObjectsQuery {
    /// Only keys first counted in this generation; `None`: every key.
    pub generation: Option<u32>,
    /// Keys after this one (byte order of their UTF-8), the previous page's last.
    pub after: Option<String>,
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Accepted: the counters moved (by one).
    Counted,
    /// An event already counted (see [`KeyEvent`]): the counters did not move.
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

/// A lifecycle change of one watch, as [`Store::apply`] takes it.
#[derive(Clone, Debug)]
pub struct Change {
    pub tenant: TenantId,
    pub id: WatchId,
    /// What the watch must still be for the change to apply.
    pub guard: Guard,
    pub lifecycle: Lifecycle,
    /// Appended to its log, each with the next `seq`.
    pub events: Vec<EventKind>,
    pub now: Timestamp,
    /// The lease the write needs (a replica of a cluster).
    pub fence: Option<Fence>,
}

impl Change {
    pub fn new(
        tenant: &TenantId,
        id: &WatchId,
        guard: Guard,
        lifecycle: Lifecycle,
        events: Vec<EventKind>,
        now: Timestamp,
    ) -> Self {
        Self {
            tenant: tenant.clone(),
            id: id.clone(),
            guard,
            lifecycle,
            events,
            now,
            fence: None,
        }
    }

    /// Written only while `fence` holds.
    pub fn fenced(self, fence: Fence) -> Self {
        Self {
            fence: Some(fence),
            ..self
        }
    }

    pub fn key(&self) -> crate::watch::WatchKey {
        crate::watch::WatchKey {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
        }
    }
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

    /// Sets the watch's lifecycle and appends the change's events, if its
    /// guard holds (and, with a fence, only while that lease does: refused
    /// with [`StoreError::Fenced`] otherwise; a store that cannot fence
    /// refuses every fenced change). `Err`s only on failure; a missing watch
    /// is `Ok(None)`.
    async fn apply(&self, change: Change) -> Result<Option<Applied>>;

    /// The watches of `keys` that exist, strongly consistent (any order,
    /// each once however often it is asked for).
    async fn watches(&self, keys: &[crate::watch::WatchKey]) -> Result<Vec<Watch>> {
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        let mut out = Vec::with_capacity(unique.len());
        for key in unique {
            out.extend(self.get_watch(&key.tenant, &key.id).await?);
        }
        Ok(out)
    }

    /// Which of `keys` the watch counted as created objects (in any
    /// generation), in the order of `keys`.
    async fn counted_keys(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>>;

    /// Up to `query.limit` created keys of the watch, in byte order of the
    /// key, after `query.after`: a page of its manifest, read without
    /// holding the rest. Keyed by key, so pages stay consistent while keys
    /// are added. An unknown watch has none.
    async fn list_objects(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>>;

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
    /// count into it (SQLite: the further sequencers of its keys, keeping the
    /// seen keys its manifest reads; DynamoDB: every item gets its TTL).
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
    use super::{Error, StoreError};

    fn status(e: StoreError) -> tonic::Status {
        Error::from(e).into()
    }

    fn pushback_ms(status: &tonic::Status) -> Option<String> {
        status
            .metadata()
            .get(crate::error::RETRY_PUSHBACK_HEADER)
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
