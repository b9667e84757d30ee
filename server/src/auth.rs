//! Who is calling: the tenants file (tenant ids, SHA-256 digests of their
//! bearer tokens, the client-certificate subjects that stand for them, the
//! bucket patterns each may watch, their quotas) and the interceptor layer
//! that turns `authorization: Bearer <token>` or a verified client
//! certificate into a [`TenantId`] in the request's extensions. Tokens are
//! compared as digests in constant time; a token itself is never stored or
//! logged. [`LiveTenants`] holds the current table and swaps it whole when the
//! file is reloaded (SIGHUP), so a revoked credential is refused at once.
//! Each tenant may also list where its watches may deliver callbacks
//! (`callback_urls` patterns) and the secrets its webhooks are signed with
//! (`callback_secrets`, by name); see [`Callbacks`]. Secrets never leave this
//! module except to sign a body, and are never printed.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wildmatch::WildMatch;

use crate::{
    error::Error,
    quota::{Quotas, QuotasError},
    watch::{NotifyTarget, TenantId},
};

/// The tenant of a server started without a tenants file.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    id: String,
    /// Hex SHA-256 digests of the tenant's bearer tokens.
    token_sha256: Vec<String>,
    /// Bucket name patterns (`*` and `?` wildcards) the tenant may watch and ingest for.
    buckets: Vec<String>,
    /// Patterns (`*` and `?` wildcards) of the notify targets its watches may
    /// name: webhook URLs, SQS queue URLs, SNS topic ARNs.
    #[serde(default)]
    callback_urls: Vec<String>,
    /// Webhook signing secrets by name (a watch's `secret_ref`).
    #[serde(default)]
    callback_secrets: std::collections::BTreeMap<String, String>,
    /// Subject common names (CN) of client certificates that authenticate as this tenant.
    #[serde(default)]
    client_subjects: Vec<String>,
    #[serde(default)]
    quotas: Quotas,
    /// Its IngestS3Events calls relay the buckets' real notifications (a
    /// Lambda subscribed to the bucket, say): they count into every tenant
    /// allowed the bucket, not only its own watches.
    #[serde(default)]
    forwarder: bool,
}

struct Tenant {
    id: TenantId,
    token_digests: Vec<[u8; 32]>,
    buckets: Vec<WildMatch>,
    callbacks: Callbacks,
    client_subjects: Vec<String>,
    quotas: Quotas,
    forwarder: bool,
}

/// What authenticated a call, so that a reload can tell whether it still would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// No tenants file: the single tenant, no credential.
    Open,
    /// The SHA-256 digest of a bearer token (never the token itself).
    Token([u8; 32]),
    /// The subject common name of a verified client certificate.
    Certificate(String),
}

/// The tenants a server knows.
pub struct Tenants {
    tenants: Vec<Tenant>,
    /// No tenants file: one tenant, no tokens (loopback only).
    open: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {error}")]
    Invalid {
        path: String,
        error: TenantsFileError,
    },
}

/// What is wrong in a tenants file. Messages name the line or the field
/// (`tenant[1].buckets`), never the offending text: it may hold secrets.
#[derive(Debug, thiserror::Error)]
pub enum TenantsFileError {
    /// Not TOML, or not the file's shape (an unknown field, a wrong type).
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// As [`Self::Syntax`], where the parser names no place.
    #[error("{0}")]
    Shape(String),
    /// A tenant id that is not a valid name.
    #[error("{0}")]
    InvalidId(Error),
    #[error("tenant[{index}].id: {id} appears twice")]
    DuplicateId { index: usize, id: TenantId },
    #[error("tenant[{index}].token_sha256[{token}]: not a hex SHA-256 digest (64 hex digits)")]
    TokenDigest { index: usize, token: usize },
    #[error("tenant[{index}].token_sha256: a tenant needs at least one token")]
    NoToken { index: usize },
    #[error("tenant[{index}].buckets: a tenant needs at least one bucket pattern")]
    NoBucket { index: usize },
    #[error(
        "tenant[{index}].callback_secrets: name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
    )]
    SecretName { index: usize, name: String },
    #[error(
        "tenant[{index}].callback_secrets.{name}: must be at least {MIN_CALLBACK_SECRET_BYTES} bytes"
    )]
    ShortSecret { index: usize, name: String },
    #[error("tenant[{index}].client_subjects[{subject}]: is empty")]
    EmptySubject { index: usize, subject: usize },
    /// A certificate subject another tenant already lists.
    #[error(
        "tenant[{index}].client_subjects[{subject}]: {name:?} already stands for tenant {other}"
    )]
    SharedSubject {
        index: usize,
        subject: usize,
        name: String,
        other: TenantId,
    },
    #[error(transparent)]
    Quotas(#[from] QuotasError),
    #[error("no [[tenant]] entries")]
    NoTenants,
}

