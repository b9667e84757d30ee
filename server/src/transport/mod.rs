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
//!
//! This file holds the flags, the server builder and the accept loop
//! ([`incoming`]). Its parts: `tls` (the acceptor from the PEM files, and the
//! subject of a client certificate), `connection` ([`Connection`]: one
//! client's bytes under its deadlines and places), `calls` (counting the
//! calls open on a connection).

mod calls;
mod connection;
mod tls;

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use futures::Stream;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

pub use self::{
    calls::{CallBody, CountCalls, CountCallsLayer},
    connection::{Connection, ConnectionInfo},
    tls::TlsError,
};

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

/// A duration above zero, as a clap value parser: its error is text clap
/// prints after the flag.
fn positive_duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

/// Installs aws-lc-rs (the one TLS provider this process links; the AWS
/// SDK requires it) as the process's default, which the server's acceptor
/// and the webhook clients take. Err when one is already installed (a
/// second server in this process): fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
