//! The running service without its gRPC front ([`Core`]): opens the store
//! and checks every queue the configuration names, joins the cluster,
//! resumes every live watch, and starts the observer, the deliveries and
//! the queue consumers; at shutdown it stops them in order and flushes the
//! store. A failure to start is a [`StartupError`] naming what could not be
//! set up.
//!
//! After a crash (SQLite: the running marker beside the store was left
//! behind; a cluster: the replica item of an earlier process under this id),
//! no queue mark moves until the queues' visibility timeout has passed:
//! what the crashed process's long poll took is hidden until then.
//!
//! It must never serve before every live watch is resumed, nor flush the
//! store while anything still writes to it.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::{LiveTenants, TenantsError},
    aws::{AwsConfig, s3_config},
    clock::Clock,
    cluster::{Cluster, ClusterError},
    config::{Config, StoreKind},
    delivery::{Deliverer, DeliveryStats, Targets, manifest::Manifests},
    hub::Hub,
    ingest::{
        Ingest, Routes, Watermarks,
        queue::{Queue, QueueError, SqsQueue},
        reconcile::Reconciler,
        sqs::{QueueConsumer, QueueStats},
    },
    metrics::{Metrics, Sources},
    observer::Observer,
    quota::Limiter,
    service::Service,
    store::{
        ClusterTable, Store, StoreError,
        cached::{self, Cached},
        dynamodb::DynamoStore,
        measured::Measured,
        publishing::Publishing,
        sqlite::SqliteStore,
    },
};

