//! Completion policy: a pure state machine. Given a watch, its counters and
//! `now`, [`evaluate`] says what the watch's lifecycle becomes, which events
//! that emits, and when to look again. No clocks, no I/O: everything it needs
//! arrives as arguments.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    error::Error,
    watch::{EventKind, Lifecycle, PollingProgress, Watch, WatchState},
};

/// The longest delay, window or late window a policy accepts.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest timeout a policy accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest duration a policy accepts: timers run at millisecond grain.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
pub const MAX_REPEATS: u32 = 100_000;
pub const MAX_OBJECTS: u64 = 1_000_000_000_000;
/// The rule a StartWatch without a policy gets.
pub const DEFAULT_QUIET_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub rule: Rule,
    /// Never complete with fewer distinct objects.
    pub min_objects: u64,
    /// TIMED_OUT this long after the current generation started.
    pub timeout: Option<Duration>,
    /// Activity this long after completion reopens the watch.
    pub late_window: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rule: Rule::QuietPeriod { window: DEFAULT_QUIET_WINDOW },
            min_objects: 0,
            timeout: None,
            late_window: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Rule {
    /// Sample the activity count every delay; complete after `max_repeats` unchanged samples.
    Polling { delay: Duration, max_repeats: u32, schedule: DelaySchedule },
    /// Complete exactly `window` after the last activity.
    QuietPeriod { window: Duration },
    /// Complete once `objects` distinct objects landed (or, optionally, after a quiet window).
    ExpectedCount { objects: u64, quiet_window: Option<Duration> },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DelaySchedule {
    #[default]
    Fixed,
    Divide,
    Exponential,
}

impl DelaySchedule {
    /// The wait before the next sample after `repeated` unchanged samples.
    pub fn delay(self, delay: Duration, repeated: u32) -> Duration {
        let d = match self {
            Self::Fixed => delay,
            Self::Divide if repeated == 0 => delay,
            Self::Divide => delay / repeated,
            Self::Exponential => {
                let secs = (delay.as_secs_f64() * (-f64::from(repeated)).exp()).ceil();
                Duration::from_secs_f64(secs).min(delay)
            }
        };
        d.max(MIN_DURATION)
    }
}

/// Checks a duration field against `[MIN_DURATION, max]`.
pub fn check_duration(field: &str, d: Duration, max: Duration) -> Result<Duration, Error> {
    if d < MIN_DURATION {
        return Err(Error::invalid(field, "must be at least 1ms"));
    }
    if d > max {
        return Err(Error::invalid(field, format!("must be at most {}", humantime::format_duration(max))));
    }
    Ok(d)
}

impl Policy {
    /// Checks the limits a parsed policy must respect.
    pub fn validate(&self) -> Result<(), Error> {
        match &self.rule {
            Rule::Polling { delay, max_repeats, .. } => {
                check_duration("policy.polling.delay", *delay, MAX_WINDOW)?;
                if *max_repeats == 0 || *max_repeats > MAX_REPEATS {
                    return Err(Error::invalid("policy.polling.max_repeats", format!("must be 1-{MAX_REPEATS}")));
                }
            }
            Rule::QuietPeriod { window } => {
                check_duration("policy.quiet_period.window", *window, MAX_WINDOW)?;
            }
            Rule::ExpectedCount { objects, quiet_window } => {
                if *objects == 0 || *objects > MAX_OBJECTS {
                    return Err(Error::invalid("policy.expected_count.objects", format!("must be 1-{MAX_OBJECTS}")));
                }
                if let Some(w) = quiet_window {
                    check_duration("policy.expected_count.quiet_window", *w, MAX_WINDOW)?;
                }
            }
        }
        if self.min_objects > MAX_OBJECTS {
            return Err(Error::invalid("policy.min_objects", format!("must be at most {MAX_OBJECTS}")));
        }
        if let Some(t) = self.timeout {
            check_duration("policy.timeout", t, MAX_TIMEOUT)?;
        }
        if let Some(w) = self.late_window {
            check_duration("policy.late_window", w, MAX_WINDOW)?;
        }
        Ok(())
    }
}

/// What the observer should do with a watch now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The lifecycle to persist (with `events`), when it changed.
    pub lifecycle: Option<Lifecycle>,
    pub events: Vec<EventKind>,
    /// When to evaluate again; `None` with a non-live watch means forget it.
    pub wake_at: Option<Timestamp>,
}

/// The lifecycle a watch starts with (or restarts with when reopened at `at`).
pub fn fresh_lifecycle(generation: u32, at: Timestamp, activity: u64) -> Lifecycle {
    Lifecycle {
        state: WatchState::Active,
        generation,
        generation_started_at: at,
        completed_at: None,
        reason: String::new(),
        polling: PollingProgress { repeated: 0, last_sample: activity, next_sample_at: None },
    }
}

