//! TLS on the wire with certificates made in the test (rcgen): the project's
//! client speaks TLS to the server, a client that trusts another CA or
//! speaks plaintext gets nowhere, and with `--tls-client-ca` a client
//! certificate authenticates as the tenant that lists its subject CN.

use std::time::Duration;

use streamwatch_client::{Client, ConnectOptions, Error};
use streamwatch_testkit::{pki::Pki, *};

struct TlsServer {
    server: TestServer,
    pki: Pki,
}

/// A server with TLS (and client certificates from the same CA when
/// `client_ca`), the `acme` tenant listing the client subject `acme-batch`.
async fn tls_server(client_ca: bool) -> TlsServer {
    let pki = Pki::new("test-ca");
    let server_pair = pki.server();
    let dir = DataDir::new();
    let mut config = dir.config(true);
    config.tenants =
        Some(dir.write_tenants(&tenants_toml("client_subjects = [\"acme-batch\"]", "")));
    config.transport.tls_cert = Some(server_pair.cert);
    config.transport.tls_key = Some(server_pair.key);
    config.transport.tls_client_ca = client_ca.then(|| pki.ca.clone());
    let server = TestServer::start_with(dir, config).await;
    TlsServer { server, pki }
}

impl TlsServer {
    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.addr.port())
    }

    fn options(&self) -> ConnectOptions {
        ConnectOptions::new()
            .ca_certificate(&self.pki.ca)
            .tls_domain("localhost")
            .connect_timeout(Duration::from_secs(5))
    }

    async fn connect(&self, options: ConnectOptions) -> Result<Client, Error> {
        Client::connect_with(self.https(), options).await
    }
}

#[tokio::test]
async fn the_client_speaks_tls_to_the_server() {
    let tls = tls_server(false).await;
    let mut acme = tls
        .connect(tls.options().token(ACME_TOKEN))
        .await
        .expect("TLS connect");
    let watch = begin(
        &mut acme,
        start_request("acme-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await;
    assert_eq!(
        acme.get_watch(&watch.watch_id).await.unwrap().bucket,
        "acme-lake"
    );
}

#[tokio::test]
async fn plaintext_to_a_tls_port_fails() {
    let tls = tls_server(false).await;
    let plaintext = Client::connect_with(
        tls.server.endpoint(),
        ConnectOptions::new()
            .token(ACME_TOKEN)
            .connect_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5))),
    )
    .await;
    let err = match plaintext {
        Err(e) => e,
        Ok(mut client) => client
            .list_watches(Default::default())
            .await
            .expect_err("a plaintext call to a TLS port must fail"),
    };
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_cannot_connect() {
    let tls = tls_server(false).await;
    let other = Pki::new("other-ca");
    let result = Client::connect_with(
        tls.https(),
        ConnectOptions::new()
            .ca_certificate(&other.ca)
            .tls_domain("localhost")
            .token(ACME_TOKEN)
            .connect_timeout(Duration::from_secs(5)),
    )
    .await;
    let err = result
        .err()
        .expect("the server's certificate is not trusted");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}

#[tokio::test]
async fn a_client_certificate_authenticates_as_the_tenant_that_lists_its_subject() {
    let tls = tls_server(true).await;
    let batch = tls.pki.client("acme-batch");
    let mut acme = tls
        .connect(tls.options().client_certificate(&batch.cert, &batch.key))
        .await
        .expect("mutual TLS connect");
    let id = begin(
        &mut acme,
        start_request("acme-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let denied = acme
        .start_watch(start_request(
            "globex-lake",
            "",
            quiet_period(Duration::from_secs(1)),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        tonic::Code::PermissionDenied,
        "acme's buckets only"
    );

    // A certificate no tenant lists still needs a token; with globex's it is globex.
    let unlisted = tls.pki.client("reporting");
    let mut globex = tls
        .connect(
            tls.options()
                .client_certificate(&unlisted.cert, &unlisted.key)
                .token(GLOBEX_TOKEN),
        )
        .await
        .unwrap();
    assert_eq!(
        globex.get_watch(&id).await.unwrap_err().code(),
        tonic::Code::NotFound,
        "globex sees nothing of acme's"
    );
    assert!(
        globex
            .list_watches(Default::default())
            .await
            .unwrap()
            .watches
            .is_empty()
    );
    let mut anonymous = tls
        .connect(
            tls.options()
                .client_certificate(&unlisted.cert, &unlisted.key),
        )
        .await
        .unwrap();
    let refused = anonymous
        .list_watches(Default::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");

    // A token of another tenant does not widen what a certificate may do.
    let mut mixed = tls
        .connect(
            tls.options()
                .client_certificate(&batch.cert, &batch.key)
                .token(GLOBEX_TOKEN),
        )
        .await
        .unwrap();
    let refused = mixed.list_watches(Default::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    assert!(refused.message().contains("different tenants"), "{refused}");

    let listed = acme.list_watches(Default::default()).await.unwrap().watches;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].watch_id, id);
}

/// A call over a connection set up with `options`; the error of whichever
/// step fails (tonic may finish the TLS handshake lazily, at the first call).
async fn first_call(tls: &TlsServer, options: ConnectOptions) -> Result<(), Error> {
    let mut client = tls.connect(options).await?;
    client.list_watches(Default::default()).await.map(|_| ())
}

#[tokio::test]
async fn with_a_client_ca_a_client_without_a_certificate_from_it_is_refused() {
    let tls = tls_server(true).await;
    let options = || {
        tls.options()
            .token(ACME_TOKEN)
            .request_timeout(Some(Duration::from_secs(5)))
    };
    let without = first_call(&tls, options()).await;
    assert!(
        without.is_err(),
        "a token alone is not enough with --tls-client-ca"
    );

    let other = Pki::new("other-ca");
    let forged = other.client("acme-batch");
    let forged = first_call(
        &tls,
        options().client_certificate(&forged.cert, &forged.key),
    )
    .await;
    assert!(
        forged.is_err(),
        "a certificate with the right subject from another CA is refused"
    );

    let batch = tls.pki.client("acme-batch");
    first_call(&tls, options().client_certificate(&batch.cert, &batch.key))
        .await
        .expect("the CA's certificate is accepted");
}

/// A certificate that cannot be read fails the start after the store and the
/// observer are up: the binary must still exit, with the error naming the
/// file, not wait forever for the observer's thread.
#[tokio::test]
async fn a_server_whose_certificate_is_unreadable_exits_naming_it() {
    let dir = DataDir::new();
    let bad = dir.path().join("not-a-certificate.pem");
    std::fs::write(&bad, "not PEM").expect("write file");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamwatch-server"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.db())
        .arg("--tls-cert")
        .arg(&bad)
        .arg("--tls-key")
        .arg(&bad)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(START_LIMIT, output)
        .await
        .expect("the server exits instead of hanging")
        .expect("run the server");
    assert!(!output.status.success(), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not-a-certificate.pem") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
}