/// Why the service cannot start. Each names what it could not set up; the
/// underlying failure is its source.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Tenants(#[from] TenantsError),
    #[error("--cluster needs --store dynamodb: replicas share their state through it")]
    ClusterNeedsDynamodb,
    #[error("--store dynamodb needs --table")]
    NoTable,
    #[error("no AWS configuration")]
    NoAwsConfig,
    #[error("cannot open the store {}", .path.display())]
    OpenStore { path: PathBuf, source: StoreError },
    #[error("cannot create the DynamoDB table {table}")]
    CreateTable { table: String, source: StoreError },
    #[error("cannot reach the DynamoDB table {table}")]
    ReachTable { table: String, source: StoreError },
    #[error("cannot reach the SQS queue {url}")]
    Queue { url: String, source: QueueError },
    #[error("cannot join the cluster")]
    Cluster(#[source] ClusterError),
    /// No HTTP client for webhooks could be built (no TLS roots).
    #[error("cannot set up the webhook HTTP clients")]
    Callbacks(#[source] reqwest::Error),
    #[error("cannot resume the live watches")]
    Resume(#[source] StoreError),
}

/// The running service without its gRPC front: store, observer, hub and the
/// operations over them. [`serve`](crate::serve) puts gRPC in front; tests drive it directly.
pub struct Core {
    pub service: Arc<Service>,
    pub tenants: LiveTenants,
    store: Arc<dyn Store>,
    streams_end: CancellationToken,
    observer_end: CancellationToken,
    observer_task: tokio::task::JoinHandle<()>,
    /// Stops the observer when the core is dropped without [`Core::shutdown`]
    /// (a serve that fails after starting it): its thread would otherwise
    /// keep the runtime, and so the process, from ever ending.
    _observer_stop: tokio_util::sync::DropGuard,
    consumers_end: CancellationToken,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    /// Per queue URL, what its consumers did.
    pub queue_stats: Vec<(String, Arc<QueueStats>)>,
    deliveries_end: CancellationToken,
    deliverer_task: tokio::task::JoinHandle<()>,
    /// This replica's part of a cluster (`--cluster`), with its tasks.
    cluster: Option<(Cluster, Vec<tokio::task::JoinHandle<()>>)>,
    cluster_end: CancellationToken,
    /// What the delivery task did.
    pub delivery_stats: Arc<DeliveryStats>,
    /// What `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Removed once the store is flushed at shutdown (see [`Backends::running_marker`]).
    running_marker: Option<PathBuf>,
}

/// What a [`Core`] runs on: its store, the cluster table when clustered,
/// its queues. [`Backends::open`] opens what the configuration names; a
/// cluster simulation passes its own.
pub struct Backends {
    /// The store (when clustered, the same one as `cluster`).
    pub store: Arc<dyn Store>,
    /// Whether this process is the store's only writer (SQLite): a watch it
    /// wrote is then read back from memory (see `store::cached`).
    pub sole_writer: bool,
    /// The table replicas coordinate through (`--cluster`).
    pub cluster: Option<Arc<dyn ClusterTable>>,
    /// The queues to consume.
    pub queues: Vec<Arc<dyn Queue>>,
    /// The longest visibility timeout of `queues`.
    pub visibility: Duration,
    /// S3 listings for reconciling watches (none: reconciling is refused).
    pub reconciler: Option<Arc<Reconciler>>,
    /// The AWS configuration deliveries to AWS targets use (loaded on first need).
    pub aws: AwsConfig,
    /// The DynamoDB store, for its request counts in `/metrics`.
    pub dynamodb: Option<Arc<DynamoStore>>,
    /// Seeds the random bits of new watch ids, so a simulation replays
    /// them; none (always, in a server): from the system's randomness.
    pub id_seed: Option<u64>,
    /// Whether the previous process on this store stopped without shutting
    /// down (SQLite: it left its running marker behind).
    pub crashed: bool,
    /// The file that says a process runs on this store, removed at a clean
    /// shutdown (SQLite only).
    pub running_marker: Option<PathBuf>,
}

impl Backends {
    /// Opens the store `config` names, checks every queue (it exists and may
    /// be read) and joins nothing yet. The AWS configuration is loaded here
    /// only when the store or the queues need it.
    pub async fn open(config: &Config) -> Result<Self, StartupError> {
        if config.cluster.cluster && config.store != StoreKind::Dynamodb {
            return Err(StartupError::ClusterNeedsDynamodb);
        }
        let shared_aws = AwsConfig::new();
        let aws = if config.store == StoreKind::Dynamodb || !config.sqs_queue_urls.is_empty() {
            Some(shared_aws.get().await)
        } else {
            None
        };
        let mut backends = match config.store {
            StoreKind::Sqlite => {
                let store =
                    SqliteStore::open(&config.data).map_err(|source| StartupError::OpenStore {
                        path: config.data.clone(),
                        source,
                    })?;
                let marker = running_marker(&config.data);
                let crashed = marker.exists();
                std::fs::write(&marker, std::process::id().to_string()).map_err(|e| {
                    StartupError::OpenStore {
                        path: marker.clone(),
                        source: StoreError::Unavailable(e.to_string()),
                    }
                })?;
                Self {
                    store: Arc::new(store),
                    sole_writer: true,
                    cluster: None,
                    queues: Vec::new(),
                    visibility: Duration::ZERO,
                    reconciler: None,
                    aws: shared_aws.clone(),
                    dynamodb: None,
                    id_seed: None,
                    crashed,
                    running_marker: Some(marker),
                }
            }
            StoreKind::Dynamodb => {
                let store = Arc::new(open_dynamodb(config, aws).await?);
                Self {
                    store: store.clone(),
                    sole_writer: false,
                    cluster: config
                        .cluster
                        .cluster
                        .then(|| store.clone() as Arc<dyn ClusterTable>),
                    queues: Vec::new(),
                    visibility: Duration::ZERO,
                    reconciler: None,
                    aws: shared_aws.clone(),
                    dynamodb: Some(store),
                    id_seed: None,
                    crashed: false,
                    running_marker: None,
                }
            }
        };
        if let Some(aws) = aws {
            let sqs = aws_sdk_sqs::Client::new(aws);
            for url in &config.sqs_queue_urls {
                let queue = SqsQueue::new(sqs.clone(), url);
                let visibility = queue.check().await.map_err(|source| StartupError::Queue {
                    url: url.clone(),
                    source,
                })?;
                backends.visibility = backends.visibility.max(visibility);
                backends.queues.push(Arc::new(queue));
            }
            let s3 = aws_sdk_s3::Client::from_conf(s3_config(aws).build());
            backends.reconciler = Some(Arc::new(Reconciler::new(s3)));
        }
        Ok(backends)
    }
}

/// The file beside an SQLite store that says a process runs on it.
fn running_marker(data: &std::path::Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".running");
    PathBuf::from(name)
}

/// Opens (and with `--create-table`, creates) the DynamoDB table `config` names.
async fn open_dynamodb(
    config: &Config,
    aws: Option<&aws_config::SdkConfig>,
) -> Result<DynamoStore, StartupError> {
    let table = config.table.clone().ok_or(StartupError::NoTable)?;
    let aws = aws.ok_or(StartupError::NoAwsConfig)?;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), &table, config.retention)
        .with_shards(config.cluster.shards);
    if config.create_table && store.check().await.is_err() {
        store
            .create_table()
            .await
            .map_err(|source| StartupError::CreateTable {
                table: table.clone(),
                source,
            })?;
        tracing::info!(%table, "created the DynamoDB table");
    }
    store
        .check()
        .await
        .map_err(|source| StartupError::ReachTable { table, source })?;
    Ok(store)
}

