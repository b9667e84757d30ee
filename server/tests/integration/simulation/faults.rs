//! Faults one replica suffers, and the way they reach it: [`Faults`] gates
//! every call the replica makes to the store and the queue, and
//! [`FaultyTable`] puts the gate in front of the shared in-memory store.
//!
//! - killed: calls never return (nothing it sends after lands, nothing it
//!   received reaches it), as after SIGKILL;
//! - stalled until an instant: calls wait until then, before and after
//!   reaching the store (a process paused, by a long GC say);
//! - cut off from the store until an instant: store calls fail;
//! - slow or failing store calls for a while: each waits up to a bound, or
//!   fails with a probability.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use streamwatch_server::{
    clock::Timestamp,
    ingest::queue::QueueCallError,
    store::{
        Activity, Applied, Change, Claimed, ClusterTable, ClusterView, Created, Delivery,
        LeaseItem, ListQuery, ManifestEntry, NewWatch, ObjectsQuery, RecordOutcome, ReplicaItem,
        Result, RouteEntry, Store, StoreError,
    },
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId, WatchKey},
};
use tokio::time::Instant;

#[derive(Default)]
struct State {
    killed: bool,
    stalled_until: Option<Instant>,
    cut_off_until: Option<Instant>,
    /// Each store call waits up to this long, until the instant.
    slow: Option<(Duration, Instant)>,
    /// Each store call fails with this probability, until the instant.
    failing: Option<(f64, Instant)>,
}

/// What one incarnation of a replica suffers.
pub struct Faults {
    state: Mutex<State>,
    rng: Mutex<fastrand::Rng>,
}

