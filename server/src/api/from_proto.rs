//! Requests to domain values: every protobuf field a call carries becomes a
//! typed value ([`Policy`], [`StartWatch`], a [`WatchId`], a replay's
//! objects), or the call fails with INVALID_ARGUMENT naming the field.
//!
//! It only converts and checks shapes and bounds: it must never read the
//! store, ask the tenants table, or decide anything about a watch.

use std::time::Duration;

use streamwatch::v1;

use crate::{
    clock::Timestamp,
    error::Error,
    ingest::MAX_KEY_BYTES,
    service::StartWatch,
    telemetry,
    watch::{
        self, Bucket, DelaySchedule, KeyFilter, MAX_CLIENT_TOKEN_BYTES, Notify, NotifyTarget,
        Policy, Prefix, Rule, Source, TraceContext, WatchId,
    },
};

/// Parses the request's watch id and names it on the call's span.
pub(super) fn watch_id(raw: &str) -> Result<WatchId, Error> {
    let id = WatchId::parse("watch_id", raw)?;
    telemetry::record_watch(id.as_str());
    Ok(id)
}

fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>, Error> {
    duration_in(field, d, crate::watch::policy::MIN_DURATION, max)
}

fn duration_in(
    field: &str,
    d: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, Error> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "nanos must be below 1e9"));
    }
    let seconds = u64::try_from(d.seconds).unwrap_or(u64::MAX);
    let std = Duration::new(
        seconds.min(max.as_secs() + 1),
        u32::try_from(d.nanos).unwrap_or(0),
    );
    crate::watch::policy::check_duration_in(field, std, min, max).map(Some)
}

fn required(
    field: &str,
    d: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    duration_in(field, d, min, max)?.ok_or_else(|| Error::invalid(field, "is required"))
}

/// Parses a protobuf policy; an absent policy is the default quiet period.
pub fn policy_from_proto(p: Option<&v1::Policy>) -> Result<Policy, Error> {
    let Some(p) = p else {
        return Ok(Policy::default());
    };
    let rule = match &p.rule {
        None => Policy::default().rule,
        Some(v1::policy::Rule::Polling(r)) => {
            let schedule = match v1::DelaySchedule::try_from(r.schedule) {
                Ok(v1::DelaySchedule::Unspecified | v1::DelaySchedule::Fixed) => {
                    DelaySchedule::Fixed
                }
                Ok(v1::DelaySchedule::Divide) => DelaySchedule::Divide,
                Ok(v1::DelaySchedule::Exponential) => DelaySchedule::Exponential,
                Err(_) => {
                    return Err(Error::invalid(
                        "policy.polling.schedule",
                        format!("unknown value {}", r.schedule),
                    ));
                }
            };
            Rule::Polling {
                delay: required(
                    "policy.polling.delay",
                    r.delay.as_ref(),
                    crate::watch::policy::MIN_POLLING_DELAY,
                    crate::watch::policy::MAX_WINDOW,
                )?,
                max_repeats: r.max_repeats,
                schedule,
            }
        }
        Some(v1::policy::Rule::QuietPeriod(r)) => Rule::QuietPeriod {
            window: required(
                "policy.quiet_period.window",
                r.window.as_ref(),
                crate::watch::policy::MIN_DURATION,
                crate::watch::policy::MAX_WINDOW,
            )?,
        },
        Some(v1::policy::Rule::ExpectedCount(r)) => Rule::ExpectedCount {
            objects: r.objects,
            quiet_window: duration(
                "policy.expected_count.quiet_window",
                r.quiet_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?,
        },
        Some(v1::policy::Rule::Adaptive(r)) => Rule::Adaptive {
            min_window: duration(
                "policy.adaptive.min_window",
                r.min_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?
            // A listing confirms what late notifications have not told yet:
            // the floor need not cover their delay.
            .unwrap_or(if p.reconcile {
                crate::watch::policy::DEFAULT_ADAPTIVE_CONFIRMED_MIN_WINDOW
            } else {
                crate::watch::policy::DEFAULT_ADAPTIVE_MIN_WINDOW
            }),
            max_window: duration(
                "policy.adaptive.max_window",
                r.max_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?
            .unwrap_or(crate::watch::policy::DEFAULT_ADAPTIVE_MAX_WINDOW),
            // Unset proto3 doubles read as 0, which no valid setting is.
            quantile: if r.quantile == 0.0 {
                crate::watch::policy::DEFAULT_ADAPTIVE_QUANTILE
            } else {
                r.quantile
            },
            safety_factor: if r.safety_factor != 0.0 {
                r.safety_factor
            } else if p.reconcile {
                crate::watch::policy::DEFAULT_ADAPTIVE_CONFIRMED_SAFETY_FACTOR
            } else {
                crate::watch::policy::DEFAULT_ADAPTIVE_SAFETY_FACTOR
            },
        },
        Some(v1::policy::Rule::Marker(r)) => Rule::Marker {
            key: r.key.clone(),
            quiet_window: duration(
                "policy.marker.quiet_window",
                r.quiet_window.as_ref(),
                crate::watch::policy::MAX_WINDOW,
            )?,
            verify_manifest: r.verify_manifest,
        },
    };
    if p.notify.len() > MAX_NOTIFY_TARGETS {
        return Err(Error::invalid(
            "policy.notify",
            format!(
                "has {} targets; at most {MAX_NOTIFY_TARGETS}",
                p.notify.len()
            ),
        ));
    }
    let targets = p
        .notify
        .iter()
        .enumerate()
        .map(|(i, t)| notify_target_from_proto(&format!("policy.notify[{i}]"), t))
        .collect::<Result<_, _>>()?;
    let policy = Policy {
        rule,
        notify: Notify {
            targets,
            reopened: p.notify_reopened,
        },
        min_objects: p.min_objects,
        timeout: duration(
            "policy.timeout",
            p.timeout.as_ref(),
            crate::watch::policy::MAX_TIMEOUT,
        )?,
        late_window: duration(
            "policy.late_window",
            p.late_window.as_ref(),
            crate::watch::policy::MAX_WINDOW,
        )?,
        reconcile: p.reconcile,
    };
    policy.validate()?;
    Ok(policy)
}

/// Most notify targets one watch may name.
pub const MAX_NOTIFY_TARGETS: usize = 8;
/// Longest webhook URL, queue URL or topic ARN accepted.
pub const MAX_TARGET_BYTES: usize = 2048;

fn required_text(field: &str, value: &str) -> Result<String, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.len() > MAX_TARGET_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; at most {MAX_TARGET_BYTES}", value.len()),
        ));
    }
    Ok(value.to_owned())
}

