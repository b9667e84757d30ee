//! Confirming against S3 itself. `policy.reconcile`: before completing, the
//! server lists the prefix and counts objects no notification told of; a
//! watch without it trusts the notifications alone. `marker.verify_manifest`:
//! the server reads the producer's `_SUCCESS` and completes only once every
//! file it lists has been counted.

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A server with AWS access (it consumes a queue of its own), as listing S3
/// needs.
async fn server_with_queue(name: &str) -> TestServer {
    let sqs = aws::sqs().await;
    let (queue, _) =
        aws::queue_with_dlq(&sqs, &aws::unique(name), 5, Duration::from_secs(30)).await;
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.sqs_queue_urls = vec![queue];
    config.sqs_wait = Duration::from_secs(1);
    TestServer::start_with(dir, config).await
}

fn completed_count(events: &[v1::WatchEvent]) -> u64 {
    match &events.last().expect("events").kind {
        Some(v1::watch_event::Kind::Completed(done)) => done.object_count,
        other => panic!("expected COMPLETED last, got {other:?}"),
    }
}

#[tokio::test]
async fn reconcile_counts_objects_whose_notifications_were_lost() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("reconcile");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let keys = [
        "batch/1.json",
        "batch/2.json",
        "batch/3 three.json",
        "batch/4.json",
        "batch/5.json",
    ];
    for key in keys {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(b"{}".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    s3.put_object()
        .bucket(&bucket)
        .key("other/x.json")
        .body(b"{}".to_vec().into())
        .send()
        .await
        .unwrap();

    let server = server_with_queue("reconcile").await;
    let mut client = server.client().await;

    let mut checked = quiet_period(Duration::from_secs(2));
    checked.reconcile = true;
    let checked = begin(&mut client, start_request(&bucket, "batch/", checked)).await;
    let trusting = begin(
        &mut client,
        start_request(&bucket, "batch/", quiet_period(Duration::from_secs(2))),
    )
    .await;
    let checked_events = client.events(&checked.watch_id, 0).await.unwrap();
    let trusting_events = client.events(&trusting.watch_id, 0).await.unwrap();
    // Only three of the five notifications arrive.
    let report = client
        .ingest_s3_events(vec![created(&bucket, &keys[..3])])
        .await
        .unwrap();
    assert_eq!(report.counted, 6);

    let trusting_events = read_to_end(trusting_events, LIMIT).await;
    assert_eq!(completed_count(&trusting_events), 3);
    let checked_events = read_to_end(checked_events, LIMIT).await;
    assert_eq!(
        completed_count(&checked_events),
        5,
        "{:?}",
        kinds(&checked_events)
    );
    assert_gapless(&checked_events, 1);
    let watch = client.get_watch(&checked.watch_id).await.unwrap();
    assert_eq!((watch.object_count, watch.event_count), (5, 5));
    let quiet = watch.completed_at.unwrap().seconds - watch.last_activity_at.unwrap().seconds;
    assert!(
        quiet >= 1,
        "the listing was activity: the watch waited a window after it"
    );
}

#[tokio::test]
async fn reconcile_counts_only_the_keys_the_filter_takes() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("reconfilter");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let objects = [
        ("out/a.parquet", 3),
        ("out/day=1/b.parquet", 5),
        ("out/day=1/_SUCCESS", 0),
        ("out/_temporary/0/c.parquet", 7),
        ("out/day=1/c.json", 11),
    ];
    for (key, size) in objects {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(vec![b'x'; size].into())
            .send()
            .await
            .unwrap();
    }
    let server = server_with_queue("reconfilter").await;
    let mut client = server.client().await;

    let mut policy = quiet_period(Duration::from_secs(2));
    policy.reconcile = true;
    let request = v1::StartWatchRequest {
        include: vec!["**/*.parquet".into()],
        exclude: vec!["_temporary/**".into()],
        ..start_request(&bucket, "out/", policy)
    };
    let watch = begin(&mut client, request).await;
    let events = client.events(&watch.watch_id, 0).await.unwrap();
    // No notification arrives at all: the listing finds what the filter takes.
    let events = read_to_end(events, LIMIT).await;
    assert_eq!(completed_count(&events), 2, "{:?}", kinds(&events));
    let watch = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!(watch.object_bytes, 8, "sizes from the listing");
    let page = client
        .list_watch_objects(v1::ListWatchObjectsRequest {
            watch_id: watch.watch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<(&str, u64)> = page
        .objects
        .iter()
        .map(|o| (o.key.as_str(), o.size))
        .collect();
    assert_eq!(listed, [("out/a.parquet", 3), ("out/day=1/b.parquet", 5)]);
}

#[tokio::test]
async fn reconcile_needs_a_server_with_aws_access() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut policy = quiet_period(Duration::from_secs(2));
    policy.reconcile = true;
    let status = client
        .start_watch(start_request("data-lake", "", policy))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("invalid policy.reconcile:"),
        "{}",
        status.message()
    );
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/markers/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path).unwrap()
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
}

