//! The in-memory store: one process's replicas share one
//! [`MemoryStore`] (cluster tests, the deterministic simulation). It keeps
//! the DynamoDB store's semantics where the design relies on them, not
//! SQLite's:
//!
//! - every change is read, then written as one all-or-nothing transaction
//!   of conditioned items ([`Op`]): the watch's `last_seq` as read (a new
//!   watch: its absence), the seen items as read, a client token's absence,
//!   a fenced change's lease (owner and version at commit), a delivery's
//!   lease. A cancelled transaction reports which conditions failed
//!   ([`Cancelled`]); callers read again and retry, as the DynamoDB store
//!   does, and a change whose fence failed is [`StoreError::Fenced`];
//! - every request takes the lock, does its work, drops the lock and then
//!   yields (`tokio::task::yield_now`, the network's round trip), so
//!   concurrent replicas interleave between a read and the write based on it.
//!   No lock is held across an await;
//! - reads are strongly consistent, except the `live` index
//!   ([`ClusterTable::live_in_shard`], and so [`Store::live_watches`]): a
//!   write shows there only `index_lag` after it committed, measured on
//!   tokio's clock. As in DynamoDB, a watch is in the index from its
//!   creation until it is retired, and any later put of it adds it again.
//!
//! What a change does is the store rules' judgement (`rules`); this module
//! only reads, asks them, and commits. Ordered maps throughout: nothing
//! depends on hash order. Also kept, for a simulation's checker: every
//! committed lease change ([`MemoryStore::lease_history`]) and every
//! committed [`Store::apply`] ([`MemoryStore::commits`]).
//!
//! The rest, each in its own file: `record` (counting activity, the
//! manifest), `deliveries` (the outbox's claims and attempts) and `cluster`
//! (leases, replicas, routes, the lagging index). Nothing expires: retired
//! watches and finished deliveries stay readable for the process's life.

mod cluster;
mod deliveries;
mod record;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    Activity, Applied, Change as LifecycleChange, Claimed, ClusterTable, Created, Delivery, Fence,
    LeaseItem, ListQuery, ManifestEntry, NewWatch, ObjectsQuery, RecordOutcome, ReplicaItem,
    Result, RouteEntry, Store, StoreError, rules, shard_of,
};
use crate::{
    clock::Timestamp,
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId, WatchKey},
};

/// Attempts at one change before giving up on a hot watch (as DynamoDB's store).
const MAX_ATTEMPTS: usize = 20;

/// One committed change of a shard's lease (its creation, a take, a release).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseChange {
    pub at: Instant,
    pub shard: u32,
    /// Empty when the change freed it.
    pub owner: String,
    pub version: u64,
}

/// One committed [`Store::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub at: Instant,
    pub key: WatchKey,
    /// The lease it was written under, if any.
    pub fence: Option<Fence>,
    /// The names of the events it appended, in order.
    pub events: Vec<&'static str>,
}

/// A seen item: the watch, the activity kind (0 created, 1 removed, 2
/// marker) and the key.
type SeenId = (WatchKey, u8, String);

fn seen_id(a: &Activity) -> SeenId {
    let kind = match a.kind {
        super::ActivityKind::Created => 0,
        super::ActivityKind::Removed => 1,
        super::ActivityKind::Marker => 2,
    };
    (
        WatchKey {
            tenant: a.tenant.clone(),
            id: a.watch_id.clone(),
        },
        kind,
        a.key.clone(),
    )
}

/// What a seen item keeps: one of the key's sequencers (an identity) and
/// its first counted notification.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    sequencer: String,
    size: u64,
    event_time: Option<Timestamp>,
    generation: u32,
    recorded_at: Timestamp,
}

/// An outbox entry's identity: its watch, event and target.
type DeliveryId = (WatchKey, u64, u32);

fn delivery_id(d: &Delivery) -> DeliveryId {
    (
        WatchKey {
            tenant: d.tenant.clone(),
            id: d.watch_id.clone(),
        },
        d.seq,
        d.target_index,
    )
}

/// The condition of one transaction item, checked at commit.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Check {
    WatchAbsent(WatchKey),
    /// The watch exists with this `last_seq`.
    WatchAt(WatchKey, u64),
    /// The lease names the fence's owner at its version.
    Lease(Fence),
    TokenAbsent(TenantId, String),
    SeenAbsent(SeenId),
    /// The seen item holds this sequencer.
    SeenHolds(SeenId, String),
    PairAbsent(SeenId, String),
    /// The entry is pending and leased until this instant.
    Leased(DeliveryId, Timestamp),
}

