//! TLS from the PEM files the flags name: the server's acceptor (rustls,
//! HTTP/2 only, client certificates verified against `--tls-client-ca` when
//! given) and the subject common name of a verified client certificate.
//! Every error names the file and the flag at fault ([`TlsError`]).
//!
//! It must never map a subject to a tenant: that is [`crate::auth`]'s job.

use std::{io, path::PathBuf, sync::Arc};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::{VerifierBuilderError, WebPkiClientVerifier},
    },
};

use super::{TransportArgs, install_crypto_provider};

/// The one application protocol the server speaks over TLS.
const ALPN_H2: &[u8] = b"h2";

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

pub(super) fn subject_of(certificates: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certificates?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_pem_is_refused_naming_it_and_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.crt");
        std::fs::write(&cert, "not a certificate").unwrap();
        let config = crate::config::Config::embedded_default();
        let args = TransportArgs {
            tls_cert: Some(cert.clone()),
            tls_key: Some(dir.path().join("server.key")),
            ..config.transport
        };
        let error = args.tls().err().expect("refused");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: the TLS certificate (--tls-cert) is not PEM",
                cert.display()
            )
        );
    }
}
