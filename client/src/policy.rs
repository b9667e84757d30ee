//! Completion policies as typed values: the rule (quiet period, expected
//! count, the classic polling rule with its delay schedule, or the adaptive
//! window learnt from the producers' gaps) and the limits
//! that apply to every rule. Converts to the protobuf `Policy`; decides
//! nothing itself (the server's policy does).

use std::time::Duration;

use streamwatch::v1;

/// How the classic polling rule spaces its samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DelaySchedule {
    /// Every sample waits `delay`.
    #[default]
    Fixed,
    /// Waits `delay / repeated` (`delay` while `repeated` is 0).
    Divide,
    /// Waits `ceil(delay * exp(-repeated))` whole seconds, at most `delay`.
    Exponential,
}

/// The rule that decides completion.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// Complete exactly `window` after the last activity.
    QuietPeriod { window: Duration },
    /// Complete when `objects` distinct objects have landed; with
    /// `quiet_window`, also after that long without activity.
    ExpectedCount {
        objects: u64,
        quiet_window: Option<Duration>,
    },
    /// Sample every `delay` (the server accepts 1s or more); complete after
    /// `max_repeats` unchanged samples.
    Polling {
        delay: Duration,
        max_repeats: u32,
        schedule: DelaySchedule,
    },
    /// Complete when the silence after the last activity exceeds a window
    /// learnt from the gaps between this watch's activities.
    Adaptive(Adaptive),
    /// Complete when the producer creates its marker object (`key`, below
    /// the prefix, e.g. `_SUCCESS`); with `quiet_window`, after that long
    /// without activity after it; with `verify_manifest`, once every file the
    /// marker's committer manifest lists is counted (servers with AWS access).
    Marker {
        key: String,
        quiet_window: Option<Duration>,
        verify_manifest: bool,
    },
}

/// The bounds and shape of an adaptive window: `safety_factor` x the
/// `quantile` of the observed gaps, clamped to [`min_window`, `max_window`].
/// A field left `None` takes the server's default (100s, 1h, 0.99, 1.5; with
/// `reconcile`, 75s, 1h, 0.99, 1.15).
///
/// [`min_window`]: Adaptive::min_window
/// [`max_window`]: Adaptive::max_window
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Adaptive {
    /// Never complete sooner than this after the last activity.
    pub min_window: Option<Duration>,
    /// Never wait longer than this after the last activity.
    pub max_window: Option<Duration>,
    /// Which quantile of the observed gaps to scale, in (0, 1].
    pub quantile: Option<f64>,
    /// The multiplier on that quantile, 1 to 100.
    pub safety_factor: Option<f64>,
}

/// Where a watch's terminal events are delivered (the server's tenants file
/// must allow it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyTarget {
    /// HTTP POST signed with the tenant's callback secret named `secret_ref`.
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
    /// The manifest of each completion (COMPLETED only), as JSON Lines at
    /// `s3://bucket/key`; the bucket must be one of the tenant's.
    Manifest {
        bucket: String,
        key: String,
    },
}

impl From<NotifyTarget> for v1::NotifyTarget {
    fn from(target: NotifyTarget) -> Self {
        use v1::notify_target::Target;
        let target = match target {
            NotifyTarget::Webhook { url, secret_ref } => {
                Target::Webhook(v1::WebhookTarget { url, secret_ref })
            }
            NotifyTarget::Sqs { queue_url } => Target::Sqs(v1::SqsTarget { queue_url }),
            NotifyTarget::Sns { topic_arn } => Target::Sns(v1::SnsTarget { topic_arn }),
            NotifyTarget::Manifest { bucket, key } => {
                Target::Manifest(v1::S3ManifestTarget { bucket, key })
            }
        };
        v1::NotifyTarget {
            target: Some(target),
        }
    }
}

