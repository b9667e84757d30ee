//! The writes of the SQLite store, each run by [`super::writer`] inside its
//! own savepoint of a group's transaction: read the rows a change needs, ask
//! [`crate::store::rules`] what the change does, write the result through
//! [`super::codec`]. They never commit, and never decide on their own how a
//! watch, its `seq`s or its counters move.

use std::collections::{HashMap, hash_map::Entry};

use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{
    from_json, insert_events, insert_watch, kind_code, load_watch, put_delivery, stored, to_i64,
    update_counters, update_last_seq, update_lifecycle,
};
use crate::{
    clock::Timestamp,
    store::{
        Activity, Applied, Change, Claimed, Created, Delivery, KeyEvent, NewWatch, RecordOutcome,
        Recorded, Result, StoreError, outbox_for, rules, sequencer_identity,
    },
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId},
};

/// [`crate::store::Store::finish_delivery`]'s arguments.
pub(super) struct FinishArgs {
    pub delivery: Delivery,
    pub lease: Timestamp,
    pub event: Option<EventKind>,
    pub now: Timestamp,
}

/// Appends `kinds` to `watch` (see [`rules::sequence`]) and writes them to
/// its log; the caller writes the watch's new `last_seq`.
fn append_events(
    conn: &Connection,
    watch: &mut Watch,
    kinds: Vec<EventKind>,
    now: Timestamp,
) -> Result<Vec<WatchEvent>> {
    let events = rules::sequence(watch, kinds, now);
    insert_events(conn, &events)?;
    Ok(events)
}

pub(super) fn create(conn: &Connection, new: NewWatch) -> Result<Created> {
    if let Some(token) = &new.client_token {
        let existing: Option<String> = conn
            .prepare_cached("SELECT watch_id FROM watches WHERE tenant = ?1 AND client_token = ?2")?
            .query_row(params![new.tenant.as_str(), token], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            let id: WatchId = stored(id)?;
            let watch = load_watch(conn, &new.tenant, &id)?
                .ok_or_else(|| StoreError::Corrupt("client token names a missing watch".into()))?;
            return Ok(Created::Existing(watch));
        }
    }
    let mut watch = new.into_watch();
    let (started, at) = (rules::started(&watch), watch.created_at);
    let events = append_events(conn, &mut watch, vec![started], at)?;
    insert_watch(conn, &watch)?;
    Ok(Created::New { watch, events })
}

pub(super) fn record(
    conn: &Connection,
    activities: &[Activity],
    now: Timestamp,
) -> Result<RecordOutcome> {
    // Each watch once, with whether its counters moved, in order of first mention.
    let mut watches: HashMap<(TenantId, WatchId), Option<(Watch, bool)>> = HashMap::new();
    let mut order = Vec::new();
    let mut results = Vec::with_capacity(activities.len());
    let mut seen = conn.prepare_cached(
        "SELECT sequencer FROM seen_keys WHERE tenant = ?1 AND watch_id = ?2 AND kind = ?3 AND key = ?4",
    )?;
    let mut remember = conn.prepare_cached(
        "INSERT INTO seen_keys (tenant, watch_id, kind, key, sequencer, size, event_time, generation, recorded_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (tenant, watch_id, kind, key) DO UPDATE SET sequencer = excluded.sequencer",
    )?;
    let mut remember_other = conn.prepare_cached(
        "INSERT OR IGNORE INTO seen_sequencers (tenant, watch_id, kind, key, sequencer) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for a in activities {
        let slot = match watches.entry((a.tenant.clone(), a.watch_id.clone())) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let loaded =
                    load_watch(conn, &a.tenant, &a.watch_id)?.filter(|w| w.counts_activity(now));
                if loaded.is_some() {
                    order.push(e.key().clone());
                }
                e.insert(loaded.map(|w| (w, false)))
            }
        };
        let Some((watch, changed)) = slot else {
            results.push(Recorded::NotLive);
            continue;
        };
        let kind = kind_code(a.kind);
        let stored: Option<String> = seen
            .query_row(
                params![a.tenant.as_str(), a.watch_id.as_str(), kind, a.key],
                |r| r.get(0),
            )
            .optional()?;
        let sequencer = sequencer_identity(&a.sequencer);
        let stored = stored.as_deref().map(sequencer_identity);
        let event = match KeyEvent::of(stored.as_deref(), &sequencer) {
            // A new key's row keeps this notification's size and time; a key
            // taking its first sequencer updates the sequencer only.
            event @ (KeyEvent::NewKey | KeyEvent::FirstSequencer) => {
                remember.execute(params![
                    a.tenant.as_str(),
                    a.watch_id.as_str(),
                    kind,
                    a.key,
                    sequencer,
                    to_i64(a.size),
                    a.event_time.map(Timestamp::as_millis),
                    watch.counting_generation(),
                    now.as_millis(),
                ])?;
                event
            }
            KeyEvent::Repeat => KeyEvent::Repeat,
            KeyEvent::OtherSequencer => {
                let new_pair = remember_other.execute(params![
                    a.tenant.as_str(),
                    a.watch_id.as_str(),
                    kind,
                    a.key,
                    sequencer
                ])? == 1;
                KeyEvent::OtherSequencer.given_pair(!new_pair)
            }
        };
        let outcome = rules::count(watch, event, a, now);
        *changed |= outcome == Recorded::Counted;
        results.push(outcome);
    }
    let mut updated = Vec::new();
    for key in order {
        let Some(Some((mut watch, true))) = watches.remove(&key) else {
            continue;
        };
        let progress = rules::progress(&watch);
        let events = append_events(conn, &mut watch, vec![progress], now)?;
        update_counters(conn, &watch)?;
        updated.push((watch, events));
    }
    Ok(RecordOutcome { results, updated })
}

