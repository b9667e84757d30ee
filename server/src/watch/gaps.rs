//! The gaps between activities a watch has seen: the histogram the adaptive
//! rule learns its window from, kept with the rule's progress.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

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
