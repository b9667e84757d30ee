//! Prometheus metrics. Owns the registry, the metrics the service updates as
//! it works (RPCs, notifications, store transactions, completions, the
//! observer's watches), a collector that reads at scrape time the counters
//! other modules keep (subscribers and catch-ups in the hub, SQS consumers,
//! DynamoDB requests), and the `/metrics` HTTP endpoint (Prometheus text).
//!
//! It must never block or fail the code it measures: updates are atomic adds
//! behind a read lock, and a scrape only reads.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio_util::sync::CancellationToken;

use crate::{hub::Hub, ingest::sqs::QueueStats, store::dynamodb::DynamoStore};

/// Media type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// What ingest did with notifications, as counted in
/// `streamwatch_notifications_total{outcome}`.
#[derive(Clone, Copy, Debug)]
pub enum Notifications {
    /// Parsed notification records.
    Received,
    /// Records that counted a new object (or removal) into a watch.
    Counted,
    /// Records a watch had already counted (redeliveries).
    Duplicates,
    /// Records no active watch wanted, and test events.
    Ignored,
    /// Documents refused whole (unparseable, or a bucket the tenant may not use).
    Rejected,
}

impl Notifications {
    fn label(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Counted => "counted",
            Self::Duplicates => "duplicate",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
        }
    }
}

