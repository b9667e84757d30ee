//! Many replicas on one DynamoDB table and one set of queues (`--cluster`).
//! Replicas coordinate only through the table:
//!
//! - **Observer ownership by shard leases.** A watch belongs to shard
//!   `hash(watch id) % shards`; each shard has a lease item (owner, version).
//!   A lease is not renewed: it stays its owner's while the owner's replica
//!   item keeps moving (as the Kinesis Client Library's newer leases do), so
//!   a heartbeat is one write, whatever the leases held. Every heartbeat a
//!   replica reads all leases and replicas in one Query, writes its replica
//!   item, takes free leases and leases whose owner's heartbeat stood still
//!   for a lease duration (by its own clock, from when it first saw that
//!   heartbeat, so clocks need not agree), and steals from a replica holding
//!   more than its share ([`balance`]). A take is conditional on the lease's
//!   owner and version as read, so two takers cannot both win. Only the
//!   owner of a watch's shard times it, and every transition it writes is
//!   fenced by the lease's version: once another replica took the lease, the
//!   write fails ([`StoreError::Fenced`]) and the old owner stops timing
//!   that shard (it also drops the shard when its next Query shows the
//!   lease taken).
//! - **Shared routing with bounded staleness.** Every replica consumes the
//!   queues and counts into any watch. A watch's route item is written with
//!   it, and StartWatch then bumps the route version item. Each replica reads
//!   the route version every `--route-refresh`, reads the new route items
//!   when it moved, and acknowledges the version it loaded in its replica
//!   item; it refuses to route a notification with a route table older than
//!   [`Cluster::route_staleness`] (twice the refresh interval), or once its
//!   own heartbeat has failed for a lease duration less a heartbeat (the
//!   others stop waiting for its acknowledgements by then). StartWatch
//!   returns once every replica acknowledged its version ([`Routing`]), or
//!   the staleness bound passed since the bump; either way a notification
//!   any replica routes after StartWatch returned finds the watch.
//! - **Quiet means quiet everywhere.** Each replica publishes how far its
//!   queue consumers have recorded (its watermark) with its heartbeat; an
//!   owner holds a completion until every live replica has settled past it.
//!   A replica that stopped beating holds completions back for a lease
//!   duration plus its queues' visibility timeout: the messages it had
//!   received come back to the queue by then, for the others to count.
//! - **Events from the shared log.** Owners re-read their watches for
//!   activity other replicas counted (every `--log-poll` those whose decision
//!   is near or may come at any count, the others every [`SWEEP`]), and
//!   subscribers re-read the event log every `--log-poll`, so a stream on any
//!   replica sees every event in order.
//!
//! [`StoreError::Fenced`]: crate::store::StoreError::Fenced
//! [`SWEEP`]: crate::observer::SWEEP

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
        Fence, Store, StoreError,
        dynamodb::{ClusterView, DynamoStore, LeaseItem, ReplicaItem, shard_of},
    },
    watch::{WatchId, WatchKey},
};

/// How far back (and ahead) a route refresh reads route items, beyond the
/// previous refresh: room for replicas' clocks to disagree.
const ROUTE_LOOKBACK: Duration = Duration::from_secs(30);
/// How often the route table is rebuilt from the `live` index, dropping
/// watches that finished elsewhere.
const ROUTE_RELOAD: Duration = Duration::from_secs(300);
/// How often a refresh reads new route items although the route version
/// stood still (a StartWatch that failed before its bump).
const ROUTE_REQUERY: Duration = Duration::from_secs(15);
/// Bumps of the route version a StartWatch tries before it waits out
/// [`ROUTE_REQUERY`] instead.
const BUMP_ATTEMPTS: u32 = 3;

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
    /// waits until every replica has read its watch, at most twice this.
    #[arg(long, env = "STREAMWATCH_ROUTE_REFRESH", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub route_refresh: Duration,

    /// How often owners re-read their watches and subscribers re-read the
    /// event log, for what other replicas wrote.
    #[arg(long, env = "STREAMWATCH_LOG_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub log_poll: Duration,
}

/// Settings under which leases could not work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterArgsError {
    #[error("--heartbeat, --route-refresh and --log-poll must be above zero")]
    ZeroInterval,
    /// A lease would expire on one late heartbeat.
    #[error(
        "--lease-duration ({}) must be at least twice --heartbeat ({}): a lease must survive a late renewal",
        humantime::format_duration(*.lease_duration),
        humantime::format_duration(*.heartbeat)
    )]
    LeaseTooShort {
        lease_duration: Duration,
        heartbeat: Duration,
    },
}

