//! Watches as tests start and check them: policies and StartWatch requests
//! built in the protocol's terms, a start the server must accept, and the
//! readable forms of events that assertions compare.

use std::time::Duration;

use streamwatch_client::{Client, proto as v1};

/// A quiet-period policy of `window`, nothing else set.
pub fn quiet_period(window: Duration) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
            window: Some(duration(window)),
        })),
        ..Default::default()
    }
}

/// `d` as a protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A StartWatch request of `bucket`/`prefix` under `policy`.
pub fn start_request(bucket: &str, prefix: &str, policy: v1::Policy) -> v1::StartWatchRequest {
    v1::StartWatchRequest {
        bucket: bucket.into(),
        prefix: prefix.into(),
        policy: Some(policy),
        ..Default::default()
    }
}

/// Starts a watch the server must accept (a protobuf request or the
/// client's `WatchRequest`), and returns it.
pub async fn begin(client: &mut Client, request: impl Into<v1::StartWatchRequest>) -> v1::Watch {
    let response = client.start_watch(request).await.expect("StartWatch");
    response.watch.expect("StartWatch returns the watch")
}

/// The name of an event's kind, for readable assertions.
pub fn kind(event: &v1::WatchEvent) -> &'static str {
    event.kind_name()
}

/// The names of the events' kinds, in order.
pub fn kinds(events: &[v1::WatchEvent]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}

/// Asserts `seq` runs from `first` upwards without gaps.
pub fn assert_gapless(events: &[v1::WatchEvent], first: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (first..first + events.len() as u64).collect();
    assert_eq!(seqs, expected, "event seqs must run without gaps");
}
