//! StartWatch: refuses what the tenant may not do (a bucket, a callback
//! target or host, another tenant's member, a watch over its quota, a
//! reconcile or manifest check without AWS access), creates the watch or
//! returns the one its client token started, gives an adaptive watch of a
//! series what the series' completed runs showed, arms the observer and, in
//! a cluster, waits until every replica routes to it.
//!
//! It must never create a watch once a check refused it.

use super::Service;
use crate::{
    delivery::address,
    error::Error,
    quota,
    store::{Created, ListQuery, NewWatch},
    watch::{
        Labels, NotifyTarget, Policy, SERIES_LABEL, SeriesPrior, Source, TenantId, TraceContext,
        Watch, WatchId, WatchKey, WatchState,
    },
};

/// Completed runs of a series a new watch learns from: the newest ones.
pub const SERIES_RUNS: usize = 5;

/// A validated StartWatch.
#[derive(Clone, Debug)]
pub struct StartWatch {
    /// A bucket's objects, or a group's members.
    pub source: Source,
    pub policy: Policy,
    pub labels: Labels,
    pub client_token: Option<String>,
    /// The trace context the call runs under (see [`crate::telemetry`]).
    pub trace: TraceContext,
}
impl Service {
    /// Starts a watch (or returns the one `client_token` already started).
    /// Once this returns, every notification ingested counts into the watch.
    pub async fn start_watch(
        &self,
        tenant: &TenantId,
        start: StartWatch,
    ) -> Result<(Watch, bool), Error> {
        if start.policy.reconcile && !self.reconcile_available {
            return Err(Error::invalid(
                "policy.reconcile",
                "this server has no AWS access configured (--store dynamodb or --sqs-queue-url)",
            ));
        }
        if let crate::watch::Rule::Marker {
            key,
            verify_manifest,
            ..
        } = &start.policy.rule
        {
            if *verify_manifest && !self.reconcile_available {
                return Err(Error::invalid(
                    "policy.marker.verify_manifest",
                    "this server has no AWS access configured (--store dynamodb or --sqs-queue-url)",
                ));
            }
            let prefix = start
                .source
                .as_objects()
                .map_or(0, |o| o.prefix.as_str().len());
            let full = prefix + key.len();
            if full > crate::watch::MAX_PREFIX_BYTES {
                return Err(Error::invalid(
                    "policy.marker.key",
                    format!(
                        "with the prefix makes a key of {full} bytes; S3 keys are at most {}",
                        crate::watch::MAX_PREFIX_BYTES
                    ),
                ));
            }
        }
        self.check_notify(tenant, &start.policy).await?;
        let tenants = self.tenants.current();
        if let Some(objects) = start.source.as_objects()
            && !tenants.allows(tenant, objects.bucket.as_str())
        {
            return Err(Error::PermissionDenied(format!(
                "bucket {} is not allowed for this tenant",
                objects.bucket
            )));
        }
        self.check_members(tenant, &start).await?;
        let quotas = tenants.quotas(tenant);
        let start_lock = self.limiter.start_lock(tenant);
        let counting = start_lock.lock().await;
        self.check_active_watches(tenant, &quotas, start.client_token.as_deref())
            .await?;
        let new = NewWatch {
            tenant: tenant.clone(),
            id: WatchId::at(
                self.clock.now(),
                &mut self.ids.lock().unwrap_or_else(|p| p.into_inner()),
            ),
            source: start.source,
            policy: start.policy,
            labels: start.labels,
            client_token: start.client_token,
            trace: start.trace,
            created_at: self.clock.now(),
        };
        let created = self.store.create_watch(new.clone()).await?;
        // Counted and created: later starts of this tenant may count now.
        drop(counting);
        match created {
            Created::New { watch, .. } => {
                let watch = self.learn_from_series(tenant, watch).await?;
                self.observer.arm(watch.clone()).await?;
                match watch.source.as_objects() {
                    Some(o) => {
                        tracing::info!(tenant = %tenant, watch_id = %watch.id, bucket = %o.bucket,
                        prefix = o.prefix.as_str(), "watch started")
                    }
                    None => tracing::info!(tenant = %tenant, watch_id = %watch.id,
                        members = watch.source.members().len(), "watch group started"),
                }
                self.routed_everywhere().await;
                let mut watches = [watch];
                self.sum_members(tenant, &mut watches).await?;
                let [watch] = watches;
                Ok((watch, true))
            }
            Created::Existing(watch) => {
                let same = watch.source == new.source
                    && watch.policy == new.policy
                    && watch.labels == new.labels;
                if !same {
                    return Err(Error::invalid(
                        "client_token",
                        format!(
                            "already started watch {} with a different request",
                            watch.id
                        ),
                    ));
                }
                self.routed_everywhere().await;
                let mut watches = [watch];
                self.sum_members(tenant, &mut watches).await?;
                let [watch] = watches;
                Ok((watch, false))
            }
        }
    }

