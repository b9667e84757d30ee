//! Completion policy: a pure state machine. Given a watch, its counters and
//! `now`, [`evaluate`] says what the watch's lifecycle becomes, which events
//! that emits, and when to look again; given a watch group and what it knows
//! of its members, [`evaluate_group`] does the same for the group. No clocks,
//! no I/O: everything it needs arrives as arguments.
//!
//! The adaptive rule's statistics live in `adaptive`, watch groups in
//! `group`, the marker rule's helpers in `marker`; this module holds the
//! rules' shared decision. What a policy says (its rule and limits, and their
//! validation) is a watch's data, in `crate::watch::policy`.

mod adaptive;
mod group;
mod marker;
#[cfg(test)]
mod tests;

use adaptive::adaptive_clock;
pub use adaptive::{
    AdaptiveWindow, MAX_PROBES, MIN_SERIES_RUNS, MIN_SERIES_WINDOW, PROBE_INTERVAL, PROBE_QUIET,
    SERIES_COUNT_QUIET, SERIES_OWN_GAPS, SeriesFloor, WindowBound, adaptive_window, human,
    probe_quiet, probe_shortfall,
};
pub use group::{Member, evaluate_group, group_counters};
pub use marker::marker_seen;
use marker::{manifest_summary, marker_status};

use crate::{
    clock::Timestamp,
    watch::{EventKind, Lifecycle, PollingProgress, Rule, Watch, WatchState},
};

/// What the observer should do with a watch now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The lifecycle to persist (with `events`), when it changed.
    pub lifecycle: Option<Lifecycle>,
    pub events: Vec<EventKind>,
    /// When to evaluate again; `None` with a non-live watch means forget it.
    pub wake_at: Option<Timestamp>,
    /// The rule would decide now, but activity before this instant may still
    /// be on its way (a queue behind): evaluate again once ingest has settled past it.
    pub held_until_settled: Option<Timestamp>,
    /// The marker rule would complete now, but the marker's manifest has not
    /// been checked at this activity level: read it, record what it found in
    /// `polling.manifest`, and evaluate again.
    pub check_manifest: bool,
    /// The adaptive rule, a few objects short of its series' count: list the
    /// prefix now (a probe; what it finds counts), record it in
    /// `polling.probes` and `polling.probed_at`, and evaluate again at once.
    /// A completion that this evaluation decides at the level the listing
    /// left is confirmed by it.
    pub probe: bool,
}

const HELD_REASON_PREFIX: &str = "waiting for the notification queues";

/// The reason a held watch shows while it waits for ingest to catch up.
pub fn held_reason(at: Timestamp) -> String {
    format!("{HELD_REASON_PREFIX} to catch up past {at} before deciding")
}

/// Decides what happens to `watch` at `now`, given that every notification
/// sent before `settled_until` has been recorded ([`Timestamp::MAX`] when
/// nothing can be in flight). Quiet and polling decisions about an instant
/// wait until ingest has settled past it; a lagging counter looks exactly
/// like a finished producer.
pub fn evaluate(watch: &Watch, now: Timestamp, settled_until: Timestamp) -> Decision {
    match watch.lifecycle.state {
        WatchState::Active => evaluate_active(watch, now, settled_until),
        WatchState::Completed => evaluate_completed(watch, now),
        WatchState::TimedOut | WatchState::Cancelled | WatchState::Failed => Decision::default(),
    }
}

fn evaluate_completed(watch: &Watch, now: Timestamp) -> Decision {
    let (Some(end), Some(completed_at)) = (watch.late_window_end(), watch.lifecycle.completed_at)
    else {
        return Decision::default();
    };
    let late = watch
        .counters
        .last_activity_at
        .filter(|at| *at > completed_at && *at <= end);
    let Some(late_at) = late else {
        return Decision {
            wake_at: (now < end).then_some(end),
            ..Decision::default()
        };
    };
    let mut lifecycle = Lifecycle::fresh(
        watch.lifecycle.generation + 1,
        now,
        watch.counters.activity(),
    );
    // What the adaptive rule learnt carries over, the gap that reopened the watch included.
    lifecycle.polling.gaps = watch.lifecycle.polling.gaps.clone();
    lifecycle.polling.series = watch.lifecycle.polling.series.clone();
    // A reopened marker watch waits for a marker written after this completion.
    if matches!(watch.policy.rule, Rule::Marker { .. }) {
        lifecycle.polling.marker_after = Some(completed_at);
    }
    let reason = format!(
        "activity at {late_at}, {} after completion, within the late window of {}",
        humantime::format_duration(completed_at.until(late_at)),
        humantime::format_duration(watch.policy.late_window.unwrap_or_default()),
    );
    let reopened = Watch {
        lifecycle,
        ..watch.clone()
    };
    let mut next = evaluate_active(&reopened, now, Timestamp::MAX);
    next.events.insert(
        0,
        EventKind::Reopened {
            object_count: watch.counters.object_count,
            reason,
        },
    );
    next.lifecycle.get_or_insert(reopened.lifecycle);
    next
}
/// Where a quiet rule stands at `now` against its `deadline`.
enum Quiet {
    /// The deadline passed, but ingest has not settled past it yet.
    Hold(Timestamp),
    Complete,
    /// Look again then (`None`: only new activity or the timeout can change anything).
    Wait(Option<Timestamp>),
}

