//! A watch runs from StartWatch through ingested notifications to its
//! terminal event, over real gRPC, for each completion rule.

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn quiet_period_completes_after_the_last_object_lands() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let watch = begin(
        &mut client,
        start_request("data-lake", "day=1/", quiet_period(Duration::from_secs(2))),
    )
    .await;
    assert_eq!(watch.state, v1::WatchState::Active as i32);
    let stream = client.events(&watch.watch_id, 0).await.unwrap();

    let report = client
        .ingest_s3_events(vec![
            created("data-lake", &["day=1/a.json", "day=1/b c.json"]),
            created("data-lake", &["day=2/elsewhere.json"]),
            created("other-bucket", &["day=1/a.json"]),
        ])
        .await
        .unwrap();
    assert_eq!(
        (
            report.records,
            report.matched,
            report.counted,
            report.ignored
        ),
        (4, 2, 2, 2)
    );

    let events = read_to_end(stream, LIMIT).await;
    assert_eq!(kinds(&events), ["started", "progress", "completed"]);
    assert_gapless(&events, 1);
    let Some(v1::watch_event::Kind::Completed(done)) = &events[2].kind else {
        unreachable!()
    };
    assert_eq!(done.object_count, 2);
    assert!(
        done.reason.contains("no activity for 2s"),
        "{}",
        done.reason
    );

    let watch = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!(watch.state, v1::WatchState::Completed as i32);
    assert_eq!(
        (watch.object_count, watch.event_count, watch.last_seq),
        (2, 2, 3)
    );
    let quiet = to_millis(watch.completed_at.unwrap()) - to_millis(watch.last_activity_at.unwrap());
    assert!(
        quiet >= 2000,
        "completed {quiet}ms after the last activity, before the window"
    );
}

fn to_millis(t: prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[tokio::test]
async fn expected_count_completes_on_the_last_expected_object() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let policy = v1::Policy {
        rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects: 3,
            quiet_window: None,
        })),
        ..Default::default()
    };
    let watch = begin(&mut client, start_request("data-lake", "run-7/", policy)).await;
    let stream = client.events(&watch.watch_id, 0).await.unwrap();
    client
        .ingest_s3_events(vec![created("data-lake", &["run-7/1", "run-7/2"])])
        .await
        .unwrap();
    assert_eq!(
        client.get_watch(&watch.watch_id).await.unwrap().state,
        v1::WatchState::Active as i32
    );
    client
        .ingest_s3_events(vec![created("data-lake", &["run-7/3"])])
        .await
        .unwrap();

    let events = read_to_end(stream, LIMIT).await;
    assert_eq!(
        kinds(&events),
        ["started", "progress", "progress", "completed"]
    );
    assert!(
        matches!(&events[3].kind, Some(v1::watch_event::Kind::Completed(c)) if c.object_count == 3)
    );
}

#[tokio::test]
async fn polling_emits_quiet_ticks_then_completes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut policy = polling(Duration::from_secs(1), 3);
    policy.min_objects = 1;
    let watch = begin(&mut client, start_request("data-lake", "", policy)).await;
    let mut stream = client.events(&watch.watch_id, 0).await.unwrap();
    // Below min_objects the rule counts unchanged samples; wait for one, then land data.
    read_until(&mut stream, LIMIT, |e| kind(e) == "quiet_tick").await;
    client
        .ingest_s3_events(vec![created("data-lake", &["x"])])
        .await
        .unwrap();
    let events = read_to_end(stream, LIMIT).await;
    let after_progress: Vec<_> = kinds(&events)
        .into_iter()
        .skip_while(|k| *k != "progress")
        .collect();
    assert_eq!(after_progress.last(), Some(&"completed"));
    let ticks: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::watch_event::Kind::QuietTick(t)) => Some(t.repeated),
            _ => None,
        })
        .collect();
    assert!(
        ticks.ends_with(&[1, 2, 3]),
        "the last three samples count up to max_repeats: {ticks:?}"
    );
}

/// The classic rule with the FIXED schedule.
fn polling(delay: Duration, max_repeats: u32) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::Polling(v1::PollingRule {
            delay: Some(duration(delay)),
            max_repeats,
            schedule: v1::DelaySchedule::Fixed as i32,
        })),
        ..Default::default()
    }
}

