//! The transaction engine of the DynamoDB store: reading a watch, and
//! writing a change of it as one `TransactWriteItems` conditioned on its
//! item being unwritten since it was read ([`Read`]; a new watch: on its
//! item not existing),
//! with its appended events (their `seq`s from [`rules::sequence`]) and
//! their outbox entries ([`rules::outbox_for`]). A cancelled transaction is
//! reported, not retried: callers read again and retry. Also the batched
//! reads and paged queries the other parts use, each counted in
//! [`super::DynamoStats`]. It never decides what a change is.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use aws_sdk_dynamodb::{
    error::{DisplayErrorContext, SdkError},
    operation::transact_write_items::TransactWriteItemsError,
    types::{AttributeValue, KeysAndAttributes, Put, PutRequest, TransactWriteItem, WriteRequest},
};

use super::{
    DynamoStore, ITEMS_EXPIRY, MAX_ATTEMPTS, TTL_ATTRIBUTE,
    codec::{
        Item, delivery_item, event_item, get_n, item_bytes, item_watch, n, s, watch_item, watch_pk,
    },
    error::{aws, built},
};
use crate::{
    clock::Timestamp,
    store::{Result, StoreError, rules},
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId},
};

/// Which write of a watch's item a read saw. Every commit bumps the item's
/// `rev`, so a change commits only on the item it was based on, even when
/// the write in between appended no event (a polling sample). An item
/// written before `rev` was kept has none, and is known by its `last_seq`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Read {
    last_seq: u64,
    rev: Option<u64>,
    /// The expiry every item of the watch is written with, when it has
    /// one ([`DynamoStore::items_expiry`], kept on the watch item).
    items_expire_at: Option<i64>,
    /// The watch item's size in bytes, as read.
    bytes: u64,
}

impl Read {
    /// The expiry (`expires_at`, seconds) to write on the watch's items.
    pub(super) fn items_expire_at(&self) -> Option<i64> {
        self.items_expire_at
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The condition a commit based on this read puts on the item, and the
    /// `rev` it writes.
    fn condition(&self) -> (&'static str, AttributeValue, u64) {
        match self.rev {
            Some(rev) => ("rev = :expected", n(rev), rev + 1),
            None => (
                "attribute_not_exists(rev) AND last_seq = :expected",
                n(self.last_seq),
                1,
            ),
        }
    }
}

/// A watch read and the events to append, as one conditioned transaction.
pub(super) struct Change {
    pub watch: Watch,
    /// The read the change is based on; `None`: a new watch.
    pub expected: Option<Read>,
    pub events: Vec<EventKind>,
    pub extra: Vec<TransactWriteItem>,
    pub now: Timestamp,
}

/// The read units of a query that returned `items`: DynamoDB bills the
/// total size it read, rounded up to 4 KB, a unit per 4 KB read strongly
/// consistent and half of one eventually (as every index is read).
pub(super) fn query_units(items: &[Item], consistent: bool) -> u64 {
    let bytes: u64 = items.iter().map(item_bytes).sum();
    bytes.div_ceil(if consistent { 4096 } else { 8192 }).max(1)
}

/// A BatchWriteItem put of `item`.
pub(super) fn put_request(item: Item) -> Result<WriteRequest> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(built)?;
    Ok(WriteRequest::builder().put_request(put).build())
}

impl DynamoStore {
    pub(super) async fn load(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        Ok(self.load_at(tenant, id).await?.map(|(watch, _)| watch))
    }

    /// The watch and the read a change of it is based on.
    pub(super) async fn load_at(
        &self,
        tenant: &TenantId,
        id: &WatchId,
    ) -> Result<Option<(Watch, Read)>> {
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
        let Some(item) = out.item else {
            return Ok(None);
        };
        let read = Read {
            last_seq: get_n(&item, "last_seq")?,
            rev: item.get("rev").map(|_| get_n(&item, "rev")).transpose()?,
            items_expire_at: item
                .get(ITEMS_EXPIRY)
                .map(|_| get_n(&item, ITEMS_EXPIRY))
                .transpose()?,
            bytes: item_bytes(&item),
        };
        Ok(Some((item_watch(&item)?, read)))
    }

