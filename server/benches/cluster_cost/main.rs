//! What cluster mode costs, measured on real replicas: `streamwatch-server`
//! processes (`--cluster --store dynamodb`) sharing one DynamoDB table and
//! one SQS queue of the AWS emulator (`AWS_ENDPOINT_URL`; `.ci/run` starts
//! one, or run `python server/tests/moto_server.py 127.0.0.1 PORT` yourself):
//!
//! ```sh
//! cargo bench -p streamwatch-server --bench cluster_cost
//! # the same counts from the debug build, and an earlier build side by side:
//! STREAMWATCH_SERVER_BEFORE=path/to/older/streamwatch-server \
//!   cargo bench --profile dev -p streamwatch-server --bench cluster_cost -- --no-ingest
//! ```
//!
//! The replicas run the binary of the bench's cargo profile, and, when
//! `STREAMWATCH_SERVER_BEFORE` names another build, parts 1 and 2 run on it
//! first, for a before/after table (replicas listen on ports the kernel
//! picks and report them with `--address-file`: that build must have the
//! flag). Request counts do not depend on the profile (the emulator, not the
//! replicas, bounds the speed).
//!
//! 1. Takeover after `kill -9`: three replicas, 16 shards, 3s leases, a 1s
//!    heartbeat. Once the leases are spread, the replica holding the most is
//!    killed; takeover lasts until the survivors' `streamwatch_leases_held`
//!    add up to 16 again. Three rounds (a replica under a new id replaces the
//!    killed one in between), next to the bound of a lease duration plus a
//!    heartbeat: a survivor takes a lease once it saw its owner's heartbeat
//!    stand still for a lease duration, and it looks once per heartbeat.
//! 2. DynamoDB requests per hour of three idle replicas holding W watches
//!    (quiet period 1h), from the `streamwatch_dynamodb_*requests_total`
//!    counters over T seconds: lease requests (replica heartbeats, lease
//!    takes; fixed, whatever W), route requests (route refresh, version
//!    bumps and acknowledgements; fixed but for the starts) and the others
//!    (owners re-reading their watches, log follow): observation, per
//!    watch-hour. Also how long each StartWatch took (`--route-refresh 2s`:
//!    the staleness bound is 4s).
//! 3. A day's watches, priced: three replicas, 30 watches (quiet period 3s;
//!    once without a timeout, once with one of 6h) each sent 10
//!    notifications through the queue, until all completed and were
//!    retired; the read and write units the replicas counted by DynamoDB's
//!    rules, less the lease and route requests meanwhile, are one watch's
//!    cost. With the fixed cost of part 2 and the SQS requests per object
//!    (S3's send, and receive and delete in batches of 10), it prices a
//!    month of 1,000 and 100,000 watches a day of 100 objects each,
//!    observed for an hour, at the on-demand rates in [`RATES`]: with each
//!    build's fixed and observation cost (part 2's read units), and this
//!    build's watch.
//! 4. Ingest throughput of one replica and of three (unless `--no-ingest`):
//!    N S3 notifications sent straight to the queue (SendMessageBatch, 10 a
//!    call) for 50 watches, from the first send until the replicas'
//!    `streamwatch_notifications_total{outcome="counted"}` add up to N.
//!
//! What bounds the numbers: takeover time follows from the lease settings (a
//! survivor takes a lease a lease duration after it last saw its owner's
//! heartbeat change, and looks on its heartbeat ticks). Ingest throughput is
//! bounded by the emulator in both runs, not by the replicas: it serializes
//! DynamoDB requests (`server/tests/moto_server.py` holds one lock around
//! them), each a local HTTP round trip into Python, so three replicas cannot
//! record faster than one; and its SQS walks the whole queue for every
//! message sent or received, so the larger the backlog the slower each call
//! (under the same Python interpreter lock as DynamoDB). Request counts are
//! what the replicas send; they match an hour on DynamoDB as long as each
//! periodic task finishes within its interval (part 2 prints the lease
//! requests a heartbeat on time would make: fewer mean heartbeats ran late).
//! Replica logs (stderr, `RUST_LOG=info`) are kept under `target/tmp/` (the
//! path is printed). `--quick` runs a small size (W = 30, T = 10s, N = 200):
//! a few minutes, to check the harness still runs.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use prometheus_parse::Scrape;
use streamwatch_client::proto as v1;
use streamwatch_testkit::{aws, created};