/// Lets `d` pass on tokio's paused clock (the server's clock follows it):
/// every timer due on the way fires, in order, without waiting in real time.
async fn idle(d: Duration) {
    tokio::time::pause();
    tokio::time::sleep(d).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_polling_watch_that_cannot_complete_writes_a_bounded_log() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // The fastest sampling allowed, a min_objects never met, no timeout.
    let mut policy = polling(Duration::from_secs(1), 3);
    policy.min_objects = 1_000_000;
    let watch = begin(&mut client, start_request("data-lake", "", policy)).await;
    idle(Duration::from_secs(3600)).await;
    // A fresh connection: the paused hour outlasted the old one's keepalive.
    let mut client = server.client().await;
    let after_an_hour = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!(after_an_hour.state, v1::WatchState::Active as i32);
    assert_eq!(
        after_an_hour.last_seq, 4,
        "an hour writes STARTED and max_repeats QUIET_TICKs, then nothing"
    );

    // Activity changes the count: the samples count up to max_repeats once more.
    client
        .ingest_s3_events(vec![created("data-lake", &["a"])])
        .await
        .unwrap();
    idle(Duration::from_secs(3600)).await;
    let mut client = server.client().await;
    let mut stream = client.events(&watch.watch_id, 0).await.unwrap();
    let events = read_until(&mut stream, LIMIT, |e| e.seq == 8).await;
    assert_eq!(
        kinds(&events),
        [
            "started",
            "quiet_tick",
            "quiet_tick",
            "quiet_tick",
            "progress",
            "quiet_tick",
            "quiet_tick",
            "quiet_tick"
        ]
    );
    assert_eq!(client.get_watch(&watch.watch_id).await.unwrap().last_seq, 8);
}

#[tokio::test]
async fn polling_faster_than_the_minimum_delay_is_refused_by_name() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for delay in [Duration::from_millis(999), Duration::from_millis(1)] {
        let err = client
            .start_watch(start_request("data-lake", "", polling(delay, 1)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{delay:?}");
        assert!(
            err.message().contains("policy.polling.delay") && err.message().contains("at least 1s"),
            "{}",
            err.message()
        );
    }
    let list = client.list_watches(Default::default()).await.unwrap();
    assert!(list.watches.is_empty(), "a refused policy creates nothing");
}

#[tokio::test]
async fn timeout_ends_a_watch_that_never_gets_enough_objects() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut policy = quiet_period(Duration::from_millis(200));
    policy.min_objects = 5;
    policy.timeout = Some(duration(Duration::from_secs(3)));
    let watch = begin(&mut client, start_request("data-lake", "", policy)).await;
    client
        .ingest_s3_events(vec![created("data-lake", &["only-one"])])
        .await
        .unwrap();
    let events = read_to_end(client.events(&watch.watch_id, 0).await.unwrap(), LIMIT).await;
    assert_eq!(kinds(&events), ["started", "progress", "timed_out"]);
    let watch = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!(watch.state, v1::WatchState::TimedOut as i32);
    assert!(
        watch.reason.contains("min_objects (5) was not met"),
        "{}",
        watch.reason
    );
}

#[tokio::test]
async fn late_data_reopens_a_completed_watch() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut policy = quiet_period(Duration::from_secs(2));
    policy.late_window = Some(duration(Duration::from_secs(30)));
    let watch = begin(&mut client, start_request("data-lake", "", policy)).await;
    let mut stream = client.events(&watch.watch_id, 0).await.unwrap();
    client
        .ingest_s3_events(vec![created("data-lake", &["a"])])
        .await
        .unwrap();
    read_until(&mut stream, LIMIT, |e| kind(e) == "completed").await;

    let report = client
        .ingest_s3_events(vec![created("data-lake", &["late"])])
        .await
        .unwrap();
    assert_eq!(
        report.counted, 1,
        "a completed watch inside its late window still counts"
    );
    let events = read_until(&mut stream, LIMIT, |e| kind(e) == "completed").await;
    assert_eq!(kinds(&events), ["progress", "reopened", "completed"]);
    assert!(
        events.iter().skip(1).all(|e| e.generation == 2),
        "{events:?}"
    );
    let watch = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!((watch.generation, watch.object_count), (2, 2));
    assert_eq!(watch.state, v1::WatchState::Completed as i32);
}