fn verified_marker(timeout: Option<Duration>) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::Marker(v1::MarkerRule {
            key: "_SUCCESS".into(),
            quiet_window: None,
            verify_manifest: true,
        })),
        timeout: timeout.map(duration),
        ..Default::default()
    }
}

/// GetWatch until `reason` holds: waiting on a manifest writes no event.
async fn until_reason(
    client: &mut streamwatch_client::Client,
    id: &str,
    wanted: &str,
) -> v1::Watch {
    eventually(&format!("the reason {wanted:?}"), LIMIT, async || {
        let watch = client.get_watch(id).await.unwrap();
        if watch.reason == wanted {
            Ok(watch)
        } else {
            Err(watch.reason)
        }
    })
    .await
}

#[tokio::test]
async fn a_verified_marker_completes_only_once_every_file_its_manifest_lists_is_counted() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("marker");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let part = |i: u32| format!("out/day=1/part-0000{i}-3b1c.c000.snappy.parquet");
    for i in 0..3 {
        put(&s3, &bucket, &part(i), "PAR1").await;
    }
    // The S3A committers' _SUCCESS lists keys with a leading '/'.
    put(
        &s3,
        &bucket,
        "out/day=1/_SUCCESS",
        &fixture("s3a_success.json"),
    )
    .await;
    // The manifest committer's lists URIs; one of its files never arrives.
    let manifest = fixture("manifest_success.json").replace(
        "s3a://lake/out/day=1/",
        &format!("s3a://{bucket}/out/day=2/"),
    );
    put(&s3, &bucket, "out/day=2/_SUCCESS", &manifest).await;

    let server = server_with_queue("marker").await;
    let mut client = server.client().await;
    let day1 = begin(
        &mut client,
        start_request(&bucket, "out/day=1/", verified_marker(None)),
    )
    .await;
    let timeout = Duration::from_secs(4);
    let day2 = begin(
        &mut client,
        start_request(&bucket, "out/day=2/", verified_marker(Some(timeout))),
    )
    .await;
    let day1_events = client.events(&day1.watch_id, 0).await.unwrap();
    let day2_events = client.events(&day2.watch_id, 0).await.unwrap();

    // The marker's notification overtakes one part's.
    client
        .ingest_s3_events(vec![
            created(&bucket, &[&part(0), &part(1), "out/day=1/_SUCCESS"]),
            created(
                &bucket,
                &["out/day=2/part-00000 a+b.parquet", "out/day=2/_SUCCESS"],
            ),
        ])
        .await
        .unwrap();
    let waiting = until_reason(
        &mut client,
        &day1.watch_id,
        "the marker's manifest lists 3 files, 1 not counted yet",
    )
    .await;
    assert_eq!(waiting.state, v1::WatchState::Active as i32);
    let status = waiting.marker.unwrap();
    assert_eq!(
        (status.seen, status.manifest_files, status.manifest_missing),
        (true, 3, 1)
    );

    client
        .ingest_s3_events(vec![created(&bucket, &[&part(2)])])
        .await
        .unwrap();
    let events = read_to_end(day1_events, LIMIT).await;
    let Some(v1::watch_event::Kind::Completed(done)) = &events.last().unwrap().kind else {
        panic!("expected COMPLETED, got {events:?}")
    };
    assert_eq!(
        done.reason,
        "marker _SUCCESS created; 3 objects; the marker's manifest lists 3 files, all counted"
    );

    let events = read_to_end(day2_events, LIMIT).await;
    let Some(v1::watch_event::Kind::TimedOut(out)) = &events.last().unwrap().kind else {
        panic!("expected TIMED_OUT, got {events:?}")
    };
    assert!(
        out.reason
            .ends_with("the marker's manifest lists 2 files, 1 not counted yet"),
        "{}",
        out.reason
    );
}

