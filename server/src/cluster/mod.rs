//! Many replicas on one DynamoDB table and one set of queues (`--cluster`).
//! Replicas coordinate only through the table:
//!
//! - **Observer ownership by shard leases.** A watch belongs to shard
//!   `hash(watch id) % shards`; each shard has a lease item (owner, version,
//!   heartbeat). Every heartbeat a replica reads all leases and replicas in
//!   one Query, renews its leases, takes free ones and ones whose heartbeat
//!   stood still for a lease duration (by its own clock, so clocks need not
//!   agree), and steals from a replica holding more than its share
//!   ([`balance`]). Only the owner of a watch's shard times it, and every
//!   transition it writes is fenced by the lease's version: once another
//!   replica took the lease, the write fails ([`StoreError::Fenced`]) and the
//!   old owner stops timing that shard.
//! - **Shared routing with bounded staleness.** Every replica consumes the
//!   queues and counts into any watch. A watch's route item is written with
//!   it; each replica reads new route items every `--route-refresh` and
//!   refuses to route a notification with a route table older than
//!   [`Cluster::route_staleness`] (twice the refresh interval). StartWatch
//!   waits that long before it returns, so a notification any replica routes
//!   after StartWatch returned finds the watch.
//! - **Quiet means quiet everywhere.** Each replica publishes how far its
//!   queue consumers have recorded (its watermark) with its heartbeat; an
//!   owner holds a completion until every live replica has settled past it.
//!   A replica that stopped beating holds completions back for a lease
//!   duration plus its queues' visibility timeout: the messages it had
//!   received come back to the queue by then, for the others to count.
//! - **Events from the shared log.** Owners re-read their watches every
//!   `--log-poll` (activity counted by other replicas), and subscribers
//!   re-read the event log as often, so a stream on any replica sees every
//!   event in order.
//!
//! [`StoreError::Fenced`]: crate::store::StoreError::Fenced

pub mod balance;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, Timestamp},
    ingest::Routes,
    metrics::Metrics,
    observer::ObserverHandle,
    store::{
        Fence, Store,
        dynamodb::{DynamoStore, LeaseItem, ReplicaItem, shard_of},
    },
    watch::{WatchId, WatchKey},
};

/// How far back (and ahead) a route refresh reads route items, beyond the
/// previous refresh: room for replicas' clocks to disagree.
const ROUTE_LOOKBACK: Duration = Duration::from_secs(30);
/// How often the route table is rebuilt from the `live` index, dropping
/// watches that finished elsewhere.
const ROUTE_RELOAD: Duration = Duration::from_secs(300);

/// `--cluster` and its settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Run as one of many replicas sharing the DynamoDB table and the SQS
    /// queues (needs `--store dynamodb`). Without it a server assumes it is alone.
    #[arg(long, env = "STREAMWATCH_CLUSTER")]
    pub cluster: bool,

    /// This replica's name in the lease table (default: host name and a random suffix).
    #[arg(long, env = "STREAMWATCH_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Shards watches are split into for observer ownership (and the DynamoDB
    /// `live` index). Every replica of a table must use the same number.
    #[arg(long, env = "STREAMWATCH_SHARDS", default_value_t = crate::store::dynamodb::DEFAULT_SHARDS,
        value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,

    /// How long a lease whose heartbeat stands still stays with its owner
    /// before another replica takes it over.
    #[arg(long, env = "STREAMWATCH_LEASE_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How often a replica renews its leases, publishes its heartbeat and rebalances.
    #[arg(long, env = "STREAMWATCH_HEARTBEAT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// How often a replica reads the watches other replicas started; StartWatch
    /// waits twice this before it returns.
    #[arg(long, env = "STREAMWATCH_ROUTE_REFRESH", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub route_refresh: Duration,

    /// How often owners re-read their watches and subscribers re-read the
    /// event log, for what other replicas wrote.
    #[arg(long, env = "STREAMWATCH_LOG_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub log_poll: Duration,
}

impl ClusterArgs {
    /// Refuses settings under which leases could not work.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.route_refresh.is_zero() || self.log_poll.is_zero() {
            return Err("--heartbeat, --route-refresh and --log-poll must be above zero".into());
        }
        if self.lease_duration < self.heartbeat * 2 {
            return Err(format!(
                "--lease-duration ({}) must be at least twice --heartbeat ({}): a lease must survive a late renewal",
                humantime::format_duration(self.lease_duration),
                humantime::format_duration(self.heartbeat)
            ));
        }
        Ok(())
    }

    fn replica(&self) -> String {
        self.replica_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
            let suffix = uuid::Uuid::now_v7().simple().to_string();
            format!("{host}-{}", &suffix[suffix.len() - 8..])
        })
    }
}

