//! Observer timers: one task owns one timer queue with an entry per live
//! watch, wakes each watch at its deadline, asks the policy what happens, and
//! hands the outcome to the store without waiting for it: writes (and every
//! other read or listing) run in tasks of their own (`writer`) and their
//! results come back as commands, so a slow store delays no other watch's
//! deadline. A watch with a write on its way is not decided again until the
//! write returns. Everything else talks to it through [`ObserverHandle`]; it
//! is the only writer of lifecycle transitions, so each generation gets
//! exactly one terminal event.
//!
//! Listings of a watch's prefix (`policy.reconcile`) run off the loop: one
//! before a completion is written (the watch is decided again on what it
//! counted), and a probe when the policy asks for one; a completion decided
//! right after a probe, on the count it left, is confirmed by that probe.
//!
//! In a cluster it times only the watches the cluster says this replica owns
//! ([`Owned`]: the shards it holds leases on; the observer knows nothing else
//! of leases), fences each transition with the lease, re-reads
//! its watches for activity other replicas counted (every `--log-poll` those
//! whose next decision is near or may come with any count, every [`SWEEP`]
//! the rest), and drops a shard at once when a write comes back fenced.
//!
//! Watch groups: the observer keeps an index from each member to the groups
//! it times that contain it. A group's members are read from the store off
//! the loop when the group is armed (and, in a cluster, on every re-read);
//! after that each member transition this observer writes (or cancels)
//! updates the groups' view of the member at once, and the groups are
//! decided again ([`policy::evaluate_group`]).
//!
//! Files: this one owns the loop, the timers and the table of live entries;
//! `entry` what is kept per watch, `deciding` the decisions and their
//! outcomes, `writer` the writes, `listing` the S3 reads, `groups` the
//! members' index.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{
    sync::CancellationToken,
    time::{DelayQueue, delay_queue},
};

use crate::{
    auth::LiveTenants,
    clock::{Clock, Timestamp},
    error::Error,
    ingest::{
        Routes, Watermarks, marker,
        reconcile::{ReconcileError, Reconciler},
    },
    metrics::Metrics,
    policy::{self, Member},
    quota::Limiter,
    store::{Applied, Fence, Guard, Store, StoreError},
    telemetry,
    watch::{self, EventKind, Lifecycle, Rule, Watch, WatchEvent, WatchId, WatchKey, WatchState},
};

mod deciding;
mod entry;
mod groups;
mod listing;
mod writer;

#[cfg(test)]
mod tests;

use entry::Entry;
use writer::{Outcome, Transition, Writer};

/// How long to wait before retrying a watch whose store write failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long to wait before listing S3 again after a failed reconciliation.
const RECONCILE_RETRY: Duration = Duration::from_secs(5);
/// How often a watch is decided again at once after it changed under a write.
const MAX_CONFLICTS: u32 = 16;
/// Most watches decided and written together.
const MAX_BATCH: usize = 1000;
/// How often a replica of a cluster re-reads every watch it times. Others'
/// activity delays a quiet deadline (an adaptive window it shortens is seen
/// up to this late), and a transition is written only if the watch's
/// activity is still as read, so a watch whose next decision is far is
/// re-read this rarely; one whose deadline is within [`NEAR_POLLS`] polls
/// is re-read every poll.
pub const SWEEP: Duration = Duration::from_secs(60);
/// Polls before its deadline from which a watch is re-read every poll.
const NEAR_POLLS: u32 = 2;

