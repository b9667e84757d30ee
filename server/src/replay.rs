//! Replay: what a completion policy would have decided on a recorded history
//! of objects (when each was created, when its notifications arrived),
//! through the pure [`policy::evaluate`] with time simulated to the
//! millisecond, the way the observer runs it: arrivals at an instant are
//! recorded before a timer of the same instant fires, a redelivery counts
//! nothing, and a policy with `reconcile` lists the prefix (every object
//! created by then) before it completes, and when it asks for a probe. The decision-quality harness
//! (server/DECISIONS.md) scores policies with it, and ReplayWatch runs it on
//! a user's own watch. Pure: no clock, no I/O.

use std::{collections::HashSet, time::Duration};

use crate::{
    clock::Timestamp,
    policy,
    watch::{
        Bucket, Counters, EventKind, Lifecycle, Policy, Prefix, Rule, SeriesPrior, Source,
        TenantId, Watch, WatchId, WatchState,
    },
};

/// Objects a listing returns per ListObjectsV2 request.
const LIST_PAGE: u64 = 1000;
/// Evaluations one replay may take; a policy that keeps waking past this
/// (a polling rule that can never complete) ends the replay where it is.
const MAX_EVALUATIONS: usize = 2_000_000;

/// One notification reaching the watch: object `object` (an index into
/// [`History::created`]) at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub at: Timestamp,
    pub object: u32,
}

/// What happened to a data set, as a watch saw it.
#[derive(Clone, Debug)]
pub struct History {
    /// When the watch started.
    pub start: Timestamp,
    /// When each object was created.
    pub created: Vec<Timestamp>,
    /// Every notification, redeliveries included, by instant (then object).
    pub arrivals: Vec<Arrival>,
}

impl History {
    /// A history from its parts; sorts the arrivals.
    pub fn new(start: Timestamp, created: Vec<Timestamp>, mut arrivals: Vec<Arrival>) -> Self {
        arrivals.sort_by_key(|a| (a.at, a.object));
        Self {
            start,
            created,
            arrivals,
        }
    }

    pub fn objects(&self) -> u64 {
        self.created.len() as u64
    }

    /// When the data set was complete: its last object's creation.
    pub fn last_created(&self) -> Option<Timestamp> {
        self.created.iter().copied().max()
    }
}

/// What a policy did on a history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub first_completion: Option<Timestamp>,
    /// The object count the first completion reported.
    pub first_completion_objects: u64,
    /// The completion that stood (the last one).
    pub final_completion: Option<Timestamp>,
    pub reopens: u32,
    /// Listings made (`reconcile`), and their ListObjectsV2 requests.
    pub listings: u64,
    pub list_requests: u64,
    /// Of those listings, the probes a watch of a series asked for.
    pub probes: u64,
    /// The replay stopped at [`MAX_EVALUATIONS`] before the policy settled.
    pub truncated: bool,
}

impl Outcome {
    /// The first completion counted fewer objects than the history has:
    /// post-processing would have started on partial data.
    pub fn early(&self, history: &History) -> bool {
        self.first_completion.is_some() && self.first_completion_objects < history.objects()
    }

    /// From the last creation to the completion that stood, in ms.
    pub fn delay_ms(&self, history: &History) -> Option<i64> {
        let last = history.last_created()?;
        self.final_completion
            .map(|t| t.as_millis() - last.as_millis())
    }
}

/// A watch of nothing in particular, with `policy`, started at `start`.
fn replayed_watch(policy: &Policy, start: Timestamp) -> Watch {
    Watch {
        tenant: TenantId::parse("tenant", "replay").expect("a valid tenant name"),
        id: WatchId::parse("watch_id", "01a217db-5f80-753f-b7b3-c836ae73bab5")
            .expect("a valid watch id"),
        source: Source::objects(
            Bucket::parse("bucket", "replay").expect("a valid bucket name"),
            Prefix::parse("prefix", "").expect("an empty prefix"),
            Default::default(),
        ),
        policy: policy.clone(),
        labels: Default::default(),
        client_token: None,
        created_at: start,
        lifecycle: Lifecycle::fresh(1, start, 0),
        counters: Counters::default(),
        last_seq: 1,
        trace: Default::default(),
    }
}

/// Counts a new object created at `created`, as the store does.
fn count(watch: &mut Watch, created: Timestamp) {
    let c = &mut watch.counters;
    c.object_count += 1;
    c.event_count += 1;
    c.newest_event_at = c.newest_event_at.max(Some(created));
}