/// What one transaction item writes.
#[derive(Clone, Debug)]
enum Write {
    Watch(Watch),
    Event(WatchEvent),
    Delivery(Delivery),
    Seen(SeenId, Seen),
    Pair(SeenId, String),
    Token(TenantId, String, WatchId),
    Route(RouteEntry),
}

/// One item of a transaction: a condition, a write, or both.
#[derive(Clone, Debug)]
struct Op {
    check: Option<Check>,
    write: Option<Write>,
}

impl Op {
    fn put(check: Check, write: Write) -> Self {
        Self {
            check: Some(check),
            write: Some(write),
        }
    }

    fn check(check: Check) -> Self {
        Self {
            check: Some(check),
            write: None,
        }
    }

    fn write(write: Write) -> Self {
        Self {
            check: None,
            write: Some(write),
        }
    }
}

/// A cancelled transaction: the conditions that failed, in item order.
#[derive(Debug)]
struct Cancelled {
    failed: Vec<Check>,
}

impl Cancelled {
    fn lease_failed(&self) -> bool {
        self.failed.iter().any(|c| matches!(c, Check::Lease(_)))
    }

    fn delivery_lease_failed(&self) -> bool {
        self.failed.iter().any(|c| matches!(c, Check::Leased(..)))
    }
}

/// An update of the `live` index: visible from `at`; `None` removes.
type IndexUpdate = (Instant, Option<Watch>);

/// Everything stored, behind one lock.
#[derive(Default)]
struct Tables {
    watches: BTreeMap<WatchKey, Watch>,
    events: BTreeMap<WatchKey, BTreeMap<u64, WatchEvent>>,
    seen: BTreeMap<SeenId, Seen>,
    pairs: BTreeSet<(SeenId, String)>,
    tokens: BTreeMap<(TenantId, String), WatchId>,
    outbox: BTreeMap<DeliveryId, Delivery>,
    /// Route items by creation instant (ms), then watch.
    routes: BTreeMap<(i64, WatchKey), RouteEntry>,
    /// The `live` index by shard, each watch's updates oldest first.
    index: BTreeMap<u32, BTreeMap<WatchKey, VecDeque<IndexUpdate>>>,
    recorded_shards: Option<u32>,
    leases: BTreeMap<u32, LeaseItem>,
    replicas: BTreeMap<String, ReplicaItem>,
    routes_version: u64,
    lease_history: Vec<LeaseChange>,
    commits: Vec<Commit>,
}

impl Tables {
    fn watch(&self, key: &WatchKey) -> Option<Watch> {
        self.watches.get(key).cloned()
    }

    fn holds(&self, check: &Check) -> bool {
        match check {
            Check::WatchAbsent(key) => !self.watches.contains_key(key),
            Check::WatchAt(key, seq) => self.watches.get(key).is_some_and(|w| w.last_seq == *seq),
            Check::Lease(fence) => self
                .leases
                .get(&fence.shard)
                .is_some_and(|l| l.owner == fence.owner && l.version == fence.version),
            Check::TokenAbsent(tenant, token) => {
                !self.tokens.contains_key(&(tenant.clone(), token.clone()))
            }
            Check::SeenAbsent(id) => !self.seen.contains_key(id),
            Check::SeenHolds(id, sequencer) => {
                self.seen.get(id).is_some_and(|s| &s.sequencer == sequencer)
            }
            Check::PairAbsent(id, sequencer) => {
                !self.pairs.contains(&(id.clone(), sequencer.clone()))
            }
            Check::Leased(id, lease) => self.outbox.get(id).is_some_and(|d| {
                d.state == super::DeliveryState::Pending && d.next_attempt_at == *lease
            }),
        }
    }

    /// Queues an index update of `watch`'s item, visible from `at`.
    fn index(&mut self, shard: u32, key: WatchKey, at: Instant, watch: Option<Watch>) {
        self.index
            .entry(shard)
            .or_default()
            .entry(key)
            .or_default()
            .push_back((at, watch));
    }
}

/// Dynamo-like tables in memory; clones of the handle share them.
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
    shards: u32,
    index_lag: Duration,
}

/// A watch read and the events to append, as one conditioned transaction
/// (see [`MemoryStore::commit`]).
struct Change {
    watch: Watch,
    /// `None`: a new watch.
    expected_last_seq: Option<u64>,
    events: Vec<EventKind>,
    extra: Vec<Op>,
    now: Timestamp,
}

impl MemoryStore {
    /// An empty store splitting watches into `shards` shards, its index without lag.
    pub fn new(shards: u32) -> Self {
        Self {
            tables: Arc::default(),
            shards: shards.max(1),
            index_lag: Duration::ZERO,
        }
    }

    /// The same store with its `live` index lagging each write by `lag`.
    pub fn with_index_lag(mut self, lag: Duration) -> Self {
        self.index_lag = lag;
        self
    }