/// The one decision every quiet rule shares: complete once `deadline` has
/// passed with enough objects and ingest settled past it; hold while it has
/// not (unless the timeout is due, which then decides).
fn quiet(
    now: Timestamp,
    deadline: Timestamp,
    enough: bool,
    settled_until: Timestamp,
    timeout_at: Option<Timestamp>,
) -> Quiet {
    if now >= deadline && enough {
        if settled_until >= deadline {
            return Quiet::Complete;
        }
        if timeout_at.is_none_or(|t| now < t) {
            return Quiet::Hold(deadline);
        }
        return Quiet::Wait(None);
    }
    // Below min_objects only new activity (or the timeout) can change the outcome.
    Quiet::Wait((now < deadline).then_some(deadline))
}

fn evaluate_active(watch: &Watch, now: Timestamp, settled_until: Timestamp) -> Decision {
    let policy = &watch.policy;
    let life = &watch.lifecycle;
    let counters = &watch.counters;
    let objects = counters.object_count;
    let enough = objects >= policy.min_objects;
    let timeout_at = policy.timeout.map(|t| life.generation_started_at.plus(t));
    let quiet_since = counters
        .last_activity_at
        .unwrap_or(life.generation_started_at)
        .max(life.generation_started_at);

    let complete = |reason: String, polling: PollingProgress| Decision {
        lifecycle: Some(Lifecycle {
            state: WatchState::Completed,
            completed_at: Some(now),
            reason: reason.clone(),
            polling,
            ..life.clone()
        }),
        events: vec![EventKind::Completed {
            object_count: objects,
            object_bytes: counters.object_bytes,
            reason,
        }],
        wake_at: policy.late_window.map(|w| now.plus(w)),
        held_until_settled: None,
        check_manifest: false,
        probe: false,
    };
    let hold = |at: Timestamp, polling: PollingProgress| {
        let reason = held_reason(at);
        let lifecycle = (life.reason != reason || life.polling != polling).then(|| Lifecycle {
            reason,
            polling,
            ..life.clone()
        });
        Decision {
            lifecycle,
            events: Vec::new(),
            wake_at: timeout_at,
            held_until_settled: Some(at),
            check_manifest: false,
            probe: false,
        }
    };

    let mut polling = life.polling.clone();
    // The marker rule: what the watch shows while its manifest is incomplete,
    // and whether the manifest must be read before it can complete.
    let mut waiting_reason = None;
    let mut check_manifest = false;
    // The adaptive rule in a series: a probe listing is due now, or when the
    // series' count would be looked at next.
    let mut probe = false;
    let mut count_wake = None;
    if matches!(policy.rule, Rule::Adaptive { .. }) {
        polling.gaps.observe(adaptive_clock(watch));
    }
    let mut events = Vec::new();
    let rule_wake = match &policy.rule {
        Rule::ExpectedCount {
            objects: expected,
            quiet_window,
        } => {
            if objects >= *expected && enough {
                return complete(
                    format!("expected count reached: {objects} of {expected} objects"),
                    polling,
                );
            }
            let decided = quiet_window.map(|w| {
                (
                    w,
                    quiet(now, quiet_since.plus(w), enough, settled_until, timeout_at),
                )
            });
            match decided {
                Some((_, Quiet::Hold(deadline))) => return hold(deadline, polling),
                Some((window, Quiet::Complete)) => {
                    let w = humantime::format_duration(window);
                    return complete(
                        format!("no activity for {w}; {objects} of {expected} expected objects"),
                        polling,
                    );
                }
                Some((_, Quiet::Wait(wake))) => wake,
                None => None,
            }
        }
        Rule::QuietPeriod { window } => {
            match quiet(
                now,
                quiet_since.plus(*window),
                enough,
                settled_until,
                timeout_at,
            ) {
                Quiet::Hold(deadline) => return hold(deadline, polling),
                Quiet::Complete => {
                    let w = humantime::format_duration(*window);
                    return complete(format!("no activity for {w}; {objects} objects"), polling);
                }
                Quiet::Wait(wake) => wake,
            }
        }
        Rule::Adaptive {
            min_window,
            max_window,
            quantile,
            safety_factor,
        } => {
            let adaptive = AdaptiveWindow::of(
                watch,
                (*min_window, *max_window),
                *quantile,
                *safety_factor,
                &polling.gaps,
            );
            let since = adaptive_clock(watch)
                .unwrap_or(life.generation_started_at)
                .max(life.generation_started_at);
            // A series whose runs all ended with one count: that count,
            // once no object was created for a few seconds and a listing
            // confirms it, completes the watch. A few objects short of it
            // and as quiet, a probe listing counts what notifications have
            // not told of yet.
            let learnt = polling
                .series
                .as_ref()
                .filter(|p| p.runs >= MIN_SERIES_RUNS && policy.reconcile && enough)
                .and_then(|p| p.count.map(|c| (p, c)));
            if let Some((p, count)) = learnt {
                let quiet_at = since.plus(SERIES_COUNT_QUIET);
                if objects == count && now >= quiet_at {
                    let reason = format!(
                        "the count of series {} landed: {objects} objects, as in each of its last {} runs; \
                         no object created for {}, and a listing of the prefix found none unseen",
                        p.series,
                        p.runs,
                        human(SERIES_COUNT_QUIET)
                    );
                    return complete(reason, polling);
                }
                if objects == count {
                    count_wake = Some(quiet_at);
                } else if objects < count
                    && count - objects <= probe_shortfall(count)
                    && polling.probes < MAX_PROBES
                {
                    let quiet_at = since.plus(probe_quiet(&polling.gaps));
                    let due = polling
                        .probed_at
                        .map_or(quiet_at, |t| quiet_at.max(t.plus(PROBE_INTERVAL)));
                    if now >= due {
                        probe = true;
                    } else {
                        count_wake = Some(due);
                    }
                }
            }
            match quiet(
                now,
                since.plus(adaptive.window),
                enough,
                settled_until,
                timeout_at,
            ) {
                Quiet::Hold(deadline) => return hold(deadline, polling),
                Quiet::Complete => {
                    let w = human(adaptive.window);
                    let reason = if policy.reconcile {
                        format!(
                            "no object created for {w}, the adaptive window ({adaptive}), \
                             and a listing of the prefix found none unseen; {objects} objects"
                        )
                    } else {
                        format!(
                            "no activity for {w}, the adaptive window ({adaptive}); {objects} objects"
                        )
                    };
                    return complete(reason, polling);
                }
                Quiet::Wait(_) if probe => None,
                Quiet::Wait(wake) => earliest(wake, count_wake),
            }
        }
        Rule::Marker {
            key,
            quiet_window,
            verify_manifest,
        } => match marker_seen(watch) {
            // Only the marker (or the timeout) can change the outcome.
            None => None,
            Some(marker_at) => {
                // The queues must have caught up past the marker (objects
                // created before it may still be on their way), or past the
                // quiet window after it.
                let deadline = match quiet_window {
                    Some(w) => quiet_since.max(marker_at).plus(*w),
                    None => marker_at,
                };
                match quiet(now, deadline, enough, settled_until, timeout_at) {
                    Quiet::Hold(deadline) => return hold(deadline, polling),
                    Quiet::Wait(wake) => wake,
                    Quiet::Complete => {
                        let check = polling
                            .manifest
                            .as_ref()
                            .filter(|c| c.marker == counters.marker_count);
                        let after = quiet_window
                            .map(|w| {
                                format!(", then no activity for {}", humantime::format_duration(w))
                            })
                            .unwrap_or_default();
                        let reason = format!("marker {key} created{after}; {objects} objects");
                        match check {
                            _ if !verify_manifest => return complete(reason, polling),
                            Some(c) if c.problem.is_empty() && c.missing == 0 => {
                                return complete(
                                    format!("{reason}; {}", manifest_summary(c)),
                                    polling,
                                );
                            }
                            // Nothing counted since the check: only activity
                            // (or the timeout) can change the outcome.
                            Some(c) if c.activity == counters.activity() => {
                                waiting_reason = Some(manifest_summary(c));
                            }
                            _ => check_manifest = true,
                        }
                        None
                    }
                }
            }
        },
        Rule::Polling { max_repeats, .. }
            if polling.repeated >= *max_repeats
                && !enough
                && counters.activity() == polling.last_sample =>
        {
            // Enough unchanged samples but too few objects: another unchanged
            // sample decides nothing, so none is taken (and no QUIET_TICK
            // written) until activity changes the count or the timeout ends
            // the watch. The next sample stays due where it was.
            None
        }
        Rule::Polling {
            delay,
            max_repeats,
            schedule,
        } => {
            let due = polling
                .next_sample_at
                .unwrap_or_else(|| life.generation_started_at.plus(schedule.delay(*delay, 0)));
            let settled = settled_until >= due;
            if now >= due && !settled && timeout_at.is_none_or(|t| now < t) {
                return hold(
                    due,
                    PollingProgress {
                        next_sample_at: Some(due),
                        ..polling
                    },
                );
            }
            if now >= due && settled {
                let sample = counters.activity();
                if sample == polling.last_sample {
                    polling.repeated = polling.repeated.saturating_add(1);
                    events.push(EventKind::QuietTick {
                        object_count: objects,
                        repeated: polling.repeated,
                        max_repeats: *max_repeats,
                    });
                } else {
                    polling.repeated = 0;
                    polling.last_sample = sample;
                }
                if polling.repeated >= *max_repeats && enough {
                    let mut done = complete(
                        format!(
                            "count unchanged for {} samples; {objects} objects",
                            polling.repeated
                        ),
                        PollingProgress {
                            next_sample_at: None,
                            ..polling
                        },
                    );
                    events.append(&mut done.events);
                    done.events = events;
                    return done;
                }
                // A sample stands for the instant ingest had settled to (`now`
                // without queues): waiting for a queue to catch up does not
                // stretch the time between samples.
                let sampled_at = now.min(settled_until);
                polling.next_sample_at =
                    Some(sampled_at.plus(schedule.delay(*delay, polling.repeated)));
                // Below min_objects after max_repeats unchanged samples, only
                // activity (or the timeout) can change the outcome: see above.
                let waits_for_activity = polling.repeated >= *max_repeats && !enough;
                polling.next_sample_at.filter(|_| !waits_for_activity)
            } else {
                polling.next_sample_at = Some(due);
                polling.next_sample_at
            }
        }
    };

    if timeout_at.is_some_and(|at| now >= at) {
        let t = humantime::format_duration(policy.timeout.unwrap_or_default());
        let mut reason = if enough {
            format!(
                "timed out after {t} with {objects} objects; min_objects ({}) was met",
                policy.min_objects
            )
        } else {
            format!(
                "timed out after {t} with {objects} objects; min_objects ({}) was not met",
                policy.min_objects
            )
        };
        if let Some(marker) = marker_status(watch, &polling) {
            reason.push_str("; ");
            reason.push_str(&marker);
        }
        events.push(EventKind::TimedOut {
            object_count: objects,
            reason: reason.clone(),
        });
        return Decision {
            lifecycle: Some(Lifecycle {
                state: WatchState::TimedOut,
                completed_at: Some(now),
                reason,
                polling,
                ..life.clone()
            }),
            events,
            wake_at: None,
            held_until_settled: None,
            check_manifest: false,
            probe: false,
        };
    }

    let wake_at = earliest(rule_wake, timeout_at);
    // A watch that was held shows no hold reason once it is back to waiting.
    let reason = if let Some(reason) = waiting_reason {
        reason
    } else if life.reason.starts_with(HELD_REASON_PREFIX) {
        String::new()
    } else {
        life.reason.clone()
    };
    let lifecycle = (polling != life.polling || reason != life.reason).then(|| Lifecycle {
        polling,
        reason,
        ..life.clone()
    });
    Decision {
        lifecycle,
        events,
        wake_at,
        held_until_settled: None,
        check_manifest,
        probe,
    }
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