/// The shards this replica holds leases on, with each lease's version:
/// shared by the lease task (which changes it) and the observer (which times
/// only owned watches and fences its writes with the version).
pub struct Ownership {
    pub replica: String,
    shards: u32,
    held: RwLock<HashMap<u32, u64>>,
}

impl Ownership {
    pub fn new(replica: String, shards: u32) -> Self {
        Self {
            replica,
            shards,
            held: RwLock::default(),
        }
    }

    pub fn shard(&self, id: &WatchId) -> u32 {
        shard_of(id, self.shards)
    }

    /// The fence for a write to `id`, if this replica owns its shard.
    pub fn fence(&self, id: &WatchId) -> Option<Fence> {
        let shard = self.shard(id);
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.get(&shard).map(|&version| Fence {
            shard,
            owner: self.replica.clone(),
            version,
        })
    }

    pub fn owns(&self, id: &WatchId) -> bool {
        self.fence(id).is_some()
    }

    pub fn holds(&self, shard: u32) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.contains_key(&shard)
    }

    pub fn held(&self) -> Vec<(u32, u64)> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u32, u64)> = held.iter().map(|(s, v)| (*s, *v)).collect();
        out.sort_unstable();
        out
    }

    fn insert(&self, shard: u32, version: u64) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        held.insert(shard, version);
    }

    /// Forgets `shard` if held at `version` (a newer take stays); whether it did.
    pub fn lose(&self, shard: u32, version: u64) -> bool {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if held.get(&shard) == Some(&version) {
            held.remove(&shard);
            true
        } else {
            false
        }
    }
}

/// The watches this replica has learned from route items, by shard (to
/// hand to the observer when a shard's lease is taken).
#[derive(Default)]
struct RouteBook {
    known: Mutex<HashMap<WatchKey, Known>>,
}

struct Known {
    shard: u32,
    created_at: Timestamp,
    source: crate::watch::Source,
}

/// This replica's part of the cluster: built by [`Cluster::start`], which
/// takes its first leases before the server serves.
pub struct Cluster {
    pub ownership: Arc<Ownership>,
    /// How old a route table may be when a notification is routed with it.
    pub route_staleness: Duration,
    /// The last instant every replica's queues had recorded up to (for the observer).
    pub settled: watch::Receiver<Timestamp>,
    /// The start of the last successful route refresh (for ingest).
    pub routes_fresh: watch::Receiver<Option<Instant>>,
    store: Arc<DynamoStore>,
    args: ClusterArgs,
    clock: Clock,
    metrics: Arc<Metrics>,
    book: Arc<RouteBook>,
    settled_tx: watch::Sender<Timestamp>,
    fresh_tx: watch::Sender<Option<Instant>>,
}

/// What a heartbeat remembers of a lease or replica: the value last read and
/// when (by this replica's clock) it last changed.
struct Observed<T> {
    value: T,
    changed: Instant,
}