    /// Another handle on the same tables splitting watches into `shards`:
    /// a replica started with another shard count.
    pub fn sharing_with_shards(&self, shards: u32) -> Self {
        Self {
            tables: Arc::clone(&self.tables),
            shards: shards.max(1),
            index_lag: self.index_lag,
        }
    }

    /// Every committed lease change, in commit order.
    pub fn lease_history(&self) -> Vec<LeaseChange> {
        self.lock().lease_history.clone()
    }

    /// Every committed [`Store::apply`], in commit order.
    pub fn commits(&self) -> Vec<Commit> {
        self.lock().commits.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request: `f` runs on the tables under the lock, then the caller
    /// yields (the response's way back) before it sees the answer.
    async fn request<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        let out = f(&mut self.lock());
        tokio::task::yield_now().await;
        out
    }

    /// Writes `ops` if every condition holds, else nothing. A committed
    /// `apply` is recorded for [`Self::commits`] when `audit` says so.
    async fn transact(
        &self,
        ops: Vec<Op>,
        audit: Option<(WatchKey, Option<Fence>)>,
    ) -> std::result::Result<(), Cancelled> {
        self.request(|t| {
            let failed: Vec<Check> = ops
                .iter()
                .filter_map(|op| op.check.as_ref())
                .filter(|check| !t.holds(check))
                .cloned()
                .collect();
            if !failed.is_empty() {
                return Err(Cancelled { failed });
            }
            let now = Instant::now();
            let mut appended = Vec::new();
            for write in ops.into_iter().filter_map(|op| op.write) {
                match write {
                    Write::Watch(watch) => {
                        let key = watch.key();
                        let shard = shard_of(&watch.id, self.shards);
                        t.index(
                            shard,
                            key.clone(),
                            now + self.index_lag,
                            Some(watch.clone()),
                        );
                        t.watches.insert(key, watch);
                    }
                    Write::Event(event) => {
                        appended.push(event.kind.name());
                        let key = WatchKey {
                            tenant: event.tenant.clone(),
                            id: event.watch_id.clone(),
                        };
                        t.events.entry(key).or_default().insert(event.seq, event);
                    }
                    Write::Delivery(d) => {
                        t.outbox.insert(delivery_id(&d), d);
                    }
                    Write::Seen(id, seen) => {
                        t.seen.insert(id, seen);
                    }
                    Write::Pair(id, sequencer) => {
                        t.pairs.insert((id, sequencer));
                    }
                    Write::Token(tenant, token, id) => {
                        t.tokens.insert((tenant, token), id);
                    }
                    Write::Route(route) => {
                        let at = route.created_at.as_millis();
                        t.routes.insert((at, route.key.clone()), route);
                    }
                }
            }
            if let Some((key, fence)) = audit {
                t.commits.push(Commit {
                    at: now,
                    key,
                    fence,
                    events: appended,
                });
            }
            Ok(())
        })
        .await
    }