mod cluster;

use cluster::{
    Cluster, HEARTBEAT, LEASE, LEASE_REQUESTS, QUIET, REQUESTS, ROUTE_REFRESH, SHARDS,
    observations, value,
};

/// Absent from builds before route versions: 0 there, counted with the others.
const ROUTE_REQUESTS: &str = "streamwatch_dynamodb_route_requests_total";
const WRITE_UNITS: &str = "streamwatch_dynamodb_write_units_total";
const READ_UNITS: &str = "streamwatch_dynamodb_read_units_total";
const NOTIFICATIONS: &str = "streamwatch_notifications_total";
const STORE_WRITES: &str = "streamwatch_store_transaction_duration_seconds";
/// From the last start to the idle measure: longer than a route refresh
/// looks back (45s), so what is measured is a steady state.
const SETTLE: Duration = Duration::from_secs(50);

/// On-demand prices in us-east-1, standard table class and standard queues,
/// as AWS publishes them (DynamoDB since its 2024-11-01 reduction; SQS
/// beyond the first million requests a month), in dollars per million.
struct Rates {
    write_unit: f64,
    read_unit: f64,
    sqs_request: f64,
    as_of: &'static str,
}

const RATES: Rates = Rates {
    write_unit: 0.625,
    read_unit: 0.125,
    sqs_request: 0.40,
    as_of: "2024-11-01 (aws.amazon.com/dynamodb/pricing/on-demand, aws.amazon.com/sqs/pricing)",
};

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// One build of the server, as the bench runs it.
struct Build {
    label: &'static str,
    bin: PathBuf,
}

