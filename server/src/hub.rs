//! Event fan-out: a subscriber replays a watch's durable log after its
//! `after_seq`, then follows live events. The live path is a bounded
//! broadcast per watch; a subscriber that falls behind (or sees a gap) re-reads
//! the log from its last `seq`, so nothing is skipped and nothing repeats.
//! In a cluster, other replicas append to the log too: [`Hub::follow_log`]
//! re-reads the watches that have subscribers here every `--log-poll` (100
//! per request) and publishes what others appended, so a subscriber on any
//! replica sees every event.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, Timestamp},
    error::Error,
    store::Store,
    watch::{EventKind, Watch, WatchEvent, WatchKey, WatchState},
};

/// Live events buffered per watch before a slow subscriber lags.
const LIVE_CAPACITY: usize = 256;
/// Events sent to one subscriber's connection before it must read.
const SUBSCRIBER_BUFFER: usize = 64;
/// Events read from the log per store call.
const LOG_PAGE: usize = 1000;

pub struct Hub {
    store: Arc<dyn Store>,
    clock: Clock,
    /// Ordered: the log is re-read in the same order in every process.
    channels: Mutex<BTreeMap<WatchKey, Channel>>,
    shutdown: CancellationToken,
    /// Times a subscriber fell behind the live path and caught up from the log.
    pub lagged_total: AtomicU64,
    /// Subscriptions open now.
    pub subscribers: AtomicI64,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, clock: Clock, shutdown: CancellationToken) -> Self {
        Self {
            store,
            clock,
            channels: Mutex::new(BTreeMap::new()),
            shutdown,
            lagged_total: AtomicU64::new(0),
            subscribers: AtomicI64::new(0),
        }
    }

    /// Hands committed events to the live subscribers of their watch.
    pub fn publish(&self, events: &[WatchEvent]) {
        let Some(first) = events.first() else { return };
        let key = WatchKey {
            tenant: first.tenant.clone(),
            id: first.watch_id.clone(),
        };
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let Some(channel) = channels.get_mut(&key) else {
            return;
        };
        for event in events {
            channel.published = channel.published.max(event.seq);
            // No receivers left is fine: they re-read the log when they return.
            let _ = channel.sender.send(Arc::new(event.clone()));
        }
    }

    /// Live events the watch's broadcast holds now (at most [`LIVE_CAPACITY`]),
    /// however many subscribers have stopped reading.
    pub fn buffered(&self, key: &WatchKey) -> usize {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.get(key).map_or(0, |c| c.sender.len())
    }

    /// Watches with a live path on this replica (one per watch with subscribers).
    pub fn channels(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Ends one subscription's hold on `key`'s live path: drops its receiver
    /// and, if it was the last, the channel with it.
    fn release(&self, key: &WatchKey, live: broadcast::Receiver<Arc<WatchEvent>>) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        drop(live);
        if channels
            .get(key)
            .is_some_and(|c| c.sender.receiver_count() == 0)
        {
            channels.remove(key);
        }
    }

    fn live(&self, watch: &Watch) -> broadcast::Receiver<Arc<WatchEvent>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(watch.key())
            .or_insert_with(|| Channel {
                sender: broadcast::channel(LIVE_CAPACITY).0,
                published: watch.last_seq,
            })
            .sender
            .subscribe()
    }

    /// Publishes what other replicas append to the logs of watches with
    /// subscribers here: every `every`, reads those watches (in batches) and,
    /// for each whose `last_seq` passed what was published, the new events.
    /// Runs until the hub shuts down.
    pub async fn follow_log(self: Arc<Self>, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let followed: BTreeMap<WatchKey, u64> = {
                let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
                channels
                    .iter()
                    .map(|(k, c)| (k.clone(), c.published))
                    .collect()
            };
            if followed.is_empty() {
                continue;
            }
            let keys: Vec<WatchKey> = followed.keys().cloned().collect();
            let watches = match self.store.watches(&keys).await {
                Ok(watches) => watches,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-read the followed watches");
                    continue;
                }
            };
            for watch in watches {
                let key = watch.key();
                let published = followed.get(&key).copied().unwrap_or(0);
                if watch.last_seq <= published {
                    continue;
                }
                match self
                    .store
                    .events_after(&key.tenant, &key.id, published, LOG_PAGE)
                    .await
                {
                    Ok(events) => self.publish(&events),
                    Err(e) => {
                        tracing::warn!(tenant = %key.tenant, watch_id = %key.id, error = %e, "cannot read a followed watch's log")
                    }
                }
            }
        }
    }

    /// Streams `watch`'s events after `after_seq`: the log first, then live.
    /// Ends after the terminal event once no late window is open; ends with
    /// UNAVAILABLE when the server shuts down.
    pub fn subscribe(
        self: &Arc<Self>,
        watch: &Watch,
        after_seq: u64,
    ) -> ReceiverStream<Result<Arc<WatchEvent>, Error>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let live = self.live(watch);
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        let subscription = Subscription {
            hub: self.clone(),
            key: watch.key(),
            late_window: watch.policy.late_window,
            cursor: after_seq,
            // A finished watch ends the stream even when no event is left after `after_seq`.
            ends_at: match watch.state() {
                WatchState::Active => None,
                _ => watch.late_window_end().or(watch.lifecycle.completed_at),
            },
            live: Some(live),
            tx,
        };
        tokio::spawn(subscription.run());
        ReceiverStream::new(rx)
    }
}

