//! The store's judgement, the same for every backend: what a new watch is
//! ([`NewWatch::into_watch`], [`started`]), whether a lifecycle change's
//! guard holds ([`Guard::holds`]), how appended events get their `seq`
//! ([`sequence`]), how one notification of a key counts against what the
//! watch has seen of it ([`sequencer_identity`], [`KeyEvent`], [`count`]),
//! and which outbox entries an appended event needs ([`outbox_for`]).
//!
//! Pure functions of values: no I/O, no clock, no backend types. A backend
//! reads what is stored, asks these, and writes the result in its own
//! transaction; it never decides any of this itself.

use super::{Activity, ActivityKind, Delivery, DeliveryState, Guard, NewWatch, Recorded};
use crate::{
    clock::Timestamp,
    watch::{Counters, EventKind, Lifecycle, Watch, WatchEvent},
};

impl NewWatch {
    /// The watch as first stored: ACTIVE in generation 1 from `created_at`,
    /// no counters and no events yet (`last_seq` 0).
    pub fn into_watch(self) -> Watch {
        Watch {
            tenant: self.tenant,
            id: self.id,
            source: self.source,
            policy: self.policy,
            labels: self.labels,
            client_token: self.client_token,
            created_at: self.created_at,
            lifecycle: Lifecycle::fresh(1, self.created_at, 0),
            counters: Counters::default(),
            last_seq: 0,
            trace: self.trace,
        }
    }
}

/// The STARTED event of a new `watch`: its snapshot is the watch as it is
/// once the event is appended (`last_seq` one further).
pub fn started(watch: &Watch) -> EventKind {
    let mut snapshot = watch.clone();
    snapshot.last_seq += 1;
    EventKind::Started {
        watch: Box::new(snapshot),
    }
}

impl Guard {
    /// Expects `watch` exactly as it is, counters included.
    pub fn exact(watch: &Watch) -> Self {
        Self {
            state: watch.lifecycle.state,
            generation: watch.lifecycle.generation,
            activity: Some(watch.counters.activity()),
        }
    }

    /// Whether `watch` is still what the guard expects: the same state and
    /// generation and, unless any is accepted, the same activity.
    pub fn holds(&self, watch: &Watch) -> bool {
        watch.lifecycle.state == self.state
            && watch.lifecycle.generation == self.generation
            && self.activity.is_none_or(|a| a == watch.counters.activity())
    }
}

/// Appends `kinds` to `watch` at `at`: each gets the next `seq` in order,
/// from `last_seq + 1`, in the watch's current generation, and `last_seq`
/// moves to the last.
pub fn sequence(watch: &mut Watch, kinds: Vec<EventKind>, at: Timestamp) -> Vec<WatchEvent> {
    kinds
        .into_iter()
        .map(|kind| {
            watch.last_seq += 1;
            WatchEvent {
                tenant: watch.tenant.clone(),
                watch_id: watch.id.clone(),
                seq: watch.last_seq,
                time: at,
                generation: watch.lifecycle.generation,
                kind,
            }
        })
        .collect()
}

/// The PROGRESS event of a watch whose counters moved.
pub fn progress(watch: &Watch) -> EventKind {
    EventKind::Progress {
        counters: watch.counters,
    }
}

/// The identity of an S3 sequencer, the token that orders the events of one
/// key: S3 compares sequencers as hex strings, the shorter padded with zeros
/// on the right, so neither case nor trailing zeros tell two events apart.
/// Empty for a notification without one.
pub fn sequencer_identity(sequencer: &str) -> String {
    sequencer.trim_end_matches('0').to_ascii_uppercase()
}

/// How one notification of a key counts, given the sequencer identity on the
/// key's seen record (`None`: the key is new to the watch). A watch counts
/// the distinct `(key, sequencer)` pairs it was told of; a notification
/// without a sequencer stands for an event of its key (a redelivery and an
/// overwrite look the same without one, and the redelivery is common), so it
/// adds to a key only when nothing else told of the key. The totals depend on
/// which notifications arrived, never on their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// The key's first notification: counts (a new object, for a creation).
    NewKey,
    /// The same event again (the same sequencer, or none): counts nothing.
    Repeat,
    /// A first sequencer for a key known only from notifications without
    /// one: the event already counted. Counts nothing; the key's record takes
    /// the sequencer, so later sequencers of the key are told apart from it.
    FirstSequencer,
    /// Another sequencer of a key: a further event, unless that pair is
    /// already recorded (see [`KeyEvent::given_pair`]).
    OtherSequencer,
}

