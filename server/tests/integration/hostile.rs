//! Clients that try to make the server hold memory or places: connections
//! that never finish their handshake (closed at the handshake deadline, and
//! never in the way of a client that does), connections with no call open
//! (closed after the idle timeout, while one with an open stream stays), and
//! a notification document with 100,000 records (rejected whole with a
//! reason, nothing of it applied). A subscriber that stops reading is
//! covered in `hub`'s unit tests.

use std::{sync::Arc, time::Duration};

use streamwatch_client::{Client, ConnectOptions};
use streamwatch_testkit::{pki::Pki, *};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

const LIMIT: Duration = Duration::from_secs(20);
/// The handshake timeout of these tests' servers.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// The idle timeout of these tests' servers.
const IDLE: Duration = Duration::from_secs(1);
/// How late past a deadline the server may close a connection (a loaded machine).
const SLACK: Duration = Duration::from_secs(5);
/// The HTTP/2 client preface and an empty SETTINGS frame: a handshake, and nothing more.
const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// A plaintext server with `places` connection places and these tests' timeouts.
async fn server_with(places: usize, tls: Option<&Pki>) -> TestServer {
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.transport.max_connections = places;
    config.transport.handshake_timeout = HANDSHAKE;
    config.transport.idle_timeout = IDLE;
    if let Some(pki) = tls {
        let pair = pki.server();
        config.transport.tls_cert = Some(pair.cert);
        config.transport.tls_key = Some(pair.key);
    }
    TestServer::start_with(dir, config).await
}

/// Waits until the server closes `socket` (end of stream, or a reset), and
/// fails if that is not before `deadline`. Whatever the server sent first
/// (its HTTP/2 settings) is read and dropped.
async fn closed_by_server(socket: &mut (impl AsyncReadExt + Unpin), deadline: Instant, what: &str) {
    let mut sink = Vec::new();
    let read = tokio::time::timeout_at(deadline, socket.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "{what} was still open at its deadline");
}

#[tokio::test]
async fn silent_connections_neither_keep_clients_out_nor_stay_open() {
    let server = server_with(10, None).await;

    // Twice as many clients as there are places connect and never send a byte.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let opened = Instant::now();

    let options = ConnectOptions::new()
        .connect_timeout(LIMIT)
        .request_timeout(Some(LIMIT));
    let mut client = Client::connect_with(server.endpoint(), options)
        .await
        .expect("a client connects while silent ones hold every place they can");
    client
        .list_watches(Default::default())
        .await
        .expect("and is served");
    let waited = opened.elapsed();
    eprintln!(
        "served after {waited:?} with {} silent connections open",
        silent.len()
    );
    assert!(
        waited < HANDSHAKE,
        "served while the silent connections were still open, not after they were closed: {waited:?}"
    );

    for (i, socket) in silent.iter_mut().enumerate() {
        closed_by_server(
            socket,
            opened + HANDSHAKE + SLACK,
            &format!("silent connection {i}"),
        )
        .await;
    }
    client
        .list_watches(Default::default())
        .await
        .expect("the served client's connection stays");
}

#[tokio::test]
async fn connections_in_their_handshake_are_bounded_and_make_room_at_the_deadline() {
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.transport.max_handshakes = 2;
    config.transport.handshake_timeout = HANDSHAKE;
    let server = TestServer::start_with(dir, config).await;

    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..2 {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        // Accepted: the server's HTTP/2 settings arrive.
        let read = tokio::time::timeout(LIMIT, socket.read(&mut [0; 64])).await;
        assert!(matches!(read, Ok(Ok(n)) if n > 0), "{read:?}");
        silent.push(socket);
    }

    // Both handshake places are taken: the next client waits in the listen
    // backlog until the deadline closes a silent connection.
    let options = ConnectOptions::new()
        .connect_timeout(LIMIT)
        .request_timeout(Some(LIMIT));
    let mut client = Client::connect_with(server.endpoint(), options)
        .await
        .expect("served once a place frees");
    client.list_watches(Default::default()).await.unwrap();
    let waited = opened.elapsed();
    assert!(
        waited >= HANDSHAKE,
        "a client past the bound was accepted before a place freed: {waited:?}"
    );
    for (i, socket) in silent.iter_mut().enumerate() {
        closed_by_server(
            socket,
            opened + HANDSHAKE + SLACK,
            &format!("silent connection {i}"),
        )
        .await;
    }
}

#[tokio::test]
async fn connections_that_stop_inside_tls_are_closed_at_the_handshake_deadline() {
    let pki = Pki::new("test-ca");
    let server = server_with(10, Some(&pki)).await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();

    // A client that finishes TLS and then sends nothing.
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");

    let deadline = opened + HANDSHAKE + SLACK;
    closed_by_server(&mut silent, deadline, "a connection silent before TLS").await;
    closed_by_server(&mut tls, deadline, "a connection silent after TLS").await;
}

#[tokio::test]
async fn a_connection_without_calls_is_closed_and_one_with_an_open_stream_stays() {
    let server = server_with(10, None).await;
    let mut subscriber = server.client().await;
    let id = begin(
        &mut subscriber,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let mut stream = subscriber.events(&id, 0).await.expect("StreamWatchEvents");
    read_until(&mut stream, LIMIT, |e| kind(e) == "started").await;

    // A client that does its HTTP/2 handshake and opens no call, after the
    // subscriber's last new call: the subscriber's connection has been
    // without a new call for longer when this one is closed.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let handshaken = Instant::now();
    closed_by_server(
        &mut idle,
        handshaken + IDLE + SLACK,
        "a connection with no call",
    )
    .await;

    // The stream still delivers, on its connection.
    let mut producer = server.client().await;
    producer
        .ingest_s3_events(vec![created("data-lake", &["part-0"])])
        .await
        .unwrap();
    // read_until fails the test if the stream broke.
    read_until(&mut stream, LIMIT, |e| kind(e) == "progress").await;
    assert_eq!(subscriber.get_watch(&id).await.unwrap().object_count, 1);
}

#[tokio::test]
async fn a_document_of_100_000_records_is_rejected_whole() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let records: Vec<String> = (0..100_000)
        .map(|i| minimal_created("data-lake", &format!("k{i}")))
        .collect();
    let huge = records_document(&records);
    let report = client
        .ingest_s3_events(vec![huge, created("data-lake", &["good"])])
        .await
        .expect("the call is answered; the document is rejected");
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert_eq!(report.rejected[0].index, 0);
    let reason = &report.rejected[0].reason;
    assert!(
        reason.contains("bytes") && reason.contains("at most"),
        "the reason names the limit: {reason}"
    );
    assert_eq!(
        (report.records, report.counted),
        (1, 1),
        "only the good document"
    );
    assert_eq!(
        client.get_watch(&id).await.unwrap().object_count,
        1,
        "nothing of the huge document was applied"
    );

    // The same records in documents small enough to parse: the call is refused whole.
    let documents: Vec<String> = records.chunks(1000).map(records_document).collect();
    let refused = client.ingest_s3_events(documents).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused.message().contains("nothing was recorded"),
        "{refused}"
    );
    assert_eq!(client.get_watch(&id).await.unwrap().object_count, 1);
}
