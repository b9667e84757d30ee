//! The outbox in the memory store: claiming due entries and recording
//! attempts, as the DynamoDB store does. Entries are written in the
//! transaction that appends the event they deliver (`MemoryStore::commit`);
//! a claim is a write per entry conditioned on its `next_attempt_at` as read
//! and on it still pending; an attempt is conditioned on the claim's lease,
//! and its event (a delivery given up) is appended in the same transaction.
//! It never claims an entry without its lease condition. Pending entries
//! are read strongly consistent (DynamoDB reads them from its lagging
//! index, whose stale entries then fail their condition).

use super::{
    MAX_ATTEMPTS, MemoryStore,
    transact::{Change, Check, Op, Write, delivery_id},
};
use crate::{
    clock::Timestamp,
    store::{Claimed, Delivery, DeliveryState, Result, StoreError},
    watch::{EventKind, TenantId, WatchEvent, WatchId, WatchKey},
};

impl MemoryStore {
    /// [`crate::store::Store::claim_deliveries`].
    pub(super) async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed> {
        let mut pending: Vec<Delivery> = self
            .request(|t| {
                t.outbox
                    .values()
                    .filter(|d| d.state == DeliveryState::Pending)
                    .cloned()
                    .collect()
            })
            .await;
        // Earliest due first; entries due together in key order (a stable sort).
        pending.sort_by_key(|d| d.next_attempt_at);
        let mut claimed = Claimed::default();
        let due = |at: Timestamp, claimed: &mut Claimed| {
            claimed.next_due = Some(claimed.next_due.map_or(at, |d| d.min(at)));
        };
        for mut d in pending {
            if d.next_attempt_at > now || claimed.deliveries.len() >= limit {
                due(d.next_attempt_at, &mut claimed);
                continue;
            }
            let read = d.next_attempt_at;
            d.next_attempt_at = lease_until;
            let put = Op::put(
                Check::Leased(delivery_id(&d), read),
                Write::Delivery(d.clone()),
            );
            if self.transact(vec![put], None).await.is_ok() {
                due(lease_until, &mut claimed);
                claimed.deliveries.push(d);
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
        let id = delivery_id(delivery);
        let put = || {
            Op::put(
                Check::Leased(id.clone(), lease),
                Write::Delivery(delivery.clone()),
            )
        };
        for _ in 0..MAX_ATTEMPTS {
            let watch = match &event {
                Some(_) => self.request(|t| t.watch_at(&id.0)).await,
                None => None,
            };
            let Some((watch, revision)) = watch else {
                return Ok(self
                    .transact(vec![put()], None)
                    .await
                    .ok()
                    .map(|()| Vec::new()));
            };
            let change = Change {
                watch,
                expected_revision: Some(revision),
                events: event.clone().into_iter().collect(),
                extra: vec![put()],
                now,
            };
            match self.commit(change, None).await {
                Ok((_, events)) => return Ok(Some(events)),
                Err(cancelled) if cancelled.delivery_lease_failed() => return Ok(None),
                // The watch moved: read it again.
                Err(_) => {}
            }
        }
        Err(StoreError::Busy(format!(
            "watch {} kept changing; gave up recording a delivery after {MAX_ATTEMPTS} attempts",
            delivery.watch_id
        )))
    }

    /// [`crate::store::Store::deliveries`]: by event, then target.
    pub(super) async fn deliveries_of(
        &self,
        tenant: &TenantId,
        id: &WatchId,
    ) -> Result<Vec<Delivery>> {
        let key = WatchKey {
            tenant: tenant.clone(),
            id: id.clone(),
        };
        let from = (key.clone(), 0, 0);
        let to = (key, u64::MAX, u32::MAX);
        Ok(self
            .request(|t| t.outbox.range(from..=to).map(|(_, d)| d.clone()).collect())
            .await)
    }
}
