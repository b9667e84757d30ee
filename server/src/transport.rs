//! The connection layer under gRPC: TLS (rustls) with an optional
//! client-certificate CA and the subject a verified client certificate
//! carries; the bounds on connections (in their handshake, and past it), the
//! handshake deadline, the closing of connections with no call open; and the
//! HTTP/2 limits and keepalives that keep idle or hostile clients from
//! holding memory.
//!
//! It owns how bytes reach the services, never who the caller is: mapping a
//! certificate subject to a tenant is [`crate::auth`]'s job. It must never
//! close a connection as idle while a call is open on it (a
//! `StreamWatchEvents` stream may stay open for days).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::{VerifierBuilderError, WebPkiClientVerifier},
    },
};
use tokio_util::sync::PollSemaphore;
use tonic::transport::{Server, server::Connected};
use tower::layer::util::{Identity, Stack};

/// Connections past their handshake open at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Connections in their handshake at once by default; more wait in the listen backlog.
pub const DEFAULT_MAX_HANDSHAKES: usize = 10_000;
/// How long a new connection has, by default, to finish TLS and send the HTTP/2 client preface.
pub const DEFAULT_HANDSHAKE_TIMEOUT: &str = "5s";
/// How long a connection with no call open stays, by default.
pub const DEFAULT_IDLE_TIMEOUT: &str = "5m";
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
/// Length of the HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const CLIENT_PREFACE_BYTES: usize = 24;
/// The one application protocol the server speaks over TLS.
const ALPN_H2: &[u8] = b"h2";

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

    /// Connections past their handshake open at once; a client that finishes
    /// its handshake while all are taken waits for one until --handshake-timeout.
    #[arg(long, env = "STREAMWATCH_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Connections in their handshake at once; further clients wait in the listen backlog.
    #[arg(long, env = "STREAMWATCH_MAX_HANDSHAKES", default_value_t = DEFAULT_MAX_HANDSHAKES)]
    pub max_handshakes: usize,

    /// How long a new connection has to finish TLS, send the HTTP/2 client
    /// preface and get a place under --max-connections before it is closed.
    #[arg(long, env = "STREAMWATCH_HANDSHAKE_TIMEOUT", default_value = DEFAULT_HANDSHAKE_TIMEOUT, value_parser = positive_duration)]
    pub handshake_timeout: Duration,

    /// How long a connection with no call open stays before it is closed
    /// (clients reconnect on their next call). Open streams keep it.
    #[arg(long, env = "STREAMWATCH_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = positive_duration)]
    pub idle_timeout: Duration,
}

fn positive_duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

/// Chooses ring as the process's TLS provider. Err when a provider is
/// already installed (a second server in this process): fine.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why the TLS files cannot serve: each names the file (and flag) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: the {what} is not PEM", .path.display())]
    NotPem { what: &'static str, path: PathBuf },
    #[error("{}: the {what} is not valid PEM", .path.display())]
    InvalidPem {
        what: &'static str,
        path: PathBuf,
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("{}: the {what} holds no certificate", .path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{}: no private key in the TLS key (--tls-key)", .path.display())]
    NoKey {
        path: PathBuf,
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("{}: not a usable CA certificate", .path.display())]
    UnusableCa {
        path: PathBuf,
        source: tokio_rustls::rustls::Error,
    },
    #[error("invalid client CA certificate (--tls-client-ca)")]
    ClientVerifier(#[source] VerifierBuilderError),
    /// The certificate and key do not make a server configuration (a key
    /// that does not match, an unsupported key type).
    #[error("invalid TLS certificate or key")]
    CertificateOrKey(#[source] tokio_rustls::rustls::Error),
}

/// The PEM file at `path` (the `what` of a flag, in errors).
fn read_pem(path: &PathBuf, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.clone(),
        source,
    })?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.clone(),
        });
    }
    Ok(pem)
}

