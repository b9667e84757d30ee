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
    w.lifecycle.polling.series = Some(crate::watch::SeriesPrior {
        series: "daily".into(),
        runs: 3,
        count,
        max_gap_ms: longest_ms.1,
        min_max_gap_ms: longest_ms.0,
    });
    w
}

#[test]
fn a_series_count_completes_at_once_and_its_gaps_set_the_floor() {
    let mut w = in_series(Some(3), (800, 1000));
    notified(&mut w, 1, 2);
    notified(&mut w, 2, 3);
    let d = evaluate(&w, at(3), Timestamp::MAX);
    assert!(!completed(&d));
    assert_eq!(
        d.wake_at,
        Some(at(2).plus(Duration::from_millis(1500))),
        "1.5 x 1s from the newest creation"
    );
    w.counters.object_count += 1;
    w.counters.event_count += 1;
    w.counters.last_activity_at = Some(at(4));
    let d = evaluate(&w, at(4), Timestamp::MAX);
    assert!(completed(&d), "the series' count landed");
    assert!(
        d.lifecycle
            .unwrap()
            .reason
            .starts_with("the count of series daily landed: 3 objects")
    );
    // Without a listing to confirm it, the count is no reason.
    let mut unconfirmed = in_series(Some(3), (800, 1000));
    unconfirmed.policy.reconcile = false;
    for t in 1..=3 {
        notified(&mut unconfirmed, t, t + 1);
    }
    assert_eq!(unconfirmed.state(), WatchState::Active);
    assert!(!completed(&evaluate(&unconfirmed, at(4), Timestamp::MAX)));
    // Runs that disagree on their longest pause leave min_window as it is.
    let mut spread = in_series(None, (1000, 5000));
    notified(&mut spread, 1, 2);
    assert_eq!(
        evaluate(&spread, at(2), Timestamp::MAX).wake_at,
        Some(at(1 + 75))
    );
}
