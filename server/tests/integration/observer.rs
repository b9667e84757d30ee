//! Observer timing under a paused clock: deadlines fire at exactly the
//! instant the policy names, survive a restart, and one timer queue serves
//! many watches. Drives the service core directly (no network), so tokio's
//! virtual time decides every instant.

use std::time::Duration;

use futures::StreamExt;
use streamwatch_server::{
    Core,
    clock::{Clock, Timestamp},
    policy,
    service::StartWatch,
    watch::{
        Bucket, DelaySchedule, EventKind, Policy, Prefix, Rule, Source, TenantId, Watch, WatchEvent,
    },
};
use streamwatch_testkit::*;

const T0: i64 = 1_800_000_000_000;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(T0 + secs as i64 * 1000)
}

fn tenant() -> TenantId {
    TenantId::parse("tenant", "default").unwrap()
}

fn start(rule: Rule) -> StartWatch {
    StartWatch {
        source: Source::objects(
            Bucket::parse("bucket", "data-lake").unwrap(),
            Prefix::parse("prefix", "").unwrap(),
            Default::default(),
        ),
        policy: Policy {
            rule,
            ..Policy::default()
        },
        labels: Default::default(),
        client_token: None,
        trace: Default::default(),
    }
}

async fn core(dir: &DataDir, clock: Clock) -> Core {
    Core::start(&dir.config(false), clock)
        .await
        .expect("core starts")
}

async fn begin(core: &Core, start: StartWatch) -> Watch {
    core.service
        .start_watch(&tenant(), start)
        .await
        .expect("start")
        .0
}

async fn land(core: &Core, keys: &[&str]) {
    let report = core
        .service
        .ingest(&tenant(), &[created("data-lake", keys)])
        .await
        .expect("ingest");
    assert_eq!(report.counted, keys.len() as u64);
}

/// Every event of the watch until its stream ends.
async fn events(core: &Core, watch: &Watch) -> Vec<WatchEvent> {
    let stream = core
        .service
        .stream_events(&tenant(), &watch.id, 0)
        .await
        .expect("stream");
    stream.map(|e| (*e.expect("event")).clone()).collect().await
}

fn timeline(events: &[WatchEvent]) -> Vec<(&'static str, Timestamp)> {
    events.iter().map(|e| (e.kind.name(), e.time)).collect()
}