fn notify_target_from_proto(field: &str, t: &v1::NotifyTarget) -> Result<NotifyTarget, Error> {
    use v1::notify_target::Target;
    match &t.target {
        None => Err(Error::invalid(
            field,
            "names no target (webhook, sqs, sns or manifest)",
        )),
        Some(Target::Webhook(w)) => {
            let url_field = format!("{field}.webhook.url");
            let url = required_text(&url_field, &w.url)?;
            let parsed =
                url::Url::parse(&url).map_err(|e| Error::invalid(&url_field, e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::invalid(&url_field, "must be an http or https URL"));
            }
            if parsed.host().is_none() {
                return Err(Error::invalid(&url_field, "has no host"));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(Error::invalid(
                    &url_field,
                    "must not carry credentials; webhooks are signed with a callback secret",
                ));
            }
            Ok(NotifyTarget::Webhook {
                url,
                secret_ref: required_text(&format!("{field}.webhook.secret_ref"), &w.secret_ref)?,
            })
        }
        Some(Target::Sqs(q)) => Ok(NotifyTarget::Sqs {
            queue_url: required_text(&format!("{field}.sqs.queue_url"), &q.queue_url)?,
        }),
        Some(Target::Sns(n)) => Ok(NotifyTarget::Sns {
            topic_arn: required_text(&format!("{field}.sns.topic_arn"), &n.topic_arn)?,
        }),
        Some(Target::Manifest(m)) => {
            let bucket = Bucket::parse(&format!("{field}.manifest.bucket"), &m.bucket)?;
            let key_field = format!("{field}.manifest.key");
            if m.key.is_empty() {
                return Err(Error::invalid(&key_field, "is required"));
            }
            if m.key.len() > MAX_KEY_BYTES {
                return Err(Error::invalid(
                    &key_field,
                    format!("is {} bytes; at most {MAX_KEY_BYTES}", m.key.len()),
                ));
            }
            if m.key.chars().any(char::is_control) {
                return Err(Error::invalid(
                    &key_field,
                    "must not contain control characters",
                ));
            }
            Ok(NotifyTarget::Manifest {
                bucket,
                key: m.key.clone(),
            })
        }
    }
}

/// A request timestamp, checked: years 1970-9999, nanos below 1e9.
fn timestamp(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<Timestamp>, Error> {
    let Some(t) = t else { return Ok(None) };
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(0..=MAX_SECONDS).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(
            field,
            "must be a time between 1970 and 9999",
        ));
    }
    Ok(Some(Timestamp::from_millis(
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
    )))
}

