//! What the CLI prints: the JSON shapes (`-o json`, one object per line,
//! stable snake_case fields, a `type` field saying which shape) and the plain
//! human lines for watches, events and ingest reports. Nothing here talks to
//! the server.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use streamwatch_client::proto::{self as v1, WatchState, policy::Rule, watch_event::Kind};

use super::Format;

/// A watch, as `get`, `start`, `cancel`, `list` and `wait` print it.
#[derive(Debug, Serialize)]
pub struct WatchJson {
    #[serde(rename = "type")]
    pub shape: &'static str,
    pub watch_id: String,
    pub bucket: String,
    pub prefix: String,
    /// A watch group's members.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    pub state: &'static str,
    pub generation: u32,
    pub object_count: u64,
    pub object_bytes: u64,
    pub event_count: u64,
    pub removed_count: u64,
    pub last_seq: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    pub reason: String,
    pub labels: BTreeMap<String, String>,
    pub policy: PolicyJson,
    pub created_at: Option<String>,
    pub last_activity_at: Option<String>,
    pub completed_at: Option<String>,
    /// Only from `start`: false when the client token matched an existing watch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// Only from `get`: the watch's callback deliveries, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<String>,
}

/// A watch's policy; durations in whole milliseconds.
#[derive(Debug, Serialize)]
pub struct PolicyJson {
    /// `quiet_period`, `expected_count`, `polling`, `adaptive`, `marker`, or `default`.
    pub rule: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_objects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_repeats: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marker_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_manifest: Option<bool>,
    pub min_objects: u64,
    pub timeout_ms: Option<u64>,
    pub late_window_ms: Option<u64>,
}

/// One event of a watch, as `events` (and `wait`, `start --wait`) print it.
#[derive(Debug, Serialize)]
pub struct EventJson {
    #[serde(rename = "type")]
    pub shape: &'static str,
    pub watch_id: String,
    pub seq: u64,
    pub time: Option<String>,
    pub generation: u32,
    /// `started`, `progress`, `quiet_tick`, `completed`, `timed_out`, `cancelled`, `reopened`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_repeats: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One object of a watch's manifest, as `objects` prints it.
#[derive(Debug, Serialize)]
pub struct ObjectJson {
    #[serde(rename = "type")]
    pub shape: &'static str,
    pub key: String,
    pub size: u64,
    pub sequencer: String,
    pub event_time: Option<String>,
    pub generation: u32,
    pub removed: bool,
}

impl ObjectJson {
    pub fn new(o: &v1::WatchObject) -> Self {
        Self {
            shape: "object",
            key: o.key.clone(),
            size: o.size,
            sequencer: o.sequencer.clone(),
            event_time: timestamp(o.event_time.as_ref()),
            generation: o.generation,
            removed: o.removed,
        }
    }
}

/// What `ingest` sent and what the server made of it, over all batches.
#[derive(Debug, Default, Serialize)]
pub struct IngestJson {
    #[serde(rename = "type")]
    pub shape: &'static str,
    pub documents: u64,
    pub requests: u64,
    pub records: u64,
    pub matched: u64,
    pub counted: u64,
    pub duplicates: u64,
    pub ignored: u64,
    pub rejected: Vec<RejectedJson>,
}

#[derive(Debug, Serialize)]
pub struct RejectedJson {
    /// Position among all the documents read, from 0.
    pub index: u64,
    pub reason: String,
}

pub fn state_name(state: WatchState) -> &'static str {
    match state {
        WatchState::Unspecified => "unspecified",
        WatchState::Active => "active",
        WatchState::Completed => "completed",
        WatchState::TimedOut => "timed_out",
        WatchState::Cancelled => "cancelled",
        WatchState::Failed => "failed",
    }
}

pub fn system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(t.nanos).ok()?;
    let since_epoch = Duration::new(u64::try_from(t.seconds).ok()?, nanos);
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(system_time).map(rfc3339)
}

