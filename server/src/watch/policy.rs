//! The policy a watch carries: its rule (polling, quiet period, expected
//! count, adaptive, marker) and limits, with the bounds every policy is
//! validated against. Data only: what a rule decides is `crate::policy`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Notify;
use crate::error::Error;

/// The longest delay, window or late window a policy accepts.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest timeout a policy accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest duration a policy accepts: timers run at millisecond grain.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// The shortest wait between two polling samples (the `delay` a policy
/// accepts, and the floor of every delay schedule). S3 delivers
/// notifications seconds after the write, and a sample that waits for the
/// notification queues is confirmed by a receive of [`CONFIRM_WAIT`] (1s):
/// closer samples cannot see a settled count any sooner, so they decide
/// nothing. It also caps what one watch appends to its log at one QUIET_TICK
/// a second.
///
/// [`CONFIRM_WAIT`]: crate::ingest::sqs::CONFIRM_WAIT
pub const MIN_POLLING_DELAY: Duration = Duration::from_secs(1);
pub const MAX_REPEATS: u32 = 100_000;
pub const MAX_OBJECTS: u64 = 1_000_000_000_000;
/// The rule a StartWatch without a policy gets.
pub const DEFAULT_QUIET_WINDOW: Duration = Duration::from_secs(60);
/// The adaptive rule's floor when unset: covers a notification S3 delivers
/// about a minute late, and a first gap no statistic has seen yet (see
/// server/DECISIONS.md).
pub const DEFAULT_ADAPTIVE_MIN_WINDOW: Duration = Duration::from_secs(100);
/// The adaptive rule's ceiling when unset.
/// The adaptive floor when a listing confirms each completion (`reconcile`):
/// it no longer has to cover a notification a minute late (the listing sees
/// the object), only producer pauses longer than any gap seen so far.
pub const DEFAULT_ADAPTIVE_CONFIRMED_MIN_WINDOW: Duration = Duration::from_secs(75);
/// The safety factor when a listing confirms each completion: gaps are
/// measured in creation time, which delivery jitter does not widen.
pub const DEFAULT_ADAPTIVE_CONFIRMED_SAFETY_FACTOR: f64 = 1.15;
pub const DEFAULT_ADAPTIVE_MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Which quantile of the observed gaps the adaptive rule scales, when unset.
pub const DEFAULT_ADAPTIVE_QUANTILE: f64 = 0.99;
/// The adaptive rule's multiplier on that quantile, when unset.
pub const DEFAULT_ADAPTIVE_SAFETY_FACTOR: f64 = 1.5;
pub const MAX_SAFETY_FACTOR: f64 = 100.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub rule: Rule,
    /// Never complete with fewer distinct objects.
    pub min_objects: u64,
    /// TIMED_OUT this long after the current generation started.
    pub timeout: Option<Duration>,
    /// Activity this long after completion reopens the watch.
    pub late_window: Option<Duration>,
    /// List the prefix in S3 before completing; count what notifications missed.
    #[serde(default)]
    pub reconcile: bool,
    /// Where terminal events are delivered. Not part of the decision: the
    /// rules above never read it.
    #[serde(default, skip_serializing_if = "Notify::is_empty")]
    pub notify: Notify,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rule: Rule::QuietPeriod {
                window: DEFAULT_QUIET_WINDOW,
            },
            min_objects: 0,
            timeout: None,
            late_window: None,
            reconcile: false,
            notify: Notify::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Rule {
    /// Sample the activity count every delay; complete after `max_repeats` unchanged samples.
    Polling {
        delay: Duration,
        max_repeats: u32,
        schedule: DelaySchedule,
    },
    /// Complete exactly `window` after the last activity.
    QuietPeriod { window: Duration },
    /// Complete once `objects` distinct objects landed (or, optionally, after a quiet window).
    ExpectedCount {
        objects: u64,
        quiet_window: Option<Duration>,
    },
    /// Complete after a quiet window that follows the producers:
    /// `safety_factor` x the `quantile` of the watch's observed gaps between
    /// activities, clamped to `[min_window, max_window]` (see [`adaptive_window`](crate::policy::adaptive_window)).
    Adaptive {
        min_window: Duration,
        max_window: Duration,
        quantile: f64,
        safety_factor: f64,
    },
    /// Complete once the producer's marker object (`key`, below the prefix)
    /// was created, optionally after `quiet_window` without activity, and
    /// with `verify_manifest` once every file the marker's manifest lists is
    /// counted (see [`crate::ingest::marker`]).
    Marker {
        key: String,
        quiet_window: Option<Duration>,
        verify_manifest: bool,
    },
}

