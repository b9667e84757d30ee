//! The operations the RPCs expose, in domain types: start, read, list,
//! cancel, follow and replay watches (and watch groups), and ingest
//! notifications.
//! Tenancy is enforced here: every call names its tenant, and another
//! tenant's watch is simply not found (a group names only its tenant's own
//! watches). A group's counters are its members' sums, read with it.

use std::sync::Arc;

use futures::{Stream, StreamExt};

use crate::{
    auth::LiveTenants,
    clock::{Clock, Timestamp},
    delivery::address,
    error::Error,
    hub::Hub,
    ingest::{Audience, Ingest, IngestReport},
    observer::ObserverHandle,
    quota::{self, Limiter},
    replay,
    store::{Created, Delivery, ListQuery, ManifestEntry, NewWatch, ObjectsQuery, Store},
    watch::{
        Counters, Labels, NotifyTarget, Policy, SERIES_LABEL, SeriesPrior, Source, TenantId,
        TraceContext, Watch, WatchEvent, WatchId, WatchKey, WatchState,
    },
};

/// Watches per ListWatches page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Completed runs of a series a new watch learns from: the newest ones.
pub const SERIES_RUNS: usize = 5;
/// Members of groups one ListWatches page reads at most (a page of groups
/// ends early rather than read more).
pub const MAX_MEMBER_READS: usize = 2_000;
pub const MAX_PAGE_SIZE: usize = 1000;

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

/// The history of `objects` (`(created, arrived)`), watched from `start`.
fn history_of(start: Timestamp, objects: Vec<(Timestamp, Timestamp)>) -> replay::History {
    let (created, arrivals) = objects
        .into_iter()
        .enumerate()
        .map(|(i, (created, arrived))| {
            let arrival = replay::Arrival {
                at: arrived.max(start),
                object: i as u32,
            };
            (created, arrival)
        })
        .unzip();
    replay::History::new(start, created, arrivals)
}

/// A validated ListWatchObjects.
#[derive(Clone, Debug, Default)]
pub struct ListObjects {
    /// 0: every generation.
    pub generation: u32,
    pub page_size: usize,
    /// The last key of the previous page.
    pub after: Option<String>,
}

/// Manifest objects per page when the caller does not say, and at most.
pub const MAX_OBJECTS_PAGE_SIZE: usize = 1000;

#[derive(Clone, Debug, Default)]
pub struct ListWatches {
    pub state: Option<WatchState>,
    pub labels: Labels,
    pub page_size: usize,
    pub page_token: Option<WatchId>,
}

pub struct Service {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) observer: ObserverHandle,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) tenants: LiveTenants,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) clock: Clock,
    /// Whether this server can list S3 for `policy.reconcile`.
    pub(crate) reconcile_available: bool,
    /// In a cluster: StartWatch returns only once every replica routes to
    /// the new watch.
    pub(crate) routing: Option<Arc<crate::cluster::Routing>>,
    /// ReplayWatch runs one replay at a time: it is CPU-bound.
    pub(crate) replays: Arc<tokio::sync::Semaphore>,
}

/// Objects one ReplayWatch plays at most (each policy evaluates the
/// history's every arrival: 100,000 objects take a second or two of CPU).
pub const MAX_REPLAY_OBJECTS: usize = 100_000;
/// Policies a ReplayWatch may add to the standard candidates.
pub const MAX_REPLAY_POLICIES: usize = 10;

/// A validated ReplayWatch: a watch of the caller's, or objects given.
#[derive(Clone, Debug)]
pub enum ReplaySource {
    Watch(WatchId),
    /// `(created, arrived)` of each object.
    Objects(Vec<(Timestamp, Timestamp)>),
}

/// One policy's outcome on a replayed history.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub name: String,
    pub policy: Policy,
    pub outcome: replay::Outcome,
}

