//! Counting is exact: distinct keys, redeliveries never twice (whichever
//! envelope they come in: S3's own, SNS, EventBridge), overwrites and
//! removals as activity, and every watch whose prefix matches gets its count.

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

async fn active_watch(
    client: &mut streamwatch_client::Client,
    bucket: &str,
    prefix: &str,
) -> String {
    let request = start_request(bucket, prefix, quiet_period(Duration::from_secs(3600)));
    begin(client, request).await.watch_id
}

#[tokio::test]
async fn redelivered_notifications_never_count_twice() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = active_watch(&mut client, "data-lake", "").await;
    let doc = created("data-lake", &["a", "b", "c"]);

    let first = client.ingest_s3_events(vec![doc.clone()]).await.unwrap();
    assert_eq!((first.counted, first.duplicates), (3, 0));
    // The same document again, and twice within one call.
    let again = client
        .ingest_s3_events(vec![doc.clone(), doc])
        .await
        .unwrap();
    assert_eq!((again.counted, again.duplicates), (0, 6));
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!((watch.object_count, watch.event_count), (3, 3));
    assert_eq!(watch.last_seq, 2, "duplicates append no PROGRESS event");
}

#[tokio::test]
async fn duplicates_within_one_document_count_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = active_watch(&mut client, "data-lake", "").await;
    let doc = s3_document(
        "data-lake",
        &[
            ("ObjectCreated:Put", "k", "01"),
            ("ObjectCreated:Put", "k", "01"),
        ],
    );
    let report = client.ingest_s3_events(vec![doc]).await.unwrap();
    assert_eq!((report.counted, report.duplicates), (1, 1));
    assert_eq!(client.get_watch(&id).await.unwrap().object_count, 1);
}

#[tokio::test]
async fn one_event_told_directly_through_sns_and_through_eventbridge_counts_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = active_watch(&mut client, "data-lake", "day=1/").await;
    // Encoded in each envelope as S3 writes keys: `day%3D1/part+0001.json`.
    let key = "day=1/part 0001.json";
    let direct = s3_document("data-lake", &[(PUT, key, "0055AED6DCD90281E5")]);
    let report = client
        .ingest_s3_events(vec![
            direct.clone(),
            sns_wrapped(&direct),
            eventbridge("data-lake", "Object Created", key, "0055AED6DCD90281E5"),
        ])
        .await
        .unwrap();
    assert_eq!(
        (report.records, report.counted, report.duplicates),
        (3, 1, 2),
        "{report:?}"
    );
    // The removal, told by EventBridge, is activity of its own.
    let report = client
        .ingest_s3_events(vec![eventbridge(
            "data-lake",
            "Object Deleted",
            key,
            "0055AED6DCD90281E6",
        )])
        .await
        .unwrap();
    assert_eq!(report.counted, 1, "{report:?}");
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!(
        (watch.object_count, watch.event_count, watch.removed_count),
        (1, 1, 1)
    );
    let objects = client
        .list_watch_objects(v1::ListWatchObjectsRequest {
            watch_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .objects;
    assert_eq!(objects[0].key, key, "decoded once, in every envelope");
}

#[tokio::test]
async fn an_overwrite_is_activity_but_not_a_new_object() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = active_watch(&mut client, "data-lake", "").await;
    client
        .ingest_s3_events(vec![s3_document(
            "data-lake",
            &[("ObjectCreated:Put", "k", "01")],
        )])
        .await
        .unwrap();
    let report = client
        .ingest_s3_events(vec![s3_document(
            "data-lake",
            &[("ObjectCreated:Put", "k", "02")],
        )])
        .await
        .unwrap();
    assert_eq!(report.counted, 1);
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!((watch.object_count, watch.event_count), (1, 2));
}

