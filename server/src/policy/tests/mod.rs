//! The completion rules' unit tests: plain values in, decisions out.
//! Watch groups, the marker rule, and the adaptive rule confirmed by a
//! listing (and its series) have their own files.

mod group;
mod listing;
mod marker;

use super::*;
use crate::error::Error;
use std::{collections::HashMap, time::Duration};

use crate::watch::{
    ActivityGaps, Bucket, Counters, ManifestCheck, Prefix, Source, TenantId, WatchId, policy::*,
};

const S: i64 = 1000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(secs * S)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn watch(rule: Rule) -> Watch {
    Watch {
        tenant: TenantId::parse("t", "acme").unwrap(),
        id: WatchId::generate(),
        source: Source::objects(
            Bucket::parse("b", "data-lake").unwrap(),
            Prefix::parse("p", "day=1/").unwrap(),
            Default::default(),
        ),
        policy: Policy {
            rule,
            ..Policy::default()
        },
        labels: Default::default(),
        client_token: None,
        created_at: at(0),
        lifecycle: Lifecycle::fresh(1, at(0), 0),
        counters: Counters::default(),
        last_seq: 1,
        trace: Default::default(),
    }
}

/// Lands `n` new objects at `t`.
fn land(w: &mut Watch, n: u64, t: i64) {
    w.counters.object_count += n;
    w.counters.event_count += n;
    w.counters.last_activity_at = Some(at(t));
}

/// Applies a decision the way the observer does.
fn apply(w: &mut Watch, d: &Decision) {
    if let Some(l) = &d.lifecycle {
        w.lifecycle = l.clone();
    }
}

fn completed(d: &Decision) -> bool {
    d.events
        .iter()
        .any(|e| matches!(e, EventKind::Completed { .. }))
}

#[test]
fn quiet_period_completes_exactly_at_last_activity_plus_window() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    land(&mut w, 3, 10);
    let d = evaluate(&w, at(20), Timestamp::MAX);
    assert!(d.events.is_empty());
    assert_eq!(d.wake_at, Some(at(40)));
    assert!(
        !completed(&evaluate(
            &w,
            Timestamp::from_millis(40 * S - 1),
            Timestamp::MAX
        )),
        "never a millisecond early"
    );
    let d = evaluate(&w, at(40), Timestamp::MAX);
    assert!(completed(&d));
    let life = d.lifecycle.unwrap();
    assert_eq!(life.state, WatchState::Completed);
    assert_eq!(life.completed_at, Some(at(40)));
    assert!(
        life.reason.contains("no activity for 30s"),
        "{}",
        life.reason
    );
}

#[test]
fn quiet_period_deadline_moves_with_activity() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    land(&mut w, 1, 10);
    assert_eq!(evaluate(&w, at(11), Timestamp::MAX).wake_at, Some(at(40)));
    land(&mut w, 1, 35);
    let d = evaluate(&w, at(40), Timestamp::MAX);
    assert!(!completed(&d));
    assert_eq!(d.wake_at, Some(at(65)));
}

#[test]
fn quiet_period_with_no_activity_counts_from_the_start() {
    let w = watch(Rule::QuietPeriod { window: secs(30) });
    assert_eq!(evaluate(&w, at(0), Timestamp::MAX).wake_at, Some(at(30)));
    assert!(completed(&evaluate(&w, at(30), Timestamp::MAX)));
}

#[test]
fn min_objects_holds_completion_until_enough_objects_land() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    w.policy.min_objects = 5;
    land(&mut w, 4, 10);
    let d = evaluate(&w, at(100), Timestamp::MAX);
    assert!(!completed(&d));
    assert_eq!(
        d.wake_at, None,
        "only new activity can help; no timer needed"
    );
    land(&mut w, 1, 100);
    assert!(!completed(&evaluate(&w, at(129), Timestamp::MAX)));
    assert!(completed(&evaluate(&w, at(130), Timestamp::MAX)));
}