/// One watch's live path on this replica.
struct Channel {
    sender: broadcast::Sender<Arc<WatchEvent>>,
    /// The highest `seq` handed to it.
    published: u64,
}

struct Subscription {
    hub: Arc<Hub>,
    key: WatchKey,
    late_window: Option<std::time::Duration>,
    /// The last `seq` delivered.
    cursor: u64,
    /// When the stream may end: set by a terminal event, cleared by REOPENED.
    ends_at: Option<Timestamp>,
    /// Its receiver of the watch's live path; always there until dropped.
    live: Option<broadcast::Receiver<Arc<WatchEvent>>>,
    /// Events are shared with the live path, not copied per subscriber.
    tx: mpsc::Sender<Result<Arc<WatchEvent>, Error>>,
}

/// What a subscription registered, its end releases: the count, and the
/// watch's live path once no subscriber is left (a finished watch gets no
/// later publish that could notice).
impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.subscribers.fetch_sub(1, Ordering::Relaxed);
        if let Some(live) = self.live.take() {
            self.hub.release(&self.key, live);
        }
    }
}

enum Flow {
    Continue,
    Stop,
}

fn shutting_down() -> Error {
    Error::unavailable("the server is shutting down; resume with after_seq")
}

impl Subscription {
    async fn run(mut self) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        // Shutdown ends the stream wherever it is: waiting for an event, but
        // also reading the log from a slow store or handing an event to a
        // client that does not read.
        let shutdown = self.hub.shutdown.clone();
        let shut_down = tokio::select! {
            biased;
            () = shutdown.cancelled() => true,
            () = self.follow(&mut live) => false,
        };
        if shut_down {
            // Behind what the client has not read yet: a client that never
            // reads gets its connection closed at the end of the grace period.
            let _ = self.tx.send(Err(shutting_down())).await;
        }
        // Handed back, so that dropping the subscription releases it.
        self.live = Some(live);
    }

    async fn follow(&mut self, live: &mut broadcast::Receiver<Arc<WatchEvent>>) {
        if let Flow::Stop = self.catch_up().await {
            return;
        }
        loop {
            let hub = self.hub.clone();
            let ends_at = self.ends_at.map(|at| hub.clock.instant_at(at));
            let flow = tokio::select! {
                biased;
                () = self.tx.closed() => Flow::Stop,
                received = live.recv() => match received {
                    Ok(event) if event.seq <= self.cursor => Flow::Continue,
                    Ok(event) if event.seq == self.cursor + 1 => self.deliver(event).await,
                    Ok(_) => self.catch_up().await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.hub.lagged_total.fetch_add(1, Ordering::Relaxed);
                        self.catch_up().await
                    }
                    Err(broadcast::error::RecvError::Closed) => Flow::Stop,
                },
                () = sleep_until(ends_at) => {
                    // Anything committed before the window closed is in the log.
                    match self.catch_up().await {
                        Flow::Stop => Flow::Stop,
                        Flow::Continue if self.closed_now() => Flow::Stop,
                        Flow::Continue => Flow::Continue,
                    }
                }
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    fn closed_now(&self) -> bool {
        self.ends_at.is_some_and(|at| self.hub.clock.now() >= at)
    }

    /// Delivers every logged event after the cursor.
    async fn catch_up(&mut self) -> Flow {
        loop {
            let page = match self
                .hub
                .store
                .events_after(&self.key.tenant, &self.key.id, self.cursor, LOG_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return Flow::Stop;
                }
            };
            let full = page.len() == LOG_PAGE;
            for event in page {
                if let Flow::Stop = self.deliver(Arc::new(event)).await {
                    return Flow::Stop;
                }
            }
            if !full {
                break;
            }
        }
        if self.closed_now() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    async fn deliver(&mut self, event: Arc<WatchEvent>) -> Flow {
        self.cursor = event.seq;
        match &event.kind {
            EventKind::Completed { .. } => {
                self.ends_at = Some(self.late_window.map_or(event.time, |w| event.time.plus(w)))
            }
            EventKind::TimedOut { .. } | EventKind::Cancelled { .. } => {
                self.ends_at = Some(event.time)
            }
            EventKind::Reopened { .. } => self.ends_at = None,
            _ => {}
        }
        if self.tx.send(Ok(event)).await.is_err() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::{
        store::{Activity, ActivityKind, Applied, Created, Guard, NewWatch, sqlite::SqliteStore},
        watch::Policy,
        watch::{Bucket, Labels, Prefix, Source, TenantId, WatchId},
    };

    async fn new_watch(store: &Arc<dyn Store>, clock: &Clock) -> (Watch, Vec<WatchEvent>) {
        let Created::New { watch, events } = store
            .create_watch(NewWatch {
                tenant: TenantId::parse("tenant", "acme").unwrap(),
                id: WatchId::generate(),
                source: Source::objects(
                    Bucket::parse("bucket", "acme-lake").unwrap(),
                    Prefix::parse("prefix", "").unwrap(),
                    Default::default(),
                ),
                policy: Policy::default(),
                labels: Labels::default(),
                client_token: None,
                created_at: clock.now(),
                trace: Default::default(),
            })
            .await
            .unwrap()
        else {
            panic!("a new watch");
        };
        (watch, events)
    }

    /// A hub on a fresh SQLite store; the directory lives as long as the store.
    fn sqlite_hub(
        shutdown: CancellationToken,
    ) -> (tempfile::TempDir, Arc<dyn Store>, Clock, Arc<Hub>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
        let clock = Clock::new();
        let hub = Arc::new(Hub::new(store.clone(), clock, shutdown));
        (dir, store, clock, hub)
    }

    /// Records one new object of `watch`: one PROGRESS event.
    async fn record_one(
        store: &Arc<dyn Store>,
        clock: &Clock,
        watch: &Watch,
        i: usize,
    ) -> Vec<WatchEvent> {
        let activity = Activity {
            tenant: watch.tenant.clone(),
            watch_id: watch.id.clone(),
            kind: ActivityKind::Created,
            key: format!("k{i}"),
            sequencer: String::new(),
            size: 0,
            event_time: None,
        };
        let outcome = store.record(vec![activity], clock.now()).await.unwrap();
        outcome
            .updated
            .into_iter()
            .flat_map(|(_, events)| events)
            .collect()
    }

    #[tokio::test]
    async fn finished_subscriptions_release_their_watchs_live_path() {
        const WATCHES: usize = 200;
        let (_dir, store, clock, hub) = sqlite_hub(CancellationToken::new());
        let mut streams = Vec::new();
        let mut finished = Vec::new();
        for _ in 0..WATCHES {
            let (watch, events) = new_watch(&store, &clock).await;
            hub.publish(&events);
            streams.push(hub.subscribe(&watch, 0));
            let mut lifecycle = watch.lifecycle.clone();
            lifecycle.state = WatchState::Cancelled;
            let guard = Guard {
                activity: None,
                ..Guard::exact(&watch)
            };
            let cancelled = EventKind::Cancelled {
                reason: "done".into(),
            };
            let Some(Applied::Done { watch, events }) = store
                .apply(crate::store::Change::new(
                    &watch.tenant,
                    &watch.id,
                    guard,
                    lifecycle,
                    vec![cancelled],
                    clock.now(),
                ))
                .await
                .unwrap()
            else {
                panic!("cancelled");
            };
            hub.publish(&events);
            finished.push(watch);
        }
        for stream in streams {
            let seqs: Vec<u64> = stream.map(|e| e.unwrap().seq).collect().await;
            assert_eq!(seqs, [1, 2], "STARTED, CANCELLED, then the stream ends");
        }
        assert_eq!(
            hub.channels(),
            0,
            "every stream ended: nothing of theirs is kept"
        );
        assert_eq!(hub.subscribers.load(Ordering::Relaxed), 0);

        // A stream opened on a finished watch replays and ends, keeping nothing.
        let replayed: Vec<u64> = hub
            .subscribe(&finished[0], 0)
            .map(|e| e.unwrap().seq)
            .collect()
            .await;
        assert_eq!(replayed, [1, 2]);
        assert_eq!(hub.channels(), 0);
    }

    #[tokio::test]
    async fn a_subscriber_that_stops_reading_holds_a_bounded_buffer_and_catches_up_from_the_log() {
        const EVENTS: usize = 10_000;
        let (_dir, store, clock, hub) = sqlite_hub(CancellationToken::new());
        let (watch, events) = new_watch(&store, &clock).await;
        hub.publish(&events);
        let mut stream = hub.subscribe(&watch, 0);
        assert_eq!(
            stream.next().await.unwrap().unwrap().seq,
            1,
            "reading, then it stops"
        );

        // One PROGRESS event per recorded batch, none of them read.
        for i in 0..EVENTS {
            hub.publish(&record_one(&store, &clock, &watch, i).await);
        }
        assert!(
            hub.buffered(&watch.key()) <= LIVE_CAPACITY,
            "the live path holds at most {LIVE_CAPACITY} events, not {EVENTS}"
        );
        assert_eq!(hub.lagged_total.load(Ordering::Relaxed), 0);

        let mut seqs = Vec::with_capacity(EVENTS);
        while seqs.len() < EVENTS {
            seqs.push(stream.next().await.unwrap().unwrap().seq);
        }
        let expected: Vec<u64> = (2..2 + EVENTS as u64).collect();
        assert!(seqs == expected, "every event once, in order, from seq 2");
        assert!(
            hub.lagged_total.load(Ordering::Relaxed) >= 1,
            "the subscriber fell behind the live path and caught up from the log"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_a_stream_at_once_even_when_its_client_does_not_read() {
        const EVENTS: usize = 1_000;
        let shutdown = CancellationToken::new();
        let (_dir, store, clock, hub) = sqlite_hub(shutdown.clone());
        let (watch, _) = new_watch(&store, &clock).await;
        for i in 0..EVENTS {
            record_one(&store, &clock, &watch, i).await;
        }
        // Replaying the log, the subscription fills the client's buffer and
        // waits for room.
        let stream = hub.subscribe(&watch, 0);
        while stream.as_ref().len() < SUBSCRIBER_BUFFER {
            tokio::task::yield_now().await;
        }
        shutdown.cancel();

        let received: Vec<_> = stream.collect().await;
        let (last, delivered) = received.split_last().unwrap();
        assert!(
            matches!(last, Err(Error::Unavailable { .. })),
            "the stream ends with UNAVAILABLE: {last:?}"
        );
        assert!(delivered.iter().all(Result::is_ok));
        assert!(
            delivered.len() <= SUBSCRIBER_BUFFER,
            "what the buffer held, not the rest of the log: {} events",
            delivered.len()
        );
    }
}