enum Command {
    Arm(Box<Watch>, oneshot::Sender<()>),
    Activity {
        updated: Vec<Watch>,
        touched: Vec<WatchKey>,
    },
    Cancel {
        key: WatchKey,
        reason: String,
        reply: oneshot::Sender<Result<Watch, Error>>,
    },
    /// A batch of transitions went to the store.
    Written(Vec<(Transition, Outcome)>),
    /// A cancellation went to the store.
    Cancelled {
        key: WatchKey,
        result: Result<Box<(Watch, Vec<WatchEvent>)>, Error>,
        reply: oneshot::Sender<Result<Watch, Error>>,
    },
    /// A reconciliation of `key` at activity level `activity` finished; a
    /// probe (the policy asked for it) listed at `probe`.
    Reconciled {
        key: WatchKey,
        activity: u64,
        probe: Option<Timestamp>,
        result: Result<Option<Box<Watch>>, ReconcileError>,
    },
    /// A check of `key`'s marker manifest finished.
    ManifestChecked {
        key: WatchKey,
        result: Result<marker::Checked, marker::CheckError>,
    },
    /// Watches of a shard this replica just took (or started elsewhere in one it holds).
    Adopt(Vec<Watch>),
    /// This replica no longer holds the shard's lease.
    Disown(u32),
    /// The owned watches (and the members of owned groups) as re-read from the store.
    Observed(Vec<Watch>),
    /// The members of `group` as read from the store.
    Members {
        group: WatchKey,
        result: Result<Vec<Watch>, StoreError>,
    },
}

/// Which watches this replica times, as the cluster tells it: the observer
/// knows nothing of leases beyond this.
pub trait Owned: Send + Sync {
    /// The shard `id` belongs to.
    fn shard(&self, id: &WatchId) -> u32;
    /// The fence a write to `id` needs, while this replica holds its shard.
    fn fence(&self, id: &WatchId) -> Option<Fence>;
    fn owns(&self, id: &WatchId) -> bool {
        self.fence(id).is_some()
    }
    /// A write came back fenced at `version`: the shard is no longer held
    /// at that version. Whether it was (false: lost already, or taken
    /// again since, at a newer version that stays).
    fn lose(&self, shard: u32, version: u64) -> bool;
}

/// The way in to the observer task.
#[derive(Clone)]
pub struct ObserverHandle {
    tx: mpsc::Sender<Command>,
}

impl ObserverHandle {
    /// Starts timing a new watch; returns once ingest routes to it.
    pub async fn arm(&self, watch: Watch) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Arm(Box::new(watch), reply))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Reports recorded activity: watches whose counters moved, and every
    /// watch a batch was routed to (settled now, whatever the outcome).
    pub async fn activity(&self, updated: Vec<Watch>, touched: Vec<WatchKey>) {
        // A stopped observer means the server is shutting down; the counts are durable.
        let _ = self.tx.send(Command::Activity { updated, touched }).await;
    }

    /// Times the watches of `watches` in shards this replica holds.
    pub async fn adopt(&self, watches: Vec<Watch>) {
        let _ = self.tx.send(Command::Adopt(watches)).await;
    }

    /// Stops timing the watches of `shard` (its lease was lost).
    pub async fn disown(&self, shard: u32) {
        let _ = self.tx.send(Command::Disown(shard)).await;
    }

    pub async fn cancel(&self, key: WatchKey, reason: String) -> Result<Watch, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Cancel { key, reason, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::unavailable("the server is shutting down")
}

/// What a replica of a cluster observes: the shards it owns, and how often
/// it re-reads its watches.
struct Clustered {
    ownership: Arc<dyn Owned>,
    poll: Duration,
    /// A re-read is on its way.
    polling: bool,
    /// When every timed watch was last re-read.
    swept: Option<tokio::time::Instant>,
}

/// Whether a replica of a cluster re-reads `entry` on every poll: a group
/// (its members may change anywhere), a watch within its late window (late
/// activity reopens it), a rule that may complete on any count, and a watch
/// whose next decision is near or waits without a timer.
fn rereads_every_poll(
    entry: &Entry,
    queue: &DelayQueue<WatchKey>,
    soon: tokio::time::Instant,
) -> bool {
    let watch = &entry.watch;
    watch.is_group()
        || watch.state() != WatchState::Active
        || matches!(
            watch.policy.rule,
            Rule::ExpectedCount { .. } | Rule::Marker { .. }
        )
        || entry
            .timer
            .as_ref()
            .is_none_or(|timer| queue.deadline(timer) <= soon)
}