#[test]
fn expected_count_completes_the_moment_it_is_reached() {
    let mut w = watch(Rule::ExpectedCount {
        objects: 10,
        quiet_window: None,
    });
    land(&mut w, 9, 5);
    let d = evaluate(&w, at(5), Timestamp::MAX);
    assert!(!completed(&d));
    assert_eq!(d.wake_at, None);
    land(&mut w, 1, 6);
    let d = evaluate(&w, at(6), Timestamp::MAX);
    assert!(completed(&d));
    assert!(d.lifecycle.unwrap().reason.contains("10 of 10"));
}

#[test]
fn expected_count_falls_back_to_its_quiet_window() {
    let mut w = watch(Rule::ExpectedCount {
        objects: 10,
        quiet_window: Some(secs(60)),
    });
    land(&mut w, 7, 5);
    assert_eq!(evaluate(&w, at(6), Timestamp::MAX).wake_at, Some(at(65)));
    let d = evaluate(&w, at(65), Timestamp::MAX);
    assert!(completed(&d));
    assert!(d.lifecycle.unwrap().reason.contains("7 of 10 expected"));
}

#[test]
fn timeout_ends_the_watch_and_says_whether_min_objects_was_met() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    w.policy.timeout = Some(secs(100));
    w.policy.min_objects = 10;
    land(&mut w, 3, 90);
    assert_eq!(
        evaluate(&w, at(95), Timestamp::MAX).wake_at,
        Some(at(100)),
        "the earlier of timeout and quiet deadline"
    );
    let d = evaluate(&w, at(100), Timestamp::MAX);
    let life = d.lifecycle.clone().unwrap();
    assert_eq!(life.state, WatchState::TimedOut);
    assert!(life.reason.contains("was not met"), "{}", life.reason);
    assert!(matches!(
        d.events.as_slice(),
        [EventKind::TimedOut {
            object_count: 3,
            ..
        }]
    ));

    let mut w = watch(Rule::ExpectedCount {
        objects: 100,
        quiet_window: None,
    });
    w.policy.timeout = Some(secs(100));
    land(&mut w, 50, 1);
    let life = evaluate(&w, at(100), Timestamp::MAX).lifecycle.unwrap();
    assert!(
        life.reason.contains("min_objects (0) was met"),
        "{}",
        life.reason
    );
}

#[test]
fn polling_counts_unchanged_samples_and_resets_on_change() {
    let rule = Rule::Polling {
        delay: secs(10),
        max_repeats: 3,
        schedule: DelaySchedule::Fixed,
    };
    let mut w = watch(rule);
    assert_eq!(
        evaluate(&w, at(0), Timestamp::MAX).wake_at,
        Some(at(10)),
        "first sample one delay after start"
    );
    land(&mut w, 2, 5);
    let d = evaluate(&w, at(10), Timestamp::MAX);
    assert!(d.events.is_empty(), "a changed sample is no quiet tick");
    apply(&mut w, &d);
    assert_eq!(
        w.lifecycle.polling,
        PollingProgress {
            repeated: 0,
            last_sample: 2,
            next_sample_at: Some(at(20)),
            ..PollingProgress::default()
        }
    );
    for (t, k) in [(20, 1), (30, 2)] {
        let d = evaluate(&w, at(t), Timestamp::MAX);
        assert_eq!(
            d.events,
            vec![EventKind::QuietTick {
                object_count: 2,
                repeated: k,
                max_repeats: 3
            }],
            "sample at {t}s"
        );
        apply(&mut w, &d);
    }
    land(&mut w, 1, 35);
    let d = evaluate(&w, at(40), Timestamp::MAX);
    apply(&mut w, &d);
    assert_eq!(
        w.lifecycle.polling.repeated, 0,
        "activity resets the repeat count"
    );
    let mut done = None;
    for t in [50, 60, 70] {
        let d = evaluate(&w, at(t), Timestamp::MAX);
        apply(&mut w, &d);
        if completed(&d) {
            done = Some(t);
            let kinds: Vec<_> = d.events.iter().map(EventKind::name).collect();
            assert_eq!(kinds, ["quiet_tick", "completed"]);
        }
    }
    assert_eq!(done, Some(70), "third unchanged sample completes");
}

