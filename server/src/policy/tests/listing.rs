//! The adaptive rule confirmed by a listing: creation time, and series.

use super::*;

/// Records an object created at `created_s` whose notification arrives at `arrives_s`.
fn notified(w: &mut Watch, created_s: i64, arrives_s: i64) {
    w.counters.object_count += 1;
    w.counters.event_count += 1;
    w.counters.last_activity_at = Some(at(arrives_s));
    w.counters.newest_event_at = w.counters.newest_event_at.max(Some(at(created_s)));
    let d = evaluate(w, at(arrives_s), Timestamp::MAX);
    apply(w, &d);
}

#[test]
fn with_a_listing_adaptive_counts_silence_from_the_newest_creation() {
    let confirmed = |reconcile| {
        let mut w = watch(Rule::adaptive_confirmed());
        w.policy.reconcile = reconcile;
        for t in 1..=20 {
            notified(&mut w, t, t + 2);
        }
        // The last object's notification is a minute late.
        notified(&mut w, 21, 81);
        w
    };
    let listed = confirmed(true);
    assert_eq!(
        evaluate(&listed, at(81), Timestamp::MAX).wake_at,
        Some(at(21 + 75)),
        "75s after the newest creation, not after the late arrival"
    );
    let d = evaluate(&listed, at(96), Timestamp::MAX);
    assert!(completed(&d));
    let reason = d.lifecycle.unwrap().reason;
    assert!(
        reason.starts_with("no object created for 1m 15s, the adaptive window (min_window;")
            && reason.ends_with("and a listing of the prefix found none unseen; 21 objects"),
        "{reason}"
    );
    // Without a listing, the late arrival restarts the window: nothing
    // else could tell it from a producer still at work.
    let alone = confirmed(false);
    assert_eq!(
        evaluate(&alone, at(81), Timestamp::MAX).wake_at,
        Some(at(81 + 75))
    );
}

#[test]
fn with_a_listing_adaptive_learns_gaps_between_creations_not_arrivals() {
    let mut w = watch(Rule::Adaptive {
        min_window: secs(1),
        max_window: secs(3600),
        quantile: 1.0,
        safety_factor: 2.0,
    });
    w.policy.reconcile = true;
    // Created every 10s; delivery jitter makes arrivals 1-19s apart.
    for (i, jitter) in [0, 9, 0, 9, 0, 9].into_iter().enumerate() {
        let created = 10 * i as i64;
        notified(&mut w, created, created + jitter);
    }
    let window = adaptive_window(&w).unwrap();
    assert_eq!(window.gaps, 5);
    let gap = window.gap_quantile.unwrap();
    assert!(
        gap >= secs(10) && gap < secs(11),
        "{gap:?}: the creation gap, not 19s"
    );
}

fn in_series(count: Option<u64>, longest_ms: (u64, u64)) -> Watch {
    let mut w = watch(Rule::adaptive_confirmed());
    w.policy.reconcile = true;
    w.lifecycle.polling.series = Some(Box::new(crate::watch::SeriesPrior {
        series: "daily".into(),
        runs: 3,
        count,
        max_gap_ms: longest_ms.1,
        min_max_gap_ms: longest_ms.0,
    }));
    w
}

/// Records what a probe listing at `t_s` found (objects created at
/// `created_s`), as the observer does before it decides again.
fn probed(w: &mut Watch, t_s: i64, created_s: &[i64]) {
    for c in created_s {
        w.counters.object_count += 1;
        w.counters.event_count += 1;
        w.counters.last_activity_at = Some(at(t_s));
        w.counters.newest_event_at = w.counters.newest_event_at.max(Some(at(*c)));
    }
    w.lifecycle.polling.probes += 1;
    w.lifecycle.polling.probed_at = Some(at(t_s));
}

#[test]
fn a_series_count_completes_once_no_object_was_created_for_a_few_seconds() {
    let mut w = in_series(Some(3), (800, 1000));
    notified(&mut w, 1, 2);
    notified(&mut w, 2, 3);
    w.counters.object_count += 1;
    w.counters.event_count += 1;
    w.counters.last_activity_at = Some(at(4));
    w.counters.newest_event_at = Some(at(3));
    let d = evaluate(&w, at(4), Timestamp::MAX);
    assert!(
        !completed(&d),
        "an object created 1s ago may not be the last"
    );
    assert_eq!(d.wake_at, Some(at(3 + 3)));
    let d = evaluate(&w, at(6), Timestamp::MAX);
    assert!(completed(&d), "the series' count landed 3s ago");
    let reason = d.lifecycle.unwrap().reason;
    assert_eq!(
        reason,
        "the count of series daily landed: 3 objects, as in each of its last 3 runs; \
         no object created for 3s, and a listing of the prefix found none unseen"
    );
    // Without a listing to confirm it, the count is no reason.
    let mut unconfirmed = in_series(Some(3), (800, 1000));
    unconfirmed.policy.reconcile = false;
    for t in 1..=3 {
        notified(&mut unconfirmed, t, t + 1);
    }
    assert_eq!(unconfirmed.state(), WatchState::Active);
    assert!(!completed(&evaluate(&unconfirmed, at(10), Timestamp::MAX)));
}