#[tokio::test]
async fn cancel_ends_an_active_watch_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let watch = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await;
    let stream = client.events(&watch.watch_id, 0).await.unwrap();
    let cancelled = client
        .cancel_watch(&watch.watch_id, "job aborted")
        .await
        .unwrap();
    assert_eq!(cancelled.state, v1::WatchState::Cancelled as i32);
    assert_eq!(cancelled.reason, "job aborted");
    let events = read_to_end(stream, LIMIT).await;
    assert_eq!(kinds(&events), ["started", "cancelled"]);
    let again = client.cancel_watch(&watch.watch_id, "").await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let report = client
        .ingest_s3_events(vec![created("data-lake", &["after"])])
        .await
        .unwrap();
    assert_eq!(report.counted, 0, "a cancelled watch counts nothing");
}

#[tokio::test]
async fn client_token_makes_start_idempotent() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = start_request("data-lake", "p/", quiet_period(Duration::from_secs(60)));
    request.client_token = "run-2026-11-26".into();
    let first = client.start_watch(request.clone()).await.unwrap();
    let second = client.start_watch(request.clone()).await.unwrap();
    assert!(first.created && !second.created);
    assert_eq!(
        first.watch.unwrap().watch_id,
        second.watch.unwrap().watch_id
    );
    request.prefix = "q/".into();
    let err = client.start_watch(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("client_token"), "{}", err.message());
    let list = client.list_watches(Default::default()).await.unwrap();
    assert_eq!(list.watches.len(), 1);
}

fn expected_count(objects: u64) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects,
            quiet_window: None,
        })),
        ..Default::default()
    }
}