#[test]
fn polling_before_its_sample_is_due_only_waits() {
    let rule = Rule::Polling {
        delay: secs(10),
        max_repeats: 1,
        schedule: DelaySchedule::Fixed,
    };
    let mut w = watch(rule);
    w.lifecycle.polling.next_sample_at = Some(at(10));
    let d = evaluate(&w, at(9), Timestamp::MAX);
    assert_eq!(
        d,
        Decision {
            wake_at: Some(at(10)),
            ..Decision::default()
        }
    );
}

#[test]
fn delay_schedules_follow_the_classic_formulas() {
    let d = secs(60);
    assert_eq!(DelaySchedule::Fixed.delay(d, 5), secs(60));
    assert_eq!(DelaySchedule::Divide.delay(d, 0), secs(60));
    assert_eq!(DelaySchedule::Divide.delay(d, 1), secs(60));
    assert_eq!(DelaySchedule::Divide.delay(d, 4), secs(15));
    assert_eq!(DelaySchedule::Exponential.delay(d, 0), secs(60));
    // ceil(60 * e^-1) = ceil(22.07) = 23; ceil(60 * e^-3) = ceil(2.98) = 3
    assert_eq!(DelaySchedule::Exponential.delay(d, 1), secs(23));
    assert_eq!(DelaySchedule::Exponential.delay(d, 3), secs(3));
    assert_eq!(DelaySchedule::Exponential.delay(d, 20), secs(1));
}

#[test]
fn polling_uses_its_schedule_between_samples() {
    let rule = Rule::Polling {
        delay: secs(60),
        max_repeats: 10,
        schedule: DelaySchedule::Divide,
    };
    let mut w = watch(rule);
    let mut t = 60;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let d = evaluate(&w, at(t), Timestamp::MAX);
        apply(&mut w, &d);
        let next = d.wake_at.unwrap();
        waits.push((next.as_millis() / S) - t);
        t = next.as_millis() / S;
    }
    assert_eq!(waits, [60, 30, 20, 15]);
}

#[test]
fn polling_respects_min_objects() {
    let rule = Rule::Polling {
        delay: secs(1),
        max_repeats: 2,
        schedule: DelaySchedule::Fixed,
    };
    let mut w = watch(rule);
    w.policy.min_objects = 1;
    for t in 1..=5 {
        let d = evaluate(&w, at(t), Timestamp::MAX);
        assert!(!completed(&d), "no objects at {t}s");
        apply(&mut w, &d);
    }
    land(&mut w, 1, 5);
    let mut t = 6;
    loop {
        let d = evaluate(&w, at(t), Timestamp::MAX);
        apply(&mut w, &d);
        if completed(&d) {
            break;
        }
        t += 1;
    }
    assert_eq!(t, 8, "changed at 6s, unchanged at 7s and 8s");
}

/// Evaluates `w` at each wake-up it asks for, as the observer does,
/// until `end`; returns the events written on the way.
fn run_until(w: &mut Watch, from: Timestamp, end: Timestamp) -> Vec<EventKind> {
    let (mut now, mut events) = (from, Vec::new());
    for _ in 0..100_000 {
        let d = evaluate(w, now, Timestamp::MAX);
        events.extend(d.events.iter().cloned());
        apply(w, &d);
        match d.wake_at {
            Some(next) if next <= end => now = next.max(now),
            _ => return events,
        }
    }
    panic!("still waking at {now} after 100000 evaluations");
}

