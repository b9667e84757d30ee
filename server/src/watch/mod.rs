//! The watch and its events in domain terms: the watch record the store
//! keeps, its lifecycle and counters, and the events in its log. Typed ids
//! and names validated once at the edge are in `names`, the policy a watch
//! carries (its rule and limits, validated) in `policy`, the gaps the
//! adaptive rule learns from in `gaps`. No I/O, no protobuf, and no decisions
//! here: deciding is `crate::policy`'s, which depends on this module and
//! never the other way round.

mod gaps;
mod names;
pub mod policy;

pub use gaps::ActivityGaps;
pub use names::*;
pub use policy::{DelaySchedule, Policy, Rule};

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WatchState {
    Active,
    Completed,
    TimedOut,
    Cancelled,
    Failed,
}

impl WatchState {
    pub fn is_terminal(self) -> bool {
        self != Self::Active
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Completed => "COMPLETED",
            Self::TimedOut => "TIMED_OUT",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    pub fn from_str_opt(raw: &str) -> Option<Self> {
        [
            Self::Active,
            Self::Completed,
            Self::TimedOut,
            Self::Cancelled,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// Where a watch's terminal events are delivered (checked against the
/// tenant's allowed callback patterns when the watch starts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotifyTarget {
    /// HTTP POST, signed with the tenant's callback secret named `secret_ref`.
    Webhook {
        url: String,
        secret_ref: String,
    },
    Sqs {
        queue_url: String,
    },
    Sns {
        topic_arn: String,
    },
    /// The manifest of each completion, written to `s3://bucket/key`
    /// (checked against the tenant's bucket patterns, not its callback ones).
    Manifest {
        bucket: Bucket,
        key: String,
    },
}

impl NotifyTarget {
    /// What the tenant's patterns are matched against: its callback patterns,
    /// or for a manifest its bucket patterns.
    pub fn address(&self) -> &str {
        match self {
            Self::Webhook { url, .. } => url,
            Self::Sqs { queue_url } => queue_url,
            Self::Sns { topic_arn } => topic_arn,
            Self::Manifest { bucket, .. } => bucket.as_str(),
        }
    }

    /// Whether an event of this kind goes to this target: a manifest is
    /// written for COMPLETED only.
    pub fn wants(&self, kind: &EventKind) -> bool {
        match self {
            Self::Manifest { .. } => matches!(kind, EventKind::Completed { .. }),
            _ => true,
        }
    }
}

/// The notify targets of a watch and which events go to them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub targets: Vec<NotifyTarget>,
    /// Also deliver REOPENED (terminal events are always delivered).
    #[serde(default)]
    pub reopened: bool,
}

impl Notify {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Whether an event of this kind goes to the targets.
    pub fn wants(&self, kind: &EventKind) -> bool {
        !self.targets.is_empty()
            && (kind.is_terminal() || (self.reopened && matches!(kind, EventKind::Reopened { .. })))
    }
}

/// What the ingest path has accepted into a watch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Distinct keys created under the prefix.
    pub object_count: u64,
    /// Accepted object-created notifications (overwrites count, redeliveries do not).
    pub event_count: u64,
    /// Accepted object-removed notifications.
    pub removed_count: u64,
    /// The sizes the created notifications carried, once per distinct key
    /// (the first notification's size); removals do not subtract.
    #[serde(default)]
    pub object_bytes: u64,
    pub last_activity_at: Option<Timestamp>,
    /// Distinct creations of the marker object (`policy.marker`), counted as
    /// event_count is; the marker is never one of the objects.
    #[serde(default)]
    pub marker_count: u64,
    /// When the newest marker creation was recorded.
    #[serde(default)]
    pub marker_at: Option<Timestamp>,
    /// The newest creation instant (`eventTime`; a listing's `LastModified`)
    /// of the counted created events: when the data set last grew, whatever
    /// the delivery delay.
    #[serde(default)]
    pub newest_event_at: Option<Timestamp>,
}

impl Counters {
    /// Every accepted activity so far; the polling rule samples this.
    pub fn activity(&self) -> u64 {
        self.event_count + self.removed_count + self.marker_count
    }

