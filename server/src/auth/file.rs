//! The tenants file (TOML, `[[tenant]]` entries) read into a [`Tenants`]
//! table, and what is wrong with one ([`TenantsFileError`]).
//!
//! Unknown fields are refused. An error names the line or the field, never
//! the offending text: the file holds token digests and callback secrets.

use std::path::Path;

use serde::Deserialize;
use wildmatch::WildMatch;

use super::{
    Tenant, Tenants,
    callbacks::{Callbacks, MIN_CALLBACK_SECRET_BYTES},
};
use crate::{
    error::Error,
    quota::{Quotas, QuotasError},
    watch::TenantId,
};

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

/// Why the tenants file cannot be loaded; the table in force stays.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::digest;

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
}
