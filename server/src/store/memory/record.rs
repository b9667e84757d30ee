//! Recording activity into the memory store, and reading back the seen
//! items it leaves (which keys were counted, the manifest's pages).
//!
//! A batch is grouped per watch (recorded concurrently, in order of first
//! mention); each watch's activities are judged in order against its seen
//! items as read ([`KeyEvent`], [`rules::count`]) and written with the
//! watch's new counters and its PROGRESS event in one transaction: each new
//! seen key, and each further sequencer of a seen key, conditioned on its
//! absence (a key's first sequencer after none: on the sequencer read), so a
//! redelivery can never count twice; a cancelled transaction is read again
//! and retried. Unlike DynamoDB's, a transaction holds any number of items,
//! so a watch's part of a batch is one transaction and one PROGRESS event.
//! It never changes a watch's lifecycle.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    MAX_ATTEMPTS, MemoryStore,
    transact::{Change, Check, Op, Seen, SeenId, Write, seen_id},
};
use crate::{
    clock::Timestamp,
    store::{
        Activity, KeyEvent, ManifestEntry, ObjectsQuery, RecordOutcome, Recorded, Result,
        StoreError, rules, sequencer_identity,
    },
    watch::{TenantId, Watch, WatchEvent, WatchId, WatchKey},
};

/// What one watch's part of a batch did: each activity's outcome, and the
/// watch after the change with its PROGRESS event if its counters moved.
type WatchRecorded = (Vec<(usize, Recorded)>, Option<(Watch, Vec<WatchEvent>)>);