/// A confirming listing at `now`: every object created by then that no
/// notification told of counts, and is activity. Returns whether it found
/// any, and its requests.
fn list(
    history: &History,
    seen: &mut HashSet<u32>,
    watch: &mut Watch,
    now: Timestamp,
) -> (bool, u64) {
    let mut listed = 0;
    let mut found = false;
    for (object, created) in history.created.iter().enumerate() {
        if *created > now {
            continue;
        }
        listed += 1;
        if seen.insert(object as u32) {
            count(watch, *created);
            found = true;
        }
    }
    if found {
        watch.counters.last_activity_at = Some(now);
    }
    (found, u64::div_ceil(listed, LIST_PAGE).max(1))
}

/// Replays `history` against `policy`, as given (give it a `late_window` to
/// see a premature completion reopen and the one that stood).
pub fn replay(policy: &Policy, history: &History) -> Outcome {
    replay_in_series(policy, history, None)
}

/// [`replay`] of a watch that starts with what its series' earlier runs
/// showed, as StartWatch gives a watch of a series.
pub fn replay_in_series(policy: &Policy, history: &History, prior: Option<SeriesPrior>) -> Outcome {
    let mut watch = replayed_watch(policy, history.start);
    watch.lifecycle.polling.series = prior.map(Box::new);
    let mut seen = HashSet::new();
    let mut outcome = Outcome::default();
    // The activity level the prefix was last listed at (`policy.reconcile`).
    let mut listed_at = None;
    // The level a probe listing just left: it confirms a completion decided
    // on it, in the evaluation right after it.
    let mut probed = None;
    let mut next = 0;
    // The observer evaluates a watch as soon as it is armed.
    let mut wake = Some(history.start);
    for _ in 0..MAX_EVALUATIONS {
        let arrival = history.arrivals.get(next).map(|a| a.at);
        let now = match (arrival, wake) {
            (Some(a), Some(w)) => a.min(w),
            (Some(a), None) => a,
            (None, Some(w)) => w,
            (None, None) => return outcome,
        };
        // Activity recorded at the instant a timer fires is handled first.
        while let Some(a) = history.arrivals.get(next).filter(|a| a.at == now) {
            next += 1;
            let created = history.created.get(a.object as usize).copied();
            if let Some(created) = created.filter(|_| watch.counts_activity(now))
                && seen.insert(a.object)
            {
                count(&mut watch, created);
                watch.counters.last_activity_at = Some(now);
            }
        }
        let decision = policy::evaluate(&watch, now, Timestamp::MAX);
        let just_probed = probed.take();
        if decision.probe {
            // The observer lists, records the probe, then decides again.
            let (_, requests) = list(history, &mut seen, &mut watch, now);
            outcome.list_requests += requests;
            outcome.listings += 1;
            outcome.probes += 1;
            let progress = &mut watch.lifecycle.polling;
            progress.probes += 1;
            progress.probed_at = Some(now);
            probed = Some(watch.counters.activity());
            wake = Some(now);
            continue;
        }
        let completes = decision
            .events
            .iter()
            .any(|e| matches!(e, EventKind::Completed { .. }));
        let activity = watch.counters.activity();
        let confirmed = listed_at == Some(activity) || just_probed == Some(activity);
        if completes && watch.policy.reconcile && !confirmed {
            // The observer lists before it commits a completion, then decides again.
            let (found, requests) = list(history, &mut seen, &mut watch, now);
            outcome.list_requests += requests;
            outcome.listings += 1;
            if !found {
                listed_at = Some(watch.counters.activity());
            }
            wake = Some(now);
            continue;
        }
        for event in &decision.events {
            match event {
                EventKind::Completed { object_count, .. } => {
                    if outcome.first_completion.is_none() {
                        outcome.first_completion = Some(now);
                        outcome.first_completion_objects = *object_count;
                    }
                    outcome.final_completion = Some(now);
                }
                EventKind::Reopened { .. } => outcome.reopens += 1,
                _ => {}
            }
        }
        if let Some(lifecycle) = decision.lifecycle {
            watch.lifecycle = lifecycle;
        }
        wake = decision.wake_at;
        if wake.is_none() && watch.lifecycle.state != WatchState::Active {
            return outcome; // forgotten: nothing can change it any more
        }
    }
    outcome.truncated = true;
    outcome
}

/// How long a replayed policy stays open to late data, so a premature
/// completion shows up as a reopening and the completion that stood is seen.
pub const LATE_WINDOW: Duration = Duration::from_secs(6 * 3600);

