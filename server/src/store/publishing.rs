//! The one write path that publishes: a [`Store`] in front of the others
//! that hands every event a write committed to the [`Hub`] once, as soon as
//! the write returns, and wakes the delivery task when a committed event has
//! notify targets that want it. Every service path writes through it, so no
//! caller publishes, and none can forget to.
//!
//! Per watch the events arrive in `seq` order unless two writes of the same
//! watch return together; a subscriber that sees a `seq` ahead of the one it
//! expects reads the gap from the log and drops the late copy, so streams
//! stay gap-free and duplicate-free either way ([`crate::hub`]).
//!
//! It never changes what the inner store does, and never reads.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Activity, Applied, Change, Claimed, Created, Delivery, ListQuery, ManifestEntry, NewWatch,
    ObjectsQuery, RecordOutcome, Result, Store,
};
use crate::{
    clock::Timestamp,
    hub::Hub,
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId, WatchKey},
};

pub struct Publishing {
    inner: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// Wakes the delivery task (set once it exists).
    deliveries: OnceLock<Arc<Notify>>,
}

impl Publishing {
    pub fn new(inner: Arc<dyn Store>, hub: Arc<Hub>) -> Self {
        Self {
            inner,
            hub,
            deliveries: OnceLock::new(),
        }
    }

    /// Wakes `wake` whenever committed events have notify targets that want them.
    pub fn wake_deliveries(&self, wake: Arc<Notify>) {
        let _ = self.deliveries.set(wake);
    }

    fn committed(&self, watch: &Watch, events: &[WatchEvent]) {
        self.hub.publish(events);
        if let Some(wake) = self.deliveries.get()
            && events.iter().any(|e| watch.policy.notify.wants(&e.kind))
        {
            wake.notify_one();
        }
    }

    fn applied(&self, result: &Result<Option<Applied>>) {
        if let Ok(Some(Applied::Done { watch, events })) = result {
            self.committed(watch, events);
        }
    }
}

#[async_trait]
impl Store for Publishing {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        let created = self.inner.create_watch(new).await?;
        if let Created::New { watch, events } = &created {
            self.committed(watch, events);
        }
        Ok(created)
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        self.inner.get_watch(tenant, id).await
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        self.inner.list_watches(tenant, query).await
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        let outcome = self.inner.record(activities, now).await?;
        for (watch, events) in &outcome.updated {
            self.committed(watch, events);
        }
        Ok(outcome)
    }

    async fn apply(&self, change: Change) -> Result<Option<Applied>> {
        let result = self.inner.apply(change).await;
        self.applied(&result);
        result
    }

    async fn watches(&self, keys: &[WatchKey]) -> Result<Vec<Watch>> {
        self.inner.watches(keys).await
    }

    async fn list_objects(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>> {
        self.inner.list_objects(tenant, id, query).await
    }

    async fn counted_keys(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>> {
        self.inner.counted_keys(tenant, id, keys).await
    }

    async fn events_after(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<WatchEvent>> {
        self.inner.events_after(tenant, id, after_seq, limit).await
    }

    async fn live_watches(&self, now: Timestamp) -> Result<Vec<Watch>> {
        self.inner.live_watches(now).await
    }

    async fn retire(&self, tenant: &TenantId, id: &WatchId, now: Timestamp) -> Result<()> {
        self.inner.retire(tenant, id, now).await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed> {
        self.inner.claim_deliveries(now, lease_until, limit).await
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        event: Option<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Vec<WatchEvent>>> {
        let finished = self
            .inner
            .finish_delivery(delivery, lease, event, now)
            .await?;
        if let Some(events) = &finished {
            // A delivery's own outcome (DELIVERY_FAILED): never delivered again.
            self.hub.publish(events);
        }
        Ok(finished)
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        self.inner.deliveries(tenant, id).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        clock::Clock,
        store::{ActivityKind, sqlite::SqliteStore},
        watch::Policy,
        watch::{Bucket, Labels, Prefix, Source, WatchState},
    };

    #[tokio::test]
    async fn every_committed_event_reaches_a_live_subscriber_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("p.db")).unwrap());
        let clock = Clock::new();
        let hub = Arc::new(Hub::new(inner.clone(), clock, CancellationToken::new()));
        let store = Publishing::new(inner, hub.clone());
        let wake = Arc::new(Notify::new());
        store.wake_deliveries(wake.clone());
        let mut policy = Policy::default();
        policy
            .notify
            .targets
            .push(crate::watch::NotifyTarget::Webhook {
                url: "https://hooks.example.com/done".into(),
                secret_ref: String::new(),
            });
        let new = NewWatch {
            tenant: TenantId::parse("tenant", "acme").unwrap(),
            id: WatchId::generate(),
            source: Source::objects(
                Bucket::parse("bucket", "acme-lake").unwrap(),
                Prefix::parse("prefix", "").unwrap(),
                Default::default(),
            ),
            policy,
            labels: Labels::default(),
            client_token: None,
            created_at: clock.now(),
            trace: Default::default(),
        };
        let Created::New { watch, .. } = store.create_watch(new).await.unwrap() else {
            panic!("a new watch");
        };
        let mut stream = hub.subscribe(&watch, 0);
        let mut next = async || {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
            let event = event
                .expect("published")
                .expect("an event")
                .expect("not an error");
            (event.seq, event.kind.name())
        };
        assert_eq!(next().await, (1, "started"), "from the log");

        let activity = Activity {
            tenant: watch.tenant.clone(),
            watch_id: watch.id.clone(),
            kind: ActivityKind::Created,
            key: "a".into(),
            sequencer: String::new(),
            size: 1,
            event_time: None,
        };
        store.record(vec![activity], clock.now()).await.unwrap();
        assert_eq!(next().await, (2, "progress"));

        let current = store
            .get_watch(&watch.tenant, &watch.id)
            .await
            .unwrap()
            .unwrap();
        let cancelled = crate::watch::Lifecycle {
            state: WatchState::Cancelled,
            completed_at: Some(clock.now()),
            ..current.lifecycle.clone()
        };
        let kinds = vec![EventKind::Cancelled {
            reason: "done".into(),
        }];
        let guard = crate::store::Guard::exact(&current);
        let applied = store
            .apply(crate::store::Change::new(
                &watch.tenant,
                &watch.id,
                guard,
                cancelled,
                kinds,
                clock.now(),
            ))
            .await
            .unwrap();
        assert!(matches!(applied, Some(Applied::Done { .. })));
        assert_eq!(next().await, (3, "cancelled"));
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("the delivery task is woken for the notify target");
        assert!(
            stream.next().await.is_none(),
            "nothing more, and nothing twice"
        );
    }
}
