//! Who is calling: the tenants table (tenant ids, SHA-256 digests of their
//! bearer tokens, the client-certificate subjects that stand for them, the
//! bucket patterns each may watch, their quotas) and the interceptor layer
//! that turns `authorization: Bearer <token>` or a verified client
//! certificate into a [`TenantId`] in the request's extensions. Tokens are
//! compared as digests in constant time; a token itself is never stored or
//! logged.
//!
//! This file authenticates ([`Tenants::identify`], [`AuthInterceptor`]) and
//! answers what a tenant may do. Its parts: `file` (the tenants file and its
//! errors), `callbacks` (where each tenant's watches may deliver, and the
//! secrets its webhooks are signed with: see [`Callbacks`]), `live`
//! ([`LiveTenants`]: the table in force, swapped whole when the file is
//! reloaded on SIGHUP, so a revoked credential is refused at once).
//!
//! Secrets never leave this module except to sign a body, and are never
//! printed; no message quotes the tenants file.

mod callbacks;
mod file;
mod live;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wildmatch::WildMatch;

pub use self::{
    callbacks::{CallbackSecret, Callbacks, MIN_CALLBACK_SECRET_BYTES},
    file::{TenantsError, TenantsFileError},
    live::LiveTenants,
};
use crate::{error::Error, quota::Quotas, watch::TenantId};

/// The tenant of a server started without a tenants file.
pub const DEFAULT_TENANT: &str = "default";

/// One tenant of the table, as the file gave it.
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

    /// The hex SHA-256 digest of `token`, as a tenants file lists it.
    pub(super) fn digest(token: &str) -> String {
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
}