/// The certificates of the PEM file at `path`: at least one.
fn read_certificates(
    path: &PathBuf,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&read_pem(path, what)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::InvalidPem {
            what,
            path: path.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.clone(),
        });
    }
    Ok(chain)
}

impl TransportArgs {
    /// The server's TLS acceptor, or `None` for plaintext.
    pub fn tls(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        install_crypto_provider();
        let chain = read_certificates(cert, "TLS certificate (--tls-cert)")?;
        let key = PrivateKeyDer::from_pem_slice(&read_pem(key, "TLS key (--tls-key)")?).map_err(
            |source| TlsError::NoKey {
                path: key.clone(),
                source,
            },
        )?;
        let builder = ServerConfig::builder();
        let builder = match &self.tls_client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates(ca, "client CA certificate (--tls-client-ca)")?
                {
                    roots
                        .add(certificate)
                        .map_err(|source| TlsError::UnusableCa {
                            path: ca.clone(),
                            source,
                        })?;
                }
                let verifier = WebPkiClientVerifier::builder(roots.into())
                    .build()
                    .map_err(TlsError::ClientVerifier)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(TlsError::CertificateOrKey)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// A server builder with the HTTP/2 limits and keepalives set, counting the
/// calls open on each connection (which [`Connection`] needs to close idle ones).
pub fn server_builder() -> Server<Stack<CountCallsLayer, Identity>> {
    install_crypto_provider();
    Server::builder()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS))
        // Fixed flow-control windows: an adaptive window would let each
        // connection buffer more for a client that does not read.
        .http2_adaptive_window(Some(false))
        .layer(CountCallsLayer)
}

/// The subject common name of the client's verified certificate, if it sent one.
pub fn client_subject<T>(request: &tonic::Request<T>) -> Option<String> {
    let info = request.extensions().get::<ConnectionInfo>()?;
    info.state.subject.get().cloned()
}

fn subject_of(certificates: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certificates?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// What [`incoming`] hands to every [`Connection`].
struct Limits {
    /// Places for connections in their handshake.
    handshakes: Arc<Semaphore>,
    /// Places for connections past it.
    places: Arc<Semaphore>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<TlsAcceptor>,
}

/// Accepted connections, for `serve_with_incoming_shutdown`. The
/// next accept waits for one of `--max-handshakes` places; a connection
/// gives it back once it has sent the HTTP/2 client preface and taken one of
/// `--max-connections` places, or when it is closed, at the latest after
/// `--handshake-timeout`. So silent clients hold no place for long, and never
/// one a served client needs.
pub fn incoming(
    listener: TcpListener,
    args: &TransportArgs,
) -> Result<impl Stream<Item = io::Result<Connection>> + Send + 'static, TlsError> {
    let places = |n: usize| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
    let limits = Arc::new(Limits {
        handshakes: places(args.max_handshakes),
        places: places(args.max_connections),
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        tls: args.tls()?,
    });
    Ok(futures::stream::unfold(
        (listener, limits),
        |(listener, limits)| async move {
            let handshake = match limits.handshakes.clone().acquire_owned().await {
                Ok(place) => place,
                // Never closed: the semaphore lives as long as this stream.
                Err(_) => return None,
            };
            let accepted = match listener.accept().await {
                Ok((io, remote_addr)) => {
                    // Small responses (events) go out at once.
                    let _ = io.set_nodelay(true);
                    Ok(Connection::new(io, remote_addr, handshake, &limits))
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin on it.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    Err(e)
                }
            };
            Some((accepted, (listener, limits)))
        },
    ))
}

/// What the services learn of the connection a call came on (a request extension).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    state: Arc<ConnectionState>,
}

/// What a connection and the calls on it share.
#[derive(Debug)]
struct ConnectionState {
    /// When the connection was accepted.
    epoch: Instant,
    /// Calls (HTTP/2 streams) open on the connection.
    calls: AtomicUsize,
    /// When the last call ended (or the handshake did), in nanoseconds after `epoch`.
    idle_since: AtomicU64,
    /// The subject CN of the client's verified certificate, once TLS is done.
    subject: OnceLock<String>,
}

