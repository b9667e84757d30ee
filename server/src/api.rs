//! The gRPC surface: converts protobuf requests to domain values (failing
//! with INVALID_ARGUMENT naming the field), calls [`Service`], and converts
//! the results back. No decisions are made here.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use streamwatch::v1::{
    self, ingest_service_server::IngestService, watch_service_server::WatchService,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::Credential,
    clock::Timestamp,
    error::Error,
    policy::{self, DelaySchedule, Policy, Rule},
    service::{ListWatches, Service, StartWatch},
    watch::{
        self, Bucket, EventKind, MAX_CLIENT_TOKEN_BYTES, MAX_REASON_BYTES, Prefix, TenantId, Watch,
        WatchEvent, WatchId, WatchState,
    },
};

#[derive(Clone)]
pub struct WatchApi {
    service: Arc<Service>,
}

#[derive(Clone)]
pub struct IngestApi {
    service: Arc<Service>,
}

impl WatchApi {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

impl IngestApi {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

fn tenant<T>(request: &Request<T>) -> Result<TenantId, Status> {
    // The auth layer always sets it; its absence is a wiring bug, not the caller's.
    request
        .extensions()
        .get::<TenantId>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no tenant"))
}

fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>, Error> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "nanos must be below 1e9"));
    }
    let seconds = u64::try_from(d.seconds).unwrap_or(u64::MAX);
    let std = Duration::new(
        seconds.min(max.as_secs() + 1),
        u32::try_from(d.nanos).unwrap_or(0),
    );
    policy::check_duration(field, std, max).map(Some)
}

fn required(
    field: &str,
    d: Option<&prost_types::Duration>,
    max: Duration,
) -> Result<Duration, Error> {
    duration(field, d, max)?.ok_or_else(|| Error::invalid(field, "is required"))
}

/// Parses a protobuf policy; an absent policy is the default quiet period.
pub fn policy_from_proto(p: Option<&v1::Policy>) -> Result<Policy, Error> {
    let Some(p) = p else {
        return Ok(Policy::default());
    };
    let rule = match &p.rule {
        None => Policy::default().rule,
        Some(v1::policy::Rule::Polling(r)) => {
            let schedule = match v1::DelaySchedule::try_from(r.schedule) {
                Ok(v1::DelaySchedule::Unspecified | v1::DelaySchedule::Fixed) => {
                    DelaySchedule::Fixed
                }
                Ok(v1::DelaySchedule::Divide) => DelaySchedule::Divide,
                Ok(v1::DelaySchedule::Exponential) => DelaySchedule::Exponential,
                Err(_) => {
                    return Err(Error::invalid(
                        "policy.polling.schedule",
                        format!("unknown value {}", r.schedule),
                    ));
                }
            };
            Rule::Polling {
                delay: required("policy.polling.delay", r.delay.as_ref(), policy::MAX_WINDOW)?,
                max_repeats: r.max_repeats,
                schedule,
            }
        }
        Some(v1::policy::Rule::QuietPeriod(r)) => Rule::QuietPeriod {
            window: required(
                "policy.quiet_period.window",
                r.window.as_ref(),
                policy::MAX_WINDOW,
            )?,
        },
        Some(v1::policy::Rule::ExpectedCount(r)) => Rule::ExpectedCount {
            objects: r.objects,
            quiet_window: duration(
                "policy.expected_count.quiet_window",
                r.quiet_window.as_ref(),
                policy::MAX_WINDOW,
            )?,
        },
        Some(v1::policy::Rule::Adaptive(r)) => Rule::Adaptive {
            min_window: duration(
                "policy.adaptive.min_window",
                r.min_window.as_ref(),
                policy::MAX_WINDOW,
            )?
            .unwrap_or(policy::DEFAULT_ADAPTIVE_MIN_WINDOW),
            max_window: duration(
                "policy.adaptive.max_window",
                r.max_window.as_ref(),
                policy::MAX_WINDOW,
            )?
            .unwrap_or(policy::DEFAULT_ADAPTIVE_MAX_WINDOW),
            // Unset proto3 doubles read as 0, which no valid setting is.
            quantile: if r.quantile == 0.0 {
                policy::DEFAULT_ADAPTIVE_QUANTILE
            } else {
                r.quantile
            },
            safety_factor: if r.safety_factor == 0.0 {
                policy::DEFAULT_ADAPTIVE_SAFETY_FACTOR
            } else {
                r.safety_factor
            },
        },
    };
    let policy = Policy {
        rule,
        min_objects: p.min_objects,
        timeout: duration("policy.timeout", p.timeout.as_ref(), policy::MAX_TIMEOUT)?,
        late_window: duration(
            "policy.late_window",
            p.late_window.as_ref(),
            policy::MAX_WINDOW,
        )?,
        reconcile: p.reconcile,
    };
    policy.validate()?;
    Ok(policy)
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn proto_timestamp(t: Timestamp) -> prost_types::Timestamp {
    let ms = t.as_millis();
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn policy_to_proto(p: &Policy) -> v1::Policy {
    let rule = match &p.rule {
        Rule::Polling {
            delay,
            max_repeats,
            schedule,
        } => v1::policy::Rule::Polling(v1::PollingRule {
            delay: Some(proto_duration(*delay)),
            max_repeats: *max_repeats,
            schedule: match schedule {
                DelaySchedule::Fixed => v1::DelaySchedule::Fixed,
                DelaySchedule::Divide => v1::DelaySchedule::Divide,
                DelaySchedule::Exponential => v1::DelaySchedule::Exponential,
            } as i32,
        }),
        Rule::QuietPeriod { window } => v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
            window: Some(proto_duration(*window)),
        }),
        Rule::ExpectedCount {
            objects,
            quiet_window,
        } => v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects: *objects,
            quiet_window: quiet_window.map(proto_duration),
        }),
        Rule::Adaptive {
            min_window,
            max_window,
            quantile,
            safety_factor,
        } => v1::policy::Rule::Adaptive(v1::AdaptiveRule {
            min_window: Some(proto_duration(*min_window)),
            max_window: Some(proto_duration(*max_window)),
            quantile: *quantile,
            safety_factor: *safety_factor,
        }),
    };
    v1::Policy {
        rule: Some(rule),
        min_objects: p.min_objects,
        timeout: p.timeout.map(proto_duration),
        late_window: p.late_window.map(proto_duration),
        reconcile: p.reconcile,
    }
}