/// `HH:MM:SS.mmm` (UTC) of a timestamp, for human lines.
pub fn clock(t: SystemTime) -> String {
    let full = rfc3339(t);
    full.get(11..23).map(str::to_owned).unwrap_or(full)
}

pub fn millis(d: Option<&prost_types::Duration>) -> Option<u64> {
    d.and_then(|d| {
        let secs = u64::try_from(d.seconds).ok()?;
        Some(secs * 1000 + u64::try_from(d.nanos).ok()? / 1_000_000)
    })
}

pub fn std_duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    millis(d).map(Duration::from_millis)
}

/// `90s`, `1m 30s`, `1.5s`: a duration for a human.
pub fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(10) && d.subsec_millis() != 0 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// `bucket/prefix`, or a watch group's `group of N: id, id`.
fn source_text(w: &v1::Watch) -> String {
    if w.members.is_empty() {
        format!("{}/{}", w.bucket, w.prefix)
    } else {
        format!("group of {}: {}", w.members.len(), w.members.join(", "))
    }
}

impl WatchJson {
    pub fn new(watch: &v1::Watch, created: Option<bool>) -> Self {
        Self {
            shape: "watch",
            watch_id: watch.watch_id.clone(),
            bucket: watch.bucket.clone(),
            prefix: watch.prefix.clone(),
            members: watch.members.clone(),
            state: state_name(watch.state()),
            generation: watch.generation,
            object_count: watch.object_count,
            object_bytes: watch.object_bytes,
            event_count: watch.event_count,
            removed_count: watch.removed_count,
            last_seq: watch.last_seq,
            include: watch.include.clone(),
            exclude: watch.exclude.clone(),
            reason: watch.reason.clone(),
            labels: watch.labels.clone().into_iter().collect(),
            policy: PolicyJson::new(watch.policy.as_ref()),
            created_at: timestamp(watch.created_at.as_ref()),
            last_activity_at: timestamp(watch.last_activity_at.as_ref()),
            completed_at: timestamp(watch.completed_at.as_ref()),
            created,
            deliveries: watch.deliveries.iter().map(delivery_text).collect(),
        }
    }
}

impl PolicyJson {
    fn new(policy: Option<&v1::Policy>) -> Self {
        let default = v1::Policy::default();
        let policy = policy.unwrap_or(&default);
        let mut json = Self {
            rule: "default",
            window_ms: None,
            expected_objects: None,
            quiet_window_ms: None,
            delay_ms: None,
            max_repeats: None,
            schedule: None,
            min_window_ms: None,
            max_window_ms: None,
            quantile: None,
            safety_factor: None,
            marker_key: None,
            verify_manifest: None,
            min_objects: policy.min_objects,
            timeout_ms: millis(policy.timeout.as_ref()),
            late_window_ms: millis(policy.late_window.as_ref()),
        };
        match &policy.rule {
            Some(Rule::QuietPeriod(rule)) => {
                json.rule = "quiet_period";
                json.window_ms = millis(rule.window.as_ref());
            }
            Some(Rule::ExpectedCount(rule)) => {
                json.rule = "expected_count";
                json.expected_objects = Some(rule.objects);
                json.quiet_window_ms = millis(rule.quiet_window.as_ref());
            }
            Some(Rule::Polling(rule)) => {
                json.rule = "polling";
                json.delay_ms = millis(rule.delay.as_ref());
                json.max_repeats = Some(rule.max_repeats);
                json.schedule = Some(match rule.schedule() {
                    v1::DelaySchedule::Divide => "divide",
                    v1::DelaySchedule::Exponential => "exponential",
                    v1::DelaySchedule::Fixed | v1::DelaySchedule::Unspecified => "fixed",
                });
            }
            Some(Rule::Adaptive(rule)) => {
                json.rule = "adaptive";
                json.min_window_ms = millis(rule.min_window.as_ref());
                json.max_window_ms = millis(rule.max_window.as_ref());
                json.quantile = Some(rule.quantile);
                json.safety_factor = Some(rule.safety_factor);
            }
            Some(Rule::Marker(rule)) => {
                json.rule = "marker";
                json.marker_key = Some(rule.key.clone());
                json.quiet_window_ms = millis(rule.quiet_window.as_ref());
                json.verify_manifest = Some(rule.verify_manifest);
            }
            None => {}
        }
        json
    }
}

