//! The lease task ([`Leases`]): every `--heartbeat`, and when a lease another
//! replica holds expires between two, it writes this replica's item (its
//! heartbeat and its watermark: its queues' marks, held before what it
//! received and has not recorded), reads every lease and
//! replica, judges which leases expired by its own clock, takes free and
//! expired ones and what [`super::balance`] plans, gives the observer the
//! watches of shards it took and takes back those of shards it lost, and
//! publishes how far every live replica's queues have settled.
//!
//! A take must always be conditional on the lease as read: two takers never
//! both win.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Cluster, ClusterArgs, balance,
    ownership::Ownership,
    route_refresh::{Freshness, RouteBook},
};
use crate::{
    clock::{Clock, Timestamp},
    ingest::Routes,
    metrics::Metrics,
    observer::ObserverHandle,
    store::{ClusterTable, ClusterView, LeaseItem, ReplicaItem},
    watch::WatchKey,
};

/// What a heartbeat remembers of a lease or replica: the value last read and
/// when (by this replica's clock) it last changed.
#[derive(Debug)]
struct Observed<T> {
    value: T,
    changed: Instant,
}

fn observe<K: Ord, T: PartialEq>(
    seen: &mut BTreeMap<K, Observed<T>>,
    key: K,
    value: T,
    now: Instant,
) -> Instant {
    match seen.get_mut(&key) {
        Some(o) if o.value == value => o.changed,
        Some(o) => {
            o.value = value;
            o.changed = now;
            now
        }
        None => {
            seen.insert(
                key,
                Observed {
                    value,
                    changed: now,
                },
            );
            now
        }
    }
}

/// The lease task: one heartbeat every `--heartbeat`, and one more when a
/// lease another replica holds expires between two.
pub(super) struct Leases {
    store: Arc<dyn ClusterTable>,
    /// What this replica received and has not recorded yet.
    routes: Arc<Routes>,
    ownership: Arc<Ownership>,
    observer: ObserverHandle,
    clock: Clock,
    args: ClusterArgs,
    metrics: Arc<Metrics>,
    book: Arc<RouteBook>,
    /// Ordered: leases are taken and given up in the same order in every process.
    seen_leases: BTreeMap<u32, Observed<Holding>>,
    seen_replicas: BTreeMap<String, Observed<u64>>,
    /// When the leases were last judged: an expiry after it is still due.
    judged: Instant,
    /// This replica's heartbeat value: moves on every beat.
    beats: u64,
    /// The least settled instant among the other live replicas.
    remote_settled: Timestamp,
    local_settled: watch::Receiver<Timestamp>,
    /// The longest visibility timeout of this replica's queues.
    visibility: Duration,
    settled: watch::Sender<Timestamp>,
    /// Replicas whose heartbeat stood still for a lease duration (for [`Routing`](super::Routing)).
    silent: Arc<RwLock<BTreeSet<String>>>,
    freshness: Arc<Freshness>,
}

/// A lease as a taker judges it: its owner, its version, and the owner's
/// heartbeat (`None`: the owner has no replica item).
type Holding = (String, u64, Option<u64>);

/// Every lease as `me` judges it on a heartbeat at `now`: a lease whose
/// owner, version and owner's heartbeat all stood still for `lease_duration`
/// since this replica first saw them is expired. A lease `me` is named on
/// but does not hold (an earlier process under this id) reads as free.
fn judge(
    me: &str,
    held: &Ownership,
    view: &ClusterView,
    seen: &mut BTreeMap<u32, Observed<Holding>>,
    now: Instant,
    lease_duration: Duration,
) -> Vec<balance::Seen> {
    let beats: BTreeMap<&str, u64> = view
        .replicas
        .iter()
        .map(|r| (r.id.as_str(), r.heartbeat))
        .collect();
    view.leases
        .iter()
        .map(|l| {
            let holding = (
                l.owner.clone(),
                l.version,
                beats.get(l.owner.as_str()).copied(),
            );
            let changed = observe(seen, l.shard, holding, now);
            let mut lease = l.clone();
            if lease.owner == me && !held.holds(l.shard) {
                lease.owner.clear();
            }
            balance::Seen {
                expired: !l.owner.is_empty()
                    && l.owner != me
                    && now.duration_since(changed) >= lease_duration,
                lease,
            }
        })
        .collect()
}

/// The next instant a lease another replica holds expires by `me`'s clock,
/// if its holder's heartbeat stays as last read, among those not judged
/// since `judged`. One that has passed is still due (the loop may have woken
/// for something else at that very instant): at once, then.
fn next_expiry(
    me: &str,
    seen: &BTreeMap<u32, Observed<Holding>>,
    lease_duration: Duration,
    judged: Instant,
) -> Option<Instant> {
    seen.values()
        .filter(|o| !o.value.0.is_empty() && o.value.0 != me)
        .map(|o| o.changed + lease_duration)
        .filter(|at| *at > judged)
        .min()
}