#[test]
fn polling_below_min_objects_stops_sampling_after_max_repeats() {
    let rule = Rule::Polling {
        delay: MIN_POLLING_DELAY,
        max_repeats: 2,
        schedule: DelaySchedule::Fixed,
    };
    let mut w = watch(rule);
    w.policy.min_objects = 1_000;
    let hour = at(3600);
    let events = run_until(&mut w, at(0), hour);
    let ticks: Vec<u32> = events
        .iter()
        .map(|e| match e {
            EventKind::QuietTick { repeated, .. } => *repeated,
            other => panic!("only quiet ticks, got {other:?}"),
        })
        .collect();
    assert_eq!(
        ticks.len(),
        2,
        "an hour of silence writes max_repeats ticks, not {}",
        ticks.len()
    );
    assert_eq!(ticks, [1, 2]);
    let parked = w.clone();
    assert_eq!(
        evaluate(&w, at(7200), Timestamp::MAX),
        Decision::default(),
        "a later evaluation (a restart) writes nothing and sets no timer"
    );

    // Activity is sampled as soon as it is seen, and counts up again.
    land(&mut w, 1, 5000);
    let events = run_until(&mut w, at(5000), at(9000));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(w.lifecycle.polling.last_sample, 1);
    assert_eq!(
        w.lifecycle.polling.next_sample_at,
        Some(at(5003)),
        "changed at 5000s, unchanged at 5001s and 5002s"
    );

    // Activity before the parked sample was due waits for that sample.
    let mut early = parked;
    early.lifecycle.polling.next_sample_at = Some(at(10));
    land(&mut early, 1, 4);
    let d = evaluate(&early, at(4), Timestamp::MAX);
    assert_eq!((d.events.len(), d.wake_at), (0, Some(at(10))));

    // A timeout still ends a watch that stopped sampling.
    let mut timed = watch(Rule::Polling {
        delay: MIN_POLLING_DELAY,
        max_repeats: 1,
        schedule: DelaySchedule::Fixed,
    });
    timed.policy.min_objects = 1_000;
    timed.policy.timeout = Some(secs(3600));
    let events = run_until(&mut timed, at(0), at(7200));
    let kinds: Vec<_> = events.iter().map(EventKind::name).collect();
    assert_eq!(kinds, ["quiet_tick", "timed_out"]);
    assert_eq!(timed.lifecycle.completed_at, Some(hour));
}

#[test]
fn no_delay_schedule_samples_faster_than_the_minimum() {
    let one = MIN_POLLING_DELAY;
    assert_eq!(DelaySchedule::Divide.delay(secs(2), 5), one);
    assert_eq!(DelaySchedule::Divide.delay(secs(60), MAX_REPEATS), one);
    assert_eq!(DelaySchedule::Exponential.delay(one, MAX_REPEATS), one);
    // A watch stored before the minimum existed samples no faster either.
    let old = Duration::from_millis(1);
    for schedule in [
        DelaySchedule::Fixed,
        DelaySchedule::Divide,
        DelaySchedule::Exponential,
    ] {
        for repeated in [0, 1, 7, MAX_REPEATS] {
            assert_eq!(
                schedule.delay(old, repeated),
                one,
                "{schedule:?} {repeated}"
            );
        }
    }
}

#[test]
fn late_activity_reopens_a_completed_watch_within_the_window() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    w.policy.late_window = Some(secs(600));
    land(&mut w, 5, 10);
    let d = evaluate(&w, at(40), Timestamp::MAX);
    assert_eq!(
        d.wake_at,
        Some(at(640)),
        "keeps watching until the late window closes"
    );
    apply(&mut w, &d);
    assert_eq!(w.lifecycle.state, WatchState::Completed);
    assert_eq!(
        evaluate(&w, at(100), Timestamp::MAX),
        Decision {
            wake_at: Some(at(640)),
            ..Decision::default()
        }
    );

    land(&mut w, 1, 200);
    let d = evaluate(&w, at(200), Timestamp::MAX);
    assert!(matches!(
        d.events.first(),
        Some(EventKind::Reopened {
            object_count: 6,
            ..
        })
    ));
    apply(&mut w, &d);
    assert_eq!(w.lifecycle.state, WatchState::Active);
    assert_eq!(w.lifecycle.generation, 2);
    assert_eq!(d.wake_at, Some(at(230)));
    let d = evaluate(&w, at(230), Timestamp::MAX);
    assert!(completed(&d));
    apply(&mut w, &d);
    assert_eq!(
        (w.lifecycle.state, w.lifecycle.generation),
        (WatchState::Completed, 2)
    );
}

