//! What cluster mode costs, measured on real replicas: `streamwatch-server`
//! processes (`--cluster --store dynamodb`, the binary of the bench's cargo
//! profile) sharing one DynamoDB table and one SQS queue of the AWS emulator
//! (`AWS_ENDPOINT_URL`; `.ci/run` starts one, or run
//! `python server/tests/moto_server.py 127.0.0.1 PORT` yourself):
//!
//! ```sh
//! cargo bench -p streamwatch-server --bench cluster_cost
//! ```
//!
//! 1. Takeover after `kill -9`: three replicas, 16 shards, 3s leases, a 1s
//!    heartbeat. Once the leases are spread, the replica holding the most is
//!    killed; takeover lasts until the survivors' `streamwatch_leases_held`
//!    add up to 16 again. Three rounds (a replica under a new id replaces the
//!    killed one in between), next to the bound of a lease duration plus a
//!    heartbeat: a survivor takes a lease once it saw it stand still for a
//!    lease duration, and it looks once per heartbeat.
//! 2. DynamoDB requests per hour of three idle replicas holding W watches
//!    (quiet period 1h), from the `streamwatch_dynamodb_requests_total` and
//!    `streamwatch_dynamodb_lease_requests_total` counters over T seconds:
//!    lease requests (lease renewals and takes, replica heartbeats; fixed,
//!    whatever W) and the other requests (owners re-reading their watches,
//!    route refresh, log follow), also per watch-hour.
//! 3. Ingest throughput of one replica and of three: N S3 notifications sent
//!    straight to the queue (SendMessageBatch, 10 a call) for 50 watches, from
//!    the first send until the replicas'
//!    `streamwatch_notifications_total{outcome="counted"}` add up to N.
//!
//! What bounds the numbers: takeover time follows from the lease settings (a
//! survivor takes a lease a lease duration after it last saw it change, and
//! looks on its heartbeat ticks). Ingest throughput is bounded by the
//! emulator in both runs, not by the replicas: it serializes DynamoDB requests
//! (`server/tests/moto_server.py` holds one lock around them), each a local
//! HTTP round trip into Python, so three replicas cannot record faster than
//! one; and its SQS walks the whole queue for every message sent or received,
//! so the larger the backlog the slower each call (under the same Python
//! interpreter lock as DynamoDB). Request counts are what the replicas send;
//! they match an hour on DynamoDB as long as each periodic task finishes within
//! its interval (part 2 prints the lease requests a heartbeat on time would
//! make: fewer mean heartbeats ran late). Replica logs (stderr,
//! `RUST_LOG=info`) are kept under `target/tmp/` (the path is printed).
//! `--quick` runs a small size (W = 30, T = 10s, N = 200): a few minutes,
//! to check the harness still runs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use prometheus_parse::{Scrape, Value};
use streamwatch_client::proto as v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHARDS: u32 = 16;
const LEASE: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_secs(1);
const LEASES_HELD: &str = "streamwatch_leases_held";
const REQUESTS: &str = "streamwatch_dynamodb_requests_total";
const LEASE_REQUESTS: &str = "streamwatch_dynamodb_lease_requests_total";
const NOTIFICATIONS: &str = "streamwatch_notifications_total";
const QUIET: Duration = Duration::from_secs(3600);

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &id[id.len() - 12..])
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET /metrics` over HTTP/1.1, parsed.
async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("scraping {addr} timed out"))??;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response from {addr}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{addr}: {head}");
    Ok(Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))?)
}

/// The sum of `name`'s samples carrying `labels` (0 when there is none yet).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

struct Replica {
    name: String,
    child: tokio::process::Child,
    endpoint: String,
    metrics: SocketAddr,
}

/// Replicas on one table and one queue.
struct Cluster {
    table: String,
    queue: String,
    data: tempfile::TempDir,
    logs: PathBuf,
    replicas: Vec<Replica>,
    spawned: usize,
}

impl Cluster {
    async fn start(
        sqs: &aws_sdk_sqs::Client,
        logs: &Path,
        label: &str,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let table = unique(label);
        let queue = sqs
            .create_queue()
            .queue_name(&table)
            .send()
            .await?
            .queue_url
            .context("a queue url")?;
        let logs = logs.join(&table);
        std::fs::create_dir_all(&logs)?;
        let mut cluster = Self {
            table,
            queue,
            data: tempfile::tempdir()?,
            logs,
            replicas: Vec::new(),
            spawned: 0,
        };
        for _ in 0..replicas {
            cluster.spawn().await?;
        }
        // The exposed names, checked once: a renamed metric would read as 0.
        let first = scrape(cluster.replicas[0].metrics).await?;
        for name in [LEASES_HELD, REQUESTS, LEASE_REQUESTS] {
            anyhow::ensure!(
                first.samples.iter().any(|s| s.metric == name),
                "{name} is not exposed on /metrics"
            );
        }
        Ok(cluster)
    }

    /// Starts one more replica (the first creates the table) and waits for its gRPC port.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let name = format!("replica-{}", self.spawned);
        let create = self.spawned == 0;
        self.spawned += 1;
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = self.logs.join(format!("{name}.log"));
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"));
        command
            .arg("--listen")
            .arg(listen.to_string())
            .args(["--store", "dynamodb", "--table", &self.table])
            .args(["--cluster", "--replica-id", &name])
            .args(["--shards", &SHARDS.to_string()])
            .args([
                "--lease-duration",
                &secs(LEASE),
                "--heartbeat",
                &secs(HEARTBEAT),
            ])
            .args(["--route-refresh", "2s", "--log-poll", "1s"])
            .args(["--sqs-queue-url", &self.queue, "--sqs-wait", "1s"])
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .arg("--data")
            .arg(self.data.path().join(format!("{name}.db")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        if create {
            command.arg("--create-table");
        }
        let mut child = command.spawn().context("spawn a replica")?;
        let endpoint = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while streamwatch_client::Client::connect(endpoint.clone())
            .await
            .is_err()
        {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited ({status}); see {}", log.display());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} did not come up within 60s; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The ports are bound before the store is opened (and the table
        // created): a replica is up once it serves /metrics with its leases.
        loop {
            if let Ok(s) = scrape(metrics).await
                && s.samples.iter().any(|s| s.metric == LEASES_HELD)
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited ({status}); see {}", log.display());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} did not serve /metrics within 60s; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.replicas.push(Replica {
            name,
            child,
            endpoint,
            metrics,
        });
        Ok(())
    }

    async fn scrapes(&self) -> anyhow::Result<Vec<Scrape>> {
        futures::future::try_join_all(self.replicas.iter().map(|r| scrape(r.metrics))).await
    }

    async fn total(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(self
            .scrapes()
            .await?
            .iter()
            .map(|s| value(s, name, labels))
            .sum())
    }

    async fn leases(&self) -> anyhow::Result<Vec<u64>> {
        Ok(self
            .scrapes()
            .await?
            .iter()
            .map(|s| value(s, LEASES_HELD, &[]) as u64)
            .collect())
    }

    /// Waits until the replicas hold every lease between them, each at least 4.
    async fn balanced(&self) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let held = self.leases().await?;
            if held.iter().sum::<u64>() == u64::from(SHARDS) && held.iter().all(|&n| n >= 4) {
                return Ok(held);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "leases not spread within 120s ({held:?}); logs in {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a watch (quiet period 1h) per prefix, spread over the replicas.
    async fn start_watches(&self, bucket: &str, prefixes: &[String]) -> anyhow::Result<()> {
        let mut clients = Vec::new();
        for r in &self.replicas {
            clients.push(streamwatch_client::Client::connect(r.endpoint.clone()).await?);
        }
        let policy = v1::Policy {
            rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
                window: Some(prost_types::Duration {
                    seconds: QUIET.as_secs() as i64,
                    nanos: 0,
                }),
            })),
            ..Default::default()
        };
        // StartWatch waits out the route staleness (twice --route-refresh): many at once.
        futures::stream::iter(prefixes.iter().enumerate())
            .map(|(i, prefix)| {
                let mut client = clients[i % clients.len()].clone();
                let request = v1::StartWatchRequest {
                    bucket: bucket.into(),
                    prefix: prefix.clone(),
                    policy: Some(policy.clone()),
                    ..Default::default()
                };
                async move { client.start_watch(request).await.map(|_| ()) }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn stop(mut self) {
        for r in &mut self.replicas {
            let _ = r.child.start_kill();
            let _ = r.child.wait().await;
        }
    }
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

async fn takeover(sqs: &aws_sdk_sqs::Client, logs: &Path) -> anyhow::Result<()> {
    let bound = LEASE + HEARTBEAT;
    println!(
        "1. takeover after kill -9: 3 replicas, {SHARDS} shards, lease {}s, heartbeat {}s (bound {:.0}s)",
        LEASE.as_secs(),
        HEARTBEAT.as_secs(),
        bound.as_secs_f64()
    );
    let mut cluster = Cluster::start(sqs, logs, "takeover", 3).await?;
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
    Ok(())
}

async fn idle_requests(
    sqs: &aws_sdk_sqs::Client,
    logs: &Path,
    watches: usize,
    window: Duration,
) -> anyhow::Result<()> {
    println!(
        "2. DynamoDB requests of 3 idle replicas with {watches} watches (quiet period 1h), over {}s",
        window.as_secs()
    );
    let cluster = Cluster::start(sqs, logs, "idle", 3).await?;
    cluster.balanced().await?;
    let prefixes: Vec<String> = (0..watches).map(|i| format!("set-{i:03}/")).collect();
    let started = Instant::now();
    cluster.start_watches(&unique("idle"), &prefixes).await?;
    println!(
        "   {watches} watches started in {:.1}s; settling 10s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let read = |scrapes: &[Scrape]| -> Vec<(f64, f64)> {
        scrapes
            .iter()
            .map(|s| (value(s, REQUESTS, &[]), value(s, LEASE_REQUESTS, &[])))
            .collect()
    };
    let before = read(&cluster.scrapes().await?);
    let from = Instant::now();
    tokio::time::sleep(window).await;
    let after = read(&cluster.scrapes().await?);
    let elapsed = from.elapsed().as_secs_f64();
    let per_hour = 3600.0 / elapsed;
    let mut all = 0.0;
    let mut lease = 0.0;
    for (r, (b, a)) in cluster.replicas.iter().zip(before.iter().zip(&after)) {
        let (d_all, d_lease) = (a.0 - b.0, a.1 - b.1);
        println!(
            "   {}: {:.0} requests per hour, {:.0} of them lease requests",
            r.name,
            d_all * per_hour,
            d_lease * per_hour
        );
        all += d_all;
        lease += d_lease;
    }
    let other = all - lease;
    // Per heartbeat: one Query of the leases and replicas, one replica item
    // put, one renewal per lease held.
    let on_time = (2.0 * cluster.replicas.len() as f64 + f64::from(SHARDS)) * 3600.0
        / HEARTBEAT.as_secs_f64();
    println!(
        "   per cluster-hour: {:.0} lease requests (leases + heartbeats; fixed, whatever the watches; \
         {on_time:.0} with every heartbeat on time), {:.0} other requests (re-reading watches, \
         route refresh, log follow)",
        lease * per_hour,
        other * per_hour
    );
    println!(
        "   other requests per watch-hour: {:.1} (over {:.1}s measured)",
        other * per_hour / watches as f64,
        elapsed
    );
    cluster.stop().await;
    Ok(())
}

fn notification(bucket: &str, key: &str, sequencer: u64) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-26T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "landing",
            "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": key, "size": 1024, "sequencer": format!("{sequencer:018X}")}}
    }]})
    .to_string()
}

/// Notifications per second from the first send until `replicas` counted all `n`.
async fn ingest(
    sqs: &aws_sdk_sqs::Client,
    logs: &Path,
    replicas: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let cluster = Cluster::start(sqs, logs, "ingest", replicas).await?;
    cluster.balanced().await?;
    let bucket = unique("ingest");
    let prefixes: Vec<String> = (0..50).map(|i| format!("set-{i:02}/")).collect();
    cluster.start_watches(&bucket, &prefixes).await?;
    let counted = [("outcome", "counted")];
    let base = cluster.total(NOTIFICATIONS, &counted).await?;
    let requests_before = cluster.total(REQUESTS, &[]).await?;
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            let key = format!("set-{:02}/part-{i:05}.json", i % 50);
            notification(&bucket, &key, 0x0055_AED6_DCD9_0281 + i as u64)
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
    let (watches, window, notifications) = if quick {
        (30, Duration::from_secs(10), 200)
    } else {
        (300, Duration::from_secs(60), 2_000)
    };
    let sqs = aws_sdk_sqs::Client::new(
        &aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    );
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("cluster_cost"));
    std::fs::create_dir_all(&logs)?;
    println!(
        "Cluster mode against the AWS emulator; replica logs in {}",
        logs.display()
    );
    takeover(&sqs, &logs).await?;
    idle_requests(&sqs, &logs, watches, window).await?;
    println!(
        "3. ingest throughput: {notifications} notifications (SendMessageBatch, 10 a call) for 50 watches"
    );
    let one = ingest(&sqs, &logs, 1, notifications).await?;
    let three = ingest(&sqs, &logs, 3, notifications).await?;
    println!(
        "   3 replicas / 1 replica: {:.2}x; bounded by the emulator, which serializes DynamoDB \
         requests (one lock in server/tests/moto_server.py) and whose SQS walks the whole queue \
         on every send and receive, in both runs",
        three / one
    );
    Ok(())
}