fn state_to_proto(s: WatchState) -> v1::WatchState {
    match s {
        WatchState::Active => v1::WatchState::Active,
        WatchState::Completed => v1::WatchState::Completed,
        WatchState::TimedOut => v1::WatchState::TimedOut,
        WatchState::Cancelled => v1::WatchState::Cancelled,
        WatchState::Failed => v1::WatchState::Failed,
    }
}

pub fn watch_to_proto(w: &Watch) -> v1::Watch {
    v1::Watch {
        watch_id: w.id.to_string(),
        bucket: w.bucket.to_string(),
        prefix: w.prefix.as_str().to_owned(),
        policy: Some(policy_to_proto(&w.policy)),
        state: state_to_proto(w.state()) as i32,
        object_count: w.counters.object_count,
        event_count: w.counters.event_count,
        removed_count: w.counters.removed_count,
        created_at: Some(proto_timestamp(w.created_at)),
        last_activity_at: w.counters.last_activity_at.map(proto_timestamp),
        completed_at: w.lifecycle.completed_at.map(proto_timestamp),
        generation: w.lifecycle.generation,
        last_seq: w.last_seq,
        reason: w.lifecycle.reason.clone(),
        labels: w.labels.clone().into_iter().collect(),
        adaptive_window: policy::adaptive_window(w).map(|a| v1::AdaptiveWindow {
            window: Some(proto_duration(a.window)),
            gap_quantile: a.gap_quantile.map(proto_duration),
            gaps: a.gaps,
            explanation: a.to_string(),
        }),
    }
}

pub fn event_to_proto(e: &WatchEvent) -> v1::WatchEvent {
    use v1::watch_event::{self as we, Kind};
    let kind = match &e.kind {
        EventKind::Started { watch } => Kind::Started(we::Started {
            watch: Some(watch_to_proto(watch)),
        }),
        EventKind::Progress { counters } => Kind::Progress(we::Progress {
            object_count: counters.object_count,
            event_count: counters.event_count,
            removed_count: counters.removed_count,
            last_activity_at: counters.last_activity_at.map(proto_timestamp),
        }),
        EventKind::QuietTick {
            object_count,
            repeated,
            max_repeats,
        } => Kind::QuietTick(we::QuietTick {
            object_count: *object_count,
            repeated: *repeated,
            max_repeats: *max_repeats,
        }),
        EventKind::Completed {
            object_count,
            reason,
        } => Kind::Completed(we::Completed {
            object_count: *object_count,
            reason: reason.clone(),
        }),
        EventKind::TimedOut {
            object_count,
            reason,
        } => Kind::TimedOut(we::TimedOut {
            object_count: *object_count,
            reason: reason.clone(),
        }),
        EventKind::Cancelled { reason } => Kind::Cancelled(we::Cancelled {
            reason: reason.clone(),
        }),
        EventKind::Reopened {
            object_count,
            reason,
        } => Kind::Reopened(we::Reopened {
            object_count: *object_count,
            reason: reason.clone(),
        }),
    };
    v1::WatchEvent {
        watch_id: e.watch_id.to_string(),
        seq: e.seq,
        time: Some(proto_timestamp(e.time)),
        generation: e.generation,
        kind: Some(kind),
    }
}