#[tokio::test]
async fn removals_count_separately() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = active_watch(&mut client, "data-lake", "").await;
    let doc = s3_document(
        "data-lake",
        &[
            ("ObjectCreated:Put", "k", "01"),
            ("ObjectRemoved:Delete", "k", "02"),
            ("ObjectRestore:Post", "k", "03"),
        ],
    );
    let report = client.ingest_s3_events(vec![doc.clone()]).await.unwrap();
    assert_eq!((report.records, report.counted, report.ignored), (3, 2, 1));
    client.ingest_s3_events(vec![doc]).await.unwrap();
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!(
        (watch.object_count, watch.event_count, watch.removed_count),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn every_matching_watch_counts_and_others_do_not() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let whole = active_watch(&mut client, "data-lake", "").await;
    let day1 = active_watch(&mut client, "data-lake", "day=1/").await;
    let day2 = active_watch(&mut client, "data-lake", "day=2/").await;
    let other = active_watch(&mut client, "other-lake", "").await;
    let report = client
        .ingest_s3_events(vec![created(
            "data-lake",
            &["day=1/a", "day=1/b", "day=2/a", "top"],
        )])
        .await
        .unwrap();
    assert_eq!((report.records, report.matched, report.counted), (4, 4, 7));
    let mut counts = Vec::new();
    for id in [&whole, &day1, &day2, &other] {
        counts.push(client.get_watch(id).await.unwrap().object_count);
    }
    assert_eq!(counts, [4, 2, 1, 0]);
}

#[tokio::test]
async fn keys_are_decoded_before_matching_prefixes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = active_watch(&mut client, "data-lake", "my reports/q=1+2/").await;
    // `created` URL-encodes like S3: space as '+', '+' as %2B, '=' as %3D.
    let report = client
        .ingest_s3_events(vec![created("data-lake", &["my reports/q=1+2/x.csv"])])
        .await
        .unwrap();
    assert_eq!(report.counted, 1);
    assert_eq!(client.get_watch(&id).await.unwrap().object_count, 1);
}

#[tokio::test]
async fn notifications_before_the_watch_started_do_not_count() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let early = client
        .ingest_s3_events(vec![created("data-lake", &["early"])])
        .await
        .unwrap();
    assert_eq!((early.matched, early.ignored), (0, 1));
    let id = active_watch(&mut client, "data-lake", "").await;
    assert_eq!(client.get_watch(&id).await.unwrap().object_count, 0);
}

