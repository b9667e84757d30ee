//! The observer's writes, off its loop: a batch of decided transitions
//! (each reopening first taking a place under its tenant's quota) or a
//! cancellation goes to the store in a task of its own, and the outcome comes
//! back to the loop as a message. The loop never waits for the store.
//!
//! This module never touches the observer's state and never publishes: the
//! loop hands committed events on once the decision's span has ended, so a
//! consumer that follows the trace finds the decision.

use std::{collections::HashMap, sync::Arc};

use opentelemetry::trace::FutureExt as _;

use crate::{
    auth::LiveTenants,
    clock::{Clock, Timestamp},
    error::Error,
    metrics::Metrics,
    policy,
    quota::{self, Limiter},
    store::{Applied, Change, Fence, Guard, Store, StoreError},
    watch::{EventKind, Lifecycle, TenantId, Watch, WatchEvent, WatchKey, WatchState},
};

/// How often a cancellation re-reads a watch that changed under it.
const MAX_CONFLICTS: usize = 16;

/// A lifecycle change the policy decided, on its way to the store.
pub(super) struct Transition {
    pub key: WatchKey,
    pub guard: Guard,
    /// The trace context of the decision's span (linked to the watch's
    /// StartWatch trace): the write's spans are its children. The span itself
    /// ended when the decision was made, so it is exported before anyone
    /// hears of the outcome.
    pub decided: opentelemetry::Context,
    pub lifecycle: Lifecycle,
    /// The rest of the decision (its events, next wake-up), carried out once written.
    pub decision: policy::Decision,
    pub now: Timestamp,
    /// The lease the write needs (in a cluster).
    pub fence: Option<Fence>,
    /// The watch's lifecycle as decided on, and the end of its late window:
    /// what a reopening refused a place keeps.
    pub was: Lifecycle,
    pub late_window_end: Option<Timestamp>,
}

/// What became of a transition.
pub(super) enum Outcome {
    Written(Box<Result<Option<Applied>, StoreError>>),
    /// A reopening refused a place again, and the watch already says why:
    /// nothing to write; carry out the (replaced) decision.
    Unchanged,
    /// The tenant's active watches could not be counted: decide again later.
    Retry,
}

/// A tenant's active watches as a batch of reopenings takes places, with
/// its start lock held until the batch is written.
struct Places {
    _lock: tokio::sync::OwnedMutexGuard<()>,
    active: usize,
}

/// What the observer's writes need; shared by its write tasks.
pub(super) struct Writer {
    pub store: Arc<dyn Store>,
    /// Quotas a reopening counts against, as a start does (set before the loop runs).
    pub quotas: std::sync::OnceLock<(LiveTenants, Arc<Limiter>)>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
}

impl Writer {
    /// Writes `batch` concurrently, so the store records the transitions
    /// together (one group commit for watches whose deadlines fell
    /// together); returns each with its outcome, in order.
    pub async fn write(&self, batch: Vec<Transition>) -> Vec<(Transition, Outcome)> {
        // Held until the reopenings are written, so no start takes their place meanwhile.
        let mut places = HashMap::new();
        let mut out = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        for t in batch {
            match self.within_quota(t, &mut places).await {
                (t, None) => pending.push(t),
                (t, Some(outcome)) => out.push((t, outcome)),
            }
        }
        let results = futures::future::join_all(pending.iter().map(|t| self.apply(t))).await;
        drop(places);
        out.extend(
            pending
                .into_iter()
                .zip(results)
                .map(|(t, r)| (t, Outcome::Written(Box::new(r)))),
        );
        out
    }

    async fn apply(&self, t: &Transition) -> Result<Option<Applied>, StoreError> {
        let change = Change {
            fence: t.fence.clone(),
            ..Change::new(
                &t.key.tenant,
                &t.key.id,
                t.guard,
                t.lifecycle.clone(),
                t.decision.events.clone(),
                t.now,
            )
        };
        self.store
            .apply(change)
            .with_context(t.decided.clone())
            .await
    }