impl Tenants {
    /// One tenant, `default`, allowed every bucket, with no token and no
    /// quota (quotas keep tenants apart; a tenants file gives the defaults).
    pub fn open() -> Self {
        let id = TenantId::parse("tenant", DEFAULT_TENANT)
            .unwrap_or_else(|_| unreachable!("constant is valid"));
        Self {
            tenants: vec![Tenant {
                id,
                token_digests: Vec::new(),
                buckets: vec![WildMatch::new("*")],
                callbacks: Callbacks::default(),
                client_subjects: Vec::new(),
                quotas: Quotas::UNLIMITED,
                forwarder: false,
            }],
            open: true,
        }
    }

    pub fn load(path: &Path) -> Result<Self, TenantsError> {
        let shown = path.display().to_string();
        let raw = std::fs::read_to_string(path).map_err(|source| TenantsError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&raw).map_err(|error| TenantsError::Invalid { path: shown, error })
    }

    pub fn parse(raw: &str) -> Result<Self, TenantsFileError> {
        // The message and the line, not the offending text: it may hold secrets.
        let file: TenantsFile = toml::from_str(raw).map_err(|e| match e.span() {
            Some(span) => TenantsFileError::Syntax {
                line: raw.as_bytes()[..span.start.min(raw.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1,
                message: e.message().to_owned(),
            },
            None => TenantsFileError::Shape(e.message().to_owned()),
        })?;
        let mut tenants: Vec<Tenant> = Vec::new();
        for (i, entry) in file.tenant.into_iter().enumerate() {
            let id = TenantId::parse(&format!("tenant[{i}].id"), &entry.id)
                .map_err(TenantsFileError::InvalidId)?;
            if tenants.iter().any(|t| t.id == id) {
                return Err(TenantsFileError::DuplicateId { index: i, id });
            }
            let mut token_digests = Vec::new();
            for (j, hex_digest) in entry.token_sha256.iter().enumerate() {
                let bytes = hex::decode(hex_digest.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                let digest = bytes.ok_or(TenantsFileError::TokenDigest { index: i, token: j })?;
                token_digests.push(digest);
            }
            if token_digests.is_empty() {
                return Err(TenantsFileError::NoToken { index: i });
            }
            if entry.buckets.is_empty() {
                return Err(TenantsFileError::NoBucket { index: i });
            }
            let buckets = entry.buckets.iter().map(|p| WildMatch::new(p)).collect();
            let callbacks = Callbacks::parse(i, &entry.callback_urls, entry.callback_secrets)?;
            for (j, subject) in entry.client_subjects.iter().enumerate() {
                if subject.trim().is_empty() {
                    return Err(TenantsFileError::EmptySubject {
                        index: i,
                        subject: j,
                    });
                }
                if let Some(other) = tenants.iter().find(|t| t.client_subjects.contains(subject)) {
                    return Err(TenantsFileError::SharedSubject {
                        index: i,
                        subject: j,
                        name: subject.clone(),
                        other: other.id.clone(),
                    });
                }
            }
            entry.quotas.validate(&format!("tenant[{i}].quotas"))?;
            tenants.push(Tenant {
                id,
                token_digests,
                buckets,
                callbacks,
                client_subjects: entry.client_subjects,
                quotas: entry.quotas,
                forwarder: entry.forwarder,
            });
        }
        if tenants.is_empty() {
            return Err(TenantsFileError::NoTenants);
        }
        Ok(Self {
            tenants,
            open: false,
        })
    }

    /// How many tenants the table holds.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Whether this is the token-less single-tenant mode.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Finds the tenant whose token is in `authorization`.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<TenantId, Error> {
        self.identify(authorization, None).map(|(tenant, _)| tenant)
    }

    /// Finds the caller's tenant from its bearer token and the subject CN of
    /// its verified client certificate: a certificate whose subject a tenant
    /// lists is enough; a token, if also sent, must name the same tenant.
    pub fn identify(
        &self,
        authorization: Option<&str>,
        certificate_subject: Option<&str>,
    ) -> Result<(TenantId, Credential), Error> {
        if self.open {
            return Ok((self.tenants[0].id.clone(), Credential::Open));
        }
        let by_certificate = certificate_subject.and_then(|subject| {
            self.tenant_for_subject(subject)
                .map(|id| (id, Credential::Certificate(subject.to_owned())))
        });
        let by_token = match authorization {
            Some(header) => Some(self.tenant_for_token(header)?),
            None => None,
        };
        match (by_certificate, by_token) {
            (Some(cert), None) => Ok(cert),
            (None, Some(token)) => Ok(token),
            (Some(cert), Some(token)) if cert.0 == token.0 => Ok(cert),
            (Some(_), Some(_)) => Err(Error::Unauthenticated(
                "the bearer token and the client certificate belong to different tenants".into(),
            )),
            (None, None) => Err(Error::Unauthenticated(match certificate_subject {
                Some(_) => "the client certificate's subject is not a tenant's; send authorization: Bearer <token>".into(),
                None => "missing authorization: Bearer <token>".into(),
            })),
        }
    }

    fn tenant_for_token(&self, header: &str) -> Result<(TenantId, Credential), Error> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Error::Unauthenticated("authorization must be `Bearer <token>`".into())
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tenant_for_digest(&digest)
            .map(|id| (id, Credential::Token(digest)))
            .ok_or_else(|| Error::Unauthenticated("unknown token".into()))
    }

    fn tenant_for_digest(&self, digest: &[u8; 32]) -> Option<TenantId> {
        // Compare against every digest, so timing does not tell which tenant came close.
        let mut found = None;
        for tenant in &self.tenants {
            for known in &tenant.token_digests {
                if bool::from(known.ct_eq(digest)) {
                    found = Some(&tenant.id);
                }
            }
        }
        found.cloned()
    }

    fn tenant_for_subject(&self, subject: &str) -> Option<TenantId> {
        self.tenants
            .iter()
            .find(|t| t.client_subjects.iter().any(|s| s == subject))
            .map(|t| t.id.clone())
    }

    /// Whether `credential` still authenticates as `tenant` in this table.
    pub fn admits(&self, credential: &Credential, tenant: &TenantId) -> bool {
        let found = match credential {
            Credential::Open => return self.open,
            Credential::Token(digest) => self.tenant_for_digest(digest),
            Credential::Certificate(subject) => self.tenant_for_subject(subject),
        };
        found.as_ref() == Some(tenant)
    }

    /// `tenant`'s quotas (the defaults for a tenant the table does not know).
    pub fn quotas(&self, tenant: &TenantId) -> Quotas {
        self.tenants
            .iter()
            .find(|t| &t.id == tenant)
            .map(|t| t.quotas)
            .unwrap_or_default()
    }

    /// Whether `tenant`'s IngestS3Events calls count into every tenant
    /// allowed the bucket (a `forwarder`), not only into its own watches.
    pub fn forwards(&self, tenant: &TenantId) -> bool {
        self.tenants.iter().any(|t| &t.id == tenant && t.forwarder)
    }

    /// Whether `tenant` may watch (and ingest notifications for) `bucket`.
    pub fn allows(&self, tenant: &TenantId, bucket: &str) -> bool {
        self.tenants
            .iter()
            .any(|t| &t.id == tenant && t.buckets.iter().any(|p| p.matches(bucket)))
    }
}

/// Shortest callback secret accepted (bytes).
pub const MIN_CALLBACK_SECRET_BYTES: usize = 16;

/// A webhook signing secret. Prints as `<redacted>`.
pub struct CallbackSecret(Vec<u8>);

impl CallbackSecret {
    /// The key bytes, for signing only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for CallbackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One tenant's callback allowances.
#[derive(Default)]
pub struct Callbacks {
    /// A target is allowed when it matches one: URLs part by part, anything
    /// else (SNS topic ARNs) as a whole.
    patterns: Vec<(WildMatch, Option<UrlPattern>)>,
    secrets: std::collections::BTreeMap<String, CallbackSecret>,
}

/// A pattern split like a URL: `scheme://host[:port]/path`, each part matched on its own.
struct UrlPattern {
    scheme: String,
    host: WildMatch,
    /// The host pattern has no wildcard.
    exact_host: bool,
    port: Option<WildMatch>,
    path: WildMatch,
}

impl UrlPattern {
    fn parse(raw: &str) -> Option<Self> {
        let (scheme, rest) = raw.split_once("://")?;
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            host: WildMatch::new(&host.to_ascii_lowercase()),
            exact_host: !host.contains(['*', '?']),
            port: port.map(WildMatch::new),
            path: WildMatch::new(if path.is_empty() { "/" } else { path }),
        })
    }

