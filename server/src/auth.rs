//! Who is calling: the tenants file (tenant ids, SHA-256 digests of their
//! bearer tokens, the bucket patterns each may watch) and the interceptor
//! layer that turns `authorization: Bearer <token>` into a [`TenantId`] in
//! the request's extensions. Tokens are compared as digests in constant time.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wildmatch::WildMatch;

use crate::{error::Error, watch::TenantId};

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
}

struct Tenant {
    id: TenantId,
    token_digests: Vec<[u8; 32]>,
    buckets: Vec<WildMatch>,
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
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Tenants {
    /// One tenant, `default`, allowed every bucket, with no token.
    pub fn open() -> Self {
        let id = TenantId::parse("tenant", DEFAULT_TENANT)
            .unwrap_or_else(|_| unreachable!("constant is valid"));
        Self {
            tenants: vec![Tenant {
                id,
                token_digests: Vec::new(),
                buckets: vec![WildMatch::new("*")],
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
        Self::parse(&raw).map_err(|message| TenantsError::Invalid {
            path: shown,
            message,
        })
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let file: TenantsFile = toml::from_str(raw).map_err(|e| e.to_string())?;
        let mut tenants: Vec<Tenant> = Vec::new();
        for (i, entry) in file.tenant.into_iter().enumerate() {
            let id = TenantId::parse(&format!("tenant[{i}].id"), &entry.id)
                .map_err(|e| e.to_string())?;
            if tenants.iter().any(|t| t.id == id) {
                return Err(format!("tenant[{i}].id: {id} appears twice"));
            }
            let mut token_digests = Vec::new();
            for (j, hex_digest) in entry.token_sha256.iter().enumerate() {
                let bytes = hex::decode(hex_digest.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                let digest = bytes.ok_or_else(|| {
                    format!(
                        "tenant[{i}].token_sha256[{j}]: not a hex SHA-256 digest (64 hex digits)"
                    )
                })?;
                token_digests.push(digest);
            }
            if token_digests.is_empty() {
                return Err(format!(
                    "tenant[{i}].token_sha256: a tenant needs at least one token"
                ));
            }
            if entry.buckets.is_empty() {
                return Err(format!(
                    "tenant[{i}].buckets: a tenant needs at least one bucket pattern"
                ));
            }
            let buckets = entry.buckets.iter().map(|p| WildMatch::new(p)).collect();
            tenants.push(Tenant {
                id,
                token_digests,
                buckets,
            });
        }
        if tenants.is_empty() {
            return Err("no [[tenant]] entries".into());
        }
        Ok(Self {
            tenants,
            open: false,
        })
    }

    /// Whether this is the token-less single-tenant mode.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Finds the tenant whose token is in `authorization`.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<TenantId, Error> {
        if self.open {
            return Ok(self.tenants[0].id.clone());
        }
        let header = authorization.ok_or_else(|| {
            Error::Unauthenticated("missing authorization: Bearer <token>".into())
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Error::Unauthenticated("authorization must be `Bearer <token>`".into())
            })?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare against every digest, so timing does not tell which tenant came close.
        let mut found = None;
        for tenant in &self.tenants {
            for known in &tenant.token_digests {
                if bool::from(known.ct_eq(&digest)) {
                    found = Some(&tenant.id);
                }
            }
        }
        found
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("unknown token".into()))
    }

    /// Whether `tenant` may watch (and ingest notifications for) `bucket`.
    pub fn allows(&self, tenant: &TenantId, bucket: &str) -> bool {
        self.tenants
            .iter()
            .any(|t| &t.id == tenant && t.buckets.iter().any(|p| p.matches(bucket)))
    }
}

/// Puts the caller's [`TenantId`] into each request, or refuses it.
#[derive(Clone)]
pub struct AuthInterceptor {
    tenants: std::sync::Arc<Tenants>,
}

impl AuthInterceptor {
    pub fn new(tenants: std::sync::Arc<Tenants>) -> Self {
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
        let tenant = self.tenants.authenticate(header)?;
        request.extensions_mut().insert(tenant);
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

    #[test]
    fn bad_files_name_what_is_wrong() {
        let err =
            Tenants::parse("[[tenant]]\nid = \"a\"\ntoken_sha256 = [\"xyz\"]\nbuckets = [\"*\"]\n")
                .err()
                .unwrap();
        assert!(err.contains("token_sha256[0]"), "{err}");
        let err = Tenants::parse(
            "[[tenant]]\nid = \"a\"\ntoken_sha256 = []\nbuckets = [\"*\"]\nextra = 1\n",
        )
        .err()
        .unwrap();
        assert!(err.contains("extra"), "{err}");
        let err = Tenants::parse("").err().unwrap();
        assert!(err.contains("no [[tenant]]"), "{err}");
    }
}
