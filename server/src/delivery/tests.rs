//! The delivery task under a paused clock, on the real SQLite store, with a
//! stand-in [`Transport`] that answers from a script: retries wait their
//! backoff, the deadline fails the delivery with a DELIVERY_FAILED event, and
//! the outbox entry shows every attempt.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    clock::{Clock, Timestamp},
    store::{Applied, Created, Guard, NewWatch, Store, sqlite::SqliteStore},
    watch::{
        Bucket, EventKind, Lifecycle, Notify, NotifyTarget, Policy, Prefix, Source, TenantId,
        Watch, WatchId, WatchState,
    },
};

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

/// Never answers: an attempt in flight when the server stops.
struct Hanging;

#[async_trait]
impl Transport for Hanging {
    async fn send(&self, _delivery: &Delivery) -> Result<String, Failure> {
        std::future::pending().await
    }
}

/// Answers attempt `n` with `script[n]` (the last entry repeats) and reports when it was made.
struct Scripted {
    script: Vec<Result<String, Failure>>,
    attempts: Mutex<usize>,
    clock: Clock,
    made: mpsc::UnboundedSender<(Timestamp, Result<String, Failure>)>,
}

#[async_trait]
impl Transport for Scripted {
    async fn send(&self, _delivery: &Delivery) -> Result<String, Failure> {
        let answer = {
            let mut n = self.attempts.lock().unwrap();
            let answer = self.script[(*n).min(self.script.len() - 1)].clone();
            *n += 1;
            answer
        };
        let _ = self.made.send((self.clock.now(), answer.clone()));
        answer
    }
}

fn refused() -> Result<String, Failure> {
    Err(Failure::new("HTTP 503", "HTTP 503: busy"))
}