    /// A wildcard never crosses from one part into another: `https://*.a.example/*`
    /// does not match `https://evil.example/.a.example/`.
    fn matches(&self, url: &url::Url) -> bool {
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port_ok = match (&self.port, url.port()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(p), _) => url
                .port_or_known_default()
                .is_some_and(|port| p.matches(&port.to_string())),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        self.scheme == url.scheme()
            && self.host.matches(host)
            && port_ok
            && self.path.matches(&path)
            && url.username().is_empty()
            && url.password().is_none()
    }
}

impl Callbacks {
    fn parse(
        i: usize,
        patterns: &[String],
        secrets: std::collections::BTreeMap<String, String>,
    ) -> Result<Self, TenantsFileError> {
        let mut checked = std::collections::BTreeMap::new();
        for (name, secret) in secrets {
            if TenantId::parse("name", &name).is_err() {
                return Err(TenantsFileError::SecretName { index: i, name });
            }
            if secret.len() < MIN_CALLBACK_SECRET_BYTES {
                return Err(TenantsFileError::ShortSecret { index: i, name });
            }
            checked.insert(name, CallbackSecret(secret.into_bytes()));
        }
        Ok(Self {
            patterns: patterns
                .iter()
                .map(|p| (WildMatch::new(p), UrlPattern::parse(p)))
                .collect(),
            secrets: checked,
        })
    }

