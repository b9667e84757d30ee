//! Reconciliation: before a watch with `policy.reconcile` completes, list its
//! prefix in S3 and record every key as a created object. Keys already seen
//! count nothing; a key no notification told of counts (and is activity, so
//! the watch keeps waiting). The store's exact counting does the comparison.

use aws_sdk_s3::{Client, error::DisplayErrorContext};

use crate::{
    clock::Timestamp,
    store::{Activity, ActivityKind, Store},
    watch::{Watch, WatchEvent},
};

/// Keys listed per ListObjectsV2 call: S3's maximum.
const PAGE: i32 = 1000;

pub struct Reconciler {
    s3: Client,
}

impl Reconciler {
    pub fn new(s3: Client) -> Self {
        Self { s3 }
    }

    /// Every key under `prefix` in `bucket`.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
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
            let page = page.map_err(|e| DisplayErrorContext(e).to_string())?;
            keys.extend(
                page.contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| o.key),
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
    ) -> Result<Option<(Watch, Vec<WatchEvent>)>, String> {
        let keys = self
            .list(watch.bucket.as_str(), watch.prefix.as_str())
            .await?;
        let activities: Vec<Activity> = keys
            .into_iter()
            .map(|key| Activity {
                tenant: watch.tenant.clone(),
                watch_id: watch.id.clone(),
                kind: ActivityKind::Created,
                key,
                sequencer: String::new(),
            })
            .collect();
        let found = activities.len();
        let outcome = store
            .record(activities, now)
            .await
            .map_err(|e| e.to_string())?;
        let missed = outcome.updated.into_iter().next();
        if let Some((w, _)) = &missed {
            tracing::warn!(tenant = %w.tenant, watch_id = %w.id, listed = found,
                objects = w.counters.object_count, "reconciliation found objects no notification told of");
        }
        Ok(missed)
    }
}
