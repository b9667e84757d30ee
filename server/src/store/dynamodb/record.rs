//! Recording activity into the DynamoDB store, and reading back the seen
//! items it leaves (which keys were counted, the manifest's pages).
//!
//! A batch is grouped per watch and per seen key; each group is judged
//! against the stored seen items ([`KeyEvent`], [`rules::count`]) and
//! written with the watch's new counters and its PROGRESS event in one
//! transaction ([`super::transact`]): each new seen key, and each further
//! sequencer of a seen key, is put with `attribute_not_exists` (a key's
//! first sequencer after none: `sequencer = old`), so a redelivery can never
//! count twice; a cancelled transaction is read again and retried. It never
//! changes a watch's lifecycle.

use std::collections::{HashMap, HashSet};

use super::{
    DynamoStore, MAX_ATTEMPTS, TTL_ATTRIBUTE,
    codec::{Item, corrupt, get_n, get_opt_ts, get_s, key_sk, n, opt_s, pair_sk, s, watch_pk},
    error::aws,
    transact::{Change, query_units},
};
use crate::{
    clock::Timestamp,
    store::{
        Activity, ActivityKind, KeyEvent, ManifestEntry, ObjectsQuery, RecordOutcome, Recorded,
        Result, StoreError, rules, sequencer_identity,
    },
    watch::{TenantId, Watch, WatchEvent, WatchId},
};

/// Seen items (keys and further sequencers) per transaction (one more for the
/// watch, one for its event).
const KEYS_PER_TRANSACTION: usize = 98;

/// The occurrences of one seen key in a batch, recorded in one transaction.
struct KeyPart {
    kind: ActivityKind,
    key: String,
    sk: String,
    /// `(activity index, sequencer identity)` in batch order.
    occurrences: Vec<(usize, String)>,
    /// Items it may write at most: one per distinct sequencer (at least one).
    writes: usize,
}

/// Groups a watch's activities by seen key, in batch order: each occurrence
/// is judged in order against what is stored, so a transaction writes each
/// item once. A key with more distinct sequencers than a transaction holds
/// is split into consecutive parts.
fn key_parts(activities: &[Activity], indexes: Vec<usize>) -> Vec<KeyPart> {
    let mut keys: Vec<(KeyPart, HashSet<String>)> = Vec::new();
    let mut by_sk: HashMap<String, usize> = HashMap::new();
    let mut parts = Vec::new();
    for i in indexes {
        let a = &activities[i];
        let sk = key_sk(a.kind, &a.key);
        let sequencer = sequencer_identity(&a.sequencer);
        let k = *by_sk.entry(sk.clone()).or_insert_with(|| {
            keys.push((
                KeyPart {
                    kind: a.kind,
                    key: a.key.clone(),
                    sk,
                    occurrences: Vec::new(),
                    writes: 1,
                },
                Default::default(),
            ));
            keys.len() - 1
        });
        let (part, distinct) = &mut keys[k];
        if !distinct.contains(&sequencer) && distinct.len() == KEYS_PER_TRANSACTION {
            let next = KeyPart {
                occurrences: Vec::new(),
                writes: 1,
                kind: part.kind,
                key: part.key.clone(),
                sk: part.sk.clone(),
            };
            parts.push(std::mem::replace(part, next));
            distinct.clear();
        }
        distinct.insert(sequencer.clone());
        part.writes = distinct.len();
        part.occurrences.push((i, sequencer));
    }
    // A split key's earlier parts come first, so they are recorded first.
    parts.extend(keys.into_iter().map(|(part, _)| part));
    parts.sort_by_key(|p| by_sk[&p.sk]);
    parts
}

/// Splits `parts` into transactions of at most [`KEYS_PER_TRANSACTION`] seen
/// items, none holding two parts of one key.
fn transactions(parts: &[KeyPart]) -> Vec<&[KeyPart]> {
    let mut out = Vec::new();
    let (mut start, mut writes) = (0, 0);
    let mut sks = HashSet::new();
    for (i, part) in parts.iter().enumerate() {
        if i > start && (writes + part.writes > KEYS_PER_TRANSACTION || sks.contains(&part.sk)) {
            out.push(&parts[start..i]);
            (start, writes) = (i, 0);
            sks.clear();
        }
        writes += part.writes;
        sks.insert(&part.sk);
    }
    if start < parts.len() {
        out.push(&parts[start..]);
    }
    out
}

