//! The adaptive rule's statistics: the histogram of gaps a watch has seen,
//! the window derived from it, and the clock it is measured on. Pure, like
//! the rest of the policy.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::MAX_WINDOW;
use crate::{clock::Timestamp, policy::Rule, watch::Watch};

/// Histogram buckets per doubling of a gap: a bucket is 2^(1/8) (about 9%) wide.
const GAP_BUCKETS_PER_OCTAVE: f64 = 8.0;
/// The last bucket holds every gap from 2^(254/8) ms (about 39 days) up.
const GAP_LAST_BUCKET: u8 = u8::MAX;

/// The gaps between activities a watch has seen, for the adaptive rule: a
/// log-scale histogram (at most 256 buckets, each 9% wide) and the last
/// activity already counted. Persisted with the rule's progress, so it
/// survives restarts and carries over into a reopened generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityGaps {
    /// The last activity whose gap is counted; the next gap starts here.
    #[serde(default)]
    pub seen_until: Option<Timestamp>,
    /// `(bucket, gaps)` pairs by ascending bucket; see [`ActivityGaps::bucket`].
    #[serde(default)]
    pub buckets: Vec<(u8, u32)>,
}

impl ActivityGaps {
    pub fn is_empty(&self) -> bool {
        self.seen_until.is_none() && self.buckets.is_empty()
    }

    /// Gaps counted so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// The bucket of a gap: 0 below 1ms, else `1 + floor(8 * log2(ms))`.
    pub fn bucket(gap: Duration) -> u8 {
        let ms = gap.as_millis();
        if ms == 0 {
            return 0;
        }
        let b = 1.0 + ((ms as f64).log2() * GAP_BUCKETS_PER_OCTAVE).floor();
        if b >= f64::from(GAP_LAST_BUCKET) {
            GAP_LAST_BUCKET
        } else {
            b as u8
        }
    }

    /// The longest gap a bucket holds (its upper edge, whole milliseconds).
    pub fn bucket_bound(bucket: u8) -> Duration {
        let ms = (f64::from(bucket) / GAP_BUCKETS_PER_OCTAVE).exp2().ceil();
        Duration::from_millis(ms as u64)
    }

    /// Counts the gap up to `last_activity_at` if activity moved past what
    /// was seen; the first activity only starts the count.
    pub fn observe(&mut self, last_activity_at: Option<Timestamp>) {
        let Some(at) = last_activity_at else { return };
        match self.seen_until {
            Some(seen) if at > seen => self.add(seen.until(at)),
            Some(_) => return,
            None => {}
        }
        self.seen_until = Some(at);
    }

    pub fn add(&mut self, gap: Duration) {
        let b = Self::bucket(gap);
        match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (b, 1)),
        }
    }

    /// The `q` quantile of the gaps, as the upper edge of its bucket (so at
    /// most 9% long); with fewer than `1 / (1 - q)` gaps that is the longest.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        self.buckets.iter().find_map(|(b, k)| {
            seen += u64::from(*k);
            (seen >= rank).then(|| Self::bucket_bound(*b))
        })
    }
}

/// What the adaptive rule waits for, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveWindow {
    /// The silence after the last activity that completes the watch.
    pub window: Duration,
    /// The quantile of the observed gaps; `None` before the first gap.
    pub gap_quantile: Option<Duration>,
    pub gaps: u64,
    pub quantile: f64,
    pub safety_factor: f64,
    /// Which bound the window sits on, if the statistic fell outside them.
    pub bound: Option<WindowBound>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowBound {
    MinWindow,
    MaxWindow,
}

impl fmt::Display for AdaptiveWindow {
    /// Why the window is what it is: `3 x p99 gap 13.6s over 57 gaps`,
    /// `min_window; 3 x p99 gap 0.5s over 199 gaps is shorter`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(gap) = self.gap_quantile else {
            return f.write_str("min_window; no gaps seen yet");
        };
        let p = (self.quantile * 1000.0).round() / 10.0;
        let statistic = format!(
            "{} x p{p} gap {} over {} gaps",
            self.safety_factor,
            human(gap),
            self.gaps
        );
        match self.bound {
            None => f.write_str(&statistic),
            Some(WindowBound::MinWindow) => write!(f, "min_window; {statistic} is shorter"),
            Some(WindowBound::MaxWindow) => write!(f, "max_window; {statistic} is longer"),
        }
    }
}

/// `13.6s`, `1m 30s`: a duration to the nearest 0.1s (whole seconds from a minute up).
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 59_950 {
        let tenths = (ms + 50) / 100;
        if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        }
    } else {
        humantime::format_duration(Duration::from_secs(((ms + 500) / 1000) as u64)).to_string()
    }
}

/// The adaptive rule's current window for a watch: `safety_factor` x the
/// `quantile` of its observed gaps, rounded up to whole milliseconds and
/// clamped to `[min_window, max_window]`; `min_window` before any gap.
/// `None` for other rules.
pub fn adaptive_window(watch: &Watch) -> Option<AdaptiveWindow> {
    let Rule::Adaptive {
        min_window,
        max_window,
        quantile,
        safety_factor,
    } = watch.policy.rule
    else {
        return None;
    };
    let mut gaps = watch.lifecycle.polling.gaps.clone();
    // The latest activity may not be counted yet (the observer has not evaluated it).
    gaps.observe(adaptive_clock(watch));
    Some(AdaptiveWindow::new(
        (min_window, max_window),
        quantile,
        safety_factor,
        &gaps,
    ))
}

impl AdaptiveWindow {
    pub(super) fn new(
        (min_window, max_window): (Duration, Duration),
        quantile: f64,
        safety_factor: f64,
        gaps: &ActivityGaps,
    ) -> Self {
        let gap_quantile = gaps.quantile(quantile);
        let (window, bound) = match gap_quantile {
            None => (min_window, Some(WindowBound::MinWindow)),
            Some(gap) => {
                let ms = (gap.as_secs_f64() * safety_factor * 1000.0).ceil();
                let scaled = Duration::from_millis(ms.min(MAX_WINDOW.as_millis() as f64) as u64);
                if scaled < min_window {
                    (min_window, Some(WindowBound::MinWindow))
                } else if scaled > max_window {
                    (max_window, Some(WindowBound::MaxWindow))
                } else {
                    (scaled, None)
                }
            }
        };
        Self {
            window,
            gap_quantile,
            gaps: gaps.count(),
            quantile,
            safety_factor,
            bound,
        }
    }
}

/// The instants the adaptive rule measures silence and gaps in: arrivals of
/// activity, or, when a listing confirms each completion (`reconcile`), the
/// creation of the newest object counted (its `eventTime`): a notification
/// that arrives late does not look like new data, and the listing finds any
/// object created but not yet notified. Arrivals when no event time was told.
pub(super) fn adaptive_clock(watch: &Watch) -> Option<Timestamp> {
    let c = &watch.counters;
    if watch.policy.reconcile {
        c.newest_event_at.or(c.last_activity_at)
    } else {
        c.last_activity_at
    }
}
