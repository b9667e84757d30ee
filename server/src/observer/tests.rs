//! The observer's loop against a store whose writes can be held: a write
//! on its way delays no other watch's decision, and one refused under a
//! lease lost and taken again since is decided again under the new one.

use std::{sync::Mutex, time::Duration};

use async_trait::async_trait;
use futures::StreamExt;

use super::*;
use crate::{
    hub::Hub,
    store::{
        Activity, ActivityKind, Change, Claimed, ClusterTable, Created, Delivery, Fence, ListQuery,
        ManifestEntry, NewWatch, ObjectsQuery, RecordOutcome, Result, memory::MemoryStore,
        publishing::Publishing, sqlite::SqliteStore,
    },
    watch::{Bucket, Labels, Policy, Prefix, Source, TenantId},
};

const T0: i64 = 1_800_000_000_000;

/// A store whose `apply` of one watch waits until it is let through.
struct Gated {
    inner: Arc<dyn Store>,
    held: Mutex<Option<WatchId>>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gated {
    async fn wait_for(&self, id: &WatchId) {
        let held = self.held.lock().unwrap().as_ref() == Some(id);
        if held {
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
        }
    }
}

#[async_trait]
impl Store for Gated {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        self.inner.create_watch(new).await
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        self.inner.get_watch(tenant, id).await
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        self.inner.list_watches(tenant, query).await
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        self.inner.record(activities, now).await
    }