struct Setup {
    store: Arc<dyn Store>,
    watch: Watch,
    made: mpsc::UnboundedReceiver<(Timestamp, Result<String, Failure>)>,
    stats: Arc<DeliveryStats>,
    end: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A completed watch with one webhook target, and a delivery task sending through `script`.
async fn setup(script: Vec<Result<String, Failure>>, config: DeliveryConfig) -> Setup {
    setup_with(Some(script), config).await
}

/// As [`setup`]; without a script, every attempt hangs.
async fn setup_with(script: Option<Vec<Result<String, Failure>>>, config: DeliveryConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
    let clock = Clock::starting_at(T0);
    let tenant = TenantId::parse("t", "acme").unwrap();
    let new = NewWatch {
        tenant: tenant.clone(),
        id: WatchId::generate(),
        source: Source::objects(
            Bucket::parse("b", "data-lake").unwrap(),
            Prefix::parse("p", "").unwrap(),
            Default::default(),
        ),
        policy: Policy {
            notify: Notify {
                targets: vec![NotifyTarget::Webhook {
                    url: "https://hooks.acme.example/done".into(),
                    secret_ref: "main".into(),
                }],
                reopened: false,
            },
            ..Policy::default()
        },
        labels: Default::default(),
        trace: Default::default(),
        client_token: None,
        created_at: T0,
    };
    let Created::New { watch, .. } = store.create_watch(new).await.unwrap() else {
        panic!("a new watch");
    };
    let mut lifecycle = watch.lifecycle.clone();
    lifecycle.state = WatchState::Completed;
    lifecycle.completed_at = Some(T0);
    let completed = vec![EventKind::Completed {
        object_count: 0,
        object_bytes: 0,
        reason: "quiet".into(),
    }];
    let Some(Applied::Done { watch, .. }) = store
        .apply(crate::store::Change::new(
            &tenant,
            &watch.id,
            Guard::exact(&watch),
            lifecycle,
            completed,
            T0,
        ))
        .await
        .unwrap()
    else {
        panic!("applied");
    };
    let (tx, made) = mpsc::unbounded_channel();
    let transport: Arc<dyn Transport> = match script {
        Some(script) => Arc::new(Scripted {
            script,
            attempts: Mutex::new(0),
            clock,
            made: tx,
        }),
        None => Arc::new(Hanging),
    };
    let end = CancellationToken::new();
    let deliverer = Deliverer::new(store.clone(), transport, clock, config);
    let stats = deliverer.stats();
    let task = tokio::spawn(deliverer.run(end.clone()));
    Setup {
        store,
        watch,
        made,
        stats,
        end,
        task,
        _dir: dir,
    }
}

fn config(deadline: Duration) -> DeliveryConfig {
    DeliveryConfig {
        deadline,
        backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
    }
}

#[test]
fn backoff_doubles_with_equal_jitter_up_to_the_cap() {
    let base = Duration::from_secs(1);
    assert_eq!(retry_delay(base, 1, 0.0), Duration::from_millis(500));
    assert_eq!(retry_delay(base, 1, 0.999_999).as_millis(), 999);
    assert_eq!(retry_delay(base, 3, 0.0), Duration::from_secs(2));
    assert_eq!(retry_delay(base, 3, 0.5), Duration::from_secs(3));
    assert_eq!(retry_delay(base, 30, 0.0), MAX_BACKOFF / 2);
    assert!(retry_delay(base, 30, 1.0) <= MAX_BACKOFF);
}

#[tokio::test(start_paused = true)]
async fn a_refused_delivery_is_retried_with_backoff_until_accepted() {
    let mut s = setup(
        vec![refused(), refused(), Ok("HTTP 200".into())],
        config(Duration::from_secs(3600)),
    )
    .await;
    let mut times = Vec::new();
    for _ in 0..3 {
        let (at, _) = s.made.recv().await.unwrap();
        times.push(at);
    }
    // Each wait is within its equal-jitter bounds: [0.5s, 1s], then [1s, 2s].
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[0].until(w[1])).collect();
    assert_eq!(times[0], T0, "the first attempt is made at once");
    assert!(
        (Duration::from_millis(500)..=Duration::from_secs(1)).contains(&gaps[0]),
        "{gaps:?}"
    );
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(2)).contains(&gaps[1]),
        "{gaps:?}"
    );
    // The accepted attempt is recorded; nothing is attempted after it.
    let deliveries = loop {
        let d = s
            .store
            .deliveries(&s.watch.tenant, &s.watch.id)
            .await
            .unwrap();
        if d[0].state != DeliveryState::Pending {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // virtual time: the record commits on the blocking pool
    };
    assert_eq!(deliveries.len(), 1);
    let d = &deliveries[0];
    assert_eq!(
        (
            d.state,
            d.attempts,
            d.last_status.as_str(),
            d.last_error.as_str()
        ),
        (DeliveryState::Delivered, 3, "HTTP 200", "")
    );
    assert_eq!(d.idempotency_key(), format!("{}:1:2", s.watch.id));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(s.made.try_recv().is_err(), "no attempt after acceptance");
    assert_eq!(s.stats.delivered.load(Ordering::Relaxed), 1);
    assert_eq!(s.stats.retried.load(Ordering::Relaxed), 2);
    s.end.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_delivery_that_never_succeeds_fails_at_the_deadline_with_an_event() {
    let deadline = Duration::from_secs(10);
    let mut s = setup(vec![refused()], config(deadline)).await;
    let mut last = T0;
    let failed = loop {
        tokio::select! {
            made = s.made.recv() => last = made.unwrap().0,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let log = s.store.events_after(&s.watch.tenant, &s.watch.id, 0, 100).await.unwrap();
                if let Some(e) = log.iter().find(|e| matches!(e.kind, EventKind::DeliveryFailed { .. })) {
                    break e.clone();
                }
            }
        }
    };
    assert!(last <= T0.plus(deadline), "no attempt after the deadline");
    let d = &s
        .store
        .deliveries(&s.watch.tenant, &s.watch.id)
        .await
        .unwrap()[0];
    assert_eq!(d.state, DeliveryState::Failed);
    assert!(
        d.attempts >= 4,
        "1s, 2s, 4s steps fit in 10s: {}",
        d.attempts
    );
    assert_eq!(d.last_error, "HTTP 503: busy");
    assert_eq!(
        failed.kind,
        EventKind::DeliveryFailed {
            seq: 2,
            target: 0,
            attempts: d.attempts,
            last_error: "HTTP 503: busy".into()
        }
    );
    assert_eq!(failed.seq, 3, "appended to the watch's log");
    let watch = s
        .store
        .get_watch(&s.watch.tenant, &s.watch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.last_seq, 3);
    assert_eq!(s.stats.failed.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        s.made.try_recv().is_err(),
        "a failed delivery is not attempted again"
    );
    s.end.cancel();
}

