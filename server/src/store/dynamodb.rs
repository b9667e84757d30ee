//! The DynamoDB store: many replicas share one table. Single-table design,
//! tenant first in every partition key:
//!
//! | item | `pk` | `sk` | notes |
//! |---|---|---|---|
//! | watch | `W#{tenant}#{watch_id}` | `WATCH` | all fields (`filter`: the key filter as JSON, absent when none); `list_pk` = `T#{tenant}`, `list_sk` = watch id (GSI `by_tenant`, newest first); `live_shard` = `LIVE#{0..63}` until the watch is retired (sparse GSI `live`) |
//! | seen key | `W#{tenant}#{watch_id}` | `K#c#{key}` / `K#r#{key}` | `sequencer`: one of the key's (empty while only notifications without one told of it); `size`, `event_time` (ms, when told) and `generation` of its first counted notification (items written before them read as 0, none, 1); keys over 1000 bytes are stored as `K#c#~{sha256}` with the key in `key`. The `K#c#` items, in sort key order, are the manifest |
//! | seen sequencer | `W#{tenant}#{watch_id}` | `S#c#{len}#{sequencer}#{key}` / `S#r#…` | one per further distinct sequencer of a seen key; over 1000 bytes, `S#c#~{sha256}` |
//! | event | `W#{tenant}#{watch_id}` | `E#{seq:020}` | `time`, `generation`, `payload` (the event as JSON) |
//! | client token | `C#{tenant}#{token}` | `TOKEN` | `watch_id` |
//! | outbox entry | `W#{tenant}#{watch_id}` | `O#{seq:020}#{target:05}` | `record` (the delivery as JSON), `next_at`; `live_shard` = `OUTBOX` while pending (same sparse GSI `live`) |
//!
//! Every change to a watch is one `TransactWriteItems` conditioned on the
//! watch's `last_seq` being what was read, so concurrent writers (ingest on
//! any replica, the observer) serialize on it, and the events it appends get
//! gapless `seq`s. Recording puts each new seen key, and each further
//! sequencer of a seen key, with `attribute_not_exists` (a key's first
//! sequencer after none: `sequencer = old`) in the same transaction as the
//! counter update, so a redelivery can never count twice (see [`KeyEvent`]);
//! a cancelled transaction is re-read and retried. SDK errors become
//! [`StoreError`]s in [`aws`]: throttling and conflicts are `Busy`, an
//! unreachable or failing service `Unavailable`. Retired watches' items get the
//! `expires_at` TTL attribute. Outbox entries are put in the transaction that
//! appends the event they deliver; claims and attempts are conditional puts on
//! `next_at` (the lease), and a finished entry gets its TTL then.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::transact_write_items::TransactWriteItemsError,
    types::{
        AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
        KeyType, KeysAndAttributes, Projection, ProjectionType, Put, PutRequest,
        ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, WriteRequest,
    },
};
use sha2::{Digest, Sha256};

mod cluster;
pub use cluster::{ClusterView, LeaseItem, ReplicaItem, RouteEntry};

use super::{
    Activity, ActivityKind, Applied, Change as LifecycleChange, Claimed, Created, Delivery,
    DeliveryState, Fence, Guard, KeyEvent, ListQuery, ManifestEntry, NewWatch, ObjectsQuery,
    RecordOutcome, Recorded, Result, Store, StoreError, outbox_for, rules, sequencer_identity,
};
use crate::{
    clock::Timestamp,
    watch::{
        Counters, EventKind, KeyFilter, Lifecycle, Source, TenantId, TraceContext, Watch,
        WatchEvent, WatchId, WatchKey, WatchState,
    },
};

/// Shards of the `live` index and of observer ownership (`--shards`), unless configured.
pub const DEFAULT_SHARDS: u32 = 64;
/// Seen items (keys and further sequencers) per transaction (one more for the
/// watch, one for its event).
const KEYS_PER_TRANSACTION: usize = 98;
/// Attempts at one change before giving up on a hot watch.
const MAX_ATTEMPTS: usize = 20;
/// Sort keys longer than this are hashed (DynamoDB allows 1024 bytes).
const MAX_KEY_BYTES: usize = 1000;
pub const BY_TENANT_INDEX: &str = "by_tenant";
pub const LIVE_INDEX: &str = "live";
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// The `live` index partition of pending outbox entries.
const OUTBOX_SHARD: &str = "OUTBOX";

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

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Classifies an SDK error: no answer, throttling, conflicts and the
/// service's own failures pass; anything else is a bug.
fn aws<E>(e: SdkError<E>) -> StoreError
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
fn service_error(code: Option<&str>, status: u16, detail: impl FnOnce() -> String) -> StoreError {
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

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("dynamodb item: {what}"))
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| corrupt(name))
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(name))
}

fn get_opt_ts(item: &Item, name: &str) -> Result<Option<Timestamp>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => Ok(Some(Timestamp::from_millis(get_n(item, name)?))),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn stored<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn watch_pk(tenant: &TenantId, id: &WatchId) -> String {
    format!("W#{tenant}#{id}")
}

fn token_pk(tenant: &TenantId, token: &str) -> String {
    format!("C#{tenant}#{token}")
}

/// The item that maps a tenant's client token to the watch it started.
fn token_item(tenant: &TenantId, token: &str, id: &WatchId) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(token_pk(tenant, token)));
    item.insert("sk".into(), s("TOKEN"));
    item.insert("watch_id".into(), s(id.as_str()));
    item
}

/// An SDK builder's error (a missing required field) as a store error.
fn built(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Internal(format!("dynamodb request: {e}"))
}

fn event_sk(seq: u64) -> String {
    format!("E#{seq:020}")
}

fn outbox_sk(seq: u64, target: u32) -> String {
    format!("O#{seq:020}#{target:05}")
}