impl Core {
    /// Opens what `config` names ([`Backends::open`]) and starts on it ([`Core::start_on`]).
    pub async fn start(config: &Config, clock: Clock) -> Result<Self, StartupError> {
        let tenants = LiveTenants::load(config.tenants.as_deref())?;
        let backends = Backends::open(config).await?;
        Self::start_on(config, clock, backends, tenants).await
    }

    /// Joins the cluster (when `backends` has a cluster table), resumes
    /// every live watch and starts the observer, the deliveries and the
    /// queue consumers on `backends`.
    pub async fn start_on(
        config: &Config,
        clock: Clock,
        backends: Backends,
        tenants: LiveTenants,
    ) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::new());
        let cluster = match &backends.cluster {
            Some(table) if config.cluster.cluster => Some(
                Cluster::new(&config.cluster, table.clone(), clock, metrics.clone())
                    .await
                    .map_err(StartupError::Cluster)?,
            ),
            _ => None,
        };
        let mut store: Arc<dyn Store> = Arc::new(Measured::new(backends.store, metrics.clone()));
        if backends.sole_writer {
            store = Arc::new(Cached::new(store, cached::DEFAULT_CAPACITY));
        }
        let consumers_per_queue = config.sqs_consumers.max(1);
        let watermarks = Arc::new(Watermarks::new(backends.queues.len() * consumers_per_queue));
        let streams_end = CancellationToken::new();
        let observer_end = CancellationToken::new();
        let routes = Arc::new(match &cluster {
            Some(c) => Routes::refreshed(
                c.routes_fresh.clone(),
                c.route_staleness,
                c.in_touch.clone(),
            ),
            None => Routes::default(),
        });
        let hub = Arc::new(Hub::new(store.clone(), clock, streams_end.clone()));
        // Every write from here on publishes what it committed.
        let publishing = Arc::new(Publishing::new(store, hub.clone()));
        let store: Arc<dyn Store> = publishing.clone();
        if let Some(c) = &cluster {
            // Ends with the streams, at shutdown.
            tokio::spawn(hub.clone().follow_log(c.log_poll()));
        }
        let reconciler = backends.reconciler;
        let (mut observer, observer_handle) = Observer::new(
            store.clone(),
            routes.clone(),
            clock,
            match &cluster {
                Some(c) => c.settled.clone(),
                None => watermarks.subscribe(),
            },
            reconciler.clone(),
            metrics.clone(),
        );
        if !backends.queues.is_empty() {
            observer.confirm_with(watermarks.clone());
        }
        let limiter = Arc::new(Limiter::default());
        observer.limit_reopening(tenants.clone(), limiter.clone());
        let cluster_end = CancellationToken::new();
        let mut crashed = backends.crashed;
        let cluster = match cluster {
            Some(c) => {
                observer.clustered(c.ownership.clone(), c.log_poll());
                let (tasks, replica_crashed) = c
                    .start(
                        routes.clone(),
                        observer_handle.clone(),
                        watermarks.subscribe(),
                        backends.visibility,
                        cluster_end.clone(),
                    )
                    .await
                    .map_err(|e| StartupError::Cluster(e.into()))?;
                crashed |= replica_crashed;
                Some((c, tasks))
            }
            None => None,
        };
        let deliverer = Deliverer::new(
            store.clone(),
            Arc::new(
                Targets::new(
                    tenants.clone(),
                    config.delivery_timeout,
                    Manifests::new(store.clone(), config.manifest_part_size),
                    backends.aws,
                )
                .map_err(StartupError::Callbacks)?,
            ),
            clock,
            config.delivery(),
        );
        let delivery_stats = deliverer.stats();
        publishing.wake_deliveries(deliverer.waker());
        let deliveries_end = CancellationToken::new();
        let deliverer_task = tokio::spawn(deliverer.run(deliveries_end.clone()));
        let recovered = observer.recover().await.map_err(StartupError::Resume)?;
        tracing::info!(live_watches = recovered, "observer resumed");
        let observer_task = if config.observer_thread {
            // Polled on a thread of its own; what it spawns (writes,
            // listings) runs on the runtime's workers, its timers on the
            // runtime's clock.
            let runtime = tokio::runtime::Handle::current();
            let end = observer_end.clone();
            tokio::task::spawn_blocking(move || runtime.block_on(observer.run(end)))
        } else {
            tokio::spawn(observer.run(observer_end.clone()))
        };
        let ingest = Arc::new(Ingest {
            store: store.clone(),
            routes,
            observer: observer_handle.clone(),
            tenants: tenants.clone(),
            clock,
            metrics: metrics.clone(),
        });
        // After a crash, what the earlier process's long polls took stays
        // hidden in the queues for up to a visibility timeout: no mark moves
        // (and so no decision waiting on the queues is made) until then.
        let hold_until = (crashed && !backends.queues.is_empty()).then(|| {
            tracing::warn!(visibility = ?backends.visibility,
                "the previous process stopped without shutting down; holding decisions \
                 until what it had received from the queues is visible again");
            tokio::time::Instant::now() + backends.visibility
        });
        let consumers_end = CancellationToken::new();
        let mut consumers = Vec::new();
        let mut queue_stats = Vec::new();
        for (q, queue) in backends.queues.iter().enumerate() {
            let stats = Arc::new(QueueStats::default());
            queue_stats.push((queue.url().to_owned(), stats.clone()));
            for c in 0..consumers_per_queue {
                let consumer = QueueConsumer {
                    queue: queue.clone(),
                    mark: q * consumers_per_queue + c,
                    ingest: ingest.clone(),
                    watermarks: watermarks.clone(),
                    clock,
                    wait: config.sqs_wait,
                    stats: stats.clone(),
                    hold_until,
                    in_touch: cluster.as_ref().map(|(c, _)| c.in_touch.clone()),
                };
                consumers.push(tokio::spawn(consumer.run(consumers_end.clone())));
            }
        }
        metrics.collect_from(Sources {
            hub: hub.clone(),
            queues: queue_stats.clone(),
            dynamodb: backends.dynamodb,
        });
        let service = Arc::new(Service {
            store: store.clone(),
            hub,
            observer: observer_handle,
            ingest,
            tenants: tenants.clone(),
            limiter,
            clock,
            reconcile_available: reconciler.is_some(),
            routing: cluster.as_ref().map(|(c, _)| c.routing.clone()),
            replays: Arc::new(tokio::sync::Semaphore::new(1)),
            ids: std::sync::Mutex::new(
                backends
                    .id_seed
                    .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
            ),
        });
        Ok(Self {
            service,
            tenants,
            store,
            streams_end,
            _observer_stop: observer_end.clone().drop_guard(),
            observer_end,
            observer_task,
            consumers_end,
            consumers,
            queue_stats,
            deliveries_end,
            deliverer_task,
            cluster,
            cluster_end,
            delivery_stats,
            metrics,
            running_marker: backends.running_marker,
        })
    }

    /// Ends every open event stream with UNAVAILABLE.
    pub fn end_streams(&self) {
        self.streams_end.cancel();
    }

    /// Stops the queue consumers and the observer, and flushes the store.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.consumers_end.cancel();
        for consumer in self.consumers {
            let _ = consumer.await;
        }
        self.streams_end.cancel();
        self.observer_end.cancel();
        let _ = self.observer_task.await;
        self.deliveries_end.cancel();
        let _ = self.deliverer_task.await;
        self.cluster_end.cancel();
        if let Some((cluster, tasks)) = self.cluster {
            for task in tasks {
                let _ = task.await;
            }
            // Nothing writes under the leases now: hand them over at once.
            cluster.release().await;
        }
        self.store.close().await?;
        if let Some(marker) = &self.running_marker
            && let Err(e) = std::fs::remove_file(marker)
        {
            tracing::warn!(marker = %marker.display(), error = %e,
                "cannot remove the running marker; the next start waits out the queues' visibility timeout");
        }
        Ok(())
    }
}
