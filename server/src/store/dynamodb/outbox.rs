//! The outbox in the DynamoDB store: claiming due entries and recording
//! attempts. Entries are put in the transaction that appends the event they
//! deliver ([`super::transact`]); a claim or an attempt is a put conditioned
//! on `next_at` (the lease) and on the entry still pending, and a finished
//! entry gets its TTL then. An attempt's event (a delivery given up) is
//! appended in the same transaction. It never claims an entry without its
//! lease condition.

use aws_sdk_dynamodb::error::SdkError;

use super::{
    DynamoStore, LIVE_INDEX, MAX_ATTEMPTS,
    codec::{OUTBOX_SHARD, delivery_item, from_json, get_n, get_s, n, outbox_sk, s, watch_pk},
    error::aws,
    transact::Change,
};
use crate::{
    clock::Timestamp,
    store::{Claimed, Delivery, DeliveryState, Result, StoreError},
    watch::{EventKind, TenantId, WatchEvent, WatchId},
};

impl DynamoStore {
    /// [`crate::store::Store::claim_deliveries`].
    pub(super) async fn claim(
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

    /// [`crate::store::Store::finish_delivery`].
    pub(super) async fn finish(
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
                Some(_) => self.load_at(&delivery.tenant, &delivery.watch_id).await?,
                None => None,
            };
            let Some((watch, read)) = watch else {
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
            let change = Change {
                watch,
                expected: Some(read),
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

    /// [`crate::store::Store::deliveries`].
    pub(super) async fn deliveries_of(
        &self,
        tenant: &TenantId,
        id: &WatchId,
    ) -> Result<Vec<Delivery>> {
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
}
