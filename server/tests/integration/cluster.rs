//! Many replicas on one cluster table and one SQS queue: a replica that
//! lost its shard lease cannot write a transition, and replicas acknowledge
//! the route version they loaded (both on the in-memory store and on
//! DynamoDB against the AWS emulator); against the emulator, three replicas
//! fed by S3 -> SQS complete every watch exactly once, with exact counts and
//! gap-free streams, across a kill -9 of one of them.

use std::{
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use streamwatch_client::proto as v1;
use streamwatch_server::{
    clock::Timestamp,
    store::{
        Applied, Change, ClusterTable, Created, Guard, LeaseItem, NewWatch, ReplicaItem,
        StoreError, dynamodb::DynamoStore, memory::MemoryStore,
    },
    watch::{
        Bucket, EventKind, Labels, Lifecycle, Policy, Prefix, Source, TenantId, WatchId, WatchState,
    },
};
use streamwatch_testkit::*;

const LIMIT: Duration = Duration::from_secs(180);
/// Lease settings of the replicas under test (the README gives the defaults).
const LEASE: &str = "3s";
const HEARTBEAT: &str = "1s";
/// The emulator serializes DynamoDB requests: under this test's load a
/// refresh takes up to a couple of seconds (milliseconds on DynamoDB).
const ROUTE_REFRESH: Duration = Duration::from_secs(2);

/// A cluster table of one shard, and the same table as a replica started
/// with two shards sees it.
struct Table {
    store: Arc<dyn ClusterTable>,
    two_shards: Arc<dyn ClusterTable>,
}

async fn on_dynamodb(name: &str) -> Table {
    let table = aws::unique(name);
    let store =
        DynamoStore::new(aws::dynamodb().await, &table, Duration::from_secs(3600)).with_shards(1);
    store.create_table().await.unwrap();
    let two_shards =
        DynamoStore::new(aws::dynamodb().await, &table, Duration::from_secs(3600)).with_shards(2);
    Table {
        store: Arc::new(store),
        two_shards: Arc::new(two_shards),
    }
}

fn on_memory() -> Table {
    let store = MemoryStore::new(1);
    let two_shards = store.sharing_with_shards(2);
    Table {
        store: Arc::new(store),
        two_shards: Arc::new(two_shards),
    }
}

/// Each table-level test on the in-memory store and on DynamoDB.
macro_rules! table_tests {
    ($($test:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::on_memory()).await;
                }
            )*
        }
        mod on_dynamodb {
            $(
                #[tokio::test]
                async fn $test() {
                    streamwatch_testkit::require_emulator!();
                    super::$test(super::on_dynamodb("table").await).await;
                }
            )*
        }
    };
}

table_tests!(
    a_replica_that_lost_its_lease_cannot_write_a_transition,
    replicas_acknowledge_the_route_version_they_loaded,
);