    pub(super) fn put(
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

    /// Writes `change` if the watch's item is still the one read; `None` when it moved.
    pub(super) async fn commit(&self, change: Change) -> Result<Option<(Watch, Vec<WatchEvent>)>> {
        let Change {
            mut watch,
            expected,
            events,
            extra,
            now,
        } = change;
        let appended = rules::sequence(&mut watch, events, now);
        let mut items = Vec::with_capacity(2 + appended.len() + extra.len());
        let mut item = watch_item(&watch, self.shards)?;
        let expiry = match &expected {
            Some(read) => read.items_expire_at,
            None => self.items_expiry(&watch),
        };
        if let Some(at) = expiry {
            item.insert(ITEMS_EXPIRY.into(), n(at));
        }
        items.push(match expected {
            Some(read) => {
                let (condition, value, rev) = read.condition();
                item.insert("rev".into(), n(rev));
                self.put(item, condition, &[(":expected", value)])?
            }
            None => {
                item.insert("rev".into(), n(1));
                self.put(item, "attribute_not_exists(pk)", &[])?
            }
        });
        for e in &appended {
            let mut event = event_item(e)?;
            if let Some(at) = expiry {
                event.insert(TTL_ATTRIBUTE.into(), n(at));
            }
            items.push(self.put(event, "attribute_not_exists(pk)", &[])?);
        }
        for d in rules::outbox_for(&watch, &appended, now) {
            items.push(self.put(delivery_item(&d, None)?, "attribute_not_exists(pk)", &[])?);
        }
        items.extend(extra);
        Ok(self.transact(items).await?.then_some((watch, appended)))
    }

    /// Writes `items` in one transaction; false when it was cancelled by a
    /// condition or a conflicting write (read again and retry), an error when
    /// DynamoDB throttled it.
    pub(super) async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool> {
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
    pub(super) async fn batch_get(&self, keys: Vec<(String, String)>) -> Result<Vec<Item>> {
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

    pub(super) async fn query_all(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Item>> {
        self.query_counted(index, key_condition, values, None).await
    }

    /// [`Self::query_all`], adding its requests to `also` too.
    pub(super) async fn query_counted(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Vec<(&str, AttributeValue)>,
        also: Option<&AtomicU64>,
    ) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self
                .query_page(index, key_condition, &values, start, also)
                .await?;
            items.extend(page);
            match next {
                Some(next) => start = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// One page of a query (up to 1 MB), from `start`, and where the next
    /// page starts; `None` after the last.
    pub(super) async fn query_page(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: &[(&str, AttributeValue)],
        start: Option<Item>,
        also: Option<&AtomicU64>,
    ) -> Result<(Vec<Item>, Option<Item>)> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(key_condition)
            .set_exclusive_start_key(start);
        if let Some(index) = index {
            q = q.index_name(index);
        } else {
            q = q.consistent_read(true);
        }
        for (k, v) in values {
            q = q.expression_attribute_values(*k, v.clone());
        }
        let out = q.send().await;
        if let Some(also) = also {
            also.fetch_add(1, Ordering::Relaxed);
        }
        let out = out.map_err(aws)?;
        let page = out.items.unwrap_or_default();
        self.count(1, page.len() as u64, 0, query_units(&page, index.is_none()));
        let next = out.last_evaluated_key.filter(|k| !k.is_empty());
        Ok((page, next))
    }

    /// Puts `items` with BatchWriteItem, 25 at a time, sending again what
    /// DynamoDB leaves unprocessed (after a growing pause); an error if some
    /// are still unwritten after [`MAX_ATTEMPTS`].
    pub(super) async fn put_all(&self, items: Vec<Item>) -> Result<()> {
        let writes = items
            .into_iter()
            .map(put_request)
            .collect::<Result<Vec<_>>>()?;
        for chunk in writes.chunks(25) {
            let mut request = HashMap::from([(self.table.clone(), chunk.to_vec())]);
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 {
                    let pause = 10u64 << attempt.min(6);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                let sent: u64 = request.values().map(|w| w.len() as u64).sum();
                let units: u64 = request
                    .values()
                    .flatten()
                    .filter_map(|w| w.put_request())
                    .map(|p| item_bytes(p.item()).div_ceil(1024).max(1))
                    .sum();
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(aws)?;
                self.count(1, sent, units, 0);
                request = out.unprocessed_items.unwrap_or_default();
                request.retain(|_, w| !w.is_empty());
                if request.is_empty() {
                    break;
                }
            }
            if !request.is_empty() {
                return Err(StoreError::Busy(format!(
                    "DynamoDB left items unwritten after {MAX_ATTEMPTS} attempts"
                )));
            }
        }
        Ok(())
    }
}