    /// Whether `target` may be named by a watch (`field` names it in errors).
    fn check(&self, field: &str, target: &NotifyTarget) -> Result<(), Error> {
        let (field, address) = match target {
            NotifyTarget::Webhook { url, .. } => (format!("{field}.webhook.url"), url.as_str()),
            NotifyTarget::Sqs { queue_url } => {
                (format!("{field}.sqs.queue_url"), queue_url.as_str())
            }
            NotifyTarget::Sns { topic_arn } => {
                (format!("{field}.sns.topic_arn"), topic_arn.as_str())
            }
            // Not a callback: `Tenants::check_notify_target` checks its bucket.
            NotifyTarget::Manifest { bucket, .. } => {
                (format!("{field}.manifest.bucket"), bucket.as_str())
            }
        };
        if let NotifyTarget::Webhook { url, .. } = target {
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            if !matches!(scheme.as_deref(), Some("http" | "https")) {
                return Err(Error::invalid(&field, "must be an http or https URL"));
            }
        }
        if !self.allows(address) {
            return Err(Error::invalid(
                &field,
                "does not match any of the tenant's callback_urls patterns",
            ));
        }
        if let NotifyTarget::Webhook { secret_ref, .. } = target
            && !self.secrets.contains_key(secret_ref)
        {
            return Err(Error::invalid(
                &field.replace(".url", ".secret_ref"),
                format!("{secret_ref:?} is not one of the tenant's callback_secrets"),
            ));
        }
        Ok(())
    }