pub fn start_from_proto(r: &v1::StartWatchRequest) -> Result<StartWatch, Error> {
    let labels: watch::Labels = r.labels.clone().into_iter().collect();
    watch::validate_labels("labels", &labels)?;
    if r.client_token.len() > MAX_CLIENT_TOKEN_BYTES {
        return Err(Error::invalid(
            "client_token",
            format!("must be at most {MAX_CLIENT_TOKEN_BYTES} bytes"),
        ));
    }
    Ok(StartWatch {
        bucket: Bucket::parse("bucket", &r.bucket)?,
        prefix: Prefix::parse("prefix", &r.prefix)?,
        policy: policy_from_proto(r.policy.as_ref())?,
        labels,
        client_token: (!r.client_token.is_empty()).then(|| r.client_token.clone()),
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send + 'static>>;

/// `events` until they end or `revoked` resolves; then one UNAUTHENTICATED
/// and the end.
fn until_revoked<S>(
    events: S,
    revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> impl Stream<Item = Result<v1::WatchEvent, Status>> + Send + 'static
where
    S: Stream<Item = Result<v1::WatchEvent, Status>> + Send + Unpin + 'static,
{
    futures::stream::unfold(Some((events, revoked)), |state| async move {
        let (mut events, mut revoked) = state?;
        tokio::select! {
            biased;
            () = &mut revoked => Some((
                Err(Status::unauthenticated("the credential of this stream was revoked")),
                None,
            )),
            item = events.next() => item.map(|item| (item, Some((events, revoked)))),
        }
    })
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    async fn start_watch(
        &self,
        request: Request<v1::StartWatchRequest>,
    ) -> Result<Response<v1::StartWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let start = start_from_proto(request.get_ref())?;
        let (watch, created) = self.service.start_watch(&tenant, start).await?;
        Ok(Response::new(v1::StartWatchResponse {
            watch: Some(watch_to_proto(&watch)),
            created,
        }))
    }

    async fn get_watch(
        &self,
        request: Request<v1::GetWatchRequest>,
    ) -> Result<Response<v1::GetWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let id = WatchId::parse("watch_id", &request.get_ref().watch_id)?;
        let watch = self.service.get_watch(&tenant, &id).await?;
        Ok(Response::new(v1::GetWatchResponse {
            watch: Some(watch_to_proto(&watch)),
        }))
    }

    async fn list_watches(
        &self,
        request: Request<v1::ListWatchesRequest>,
    ) -> Result<Response<v1::ListWatchesResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let state = match v1::WatchState::try_from(r.state) {
            Ok(v1::WatchState::Unspecified) => None,
            Ok(v1::WatchState::Active) => Some(WatchState::Active),
            Ok(v1::WatchState::Completed) => Some(WatchState::Completed),
            Ok(v1::WatchState::TimedOut) => Some(WatchState::TimedOut),
            Ok(v1::WatchState::Cancelled) => Some(WatchState::Cancelled),
            Ok(v1::WatchState::Failed) => Some(WatchState::Failed),
            Err(_) => {
                return Err(Error::invalid("state", format!("unknown value {}", r.state)).into());
            }
        };
        let labels: watch::Labels = r.labels.clone().into_iter().collect();
        watch::validate_labels("labels", &labels)?;
        let page_token = match r.page_token.as_str() {
            "" => None,
            token => Some(WatchId::parse("page_token", token)?),
        };
        let list = ListWatches {
            state,
            labels,
            page_size: r.page_size as usize,
            page_token,
        };
        let (watches, next) = self.service.list_watches(&tenant, list).await?;
        Ok(Response::new(v1::ListWatchesResponse {
            watches: watches.iter().map(watch_to_proto).collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel_watch(
        &self,
        request: Request<v1::CancelWatchRequest>,
    ) -> Result<Response<v1::CancelWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let id = WatchId::parse("watch_id", &r.watch_id)?;
        if r.reason.len() > MAX_REASON_BYTES {
            return Err(Error::invalid(
                "reason",
                format!("must be at most {MAX_REASON_BYTES} bytes"),
            )
            .into());
        }
        let watch = self
            .service
            .cancel_watch(&tenant, &id, r.reason.clone())
            .await?;
        Ok(Response::new(v1::CancelWatchResponse {
            watch: Some(watch_to_proto(&watch)),
        }))
    }

    type StreamWatchEventsStream = EventStream;

    async fn stream_watch_events(
        &self,
        request: Request<v1::StreamWatchEventsRequest>,
    ) -> Result<Response<Self::StreamWatchEventsStream>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let id = WatchId::parse("watch_id", &r.watch_id)?;
        let credential = request
            .extensions()
            .get::<Credential>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no credential"))?;
        let events = self
            .service
            .stream_events(&tenant, &id, r.after_seq)
            .await?;
        let events = events.map(|item| item.map(|e| event_to_proto(&e)).map_err(Status::from));
        let revoked = Box::pin(self.service.tenants().revoked(credential, tenant));
        Ok(Response::new(Box::pin(until_revoked(events, revoked))))
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn ingest_s3_events(
        &self,
        request: Request<v1::IngestS3EventsRequest>,
    ) -> Result<Response<v1::IngestS3EventsResponse>, Status> {
        let tenant = tenant(&request)?;
        let report = self
            .service
            .ingest(&tenant, &request.get_ref().documents)
            .await?;
        Ok(Response::new(v1::IngestS3EventsResponse {
            records: report.records,
            matched: report.matched,
            counted: report.counted,
            duplicates: report.duplicates,
            ignored: report.ignored,
            rejected: report
                .rejected
                .into_iter()
                .map(|(index, reason)| v1::RejectedDocument { index, reason })
                .collect(),
        }))
    }
}
