//! One simulated run: the replicas, the workload and the faults a seed
//! draws, played on a paused clock until every watch has completed with
//! everything its producers sent, and the history the checker reads.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use streamwatch_server::{
    Backends, Core,
    auth::LiveTenants,
    clock::{Clock, Timestamp},
    config::Config,
    service::StartWatch,
    store::{
        ClusterTable, ObjectsQuery, Store,
        memory::{Commit, LeaseChange, MemoryStore},
    },
    watch::{
        Bucket, EventKind, Policy, Prefix, Rule, Source, TenantId, Watch, WatchEvent, WatchId,
        WatchState,
    },
};
use streamwatch_testkit::documents;
use tokio::time::Instant;

use super::{
    faults::{Faults, FaultyTable},
    queue::{MemoryQueue, QueueView},
};

pub const REPLICAS: usize = 3;
pub const SHARDS: u32 = 8;
pub const LEASE: Duration = Duration::from_secs(10);
pub const HEARTBEAT: Duration = Duration::from_secs(3);
pub const QUIET: Duration = Duration::from_secs(5);
pub const VISIBILITY: Duration = Duration::from_secs(10);
/// How far a replica's clock may be from true time, either way.
pub const MAX_SKEW_MS: i64 = 250;
/// How long after the last fault the run waits for every watch to complete.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);
/// Wall time at the start of every run (each replica's clock adds its skew).
pub const BASE_WALL_MS: i64 = 1_800_000_000_000;
const BUCKET: &str = "data-lake";

/// A fault the seed drew, and when it began (cluster time from the start).
#[derive(Clone, Debug)]
pub enum Fault {
    Kill {
        replica: usize,
        restart_after: Duration,
    },
    Stall {
        replica: usize,
        lasting: Duration,
    },
    CutOff {
        replica: usize,
        lasting: Duration,
    },
    Slow {
        replica: usize,
        at_most: Duration,
        lasting: Duration,
    },
    Failing {
        replica: usize,
        probability: f64,
        lasting: Duration,
    },
    Redeliver {
        every: usize,
    },
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

/// A replica incarnation going down (killed, stalled or cut off) and the
/// shards it held then.
#[derive(Clone, Debug)]
pub struct Outage {
    pub replica: String,
    pub at: Instant,
    pub until: Option<Instant>,
    pub shards: Vec<u32>,
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
    pub completed_all: bool,
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

fn tenant() -> TenantId {
    TenantId::parse("tenant", "default").unwrap()
}

struct Replica {
    id: String,
    skew_ms: i64,
    core: Option<Core>,
    faults: Arc<Faults>,
    incarnation: u64,
}

struct World {
    seed: u64,
    started: Instant,
    table: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    replicas: Vec<Arc<tokio::sync::Mutex<Replica>>>,
    /// Killed incarnations: kept until the run ends, their calls never returning.
    zombies: Mutex<Vec<Core>>,
    outages: Mutex<Vec<Outage>>,
    verbose: bool,
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
    async fn start_replica(&self, slot: usize) {
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
    }
}

/// Runs seed `seed` on a fresh paused runtime.
pub fn run(seed: u64, verbose: bool) -> History {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let history = runtime.block_on(play(seed, verbose));
    runtime.shutdown_background();
    history
}

async fn play(seed: u64, verbose: bool) -> History {
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
    let mut completed_all = false;
    while Instant::now() < limit {
        let mut done = true;
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
                done = false;
            }
        }
        if done {
            completed_all = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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
        completed_all,
    }
}

fn draw_faults(rng: &mut fastrand::Rng) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::new();
    for _ in 0..rng.usize(1..=3) {
        let at = Duration::from_millis(rng.u64(3_000..60_000));
        let replica = rng.usize(0..REPLICAS);
        let fault = match rng.u8(0..6) {
            0 => Fault::Kill {
                replica,
                restart_after: Duration::from_millis(rng.u64(1_000..20_000)),
            },
            1 => Fault::Stall {
                replica,
                lasting: Duration::from_millis(rng.u64(LEASE.as_millis() as u64..25_000)),
            },
            2 => Fault::CutOff {
                replica,
                lasting: Duration::from_millis(rng.u64(2_000..20_000)),
            },
            3 => Fault::Slow {
                replica,
                at_most: Duration::from_millis(rng.u64(100..8_000)),
                lasting: Duration::from_millis(rng.u64(5_000..30_000)),
            },
            4 => Fault::Failing {
                replica,
                probability: 0.1 + rng.f64() * 0.5,
                lasting: Duration::from_millis(rng.u64(5_000..30_000)),
            },
            _ => Fault::Redeliver {
                every: rng.usize(1..4),
            },
        };
        faults.push((at, fault));
    }
    faults.sort_by_key(|(at, _)| *at);
    faults
}