#[test]
fn a_few_objects_short_of_the_series_count_a_quiet_watch_probes() {
    // 200 objects a run; this one has counted 198, created a second apart.
    let short = || {
        let mut w = in_series(Some(200), (40_000, 60_000));
        for t in 1..=198 {
            notified(&mut w, t, t + 1);
        }
        w
    };
    let mut w = short();
    let d = evaluate(&w, at(199), Timestamp::MAX);
    assert!(!d.probe);
    assert_eq!(d.wake_at, Some(at(198 + 4)), "4s after the newest creation");
    let d = evaluate(&w, at(202), Timestamp::MAX);
    assert!(d.probe && !completed(&d) && d.events.is_empty());
    // The probe finds the two objects whose notifications are late: the
    // count landed long enough ago, and the probe's listing confirms it.
    probed(&mut w, 202, &[150, 160]);
    let d = evaluate(&w, at(202), Timestamp::MAX);
    assert!(completed(&d) && !d.probe);

    // A probe that finds nothing waits PROBE_INTERVAL for the next, and a
    // generation makes at most MAX_PROBES; then the adaptive window decides
    // (1.5 x the series' 60s gap, from the newest creation).
    let mut w = short();
    let mut probes = Vec::new();
    let mut t = 202;
    for _ in 0..10 {
        let d = evaluate(&w, at(t), Timestamp::MAX);
        if d.probe {
            probes.push(t);
            probed(&mut w, t, &[]);
            continue;
        }
        assert!(!completed(&d));
        match d.wake_at {
            Some(next) if next < at(198 + 90) => t = next.as_millis() / 1000,
            other => {
                assert_eq!(other, Some(at(198 + 90)));
                break;
            }
        }
    }
    assert_eq!(probes, vec![202, 232, 262]);
    assert_eq!(w.lifecycle.polling.probes, MAX_PROBES);

    // Further short than 1% of the count, the producers are still at work.
    let mut far = in_series(Some(200), (40_000, 60_000));
    for t in 1..=190 {
        notified(&mut far, t, t + 1);
    }
    let d = evaluate(&far, at(250), Timestamp::MAX);
    assert!(!d.probe);
    assert_eq!(d.wake_at, Some(at(190 + 90)));
    // Without a listing there is no probe either.
    let mut unlisted = short();
    unlisted.policy.reconcile = false;
    assert!(!evaluate(&unlisted, at(250), Timestamp::MAX).probe);
}

#[test]
fn a_probe_waits_twice_the_runs_median_gap_for_a_slow_producer() {
    let mut w = in_series(Some(50), (60_000, 65_000));
    for k in 1..=49 {
        notified(&mut w, 30 * k, 30 * k + 1);
    }
    let d = evaluate(&w, at(30 * 49 + 5), Timestamp::MAX);
    assert!(!d.probe, "its next object is due in 30s, not late");
    let median = w.lifecycle.polling.gaps.quantile(0.5).unwrap();
    assert_eq!(d.wake_at, Some(at(30 * 49).plus(median * 2)));
}

#[test]
fn a_series_floor_waits_for_gaps_of_the_run_and_a_few_seconds() {
    // Runs whose longest gap was 1s: 1.5s, raised to MIN_SERIES_WINDOW.
    let mut w = in_series(None, (1000, 1000));
    notified(&mut w, 1, 2);
    assert_eq!(
        evaluate(&w, at(2), Timestamp::MAX).wake_at,
        Some(at(1 + 75)),
        "producers starting one after another pause longer than the runs' gaps"
    );
    for t in 2..=11 {
        notified(&mut w, t, t + 1);
    }
    let window = adaptive_window(&w).unwrap();
    assert_eq!((window.window, window.gaps), (MIN_SERIES_WINDOW, 10));
    assert_eq!(
        evaluate(&w, at(12), Timestamp::MAX).wake_at,
        Some(at(11).plus(MIN_SERIES_WINDOW))
    );
    // Runs that disagree on their longest pause leave min_window as it is.
    let mut spread = in_series(None, (1000, 5000));
    for t in 1..=12 {
        notified(&mut spread, t, t + 1);
    }
    assert_eq!(
        evaluate(&spread, at(13), Timestamp::MAX).wake_at,
        Some(at(12 + 75))
    );
}
