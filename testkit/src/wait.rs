//! Waiting within a bound. A state that no event announces (a record a
//! background task writes, a queue's depth, a metric) is polled with
//! [`eventually`]; an event stream is read to the event a test waits for
//! with [`read_until`] or to its end with [`read_to_end`]. Each fails the
//! test, saying what it waited for and what it saw, once its limit passes.

use std::{fmt, time::Duration};

use streamwatch_client::proto as v1;

/// The first pause between two polls of [`eventually`]; it doubles up to [`MAX_POLL_INTERVAL`].
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest pause between two polls of [`eventually`].
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What one poll of [`eventually`] saw: the awaited value, or what there
/// was instead (shown when the wait fails).
pub trait Observation {
    type Value;
    type Seen: fmt::Debug;
    fn into_result(self) -> Result<Self::Value, Self::Seen>;
}

/// What a poll that returned `None` saw.
pub struct NotYet;

impl fmt::Debug for NotYet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nothing yet")
    }
}

impl<T> Observation for Option<T> {
    type Value = T;
    type Seen = NotYet;

    fn into_result(self) -> Result<T, NotYet> {
        self.ok_or(NotYet)
    }
}

impl<T, E: fmt::Debug> Observation for Result<T, E> {
    type Value = T;
    type Seen = E;

    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// Polls until `poll` sees the state the test waits for and returns its
/// value: `Some(value)`, or `Ok(value)`; until then `None`, or `Err(seen)`.
/// Fails the test with `what` and the last thing seen once `limit` has
/// passed. Pauses between polls start at 10ms and double up to
/// [`MAX_POLL_INTERVAL`]; under `tokio::time::pause()` they take no real time.
pub async fn eventually<O: Observation>(
    what: &str,
    limit: Duration,
    mut poll: impl AsyncFnMut() -> O,
) -> O::Value {
    let deadline = tokio::time::Instant::now() + limit;
    let mut interval = FIRST_POLL_INTERVAL;
    loop {
        let seen = match poll().await.into_result() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("{what}: not within {limit:?}; last seen: {seen:?}");
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}

/// Reads a stream to its end, failing the test if it takes over `limit`.
pub async fn read_to_end(
    mut stream: tonic::Streaming<v1::WatchEvent>,
    limit: Duration,
) -> Vec<v1::WatchEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(limit, async {
        while let Some(event) = stream.message().await.expect("stream error") {
            events.push(event);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stream did not end within {limit:?}; got {events:?}"));
    events
}

/// Reads events until one matches `until` (returning it last), failing
/// after `limit` or if the stream ends first.
pub async fn read_until(
    stream: &mut tonic::Streaming<v1::WatchEvent>,
    limit: Duration,
    until: impl Fn(&v1::WatchEvent) -> bool,
) -> Vec<v1::WatchEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(limit, async {
        while let Some(event) = stream.message().await.expect("stream error") {
            let done = until(&event);
            events.push(event);
            if done {
                return;
            }
        }
        panic!("stream ended before the expected event");
    })
    .await
    .unwrap_or_else(|_| panic!("no expected event within {limit:?}"));
    events
}