async fn held_shards(world: &World, replica: &str) -> Vec<u32> {
    world
        .table
        .cluster_view()
        .await
        .expect("memory store")
        .leases
        .into_iter()
        .filter(|l| l.owner == replica)
        .map(|l| l.shard)
        .collect()
}

async fn inflict(world: Arc<World>, faults: Vec<(Duration, Fault)>) {
    let mut restarts = Vec::new();
    for (at, fault) in faults {
        tokio::time::sleep_until(world.started + at).await;
        if world.verbose {
            eprintln!("{:?}: {fault:?}", at);
        }
        let now = Instant::now();
        let outage = |replica: usize, until: Option<Instant>| {
            let world = world.clone();
            async move {
                let id = world.replicas[replica].lock().await.id.clone();
                let shards = held_shards(&world, &id).await;
                world.outages.lock().unwrap().push(Outage {
                    replica: id,
                    at: now,
                    until,
                    shards,
                });
            }
        };
        match fault {
            Fault::Kill {
                replica,
                restart_after,
            } => {
                outage(replica, None).await;
                let mut r = world.replicas[replica].lock().await;
                r.faults.kill();
                if let Some(core) = r.core.take() {
                    core.end_streams();
                    world.zombies.lock().unwrap().push(core);
                }
                drop(r);
                let world = world.clone();
                restarts.push(tokio::spawn(async move {
                    tokio::time::sleep(restart_after).await;
                    world.start_replica(replica).await;
                }));
            }
            Fault::Stall { replica, lasting } => {
                outage(replica, Some(now + lasting)).await;
                world.replicas[replica]
                    .lock()
                    .await
                    .faults
                    .stall_until(now + lasting);
            }
            Fault::CutOff { replica, lasting } => {
                outage(replica, Some(now + lasting)).await;
                world.replicas[replica]
                    .lock()
                    .await
                    .faults
                    .cut_off_until(now + lasting);
            }
            Fault::Slow {
                replica,
                at_most,
                lasting,
            } => world.replicas[replica]
                .lock()
                .await
                .faults
                .slow_until(at_most, now + lasting),
            Fault::Failing {
                replica,
                probability,
                lasting,
            } => world.replicas[replica]
                .lock()
                .await
                .faults
                .failing_until(probability, now + lasting),
            Fault::Redeliver { every } => world.queue.redeliver(every),
        }
    }
    for r in restarts {
        r.await.expect("restart");
    }
    // Every fault has ended by the time the longest one could.
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// The service of a replica that is up (not killed), chosen by `pick`.
async fn some_service(
    world: &World,
    pick: usize,
) -> Option<Arc<streamwatch_server::service::Service>> {
    some_replica(world, pick).await.map(|(_, service)| service)
}

/// [`some_service`], with the clock skew of its replica.
async fn some_replica(
    world: &World,
    pick: usize,
) -> Option<(i64, Arc<streamwatch_server::service::Service>)> {
    for i in 0..REPLICAS {
        let r = world.replicas[(pick + i) % REPLICAS].lock().await;
        if let Some(core) = &r.core {
            if world.verbose {
                eprintln!("{:?}: calling {}", Instant::now() - world.started, r.id);
            }
            return Some((r.skew_ms, core.service.clone()));
        }
    }
    None
}

type Seen = Arc<Mutex<Vec<u64>>>;

/// Starts watch `w`, follows it with subscribers, and sends its objects.
async fn produce(
    world: &Arc<World>,
    w: usize,
    rng: &mut fastrand::Rng,
) -> (Watch, Instant, Vec<Sent>, Vec<Seen>) {
    let prefix = format!("w{w}/");
    let start = StartWatch {
        source: Source::objects(
            Bucket::parse("bucket", BUCKET).unwrap(),
            Prefix::parse("prefix", &prefix).unwrap(),
            Default::default(),
        ),
        policy: Policy {
            rule: Rule::QuietPeriod { window: QUIET },
            // Late data reopens the watch: nothing sent is ever dropped.
            late_window: Some(Duration::from_secs(3600)),
            ..Policy::default()
        },
        labels: Default::default(),
        client_token: Some(format!("watch-{w}")),
        trace: Default::default(),
    };
    // StartWatch is retried with its client token until a replica answers.
    let (watch, created) = loop {
        let pick = rng.usize(0..REPLICAS);
        if let Some((skew_ms, service)) = some_replica(world, pick).await {
            let tenant = tenant();
            let call = service.start_watch(&tenant, start.clone());
            let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
            if world.verbose {
                eprintln!(
                    "{:?}: StartWatch {w}: {:?}",
                    Instant::now() - world.started,
                    answer
                        .as_ref()
                        .map(|a| a.as_ref().map(|(w, new)| (w.id.clone(), *new)))
                );
            }
            if let Ok(Ok((watch, _))) = answer {
                if world.verbose {
                    let version = world.table.routes_version().await;
                    let acks: Vec<_> = world
                        .table
                        .replicas()
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| (r.id, r.routes, r.heartbeat))
                        .collect();
                    eprintln!("  route version {version:?}, acknowledged {acks:?}");
                }
                let since = watch.created_at.as_millis() - BASE_WALL_MS - skew_ms;
                let created = world.started + Duration::from_millis(since.max(0) as u64);
                break (watch, created);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let subscribers: Vec<Seen> = (0..1 + rng.usize(0..2))
        .map(|_| {
            let seen = Seen::default();
            tokio::spawn(follow(
                world.clone(),
                watch.id.clone(),
                rng.usize(0..REPLICAS),
                seen.clone(),
            ));
            seen
        })
        .collect();
    let objects = 3 + rng.usize(0..20);
    let mut sent = Vec::new();
    for o in 0..objects {
        tokio::time::sleep(Duration::from_millis(
            rng.u64(0..QUIET.as_millis() as u64 / 3),
        ))
        .await;
        let key = format!("{prefix}part-{o:04}.parquet");
        let document = documents::s3_document(
            BUCKET,
            &[(documents::PUT, &key, &format!("{:018X}", 0x1000 + o))],
        );
        let by_rpc = rng.u8(0..4) == 0;
        let accepted = if by_rpc {
            ingest(world, &document, rng).await
        } else {
            world.queue.send(document);
            Instant::now()
        };
        sent.push(Sent {
            key,
            accepted,
            by_rpc,
        });
    }
    (watch, created, sent, subscribers)
}

/// IngestS3Events on some replica until one accepts; when the call that
/// was accepted began (the service had the notification from then on).
async fn ingest(world: &World, document: &str, rng: &mut fastrand::Rng) -> Instant {
    let (tenant, documents) = (tenant(), vec![document.to_owned()]);
    loop {
        if let Some(service) = some_service(world, rng.usize(0..REPLICAS)).await {
            let began = Instant::now();
            let call = service.ingest(&tenant, &documents);
            // Half the callers give up on a call after 2 s; the others wait
            // as long as a client without a deadline would.
            let patience = if rng.bool() {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(60)
            };
            let answer = tokio::time::timeout(patience, call).await;
            if world.verbose {
                eprintln!("{:?}: IngestS3Events: {answer:?}", began - world.started);
            }
            if let Ok(Ok(report)) = answer
                && report.rejected.is_empty()
            {
                return began;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A subscriber: follows the watch's events from a replica, and from
/// another where the stream ends, resuming after the last event it got.
async fn follow(world: Arc<World>, id: WatchId, mut pick: usize, seen: Seen) {
    loop {
        if let Some(service) = some_service(&world, pick).await {
            let after = seen.lock().unwrap().last().copied().unwrap_or(0);
            if let Ok(Ok(mut events)) = tokio::time::timeout(
                Duration::from_secs(5),
                service.stream_events(&tenant(), &id, after),
            )
            .await
            {
                while let Some(Ok(event)) = events.next().await {
                    seen.lock().unwrap().push(event.seq);
                }
            }
        }
        pick += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
