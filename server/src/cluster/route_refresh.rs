//! The route task ([`RouteRefresher`]): every `--route-refresh` it reads
//! the route version, reads the route items written since its last read
//! when the version moved (and every [`ROUTE_REQUERY`] anyway), routes them,
//! hands the observer those of shards this replica owns, acknowledges the
//! version in the replica item, and rebuilds the table from the `live` index
//! every [`ROUTE_RELOAD`]. [`Freshness`] tells ingest how fresh the routes
//! are: never past the staleness after a refresh, nor past a lease duration
//! less a heartbeat after the last heartbeat landed.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterArgs, ownership::Ownership};
use crate::{
    clock::{Clock, Timestamp},
    ingest::Routes,
    observer::ObserverHandle,
    store::{ClusterTable, Store},
    watch::WatchKey,
};

/// How far back (and ahead) a route refresh reads route items, beyond the
/// previous refresh: room for replicas' clocks to disagree.
const ROUTE_LOOKBACK: Duration = Duration::from_secs(30);
/// How often the route table is rebuilt from the `live` index, dropping
/// watches that finished elsewhere.
const ROUTE_RELOAD: Duration = Duration::from_secs(300);
/// How often a refresh reads new route items although the route version
/// stood still (a StartWatch that failed before its bump).
pub(super) const ROUTE_REQUERY: Duration = Duration::from_secs(15);

/// The watches this replica has learned from route items, by shard (to
/// hand to the observer when a shard's lease is taken).
#[derive(Default)]
pub(super) struct RouteBook {
    pub(super) known: Mutex<BTreeMap<WatchKey, Known>>,
}

pub(super) struct Known {
    pub(super) shard: u32,
    created_at: Timestamp,
    source: crate::watch::Source,
}

/// How fresh this replica's routes are, for ingest: fresh for the route
/// staleness after a refresh started, and never longer than a lease duration
/// less a heartbeat after the last heartbeat that landed started (the others
/// stop waiting for this replica's route acknowledgements, and its
/// watermark, a lease duration after they last saw its heartbeat move).
pub(super) struct Freshness {
    tx: watch::Sender<Option<Instant>>,
    /// Until when this replica's consumers may take messages off the
    /// queues: a lease duration less a heartbeat after its last heartbeat
    /// that landed started (the others may stop waiting for its watermark
    /// a lease duration after they last saw that heartbeat move).
    in_touch: watch::Sender<Option<Instant>>,
    /// The starts of the last route refresh and of the last heartbeat that landed.
    last: Mutex<(Option<Instant>, Option<Instant>)>,
    beat_bound: Duration,
    staleness: Duration,
}

impl Freshness {
    /// How fresh routes are under `args`, and where ingest follows it.
    pub(super) fn new(
        args: &ClusterArgs,
    ) -> (
        Self,
        watch::Receiver<Option<Instant>>,
        watch::Receiver<Option<Instant>>,
    ) {
        let (tx, fresh) = watch::channel(None);
        let (in_touch, in_touch_rx) = watch::channel(None);
        let freshness = Self {
            tx,
            in_touch,
            last: Mutex::default(),
            beat_bound: args.lease_duration.saturating_sub(args.heartbeat),
            staleness: args.route_refresh * 2,
        };
        (freshness, fresh, in_touch_rx)
    }

    fn routes_read(&self, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.0 = Some(at);
        self.publish(*last);
    }

    pub(super) fn beaten(&self, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.1 = Some(at);
        self.publish(*last);
        self.in_touch.send_replace(Some(at + self.beat_bound));
    }

    /// Publishes the instant the routes count as refreshed at (ingest routes
    /// for the staleness after it).
    fn publish(&self, (routes, beaten): (Option<Instant>, Option<Instant>)) {
        let fresh = fresh_from(routes, beaten, self.beat_bound, self.staleness);
        self.tx.send_if_modified(|current| {
            let changed = *current != fresh;
            *current = fresh;
            changed
        });
    }
}

/// The instant routes count as refreshed at: the refresh's start, held back
/// so that it goes stale `beat_bound` after the last heartbeat landed.
fn fresh_from(
    routes: Option<Instant>,
    beaten: Option<Instant>,
    beat_bound: Duration,
    staleness: Duration,
) -> Option<Instant> {
    let routes = routes?;
    Some(match beaten {
        Some(beaten) => {
            let until = beaten + beat_bound;
            routes.min(until.checked_sub(staleness).unwrap_or(beaten))
        }
        None => routes,
    })
}

/// The route task: reads the route items of watches started anywhere.
pub(super) struct RouteRefresher {
    store: Arc<dyn ClusterTable>,
    routes: Arc<Routes>,
    book: Arc<RouteBook>,
    ownership: Arc<Ownership>,
    observer: ObserverHandle,
    clock: Clock,
    freshness: Arc<Freshness>,
    /// The wall time the last successful read of route items started at.
    cursor: Timestamp,
    /// When the table was last rebuilt from the `live` index.
    reloaded: Option<Instant>,
    /// When route items were last read.
    queried: Option<Instant>,
    /// The route version whose route items are loaded, and the last one
    /// acknowledged in this replica's item.
    loaded: u64,
    acked: u64,
}