pub struct Observer {
    store: Arc<dyn Store>,
    routes: Arc<Routes>,
    clock: Clock,
    rx: mpsc::Receiver<Command>,
    queue: DelayQueue<WatchKey>,
    /// Ordered maps and sets, here and below: what a replica decides and
    /// writes follows their order, the same in every process (a seed of the
    /// cluster simulation plays one history), where a hash map's changes.
    watches: BTreeMap<WatchKey, Box<Entry>>,
    /// How far ingest has settled (see [`policy::evaluate`]).
    settled: tokio::sync::watch::Receiver<Timestamp>,
    /// Watches waiting for ingest to settle past an instant.
    held: BTreeSet<WatchKey>,
    /// Lists S3 for watches with `policy.reconcile` (servers with AWS access).
    reconciler: Option<Arc<Reconciler>>,
    /// For results of work done off the loop.
    tx: mpsc::Sender<Command>,
    /// Where the queue consumers learn which instants decisions want settled.
    confirm: Option<Arc<Watermarks>>,
    /// Writes transitions off the loop.
    writer: Arc<Writer>,
    metrics: Arc<Metrics>,
    cluster: Option<Clustered>,
    /// Each member of a timed group, to the groups that contain it.
    groups_of: BTreeMap<WatchKey, BTreeSet<WatchKey>>,
    /// Groups whose members changed, to be decided again.
    regroup: BTreeSet<WatchKey>,
}

impl Observer {
    pub fn new(
        store: Arc<dyn Store>,
        routes: Arc<Routes>,
        clock: Clock,
        settled: tokio::sync::watch::Receiver<Timestamp>,
        reconciler: Option<Arc<Reconciler>>,
        metrics: Arc<Metrics>,
    ) -> (Self, ObserverHandle) {
        let (tx, rx) = mpsc::channel(1024);
        let writer = Arc::new(Writer {
            store: store.clone(),
            quotas: Default::default(),
            metrics: metrics.clone(),
            clock,
        });
        let observer = Self {
            store,
            routes,
            clock,
            rx,
            tx: tx.clone(),
            queue: DelayQueue::new(),
            watches: BTreeMap::new(),
            settled,
            held: BTreeSet::new(),
            reconciler,
            confirm: None,
            writer,
            metrics,
            cluster: None,
            groups_of: BTreeMap::new(),
            regroup: BTreeSet::new(),
        };
        (observer, ObserverHandle { tx })
    }

    /// Makes this observer one replica's of a cluster: it times only watches
    /// of shards in `ownership`, and re-reads them every `poll`.
    pub fn clustered(&mut self, ownership: Arc<dyn Owned>, poll: Duration) {
        self.cluster = Some(Clustered {
            ownership,
            poll,
            polling: false,
            swept: None,
        });
    }

