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
    ingest::MAX_KEY_BYTES,
    policy,
    service::{ListObjects, ListWatches, Service, StartWatch},
    store::{Delivery, DeliveryState, ManifestEntry},
    telemetry::{self, IncomingTrace},
    watch::{
        self, Bucket, DelaySchedule, EventKind, KeyFilter, MAX_CLIENT_TOKEN_BYTES,
        MAX_REASON_BYTES, Notify, NotifyTarget, Policy, Prefix, Rule, Source, TenantId,
        TraceContext, Watch, WatchEvent, WatchId, WatchState,
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
    let tenant = request
        .extensions()
        .get::<TenantId>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no tenant"))?;
    telemetry::record_tenant(tenant.as_str());
    Ok(tenant)
}

/// Parses the request's watch id and names it on the call's span.
fn watch_id(raw: &str) -> Result<WatchId, Error> {
    let id = WatchId::parse("watch_id", raw)?;
    telemetry::record_watch(id.as_str());
    Ok(id)
}

fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>, Error> {
    duration_in(field, d, crate::watch::policy::MIN_DURATION, max)
}

fn duration_in(
    field: &str,
    d: Option<&prost_types::Duration>,
    min: Duration,
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
    crate::watch::policy::check_duration_in(field, std, min, max).map(Some)
}

fn required(
    field: &str,
    d: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    duration_in(field, d, min, max)?.ok_or_else(|| Error::invalid(field, "is required"))
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
                delay: required(
                    "policy.polling.delay",
                    r.delay.as_ref(),
                    crate::watch::policy::MIN_POLLING_DELAY,
                    crate::watch::policy::MAX_WINDOW,
                )?,
                max_repeats: r.max_repeats,
                schedule,
            }
        }
        Some(v1::policy::Rule::QuietPeriod(r)) => Rule::QuietPeriod {
            window: required(
                "policy.quiet_period.window",
                r.window.as_ref(),
                crate::watch::policy::MIN_DURATION,
                crate::watch::policy::MAX_WINDOW,
            )?,
        },
        Some(v1::policy::Rule::ExpectedCount(r)) => Rule::ExpectedCount {
            objects: r.objects,
            quiet_window: duration(
                "policy.expected_count.quiet_window",
                r.quiet_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?,
        },
        Some(v1::policy::Rule::Adaptive(r)) => Rule::Adaptive {
            min_window: duration(
                "policy.adaptive.min_window",
                r.min_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?
            // A listing confirms what late notifications have not told yet:
            // the floor need not cover their delay.
            .unwrap_or(if p.reconcile {
                crate::watch::policy::DEFAULT_ADAPTIVE_CONFIRMED_MIN_WINDOW
            } else {
                crate::watch::policy::DEFAULT_ADAPTIVE_MIN_WINDOW
            }),
            max_window: duration(
                "policy.adaptive.max_window",
                r.max_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?
            .unwrap_or(crate::watch::policy::DEFAULT_ADAPTIVE_MAX_WINDOW),
            // Unset proto3 doubles read as 0, which no valid setting is.
            quantile: if r.quantile == 0.0 {
                crate::watch::policy::DEFAULT_ADAPTIVE_QUANTILE
            } else {
                r.quantile
            },
            safety_factor: if r.safety_factor != 0.0 {
                r.safety_factor
            } else if p.reconcile {
                crate::watch::policy::DEFAULT_ADAPTIVE_CONFIRMED_SAFETY_FACTOR
            } else {
                crate::watch::policy::DEFAULT_ADAPTIVE_SAFETY_FACTOR
            },
        },
        Some(v1::policy::Rule::Marker(r)) => Rule::Marker {
            key: r.key.clone(),
            quiet_window: duration(
                "policy.marker.quiet_window",
                r.quiet_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?,
            verify_manifest: r.verify_manifest,
        },
    };
    if p.notify.len() > MAX_NOTIFY_TARGETS {
        return Err(Error::invalid(
            "policy.notify",
            format!(
                "has {} targets; at most {MAX_NOTIFY_TARGETS}",
                p.notify.len()
            ),
        ));
    }
    let targets = p
        .notify
        .iter()
        .enumerate()
        .map(|(i, t)| notify_target_from_proto(&format!("policy.notify[{i}]"), t))
        .collect::<Result<_, _>>()?;
    let policy = Policy {
        rule,
        notify: Notify {
            targets,
            reopened: p.notify_reopened,
        },
        min_objects: p.min_objects,
        timeout: duration(
            "policy.timeout",
            p.timeout.as_ref(),
            crate::watch::policy::MAX_TIMEOUT,
        )?,
        late_window: duration(
            "policy.late_window",
            p.late_window.as_ref(),
            crate::watch::policy::MAX_WINDOW,
        )?,
        reconcile: p.reconcile,
    };
    policy.validate()?;
    Ok(policy)
}

/// Most notify targets one watch may name.
pub const MAX_NOTIFY_TARGETS: usize = 8;
/// Longest webhook URL, queue URL or topic ARN accepted.
pub const MAX_TARGET_BYTES: usize = 2048;

fn required_text(field: &str, value: &str) -> Result<String, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.len() > MAX_TARGET_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; at most {MAX_TARGET_BYTES}", value.len()),
        ));
    }
    Ok(value.to_owned())
}

