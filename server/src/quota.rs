//! Per-tenant quotas: the limits a tenant's `[tenant.quotas]` table sets (or
//! the defaults below), and the bookkeeping that enforces them: active
//! watches, open event streams, and a token bucket of ingested notification
//! records per second. A tenant at its limit is refused at once with RESOURCE_EXHAUSTED;
//! nothing here waits, so one tenant's flood never holds up another's calls.
//!
//! It must never keep state that outlives a restart or that another replica
//! needs: the active-watch count is read from the store, the rest is
//! per-process.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    error::Error,
    store::{ListQuery, Store, StoreError},
    watch::{TenantId, WatchState},
};

/// Watches one tenant may have ACTIVE at once.
pub const DEFAULT_MAX_ACTIVE_WATCHES: u32 = 1000;
/// StreamWatchEvents calls one tenant may have open at once (per replica).
pub const DEFAULT_MAX_STREAMS: u32 = 100;
/// Notification records one tenant may send through IngestS3Events per
/// second (per replica). A document with N records costs N; one without any
/// (a test event, a rejected document) costs 1.
pub const DEFAULT_INGEST_RECORDS_PER_SECOND: u32 = 10_000;
/// Records one tenant may send at once after a pause; at least one full
/// IngestS3Events call ([`crate::ingest::MAX_RECORDS`]).
pub const DEFAULT_INGEST_BURST: u32 = 20_000;

/// One tenant's limits, as written under `[tenant.quotas]`; absent fields take the defaults.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    pub max_active_watches: u32,
    pub max_streams: u32,
    pub ingest_records_per_second: u32,
    pub ingest_burst: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_active_watches: DEFAULT_MAX_ACTIVE_WATCHES,
            max_streams: DEFAULT_MAX_STREAMS,
            ingest_records_per_second: DEFAULT_INGEST_RECORDS_PER_SECOND,
            ingest_burst: DEFAULT_INGEST_BURST,
        }
    }
}

impl Quotas {
    /// No limit: for the single open tenant of a server without a tenants
    /// file (loopback only), which has no other tenant to be kept apart from.
    pub const UNLIMITED: Self = Self {
        max_active_watches: u32::MAX,
        max_streams: u32::MAX,
        ingest_records_per_second: u32::MAX,
        ingest_burst: u32::MAX,
    };

    /// Checks the values make sense; `at` names the table in errors.
    pub fn validate(&self, at: &str) -> Result<(), QuotasError> {
        for (name, value) in [
            ("max_active_watches", self.max_active_watches),
            ("max_streams", self.max_streams),
            ("ingest_records_per_second", self.ingest_records_per_second),
            ("ingest_burst", self.ingest_burst),
        ] {
            if value == 0 {
                return Err(QuotasError::Zero {
                    at: at.to_owned(),
                    name,
                });
            }
        }
        Ok(())
    }
}

/// Why a `[tenant.quotas]` table is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotasError {
    /// A limit of 0 would refuse every call; `at` is the table, `name` the field.
    #[error("{at}.{name}: must be at least 1")]
    Zero { at: String, name: &'static str },
}

/// A token bucket on tokio's clock: `rate` tokens a second up to `capacity`.
/// Not `governor`'s: its clocks are not tokio's (which the tests pause), and
/// its rate is fixed per limiter, where ours is read from the tenants file at
/// each call, so a reload applies at once and keeps each tenant's tokens.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(capacity),
            last: now,
        }
    }

    /// Takes `n` tokens, or says how long until `n` are there (nothing taken).
    pub fn take(&mut self, n: u32, rate: u32, capacity: u32, now: Instant) -> Result<(), Duration> {
        self.check(n, rate, capacity, now)?;
        self.tokens -= f64::from(n);
        Ok(())
    }

    /// Whether `n` tokens are there (nothing taken), or how long until they are.
    pub fn check(
        &mut self,
        n: u32,
        rate: u32,
        capacity: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(capacity));
        let wanted = f64::from(n);
        if self.tokens >= wanted {
            return Ok(());
        }
        let missing = wanted - self.tokens;
        // Whole milliseconds, rounded up: a client that waits this long succeeds.
        let wait_ms = (missing / f64::from(rate) * 1000.0).ceil();
        Err(Duration::from_millis(wait_ms as u64))
    }
}