impl ConnectionState {
    fn mark_idle(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.idle_since.store(nanos, Ordering::SeqCst);
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.idle_since.load(Ordering::SeqCst))
    }
}

/// The bytes under one connection: plain TCP, or TLS (its handshake first).
enum Wire {
    Plain(TcpStream),
    Accepting(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The TLS handshake failed.
    Failed,
}

impl Wire {
    /// Finishes the TLS handshake, if one is under way; records the client's subject.
    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        state: &ConnectionState,
    ) -> Poll<io::Result<()>> {
        match self {
            Wire::Accepting(accept) => match ready!(Pin::new(&mut **accept).poll(cx)) {
                Ok(tls) => {
                    if let Some(subject) = subject_of(tls.get_ref().1.peer_certificates()) {
                        let _ = state.subject.set(subject);
                    }
                    *self = Wire::Tls(Box::new(tls));
                    Poll::Ready(Ok(()))
                }
                Err(e) => {
                    *self = Wire::Failed;
                    Poll::Ready(Err(e))
                }
            },
            Wire::Failed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            Wire::Plain(_) | Wire::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    /// The stream to read and write, once [`Self::poll_ready`] is ready.
    fn io(&mut self) -> Pin<&mut dyn AsyncReadWrite> {
        match self {
            Wire::Plain(io) => Pin::new(io),
            Wire::Tls(io) => Pin::new(&mut **io),
            Wire::Accepting(_) | Wire::Failed => unreachable!("poll_ready returned first"),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

/// One client connection. It holds one of the handshake places until it
/// has sent the HTTP/2 client preface and taken one of the connection
/// places, and ends itself (an I/O error, on which the server drops it) at
/// the handshake deadline, or once it has had no call open for the idle
/// timeout. HTTP/2 pings are not calls: they keep no connection.
pub struct Connection {
    wire: Wire,
    state: Arc<ConnectionState>,
    remote_addr: SocketAddr,
    /// Preface bytes read so far.
    preface_read: usize,
    /// Held until the connection has its place.
    handshake: Option<OwnedSemaphorePermit>,
    /// Some while the preface is read and every place is taken.
    waiting: Option<PollSemaphore>,
    /// Held once established.
    place: Option<OwnedSemaphorePermit>,
    /// The handshake deadline, then the next instant to look at idleness.
    deadline: Pin<Box<Sleep>>,
    places: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl Connection {
    fn new(
        io: TcpStream,
        remote_addr: SocketAddr,
        handshake: OwnedSemaphorePermit,
        limits: &Limits,
    ) -> Self {
        let now = Instant::now();
        Self {
            wire: match &limits.tls {
                Some(tls) => Wire::Accepting(Box::new(tls.accept(io))),
                None => Wire::Plain(io),
            },
            state: Arc::new(ConnectionState {
                epoch: now,
                calls: AtomicUsize::new(0),
                idle_since: AtomicU64::new(0),
                subject: OnceLock::new(),
            }),
            remote_addr,
            preface_read: 0,
            handshake: Some(handshake),
            waiting: None,
            place: None,
            deadline: Box::pin(tokio::time::sleep_until(now + limits.handshake_timeout)),
            places: limits.places.clone(),
            idle_timeout: limits.idle_timeout,
        }
    }

    /// Before the connection has its place: an error once the handshake deadline has passed.
    fn check_handshake_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.place.is_some() {
            return Ok(());
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 handshake within the handshake timeout",
            )),
            Poll::Pending => Ok(()),
        }
    }

    /// Counts what was read towards the preface; once it is all there, takes
    /// a place, or starts waiting for one.
    fn count_preface(&mut self, read: usize) {
        if self.place.is_some() || self.waiting.is_some() {
            return;
        }
        self.preface_read += read;
        if self.preface_read < CLIENT_PREFACE_BYTES {
            return;
        }
        match self.places.clone().try_acquire_owned() {
            Ok(place) => self.establish(place),
            Err(_) => self.waiting = Some(PollSemaphore::new(self.places.clone())),
        }
    }

    /// While waiting for a place: ready once it has one.
    fn poll_place(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(waiting) = &mut self.waiting else {
            return Poll::Ready(Ok(()));
        };
        match ready!(waiting.poll_acquire(cx)) {
            Some(place) => {
                self.establish(place);
                Poll::Ready(Ok(()))
            }
            // Never closed: `incoming`'s limits outlive it.
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn establish(&mut self, place: OwnedSemaphorePermit) {
        self.place = Some(place);
        self.waiting = None;
        self.handshake = None;
        self.state.mark_idle();
        let next = Instant::now() + self.idle_timeout;
        self.deadline.as_mut().reset(next);
    }

    /// Established: an error once the connection has had no call open for the idle timeout.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.place.is_none() {
            return Ok(());
        }
        while self.deadline.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = if self.state.calls.load(Ordering::SeqCst) > 0 {
                now + self.idle_timeout
            } else {
                let until = self.state.idle_since() + self.idle_timeout;
                if until <= now {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no call open within the idle timeout",
                    ));
                }
                until
            };
            self.deadline.as_mut().reset(next);
        }
        Ok(())
    }

