//! Storage notifications in: parses notification documents (S3 `Records`,
//! SNS envelopes, EventBridge events, `s3:TestEvent`) into activities,
//! authorizes each bucket for the caller, routes each key to the watches whose
//! prefix it falls under and whose key filter takes it, and records them
//! through the store in one batch. A key a watch's filter leaves out is
//! nothing to that watch: neither counted nor activity.
//!
//! This file is the pipeline ([`Ingest`]: parse and authorize a call's
//! documents, route, record, tell the observer). Its parts: `parse`
//! (documents and keys, [`parse_document`]), `routes` ([`Routes`], the
//! in-memory routing table the observer keeps current, with the batches
//! routed but not yet recorded, so no watch is called quiet while activity
//! for it is on its way), `watermarks` ([`Watermarks`]: how far the queues
//! have caught up), [`queue`] (SQS, or any [`queue::Queue`]), [`sqs`] (the
//! queue consumers), [`reconcile`] (S3
//! listings) and [`marker`] (a marker's manifest).
//!
//! It must never decide completion (the policy does) nor count a rejected
//! document: bad input is reported per document and changes nothing.

pub mod marker;
mod parse;
pub mod queue;
pub mod reconcile;
mod routes;
pub mod sqs;
mod watermarks;

use std::sync::Arc;

use tracing::Instrument;

pub use self::{
    parse::{
        Document, DocumentError, KeyError, MAX_DOCUMENT_BYTES, MAX_KEY_BYTES, Notification,
        NotificationKind, decode_key, parse_document,
    },
    routes::Routes,
    watermarks::Watermarks,
};
use crate::{
    auth::LiveTenants,
    clock::Clock,
    error::Error,
    metrics::{Metrics, Notifications},
    observer::ObserverHandle,
    store::{Activity, ActivityKind, Recorded, Store},
    watch::{TenantId, WatchKey},
};

/// Most documents in one IngestS3Events call.
pub const MAX_DOCUMENTS: usize = 1000;
/// Most records across the documents of one call.
pub const MAX_RECORDS: usize = 10_000;

/// The outcome of one ingest call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub records: u64,
    pub matched: u64,
    pub counted: u64,
    pub duplicates: u64,
    pub ignored: u64,
    /// `(document index, reason)`; a rejected document changes nothing.
    pub rejected: Vec<(u32, String)>,
}

pub struct Ingest {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) observer: ObserverHandle,
    pub(crate) tenants: LiveTenants,
    pub(crate) clock: Clock,
    pub(crate) metrics: Arc<Metrics>,
}

/// Whose watches a batch of notifications counts into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience<'a> {
    /// The bucket's own notifications (the server's queues, or a tenant the
    /// tenants file names a `forwarder`): every tenant allowed the bucket.
    AllowedTenants,
    /// Notifications a tenant sent through IngestS3Events: its own watches
    /// only, so it can neither count into nor learn of another's.
    Tenant(&'a TenantId),
}

impl Audience<'_> {
    fn includes(self, tenant: &TenantId) -> bool {
        match self {
            Self::AllowedTenants => true,
            Self::Tenant(t) => t == tenant,
        }
    }
}

/// The documents of one IngestS3Events call, parsed and authorized, not yet recorded.
pub struct Parsed {
    notifications: Vec<Notification>,
    report: IngestReport,
    cost: usize,
}

impl Parsed {
    /// What the call costs against the tenant's ingest rate: each document
    /// its number of notification records, at least 1 (a test event, a
    /// rejected document), so parsing is never free.
    pub fn cost(&self) -> usize {
        self.cost
    }
}

