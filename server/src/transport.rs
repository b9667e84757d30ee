//! The connection layer under gRPC: TLS (rustls, through tonic) with an
//! optional client-certificate CA, the subject a verified client certificate
//! carries, the cap on open connections, and the HTTP/2 limits and
//! keepalives that keep idle or hostile clients from holding memory.
//!
//! It owns how bytes reach the services, never who the caller is: mapping a
//! certificate subject to a tenant is [`crate::auth`]'s job.

use std::{
    io,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::transport::{
    Certificate, Identity, Server, ServerTlsConfig,
    server::{Connected, TcpConnectInfo},
};

/// Open connections at once by default; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Concurrent HTTP/2 streams (calls) per connection.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 200;
/// How often an HTTP/2 ping checks that the peer is still there...
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and how long it may take to answer before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header block a client may send (tokens and metadata fit easily).
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// Streams a client may open and reset before the server reads them (HTTP/2 "rapid reset").
pub const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// How long accepting pauses after an error (out of file descriptors...).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS and connection flags (flattened into [`crate::config::Config`]).
#[derive(Clone, Debug, clap::Args)]
pub struct TransportArgs {
    /// PEM certificate chain the server presents; with --tls-key the server speaks TLS only.
    #[arg(
        long,
        env = "STREAMWATCH_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "STREAMWATCH_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): every client must present a certificate signed by
    /// one; a certificate whose subject CN a tenant lists in `client_subjects`
    /// authenticates as that tenant.
    #[arg(
        long,
        env = "STREAMWATCH_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Connections open at once; further clients wait in the listen backlog.
    #[arg(long, env = "STREAMWATCH_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
}

impl TransportArgs {
    /// The server's TLS settings, or `None` for plaintext.
    pub fn tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the {what} {}", path.display()))?;
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                anyhow::bail!("{}: the {what} is not PEM", path.display());
            }
            Ok(pem)
        };
        let identity = Identity::from_pem(
            read(cert, "TLS certificate (--tls-cert)")?,
            read(key, "TLS key (--tls-key)")?,
        );
        let mut tls = ServerTlsConfig::new()
            .identity(identity)
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(
                ca,
                "client CA certificate (--tls-client-ca)",
            )?));
        }
        Ok(Some(tls))
    }
}

/// A server builder with the HTTP/2 limits and keepalives set, and TLS if configured.
pub fn server_builder(args: &TransportArgs) -> anyhow::Result<Server> {
    // Err when a provider is already installed (a second server in this process): fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = Server::builder()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS))
        // Fixed flow-control windows: an adaptive window would let each
        // connection buffer more for a client that does not read.
        .http2_adaptive_window(Some(false));
    match args.tls()? {
        Some(tls) => builder
            .tls_config(tls)
            .context("invalid TLS certificate or key"),
        None => Ok(builder),
    }
}

/// The subject common name of the client's verified certificate, if it sent one.
pub fn client_subject<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Accepted connections, at most `max` open at once: the next accept waits
/// for a place, so idle clients cannot pile up without bound.
pub fn incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let places = Arc::new(Semaphore::new(max.max(1)));
    futures::stream::unfold((listener, places), |(listener, places)| async move {
        let place = match places.clone().acquire_owned().await {
            Ok(place) => place,
            // Never closed: the semaphore lives as long as this stream.
            Err(_) => return None,
        };
        let accepted = match listener.accept().await {
            Ok((io, _)) => {
                // Small responses (events) go out at once.
                let _ = io.set_nodelay(true);
                Ok(Limited { io, _place: place })
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin on it.
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                Err(e)
            }
        };
        Some((accepted, (listener, places)))
    })
}

/// A connection holding one of the places [`incoming`] hands out.
pub struct Limited {
    io: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