/// Object-created records for `keys`, each with the creation instant S3
/// gave it (its `LastModified`) as `eventTime`, as S3 sends them.
async fn notifications(s3: &aws_sdk_s3::Client, bucket: &str, keys: &[&str]) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(&created(bucket, keys)).unwrap();
    for (record, key) in doc["Records"].as_array_mut().unwrap().iter_mut().zip(keys) {
        let head = s3
            .head_object()
            .bucket(bucket)
            .key(*key)
            .send()
            .await
            .unwrap();
        let modified = head.last_modified.unwrap();
        let at = rfc3339(modified.secs(), modified.subsec_nanos());
        record["eventTime"] = serde_json::Value::String(at);
    }
    doc.to_string()
}

/// RFC 3339 with milliseconds, from Unix seconds and nanoseconds.
fn rfc3339(secs: i64, nanos: u32) -> String {
    let t = std::time::UNIX_EPOCH + Duration::new(secs as u64, nanos);
    humantime::format_rfc3339_millis(t).to_string()
}

#[tokio::test]
async fn adaptive_with_a_listing_waits_for_objects_whose_notifications_are_held_back() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("creation");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let server = server_with_queue("creation").await;
    let mut client = server.client().await;

    // With nothing set, a listing lowers the adaptive defaults.
    let mut defaults = v1::Policy {
        rule: Some(v1::policy::Rule::Adaptive(v1::AdaptiveRule::default())),
        ..Default::default()
    };
    defaults.reconcile = true;
    let stored = begin(&mut client, start_request(&bucket, "other/", defaults)).await;
    let Some(v1::policy::Rule::Adaptive(rule)) = stored.policy.unwrap().rule else {
        panic!("adaptive")
    };
    assert_eq!(
        (rule.min_window.unwrap().seconds, rule.safety_factor),
        (75, 1.15)
    );

    let mut policy = v1::Policy {
        rule: Some(v1::policy::Rule::Adaptive(v1::AdaptiveRule {
            min_window: Some(duration(Duration::from_secs(2))),
            ..Default::default()
        })),
        ..Default::default()
    };
    policy.reconcile = true;
    // Late data would reopen it: the held notifications must not.
    policy.late_window = Some(duration(Duration::from_secs(600)));
    let watch = begin(&mut client, start_request(&bucket, "run/", policy)).await;
    let mut events = client.events(&watch.watch_id, 0).await.unwrap();
    let keys = ["run/1", "run/2", "run/3", "run/4 four", "run/5"];
    for key in keys {
        put(&s3, &bucket, key, "{}").await;
    }
    // The last two notifications are held back, longer than the window.
    let report = client
        .ingest_s3_events(vec![notifications(&s3, &bucket, &keys[..3]).await])
        .await
        .unwrap();
    assert_eq!(report.counted, 3);
    let events = read_until(&mut events, LIMIT, |e| kind(e) == "completed").await;
    assert_eq!(completed_count(&events), 5, "{:?}", kinds(&events));
    let Some(v1::watch_event::Kind::Completed(done)) = &events.last().unwrap().kind else {
        unreachable!()
    };
    assert!(
        done.reason
            .contains("a listing of the prefix found none unseen"),
        "{}",
        done.reason
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.kind, Some(v1::watch_event::Kind::Reopened(_)))),
        "it never completed short"
    );
    let seen = client.get_watch(&watch.watch_id).await.unwrap();
    assert!(seen.newest_event_time.is_some());

    // The held notifications arrive at last: the listing already counted them.
    let report = client
        .ingest_s3_events(vec![notifications(&s3, &bucket, &keys[3..]).await])
        .await
        .unwrap();
    assert_eq!((report.counted, report.duplicates), (0, 2));
    let after = client.get_watch(&watch.watch_id).await.unwrap();
    assert_eq!(
        (after.object_count, after.generation, after.last_seq),
        (5, 1, seen.last_seq),
        "no count, no activity, no reopening"
    );
}