/// A completion policy. `Policy::default()` has no rule: the server applies
/// its default (a 60s quiet period).
///
/// ```
/// use std::time::Duration;
/// use streamwatch_client::{Adaptive, DelaySchedule, Policy};
///
/// let classic = Policy::polling(Duration::from_secs(30), 5).schedule(DelaySchedule::Exponential);
/// let counted = Policy::expected_count(1000)
///     .quiet_window(Duration::from_secs(600))
///     .timeout(Duration::from_secs(3600));
/// let learnt = Policy::adaptive(Adaptive {
///     min_window: Some(Duration::from_secs(30)),
///     ..Adaptive::default()
/// });
/// # let _ = (classic, counted, learnt);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub rule: Option<Rule>,
    pub min_objects: u64,
    pub timeout: Option<Duration>,
    pub late_window: Option<Duration>,
    /// List the prefix in S3 before completing (servers with AWS access).
    pub reconcile: bool,
    /// Where terminal events are delivered, at least once.
    pub notify: Vec<NotifyTarget>,
    /// Also deliver REOPENED to `notify`.
    pub notify_reopened: bool,
}

impl Policy {
    pub fn quiet_period(window: Duration) -> Self {
        Self::with_rule(Rule::QuietPeriod { window })
    }

    pub fn expected_count(objects: u64) -> Self {
        Self::with_rule(Rule::ExpectedCount {
            objects,
            quiet_window: None,
        })
    }

    /// The classic rule with the [`DelaySchedule::Fixed`] schedule. The
    /// server refuses a `delay` under 1s (INVALID_ARGUMENT naming
    /// `policy.polling.delay`).
    pub fn polling(delay: Duration, max_repeats: u32) -> Self {
        Self::with_rule(Rule::Polling {
            delay,
            max_repeats,
            schedule: DelaySchedule::Fixed,
        })
    }

    /// The adaptive rule with these bounds (`Adaptive::default()`: the
    /// server's defaults).
    pub fn adaptive(adaptive: Adaptive) -> Self {
        Self::with_rule(Rule::Adaptive(adaptive))
    }

    /// The marker rule on `key` (below the prefix, e.g. `_SUCCESS`).
    pub fn marker(key: impl Into<String>) -> Self {
        Self::with_rule(Rule::Marker {
            key: key.into(),
            quiet_window: None,
            verify_manifest: false,
        })
    }

    /// A marker rule completes only once every file its manifest lists is
    /// counted; other rules are unchanged.
    pub fn verify_manifest(mut self) -> Self {
        if let Some(Rule::Marker {
            verify_manifest, ..
        }) = &mut self.rule
        {
            *verify_manifest = true;
        }
        self
    }

    fn with_rule(rule: Rule) -> Self {
        Self {
            rule: Some(rule),
            ..Self::default()
        }
    }

    /// The delay schedule of a polling rule; other rules have none, and keep
    /// theirs unchanged.
    pub fn schedule(mut self, schedule: DelaySchedule) -> Self {
        if let Some(Rule::Polling { schedule: s, .. }) = &mut self.rule {
            *s = schedule;
        }
        self
    }

    /// The quiet window of an expected-count or marker rule; other rules
    /// keep theirs unchanged.
    pub fn quiet_window(mut self, window: Duration) -> Self {
        if let Some(Rule::ExpectedCount { quiet_window, .. } | Rule::Marker { quiet_window, .. }) =
            &mut self.rule
        {
            *quiet_window = Some(window);
        }
        self
    }

    /// Never complete with fewer distinct objects.
    pub fn min_objects(mut self, objects: u64) -> Self {
        self.min_objects = objects;
        self
    }

    /// End with TIMED_OUT this long after the watch (or its generation) started.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Activity this long after a completion reopens the watch.
    pub fn late_window(mut self, window: Duration) -> Self {
        self.late_window = Some(window);
        self
    }

    /// Before completing, count objects in S3 that no notification told of.
    pub fn reconcile(mut self) -> Self {
        self.reconcile = true;
        self
    }

    /// Also deliver terminal events to `target`.
    pub fn notify(mut self, target: NotifyTarget) -> Self {
        self.notify.push(target);
        self
    }
}

impl From<DelaySchedule> for v1::DelaySchedule {
    fn from(schedule: DelaySchedule) -> Self {
        match schedule {
            DelaySchedule::Fixed => v1::DelaySchedule::Fixed,
            DelaySchedule::Divide => v1::DelaySchedule::Divide,
            DelaySchedule::Exponential => v1::DelaySchedule::Exponential,
        }
    }
}