impl DynamoStore {
    /// [`crate::store::Store::record`]: each watch's activities recorded concurrently.
    pub(super) async fn record_batch(
        &self,
        activities: Vec<Activity>,
        now: Timestamp,
    ) -> Result<RecordOutcome> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_watch: HashMap<(&TenantId, &WatchId), usize> = HashMap::new();
        for (i, a) in activities.iter().enumerate() {
            let g = *by_watch.entry((&a.tenant, &a.watch_id)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let recorded = futures::future::try_join_all(
            groups
                .into_iter()
                .map(|g| self.record_watch(&activities, g, now)),
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

    /// The stored item of each seen key in `sks` (strongly consistent).
    pub(super) async fn seen(&self, pk: &str, sks: &[String]) -> Result<HashMap<String, Item>> {
        let keys = sks.iter().map(|sk| (pk.to_owned(), sk.clone())).collect();
        let mut found = HashMap::new();
        for item in self.batch_get(keys).await? {
            get_s(&item, "sequencer")?;
            found.insert(get_s(&item, "sk")?.to_owned(), item);
        }
        Ok(found)
    }

    /// Records one watch's activities (`indexes` into `activities`).
    pub(super) async fn record_watch(
        &self,
        activities: &[Activity],
        indexes: Vec<usize>,
        now: Timestamp,
    ) -> Result<(Vec<(usize, Recorded)>, Option<(Watch, Vec<WatchEvent>)>)> {
        let parts = key_parts(activities, indexes);
        let first = &activities[parts[0].occurrences[0].0];
        let (tenant, id) = (first.tenant.clone(), first.watch_id.clone());
        let pk = watch_pk(&tenant, &id);
        let mut results = Vec::new();
        let mut last: Option<(Watch, Vec<WatchEvent>)> = None;
        for chunk in transactions(&parts) {
            let mut done = false;
            for _ in 0..MAX_ATTEMPTS {
                let Some((mut watch, read)) = self
                    .load_at(&tenant, &id)
                    .await?
                    .filter(|(w, _)| w.counts_activity(now))
                else {
                    results.extend(
                        chunk.iter().flat_map(|k| {
                            k.occurrences.iter().map(|(i, _)| (*i, Recorded::NotLive))
                        }),
                    );
                    done = true;
                    break;
                };
                let sks: Vec<String> = chunk.iter().map(|k| k.sk.clone()).collect();
                let seen = self.seen(&pk, &sks).await?;
                // Other sequencers of keys seen with one: are those pairs recorded?
                let mut asked = Vec::new();
                let sequencer_of = |item: &Item| opt_s(item, "sequencer");
                for key in chunk {
                    let Some(stored) = seen
                        .get(&key.sk)
                        .map(|i| sequencer_identity(&sequencer_of(i)))
                    else {
                        continue;
                    };
                    for (_, sequencer) in &key.occurrences {
                        if KeyEvent::of(Some(&stored), sequencer) == KeyEvent::OtherSequencer {
                            asked.push((pk.clone(), pair_sk(key.kind, &key.key, sequencer)));
                        }
                    }
                }
                asked.sort();
                asked.dedup();
                let mut recorded_pairs = HashSet::new();
                if !asked.is_empty() {
                    for item in self.batch_get(asked).await? {
                        recorded_pairs.insert(get_s(&item, "sk")?.to_owned());
                    }
                }
                let mut outcome = Vec::new();
                let mut puts = Vec::new();
                let mut counted = false;
                for key in chunk {
                    let stored = seen.get(&key.sk);
                    let mut current = stored.map(|i| sequencer_identity(&sequencer_of(i)));
                    let mut key_changed = false;
                    // The first counted notification of a new key: what its item keeps.
                    let mut first: Option<&Activity> = None;
                    for (i, sequencer) in &key.occurrences {
                        let a = &activities[*i];
                        let event = match KeyEvent::of(current.as_deref(), sequencer) {
                            event @ (KeyEvent::NewKey | KeyEvent::FirstSequencer) => {
                                if event == KeyEvent::NewKey {
                                    first = Some(a);
                                }
                                current = Some(sequencer.clone());
                                key_changed = true;
                                event
                            }
                            KeyEvent::Repeat => KeyEvent::Repeat,
                            KeyEvent::OtherSequencer => {
                                let sk = pair_sk(key.kind, &key.key, sequencer);
                                let new = recorded_pairs.insert(sk.clone());
                                if new {
                                    let mut item = Item::new();
                                    item.insert("pk".into(), s(&pk));
                                    item.insert("sk".into(), s(sk));
                                    item.insert("sequencer".into(), s(sequencer));
                                    if let Some(at) = read.items_expire_at() {
                                        item.insert(TTL_ATTRIBUTE.into(), n(at));
                                    }
                                    puts.push(self.put(item, "attribute_not_exists(pk)", &[])?);
                                }
                                KeyEvent::OtherSequencer.given_pair(!new)
                            }
                        };
                        let recorded = rules::count(&mut watch, event, a, now);
                        counted |= recorded == Recorded::Counted;
                        outcome.push((*i, recorded));
                    }
                    if key_changed {
                        // A stored item keeps its size, time and generation; it takes the sequencer.
                        let mut item = match stored {
                            Some(old) => old.clone(),
                            None => {
                                let mut item = Item::new();
                                item.insert("pk".into(), s(&pk));
                                item.insert("sk".into(), s(&key.sk));
                                if key.sk.len() != key.key.len() + 4 {
                                    item.insert("key".into(), s(&key.key));
                                }
                                if let Some(a) = first {
                                    item.insert("size".into(), n(a.size));
                                    if let Some(at) = a.event_time {
                                        item.insert("event_time".into(), n(at.as_millis()));
                                    }
                                }
                                item.insert("generation".into(), n(watch.counting_generation()));
                                item.insert("recorded_at".into(), n(now.as_millis()));
                                if let Some(at) = read.items_expire_at() {
                                    item.insert(TTL_ATTRIBUTE.into(), n(at));
                                }
                                item
                            }
                        };
                        item.insert("sequencer".into(), s(current.unwrap_or_default()));
                        puts.push(match stored {
                            None => self.put(item, "attribute_not_exists(pk)", &[])?,
                            Some(old) => self.put(
                                item,
                                "sequencer = :old",
                                &[(":old", s(sequencer_of(old)))],
                            )?,
                        });
                    }
                }
                if !counted {
                    // Nothing counted, but a key may have taken its first sequencer.
                    if puts.is_empty() || self.transact(puts).await? {
                        results.extend(outcome);
                        done = true;
                        break;
                    }
                    continue;
                }
                let change = Change {
                    events: vec![rules::progress(&watch)],
                    watch,
                    expected: Some(read),
                    extra: puts,
                    now,
                };
                if let Some((watch, events)) = self.commit(change).await? {
                    results.extend(outcome);
                    last = Some(match last.take() {
                        Some((_, mut earlier)) => {
                            earlier.extend(events);
                            (watch, earlier)
                        }
                        None => (watch, events),
                    });
                    done = true;
                    break;
                }
                // Someone else changed the watch or recorded one of these keys: read again.
            }
            if !done {
                return Err(StoreError::Busy(format!(
                    "watch {id} kept changing; gave up recording after {MAX_ATTEMPTS} attempts"
                )));
            }
        }
        Ok((results, last))
    }

    /// [`crate::store::Store::counted_keys`].
    pub(super) async fn counted(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>> {
        let sks: Vec<String> = keys
            .iter()
            .map(|k| key_sk(ActivityKind::Created, k))
            .collect();
        // BatchGetItem refuses a key asked for twice.
        let mut unique = sks.clone();
        unique.sort();
        unique.dedup();
        let found = self.seen(&watch_pk(tenant, id), &unique).await?;
        Ok(sks.iter().map(|sk| found.contains_key(sk)).collect())
    }

    /// [`crate::store::Store::list_objects`].
    pub(super) async fn manifest_page(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>> {
        let pk = watch_pk(tenant, id);
        let limit = query.limit.max(1);
        let mut start = query.after.as_ref().map(|after| {
            HashMap::from([
                ("pk".to_owned(), s(&pk)),
                ("sk".to_owned(), s(key_sk(ActivityKind::Created, after))),
            ])
        });
        let mut out = Vec::with_capacity(limit);
        // Reads a page's worth at a time; a generation filter may need more pages.
        while out.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :created)")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":created", s("K#c#"))
                .set_exclusive_start_key(start.take())
                .consistent_read(true)
                .limit(i32::try_from(limit).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(aws)?;
            let items = page.items.unwrap_or_default();
            self.count(1, items.len() as u64, 0, query_units(&items, true));
            for item in &items {
                let generation = get_n(item, "generation").unwrap_or(1);
                if query.generation.is_some_and(|g| g != generation) || out.len() == limit {
                    continue;
                }
                let key = match item.get("key") {
                    Some(_) => get_s(item, "key")?.to_owned(),
                    None => get_s(item, "sk")?
                        .strip_prefix("K#c#")
                        .ok_or_else(|| corrupt("seen key sk"))?
                        .to_owned(),
                };
                out.push(ManifestEntry {
                    key,
                    size: get_n(item, "size").unwrap_or(0),
                    sequencer: opt_s(item, "sequencer"),
                    event_time: get_opt_ts(item, "event_time")?,
                    generation,
                    recorded_at: get_opt_ts(item, "recorded_at")?,
                    removed: false,
                });
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => break,
            }
        }
        // The page's removal items: one range query over the page's keys
        // (costs what the removals hold), plus a get for each hashed key.
        let mut removed = HashSet::new();
        let in_order: Vec<String> = out
            .iter()
            .map(|o| key_sk(ActivityKind::Removed, &o.key))
            .filter(|sk| !sk.starts_with("K#r#~"))
            .collect();
        if let (Some(from), Some(to)) = (in_order.first(), in_order.last()) {
            let items = self
                .query_all(
                    None,
                    "pk = :pk AND sk BETWEEN :from AND :to",
                    vec![(":pk", s(&pk)), (":from", s(from)), (":to", s(to))],
                )
                .await?;
            for item in &items {
                removed.insert(get_s(item, "sk")?.to_owned());
            }
        }
        let hashed = out
            .iter()
            .map(|o| key_sk(ActivityKind::Removed, &o.key))
            .filter(|sk| sk.starts_with("K#r#~"))
            .map(|sk| (pk.clone(), sk))
            .collect::<Vec<_>>();
        if !hashed.is_empty() {
            for item in self.batch_get(hashed).await? {
                removed.insert(get_s(&item, "sk")?.to_owned());
            }
        }
        for o in &mut out {
            o.removed = removed.contains(&key_sk(ActivityKind::Removed, &o.key));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_key_spans_transactions_in_order() {
        let tenant = TenantId::parse("tenant", "acme").unwrap();
        let id = WatchId::generate();
        let activity = |key: &str, sequencer: String| Activity {
            tenant: tenant.clone(),
            watch_id: id.clone(),
            kind: ActivityKind::Created,
            key: key.to_owned(),
            sequencer,
            size: 0,
            event_time: None,
        };
        let mut activities: Vec<Activity> = (0..10)
            .map(|i| activity(&format!("k{i}"), String::new()))
            .collect();
        activities.extend((0..200).map(|i| activity("hot", format!("{i:04X}1"))));
        activities.push(activity("k0", "01".into()));
        let parts = key_parts(&activities, (0..activities.len()).collect());
        let chunks = transactions(&parts);
        let mut seen = Vec::new();
        for chunk in &chunks {
            assert!(chunk.iter().map(|p| p.writes).sum::<usize>() <= KEYS_PER_TRANSACTION);
            let mut sks: Vec<&str> = chunk.iter().map(|p| p.sk.as_str()).collect();
            sks.sort();
            sks.dedup();
            assert_eq!(sks.len(), chunk.len(), "one part of a key per transaction");
            seen.extend(
                chunk
                    .iter()
                    .flat_map(|p| p.occurrences.iter().map(|(i, _)| *i)),
            );
        }
        // Each key's occurrences keep their batch order.
        let hot: Vec<usize> = seen
            .iter()
            .copied()
            .filter(|i| (10..210).contains(i))
            .collect();
        assert_eq!(hot, (10..210).collect::<Vec<_>>());
        seen.sort();
        assert_eq!(seen, (0..activities.len()).collect::<Vec<_>>());
    }
}