pub(super) fn apply(conn: &Connection, change: Change) -> Result<Option<Applied>> {
    let Some(mut watch) = load_watch(conn, &change.tenant, &change.id)? else {
        return Ok(None);
    };
    if !change.guard.holds(&watch) {
        return Ok(Some(Applied::Conflict(watch)));
    }
    watch.lifecycle = change.lifecycle;
    let events = append_events(conn, &mut watch, change.events, change.now)?;
    update_lifecycle(conn, &watch)?;
    for delivery in outbox_for(&watch, &events, change.now) {
        put_delivery(conn, &delivery, true)?;
    }
    Ok(Some(Applied::Done { watch, events }))
}

pub(super) fn claim(
    conn: &Connection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
) -> Result<Claimed> {
    let mut stmt = conn.prepare_cached(
        "SELECT record FROM outbox WHERE state = 'PENDING' AND next_attempt_at <= ?1 \
         ORDER BY next_attempt_at LIMIT ?2",
    )?;
    let records: Vec<String> = stmt
        .query_map(
            params![now.as_millis(), i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut deliveries = Vec::with_capacity(records.len());
    for raw in records {
        let mut d: Delivery = from_json(&raw)?;
        d.next_attempt_at = lease_until;
        put_delivery(conn, &d, false)?;
        deliveries.push(d);
    }
    // Includes the leases just taken, and entries due now beyond `limit`.
    let next_due: Option<i64> = conn
        .prepare_cached("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'PENDING'")?
        .query_row([], |r| r.get(0))?;
    Ok(Claimed {
        deliveries,
        next_due: next_due.map(Timestamp::from_millis),
    })
}

pub(super) fn finish(conn: &Connection, args: FinishArgs) -> Result<Option<Vec<WatchEvent>>> {
    let d = &args.delivery;
    let leased: Option<i64> = conn
        .prepare_cached(
            "SELECT next_attempt_at FROM outbox WHERE tenant = ?1 AND watch_id = ?2 AND seq = ?3 \
             AND target = ?4 AND state = 'PENDING'",
        )?
        .query_row(
            params![
                d.tenant.as_str(),
                d.watch_id.as_str(),
                to_i64(d.seq),
                d.target_index
            ],
            |r| r.get(0),
        )
        .optional()?;
    if leased != Some(args.lease.as_millis()) {
        return Ok(None);
    }
    put_delivery(conn, d, false)?;
    let mut events = Vec::new();
    if let Some(kind) = args.event
        && let Some(mut watch) = load_watch(conn, &d.tenant, &d.watch_id)?
    {
        events = append_events(conn, &mut watch, vec![kind], args.now)?;
        update_last_seq(conn, &watch)?;
    }
    Ok(Some(events))
}

/// Drops the further sequencers; the seen keys stay: they are the manifest.
pub(super) fn retire(conn: &Connection, tenant: &TenantId, id: &WatchId) -> Result<()> {
    conn.prepare_cached("DELETE FROM seen_sequencers WHERE tenant = ?1 AND watch_id = ?2")?
        .execute(params![tenant.as_str(), id.as_str()])?;
    Ok(())
}
