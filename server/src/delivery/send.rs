//! The real [`Transport`]: webhooks over HTTP(S) (signed with the tenant's
//! callback secret, bounded in time and in how much of an answer is read,
//! never following redirects), SQS SendMessage, SNS Publish and manifests
//! written to S3 (see [`manifest`](super::manifest)). Errors name what failed
//! without the URL or any secret.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::OnceCell;

use super::{Failure, Transport, address, manifest::Manifests};
use crate::{
    auth::LiveTenants,
    aws::{AwsConfig, s3_config},
    store::Delivery,
    watch::NotifyTarget,
};

/// The webhook header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-streamwatch-signature";
/// The webhook header carrying `watch_id:generation:seq`.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The webhook header carrying the event's trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// How much of a failed answer is kept (for `last_error`); the rest is never read.
const MAX_ANSWER_BYTES: usize = 512;

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends deliveries to webhooks, SQS queues and SNS topics.
pub struct Targets {
    /// The tenants file as it is now (reloaded on SIGHUP).
    tenants: LiveTenants,
    /// Connects only to addresses that are not guarded (see [`address`]).
    http: reqwest::Client,
    /// For hosts a tenant pattern names exactly.
    http_pinned: reqwest::Client,
    /// The process's AWS configuration, loaded by the first delivery that
    /// needs it unless something else already did.
    shared_aws: AwsConfig,
    aws: OnceCell<Aws>,
    manifests: Manifests,
    timeout: Duration,
}

/// AWS clients, made on the first delivery that needs one.
struct Aws {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    s3: aws_sdk_s3::Client,
}

impl Targets {
    /// `timeout` bounds one attempt; manifests are read through `manifests`;
    /// SQS, SNS and S3 are called with `aws`. Fails only when no HTTP client
    /// can be built (no TLS roots).
    pub fn new(
        tenants: LiveTenants,
        timeout: Duration,
        manifests: Manifests,
        aws: AwsConfig,
    ) -> Result<Self, reqwest::Error> {
        // reqwest builds its TLS on the process's provider and panics without one.
        crate::transport::install_crypto_provider();
        let builder = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("streamwatch/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Self {
            tenants,
            http: builder()
                .dns_resolver(Arc::new(address::GuardedResolver))
                .build()?,
            http_pinned: builder().build()?,
            shared_aws: aws,
            aws: OnceCell::new(),
            manifests,
            timeout,
        })
    }

    async fn aws(&self) -> &Aws {
        self.aws
            .get_or_init(|| async {
                let shared = self.shared_aws.get().await;
                let timeouts = aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(self.timeout)
                    .build();
                let sqs = aws_sdk_sqs::config::Builder::from(shared)
                    .timeout_config(timeouts.clone())
                    .build();
                let sns = aws_sdk_sns::config::Builder::from(shared)
                    .timeout_config(timeouts.clone())
                    .build();
                let s3 = s3_config(shared).timeout_config(timeouts).build();
                Aws {
                    sqs: aws_sdk_sqs::Client::from_conf(sqs),
                    sns: aws_sdk_sns::Client::from_conf(sns),
                    s3: aws_sdk_s3::Client::from_conf(s3),
                }
            })
            .await
    }

    async fn webhook(&self, d: &Delivery, url: &str, secret_ref: &str) -> Result<String, Failure> {
        let url = reqwest::Url::parse(url).map_err(|e| Failure::new("", e.to_string()))?;
        // The tenants file may have changed since the watch started.
        let tenants = self.tenants.current();
        tenants
            .check_notify_target(&d.tenant, "url", &d.target)
            .map_err(|e| Failure::new("", e.to_string()))?;
        let secret = tenants
            .callback_secret(&d.tenant, secret_ref)
            .ok_or_else(|| {
                Failure::new(
                    "",
                    format!("secret_ref {secret_ref:?} is not in the tenants file"),
                )
            })?;
        let pinned = tenants.callback_host_pinned(&d.tenant, url.as_str());
        // A literal address never reaches the resolver: check it here.
        address::check(&url, pinned)
            .await
            .map_err(|e| Failure::new("", e.to_string()))?;
        let client = if pinned {
            &self.http_pinned
        } else {
            &self.http
        };
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, d.idempotency_key())
            .header(
                SIGNATURE_HEADER,
                signature(secret.expose(), d.body.as_bytes()),
            )
            .body(d.body.clone());
        if let Some(traceparent) = &d.traceparent {
            request = request.header(TRACEPARENT_HEADER, traceparent);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Failure::new("", describe(&e)))?;
        let status = response.status();
        let shown = format!("HTTP {}", status.as_u16());
        if status.is_success() {
            return Ok(shown);
        }
        let mut answer = Vec::new();
        while answer.len() < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        answer.truncate(MAX_ANSWER_BYTES);
        let answer = String::from_utf8_lossy(&answer);
        let error = match answer.trim() {
            "" => shown.clone(),
            text => format!("{shown}: {text}"),
        };
        Err(Failure::new(shown, error))
    }
}

/// A reqwest error without its URL (which may carry a token in its query).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirects are not followed"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn aws_error(e: impl std::error::Error + 'static) -> Failure {
    Failure::new("", aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
}

