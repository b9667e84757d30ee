//! One simulated run: the replicas, the workload and the faults a seed
//! draws, played on a paused clock until every watch has completed with
//! everything its producers sent, and the history the checker reads.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use streamwatch_server::{
    Backends, Core,
    auth::LiveTenants,
    clock::{Clock, Timestamp},
    config::Config,
    store::{
        ClusterTable, ObjectsQuery, Store,
        memory::{Commit, LeaseChange, MemoryStore},
    },
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchState},
};
use tokio::time::Instant;

pub use super::schedule::{Fault, Outage};
use super::{
    faults::{Faults, FaultyTable},
    queue::{MemoryQueue, QueueView},
    schedule::{draw_faults, inflict},
    workload::produce,
};

pub const REPLICAS: usize = 3;
pub const SHARDS: u32 = 8;
pub const LEASE: Duration = Duration::from_secs(10);
pub const HEARTBEAT: Duration = Duration::from_secs(3);
pub const QUIET: Duration = Duration::from_secs(5);
/// The polling rule's watches ([`Rules::PollingToo`]): samples a second
/// apart, done after five unchanged ones (a window as long as [`QUIET`]).
pub const POLL_DELAY: Duration = Duration::from_secs(1);
pub const POLL_REPEATS: u32 = 5;
pub const VISIBILITY: Duration = Duration::from_secs(10);
/// How far a replica's clock may be from true time, either way.
pub const MAX_SKEW_MS: i64 = 250;
/// How long after the last fault the run waits for every watch to complete.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);
/// Wall time at the start of every run (each replica's clock adds its skew).
pub const BASE_WALL_MS: i64 = 1_800_000_000_000;

/// The rules a run's watches complete by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// Every watch: a quiet period of [`QUIET`].
    Quiet,
    /// Every other watch samples its count instead (the polling rule): a
    /// sample that sees the count move changes the watch without an event,
    /// next to recordings on every replica.
    PollingToo,
}

/// One notification a producer sent, and when the service accepted it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub key: String,
    pub accepted: Instant,
    pub by_rpc: bool,
}

/// What the checker reads about one watch.
#[derive(Debug)]
pub struct WatchHistory {
    pub watch: Watch,
    /// Its `created_at`, in cluster time (by the clock of the replica that created it).
    pub created: Instant,
    pub sent: Vec<Sent>,
    pub log: Vec<WatchEvent>,
    /// The generation each key was first counted in (the watch's manifest).
    pub generations: BTreeMap<String, u32>,
    /// What each subscriber received, in order.
    pub subscribers: Vec<Vec<u64>>,
}

#[derive(Debug)]
pub struct History {
    pub started: Instant,
    pub simulated: Duration,
    pub skews: BTreeMap<String, i64>,
    pub faults: Vec<(Duration, Fault)>,
    pub watches: Vec<WatchHistory>,
    pub commits: Vec<Commit>,
    pub leases: Vec<LeaseChange>,
    pub outages: Vec<Outage>,
    /// The watches not completed with everything sent once the run gave up waiting.
    pub unfinished: Vec<String>,
}

impl History {
    /// A digest of what happened, for comparing two runs of a seed.
    pub fn digest(&self) -> String {
        let mut out = String::new();
        for w in &self.watches {
            out.push_str(&format!(
                "{}:{}:",
                w.watch.id, w.watch.counters.object_count
            ));
            for e in &w.log {
                out.push_str(&format!(
                    "{}@{}/{}:{};",
                    e.seq,
                    e.time.as_millis(),
                    e.generation,
                    kind_name(&e.kind)
                ));
            }
        }
        for c in &self.leases {
            out.push_str(&format!(
                "{:?}",
                (c.at - self.started, c.shard, &c.owner, c.version)
            ));
        }
        out
    }
}