async fn a_replica_that_lost_its_lease_cannot_write_a_transition(table: Table) {
    let store = &*table.store;
    store.ensure_shards().await.unwrap();
    store.create_lease(0).await.unwrap();
    let now = Timestamp::from_millis(1_800_000_000_000);

    let free = store.cluster_view().await.unwrap().leases.remove(0);
    assert_eq!((free.owner.as_str(), free.version), ("", 0));
    let a = store
        .take_lease(&free, "replica-a", now)
        .await
        .unwrap()
        .expect("replica-a takes the free lease");
    assert_eq!((a.owner.as_str(), a.version), ("replica-a", 1));

    let tenant = TenantId::parse("tenant", "acme").unwrap();
    let Created::New { watch, .. } = store
        .create_watch(NewWatch {
            tenant: tenant.clone(),
            id: WatchId::generate(),
            source: Source::objects(
                Bucket::parse("bucket", "data-lake").unwrap(),
                Prefix::parse("prefix", "").unwrap(),
                Default::default(),
            ),
            policy: Policy::default(),
            labels: Labels::default(),
            client_token: None,
            created_at: now,
            trace: Default::default(),
        })
        .await
        .unwrap()
    else {
        panic!("a new watch");
    };

    // replica-a pauses and its heartbeat stands still; replica-b and
    // replica-c saw it stand still for a lease duration and both try to take
    // the lease over, from the same read: one wins.
    let seen = store.cluster_view().await.unwrap().leases.remove(0);
    assert_eq!(seen, a, "a lease is written only when it changes hands");
    let b = store
        .take_lease(&seen, "replica-b", now)
        .await
        .unwrap()
        .expect("replica-b takes the expired lease");
    assert_eq!((b.owner.as_str(), b.version), ("replica-b", 2));
    assert_eq!(
        store.take_lease(&seen, "replica-c", now).await.unwrap(),
        None,
        "a second taker from the same read loses"
    );

    // replica-a wakes up: its next read shows the lease taken, and its stale
    // decision is refused.
    assert_eq!(
        store.cluster_view().await.unwrap().leases,
        std::slice::from_ref(&b),
        "the lease names replica-b"
    );
    let completed = |reason: &str| {
        (
            Lifecycle {
                state: WatchState::Completed,
                completed_at: Some(now),
                reason: reason.into(),
                ..watch.lifecycle.clone()
            },
            vec![EventKind::Completed {
                object_count: 0,
                object_bytes: 0,
                reason: reason.into(),
            }],
        )
    };
    let (lifecycle, events) = completed("decided by replica-a");
    let refused = store
        .apply(
            Change::new(
                &tenant,
                &watch.id,
                Guard::exact(&watch),
                lifecycle,
                events,
                now,
            )
            .fenced(a.fence().clone()),
        )
        .await
        .expect_err("the stale owner's write is refused");
    assert!(
        matches!(refused, StoreError::Fenced { shard: 0 }),
        "{refused}"
    );
    let log = store.events_after(&tenant, &watch.id, 0, 10).await.unwrap();
    assert_eq!(log.len(), 1, "nothing was appended: {log:?}");
    assert_eq!(
        store
            .get_watch(&tenant, &watch.id)
            .await
            .unwrap()
            .unwrap()
            .state(),
        WatchState::Active
    );

    // The new owner's decision goes through, once.
    let (lifecycle, events) = completed("decided by replica-b");
    let applied = store
        .apply(
            Change::new(
                &tenant,
                &watch.id,
                Guard::exact(&watch),
                lifecycle,
                events,
                now,
            )
            .fenced(b.fence().clone()),
        )
        .await
        .unwrap();
    assert!(matches!(applied, Some(Applied::Done { .. })));
    let log = store.events_after(&tenant, &watch.id, 0, 10).await.unwrap();
    assert_eq!(log.len(), 2);

    // A take based on an old read fails too: the version moved on.
    let stale = LeaseItem { ..free };
    assert_eq!(
        store.take_lease(&stale, "replica-a", now).await.unwrap(),
        None
    );
    // A released lease is free, at the same version, for one taker.
    store.release_lease(&b, now).await.unwrap();
    let released = store.cluster_view().await.unwrap().leases.remove(0);
    assert_eq!((released.owner.as_str(), released.version), ("", 2));
    assert_eq!(
        store.take_lease(&b, "replica-a", now).await.unwrap(),
        None,
        "a take of the lease as replica-b held it fails once released"
    );
    // So does a replica started with another shard count.
    let refused = table
        .two_shards
        .ensure_shards()
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("--shards 1"), "{refused}");
}

async fn replicas_acknowledge_the_route_version_they_loaded(table: Table) {
    let store = &*table.store;
    let now = Timestamp::from_millis(1_800_000_000_000);
    let replica = |id: &str, heartbeat: u64| ReplicaItem {
        id: id.into(),
        heartbeat,
        settled: now,
        visibility: Duration::from_secs(30),
        routes: 0,
    };
    assert_eq!(store.routes_version().await.unwrap(), 0, "no watch yet");
    store.beat(&replica("replica-a", 1), now).await.unwrap();
    store.beat(&replica("replica-b", 1), now).await.unwrap();
    assert_eq!(store.bump_routes().await.unwrap(), 1);
    assert_eq!(store.bump_routes().await.unwrap(), 2);
    assert_eq!(store.routes_version().await.unwrap(), 2);

    store.ack_routes("replica-a", 2).await.unwrap();
    let routes = |replicas: Vec<ReplicaItem>| -> Vec<(String, u64, u64)> {
        let mut out: Vec<_> = replicas
            .into_iter()
            .map(|r| (r.id, r.heartbeat, r.routes))
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        routes(store.replicas().await.unwrap()),
        [("replica-a".into(), 1, 2), ("replica-b".into(), 1, 0)]
    );
    // A heartbeat keeps the acknowledgement; the cluster view shows both.
    store.beat(&replica("replica-a", 2), now).await.unwrap();
    assert_eq!(
        routes(store.cluster_view().await.unwrap().replicas),
        [("replica-a".into(), 2, 2), ("replica-b".into(), 1, 0)]
    );
    // A replica that left is not brought back by a late acknowledgement.
    store.leave("replica-b").await.unwrap();
    store.ack_routes("replica-b", 2).await.unwrap();
    assert_eq!(
        routes(store.replicas().await.unwrap()),
        [("replica-a".into(), 2, 2)]
    );
}