impl EventJson {
    pub fn new(event: &v1::WatchEvent) -> Self {
        let mut json = Self {
            shape: "event",
            watch_id: event.watch_id.clone(),
            seq: event.seq,
            time: timestamp(event.time.as_ref()),
            generation: event.generation,
            kind: event.kind_name(),
            object_count: None,
            object_bytes: None,
            event_count: None,
            removed_count: None,
            last_activity_at: None,
            repeated: None,
            max_repeats: None,
            reason: None,
        };
        match &event.kind {
            Some(Kind::Started(started)) => {
                json.object_count = started.watch.as_ref().map(|w| w.object_count);
            }
            Some(Kind::Progress(p)) => {
                json.object_count = Some(p.object_count);
                json.object_bytes = Some(p.object_bytes);
                json.event_count = Some(p.event_count);
                json.removed_count = Some(p.removed_count);
                json.last_activity_at = timestamp(p.last_activity_at.as_ref());
            }
            Some(Kind::QuietTick(t)) => {
                json.object_count = Some(t.object_count);
                json.repeated = Some(t.repeated);
                json.max_repeats = Some(t.max_repeats);
            }
            Some(Kind::Completed(c)) => {
                json.object_count = Some(c.object_count);
                json.object_bytes = Some(c.object_bytes);
                json.reason = Some(c.reason.clone());
            }
            Some(Kind::TimedOut(t)) => {
                json.object_count = Some(t.object_count);
                json.reason = Some(t.reason.clone());
            }
            Some(Kind::Cancelled(c)) => json.reason = Some(c.reason.clone()),
            Some(Kind::Reopened(r)) => {
                json.object_count = Some(r.object_count);
                json.reason = Some(r.reason.clone());
            }
            Some(Kind::DeliveryFailed(d)) => json.reason = Some(d.last_error.clone()),
            None => {}
        }
        json
    }
}

/// `#2 to target 0: DELIVERED after 3 attempts (HTTP 200)`.
fn delivery_text(d: &v1::Delivery) -> String {
    let state = match v1::DeliveryState::try_from(d.state) {
        Ok(v1::DeliveryState::Pending) => "PENDING",
        Ok(v1::DeliveryState::Delivered) => "DELIVERED",
        Ok(v1::DeliveryState::Failed) => "FAILED",
        _ => "UNKNOWN",
    };
    let mut text = format!(
        "#{} to target {}: {state} after {} attempts",
        d.seq, d.target, d.attempts
    );
    if !d.last_error.is_empty() {
        text += &format!(" ({})", d.last_error);
    } else if !d.last_status.is_empty() {
        text += &format!(" ({})", d.last_status);
    }
    text
}

/// One line for an event: `[10:00:01.250] #2 progress  objects 1 (1 notifications, 0 removed)`.
pub fn event_line(event: &v1::WatchEvent) -> String {
    let time = event
        .time
        .as_ref()
        .and_then(system_time)
        .map(clock)
        .unwrap_or_default();
    let detail = match &event.kind {
        Some(Kind::Started(s)) => s
            .watch
            .as_ref()
            .map(|w| format!("{} ({})", source_text(w), policy_text(w.policy.as_ref())))
            .unwrap_or_default(),
        Some(Kind::Progress(p)) => format!(
            "objects {} ({} notifications, {} removed)",
            p.object_count, p.event_count, p.removed_count
        ),
        Some(Kind::QuietTick(t)) => format!(
            "objects {}, unchanged {}/{}",
            t.object_count, t.repeated, t.max_repeats
        ),
        Some(Kind::Completed(c)) => format!("objects {}: {}", c.object_count, c.reason),
        Some(Kind::TimedOut(t)) => format!("objects {}: {}", t.object_count, t.reason),
        Some(Kind::Cancelled(c)) => c.reason.clone(),
        Some(Kind::Reopened(r)) => format!("objects {}: {}", r.object_count, r.reason),
        Some(Kind::DeliveryFailed(d)) => format!(
            "event #{} to target {} after {} attempts: {}",
            d.seq, d.target, d.attempts, d.last_error
        ),
        None => String::new(),
    };
    let kind = event.kind_name();
    format!("[{time}] #{} {kind:<10} {detail}", event.seq)
        .trim_end()
        .to_owned()
}

