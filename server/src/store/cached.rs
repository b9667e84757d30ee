//! A [`Store`] in front of another that answers [`Store::get_watch`] and
//! [`Store::watches`] from memory for watches this process wrote recently.
//!
//! Only for a store this process is the sole writer of (SQLite): then the
//! state a write returns is the committed state until this process's next
//! write of that watch, and every write passes through here. The cache is
//! filled by writes only, never by reads: a read may return a state that a
//! concurrent write has already replaced, and putting it in the cache could
//! keep it there after that write returned. Each entry keeps the highest
//! version it has seen (`last_seq`, then `activity`; a lifecycle-only change
//! moves neither and replaces an equal version, which is safe because the
//! observer writes one lifecycle change of a watch at a time). A write whose
//! outcome is unknown (it failed) or whose new state is not returned
//! ([`Store::finish_delivery`]) leaves the watch uncached until the next
//! write that returns it. It never changes what the inner store does.

use std::sync::Arc;

use async_trait::async_trait;
use quick_cache::sync::{Cache, EntryAction, EntryResult};

use super::{
    Activity, Applied, Change, Claimed, Created, Delivery, ListQuery, ManifestEntry, NewWatch,
    ObjectsQuery, RecordOutcome, Result, Store,
};
use crate::{
    clock::Timestamp,
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId, WatchKey},
};

/// Watches kept by default: a few tens of MiB at most.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// A watch's place in its own history: every write that returns a watch
/// moves it forward or (a lifecycle-only change) keeps it.
type Version = (u64, u64);

fn version_of(watch: &Watch) -> Version {
    (watch.last_seq, watch.counters.activity())
}

#[derive(Clone)]
enum Slot {
    /// The watch as its latest write here left it.
    Fresh(Version, Arc<Watch>),
    /// A write whose new state is unknown touched the watch: read the store
    /// until a write returns a state of at least this version.
    Behind(Version),
}

impl Slot {
    fn version(&self) -> Version {
        match self {
            Self::Fresh(v, _) | Self::Behind(v) => *v,
        }
    }
}

pub struct Cached {
    inner: Arc<dyn Store>,
    watches: Cache<WatchKey, Slot>,
}

impl Cached {
    pub fn new(inner: Arc<dyn Store>, capacity: usize) -> Self {
        Self {
            inner,
            watches: Cache::new(capacity.max(1)),
        }
    }

    /// Keeps `watch`, just returned by a committed write, unless a newer state is kept.
    fn wrote(&self, watch: &Watch) {
        let version = version_of(watch);
        let fresh = || Slot::Fresh(version, Arc::new(watch.clone()));
        let result = self.watches.entry(&watch.key(), None, |_, slot| {
            if slot.version() <= version {
                *slot = fresh();
            }
            EntryAction::Retain(())
        });
        if let EntryResult::Vacant(guard) = result {
            let _ = guard.insert(fresh());
        }
    }

    /// Stops answering for `key` until a write returns a state past what is kept now.
    fn unknown(&self, key: &WatchKey) {
        let result = self.watches.entry(key, None, |_, slot| {
            let (seq, activity) = slot.version();
            *slot = Slot::Behind((seq.saturating_add(1), activity));
            EntryAction::Retain(())
        });
        if let EntryResult::Vacant(guard) = result {
            // Nothing kept: nothing to be wrong about, but a write already on
            // its way may still put an older state here.
            let _ = guard.insert(Slot::Behind((u64::MAX, u64::MAX)));
        }
    }

    fn cached(&self, key: &WatchKey) -> Option<Watch> {
        match self.watches.get(key)? {
            Slot::Fresh(_, watch) => Some((*watch).clone()),
            Slot::Behind(_) => None,
        }
    }

    fn after_apply(&self, key: &WatchKey, result: &Result<Option<Applied>>) {
        match result {
            Ok(Some(Applied::Done { watch, .. })) => self.wrote(watch),
            // A conflict changed nothing; what it read may already be replaced.
            Ok(Some(Applied::Conflict(_))) | Ok(None) => {}
            Err(_) => self.unknown(key),
        }
    }
}

#[async_trait]
impl Store for Cached {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        let created = self.inner.create_watch(new).await?;
        if let Created::New { watch, .. } = &created {
            self.wrote(watch);
        }
        Ok(created)
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        let key = WatchKey {
            tenant: tenant.clone(),
            id: id.clone(),
        };
        match self.cached(&key) {
            Some(watch) => Ok(Some(watch)),
            None => self.inner.get_watch(tenant, id).await,
        }
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        self.inner.list_watches(tenant, query).await
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        // Each watch once (a batch holds many activities of few watches).
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<WatchKey> = activities
            .iter()
            .filter(|a| seen.insert((&a.tenant, &a.watch_id)))
            .map(|a| key_of(&a.tenant, &a.watch_id))
            .collect();
        match self.inner.record(activities, now).await {
            Ok(outcome) => {
                for (watch, _) in &outcome.updated {
                    self.wrote(watch);
                }
                Ok(outcome)
            }
            Err(e) => {
                for key in &keys {
                    self.unknown(key);
                }
                Err(e)
            }
        }
    }

    async fn apply(&self, change: Change) -> Result<Option<Applied>> {
        let key = change.key();
        let result = self.inner.apply(change).await;
        self.after_apply(&key, &result);
        result
    }

    async fn watches(&self, keys: &[WatchKey]) -> Result<Vec<Watch>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut missed = Vec::new();
        for key in keys.iter().collect::<std::collections::BTreeSet<_>>() {
            match self.cached(key) {
                Some(watch) => out.push(watch),
                None => missed.push(key.clone()),
            }
        }
        if !missed.is_empty() {
            out.extend(self.inner.watches(&missed).await?);
        }
        Ok(out)
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
        let appends = event.is_some();
        let result = self
            .inner
            .finish_delivery(delivery, lease, event, now)
            .await;
        if appends {
            // The event moved the watch's log; its new state is not returned.
            self.unknown(&key_of(&delivery.tenant, &delivery.watch_id));
        }
        result
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        self.inner.deliveries(tenant, id).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

