//! Connect options: the token, TLS (CA certificate, server name) and the
//! endpoint are checked before connecting, with an error naming what is
//! wrong. The server serves plaintext only, so TLS is proven as far as
//! configuration and a handshake that a plaintext server refuses.

use std::{path::PathBuf, time::Duration};

use streamwatch_client::{Client, ConnectOptions, Error};
use streamwatch_testkit::*;

fn ca() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ca.pem")
}

#[test]
fn tls_options_need_an_https_endpoint() {
    let options = ConnectOptions::new().ca_certificate(ca());
    assert!(matches!(
        options.endpoint("http://127.0.0.1:50051"),
        Err(Error::TlsNeedsHttps { .. })
    ));
    let options = ConnectOptions::new().tls_domain("streamwatch.internal");
    assert!(matches!(
        options.endpoint("http://127.0.0.1:50051"),
        Err(Error::TlsNeedsHttps { .. })
    ));
}

#[test]
fn a_ca_certificate_must_exist_and_be_pem() {
    let missing = ConnectOptions::new().ca_certificate("/nonexistent/ca.pem");
    let error = missing.endpoint("https://127.0.0.1:50051").unwrap_err();
    assert!(matches!(error, Error::ReadCaCertificate { .. }), "{error}");
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");

    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "not a certificate").unwrap();
    let error = ConnectOptions::new()
        .ca_certificate(not_pem.path())
        .endpoint("https://127.0.0.1:50051")
        .unwrap_err();
    assert!(matches!(error, Error::NotPemCertificate { .. }), "{error}");
}

#[test]
fn an_https_endpoint_with_a_ca_and_domain_is_configured() {
    let endpoint = ConnectOptions::new()
        .ca_certificate(ca())
        .tls_domain("streamwatch.internal")
        .endpoint("https://127.0.0.1:50051")
        .expect("a configured TLS endpoint");
    assert_eq!(endpoint.uri().scheme_str(), Some("https"));
    // The system's roots when no CA is given.
    ConnectOptions::new()
        .endpoint("https://streamwatch.example:443")
        .expect("TLS with the system's roots");
}

#[tokio::test]
async fn invalid_endpoints_and_tokens_are_refused() {
    assert!(matches!(
        ConnectOptions::new().endpoint("not a url"),
        Err(Error::InvalidEndpoint { .. })
    ));
    let error = Client::connect_lazy(
        "http://127.0.0.1:1",
        ConnectOptions::new().token("line\nbreak"),
    )
    .err()
    .expect("a token with a newline is refused");
    assert!(matches!(error, Error::InvalidToken));
}

#[tokio::test]
async fn tls_to_a_plaintext_server_fails_the_handshake() {
    let server = TestServer::start().await;
    let https = format!("https://{}", server.addr);
    let options = ConnectOptions::new()
        .ca_certificate(ca())
        .tls_domain("streamwatch.internal")
        .connect_timeout(Duration::from_secs(5));
    let error = Client::connect_with(https, options)
        .await
        .err()
        .expect("no TLS server there");
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    // The same server over plaintext answers.
    server
        .client()
        .await
        .list_watches(Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_closed_port_is_a_retryable_connect_error() {
    let closed = ClosedPort::new();
    let error = Client::connect(closed.endpoint())
        .await
        .err()
        .expect("nothing listens");
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(error.is_retryable());
    assert_eq!(error.code(), tonic::Code::Unavailable);
}