impl Rule {
    /// The adaptive rule with every setting at its default.
    pub fn adaptive() -> Self {
        Self::Adaptive {
            min_window: DEFAULT_ADAPTIVE_MIN_WINDOW,
            max_window: DEFAULT_ADAPTIVE_MAX_WINDOW,
            quantile: DEFAULT_ADAPTIVE_QUANTILE,
            safety_factor: DEFAULT_ADAPTIVE_SAFETY_FACTOR,
        }
    }

    /// The adaptive rule at its defaults for a policy whose completions a
    /// listing confirms (`reconcile`): a lower floor.
    pub fn adaptive_confirmed() -> Self {
        Self::Adaptive {
            min_window: DEFAULT_ADAPTIVE_CONFIRMED_MIN_WINDOW,
            max_window: DEFAULT_ADAPTIVE_MAX_WINDOW,
            quantile: DEFAULT_ADAPTIVE_QUANTILE,
            safety_factor: DEFAULT_ADAPTIVE_CONFIRMED_SAFETY_FACTOR,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DelaySchedule {
    #[default]
    Fixed,
    Divide,
    Exponential,
}

impl DelaySchedule {
    /// The wait before the next sample after `repeated` unchanged samples,
    /// never below [`MIN_POLLING_DELAY`].
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
        d.max(MIN_POLLING_DELAY)
    }
}
/// Checks a duration field against `[MIN_DURATION, max]`.
pub fn check_duration(field: &str, d: Duration, max: Duration) -> Result<Duration, Error> {
    check_duration_in(field, d, MIN_DURATION, max)
}

/// Checks a duration field against `[min, max]`.
pub fn check_duration_in(
    field: &str,
    d: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    if d < min {
        return Err(Error::invalid(
            field,
            format!("must be at least {}", humantime::format_duration(min)),
        ));
    }
    if d > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(d)
}

impl Policy {
    /// Checks the limits a parsed policy must respect.
    pub fn validate(&self) -> Result<(), Error> {
        match &self.rule {
            Rule::Polling {
                delay, max_repeats, ..
            } => {
                check_duration_in(
                    "policy.polling.delay",
                    *delay,
                    MIN_POLLING_DELAY,
                    MAX_WINDOW,
                )?;
                if *max_repeats == 0 || *max_repeats > MAX_REPEATS {
                    return Err(Error::invalid(
                        "policy.polling.max_repeats",
                        format!("must be 1-{MAX_REPEATS}"),
                    ));
                }
            }
            Rule::QuietPeriod { window } => {
                check_duration("policy.quiet_period.window", *window, MAX_WINDOW)?;
            }
            Rule::ExpectedCount {
                objects,
                quiet_window,
            } => {
                if *objects == 0 || *objects > MAX_OBJECTS {
                    return Err(Error::invalid(
                        "policy.expected_count.objects",
                        format!("must be 1-{MAX_OBJECTS}"),
                    ));
                }
                if let Some(w) = quiet_window {
                    check_duration("policy.expected_count.quiet_window", *w, MAX_WINDOW)?;
                }
            }
            Rule::Adaptive {
                min_window,
                max_window,
                quantile,
                safety_factor,
            } => {
                check_duration("policy.adaptive.min_window", *min_window, MAX_WINDOW)?;
                check_duration("policy.adaptive.max_window", *max_window, MAX_WINDOW)?;
                if max_window < min_window {
                    return Err(Error::invalid(
                        "policy.adaptive.max_window",
                        format!(
                            "must be at least min_window ({})",
                            humantime::format_duration(*min_window)
                        ),
                    ));
                }
                if !(*quantile > 0.0 && *quantile <= 1.0) {
                    return Err(Error::invalid(
                        "policy.adaptive.quantile",
                        "must be above 0 and at most 1",
                    ));
                }
                if !(1.0..=MAX_SAFETY_FACTOR).contains(safety_factor) {
                    return Err(Error::invalid(
                        "policy.adaptive.safety_factor",
                        format!("must be 1-{MAX_SAFETY_FACTOR}"),
                    ));
                }
            }
            Rule::Marker {
                key, quiet_window, ..
            } => {
                crate::watch::check_marker_key("policy.marker.key", key)?;
                if let Some(w) = quiet_window {
                    check_duration("policy.marker.quiet_window", *w, MAX_WINDOW)?;
                }
            }
        }
        if self.min_objects > MAX_OBJECTS {
            return Err(Error::invalid(
                "policy.min_objects",
                format!("must be at most {MAX_OBJECTS}"),
            ));
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