impl Ingest {
    /// Parses `documents` sent by `caller` and authorizes their buckets; a
    /// document naming a bucket `caller` may not use is rejected whole.
    pub fn parse(&self, caller: &TenantId, documents: &[String]) -> Result<Parsed, Error> {
        if documents.len() > MAX_DOCUMENTS {
            return Err(Error::invalid(
                "documents",
                format!("{} documents; at most {MAX_DOCUMENTS}", documents.len()),
            ));
        }
        let mut report = IngestReport::default();
        let mut notifications = Vec::new();
        let mut cost = 0;
        let tenants = self.tenants.current();
        for (i, raw) in documents.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let parsed = parse_document(raw);
            cost += match &parsed {
                Ok(Document::Records(records)) => records.len().max(1),
                _ => 1,
            };
            match parsed {
                Ok(Document::Test) => report.ignored += 1,
                Ok(Document::Records(records)) => {
                    if let Some(b) = records.iter().find(|n| !tenants.allows(caller, &n.bucket)) {
                        report.rejected.push((
                            index,
                            format!("bucket {:?} is not allowed for this tenant", b.bucket),
                        ));
                        continue;
                    }
                    notifications.extend(records);
                    if notifications.len() > MAX_RECORDS {
                        return Err(Error::invalid(
                            "documents",
                            format!(
                                "more than {MAX_RECORDS} records in one call; nothing was recorded"
                            ),
                        ));
                    }
                }
                Err(reason) => report.rejected.push((index, reason.to_string())),
            }
        }
        report.records = notifications.len() as u64;
        Ok(Parsed {
            notifications,
            report,
            cost,
        })
    }

    /// Records what [`Ingest::parse`] accepted into the watches of `audience`.
    pub async fn record_parsed(
        &self,
        parsed: Parsed,
        audience: Audience<'_>,
    ) -> Result<IngestReport, Error> {
        let Parsed {
            notifications,
            mut report,
            cost: _,
        } = parsed;
        self.metrics
            .notifications(Notifications::Rejected, report.rejected.len() as u64);
        self.metrics
            .notifications(Notifications::Ignored, report.ignored);
        self.routes
            .within_touch(self.record(&notifications, audience, &mut report))
            .await?;
        Ok(report)
    }

    /// Routes parsed notifications to the watches that want them (of
    /// `audience`'s tenants allowed the bucket) and records them; adds the
    /// outcome to `report`.
    pub async fn record(
        &self,
        notifications: &[Notification],
        audience: Audience<'_>,
        report: &mut IngestReport,
    ) -> Result<(), Error> {
        let before = report.clone();
        let span = tracing::info_span!(
            "ingest.batch",
            records = notifications.len() as i64,
            matched = tracing::field::Empty,
            counted = tracing::field::Empty,
            duplicates = tracing::field::Empty,
        );
        let result = self
            .route_and_record(notifications, audience, report)
            .instrument(span.clone())
            .await;
        let delta = |after: u64, before: u64| after.saturating_sub(before);
        let (matched, counted, duplicates, ignored) = (
            delta(report.matched, before.matched),
            delta(report.counted, before.counted),
            delta(report.duplicates, before.duplicates),
            delta(report.ignored, before.ignored),
        );
        // Span fields as i64: the OpenTelemetry bridge exports u64 as text.
        span.record("matched", matched as i64);
        span.record("counted", counted as i64);
        span.record("duplicates", duplicates as i64);
        let m = &self.metrics;
        m.notifications(Notifications::Received, notifications.len() as u64);
        m.notifications(Notifications::Counted, counted);
        m.notifications(Notifications::Duplicates, duplicates);
        m.notifications(Notifications::Ignored, ignored);
        result
    }

    async fn route_and_record(
        &self,
        notifications: &[Notification],
        audience: Audience<'_>,
        report: &mut IngestReport,
    ) -> Result<(), Error> {
        let _receiving = self.routes.receive(self.clock.now());
        self.routes.wait_fresh().await?;
        let mut activities = Vec::new();
        let tenants = self.tenants.current();
        {
            let map = self
                .routes
                .by_bucket
                .read()
                .unwrap_or_else(|p| p.into_inner());
            for n in notifications {
                let kind = match n.kind {
                    NotificationKind::Created => ActivityKind::Created,
                    NotificationKind::Removed => ActivityKind::Removed,
                    NotificationKind::Other(_) => {
                        report.ignored += 1;
                        continue;
                    }
                };
                // Only valid buckets are routed, so a plain lookup by name suffices.
                let routes = map.get(n.bucket.as_str());
                let mut matched = false;
                for (watch, marker) in routes.into_iter().flat_map(|r| r.matching(&n.key)) {
                    if audience.includes(&watch.tenant) && tenants.allows(&watch.tenant, &n.bucket)
                    {
                        let kind = match (marker, kind) {
                            (false, kind) => kind,
                            (true, ActivityKind::Created) => ActivityKind::Marker,
                            // Removing the marker changes nothing.
                            (true, ActivityKind::Removed | ActivityKind::Marker) => continue,
                        };
                        matched = true;
                        activities.push(Activity {
                            tenant: watch.tenant.clone(),
                            watch_id: watch.id.clone(),
                            kind,
                            key: n.key.clone(),
                            sequencer: n.sequencer.clone(),
                            size: n.size,
                            event_time: n.event_time,
                        });
                    }
                }
                if matched {
                    report.matched += 1;
                } else {
                    report.ignored += 1;
                }
            }
        }
        if activities.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<WatchKey> = activities
            .iter()
            .map(|a| WatchKey {
                tenant: a.tenant.clone(),
                id: a.watch_id.clone(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        let in_flight = self.routes.begin(keys.clone());
        let recorded = self.store.record(activities, self.clock.now()).await;
        // Settle before telling the observer: from here on it either sees the
        // new counters or its guarded write conflicts and re-reads them.
        drop(in_flight);
        let outcome = match recorded {
            Ok(outcome) => outcome,
            Err(e) => {
                self.observer.activity(Vec::new(), keys).await;
                return Err(e.into());
            }
        };
        for result in &outcome.results {
            match result {
                Recorded::Counted => report.counted += 1,
                Recorded::Duplicate => report.duplicates += 1,
                Recorded::NotLive => {}
            }
        }
        let watches = outcome.updated.into_iter().map(|(w, _)| w).collect();
        self.observer.activity(watches, keys).await;
        Ok(())
    }
}
