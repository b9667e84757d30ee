//! Watch groups: the group decision from what it knows of its members.

use super::*;

/// A group of `n` members with a timeout of 100s and a late window of 50s.
fn group(n: usize) -> (Watch, HashMap<WatchId, Member>) {
    let mut g = watch(Rule::QuietPeriod { window: secs(1) });
    let ids: Vec<WatchId> = (0..n).map(|_| WatchId::generate()).collect();
    g.source = Source::Members {
        members: ids.clone(),
    };
    g.policy.timeout = Some(secs(100));
    g.policy.late_window = Some(secs(50));
    let members = ids
        .into_iter()
        .map(|id| {
            let mut m = Member::of(&watch(Rule::QuietPeriod { window: secs(1) }));
            m.id = id.clone();
            (id, m)
        })
        .collect();
    (g, members)
}

/// Ends member `i` of `g` in `state` at `t` with `objects` objects.
fn end_member(
    g: &Watch,
    members: &mut HashMap<WatchId, Member>,
    i: usize,
    state: WatchState,
    t: i64,
    objects: u64,
) {
    let m = members.get_mut(&g.source.members()[i]).unwrap();
    m.state = state;
    m.reason = format!("{} at {t}", state.as_str());
    m.counters.object_count = objects;
    m.counters.object_bytes = objects * 10;
    m.last_seq += 1;
}

#[test]
fn a_group_completes_once_every_member_completed() {
    let (g, mut members) = group(3);
    end_member(&g, &mut members, 0, WatchState::Completed, 5, 2);
    end_member(&g, &mut members, 2, WatchState::Completed, 6, 3);
    let d = evaluate_group(&g, &members, at(10));
    assert!(d.events.is_empty() && d.lifecycle.is_none());
    assert_eq!(d.wake_at, Some(at(100)), "waits for its timeout");
    end_member(&g, &mut members, 1, WatchState::Completed, 11, 4);
    let d = evaluate_group(&g, &members, at(12));
    let life = d.lifecycle.clone().unwrap();
    assert_eq!(life.state, WatchState::Completed);
    assert_eq!(life.completed_at, Some(at(12)));
    assert_eq!(
        d.events,
        [EventKind::Completed {
            object_count: 9,
            object_bytes: 90,
            reason: "all 3 members completed; 9 objects".into(),
        }]
    );
    assert_eq!(d.wake_at, Some(at(62)), "until its late window ends");
}

#[test]
fn a_group_waits_for_members_not_read_yet() {
    let (g, mut members) = group(2);
    end_member(&g, &mut members, 0, WatchState::Completed, 5, 1);
    end_member(&g, &mut members, 1, WatchState::Completed, 5, 1);
    members.remove(&g.source.members()[1]);
    let d = evaluate_group(&g, &members, at(10));
    assert!(d.events.is_empty() && d.lifecycle.is_none());
}

#[test]
fn a_member_that_times_out_ends_the_group_naming_it() {
    for state in [
        WatchState::TimedOut,
        WatchState::Cancelled,
        WatchState::Failed,
    ] {
        let (g, mut members) = group(2);
        end_member(&g, &mut members, 0, WatchState::Completed, 5, 2);
        end_member(&g, &mut members, 1, state, 7, 1);
        let d = evaluate_group(&g, &members, at(8));
        let life = d.lifecycle.unwrap();
        assert_eq!(life.state, WatchState::TimedOut, "{state:?}");
        let id = &g.source.members()[1];
        assert_eq!(
            life.reason,
            format!(
                "member {id} ended {}: {} at 7; the group cannot complete",
                state.as_str(),
                state.as_str()
            )
        );
        assert!(matches!(
            &d.events[..],
            [EventKind::TimedOut {
                object_count: 3,
                ..
            }]
        ));
        assert_eq!(d.wake_at, None);
    }
}

#[test]
fn a_group_times_out_naming_the_members_still_active() {
    let (g, mut members) = group(3);
    end_member(&g, &mut members, 1, WatchState::Completed, 5, 2);
    let d = evaluate_group(&g, &members, Timestamp::from_millis(100 * S - 1));
    assert!(d.lifecycle.is_none());
    let d = evaluate_group(&g, &members, at(100));
    let life = d.lifecycle.unwrap();
    assert_eq!(life.state, WatchState::TimedOut);
    let ids = g.source.members();
    assert_eq!(
        life.reason,
        format!(
            "timed out after 1m 40s with 2 of 3 members still active: {}, {}",
            ids[0], ids[2]
        )
    );
}

#[test]
fn a_member_reopening_within_the_late_window_reopens_the_group() {
    let (mut g, mut members) = group(2);
    end_member(&g, &mut members, 0, WatchState::Completed, 5, 2);
    end_member(&g, &mut members, 1, WatchState::Completed, 6, 3);
    let done = evaluate_group(&g, &members, at(10));
    apply(&mut g, &done);
    assert_eq!(g.state(), WatchState::Completed);
    // Member 1 reopens (late data) at 30, inside the window (10..60).
    let id = g.source.members()[1].clone();
    let m = members.get_mut(&id).unwrap();
    m.state = WatchState::Active;
    m.generation = 2;
    m.generation_started_at = at(30);
    m.counters.object_count = 4;
    let d = evaluate_group(&g, &members, at(31));
    let life = d.lifecycle.clone().unwrap();
    assert_eq!((life.state, life.generation), (WatchState::Active, 2));
    assert_eq!(life.generation_started_at, at(31));
    let [
        EventKind::Reopened {
            object_count,
            reason,
        },
    ] = &d.events[..]
    else {
        panic!("{:?}", d.events)
    };
    assert_eq!(*object_count, 6);
    assert!(
        reason.starts_with(&format!("member {id} reopened at")),
        "{reason}"
    );
    assert_eq!(
        d.wake_at,
        Some(at(131)),
        "its timeout runs from the reopening"
    );
    apply(&mut g, &d);
    assert!(evaluate_group(&g, &members, at(40)).lifecycle.is_none());
    // The member completes again: so does the group, in generation 2.
    end_member(&g, &mut members, 1, WatchState::Completed, 45, 4);
    let d = evaluate_group(&g, &members, at(46));
    let life = d.lifecycle.clone().unwrap();
    assert_eq!((life.state, life.generation), (WatchState::Completed, 2));
    apply(&mut g, &d);
    assert!(
        evaluate_group(&g, &members, at(47)).events.is_empty(),
        "the reopening is told once"
    );
}

#[test]
fn a_member_reopening_after_the_late_window_changes_nothing() {
    let (mut g, mut members) = group(1);
    end_member(&g, &mut members, 0, WatchState::Completed, 5, 2);
    let done = evaluate_group(&g, &members, at(10));
    apply(&mut g, &done);
    let m = members.get_mut(&g.source.members()[0]).unwrap();
    m.state = WatchState::Active;
    m.generation = 2;
    m.generation_started_at = at(61);
    let d = evaluate_group(&g, &members, at(61));
    assert_eq!(d, Decision::default());
    let mut no_window = g.clone();
    no_window.policy.late_window = None;
    let m = members.get_mut(&g.source.members()[0]).unwrap();
    m.generation_started_at = at(20);
    assert_eq!(
        evaluate_group(&no_window, &members, at(20)),
        Decision::default()
    );
}