pub fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Started { .. } => "STARTED",
        EventKind::Progress { .. } => "PROGRESS",
        EventKind::QuietTick { .. } => "QUIET_TICK",
        EventKind::Completed { .. } => "COMPLETED",
        EventKind::TimedOut { .. } => "TIMED_OUT",
        EventKind::Cancelled { .. } => "CANCELLED",
        EventKind::Reopened { .. } => "REOPENED",
        _ => "OTHER",
    }
}

pub fn tenant() -> TenantId {
    TenantId::parse("tenant", "default").unwrap()
}

pub struct Replica {
    pub id: String,
    pub skew_ms: i64,
    pub core: Option<Core>,
    pub faults: Arc<Faults>,
    pub incarnation: u64,
}

pub struct World {
    pub seed: u64,
    pub started: Instant,
    pub table: Arc<MemoryStore>,
    pub queue: Arc<MemoryQueue>,
    pub replicas: Vec<Arc<tokio::sync::Mutex<Replica>>>,
    /// Killed incarnations: kept until the run ends, their calls never returning.
    pub zombies: Mutex<Vec<Core>>,
    pub outages: Mutex<Vec<Outage>>,
    pub rules: Rules,
    pub verbose: bool,
}

fn config(replica: &str) -> Config {
    let mut config = Config::embedded_default();
    config.observer_thread = false;
    config.cluster.cluster = true;
    config.cluster.replica_id = Some(replica.to_owned());
    config.cluster.shards = SHARDS;
    config.cluster.lease_duration = LEASE;
    config.cluster.heartbeat = HEARTBEAT;
    config.cluster.route_refresh = Duration::from_millis(500);
    config.cluster.log_poll = Duration::from_secs(1);
    config.sqs_consumers = 1;
    config
}

