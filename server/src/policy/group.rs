//! Watch groups: a group's decision from what it knows of its members. Pure:
//! the observer reads the members and passes them in.

use std::collections::HashMap;

use super::Decision;
use crate::{
    clock::Timestamp,
    watch::{Counters, EventKind, Lifecycle, Watch, WatchId, WatchState},
};

/// What a watch group knows of one member: its lifecycle and counters as
/// last read.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: WatchId,
    pub state: WatchState,
    pub generation: u32,
    pub generation_started_at: Timestamp,
    pub reason: String,
    pub counters: Counters,
    /// Orders two reads of the member: the later one has the higher.
    pub last_seq: u64,
}

impl Member {
    pub fn of(watch: &Watch) -> Self {
        Self {
            id: watch.id.clone(),
            state: watch.lifecycle.state,
            generation: watch.lifecycle.generation,
            generation_started_at: watch.lifecycle.generation_started_at,
            reason: watch.lifecycle.reason.clone(),
            counters: watch.counters,
            last_seq: watch.last_seq,
        }
    }
}

/// Decides what happens to the watch group `group` at `now`, given what is
/// known of its members (a member missing from `members` is not read yet:
/// it neither completes nor fails the group). The group completes once every
/// member is COMPLETED; a member that ended otherwise ends it TIMED_OUT,
/// naming the member; its own timeout ends it TIMED_OUT, naming the members
/// still active. A member that started a new generation (reopened) after the
/// group completed, within the group's late window, reopens the group.
pub fn evaluate_group(
    group: &Watch,
    members: &HashMap<WatchId, Member>,
    now: Timestamp,
) -> Decision {
    match group.lifecycle.state {
        WatchState::Active => evaluate_group_active(group, members, now),
        WatchState::Completed => evaluate_group_completed(group, members, now),
        WatchState::TimedOut | WatchState::Cancelled | WatchState::Failed => Decision::default(),
    }
}

fn evaluate_group_completed(
    group: &Watch,
    members: &HashMap<WatchId, Member>,
    now: Timestamp,
) -> Decision {
    let (Some(end), Some(completed_at)) = (group.late_window_end(), group.lifecycle.completed_at)
    else {
        return Decision::default();
    };
    let reopened = group
        .source
        .members()
        .iter()
        .filter_map(|id| members.get(id))
        .filter(|m| m.generation > 1 && m.generation_started_at > completed_at)
        .filter(|m| m.generation_started_at <= end)
        .min_by_key(|m| m.generation_started_at);
    let Some(m) = reopened else {
        return Decision {
            wake_at: (now < end).then_some(end),
            ..Decision::default()
        };
    };
    let reason = format!(
        "member {} reopened at {} (its generation {}), {} after the group completed, within the late window of {}",
        m.id,
        m.generation_started_at,
        m.generation,
        humantime::format_duration(completed_at.until(m.generation_started_at)),
        humantime::format_duration(group.policy.late_window.unwrap_or_default()),
    );
    let lifecycle = Lifecycle::fresh(group.lifecycle.generation + 1, now, 0);
    let again = Watch {
        lifecycle,
        ..group.clone()
    };
    let mut next = evaluate_group_active(&again, members, now);
    let objects = group_counters(group, members).object_count;
    next.events.insert(
        0,
        EventKind::Reopened {
            object_count: objects,
            reason,
        },
    );
    next.lifecycle.get_or_insert(again.lifecycle);
    next
}

/// The sums over the members of `group` known in `members`.
pub fn group_counters(group: &Watch, members: &HashMap<WatchId, Member>) -> Counters {
    Counters::sum(
        group
            .source
            .members()
            .iter()
            .filter_map(|id| members.get(id))
            .map(|m| &m.counters),
    )
}

fn evaluate_group_active(
    group: &Watch,
    members: &HashMap<WatchId, Member>,
    now: Timestamp,
) -> Decision {
    let life = &group.lifecycle;
    let ids = group.source.members();
    let counters = group_counters(group, members);
    let objects = counters.object_count;
    let end = |state: WatchState, reason: String, event: EventKind| Decision {
        lifecycle: Some(Lifecycle {
            state,
            completed_at: Some(now),
            reason,
            ..life.clone()
        }),
        events: vec![event],
        wake_at: None,
        held_until_settled: None,
        check_manifest: false,
        probe: false,
    };
    let failed = ids.iter().filter_map(|id| members.get(id)).find(|m| {
        matches!(
            m.state,
            WatchState::TimedOut | WatchState::Cancelled | WatchState::Failed
        )
    });
    if let Some(m) = failed {
        let reason = format!(
            "member {} ended {}: {}; the group cannot complete",
            m.id,
            m.state.as_str(),
            m.reason
        );
        let event = EventKind::TimedOut {
            object_count: objects,
            reason: reason.clone(),
        };
        return end(WatchState::TimedOut, reason, event);
    }
    let completed = |id: &WatchId| {
        members
            .get(id)
            .is_some_and(|m| m.state == WatchState::Completed)
    };
    if ids.iter().all(completed) {
        let reason = format!("all {} members completed; {objects} objects", ids.len());
        let event = EventKind::Completed {
            object_count: objects,
            object_bytes: counters.object_bytes,
            reason: reason.clone(),
        };
        let mut done = end(WatchState::Completed, reason, event);
        done.wake_at = group.policy.late_window.map(|w| now.plus(w));
        return done;
    }
    let timeout_at = group
        .policy
        .timeout
        .map(|t| life.generation_started_at.plus(t));
    if timeout_at.is_some_and(|at| now >= at) {
        let active: Vec<&str> = ids
            .iter()
            .filter(|id| !completed(id))
            .map(|id| id.as_str())
            .collect();
        let reason = format!(
            "timed out after {} with {} of {} members still active: {}",
            humantime::format_duration(group.policy.timeout.unwrap_or_default()),
            active.len(),
            ids.len(),
            active.join(", ")
        );
        let event = EventKind::TimedOut {
            object_count: objects,
            reason: reason.clone(),
        };
        return end(WatchState::TimedOut, reason, event);
    }
    Decision {
        wake_at: timeout_at,
        ..Decision::default()
    }
}