/// `quiet period 2s, timeout 1h`: a policy for a human.
pub fn policy_text(policy: Option<&v1::Policy>) -> String {
    let Some(policy) = policy else {
        return "default policy".to_owned();
    };
    let d = |d: Option<&prost_types::Duration>| {
        std_duration(d)
            .map(human_duration)
            .unwrap_or_else(|| "?".into())
    };
    let mut parts = vec![match &policy.rule {
        Some(Rule::QuietPeriod(r)) => format!("quiet period {}", d(r.window.as_ref())),
        Some(Rule::ExpectedCount(r)) => match &r.quiet_window {
            Some(w) => format!("expect {} objects, or quiet {}", r.objects, d(Some(w))),
            None => format!("expect {} objects", r.objects),
        },
        Some(Rule::Polling(r)) => format!(
            "poll every {} until {} unchanged ({})",
            d(r.delay.as_ref()),
            r.max_repeats,
            PolicyJson::new(Some(policy)).schedule.unwrap_or("fixed")
        ),
        Some(Rule::Adaptive(r)) => format!(
            "adaptive quiet {}-{} ({} x p{} gap)",
            d(r.min_window.as_ref()),
            d(r.max_window.as_ref()),
            r.safety_factor,
            (r.quantile * 1000.0).round() / 10.0
        ),
        Some(Rule::Marker(r)) => {
            let mut text = format!("marker {}", r.key);
            if r.verify_manifest {
                text.push_str(" with its manifest verified");
            }
            if let Some(w) = &r.quiet_window {
                text.push_str(&format!(", then quiet {}", d(Some(w))));
            }
            text
        }
        None => "default rule".to_owned(),
    }];
    if policy.min_objects > 0 {
        parts.push(format!("at least {} objects", policy.min_objects));
    }
    if policy.timeout.is_some() {
        parts.push(format!("timeout {}", d(policy.timeout.as_ref())));
    }
    if policy.late_window.is_some() {
        parts.push(format!("late window {}", d(policy.late_window.as_ref())));
    }
    parts.join(", ")
}