#[test]
fn activity_after_the_late_window_does_not_reopen() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    w.policy.late_window = Some(secs(60));
    let d = evaluate(&w, at(30), Timestamp::MAX);
    apply(&mut w, &d);
    land(&mut w, 1, 91);
    assert_eq!(
        evaluate(&w, at(91), Timestamp::MAX),
        Decision::default(),
        "window closed at 90s: forget the watch"
    );
}

#[test]
fn without_late_window_a_completed_watch_is_done() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    let d = evaluate(&w, at(30), Timestamp::MAX);
    assert_eq!(d.wake_at, None);
    apply(&mut w, &d);
    land(&mut w, 1, 31);
    assert_eq!(evaluate(&w, at(31), Timestamp::MAX), Decision::default());
}

#[test]
fn terminal_states_never_emit_again() {
    for state in [
        WatchState::TimedOut,
        WatchState::Cancelled,
        WatchState::Failed,
    ] {
        let mut w = watch(Rule::QuietPeriod { window: secs(1) });
        w.lifecycle.state = state;
        w.policy.late_window = Some(secs(60));
        land(&mut w, 1, 5);
        assert_eq!(
            evaluate(&w, at(6), Timestamp::MAX),
            Decision::default(),
            "{state:?}"
        );
    }
}

#[test]
fn a_quiet_deadline_waits_for_ingest_to_settle_past_it() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    land(&mut w, 2, 10);
    let d = evaluate(&w, at(40), at(39));
    assert!(
        !completed(&d),
        "a queue may still hold activity from before 40s"
    );
    assert_eq!(d.held_until_settled, Some(at(40)));
    let life = d.lifecycle.clone().expect("the reason says why it waits");
    assert!(life.reason.contains("catch up"), "{}", life.reason);
    apply(&mut w, &d);
    assert_eq!(
        evaluate(&w, at(45), at(39)).lifecycle,
        None,
        "holding again changes nothing"
    );
    let d = evaluate(&w, at(45), at(40));
    assert!(completed(&d));
    assert_eq!(d.lifecycle.unwrap().completed_at, Some(at(45)));
}

#[test]
fn a_held_watch_that_sees_new_activity_drops_its_hold_reason() {
    let mut w = watch(Rule::QuietPeriod { window: secs(30) });
    land(&mut w, 1, 10);
    let d = evaluate(&w, at(40), at(20));
    apply(&mut w, &d);
    land(&mut w, 1, 39); // the queue delivers a late record from before the deadline
    let d = evaluate(&w, at(41), at(41));
    assert!(!completed(&d));
    assert_eq!(d.wake_at, Some(at(69)));
    assert_eq!(d.lifecycle.unwrap().reason, "");
}

#[test]
fn polling_samples_only_what_has_settled_and_timeouts_never_wait() {
    let rule = Rule::Polling {
        delay: secs(10),
        max_repeats: 1,
        schedule: DelaySchedule::Fixed,
    };
    let mut w = watch(rule);
    let d = evaluate(&w, at(10), at(9));
    assert!(d.events.is_empty());
    assert_eq!(d.held_until_settled, Some(at(10)));

    let mut w2 = watch(Rule::QuietPeriod { window: secs(30) });
    w2.policy.timeout = Some(secs(60));
    let d = evaluate(&w2, at(60), at(0));
    assert_eq!(d.lifecycle.unwrap().state, WatchState::TimedOut);
    w.policy.timeout = Some(secs(10));
    assert_eq!(
        evaluate(&w, at(10), at(0)).lifecycle.unwrap().state,
        WatchState::TimedOut
    );
}