    /// Whether this replica times `watch` (always, outside a cluster).
    fn owns(&self, watch: &Watch) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.ownership.owns(&watch.id))
    }

    /// Counts reopenings against the tenants' `max_active_watches`, as
    /// StartWatch does (same store count, same per-tenant lock).
    pub fn limit_reopening(&mut self, tenants: LiveTenants, limiter: Arc<Limiter>) {
        let _ = self.writer.quotas.set((tenants, limiter));
    }

    /// Tells the queue consumers of `watermarks` the instants each watch's
    /// next decision wants settled, so they confirm then instead of long-polling past them.
    pub fn confirm_with(&mut self, watermarks: Arc<Watermarks>) {
        self.confirm = Some(watermarks);
    }

    /// Sets the instant `key`'s next decision wants ingest settled past.
    fn want(&mut self, key: &WatchKey, at: Option<Timestamp>) {
        let Some(entry) = self.watches.get_mut(key) else {
            return;
        };
        if let Some(confirm) = &self.confirm {
            confirm.rewant(entry.wanted, at);
        }
        entry.wanted = at;
    }

    /// Arms every watch the store says is live (after a restart: with its
    /// stored deadlines, so overdue watches are decided at once).
    pub async fn recover(&mut self) -> Result<usize, StoreError> {
        let live = self.store.live_watches(self.clock.now()).await?;
        let n = live.len();
        for watch in live {
            self.insert(watch);
        }
        let keys: Vec<WatchKey> = self.watches.keys().cloned().collect();
        for batch in keys.chunks(MAX_BATCH) {
            self.evaluate_all(batch.to_vec());
        }
        self.evaluate_groups();
        Ok(n)
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.metrics
            .observer_watches(self.watches.len(), self.held.len());
        let poll = self
            .cluster
            .as_ref()
            .map(|c| c.poll)
            .unwrap_or(Duration::MAX);
        let mut observe = tokio::time::interval(poll.min(Duration::from_secs(86_400)));
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = observe.tick(), if self.cluster.is_some() => self.observe(),
                command = self.rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(expired) = self.queue.next(), if !self.queue.is_empty() => {
                    // Every other deadline that has passed too: decided together,
                    // written in one group commit.
                    let mut due = vec![expired.into_inner()];
                    while due.len() < MAX_BATCH {
                        match self.queue.next().now_or_never() {
                            Some(Some(expired)) => due.push(expired.into_inner()),
                            _ => break,
                        }
                    }
                    for key in &due {
                        if let Some(entry) = self.watches.get_mut(key) {
                            entry.timer = None;
                        }
                    }
                    // Activity reported while the timers fired comes first.
                    while let Ok(command) = self.rx.try_recv() {
                        self.handle(command);
                    }
                    self.evaluate_all(due);
                }
                changed = self.settled.changed(), if !self.held.is_empty() => {
                    if changed.is_err() {
                        // The queues stopped (shutdown); nothing will settle further.
                        self.held.clear();
                        continue;
                    }
                    let settled = *self.settled.borrow_and_update();
                    let ready: Vec<WatchKey> = self.held.iter().cloned().collect();
                    tracing::debug!(%settled, held = ready.len(), "ingest settled further");
                    for batch in ready.chunks(MAX_BATCH) {
                        self.evaluate_all(batch.to_vec());
                    }
                }
            }
            self.evaluate_groups();
            self.metrics
                .observer_watches(self.watches.len(), self.held.len());
        }
    }

    /// Live watches the observer is timing.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Arm(watch, reply) => {
                let key = watch.key();
                self.insert(*watch);
                let _ = reply.send(());
                self.evaluate(&key);
            }
            Command::Activity { updated, touched } => {
                for watch in updated {
                    let key = watch.key();
                    match self.watches.get_mut(&key) {
                        Some(entry) => entry.update(watch),
                        None if watch.accepts_activity(self.clock.now()) => self.insert(watch),
                        None => {}
                    }
                }
                for batch in touched.chunks(MAX_BATCH) {
                    self.evaluate_all(batch.to_vec());
                }
            }
            Command::Cancel { key, reason, reply } => self.cancel(key, reason, reply),
            Command::Cancelled { key, result, reply } => {
                let _ = reply.send(self.cancelled(&key, result));
            }
            Command::Written(written) => self.written(written),
            Command::Adopt(watches) => {
                let mut keys = Vec::with_capacity(watches.len());
                for watch in watches {
                    if watch.accepts_activity(self.clock.now()) && self.owns(&watch) {
                        keys.push(watch.key());
                        self.insert(watch);
                    }
                }
                if !keys.is_empty() {
                    tracing::debug!(watches = keys.len(), "adopted watches");
                }
                for batch in keys.chunks(MAX_BATCH) {
                    self.evaluate_all(batch.to_vec());
                }
            }
            Command::Disown(shard) => self.disown(shard),
            Command::Observed(watches) => {
                if let Some(c) = &mut self.cluster {
                    c.polling = false;
                }
                let mut changed = Vec::new();
                for watch in watches {
                    let key = watch.key();
                    self.member_changed(&watch);
                    if let Some(entry) = self.watches.get_mut(&key)
                        && entry.watch.last_seq < watch.last_seq
                    {
                        entry.update(watch);
                        changed.push(key);
                    }
                }
                for batch in changed.chunks(MAX_BATCH) {
                    self.evaluate_all(batch.to_vec());
                }
            }
            Command::ManifestChecked { key, result } => self.manifest_checked(key, result),
            Command::Members { group, result } => self.members_read(group, result),
            Command::Reconciled {
                key,
                activity,
                probe,
                result,
            } => self.listed(key, activity, probe, result),
        }
    }

    fn insert(&mut self, watch: Watch) {
        let key = watch.key();
        self.routes
            .add_source(&watch.source, &key, watch.marker_key());
        if !self.owns(&watch) {
            // Another replica times it; this one only counts into it.
            return;
        }
        match self.watches.get_mut(&key) {
            Some(entry) => entry.update(watch),
            None => {
                for member in watch.member_keys() {
                    self.groups_of
                        .entry(member)
                        .or_default()
                        .insert(key.clone());
                }
                self.watches.insert(key, Entry::new(watch));
            }
        }
    }

    fn forget(&mut self, key: &WatchKey) {
        self.held.remove(key);
        self.want(key, None);
        if let Some(entry) = self.watches.remove(key) {
            if let Some(timer) = entry.timer {
                self.queue.remove(&timer);
            }
            self.unindex(key, &entry.watch);
            self.routes.remove_source(&entry.watch.source, key);
            if entry.watch.state().is_terminal() {
                self.retire(key);
            }
        }
    }

    /// Stops timing `key` without touching its route (it is still live elsewhere).
    fn drop_timing(&mut self, key: &WatchKey) {
        self.held.remove(key);
        self.want(key, None);
        if let Some(entry) = self.watches.remove(key) {
            if let Some(timer) = entry.timer {
                self.queue.remove(&timer);
            }
            self.unindex(key, &entry.watch);
        }
    }

    /// Stops timing every watch of `shard`.
    fn disown(&mut self, shard: u32) {
        let Some(c) = &self.cluster else { return };
        let keys: Vec<WatchKey> = self
            .watches
            .keys()
            .filter(|k| c.ownership.shard(&k.id) == shard)
            .cloned()
            .collect();
        tracing::info!(shard, watches = keys.len(), "no longer observing a shard");
        for key in keys {
            self.drop_timing(&key);
        }
    }

    /// Re-reads timed watches off the loop, for activity other replicas
    /// counted (and changes they made): every [`SWEEP`] all of them, else
    /// those [`rereads_every_poll`] picks; the result comes back as a command.
    fn observe(&mut self) {
        let Some(c) = &self.cluster else { return };
        if c.polling || self.watches.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let sweep = c.swept.is_none_or(|at| now.duration_since(at) >= SWEEP);
        let soon = now + c.poll * NEAR_POLLS;
        // The members of its groups too: other replicas may time them.
        let keys: Vec<WatchKey> = self
            .watches
            .iter()
            .filter(|(_, entry)| sweep || rereads_every_poll(entry, &self.queue, soon))
            .map(|(key, _)| key)
            .chain(self.groups_of.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            return;
        }
        let Some(c) = &mut self.cluster else { return };
        c.polling = true;
        if sweep {
            c.swept = Some(now);
        }
        let (store, tx) = (self.store.clone(), self.tx.clone());
        tokio::spawn(async move {
            let watches = match store.watches(&keys).await {
                Ok(watches) => watches,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-read the observed watches");
                    Vec::new()
                }
            };
            let _ = tx.send(Command::Observed(watches)).await;
        });
    }

    /// Lets the store release what a finished watch no longer needs, off the observer's path.
    fn retire(&self, key: &WatchKey) {
        let store = self.store.clone();
        let (key, now) = (key.clone(), self.clock.now());
        tokio::spawn(async move {
            if let Err(e) = store.retire(&key.tenant, &key.id, now).await {
                tracing::warn!(tenant = %key.tenant, watch_id = %key.id, error = %e, "cannot retire a finished watch");
            }
        });
    }

    fn schedule(&mut self, key: &WatchKey, at: Timestamp) {
        let instant = self.clock.instant_at(at);
        let Some(entry) = self.watches.get_mut(key) else {
            return;
        };
        match &entry.timer {
            Some(timer) => self.queue.reset_at(timer, instant),
            None => entry.timer = Some(self.queue.insert_at(key.clone(), instant)),
        }
    }

    fn unschedule(&mut self, key: &WatchKey) {
        if let Some(timer) = self.watches.get_mut(key).and_then(|e| e.timer.take()) {
            self.queue.remove(&timer);
        }
    }
}