struct Replica {
    child: tokio::process::Child,
    endpoint: String,
    log: std::path::PathBuf,
    metrics: std::net::SocketAddr,
}

impl Replica {
    async fn spawn(dir: &DataDir, name: &str, table: &str, queue: &str, create: bool) -> Self {
        // Kept after the test (under target/), for a failure to be read.
        let logs =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-{table}"));
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("{name}.log"));
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"));
        command
            .args(["--store", "dynamodb", "--table", table])
            .args(["--cluster", "--replica-id", name, "--shards", "16"])
            .args(["--lease-duration", LEASE, "--heartbeat", HEARTBEAT])
            .args(["--route-refresh", &format!("{}s", ROUTE_REFRESH.as_secs())])
            .args(["--log-poll", "2s"])
            .args(["--sqs-queue-url", queue, "--sqs-wait", "1s"])
            .arg("--data")
            .arg(dir.db())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if create {
            command.arg("--create-table");
        }
        // Serving: the table is there (the next replica needs the one this
        // one creates) and the replica answers.
        let server = ServerProcess::spawn(command, dir.path(), true).await;
        Self {
            child: server.child,
            endpoint: server.endpoint,
            log,
            metrics: server.metrics.expect("metrics served"),
        }
    }

    /// DynamoDB requests so far: `(all, lease, route)`.
    async fn dynamodb_requests(&self) -> (f64, f64, f64) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.unwrap();
        let (_, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
        let scrape =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let total = |name: &str| {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == name)
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) => v,
                    _ => 0.0,
                })
                .sum::<f64>()
        };
        (
            total("streamwatch_dynamodb_requests_total"),
            total("streamwatch_dynamodb_lease_requests_total"),
            total("streamwatch_dynamodb_route_requests_total"),
        )
    }

    async fn client(&self) -> streamwatch_client::Client {
        streamwatch_client::Client::connect(self.endpoint.clone())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn an_owner_does_not_re_read_watches_whose_deadline_is_far_on_every_poll() {
    require_emulator!();
    let sqs = aws::sqs().await;
    let (queue, _dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("observe"), 5, Duration::from_secs(30)).await;
    let table = aws::unique("observe");
    let dir = DataDir::new();
    let replica = Replica::spawn(&dir, "replica-0", &table, &queue, true).await;
    let client = replica.client().await;
    // Owned by the one replica, deadlines an hour away: re-read once a
    // minute, not every --log-poll (2s).
    futures::future::join_all((0..20).map(|i| {
        let mut client = client.clone();
        async move {
            let request = start_request(
                "observed-bucket",
                &format!("set-{i:02}/"),
                quiet_period(Duration::from_secs(3600)),
            );
            begin(&mut client, request).await
        }
    }))
    .await;
    // Spans of four polls, waited out: nothing to await but time passing.
    // The delivery outbox poll (every 5s) is what remains; a span may also
    // see the tail of the replica's startup reads, so three are allowed.
    let mut spans = Vec::new();
    for _ in 0..3 {
        let from = replica.dynamodb_requests().await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let to = replica.dynamodb_requests().await;
        spans.push((to.0 - from.0) - (to.1 - from.1) - (to.2 - from.2));
        if spans.last() <= Some(&2.0) {
            break;
        }
    }
    assert!(
        spans.last() <= Some(&2.0),
        "requests beyond leases and routes in each 8s: {spans:?}; log {}",
        replica.log.display()
    );
}

const WATCHES: usize = 200;
const OBJECTS_PER_WATCH: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_complete_every_watch_exactly_once_across_a_kill_9() {
    require_emulator!();
    let (s3, sqs) = (aws::s3().await, aws::sqs().await);
    // Short visibility: what a killed replica had received is redelivered quickly.
    let (bucket, queue) = aws::bucket_to_queue(&s3, &sqs, "cluster", Duration::from_secs(2)).await;
    let table = aws::unique("cluster");
    let dir = DataDir::new();
    let mut replicas = vec![Replica::spawn(&dir, "replica-0", &table, &queue, true).await];
    replicas.push(Replica::spawn(&dir, "replica-1", &table, &queue, false).await);
    replicas.push(Replica::spawn(&dir, "replica-2", &table, &queue, false).await);
    let logs: Vec<String> = replicas
        .iter()
        .map(|r| r.log.display().to_string())
        .collect();

    // Watches started on every replica; each is subscribed to on a replica
    // that will survive (1 or 2), whoever owns it.
    let mut clients = Vec::new();
    for r in &replicas {
        clients.push(r.client().await);
    }
    // StartWatch returns once every replica routes to the watch, sooner
    // than the staleness bound (twice --route-refresh) it once waited out.
    let starting = Instant::now();
    let first = begin(
        &mut clients[1].clone(),
        start_request(&bucket, "first/", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let took = starting.elapsed();
    eprintln!("StartWatch returned after {took:?}");
    assert!(
        took < ROUTE_REFRESH * 2,
        "StartWatch took {took:?}, the staleness bound {:?}; logs {logs:?}",
        ROUTE_REFRESH * 2
    );
    clients[2]
        .clone()
        .cancel_watch(&first, "timed only")
        .await
        .unwrap();
    let ids: Vec<String> = futures::stream::iter(0..WATCHES)
        .map(|i| {
            let mut client = clients[i % 3].clone();
            let bucket = bucket.clone();
            async move {
                // Quiet for 8s once data came: longer than the queue's
                // visibility timeout, so what the killed replica had
                // received is redelivered and counted first.
                let policy = v1::Policy {
                    min_objects: 1,
                    ..quiet_period(Duration::from_secs(8))
                };
                let request = start_request(&bucket, &format!("set-{i:03}/"), policy);
                begin(&mut client, request).await.watch_id
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut subscribers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut client = clients[1 + i % 2].clone();
        let id = id.clone();
        subscribers.push(tokio::spawn(async move {
            let stream = client.events(&id, 0).await.expect("StreamWatchEvents");
            read_to_end(stream, LIMIT).await
        }));
    }

    // A watch started on one replica, followed on another and cancelled
    // through a third: every RPC works on every replica.
    let cancelled = begin(
        &mut clients[1].clone(),
        start_request(
            &bucket,
            "cancelled/",
            quiet_period(Duration::from_secs(3600)),
        ),
    )
    .await
    .watch_id;
    let follow = clients[2].clone().events(&cancelled, 0).await.unwrap();
    let watch = clients[0]
        .clone()
        .cancel_watch(&cancelled, "not needed")
        .await
        .unwrap();
    assert_eq!(watch.state(), v1::WatchState::Cancelled);
    assert_eq!(
        kinds(&read_to_end(follow, LIMIT).await),
        ["started", "cancelled"]
    );

    // Objects land through S3 -> SQS; replica-0 dies halfway through.
    let put = |i: usize| {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        async move {
            for k in 0..OBJECTS_PER_WATCH {
                s3.put_object()
                    .bucket(&bucket)
                    .key(format!("set-{i:03}/part {k}.json"))
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"{}"))
                    .send()
                    .await
                    .map(|_| ())?;
            }
            Ok::<_, aws_sdk_s3::Error>(())
        }
    };
    futures::stream::iter(0..WATCHES / 2)
        .map(put)
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    replicas[0].child.start_kill().unwrap();
    replicas[0].child.wait().await.unwrap();
    let killed_at = Instant::now();
    futures::stream::iter(WATCHES / 2..WATCHES)
        .map(put)
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();

    for (i, subscriber) in subscribers.into_iter().enumerate() {
        let events = subscriber.await.unwrap();
        let id = &ids[i];
        assert_eq!(events.first().map(kind), Some("started"), "watch {i} {id}");
        assert_gapless(&events, 1);
        let completions: Vec<u64> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(v1::watch_event::Kind::Completed(done)) => Some(done.object_count),
                _ => None,
            })
            .collect();
        assert_eq!(
            completions,
            [OBJECTS_PER_WATCH as u64],
            "watch {i} ({id}) completes once with every object; events {:?}; logs {logs:?}",
            kinds(&events)
        );
        assert_eq!(events.last().map(kind), Some("completed"));
    }
    let all_completed = killed_at.elapsed();
    let mut survivor = clients[2].clone();
    let listed = clients[1]
        .clone()
        .list_all_watches(&streamwatch_client::ListFilter::new().state(v1::WatchState::Completed))
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        WATCHES,
        "every completed watch, listed by any replica"
    );
    for id in &ids {
        let watch = survivor.get_watch(id).await.unwrap();
        assert_eq!(
            (watch.state(), watch.object_count),
            (v1::WatchState::Completed, OBJECTS_PER_WATCH as u64),
            "{id}"
        );
    }
    eprintln!(
        "{WATCHES} watches completed exactly once, all within {:.1}s of the kill",
        all_completed.as_secs_f64()
    );
}
