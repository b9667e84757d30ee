//! Reconciliation: before a watch with `policy.reconcile` completes (and
//! when its policy asks for a probe), list its prefix in S3 and record every key the watch's key filter takes as a
//! created object, with the size the listing shows (its marker key, if it
//! has one, as a marker). Keys already seen
//! count nothing; a key no notification told of counts (and is activity, so
//! the watch keeps waiting). The store's exact counting does the comparison.

use aws_sdk_s3::{
    Client,
    error::{DisplayErrorContext, SdkError},
    operation::list_objects_v2::ListObjectsV2Error,
};

use crate::{
    clock::Timestamp,
    store::{Activity, ActivityKind, Store, StoreError},
    watch::{Watch, WatchEvent},
};

/// Keys listed per ListObjectsV2 call: S3's maximum.
const PAGE: i32 = 1000;

/// One object of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<Timestamp>,
}

/// Why a prefix could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// A ListObjectsV2 call failed: no such bucket, no permission, or S3
    /// could not be reached.
    #[error("{}", DisplayErrorContext(.0))]
    Request(Box<SdkError<ListObjectsV2Error>>),
}

/// Why a reconciliation did not finish (the observer logs it and lists again later).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot list the prefix: {0}")]
    List(ListError),
    /// What the listing found could not be recorded.
    #[error("cannot record the listed objects: {0}")]
    Store(StoreError),
}

pub struct Reconciler {
    pub(crate) s3: Client,
}

impl Reconciler {
    pub fn new(s3: Client) -> Self {
        Self { s3 }
    }

    /// Every object under `prefix` in `bucket`.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Listed>, ListError> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(PAGE)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ListError::Request(Box::new(e)))?;
            keys.extend(
                page.contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| {
                        Some(Listed {
                            size: o.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                            last_modified: o
                                .last_modified
                                .and_then(|t| t.to_millis().ok())
                                .map(Timestamp::from_millis),
                            key: o.key?,
                        })
                    }),
            );
        }
        Ok(keys)
    }

    /// Lists `watch`'s prefix and records what it finds. Returns the watch and
    /// its events when objects no notification told of were counted.
    pub async fn reconcile(
        &self,
        store: &dyn Store,
        watch: &Watch,
        now: Timestamp,
    ) -> Result<Option<(Watch, Vec<WatchEvent>)>, ReconcileError> {
        let Some(objects) = watch.source.as_objects() else {
            // A group counts no objects of its own (and takes no reconcile).
            return Ok(None);
        };
        let listed = self
            .list(objects.bucket.as_str(), objects.prefix.as_str())
            .await
            .map_err(ReconcileError::List)?;
        let matcher = objects.filter.matcher();
        let prefix = objects.prefix.as_str();
        let activities: Vec<Activity> = listed
            .into_iter()
            .filter_map(|o| {
                let below = o.key.strip_prefix(prefix).unwrap_or(&o.key);
                let kind = if watch.marker_key() == Some(below) {
                    ActivityKind::Marker
                } else if matcher.as_ref().is_none_or(|m| m.matches(below)) {
                    ActivityKind::Created
                } else {
                    return None;
                };
                Some((kind, o))
            })
            .map(|(kind, o)| Activity {
                tenant: watch.tenant.clone(),
                watch_id: watch.id.clone(),
                kind,
                key: o.key,
                sequencer: String::new(),
                size: o.size,
                event_time: o.last_modified,
            })
            .collect();
        let found = activities.len();
        let outcome = store
            .record(activities, now)
            .await
            .map_err(ReconcileError::Store)?;
        let missed = outcome.updated.into_iter().next();
        if let Some((w, _)) = &missed {
            tracing::warn!(tenant = %w.tenant, watch_id = %w.id, listed = found,
                objects = w.counters.object_count, "reconciliation found objects no notification told of");
        }
        Ok(missed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};

    use super::*;
    use crate::{
        store::{Created, NewWatch, sqlite::SqliteStore},
        watch::{Bucket, Labels, Policy, Prefix, Rule, Source, TenantId, WatchId},
    };

    #[tokio::test]
    async fn a_prefix_that_cannot_be_listed_is_a_list_error_and_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("r.db")).unwrap();
        let now = Timestamp::from_millis(1_800_000_000_000);
        let new = NewWatch {
            tenant: TenantId::parse("tenant", "acme").unwrap(),
            id: WatchId::generate(),
            source: Source::objects(
                Bucket::parse("bucket", "acme-lake").unwrap(),
                Prefix::parse("prefix", "day=1/").unwrap(),
                Default::default(),
            ),
            policy: Policy {
                rule: Rule::QuietPeriod {
                    window: Duration::from_secs(60),
                },
                ..Policy::default()
            },
            labels: Labels::default(),
            client_token: None,
            created_at: now,
            trace: Default::default(),
        };
        let Created::New { watch, .. } = store.create_watch(new).await.unwrap() else {
            panic!("a new watch");
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // the listener is closed again at once
        let s3 = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .force_path_style(true)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .build();

        let error = Reconciler::new(Client::from_conf(s3))
            .reconcile(&store, &watch, now)
            .await
            .unwrap_err();
        assert!(matches!(error, ReconcileError::List(_)), "{error:?}");
        assert!(
            error.to_string().starts_with("cannot list the prefix: "),
            "{error}"
        );
        let after = store
            .get_watch(&watch.tenant, &watch.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.last_seq, watch.last_seq, "nothing recorded");
    }
}