/// What a ReplayWatch replays: the caller's watch, or the objects it gives.
pub(super) fn replay_source(
    r: &v1::ReplayWatchRequest,
) -> Result<crate::service::ReplaySource, Error> {
    match (r.watch_id.is_empty(), r.objects.is_empty()) {
        (false, false) => Err(Error::invalid(
            "objects",
            "give a watch_id or objects, not both",
        )),
        (true, true) => Err(Error::invalid("watch_id", "is required (or give objects)")),
        (false, true) => Ok(crate::service::ReplaySource::Watch(watch_id(&r.watch_id)?)),
        (true, false) => {
            if r.objects.len() > crate::service::MAX_REPLAY_OBJECTS {
                return Err(Error::invalid(
                    "objects",
                    format!(
                        "has {} objects; at most {}",
                        r.objects.len(),
                        crate::service::MAX_REPLAY_OBJECTS
                    ),
                ));
            }
            let objects = r
                .objects
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let created = timestamp(&format!("objects[{i}].created"), o.created.as_ref())?
                        .ok_or_else(|| {
                            Error::invalid(&format!("objects[{i}].created"), "is required")
                        })?;
                    let arrived = timestamp(&format!("objects[{i}].arrived"), o.arrived.as_ref())?
                        .unwrap_or(created);
                    if arrived < created {
                        return Err(Error::invalid(
                            &format!("objects[{i}].arrived"),
                            "is before the object was created",
                        ));
                    }
                    Ok((created, arrived))
                })
                .collect::<Result<_, Error>>()?;
            Ok(crate::service::ReplaySource::Objects(objects))
        }
    }
}

/// Parses a StartWatch request made under `trace`.
pub fn start_from_proto(
    r: &v1::StartWatchRequest,
    trace: TraceContext,
) -> Result<StartWatch, Error> {
    let labels: watch::Labels = r.labels.clone().into_iter().collect();
    watch::validate_labels("labels", &labels)?;
    if r.client_token.len() > MAX_CLIENT_TOKEN_BYTES {
        return Err(Error::invalid(
            "client_token",
            format!("must be at most {MAX_CLIENT_TOKEN_BYTES} bytes"),
        ));
    }
    let (source, policy) = if r.members.is_empty() {
        let source = Source::objects(
            Bucket::parse("bucket", &r.bucket)?,
            Prefix::parse("prefix", &r.prefix)?,
            KeyFilter::parse(r.include.clone(), r.exclude.clone())?,
        );
        (source, policy_from_proto(r.policy.as_ref())?)
    } else {
        group_from_proto(r)?
    };
    Ok(StartWatch {
        source,
        policy,
        labels,
        client_token: (!r.client_token.is_empty()).then(|| r.client_token.clone()),
        trace,
    })
}

/// Parses the members and policy of a StartWatch that starts a watch group.
fn group_from_proto(r: &v1::StartWatchRequest) -> Result<(Source, Policy), Error> {
    const NOT_FOR_GROUPS: &str = "a watch group (members) is decided by its members: it takes none";
    let given = [
        ("bucket", !r.bucket.is_empty()),
        ("prefix", !r.prefix.is_empty()),
        ("include", !r.include.is_empty()),
        ("exclude", !r.exclude.is_empty()),
    ];
    if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
        return Err(Error::invalid(field, NOT_FOR_GROUPS));
    }
    if let Some(p) = &r.policy {
        let rule = match &p.rule {
            None => None,
            Some(v1::policy::Rule::Polling(_)) => Some("policy.polling"),
            Some(v1::policy::Rule::QuietPeriod(_)) => Some("policy.quiet_period"),
            Some(v1::policy::Rule::ExpectedCount(_)) => Some("policy.expected_count"),
            Some(v1::policy::Rule::Adaptive(_)) => Some("policy.adaptive"),
            Some(v1::policy::Rule::Marker(_)) => Some("policy.marker"),
        };
        let given = [
            (rule.unwrap_or_default(), rule.is_some()),
            ("policy.min_objects", p.min_objects != 0),
            ("policy.reconcile", p.reconcile),
        ];
        if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
            return Err(Error::invalid(field, NOT_FOR_GROUPS));
        }
    }
    if r.members.len() > watch::MAX_GROUP_MEMBERS {
        return Err(Error::invalid(
            "members",
            format!(
                "has {} watches; at most {}",
                r.members.len(),
                watch::MAX_GROUP_MEMBERS
            ),
        ));
    }
    let mut members: Vec<WatchId> = Vec::with_capacity(r.members.len());
    for (i, raw) in r.members.iter().enumerate() {
        let field = format!("members[{i}]");
        let id = WatchId::parse(&field, raw)?;
        if let Some(j) = members.iter().position(|m| *m == id) {
            return Err(Error::invalid(&field, format!("repeats members[{j}]")));
        }
        members.push(id);
    }
    Ok((
        Source::Members { members },
        policy_from_proto(r.policy.as_ref())?,
    ))
}

pub(super) fn objects_after(token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token this call returned");
    let bytes = hex::decode(token).map_err(|_| bad())?;
    if bytes.is_empty() || bytes.len() > crate::ingest::MAX_KEY_BYTES {
        return Err(bad());
    }
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}