async fn takeover(
    build: &Build,
    sqs: &aws_sdk_sqs::Client,
    logs: &Path,
) -> anyhow::Result<Duration> {
    let bound = LEASE + HEARTBEAT;
    println!(
        "1. [{}] takeover after kill -9: 3 replicas, {SHARDS} shards, lease {}s, heartbeat {}s (bound {:.0}s)",
        build.label,
        LEASE.as_secs(),
        HEARTBEAT.as_secs(),
        bound.as_secs_f64()
    );
    let mut cluster = Cluster::start(&build.bin, sqs, logs, "takeover", 3).await?;
    let mut times = Vec::new();
    for round in 1..=3 {
        let before = cluster.balanced().await?;
        let victim = (0..before.len())
            .max_by_key(|&i| before[i])
            .expect("replicas");
        let mut killed = cluster.replicas.remove(victim);
        killed.child.start_kill()?;
        let killed_at = Instant::now();
        let deadline = killed_at + Duration::from_secs(120);
        let mut last = Vec::new();
        let took = loop {
            let held = cluster.leases().await?;
            if held.iter().sum::<u64>() == u64::from(SHARDS) {
                break killed_at.elapsed();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "survivors hold {held:?} of {SHARDS} leases 120s after the kill; logs in {}",
                cluster.logs.display()
            );
            last = held;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        killed.child.wait().await?;
        let after = cluster.leases().await?;
        println!(
            "   round {round}: killed {} (held {} of {before:?}); survivors hold all {SHARDS} after {:.2}s \
             ({:+.2}s against the bound; last partial {last:?}, then {after:?})",
            killed.name,
            before[victim],
            took.as_secs_f64(),
            took.as_secs_f64() - bound.as_secs_f64()
        );
        times.push(took);
        if round < 3 {
            cluster.spawn().await?;
            let joined = Instant::now();
            let held = cluster.balanced().await?;
            println!(
                "            {} joined; leases spread again ({held:?}) after {:.1}s",
                cluster.replicas.last().expect("a replica").name,
                joined.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "   takeover: {} s; median {:.2}s, bound (lease + heartbeat) {:.2}s",
        times
            .iter()
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        median(&times).as_secs_f64(),
        bound.as_secs_f64()
    );
    cluster.stop().await;
    Ok(median(&times))
}

/// Part 2's figures for one build.
struct Idle {
    /// Per cluster-hour.
    lease: f64,
    route: f64,
    /// Per watch-hour: observation (neither lease nor route), and every
    /// request but the lease requests.
    observation: f64,
    not_lease: f64,
    /// Read units per watch-hour of the observation requests (a
    /// BatchGetItem reads up to 100 watches).
    observation_reads: f64,
    /// StartWatch: median and slowest.
    start_median: Duration,
    start_max: Duration,
}

/// `(requests, lease, route, read units)` of each replica.
fn request_counts(scrapes: &[Scrape]) -> Vec<(f64, f64, f64, f64)> {
    scrapes
        .iter()
        .map(|s| {
            (
                value(s, REQUESTS, &[]),
                value(s, LEASE_REQUESTS, &[]),
                value(s, ROUTE_REQUESTS, &[]),
                value(s, READ_UNITS, &[]),
            )
        })
        .collect()
}

async fn idle_requests(
    build: &Build,
    sqs: &aws_sdk_sqs::Client,
    logs: &Path,
    watches: usize,
    window: Duration,
) -> anyhow::Result<Idle> {
    println!(
        "2. [{}] DynamoDB requests of 3 idle replicas with {watches} watches (quiet period 1h), over {}s",
        build.label,
        window.as_secs()
    );
    let cluster = Cluster::start(&build.bin, sqs, logs, "idle", 3).await?;
    cluster.balanced().await?;
    let prefixes: Vec<String> = (0..watches).map(|i| format!("set-{i:03}/")).collect();
    let started = Instant::now();
    let mut starts = cluster
        .start_watches(&aws::unique("idle"), &prefixes, QUIET, None)
        .await?;
    starts.sort();
    let (start_median, start_max) = (median(&starts), *starts.last().expect("watches"));
    println!(
        "   {watches} watches started in {:.1}s (32 at a time); each StartWatch took {:.2}s median, \
         {:.2}s at most (staleness bound {:.0}s); settling {}s",
        started.elapsed().as_secs_f64(),
        start_median.as_secs_f64(),
        start_max.as_secs_f64(),
        (ROUTE_REFRESH * 2).as_secs_f64(),
        SETTLE.as_secs()
    );
    tokio::time::sleep(SETTLE).await;
    let before = request_counts(&cluster.scrapes().await?);
    let from = Instant::now();
    tokio::time::sleep(window).await;
    let after = request_counts(&cluster.scrapes().await?);
    let elapsed = from.elapsed().as_secs_f64();
    let per_hour = 3600.0 / elapsed;
    let (mut all, mut lease, mut route, mut reads) = (0.0, 0.0, 0.0, 0.0);
    for (r, (b, a)) in cluster.replicas.iter().zip(before.iter().zip(&after)) {
        let (d_all, d_lease, d_route) = (a.0 - b.0, a.1 - b.1, a.2 - b.2);
        reads += a.3 - b.3;
        println!(
            "   {}: {:.0} requests per hour: {:.0} lease requests, {:.0} route requests",
            r.name,
            d_all * per_hour,
            d_lease * per_hour,
            d_route * per_hour
        );
        all += d_all;
        lease += d_lease;
        route += d_route;
    }
    let observation = all - lease - route;
    println!(
        "   per cluster-hour: {:.0} lease requests (heartbeats and takes; fixed, whatever the watches), \
         {:.0} route requests (refresh every {}s; fixed), {:.0} other requests (re-reading watches, log follow)",
        lease * per_hour,
        route * per_hour,
        ROUTE_REFRESH.as_secs(),
        observation * per_hour
    );
    let idle = Idle {
        lease: lease * per_hour,
        route: route * per_hour,
        observation: observation * per_hour / watches as f64,
        not_lease: (all - lease) * per_hour / watches as f64,
        // Lease requests: half of them the Query; route requests: reads.
        observation_reads: (reads - lease / 2.0 - route) * per_hour / watches as f64,
        start_median,
        start_max,
    };
    println!(
        "   per watch-hour: {:.1} observation requests ({:.0} read units); {:.1} counting the route requests too \
         (over {:.1}s measured)",
        idle.observation, idle.observation_reads, idle.not_lease, elapsed
    );
    cluster.stop().await;
    Ok(idle)
}

/// Part 3's figures: what one watch costs, beyond the fixed cost.
struct Lifecycle {
    write_units: f64,
    read_units: f64,
    requests: f64,
    objects: usize,
}

async fn lifecycle(
    build: &Build,
    sqs: &aws_sdk_sqs::Client,
    logs: &Path,
    watches: usize,
    objects: usize,
    timeout: Option<Duration>,
) -> anyhow::Result<Lifecycle> {
    let life = match timeout {
        Some(t) => format!("timeout {}", humantime::format_duration(t)),
        None => "no timeout".to_owned(),
    };
    println!(
        "3. [{}] {watches} watches (quiet 3s, {life}) on 3 replicas, {objects} notifications each through \
         the queue, until all completed and retired",
        build.label
    );
    let cluster = Cluster::start(&build.bin, sqs, logs, "lifecycle", 3).await?;
    cluster.balanced().await?;
    let units = |scrapes: &[Scrape]| -> [f64; 5] {
        let sum = |name| scrapes.iter().map(|s| value(s, name, &[])).sum::<f64>();
        [
            sum(WRITE_UNITS),
            sum(READ_UNITS),
            sum(REQUESTS),
            sum(LEASE_REQUESTS),
            sum(ROUTE_REQUESTS),
        ]
    };
    let before = units(&cluster.scrapes().await?);
    let bucket = aws::unique("day");
    let prefixes: Vec<String> = (0..watches).map(|i| format!("set-{i:03}/")).collect();
    cluster
        .start_watches(&bucket, &prefixes, Duration::from_secs(3), timeout)
        .await?;
    let bodies: Vec<String> = (0..watches * objects)
        .map(|i| {
            let key = format!("set-{:03}/part-{i:05}.json", i % watches);
            created(&bucket, &[&key])
        })
        .collect();
    for (c, chunk) in bodies.chunks(10).enumerate() {
        let entries = chunk.iter().enumerate().map(|(i, body)| {
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(format!("{c}-{i}"))
                .message_body(body)
                .build()
                .expect("an entry")
        });
        let out = sqs
            .send_message_batch()
            .queue_url(&cluster.queue)
            .set_entries(Some(entries.collect()))
            .send()
            .await?;
        anyhow::ensure!(out.failed.is_empty(), "{:?}", out.failed);
    }
    let mut client =
        streamwatch_client::Client::connect(cluster.replicas[0].endpoint.clone()).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = client
            .list_all_watches(
                &streamwatch_client::ListFilter::new().state(v1::WatchState::Completed),
            )
            .await?
            .len();
        if done >= watches {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{done} of {watches} watches completed in 600s; logs in {}",
            cluster.logs.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A watch is retired once it completed (no late window): its last writes.
    let retired = |scrapes: &[Scrape]| -> u64 {
        scrapes
            .iter()
            .map(|s| observations(s, STORE_WRITES, &[("operation", "retire")]))
            .sum()
    };
    let after = loop {
        let scrapes = cluster.scrapes().await?;
        let done = retired(&scrapes) as usize;
        if done >= watches {
            break units(&scrapes);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{done} of {watches} watches retired in 600s; logs in {}",
            cluster.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // Lease requests: a Query and a write each heartbeat; route requests:
    // mostly reads. Both are the fixed cost, priced apart.
    let (lease, route) = (d[3], d[4]);
    let per = |v: f64| v / watches as f64;
    let figures = Lifecycle {
        write_units: per(d[0] - lease / 2.0),
        read_units: per(d[1] - lease / 2.0 - route),
        requests: per(d[2] - lease - route),
        objects,
    };
    println!(
        "   one watch of {objects} objects: {:.0} requests, {:.0} write units, {:.0} read units \
         (DynamoDB's rules, as the store counts them; the lease and route requests meanwhile left out)",
        figures.requests, figures.write_units, figures.read_units
    );
    cluster.stop().await;
    Ok(figures)
}

/// The monthly on-demand price of `per_day` watches a day of 100 objects
/// each, every watch observed for an hour, on three replicas.
fn monthly_price(
    per_day: f64,
    idle: &Idle,
    watch: &Lifecycle,
    sqs_wait: Duration,
) -> (f64, String) {
    const HOURS: f64 = 730.0;
    const OBJECTS: f64 = 100.0;
    let million = 1e-6;
    // The fixed cost: lease requests half reads (the Query), half writes;
    // route requests reads.
    let fixed = HOURS
        * (idle.lease / 2.0 * (RATES.write_unit + RATES.read_unit) + idle.route * RATES.read_unit)
        * million;
    // One watch: its units scaled from the objects measured to 100 objects
    // (start and completion counted with the objects: an overestimate).
    let scale = OBJECTS / watch.objects as f64;
    let per_watch_dynamodb = (watch.write_units * scale * RATES.write_unit
        + watch.read_units * scale * RATES.read_unit)
        * million;
    // Observation for an hour, in the read units measured.
    let per_watch_observation = idle.observation_reads * RATES.read_unit * million;
    // SQS: S3's send per object, receive and delete in batches of 10; each
    // replica's consumer long-polls `sqs_wait` when idle.
    let per_watch_sqs = OBJECTS * (1.0 + 0.2) * RATES.sqs_request * million;
    let idle_polls = HOURS * 3.0 * 3600.0 / sqs_wait.as_secs_f64() * RATES.sqs_request * million;
    let watches = per_day * 30.0;
    let total =
        fixed + idle_polls + watches * (per_watch_dynamodb + per_watch_observation + per_watch_sqs);
    let detail = format!(
        "fixed ${fixed:.2} (leases, routes) + idle SQS polls ${idle_polls:.2} + {watches:.0} watches x \
         (DynamoDB ${:.5} + observation ${:.6} + SQS ${:.5})",
        per_watch_dynamodb, per_watch_observation, per_watch_sqs
    );
    (total, detail)
}

/// Notifications per second from the first send until `replicas` counted all `n`.
async fn ingest(
    build: &Build,
    sqs: &aws_sdk_sqs::Client,
    logs: &Path,
    replicas: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let cluster = Cluster::start(&build.bin, sqs, logs, "ingest", replicas).await?;
    cluster.balanced().await?;
    let bucket = aws::unique("ingest");
    let prefixes: Vec<String> = (0..50).map(|i| format!("set-{i:02}/")).collect();
    cluster
        .start_watches(&bucket, &prefixes, QUIET, None)
        .await?;
    let counted = [("outcome", "counted")];
    let base = cluster.total(NOTIFICATIONS, &counted).await?;
    let requests_before = cluster.total(REQUESTS, &[]).await?;
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            let key = format!("set-{:02}/part-{i:05}.json", i % 50);
            created(&bucket, &[&key])
        })
        .collect();
    let started = Instant::now();
    let sender = {
        let (sqs, queue) = (sqs.clone(), cluster.queue.clone());
        tokio::spawn(async move {
            for (c, chunk) in bodies.chunks(10).enumerate() {
                let entries = chunk.iter().enumerate().map(|(i, body)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(format!("{c}-{i}"))
                        .message_body(body)
                        .build()
                        .expect("an entry")
                });
                let out = sqs
                    .send_message_batch()
                    .queue_url(&queue)
                    .set_entries(Some(entries.collect()))
                    .send()
                    .await?;
                anyhow::ensure!(out.failed.is_empty(), "{:?}", out.failed);
            }
            anyhow::Ok(started.elapsed())
        })
    };
    let deadline = started + Duration::from_secs(600);
    let took = loop {
        let done = cluster.total(NOTIFICATIONS, &counted).await? - base;
        if done >= n as f64 {
            break started.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{replicas} replica(s) counted {done} of {n} notifications in 600s; logs in {}",
            cluster.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let requests = cluster.total(REQUESTS, &[]).await? - requests_before;
    let sent = sender.await??;
    let rate = n as f64 / took.as_secs_f64();
    println!(
        "   {replicas} replica{}: {n} counted after {:.2}s (sending took {:.2}s): {rate:.0} notifications/s; \
         {requests:.0} DynamoDB requests meanwhile ({:.0}/s)",
        if replicas == 1 { "" } else { "s" },
        took.as_secs_f64(),
        sent.as_secs_f64(),
        requests / took.as_secs_f64()
    );
    cluster.stop().await;
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        anyhow::bail!("set AWS_ENDPOINT_URL to an AWS emulator (moto_server); see the module docs");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let no_ingest = std::env::args().any(|a| a == "--no-ingest");
    let (watches, window, notifications, day) = if quick {
        (30, Duration::from_secs(10), 200, (12, 5))
    } else {
        (300, Duration::from_secs(60), 2_000, (30, 10))
    };
    let sqs = aws::sqs().await;
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(aws::unique("cluster_cost"));
    std::fs::create_dir_all(&logs)?;
    println!(
        "Cluster mode against the AWS emulator; replica logs in {}",
        logs.display()
    );
    let mut builds = Vec::new();
    if let Some(bin) = std::env::var_os("STREAMWATCH_SERVER_BEFORE") {
        builds.push(Build {
            label: "before",
            bin: bin.into(),
        });
    }
    builds.push(Build {
        label: "after",
        bin: env!("CARGO_BIN_EXE_streamwatch-server").into(),
    });
    let mut figures = Vec::new();
    for build in &builds {
        let takeover = takeover(build, &sqs, &logs).await?;
        let idle = idle_requests(build, &sqs, &logs, watches, window).await?;
        figures.push((build.label, takeover, idle));
    }
    println!(
        "   build  | takeover median | lease req/cluster-h | route req/cluster-h | observation req/watch-h | \
         non-lease req/watch-h | observation read units/watch-h | StartWatch median (max)"
    );
    for (label, takeover, idle) in &figures {
        println!(
            "   {label:6} | {:>13.2}s | {:>19.0} | {:>19.0} | {:>23.1} | {:>21.1} | {:>30.0} | {:.2}s ({:.2}s)",
            takeover.as_secs_f64(),
            idle.lease,
            idle.route,
            idle.observation,
            idle.not_lease,
            idle.observation_reads,
            idle.start_median.as_secs_f64(),
            idle.start_max.as_secs_f64()
        );
    }
    let after = builds.last().expect("this build");
    // A watch without a timeout has its items written again when it is
    // retired; one with a timeout (and no late window) had them written
    // with their expiry.
    let mut days = Vec::new();
    for timeout in [None, Some(Duration::from_secs(6 * 3600))] {
        days.push((
            timeout,
            lifecycle(after, &sqs, &logs, day.0, day.1, timeout).await?,
        ));
    }
    println!(
        "   monthly on-demand price, 3 replicas at this run's settings (heartbeat {}s, route refresh {}s, \
         default --sqs-wait 20s), watches of 100 objects observed for an hour; DynamoDB ${}/M write units, \
         ${}/M read units, SQS ${}/M requests, us-east-1, published {}:",
        HEARTBEAT.as_secs(),
        ROUTE_REFRESH.as_secs(),
        RATES.write_unit,
        RATES.read_unit,
        RATES.sqs_request,
        RATES.as_of
    );
    // Each build's fixed and observation cost, with this build's cost of a watch's objects.
    for (label, _, idle) in &figures {
        for (timeout, watch) in &days {
            let life = if timeout.is_some() {
                "timeout 6h"
            } else {
                "no timeout"
            };
            for per_day in [1_000.0, 100_000.0] {
                let (total, detail) = monthly_price(per_day, idle, watch, Duration::from_secs(20));
                println!(
                    "   [{label}, {life}] {per_day:>7.0} watches a day: ${total:.2} a month ({detail})"
                );
            }
        }
    }
    if !no_ingest {
        println!(
            "4. ingest throughput: {notifications} notifications (SendMessageBatch, 10 a call) for 50 watches"
        );
        let one = ingest(after, &sqs, &logs, 1, notifications).await?;
        let three = ingest(after, &sqs, &logs, 3, notifications).await?;
        println!(
            "   3 replicas / 1 replica: {:.2}x; bounded by the emulator, which serializes DynamoDB \
             requests (one lock in server/tests/moto_server.py) and whose SQS walks the whole queue \
             on every send and receive, in both runs",
            three / one
        );
    }
    Ok(())
}