/// The policies ReplayWatch compares by default, by name: the classic rule,
/// fixed windows, the adaptive rule with and without a listing, and the
/// expected count of the history's own size (what knowing the count buys).
pub fn candidates(objects: u64) -> Vec<(String, Policy)> {
    let s = Duration::from_secs;
    let policy = |rule: Rule, reconcile: bool| Policy {
        rule,
        min_objects: 1,
        reconcile,
        late_window: Some(LATE_WINDOW),
        ..Policy::default()
    };
    let mut all = vec![(
        "polling fixed 30s x3".to_owned(),
        policy(
            Rule::Polling {
                delay: s(30),
                max_repeats: 3,
                schedule: crate::watch::DelaySchedule::Fixed,
            },
            false,
        ),
    )];
    for window in [30, 60, 120, 300] {
        all.push((
            format!("quiet_period {}", policy::human(s(window))),
            policy(Rule::QuietPeriod { window: s(window) }, false),
        ));
    }
    all.push((
        "adaptive (defaults)".into(),
        policy(Rule::adaptive(), false),
    ));
    all.push((
        "adaptive (defaults) + listing".into(),
        policy(Rule::adaptive_confirmed(), true),
    ));
    all.push((
        format!("expected_count {objects}"),
        policy(
            Rule::ExpectedCount {
                objects: objects.max(1),
                quiet_window: None,
            },
            false,
        ),
    ));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_800_000_000_000 + ms)
    }

    /// Objects 0, 1, 2 created at 8s, 18s, 48s; notified at 10s, 20s, 50s;
    /// object 0 redelivered at 40s.
    fn history() -> History {
        let arrivals = [(10_000, 0), (20_000, 1), (40_000, 0), (50_000, 2)]
            .map(|(t, object)| Arrival { at: at(t), object });
        History::new(
            at(0),
            vec![at(8_000), at(18_000), at(48_000)],
            arrivals.to_vec(),
        )
    }

    fn quiet(window_s: u64, reconcile: bool) -> Policy {
        Policy {
            rule: Rule::QuietPeriod {
                window: Duration::from_secs(window_s),
            },
            min_objects: 1,
            reconcile,
            late_window: Some(LATE_WINDOW),
            ..Policy::default()
        }
    }

    #[test]
    fn a_replay_times_each_decision_exactly() {
        let h = history();
        let o = replay(&quiet(25, false), &h);
        assert_eq!(
            o.first_completion,
            Some(at(45_000)),
            "20s + 25s: a redelivery is no activity"
        );
        assert!(o.early(&h), "2 of 3 objects");
        assert_eq!((o.reopens, o.final_completion), (1, Some(at(75_000))));
        assert_eq!(o.delay_ms(&h), Some(27_000), "from the last creation");
        assert_eq!((o.listings, o.truncated), (0, false));
    }

    #[test]
    fn a_listing_counts_what_is_created_but_not_yet_notified() {
        // Object 2 exists from 48s; its notification is held until 90s.
        let mut h = history();
        h.arrivals.last_mut().unwrap().at = at(90_000);
        let o = replay(&quiet(30, true), &h);
        // At 50s (20s + 30s) the listing finds object 2: activity, wait 30s more.
        assert!(!o.early(&h));
        assert_eq!(o.first_completion, Some(at(80_000)));
        assert_eq!((o.listings, o.list_requests), (2, 2));
    }

    #[test]
    fn a_watch_short_of_its_series_count_probes_and_the_probe_confirms() {
        // 100 objects a second apart, notified a second later; object 98's
        // notification is a minute late.
        let arrivals = (0..100u32).map(|k| Arrival {
            at: at(1_000 * i64::from(k) + if k == 98 { 60_000 } else { 1_000 }),
            object: k,
        });
        let created = (0..100).map(|k| at(1_000 * k)).collect();
        let h = History::new(at(0), created, arrivals.collect());
        let prior = SeriesPrior::of("daily".into(), &[(100, 1_000); 3]);
        let policy = Policy {
            rule: Rule::adaptive_confirmed(),
            min_objects: 1,
            reconcile: true,
            late_window: Some(LATE_WINDOW),
            ..Policy::default()
        };
        let o = replay_in_series(&policy, &h, Some(prior));
        // 4s after the newest creation (99s) the probe finds object 98, and
        // the count has been there for more than 3s: one listing.
        assert_eq!(o.first_completion, Some(at(103_000)));
        assert!(!o.early(&h));
        assert_eq!((o.listings, o.probes, o.list_requests), (1, 1, 1));
        // Without history the window (75s) waits, and its listing finds it.
        let alone = replay(&policy, &h);
        assert_eq!(alone.first_completion, Some(at(99_000 + 75_000)));
    }

    #[test]
    fn a_policy_that_cannot_complete_ends_the_replay() {
        let h = history();
        let endless = Policy {
            rule: Rule::Polling {
                delay: Duration::from_secs(1),
                max_repeats: 3,
                schedule: crate::watch::DelaySchedule::Fixed,
            },
            min_objects: 4,
            ..Policy::default()
        };
        let o = replay(&endless, &h);
        assert_eq!(o.first_completion, None);
        assert!(
            !o.truncated,
            "it stops sampling below min_objects, and so does the replay"
        );
    }
}
