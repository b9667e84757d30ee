//! The memory store's tables and its transaction engine: every item kind
//! ([`Tables`]), the condition ([`Check`]) and write ([`Write`]) of each
//! transaction item, and [`MemoryStore::transact`], which checks every
//! condition and writes all of the items or none, under the lock, reporting
//! the conditions that failed ([`Cancelled`]). [`MemoryStore::commit`] turns
//! a watch read and its new events into such a transaction, as the DynamoDB
//! store's `commit` does (the watch's revision as read, its events, their
//! outbox entries). A watch put also queues its update of the `live` index,
//! visible `index_lag` later. It never decides what a change is (that is
//! `rules`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::time::Instant;

use super::{Commit, LeaseChange, MemoryStore};
use crate::{
    clock::Timestamp,
    store::{
        Activity, ActivityKind, Delivery, DeliveryState, Fence, LeaseItem, ReplicaItem, RouteEntry,
        rules, shard_of,
    },
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId, WatchKey},
};

/// A seen item: the watch, the activity kind (0 created, 1 removed, 2
/// marker) and the key.
pub(super) type SeenId = (WatchKey, u8, String);

pub(super) fn seen_id(a: &Activity) -> SeenId {
    let kind = match a.kind {
        ActivityKind::Created => 0,
        ActivityKind::Removed => 1,
        ActivityKind::Marker => 2,
    };
    (
        WatchKey {
            tenant: a.tenant.clone(),
            id: a.watch_id.clone(),
        },
        kind,
        a.key.clone(),
    )
}

/// What a seen item keeps: one of the key's sequencers (an identity) and
/// its first counted notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) sequencer: String,
    pub(super) size: u64,
    pub(super) event_time: Option<Timestamp>,
    pub(super) generation: u32,
    pub(super) recorded_at: Timestamp,
}

/// An outbox entry's identity: its watch, event and target.
pub(super) type DeliveryId = (WatchKey, u64, u32);

pub(super) fn delivery_id(d: &Delivery) -> DeliveryId {
    (
        WatchKey {
            tenant: d.tenant.clone(),
            id: d.watch_id.clone(),
        },
        d.seq,
        d.target_index,
    )
}

/// The condition of one transaction item, checked at commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Check {
    WatchAbsent(WatchKey),
    /// The watch exists at this revision (unwritten since it was read).
    WatchAt(WatchKey, u64),
    /// The lease names the fence's owner at its version.
    Lease(Fence),
    TokenAbsent(TenantId, String),
    SeenAbsent(SeenId),
    /// The seen item holds this sequencer.
    SeenHolds(SeenId, String),
    PairAbsent(SeenId, String),
    /// The entry is pending and leased until this instant.
    Leased(DeliveryId, Timestamp),
}

/// What one transaction item writes.
#[derive(Clone, Debug)]
pub(super) enum Write {
    Watch(Box<Watch>),
    Event(WatchEvent),
    Delivery(Delivery),
    Seen(SeenId, Seen),
    Pair(SeenId, String),
    Token(TenantId, String, WatchId),
    Route(RouteEntry),
}

/// One item of a transaction: a condition, a write, or both.
#[derive(Clone, Debug)]
pub(super) struct Op {
    check: Option<Check>,
    write: Option<Write>,
}

impl Op {
    pub(super) fn put(check: Check, write: Write) -> Self {
        Self {
            check: Some(check),
            write: Some(write),
        }
    }

    pub(super) fn check(check: Check) -> Self {
        Self {
            check: Some(check),
            write: None,
        }
    }

    pub(super) fn write(write: Write) -> Self {
        Self {
            check: None,
            write: Some(write),
        }
    }
}

/// A cancelled transaction: the conditions that failed, in item order.
#[derive(Debug)]
pub(super) struct Cancelled {
    failed: Vec<Check>,
}

impl Cancelled {
    pub(super) fn lease_failed(&self) -> bool {
        self.failed.iter().any(|c| matches!(c, Check::Lease(_)))
    }

    pub(super) fn delivery_lease_failed(&self) -> bool {
        self.failed.iter().any(|c| matches!(c, Check::Leased(..)))
    }
}

/// An update of the `live` index: visible from `at`; `None` removes.
pub(super) type IndexUpdate = (Instant, Option<Watch>);

/// Everything stored, behind one lock.
#[derive(Default)]
pub(super) struct Tables {
    /// Each watch and its revision: how many times its item was written.
    pub(super) watches: BTreeMap<WatchKey, (Watch, u64)>,
    pub(super) events: BTreeMap<WatchKey, BTreeMap<u64, WatchEvent>>,
    pub(super) seen: BTreeMap<SeenId, Seen>,
    pub(super) pairs: BTreeSet<(SeenId, String)>,
    pub(super) tokens: BTreeMap<(TenantId, String), WatchId>,
    pub(super) outbox: BTreeMap<DeliveryId, Delivery>,
    /// Route items by creation instant (ms), then watch.
    pub(super) routes: BTreeMap<(i64, WatchKey), RouteEntry>,
    /// The `live` index by shard, each watch's updates oldest first.
    pub(super) index: BTreeMap<u32, BTreeMap<WatchKey, VecDeque<IndexUpdate>>>,
    pub(super) recorded_shards: Option<u32>,
    pub(super) leases: BTreeMap<u32, LeaseItem>,
    pub(super) replicas: BTreeMap<String, ReplicaItem>,
    pub(super) routes_version: u64,
    pub(super) lease_history: Vec<LeaseChange>,
    pub(super) commits: Vec<Commit>,
    /// How many lease changes and commits were recorded.
    pub(super) audited: u64,
}