impl KeyEvent {
    /// `stored` and `sequencer` are sequencer identities ([`sequencer_identity`]).
    pub fn of(stored: Option<&str>, sequencer: &str) -> Self {
        match stored {
            None => Self::NewKey,
            Some(s) if sequencer.is_empty() || s == sequencer => Self::Repeat,
            Some("") => Self::FirstSequencer,
            Some(_) => Self::OtherSequencer,
        }
    }

    /// The event, knowing whether the store already held the `(key,
    /// sequencer)` pair of an [`OtherSequencer`](Self::OtherSequencer): a
    /// recorded pair is a [`Repeat`](Self::Repeat). Other events stay.
    pub fn given_pair(self, recorded: bool) -> Self {
        match self {
            Self::OtherSequencer if recorded => Self::Repeat,
            event => event,
        }
    }
}

/// Counts `activity`, recorded at `now`, into `watch` as its key `event`
/// says (an [`OtherSequencer`](KeyEvent::OtherSequencer) here is a pair new
/// to the store: see [`KeyEvent::given_pair`]). A counted event adds to the
/// counters of its kind (a new created key also to `object_count` and
/// `object_bytes`) and moves `last_activity_at` to `now`; anything else
/// leaves the watch as it was.
pub fn count(watch: &mut Watch, event: KeyEvent, activity: &Activity, now: Timestamp) -> Recorded {
    let counters = &mut watch.counters;
    match event {
        KeyEvent::Repeat | KeyEvent::FirstSequencer => return Recorded::Duplicate,
        KeyEvent::NewKey if activity.kind == ActivityKind::Created => {
            counters.object_count += 1;
            counters.object_bytes += activity.size;
        }
        KeyEvent::NewKey | KeyEvent::OtherSequencer => {}
    }
    match activity.kind {
        ActivityKind::Created => {
            counters.event_count += 1;
            counters.newest_event_at = counters.newest_event_at.max(activity.event_time);
        }
        ActivityKind::Removed => counters.removed_count += 1,
        ActivityKind::Marker => {
            counters.marker_count += 1;
            counters.marker_at = Some(now);
        }
    }
    counters.last_activity_at = Some(now);
    Recorded::Counted
}