    fn allows(&self, address: &str) -> bool {
        let url = address
            .contains("://")
            .then(|| url::Url::parse(address).ok())
            .flatten();
        self.patterns
            .iter()
            .any(|(whole, parts)| match (&url, parts) {
                (Some(url), Some(parts)) => parts.matches(url),
                (None, None) => whole.matches(address),
                _ => false,
            })
    }

    /// Whether a pattern matching `url` names its host exactly (no wildcard in the host).
    fn pins_host(&self, url: &str) -> bool {
        let Ok(url) = url::Url::parse(url) else {
            return false;
        };
        self.patterns.iter().any(|(_, parts)| {
            parts
                .as_ref()
                .is_some_and(|p| p.exact_host && p.matches(&url))
        })
    }
}

impl Tenants {
    fn tenant(&self, tenant: &TenantId) -> Option<&Tenant> {
        self.tenants.iter().find(|t| &t.id == tenant)
    }

    /// Whether `tenant` may deliver to `target` (pattern, scheme, secret name;
    /// for a manifest, the tenant's bucket patterns); INVALID_ARGUMENT naming
    /// `field` (e.g. `policy.notify[0]`) if not.
    pub fn check_notify_target(
        &self,
        tenant: &TenantId,
        field: &str,
        target: &NotifyTarget,
    ) -> Result<(), Error> {
        if let NotifyTarget::Manifest { bucket, .. } = target {
            // Written where the tenant may watch: its bucket patterns decide.
            if !self.allows(tenant, bucket.as_str()) {
                return Err(Error::invalid(
                    &format!("{field}.manifest.bucket"),
                    format!("{bucket} is not one of the tenant's buckets"),
                ));
            }
            return Ok(());
        }
        let none = Callbacks::default();
        let callbacks = self.tenant(tenant).map_or(&none, |t| &t.callbacks);
        callbacks.check(field, target)
    }

    /// The tenant's webhook secret called `name`.
    pub fn callback_secret(&self, tenant: &TenantId, name: &str) -> Option<&CallbackSecret> {
        self.tenant(tenant)?.callbacks.secrets.get(name)
    }

    /// Whether one of the tenant's patterns that matches `url` names its host
    /// exactly: only then may a webhook reach a loopback, link-local or
    /// metadata address.
    pub fn callback_host_pinned(&self, tenant: &TenantId, url: &str) -> bool {
        self.tenant(tenant)
            .is_some_and(|t| t.callbacks.pins_host(url))
    }
}

/// Puts the caller's [`TenantId`] into each request, or refuses it.
/// The current tenants table, swapped whole when the file is reloaded.
/// Readers take a snapshot ([`LiveTenants::current`]); streams follow
/// [`LiveTenants::subscribe`] to end when their credential is revoked.
#[derive(Clone)]
pub struct LiveTenants {
    current: Arc<tokio::sync::watch::Sender<Arc<Tenants>>>,
    path: Option<PathBuf>,
}

impl LiveTenants {
    /// The table in `path`, or the open single tenant without one.
    pub fn load(path: Option<&Path>) -> Result<Self, TenantsError> {
        let tenants = match path {
            Some(path) => Tenants::load(path)?,
            None => Tenants::open(),
        };
        Ok(Self {
            current: Arc::new(tokio::sync::watch::channel(Arc::new(tenants)).0),
            path: path.map(Path::to_owned),
        })
    }

