//! How a client reaches the server: the endpoint, the bearer token, TLS (a CA
//! certificate, the server's name, and a client certificate for servers that
//! ask for one), the connect and request timeouts, the backoff for resuming
//! event streams, and the W3C trace context each call carries. Turning these
//! options into a configured `Endpoint` and per-call metadata happens here and
//! nowhere else.

use std::{path::PathBuf, time::Duration};

use tonic::{
    Status,
    metadata::AsciiMetadataValue,
    service::Interceptor,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

use crate::{Error, events::Backoff};

/// How long connecting may take when no timeout is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a unary call may take when no timeout is given.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`crate::Client::connect_with`]. The defaults: no token,
/// plaintext for `http://` (TLS with the system's roots for `https://`),
/// [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_REQUEST_TIMEOUT`] and
/// [`Backoff::default`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub(crate) token: Option<String>,
    traceparent: Option<(String, String)>,
    ca_certificate: Option<PathBuf>,
    tls_domain: Option<String>,
    /// PEM certificate and key presented to servers that verify clients.
    client_identity: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) backoff: Backoff,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            token: None,
            traceparent: None,
            ca_certificate: None,
            tls_domain: None,
            client_identity: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            backoff: Backoff::default(),
        }
    }
}

impl ConnectOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sends this W3C trace context (`traceparent`, and `tracestate` unless
    /// empty) with every call, instead of the current OpenTelemetry
    /// context's (feature `otel`).
    pub fn trace_context(
        mut self,
        traceparent: impl Into<String>,
        tracestate: impl Into<String>,
    ) -> Self {
        self.traceparent = Some((traceparent.into(), tracestate.into()));
        self
    }

    /// Trusts the PEM certificate(s) in `path` (instead of the system's roots)
    /// for an `https://` endpoint.
    pub fn ca_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_certificate = Some(path.into());
        self
    }

    /// Expects the server's certificate to name `domain` (instead of the
    /// endpoint's host), for an `https://` endpoint.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }

    /// Presents the PEM certificate in `certificate` (with its PEM private
    /// key in `key`) to a server that authenticates clients by certificate,
    /// for an `https://` endpoint.
    pub fn client_certificate(
        mut self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_identity = Some((certificate.into(), key.into()));
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds each unary call, and the opening of each event stream (not
    /// the time the stream then stays open). `None`: no bound.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How event streams reconnect after the connection drops.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The configured endpoint for `endpoint`, without connecting: checks the
    /// address, reads the CA certificate and sets up TLS.
    pub fn endpoint(&self, endpoint: &str) -> Result<Endpoint, Error> {
        let invalid = |source| Error::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        };
        let configured = Endpoint::from_shared(endpoint.to_owned())
            .map_err(invalid)?
            .connect_timeout(self.connect_timeout);
        let https = configured.uri().scheme_str() == Some("https");
        let wants_tls = self.ca_certificate.is_some()
            || self.tls_domain.is_some()
            || self.client_identity.is_some();
        if !https {
            if wants_tls {
                return Err(Error::TlsNeedsHttps {
                    endpoint: endpoint.to_owned(),
                });
            }
            return Ok(configured);
        }
        let mut tls = ClientTlsConfig::new();
        match &self.ca_certificate {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| Error::ReadCaCertificate {
                    path: path.clone(),
                    source,
                })?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(Error::NotPemCertificate { path: path.clone() });
                }
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => tls = tls.with_native_roots(),
        }
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        if let Some((certificate, key)) = &self.client_identity {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| Error::ReadClientIdentity {
                    path: path.clone(),
                    source,
                })
            };
            let pem = read(certificate)?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(Error::NotPemCertificate {
                    path: certificate.clone(),
                });
            }
            tls = tls.identity(Identity::from_pem(pem, read(key)?));
        }
        configured.tls_config(tls).map_err(Error::Tls)
    }

    pub(crate) fn metadata(&self) -> Result<CallMetadata, Error> {
        let bearer = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| Error::InvalidToken)?,
            ),
            None => None,
        };
        let trace = match &self.traceparent {
            Some((parent, state)) => {
                if !is_traceparent(parent) {
                    return Err(Error::InvalidTraceContext("traceparent"));
                }
                let parent = parent
                    .parse()
                    .map_err(|_| Error::InvalidTraceContext("traceparent"))?;
                let state = match state.as_str() {
                    "" => None,
                    s => Some(
                        s.parse()
                            .map_err(|_| Error::InvalidTraceContext("tracestate"))?,
                    ),
                };
                Some((parent, state))
            }
            None => None,
        };
        Ok(CallMetadata { bearer, trace })
    }
}

/// Whether `s` is a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
pub fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// Adds `authorization: Bearer <token>` and the W3C trace context (the
/// configured one, else, with feature `otel`, the current OpenTelemetry
/// context's span) to every call.
#[derive(Clone)]
pub struct CallMetadata {
    bearer: Option<AsciiMetadataValue>,
    trace: Option<(AsciiMetadataValue, Option<AsciiMetadataValue>)>,
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let metadata = request.metadata_mut();
        if let Some(token) = &self.bearer {
            metadata.insert(streamwatch::AUTHORIZATION_HEADER, token.clone());
        }
        match &self.trace {
            Some((parent, state)) => {
                metadata.insert("traceparent", parent.clone());
                if let Some(state) = state {
                    metadata.insert("tracestate", state.clone());
                }
            }
            #[cfg(feature = "otel")]
            None => current_span_context(metadata),
            #[cfg(not(feature = "otel"))]
            None => {}
        }
        Ok(request)
    }
}

/// Adds the current OpenTelemetry context's span, if it has a valid one.
#[cfg(feature = "otel")]
fn current_span_context(metadata: &mut tonic::metadata::MetadataMap) {
    use opentelemetry::trace::TraceContextExt;

    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    let parent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    if let Ok(parent) = parent.parse() {
        metadata.insert("traceparent", parent);
    }
    let state = sc.trace_state().header();
    if !state.is_empty()
        && let Ok(state) = state.parse()
    {
        metadata.insert("tracestate", state);
    }
}
