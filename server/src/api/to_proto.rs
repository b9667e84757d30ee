//! Domain values to responses: watches, policies, events, deliveries and
//! manifest objects as protobuf messages, timestamps and durations in
//! protobuf's types.
//!
//! It only converts: it must never fail, read anything, or leave out a field
//! the contract (proto/) defines without saying why.

use std::time::Duration;

use streamwatch::v1;

use crate::{
    clock::Timestamp,
    policy,
    store::{Delivery, DeliveryState, ManifestEntry},
    watch::{
        DelaySchedule, EventKind, NotifyTarget, Policy, Rule, TraceContext, Watch, WatchEvent,
        WatchState,
    },
};

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
pub(super) fn signed_duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

pub(super) fn proto_timestamp(t: Timestamp) -> prost_types::Timestamp {
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

/// A manifest page token: the hex of the page's last key (opaque to callers).
pub fn objects_page_token(last_key: &str) -> String {
    hex::encode(last_key.as_bytes())
}

pub(super) fn object_to_proto(o: &ManifestEntry) -> v1::WatchObject {
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
