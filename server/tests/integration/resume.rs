//! Subscribers never miss or repeat an event: resuming with `after_seq` gets
//! exactly the events after it, and a subscriber that stops reading while
//! many events happen catches up from the log.

use std::time::Duration;

use streamwatch_testkit::*;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn resume_with_after_seq_gets_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(2))),
    )
    .await
    .watch_id;
    let mut stream = client.events(&id, 0).await.unwrap();
    client
        .ingest_s3_events(vec![created("data-lake", &["a"])])
        .await
        .unwrap();
    let seen = read_until(&mut stream, LIMIT, |e| kind(e) == "progress").await;
    drop(stream); // the subscriber goes away after PROGRESS
    let last_seen = seen.last().unwrap().seq;

    client
        .ingest_s3_events(vec![created("data-lake", &["b"])])
        .await
        .unwrap();
    client
        .ingest_s3_events(vec![created("data-lake", &["c"])])
        .await
        .unwrap();
    let rest = read_to_end(client.events(&id, last_seen).await.unwrap(), LIMIT).await;
    assert_eq!(kinds(&rest), ["progress", "progress", "completed"]);
    assert_gapless(&rest, last_seen + 1);

    let whole = read_to_end(client.events(&id, 0).await.unwrap(), LIMIT).await;
    assert_gapless(&whole, 1);
    let mut stitched = seen;
    stitched.extend(rest);
    assert_eq!(
        stitched, whole,
        "what one subscriber saw across the reconnect is the whole log"
    );
}

#[tokio::test]
async fn after_seq_beyond_the_terminal_event_ends_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    client.cancel_watch(&id, "").await.unwrap();
    assert!(
        read_to_end(client.events(&id, 2).await.unwrap(), LIMIT)
            .await
            .is_empty()
    );
    assert_eq!(
        kinds(&read_to_end(client.events(&id, 1).await.unwrap(), LIMIT).await),
        ["cancelled"]
    );
    let status = client.events(&id, 3).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("invalid after_seq:"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_catches_up_without_gaps() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let mut stream = client.events(&id, 0).await.unwrap();
    read_until(&mut stream, LIMIT, |e| kind(e) == "started").await;
    // Far more events than the live buffer and the connection hold, while this
    // subscriber reads nothing.
    for i in 0..1500 {
        client
            .ingest_s3_events(vec![created("data-lake", &[&format!("obj-{i}")])])
            .await
            .unwrap();
    }
    client.cancel_watch(&id, "").await.unwrap();
    let events = read_to_end(stream, LIMIT).await;
    assert_eq!(events.len(), 1501, "1500 PROGRESS and CANCELLED");
    assert_gapless(&events, 2);
    assert_eq!(kind(events.last().unwrap()), "cancelled");
}

#[tokio::test]
async fn many_subscribers_see_the_same_log() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(2))),
    )
    .await
    .watch_id;
    let mut readers = Vec::new();
    for _ in 0..10 {
        let stream = server.client().await.events(&id, 0).await.unwrap();
        readers.push(tokio::spawn(read_to_end(stream, LIMIT)));
    }
    for i in 0..5 {
        client
            .ingest_s3_events(vec![created("data-lake", &[&format!("k{i}")])])
            .await
            .unwrap();
    }
    let mut logs = Vec::new();
    for r in readers {
        logs.push(r.await.unwrap());
    }
    assert_eq!(kinds(&logs[0]).last(), Some(&"completed"));
    assert_gapless(&logs[0], 1);
    assert!(logs.iter().all(|l| l == &logs[0]));
}