    async fn apply(&self, change: Change) -> Result<Option<Applied>> {
        self.wait_for(&change.id).await;
        self.inner.apply(change).await
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
        self.inner
            .finish_delivery(delivery, lease, event, now)
            .await
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        self.inner.deliveries(tenant, id).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

fn quiet(window: u64, now: Timestamp) -> NewWatch {
    NewWatch {
        tenant: TenantId::parse("tenant", "acme").unwrap(),
        id: WatchId::generate(),
        source: Source::objects(
            Bucket::parse("bucket", "acme-lake").unwrap(),
            Prefix::parse("prefix", "").unwrap(),
            Default::default(),
        ),
        policy: Policy {
            rule: Rule::QuietPeriod {
                window: Duration::from_secs(window),
            },
            ..Policy::default()
        },
        labels: Labels::default(),
        client_token: None,
        created_at: now,
        trace: Default::default(),
    }
}

/// A watch of one object, created at `now`.
async fn watch_of_one(store: &dyn Store, window: u64, now: Timestamp) -> Watch {
    let Created::New { watch, .. } = store.create_watch(quiet(window, now)).await.unwrap() else {
        panic!("a new watch");
    };
    let activity = Activity {
        tenant: watch.tenant.clone(),
        watch_id: watch.id.clone(),
        kind: ActivityKind::Created,
        key: "a".into(),
        sequencer: String::new(),
        size: 1,
        event_time: None,
    };
    let outcome = store.record(vec![activity], now).await.unwrap();
    outcome.updated[0].0.clone()
}

/// The watch's terminal event, within a minute (of paused time).
async fn terminal(hub: &Arc<Hub>, watch: &Watch) -> (&'static str, Timestamp) {
    let mut events = hub.subscribe(watch, watch.last_seq);
    let first_terminal = async {
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            if event.kind.is_terminal() {
                return (event.kind.name(), event.time);
            }
        }
        panic!("the stream ended without a terminal event");
    };
    tokio::time::timeout(Duration::from_secs(60), first_terminal)
        .await
        .expect("a terminal event within a minute")
}

/// An observer on `inner` behind a [`Gated`] store, publishing to a hub;
/// with `owned`, one replica's of a cluster.
struct Running {
    gated: Arc<Gated>,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    handle: ObserverHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _settled: tokio::sync::watch::Sender<Timestamp>,
}

impl Running {
    fn start(inner: Arc<dyn Store>, t0: Timestamp, owned: Option<Arc<dyn Owned>>) -> Self {
        let (open, _) = tokio::sync::watch::channel(false);
        let gated = Arc::new(Gated {
            inner,
            held: Mutex::new(None),
            open,
        });
        let clock = Clock::starting_at(t0);
        let shutdown = CancellationToken::new();
        let hub = Arc::new(Hub::new(gated.clone(), clock, shutdown.clone()));
        let store: Arc<dyn Store> = Arc::new(Publishing::new(gated.clone(), hub.clone()));
        let (settled_tx, settled) = tokio::sync::watch::channel(Timestamp::MAX);
        let (mut observer, handle) = Observer::new(
            store.clone(),
            Arc::new(Routes::default()),
            clock,
            settled,
            None,
            Arc::new(Metrics::new()),
        );
        if let Some(owned) = owned {
            observer.clustered(owned, Duration::from_secs(60));
        }
        let task = tokio::spawn(observer.run(shutdown.clone()));
        Self {
            gated,
            hub,
            store,
            handle,
            shutdown,
            task,
            _settled: settled_tx,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_write_delays_no_other_watchs_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Timestamp::from_millis(T0);
    let inner = Arc::new(SqliteStore::open(dir.path().join("o.db")).unwrap());
    let running = Running::start(inner, t0, None);
    let (gated, hub, store, handle) = (
        &running.gated,
        &running.hub,
        &running.store,
        &running.handle,
    );

    // `stuck` is due at 10 s and its write waits; `next` is due at 20 s.
    let stuck = watch_of_one(&**store, 10, t0).await;
    let next = watch_of_one(&**store, 20, t0).await;
    *gated.held.lock().unwrap() = Some(stuck.id.clone());
    handle.arm(stuck.clone()).await.unwrap();
    handle.arm(next.clone()).await.unwrap();

    assert_eq!(
        terminal(hub, &next).await,
        ("completed", t0.plus(Duration::from_secs(20))),
        "decided at its deadline while the other watch's write waits"
    );
    let held = store
        .get_watch(&stuck.tenant, &stuck.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.state(), WatchState::Active, "its write is still held");

    gated.open.send_replace(true);
    let (kind, _) = terminal(hub, &stuck).await;
    assert_eq!(kind, "completed", "written once let through");
    running.stop().await;
}

/// One replica's hold on the one shard of a cluster, at a version.
struct Held(Mutex<Option<u64>>);

impl Owned for Held {
    fn shard(&self, _: &WatchId) -> u32 {
        0
    }

    fn fence(&self, _: &WatchId) -> Option<Fence> {
        let version = (*self.0.lock().unwrap())?;
        Some(Fence {
            shard: 0,
            owner: "r1".into(),
            version,
        })
    }

    fn lose(&self, _: u32, version: u64) -> bool {
        let mut held = self.0.lock().unwrap();
        let lost = *held == Some(version);
        if lost {
            *held = None;
        }
        lost
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_refused_under_a_lease_lost_and_taken_again_is_decided_again() {
    let table = Arc::new(MemoryStore::new(1));
    table.create_lease(0).await.unwrap();
    let free = table.cluster_view().await.unwrap().leases.remove(0);
    let t0 = Timestamp::from_millis(T0);
    let first = table.take_lease(&free, "r1", t0).await.unwrap().unwrap();
    let held = Arc::new(Held(Mutex::new(Some(first.version))));

    let running = Running::start(table.clone(), t0, Some(held.clone()));
    let (gated, hub, store, handle) = (
        &running.gated,
        &running.hub,
        &running.store,
        &running.handle,
    );

    // Due at 10 s: its completion is written under the first lease, and waits.
    let watch = watch_of_one(&**store, 10, t0).await;
    *gated.held.lock().unwrap() = Some(watch.id.clone());
    handle.arm(watch.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;

    // Meanwhile another replica takes the lease, and this one takes it back.
    let lease = table.cluster_view().await.unwrap().leases.remove(0);
    let other = table.take_lease(&lease, "r2", t0).await.unwrap().unwrap();
    let again = table.take_lease(&other, "r1", t0).await.unwrap().unwrap();
    *held.0.lock().unwrap() = Some(again.version);

    // The held write is refused (its lease is gone); the watch is still this
    // replica's, and completes under the lease it holds now.
    gated.open.send_replace(true);
    let (kind, _) = terminal(hub, &watch).await;
    assert_eq!(kind, "completed");
    let commits = table.commits();
    let fences: Vec<u64> = commits
        .iter()
        .filter_map(|c| c.fence.as_ref().map(|f| f.version))
        .collect();
    assert_eq!(fences, [again.version], "written once, under the new lease");
    running.stop().await;
}
