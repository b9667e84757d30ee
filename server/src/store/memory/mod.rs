//! The in-memory store: one process's replicas share one
//! [`MemoryStore`] (cluster tests, the deterministic simulation). It keeps
//! the DynamoDB store's semantics where the design relies on them, not
//! SQLite's:
//!
//! - every change is read, then written as one all-or-nothing transaction
//!   of conditioned items: the watch's revision as read (a new
//!   watch: its absence), the seen items as read, a client token's absence,
//!   a fenced change's lease (owner and version at commit), a delivery's
//!   lease. A cancelled transaction reports which conditions failed;
//!   callers read again and retry, as the DynamoDB store
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
//! This module is the [`Store`] impl: creating watches, lifecycle changes
//! (fenced by a shard lease), reading watches and events, and retiring.
//! The rest, each in its own file: `transact` (the tables and the
//! conditioned transaction), `record` (counting activity, the manifest),
//! `deliveries` (the outbox's claims and attempts) and `cluster` (leases,
//! replicas, routes, the lagging index). Nothing expires: retired watches
//! and finished deliveries stay readable for the process's life.

mod cluster;
mod deliveries;
mod record;
#[cfg(test)]
mod tests;
mod transact;

use self::transact::{Change, Check, Op, Tables, Write};

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    Activity, Applied, Change as LifecycleChange, Claimed, ClusterTable, Created, Delivery, Fence,
    ListQuery, ManifestEntry, NewWatch, ObjectsQuery, RecordOutcome, Result, RouteEntry, Store,
    StoreError, rules, shard_of,
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
    /// Its place among every lease change and commit (the store's one order).
    pub order: u64,
    pub at: Instant,
    pub shard: u32,
    /// Empty when the change freed it.
    pub owner: String,
    pub version: u64,
}

/// One committed [`Store::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Its place among every lease change and commit (the store's one order).
    pub order: u64,
    pub at: Instant,
    pub key: WatchKey,
    /// The lease it was written under, if any.
    pub fence: Option<Fence>,
    /// The names of the events it appended, in order.
    pub events: Vec<&'static str>,
}

/// Dynamo-like tables in memory; clones of the handle share them.
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
    shards: u32,
    index_lag: Duration,
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
                expected_revision: None,
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
                    .map(|(_, (w, _))| w)
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
            let Some((mut watch, revision)) = self.request(|t| t.watch_at(&key)).await else {
                return Ok(None);
            };
            if !guard.holds(&watch) {
                return Ok(Some(Applied::Conflict(watch)));
            }
            watch.lifecycle = lifecycle.clone();
            // With a fence, the write also needs the caller's lease of the watch's shard.
            let extra = fence.iter().cloned().map(|f| Op::check(Check::Lease(f)));
            let change = Change {
                watch,
                expected_revision: Some(revision),
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
