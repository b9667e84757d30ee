//! A [`Store`] in front of another that traces and times each write (one
//! transaction on either backend) and counts the activities each records.
//! It changes nothing: every call goes to the inner store as it came.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use tracing::Instrument;

use super::{
    Activity, Applied, Change, Claimed, Created, Delivery, ListQuery, ManifestEntry, NewWatch,
    ObjectsQuery, RecordOutcome, Result, Store,
};
use crate::{
    clock::Timestamp,
    metrics::Metrics,
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId, WatchKey},
};

pub struct Measured {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Measured {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        span: tracing::Span,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        self.metrics.store_transaction(operation, started.elapsed());
        if let Err(e) = &result {
            span.record("error", tracing::field::display(e));
        }
        result
    }
}

#[async_trait]
impl Store for Measured {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        let span = tracing::info_span!("store.create_watch", tenant = %new.tenant,
            watch_id = %new.id, error = tracing::field::Empty);
        self.timed("create_watch", span, self.inner.create_watch(new))
            .await
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        self.inner.get_watch(tenant, id).await
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        self.inner.list_watches(tenant, query).await
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        self.metrics.store_batch(activities.len());
        let span = tracing::info_span!(
            "store.record",
            activities = activities.len() as i64,
            error = tracing::field::Empty
        );
        self.timed("record", span, self.inner.record(activities, now))
            .await
    }

    async fn apply(&self, change: Change) -> Result<Option<Applied>> {
        let span = tracing::info_span!("store.apply", tenant = %change.tenant, watch_id = %change.id,
            state = change.lifecycle.state.as_str(), events = change.events.len() as i64,
            shard = change.fence.as_ref().map(|f| i64::from(f.shard)), error = tracing::field::Empty);
        self.timed("apply", span, self.inner.apply(change)).await
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
        let span = tracing::info_span!("store.retire", tenant = %tenant, watch_id = %id,
            error = tracing::field::Empty);
        self.timed("retire", span, self.inner.retire(tenant, id, now))
            .await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed> {
        let span = tracing::info_span!("store.claim_deliveries", error = tracing::field::Empty);
        self.timed(
            "claim_deliveries",
            span,
            self.inner.claim_deliveries(now, lease_until, limit),
        )
        .await
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        event: Option<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Vec<WatchEvent>>> {
        let span = tracing::info_span!("store.finish_delivery", error = tracing::field::Empty);
        self.timed(
            "finish_delivery",
            span,
            self.inner.finish_delivery(delivery, lease, event, now),
        )
        .await
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        self.inner.deliveries(tenant, id).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