impl World {
    pub async fn start_replica(&self, slot: usize) {
        let mut r = self.replicas[slot].lock().await;
        r.incarnation += 1;
        r.faults = Faults::new(self.seed ^ (slot as u64) << 32 ^ r.incarnation);
        let table: Arc<dyn ClusterTable> = Arc::new(FaultyTable {
            inner: self.table.clone(),
            faults: r.faults.clone(),
        });
        let backends = Backends {
            store: table.clone(),
            sole_writer: false,
            cluster: Some(table),
            queues: vec![Arc::new(QueueView {
                queue: self.queue.clone(),
                faults: r.faults.clone(),
            })],
            visibility: VISIBILITY,
            reconciler: None,
            aws: Default::default(),
            dynamodb: None,
            id_seed: Some(self.seed ^ (slot as u64) << 40 ^ r.incarnation),
            crashed: false,
            running_marker: None,
        };
        let clock = Clock::starting_at(Timestamp::from_millis(
            BASE_WALL_MS + (Instant::now() - self.started).as_millis() as i64 + r.skew_ms,
        ));
        // A replica that cannot join (the store failed it) tries again, as a
        // restarted process would.
        loop {
            let tenants = LiveTenants::load(None).expect("no tenants file");
            match Core::start_on(&config(&r.id), clock, backends_again(&backends), tenants).await {
                Ok(core) => {
                    r.core = Some(core);
                    return;
                }
                Err(e) => {
                    if self.verbose {
                        eprintln!("{} cannot start: {e:#}", r.id);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

fn backends_again(b: &Backends) -> Backends {
    Backends {
        store: b.store.clone(),
        sole_writer: b.sole_writer,
        cluster: b.cluster.clone(),
        queues: b.queues.clone(),
        visibility: b.visibility,
        reconciler: None,
        aws: b.aws.clone(),
        dynamodb: None,
        id_seed: b.id_seed,
        crashed: false,
        running_marker: None,
    }
}

/// Runs seed `seed` on a fresh paused runtime, whose own RNG (what
/// `select!` and the watch channel draw from) the seed fixes too.
pub fn run(seed: u64, rules: Rules, verbose: bool) -> History {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("runtime");
    let history = runtime.block_on(play(seed, rules, verbose));
    runtime.shutdown_background();
    history
}

async fn play(seed: u64, rules: Rules, verbose: bool) -> History {
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let table =
        Arc::new(MemoryStore::new(SHARDS).with_index_lag(Duration::from_millis(rng.u64(0..=500))));
    let queue = MemoryQueue::new(VISIBILITY);
    let mut skews = BTreeMap::new();
    let replicas = (0..REPLICAS)
        .map(|i| {
            let id = format!("r{i}");
            let skew_ms = rng.i64(-MAX_SKEW_MS..=MAX_SKEW_MS);
            skews.insert(id.clone(), skew_ms);
            Arc::new(tokio::sync::Mutex::new(Replica {
                id,
                skew_ms,
                core: None,
                faults: Faults::new(0),
                incarnation: 0,
            }))
        })
        .collect();
    let world = Arc::new(World {
        seed,
        started,
        table,
        queue,
        replicas,
        zombies: Mutex::default(),
        outages: Mutex::default(),
        rules,
        verbose,
    });
    for slot in 0..REPLICAS {
        world.start_replica(slot).await;
    }
    let faults = draw_faults(&mut rng);
    let faults_task = tokio::spawn(inflict(world.clone(), faults.clone()));
    let watches = 2 + rng.usize(0..3);
    let mut producers = Vec::new();
    for w in 0..watches {
        let world = world.clone();
        let mut wrng = rng.fork();
        let begin = Duration::from_millis(wrng.u64(0..20_000));
        producers.push(tokio::spawn(async move {
            tokio::time::sleep(begin).await;
            produce(&world, w, &mut wrng).await
        }));
    }
    let mut produced = Vec::new();
    for p in producers {
        produced.push(p.await.expect("producer"));
    }
    faults_task.await.expect("faults");
    // Every watch completes with everything sent, or the run says it did not.
    let limit = Instant::now() + SETTLE_LIMIT;
    let mut unfinished = Vec::new();
    while Instant::now() < limit {
        unfinished.clear();
        for (watch, _, sent, _) in &produced {
            let now = world
                .table
                .get_watch(&watch.tenant, &watch.id)
                .await
                .expect("memory store")
                .expect("watch");
            let keys: std::collections::BTreeSet<_> = sent.iter().map(|s| &s.key).collect();
            if now.lifecycle.state != WatchState::Completed
                || now.counters.object_count != keys.len() as u64
            {
                unfinished.push(format!(
                    "watch {} {:?} with {} of {} objects: {:?}",
                    now.id,
                    now.lifecycle.state,
                    now.counters.object_count,
                    keys.len(),
                    now.lifecycle.reason
                ));
            }
        }
        if unfinished.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if world.verbose && !unfinished.is_empty() {
        for r in world.table.replicas().await.expect("memory store") {
            eprintln!("replica item at the end: {r:?}");
        }
    }
    // Let subscribers catch up with the log, then read what they saw.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut histories = Vec::new();
    for (watch, created, sent, subscribers) in produced {
        let log = world
            .table
            .events_after(&watch.tenant, &watch.id, 0, 100_000)
            .await
            .expect("memory store");
        let query = ObjectsQuery {
            limit: 100_000,
            ..Default::default()
        };
        let generations = world
            .table
            .list_objects(&watch.tenant, &watch.id, &query)
            .await
            .expect("memory store")
            .into_iter()
            .map(|o| (o.key, o.generation))
            .collect();
        let watch = world
            .table
            .get_watch(&watch.tenant, &watch.id)
            .await
            .expect("memory store")
            .expect("watch");
        histories.push(WatchHistory {
            watch,
            created,
            sent,
            log,
            generations,
            subscribers: subscribers
                .iter()
                .map(|s| s.lock().unwrap().clone())
                .collect(),
        });
    }
    let outages = world.outages.lock().unwrap().clone();
    History {
        started,
        simulated: started.elapsed(),
        skews,
        faults,
        watches: histories,
        commits: world.table.commits(),
        leases: world.table.lease_history(),
        outages,
        unfinished,
    }
}