#[test]
fn a_polling_sample_held_for_the_queues_keeps_the_sampling_interval() {
    let rule = Rule::Polling {
        delay: secs(10),
        max_repeats: 3,
        schedule: DelaySchedule::Fixed,
    };
    let mut w = watch(rule);
    let d = evaluate(&w, at(10), at(9));
    assert_eq!(d.held_until_settled, Some(at(10)));
    apply(&mut w, &d);
    // The queues confirmed from 10.2s on; the answer came back at 11.2s.
    let settled = Timestamp::from_millis(10_200);
    let d = evaluate(&w, Timestamp::from_millis(11_200), settled);
    assert!(matches!(
        d.events.as_slice(),
        [EventKind::QuietTick { repeated: 1, .. }]
    ));
    assert_eq!(
        d.wake_at,
        Some(Timestamp::from_millis(20_200)),
        "the next sample is a delay after what the sample stands for, not after the wait"
    );
    // Without queues the sample stands for the instant it is taken.
    let mut w = watch(Rule::Polling {
        delay: secs(10),
        max_repeats: 3,
        schedule: DelaySchedule::Fixed,
    });
    let d = evaluate(&w, Timestamp::from_millis(10_005), Timestamp::MAX);
    apply(&mut w, &d);
    assert_eq!(d.wake_at, Some(Timestamp::from_millis(20_005)));
}

fn adaptive(min: u64, max: u64) -> Rule {
    Rule::Adaptive {
        min_window: secs(min),
        max_window: secs(max),
        quantile: 0.99,
        safety_factor: 3.0,
    }
}

/// Lands one object at each instant (in ms), evaluating after each as the observer does.
fn feed(w: &mut Watch, instants_ms: impl IntoIterator<Item = i64>) {
    for t in instants_ms {
        w.counters.object_count += 1;
        w.counters.event_count += 1;
        w.counters.last_activity_at = Some(Timestamp::from_millis(t));
        let d = evaluate(w, Timestamp::from_millis(t), Timestamp::MAX);
        assert!(!completed(&d), "completed at activity {t}ms");
        apply(w, &d);
    }
}

/// The instant the watch completes if nothing else lands.
fn completes_at(w: &Watch) -> Timestamp {
    let last = w.counters.last_activity_at.unwrap();
    let d = evaluate(w, last, Timestamp::MAX);
    let deadline = d.wake_at.expect("an adaptive watch waits for its window");
    let before = Timestamp::from_millis(deadline.as_millis() - 1);
    assert!(!completed(&evaluate(w, before, Timestamp::MAX)));
    assert!(completed(&evaluate(w, deadline, Timestamp::MAX)));
    deadline
}

#[test]
fn gap_quantiles_come_from_the_histogram_rounded_up_by_at_most_a_bucket() {
    let mut gaps = ActivityGaps::default();
    assert_eq!(gaps.quantile(0.99), None);
    for _ in 0..99 {
        gaps.add(Duration::from_millis(1000));
    }
    gaps.add(Duration::from_secs(60));
    assert_eq!(gaps.count(), 100);
    let p99 = gaps.quantile(0.99).unwrap();
    assert!(
        p99 >= secs(1) && p99 <= Duration::from_millis(1091),
        "{p99:?}"
    );
    let max = gaps.quantile(1.0).unwrap();
    assert!(
        max >= secs(60) && max <= Duration::from_millis(65_500),
        "{max:?}"
    );
    // With fewer than 100 gaps, p99 is the longest gap seen.
    let mut few = ActivityGaps::default();
    few.add(secs(2));
    few.add(secs(20));
    assert!(few.quantile(0.99).unwrap() >= secs(20));
    assert_eq!(ActivityGaps::bucket(Duration::ZERO), 0);
    assert_eq!(ActivityGaps::bucket(MAX_WINDOW * 100), u8::MAX);
}

