//! The adaptive rule's statistics: the window derived from the gaps a watch
//! has seen (`crate::watch::ActivityGaps`), the clock it is measured on, and what a
//! series' earlier runs set (the window's floor; when a watch short of the
//! series' count asks for a probe listing). Pure, like the rest of the policy.

use std::{fmt, time::Duration};

use crate::{
    clock::Timestamp,
    watch::{ActivityGaps, Rule, Watch, policy::MAX_WINDOW},
};

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
    /// The series the lower bound was learnt from, instead of `min_window`.
    pub series: Option<SeriesFloor>,
}

/// A lower bound learnt from a watch's series: [`SERIES_SAFETY_FACTOR`] x the
/// longest gap its earlier runs showed, at least [`MIN_SERIES_WINDOW`].
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesFloor {
    pub series: String,
    pub runs: u32,
    pub longest_gap: Duration,
}

/// Completed runs of a series a watch needs before it learns from them.
pub const MIN_SERIES_RUNS: u32 = 2;
/// The shortest window a series' history sets: longer than S3 usually takes
/// to deliver a notification (seconds). Shorter, the confirming listing runs
/// while producers are at work and their notifications on their way, finds
/// those objects, and runs again and again.
pub const MIN_SERIES_WINDOW: Duration = Duration::from_secs(5);
/// The multiplier on the longest gap a series' runs showed: a run may pause
/// somewhat longer than the runs before it.
pub const SERIES_SAFETY_FACTOR: f64 = 1.5;
/// How far apart a series' runs' longest gaps may be for the series to set
/// the window.
pub const SERIES_GAP_SPREAD: f64 = 2.0;
/// Gaps a run must show before its series may lower the window below
/// `min_window`: producers that start one after another pause between
/// their first objects longer than a few runs' longest gaps bound.
pub const SERIES_OWN_GAPS: u64 = 10;
/// How long no object may have been created before a series' repeated count
/// is taken as landed (a listing then confirms it): a run that goes on past
/// the count at a steady producer's pace shows it within this.
pub const SERIES_COUNT_QUIET: Duration = Duration::from_secs(3);
/// How long no object may have been created, at least, before a watch a few
/// objects short of its series' count lists the prefix (a probe): longer
/// than S3 usually takes to deliver a notification, so what a probe finds
/// is late, not merely on its way.
pub const PROBE_QUIET: Duration = Duration::from_secs(4);
/// A probe also waits this many times the run's median gap: a producer that
/// writes every 30s is, 4s after its last object, most likely about to
/// write the next one.
pub const PROBE_MEDIAN_GAPS: f64 = 2.0;
/// The shortest time between two probe listings of a watch.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// The most probe listings a generation makes.
pub const MAX_PROBES: u32 = 3;

/// How long no object may have been created before a watch short of its
/// series' count asks for a probe, given the gaps it has seen.
pub fn probe_quiet(gaps: &ActivityGaps) -> Duration {
    let median = gaps.quantile(0.5).unwrap_or_default();
    median.mul_f64(PROBE_MEDIAN_GAPS).max(PROBE_QUIET)
}

/// How many objects short of its series' count a watch may be for a probe:
/// 1% of the count, at least one. S3 is late with about one notification in
/// hundreds; a watch further short is waiting for its producers, which no
/// listing hurries.
pub fn probe_shortfall(count: u64) -> u64 {
    (count / 100).max(1)
}

/// The lower bound of `watch`'s adaptive window: `min_window`, or what its
/// series learnt, when it has enough runs that agree on their longest pause
/// (the longest is at most [`SERIES_GAP_SPREAD`] times the shortest of
/// them; runs that disagree say little about this one).
///
/// A learnt bound below `min_window` waits until the run has shown
/// [`SERIES_OWN_GAPS`] gaps of its own (`gaps`).
fn floor(watch: &Watch, min_window: Duration, gaps: u64) -> (Duration, Option<SeriesFloor>) {
    let Some(p) = watch
        .lifecycle
        .polling
        .series
        .as_ref()
        .filter(|p| p.runs >= MIN_SERIES_RUNS)
        .filter(|p| p.max_gap_ms as f64 <= p.min_max_gap_ms as f64 * SERIES_GAP_SPREAD)
    else {
        return (min_window, None);
    };
    let longest_gap = Duration::from_millis(p.max_gap_ms);
    let scaled = Duration::from_millis((p.max_gap_ms as f64 * SERIES_SAFETY_FACTOR).ceil() as u64);
    let learnt = SeriesFloor {
        series: p.series.clone(),
        runs: p.runs,
        longest_gap,
    };
    let window = scaled.clamp(MIN_SERIES_WINDOW, MAX_WINDOW);
    if window < min_window && gaps < SERIES_OWN_GAPS {
        return (min_window, None);
    }
    (window, Some(learnt))
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
        let lower = match &self.series {
            Some(s) => format!(
                "series {}: {SERIES_SAFETY_FACTOR} x the longest gap of its last {} runs, {}",
                s.series,
                s.runs,
                human(s.longest_gap)
            ),
            None => "min_window".to_owned(),
        };
        let Some(gap) = self.gap_quantile else {
            return write!(f, "{lower}; no gaps seen yet");
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
            Some(WindowBound::MinWindow) => write!(f, "{lower}; {statistic} is shorter"),
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
    Some(AdaptiveWindow::of(
        watch,
        (min_window, max_window),
        quantile,
        safety_factor,
        &gaps,
    ))
}

impl AdaptiveWindow {
    /// `watch`'s window from `gaps`, its lower bound learnt from its series
    /// when it has one.
    pub(super) fn of(
        watch: &Watch,
        (min_window, max_window): (Duration, Duration),
        quantile: f64,
        safety_factor: f64,
        gaps: &ActivityGaps,
    ) -> Self {
        let (lower, series) = floor(watch, min_window, gaps.count());
        let mut window = Self::new(
            (lower, max_window.max(lower)),
            quantile,
            safety_factor,
            gaps,
        );
        window.series = series;
        window
    }

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
            series: None,
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
