//! Rows <-> domain values: how a [`Watch`], a [`WatchEvent`] and an outbox
//! [`Delivery`] are written into the tables of [`super::schema`] and read
//! back. Only encoding: it decides nothing about what to write (that is
//! [`crate::store::rules`]), and never opens or ends a transaction.
//!
//! Policies, polling progress, labels, key filters, group members, event
//! kinds and deliveries are JSON text; instants are milliseconds; names are
//! their text, validated when they were written.

use rusqlite::{Connection, Row, params};

use crate::{
    clock::Timestamp,
    store::{ActivityKind, Delivery, Result, StoreError},
    watch::{
        Counters, KeyFilter, Lifecycle, Prefix, Source, TenantId, TraceContext, Watch, WatchEvent,
        WatchId, WatchState,
    },
};

/// The columns [`row_to_watch`] reads, in its order.
pub(super) const WATCH_COLUMNS: &str = "tenant, watch_id, bucket, prefix, policy, labels, client_token, created_at, state, \
     generation, generation_started_at, completed_at, reason, polling, object_count, event_count, removed_count, \
     last_activity_at, last_seq, traceparent, tracestate, filter, object_bytes, members, marker_count, marker_at, \
     newest_event_at";

pub(super) fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Rebuilds a name newtype from its stored text (validated when it was written).
pub(super) fn stored<T: serde::de::DeserializeOwned>(raw: String) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(raw))
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `kind` column of `seen_keys` and `seen_sequencers`.
pub(super) fn kind_code(kind: ActivityKind) -> i64 {
    match kind {
        ActivityKind::Created => 0,
        ActivityKind::Removed => 1,
        ActivityKind::Marker => 2,
    }
}

pub(super) fn row_to_watch(row: &Row<'_>) -> Result<Watch> {
    let text = |i: usize| -> Result<String> { Ok(row.get::<_, String>(i)?) };
    let ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(Timestamp::from_millis))
    };
    let count = |i: usize| -> Result<u64> { Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0)) };
    let state_raw = text(8)?;
    let state = WatchState::from_str_opt(&state_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown watch state {state_raw:?}")))?;
    let filter = text(21)?;
    let members = text(23)?;
    let source = if members.is_empty() {
        Source::objects(
            stored(text(2)?)?,
            stored::<Prefix>(text(3)?)?,
            if filter.is_empty() {
                KeyFilter::default()
            } else {
                from_json(&filter)?
            },
        )
    } else {
        Source::Members {
            members: from_json(&members)?,
        }
    };
    Ok(Watch {
        tenant: stored(text(0)?)?,
        id: stored(text(1)?)?,
        source,
        policy: from_json(&text(4)?)?,
        labels: from_json(&text(5)?)?,
        client_token: row.get(6)?,
        created_at: Timestamp::from_millis(row.get(7)?),
        lifecycle: Lifecycle {
            state,
            generation: row.get(9)?,
            generation_started_at: Timestamp::from_millis(row.get(10)?),
            completed_at: ts(11)?,
            reason: text(12)?,
            polling: from_json(&text(13)?)?,
        },
        counters: Counters {
            object_count: count(14)?,
            event_count: count(15)?,
            removed_count: count(16)?,
            object_bytes: count(22)?,
            last_activity_at: ts(17)?,
            marker_count: count(24)?,
            marker_at: ts(25)?,
            newest_event_at: ts(26)?,
        },
        last_seq: count(18)?,
        trace: TraceContext {
            traceparent: text(19)?,
            tracestate: text(20)?,
        },
    })
}

pub(super) fn load_watch(
    conn: &Connection,
    tenant: &TenantId,
    id: &WatchId,
) -> Result<Option<Watch>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {WATCH_COLUMNS} FROM watches WHERE tenant = ?1 AND watch_id = ?2"
    ))?;
    let mut rows = stmt.query(params![tenant.as_str(), id.as_str()])?;
    match rows.next()? {
        Some(row) => Ok(Some(row_to_watch(row)?)),
        None => Ok(None),
    }
}

/// Inserts the row of a new watch, and its labels.
pub(super) fn insert_watch(conn: &Connection, watch: &Watch) -> Result<()> {
    let objects = watch.source.as_objects();
    let late_window_ms = watch
        .policy
        .late_window
        .map_or(0, |w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX));
    let (life, c) = (&watch.lifecycle, &watch.counters);
    conn.prepare_cached(&format!(
        "INSERT INTO watches ({WATCH_COLUMNS}, late_window_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
         ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)"
    ))?
    .execute(params![
        watch.tenant.as_str(),
        watch.id.as_str(),
        objects.map_or("", |o| o.bucket.as_str()),
        objects.map_or("", |o| o.prefix.as_str()),
        json(&watch.policy)?,
        json(&watch.labels)?,
        watch.client_token,
        watch.created_at.as_millis(),
        life.state.as_str(),
        life.generation,
        life.generation_started_at.as_millis(),
        life.completed_at.map(Timestamp::as_millis),
        life.reason,
        json(&life.polling)?,
        to_i64(c.object_count),
        to_i64(c.event_count),
        to_i64(c.removed_count),
        c.last_activity_at.map(Timestamp::as_millis),
        to_i64(watch.last_seq),
        watch.trace.traceparent,
        watch.trace.tracestate,
        match objects {
            Some(o) if !o.filter.is_empty() => json(&o.filter)?,
            _ => String::new(),
        },
        to_i64(c.object_bytes),
        match &watch.source {
            Source::Members { members } => json(members)?,
            Source::Objects(_) => String::new(),
        },
        to_i64(c.marker_count),
        c.marker_at.map(Timestamp::as_millis),
        c.newest_event_at.map(Timestamp::as_millis),
        late_window_ms,
    ])?;
    let mut label_stmt = conn.prepare_cached(
        "INSERT INTO watch_labels (tenant, watch_id, key, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (k, v) in &watch.labels {
        label_stmt.execute(params![watch.tenant.as_str(), watch.id.as_str(), k, v])?;
    }
    Ok(())
}