#[tokio::test(start_paused = true)]
async fn stopping_gives_back_the_leases_of_attempts_in_flight() {
    let s = setup_with(None, config(Duration::from_secs(3600))).await;
    // Wait until the (hanging) attempt holds its lease.
    let leased = loop {
        let d = s
            .store
            .deliveries(&s.watch.tenant, &s.watch.id)
            .await
            .unwrap();
        if d[0].next_attempt_at > T0 {
            break d[0].clone();
        }
        tokio::task::yield_now().await;
    };
    assert_eq!((leased.state, leased.attempts), (DeliveryState::Pending, 0));
    let now = s.store.claim_deliveries(T0, T0, 10).await.unwrap();
    assert!(now.deliveries.is_empty(), "leased while the attempt runs");
    s.end.cancel();
    s.task.await.unwrap();
    let before_the_lease_ends = Timestamp::from_millis(leased.next_attempt_at.as_millis() - 1);
    let claimed = s
        .store
        .claim_deliveries(before_the_lease_ends, leased.next_attempt_at, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.deliveries.len(),
        1,
        "due at once, not when the lease ends"
    );
    assert_eq!(claimed.deliveries[0].attempts, 0);
}

#[test]
fn bodies_carry_the_event_and_the_watch() {
    let tenant = TenantId::parse("t", "acme").unwrap();
    let mut watch = Watch {
        tenant: tenant.clone(),
        id: WatchId::generate(),
        source: Source::objects(
            Bucket::parse("b", "data-lake").unwrap(),
            Prefix::parse("p", "day=1/").unwrap(),
            Default::default(),
        ),
        policy: Policy::default(),
        labels: [("team".to_owned(), "etl".to_owned())].into(),
        client_token: None,
        created_at: T0,
        lifecycle: Lifecycle::fresh(1, T0, 0),
        counters: Default::default(),
        last_seq: 4,
        trace: Default::default(),
    };
    watch.lifecycle.state = WatchState::Completed;
    watch.counters.object_count = 3;
    let event = crate::watch::WatchEvent {
        tenant,
        watch_id: watch.id.clone(),
        seq: 4,
        time: T0,
        generation: 1,
        kind: EventKind::Completed {
            object_count: 3,
            object_bytes: 0,
            reason: "quiet for 5s".into(),
        },
    };
    let body: serde_json::Value =
        serde_json::from_str(&crate::document::body(&watch, &event)).unwrap();
    assert_eq!(body["idempotency_key"], format!("{}:1:4", watch.id));
    assert_eq!(body["event"]["kind"], "completed");
    assert_eq!(body["event"]["seq"], 4);
    assert_eq!(body["event"]["detail"]["object_count"], 3);
    assert_eq!(body["event"]["detail"]["reason"], "quiet for 5s");
    assert_eq!(body["watch"]["state"], "COMPLETED");
    assert_eq!(body["watch"]["prefix"], "day=1/");
    assert_eq!(body["watch"]["labels"]["team"], "etl");
    assert!(body.get("tenant").is_none() && body["watch"].get("tenant").is_none());
}