fn observe<K: std::hash::Hash + Eq, T: PartialEq>(
    seen: &mut HashMap<K, Observed<T>>,
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

impl Cluster {
    /// Checks the settings and the table's shard count.
    pub async fn new(
        args: &ClusterArgs,
        store: Arc<DynamoStore>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        args.check().map_err(anyhow::Error::msg)?;
        store.ensure_shards().await?;
        let (settled_tx, settled) = watch::channel(Timestamp::from_millis(0));
        let (fresh_tx, routes_fresh) = watch::channel(None);
        let replica = args.replica();
        tracing::info!(%replica, shards = store.shards(), lease_duration = ?args.lease_duration,
            heartbeat = ?args.heartbeat, "joining the cluster");
        Ok(Self {
            ownership: Arc::new(Ownership::new(replica, store.shards())),
            route_staleness: args.route_refresh * 2,
            settled,
            routes_fresh,
            store,
            args: args.clone(),
            clock,
            metrics,
            book: Arc::default(),
            settled_tx,
            fresh_tx,
        })
    }

    pub fn log_poll(&self) -> Duration {
        self.args.log_poll
    }

    /// Starts the lease and route tasks: the first heartbeat (which takes
    /// free leases) and the first route refresh are done when this returns.
    pub async fn start(
        &self,
        routes: Arc<Routes>,
        observer: ObserverHandle,
        local_settled: watch::Receiver<Timestamp>,
        visibility: Duration,
        end: CancellationToken,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let mut refresher = RouteRefresher {
            store: self.store.clone(),
            routes,
            book: self.book.clone(),
            ownership: self.ownership.clone(),
            observer: observer.clone(),
            clock: self.clock,
            fresh: self.fresh_tx.clone(),
            cursor: self.clock.now(),
            reloaded: None,
        };
        refresher.refresh().await?;
        let mut leases = Leases {
            store: self.store.clone(),
            ownership: self.ownership.clone(),
            observer,
            clock: self.clock,
            args: self.args.clone(),
            metrics: self.metrics.clone(),
            book: self.book.clone(),
            seen_leases: HashMap::new(),
            seen_replicas: HashMap::new(),
            beats: 0,
            remote_settled: Timestamp::MAX,
            local_settled,
            visibility,
            settled: self.settled_tx.clone(),
        };
        leases.heartbeat().await?;
        let every = self.args.route_refresh;
        Ok(vec![
            tokio::spawn(refresher.run(every, end.clone())),
            tokio::spawn(leases.run(end)),
        ])
    }

    /// Gives up every lease this replica holds and leaves the replica list,
    /// so the others take the leases on their next heartbeat (after the
    /// observer and the queue consumers stopped: nothing is written under
    /// the leases, and nothing received is left unrecorded).
    pub async fn release(&self) {
        let now = self.clock.now();
        for (shard, version) in self.ownership.held() {
            let lease = LeaseItem {
                shard,
                owner: self.ownership.replica.clone(),
                version,
                heartbeat: 0,
            };
            self.ownership.lose(shard, version);
            if let Err(e) = self.store.release_lease(&lease, now).await {
                tracing::warn!(shard, error = %e, "cannot release a lease; it expires instead");
            }
        }
        if let Err(e) = self.store.leave(&self.ownership.replica).await {
            tracing::warn!(error = %e, "cannot leave the replica list; the others notice after a lease duration");
        }
    }
}

/// The lease task: one heartbeat every `--heartbeat`.
struct Leases {
    store: Arc<DynamoStore>,
    ownership: Arc<Ownership>,
    observer: ObserverHandle,
    clock: Clock,
    args: ClusterArgs,
    metrics: Arc<Metrics>,
    book: Arc<RouteBook>,
    seen_leases: HashMap<u32, Observed<(String, u64, u64)>>,
    seen_replicas: HashMap<String, Observed<u64>>,
    beats: u64,
    /// The least settled instant among the other live replicas.
    remote_settled: Timestamp,
    local_settled: watch::Receiver<Timestamp>,
    /// The longest visibility timeout of this replica's queues.
    visibility: Duration,
    settled: watch::Sender<Timestamp>,
}

impl Leases {
    async fn run(mut self, end: CancellationToken) {
        let mut tick = tokio::time::interval(self.args.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut local_closed = false;
        loop {
            tokio::select! {
                () = end.cancelled() => return,
                _ = tick.tick() => {
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

    fn publish_settled(&self) {
        let settled = (*self.local_settled.borrow()).min(self.remote_settled);
        self.settled.send_if_modified(|current| {
            let changed = *current != settled;
            *current = settled;
            changed
        });
    }

    async fn heartbeat(&mut self) -> anyhow::Result<()> {
        let me = self.ownership.replica.clone();
        let now = Instant::now();
        let mut view = self.store.cluster_view().await?;
        let shards = self.store.shards();
        if view.leases.len() < shards as usize {
            let present: HashSet<u32> = view.leases.iter().map(|l| l.shard).collect();
            for shard in (0..shards).filter(|s| !present.contains(s)) {
                self.store.create_lease(shard).await?;
            }
            view = self.store.cluster_view().await?;
        }
        self.beats += 1;
        let local_settled = *self.local_settled.borrow();
        self.store
            .beat(
                &ReplicaItem {
                    id: me.clone(),
                    heartbeat: self.beats,
                    settled: local_settled,
                    visibility: self.visibility,
                },
                self.clock.now(),
            )
            .await?;

        // Who is alive: replicas whose heartbeat moved within a lease
        // duration. A replica that stopped still holds completions back for
        // its queues' visibility timeout after that: what it had received
        // but not recorded reaches the queue again only then.
        let mut live = 1;
        let mut remote_settled = Timestamp::MAX;
        for replica in view.replicas.iter().filter(|r| r.id != me) {
            let changed = observe(
                &mut self.seen_replicas,
                replica.id.clone(),
                replica.heartbeat,
                now,
            );
            let silent = now.duration_since(changed);
            if silent < self.args.lease_duration {
                live += 1;
            }
            if silent < self.args.lease_duration + replica.visibility {
                remote_settled = remote_settled.min(replica.settled);
            }
        }
        self.remote_settled = remote_settled;
        self.publish_settled();

        // Renew what this replica holds; a lease read with another owner or version is lost.
        let read: HashMap<u32, &LeaseItem> = view.leases.iter().map(|l| (l.shard, l)).collect();
        let held = self.ownership.held();
        let renewals = held.iter().map(|&(shard, version)| {
            let lease = read.get(&shard).copied().cloned();
            let store = self.store.clone();
            let me = me.clone();
            let at = self.clock.now();
            async move {
                let renewed = match lease {
                    Some(l) if l.owner == me && l.version == version => {
                        store.renew_lease(&l, at).await
                    }
                    _ => Ok(None),
                };
                (shard, version, renewed)
            }
        });
        for (shard, version, renewed) in futures::future::join_all(renewals).await {
            match renewed {
                Ok(Some(_)) => {}
                Ok(None) => {
                    if self.ownership.lose(shard, version) {
                        tracing::warn!(
                            shard,
                            version,
                            "lease lost to another replica; no longer observing its watches"
                        );
                        self.observer.disown(shard).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "cannot renew a lease; retrying on the next heartbeat")
                }
            }
        }

        let seen: Vec<balance::Seen> = view
            .leases
            .iter()
            .map(|l| {
                let changed = observe(
                    &mut self.seen_leases,
                    l.shard,
                    (l.owner.clone(), l.version, l.heartbeat),
                    now,
                );
                let mut lease = l.clone();
                if lease.owner == me && !self.ownership.holds(l.shard) {
                    // An earlier process under this replica id: free to take.
                    lease.owner.clear();
                }
                balance::Seen {
                    expired: !l.owner.is_empty()
                        && l.owner != me
                        && now.duration_since(changed) >= self.args.lease_duration,
                    lease,
                }
            })
            .collect();
        let takes = balance::plan(&me, &seen, live);
        let at = self.clock.now();
        let taken =
            futures::future::join_all(takes.iter().map(|l| self.store.take_lease(l, &me, at)))
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
                Ok(None) => {} // Someone else moved first.
                Err(e) => tracing::warn!(shard = seen.shard, error = %e, "cannot take a lease"),
            }
        }
        self.metrics.leases_held(self.ownership.held().len());
        Ok(())
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
                match shard_watches(&store, &book, shard).await {
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
    store: &DynamoStore,
    book: &RouteBook,
    shard: u32,
) -> crate::store::Result<Vec<crate::watch::Watch>> {
    let mut watches = store.live_in_shard(shard).await?;
    let listed: HashSet<WatchKey> = watches.iter().map(|w| w.key()).collect();
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

/// The route task: reads the route items of watches started anywhere.
struct RouteRefresher {
    store: Arc<DynamoStore>,
    routes: Arc<Routes>,
    book: Arc<RouteBook>,
    ownership: Arc<Ownership>,
    observer: ObserverHandle,
    clock: Clock,
    fresh: watch::Sender<Option<Instant>>,
    /// The wall time the last successful refresh started at.
    cursor: Timestamp,
    /// When the table was last rebuilt from the `live` index.
    reloaded: Option<Instant>,
}

impl RouteRefresher {
    async fn run(mut self, every: Duration, end: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = end.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "cannot refresh the routes; ingest waits until they are fresh");
                    }
                }
            }
        }
    }

    async fn refresh(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let wall = self.clock.now();
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
                    return Err(e.into());
                }
            }
        }
        self.cursor = wall;
        self.fresh.send_replace(Some(started));
        tracing::debug!(took = ?started.elapsed(), "routes refreshed");
        if self
            .reloaded
            .is_none_or(|at| started.duration_since(at) >= ROUTE_RELOAD)
        {
            self.reload(wall).await?;
            self.reloaded = Some(started);
        }
        Ok(())
    }

    /// Rebuilds the route table from the `live` index: adds what is missing,
    /// drops watches that finished (kept while their route item is recent,
    /// since the index may lag).
    async fn reload(&mut self, wall: Timestamp) -> anyhow::Result<()> {
        let live = Store::live_watches(&*self.store, wall).await?;
        let mut known = self.book.known.lock().unwrap_or_else(|p| p.into_inner());
        let listed: HashSet<WatchKey> = live.iter().map(|w| w.key()).collect();
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
            if let std::collections::hash_map::Entry::Vacant(slot) = known.entry(w.key()) {
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
