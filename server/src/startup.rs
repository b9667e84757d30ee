//! The running service without its gRPC front ([`Core`]): opens the store
//! and checks every queue the configuration names, joins the cluster,
//! resumes every live watch, and starts the observer, the deliveries and
//! the queue consumers; at shutdown it stops them in order and flushes the
//! store. A failure to start is a [`StartupError`] naming what could not be
//! set up.
//!
//! It must never serve before every live watch is resumed, nor flush the
//! store while anything still writes to it.

use std::{path::PathBuf, sync::Arc};

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
        self, Ingest, Routes, Watermarks,
        reconcile::Reconciler,
        sqs::{QueueConsumer, QueueError, QueueStats},
    },
    metrics::{Metrics, Sources},
    observer::Observer,
    quota::Limiter,
    service::Service,
    store::{
        Store, StoreError,
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
}

/// Opens the store `config` names (`aws` is the shared AWS configuration,
/// loaded when the store needs it); the DynamoDB store also comes back on its own, for its request counts.
async fn open_store(
    config: &Config,
    aws: Option<&aws_config::SdkConfig>,
) -> Result<(Arc<dyn Store>, Option<Arc<DynamoStore>>), StartupError> {
    Ok(match config.store {
        StoreKind::Sqlite => (
            Arc::new(SqliteStore::open(&config.data).map_err(|source| {
                StartupError::OpenStore {
                    path: config.data.clone(),
                    source,
                }
            })?),
            None,
        ),
        StoreKind::Dynamodb => {
            let table = config.table.clone().ok_or(StartupError::NoTable)?;
            let aws = aws.ok_or(StartupError::NoAwsConfig)?;
            let store =
                DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), &table, config.retention)
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
                .map_err(|source| StartupError::ReachTable {
                    table: table.clone(),
                    source,
                })?;
            let store = Arc::new(store);
            (store.clone(), Some(store))
        }
    })
}

/// An SQS client for `urls`, once each queue has answered (it exists and
/// may be read), and the longest visibility timeout among them.
async fn open_queues(
    aws: &aws_config::SdkConfig,
    urls: &[String],
) -> Result<(aws_sdk_sqs::Client, std::time::Duration), StartupError> {
    let sqs = aws_sdk_sqs::Client::new(aws);
    let mut longest = std::time::Duration::ZERO;
    for url in urls {
        let visibility =
            ingest::sqs::check(&sqs, url)
                .await
                .map_err(|source| StartupError::Queue {
                    url: url.clone(),
                    source,
                })?;
        longest = longest.max(visibility);
    }
    Ok((sqs, longest))
}

impl Core {
    /// Opens the store, checks every queue, resumes every live watch and
    /// starts the observer and the queue consumers.
    pub async fn start(config: &Config, clock: Clock) -> Result<Self, StartupError> {
        let tenants = LiveTenants::load(config.tenants.as_deref())?;
        // Loaded here when the store or the queues need it; otherwise only
        // if a delivery to an AWS target does.
        let shared_aws = AwsConfig::new();
        let aws = if config.store == StoreKind::Dynamodb || !config.sqs_queue_urls.is_empty() {
            Some(shared_aws.get().await)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
        if config.cluster.cluster && config.store != StoreKind::Dynamodb {
            return Err(StartupError::ClusterNeedsDynamodb);
        }
        let (store, dynamodb) = open_store(config, aws).await?;
        let cluster = match (&dynamodb, config.cluster.cluster) {
            (Some(dynamodb), true) => Some(
                Cluster::new(&config.cluster, dynamodb.clone(), clock, metrics.clone())
                    .await
                    .map_err(StartupError::Cluster)?,
            ),
            _ => None,
        };
        let mut store: Arc<dyn Store> = Arc::new(Measured::new(store, metrics.clone()));
        if config.store == StoreKind::Sqlite {
            // This process is the SQLite store's only writer: a watch it
            // wrote is read back from memory (see `store::cached`).
            store = Arc::new(Cached::new(store, cached::DEFAULT_CAPACITY));
        }
        let (sqs, visibility) = match (aws, config.sqs_queue_urls.is_empty()) {
            (Some(aws), false) => {
                let (sqs, visibility) = open_queues(aws, &config.sqs_queue_urls).await?;
                (Some(sqs), visibility)
            }
            _ => (None, std::time::Duration::ZERO),
        };
        let consumers_per_queue = config.sqs_consumers.max(1);
        let watermarks = Arc::new(Watermarks::new(
            config.sqs_queue_urls.len() * consumers_per_queue,
        ));
        let streams_end = CancellationToken::new();
        let observer_end = CancellationToken::new();
        let routes = Arc::new(match &cluster {
            Some(c) => Routes::refreshed(c.routes_fresh.clone(), c.route_staleness),
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
        let reconciler = aws.map(|shared| {
            let s3 = aws_sdk_s3::Client::from_conf(s3_config(shared).build());
            Arc::new(Reconciler::new(s3))
        });
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
        if !config.sqs_queue_urls.is_empty() {
            observer.confirm_with(watermarks.clone());
        }
        let limiter = Arc::new(Limiter::default());
        observer.limit_reopening(tenants.clone(), limiter.clone());
        let cluster_end = CancellationToken::new();
        let cluster = match cluster {
            Some(c) => {
                observer.clustered(c.ownership.clone(), c.log_poll());
                let tasks = c
                    .start(
                        routes.clone(),
                        observer_handle.clone(),
                        watermarks.subscribe(),
                        visibility,
                        cluster_end.clone(),
                    )
                    .await
                    .map_err(|e| StartupError::Cluster(e.into()))?;
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
                    shared_aws.clone(),
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
        let consumers_end = CancellationToken::new();
        let mut consumers = Vec::new();
        let mut queue_stats = Vec::new();
        if let Some(sqs) = sqs {
            for (q, url) in config.sqs_queue_urls.iter().enumerate() {
                let stats = Arc::new(QueueStats::default());
                queue_stats.push((url.clone(), stats.clone()));
                for c in 0..consumers_per_queue {
                    let consumer = QueueConsumer {
                        client: sqs.clone(),
                        url: url.clone(),
                        mark: q * consumers_per_queue + c,
                        ingest: ingest.clone(),
                        watermarks: watermarks.clone(),
                        clock,
                        wait: config.sqs_wait,
                        stats: stats.clone(),
                    };
                    consumers.push(tokio::spawn(consumer.run(consumers_end.clone())));
                }
            }
        }
        metrics.collect_from(Sources {
            hub: hub.clone(),
            queues: queue_stats.clone(),
            dynamodb,
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
        self.store.close().await
    }
}