fn group_request(members: &[&v1::Watch], policy: v1::Policy) -> v1::StartWatchRequest {
    v1::StartWatchRequest {
        members: members.iter().map(|w| w.watch_id.clone()).collect(),
        policy: Some(policy),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_watch_group_completes_after_all_its_members_and_reopens_with_one() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Two data sets with their own rules: one object expected, and a quiet period.
    let a = begin(
        &mut client,
        start_request("data-lake", "a/", expected_count(1)),
    )
    .await;
    let mut quiet = quiet_period(Duration::from_secs(5));
    quiet.late_window = Some(duration(Duration::from_secs(600)));
    let b = begin(&mut client, start_request("data-lake", "b/", quiet)).await;
    let policy = v1::Policy {
        timeout: Some(duration(Duration::from_secs(3600))),
        late_window: Some(duration(Duration::from_secs(600))),
        ..Default::default()
    };
    let group = begin(&mut client, group_request(&[&a, &b], policy)).await;
    assert_eq!(group.members, [a.watch_id.clone(), b.watch_id.clone()]);
    assert_eq!(
        (group.bucket.as_str(), group.state),
        ("", v1::WatchState::Active as i32)
    );
    let mut stream = client.events(&group.watch_id, 0).await.unwrap();

    let report = client
        .ingest_s3_events(vec![created("data-lake", &["a/1", "b/1", "b/2"])])
        .await
        .unwrap();
    assert_eq!(report.counted, 3, "each object counts in its member, once");
    let mut a_events = client.events(&a.watch_id, 0).await.unwrap();
    read_until(&mut a_events, LIMIT, |e| kind(e) == "completed").await;
    let waiting = client.get_watch(&group.watch_id).await.unwrap();
    assert_eq!(
        waiting.state,
        v1::WatchState::Active as i32,
        "b is still active"
    );
    assert_eq!(
        (waiting.object_count, waiting.event_count),
        (3, 3),
        "a group shows its members' sums"
    );

    idle(Duration::from_secs(6)).await;
    let events = read_until(&mut stream, LIMIT, |e| kind(e) == "completed").await;
    assert_eq!(kinds(&events), ["started", "completed"]);
    assert_gapless(&events, 1);
    let Some(v1::watch_event::Kind::Completed(done)) = &events[1].kind else {
        unreachable!()
    };
    assert_eq!(done.object_count, 3);
    assert_eq!(done.reason, "all 2 members completed; 3 objects");
    let b_now = client.get_watch(&b.watch_id).await.unwrap();
    assert_eq!(b_now.state, v1::WatchState::Completed as i32);
    let group_now = client.get_watch(&group.watch_id).await.unwrap();
    assert!(
        to_millis(group_now.completed_at.unwrap()) >= to_millis(b_now.completed_at.unwrap()),
        "the group completed before its last member"
    );

    // Late data reopens b, and with it the group, until b completes again.
    client
        .ingest_s3_events(vec![created("data-lake", &["b/late"])])
        .await
        .unwrap();
    let events = read_until(&mut stream, LIMIT, |e| kind(e) == "reopened").await;
    let Some(v1::watch_event::Kind::Reopened(reopened)) = &events[0].kind else {
        panic!("{events:?}")
    };
    assert!(reopened.reason.contains(&b.watch_id), "{}", reopened.reason);
    assert_eq!(events[0].generation, 2);
    let reopened = client.get_watch(&group.watch_id).await.unwrap();
    assert_eq!(
        (reopened.state, reopened.generation),
        (v1::WatchState::Active as i32, 2)
    );
    idle(Duration::from_secs(6)).await;
    let events = read_until(&mut stream, LIMIT, |e| kind(e) == "completed").await;
    assert_eq!(kinds(&events), ["completed"]);
    assert_eq!(events[0].generation, 2);
    let done = client.get_watch(&group.watch_id).await.unwrap();
    assert_eq!((done.object_count, done.last_seq), (4, 4));
}

#[tokio::test]
async fn a_watch_group_ends_timed_out_when_a_member_is_cancelled() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let a = begin(
        &mut client,
        start_request("data-lake", "a/", expected_count(1)),
    )
    .await;
    let b = begin(
        &mut client,
        start_request("data-lake", "b/", expected_count(1)),
    )
    .await;
    let group = begin(&mut client, group_request(&[&a, &b], v1::Policy::default())).await;
    let stream = client.events(&group.watch_id, 0).await.unwrap();
    client
        .ingest_s3_events(vec![created("data-lake", &["a/1"])])
        .await
        .unwrap();
    client
        .cancel_watch(&b.watch_id, "job aborted")
        .await
        .unwrap();
    let events = read_to_end(stream, LIMIT).await;
    assert_eq!(kinds(&events), ["started", "timed_out"]);
    let Some(v1::watch_event::Kind::TimedOut(ended)) = &events[1].kind else {
        unreachable!()
    };
    assert_eq!(
        ended.reason,
        format!(
            "member {} ended CANCELLED: job aborted; the group cannot complete",
            b.watch_id
        )
    );
}

fn marker(key: &str, quiet_window: Option<Duration>, verify_manifest: bool) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::Marker(v1::MarkerRule {
            key: key.into(),
            quiet_window: quiet_window.map(duration),
            verify_manifest,
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_marker_completes_the_watch_and_is_no_object_of_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = start_request("data-lake", "day=1/", marker("_SUCCESS", None, false));
    // Users exclude the marker from the data set; it still completes the watch.
    request.exclude = vec!["**/_SUCCESS".into(), "_temporary/**".into()];
    let watch = begin(&mut client, request).await;
    let stream = client.events(&watch.watch_id, 0).await.unwrap();
    client
        .ingest_s3_events(vec![created(
            "data-lake",
            &[
                "day=1/part 0.parquet",
                "day=1/_temporary/x",
                "day=1/part+1.parquet",
            ],
        )])
        .await
        .unwrap();
    let seen = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!(seen.state, v1::WatchState::Active as i32, "no marker yet");
    let status = seen.marker.unwrap();
    assert!(!status.seen && status.created_at.is_none());
    // A marker elsewhere is not this watch's marker.
    let report = client
        .ingest_s3_events(vec![
            created("data-lake", &["day=1/sub/_SUCCESS", "day=2/_SUCCESS"]),
            created("data-lake", &["day=1/_SUCCESS"]),
            // Redelivered: the same marker.
            created("data-lake", &["day=1/_SUCCESS"]),
        ])
        .await
        .unwrap();
    assert_eq!(
        (report.matched, report.counted, report.duplicates),
        (2, 1, 1)
    );

    let events = read_to_end(stream, LIMIT).await;
    assert_eq!(
        kinds(&events),
        ["started", "progress", "progress", "completed"]
    );
    let Some(v1::watch_event::Kind::Completed(done)) = &events[3].kind else {
        unreachable!()
    };
    assert_eq!(done.reason, "marker _SUCCESS created; 2 objects");
    let watch = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!((watch.object_count, watch.event_count), (2, 2));
    let status = watch.marker.unwrap();
    assert!(status.seen && status.created_at.is_some());
    let objects = client
        .list_watch_objects(v1::ListWatchObjectsRequest {
            watch_id: watch.watch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = objects.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        ["day=1/part 0.parquet", "day=1/part+1.parquet"],
        "the marker is not in the manifest"
    );
}

fn at(secs: f64) -> prost_types::Timestamp {
    let ms = 1_796_533_200_000 + (secs * 1000.0) as i64;
    prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn outcome<'a>(r: &'a v1::ReplayWatchResponse, name: &str) -> &'a v1::ReplayOutcome {
    r.outcomes
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no {name} in {:?}",
                r.outcomes.iter().map(|o| &o.name).collect::<Vec<_>>()
            )
        })
}