impl Service {
    /// What the standard candidates, the watch's own policy and `extra`
    /// would have decided on a watch's objects (or on objects given).
    pub async fn replay(
        &self,
        tenant: &TenantId,
        source: ReplaySource,
        extra: Vec<(String, Policy)>,
    ) -> Result<(replay::History, Vec<Replayed>), Error> {
        let _running =
            self.replays
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::ResourceExhausted {
                    message: "a replay is running on this server; retry in a few seconds".into(),
                    retry_after: Some(std::time::Duration::from_secs(2)),
                })?;
        let (history, own) = match source {
            ReplaySource::Objects(objects) => {
                let start = objects
                    .iter()
                    .map(|(c, _)| *c)
                    .min()
                    .unwrap_or(Timestamp::from_millis(0));
                (history_of(start, objects), None)
            }
            ReplaySource::Watch(id) => {
                let watch = self.get_watch(tenant, &id).await?;
                if watch.source.as_objects().is_none() {
                    return Err(Error::invalid(
                        "watch_id",
                        "a watch group has no objects of its own",
                    ));
                }
                let mut objects = Vec::new();
                let mut after = None;
                loop {
                    let query = ObjectsQuery {
                        generation: None,
                        after,
                        limit: MAX_OBJECTS_PAGE_SIZE,
                    };
                    let page = self.store.list_objects(tenant, &id, &query).await?;
                    after = page.last().map(|o| o.key.clone());
                    for o in &page {
                        let arrived = o.recorded_at.or(o.event_time);
                        let created = o.event_time.or(o.recorded_at);
                        if let (Some(created), Some(arrived)) = (created, arrived) {
                            objects.push((created, arrived));
                        }
                    }
                    if objects.len() > MAX_REPLAY_OBJECTS {
                        return Err(Error::invalid(
                            "watch_id",
                            format!(
                                "the watch has more than {MAX_REPLAY_OBJECTS} objects; replay a sample of them with `objects`"
                            ),
                        ));
                    }
                    if page.len() < MAX_OBJECTS_PAGE_SIZE {
                        break;
                    }
                }
                let own = Policy {
                    late_window: Some(replay::LATE_WINDOW),
                    notify: Default::default(),
                    ..watch.policy.clone()
                };
                (history_of(watch.created_at, objects), Some(own))
            }
        };
        let mut policies = replay::candidates(history.objects());
        if let Some(own) = own {
            policies.insert(0, ("this watch's policy".to_owned(), own));
        }
        policies.extend(extra);
        let replayed = tokio::task::spawn_blocking(move || {
            let out = policies
                .into_iter()
                .map(|(name, policy)| Replayed {
                    outcome: replay::replay(&policy, &history),
                    name,
                    policy,
                })
                .collect();
            (history, out)
        })
        .await
        .map_err(|_| Error::unavailable("the replay was stopped; retry"))?;
        Ok(replayed)
    }

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
            id: WatchId::generate(),
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

    /// Gives each group among `watches` its members' counters, summed.
    async fn sum_members(&self, tenant: &TenantId, watches: &mut [Watch]) -> Result<(), Error> {
        let mut keys: Vec<WatchKey> = watches.iter().flat_map(Watch::member_keys).collect();
        // Groups may share members; a store reads each once.
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        let members = self.store.watches(&keys).await?;
        for watch in watches.iter_mut().filter(|w| w.is_group()) {
            let ids = watch.source.members();
            watch.counters = Counters::sum(
                members
                    .iter()
                    .filter(|m| m.tenant == *tenant && ids.contains(&m.id))
                    .map(|m| &m.counters),
            );
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

    /// The watch's callback deliveries: none, without a store read, for a
    /// watch without notify targets (only notify targets get outbox entries).
    pub async fn deliveries(&self, watch: &Watch) -> Result<Vec<Delivery>, Error> {
        if watch.policy.notify.targets.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.store.deliveries(&watch.tenant, &watch.id).await?)
    }

    pub async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Watch, Error> {
        let watch = self
            .store
            .get_watch(tenant, id)
            .await?
            .ok_or(Error::NotFound)?;
        let mut watches = [watch];
        self.sum_members(tenant, &mut watches).await?;
        let [watch] = watches;
        Ok(watch)
    }

    /// One page of a watch's manifest and the last key, when more follow.
    pub async fn list_objects(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        list: ListObjects,
    ) -> Result<(Vec<ManifestEntry>, Option<String>), Error> {
        let limit = match list.page_size {
            0 => MAX_OBJECTS_PAGE_SIZE,
            n if n > MAX_OBJECTS_PAGE_SIZE => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be at most {MAX_OBJECTS_PAGE_SIZE}"),
                ));
            }
            n => n,
        };
        let watch = self.get_watch(tenant, id).await?;
        if list.generation > watch.lifecycle.generation {
            return Err(Error::invalid(
                "generation",
                format!("the watch is at generation {}", watch.lifecycle.generation),
            ));
        }
        let query = ObjectsQuery {
            generation: (list.generation > 0).then_some(list.generation),
            after: list.after,
            limit: limit + 1,
        };
        let mut objects = self.store.list_objects(tenant, id, &query).await?;
        let next = if objects.len() > limit {
            objects.truncate(limit);
            objects.last().map(|o| o.key.clone())
        } else {
            None
        };
        Ok((objects, next))
    }

    /// One page of the tenant's watches and the token of the next page.
    pub async fn list_watches(
        &self,
        tenant: &TenantId,
        list: ListWatches,
    ) -> Result<(Vec<Watch>, Option<WatchId>), Error> {
        let limit = match list.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                ));
            }
            n => n,
        };
        let query = ListQuery {
            state: list.state,
            labels: list.labels,
            limit: limit + 1,
            after: list.page_token,
        };
        let mut watches = self.store.list_watches(tenant, &query).await?;
        // A page of groups reads their members: it ends early rather than
        // read more than MAX_MEMBER_READS of them (at least one watch a page).
        let mut members = 0;
        let within = watches
            .iter()
            .take(limit)
            .position(|w| {
                members += w.source.members().len();
                members > MAX_MEMBER_READS
            })
            .map_or(limit, |at| at.max(1));
        let next = if watches.len() > within {
            watches.truncate(within);
            watches.last().map(|w| w.id.clone())
        } else {
            None
        };
        self.sum_members(tenant, &mut watches).await?;
        Ok((watches, next))
    }

    pub async fn cancel_watch(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        reason: String,
    ) -> Result<Watch, Error> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            reason
        };
        let watch = self
            .observer
            .cancel(
                WatchKey {
                    tenant: tenant.clone(),
                    id: id.clone(),
                },
                reason,
            )
            .await?;
        let mut watches = [watch];
        self.sum_members(tenant, &mut watches).await?;
        let [watch] = watches;
        Ok(watch)
    }

    /// The watch's events after `after_seq`. The stream holds a place in the
    /// tenant's `max_streams` quota until it is dropped.
    pub async fn stream_events(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
    ) -> Result<impl Stream<Item = Result<Arc<WatchEvent>, Error>> + Send + Unpin + 'static, Error>
    {
        Ok(self.subscribe(tenant, id, after_seq).await?.1)
    }

    /// [`Self::stream_events`], with the watch as it was when the stream began.
    pub async fn subscribe(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
    ) -> Result<
        (
            Watch,
            impl Stream<Item = Result<Arc<WatchEvent>, Error>> + Send + Unpin + 'static,
        ),
        Error,
    > {
        let watch = self.get_watch(tenant, id).await?;
        if after_seq > watch.last_seq {
            return Err(Error::invalid(
                "after_seq",
                format!(
                    "is {after_seq}, past the watch's last seq {}",
                    watch.last_seq
                ),
            ));
        }
        let permit = self
            .limiter
            .open_stream(tenant, &self.tenants.current().quotas(tenant))?;
        let events = self.hub.subscribe(&watch, after_seq);
        let events = events.map(move |event| {
            let _held = &permit;
            event
        });
        Ok((watch, events))
    }

    /// The tenants table, for following revocations.
    pub fn tenants(&self) -> &LiveTenants {
        &self.tenants
    }

    pub async fn ingest(
        &self,
        tenant: &TenantId,
        documents: &[String],
    ) -> Result<IngestReport, Error> {
        let tenants = self.tenants.current();
        let quotas = tenants.quotas(tenant);
        // Every document costs at least 1: a flood over the quota is refused
        // before it costs a parse.
        self.limiter.ingest_fits(tenant, documents.len(), &quotas)?;
        let parsed = self.ingest.parse(tenant, documents)?;
        self.limiter.ingest(tenant, parsed.cost(), &quotas)?;
        let audience = if tenants.forwards(tenant) {
            Audience::AllowedTenants
        } else {
            Audience::Tenant(tenant)
        };
        self.ingest.record_parsed(parsed, audience).await
    }
}