impl Tables {
    pub(super) fn watch(&self, key: &WatchKey) -> Option<Watch> {
        self.watches.get(key).map(|(w, _)| w.clone())
    }

    /// The watch and its revision, for a change based on this read.
    pub(super) fn watch_at(&self, key: &WatchKey) -> Option<(Watch, u64)> {
        self.watches.get(key).cloned()
    }

    fn holds(&self, check: &Check) -> bool {
        match check {
            Check::WatchAbsent(key) => !self.watches.contains_key(key),
            Check::WatchAt(key, revision) => {
                self.watches.get(key).is_some_and(|w| w.1 == *revision)
            }
            Check::Lease(fence) => self
                .leases
                .get(&fence.shard)
                .is_some_and(|l| l.owner == fence.owner && l.version == fence.version),
            Check::TokenAbsent(tenant, token) => {
                !self.tokens.contains_key(&(tenant.clone(), token.clone()))
            }
            Check::SeenAbsent(id) => !self.seen.contains_key(id),
            Check::SeenHolds(id, sequencer) => {
                self.seen.get(id).is_some_and(|s| &s.sequencer == sequencer)
            }
            Check::PairAbsent(id, sequencer) => {
                !self.pairs.contains(&(id.clone(), sequencer.clone()))
            }
            Check::Leased(id, lease) => self
                .outbox
                .get(id)
                .is_some_and(|d| d.state == DeliveryState::Pending && d.next_attempt_at == *lease),
        }
    }

    /// Queues an index update of `watch`'s item, visible from `at`.
    pub(super) fn index(&mut self, shard: u32, key: WatchKey, at: Instant, watch: Option<Watch>) {
        self.index
            .entry(shard)
            .or_default()
            .entry(key)
            .or_default()
            .push_back((at, watch));
    }
}

/// A watch read and the events to append, as one conditioned transaction
/// (see [`MemoryStore::commit`]).
pub(super) struct Change {
    pub(super) watch: Watch,
    /// The revision read; `None`: a new watch.
    pub(super) expected_revision: Option<u64>,
    pub(super) events: Vec<EventKind>,
    pub(super) extra: Vec<Op>,
    pub(super) now: Timestamp,
}

impl MemoryStore {
    /// Writes `ops` if every condition holds, else nothing. A committed
    /// `apply` is recorded for [`Self::commits`] when `audit` says so.
    pub(super) async fn transact(
        &self,
        ops: Vec<Op>,
        audit: Option<(WatchKey, Option<Fence>)>,
    ) -> std::result::Result<(), Cancelled> {
        self.request(|t| {
            let failed: Vec<Check> = ops
                .iter()
                .filter_map(|op| op.check.as_ref())
                .filter(|check| !t.holds(check))
                .cloned()
                .collect();
            if !failed.is_empty() {
                return Err(Cancelled { failed });
            }
            let now = Instant::now();
            let mut appended = Vec::new();
            for write in ops.into_iter().filter_map(|op| op.write) {
                match write {
                    Write::Watch(watch) => {
                        let watch = *watch;
                        let key = watch.key();
                        let shard = shard_of(&watch.id, self.shards);
                        t.index(
                            shard,
                            key.clone(),
                            now + self.index_lag,
                            Some(watch.clone()),
                        );
                        let revision = t.watches.get(&key).map_or(0, |w| w.1) + 1;
                        t.watches.insert(key, (watch, revision));
                    }
                    Write::Event(event) => {
                        appended.push(event.kind.name());
                        let key = WatchKey {
                            tenant: event.tenant.clone(),
                            id: event.watch_id.clone(),
                        };
                        t.events.entry(key).or_default().insert(event.seq, event);
                    }
                    Write::Delivery(d) => {
                        t.outbox.insert(delivery_id(&d), d);
                    }
                    Write::Seen(id, seen) => {
                        t.seen.insert(id, seen);
                    }
                    Write::Pair(id, sequencer) => {
                        t.pairs.insert((id, sequencer));
                    }
                    Write::Token(tenant, token, id) => {
                        t.tokens.insert((tenant, token), id);
                    }
                    Write::Route(route) => {
                        let at = route.created_at.as_millis();
                        t.routes.insert((at, route.key.clone()), route);
                    }
                }
            }
            if let Some((key, fence)) = audit {
                t.audited += 1;
                let order = t.audited;
                t.commits.push(Commit {
                    order,
                    at: now,
                    key,
                    fence,
                    events: appended,
                });
            }
            Ok(())
        })
        .await
    }

    /// Writes `change` if the watch is still at the revision read (a
    /// new watch: if it does not exist), with its events (their `seq`s from
    /// [`rules::sequence`]), their outbox entries and `extra`.
    pub(super) async fn commit(
        &self,
        change: Change,
        audit: Option<Option<Fence>>,
    ) -> std::result::Result<(Watch, Vec<WatchEvent>), Cancelled> {
        let Change {
            mut watch,
            expected_revision,
            events,
            extra,
            now,
        } = change;
        let appended = rules::sequence(&mut watch, events, now);
        let key = watch.key();
        let check = match expected_revision {
            Some(revision) => Check::WatchAt(key.clone(), revision),
            None => Check::WatchAbsent(key.clone()),
        };
        let mut ops = vec![Op::put(check, Write::Watch(Box::new(watch.clone())))];
        ops.extend(appended.iter().cloned().map(|e| Op::write(Write::Event(e))));
        ops.extend(
            rules::outbox_for(&watch, &appended, now)
                .into_iter()
                .map(|d| Op::write(Write::Delivery(d))),
        );
        ops.extend(extra);
        self.transact(ops, audit.map(|fence| (key, fence))).await?;
        Ok((watch, appended))
    }
}