    /// `t` to write (`None`), or what became of it: a reopening takes a
    /// place under the tenant's `max_active_watches`, counted in the store
    /// once per batch and then here (`places` holds each tenant's start lock
    /// and count until the batch is written). Without a place the watch stays
    /// completed and its reason says why; it is decided again on its next
    /// activity and at the end of its late window, and reopens then if a
    /// place has freed up.
    async fn within_quota(
        &self,
        mut t: Transition,
        places: &mut HashMap<TenantId, Places>,
    ) -> (Transition, Option<Outcome>) {
        let reopens = matches!(t.decision.events.first(), Some(EventKind::Reopened { .. }));
        let Some((tenants, limiter)) = self.quotas.get().filter(|_| reopens) else {
            return (t, None);
        };
        let quotas = tenants.current().quotas(&t.key.tenant);
        if quotas.max_active_watches == u32::MAX {
            return (t, None);
        }
        if !places.contains_key(&t.key.tenant) {
            let lock = limiter.start_lock(&t.key.tenant).lock_owned().await;
            match quota::active_watches(self.store.as_ref(), &t.key.tenant, &quotas).await {
                Ok(active) => {
                    let tenant = t.key.tenant.clone();
                    places.insert(
                        tenant,
                        Places {
                            _lock: lock,
                            active,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(tenant = %t.key.tenant, watch_id = %t.key.id, error = %e,
                        "cannot count active watches for a reopening; retrying");
                    return (t, Some(Outcome::Retry));
                }
            }
        }
        if let Some(tenant_places) = places.get_mut(&t.key.tenant)
            && tenant_places.active < quotas.max_active_watches as usize
        {
            tenant_places.active += 1;
            return (t, None);
        }
        let reason = format!(
            "late activity not reopened: quota max_active_watches: this tenant already has {} active watches",
            quotas.max_active_watches
        );
        self.metrics.transition("reopen_refused");
        let window_open = t.late_window_end.filter(|end| t.now < *end);
        t.decision = policy::Decision {
            wake_at: window_open,
            ..policy::Decision::default()
        };
        if t.was.reason == reason {
            // Refused before and told so: nothing new to write.
            return (t, Some(Outcome::Unchanged));
        }
        tracing::info!(tenant = %t.key.tenant, watch_id = %t.key.id, max_active_watches = quotas.max_active_watches,
            "late activity not reopened: the tenant is at its quota of active watches");
        t.lifecycle = Lifecycle {
            reason,
            ..t.was.clone()
        };
        (t, None)
    }

    /// Cancels `key` (as `current`, when the observer times it; else read
    /// here): its CANCELLED event, once written.
    pub async fn cancel(
        &self,
        key: &WatchKey,
        current: Option<Watch>,
        reason: String,
    ) -> Result<Box<(Watch, Vec<WatchEvent>)>, Error> {
        let mut current = match current {
            Some(watch) => watch,
            None => self
                .store
                .get_watch(&key.tenant, &key.id)
                .await?
                .ok_or(Error::NotFound)?,
        };
        for _ in 0..MAX_CONFLICTS {
            if current.state() != WatchState::Active {
                return Err(Error::FailedPrecondition(format!(
                    "watch {} is {}; only an ACTIVE watch can be cancelled",
                    current.id,
                    current.state().as_str()
                )));
            }
            let now = self.clock.now();
            let lifecycle = Lifecycle {
                state: WatchState::Cancelled,
                completed_at: Some(now),
                reason: reason.clone(),
                ..current.lifecycle.clone()
            };
            let guard = Guard {
                state: WatchState::Active,
                generation: current.lifecycle.generation,
                activity: None,
            };
            let events = vec![EventKind::Cancelled {
                reason: reason.clone(),
            }];
            match self
                .store
                .apply(Change::new(
                    &key.tenant,
                    &key.id,
                    guard,
                    lifecycle,
                    events,
                    now,
                ))
                .await?
            {
                Some(Applied::Done { watch, events }) => return Ok(Box::new((watch, events))),
                Some(Applied::Conflict(now_is)) => current = now_is,
                None => return Err(Error::NotFound),
            }
        }
        Err(Error::Aborted(
            "the watch is changing too fast to cancel; retry".into(),
        ))
    }
}
