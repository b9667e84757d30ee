//! The DynamoDB store: many replicas share one table. Single-table design,
//! tenant first in every partition key:
//!
//! | item | `pk` | `sk` | notes |
//! |---|---|---|---|
//! | watch | `W#{tenant}#{watch_id}` | `WATCH` | all fields (`filter`: the key filter as JSON, absent when none); `rev`, the count of its writes; `list_pk` = `T#{tenant}`, `list_sk` = watch id (GSI `by_tenant`, newest first); `live_shard` = `LIVE#{0..63}` until the watch is retired (sparse GSI `live`) |
//! | seen key | `W#{tenant}#{watch_id}` | `K#c#{key}` / `K#r#{key}` | `sequencer`: one of the key's (empty while only notifications without one told of it); `size`, `event_time` (ms, when told) and `generation` of its first counted notification (items written before them read as 0, none, 1); keys over 1000 bytes are stored as `K#c#~{sha256}` with the key in `key`. The `K#c#` items, in sort key order, are the manifest |
//! | seen sequencer | `W#{tenant}#{watch_id}` | `S#c#{len}#{sequencer}#{key}` / `S#r#…` | one per further distinct sequencer of a seen key; over 1000 bytes, `S#c#~{sha256}` |
//! | event | `W#{tenant}#{watch_id}` | `E#{seq:020}` | `time`, `generation`, `payload` (the event as JSON) |
//! | client token | `C#{tenant}#{token}` | `TOKEN` | `watch_id` |
//! | outbox entry | `W#{tenant}#{watch_id}` | `O#{seq:020}#{target:05}` | `record` (the delivery as JSON), `next_at`; `live_shard` = `OUTBOX` while pending (same sparse GSI `live`) |
//!
//! Every change to a watch is one `TransactWriteItems` conditioned on the
//! watch item's `rev` (bumped by every write of it) being what was read, so
//! concurrent writers (ingest on any replica, the observer) serialize on it,
//! a change appending no event is not lost to one based on an older read,
//! and the events it appends get gapless `seq`s; a cancelled transaction is
//! read again and retried. What a change does is the store rules'
//! judgement, checked on the watch as read (a lifecycle change's guard too:
//! the condition only says the watch did not move since).
//!
//! Expiry (the `expires_at` TTL): a watch whose life is bounded (a timeout,
//! no late window) has its items written with an expiry from the start,
//! its retention counted from a day past its timeout (kept on the watch
//! item as `items_expire_at`), so retiring it writes only its watch item.
//! Any other watch's items are written again with their expiry when it
//! retires, as are those of a bounded watch retired too late for theirs.
//!
//! This module is the [`Store`] impl: creating watches, lifecycle changes
//! (fenced by a shard lease in a cluster), reading watches and events, and
//! retiring. The rest, each in its own file: `codec` (items <-> domain),
//! `transact` (the conditioned transaction, batched reads, queries),
//! `record` (counting activity against the seen items, and the manifest),
//! `outbox` (claims and attempts), `table` (creating the table),
//! `error` (SDK errors as [`StoreError`]s: throttling and conflicts
//! `Busy`, an unreachable or failing service `Unavailable`) and `cluster`
//! (leases, replicas, routes). No SDK error type leaves this module.

mod cluster;
mod codec;
mod error;
mod outbox;
mod record;
mod table;
mod transact;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;

pub use codec::shard_of;

use self::{
    codec::{
        Item, corrupt, event_sk, get_n, get_s, item_event, item_source, item_watch, n, route_item,
        s, stored, token_item, token_pk, watch_pk,
    },
    error::{aws, built},
    transact::{Change, query_units},
};
use super::{
    Activity, Applied, Change as LifecycleChange, Claimed, ClusterTable, Created, Delivery,
    ListQuery, ManifestEntry, NewWatch, ObjectsQuery, RecordOutcome, Result, Store, StoreError,
    rules,
};
use crate::{
    clock::Timestamp,
    watch::{EventKind, TIMEOUT_GRACE, TenantId, Watch, WatchEvent, WatchId, WatchKey},
};

/// Shards of the `live` index and of observer ownership (`--shards`), unless configured.
pub const DEFAULT_SHARDS: u32 = 64;
/// Attempts at one change before giving up on a hot watch.
const MAX_ATTEMPTS: usize = 20;
pub const BY_TENANT_INDEX: &str = "by_tenant";
pub const LIVE_INDEX: &str = "live";
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// The watch item's record of the expiry its other items were written with.
const ITEMS_EXPIRY: &str = "items_expire_at";

/// Counts of what the store asked of DynamoDB, for cost reports.
#[derive(Debug, Default)]
pub struct DynamoStats {
    pub requests: AtomicU64,
    /// Items read or written by those requests.
    pub items: AtomicU64,
    /// Write capacity units by DynamoDB's rules (transactional writes: 2 per item per KiB).
    pub write_units: AtomicU64,
    /// Read capacity units by DynamoDB's rules (strongly consistent: 1 per 4 KiB).
    pub read_units: AtomicU64,
    /// Of `requests`, those spent on shard leases and replica heartbeats.
    pub lease_requests: AtomicU64,
    /// Of `requests`, those spent on routing new watches in a cluster:
    /// route refreshes, route version bumps and acknowledgements.
    pub route_requests: AtomicU64,
}

