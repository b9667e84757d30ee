//! DynamoDB items <-> domain values: the item of a watch, an event, a seen
//! key or sequencer, a client token, a route and an outbox entry, their
//! `pk`/`sk` and the attribute helpers the other parts share. The layout is
//! the table in [`super`]'s header. Only encoding: it sends no request and
//! decides nothing about what to write (that is [`crate::store::rules`]).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use sha2::{Digest, Sha256};

use super::{TTL_ATTRIBUTE, cluster};
use crate::{
    clock::Timestamp,
    store::{ActivityKind, Delivery, DeliveryState, Result, StoreError},
    watch::{
        Counters, KeyFilter, Lifecycle, Source, TenantId, TraceContext, Watch, WatchEvent, WatchId,
        WatchState,
    },
};

/// Sort keys longer than this are hashed (DynamoDB allows 1024 bytes).
pub(super) const MAX_KEY_BYTES: usize = 1000;
/// The `live` index partition of pending outbox entries.
pub(super) const OUTBOX_SHARD: &str = "OUTBOX";

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("dynamodb item: {what}"))
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| corrupt(name))
}

pub(super) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(name))
}

pub(super) fn get_opt_ts(item: &Item, name: &str) -> Result<Option<Timestamp>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => Ok(Some(Timestamp::from_millis(get_n(item, name)?))),
    }
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn stored<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn watch_pk(tenant: &TenantId, id: &WatchId) -> String {
    format!("W#{tenant}#{id}")
}

pub(super) fn token_pk(tenant: &TenantId, token: &str) -> String {
    format!("C#{tenant}#{token}")
}

/// The item that maps a tenant's client token to the watch it started.
pub(super) fn token_item(tenant: &TenantId, token: &str, id: &WatchId) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(token_pk(tenant, token)));
    item.insert("sk".into(), s("TOKEN"));
    item.insert("watch_id".into(), s(id.as_str()));
    item
}

pub(super) fn event_sk(seq: u64) -> String {
    format!("E#{seq:020}")
}

pub(super) fn outbox_sk(seq: u64, target: u32) -> String {
    format!("O#{seq:020}#{target:05}")
}

/// An outbox entry's item; a finished one carries its TTL (`expires_at`, seconds).
pub(super) fn delivery_item(d: &Delivery, expires_at: Option<i64>) -> Result<Item> {
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

pub(super) fn key_sk(kind: ActivityKind, key: &str) -> String {
    let tag = kind_tag(kind);
    if key.len() > MAX_KEY_BYTES {
        format!("K#{tag}#~{}", hex::encode(Sha256::digest(key.as_bytes())))
    } else {
        format!("K#{tag}#{key}")
    }
}

/// The item recording a further sequencer (its identity) of a seen key.
pub(super) fn pair_sk(kind: ActivityKind, key: &str, sequencer: &str) -> String {
    let tag = kind_tag(kind);
    // The length keeps sequencer and key apart whatever they contain.
    let pair = format!("{}#{sequencer}#{key}", sequencer.len());
    if pair.len() + 4 > MAX_KEY_BYTES {
        format!("S#{tag}#~{}", hex::encode(Sha256::digest(pair.as_bytes())))
    } else {
        format!("S#{tag}#{pair}")
    }
}

pub use crate::store::cluster_table::shard_of;

pub(super) fn watch_item(w: &Watch, shards: u32) -> Result<Item> {
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
pub(super) fn item_source(item: &Item) -> Result<Source> {
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
pub(super) fn opt_s(item: &Item, name: &str) -> String {
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

pub(super) fn item_watch(item: &Item) -> Result<Watch> {
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

pub(super) fn event_item(e: &WatchEvent) -> Result<Item> {
    let mut item = Item::new();
    item.insert("pk".into(), s(watch_pk(&e.tenant, &e.watch_id)));
    item.insert("sk".into(), s(event_sk(e.seq)));
    item.insert("time".into(), n(e.time.as_millis()));
    item.insert("generation".into(), n(e.generation));
    item.insert("payload".into(), s(json(&e.kind)?));
    Ok(item)
}

pub(super) fn item_event(tenant: &TenantId, id: &WatchId, item: &Item) -> Result<WatchEvent> {
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

/// The route item of a new watch (see [`DynamoStore::routes_since`](super::DynamoStore::routes_since)).
pub(super) fn route_item(w: &Watch) -> Item {
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

/// Rough DynamoDB item size: attribute names plus values.
pub(super) fn item_bytes(item: &Item) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencer_items_keep_key_and_sequencer_apart() {
        let c = ActivityKind::Created;
        assert_ne!(pair_sk(c, "b#c", "A"), pair_sk(c, "c", "A#B"));
        assert!(pair_sk(c, &"k".repeat(2000), "01").len() <= MAX_KEY_BYTES);
    }
}