#[async_trait]
impl Transport for Targets {
    async fn send(&self, d: &Delivery) -> Result<String, Failure> {
        match &d.target {
            NotifyTarget::Webhook { url, secret_ref } => self.webhook(d, url, secret_ref).await,
            NotifyTarget::Sqs { queue_url } => {
                self.tenants
                    .current()
                    .check_notify_target(&d.tenant, "queue_url", &d.target)
                    .map_err(|e| Failure::new("", e.to_string()))?;
                let sqs = &self.aws().await.sqs;
                let attribute = aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(d.idempotency_key())
                    .build()
                    .map_err(aws_error)?;
                let mut send = sqs
                    .send_message()
                    .queue_url(queue_url)
                    .message_body(&d.body)
                    .message_attributes("idempotency_key", attribute);
                if queue_url.ends_with(".fifo") {
                    send = send
                        .message_group_id(d.watch_id.as_str())
                        .message_deduplication_id(format!(
                            "{}-{}",
                            d.idempotency_key().replace(':', "-"),
                            d.target_index
                        ));
                }
                let out = send.send().await.map_err(aws_error)?;
                Ok(format!(
                    "sqs message {}",
                    out.message_id.unwrap_or_default()
                ))
            }
            NotifyTarget::Sns { topic_arn } => {
                self.tenants
                    .current()
                    .check_notify_target(&d.tenant, "topic_arn", &d.target)
                    .map_err(|e| Failure::new("", e.to_string()))?;
                let sns = &self.aws().await.sns;
                let attribute = aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(d.idempotency_key())
                    .build()
                    .map_err(aws_error)?;
                let out = sns
                    .publish()
                    .topic_arn(topic_arn)
                    .message(&d.body)
                    .message_attributes("idempotency_key", attribute)
                    .send()
                    .await
                    .map_err(aws_error)?;
                Ok(format!(
                    "sns message {}",
                    out.message_id.unwrap_or_default()
                ))
            }
            NotifyTarget::Manifest { bucket, key } => {
                self.tenants
                    .current()
                    .check_notify_target(&d.tenant, "manifest", &d.target)
                    .map_err(|e| Failure::new("", e.to_string()))?;
                let s3 = &self.aws().await.s3;
                self.manifests.write(s3, d, bucket, key, self.timeout).await
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::{
        clock::Timestamp,
        delivery::manifest,
        store::{DeliveryState, sqlite::SqliteStore},
        watch::{Bucket, TenantId, WatchId},
    };

    fn delivery(target: NotifyTarget) -> Delivery {
        Delivery {
            tenant: TenantId::parse("t", "acme").unwrap(),
            watch_id: WatchId::generate(),
            seq: 2,
            generation: 1,
            target_index: 0,
            target,
            body: "{}".into(),
            traceparent: None,
            state: DeliveryState::Pending,
            attempts: 0,
            created_at: Timestamp::from_millis(0),
            next_attempt_at: Timestamp::from_millis(0),
            last_status: String::new(),
            last_error: String::new(),
            finished_at: None,
        }
    }

    /// `acme` may call any host on any port under `/open/` (a wildcard host)
    /// and use the buckets `acme-*`. The directory holds the store.
    fn targets() -> (Targets, tempfile::TempDir) {
        let digest = hex::encode(<Sha256 as sha2::Digest>::digest(b"token"));
        let tenants = crate::auth::Tenants::parse(&format!(
            "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{digest}\"]\nbuckets = [\"acme-*\"]\n\
             callback_urls = [\"http://*:*/open/*\"]\n[tenant.callback_secrets]\nmain = \"0123456789abcdef\"\n"
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
        let manifests = Manifests::new(store, manifest::DEFAULT_PART_SIZE);
        let targets = Targets::new(
            LiveTenants::fixed(tenants),
            Duration::from_secs(2),
            manifests,
            AwsConfig::new(),
        )
        .unwrap();
        (targets, dir)
    }

    #[tokio::test]
    async fn a_host_that_resolves_to_loopback_is_never_connected_at_delivery() {
        // Something listens on loopback: the delivery must not reach it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for url in [
            format!("http://localhost:{port}/open/x"),
            format!("http://127.0.0.1:{port}/open/x"),
        ] {
            let d = delivery(NotifyTarget::Webhook {
                url: url.clone(),
                secret_ref: "main".into(),
            });
            let failure = targets().0.send(&d).await.unwrap_err();
            assert!(failure.error.contains("loopback"), "{url}: {failure:?}");
            assert!(!failure.error.contains("0123456789abcdef"));
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "no connection reached the listener");
    }

    #[tokio::test]
    async fn the_resolver_drops_guarded_addresses() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let resolved = address::GuardedResolver.resolve(name).await;
        assert!(resolved.is_err(), "localhost resolves only to loopback");
    }

    #[tokio::test]
    async fn a_target_the_tenants_file_no_longer_allows_is_not_sent() {
        let d = delivery(NotifyTarget::Webhook {
            url: "http://203.0.113.9:80/closed/x".into(),
            secret_ref: "main".into(),
        });
        let failure = targets().0.send(&d).await.unwrap_err();
        assert!(failure.error.contains("callback_urls"), "{failure:?}");
        let d = delivery(NotifyTarget::Webhook {
            url: "http://203.0.113.9:80/open/x".into(),
            secret_ref: "gone".into(),
        });
        let failure = targets().0.send(&d).await.unwrap_err();
        assert!(failure.error.contains("callback_secrets"), "{failure:?}");
        let d = delivery(NotifyTarget::Manifest {
            bucket: Bucket::parse("b", "globex-out").unwrap(),
            key: "manifest.jsonl".into(),
        });
        let failure = targets().0.send(&d).await.unwrap_err();
        assert!(
            failure.error.contains("not one of the tenant's buckets"),
            "{failure:?}"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
