//! Following a watch's events: [`EventStream`] opens StreamWatchEvents and,
//! when the stream breaks (UNAVAILABLE, a reset connection, a server
//! restart), reopens it with `after_seq` = the last `seq` delivered, waiting
//! by [`Backoff`] between attempts. It delivers each event once, in order,
//! and fails loudly rather than skip one.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, stream::BoxStream};
use streamwatch::v1::{self, watch_event::Kind};
use tokio::time::Instant;

use crate::{Client, Error};

/// Whether `event` ends its generation: COMPLETED, TIMED_OUT or CANCELLED.
pub fn is_terminal(event: &v1::WatchEvent) -> bool {
    matches!(
        event.kind,
        Some(Kind::Completed(_) | Kind::TimedOut(_) | Kind::Cancelled(_))
    )
}

/// Exponential backoff between reconnection attempts: `initial`, doubling up
/// to `max`; gives up once the server has been unreachable for `give_up_after`
/// (`None`: never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub give_up_after: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            give_up_after: Some(Duration::from_secs(300)),
        }
    }
}

impl Backoff {
    pub(crate) fn start(self) -> Retry {
        Retry {
            backoff: self,
            next_delay: self.initial,
            since: None,
        }
    }
}

/// One run of failed attempts under a [`Backoff`].
pub(crate) struct Retry {
    backoff: Backoff,
    next_delay: Duration,
    since: Option<Instant>,
}

impl Retry {
    /// Sleeps before the next attempt after `error`, or gives up.
    pub(crate) async fn wait(&mut self, watch_id: &str, error: Error) -> Result<(), Error> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let elapsed = since.elapsed();
        if self
            .backoff
            .give_up_after
            .is_some_and(|limit| elapsed >= limit)
        {
            return Err(Error::ReconnectGaveUp {
                watch_id: watch_id.to_owned(),
                elapsed,
                last: Box::new(error),
            });
        }
        tokio::time::sleep(self.next_delay).await;
        self.next_delay = (self.next_delay * 2).min(self.backoff.max);
        Ok(())
    }

    /// The server answered: the next failure starts a new run.
    pub(crate) fn reset(&mut self) {
        self.next_delay = self.backoff.initial;
        self.since = None;
    }
}

/// A watch's events, resumed across dropped connections; see
/// [`Client::subscribe`]. Ends when the server ends the watch's stream (after
/// the terminal event, once no late window is open); yields an error, then
/// ends, on an answer that reconnecting cannot fix or when the backoff gives up.
pub struct EventStream {
    inner: BoxStream<'static, Result<v1::WatchEvent, Error>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    last_seq: AtomicU64,
    reconnects: AtomicU64,
}

impl EventStream {
    pub(crate) fn new(client: Client, watch_id: String, after_seq: u64) -> Self {
        let counters = Arc::new(Counters::default());
        counters.last_seq.store(after_seq, Ordering::Relaxed);
        let follow = Follow {
            retry: client.backoff.start(),
            client,
            watch_id,
            last_seq: after_seq,
            stream: None,
            finished: false,
            counters: counters.clone(),
        };
        let inner = futures::stream::unfold(follow, |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        });
        Self {
            inner: Box::pin(inner),
            counters,
        }
    }

    /// The `seq` of the last event delivered (the `after_seq` given, before any).
    pub fn last_seq(&self) -> u64 {
        self.counters.last_seq.load(Ordering::Relaxed)
    }

    /// How many times the stream was reopened after it broke.
    pub fn reconnects(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Relaxed)
    }
}

impl Stream for EventStream {
    type Item = Result<v1::WatchEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct Follow {
    client: Client,
    watch_id: String,
    last_seq: u64,
    stream: Option<tonic::Streaming<v1::WatchEvent>>,
    retry: Retry,
    finished: bool,
    counters: Arc<Counters>,
}

impl Follow {
    async fn next(&mut self) -> Option<Result<v1::WatchEvent, Error>> {
        if self.finished {
            return None;
        }
        let item = self.next_event().await;
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
        }
        item
    }

    async fn next_event(&mut self) -> Option<Result<v1::WatchEvent, Error>> {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match self.client.events(&self.watch_id, self.last_seq).await {
                    Ok(stream) => self.stream.insert(stream),
                    Err(error) => {
                        if let Err(error) = self.retry_after(error).await {
                            return Some(Err(error));
                        }
                        continue;
                    }
                },
            };
            match stream.message().await {
                Ok(Some(event)) if event.seq <= self.last_seq => continue,
                Ok(Some(event)) if event.seq != self.last_seq + 1 => {
                    return Some(Err(Error::SequenceGap {
                        watch_id: self.watch_id.clone(),
                        last: self.last_seq,
                        got: event.seq,
                    }));
                }
                Ok(Some(event)) => {
                    self.retry.reset();
                    self.last_seq = event.seq;
                    self.counters.last_seq.store(event.seq, Ordering::Relaxed);
                    return Some(Ok(event));
                }
                Ok(None) => return None,
                Err(status) => {
                    self.stream = None;
                    self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = self.retry_after(status.into()).await {
                        return Some(Err(error));
                    }
                }
            }
        }
    }

    /// Waits out the backoff after a retryable `error`; hands back any other.
    async fn retry_after(&mut self, error: Error) -> Result<(), Error> {
        if !error.is_retryable() {
            return Err(error);
        }
        self.retry.wait(&self.watch_id, error).await
    }
}