#[tokio::test]
async fn concurrent_ingest_calls_count_exactly() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = active_watch(&mut client, "data-lake", "").await;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for batch in 0..10 {
                let keys: Vec<String> =
                    (0..10).map(|i| format!("w{worker}/b{batch}/{i}")).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let doc = created("data-lake", &keys);
                // Every document is delivered twice, as SQS may.
                client.ingest_s3_events(vec![doc.clone()]).await.unwrap();
                client.ingest_s3_events(vec![doc]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!((watch.object_count, watch.event_count), (800, 800));
}

/// `s3_document` with each created key's own size.
fn sized(bucket: &str, objects: &[(&str, u64)]) -> String {
    let keys: Vec<&str> = objects.iter().map(|(k, _)| *k).collect();
    let mut doc: serde_json::Value = serde_json::from_str(&created(bucket, &keys)).unwrap();
    for (record, (_, size)) in doc["Records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(objects)
    {
        record["s3"]["object"]["size"] = (*size).into();
    }
    doc.to_string()
}

fn filtered(
    prefix: &str,
    include: &[&str],
    exclude: &[&str],
    policy: v1::Policy,
) -> v1::StartWatchRequest {
    v1::StartWatchRequest {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        ..start_request("data-lake", prefix, policy)
    }
}

#[tokio::test]
async fn key_filters_match_decoded_keys_below_the_prefix() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let request = filtered(
        "out put/",
        &["**/*.parquet", "*.csv"],
        &["_temporary/**", "**/_SUCCESS", "**/*.crc"],
        quiet_period(Duration::from_secs(3600)),
    );
    let id = begin(&mut client, request).await.watch_id;
    // `created` encodes like S3: space as '+', '+' as %2B, '%' as %25, UTF-8 escaped.
    let counted = [
        "out put/day=1/a+b c.parquet",
        "out put/ünï/cödé.parquet",
        "out put/100%.parquet",
        "out put/top level.csv",
    ];
    let left_out = [
        "out put/_temporary/0/a.parquet",
        "out put/day=1/_SUCCESS",
        "out put/day=1/.a.parquet.crc",
        "out put/day=1/nested.csv",
        "out put/day=1/a.json",
        "out put.parquet",
    ];
    let keys: Vec<&str> = counted.iter().chain(&left_out).copied().collect();
    let report = client
        .ingest_s3_events(vec![created("data-lake", &keys)])
        .await
        .unwrap();
    assert_eq!((report.matched, report.counted), (4, 4));
    assert_eq!(report.ignored, 6, "keys left out are nobody's");
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!(watch.object_count, 4);
    assert_eq!(watch.include, ["**/*.parquet", "*.csv"]);
    assert_eq!(watch.exclude.len(), 3);
    let page = client
        .list_watch_objects(v1::ListWatchObjectsRequest {
            watch_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut expected = counted.to_vec();
    expected.sort();
    let listed: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn excluded_keys_are_no_activity_and_a_quiet_watch_completes_on_time() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let request = filtered(
        "",
        &[],
        &["_temporary/**"],
        quiet_period(Duration::from_secs(10)),
    );
    let id = begin(&mut client, request).await.watch_id;
    client
        .ingest_s3_events(vec![created("data-lake", &["a.parquet"])])
        .await
        .unwrap();
    let landed = client.get_watch(&id).await.unwrap();
    assert_eq!(landed.last_seq, 2, "STARTED, PROGRESS");
    // Excluded keys keep arriving inside the window.
    for second in 0..9 {
        tokio::time::pause();
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::time::resume();
        let key = format!("_temporary/0/part-{second}");
        let report = client
            .ingest_s3_events(vec![created("data-lake", &[key.as_str()])])
            .await
            .unwrap();
        assert_eq!((report.matched, report.counted), (0, 0));
    }
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::time::resume();
    let mut client = server.client().await;
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!(watch.state, v1::WatchState::Completed as i32, "{watch:?}");
    assert_eq!(watch.last_seq, 3, "no PROGRESS for excluded keys");
    assert_eq!(watch.last_activity_at, landed.last_activity_at);
    let (done, last) = (
        watch.completed_at.unwrap(),
        landed.last_activity_at.unwrap(),
    );
    assert_eq!(
        done.seconds - last.seconds,
        10,
        "completed exactly a window after the last object"
    );
}

#[tokio::test]
async fn object_bytes_sum_each_key_once_under_redelivery() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut policy = quiet_period(Duration::from_secs(3600));
    policy.rule = Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
        objects: 3,
        quiet_window: None,
    }));
    let id = begin(&mut client, start_request("data-lake", "", policy))
        .await
        .watch_id;
    let doc = sized("data-lake", &[("a", 1), ("b b", 20)]);
    client
        .ingest_s3_events(vec![doc.clone(), doc.clone()])
        .await
        .unwrap();
    client.ingest_s3_events(vec![doc]).await.unwrap();
    // An overwrite of `a` (another sequencer) is activity, not another object.
    client
        .ingest_s3_events(vec![s3_document(
            "data-lake",
            &[("ObjectCreated:Put", "a", "0A")],
        )])
        .await
        .unwrap();
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!((watch.object_count, watch.object_bytes), (2, 21));
    client
        .ingest_s3_events(vec![sized("data-lake", &[("c", 300)])])
        .await
        .unwrap();
    let events = read_to_end(
        client.events(&id, 0).await.unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::watch_event::Kind::Progress(p)) => Some(p.object_bytes),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [21, 21, 321]);
    let Some(v1::watch_event::Kind::Completed(completed)) = &events.last().unwrap().kind else {
        panic!("ends COMPLETED: {events:?}");
    };
    assert_eq!((completed.object_count, completed.object_bytes), (3, 321));
}

async fn objects_page(
    client: &mut streamwatch_client::Client,
    id: &str,
    page_token: &str,
) -> v1::ListWatchObjectsResponse {
    client
        .list_watch_objects(v1::ListWatchObjectsRequest {
            watch_id: id.to_owned(),
            generation: 0,
            page_size: 2,
            page_token: page_token.to_owned(),
        })
        .await
        .unwrap()
}