/// Sleeps until `at`; never returns without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Leases {
    /// `cluster`'s lease task: `observer` times the watches of the shards it
    /// takes; `local_settled` is how far this replica's queues (longest
    /// visibility timeout `visibility`) have recorded.
    pub(super) fn new(
        cluster: &Cluster,
        observer: ObserverHandle,
        local_settled: watch::Receiver<Timestamp>,
        visibility: Duration,
        routes: Arc<Routes>,
    ) -> Self {
        Self {
            routes,
            store: cluster.store.clone(),
            ownership: cluster.ownership.clone(),
            observer,
            clock: cluster.clock,
            args: cluster.args.clone(),
            metrics: cluster.metrics.clone(),
            book: cluster.book.clone(),
            seen_leases: BTreeMap::new(),
            seen_replicas: BTreeMap::new(),
            judged: Instant::now(),
            // Unlike any value an earlier process under this id wrote.
            beats: cluster.clock.now().as_millis().max(0) as u64,
            remote_settled: Timestamp::MAX,
            local_settled,
            visibility,
            settled: cluster.settled_tx.clone(),
            silent: cluster.routing.silent.clone(),
            freshness: cluster.freshness.clone(),
        }
    }

    pub(super) async fn run(mut self, end: CancellationToken) {
        let mut tick = tokio::time::interval(self.args.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut local_closed = false;
        loop {
            // A lease another replica holds may expire between two beats:
            // read again then, so it changes hands a lease duration after its
            // holder's heartbeat was first seen standing, not a beat later.
            let expiry = self.next_expiry();
            tokio::select! {
                biased;
                () = end.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.heartbeat().await {
                        tracing::warn!(error = %e, "heartbeat failed; leases expire unless the next one succeeds");
                    }
                }
                () = sleep_until_some(expiry) => {
                    // Tried, with every expiry due by now: if the read fails,
                    // the next beat tries again (no spinning on them).
                    self.judged = self.judged.max(Instant::now());
                    if let Err(e) = self.heartbeat().await {
                        tracing::warn!(error = %e, "heartbeat failed; leases expire unless the next one succeeds");
                    }
                }
                changed = self.local_settled.changed(), if !local_closed => {
                    // Closed: this replica has no queue consumers (any more).
                    local_closed = changed.is_err();
                    self.publish_settled();
                }
            }
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        next_expiry(
            &self.ownership.replica,
            &self.seen_leases,
            self.args.lease_duration,
            self.judged,
        )
    }

    fn publish_settled(&self) {
        let settled = (*self.local_settled.borrow()).min(self.remote_settled);
        self.settled.send_if_modified(|current| {
            let changed = *current != settled;
            *current = settled;
            changed
        });
    }

    /// Writes this replica's item: its heartbeat moves, which keeps its leases.
    pub(super) async fn beat(&mut self) -> crate::store::Result<()> {
        let started = Instant::now();
        self.beats += 1;
        // Received but not yet recorded (an IngestS3Events call, say) is
        // not settled: the others hold completions until it is recorded.
        let receiving = self.routes.oldest_receiving().map_or(Timestamp::MAX, |at| {
            Timestamp::from_millis(at.as_millis().saturating_sub(1))
        });
        let local_settled = (*self.local_settled.borrow()).min(receiving);
        self.store
            .beat(
                &ReplicaItem {
                    id: self.ownership.replica.clone(),
                    heartbeat: self.beats,
                    settled: local_settled,
                    visibility: self.visibility,
                    routes: 0,
                },
                self.clock.now(),
            )
            .await?;
        self.freshness.beaten(started);
        Ok(())
    }

    pub(super) async fn heartbeat(&mut self) -> crate::store::Result<()> {
        let me = self.ownership.replica.clone();
        let mut view = self.store.cluster_view().await?;
        let shards = self.store.shards();
        if view.leases.len() < shards as usize {
            let present: BTreeSet<u32> = view.leases.iter().map(|l| l.shard).collect();
            for shard in (0..shards).filter(|s| !present.contains(s)) {
                self.store.create_lease(shard).await?;
            }
            view = self.store.cluster_view().await?;
        }
        // What was read is stamped with when the read came back, never when
        // it was sent: a read delayed (a slow store, a paused process) must
        // not make a value seen now look seen long ago, and its holder
        // silent or its leases expired.
        let now = Instant::now();
        self.beat().await?;

        // Who is alive: replicas whose heartbeat moved within a lease
        // duration. A replica that stopped still holds completions back for
        // its queues' visibility timeout after that: what it had received
        // but not recorded reaches the queue again only then.
        let mut live = 1;
        let mut remote_settled = Timestamp::MAX;
        let mut silent = BTreeSet::new();
        for replica in view.replicas.iter().filter(|r| r.id != me) {
            let changed = observe(
                &mut self.seen_replicas,
                replica.id.clone(),
                replica.heartbeat,
                now,
            );
            let quiet_for = now.duration_since(changed);
            if quiet_for < self.args.lease_duration {
                live += 1;
            } else {
                tracing::debug!(replica = %replica.id, ?quiet_for, "a replica's heartbeat stands still");
                silent.insert(replica.id.clone());
            }
            if quiet_for < self.args.lease_duration + replica.visibility {
                remote_settled = remote_settled.min(replica.settled);
            }
        }
        *self.silent.write().unwrap_or_else(|p| p.into_inner()) = silent;
        self.remote_settled = remote_settled;
        self.publish_settled();

        // What this replica holds stays held while the lease still names it
        // at the version it took; otherwise another replica took it.
        let read: BTreeMap<u32, &LeaseItem> = view.leases.iter().map(|l| (l.shard, l)).collect();
        for (shard, version) in self.ownership.held() {
            let kept = read
                .get(&shard)
                .is_some_and(|l| l.owner == me && l.version == version);
            if !kept && self.ownership.lose(shard, version) {
                tracing::warn!(
                    shard,
                    version,
                    "lease lost to another replica; no longer observing its watches"
                );
                self.observer.disown(shard).await;
            }
        }

        // A take another replica won is planned again at once from a fresh
        // read, not a heartbeat later: an expired lease changes hands
        // within the beat that found it expired. Each lost take is a lease
        // that changed hands, so there are at most as many rounds as leases
        // (two replicas racing for three expired leases can lose twice).
        for round in 0..=view.leases.len() {
            if round > 0 {
                view = self.store.cluster_view().await?;
            }
            if !self.take(&me, &view, live, now).await {
                break;
            }
        }
        self.metrics.leases_held(self.ownership.held().len());
        Ok(())
    }

    /// Takes what the balance plans from `view`; whether a take lost to
    /// another replica (the plan may be worth making again).
    async fn take(&mut self, me: &str, view: &ClusterView, live: usize, now: Instant) -> bool {
        let read: BTreeMap<u32, &LeaseItem> = view.leases.iter().map(|l| (l.shard, l)).collect();
        let seen = judge(
            me,
            &self.ownership,
            view,
            &mut self.seen_leases,
            now,
            self.args.lease_duration,
        );
        self.judged = now;
        let takes = balance::plan(me, &seen, live);
        let at = self.clock.now();
        let mut lost = false;
        // Conditional on the lease as read (the plan sees a lease of an
        // earlier process under this id as free).
        let taken = futures::future::join_all(takes.iter().map(|l| {
            let as_read = read.get(&l.shard).copied().unwrap_or(l);
            self.store.take_lease(as_read, me, at)
        }))
        .await;
        for (seen, taken) in takes.iter().zip(taken) {
            match taken {
                Ok(Some(lease)) => {
                    tracing::info!(
                        shard = lease.shard,
                        version = lease.version,
                        from = if seen.owner.is_empty() {
                            "nobody"
                        } else {
                            seen.owner.as_str()
                        },
                        "took a lease"
                    );
                    self.ownership.insert(lease.shard, lease.version);
                    self.adopt(lease.shard);
                }
                Ok(None) => lost = true, // Someone else moved first.
                Err(e) => tracing::warn!(shard = seen.shard, error = %e, "cannot take a lease"),
            }
        }
        lost
    }

    /// Hands the observer every live watch of a shard just taken, off the
    /// heartbeat; retried for as long as the shard stays this replica's.
    fn adopt(&self, shard: u32) {
        let (store, observer, book, ownership) = (
            self.store.clone(),
            self.observer.clone(),
            self.book.clone(),
            self.ownership.clone(),
        );
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            while ownership.holds(shard) {
                match shard_watches(&*store, &book, shard).await {
                    Ok(watches) => {
                        observer.adopt(watches).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "cannot read a taken shard's watches; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
}

/// Every live watch of `shard`: the `live` index plus the watches route
/// items told of (the index may not show the newest yet).
async fn shard_watches(
    store: &dyn ClusterTable,
    book: &RouteBook,
    shard: u32,
) -> crate::store::Result<Vec<crate::watch::Watch>> {
    let mut watches = store.live_in_shard(shard).await?;
    let listed: BTreeSet<WatchKey> = watches.iter().map(|w| w.key()).collect();
    let recent: Vec<WatchKey> = {
        let known = book.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .filter(|(k, known)| known.shard == shard && !listed.contains(*k))
            .map(|(k, _)| k.clone())
            .collect()
    };
    if !recent.is_empty() {
        watches.extend(store.watches(&recent).await?);
    }
    Ok(watches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::replica;

    const LEASE: Duration = Duration::from_secs(10);

    fn lease(shard: u32, owner: &str, version: u64) -> LeaseItem {
        LeaseItem {
            shard,
            owner: owner.into(),
            version,
        }
    }

    fn view(leases: Vec<LeaseItem>, replicas: Vec<ReplicaItem>) -> ClusterView {
        ClusterView { leases, replicas }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_the_loop_woke_past_without_judging_stays_due() {
        let held = Ownership::new("a".into(), 1);
        let start = Instant::now();
        let mut seen = BTreeMap::new();
        let other = view(vec![lease(0, "b", 1)], vec![replica("b", 7, 0)]);
        judge("a", &held, &other, &mut seen, start, LEASE);
        let expiry = start + LEASE;
        assert_eq!(next_expiry("a", &seen, LEASE, start), Some(expiry));
        // The loop ran at (or after) the expiry for another reason, and
        // judged nothing: the expiry is still due, at once.
        tokio::time::advance(LEASE + Duration::from_millis(1)).await;
        assert_eq!(next_expiry("a", &seen, LEASE, start), Some(expiry));
        // Judged: nothing is due until the heartbeat moves again.
        let now = Instant::now();
        judge("a", &held, &other, &mut seen, now, LEASE);
        assert_eq!(next_expiry("a", &seen, LEASE, now), None);
    }

    /// Shards judged expired on each heartbeat at `at[i]` of `views[i]`.
    fn expired_each(
        me: &str,
        held: &Ownership,
        beats: &[(Duration, ClusterView)],
    ) -> Vec<Vec<u32>> {
        let start = Instant::now();
        let mut seen = BTreeMap::new();
        beats
            .iter()
            .map(|(at, view)| {
                judge(me, held, view, &mut seen, start + *at, LEASE)
                    .into_iter()
                    .filter(|s| s.expired)
                    .map(|s| s.lease.shard)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_lease_stays_its_owners_while_the_owners_heartbeat_moves() {
        let held = Ownership::new("b".into(), 1);
        // The lease item never changes: only a's replica item does.
        let beats: Vec<(Duration, ClusterView)> = (0..20)
            .map(|i| {
                (
                    Duration::from_secs(3 * i),
                    view(vec![lease(0, "a", 1)], vec![replica("a", 100 + i, 0)]),
                )
            })
            .collect();
        assert!(expired_each("b", &held, &beats).iter().all(Vec::is_empty));
    }

    #[test]
    fn a_lease_expires_a_lease_duration_after_its_owners_heartbeat_was_first_seen_still() {
        let held = Ownership::new("b".into(), 2);
        let still = || {
            view(
                vec![lease(0, "a", 1), lease(1, "gone", 4)],
                vec![replica("a", 7, 0)],
            )
        };
        let moved = view(
            vec![lease(0, "a", 1), lease(1, "gone", 4)],
            vec![replica("a", 8, 0)],
        );
        let expired = expired_each(
            "b",
            &held,
            &[
                (Duration::ZERO, still()),
                (Duration::from_secs(9), still()),
                // Its owner's heartbeat moved: a new lease duration starts.
                (Duration::from_secs(12), moved.clone()),
                (Duration::from_secs(21), moved.clone()),
                (Duration::from_secs(22), moved),
            ],
        );
        // Shard 1's owner has no replica item: it expires as a still one does.
        assert_eq!(expired, [vec![], vec![], vec![1], vec![1], vec![0, 1]]);
    }

    #[test]
    fn a_new_owner_or_version_starts_a_new_lease_duration() {
        let held = Ownership::new("c".into(), 1);
        let by = |owner: &str, version| view(vec![lease(0, owner, version)], vec![]);
        let expired = expired_each(
            "c",
            &held,
            &[
                (Duration::ZERO, by("a", 1)),
                (Duration::from_secs(8), by("b", 2)),
                (Duration::from_secs(12), by("b", 2)),
                (Duration::from_secs(18), by("b", 2)),
            ],
        );
        assert_eq!(expired, [vec![], vec![], vec![], vec![0]]);
    }

    #[test]
    fn a_lease_of_an_earlier_process_under_this_id_reads_as_free() {
        let held = Ownership::new("a".into(), 2);
        held.insert(1, 3);
        let mut seen = BTreeMap::new();
        let judged = judge(
            "a",
            &held,
            &view(vec![lease(0, "a", 2), lease(1, "a", 3)], vec![]),
            &mut seen,
            Instant::now(),
            LEASE,
        );
        let owners: Vec<(&str, bool)> = judged
            .iter()
            .map(|s| (s.lease.owner.as_str(), s.expired))
            .collect();
        assert_eq!(owners, [("", false), ("a", false)]);
    }
}
