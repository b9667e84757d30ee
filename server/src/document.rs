//! The document a notify target receives for one event of a watch: the
//! event and the watch as it is after it (its shape is documented in the
//! README; every target gets the same bytes), and the trace context sent with
//! it. Pure functions of the committed watch and event: the store writes the
//! document into the outbox in the transaction that assigns the event's
//! `seq`, and the delivery task sends what was written.

use crate::{
    clock::Timestamp,
    watch::{Watch, WatchEvent},
};

/// The W3C trace context sent with a watch's callbacks (`traceparent`): the
/// trace of its StartWatch call, which every event of the watch carries too.
pub fn traceparent_of(watch: &Watch) -> Option<String> {
    (!watch.trace.is_empty()).then(|| watch.trace.traceparent.clone())
}

fn timestamp(t: Option<Timestamp>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| t.to_string().into())
}

/// The document delivered for `event` of `watch` (the watch as it is after the
/// event). Its shape is documented in the README; every target gets the same.
pub fn body(watch: &Watch, event: &WatchEvent) -> String {
    let mut detail = serde_json::to_value(&event.kind).unwrap_or_default();
    if let Some(fields) = detail.as_object_mut() {
        fields.remove("kind");
    }
    let mut body = serde_json::json!({
        "idempotency_key": format!("{}:{}:{}", event.watch_id, event.generation, event.seq),
        "event": {
            "watch_id": event.watch_id.as_str(),
            "seq": event.seq,
            "generation": event.generation,
            "time": event.time.to_string(),
            "kind": event.kind.name(),
            "detail": detail,
        },
        "watch": {
            "watch_id": watch.id.as_str(),
            "bucket": watch.source.as_objects().map_or("", |o| o.bucket.as_str()),
            "prefix": watch.source.as_objects().map_or("", |o| o.prefix.as_str()),
            "state": watch.state().as_str(),
            "generation": watch.lifecycle.generation,
            "object_count": watch.counters.object_count,
            "event_count": watch.counters.event_count,
            "removed_count": watch.counters.removed_count,
            "created_at": watch.created_at.to_string(),
            "last_activity_at": timestamp(watch.counters.last_activity_at),
            "completed_at": timestamp(watch.lifecycle.completed_at),
            "reason": watch.lifecycle.reason,
            "labels": watch.labels,
            "last_seq": watch.last_seq,
        },
    });
    if watch.is_group() {
        // A group has no bucket: its members instead.
        body["watch"]["members"] = serde_json::json!(watch.source.members());
    }
    body.to_string()
}