/// An outbox entry's item; a finished one carries its TTL (`expires_at`, seconds).
fn delivery_item(d: &Delivery, expires_at: Option<i64>) -> Result<Item> {
    let mut item = Item::new();
    item.insert("pk".into(), s(watch_pk(&d.tenant, &d.watch_id)));
    item.insert("sk".into(), s(outbox_sk(d.seq, d.target_index)));
    item.insert("record".into(), s(json(d)?));
    item.insert("next_at".into(), n(d.next_attempt_at.as_millis()));
    if d.state == DeliveryState::Pending {
        item.insert("live_shard".into(), s(OUTBOX_SHARD));
    } else if let Some(at) = expires_at {
        item.insert(TTL_ATTRIBUTE.into(), n(at));
    }
    Ok(item)
}

fn kind_tag(kind: ActivityKind) -> char {
    match kind {
        ActivityKind::Created => 'c',
        ActivityKind::Removed => 'r',
        ActivityKind::Marker => 'm',
    }
}

fn key_sk(kind: ActivityKind, key: &str) -> String {
    let tag = kind_tag(kind);
    if key.len() > MAX_KEY_BYTES {
        format!("K#{tag}#~{}", hex::encode(Sha256::digest(key.as_bytes())))
    } else {
        format!("K#{tag}#{key}")
    }
}

/// The item recording a further sequencer (its identity) of a seen key.
fn pair_sk(kind: ActivityKind, key: &str, sequencer: &str) -> String {
    let tag = kind_tag(kind);
    // The length keeps sequencer and key apart whatever they contain.
    let pair = format!("{}#{sequencer}#{key}", sequencer.len());
    if pair.len() + 4 > MAX_KEY_BYTES {
        format!("S#{tag}#~{}", hex::encode(Sha256::digest(pair.as_bytes())))
    } else {
        format!("S#{tag}#{pair}")
    }
}

