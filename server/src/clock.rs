//! Time as the service sees it: [`Timestamp`]s in milliseconds since the Unix
//! epoch, read from a [`Clock`] that follows tokio's clock, so tests that pause
//! and advance tokio time move every deadline and stored instant with it.

use std::{fmt, time::Duration};

/// Milliseconds since the Unix epoch.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Later than any real instant.
    pub const MAX: Self = Self(i64::MAX);

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating (validated durations never come close).
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// How long from `self` until `later`; zero when `later` is not after `self`.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let system =
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0));
        write!(f, "{}", humantime::format_rfc3339_millis(system))
    }
}

/// Wall-clock time anchored once and advanced by tokio's monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor_wall: Timestamp,
    anchor: tokio::time::Instant,
}

impl Clock {
    /// Anchors at the current wall-clock time.
    pub fn new() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::starting_at(Timestamp::from_millis(
            i64::try_from(wall.as_millis()).unwrap_or(i64::MAX),
        ))
    }

    /// Anchors at `wall` (tests use this for reproducible instants).
    pub fn starting_at(wall: Timestamp) -> Self {
        Self {
            anchor_wall: wall,
            anchor: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.anchor_wall.plus(self.anchor.elapsed())
    }

    /// The tokio instant at which this clock reads `at` (now, if `at` has passed).
    pub fn instant_at(&self, at: Timestamp) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.now().until(at)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