    /// A fixed table that is never reloaded.
    pub fn fixed(tenants: Tenants) -> Self {
        Self {
            current: Arc::new(tokio::sync::watch::channel(Arc::new(tenants)).0),
            path: None,
        }
    }

    pub fn current(&self) -> Arc<Tenants> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Tenants>> {
        self.current.subscribe()
    }

    /// Reads the tenants file again and swaps the table in whole; a file that
    /// cannot be read or is invalid leaves the current table in place. What
    /// SIGHUP does. Without a tenants file there is nothing to reload.
    pub fn reload(&self) -> Result<(), TenantsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tenants = Tenants::load(path)?;
        self.current.send_replace(Arc::new(tenants));
        Ok(())
    }

    /// Resolves once `credential` no longer authenticates as `tenant`.
    pub fn revoked(
        &self,
        credential: Credential,
        tenant: TenantId,
    ) -> impl Future<Output = ()> + Send + 'static {
        let changes = self.subscribe();
        revoked(changes, credential, tenant)
    }
}

async fn revoked(
    mut changes: tokio::sync::watch::Receiver<Arc<Tenants>>,
    credential: Credential,
    tenant: TenantId,
) {
    loop {
        if !changes.borrow_and_update().admits(&credential, &tenant) {
            return;
        }
        if changes.changed().await.is_err() {
            // The table can no longer change.
            return std::future::pending().await;
        }
    }
}

/// Puts the caller's [`TenantId`] and [`Credential`] into each request, or refuses it.
#[derive(Clone)]
pub struct AuthInterceptor {
    tenants: LiveTenants,
}

impl AuthInterceptor {
    pub fn new(tenants: LiveTenants) -> Self {
        Self { tenants }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let header = request
            .metadata()
            .get(streamwatch::AUTHORIZATION_HEADER)
            .map(|v| v.to_str());
        let header = match header {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                return Err(tonic::Status::unauthenticated("authorization is not ASCII"));
            }
            None => None,
        };
        let subject = crate::transport::client_subject(&request);
        let (tenant, credential) = self
            .tenants
            .current()
            .identify(header, subject.as_deref())?;
        request.extensions_mut().insert(tenant);
        request.extensions_mut().insert(credential);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn two_tenants() -> Tenants {
        Tenants::parse(&format!(
            "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"acme-*\"]\n\n\
             [[tenant]]\nid = \"globex\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"globex-data\", \"shared\"]\n",
            digest("acme-secret"),
            digest("globex-secret")
        ))
        .expect("valid tenants file")
    }