/// The outbox entries for `events` just appended to `watch` (after the
/// change): one per notify target for each event the targets want (a
/// manifest target wants COMPLETED only).
pub fn outbox_for(watch: &Watch, events: &[WatchEvent], now: Timestamp) -> Vec<Delivery> {
    let notify = &watch.policy.notify;
    let mut out = Vec::new();
    for event in events.iter().filter(|e| notify.wants(&e.kind)) {
        let body = crate::document::body(watch, event);
        for (i, target) in notify.targets.iter().enumerate() {
            if !target.wants(&event.kind) {
                continue;
            }
            out.push(Delivery {
                tenant: watch.tenant.clone(),
                watch_id: watch.id.clone(),
                seq: event.seq,
                generation: event.generation,
                target_index: u32::try_from(i).unwrap_or(u32::MAX),
                target: target.clone(),
                body: body.clone(),
                traceparent: crate::document::traceparent_of(watch),
                state: DeliveryState::Pending,
                attempts: 0,
                created_at: now,
                next_attempt_at: now,
                last_status: String::new(),
                last_error: String::new(),
                finished_at: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{
        Bucket, KeyFilter, Labels, Policy, Prefix, Source, TenantId, WatchId, WatchState,
    };

    const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    fn new_watch() -> NewWatch {
        NewWatch {
            tenant: TenantId::parse("tenant", "acme").unwrap(),
            id: WatchId::generate(),
            source: Source::objects(
                Bucket::parse("bucket", "data-lake").unwrap(),
                Prefix::parse("prefix", "daily/").unwrap(),
                KeyFilter::default(),
            ),
            policy: Policy::default(),
            labels: Labels::from([("team".to_owned(), "core".to_owned())]),
            client_token: Some("once".into()),
            created_at: T0,
            trace: Default::default(),
        }
    }

    fn activity(watch: &Watch, kind: ActivityKind, size: u64, event_ms: i64) -> Activity {
        Activity {
            tenant: watch.tenant.clone(),
            watch_id: watch.id.clone(),
            kind,
            key: "daily/a".into(),
            sequencer: String::new(),
            size,
            event_time: Some(Timestamp::from_millis(event_ms)),
        }
    }

    #[test]
    fn a_new_watch_starts_active_and_its_started_event_shows_it_after_the_event() {
        let new = new_watch();
        let mut watch = new.clone().into_watch();
        assert_eq!(
            (&watch.tenant, &watch.id, &watch.labels, &watch.client_token),
            (&new.tenant, &new.id, &new.labels, &new.client_token)
        );
        assert_eq!(watch.lifecycle, Lifecycle::fresh(1, T0, 0));
        assert_eq!(watch.counters, Counters::default());
        assert_eq!(watch.last_seq, 0);

        let kind = started(&watch);
        let events = sequence(&mut watch, vec![kind], T0);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].seq, events[0].generation), (1, 1));
        let EventKind::Started { watch: snapshot } = &events[0].kind else {
            panic!("a STARTED event: {:?}", events[0].kind);
        };
        assert_eq!(**snapshot, watch, "the snapshot is the watch as stored");
        assert_eq!(snapshot.last_seq, 1);
    }

    #[test]
    fn a_guard_holds_only_while_state_generation_and_activity_are_unchanged() {
        let mut watch = new_watch().into_watch();
        let guard = Guard::exact(&watch);
        assert!(guard.holds(&watch));

        let mut moved = watch.clone();
        moved.counters.event_count += 1;
        assert!(!guard.holds(&moved), "activity moved");
        let any_activity = Guard {
            activity: None,
            ..guard
        };
        assert!(any_activity.holds(&moved), "a guard without activity");

        // Counters that do not count as activity do not break the guard.
        moved = watch.clone();
        moved.counters.object_bytes += 10;
        moved.counters.last_activity_at = Some(T0);
        assert!(guard.holds(&moved));

        moved = watch.clone();
        moved.lifecycle.state = WatchState::Completed;
        assert!(!guard.holds(&moved), "state moved");
        assert!(!any_activity.holds(&moved));

        watch.lifecycle.generation = 2;
        assert!(!guard.holds(&watch), "generation moved");
        assert!(!any_activity.holds(&watch));
    }

    #[test]
    fn events_take_the_next_seqs_in_order_in_the_current_generation() {
        let mut watch = new_watch().into_watch();
        watch.last_seq = 41;
        watch.lifecycle.generation = 3;
        let at = T0.plus(std::time::Duration::from_secs(5));
        let kinds = vec![
            EventKind::Cancelled { reason: "a".into() },
            EventKind::Cancelled { reason: "b".into() },
        ];
        let events = sequence(&mut watch, kinds.clone(), at);
        let got: Vec<_> = events
            .iter()
            .map(|e| (e.seq, e.generation, e.time, &e.kind, &e.watch_id))
            .collect();
        assert_eq!(
            got,
            [
                (42, 3, at, &kinds[0], &watch.id),
                (43, 3, at, &kinds[1], &watch.id)
            ]
        );
        assert_eq!(watch.last_seq, 43);
        assert!(sequence(&mut watch, Vec::new(), at).is_empty());
        assert_eq!(watch.last_seq, 43, "nothing appended, nothing moves");
    }

    #[test]
    fn a_new_created_key_counts_an_object_its_bytes_and_an_event() {
        let mut watch = new_watch().into_watch();
        let now = T0.plus(std::time::Duration::from_secs(60));
        let a = activity(&watch, ActivityKind::Created, 7, 1_800_000_000_500);
        assert_eq!(
            count(&mut watch, KeyEvent::NewKey, &a, now),
            Recorded::Counted
        );
        let older = activity(&watch, ActivityKind::Created, 5, 1_800_000_000_100);
        assert_eq!(
            count(&mut watch, KeyEvent::OtherSequencer, &older, now),
            Recorded::Counted
        );
        assert_eq!(
            watch.counters,
            Counters {
                object_count: 1,
                object_bytes: 7,
                event_count: 2,
                newest_event_at: a.event_time,
                last_activity_at: Some(now),
                ..Counters::default()
            },
            "a further sequencer is an event, not an object"
        );
    }

    #[test]
    fn removals_and_markers_count_apart_from_objects() {
        let mut watch = new_watch().into_watch();
        let now = T0.plus(std::time::Duration::from_secs(60));
        let removed = activity(&watch, ActivityKind::Removed, 7, 1_800_000_000_500);
        let marker = activity(&watch, ActivityKind::Marker, 3, 1_800_000_000_500);
        for a in [&removed, &marker] {
            assert_eq!(
                count(&mut watch, KeyEvent::NewKey, a, now),
                Recorded::Counted
            );
        }
        assert_eq!(
            watch.counters,
            Counters {
                removed_count: 1,
                marker_count: 1,
                marker_at: Some(now),
                last_activity_at: Some(now),
                ..Counters::default()
            }
        );
    }

    #[test]
    fn what_was_counted_before_changes_nothing() {
        let mut watch = new_watch().into_watch();
        let a = activity(&watch, ActivityKind::Created, 7, 1_800_000_000_500);
        count(&mut watch, KeyEvent::NewKey, &a, T0);
        let before = watch.clone();
        let later = T0.plus(std::time::Duration::from_secs(60));
        for event in [
            KeyEvent::Repeat,
            KeyEvent::FirstSequencer,
            KeyEvent::OtherSequencer.given_pair(true),
        ] {
            assert_eq!(count(&mut watch, event, &a, later), Recorded::Duplicate);
            assert_eq!(watch, before, "{event:?}");
        }
    }

    #[test]
    fn only_a_recorded_pair_of_another_sequencer_is_a_repeat() {
        use KeyEvent::*;
        assert_eq!(OtherSequencer.given_pair(true), Repeat);
        assert_eq!(OtherSequencer.given_pair(false), OtherSequencer);
        for event in [NewKey, Repeat, FirstSequencer] {
            assert_eq!(event.given_pair(true), event);
            assert_eq!(event.given_pair(false), event);
        }
    }

    #[test]
    fn sequencers_are_compared_as_s3_pads_them() {
        let id = sequencer_identity;
        assert_eq!(id("0055AED6DCD90281E5"), id("0055aed6dcd90281e5"), "case");
        assert_eq!(
            id("0055AED6DCD90281E500"),
            id("0055AED6DCD90281E5"),
            "padding"
        );
        assert_ne!(id("0055AED6DCD90281E501"), id("0055AED6DCD90281E5"));
        assert_ne!(id("0055AED6DCD90281E4"), id("0055AED6DCD90281E5"));
        assert_eq!(id(""), "");
    }

    #[test]
    fn a_key_counts_its_distinct_sequencers() {
        use KeyEvent::*;
        assert_eq!(KeyEvent::of(None, "01"), NewKey);
        assert_eq!(KeyEvent::of(None, ""), NewKey);
        assert_eq!(KeyEvent::of(Some("01"), "01"), Repeat, "a redelivery");
        assert_eq!(
            KeyEvent::of(Some("01"), "02"),
            OtherSequencer,
            "an overwrite"
        );
        assert_eq!(
            KeyEvent::of(Some("02"), "01"),
            OtherSequencer,
            "an earlier event, late"
        );
        assert_eq!(
            KeyEvent::of(Some("01"), ""),
            Repeat,
            "no sequencer: one of the key's events"
        );
        assert_eq!(KeyEvent::of(Some(""), ""), Repeat);
        assert_eq!(KeyEvent::of(Some(""), "01"), FirstSequencer);
    }
}