impl From<Rule> for v1::policy::Rule {
    fn from(rule: Rule) -> Self {
        match rule {
            Rule::QuietPeriod { window } => v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
                window: Some(proto_duration(window)),
            }),
            Rule::ExpectedCount {
                objects,
                quiet_window,
            } => v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
                objects,
                quiet_window: quiet_window.map(proto_duration),
            }),
            Rule::Polling {
                delay,
                max_repeats,
                schedule,
            } => v1::policy::Rule::Polling(v1::PollingRule {
                delay: Some(proto_duration(delay)),
                max_repeats,
                schedule: v1::DelaySchedule::from(schedule) as i32,
            }),
            Rule::Adaptive(adaptive) => v1::policy::Rule::Adaptive(v1::AdaptiveRule {
                min_window: adaptive.min_window.map(proto_duration),
                max_window: adaptive.max_window.map(proto_duration),
                // 0 in the protobuf means "the server's default".
                quantile: adaptive.quantile.unwrap_or_default(),
                safety_factor: adaptive.safety_factor.unwrap_or_default(),
            }),
            Rule::Marker {
                key,
                quiet_window,
                verify_manifest,
            } => v1::policy::Rule::Marker(v1::MarkerRule {
                key,
                quiet_window: quiet_window.map(proto_duration),
                verify_manifest,
            }),
        }
    }
}

impl From<Policy> for v1::Policy {
    fn from(policy: Policy) -> Self {
        v1::Policy {
            rule: policy.rule.map(Into::into),
            min_objects: policy.min_objects,
            timeout: policy.timeout.map(proto_duration),
            late_window: policy.late_window.map(proto_duration),
            reconcile: policy.reconcile,
            notify: policy.notify.into_iter().map(Into::into).collect(),
            notify_reopened: policy.notify_reopened,
        }
    }
}

/// A protobuf duration; one too long for it saturates (the server rejects it
/// by name as out of range).
pub(crate) fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_targets_become_the_proto_targets() {
        let policy: v1::Policy = Policy::quiet_period(Duration::from_secs(5))
            .notify(NotifyTarget::Webhook {
                url: "https://hooks.example/done".into(),
                secret_ref: "main".into(),
            })
            .notify(NotifyTarget::Sqs {
                queue_url: "https://sqs.example/q".into(),
            })
            .into();
        assert_eq!(policy.notify.len(), 2);
        assert_eq!(
            policy.notify[0].target,
            Some(v1::notify_target::Target::Webhook(v1::WebhookTarget {
                url: "https://hooks.example/done".into(),
                secret_ref: "main".into(),
            }))
        );
        assert!(!policy.notify_reopened);
    }

    #[test]
    fn polling_with_a_schedule_becomes_the_proto_rule() {
        let policy: v1::Policy = Policy::polling(Duration::from_millis(1500), 4)
            .schedule(DelaySchedule::Divide)
            .min_objects(3)
            .late_window(Duration::from_secs(60))
            .into();
        assert_eq!(
            policy.rule,
            Some(v1::policy::Rule::Polling(v1::PollingRule {
                delay: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000
                }),
                max_repeats: 4,
                schedule: v1::DelaySchedule::Divide as i32,
            }))
        );
        assert_eq!(policy.min_objects, 3);
        assert_eq!(policy.late_window.map(|d| d.seconds), Some(60));
        assert_eq!(policy.timeout, None);
    }

    #[test]
    fn a_schedule_does_not_turn_another_rule_into_polling() {
        let policy = Policy::quiet_period(Duration::from_secs(5)).schedule(DelaySchedule::Divide);
        assert_eq!(policy, Policy::quiet_period(Duration::from_secs(5)));
    }

    #[test]
    fn adaptive_leaves_unset_fields_to_the_server() {
        let policy: v1::Policy = Policy::adaptive(Adaptive {
            max_window: Some(Duration::from_secs(600)),
            safety_factor: Some(2.0),
            ..Adaptive::default()
        })
        .into();
        assert_eq!(
            policy.rule,
            Some(v1::policy::Rule::Adaptive(v1::AdaptiveRule {
                min_window: None,
                max_window: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0
                }),
                quantile: 0.0,
                safety_factor: 2.0,
            }))
        );
    }

    #[test]
    fn expected_count_keeps_its_quiet_window() {
        let policy: v1::Policy = Policy::expected_count(10)
            .quiet_window(Duration::from_secs(2))
            .into();
        assert_eq!(
            policy.rule,
            Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
                objects: 10,
                quiet_window: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0
                }),
            }))
        );
    }
}
