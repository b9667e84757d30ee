//! The scenarios, one module each, and what they share: starting
//! quiet-period watches and writing S3 notification documents as S3 sends
//! them.

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

/// One `ObjectCreated:Put` notification document, shaped as S3 delivers it
/// to SQS (one record per message).
pub fn object_created(bucket: &str, key: &str, sequencer: u64) -> String {
    serde_json::json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2026-11-26T12:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
            "requestParameters": {"sourceIPAddress": "10.0.0.1"},
            "responseElements": {
                "x-amz-request-id": "C3D13FE58DE4C810",
                "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "streamwatch",
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                    "arn": format!("arn:aws:s3:::{bucket}")
                },
                "object": {
                    "key": key,
                    "size": 1024,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "sequencer": format!("{sequencer:016X}")
                }
            }
        }]
    })
    .to_string()
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
