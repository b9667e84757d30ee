//! Server configuration: every flag has an environment variable, durations
//! are human (`10s`, `1m`), and the defaults run the embedded store on
//! loopback with nothing to install; `--store dynamodb` and `--sqs-queue-url`
//! switch to the AWS backend.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::telemetry::LogFormat;

pub const DEFAULT_DATA_FILE: &str = "streamwatch.db";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "10s";
pub const DEFAULT_RETENTION: &str = "30days";
pub const DEFAULT_DELIVERY_DEADLINE: &str = "24h";
pub const DEFAULT_DELIVERY_BACKOFF: &str = "1s";
pub const DEFAULT_DELIVERY_TIMEOUT: &str = "10s";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Dynamodb,
}

/// streamwatch: tells you when a data set has finished landing in object storage.
#[derive(Clone, Debug, Parser)]
#[command(name = "streamwatch-server", version, about)]
pub struct Config {
    /// Address to serve gRPC on. Without a tenants file only loopback addresses are allowed.
    #[arg(long, env = "STREAMWATCH_LISTEN", default_value = streamwatch::DEFAULT_LISTEN_ADDR)]
    pub listen: SocketAddr,

    /// SQLite file holding watches, counters and event logs (created if missing).
    #[arg(long, env = "STREAMWATCH_DATA", default_value = DEFAULT_DATA_FILE)]
    pub data: PathBuf,

    /// Tenants file (TOML). Without one, a single tenant `default` runs without tokens.
    #[arg(long, env = "STREAMWATCH_TENANTS")]
    pub tenants: Option<PathBuf>,

    /// Whether the observer runs on a thread of its own (always, from the
    /// command line): a burst of ready tasks (thousands of subscriber
    /// streams woken by one event) then never queues a due deadline behind
    /// them. Tests that pause tokio's clock run it as a task of their
    /// runtime, which a paused clock drives.
    #[arg(skip = true)]
    pub observer_thread: bool,

    /// How long shutdown waits for in-flight calls before closing connections.
    #[arg(long, env = "STREAMWATCH_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Where state lives: `sqlite` (one file, the default) or `dynamodb` (shared by replicas).
    #[arg(long, env = "STREAMWATCH_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,

    /// DynamoDB table (with `--store dynamodb`). AWS region, credentials and
    /// `AWS_ENDPOINT_URL` come from the standard AWS configuration chain.
    #[arg(long, env = "STREAMWATCH_TABLE", required_if_eq("store", "dynamodb"))]
    pub table: Option<String>,

    /// Create the DynamoDB table if it does not exist (development; production tables come from deploy/).
    #[arg(long, env = "STREAMWATCH_CREATE_TABLE")]
    pub create_table: bool,

    /// How long a finished watch's items stay in DynamoDB (TTL) once it can no longer change (a watch
    /// with a timeout and no late window: counted from a day past its timeout, or later).
    #[arg(long, env = "STREAMWATCH_RETENTION", default_value = DEFAULT_RETENTION, value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// SQS queue receiving the bucket's notifications (S3 -> SQS or S3 -> SNS -> SQS). Repeat for several;
    /// in the environment, separate them with commas.
    #[arg(
        long = "sqs-queue-url",
        env = "STREAMWATCH_SQS_QUEUE_URLS",
        value_delimiter = ','
    )]
    pub sqs_queue_urls: Vec<String>,

    /// Consumers per SQS queue (each long-polls on its own).
    #[arg(long, env = "STREAMWATCH_SQS_CONSUMERS", default_value_t = 2)]
    pub sqs_consumers: usize,

    /// How long one SQS receive waits for messages at most (at most 20s). A
    /// receive ends by the next instant a decision is due and then confirms
    /// with a 1s wait, so this sets the cost of idle polling, not the delay.
    #[arg(long, env = "STREAMWATCH_SQS_WAIT", default_value = "20s", value_parser = parse_sqs_wait)]
    pub sqs_wait: Duration,

    /// How long after an event its callbacks are retried before the delivery
    /// is marked failed (a DELIVERY_FAILED event).
    #[arg(long, env = "STREAMWATCH_DELIVERY_DEADLINE", default_value = DEFAULT_DELIVERY_DEADLINE, value_parser = humantime::parse_duration)]
    pub delivery_deadline: Duration,

    /// The wait after a callback's first failed attempt; it doubles with each
    /// attempt (at most 5m), with jitter.
    #[arg(long, env = "STREAMWATCH_DELIVERY_BACKOFF", default_value = DEFAULT_DELIVERY_BACKOFF, value_parser = humantime::parse_duration)]
    pub delivery_backoff: Duration,

    /// The bound on one callback attempt (connect, send, answer).
    #[arg(long, env = "STREAMWATCH_DELIVERY_TIMEOUT", default_value = DEFAULT_DELIVERY_TIMEOUT, value_parser = humantime::parse_duration)]
    pub delivery_timeout: Duration,

    /// The part size of the multipart uploads that write large manifests to
    /// S3, in bytes (5 MiB-64 MiB). Each manifest being written holds one part
    /// in memory; smaller than the manifest's size, it is one PutObject.
    #[arg(long, env = "STREAMWATCH_MANIFEST_PART_SIZE", default_value_t = crate::delivery::manifest::DEFAULT_PART_SIZE, value_parser = parse_part_size)]
    pub manifest_part_size: usize,

    /// Serve Prometheus metrics (text format) on `http://ADDR/metrics`. Off unless given.
    #[arg(long, env = "STREAMWATCH_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Once serving, write the addresses actually bound to this file
    /// (`grpc=HOST:PORT`, and `metrics=HOST:PORT` when serving metrics), so
    /// a supervisor or a test that listens on port 0 learns the port.
    #[arg(long, env = "STREAMWATCH_ADDRESS_FILE", value_name = "FILE")]
    pub address_file: Option<PathBuf>,

    /// TLS, client certificates and the connection cap.
    #[command(flatten)]
    pub transport: crate::transport::TransportArgs,

    /// Many replicas on one table: leases, shards, heartbeats.
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,

    /// Log format: `text` or `json`. `RUST_LOG` filters (default `info`).
    #[arg(long, env = "STREAMWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--sqs-wait`, as a clap value parser: its error is text clap prints after the flag.
fn parse_sqs_wait(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(20) || d.subsec_nanos() != 0 {
        return Err("must be whole seconds, at most 20s (SQS long polling)".into());
    }
    Ok(d)
}

/// `--manifest-part-size`, as a clap value parser: its error is text clap prints
/// after the flag.
fn parse_part_size(raw: &str) -> Result<usize, String> {
    use crate::delivery::manifest::{MAX_PART_SIZE, MIN_PART_SIZE};
    let n: usize = raw.parse().map_err(|e| format!("{e}"))?;
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) {
        return Err(format!(
            "must be {MIN_PART_SIZE}-{MAX_PART_SIZE} bytes (S3 takes parts of 5 MiB and more)"
        ));
    }
    Ok(n)
}

impl Config {
    pub fn delivery(&self) -> crate::delivery::DeliveryConfig {
        crate::delivery::DeliveryConfig {
            deadline: self.delivery_deadline,
            backoff: self.delivery_backoff,
            timeout: self.delivery_timeout,
        }
    }

    /// The configuration of a server started with no flags and no environment.
    pub fn embedded_default() -> Self {
        Self::parse_from(["streamwatch-server"])
    }
}