    /// A group's counters: the sums over its members, with the latest activity.
    pub fn sum<'a>(members: impl IntoIterator<Item = &'a Counters>) -> Self {
        members.into_iter().fold(Self::default(), |acc, c| Self {
            object_count: acc.object_count.saturating_add(c.object_count),
            event_count: acc.event_count.saturating_add(c.event_count),
            removed_count: acc.removed_count.saturating_add(c.removed_count),
            object_bytes: acc.object_bytes.saturating_add(c.object_bytes),
            last_activity_at: acc.last_activity_at.max(c.last_activity_at),
            marker_count: acc.marker_count.saturating_add(c.marker_count),
            marker_at: acc.marker_at.max(c.marker_at),
            newest_event_at: acc.newest_event_at.max(c.newest_event_at),
        })
    }
}

/// What reading a marker's manifest found (`verify_manifest`): persisted
/// with the lifecycle, so a restart does not forget it and GetWatch shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestCheck {
    /// The marker read: the watch's `marker_count` then.
    pub marker: u64,
    /// The activity level the listed files were looked up at.
    pub activity: u64,
    /// Files the manifest lists.
    pub listed: u64,
    /// Listed files not counted yet.
    pub missing: u64,
    /// Why this marker cannot complete the watch whatever is counted (not a
    /// manifest, a failed job); empty when it can.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

/// Where the rule is in its cycle (the polling rule's samples, the adaptive
/// rule's gaps); persisted so restarts resume it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollingProgress {
    pub repeated: u32,
    pub last_sample: u64,
    pub next_sample_at: Option<Timestamp>,
    /// Only the adaptive rule keeps gaps; absent from watches stored before it.
    #[serde(default, skip_serializing_if = "ActivityGaps::is_empty")]
    pub gaps: ActivityGaps,
    /// The marker rule: only a marker recorded after this instant (the
    /// previous generation's completion) completes this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker_after: Option<Timestamp>,
    /// The marker rule with `verify_manifest`: the last check of the marker's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Box<ManifestCheck>>,
    /// The adaptive rule: what the completed watches of its series showed
    /// before it started (see [`SERIES_LABEL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Box<SeriesPrior>>,
    /// The adaptive rule in a series whose count repeats: the probe
    /// listings this generation made while a few objects short of that
    /// count, and when the last one ran.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probed_at: Option<Timestamp>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The label that names a watch's series: watches of one recurring data set
/// (a daily export, an hourly partition) that learn from each other.
pub const SERIES_LABEL: &str = "series";

/// How long past its timeout a watch no observer has timed out yet still
/// counts activity ([`Watch::counts_activity`]); the DynamoDB store counts
/// its items' retention from then.
pub const TIMEOUT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What a new adaptive watch learnt from the completed adaptive watches of
/// its series (the newest few, of its tenant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPrior {
    /// The series, and how many completed watches of it were read.
    pub series: String,
    pub runs: u32,
    /// The object count every one of those runs completed with, when they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The longest gap between activities any of them showed (between
    /// creations, for watches confirmed by a listing), in milliseconds; and
    /// the shortest of their longest gaps.
    pub max_gap_ms: u64,
    #[serde(default)]
    pub min_max_gap_ms: u64,
}

impl SeriesPrior {
    /// What `runs` (each's final object count and longest gap, in ms; at
    /// least one) of `series` teach a new watch of it.
    pub fn of(series: String, runs: &[(u64, u64)]) -> Self {
        let count = runs.first().map_or(0, |r| r.0);
        Self {
            series,
            runs: runs.len() as u32,
            count: runs.iter().all(|r| r.0 == count).then_some(count),
            max_gap_ms: runs.iter().map(|r| r.1).max().unwrap_or(0),
            min_max_gap_ms: runs.iter().map(|r| r.1).min().unwrap_or(0),
        }
    }
}