impl MemoryStore {
    /// [`crate::store::Store::record`]: each watch's activities recorded concurrently.
    pub(super) async fn record_batch(
        &self,
        activities: Vec<Activity>,
        now: Timestamp,
    ) -> Result<RecordOutcome> {
        let mut groups: Vec<(WatchKey, Vec<usize>)> = Vec::new();
        let mut by_watch: BTreeMap<WatchKey, usize> = BTreeMap::new();
        for (i, a) in activities.iter().enumerate() {
            let key = WatchKey {
                tenant: a.tenant.clone(),
                id: a.watch_id.clone(),
            };
            let g = *by_watch.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let recorded = futures::future::try_join_all(
            groups
                .into_iter()
                .map(|(key, indexes)| self.record_watch(&activities, key, indexes, now)),
        )
        .await?;
        let mut results = vec![Recorded::NotLive; activities.len()];
        let mut updated = Vec::new();
        for (outcomes, watch) in recorded {
            for (i, r) in outcomes {
                results[i] = r;
            }
            updated.extend(watch);
        }
        Ok(RecordOutcome { results, updated })
    }

    /// Records one watch's activities (`indexes` into `activities`).
    async fn record_watch(
        &self,
        activities: &[Activity],
        key: WatchKey,
        indexes: Vec<usize>,
        now: Timestamp,
    ) -> Result<WatchRecorded> {
        // Each occurrence's seen item and sequencer identity, in batch order.
        let occurrences: Vec<(usize, SeenId, String)> = indexes
            .iter()
            .map(|&i| {
                let a = &activities[i];
                (i, seen_id(a), sequencer_identity(&a.sequencer))
            })
            .collect();
        for _ in 0..MAX_ATTEMPTS {
            let (watch, stored, known_pairs) = self
                .request(|t| {
                    let watch = t.watch_at(&key).filter(|w| w.0.counts_activity(now));
                    let mut stored = BTreeMap::new();
                    let mut pairs = BTreeSet::new();
                    for (_, id, sequencer) in &occurrences {
                        if let Some(seen) = t.seen.get(id) {
                            stored.insert(id.clone(), seen.clone());
                        }
                        let pair = (id.clone(), sequencer.clone());
                        if t.pairs.contains(&pair) {
                            pairs.insert(pair);
                        }
                    }
                    (watch, stored, pairs)
                })
                .await;
            let Some((mut watch, revision)) = watch else {
                let outcome = indexes.iter().map(|&i| (i, Recorded::NotLive)).collect();
                return Ok((outcome, None));
            };
            // The seen items as this batch leaves them, and what it adds.
            let mut current = stored.clone();
            let mut pairs = known_pairs;
            let mut changed = BTreeSet::new();
            let mut ops = Vec::new();
            let mut outcome = Vec::with_capacity(occurrences.len());
            let mut counted = false;
            for (i, id, sequencer) in &occurrences {
                let a = &activities[*i];
                let held = current.get(id).map(|s| s.sequencer.as_str());
                let event = match KeyEvent::of(held, sequencer) {
                    KeyEvent::NewKey => {
                        let seen = Seen {
                            sequencer: sequencer.clone(),
                            size: a.size,
                            event_time: a.event_time,
                            generation: watch.counting_generation(),
                            recorded_at: now,
                        };
                        current.insert(id.clone(), seen);
                        changed.insert(id.clone());
                        KeyEvent::NewKey
                    }
                    KeyEvent::FirstSequencer => {
                        if let Some(seen) = current.get_mut(id) {
                            seen.sequencer = sequencer.clone();
                        }
                        changed.insert(id.clone());
                        KeyEvent::FirstSequencer
                    }
                    KeyEvent::Repeat => KeyEvent::Repeat,
                    KeyEvent::OtherSequencer => {
                        let new = pairs.insert((id.clone(), sequencer.clone()));
                        if new {
                            ops.push(Op::put(
                                Check::PairAbsent(id.clone(), sequencer.clone()),
                                Write::Pair(id.clone(), sequencer.clone()),
                            ));
                        }
                        KeyEvent::OtherSequencer.given_pair(!new)
                    }
                };
                let recorded = rules::count(&mut watch, event, a, now);
                counted |= recorded == Recorded::Counted;
                outcome.push((*i, recorded));
            }
            for id in changed {
                let check = match stored.get(&id) {
                    None => Check::SeenAbsent(id.clone()),
                    Some(old) => Check::SeenHolds(id.clone(), old.sequencer.clone()),
                };
                let seen = current[&id].clone();
                ops.push(Op::put(check, Write::Seen(id, seen)));
            }
            if !counted {
                // Nothing counted, but a key may have taken its first sequencer.
                if ops.is_empty() || self.transact(ops, None).await.is_ok() {
                    return Ok((outcome, None));
                }
                continue;
            }
            let change = Change {
                events: vec![rules::progress(&watch)],
                watch,
                expected_revision: Some(revision),
                extra: ops,
                now,
            };
            if let Ok(done) = self.commit(change, None).await {
                return Ok((outcome, Some(done)));
            }
            // Someone else changed the watch or recorded one of these keys: read again.
        }
        Err(StoreError::Busy(format!(
            "watch {} kept changing; gave up recording after {MAX_ATTEMPTS} attempts",
            key.id
        )))
    }

    /// [`crate::store::Store::counted_keys`].
    pub(super) async fn counted(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>> {
        let watch = WatchKey {
            tenant: tenant.clone(),
            id: id.clone(),
        };
        let found = self
            .request(|t| {
                keys.iter()
                    .map(|k| t.seen.contains_key(&(watch.clone(), 0, k.clone())))
                    .collect()
            })
            .await;
        Ok(found)
    }

    /// [`crate::store::Store::list_objects`]: created keys in byte order.
    pub(super) async fn manifest_page(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>> {
        use std::ops::Bound::{Excluded, Included};
        let watch = WatchKey {
            tenant: tenant.clone(),
            id: id.clone(),
        };
        let from = match &query.after {
            Some(after) => Excluded((watch.clone(), 0, after.clone())),
            None => Included((watch.clone(), 0, String::new())),
        };
        let to = Excluded((watch.clone(), 1, String::new()));
        let page = self
            .request(|t| {
                t.seen
                    .range((from, to))
                    .filter(|(_, s)| query.generation.is_none_or(|g| g == s.generation))
                    .take(query.limit.max(1))
                    .map(|((_, _, key), s)| ManifestEntry {
                        key: key.clone(),
                        size: s.size,
                        sequencer: s.sequencer.clone(),
                        event_time: s.event_time,
                        generation: s.generation,
                        recorded_at: Some(s.recorded_at),
                        removed: t.seen.contains_key(&(watch.clone(), 1, key.clone())),
                    })
                    .collect()
            })
            .await;
        Ok(page)
    }
}