#[test]
fn adaptive_never_completes_before_min_window() {
    let mut w = watch(adaptive(90, 3600));
    feed(&mut w, (0..200).map(|i| 10_000 + i * 500)); // every 0.5s
    let last = w.counters.last_activity_at.unwrap();
    assert_eq!(completes_at(&w), last.plus(secs(90)));
    let d = evaluate(&w, last.plus(secs(90)), Timestamp::MAX);
    let reason = d.lifecycle.unwrap().reason;
    assert!(
        reason.contains(
            "no activity for 1m 30s, the adaptive window (min_window; 3 x p99 gap 0.5s over 199 gaps is shorter)"
        ),
        "{reason}"
    );

    let fresh = watch(adaptive(90, 3600));
    assert_eq!(
        evaluate(&fresh, at(0), Timestamp::MAX).wake_at,
        Some(at(90)),
        "no gaps yet: min_window from the start"
    );
}

#[test]
fn adaptive_widens_with_slower_producers() {
    let mut fast = watch(adaptive(5, 3600));
    feed(&mut fast, (0..50).map(|i| i * 2_000));
    let mut slow = watch(adaptive(5, 3600));
    feed(&mut slow, (0..50).map(|i| i * 40_000));
    let fast_window = fast
        .counters
        .last_activity_at
        .unwrap()
        .until(completes_at(&fast));
    let slow_window = slow
        .counters
        .last_activity_at
        .unwrap()
        .until(completes_at(&slow));
    // 3 x the bucket bound of the gap: within 9% above 3 x 2s and 3 x 40s.
    assert!(
        fast_window >= secs(6) && fast_window <= Duration::from_millis(6_540),
        "{fast_window:?}"
    );
    assert!(
        slow_window >= secs(120) && slow_window <= Duration::from_millis(130_800),
        "{slow_window:?}"
    );
    let explained = adaptive_window(&slow).unwrap();
    assert_eq!((explained.gaps, explained.bound), (49, None));
    assert!(
        explained.to_string().starts_with("3 x p99 gap 4"),
        "{explained}"
    );
}

#[test]
fn adaptive_follows_one_long_gap_among_few() {
    let mut w = watch(adaptive(5, 3600));
    feed(&mut w, [0, 1_000, 2_000, 62_000, 63_000]);
    let window = w.counters.last_activity_at.unwrap().until(completes_at(&w));
    assert!(
        window >= secs(180),
        "p99 of 4 gaps is the 60s one: {window:?}"
    );
}

#[test]
fn adaptive_is_bounded_by_max_window() {
    let mut w = watch(adaptive(10, 300));
    feed(&mut w, (0..10).map(|i| i * 600_000)); // every 10 minutes
    let last = w.counters.last_activity_at.unwrap();
    assert_eq!(completes_at(&w), last.plus(secs(300)));
    assert_eq!(
        adaptive_window(&w).unwrap().bound,
        Some(WindowBound::MaxWindow)
    );
}

