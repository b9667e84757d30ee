//! The marker rule, and the check of its manifest.

use super::*;

fn marker_rule(quiet_window: Option<Duration>, verify_manifest: bool) -> Watch {
    watch(Rule::Marker {
        key: "_SUCCESS".into(),
        quiet_window,
        verify_manifest,
    })
}

/// Records a marker creation at `t`, as the store does.
fn mark(w: &mut Watch, t: i64) {
    w.counters.marker_count += 1;
    w.counters.marker_at = Some(at(t));
    w.counters.last_activity_at = Some(at(t));
}

#[test]
fn a_marker_completes_once_queues_caught_up_past_it_and_never_before() {
    let mut w = marker_rule(None, false);
    land(&mut w, 3, 10);
    let d = evaluate(&w, at(500), Timestamp::MAX);
    assert!(!completed(&d), "no marker, no completion however quiet");
    assert_eq!(d.wake_at, None, "only the marker can change the outcome");
    mark(&mut w, 20);
    let d = evaluate(&w, at(20), at(19));
    assert!(!completed(&d));
    assert_eq!(
        d.held_until_settled,
        Some(at(20)),
        "objects before the marker may be in a queue"
    );
    let d = evaluate(&w, at(20), at(20));
    assert!(completed(&d));
    let reason = d.lifecycle.unwrap().reason;
    assert_eq!(reason, "marker _SUCCESS created; 3 objects");
}

#[test]
fn a_marker_with_a_quiet_window_waits_for_silence_after_it_and_min_objects() {
    let mut w = marker_rule(Some(secs(5)), false);
    w.policy.min_objects = 4;
    land(&mut w, 3, 10);
    mark(&mut w, 20);
    assert_eq!(evaluate(&w, at(21), Timestamp::MAX).wake_at, Some(at(25)));
    land(&mut w, 1, 23);
    let d = evaluate(&w, at(25), Timestamp::MAX);
    assert!(
        !completed(&d),
        "an object after the marker restarts the window"
    );
    assert_eq!(d.wake_at, Some(at(28)));
    assert!(completed(&evaluate(&w, at(28), Timestamp::MAX)));
    let mut short = marker_rule(None, false);
    short.policy.min_objects = 4;
    land(&mut short, 3, 10);
    mark(&mut short, 20);
    assert!(
        !completed(&evaluate(&short, at(100), Timestamp::MAX)),
        "3 of min_objects 4"
    );
}

#[test]
fn a_reopened_marker_watch_waits_for_a_marker_after_its_completion() {
    let mut w = marker_rule(None, false);
    w.policy.late_window = Some(secs(60));
    land(&mut w, 3, 10);
    mark(&mut w, 20);
    let d = evaluate(&w, at(20), Timestamp::MAX);
    apply(&mut w, &d);
    land(&mut w, 1, 30);
    let d = evaluate(&w, at(30), Timestamp::MAX);
    assert!(matches!(d.events[0], EventKind::Reopened { .. }));
    assert!(
        !completed(&d),
        "the old marker does not complete the new generation"
    );
    apply(&mut w, &d);
    assert!(!completed(&evaluate(&w, at(90), Timestamp::MAX)));
    mark(&mut w, 95);
    assert!(completed(&evaluate(&w, at(95), Timestamp::MAX)));
}

#[test]
fn verify_manifest_completes_only_once_every_listed_file_is_counted() {
    let mut w = marker_rule(None, true);
    w.policy.timeout = Some(secs(600));
    land(&mut w, 2, 10);
    mark(&mut w, 20);
    let d = evaluate(&w, at(20), Timestamp::MAX);
    assert!(!completed(&d));
    assert!(d.check_manifest, "the manifest must be read first");
    // The check found 1 of 3 listed files missing.
    w.lifecycle.polling.manifest = Some(Box::new(ManifestCheck {
        marker: 1,
        activity: w.counters.activity(),
        listed: 3,
        missing: 1,
        problem: String::new(),
    }));
    let d = evaluate(&w, at(21), Timestamp::MAX);
    assert!(!completed(&d) && !d.check_manifest);
    assert_eq!(d.wake_at, Some(at(600)));
    let life = d.lifecycle.unwrap();
    assert_eq!(
        life.reason,
        "the marker's manifest lists 3 files, 1 not counted yet"
    );
    w.lifecycle = life;
    let timed_out = evaluate(&w, at(600), Timestamp::MAX).lifecycle.unwrap();
    assert_eq!(timed_out.state, WatchState::TimedOut);
    assert!(
        timed_out
            .reason
            .ends_with("; the marker's manifest lists 3 files, 1 not counted yet"),
        "{}",
        timed_out.reason
    );
    // The missing file lands: check again, then complete.
    land(&mut w, 1, 30);
    assert!(evaluate(&w, at(30), Timestamp::MAX).check_manifest);
    w.lifecycle.polling.manifest = Some(Box::new(ManifestCheck {
        marker: 1,
        activity: w.counters.activity(),
        listed: 3,
        ..ManifestCheck::default()
    }));
    let d = evaluate(&w, at(31), Timestamp::MAX);
    assert!(completed(&d));
    assert!(
        d.lifecycle
            .unwrap()
            .reason
            .ends_with("the marker's manifest lists 3 files, all counted")
    );
}

#[test]
fn a_manifest_problem_keeps_the_watch_waiting_and_a_new_marker_is_read_again() {
    let mut w = marker_rule(None, true);
    mark(&mut w, 20);
    w.lifecycle.polling.manifest = Some(Box::new(ManifestCheck {
        marker: 1,
        activity: w.counters.activity(),
        problem: "the marker's manifest says the job failed (\"success\": false)".into(),
        ..ManifestCheck::default()
    }));
    let d = evaluate(&w, at(100), Timestamp::MAX);
    assert!(!completed(&d) && !d.check_manifest);
    assert!(d.lifecycle.unwrap().reason.contains("the job failed"));
    mark(&mut w, 120);
    assert!(
        evaluate(&w, at(120), Timestamp::MAX).check_manifest,
        "a rewritten marker is read again"
    );
}

#[test]
fn bad_marker_settings_are_named() {
    for (key, says) in [
        ("", "is required"),
        ("/_SUCCESS", "must not start with '/'"),
        ("a\nb", "control"),
    ] {
        let w = marker_rule(None, false);
        let mut p = w.policy;
        p.rule = Rule::Marker {
            key: key.into(),
            quiet_window: None,
            verify_manifest: false,
        };
        let err = p.validate().unwrap_err().to_string();
        assert!(
            err.contains("policy.marker.key") && err.contains(says),
            "{key:?}: {err}"
        );
    }
}