/// A W3C trace context (`traceparent` and `tracestate` headers), carried
/// through as text; both empty when there is none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

impl TraceContext {
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_empty()
    }
}

/// The fields of a watch that only the policy changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub state: WatchState,
    /// Starts at 1; bumped by each reopening.
    pub generation: u32,
    pub generation_started_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub reason: String,
    pub polling: PollingProgress,
}

impl Lifecycle {
    /// The lifecycle a watch starts with (or restarts with when reopened at
    /// `at`, with `activity` seen so far).
    pub fn fresh(generation: u32, at: Timestamp, activity: u64) -> Self {
        Self {
            state: WatchState::Active,
            generation,
            generation_started_at: at,
            completed_at: None,
            reason: String::new(),
            polling: PollingProgress {
                repeated: 0,
                last_sample: activity,
                next_sample_at: None,
                gaps: ActivityGaps::default(),
                marker_after: None,
                manifest: None,
                series: None,
                probes: 0,
                probed_at: None,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    pub tenant: TenantId,
    pub id: WatchId,
    /// Stored flat: `bucket`, `prefix`, `filter`, or a group's `members`.
    #[serde(flatten)]
    pub source: Source,
    pub policy: Policy,
    pub labels: Labels,
    pub client_token: Option<String>,
    pub created_at: Timestamp,
    pub lifecycle: Lifecycle,
    pub counters: Counters,
    pub last_seq: u64,
    /// The trace context of the StartWatch call; absent from watches stored before it.
    #[serde(default, skip_serializing_if = "TraceContext::is_empty")]
    pub trace: TraceContext,
}

impl Watch {
    pub fn key(&self) -> WatchKey {
        WatchKey {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
        }
    }

    pub fn state(&self) -> WatchState {
        self.lifecycle.state
    }

    /// Whether this is a watch group (its members decide its completion).
    pub fn is_group(&self) -> bool {
        matches!(self.source, Source::Members { .. })
    }

    /// The keys of a group's members (none for a watch of objects).
    pub fn member_keys(&self) -> Vec<WatchKey> {
        self.source
            .members()
            .iter()
            .map(|id| WatchKey {
                tenant: self.tenant.clone(),
                id: id.clone(),
            })
            .collect()
    }

    /// The end of the late window, for a completed watch that has one.
    pub fn late_window_end(&self) -> Option<Timestamp> {
        match (
            self.lifecycle.state,
            self.lifecycle.completed_at,
            self.policy.late_window,
        ) {
            (WatchState::Completed, Some(at), Some(window)) => Some(at.plus(window)),
            _ => None,
        }
    }

    /// The marker key below the prefix, for a watch whose rule is `marker`.
    pub fn marker_key(&self) -> Option<&str> {
        match &self.policy.rule {
            Rule::Marker { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The generation an object counted now belongs to: the current one, or,
    /// for late activity after a completion, the one its reopening starts
    /// (should the reopening be refused, by a quota, the object keeps that
    /// number and is listed with every generation's objects).
    pub fn counting_generation(&self) -> u32 {
        match self.lifecycle.state {
            WatchState::Completed => self.lifecycle.generation + 1,
            _ => self.lifecycle.generation,
        }
    }

    /// When this watch's life is bounded, the instant it is over by: its
    /// timeout, for a watch with one and no late window (nothing can reopen
    /// it, so its one generation ends by then). `None`: it may go on for good.
    pub fn over_by(&self) -> Option<Timestamp> {
        if self.policy.late_window.is_some() {
            return None;
        }
        let timeout = self.policy.timeout?;
        Some(self.lifecycle.generation_started_at.plus(timeout))
    }

    /// Whether this watch is still live at `now`: active, or completed
    /// and inside its late window.
    pub fn accepts_activity(&self, now: Timestamp) -> bool {
        self.lifecycle.state == WatchState::Active
            || self.late_window_end().is_some_and(|end| now <= end)
    }

    /// Whether a notification recorded at `now` counts into this watch: it
    /// is live, and not more than [`TIMEOUT_GRACE`] past the end of a
    /// bounded life ([`Self::over_by`]). A watch no observer timed out in
    /// time is over all the same, and its stored items may be expiring.
    pub fn counts_activity(&self, now: Timestamp) -> bool {
        self.accepts_activity(now)
            && self
                .over_by()
                .is_none_or(|end| now < end.plus(TIMEOUT_GRACE))
    }
}

/// A watch's identity across the service: ids are unique per tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchKey {
    pub tenant: TenantId,
    pub id: WatchId,
}

/// What happened to a watch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Started {
        watch: Box<Watch>,
    },
    Progress {
        counters: Counters,
    },
    QuietTick {
        object_count: u64,
        repeated: u32,
        max_repeats: u32,
    },
    Completed {
        object_count: u64,
        /// Absent from events stored before it.
        #[serde(default)]
        object_bytes: u64,
        reason: String,
    },
    TimedOut {
        object_count: u64,
        reason: String,
    },
    Cancelled {
        reason: String,
    },
    Reopened {
        object_count: u64,
        reason: String,
    },
    /// The delivery of event `seq` to notify target `target` was given up.
    DeliveryFailed {
        seq: u64,
        target: u32,
        attempts: u32,
        last_error: String,
    },
}

impl EventKind {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. } | Self::TimedOut { .. } | Self::Cancelled { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Progress { .. } => "progress",
            Self::QuietTick { .. } => "quiet_tick",
            Self::Completed { .. } => "completed",
            Self::TimedOut { .. } => "timed_out",
            Self::Cancelled { .. } => "cancelled",
            Self::Reopened { .. } => "reopened",
            Self::DeliveryFailed { .. } => "delivery_failed",
        }
    }
}

/// One entry of a watch's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub tenant: TenantId,
    pub watch_id: WatchId,
    /// Per watch, from 1, without gaps.
    pub seq: u64,
    pub time: Timestamp,
    pub generation: u32,
    pub kind: EventKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_s3_reserves_are_refused() {
        for name in [
            "xn--lake",
            "sthree-lake",
            "sthree-configurator",
            "amzn-s3-demo-lake",
            "lake-s3alias",
            "lake--ol-s3",
            "lake.mrap",
            "lake--x-s3",
            "lake--table-s3",
        ] {
            let e = Bucket::parse("bucket", name).expect_err(name).to_string();
            assert!(
                e.contains("reserved by S3") && e.contains("bucket"),
                "{name}: {e}"
            );
        }
        for name in ["lake", "xn-lake", "my-sthree-lake", "s3alias-lake"] {
            assert!(Bucket::parse("bucket", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn notify_wants_terminal_events_and_reopened_only_when_asked() {
        let target = NotifyTarget::Sqs {
            queue_url: "https://sqs.example/q".into(),
        };
        let completed = EventKind::Completed {
            object_count: 1,
            object_bytes: 0,
            reason: String::new(),
        };
        let reopened = EventKind::Reopened {
            object_count: 2,
            reason: String::new(),
        };
        let progress = EventKind::Progress {
            counters: Counters::default(),
        };
        let cancelled = EventKind::Cancelled {
            reason: String::new(),
        };
        let mut notify = Notify {
            targets: vec![target],
            reopened: false,
        };
        assert!(notify.wants(&completed) && notify.wants(&cancelled));
        assert!(!notify.wants(&reopened) && !notify.wants(&progress));
        notify.reopened = true;
        assert!(notify.wants(&reopened));
        assert!(
            !Notify::default().wants(&completed),
            "no targets, nothing wanted"
        );
    }
}