/// The shard of `shards` a watch belongs to: stable across processes and versions.
pub fn shard_of(id: &WatchId, shards: u32) -> u32 {
    let digest = Sha256::digest(id.as_str().as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % shards.max(1)
}

fn watch_item(w: &Watch, shards: u32) -> Result<Item> {
    let mut item = Item::new();
    item.insert("pk".into(), s(watch_pk(&w.tenant, &w.id)));
    item.insert("sk".into(), s("WATCH"));
    item.insert("tenant".into(), s(w.tenant.as_str()));
    item.insert("watch_id".into(), s(w.id.as_str()));
    item.insert("list_pk".into(), s(format!("T#{}", w.tenant)));
    item.insert("list_sk".into(), s(w.id.as_str()));
    item.insert(
        "live_shard".into(),
        s(format!("LIVE#{}", shard_of(&w.id, shards))),
    );
    source_attributes(&mut item, &w.source)?;
    item.insert("policy".into(), s(json(&w.policy)?));
    let labels = w.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect();
    item.insert("labels".into(), AttributeValue::M(labels));
    if let Some(token) = &w.client_token {
        item.insert("client_token".into(), s(token));
    }
    item.insert("created_at".into(), n(w.created_at.as_millis()));
    let life = &w.lifecycle;
    item.insert("state".into(), s(life.state.as_str()));
    item.insert("generation".into(), n(life.generation));
    item.insert(
        "generation_started_at".into(),
        n(life.generation_started_at.as_millis()),
    );
    if let Some(at) = life.completed_at {
        item.insert("completed_at".into(), n(at.as_millis()));
    }
    item.insert("reason".into(), s(&life.reason));
    item.insert("polling".into(), s(json(&life.polling)?));
    let c = &w.counters;
    item.insert("object_count".into(), n(c.object_count));
    item.insert("event_count".into(), n(c.event_count));
    item.insert("removed_count".into(), n(c.removed_count));
    item.insert("object_bytes".into(), n(c.object_bytes));
    if let Some(at) = c.last_activity_at {
        item.insert("last_activity_at".into(), n(at.as_millis()));
    }
    if c.marker_count > 0 {
        item.insert("marker_count".into(), n(c.marker_count));
    }
    if let Some(at) = c.marker_at {
        item.insert("marker_at".into(), n(at.as_millis()));
    }
    if let Some(at) = c.newest_event_at {
        item.insert("newest_event_at".into(), n(at.as_millis()));
    }
    item.insert("last_seq".into(), n(w.last_seq));
    if !w.trace.is_empty() {
        item.insert("traceparent".into(), s(&w.trace.traceparent));
        if !w.trace.tracestate.is_empty() {
            item.insert("tracestate".into(), s(&w.trace.tracestate));
        }
    }
    Ok(item)
}

/// `bucket`, `prefix` and `filter` of a watch of objects; a group's
/// `members` (a list of ids) instead.
fn source_attributes(item: &mut Item, source: &Source) -> Result<()> {
    match source {
        Source::Objects(o) => {
            item.insert("bucket".into(), s(o.bucket.as_str()));
            item.insert("prefix".into(), s(o.prefix.as_str()));
            if !o.filter.is_empty() {
                item.insert("filter".into(), s(json(&o.filter)?));
            }
        }
        Source::Members { members } => {
            let ids = members.iter().map(|id| s(id.as_str())).collect();
            item.insert("members".into(), AttributeValue::L(ids));
        }
    }
    Ok(())
}

/// The source of a watch or route item.
fn item_source(item: &Item) -> Result<Source> {
    match item.get("members") {
        None => Ok(Source::objects(
            stored(get_s(item, "bucket")?)?,
            stored(get_s(item, "prefix")?)?,
            item_filter(item)?,
        )),
        Some(AttributeValue::L(ids)) => Ok(Source::Members {
            members: ids
                .iter()
                .map(|v| {
                    v.as_s()
                        .map_err(|_| corrupt("members"))
                        .and_then(|id| stored(id))
                })
                .collect::<Result<_>>()?,
        }),
        Some(_) => Err(corrupt("members")),
    }
}

/// A string attribute the item may lack (empty when absent).
fn opt_s(item: &Item, name: &str) -> String {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

/// The key filter of a watch or route item (none when absent).
fn item_filter(item: &Item) -> Result<KeyFilter> {
    match item.get("filter") {
        None => Ok(KeyFilter::default()),
        Some(_) => from_json(get_s(item, "filter")?),
    }
}

fn item_watch(item: &Item) -> Result<Watch> {
    let state_raw = get_s(item, "state")?;
    let labels = match item.get("labels") {
        Some(AttributeValue::M(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_s()
                    .map(|v| (k.clone(), v.clone()))
                    .map_err(|_| corrupt("labels"))
            })
            .collect::<Result<_>>()?,
        _ => Default::default(),
    };
    Ok(Watch {
        tenant: stored(get_s(item, "tenant")?)?,
        id: stored(get_s(item, "watch_id")?)?,
        source: item_source(item)?,
        policy: from_json(get_s(item, "policy")?)?,
        labels,
        client_token: item
            .get("client_token")
            .and_then(|v| v.as_s().ok())
            .cloned(),
        created_at: Timestamp::from_millis(get_n(item, "created_at")?),
        lifecycle: Lifecycle {
            state: WatchState::from_str_opt(state_raw).ok_or_else(|| corrupt("state"))?,
            generation: get_n(item, "generation")?,
            generation_started_at: Timestamp::from_millis(get_n(item, "generation_started_at")?),
            completed_at: get_opt_ts(item, "completed_at")?,
            reason: get_s(item, "reason")?.to_owned(),
            polling: from_json(get_s(item, "polling")?)?,
        },
        counters: Counters {
            object_count: get_n(item, "object_count")?,
            event_count: get_n(item, "event_count")?,
            removed_count: get_n(item, "removed_count")?,
            object_bytes: get_n(item, "object_bytes").unwrap_or(0),
            last_activity_at: get_opt_ts(item, "last_activity_at")?,
            marker_count: get_n(item, "marker_count").unwrap_or(0),
            marker_at: get_opt_ts(item, "marker_at")?,
            newest_event_at: get_opt_ts(item, "newest_event_at")?,
        },
        last_seq: get_n(item, "last_seq")?,
        trace: TraceContext {
            traceparent: opt_s(item, "traceparent"),
            tracestate: opt_s(item, "tracestate"),
        },
    })
}

fn event_item(e: &WatchEvent) -> Result<Item> {
    let mut item = Item::new();
    item.insert("pk".into(), s(watch_pk(&e.tenant, &e.watch_id)));
    item.insert("sk".into(), s(event_sk(e.seq)));
    item.insert("time".into(), n(e.time.as_millis()));
    item.insert("generation".into(), n(e.generation));
    item.insert("payload".into(), s(json(&e.kind)?));
    Ok(item)
}

fn item_event(tenant: &TenantId, id: &WatchId, item: &Item) -> Result<WatchEvent> {
    let sk = get_s(item, "sk")?;
    let seq = sk
        .strip_prefix("E#")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("event sk"))?;
    Ok(WatchEvent {
        tenant: tenant.clone(),
        watch_id: id.clone(),
        seq,
        time: Timestamp::from_millis(get_n(item, "time")?),
        generation: get_n(item, "generation")?,
        kind: from_json(get_s(item, "payload")?)?,
    })
}

/// The route item of a new watch (see [`DynamoStore::routes_since`]).
fn route_item(w: &Watch) -> Item {
    let created = w.created_at.as_millis();
    let mut item = Item::new();
    item.insert("pk".into(), s(cluster::route_pk(created)));
    item.insert(
        "sk".into(),
        s(format!("{created:013}#{}", watch_pk(&w.tenant, &w.id))),
    );
    item.insert("tenant".into(), s(w.tenant.as_str()));
    item.insert("watch_id".into(), s(w.id.as_str()));
    // A filter serializes (it is strings); a group's route item says it routes nothing.
    let _ = source_attributes(&mut item, &w.source);
    if let Some(marker) = w.marker_key() {
        item.insert("marker".into(), s(marker));
    }
    item.insert("created_at".into(), n(created));
    item.insert(
        TTL_ATTRIBUTE.into(),
        n(created / 1000 + cluster::ROUTE_ITEM_LIFETIME.as_secs() as i64),
    );
    item
}

/// A BatchWriteItem put of `item`.
fn put_request(item: Item) -> Result<WriteRequest> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(built)?;
    Ok(WriteRequest::builder().put_request(put).build())
}

/// Rough DynamoDB item size: attribute names plus values.
fn item_bytes(item: &Item) -> u64 {
    fn value_bytes(v: &AttributeValue) -> u64 {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len() as u64,
            AttributeValue::M(m) => {
                m.iter()
                    .map(|(k, v)| k.len() as u64 + value_bytes(v))
                    .sum::<u64>()
                    + 3
            }
            _ => 1,
        }
    }
    item.iter()
        .map(|(k, v)| k.len() as u64 + value_bytes(v))
        .sum()
}

/// The occurrences of one seen key in a batch, recorded in one transaction.
struct KeyPart {
    kind: ActivityKind,
    key: String,
    sk: String,
    /// `(activity index, sequencer identity)` in batch order.
    occurrences: Vec<(usize, String)>,
    /// Items it may write at most: one per distinct sequencer (at least one).
    writes: usize,
}