    /// Gives a new adaptive watch of a series (label [`SERIES_LABEL`]) what
    /// the newest completed adaptive watches of that series showed: their
    /// object count when they all agree, and their longest gap (see
    /// [`SeriesFloor`](crate::policy::SeriesFloor)). Only runs confirmed the same way (by a
    /// listing, or not) are read: their gaps are on the same clock.
    async fn learn_from_series(&self, tenant: &TenantId, watch: Watch) -> Result<Watch, Error> {
        let Some(series) = watch.labels.get(SERIES_LABEL).cloned() else {
            return Ok(watch);
        };
        if !matches!(watch.policy.rule, crate::watch::Rule::Adaptive { .. }) {
            return Ok(watch);
        }
        let query = ListQuery {
            state: Some(WatchState::Completed),
            labels: [(SERIES_LABEL.to_owned(), series.clone())].into(),
            limit: SERIES_RUNS * 4,
            after: None,
        };
        let runs: Vec<Watch> = self
            .store
            .list_watches(tenant, &query)
            .await?
            .into_iter()
            .filter(|w| {
                matches!(w.policy.rule, crate::watch::Rule::Adaptive { .. })
                    && w.policy.reconcile == watch.policy.reconcile
            })
            .take(SERIES_RUNS)
            .collect();
        if runs.is_empty() {
            return Ok(watch);
        }
        // Each run's count and longest gap (its histogram's top bucket).
        let learnt: Vec<(u64, u64)> = runs
            .iter()
            .map(|w| {
                let longest = w.lifecycle.polling.gaps.quantile(1.0);
                (
                    w.counters.object_count,
                    longest.map_or(0, |d| d.as_millis() as u64),
                )
            })
            .collect();
        let prior = SeriesPrior::of(series, &learnt);
        let mut lifecycle = watch.lifecycle.clone();
        lifecycle.polling.series = Some(Box::new(prior));
        let guard = crate::store::Guard::exact(&watch);
        match self
            .store
            .apply(crate::store::Change::new(
                tenant,
                &watch.id,
                guard,
                lifecycle,
                Vec::new(),
                self.clock.now(),
            ))
            .await?
        {
            Some(crate::store::Applied::Done { watch, .. }) => Ok(watch),
            // It changed already (or is gone): it runs without the history.
            Some(crate::store::Applied::Conflict(watch)) => Ok(watch),
            None => Ok(watch),
        }
    }

    /// Refuses a group whose members are not all watches of `tenant` (another
    /// tenant's watch is as unknown as one that never was), or that names
    /// the watch its own client token started.
    async fn check_members(&self, tenant: &TenantId, start: &StartWatch) -> Result<(), Error> {
        let ids = start.source.members();
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<WatchKey> = ids
            .iter()
            .map(|id| WatchKey {
                tenant: tenant.clone(),
                id: id.clone(),
            })
            .collect();
        let found = self.store.watches(&keys).await?;
        for (i, id) in ids.iter().enumerate() {
            let field = format!("members[{i}]");
            let Some(member) = found.iter().find(|w| w.id == *id && w.tenant == *tenant) else {
                return Err(Error::invalid(&field, "no such watch"));
            };
            if start.client_token.is_some() && member.client_token == start.client_token {
                return Err(Error::invalid(
                    &field,
                    "is the watch this client_token started: a group cannot contain itself",
                ));
            }
        }
        Ok(())
    }
    /// Returns once every replica of a cluster routes notifications to the
    /// watch just written (at once outside a cluster).
    async fn routed_everywhere(&self) {
        if let Some(routing) = &self.routing {
            routing.routed_everywhere().await;
        }
    }

    /// Refuses notify targets the tenant may not name: not matching its
    /// callback patterns, an unknown secret, a webhook whose host leads to a
    /// loopback, link-local or metadata address no pattern names exactly.
    async fn check_notify(&self, tenant: &TenantId, policy: &Policy) -> Result<(), Error> {
        for (i, target) in policy.notify.targets.iter().enumerate() {
            let field = format!("policy.notify[{i}]");
            self.tenants
                .current()
                .check_notify_target(tenant, &field, target)?;
            if let NotifyTarget::Webhook { url, .. } = target {
                let field = format!("{field}.webhook.url");
                let parsed =
                    url::Url::parse(url).map_err(|e| Error::invalid(&field, e.to_string()))?;
                let pinned = self.tenants.current().callback_host_pinned(tenant, url);
                address::check(&parsed, pinned)
                    .await
                    .map_err(|e| e.invalid(&field))?;
            }
        }
        Ok(())
    }

    /// Refuses a new watch when `tenant` has `max_active_watches` already,
    /// unless `client_token` names one of them (a retried start).
    async fn check_active_watches(
        &self,
        tenant: &TenantId,
        quotas: &quota::Quotas,
        client_token: Option<&str>,
    ) -> Result<(), Error> {
        if !quota::has_active_place(self.store.as_ref(), tenant, quotas, client_token).await? {
            return Err(quota::too_many_watches(quotas));
        }
        Ok(())
    }
}