impl RouteRefresher {
    /// `cluster`'s route task, routing into `routes` and handing owned
    /// watches to `observer`.
    pub(super) fn new(cluster: &Cluster, routes: Arc<Routes>, observer: ObserverHandle) -> Self {
        Self {
            store: cluster.store.clone(),
            routes,
            book: cluster.book.clone(),
            ownership: cluster.ownership.clone(),
            observer,
            clock: cluster.clock,
            freshness: cluster.freshness.clone(),
            cursor: cluster.clock.now(),
            reloaded: None,
            queried: None,
            loaded: 0,
            acked: 0,
        }
    }

    pub(super) async fn run(mut self, every: Duration, end: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                () = end.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "cannot refresh the routes; ingest waits until they are fresh");
                    }
                }
            }
        }
    }

    pub(super) async fn refresh(&mut self) -> crate::store::Result<()> {
        let started = Instant::now();
        let wall = self.clock.now();
        let version = self.store.routes_version().await?;
        let requery = self
            .queried
            .is_none_or(|at| started.duration_since(at) >= ROUTE_REQUERY);
        if version != self.loaded || requery {
            self.read_routes(wall).await?;
            self.queried = Some(started);
            self.loaded = version;
        }
        self.freshness.routes_read(started);
        tracing::debug!(took = ?started.elapsed(), version, "routes refreshed");
        if self.loaded > self.acked {
            match self
                .store
                .ack_routes(&self.ownership.replica, self.loaded)
                .await
            {
                Ok(()) => self.acked = self.loaded,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot acknowledge the routes loaded; retrying on the next refresh")
                }
            }
        }
        if self
            .reloaded
            .is_none_or(|at| started.duration_since(at) >= ROUTE_RELOAD)
        {
            self.reload(wall).await?;
            self.reloaded = Some(started);
        }
        Ok(())
    }

    /// Reads the route items written since the last read (with room for
    /// clocks to disagree), routes them, and has the observer time those
    /// in shards this replica owns.
    async fn read_routes(&mut self, wall: Timestamp) -> crate::store::Result<()> {
        let since =
            Timestamp::from_millis(self.cursor.as_millis() - ROUTE_LOOKBACK.as_millis() as i64);
        let mut fresh: Vec<(WatchKey, u32)> = Vec::new();
        let entries = self
            .store
            .routes_since(since, wall.plus(ROUTE_LOOKBACK))
            .await?;
        {
            let mut known = self.book.known.lock().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                if known.contains_key(&e.key) {
                    continue;
                }
                let shard = self.ownership.shard(&e.key.id);
                self.routes
                    .add_source(&e.source, &e.key, e.marker.as_deref());
                known.insert(
                    e.key.clone(),
                    Known {
                        shard,
                        created_at: e.created_at,
                        source: e.source,
                    },
                );
                fresh.push((e.key, shard));
            }
        }
        // Watches started elsewhere in shards this replica owns: time them.
        let adopt: Vec<WatchKey> = fresh
            .into_iter()
            .filter(|(k, _)| self.ownership.owns(&k.id))
            .map(|(k, _)| k)
            .collect();
        if !adopt.is_empty() {
            match self.store.watches(&adopt).await {
                Ok(watches) => self.observer.adopt(watches).await,
                Err(e) => {
                    // Read them again on the next refresh (the cursor stays).
                    let mut known = self.book.known.lock().unwrap_or_else(|p| p.into_inner());
                    for key in &adopt {
                        known.remove(key);
                    }
                    return Err(e);
                }
            }
        }
        self.cursor = wall;
        Ok(())
    }

    /// Rebuilds the route table from the `live` index: adds what is missing,
    /// drops watches that finished (kept while their route item is recent,
    /// since the index may lag).
    async fn reload(&mut self, wall: Timestamp) -> crate::store::Result<()> {
        let live = Store::live_watches(&*self.store, wall).await?;
        let mut known = self.book.known.lock().unwrap_or_else(|p| p.into_inner());
        let listed: BTreeSet<WatchKey> = live.iter().map(|w| w.key()).collect();
        let keep_after =
            Timestamp::from_millis(wall.as_millis() - 2 * ROUTE_LOOKBACK.as_millis() as i64);
        known.retain(|key, k| {
            let keep = listed.contains(key) || k.created_at >= keep_after;
            if !keep {
                self.routes.remove_source(&k.source, key);
            }
            keep
        });
        for w in &live {
            if let std::collections::btree_map::Entry::Vacant(slot) = known.entry(w.key()) {
                self.routes
                    .add_source(&w.source, slot.key(), w.marker_key());
                slot.insert(Known {
                    shard: self.ownership.shard(&w.id),
                    created_at: w.created_at,
                    source: w.source.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_go_stale_a_lease_duration_less_a_heartbeat_after_the_last_beat_landed() {
        let t = Instant::now();
        let (bound, staleness) = (Duration::from_secs(7), Duration::from_secs(1));
        assert_eq!(fresh_from(None, Some(t), bound, staleness), None);
        assert_eq!(fresh_from(Some(t), None, bound, staleness), Some(t));
        // A recent beat: fresh from the refresh's start.
        let refreshed = t + Duration::from_secs(2);
        assert_eq!(
            fresh_from(Some(refreshed), Some(t), bound, staleness),
            Some(refreshed)
        );
        // The beat is old: fresh only until 7s after it, however recent the refresh.
        let refreshed = t + Duration::from_secs(30);
        let fresh = fresh_from(Some(refreshed), Some(t), bound, staleness).unwrap();
        assert_eq!(fresh + staleness, t + bound);
    }
}
