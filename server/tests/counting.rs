//! Counting is exact: distinct keys, redeliveries never twice, overwrites and
//! removals as activity, and every watch whose prefix matches gets its count.

mod support;

use std::time::Duration;

use support::*;

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
