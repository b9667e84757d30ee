//! The operations the RPCs expose, in domain types: start, read, list,
//! cancel, follow and replay watches (and watch groups), and ingest
//! notifications.
//! Tenancy is enforced here: every call names its tenant, and another
//! tenant's watch is simply not found (a group names only its tenant's own
//! watches). A group's counters are its members' sums, read with it.
//!
//! This file holds [`Service`] and the reads, lists, cancels, streams and
//! ingest calls. Its parts: `start` (StartWatch: the checks against the
//! tenant's callbacks, buckets, members and quotas, then the series prior)
//! and `replay` (ReplayWatch: what policies would have decided on a
//! history). It takes domain values only, never protobuf, and must never
//! time a watch (the observer does) or decide completion (the policy does).

mod replay;
mod start;

use std::sync::Arc;

use futures::{Stream, StreamExt};

pub use self::{
    replay::{MAX_REPLAY_OBJECTS, MAX_REPLAY_POLICIES, ReplaySource, Replayed},
    start::{SERIES_RUNS, StartWatch},
};
use crate::{
    auth::LiveTenants,
    clock::Clock,
    error::Error,
    hub::Hub,
    ingest::{Audience, Ingest, IngestReport},
    observer::ObserverHandle,
    quota::Limiter,
    store::{Delivery, ListQuery, ManifestEntry, ObjectsQuery, Store},
    watch::{Counters, Labels, TenantId, Watch, WatchEvent, WatchId, WatchKey, WatchState},
};

/// Watches per ListWatches page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Members of groups one ListWatches page reads at most (a page of groups
/// ends early rather than read more).
pub const MAX_MEMBER_READS: usize = 2_000;
pub const MAX_PAGE_SIZE: usize = 1000;
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
    /// Where new watch ids take their random bits.
    pub(crate) ids: std::sync::Mutex<fastrand::Rng>,
}
impl Service {
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