fn notify_target_from_proto(field: &str, t: &v1::NotifyTarget) -> Result<NotifyTarget, Error> {
    use v1::notify_target::Target;
    match &t.target {
        None => Err(Error::invalid(
            field,
            "names no target (webhook, sqs, sns or manifest)",
        )),
        Some(Target::Webhook(w)) => {
            let url_field = format!("{field}.webhook.url");
            let url = required_text(&url_field, &w.url)?;
            let parsed =
                url::Url::parse(&url).map_err(|e| Error::invalid(&url_field, e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::invalid(&url_field, "must be an http or https URL"));
            }
            if parsed.host().is_none() {
                return Err(Error::invalid(&url_field, "has no host"));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(Error::invalid(
                    &url_field,
                    "must not carry credentials; webhooks are signed with a callback secret",
                ));
            }
            Ok(NotifyTarget::Webhook {
                url,
                secret_ref: required_text(&format!("{field}.webhook.secret_ref"), &w.secret_ref)?,
            })
        }
        Some(Target::Sqs(q)) => Ok(NotifyTarget::Sqs {
            queue_url: required_text(&format!("{field}.sqs.queue_url"), &q.queue_url)?,
        }),
        Some(Target::Sns(n)) => Ok(NotifyTarget::Sns {
            topic_arn: required_text(&format!("{field}.sns.topic_arn"), &n.topic_arn)?,
        }),
        Some(Target::Manifest(m)) => {
            let bucket = Bucket::parse(&format!("{field}.manifest.bucket"), &m.bucket)?;
            let key_field = format!("{field}.manifest.key");
            if m.key.is_empty() {
                return Err(Error::invalid(&key_field, "is required"));
            }
            if m.key.len() > MAX_KEY_BYTES {
                return Err(Error::invalid(
                    &key_field,
                    format!("is {} bytes; at most {MAX_KEY_BYTES}", m.key.len()),
                ));
            }
            if m.key.chars().any(char::is_control) {
                return Err(Error::invalid(
                    &key_field,
                    "must not contain control characters",
                ));
            }
            Ok(NotifyTarget::Manifest {
                bucket,
                key: m.key.clone(),
            })
        }
    }
}