/// Groups a watch's activities by seen key, in batch order: each occurrence
/// is judged in order against what is stored, so a transaction writes each
/// item once. A key with more distinct sequencers than a transaction holds
/// is split into consecutive parts.
fn key_parts(activities: &[Activity], indexes: Vec<usize>) -> Vec<KeyPart> {
    let mut keys: Vec<(KeyPart, std::collections::HashSet<String>)> = Vec::new();
    let mut by_sk: HashMap<String, usize> = HashMap::new();
    let mut parts = Vec::new();
    for i in indexes {
        let a = &activities[i];
        let sk = key_sk(a.kind, &a.key);
        let sequencer = sequencer_identity(&a.sequencer);
        let k = *by_sk.entry(sk.clone()).or_insert_with(|| {
            keys.push((
                KeyPart {
                    kind: a.kind,
                    key: a.key.clone(),
                    sk,
                    occurrences: Vec::new(),
                    writes: 1,
                },
                Default::default(),
            ));
            keys.len() - 1
        });
        let (part, distinct) = &mut keys[k];
        if !distinct.contains(&sequencer) && distinct.len() == KEYS_PER_TRANSACTION {
            let next = KeyPart {
                occurrences: Vec::new(),
                writes: 1,
                kind: part.kind,
                key: part.key.clone(),
                sk: part.sk.clone(),
            };
            parts.push(std::mem::replace(part, next));
            distinct.clear();
        }
        distinct.insert(sequencer.clone());
        part.writes = distinct.len();
        part.occurrences.push((i, sequencer));
    }
    // A split key's earlier parts come first, so they are recorded first.
    parts.extend(keys.into_iter().map(|(part, _)| part));
    parts.sort_by_key(|p| by_sk[&p.sk]);
    parts
}

/// Splits `parts` into transactions of at most [`KEYS_PER_TRANSACTION`] seen
/// items, none holding two parts of one key.
fn transactions(parts: &[KeyPart]) -> Vec<&[KeyPart]> {
    let mut out = Vec::new();
    let (mut start, mut writes) = (0, 0);
    let mut sks = std::collections::HashSet::new();
    for (i, part) in parts.iter().enumerate() {
        if i > start && (writes + part.writes > KEYS_PER_TRANSACTION || sks.contains(&part.sk)) {
            out.push(&parts[start..i]);
            (start, writes) = (i, 0);
            sks.clear();
        }
        writes += part.writes;
        sks.insert(&part.sk);
    }
    if start < parts.len() {
        out.push(&parts[start..]);
    }
    out
}

/// A watch read and the events to append, as one conditioned transaction.
struct Change {
    watch: Watch,
    expected_last_seq: Option<u64>,
    events: Vec<EventKind>,
    extra: Vec<TransactWriteItem>,
    now: Timestamp,
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