    /// Before any read or write: the deadlines, then TLS.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_handshake_deadline(cx)?;
        self.wire.poll_ready(cx, &self.state)
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            remote_addr: self.remote_addr,
            state: self.state.clone(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_ready(cx))?;
        // The rest of the handshake is read only once the connection has a place.
        ready!(this.poll_place(cx))?;
        this.check_idle(cx)?;
        let before = buf.filled().len();
        ready!(this.wire.io().poll_read(cx, buf))?;
        this.count_preface(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_ready(cx))?;
        self.wire.io().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_ready(cx))?;
        self.wire.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.wire {
            Wire::Plain(_) | Wire::Tls(_) => self.wire.io().poll_shutdown(cx),
            // Nothing to end cleanly before TLS is up: dropping closes the socket.
            Wire::Accepting(_) | Wire::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_ready(cx))?;
        self.wire.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.wire {
            Wire::Plain(io) => io.is_write_vectored(),
            Wire::Tls(io) => io.is_write_vectored(),
            Wire::Accepting(_) | Wire::Failed => true,
        }
    }
}

/// Counts the calls open on each connection (see [`Connection`]): a call is
/// open from its request until its response body ends or is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountCallsLayer;

impl<S> tower::Layer<S> for CountCallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountCalls { inner }
    }
}

/// The service [`CountCallsLayer`] wraps around the server's services.
#[derive(Clone, Debug)]
pub struct CountCalls<S> {
    inner: S,
}

/// One open call: counted from its creation to its drop.
struct OpenCall(Arc<ConnectionState>);

impl OpenCall {
    fn open(state: Arc<ConnectionState>) -> Self {
        state.calls.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        // Idle since now, written before the count drops: whoever sees no
        // call open also sees when the last one ended.
        self.0.mark_idle();
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for CountCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CallBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| OpenCall::open(info.state.clone()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CallBody { body, call }))
        })
    }
}

/// A response body that keeps its call open until it ends.
pub struct CallBody<B> {
    body: B,
    call: Option<OpenCall>,
}