fn notify_target_to_proto(t: &NotifyTarget) -> v1::NotifyTarget {
    use v1::notify_target::Target;
    let target = match t {
        NotifyTarget::Webhook { url, secret_ref } => Target::Webhook(v1::WebhookTarget {
            url: url.clone(),
            secret_ref: secret_ref.clone(),
        }),
        NotifyTarget::Sqs { queue_url } => Target::Sqs(v1::SqsTarget {
            queue_url: queue_url.clone(),
        }),
        NotifyTarget::Sns { topic_arn } => Target::Sns(v1::SnsTarget {
            topic_arn: topic_arn.clone(),
        }),
        NotifyTarget::Manifest { bucket, key } => Target::Manifest(v1::S3ManifestTarget {
            bucket: bucket.as_str().to_owned(),
            key: key.clone(),
        }),
    };
    v1::NotifyTarget {
        target: Some(target),
    }
}

pub fn delivery_to_proto(d: &Delivery) -> v1::Delivery {
    v1::Delivery {
        seq: d.seq,
        generation: d.generation,
        target: d.target_index,
        state: match d.state {
            DeliveryState::Pending => v1::DeliveryState::Pending,
            DeliveryState::Delivered => v1::DeliveryState::Delivered,
            DeliveryState::Failed => v1::DeliveryState::Failed,
        } as i32,
        attempts: d.attempts,
        last_status: d.last_status.clone(),
        last_error: d.last_error.clone(),
        next_attempt_at: (d.state == DeliveryState::Pending)
            .then(|| proto_timestamp(d.next_attempt_at)),
        finished_at: d.finished_at.map(proto_timestamp),
        idempotency_key: d.idempotency_key(),
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A signed span of milliseconds as a protobuf Duration (seconds and nanos share its sign).
fn signed_duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A request timestamp, checked: years 1970-9999, nanos below 1e9.
fn timestamp(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<Timestamp>, Error> {
    let Some(t) = t else { return Ok(None) };
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(0..=MAX_SECONDS).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(
            field,
            "must be a time between 1970 and 9999",
        ));
    }
    Ok(Some(Timestamp::from_millis(
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
    )))
}

/// What a ReplayWatch replays: the caller's watch, or the objects it gives.
fn replay_source(r: &v1::ReplayWatchRequest) -> Result<crate::service::ReplaySource, Error> {
    match (r.watch_id.is_empty(), r.objects.is_empty()) {
        (false, false) => Err(Error::invalid(
            "objects",
            "give a watch_id or objects, not both",
        )),
        (true, true) => Err(Error::invalid("watch_id", "is required (or give objects)")),
        (false, true) => Ok(crate::service::ReplaySource::Watch(watch_id(&r.watch_id)?)),
        (true, false) => {
            if r.objects.len() > crate::service::MAX_REPLAY_OBJECTS {
                return Err(Error::invalid(
                    "objects",
                    format!(
                        "has {} objects; at most {}",
                        r.objects.len(),
                        crate::service::MAX_REPLAY_OBJECTS
                    ),
                ));
            }
            let objects = r
                .objects
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let created = timestamp(&format!("objects[{i}].created"), o.created.as_ref())?
                        .ok_or_else(|| {
                            Error::invalid(&format!("objects[{i}].created"), "is required")
                        })?;
                    let arrived = timestamp(&format!("objects[{i}].arrived"), o.arrived.as_ref())?
                        .unwrap_or(created);
                    if arrived < created {
                        return Err(Error::invalid(
                            &format!("objects[{i}].arrived"),
                            "is before the object was created",
                        ));
                    }
                    Ok((created, arrived))
                })
                .collect::<Result<_, Error>>()?;
            Ok(crate::service::ReplaySource::Objects(objects))
        }
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
        Rule::Marker {
            key,
            quiet_window,
            verify_manifest,
        } => v1::policy::Rule::Marker(v1::MarkerRule {
            key: key.clone(),
            quiet_window: quiet_window.map(proto_duration),
            verify_manifest: *verify_manifest,
        }),
    };
    v1::Policy {
        rule: Some(rule),
        min_objects: p.min_objects,
        timeout: p.timeout.map(proto_duration),
        late_window: p.late_window.map(proto_duration),
        reconcile: p.reconcile,
        notify: p
            .notify
            .targets
            .iter()
            .map(notify_target_to_proto)
            .collect(),
        notify_reopened: p.notify.reopened,
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
    let objects = w.source.as_objects();
    let mut policy = policy_to_proto(&w.policy);
    if w.is_group() {
        // Its members decide a group's completion: it has no rule.
        policy.rule = None;
    }
    v1::Watch {
        watch_id: w.id.to_string(),
        bucket: objects.map(|o| o.bucket.to_string()).unwrap_or_default(),
        prefix: objects
            .map(|o| o.prefix.as_str().to_owned())
            .unwrap_or_default(),
        members: w.source.members().iter().map(|id| id.to_string()).collect(),
        policy: Some(policy),
        state: state_to_proto(w.state()) as i32,
        object_count: w.counters.object_count,
        event_count: w.counters.event_count,
        removed_count: w.counters.removed_count,
        object_bytes: w.counters.object_bytes,
        include: objects
            .map(|o| o.filter.include.clone())
            .unwrap_or_default(),
        exclude: objects
            .map(|o| o.filter.exclude.clone())
            .unwrap_or_default(),
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
        marker: marker_status(w),
        newest_event_time: w.counters.newest_event_at.map(proto_timestamp),
        deliveries: Vec::new(),
        traceparent: w.trace.traceparent.clone(),
        tracestate: w.trace.tracestate.clone(),
    }
}

