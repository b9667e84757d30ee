//! The `streamwatch` CLI over TLS with a client certificate (made in the
//! test with rcgen): `--ca-file`, `--tls-domain`, `--tls-cert` and
//! `--tls-key` reach a server started with `--tls-client-ca`, as the tenant
//! that lists the certificate's subject; without the certificate it fails.

use crate::support::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use streamwatch_server::{clock::Clock, config::Config};

/// Writes a PEM certificate and key signed by `issuer` into `dir`.
fn issue(
    dir: &std::path::Path,
    name: &str,
    mut params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_authenticates_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cli-test-ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_params.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (server_cert, server_key) = issue(dir.path(), "localhost", server_params, &issuer);
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (client_cert, client_key) = issue(dir.path(), "ops-laptop", client_params, &issuer);

    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        // The digest of a token nobody uses: this tenant signs in by certificate.
        "[[tenant]]\nid = \"ops\"\n\
         token_sha256 = [\"10cddafc055f819d71c5b078fe950e289a53a8b68b7e9a0904ca4e73c6eee361\"]\n\
         buckets = [\"ops-*\"]\nclient_subjects = [\"ops-laptop\"]\n",
    )
    .unwrap();
    let mut config = Config::embedded_default();
    config.data = dir.path().join("streamwatch.db");
    config.tenants = Some(tenants);
    config.transport.tls_cert = Some(server_cert.into());
    config.transport.tls_key = Some(server_key.into());
    config.transport.tls_client_ca = Some(ca_path.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(streamwatch_server::serve_with_clock(
        config,
        listener,
        Clock::new(),
        async move {
            let _ = stopped.await;
        },
    ));

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