fn object_keys(page: &v1::ListWatchObjectsResponse) -> Vec<&str> {
    page.objects.iter().map(|o| o.key.as_str()).collect()
}

#[tokio::test]
async fn manifests_page_by_key_and_stay_stable_while_objects_arrive() {
    let server = TestServer::start_with_tenants().await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let request = v1::StartWatchRequest {
        bucket: "shared-lake".into(),
        ..start_request("x", "", quiet_period(Duration::from_secs(3600)))
    };
    let id = begin(&mut acme, request).await.watch_id;
    acme.ingest_s3_events(vec![sized(
        "shared-lake",
        &[("d", 4), ("b", 2), ("e", 5), ("a", 1), ("c", 3)],
    )])
    .await
    .unwrap();

    let first = objects_page(&mut acme, &id, "").await;
    assert_eq!(object_keys(&first), ["a", "b"]);
    let a = &first.objects[0];
    assert_eq!((a.size, a.generation, a.removed), (1, 1, false));
    assert_eq!(a.sequencer, "000055AED6DCD90284", "as S3 compares it");
    assert_eq!(
        a.event_time.as_ref().map(|t| t.seconds),
        Some(1_795_687_200)
    );
    // Objects land before and after the cursor between pages.
    acme.ingest_s3_events(vec![
        sized("shared-lake", &[("aa", 9), ("f", 6)]),
        s3_document("shared-lake", &[("ObjectRemoved:Delete", "c", "0F")]),
    ])
    .await
    .unwrap();
    let second = objects_page(&mut acme, &id, &first.next_page_token).await;
    assert_eq!(object_keys(&second), ["c", "d"]);
    assert!(second.objects[0].removed);
    let third = objects_page(&mut acme, &id, &second.next_page_token).await;
    assert_eq!(object_keys(&third), ["e", "f"]);
    assert!(third.next_page_token.is_empty(), "the last page");
    assert_eq!(acme.get_watch(&id).await.unwrap().object_count, 7);

    // Another tenant's watch does not exist for it.
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let err = globex
        .list_watch_objects(v1::ListWatchObjectsRequest {
            watch_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Bad paging is refused by name.
    for (token, generation, field) in [
        ("zz", 0, "page_token"),
        ("ff", 0, "page_token"),
        ("", 2, "generation"),
    ] {
        let err = acme
            .list_watch_objects(v1::ListWatchObjectsRequest {
                watch_id: id.clone(),
                generation,
                page_size: 2,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{token}: {err}");
        assert!(err.message().contains(field), "{}", err.message());
    }
}

#[tokio::test]
async fn bad_key_patterns_are_refused_by_name_and_start_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let many: Vec<&str> = vec!["*.json"; 33];
    let long = "x".repeat(257);
    for (include, exclude, field) in [
        (vec!["**/*.parquet", "*.csv", "a[b"], vec![], "include[2]"),
        (vec![], vec!["{a,b"], "exclude[0]"),
        (vec![], vec!["ok", ""], "exclude[1]"),
        (vec![long.as_str()], vec![], "include[0]"),
        (many, vec![], "include"),
    ] {
        let request = filtered(
            "",
            &include,
            &exclude,
            quiet_period(Duration::from_secs(60)),
        );
        let err = client.start_watch(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let listed = client
        .list_all_watches(&streamwatch_client::ListFilter::new())
        .await
        .unwrap();
    assert!(listed.is_empty(), "nothing was started");
}

#[tokio::test]
async fn a_retried_start_with_another_filter_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let window = quiet_period(Duration::from_secs(60));
    let first = v1::StartWatchRequest {
        client_token: "run-1".into(),
        ..filtered("", &["**/*.parquet"], &[], window.clone())
    };
    let started = begin(&mut client, first.clone()).await;
    let again = client.start_watch(first.clone()).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.watch.unwrap().watch_id, started.watch_id);
    let other = v1::StartWatchRequest {
        include: vec!["**/*.csv".into()],
        ..first
    };
    let err = client.start_watch(other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("client_token"), "{}", err.message());
}
