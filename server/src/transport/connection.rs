//! One client connection ([`Connection`]): plain TCP or TLS under it, the
//! handshake deadline, a place under `--max-connections` once the HTTP/2
//! client preface is in, and the end of a connection that has had no call
//! open for the idle timeout. What the services learn of it travels as
//! [`ConnectionInfo`].
//!
//! It must never close a connection as idle while a call is open on it.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_util::sync::PollSemaphore;
use tonic::transport::server::Connected;

use super::{Limits, tls::subject_of};

/// Length of the HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const CLIENT_PREFACE_BYTES: usize = 24;

/// What the services learn of the connection a call came on (a request extension).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    pub(super) state: Arc<ConnectionState>,
}

/// What a connection and the calls on it share.
#[derive(Debug)]
pub(super) struct ConnectionState {
    /// When the connection was accepted.
    epoch: Instant,
    /// Calls (HTTP/2 streams) open on the connection.
    pub(super) calls: AtomicUsize,
    /// When the last call ended (or the handshake did), in nanoseconds after `epoch`.
    idle_since: AtomicU64,
    /// The subject CN of the client's verified certificate, once TLS is done.
    pub(super) subject: OnceLock<String>,
}

impl ConnectionState {
    pub(super) fn mark_idle(&self) {
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
    pub(super) fn new(
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

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::transport::calls::OpenCall;

    const HANDSHAKE: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(300);
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// An HTTP/2 PING frame (8 bytes of payload).
    const PING: &[u8] = b"\0\0\x08\x06\0\0\0\0\0pingping";

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