#[tokio::test]
async fn a_series_completes_its_third_run_on_the_count_the_first_two_ended_with() {
    require_emulator!();
    let s3 = aws::s3().await;
    let bucket = aws::unique("series");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let server = server_with_queue("series").await;
    let mut client = server.client().await;
    let policy = |min_window: u64, min_objects: u64| v1::Policy {
        rule: Some(v1::policy::Rule::Adaptive(v1::AdaptiveRule {
            min_window: Some(duration(Duration::from_secs(min_window))),
            ..Default::default()
        })),
        min_objects,
        reconcile: true,
        late_window: Some(duration(Duration::from_secs(600))),
        ..Default::default()
    };
    let mut reasons = Vec::new();
    for day in 1..=3 {
        let prefix = format!("day={day}/");
        // The first two runs pause 1s and 3s after their first object: too
        // far apart for a floor. The third run's own window is far longer
        // than the test waits: only the series' count can complete it.
        let (min_window, min_objects, pause) = match day {
            1 => (2, 3, 1),
            2 => (2, 3, 3),
            _ => (600, 1, 0),
        };
        let mut request = start_request(&bucket, &prefix, policy(min_window, min_objects));
        request
            .labels
            .insert("series".into(), "daily-export".into());
        let watch = begin(&mut client, request).await;
        let mut events = client.events(&watch.watch_id, 0).await.unwrap();
        let keys: Vec<String> = (0..3).map(|i| format!("{prefix}part-{i}.json")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        // Each object's notification arrives as it is created, but the third
        // run's last, which is held back: a probe listing counts its object.
        for (i, key) in keys.iter().enumerate() {
            if i == 1 {
                // The producer's own pause.
                tokio::time::sleep(Duration::from_secs(pause)).await;
            }
            put(&s3, &bucket, key, "{}").await;
            if day < 3 || i < 2 {
                client
                    .ingest_s3_events(vec![notifications(&s3, &bucket, &[key]).await])
                    .await
                    .unwrap();
            }
        }
        let events = read_until(&mut events, LIMIT, |e| kind(e) == "completed").await;
        assert_eq!(completed_count(&events), 3, "day {day}");
        let Some(v1::watch_event::Kind::Completed(done)) = &events.last().unwrap().kind else {
            unreachable!()
        };
        if day == 3 {
            assert_eq!(
                done.reason,
                "the count of series daily-export landed: 3 objects, as in each of its last 2 runs; \
                 no object created for 3s, and a listing of the prefix found none unseen"
            );
            let seen = client.get_watch(&watch.watch_id).await.unwrap();
            let window = seen.adaptive_window.unwrap();
            assert!(
                window.explanation.starts_with("min_window;"),
                "{}",
                window.explanation
            );
            // The held notification arrives: the probe already counted it.
            let report = client
                .ingest_s3_events(vec![notifications(&s3, &bucket, &keys[2..]).await])
                .await
                .unwrap();
            assert_eq!((report.counted, report.duplicates), (0, 1));
            let after = client.get_watch(&watch.watch_id).await.unwrap();
            assert_eq!(
                (after.object_count, after.generation, after.last_seq),
                (3, 1, seen.last_seq),
                "no count, no activity, no reopening"
            );
        } else {
            reasons.push(done.reason.clone());
        }
    }
    for reason in &reasons {
        assert!(reason.starts_with("no object created for "), "{reason}");
    }
}