    /// Writes `change` if the watch's `last_seq` is still the one read (a
    /// new watch: if it does not exist), with its events (their `seq`s from
    /// [`rules::sequence`]), their outbox entries and `extra`.
    async fn commit(
        &self,
        change: Change,
        audit: Option<Option<Fence>>,
    ) -> std::result::Result<(Watch, Vec<WatchEvent>), Cancelled> {
        let Change {
            mut watch,
            expected_last_seq,
            events,
            extra,
            now,
        } = change;
        let appended = rules::sequence(&mut watch, events, now);
        let key = watch.key();
        let check = match expected_last_seq {
            Some(seq) => Check::WatchAt(key.clone(), seq),
            None => Check::WatchAbsent(key.clone()),
        };
        let mut ops = vec![Op::put(check, Write::Watch(watch.clone()))];
        ops.extend(appended.iter().cloned().map(|e| Op::write(Write::Event(e))));
        ops.extend(
            rules::outbox_for(&watch, &appended, now)
                .into_iter()
                .map(|d| Op::write(Write::Delivery(d))),
        );
        ops.extend(extra);
        self.transact(ops, audit.map(|fence| (key, fence))).await?;
        Ok((watch, appended))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        let token = new.client_token.clone();
        let fresh = new.into_watch();
        let key = fresh.key();
        for _ in 0..MAX_ATTEMPTS {
            if let Some(token) = &token {
                let existing = self
                    .request(|t| {
                        let id = t.tokens.get(&(key.tenant.clone(), token.clone()))?;
                        Some(t.watch(&WatchKey {
                            tenant: key.tenant.clone(),
                            id: id.clone(),
                        }))
                    })
                    .await;
                if let Some(watch) = existing {
                    let watch = watch.ok_or_else(|| {
                        StoreError::Corrupt("client token names a missing watch".into())
                    })?;
                    return Ok(Created::Existing(watch));
                }
            }
            let watch = fresh.clone();
            let route = RouteEntry {
                key: key.clone(),
                source: watch.source.clone(),
                marker: watch.marker_key().map(str::to_owned),
                created_at: watch.created_at,
            };
            let mut extra = vec![Op::write(Write::Route(route))];
            if let Some(token) = &token {
                extra.push(Op::put(
                    Check::TokenAbsent(key.tenant.clone(), token.clone()),
                    Write::Token(key.tenant.clone(), token.clone(), key.id.clone()),
                ));
            }
            let change = Change {
                events: vec![rules::started(&watch)],
                now: watch.created_at,
                watch,
                expected_last_seq: None,
                extra,
            };
            if let Ok((watch, events)) = self.commit(change, None).await {
                return Ok(Created::New { watch, events });
            }
            // The token was taken concurrently: read it on the next round.
        }
        Err(StoreError::Busy(
            "could not create the watch: client token kept conflicting".into(),
        ))
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        let key = WatchKey {
            tenant: tenant.clone(),
            id: id.clone(),
        };
        Ok(self.request(|t| t.watch(&key)).await)
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        let found = self
            .request(|t| {
                t.watches
                    .iter()
                    .rev()
                    .filter(|(k, _)| &k.tenant == tenant)
                    .filter(|(k, _)| query.after.as_ref().is_none_or(|after| &k.id < after))
                    .map(|(_, w)| w)
                    .filter(|w| query.state.is_none_or(|s| w.lifecycle.state == s))
                    .filter(|w| query.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                    .take(query.limit)
                    .cloned()
                    .collect()
            })
            .await;
        Ok(found)
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        self.record_batch(activities, now).await
    }

    async fn apply(&self, change: LifecycleChange) -> Result<Option<Applied>> {
        let key = change.key();
        let LifecycleChange {
            guard,
            lifecycle,
            events,
            now,
            fence,
            ..
        } = change;
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut watch) = self.request(|t| t.watch(&key)).await else {
                return Ok(None);
            };
            if !guard.holds(&watch) {
                return Ok(Some(Applied::Conflict(watch)));
            }
            let expected = watch.last_seq;
            watch.lifecycle = lifecycle.clone();
            // With a fence, the write also needs the caller's lease of the watch's shard.
            let extra = fence.iter().cloned().map(|f| Op::check(Check::Lease(f)));
            let change = Change {
                watch,
                expected_last_seq: Some(expected),
                events: events.clone(),
                extra: extra.collect(),
                now,
            };
            match self.commit(change, Some(fence.clone())).await {
                Ok((watch, events)) => return Ok(Some(Applied::Done { watch, events })),
                Err(cancelled) if cancelled.lease_failed() => {
                    let shard = fence.as_ref().map_or(0, |f| f.shard);
                    return Err(StoreError::Fenced { shard });
                }
                // The watch moved: read it again.
                Err(_) => {}
            }
        }
        Err(StoreError::Busy(format!(
            "watch {} kept changing; gave up after {MAX_ATTEMPTS} attempts",
            key.id
        )))
    }

    async fn counted_keys(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>> {
        self.counted(tenant, id, keys).await
    }

    async fn list_objects(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>> {
        self.manifest_page(tenant, id, query).await
    }

    async fn events_after(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<WatchEvent>> {
        let key = WatchKey {
            tenant: tenant.clone(),
            id: id.clone(),
        };
        let events = self
            .request(|t| {
                let Some(log) = t.events.get(&key) else {
                    return Vec::new();
                };
                log.range(after_seq.saturating_add(1)..)
                    .take(limit.max(1))
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .await;
        Ok(events)
    }

    async fn live_watches(&self, _now: Timestamp) -> Result<Vec<Watch>> {
        let mut out = Vec::new();
        for shard in 0..self.shards {
            out.extend(ClusterTable::live_in_shard(self, shard).await?);
        }
        Ok(out)
    }

    /// Takes the watch out of the `live` index; everything else stays.
    async fn retire(&self, tenant: &TenantId, id: &WatchId, _now: Timestamp) -> Result<()> {
        let key = WatchKey {
            tenant: tenant.clone(),
            id: id.clone(),
        };
        let shard = shard_of(id, self.shards);
        self.request(|t| {
            if t.watches.contains_key(&key) {
                t.index(shard, key, Instant::now() + self.index_lag, None);
            }
        })
        .await;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed> {
        self.claim(now, lease_until, limit).await
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        event: Option<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Vec<WatchEvent>>> {
        self.finish(delivery, lease, event, now).await
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        self.deliveries_of(tenant, id).await
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