/// Why a replica cannot join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Settings(#[from] ClusterArgsError),
    /// The table could not be read or written (its shard count, the first
    /// heartbeat, the first route refresh), or holds another shard count.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClusterArgs {
    /// Refuses settings under which leases could not work.
    pub fn check(&self) -> Result<(), ClusterArgsError> {
        if self.heartbeat.is_zero() || self.route_refresh.is_zero() || self.log_poll.is_zero() {
            return Err(ClusterArgsError::ZeroInterval);
        }
        if self.lease_duration < self.heartbeat * 2 {
            return Err(ClusterArgsError::LeaseTooShort {
                lease_duration: self.lease_duration,
                heartbeat: self.heartbeat,
            });
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

impl crate::observer::Owned for Ownership {
    fn shard(&self, id: &WatchId) -> u32 {
        Ownership::shard(self, id)
    }

    fn fence(&self, id: &WatchId) -> Option<Fence> {
        Ownership::fence(self, id)
    }

    fn lose(&self, shard: u32, version: u64) {
        Ownership::lose(self, shard, version);
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
    /// StartWatch's wait until every replica routes a new watch.
    pub routing: Arc<Routing>,
    freshness: Arc<Freshness>,
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
}

/// What a heartbeat remembers of a lease or replica: the value last read and
/// when (by this replica's clock) it last changed.
#[derive(Debug)]
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
    ) -> Result<Self, ClusterError> {
        args.check()?;
        store.ensure_shards().await?;
        let (settled_tx, settled) = watch::channel(Timestamp::from_millis(0));
        let (fresh_tx, routes_fresh) = watch::channel(None);
        let freshness = Arc::new(Freshness {
            tx: fresh_tx,
            last: Mutex::default(),
            beat_bound: args.lease_duration.saturating_sub(args.heartbeat),
            staleness: args.route_refresh * 2,
        });
        let replica = args.replica();
        tracing::info!(%replica, shards = store.shards(), lease_duration = ?args.lease_duration,
            heartbeat = ?args.heartbeat, "joining the cluster");
        let route_staleness = args.route_refresh * 2;
        Ok(Self {
            routing: Arc::new(Routing::new(
                store.clone(),
                route_staleness,
                (args.route_refresh / 4)
                    .clamp(Duration::from_millis(25), Duration::from_millis(250)),
            )),
            freshness,
            ownership: Arc::new(Ownership::new(replica, store.shards())),
            route_staleness,
            settled,
            routes_fresh,
            store,
            args: args.clone(),
            clock,
            metrics,
            book: Arc::default(),
            settled_tx,
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
    ) -> crate::store::Result<Vec<tokio::task::JoinHandle<()>>> {
        let mut leases = Leases {
            store: self.store.clone(),
            ownership: self.ownership.clone(),
            observer: observer.clone(),
            clock: self.clock,
            args: self.args.clone(),
            metrics: self.metrics.clone(),
            book: self.book.clone(),
            seen_leases: HashMap::new(),
            seen_replicas: HashMap::new(),
            // Unlike any value an earlier process under this id wrote.
            beats: self.clock.now().as_millis().max(0) as u64,
            remote_settled: Timestamp::MAX,
            local_settled,
            visibility,
            settled: self.settled_tx.clone(),
            silent: self.routing.silent.clone(),
            freshness: self.freshness.clone(),
        };
        // The replica item exists before the first route refresh: a watch
        // started after another replica read the replica items is one this
        // replica's first refresh finds.
        leases.beat().await?;
        let mut refresher = RouteRefresher {
            store: self.store.clone(),
            routes,
            book: self.book.clone(),
            ownership: self.ownership.clone(),
            observer: observer.clone(),
            clock: self.clock,
            freshness: self.freshness.clone(),
            cursor: self.clock.now(),
            reloaded: None,
            queried: None,
            loaded: 0,
            acked: 0,
        };
        refresher.refresh().await?;
        leases.heartbeat().await?;
        let every = self.args.route_refresh;
        Ok(vec![
            tokio::spawn(refresher.run(every, end.clone())),
            tokio::spawn(leases.run(end.clone())),
            tokio::spawn(self.routing.clone().poll_acks(end)),
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

/// StartWatch's wait until every replica routes a new watch: it bumps the
/// route version, then waits until every replica not silent has
/// acknowledged that version in its replica item (read by one poller for
/// every waiting StartWatch), or the route staleness has passed since the
/// bump (a replica that has not loaded it by then refuses to route).
pub struct Routing {
    table: Arc<dyn RouteTable>,
    bound: Duration,
    poll: Duration,
    /// Replicas whose heartbeat stood still for a lease duration (from the lease task).
    silent: Arc<RwLock<HashSet<String>>>,
    /// StartWatches waiting.
    waiting: watch::Sender<usize>,
    /// The last read of the acknowledgements: when it started, and the
    /// version every replica not silent had loaded.
    acked: watch::Sender<(Option<Instant>, u64)>,
}

/// What [`Routing`] asks of the table.
#[async_trait::async_trait]
pub trait RouteTable: Send + Sync {
    /// Bumps the route version; the version after the bump.
    async fn bump_routes(&self) -> crate::store::Result<u64>;
    /// Every replica item, with the route version it acknowledged.
    async fn replicas(&self) -> crate::store::Result<Vec<ReplicaItem>>;
}

#[async_trait::async_trait]
impl RouteTable for DynamoStore {
    async fn bump_routes(&self) -> crate::store::Result<u64> {
        DynamoStore::bump_routes(self).await
    }

    async fn replicas(&self) -> crate::store::Result<Vec<ReplicaItem>> {
        DynamoStore::replicas(self).await
    }
}

/// Counts a waiting StartWatch while it lives.
struct Waiting<'a>(&'a watch::Sender<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The route version every replica of `replicas` except the `silent` ones
/// has loaded (`u64::MAX` when none is left to wait for).
fn acked_everywhere(replicas: &[ReplicaItem], silent: &HashSet<String>) -> u64 {
    replicas
        .iter()
        .filter(|r| !silent.contains(&r.id))
        .map(|r| r.routes)
        .min()
        .unwrap_or(u64::MAX)
}

impl Routing {
    fn new(table: Arc<dyn RouteTable>, bound: Duration, poll: Duration) -> Self {
        Self {
            table,
            bound,
            poll,
            silent: Arc::default(),
            waiting: watch::channel(0).0,
            acked: watch::channel((None, 0)).0,
        }
    }

    /// Returns once every replica routes notifications to a watch whose
    /// route item is written.
    pub async fn routed_everywhere(&self) {
        let Some(version) = self.bump().await else {
            // Every replica reads the route items within a requery and a
            // refresh (half the bound), bumped or not, and routes with them
            // within the bound after.
            tokio::time::sleep(ROUTE_REQUERY + self.bound + self.bound / 2).await;
            return;
        };
        let bumped = Instant::now();
        self.waiting.send_modify(|n| *n += 1);
        let _waiting = Waiting(&self.waiting);
        let mut acked = self.acked.subscribe();
        // Only a read that started after the bump counts: a replica that
        // joined later refreshes after that read, and finds the watch.
        let everywhere = acked
            .wait_for(|(read, acked)| read.is_some_and(|read| read >= bumped) && *acked >= version);
        match tokio::time::timeout_at(bumped + self.bound, everywhere).await {
            Ok(_) => tracing::debug!(version, took = ?bumped.elapsed(), "routed everywhere"),
            Err(_) => tracing::debug!(
                version,
                "route staleness passed before every replica acknowledged"
            ),
        }
    }

    async fn bump(&self) -> Option<u64> {
        let mut wait = Duration::from_millis(50);
        for attempt in 1..=BUMP_ATTEMPTS {
            match self.table.bump_routes().await {
                Ok(version) => return Some(version),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "cannot bump the route version");
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
            }
        }
        None
    }

    /// Reads the replicas' acknowledgements every `poll` while a StartWatch waits.
    async fn poll_acks(self: Arc<Self>, end: CancellationToken) {
        let mut waiting = self.waiting.subscribe();
        loop {
            tokio::select! {
                () = end.cancelled() => return,
                someone = waiting.wait_for(|n| *n > 0) => if someone.is_err() { return },
            }
            let started = Instant::now();
            match self.table.replicas().await {
                Ok(replicas) => {
                    let silent = self
                        .silent
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let acked = acked_everywhere(&replicas, &silent);
                    self.acked.send_replace((Some(started), acked));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the route acknowledgements"),
            }
            tokio::select! {
                () = end.cancelled() => return,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}

/// How fresh this replica's routes are, for ingest: fresh for the route
/// staleness after a refresh started, and never longer than a lease duration
/// less a heartbeat after the last heartbeat that landed started (the others
/// stop waiting for this replica's route acknowledgements, and its
/// watermark, a lease duration after they last saw its heartbeat move).
struct Freshness {
    tx: watch::Sender<Option<Instant>>,
    /// The starts of the last route refresh and of the last heartbeat that landed.
    last: Mutex<(Option<Instant>, Option<Instant>)>,
    beat_bound: Duration,
    staleness: Duration,
}

impl Freshness {
    fn routes_read(&self, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.0 = Some(at);
        self.publish(*last);
    }

    fn beaten(&self, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.1 = Some(at);
        self.publish(*last);
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

/// The lease task: one heartbeat every `--heartbeat`.
struct Leases {
    store: Arc<DynamoStore>,
    ownership: Arc<Ownership>,
    observer: ObserverHandle,
    clock: Clock,
    args: ClusterArgs,
    metrics: Arc<Metrics>,
    book: Arc<RouteBook>,
    seen_leases: HashMap<u32, Observed<Holding>>,
    seen_replicas: HashMap<String, Observed<u64>>,
    /// This replica's heartbeat value: moves on every beat.
    beats: u64,
    /// The least settled instant among the other live replicas.
    remote_settled: Timestamp,
    local_settled: watch::Receiver<Timestamp>,
    /// The longest visibility timeout of this replica's queues.
    visibility: Duration,
    settled: watch::Sender<Timestamp>,
    /// Replicas whose heartbeat stood still for a lease duration (for [`Routing`]).
    silent: Arc<RwLock<HashSet<String>>>,
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
    seen: &mut HashMap<u32, Observed<Holding>>,
    now: Instant,
    lease_duration: Duration,
) -> Vec<balance::Seen> {
    let beats: HashMap<&str, u64> = view
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

    /// Writes this replica's item: its heartbeat moves, which keeps its leases.
    async fn beat(&mut self) -> crate::store::Result<()> {
        let started = Instant::now();
        self.beats += 1;
        let local_settled = *self.local_settled.borrow();
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

    async fn heartbeat(&mut self) -> crate::store::Result<()> {
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
        self.beat().await?;

        // Who is alive: replicas whose heartbeat moved within a lease
        // duration. A replica that stopped still holds completions back for
        // its queues' visibility timeout after that: what it had received
        // but not recorded reaches the queue again only then.
        let mut live = 1;
        let mut remote_settled = Timestamp::MAX;
        let mut silent = HashSet::new();
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
        let read: HashMap<u32, &LeaseItem> = view.leases.iter().map(|l| (l.shard, l)).collect();
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

        let seen = judge(
            &me,
            &self.ownership,
            &view,
            &mut self.seen_leases,
            now,
            self.args.lease_duration,
        );
        let takes = balance::plan(&me, &seen, live);
        let at = self.clock.now();
        // Conditional on the lease as read (the plan sees a lease of an
        // earlier process under this id as free).
        let taken = futures::future::join_all(takes.iter().map(|l| {
            let as_read = read.get(&l.shard).copied().unwrap_or(l);
            self.store.take_lease(as_read, &me, at)
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

    async fn refresh(&mut self) -> crate::store::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    fn lease(shard: u32, owner: &str, version: u64) -> LeaseItem {
        LeaseItem {
            shard,
            owner: owner.into(),
            version,
        }
    }

    fn replica(id: &str, heartbeat: u64, routes: u64) -> ReplicaItem {
        ReplicaItem {
            id: id.into(),
            heartbeat,
            settled: Timestamp::MAX,
            visibility: Duration::ZERO,
            routes,
        }
    }

    fn view(leases: Vec<LeaseItem>, replicas: Vec<ReplicaItem>) -> ClusterView {
        ClusterView { leases, replicas }
    }

    /// Shards judged expired on each heartbeat at `at[i]` of `views[i]`.
    fn expired_each(
        me: &str,
        held: &Ownership,
        beats: &[(Duration, ClusterView)],
    ) -> Vec<Vec<u32>> {
        let start = Instant::now();
        let mut seen = HashMap::new();
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
        let mut seen = HashMap::new();
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

    #[test]
    fn routes_are_acknowledged_everywhere_at_the_least_version_of_the_replicas_not_silent() {
        let replicas = [replica("a", 1, 7), replica("b", 1, 5), replica("c", 1, 2)];
        assert_eq!(acked_everywhere(&replicas, &HashSet::new()), 2);
        let silent: HashSet<String> = ["c".to_owned()].into();
        assert_eq!(acked_everywhere(&replicas, &silent), 5);
        assert_eq!(acked_everywhere(&[], &silent), u64::MAX);
    }

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

    /// The route version and replica items, in memory.
    #[derive(Default)]
    struct Table {
        state: Mutex<(u64, Vec<ReplicaItem>)>,
    }

    impl Table {
        fn with(replicas: &[&str]) -> Arc<Self> {
            let table = Self::default();
            table.state.lock().unwrap().1 = replicas.iter().map(|id| replica(id, 1, 0)).collect();
            Arc::new(table)
        }

        /// `id` acknowledges the route version as it is now.
        fn ack(&self, id: &str) {
            let mut state = self.state.lock().unwrap();
            let version = state.0;
            for r in state.1.iter_mut().filter(|r| r.id == id) {
                r.routes = version;
            }
        }
    }

    #[async_trait::async_trait]
    impl RouteTable for Table {
        async fn bump_routes(&self) -> crate::store::Result<u64> {
            let mut state = self.state.lock().unwrap();
            state.0 += 1;
            Ok(state.0)
        }

        async fn replicas(&self) -> crate::store::Result<Vec<ReplicaItem>> {
            Ok(self.state.lock().unwrap().1.clone())
        }
    }

    const BOUND: Duration = Duration::from_secs(1);
    const POLL: Duration = Duration::from_millis(125);

    /// A StartWatch's wait on `table` (with its acknowledgement poller),
    /// `silent` excused; how long it took.
    fn start(
        table: Arc<Table>,
        silent: &[&str],
    ) -> (
        Arc<Routing>,
        tokio::task::JoinHandle<Duration>,
        CancellationToken,
    ) {
        let routing = Arc::new(Routing::new(table, BOUND, POLL));
        *routing.silent.write().unwrap() = silent.iter().map(|s| s.to_string()).collect();
        let end = CancellationToken::new();
        tokio::spawn(routing.clone().poll_acks(end.clone()));
        let waiter = routing.clone();
        let wait = tokio::spawn(async move {
            let started = Instant::now();
            waiter.routed_everywhere().await;
            started.elapsed()
        });
        (routing, wait, end)
    }

    /// Lets the start bump the version (paused time moves on by 1ms).
    async fn bumped() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_returns_once_every_replica_acknowledged_its_version() {
        let table = Table::with(&["a", "b"]);
        let (_routing, wait, end) = start(table.clone(), &[]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        table.ack("a");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!wait.is_finished(), "b has not acknowledged");
        table.ack("b");
        let took = wait.await.unwrap();
        assert!(
            took >= Duration::from_millis(500) && took <= Duration::from_millis(500) + POLL,
            "{took:?}"
        );
        end.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_waits_out_the_bound_for_a_replica_that_does_not_acknowledge() {
        let table = Table::with(&["a", "b"]);
        let (_routing, wait, end) = start(table.clone(), &[]);
        bumped().await;
        table.ack("a");
        assert_eq!(wait.await.unwrap(), BOUND);
        end.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_replica_is_not_waited_for() {
        let table = Table::with(&["a", "b", "gone"]);
        let (_routing, wait, end) = start(table.clone(), &["gone"]);
        bumped().await;
        table.ack("a");
        table.ack("b");
        let took = wait.await.unwrap();
        assert!(took <= POLL + Duration::from_millis(1), "{took:?}");
        end.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_from_before_the_bump_does_not_count() {
        let table = Table::with(&["a"]);
        let routing = Arc::new(Routing::new(table.clone(), BOUND, POLL));
        // A read that saw every replica far ahead, but before this start's
        // bump; no poller reads again.
        routing.acked.send_replace((Some(Instant::now()), u64::MAX));
        tokio::time::advance(Duration::from_millis(10)).await;
        let started = Instant::now();
        routing.routed_everywhere().await;
        assert_eq!(started.elapsed(), BOUND);
    }

    #[test]
    fn a_waiting_start_is_counted_until_its_wait_ends() {
        let waiting = watch::channel(0).0;
        let mut seen = waiting.subscribe();
        {
            waiting.send_modify(|n| *n += 1);
            let _one = Waiting(&waiting);
            assert_eq!(*seen.borrow_and_update(), 1);
        }
        assert_eq!(
            *seen.borrow_and_update(),
            0,
            "a finished wait is no longer counted"
        );
    }
}