fn marker_status(w: &Watch) -> Option<v1::MarkerStatus> {
    let Rule::Marker { .. } = &w.policy.rule else {
        return None;
    };
    let check = w
        .lifecycle
        .polling
        .manifest
        .as_ref()
        .filter(|c| c.marker == w.counters.marker_count);
    Some(v1::MarkerStatus {
        created_at: w.counters.marker_at.map(proto_timestamp),
        seen: policy::marker_seen(w).is_some(),
        manifest_files: check.map_or(0, |c| c.listed),
        manifest_missing: check.map_or(0, |c| c.missing),
        manifest_problem: check.map(|c| c.problem.clone()).unwrap_or_default(),
    })
}

/// `e` as sent to subscribers: stamped with `trace`, its watch's StartWatch context.
pub fn event_to_proto(e: &WatchEvent, trace: &TraceContext) -> v1::WatchEvent {
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
            object_bytes: counters.object_bytes,
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
            object_bytes,
            reason,
        } => Kind::Completed(we::Completed {
            object_count: *object_count,
            object_bytes: *object_bytes,
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
        EventKind::DeliveryFailed {
            seq,
            target,
            attempts,
            last_error,
        } => Kind::DeliveryFailed(we::DeliveryFailed {
            seq: *seq,
            target: *target,
            attempts: *attempts,
            last_error: last_error.clone(),
        }),
    };
    v1::WatchEvent {
        watch_id: e.watch_id.to_string(),
        seq: e.seq,
        time: Some(proto_timestamp(e.time)),
        generation: e.generation,
        traceparent: trace.traceparent.clone(),
        tracestate: trace.tracestate.clone(),
        kind: Some(kind),
    }
}

/// Parses a StartWatch request made under `trace`.
pub fn start_from_proto(
    r: &v1::StartWatchRequest,
    trace: TraceContext,
) -> Result<StartWatch, Error> {
    let labels: watch::Labels = r.labels.clone().into_iter().collect();
    watch::validate_labels("labels", &labels)?;
    if r.client_token.len() > MAX_CLIENT_TOKEN_BYTES {
        return Err(Error::invalid(
            "client_token",
            format!("must be at most {MAX_CLIENT_TOKEN_BYTES} bytes"),
        ));
    }
    let (source, policy) = if r.members.is_empty() {
        let source = Source::objects(
            Bucket::parse("bucket", &r.bucket)?,
            Prefix::parse("prefix", &r.prefix)?,
            KeyFilter::parse(r.include.clone(), r.exclude.clone())?,
        );
        (source, policy_from_proto(r.policy.as_ref())?)
    } else {
        group_from_proto(r)?
    };
    Ok(StartWatch {
        source,
        policy,
        labels,
        client_token: (!r.client_token.is_empty()).then(|| r.client_token.clone()),
        trace,
    })
}

