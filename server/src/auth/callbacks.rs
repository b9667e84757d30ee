//! Where a tenant's watches may deliver: its `callback_urls` patterns
//! (webhook URLs matched part by part, queue URLs, topic ARNs), its
//! `callback_secrets` (webhook signing keys, by name), and for a manifest
//! target its bucket patterns. A target that no pattern allows is
//! INVALID_ARGUMENT naming the field.
//!
//! A secret must never be printed or leave this module except to sign a body.

use wildmatch::WildMatch;

use super::{Tenant, Tenants, TenantsFileError};
use crate::{
    error::Error,
    watch::{NotifyTarget, TenantId},
};

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
    /// Tenant `i`'s patterns and secrets, checked.
    pub(super) fn parse(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{DEFAULT_TENANT, tests::digest};

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
}