#[tokio::test(start_paused = true)]
async fn quiet_period_completes_at_exactly_last_activity_plus_window() {
    let dir = DataDir::new();
    let core = core(&dir, Clock::starting_at(at(0))).await;
    let watch = begin(
        &core,
        start(Rule::QuietPeriod {
            window: Duration::from_secs(30),
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    land(&core, &["a"]).await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    land(&core, &["b"]).await;
    assert_eq!(
        timeline(&events(&core, &watch).await),
        [
            ("started", at(0)),
            ("progress", at(10)),
            ("progress", at(35)),
            ("completed", at(65))
        ]
    );
    core.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn exponential_polling_samples_on_the_classic_schedule() {
    let dir = DataDir::new();
    let core = core(&dir, Clock::starting_at(at(0))).await;
    let rule = Rule::Polling {
        delay: Duration::from_secs(60),
        max_repeats: 3,
        schedule: DelaySchedule::Exponential,
    };
    let watch = begin(&core, rule_with_objects(rule)).await;
    land(&core, &["a"]).await;
    // Samples at 60 (changed: 0 -> 1), then waits 60s, 23s, 9s between unchanged samples.
    assert_eq!(
        timeline(&events(&core, &watch).await),
        [
            ("started", at(0)),
            ("progress", at(0)),
            ("quiet_tick", at(120)),
            ("quiet_tick", at(143)),
            ("quiet_tick", at(152)),
            ("completed", at(152)),
        ]
    );
    core.shutdown().await.unwrap();
}

fn rule_with_objects(rule: Rule) -> StartWatch {
    let mut s = start(rule);
    s.policy.min_objects = 1;
    s
}

#[tokio::test(start_paused = true)]
async fn timeout_fires_at_exactly_its_deadline() {
    let dir = DataDir::new();
    let core = core(&dir, Clock::starting_at(at(0))).await;
    let mut s = start(Rule::ExpectedCount {
        objects: 100,
        quiet_window: None,
    });
    s.policy.timeout = Some(Duration::from_secs(3600));
    let watch = begin(&core, s).await;
    land(&core, &["a", "b"]).await;
    let events = events(&core, &watch).await;
    assert_eq!(timeline(&events).last(), Some(&("timed_out", at(3600))));
    core.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_deadlines_intact() {
    let dir = DataDir::new();
    let clock = Clock::starting_at(at(0));
    let first = core(&dir, clock).await;
    let watch = begin(
        &first,
        start(Rule::QuietPeriod {
            window: Duration::from_secs(30),
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    land(&first, &["a"]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    first.shutdown().await.unwrap();

    // Down for 2s, then up again with the wall clock where it would be.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = core(&dir, Clock::starting_at(clock.now())).await;
    let events = events(&second, &watch).await;
    assert_eq!(
        timeline(&events).last(),
        Some(&("completed", at(40))),
        "deadline stays last activity + window"
    );
    second.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn polling_progress_survives_a_restart() {
    let dir = DataDir::new();
    let clock = Clock::starting_at(at(0));
    let first = core(&dir, clock).await;
    let rule = Rule::Polling {
        delay: Duration::from_secs(10),
        max_repeats: 3,
        schedule: DelaySchedule::Fixed,
    };
    let watch = begin(&first, start(rule)).await;
    tokio::time::sleep(Duration::from_secs(25)).await; // ticks at 10 and 20
    first.shutdown().await.unwrap();
    let second = core(&dir, Clock::starting_at(clock.now())).await;
    let events = events(&second, &watch).await;
    assert_eq!(
        timeline(&events),
        [
            ("started", at(0)),
            ("quiet_tick", at(10)),
            ("quiet_tick", at(20)),
            ("quiet_tick", at(30)),
            ("completed", at(30))
        ]
    );
    second.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_late_window_keeps_the_stream_open_until_it_closes() {
    let dir = DataDir::new();
    let core = core(&dir, Clock::starting_at(at(0))).await;
    let mut s = start(Rule::QuietPeriod {
        window: Duration::from_secs(30),
    });
    s.policy.late_window = Some(Duration::from_secs(300));
    let watch = begin(&core, s).await;
    land(&core, &["a"]).await;
    let mut stream = core
        .service
        .stream_events(&tenant(), &watch.id, 0)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        let done = matches!(event.kind, EventKind::Completed { .. });
        seen.push(event);
        if done {
            break;
        }
    }
    assert_eq!(seen.last().unwrap().time, at(30));
    tokio::time::sleep(Duration::from_secs(100)).await;
    land(&core, &["late"]).await;
    let rest: Vec<_> = stream.map(|e| (*e.unwrap()).clone()).collect().await;
    assert_eq!(
        timeline(&rest),
        [
            ("progress", at(130)),
            ("reopened", at(130)),
            ("completed", at(160))
        ]
    );
    assert!(rest.iter().skip(1).all(|e| e.generation == 2));
    // The stream ended when the second completion's late window closed.
    assert_eq!(
        core.service
            .get_watch(&tenant(), &watch.id)
            .await
            .unwrap()
            .lifecycle
            .generation,
        2
    );
    core.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_timer_queue_decides_many_watches_each_at_its_own_deadline() {
    let dir = DataDir::new();
    let core = core(&dir, Clock::starting_at(at(0))).await;
    let mut watches = Vec::new();
    for i in 0..500u64 {
        let window = Duration::from_secs(60 + (i * 7919) % 3600);
        watches.push((
            begin(&core, start(Rule::QuietPeriod { window })).await,
            window,
        ));
    }
    for (watch, window) in &watches {
        let events = events(&core, watch).await;
        let done = events.last().unwrap();
        assert!(matches!(done.kind, EventKind::Completed { .. }));
        assert_eq!(
            done.time,
            at(0).plus(*window),
            "watch {} decided off its deadline",
            watch.id
        );
    }
    core.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn adaptive_completes_at_the_window_its_gaps_call_for() {
    let dir = DataDir::new();
    let core = core(&dir, Clock::starting_at(at(0))).await;
    let watch = begin(
        &core,
        start(Rule::Adaptive {
            min_window: Duration::from_secs(5),
            max_window: Duration::from_secs(3600),
            quantile: 0.99,
            safety_factor: 3.0,
        }),
    )
    .await;
    for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        land(&core, &[key]).await;
    }
    let current = core.service.get_watch(&tenant(), &watch.id).await.unwrap();
    let window = policy::adaptive_window(&current).unwrap();
    // Three 4s gaps; p99 is the upper edge of the 4s bucket, 4.096s; x 3 = 12.288s.
    assert_eq!(window.gap_quantile, Some(Duration::from_millis(4096)));
    assert_eq!(window.window, Duration::from_millis(12_288));
    let events = events(&core, &watch).await;
    assert_eq!(
        timeline(&events),
        [
            ("started", at(0)),
            ("progress", at(0)),
            ("progress", at(4)),
            ("progress", at(8)),
            ("progress", at(12)),
            ("completed", at(12).plus(Duration::from_millis(12_288))),
        ]
    );
    let EventKind::Completed { reason, .. } = &events.last().unwrap().kind else {
        unreachable!("the timeline ends with completed");
    };
    assert_eq!(
        reason,
        "no activity for 12.3s, the adaptive window (3 x p99 gap 4.1s over 3 gaps); 4 objects"
    );
    core.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn adaptive_gaps_survive_a_restart() {
    let dir = DataDir::new();
    let clock = Clock::starting_at(at(0));
    let first = core(&dir, clock).await;
    let watch = begin(
        &first,
        start(Rule::Adaptive {
            min_window: Duration::from_secs(20),
            max_window: Duration::from_secs(3600),
            quantile: 1.0,
            safety_factor: 2.0,
        }),
    )
    .await;
    land(&first, &["a"]).await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    land(&first, &["b"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    land(&first, &["c"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.shutdown().await.unwrap();

    let second = core(&dir, Clock::starting_at(clock.now())).await;
    let events = events(&second, &watch).await;
    // The longest gap (16s, bucket edge 16.384s) x 2 after the last activity at 18s;
    // with the gaps lost it would be min_window, 20s.
    assert_eq!(
        timeline(&events).last(),
        Some(&("completed", at(18).plus(Duration::from_millis(32_768)))),
        "the gaps seen before the restart still set the window"
    );
    second.shutdown().await.unwrap();
}