#[test]
fn adaptive_gaps_survive_a_serde_round_trip_and_older_records_read() {
    let mut w = watch(adaptive(10, 3600));
    feed(&mut w, (0..30).map(|i| i * 7_000));
    assert_eq!(w.lifecycle.polling.gaps.count(), 29);
    let stored = serde_json::to_string(&w.lifecycle.polling).unwrap();
    let read: PollingProgress = serde_json::from_str(&stored).unwrap();
    assert_eq!(read, w.lifecycle.polling);
    let mut restored = w.clone();
    restored.lifecycle.polling = read;
    assert_eq!(completes_at(&restored), completes_at(&w));
    // The same activity evaluated again after a restart counts no second gap.
    let last = w.counters.last_activity_at.unwrap();
    let again = evaluate(&restored, last, Timestamp::MAX);
    apply(&mut restored, &again);
    assert_eq!(restored.lifecycle.polling.gaps.count(), 29);

    let before_adaptive: PollingProgress =
        serde_json::from_str(r#"{"repeated":2,"last_sample":7,"next_sample_at":null}"#).unwrap();
    assert!(before_adaptive.gaps.is_empty());
    let quiet = serde_json::to_string(&Lifecycle::fresh(1, at(0), 0).polling).unwrap();
    assert!(
        !quiet.contains("gaps"),
        "other rules store nothing new: {quiet}"
    );
}

#[test]
fn a_reopened_adaptive_watch_learns_the_gap_that_reopened_it() {
    let mut w = watch(adaptive(10, 3600));
    w.policy.late_window = Some(secs(3600));
    feed(&mut w, (0..20).map(|i| i * 1_000)); // every second until 19s
    let done = completes_at(&w);
    assert_eq!(done, at(29));
    let d = evaluate(&w, done, Timestamp::MAX);
    apply(&mut w, &d);
    assert_eq!(w.lifecycle.state, WatchState::Completed);
    land(&mut w, 1, 79); // a notification 60s late
    let d = evaluate(&w, at(79), Timestamp::MAX);
    assert!(matches!(d.events.first(), Some(EventKind::Reopened { .. })));
    apply(&mut w, &d);
    assert_eq!(w.lifecycle.generation, 2);
    let window = at(79).until(completes_at(&w));
    assert!(window >= secs(180), "3 x the 60s gap: {window:?}");
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (
            Rule::Polling {
                delay: secs(0),
                max_repeats: 1,
                schedule: DelaySchedule::Fixed,
            },
            "policy.polling.delay",
        ),
        (
            Rule::Polling {
                delay: MIN_POLLING_DELAY - Duration::from_millis(1),
                max_repeats: 1,
                schedule: DelaySchedule::Divide,
            },
            "policy.polling.delay",
        ),
        (
            Rule::Polling {
                delay: secs(1),
                max_repeats: 0,
                schedule: DelaySchedule::Fixed,
            },
            "policy.polling.max_repeats",
        ),
        (
            Rule::QuietPeriod {
                window: secs(10 * 365 * 24 * 3600),
            },
            "policy.quiet_period.window",
        ),
        (
            Rule::ExpectedCount {
                objects: 0,
                quiet_window: None,
            },
            "policy.expected_count.objects",
        ),
        (
            Rule::Adaptive {
                min_window: secs(0),
                max_window: secs(60),
                quantile: 0.99,
                safety_factor: 3.0,
            },
            "policy.adaptive.min_window",
        ),
        (
            Rule::Adaptive {
                min_window: secs(120),
                max_window: secs(60),
                quantile: 0.99,
                safety_factor: 3.0,
            },
            "policy.adaptive.max_window",
        ),
        (
            Rule::Adaptive {
                min_window: secs(1),
                max_window: secs(60),
                quantile: 1.5,
                safety_factor: 3.0,
            },
            "policy.adaptive.quantile",
        ),
        (
            Rule::Adaptive {
                min_window: secs(1),
                max_window: secs(60),
                quantile: f64::NAN,
                safety_factor: 3.0,
            },
            "policy.adaptive.quantile",
        ),
        (
            Rule::Adaptive {
                min_window: secs(1),
                max_window: secs(60),
                quantile: 0.99,
                safety_factor: 0.5,
            },
            "policy.adaptive.safety_factor",
        ),
    ];
    for (rule, field) in cases {
        let p = Policy {
            rule,
            ..Policy::default()
        };
        match p.validate() {
            Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let p = Policy {
        timeout: Some(Duration::ZERO),
        ..Policy::default()
    };
    assert!(
        matches!(p.validate(), Err(Error::InvalidArgument { field, .. }) if field == "policy.timeout")
    );
    assert!(Policy::default().validate().is_ok());
    let fastest = Policy {
        rule: Rule::Polling {
            delay: MIN_POLLING_DELAY,
            max_repeats: 1,
            schedule: DelaySchedule::Fixed,
        },
        ..Policy::default()
    };
    assert!(fastest.validate().is_ok());
    let too_fast = Policy {
        rule: Rule::Polling {
            delay: Duration::from_millis(999),
            max_repeats: 1,
            schedule: DelaySchedule::Fixed,
        },
        ..Policy::default()
    };
    let message = too_fast.validate().unwrap_err().to_string();
    assert!(message.contains("at least 1s"), "{message}");
    let adaptive = Policy {
        rule: Rule::adaptive(),
        ..Policy::default()
    };
    assert!(adaptive.validate().is_ok());
}
