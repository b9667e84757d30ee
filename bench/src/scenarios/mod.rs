//! The scenarios, one module each, and what they share: starting
//! quiet-period watches and following them to completion (notification
//! documents come from the test kit).

pub mod completion;
pub mod fanout;
pub mod ingest;
pub mod rpc;
pub mod watches;

use std::time::Duration;

use anyhow::Context;
use streamwatch::v1::{self as v1, watch_service_client::WatchServiceClient};
use tonic::transport::Channel;

/// Starts a quiet-period watch that waits for at least one object (so its
/// window runs from its last activity, never from its start); returns its id.
pub async fn start_watch(
    client: &mut WatchServiceClient<Channel>,
    bucket: &str,
    prefix: &str,
    quiet: Duration,
) -> anyhow::Result<String> {
    let response = client
        .start_watch(v1::StartWatchRequest {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            policy: Some(v1::Policy {
                rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
                    window: Some(prost_types::Duration {
                        seconds: quiet.as_secs() as i64,
                        nanos: quiet.subsec_nanos() as i32,
                    }),
                })),
                min_objects: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.watch.context("no watch in the answer")?.watch_id)
}

/// Milliseconds since the Unix epoch of a protobuf timestamp.
pub fn millis(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 * 1000.0 + f64::from(t.nanos) / 1e6
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

/// What a subscriber saw of one watch's first completion.
pub struct Completion {
    /// When the subscriber received COMPLETED (ms since the epoch, this clock).
    pub received_ms: f64,
    /// When the server decided (the event's time).
    pub decided_ms: f64,
    /// The last activity the server counted before completing.
    pub last_activity_ms: f64,
}

/// Follows `watch_id` from its first event; says when it has caught up
/// (STARTED received) on `ready`, and returns its COMPLETED.
pub async fn follow(
    channel: Channel,
    watch_id: String,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Completion> {
    use v1::watch_event::Kind;
    let mut client = WatchServiceClient::new(channel);
    let mut events = client
        .stream_watch_events(v1::StreamWatchEventsRequest {
            watch_id,
            after_seq: 0,
        })
        .await?
        .into_inner();
    let mut last_activity_ms = None;
    while let Some(event) = events.message().await? {
        match event.kind {
            Some(Kind::Started(_)) => {
                let _ = ready.send(()).await;
            }
            Some(Kind::Progress(p)) => {
                last_activity_ms = p.last_activity_at.as_ref().map(millis);
            }
            Some(Kind::Completed(_)) => {
                return Ok(Completion {
                    received_ms: now_millis(),
                    decided_ms: event.time.as_ref().map(millis).context("no time")?,
                    last_activity_ms: last_activity_ms.context("COMPLETED before any PROGRESS")?,
                });
            }
            Some(other) => anyhow::bail!("unexpected event {other:?}"),
            None => anyhow::bail!("an event without a kind"),
        }
    }
    anyhow::bail!("the stream ended before COMPLETED")
}

/// Delivery delays after the quiet window (ms, sorted) and how many
/// completions the server decided before the window had passed.
pub fn delays(completions: &[Completion], window: Duration) -> (Vec<f64>, usize) {
    let window_ms = window.as_secs_f64() * 1000.0;
    let mut delays: Vec<f64> = completions
        .iter()
        .map(|c| c.received_ms - (c.last_activity_ms + window_ms))
        .collect();
    delays.sort_by(f64::total_cmp);
    let early = completions
        .iter()
        .filter(|c| c.decided_ms < c.last_activity_ms + window_ms)
        .count();
    (delays, early)
}