/// Writes the watch's counters and `last_seq`.
pub(super) fn update_counters(conn: &Connection, watch: &Watch) -> Result<()> {
    let c = &watch.counters;
    conn.prepare_cached(
        "UPDATE watches SET object_count = ?3, event_count = ?4, removed_count = ?5, last_activity_at = ?6, \
         last_seq = ?7, object_bytes = ?8, marker_count = ?9, marker_at = ?10, newest_event_at = ?11 WHERE tenant = ?1 AND watch_id = ?2",
    )?
    .execute(params![
        watch.tenant.as_str(),
        watch.id.as_str(),
        to_i64(c.object_count),
        to_i64(c.event_count),
        to_i64(c.removed_count),
        c.last_activity_at.map(Timestamp::as_millis),
        to_i64(watch.last_seq),
        to_i64(c.object_bytes),
        to_i64(c.marker_count),
        c.marker_at.map(Timestamp::as_millis),
        c.newest_event_at.map(Timestamp::as_millis),
    ])?;
    Ok(())
}

/// Writes the watch's lifecycle and `last_seq`.
pub(super) fn update_lifecycle(conn: &Connection, watch: &Watch) -> Result<()> {
    let life = &watch.lifecycle;
    conn.prepare_cached(
        "UPDATE watches SET state = ?3, generation = ?4, generation_started_at = ?5, completed_at = ?6, reason = ?7, \
         polling = ?8, last_seq = ?9 WHERE tenant = ?1 AND watch_id = ?2",
    )?
    .execute(params![
        watch.tenant.as_str(),
        watch.id.as_str(),
        life.state.as_str(),
        life.generation,
        life.generation_started_at.as_millis(),
        life.completed_at.map(Timestamp::as_millis),
        life.reason,
        json(&life.polling)?,
        to_i64(watch.last_seq),
    ])?;
    Ok(())
}

/// Writes the watch's `last_seq` only.
pub(super) fn update_last_seq(conn: &Connection, watch: &Watch) -> Result<()> {
    conn.prepare_cached("UPDATE watches SET last_seq = ?3 WHERE tenant = ?1 AND watch_id = ?2")?
        .execute(params![
            watch.tenant.as_str(),
            watch.id.as_str(),
            to_i64(watch.last_seq)
        ])?;
    Ok(())
}

pub(super) fn insert_events(conn: &Connection, events: &[WatchEvent]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (tenant, watch_id, seq, time, generation, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in events {
        stmt.execute(params![
            e.tenant.as_str(),
            e.watch_id.as_str(),
            to_i64(e.seq),
            e.time.as_millis(),
            e.generation,
            e.kind.name(),
            json(&e.kind)?,
        ])?;
    }
    Ok(())
}

/// Reads `tenant, watch_id, seq, time, generation, payload` of `events`.
pub(super) fn row_to_event(row: &Row<'_>) -> Result<WatchEvent> {
    Ok(WatchEvent {
        tenant: stored(row.get(0)?)?,
        watch_id: stored(row.get(1)?)?,
        seq: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        time: Timestamp::from_millis(row.get(3)?),
        generation: row.get(4)?,
        kind: from_json(&row.get::<_, String>(5)?)?,
    })
}

/// Writes an outbox row (`new`: insert; else replace the existing one).
pub(super) fn put_delivery(conn: &Connection, d: &Delivery, new: bool) -> Result<()> {
    let sql = if new {
        "INSERT INTO outbox (tenant, watch_id, seq, target, state, next_attempt_at, record) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    } else {
        "UPDATE outbox SET state = ?5, next_attempt_at = ?6, record = ?7 \
         WHERE tenant = ?1 AND watch_id = ?2 AND seq = ?3 AND target = ?4"
    };
    conn.prepare_cached(sql)?.execute(params![
        d.tenant.as_str(),
        d.watch_id.as_str(),
        to_i64(d.seq),
        d.target_index,
        d.state.as_str(),
        d.next_attempt_at.as_millis(),
        json(d)?,
    ])?;
    Ok(())
}