pub struct DynamoStore {
    client: Client,
    table: String,
    retention: Duration,
    /// Partitions of the `live` index; a watch's shard is also the shard
    /// whose lease owns its observer in a cluster.
    shards: u32,
    pub stats: DynamoStats,
}

impl DynamoStore {
    /// A store on `table`; `retention` is how long a retired watch's items live.
    pub fn new(client: Client, table: impl Into<String>, retention: Duration) -> Self {
        Self {
            client,
            table: table.into(),
            retention,
            shards: DEFAULT_SHARDS,
            stats: DynamoStats::default(),
        }
    }

    /// The same store with the `live` index (and observer ownership) split
    /// into `shards` shards; every replica of a table must use the same
    /// number ([`DynamoStore::ensure_shards`] checks).
    pub fn with_shards(mut self, shards: u32) -> Self {
        self.shards = shards.max(1);
        self
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The expiry (`expires_at`, seconds) a watch's items are written with
    /// from the start, for a watch whose life is bounded ([`Watch::over_by`]):
    /// its retention counted from [`TIMEOUT_GRACE`] past its timeout, when
    /// activity no longer counts into it even if no observer timed it out,
    /// so retiring it need not write them again. `None`: they get theirs
    /// when it retires.
    fn items_expiry(&self, watch: &Watch) -> Option<i64> {
        let over_by = watch.over_by()?;
        Some(over_by.plus(TIMEOUT_GRACE).plus(self.retention).as_millis() / 1000)
    }

    /// Writes every item of `watch` but its own and its outbox entries
    /// (they get their expiry when their delivery finishes) again with the
    /// expiry `expires`, its client token's too; a page at a time, so a
    /// watch of many objects is never all in memory.
    async fn expire_items(&self, watch: &Watch, expires: i64) -> Result<()> {
        // The token goes out with the first page.
        let mut puts: Vec<Item> = (watch.client_token.iter())
            .map(|token| token_item(&watch.tenant, token, &watch.id))
            .collect();
        let values = [(":pk", s(watch_pk(&watch.tenant, &watch.id)))];
        let mut start = None;
        loop {
            let (page, next) = self
                .query_page(None, "pk = :pk", &values, start, None)
                .await?;
            for item in page {
                let sk = get_s(&item, "sk")?;
                if !(sk.starts_with("O#") || sk == "WATCH") {
                    puts.push(item);
                }
            }
            for item in &mut puts {
                item.insert(TTL_ATTRIBUTE.into(), n(expires));
            }
            self.put_all(std::mem::take(&mut puts)).await?;
            match next {
                Some(next) => start = Some(next),
                None => return Ok(()),
            }
        }
    }

    fn count(&self, requests: u64, items: u64, write_units: u64, read_units: u64) {
        self.stats.requests.fetch_add(requests, Ordering::Relaxed);
        self.stats.items.fetch_add(items, Ordering::Relaxed);
        self.stats
            .write_units
            .fetch_add(write_units, Ordering::Relaxed);
        self.stats
            .read_units
            .fetch_add(read_units, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        let token_pk = new.client_token.as_ref().map(|t| token_pk(&new.tenant, t));
        let fresh = new.into_watch();
        for _ in 0..MAX_ATTEMPTS {
            if let Some(token_pk) = &token_pk {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(token_pk))
                    .key("sk", s("TOKEN"))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(aws)?;
                self.count(1, 1, 0, 1);
                if let Some(item) = out.item {
                    let id: WatchId = stored(get_s(&item, "watch_id")?)?;
                    let watch = self
                        .load(&fresh.tenant, &id)
                        .await?
                        .ok_or_else(|| corrupt("client token names a missing watch"))?;
                    return Ok(Created::Existing(watch));
                }
            }
            let watch = fresh.clone();
            let mut extra = vec![self.put(route_item(&watch), "attribute_not_exists(pk)", &[])?];
            if let Some(token) = &watch.client_token {
                let mut item = token_item(&watch.tenant, token, &watch.id);
                if let Some(at) = self.items_expiry(&watch) {
                    item.insert(TTL_ATTRIBUTE.into(), n(at));
                }
                extra.push(self.put(item, "attribute_not_exists(pk)", &[])?);
            }
            let change = Change {
                events: vec![rules::started(&watch)],
                now: watch.created_at,
                watch,
                expected: None,
                extra,
            };
            if let Some((watch, events)) = self.commit(change).await? {
                return Ok(Created::New { watch, events });
            }
            // The token was taken concurrently: read it on the next round.
        }
        Err(StoreError::Busy(
            "could not create the watch: client token kept conflicting".into(),
        ))
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        self.load(tenant, id).await
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        let mut filters = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::from([(":list_pk".to_owned(), s(format!("T#{tenant}")))]);
        if let Some(state) = query.state {
            filters.push("#state = :state".to_owned());
            names.insert("#state".to_owned(), "state".to_owned());
            values.insert(":state".to_owned(), s(state.as_str()));
        }
        for (i, (k, v)) in query.labels.iter().enumerate() {
            filters.push(format!("labels.#l{i} = :l{i}"));
            names.insert(format!("#l{i}"), k.clone());
            values.insert(format!(":l{i}"), s(v));
        }
        let mut key_condition = "list_pk = :list_pk".to_owned();
        if let Some(after) = &query.after {
            key_condition.push_str(" AND list_sk < :after");
            values.insert(":after".to_owned(), s(after.as_str()));
        }
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_TENANT_INDEX)
                .key_condition_expression(&key_condition)
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .limit(i32::try_from(query.limit.max(1)).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            if !filters.is_empty() {
                q = q
                    .filter_expression(filters.join(" AND "))
                    .set_expression_attribute_names(Some(names.clone()));
            }
            let page = q.send().await.map_err(aws)?;
            let items = page.items.unwrap_or_default();
            self.count(1, items.len() as u64, 0, query_units(&items, false));
            for item in &items {
                out.push(item_watch(item)?);
                if out.len() == query.limit {
                    return Ok(out);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        self.record_batch(activities, now).await
    }

    async fn apply(&self, change: LifecycleChange) -> Result<Option<Applied>> {
        let LifecycleChange {
            tenant,
            id,
            guard,
            lifecycle,
            events,
            now,
            fence,
        } = change;
        for _ in 0..MAX_ATTEMPTS {
            let Some((mut watch, read)) = self.load_at(&tenant, &id).await? else {
                return Ok(None);
            };
            if !guard.holds(&watch) {
                return Ok(Some(Applied::Conflict(watch)));
            }
            watch.lifecycle = lifecycle.clone();
            // With a fence, the write also needs the caller's lease of the watch's shard.
            let extra = match &fence {
                Some(fence) => vec![self.lease_check(fence)?],
                None => Vec::new(),
            };
            let change = Change {
                watch,
                expected: Some(read),
                events: events.clone(),
                extra,
                now,
            };
            if let Some((watch, events)) = self.commit(change).await? {
                return Ok(Some(Applied::Done { watch, events }));
            }
            if let Some(fence) = &fence
                && !self.lease_holds(fence).await?
            {
                return Err(StoreError::Fenced { shard: fence.shard });
            }
        }
        Err(StoreError::Busy(format!(
            "watch {id} kept changing; gave up after {MAX_ATTEMPTS} attempts"
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

    async fn events_after(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<WatchEvent>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(watch_pk(tenant, id)))
            .expression_attribute_values(":from", s(event_sk(after_seq.saturating_add(1))))
            .expression_attribute_values(":to", s(event_sk(u64::MAX)))
            .consistent_read(true)
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(aws)?;
        let items = out.items.unwrap_or_default();
        self.count(1, items.len() as u64, 0, query_units(&items, true));
        items
            .iter()
            .map(|item| item_event(tenant, id, item))
            .collect()
    }

    async fn list_objects(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>> {
        self.manifest_page(tenant, id, query).await
    }

    async fn live_watches(&self, _now: Timestamp) -> Result<Vec<Watch>> {
        let mut out = Vec::new();
        for shard in 0..self.shards {
            out.extend(ClusterTable::live_in_shard(self, shard).await?);
        }
        Ok(out)
    }

    async fn watches(&self, keys: &[WatchKey]) -> Result<Vec<Watch>> {
        // BatchGetItem refuses a key asked for twice.
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        let keys = unique
            .into_iter()
            .map(|k| (watch_pk(&k.tenant, &k.id), "WATCH".to_owned()))
            .collect();
        self.batch_get(keys).await?.iter().map(item_watch).collect()
    }

    async fn retire(&self, tenant: &TenantId, id: &WatchId, now: Timestamp) -> Result<()> {
        let expires = now.plus(self.retention).as_millis() / 1000;
        let Some((watch, read)) = self.load_at(tenant, id).await? else {
            return Ok(());
        };
        // Items written with an expiry that keeps them long enough stay as
        // they are; otherwise (a watch that may have gone on for good, or
        // one retired later than its items' expiry allows for) every one
        // is written again with this one.
        if read.items_expire_at().is_none_or(|at| at < expires) {
            self.expire_items(&watch, expires).await?;
        }
        // The watch item last, so a retirement cut short leaves the watch in
        // the live index, to be retired again once recovered. An update, not
        // a put of the item as read: a change that committed since is kept,
        // and one based on an earlier read fails.
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(watch_pk(tenant, id)))
            .key("sk", s("WATCH"))
            .update_expression(
                "SET #ttl = :expires, rev = if_not_exists(rev, :zero) + :one REMOVE live_shard",
            )
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":expires", n(expires))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        self.count(1, 1, read.bytes().div_ceil(1024).max(1), 0);
        match updated {
            Ok(_) => Ok(()),
            Err(aws_sdk_dynamodb::error::SdkError::ServiceError(e))
                if e.err().is_conditional_check_failed_exception() =>
            {
                Ok(())
            }
            Err(e) => Err(aws(e)),
        }
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