/// Parses the members and policy of a StartWatch that starts a watch group.
fn group_from_proto(r: &v1::StartWatchRequest) -> Result<(Source, Policy), Error> {
    const NOT_FOR_GROUPS: &str = "a watch group (members) is decided by its members: it takes none";
    let given = [
        ("bucket", !r.bucket.is_empty()),
        ("prefix", !r.prefix.is_empty()),
        ("include", !r.include.is_empty()),
        ("exclude", !r.exclude.is_empty()),
    ];
    if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
        return Err(Error::invalid(field, NOT_FOR_GROUPS));
    }
    if let Some(p) = &r.policy {
        let rule = match &p.rule {
            None => None,
            Some(v1::policy::Rule::Polling(_)) => Some("policy.polling"),
            Some(v1::policy::Rule::QuietPeriod(_)) => Some("policy.quiet_period"),
            Some(v1::policy::Rule::ExpectedCount(_)) => Some("policy.expected_count"),
            Some(v1::policy::Rule::Adaptive(_)) => Some("policy.adaptive"),
            Some(v1::policy::Rule::Marker(_)) => Some("policy.marker"),
        };
        let given = [
            (rule.unwrap_or_default(), rule.is_some()),
            ("policy.min_objects", p.min_objects != 0),
            ("policy.reconcile", p.reconcile),
        ];
        if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
            return Err(Error::invalid(field, NOT_FOR_GROUPS));
        }
    }
    if r.members.len() > watch::MAX_GROUP_MEMBERS {
        return Err(Error::invalid(
            "members",
            format!(
                "has {} watches; at most {}",
                r.members.len(),
                watch::MAX_GROUP_MEMBERS
            ),
        ));
    }
    let mut members: Vec<WatchId> = Vec::with_capacity(r.members.len());
    for (i, raw) in r.members.iter().enumerate() {
        let field = format!("members[{i}]");
        let id = WatchId::parse(&field, raw)?;
        if let Some(j) = members.iter().position(|m| *m == id) {
            return Err(Error::invalid(&field, format!("repeats members[{j}]")));
        }
        members.push(id);
    }
    Ok((
        Source::Members { members },
        policy_from_proto(r.policy.as_ref())?,
    ))
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
        let trace = telemetry::current_trace(request.extensions().get::<IncomingTrace>());
        let start = start_from_proto(request.get_ref(), trace)?;
        let (watch, created) = self.service.start_watch(&tenant, start).await?;
        telemetry::record_watch(watch.id.as_str());
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
        let id = watch_id(&request.get_ref().watch_id)?;
        let watch = self.service.get_watch(&tenant, &id).await?;
        let deliveries = self.service.deliveries(&watch).await?;
        let mut watch = watch_to_proto(&watch);
        watch.deliveries = deliveries.iter().map(delivery_to_proto).collect();
        Ok(Response::new(v1::GetWatchResponse { watch: Some(watch) }))
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
        let id = watch_id(&r.watch_id)?;
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

    async fn list_watch_objects(
        &self,
        request: Request<v1::ListWatchObjectsRequest>,
    ) -> Result<Response<v1::ListWatchObjectsResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let id = watch_id(&r.watch_id)?;
        let list = ListObjects {
            generation: r.generation,
            page_size: r.page_size as usize,
            after: objects_after(&r.page_token)?,
        };
        let (objects, next) = self.service.list_objects(&tenant, &id, list).await?;
        Ok(Response::new(v1::ListWatchObjectsResponse {
            objects: objects.iter().map(object_to_proto).collect(),
            next_page_token: next.as_deref().map(objects_page_token).unwrap_or_default(),
        }))
    }

    async fn replay_watch(
        &self,
        request: Request<v1::ReplayWatchRequest>,
    ) -> Result<Response<v1::ReplayWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let source = replay_source(r)?;
        if r.policies.len() > crate::service::MAX_REPLAY_POLICIES {
            return Err(Error::invalid(
                "policies",
                format!(
                    "has {} policies; at most {}",
                    r.policies.len(),
                    crate::service::MAX_REPLAY_POLICIES
                ),
            )
            .into());
        }
        let mut extra = Vec::with_capacity(r.policies.len());
        for (i, p) in r.policies.iter().enumerate() {
            let field = format!("policies[{i}]");
            let mut policy = policy_from_proto(Some(p))
                .and_then(|p| p.validate().map(|()| p))
                .map_err(|e| match e {
                    Error::InvalidArgument {
                        field: inner,
                        message,
                    } => Error::invalid(
                        &format!("{field}.{}", inner.trim_start_matches("policy.")),
                        message,
                    ),
                    other => other,
                })?;
            policy.notify = Default::default();
            policy.late_window = Some(crate::replay::LATE_WINDOW);
            extra.push((field, policy));
        }
        let (history, replayed) = self.service.replay(&tenant, source, extra).await?;
        let last = history.last_created();
        let after_last =
            |t: Timestamp| signed_duration(t.as_millis() - last.map_or(0, Timestamp::as_millis));
        Ok(Response::new(v1::ReplayWatchResponse {
            objects: history.objects(),
            started: Some(proto_timestamp(history.start)),
            last_created: last.map(proto_timestamp),
            outcomes: replayed
                .iter()
                .map(|r| v1::ReplayOutcome {
                    name: r.name.clone(),
                    policy: Some(policy_to_proto(&r.policy)),
                    completed: r.outcome.final_completion.is_some(),
                    early: r.outcome.early(&history),
                    first_completion: r.outcome.first_completion.map(after_last),
                    first_completion_objects: r.outcome.first_completion_objects,
                    reopens: r.outcome.reopens,
                    delay: r.outcome.final_completion.map(after_last),
                    listings: r.outcome.listings,
                    list_requests: r.outcome.list_requests,
                })
                .collect(),
        }))
    }

    type StreamWatchEventsStream = EventStream;

    async fn stream_watch_events(
        &self,
        request: Request<v1::StreamWatchEventsRequest>,
    ) -> Result<Response<Self::StreamWatchEventsStream>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let id = watch_id(&r.watch_id)?;
        let credential = request
            .extensions()
            .get::<Credential>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no credential"))?;
        let (watch, events) = self.service.subscribe(&tenant, &id, r.after_seq).await?;
        let trace = watch.trace;
        let events = events.map(move |item| {
            item.map(|e| event_to_proto(&e, &trace))
                .map_err(Status::from)
        });
        let revoked = Box::pin(self.service.tenants().revoked(credential, tenant));
        Ok(Response::new(Box::pin(until_revoked(events, revoked))))
    }
}

/// A manifest page token: the hex of the page's last key (opaque to callers).
pub fn objects_page_token(last_key: &str) -> String {
    hex::encode(last_key.as_bytes())
}

fn objects_after(token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token this call returned");
    let bytes = hex::decode(token).map_err(|_| bad())?;
    if bytes.is_empty() || bytes.len() > crate::ingest::MAX_KEY_BYTES {
        return Err(bad());
    }
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

fn object_to_proto(o: &ManifestEntry) -> v1::WatchObject {
    v1::WatchObject {
        key: o.key.clone(),
        size: o.size,
        sequencer: o.sequencer.clone(),
        event_time: o.event_time.map(proto_timestamp),
        removed: o.removed,
        generation: o.generation,
        recorded_at: o.recorded_at.map(proto_timestamp),
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