    #[test]
    fn tokens_map_to_their_tenant() {
        let tenants = two_tenants();
        assert_eq!(
            tenants
                .authenticate(Some("Bearer acme-secret"))
                .unwrap()
                .as_str(),
            "acme"
        );
        assert_eq!(
            tenants
                .authenticate(Some("Bearer globex-secret"))
                .unwrap()
                .as_str(),
            "globex"
        );
        assert!(matches!(
            tenants.authenticate(Some("Bearer nope")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            tenants.authenticate(None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            tenants.authenticate(Some("acme-secret")),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn bucket_patterns_are_per_tenant() {
        let tenants = two_tenants();
        let acme = TenantId::parse("t", "acme").unwrap();
        let globex = TenantId::parse("t", "globex").unwrap();
        assert!(tenants.allows(&acme, "acme-logs"));
        assert!(!tenants.allows(&acme, "globex-data"));
        assert!(tenants.allows(&globex, "shared"));
        assert!(!tenants.allows(&globex, "shared-2"));
    }

    fn with_callbacks() -> Tenants {
        Tenants::parse(&format!(
            "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"*\"]\n\
             callback_urls = [\"https://*.acme.example/*\", \"http://169.254.10.5:8080/*\", \
             \"https://sqs.us-east-1.amazonaws.com/123456789012/acme-*\"]\n\
             [tenant.callback_secrets]\nmain = \"0123456789abcdef-secret\"\n",
            digest("acme-secret"),
        ))
        .expect("valid tenants file")
    }

    fn webhook(url: &str, secret_ref: &str) -> NotifyTarget {
        NotifyTarget::Webhook {
            url: url.into(),
            secret_ref: secret_ref.into(),
        }
    }

    fn field_of(result: Result<(), Error>) -> String {
        match result {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn callback_targets_must_match_the_tenants_patterns() {
        let tenants = with_callbacks();
        let acme = TenantId::parse("t", "acme").unwrap();
        let check = |t: &NotifyTarget| tenants.check_notify_target(&acme, "policy.notify[0]", t);
        assert!(check(&webhook("https://hooks.acme.example/done", "main")).is_ok());
        assert_eq!(
            field_of(check(&webhook("https://evil.example/done", "main"))),
            "policy.notify[0].webhook.url"
        );
        for sneaky in [
            "https://evil.example/.acme.example/x",
            "https://evil.example?.acme.example/x",
            "https://user@hooks.acme.example/x",
            "https://hooks.acme.example:8443/x",
        ] {
            assert_eq!(
                field_of(check(&webhook(sneaky, "main"))),
                "policy.notify[0].webhook.url",
                "{sneaky}"
            );
        }
        assert_eq!(
            field_of(check(&webhook("ftp://hooks.acme.example/done", "main"))),
            "policy.notify[0].webhook.url"
        );
        assert_eq!(
            field_of(check(&webhook("https://hooks.acme.example/done", "other"))),
            "policy.notify[0].webhook.secret_ref"
        );
        let queue = NotifyTarget::Sqs {
            queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/acme-done".into(),
        };
        assert!(check(&queue).is_ok());
        let topic = NotifyTarget::Sns {
            topic_arn: "arn:aws:sns:us-east-1:123456789012:other".into(),
        };
        assert_eq!(field_of(check(&topic)), "policy.notify[0].sns.topic_arn");
        // A tenant without patterns (and an unknown one) may name no target.
        let open = Tenants::open();
        let default = TenantId::parse("t", DEFAULT_TENANT).unwrap();
        assert!(
            open.check_notify_target(&default, "f", &webhook("https://x.example/", "main"))
                .is_err()
        );
    }

    #[test]
    fn only_exact_host_patterns_pin_a_host() {
        let tenants = with_callbacks();
        let acme = TenantId::parse("t", "acme").unwrap();
        assert!(tenants.callback_host_pinned(&acme, "http://169.254.10.5:8080/hook"));
        assert!(!tenants.callback_host_pinned(&acme, "https://hooks.acme.example/x"));
        assert!(!tenants.callback_host_pinned(&acme, "http://169.254.10.6:8080/hook"));
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        let tenants = with_callbacks();
        let acme = TenantId::parse("t", "acme").unwrap();
        let secret = tenants.callback_secret(&acme, "main").unwrap();
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(secret.expose(), b"0123456789abcdef-secret");
        let err = Tenants::parse(&format!(
            "[[tenant]]\nid = \"a\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"*\"]\n\
             [tenant.callback_secrets]\nmain = \"short\"\n",
            digest("x")
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("callback_secrets.main"), "{err}");
        assert!(!err.contains("short"), "the secret is not echoed: {err}");
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let err =
            Tenants::parse("[[tenant]]\nid = \"a\"\ntoken_sha256 = [\"xyz\"]\nbuckets = [\"*\"]\n")
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("token_sha256[0]"), "{err}");
        let err = Tenants::parse(
            "[[tenant]]\nid = \"a\"\ntoken_sha256 = []\nbuckets = [\"*\"]\nextra = 1\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("extra"), "{err}");
        let err = Tenants::parse("").err().unwrap().to_string();
        assert!(err.contains("no [[tenant]]"), "{err}");
    }

    #[test]
    fn a_certificate_subject_stands_for_the_tenant_listing_it() {
        let tenants = Tenants::parse(&format!(
            "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"*\"]\nclient_subjects = [\"acme-batch\"]\n\n\
             [[tenant]]\nid = \"globex\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"*\"]\n",
            digest("acme-secret"),
            digest("globex-secret")
        ))
        .unwrap();
        let (tenant, credential) = tenants.identify(None, Some("acme-batch")).unwrap();
        assert_eq!(tenant.as_str(), "acme");
        assert_eq!(credential, Credential::Certificate("acme-batch".into()));
        let (tenant, _) = tenants
            .identify(Some("Bearer globex-secret"), Some("unlisted"))
            .unwrap();
        assert_eq!(
            tenant.as_str(),
            "globex",
            "an unlisted subject falls back to the token"
        );
        assert!(tenants.identify(None, Some("unlisted")).is_err());
        assert!(
            tenants
                .identify(Some("Bearer globex-secret"), Some("acme-batch"))
                .is_err(),
            "a token of another tenant is refused, not preferred"
        );
    }

    #[test]
    fn quotas_default_and_reject_unknown_or_zero_fields() {
        let base = format!(
            "[[tenant]]\nid = \"a\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"*\"]\n",
            digest("t")
        );
        let a = TenantId::parse("t", "a").unwrap();
        assert_eq!(Tenants::parse(&base).unwrap().quotas(&a), Quotas::default());
        let set = Tenants::parse(&format!("{base}[tenant.quotas]\nmax_streams = 3\n")).unwrap();
        assert_eq!(set.quotas(&a).max_streams, 3);
        assert_eq!(
            set.quotas(&a).max_active_watches,
            crate::quota::DEFAULT_MAX_ACTIVE_WATCHES
        );
        let err = Tenants::parse(&format!("{base}[tenant.quotas]\nmax_stream = 3\n"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("max_stream"), "{err}");
        let err = Tenants::parse(&format!("{base}[tenant.quotas]\nmax_streams = 0\n"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tenant[0].quotas.max_streams"), "{err}");
    }

    #[test]
    fn parse_errors_do_not_quote_the_file() {
        let err = Tenants::parse("[[tenant]]\nid = \"a\"\ntoken = s3cr3t-value\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("line 3:"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn reload_swaps_the_table_whole_or_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let file = |token: &str| {
            format!(
                "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"*\"]\n",
                digest(token)
            )
        };
        std::fs::write(&path, file("old")).unwrap();
        let live = LiveTenants::load(Some(&path)).unwrap();
        let (acme, old) = live.current().identify(Some("Bearer old"), None).unwrap();

        std::fs::write(&path, "[[tenant]]\nid = ").unwrap();
        assert!(live.reload().is_err());
        assert!(
            live.current().admits(&old, &acme),
            "a bad file keeps the table in force"
        );

        std::fs::write(&path, file("new")).unwrap();
        live.reload().unwrap();
        assert!(
            !live.current().admits(&old, &acme),
            "the old token is revoked"
        );
        assert!(live.current().authenticate(Some("Bearer new")).is_ok());
    }

    #[tokio::test]
    async fn revoked_resolves_when_a_reload_drops_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let file = |tokens: &str| {
            format!("[[tenant]]\nid = \"acme\"\ntoken_sha256 = [{tokens}]\nbuckets = [\"*\"]\n")
        };
        let both = format!("\"{}\", \"{}\"", digest("kept"), digest("dropped"));
        std::fs::write(&path, file(&both)).unwrap();
        let live = LiveTenants::load(Some(&path)).unwrap();
        let (acme, kept) = live.current().identify(Some("Bearer kept"), None).unwrap();
        let (_, dropped) = live
            .current()
            .identify(Some("Bearer dropped"), None)
            .unwrap();
        let mut kept_revoked = Box::pin(live.revoked(kept, acme.clone()));
        let dropped_revoked = live.revoked(dropped, acme);

        std::fs::write(&path, file(&format!("\"{}\"", digest("kept")))).unwrap();
        live.reload().unwrap();
        dropped_revoked.await;
        assert!(
            futures::poll!(&mut kept_revoked).is_pending(),
            "a credential still in the file stays valid"
        );
    }
}