/// Decides what happens to `watch` at `now`.
pub fn evaluate(watch: &Watch, now: Timestamp) -> Decision {
    match watch.lifecycle.state {
        WatchState::Active => evaluate_active(watch, now),
        WatchState::Completed => evaluate_completed(watch, now),
        WatchState::TimedOut | WatchState::Cancelled | WatchState::Failed => Decision::default(),
    }
}

fn evaluate_completed(watch: &Watch, now: Timestamp) -> Decision {
    let (Some(end), Some(completed_at)) = (watch.late_window_end(), watch.lifecycle.completed_at) else {
        return Decision::default();
    };
    let late = watch.counters.last_activity_at.filter(|at| *at > completed_at && *at <= end);
    let Some(late_at) = late else {
        return Decision { wake_at: (now < end).then_some(end), ..Decision::default() };
    };
    let lifecycle = fresh_lifecycle(watch.lifecycle.generation + 1, now, watch.counters.activity());
    let reason = format!(
        "activity at {late_at}, {} after completion, within the late window of {}",
        humantime::format_duration(completed_at.until(late_at)),
        humantime::format_duration(watch.policy.late_window.unwrap_or_default()),
    );
    let reopened = Watch { lifecycle, ..watch.clone() };
    let mut next = evaluate_active(&reopened, now);
    next.events.insert(0, EventKind::Reopened { object_count: watch.counters.object_count, reason });
    next.lifecycle.get_or_insert(reopened.lifecycle);
    next
}

fn evaluate_active(watch: &Watch, now: Timestamp) -> Decision {
    let policy = &watch.policy;
    let life = &watch.lifecycle;
    let counters = &watch.counters;
    let objects = counters.object_count;
    let enough = objects >= policy.min_objects;
    let timeout_at = policy.timeout.map(|t| life.generation_started_at.add(t));
    let quiet_since = counters.last_activity_at.unwrap_or(life.generation_started_at).max(life.generation_started_at);

    let complete = |reason: String, polling: PollingProgress| Decision {
        lifecycle: Some(Lifecycle {
            state: WatchState::Completed,
            completed_at: Some(now),
            reason: reason.clone(),
            polling,
            ..life.clone()
        }),
        events: vec![EventKind::Completed { object_count: objects, reason }],
        wake_at: policy.late_window.map(|w| now.add(w)),
    };

    let mut polling = life.polling;
    let mut events = Vec::new();
    let rule_wake = match &policy.rule {
        Rule::ExpectedCount { objects: expected, quiet_window } => {
            if objects >= *expected && enough {
                return complete(format!("expected count reached: {objects} of {expected} objects"), polling);
            }
            match quiet_window.map(|w| quiet_since.add(w)) {
                Some(deadline) if now >= deadline && enough => {
                    let w = humantime::format_duration(quiet_window.unwrap_or_default());
                    return complete(format!("no activity for {w}; {objects} of {expected} expected objects"), polling);
                }
                Some(deadline) if now < deadline => Some(deadline),
                _ => None,
            }
        }
        Rule::QuietPeriod { window } => {
            let deadline = quiet_since.add(*window);
            if now >= deadline && enough {
                let w = humantime::format_duration(*window);
                return complete(format!("no activity for {w}; {objects} objects"), polling);
            }
            // Below min_objects only new activity (or the timeout) can change the outcome.
            (now < deadline).then_some(deadline)
        }
        Rule::Polling { delay, max_repeats, schedule } => {
            let due = polling.next_sample_at.unwrap_or_else(|| life.generation_started_at.add(schedule.delay(*delay, 0)));
            if now >= due {
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
                        format!("count unchanged for {} samples; {objects} objects", polling.repeated),
                        PollingProgress { next_sample_at: None, ..polling },
                    );
                    events.append(&mut done.events);
                    done.events = events;
                    return done;
                }
                polling.next_sample_at = Some(now.add(schedule.delay(*delay, polling.repeated)));
            } else {
                polling.next_sample_at = Some(due);
            }
            polling.next_sample_at
        }
    };

    if timeout_at.is_some_and(|at| now >= at) {
        let t = humantime::format_duration(policy.timeout.unwrap_or_default());
        let reason = if enough {
            format!("timed out after {t} with {objects} objects; min_objects ({}) was met", policy.min_objects)
        } else {
            format!("timed out after {t} with {objects} objects; min_objects ({}) was not met", policy.min_objects)
        };
        events.push(EventKind::TimedOut { object_count: objects, reason: reason.clone() });
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
        };
    }

    let wake_at = match (rule_wake, timeout_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let lifecycle = (polling != life.polling).then(|| Lifecycle { polling, ..life.clone() });
    Decision { lifecycle, events, wake_at }
}