impl Faults {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        })
    }

    pub fn kill(&self) {
        self.state.lock().unwrap().killed = true;
    }

    pub fn stall_until(&self, until: Instant) {
        self.state.lock().unwrap().stalled_until = Some(until);
    }

    pub fn cut_off_until(&self, until: Instant) {
        self.state.lock().unwrap().cut_off_until = Some(until);
    }

    pub fn slow_until(&self, at_most: Duration, until: Instant) {
        self.state.lock().unwrap().slow = Some((at_most, until));
    }

    pub fn failing_until(&self, probability: f64, until: Instant) {
        self.state.lock().unwrap().failing = Some((probability, until));
    }

    /// Waits while stalled; never returns once killed.
    async fn pass(&self) {
        loop {
            let (killed, stalled) = {
                let s = self.state.lock().unwrap();
                (s.killed, s.stalled_until)
            };
            if killed {
                std::future::pending::<()>().await;
            }
            match stalled {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    pub async fn queue_call(&self) -> std::result::Result<(), QueueCallError> {
        self.pass().await;
        Ok(())
    }

    /// Runs one store call through the faults.
    async fn store_call<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        self.pass().await;
        let now = Instant::now();
        let (cut_off, slow, failing) = {
            let s = self.state.lock().unwrap();
            (
                s.cut_off_until.is_some_and(|u| u > now),
                s.slow.filter(|(_, u)| *u > now).map(|(d, _)| d),
                s.failing.filter(|(_, u)| *u > now).map(|(p, _)| p),
            )
        };
        if cut_off {
            return Err(StoreError::Unavailable("cut off from the store".into()));
        }
        let (delay, fails) = {
            let mut rng = self.rng.lock().unwrap();
            (
                slow.map(|d| {
                    Duration::from_millis(rng.u64(0..=u64::try_from(d.as_millis()).unwrap_or(0)))
                }),
                failing.is_some_and(|p| rng.f64() < p),
            )
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if fails {
            return Err(StoreError::Unavailable("the store failed the call".into()));
        }
        let out = call.await;
        // The answer reaches a paused process when it resumes, a killed one never.
        self.pass().await;
        out
    }
}

/// The shared store as one replica incarnation reaches it.
pub struct FaultyTable {
    pub inner: Arc<dyn ClusterTable>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Store for FaultyTable {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        self.faults.store_call(self.inner.create_watch(new)).await
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        self.faults
            .store_call(self.inner.get_watch(tenant, id))
            .await
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        self.faults
            .store_call(self.inner.list_watches(tenant, query))
            .await
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        self.faults
            .store_call(self.inner.record(activities, now))
            .await
    }

    async fn apply(&self, change: Change) -> Result<Option<Applied>> {
        self.faults.store_call(self.inner.apply(change)).await
    }

    async fn watches(&self, keys: &[WatchKey]) -> Result<Vec<Watch>> {
        self.faults.store_call(self.inner.watches(keys)).await
    }

    async fn counted_keys(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>> {
        self.faults
            .store_call(self.inner.counted_keys(tenant, id, keys))
            .await
    }

    async fn list_objects(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>> {
        self.faults
            .store_call(self.inner.list_objects(tenant, id, query))
            .await
    }

    async fn events_after(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<WatchEvent>> {
        self.faults
            .store_call(self.inner.events_after(tenant, id, after_seq, limit))
            .await
    }

    async fn live_watches(&self, now: Timestamp) -> Result<Vec<Watch>> {
        self.faults.store_call(self.inner.live_watches(now)).await
    }

    async fn retire(&self, tenant: &TenantId, id: &WatchId, now: Timestamp) -> Result<()> {
        self.faults
            .store_call(self.inner.retire(tenant, id, now))
            .await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed> {
        self.faults
            .store_call(self.inner.claim_deliveries(now, lease_until, limit))
            .await
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        event: Option<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Vec<WatchEvent>>> {
        self.faults
            .store_call(self.inner.finish_delivery(delivery, lease, event, now))
            .await
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        self.faults
            .store_call(self.inner.deliveries(tenant, id))
            .await
    }

    /// The store is shared: one replica stopping closes nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl ClusterTable for FaultyTable {
    fn shards(&self) -> u32 {
        self.inner.shards()
    }

    async fn ensure_shards(&self) -> Result<()> {
        self.faults.store_call(self.inner.ensure_shards()).await
    }

    async fn cluster_view(&self) -> Result<ClusterView> {
        self.faults.store_call(self.inner.cluster_view()).await
    }

    async fn create_lease(&self, shard: u32) -> Result<()> {
        self.faults.store_call(self.inner.create_lease(shard)).await
    }

    async fn take_lease(
        &self,
        seen: &LeaseItem,
        me: &str,
        now: Timestamp,
    ) -> Result<Option<LeaseItem>> {
        self.faults
            .store_call(self.inner.take_lease(seen, me, now))
            .await
    }

    async fn release_lease(&self, lease: &LeaseItem, now: Timestamp) -> Result<()> {
        self.faults
            .store_call(self.inner.release_lease(lease, now))
            .await
    }

    async fn beat(&self, replica: &ReplicaItem, now: Timestamp) -> Result<()> {
        self.faults.store_call(self.inner.beat(replica, now)).await
    }

    async fn bump_routes(&self) -> Result<u64> {
        self.faults.store_call(self.inner.bump_routes()).await
    }

    async fn routes_version(&self) -> Result<u64> {
        self.faults.store_call(self.inner.routes_version()).await
    }

    async fn ack_routes(&self, replica: &str, version: u64) -> Result<()> {
        self.faults
            .store_call(self.inner.ack_routes(replica, version))
            .await
    }

    async fn replicas(&self) -> Result<Vec<ReplicaItem>> {
        self.faults.store_call(self.inner.replicas()).await
    }

    async fn leave(&self, replica: &str) -> Result<()> {
        self.faults.store_call(self.inner.leave(replica)).await
    }

    async fn routes_since(&self, since: Timestamp, until: Timestamp) -> Result<Vec<RouteEntry>> {
        self.faults
            .store_call(self.inner.routes_since(since, until))
            .await
    }

    async fn live_in_shard(&self, shard: u32) -> Result<Vec<Watch>> {
        self.faults
            .store_call(self.inner.live_in_shard(shard))
            .await
    }
}