    /// A client from the standard AWS configuration chain (`AWS_ENDPOINT_URL`, region, credentials).
    pub async fn client_from_env() -> Client {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Client::new(&config)
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

    /// Creates the table with its indexes and TTL attribute (for development
    /// and tests; production tables come from the deploy template).
    pub async fn create_table(&self) -> Result<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(built)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(built)
        };
        let all = Projection::builder()
            .projection_type(ProjectionType::All)
            .build();
        let by_tenant = GlobalSecondaryIndex::builder()
            .index_name(BY_TENANT_INDEX)
            .key_schema(key("list_pk", KeyType::Hash)?)
            .key_schema(key("list_sk", KeyType::Range)?)
            .projection(all.clone())
            .build()
            .map_err(built)?;
        let live = GlobalSecondaryIndex::builder()
            .index_name(LIVE_INDEX)
            .key_schema(key("live_shard", KeyType::Hash)?)
            .key_schema(key("pk", KeyType::Range)?)
            .projection(all)
            .build()
            .map_err(built)?;
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(attr("list_pk")?)
            .attribute_definitions(attr("list_sk")?)
            .attribute_definitions(attr("live_shard")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(by_tenant)
            .global_secondary_indexes(live)
            .send()
            .await
            .map_err(aws)?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()
                    .map_err(built)?,
            )
            .send()
            .await
            .map_err(aws)?;
        Ok(())
    }

    /// Checks that the table exists and is reachable.
    pub async fn check(&self) -> Result<()> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(aws)?;
        Ok(())
    }

    async fn load(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(watch_pk(tenant, id)))
            .key("sk", s("WATCH"))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws)?;
        self.count(1, 1, 0, 1);
        out.item.as_ref().map(item_watch).transpose()
    }

    fn put(
        &self,
        item: Item,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<TransactWriteItem> {
        let mut put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition);
        for (k, v) in values {
            put = put.expression_attribute_values(*k, v.clone());
        }
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(built)?)
            .build())
    }

    /// Writes `change` if the watch's `last_seq` is still the one read; `None` when it moved.
    async fn commit(&self, change: Change) -> Result<Option<(Watch, Vec<WatchEvent>)>> {
        let Change {
            mut watch,
            expected_last_seq,
            events,
            extra,
            now,
        } = change;
        let appended = rules::sequence(&mut watch, events, now);
        let mut items = Vec::with_capacity(2 + appended.len() + extra.len());
        items.push(match expected_last_seq {
            Some(seq) => self.put(
                watch_item(&watch, self.shards)?,
                "last_seq = :expected",
                &[(":expected", n(seq))],
            )?,
            None => self.put(
                watch_item(&watch, self.shards)?,
                "attribute_not_exists(pk)",
                &[],
            )?,
        });
        for e in &appended {
            items.push(self.put(event_item(e)?, "attribute_not_exists(pk)", &[])?);
        }
        for d in outbox_for(&watch, &appended, now) {
            items.push(self.put(delivery_item(&d, None)?, "attribute_not_exists(pk)", &[])?);
        }
        items.extend(extra);
        Ok(self.transact(items).await?.then_some((watch, appended)))
    }

    /// Writes `items` in one transaction; false when it was cancelled by a
    /// condition or a conflicting write (read again and retry), an error when
    /// DynamoDB throttled it.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool> {
        let units: u64 = items
            .iter()
            .filter_map(|i| i.put())
            .map(|p| 2 * item_bytes(p.item()).div_ceil(1024).max(1))
            .sum();
        self.count(1, items.len() as u64, units, 0);
        let e = match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => return Ok(true),
            Err(e) => e,
        };
        let SdkError::ServiceError(service) = &e else {
            return Err(aws(e));
        };
        let TransactWriteItemsError::TransactionCanceledException(cancelled) = service.err() else {
            return Err(aws(e));
        };
        let codes = cancelled
            .cancellation_reasons()
            .iter()
            .filter_map(|r| r.code());
        for code in codes {
            match code {
                "ThrottlingError" | "ProvisionedThroughputExceeded" => {
                    return Err(StoreError::Busy(format!(
                        "DynamoDB throttled the request ({code})"
                    )));
                }
                "ValidationError" | "ItemCollectionSizeLimitExceeded" => {
                    return Err(StoreError::Internal(format!(
                        "dynamodb: {}",
                        DisplayErrorContext(&e)
                    )));
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// The items at `keys` (`(pk, sk)` pairs) that exist, strongly
    /// consistent, 100 per BatchGetItem (unprocessed keys retried).
    async fn batch_get(&self, keys: Vec<(String, String)>) -> Result<Vec<Item>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut wanted = KeysAndAttributes::builder().consistent_read(true);
            for (pk, sk) in chunk {
                wanted = wanted.keys(HashMap::from([
                    ("pk".to_owned(), s(pk)),
                    ("sk".to_owned(), s(sk)),
                ]));
            }
            let mut request = HashMap::from([(self.table.clone(), wanted.build().map_err(built)?)]);
            for _ in 0..MAX_ATTEMPTS {
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(aws)?;
                let items = out
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default();
                // Strongly consistent: at least a unit per key asked for, found or not.
                let units = items
                    .iter()
                    .map(|i| item_bytes(i).div_ceil(4096))
                    .sum::<u64>()
                    .max(chunk.len() as u64);
                self.count(1, chunk.len() as u64, 0, units);
                found.extend(items);
                request = out.unprocessed_keys.unwrap_or_default();
                if request.is_empty() {
                    break;
                }
            }
            if !request.is_empty() {
                return Err(StoreError::Busy(format!(
                    "DynamoDB left keys unprocessed after {MAX_ATTEMPTS} attempts"
                )));
            }
        }
        Ok(found)
    }

    /// The stored item of each seen key in `sks` (strongly consistent).
    async fn seen(&self, pk: &str, sks: &[String]) -> Result<HashMap<String, Item>> {
        let keys = sks.iter().map(|sk| (pk.to_owned(), sk.clone())).collect();
        let mut found = HashMap::new();
        for item in self.batch_get(keys).await? {
            get_s(&item, "sequencer")?;
            found.insert(get_s(&item, "sk")?.to_owned(), item);
        }
        Ok(found)
    }

    /// Records one watch's activities (`indexes` into `activities`).
    async fn record_watch(
        &self,
        activities: &[Activity],
        indexes: Vec<usize>,
        now: Timestamp,
    ) -> Result<(Vec<(usize, Recorded)>, Option<(Watch, Vec<WatchEvent>)>)> {
        let parts = key_parts(activities, indexes);
        let first = &activities[parts[0].occurrences[0].0];
        let (tenant, id) = (first.tenant.clone(), first.watch_id.clone());
        let pk = watch_pk(&tenant, &id);
        let mut results = Vec::new();
        let mut last: Option<(Watch, Vec<WatchEvent>)> = None;
        for chunk in transactions(&parts) {
            let mut done = false;
            for _ in 0..MAX_ATTEMPTS {
                let Some(mut watch) = self
                    .load(&tenant, &id)
                    .await?
                    .filter(|w| w.accepts_activity(now))
                else {
                    results.extend(
                        chunk.iter().flat_map(|k| {
                            k.occurrences.iter().map(|(i, _)| (*i, Recorded::NotLive))
                        }),
                    );
                    done = true;
                    break;
                };
                let sks: Vec<String> = chunk.iter().map(|k| k.sk.clone()).collect();
                let seen = self.seen(&pk, &sks).await?;
                // Other sequencers of keys seen with one: are those pairs recorded?
                let mut asked = Vec::new();
                let sequencer_of = |item: &Item| opt_s(item, "sequencer");
                for key in chunk {
                    let Some(stored) = seen
                        .get(&key.sk)
                        .map(|i| sequencer_identity(&sequencer_of(i)))
                    else {
                        continue;
                    };
                    for (_, sequencer) in &key.occurrences {
                        if KeyEvent::of(Some(&stored), sequencer) == KeyEvent::OtherSequencer {
                            asked.push((pk.clone(), pair_sk(key.kind, &key.key, sequencer)));
                        }
                    }
                }
                asked.sort();
                asked.dedup();
                let mut recorded_pairs = std::collections::HashSet::new();
                if !asked.is_empty() {
                    for item in self.batch_get(asked).await? {
                        recorded_pairs.insert(get_s(&item, "sk")?.to_owned());
                    }
                }
                let mut outcome = Vec::new();
                let mut puts = Vec::new();
                let mut counted = false;
                for key in chunk {
                    let stored = seen.get(&key.sk);
                    let mut current = stored.map(|i| sequencer_identity(&sequencer_of(i)));
                    let mut key_changed = false;
                    // The first counted notification of a new key: what its item keeps.
                    let mut first: Option<&Activity> = None;
                    for (i, sequencer) in &key.occurrences {
                        let a = &activities[*i];
                        let event = match KeyEvent::of(current.as_deref(), sequencer) {
                            event @ (KeyEvent::NewKey | KeyEvent::FirstSequencer) => {
                                if event == KeyEvent::NewKey {
                                    first = Some(a);
                                }
                                current = Some(sequencer.clone());
                                key_changed = true;
                                event
                            }
                            KeyEvent::Repeat => KeyEvent::Repeat,
                            KeyEvent::OtherSequencer => {
                                let sk = pair_sk(key.kind, &key.key, sequencer);
                                let new = recorded_pairs.insert(sk.clone());
                                if new {
                                    let mut item = Item::new();
                                    item.insert("pk".into(), s(&pk));
                                    item.insert("sk".into(), s(sk));
                                    item.insert("sequencer".into(), s(sequencer));
                                    puts.push(self.put(item, "attribute_not_exists(pk)", &[])?);
                                }
                                KeyEvent::OtherSequencer.given_pair(!new)
                            }
                        };
                        let recorded = rules::count(&mut watch, event, a, now);
                        counted |= recorded == Recorded::Counted;
                        outcome.push((*i, recorded));
                    }
                    if key_changed {
                        // A stored item keeps its size, time and generation; it takes the sequencer.
                        let mut item = match stored {
                            Some(old) => old.clone(),
                            None => {
                                let mut item = Item::new();
                                item.insert("pk".into(), s(&pk));
                                item.insert("sk".into(), s(&key.sk));
                                if key.sk.len() != key.key.len() + 4 {
                                    item.insert("key".into(), s(&key.key));
                                }
                                if let Some(a) = first {
                                    item.insert("size".into(), n(a.size));
                                    if let Some(at) = a.event_time {
                                        item.insert("event_time".into(), n(at.as_millis()));
                                    }
                                }
                                item.insert("generation".into(), n(watch.counting_generation()));
                                item.insert("recorded_at".into(), n(now.as_millis()));
                                item
                            }
                        };
                        item.insert("sequencer".into(), s(current.unwrap_or_default()));
                        puts.push(match stored {
                            None => self.put(item, "attribute_not_exists(pk)", &[])?,
                            Some(old) => self.put(
                                item,
                                "sequencer = :old",
                                &[(":old", s(sequencer_of(old)))],
                            )?,
                        });
                    }
                }
                if !counted {
                    // Nothing counted, but a key may have taken its first sequencer.
                    if puts.is_empty() || self.transact(puts).await? {
                        results.extend(outcome);
                        done = true;
                        break;
                    }
                    continue;
                }
                let expected = watch.last_seq;
                let change = Change {
                    events: vec![rules::progress(&watch)],
                    watch,
                    expected_last_seq: Some(expected),
                    extra: puts,
                    now,
                };
                if let Some((watch, events)) = self.commit(change).await? {
                    results.extend(outcome);
                    last = Some(match last.take() {
                        Some((_, mut earlier)) => {
                            earlier.extend(events);
                            (watch, earlier)
                        }
                        None => (watch, events),
                    });
                    done = true;
                    break;
                }
                // Someone else changed the watch or recorded one of these keys: read again.
            }
            if !done {
                return Err(StoreError::Busy(format!(
                    "watch {id} kept changing; gave up recording after {MAX_ATTEMPTS} attempts"
                )));
            }
        }
        Ok((results, last))
    }

    /// [`Store::apply`], with the write also conditioned on `fence` (the
    /// caller's lease of the watch's shard) when given.
    #[allow(
        clippy::too_many_arguments,
        reason = "a [`Change`] taken apart, borrowed"
    )]
    async fn apply_with(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        guard: Guard,
        lifecycle: Lifecycle,
        events: Vec<EventKind>,
        now: Timestamp,
        fence: Option<&Fence>,
    ) -> Result<Option<Applied>> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut watch) = self.load(tenant, id).await? else {
                return Ok(None);
            };
            if !guard.holds(&watch) {
                return Ok(Some(Applied::Conflict(watch)));
            }
            let expected = watch.last_seq;
            watch.lifecycle = lifecycle.clone();
            let extra = match fence {
                Some(fence) => vec![self.lease_check(fence)?],
                None => Vec::new(),
            };
            let change = Change {
                watch,
                expected_last_seq: Some(expected),
                events: events.clone(),
                extra,
                now,
            };
            if let Some((watch, events)) = self.commit(change).await? {
                return Ok(Some(Applied::Done { watch, events }));
            }
            if let Some(fence) = fence
                && !self.lease_holds(fence).await?
            {
                return Err(StoreError::Fenced { shard: fence.shard });
            }
        }
        Err(StoreError::Busy(format!(
            "watch {id} kept changing; gave up after {MAX_ATTEMPTS} attempts"
        )))
    }

    async fn query_all(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Item>> {
        self.query_counted(index, key_condition, values, None).await
    }

    /// [`Self::query_all`], adding its requests to `also` too.
    async fn query_counted(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Vec<(&str, AttributeValue)>,
        also: Option<&AtomicU64>,
    ) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(key_condition)
                .set_exclusive_start_key(start.take());
            if let Some(index) = index {
                q = q.index_name(index);
            } else {
                q = q.consistent_read(true);
            }
            for (k, v) in &values {
                q = q.expression_attribute_values(*k, v.clone());
            }
            let out = q.send().await;
            if let Some(also) = also {
                also.fetch_add(1, Ordering::Relaxed);
            }
            let out = out.map_err(aws)?;
            let page = out.items.unwrap_or_default();
            self.count(
                1,
                page.len() as u64,
                0,
                page.iter()
                    .map(|i| item_bytes(i).div_ceil(4096))
                    .sum::<u64>()
                    .max(1),
            );
            items.extend(page);
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
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
                let item = token_item(&watch.tenant, token, &watch.id);
                extra.push(self.put(item, "attribute_not_exists(pk)", &[])?);
            }
            let change = Change {
                events: vec![rules::started(&watch)],
                now: watch.created_at,
                watch,
                expected_last_seq: None,
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
            self.count(1, items.len() as u64, 0, 1);
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
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_watch: HashMap<(&TenantId, &WatchId), usize> = HashMap::new();
        for (i, a) in activities.iter().enumerate() {
            let g = *by_watch.entry((&a.tenant, &a.watch_id)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let recorded = futures::future::try_join_all(
            groups
                .into_iter()
                .map(|g| self.record_watch(&activities, g, now)),
        )
        .await?;
        let mut results = vec![Recorded::NotLive; activities.len()];
        let mut updated = Vec::new();
        for (outcomes, watch) in recorded {
            for (i, r) in outcomes {
                results[i] = r;
            }
            updated.extend(watch);
        }
        Ok(RecordOutcome { results, updated })
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
        self.apply_with(&tenant, &id, guard, lifecycle, events, now, fence.as_ref())
            .await
    }

    async fn counted_keys(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>> {
        let sks: Vec<String> = keys
            .iter()
            .map(|k| key_sk(ActivityKind::Created, k))
            .collect();
        // BatchGetItem refuses a key asked for twice.
        let mut unique = sks.clone();
        unique.sort();
        unique.dedup();
        let found = self.seen(&watch_pk(tenant, id), &unique).await?;
        Ok(sks.iter().map(|sk| found.contains_key(sk)).collect())
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
        self.count(
            1,
            items.len() as u64,
            0,
            items
                .iter()
                .map(|i| item_bytes(i).div_ceil(4096))
                .sum::<u64>()
                .max(1),
        );
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
        let pk = watch_pk(tenant, id);
        let limit = query.limit.max(1);
        let mut start = query.after.as_ref().map(|after| {
            HashMap::from([
                ("pk".to_owned(), s(&pk)),
                ("sk".to_owned(), s(key_sk(ActivityKind::Created, after))),
            ])
        });
        let mut out = Vec::with_capacity(limit);
        // Reads a page's worth at a time; a generation filter may need more pages.
        while out.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :created)")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":created", s("K#c#"))
                .set_exclusive_start_key(start.take())
                .consistent_read(true)
                .limit(i32::try_from(limit).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(aws)?;
            let items = page.items.unwrap_or_default();
            // A Query is billed on the total size it read, rounded up to 4 KB.
            let bytes: u64 = items.iter().map(item_bytes).sum();
            self.count(1, items.len() as u64, 0, bytes.div_ceil(4096).max(1));
            for item in &items {
                let generation = get_n(item, "generation").unwrap_or(1);
                if query.generation.is_some_and(|g| g != generation) || out.len() == limit {
                    continue;
                }
                let key = match item.get("key") {
                    Some(_) => get_s(item, "key")?.to_owned(),
                    None => get_s(item, "sk")?
                        .strip_prefix("K#c#")
                        .ok_or_else(|| corrupt("seen key sk"))?
                        .to_owned(),
                };
                out.push(ManifestEntry {
                    key,
                    size: get_n(item, "size").unwrap_or(0),
                    sequencer: opt_s(item, "sequencer"),
                    event_time: get_opt_ts(item, "event_time")?,
                    generation,
                    recorded_at: get_opt_ts(item, "recorded_at")?,
                    removed: false,
                });
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => break,
            }
        }
        // The page's removal items: one range query over the page's keys
        // (costs what the removals hold), plus a get for each hashed key.
        let mut removed = std::collections::HashSet::new();
        let in_order: Vec<String> = out
            .iter()
            .map(|o| key_sk(ActivityKind::Removed, &o.key))
            .filter(|sk| !sk.starts_with("K#r#~"))
            .collect();
        if let (Some(from), Some(to)) = (in_order.first(), in_order.last()) {
            let items = self
                .query_all(
                    None,
                    "pk = :pk AND sk BETWEEN :from AND :to",
                    vec![(":pk", s(&pk)), (":from", s(from)), (":to", s(to))],
                )
                .await?;
            for item in &items {
                removed.insert(get_s(item, "sk")?.to_owned());
            }
        }
        let hashed = out
            .iter()
            .map(|o| key_sk(ActivityKind::Removed, &o.key))
            .filter(|sk| sk.starts_with("K#r#~"))
            .map(|sk| (pk.clone(), sk))
            .collect::<Vec<_>>();
        if !hashed.is_empty() {
            for item in self.batch_get(hashed).await? {
                removed.insert(get_s(&item, "sk")?.to_owned());
            }
        }
        for o in &mut out {
            o.removed = removed.contains(&key_sk(ActivityKind::Removed, &o.key));
        }
        Ok(out)
    }

    async fn live_watches(&self, _now: Timestamp) -> Result<Vec<Watch>> {
        let mut out = Vec::new();
        for shard in 0..self.shards {
            out.extend(self.live_in_shard(shard).await?);
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
        let pk = watch_pk(tenant, id);
        let items = self
            .query_all(None, "pk = :pk", vec![(":pk", s(&pk))])
            .await?;
        let mut writes = Vec::new();
        let mut token = None;
        for mut item in items {
            if get_s(&item, "sk")?.starts_with("O#") {
                // Outbox entries get their TTL when their delivery finishes.
                continue;
            }
            if get_s(&item, "sk")? == "WATCH" {
                item.remove("live_shard");
                token = item
                    .get("client_token")
                    .and_then(|v| v.as_s().ok())
                    .cloned();
            }
            item.insert(TTL_ATTRIBUTE.into(), n(expires));
            writes.push(put_request(item)?);
        }
        if let Some(token) = token {
            let mut item = token_item(tenant, &token, id);
            item.insert(TTL_ATTRIBUTE.into(), n(expires));
            writes.push(put_request(item)?);
        }
        for chunk in writes.chunks(25) {
            let mut request = HashMap::from([(self.table.clone(), chunk.to_vec())]);
            for _ in 0..MAX_ATTEMPTS {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(aws)?;
                self.count(1, chunk.len() as u64, chunk.len() as u64, 0);
                request = out.unprocessed_items.unwrap_or_default();
                if request.values().all(Vec::is_empty) {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed> {
        // The index is eventually consistent: a stale entry fails its conditional put.
        let items = self
            .query_all(
                Some(LIVE_INDEX),
                "live_shard = :shard",
                vec![(":shard", s(OUTBOX_SHARD))],
            )
            .await?;
        let mut claimed = Claimed::default();
        let due = |at: Timestamp, claimed: &mut Claimed| {
            claimed.next_due = Some(claimed.next_due.map_or(at, |d| d.min(at)));
        };
        for item in &items {
            let mut d: Delivery = from_json(get_s(item, "record")?)?;
            if d.state != DeliveryState::Pending {
                continue;
            }
            if d.next_attempt_at > now || claimed.deliveries.len() >= limit {
                due(d.next_attempt_at, &mut claimed);
                continue;
            }
            let old = d.next_attempt_at;
            d.next_attempt_at = lease_until;
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(delivery_item(&d, None)?))
                .condition_expression("next_at = :old AND attribute_exists(live_shard)")
                .expression_attribute_values(":old", n(old.as_millis()))
                .send()
                .await;
            self.count(1, 1, 1, 0);
            match put {
                Ok(_) => {
                    due(lease_until, &mut claimed);
                    claimed.deliveries.push(d);
                }
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(aws(e)),
            }
        }
        Ok(claimed)
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        event: Option<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Vec<WatchEvent>>> {
        let expires = now.plus(self.retention).as_millis() / 1000;
        let item = delivery_item(delivery, Some(expires))?;
        let condition = "next_at = :lease AND attribute_exists(live_shard)";
        let lease_value = [(":lease", n(lease.as_millis()))];
        for _ in 0..MAX_ATTEMPTS {
            let watch = match &event {
                Some(_) => self.load(&delivery.tenant, &delivery.watch_id).await?,
                None => None,
            };
            let Some(watch) = watch else {
                let put = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item.clone()))
                    .condition_expression(condition)
                    .expression_attribute_values(":lease", n(lease.as_millis()))
                    .send()
                    .await;
                self.count(1, 1, 1, 0);
                return match put {
                    Ok(_) => Ok(Some(Vec::new())),
                    Err(SdkError::ServiceError(e))
                        if e.err().is_conditional_check_failed_exception() =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(aws(e)),
                };
            };
            let expected = watch.last_seq;
            let change = Change {
                watch,
                expected_last_seq: Some(expected),
                events: event.clone().into_iter().collect(),
                extra: vec![self.put(item.clone(), condition, &lease_value)?],
                now,
            };
            if let Some((_, events)) = self.commit(change).await? {
                return Ok(Some(events));
            }
            // The watch moved, or the lease was lost: which one?
            let current = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", s(watch_pk(&delivery.tenant, &delivery.watch_id)))
                .key("sk", s(outbox_sk(delivery.seq, delivery.target_index)))
                .consistent_read(true)
                .send()
                .await
                .map_err(aws)?;
            self.count(1, 1, 0, 1);
            let held = current.item.is_some_and(|i| {
                i.contains_key("live_shard")
                    && get_n::<i64>(&i, "next_at").ok() == Some(lease.as_millis())
            });
            if !held {
                return Ok(None);
            }
        }
        Err(StoreError::Busy(format!(
            "watch {} kept changing; gave up recording a delivery after {MAX_ATTEMPTS} attempts",
            delivery.watch_id
        )))
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        let items = self
            .query_all(
                None,
                "pk = :pk AND begins_with(sk, :outbox)",
                vec![(":pk", s(watch_pk(tenant, id))), (":outbox", s("O#"))],
            )
            .await?;
        items
            .iter()
            .map(|item| from_json(get_s(item, "record")?))
            .collect()
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::{
        config::{BehaviorVersion, Credentials, Region, retry::RetryConfig},
        error::ConnectorError,
        operation::get_item::GetItemError,
    };

    use super::*;

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

    #[test]
    fn a_hot_key_spans_transactions_in_order() {
        let tenant = TenantId::parse("tenant", "acme").unwrap();
        let id = WatchId::generate();
        let activity = |key: &str, sequencer: String| Activity {
            tenant: tenant.clone(),
            watch_id: id.clone(),
            kind: ActivityKind::Created,
            key: key.to_owned(),
            sequencer,
            size: 0,
            event_time: None,
        };
        let mut activities: Vec<Activity> = (0..10)
            .map(|i| activity(&format!("k{i}"), String::new()))
            .collect();
        activities.extend((0..200).map(|i| activity("hot", format!("{i:04X}1"))));
        activities.push(activity("k0", "01".into()));
        let parts = key_parts(&activities, (0..activities.len()).collect());
        let chunks = transactions(&parts);
        let mut seen = Vec::new();
        for chunk in &chunks {
            assert!(chunk.iter().map(|p| p.writes).sum::<usize>() <= KEYS_PER_TRANSACTION);
            let mut sks: Vec<&str> = chunk.iter().map(|p| p.sk.as_str()).collect();
            sks.sort();
            sks.dedup();
            assert_eq!(sks.len(), chunk.len(), "one part of a key per transaction");
            seen.extend(
                chunk
                    .iter()
                    .flat_map(|p| p.occurrences.iter().map(|(i, _)| *i)),
            );
        }
        // Each key's occurrences keep their batch order.
        let hot: Vec<usize> = seen
            .iter()
            .copied()
            .filter(|i| (10..210).contains(i))
            .collect();
        assert_eq!(hot, (10..210).collect::<Vec<_>>());
        seen.sort();
        assert_eq!(seen, (0..activities.len()).collect::<Vec<_>>());
    }

    #[test]
    fn sequencer_items_keep_key_and_sequencer_apart() {
        let c = ActivityKind::Created;
        assert_ne!(pair_sk(c, "b#c", "A"), pair_sk(c, "c", "A#B"));
        assert!(pair_sk(c, &"k".repeat(2000), "01").len() <= MAX_KEY_BYTES);
    }
}