/// Every metric the server exposes.
pub struct Metrics {
    registry: Mutex<Registry>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<MethodLabels>,
    notifications: Family<OutcomeLabels, Counter>,
    store_duration: HistogramFamily<OperationLabels>,
    store_batch: Histogram,
    transitions: Family<EventLabels, Counter>,
    completion_delay: Histogram,
    live_watches: Gauge,
    held_watches: Gauge,
    leases_held: Gauge,
    fenced_writes: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency_histogram),
            notifications: Family::default(),
            store_duration: Family::new_with_constructor(latency_histogram),
            // 1 .. 2048 activities.
            store_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            transitions: Family::default(),
            // 50 ms .. ~27 min.
            completion_delay: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            live_watches: Gauge::default(),
            held_watches: Gauge::default(),
            leases_held: Gauge::default(),
            fenced_writes: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "streamwatch_rpc_requests",
                "gRPC calls answered, by method and status code",
                m.rpc_requests.clone(),
            );
            r.register(
                "streamwatch_rpc_duration_seconds",
                "Time to answer a gRPC call (to the response head for streams), by method",
                m.rpc_duration.clone(),
            );
            r.register(
                "streamwatch_notifications",
                "Storage notifications by what ingest did with them",
                m.notifications.clone(),
            );
            r.register(
                "streamwatch_store_transaction_duration_seconds",
                "Time of one store write (a transaction), by operation",
                m.store_duration.clone(),
            );
            r.register(
                "streamwatch_store_record_batch_size",
                "Activities recorded by one store transaction",
                m.store_batch.clone(),
            );
            r.register(
                "streamwatch_watch_transitions",
                "Watch state transitions the observer recorded, by event",
                m.transitions.clone(),
            );
            r.register(
                "streamwatch_completion_delay_seconds",
                "Time from a watch's last activity (or its start, without any) to its completion",
                m.completion_delay.clone(),
            );
            r.register(
                "streamwatch_live_watches",
                "Watches the observer is timing (ACTIVE, or completed with a late window open)",
                m.live_watches.clone(),
            );
            r.register(
                "streamwatch_leases_held",
                "Shard leases this replica holds (in a cluster)",
                m.leases_held.clone(),
            );
            r.register(
                "streamwatch_fenced_writes",
                "Transitions refused because another replica had taken the shard's lease",
                m.fenced_writes.clone(),
            );
            r.register(
                "streamwatch_watches_held_for_ingest",
                "Watches due to complete but waiting for the queues to catch up",
                m.held_watches.clone(),
            );
        }
        m
    }

    /// Adds the counters other modules keep, read at each scrape.
    pub fn collect_from(&self, sources: Sources) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(sources));
    }

    pub fn rpc_finished(&self, method: &str, code: i32, elapsed: Duration) {
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: code_name(code),
            })
            .inc();
        self.rpc_duration
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn notifications(&self, what: Notifications, n: u64) {
        if n > 0 {
            self.notifications
                .get_or_create(&OutcomeLabels {
                    outcome: what.label(),
                })
                .inc_by(n);
        }
    }

    pub fn store_transaction(&self, operation: &'static str, elapsed: Duration) {
        self.store_duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    pub fn store_batch(&self, activities: usize) {
        self.store_batch.observe(activities as f64);
    }

    pub fn leases_held(&self, n: usize) {
        self.leases_held.set(n as i64);
    }

    pub fn fenced_write(&self) {
        self.fenced_writes.inc();
    }

    pub fn transition(&self, event: &'static str) {
        self.transitions.get_or_create(&EventLabels { event }).inc();
    }

    pub fn completed_after(&self, delay: Duration) {
        self.completion_delay.observe(delay.as_secs_f64());
    }

    pub fn observer_watches(&self, live: usize, held: usize) {
        self.live_watches
            .set(i64::try_from(live).unwrap_or(i64::MAX));
        self.held_watches
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// The exposition in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The canonical name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Counters kept elsewhere, read at each scrape.
pub struct Sources {
    pub hub: Arc<Hub>,
    pub queues: Vec<(String, Arc<QueueStats>)>,
    pub dynamodb: Option<Arc<DynamoStore>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// Reads one counter of a queue's consumers.
type ReadQueue = fn(&QueueStats) -> u64;

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        ConstGauge::new(self.hub.subscribers.load(Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "streamwatch_subscribers",
                "Open StreamWatchEvents streams",
                None,
                MetricType::Gauge,
            )?,
        )?;
        counter(
            &mut encoder,
            "streamwatch_subscriber_catch_ups",
            "Times a subscriber fell behind the live events and caught up from the log",
            self.hub.lagged_total.load(Ordering::Relaxed),
        )?;
        if !self.queues.is_empty() {
            let per_queue: [(&str, &str, ReadQueue); 5] = [
                (
                    "streamwatch_sqs_messages_received",
                    "SQS messages received",
                    |s| s.received.load(Ordering::Relaxed),
                ),
                (
                    "streamwatch_sqs_messages_deleted",
                    "SQS messages deleted once recorded",
                    |s| s.deleted.load(Ordering::Relaxed),
                ),
                (
                    "streamwatch_sqs_messages_unparseable",
                    "SQS messages that were not notification documents",
                    |s| s.unparseable.load(Ordering::Relaxed),
                ),
                (
                    "streamwatch_sqs_failed_batches",
                    "SQS batches that could not be recorded (left for redelivery)",
                    |s| s.failed_batches.load(Ordering::Relaxed),
                ),
                (
                    "streamwatch_sqs_counted",
                    "Objects counted from SQS messages",
                    |s| s.counted.load(Ordering::Relaxed),
                ),
            ];
            for (name, help, read) in per_queue {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (url, stats) in &self.queues {
                    let labels = QueueLabels { queue: url.clone() };
                    ConstCounter::new(read(stats)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(store) = &self.dynamodb {
            let s = &store.stats;
            counter(
                &mut encoder,
                "streamwatch_dynamodb_requests",
                "Requests made to DynamoDB",
                s.requests.load(Ordering::Relaxed),
            )?;
            counter(
                &mut encoder,
                "streamwatch_dynamodb_items",
                "Items read or written by those requests",
                s.items.load(Ordering::Relaxed),
            )?;
            counter(
                &mut encoder,
                "streamwatch_dynamodb_write_units",
                "Write capacity units consumed, by DynamoDB's rules",
                s.write_units.load(Ordering::Relaxed),
            )?;
            counter(
                &mut encoder,
                "streamwatch_dynamodb_read_units",
                "Read capacity units consumed, by DynamoDB's rules",
                s.read_units.load(Ordering::Relaxed),
            )?;
            counter(
                &mut encoder,
                "streamwatch_dynamodb_lease_requests",
                "Of the DynamoDB requests, those spent on shard leases and replica heartbeats",
                s.lease_requests.load(Ordering::Relaxed),
            )?;
            counter(
                &mut encoder,
                "streamwatch_dynamodb_route_requests",
                "Of the DynamoDB requests, those spent on routing new watches across replicas",
                s.route_requests.load(Ordering::Relaxed),
            )?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until `end` is cancelled.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    end: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { end.cancelled().await })
        .await
}

/// The metrics endpoint's address cannot be listened on (taken, or not this host's).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    source: std::io::Error,
}

/// Binds the metrics endpoint (refusing to start when the address is taken).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}
