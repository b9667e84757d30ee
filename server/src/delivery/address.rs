//! Where a webhook may connect: addresses a tenant's callback must never reach
//! unless its patterns name the host exactly (loopback, link-local, cloud
//! metadata), checked when the watch starts and again on every connection (a
//! resolver that drops them, so DNS rebinding cannot redirect a callback).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::error::Error;

/// How long StartWatch waits for DNS when checking a webhook's host.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `ip` is an address a callback needs an exact pattern for:
/// unspecified, loopback, link-local (169.254.0.0/16 holds the AWS, GCP and
/// Azure metadata services), fe80::/10, AWS's IPv6 metadata fd00:ec2::254,
/// Alibaba's 100.100.100.200, and IPv4-mapped forms of all of these.
pub fn is_guarded(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_guarded_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_guarded_v4(v4);
            }
            v6.is_unspecified()
                || v6.is_loopback()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

fn is_guarded_v4(v4: Ipv4Addr) -> bool {
    v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.octets()[0] == 0
        || v4 == Ipv4Addr::new(100, 100, 100, 200)
}

/// Why a callback URL may not be connected to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("has no host")]
    NoHost,
    /// The host resolves to (or is) a guarded address no pattern pins.
    #[error(
        "host leads to {0}, a loopback, link-local or metadata address; only a callback_urls \
         pattern naming this host exactly allows it"
    )]
    Guarded(IpAddr),
}

impl AddressError {
    /// As the service's error: the URL in request field `field` is bad
    /// input (INVALID_ARGUMENT naming it). The one mapping of this error.
    pub fn invalid(self, field: &str) -> Error {
        Error::invalid(field, self.to_string())
    }
}

/// Checks that `url`'s host does not lead to a guarded address (unless
/// `pinned`: a tenant pattern names this host exactly). A host that does not
/// resolve now passes: it is checked again on every delivery.
pub async fn check(url: &reqwest::Url, pinned: bool) -> Result<(), AddressError> {
    if pinned {
        return Ok(());
    }
    let Some(host) = url.host() else {
        return Err(AddressError::NoHost);
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
        url::Host::Domain(name) => {
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await
            {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(_)) | Err(_) => Vec::new(),
            }
        }
    };
    match addrs.iter().find(|a| is_guarded(a.ip())) {
        Some(a) => Err(AddressError::Guarded(a.ip())),
        None => Ok(()),
    }
}

/// A DNS resolver for webhook connections that drops guarded addresses.
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = addrs.filter(|a| !is_guarded(a.ip())).collect();
            if allowed.is_empty() {
                return Err(
                    "the host resolves only to loopback, link-local or metadata addresses".into(),
                );
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_link_local_and_loopback_are_guarded() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "100.100.100.200",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_guarded(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.5",
            "192.168.1.1",
            "203.0.113.9",
            "2001:db8::1",
            "fd00:ec2::253",
        ] {
            assert!(!is_guarded(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn literal_guarded_hosts_need_a_pinned_pattern() {
        let url = reqwest::Url::parse("http://169.254.169.254/latest/meta-data/").unwrap();
        let err = check(&url, false).await.unwrap_err().to_string();
        assert!(err.contains("169.254.169.254"), "{err}");
        assert!(check(&url, true).await.is_ok());
        let url = reqwest::Url::parse("http://[fd00:ec2::254]/").unwrap();
        assert!(check(&url, false).await.is_err());
        let url = reqwest::Url::parse("https://203.0.113.9/hook").unwrap();
        assert!(check(&url, false).await.is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused() {
        let url = reqwest::Url::parse("http://localhost:8080/hook").unwrap();
        assert!(check(&url, false).await.is_err());
    }
}