impl<B> http_body::Body for CallBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.call = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const HANDSHAKE: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(300);
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// An HTTP/2 PING frame (8 bytes of payload).
    const PING: &[u8] = b"\0\0\x08\x06\0\0\0\0\0pingping";

    #[test]
    fn the_timeouts_default_to_seconds_and_minutes_and_must_be_positive() {
        use clap::Parser as _;
        let config = crate::config::Config::embedded_default();
        assert_eq!(config.transport.handshake_timeout, Duration::from_secs(5));
        assert_eq!(config.transport.idle_timeout, Duration::from_secs(300));
        for flag in ["--handshake-timeout", "--idle-timeout"] {
            let zero = crate::config::Config::try_parse_from(["streamwatch-server", flag, "0s"]);
            let error = zero.expect_err("a zero timeout is refused").to_string();
            assert!(
                error.contains(flag) && error.contains("longer than 0s"),
                "{error}"
            );
        }
    }

    fn limits(places: usize) -> Limits {
        Limits {
            handshakes: Arc::new(Semaphore::new(10)),
            places: Arc::new(Semaphore::new(places)),
            handshake_timeout: HANDSHAKE,
            idle_timeout: IDLE,
            tls: None,
        }
    }

    /// A client socket and the server's connection for it, accepted now.
    async fn accept(limits: &Limits) -> (TcpStream, Connection) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (io, remote_addr) = listener.accept().await.unwrap();
        let handshake = limits.handshakes.clone().try_acquire_owned().unwrap();
        (client, Connection::new(io, remote_addr, handshake, limits))
    }

    /// Sends `bytes` and reads them on the server's side.
    async fn deliver(client: &mut TcpStream, connection: &mut Connection, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
        let mut read = vec![0; bytes.len()];
        connection.read_exact(&mut read).await.unwrap();
        assert_eq!(read, bytes);
    }

    #[tokio::test(start_paused = true)]
    async fn part_of_the_preface_is_closed_at_the_handshake_deadline() {
        let limits = limits(10);
        let accepted = Instant::now();
        let (mut client, mut connection) = accept(&limits).await;
        deliver(&mut client, &mut connection, &PREFACE[..23]).await;

        let error = connection.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(accepted.elapsed() >= HANDSHAKE, "{:?}", accepted.elapsed());
        assert!(connection.place.is_none(), "it never took a place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_a_place_until_its_deadline() {
        let limits = limits(1);
        let (mut first_client, mut first) = accept(&limits).await;
        deliver(&mut first_client, &mut first, PREFACE).await;
        assert!(first.place.is_some());

        // Every place taken: the second waits, then gets the one the first frees.
        let (mut second_client, mut second) = accept(&limits).await;
        deliver(&mut second_client, &mut second, PREFACE).await;
        assert!(second.waiting.is_some());
        second_client.write_all(PING).await.unwrap();
        let waited = tokio::time::timeout(HANDSHAKE / 2, second.read(&mut [0; 64])).await;
        assert!(waited.is_err(), "nothing read without a place: {waited:?}");
        drop(first);
        let mut ping = [0; PING.len()];
        second.read_exact(&mut ping).await.unwrap();
        assert!(second.place.is_some());
        assert!(
            second.handshake.is_none(),
            "its handshake place is free again"
        );

        // The second holds the place now: a third waits until its deadline.
        let accepted = Instant::now();
        let (mut third_client, mut third) = accept(&limits).await;
        deliver(&mut third_client, &mut third, PREFACE).await;
        let error = third.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(accepted.elapsed() >= HANDSHAKE, "{:?}", accepted.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_call_keeps_its_connection_and_pings_do_not() {
        let limits = limits(10);
        let (mut client, mut connection) = accept(&limits).await;
        deliver(&mut client, &mut connection, PREFACE).await;

        // A call open for a day: the connection stays.
        let call = OpenCall::open(connection.state.clone());
        let day = Duration::from_secs(24 * 3600);
        let stayed = tokio::time::timeout(day, connection.read(&mut [0; 64])).await;
        assert!(stayed.is_err(), "closed with a call open: {stayed:?}");

        // Its end starts the idle timeout; a ping half-way does not restart it.
        drop(call);
        let idle_from = Instant::now();
        tokio::time::advance(IDLE / 2).await;
        deliver(&mut client, &mut connection, PING).await;
        let error = tokio::time::timeout(2 * IDLE, connection.read(&mut [0; 64]))
            .await
            .expect("closed")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        let idle = idle_from.elapsed();
        assert!(
            idle >= IDLE && idle < IDLE + Duration::from_secs(1),
            "closed {idle:?} after its last call"
        );
    }
}
