//! The replicas a part of the bench runs: `streamwatch-server` processes
//! (`--cluster --store dynamodb`) on one new table and one new queue of the
//! emulator, with the bench's lease, heartbeat and route settings; their
//! metrics, scraped and summed; and the watches they are given. It measures
//! nothing itself.

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
use streamwatch_testkit::{ServerProcess, aws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SHARDS: u32 = 16;
pub const LEASE: Duration = Duration::from_secs(3);
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const ROUTE_REFRESH: Duration = Duration::from_secs(2);
/// The quiet period of the idle parts' watches: nothing completes while measured.
pub const QUIET: Duration = Duration::from_secs(3600);
const LEASES_HELD: &str = "streamwatch_leases_held";
pub const REQUESTS: &str = "streamwatch_dynamodb_requests_total";
pub const LEASE_REQUESTS: &str = "streamwatch_dynamodb_lease_requests_total";

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

/// `name`'s samples carrying `labels`.
fn samples<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Value> {
    scrape
        .samples
        .iter()
        .filter(move |s| s.metric == name)
        .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| &s.value)
}

/// The sum of `name`'s samples carrying `labels` (0 when there is none yet).
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(scrape, name, labels)
        .map(|v| match v {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

/// How many observations `name`'s histogram carrying `labels` holds.
pub fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    samples(scrape, name, labels)
        .filter_map(|v| match v {
            Value::Histogram(buckets) => buckets.last().map(|b| b.count as u64),
            _ => None,
        })
        .sum()
}

pub struct Replica {
    pub name: String,
    pub child: tokio::process::Child,
    pub endpoint: String,
    pub metrics: SocketAddr,
}

/// Replicas on one table and one queue.
pub struct Cluster {
    bin: PathBuf,
    table: String,
    pub queue: String,
    data: tempfile::TempDir,
    pub logs: PathBuf,
    pub replicas: Vec<Replica>,
    spawned: usize,
}

impl Cluster {
    pub async fn start(
        bin: &Path,
        sqs: &aws_sdk_sqs::Client,
        logs: &Path,
        label: &str,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let table = aws::unique(label);
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
            bin: bin.to_owned(),
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

    /// Starts one more replica (the first creates the table) and waits until it serves.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        let name = format!("replica-{}", self.spawned);
        let create = self.spawned == 0;
        self.spawned += 1;
        let log = self.logs.join(format!("{name}.log"));
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(["--store", "dynamodb", "--table", &self.table])
            .args(["--cluster", "--replica-id", &name])
            .args(["--shards", &SHARDS.to_string()])
            .args([
                "--lease-duration",
                &secs(LEASE),
                "--heartbeat",
                &secs(HEARTBEAT),
            ])
            .args(["--route-refresh", &secs(ROUTE_REFRESH), "--log-poll", "1s"])
            .args(["--sqs-queue-url", &self.queue, "--sqs-wait", "1s"])
            .arg("--data")
            .arg(self.data.path().join(format!("{name}.db")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if create {
            command.arg("--create-table");
        }
        // Ports the kernel picks, reported by the replica once its store is
        // open (and the table created, for the next replica).
        let ServerProcess {
            child,
            endpoint,
            metrics,
        } = ServerProcess::try_spawn(command, self.data.path(), true)
            .await
            .with_context(|| format!("{name}; see {}", log.display()))?;
        let metrics = metrics.context("the replica serves /metrics")?;
        self.replicas.push(Replica {
            name,
            child,
            endpoint,
            metrics,
        });
        Ok(())
    }

    pub async fn scrapes(&self) -> anyhow::Result<Vec<Scrape>> {
        futures::future::try_join_all(self.replicas.iter().map(|r| scrape(r.metrics))).await
    }

    pub async fn total(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(self
            .scrapes()
            .await?
            .iter()
            .map(|s| value(s, name, labels))
            .sum())
    }

    pub async fn leases(&self) -> anyhow::Result<Vec<u64>> {
        Ok(self
            .scrapes()
            .await?
            .iter()
            .map(|s| value(s, LEASES_HELD, &[]) as u64)
            .collect())
    }

    /// Waits until the replicas hold every lease between them, each at least 4.
    pub async fn balanced(&self) -> anyhow::Result<Vec<u64>> {
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

    /// Starts a watch (quiet period `quiet`, and `timeout` when given) per
    /// prefix, spread over the replicas; how long each StartWatch took.
    pub async fn start_watches(
        &self,
        bucket: &str,
        prefixes: &[String],
        quiet: Duration,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut clients = Vec::new();
        for r in &self.replicas {
            clients.push(streamwatch_client::Client::connect(r.endpoint.clone()).await?);
        }
        let policy = v1::Policy {
            rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
                window: Some(prost_types::Duration {
                    seconds: quiet.as_secs() as i64,
                    nanos: 0,
                }),
            })),
            min_objects: u64::from(quiet != QUIET),
            timeout: timeout.map(|t| prost_types::Duration {
                seconds: t.as_secs() as i64,
                nanos: 0,
            }),
            ..Default::default()
        };
        // StartWatch waits until every replica routes to the watch: many at once.
        futures::stream::iter(prefixes.iter().enumerate())
            .map(|(i, prefix)| {
                let mut client = clients[i % clients.len()].clone();
                let request = v1::StartWatchRequest {
                    bucket: bucket.into(),
                    prefix: prefix.clone(),
                    policy: Some(policy.clone()),
                    ..Default::default()
                };
                async move {
                    let started = Instant::now();
                    client.start_watch(request).await?;
                    anyhow::Ok(started.elapsed())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<Duration>>()
            .await
    }

    pub async fn stop(mut self) {
        for r in &mut self.replicas {
            let _ = r.child.start_kill();
            let _ = r.child.wait().await;
        }
    }
}
