//! The `streamwatch` CLI over TLS with a client certificate (made in the
//! test with rcgen): `--ca-file`, `--tls-domain`, `--tls-cert` and
//! `--tls-key` reach a server started with `--tls-client-ca`, as the tenant
//! that lists the certificate's subject; without the certificate it fails.

use crate::cli::*;
use streamwatch_testkit::{pki::Pki, *};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_authenticates_with_a_client_certificate() {
    let pki = Pki::new("cli-test-ca");
    let server_pair = pki.server();
    let client_pair = pki.client("ops-laptop");
    let (client_cert, client_key) = (
        client_pair.cert.display().to_string(),
        client_pair.key.display().to_string(),
    );
    let ca_path = pki.ca.clone();

    let dir = DataDir::new();
    let mut config = dir.config(false);
    // The digest of a token nobody uses: this tenant signs in by certificate.
    config.tenants = Some(dir.write_tenants(
        "[[tenant]]\nid = \"ops\"\n\
         token_sha256 = [\"10cddafc055f819d71c5b078fe950e289a53a8b68b7e9a0904ca4e73c6eee361\"]\n\
         buckets = [\"ops-*\"]\nclient_subjects = [\"ops-laptop\"]\n",
    ));
    config.transport.tls_cert = Some(server_pair.cert);
    config.transport.tls_key = Some(server_pair.key);
    config.transport.tls_client_ca = Some(ca_path.clone());
    let server = TestServer::start_with(dir, config).await;
    let endpoint = format!("https://127.0.0.1:{}", server.addr.port());

    let cli = || {
        Cli::new()
            .env("STREAMWATCH_ENDPOINT", &endpoint)
            .env("STREAMWATCH_CA_FILE", &ca_path.display().to_string())
            .env("STREAMWATCH_TLS_DOMAIN", "localhost")
    };
    let started = cli()
        .run(&[
            "--tls-cert",
            &client_cert,
            "--tls-key",
            &client_key,
            "-o",
            "json",
            "start",
            "ops-lake",
            "--quiet-period",
            "1h",
        ])
        .await;
    assert_eq!(started.code, 0, "{started:?}");
    let listed = cli()
        .env("STREAMWATCH_CLIENT_CERT", &client_cert)
        .env("STREAMWATCH_CLIENT_KEY", &client_key)
        .run(&["list"])
        .await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains("ops-lake"), "{listed:?}");

    let refused = cli()
        .run(&["--connect-timeout", "5s", "--request-timeout", "5s", "list"])
        .await;
    assert_eq!(refused.code, 1, "no certificate, no entry: {refused:?}");
}
