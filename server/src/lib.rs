//! streamwatch-server: counts object-created notifications per watched
//! bucket/prefix, decides when each data set has finished landing, and
//! streams every watch event to subscribers over gRPC.
//!
//! Modules, one per concept: [`ingest`] (notifications in), [`store`] (state),
//! [`policy`] (pure completion rules), [`observer`] (timers), [`hub`] (event
//! fan-out), [`delivery`] (completion callbacks) and [`document`] (what they
//! send), [`service`] (the
//! operations), [`api`] (protobuf mapping), [`auth`] (tenants), [`cluster`]
//! (many replicas on one table), [`quota`]
//! (per-tenant limits), [`transport`] (TLS and connection limits), [`config`],
//! [`aws`] (the one AWS configuration), [`telemetry`] (logs and traces),
//! [`metrics`] (Prometheus).
//!
//! [`Core`] (in `startup`) assembles the service from its configuration;
//! [`serve`] puts gRPC in front of it.

pub mod api;
pub mod auth;
pub mod aws;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod document;
pub mod error;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod observer;
pub mod policy;
pub mod quota;
pub mod replay;
pub mod service;
mod startup;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod watch;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use streamwatch::v1::{
    ingest_service_server::IngestServiceServer, watch_service_server::WatchServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

pub use crate::startup::{Backends, Core, StartupError};
use crate::{
    api::{IngestApi, WatchApi},
    auth::{AuthInterceptor, LiveTenants},
    clock::Clock,
    config::Config,
    store::StoreError,
    telemetry::RpcLayer,
    transport::TlsError,
};

/// Why [`serve`] stopped with an error: at startup, or the server itself.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(
        "refusing to serve on {0} without a tenants file: anyone could call it; \
         pass --tenants FILE or listen on a loopback address"
    )]
    OpenToTheNetwork(SocketAddr),
    #[error(transparent)]
    Metrics(#[from] metrics::BindError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listener has no local address (it is not bound).
    #[error("cannot read the listening address")]
    Listener(#[source] std::io::Error),
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("cannot write the address file {}", .path.display())]
    AddressFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot flush the store")]
    Flush(#[source] StoreError),
    #[error("the gRPC server failed")]
    Server(#[source] tonic::transport::Error),
}

/// Largest IngestS3Events request accepted (room for [`ingest::MAX_RECORDS`] records).
pub const MAX_INGEST_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest WatchService request accepted (a StartWatch with every label is far smaller).
pub const MAX_WATCH_REQUEST_BYTES: usize = 1024 * 1024;
/// Serves on `listener` until `shutdown` resolves, then ends open streams with
/// UNAVAILABLE, drains calls for up to `config.shutdown_grace`, and flushes the store.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_with_clock(config, listener, Clock::new(), shutdown).await
}

/// [`serve`] with a given clock.
pub async fn serve_with_clock(
    config: Config,
    listener: TcpListener,
    clock: Clock,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics = match config.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    serve_with_listeners(config, listener, metrics, clock, shutdown).await
}

/// [`serve_with_clock`] with the metrics endpoint on `metrics` (if given)
/// instead of on `config.metrics_addr`.
pub async fn serve_with_listeners(
    config: Config,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    clock: Clock,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    if config.tenants.is_none() && !addr.ip().is_loopback() {
        return Err(ServeError::OpenToTheNetwork(addr));
    }
    let core = Core::start(&config, clock).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WatchServiceServer<WatchApi>>().await;
    health.set_serving::<IngestServiceServer<IngestApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(streamwatch::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(streamwatch::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;
    let auth = AuthInterceptor::new(core.tenants.clone());
    let metrics_end = CancellationToken::new();
    let metrics_addr = metrics
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .map_err(ServeError::Listener)?;
    let metrics_task = match metrics {
        Some(listener) => {
            let metrics_addr = listener.local_addr().map_err(ServeError::Listener)?;
            tracing::info!(%metrics_addr, "serving metrics on /metrics");
            Some(tokio::spawn(metrics::serve(
                core.metrics.clone(),
                listener,
                metrics_end.clone(),
            )))
        }
        None => None,
    };

    let reloads = reload_on_hangup(core.tenants.clone());

    let stop_accepting = CancellationToken::new();
    let server_end = stop_accepting.clone();
    let tls = config.transport.tls_cert.is_some();
    let server = transport::server_builder()
        .layer(RpcLayer::new(core.metrics.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            WatchServiceServer::new(WatchApi::new(core.service.clone()))
                .max_decoding_message_size(MAX_WATCH_REQUEST_BYTES),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            IngestServiceServer::new(IngestApi::new(core.service.clone()))
                .max_decoding_message_size(MAX_INGEST_REQUEST_BYTES),
            auth,
        ))
        .serve_with_incoming_shutdown(
            transport::incoming(listener, &config.transport)?,
            async move { server_end.cancelled().await },
        );
    tracing::info!(%addr, tls, client_certificates = config.transport.tls_client_ca.is_some(),
        data = %config.data.display(), "serving");
    if let Some(path) = &config.address_file {
        write_addresses(path, addr, metrics_addr)?;
    }

    tokio::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown => {
            tracing::info!("shutting down: ending streams and draining calls");
            // "" is the whole server: what probes without a service name ask about.
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_not_serving::<WatchServiceServer<WatchApi>>().await;
            health.set_not_serving::<IngestServiceServer<IngestApi>>().await;
            core.end_streams();
            stop_accepting.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(grace = ?config.shutdown_grace, "calls still open after the grace period; closing");
                    Ok(())
                }
            }
        }
    };
    reloads.abort();
    core.shutdown().await.map_err(ServeError::Flush)?;
    metrics_end.cancel();
    if let Some(task) = metrics_task
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "the metrics endpoint failed");
    }
    tracing::info!("stopped");
    served.map_err(ServeError::Server)
}

/// Writes `--address-file`: whole or not at all (a reader never sees half of it).
fn write_addresses(
    path: &Path,
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
) -> Result<(), ServeError> {
    let mut text = format!("grpc={grpc}\n");
    if let Some(metrics) = metrics {
        text.push_str(&format!("metrics={metrics}\n"));
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|source| ServeError::AddressFile {
            path: path.to_owned(),
            source,
        })
}

/// Reloads the tenants file on every SIGHUP; a file that cannot be loaded is
/// logged and the tenants in force stay. The handler is in place when this
/// returns (before the server says it is serving): a SIGHUP's default action
/// would end the process.
fn reload_on_hangup(tenants: LiveTenants) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let hangups = signal(SignalKind::hangup());
        tokio::spawn(async move {
            let mut hangups = match hangups {
                Ok(hangups) => hangups,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGHUP; the tenants file will not be reloaded");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                match tenants.reload() {
                    Ok(()) => {
                        tracing::info!(tenants = tenants.current().len(), "tenants file reloaded")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reload the tenants file; the previous tenants stay in force")
                    }
                }
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = tenants;
        tokio::spawn(async {})
    }
}