/// Prints in the chosen format to stdout.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    pub format: Format,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    pub fn json(&self, value: &impl Serialize) -> io::Result<()> {
        let mut out = io::stdout().lock();
        serde_json::to_writer(&mut out, value)?;
        writeln!(out)
    }

    pub fn line(&self, text: &str) -> io::Result<()> {
        writeln!(io::stdout().lock(), "{text}")
    }

    pub fn watch(&self, watch: &v1::Watch, created: Option<bool>) -> io::Result<()> {
        if self.format == Format::Json {
            return self.json(&WatchJson::new(watch, created));
        }
        let stamp = |t: Option<&prost_types::Timestamp>| {
            t.and_then(system_time)
                .map(rfc3339)
                .unwrap_or_else(|| "-".into())
        };
        let mut text = format!(
            "watch {}{}\n  state          {} (generation {})\n  watching       {}\n  policy         {}\n  objects        {} ({} bytes; {} notifications, {} removed)\n  created        {}\n  last activity  {}\n",
            watch.watch_id,
            if created == Some(false) {
                " (already started with this client token)"
            } else {
                ""
            },
            state_name(watch.state()).to_uppercase(),
            watch.generation,
            source_text(watch),
            policy_text(watch.policy.as_ref()),
            watch.object_count,
            watch.object_bytes,
            watch.event_count,
            watch.removed_count,
            stamp(watch.created_at.as_ref()),
            stamp(watch.last_activity_at.as_ref()),
        );
        if !watch.include.is_empty() || !watch.exclude.is_empty() {
            text += &format!(
                "  keys           include [{}] exclude [{}]\n",
                watch.include.join(", "),
                watch.exclude.join(", ")
            );
        }
        if watch.completed_at.is_some() {
            text += &format!("  ended          {}\n", stamp(watch.completed_at.as_ref()));
        }
        if !watch.reason.is_empty() {
            text += &format!("  reason         {}\n", watch.reason);
        }
        if !watch.labels.is_empty() {
            let labels: BTreeMap<_, _> = watch.labels.iter().collect();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            text += &format!("  labels         {}\n", labels.join(" "));
        }
        for d in &watch.deliveries {
            text += &format!("  delivery       {}\n", delivery_text(d));
        }
        write!(io::stdout().lock(), "{text}")
    }

    /// A page of a manifest: one JSON object per object, or one line each
    /// (key, size, event time, generation, `removed`).
    pub fn objects(&self, objects: &[v1::WatchObject]) -> io::Result<()> {
        if self.format == Format::Json {
            return objects
                .iter()
                .try_for_each(|o| self.json(&ObjectJson::new(o)));
        }
        let mut out = io::stdout().lock();
        for o in objects {
            writeln!(
                out,
                "{}\t{}\t{}\t{}{}",
                o.key,
                o.size,
                timestamp(o.event_time.as_ref()).unwrap_or_else(|| "-".into()),
                o.generation,
                if o.removed { "\tremoved" } else { "" }
            )?;
        }
        Ok(())
    }

    pub fn watch_list(&self, watches: &[v1::Watch]) -> io::Result<()> {
        if self.format == Format::Json {
            return watches
                .iter()
                .try_for_each(|w| self.json(&WatchJson::new(w, None)));
        }
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "{:<36}  {:<9}  {:>8}  {:<24}  WATCHING",
            "WATCH", "STATE", "OBJECTS", "CREATED"
        )?;
        for w in watches {
            let created = w
                .created_at
                .as_ref()
                .and_then(system_time)
                .map(rfc3339)
                .unwrap_or_default();
            writeln!(
                out,
                "{:<36}  {:<9}  {:>8}  {:<24}  {}",
                w.watch_id,
                state_name(w.state()),
                w.object_count,
                created,
                source_text(w)
            )?;
        }
        Ok(())
    }

    /// How a followed watch ended: the watch in JSON, one line for a human.
    pub fn end_state(&self, watch: &v1::Watch) -> io::Result<()> {
        if self.format == Format::Json {
            return self.json(&WatchJson::new(watch, None));
        }
        self.line(&format!(
            "{} {}: {} objects; {}",
            watch.watch_id,
            state_name(watch.state()).to_uppercase(),
            watch.object_count,
            if watch.reason.is_empty() {
                "-"
            } else {
                &watch.reason
            }
        ))
    }

    pub fn ingest_report(&self, report: &IngestJson) -> io::Result<()> {
        if self.format == Format::Json {
            return self.json(report);
        }
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "sent {} documents in {} requests: {} records, {} matched a watch, {} counted, {} duplicates, {} ignored, {} rejected",
            report.documents,
            report.requests,
            report.records,
            report.matched,
            report.counted,
            report.duplicates,
            report.ignored,
            report.rejected.len()
        )?;
        for rejected in &report.rejected {
            writeln!(
                out,
                "  document {} rejected: {}",
                rejected.index, rejected.reason
            )?;
        }
        Ok(())
    }
}