fn secs(d: Option<&prost_types::Duration>) -> f64 {
    let d = d.expect("a duration");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

#[tokio::test]
async fn replay_shows_what_each_policy_would_have_decided() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Ten objects a second apart, notified a second later; the last one's
    // notification is 70s late.
    let objects = (0..10)
        .map(|i| v1::ReplayObject {
            created: Some(at(f64::from(i))),
            arrived: Some(at(f64::from(i) + if i == 9 { 70.0 } else { 1.0 })),
        })
        .collect();
    let extra = quiet_period(Duration::from_secs(30));
    let r = client
        .replay_watch(v1::ReplayWatchRequest {
            objects,
            policies: vec![extra],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.objects, 10);
    assert_eq!(r.last_created, Some(at(9.0)));
    // 30s after the ninth arrival (at 9s): before the tenth object's notification.
    let quiet = outcome(&r, "policies[0]");
    assert!(quiet.early && quiet.completed);
    assert_eq!(quiet.first_completion_objects, 9);
    assert_eq!(secs(quiet.first_completion.as_ref()), 30.0);
    assert_eq!(quiet.reopens, 1);
    assert_eq!(
        secs(quiet.delay.as_ref()),
        70.0 + 30.0,
        "30s after the late arrival"
    );
    // With a listing, the tenth object is found at the first decision.
    let listed = outcome(&r, "adaptive (defaults) + listing");
    assert!(!listed.early && listed.listings >= 1);
    assert_eq!(
        secs(listed.delay.as_ref()),
        75.0,
        "the floor, after the last creation"
    );
    let knowing = outcome(&r, "expected_count 10");
    assert!(!knowing.early);
    assert_eq!(
        secs(knowing.delay.as_ref()),
        70.0,
        "the late notification itself"
    );

    // On a watch of the server's: its own policy, replayed on what it counted.
    let watch = begin(
        &mut client,
        start_request(
            "data-lake",
            "day=1/",
            quiet_period(Duration::from_millis(500)),
        ),
    )
    .await;
    let stream = client.events(&watch.watch_id, 0).await.unwrap();
    client
        .ingest_s3_events(vec![created("data-lake", &["day=1/a", "day=1/b"])])
        .await
        .unwrap();
    read_to_end(stream, LIMIT).await;
    let done = client.get_watch(&watch.watch_id).await.unwrap();
    let r = client
        .replay_watch(v1::ReplayWatchRequest {
            watch_id: watch.watch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.objects, 2);
    let own = outcome(&r, "this watch's policy");
    assert!(own.completed && !own.early);
    let replayed_at =
        to_millis(r.last_created.unwrap()) + (secs(own.delay.as_ref()) * 1000.0).round() as i64;
    assert_eq!(
        replayed_at,
        to_millis(done.last_activity_at.unwrap()) + 500,
        "the replay completes where the rule's deadline fell"
    );
    assert!(replayed_at <= to_millis(done.completed_at.unwrap()));
}
