//! `policy.reconcile`: before completing, the server lists the prefix in S3
//! and counts objects no notification told of; a watch without it trusts the
//! notifications alone.

mod support;

use std::time::Duration;

use streamwatch_client::proto as v1;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

async fn s3() -> aws_sdk_s3::Client {
    aws::require_emulator();
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

fn completed_count(events: &[v1::WatchEvent]) -> u64 {
    match &events.last().expect("events").kind {
        Some(v1::watch_event::Kind::Completed(done)) => done.object_count,
        other => panic!("expected COMPLETED last, got {other:?}"),
    }
}

#[tokio::test]
async fn reconcile_counts_objects_whose_notifications_were_lost() {
    let s3 = s3().await;
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

    let sqs = aws::sqs().await;
    let (queue, _) =
        aws::queue_with_dlq(&sqs, &aws::unique("reconcile"), 5, Duration::from_secs(30)).await;
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.sqs_queue_urls = vec![queue];
    config.sqs_wait = Duration::from_secs(1);
    let server = TestServer::start_with(dir, config, None).await;
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
    let s3 = s3().await;
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
    let sqs = aws::sqs().await;
    let (queue, _) = aws::queue_with_dlq(
        &sqs,
        &aws::unique("reconfilter"),
        5,
        Duration::from_secs(30),
    )
    .await;
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.sqs_queue_urls = vec![queue];
    config.sqs_wait = Duration::from_secs(1);
    let server = TestServer::start_with(dir, config, None).await;
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