fn key_of(tenant: &TenantId, id: &WatchId) -> WatchKey {
    WatchKey {
        tenant: tenant.clone(),
        id: id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        store::{ActivityKind, sqlite::SqliteStore},
        watch::Policy,
        watch::{Bucket, Labels, Prefix, Source},
    };

    /// A SQLite store, and the cache in front of it. Writes to the first
    /// bypass the cache, as a second writer would.
    fn stores(dir: &tempfile::TempDir) -> (Arc<dyn Store>, Cached) {
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("c.db")).unwrap());
        (inner.clone(), Cached::new(inner, 16))
    }

    fn new_watch(now: Timestamp) -> NewWatch {
        NewWatch {
            tenant: TenantId::parse("tenant", "acme").unwrap(),
            id: WatchId::generate(),
            source: Source::objects(
                Bucket::parse("bucket", "acme-lake").unwrap(),
                Prefix::parse("prefix", "").unwrap(),
                Default::default(),
            ),
            policy: Policy::default(),
            labels: Labels::default(),
            client_token: None,
            created_at: now,
            trace: Default::default(),
        }
    }

    fn created(watch: &Watch, key: &str) -> Activity {
        Activity {
            tenant: watch.tenant.clone(),
            watch_id: watch.id.clone(),
            kind: ActivityKind::Created,
            key: key.into(),
            sequencer: String::new(),
            size: 1,
            event_time: None,
        }
    }

    async fn objects(store: &dyn Store, watch: &Watch) -> u64 {
        let read = store.get_watch(&watch.tenant, &watch.id).await.unwrap();
        read.expect("the watch exists").counters.object_count
    }

    async fn start(cached: &Cached, now: Timestamp) -> Watch {
        match cached.create_watch(new_watch(now)).await.unwrap() {
            Created::New { watch, .. } => watch,
            Created::Existing(_) => panic!("a new watch"),
        }
    }

    #[tokio::test]
    async fn a_watch_written_here_is_read_from_memory_as_its_last_write_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, cached) = stores(&dir);
        let now = Timestamp::from_millis(1_800_000_000_000);
        let watch = start(&cached, now).await;
        cached
            .record(vec![created(&watch, "a")], now)
            .await
            .unwrap();
        assert_eq!(objects(&cached, &watch).await, 1);
        // Behind the cache's back: not seen, so the read above came from memory.
        inner.record(vec![created(&watch, "b")], now).await.unwrap();
        assert_eq!(objects(&cached, &watch).await, 1);
        assert_eq!(objects(&*inner, &watch).await, 2);
        // The next write through the cache returns (and keeps) the whole state.
        cached
            .record(vec![created(&watch, "c")], now)
            .await
            .unwrap();
        assert_eq!(objects(&cached, &watch).await, 3);
    }

    #[tokio::test]
    async fn reads_never_fill_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, cached) = stores(&dir);
        let now = Timestamp::from_millis(1_800_000_000_000);
        let Created::New { watch, .. } = inner.create_watch(new_watch(now)).await.unwrap() else {
            panic!("a new watch");
        };
        assert_eq!(objects(&cached, &watch).await, 0);
        inner.record(vec![created(&watch, "a")], now).await.unwrap();
        assert_eq!(objects(&cached, &watch).await, 1);
    }

    #[tokio::test]
    async fn an_older_state_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_inner, cached) = stores(&dir);
        let now = Timestamp::from_millis(1_800_000_000_000);
        let started = start(&cached, now).await;
        let outcome = cached
            .record(vec![created(&started, "a")], now)
            .await
            .unwrap();
        let (newer, _) = &outcome.updated[0];
        // A write that returned before the record reports after it.
        cached.wrote(&started);
        assert_eq!(objects(&cached, newer).await, 1);
    }

    #[tokio::test]
    async fn a_write_of_unknown_outcome_reads_the_store_until_a_write_returns_a_later_state() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, cached) = stores(&dir);
        let now = Timestamp::from_millis(1_800_000_000_000);
        let watch = start(&cached, now).await;
        // A write that may have committed (it failed, or returned no state)...
        inner.record(vec![created(&watch, "a")], now).await.unwrap();
        cached.unknown(&watch.key());
        assert_eq!(objects(&cached, &watch).await, 1, "read from the store");
        // ...and a write that returned before it cannot bring back its older state.
        cached.wrote(&watch);
        assert_eq!(
            objects(&cached, &watch).await,
            1,
            "still read from the store"
        );
        cached
            .record(vec![created(&watch, "b")], now)
            .await
            .unwrap();
        inner.record(vec![created(&watch, "c")], now).await.unwrap();
        assert_eq!(objects(&cached, &watch).await, 2, "from memory again");
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_watch_uncached() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, cached) = stores(&dir);
        let now = Timestamp::from_millis(1_800_000_000_000);
        let watch = start(&cached, now).await;
        assert!(cached.cached(&watch.key()).is_some());
        inner.close().await.unwrap();
        let failed = cached.record(vec![created(&watch, "a")], now).await;
        assert!(failed.is_err());
        assert!(cached.cached(&watch.key()).is_none());
    }
}