/// The per-process side of the quotas: open streams and ingest buckets per tenant.
#[derive(Default)]
pub struct Limiter {
    streams: Mutex<HashMap<TenantId, u32>>,
    ingest: Mutex<HashMap<TenantId, TokenBucket>>,
    /// Held while a tenant's StartWatch counts its active watches and creates
    /// one, so two concurrent starts cannot both take the last place.
    starts: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

/// One open event stream of a tenant; dropping it frees the place.
pub struct StreamPermit {
    limiter: Arc<Limiter>,
    tenant: TenantId,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut streams = self
            .limiter
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = streams.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.tenant);
            }
        }
    }
}

impl Limiter {
    /// A place for one more open stream of `tenant`, or RESOURCE_EXHAUSTED.
    pub fn open_stream(
        self: &Arc<Self>,
        tenant: &TenantId,
        quotas: &Quotas,
    ) -> Result<StreamPermit, Error> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let open = streams.entry(tenant.clone()).or_default();
        if *open >= quotas.max_streams {
            return Err(Error::ResourceExhausted {
                message: format!(
                    "quota max_streams: this tenant already has {} event streams open; close one first",
                    quotas.max_streams
                ),
                retry_after: None,
            });
        }
        *open += 1;
        Ok(StreamPermit {
            limiter: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Event streams `tenant` has open now.
    pub fn open_streams(&self, tenant: &TenantId) -> u32 {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.get(tenant).copied().unwrap_or(0)
    }

    /// Refuses at once a call of `documents` that cannot fit `tenant`'s ingest
    /// bucket now (every document costs at least 1), before it is parsed.
    pub fn ingest_fits(
        &self,
        tenant: &TenantId,
        documents: usize,
        quotas: &Quotas,
    ) -> Result<(), Error> {
        self.charge(tenant, documents, quotas, false)
    }

    /// Takes `records` (see [`crate::ingest::Parsed::cost`]) from `tenant`'s
    /// ingest bucket, or RESOURCE_EXHAUSTED with how long to wait.
    pub fn ingest(&self, tenant: &TenantId, records: usize, quotas: &Quotas) -> Result<(), Error> {
        self.charge(tenant, records, quotas, true)
    }

    fn charge(
        &self,
        tenant: &TenantId,
        records: usize,
        quotas: &Quotas,
        take: bool,
    ) -> Result<(), Error> {
        let n = u32::try_from(records.max(1)).unwrap_or(u32::MAX);
        if n > quotas.ingest_burst {
            return Err(Error::ResourceExhausted {
                message: format!(
                    "quota ingest_burst: {n} notification records in one call; this tenant may send at most {} at once",
                    quotas.ingest_burst
                ),
                retry_after: None,
            });
        }
        let now = Instant::now();
        let mut buckets = self.ingest.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(tenant.clone())
            .or_insert_with(|| TokenBucket::full(quotas.ingest_burst, now));
        let (rate, burst) = (quotas.ingest_records_per_second, quotas.ingest_burst);
        let charged = if take {
            bucket.take(n, rate, burst, now)
        } else {
            bucket.check(n, rate, burst, now)
        };
        charged.map_err(|wait| Error::ResourceExhausted {
            message: format!(
                "quota ingest_records_per_second: this tenant may send {rate} notification records a second; retry in {} ms",
                wait.as_millis()
            ),
            retry_after: Some(wait),
        })
    }

    /// The lock a tenant's StartWatch holds from counting to creating.
    pub fn start_lock(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        starts.entry(tenant.clone()).or_default().clone()
    }
}

/// `tenant`'s ACTIVE watches, counted in the store (so every replica
/// agrees) up to its `max_active_watches`. StartWatch and reopening by late
/// data both count, holding [`Limiter::start_lock`] until their write is done.
pub async fn active_watches(
    store: &dyn Store,
    tenant: &TenantId,
    quotas: &Quotas,
) -> Result<usize, StoreError> {
    Ok(active_list(store, tenant, quotas).await?.len())
}

async fn active_list(
    store: &dyn Store,
    tenant: &TenantId,
    quotas: &Quotas,
) -> Result<Vec<crate::watch::Watch>, StoreError> {
    store
        .list_watches(
            tenant,
            &ListQuery {
                state: Some(WatchState::Active),
                limit: quotas.max_active_watches as usize,
                ..ListQuery::default()
            },
        )
        .await
}

/// Whether `tenant` has a place for one more ACTIVE watch; a start retried
/// with the `client_token` of an active watch is not a new one.
pub async fn has_active_place(
    store: &dyn Store,
    tenant: &TenantId,
    quotas: &Quotas,
    client_token: Option<&str>,
) -> Result<bool, StoreError> {
    if quotas.max_active_watches == u32::MAX {
        // No limit: nothing to count.
        return Ok(true);
    }
    let active = active_list(store, tenant, quotas).await?;
    let retried =
        client_token.is_some_and(|t| active.iter().any(|w| w.client_token.as_deref() == Some(t)));
    Ok(active.len() < quotas.max_active_watches as usize || retried)
}

/// RESOURCE_EXHAUSTED for a tenant at `max_active_watches`.
pub fn too_many_watches(quotas: &Quotas) -> Error {
    Error::ResourceExhausted {
        message: format!(
            "quota max_active_watches: this tenant already has {} active watches; cancel one or wait for one to finish",
            quotas.max_active_watches
        ),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse("tenant", name).unwrap()
    }

    fn small() -> Quotas {
        Quotas {
            max_active_watches: 2,
            max_streams: 2,
            ingest_records_per_second: 10,
            ingest_burst: 20,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_ingest_bucket_refills_at_its_rate_and_says_when_to_retry() {
        let limiter = Limiter::default();
        let acme = tenant("acme");
        let q = small();
        limiter
            .ingest(&acme, 20, &q)
            .expect("a full bucket holds the burst");
        let Err(Error::ResourceExhausted {
            message,
            retry_after,
        }) = limiter.ingest(&acme, 5, &q)
        else {
            panic!("an empty bucket refuses");
        };
        assert_eq!(
            retry_after,
            Some(Duration::from_millis(500)),
            "5 tokens at 10/s"
        );
        assert!(message.contains("ingest_records_per_second"), "{message}");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(limiter.ingest(&acme, 5, &q).is_err(), "not yet refilled");
        tokio::time::advance(Duration::from_millis(1)).await;
        limiter
            .ingest(&acme, 5, &q)
            .expect("refilled after the hint");
        tokio::time::advance(Duration::from_secs(3600)).await;
        limiter
            .ingest(&acme, 20, &q)
            .expect("refills up to the burst");
        assert!(
            limiter.ingest(&acme, 1, &q).is_err(),
            "but never beyond the burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenants_empty_bucket_leaves_the_others_alone() {
        let limiter = Limiter::default();
        let q = small();
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        limiter.ingest(&acme, 20, &q).unwrap();
        assert!(limiter.ingest(&acme, 1, &q).is_err());
        for _ in 0..20 {
            limiter
                .ingest(&globex, 1, &q)
                .expect("globex has its own bucket");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_checked_against_its_documents_before_it_is_parsed_and_nothing_is_taken() {
        let limiter = Limiter::default();
        let q = small();
        let acme = tenant("acme");
        limiter.ingest(&acme, 15, &q).unwrap();
        for _ in 0..3 {
            limiter
                .ingest_fits(&acme, 5, &q)
                .expect("five documents fit the five tokens left, and checking takes none");
        }
        let Err(Error::ResourceExhausted { retry_after, .. }) = limiter.ingest_fits(&acme, 6, &q)
        else {
            panic!("six documents cost at least six");
        };
        assert_eq!(retry_after, Some(Duration::from_millis(100)));
        limiter
            .ingest(&acme, 5, &q)
            .expect("the five are still there");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_larger_than_the_burst_is_refused_without_a_retry_hint() {
        let limiter = Limiter::default();
        let Err(Error::ResourceExhausted { retry_after, .. }) =
            limiter.ingest(&tenant("acme"), 21, &small())
        else {
            panic!("21 documents never fit a burst of 20");
        };
        assert_eq!(retry_after, None, "waiting would not help");
    }

    #[test]
    fn stream_places_are_freed_when_streams_close() {
        let limiter = Arc::new(Limiter::default());
        let acme = tenant("acme");
        let q = small();
        let a = limiter.open_stream(&acme, &q).unwrap();
        let _b = limiter.open_stream(&acme, &q).unwrap();
        let Err(Error::ResourceExhausted { message, .. }) = limiter.open_stream(&acme, &q) else {
            panic!("the third stream is over the quota");
        };
        assert!(message.contains("max_streams"), "{message}");
        limiter
            .open_stream(&tenant("globex"), &q)
            .expect("per tenant");
        drop(a);
        assert_eq!(limiter.open_streams(&acme), 1);
        let _c = limiter.open_stream(&acme, &q).expect("a place was freed");
    }

    #[test]
    fn zero_limits_are_rejected_by_name() {
        let q = Quotas {
            max_streams: 0,
            ..Quotas::default()
        };
        let err = q.validate("tenant[0].quotas").unwrap_err();
        assert_eq!(
            err.to_string(),
            "tenant[0].quotas.max_streams: must be at least 1"
        );
    }
}
