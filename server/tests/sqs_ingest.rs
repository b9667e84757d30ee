//! Notifications through SQS: consumed, counted exactly, deleted once
//! durable; bodies that are not notifications go to the dead-letter queue;
//! and no watch completes while its queue is still backed up.

mod support;

use std::time::Duration;

use streamwatch_client::proto as v1;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn sqs_config(dir: &DataDir, queue: &str) -> streamwatch_server::config::Config {
    let mut config = dir.config(false);
    config.sqs_queue_urls = vec![queue.to_owned()];
    config.sqs_wait = Duration::from_secs(1);
    config.sqs_consumers = 2;
    config
}

async fn send(sqs: &aws_sdk_sqs::Client, queue: &str, bodies: Vec<String>) {
    for chunk in bodies.chunks(10) {
        let entries = chunk.iter().enumerate().map(|(i, body)| {
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .build()
                .unwrap()
        });
        let out = sqs
            .send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries.collect()))
            .send()
            .await
            .unwrap();
        assert!(out.failed.is_empty(), "{:?}", out.failed);
    }
}

async fn visible(sqs: &aws_sdk_sqs::Client, queue: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    attrs[&A::ApproximateNumberOfMessages]
        .parse::<u64>()
        .unwrap()
        + attrs[&A::ApproximateNumberOfMessagesNotVisible]
            .parse::<u64>()
            .unwrap()
}

#[tokio::test]
async fn queued_notifications_count_exactly_and_leave_the_queue() {
    let sqs = aws::sqs().await;
    let (queue, _dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("ingest"), 5, Duration::from_secs(30)).await;
    let dir = DataDir::new();
    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue), None).await;
    let mut client = server.client().await;
    let watch = begin(
        &mut client,
        start_request("data-lake", "in/", quiet_period(Duration::from_secs(3))),
    )
    .await;
    let stream = client.events(&watch.watch_id, 0).await.unwrap();
    let mut bodies: Vec<String> = (0..40)
        .map(|i| created("data-lake", &[&format!("in/obj {i}.json")]))
        .collect();
    // Redeliveries, an SNS-wrapped copy and a test event ride along.
    bodies.extend(bodies[..10].to_vec());
    bodies.push(include_str!("fixtures/s3_test_event.json").to_owned());
    send(&sqs, &queue, bodies).await;

    let events = read_to_end(stream, LIMIT).await;
    let Some(v1::watch_event::Kind::Completed(done)) = &events.last().unwrap().kind else {
        panic!("expected COMPLETED, got {:?}", kinds(&events));
    };
    assert_eq!(done.object_count, 40);
    assert_eq!(
        client.get_watch(&watch.watch_id).await.unwrap().event_count,
        40
    );
    let deadline = tokio::time::Instant::now() + LIMIT;
    while visible(&sqs, &queue).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "recorded messages were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // SQS has no change notification to await
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_notification_goes_to_the_dead_letter_queue() {
    let sqs = aws::sqs().await;
    let (queue, dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("poison"), 2, Duration::from_secs(1)).await;
    let dir = DataDir::new();
    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue), None).await;
    let mut client = server.client().await;
    let watch = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await;
    send(
        &sqs,
        &queue,
        vec![
            "{\"this is\": \"not a notification\"}".into(),
            created("data-lake", &["good"]),
        ],
    )
    .await;

    let deadline = tokio::time::Instant::now() + LIMIT;
    let poison = loop {
        let out = sqs
            .receive_message()
            .queue_url(&dlq)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages.unwrap_or_default().into_iter().next() {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison message never reached the dead-letter queue"
        );
    };
    assert_eq!(poison.body(), Some("{\"this is\": \"not a notification\"}"));
    assert_eq!(
        client
            .get_watch(&watch.watch_id)
            .await
            .unwrap()
            .object_count,
        1,
        "the good message counted"
    );
}

#[tokio::test]
async fn a_watch_waits_for_its_backed_up_queue_before_completing() {
    let sqs = aws::sqs().await;
    let (queue, _dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("backlog"), 5, Duration::from_secs(30)).await;
    let dir = DataDir::new();
    // Start the watch with no consumer running, so its notifications pile up.
    let first = TestServer::start_in(dir.clone(), false, None).await;
    let watch = begin(
        &mut first.client().await,
        start_request("data-lake", "", quiet_period(Duration::from_millis(300))),
    )
    .await;
    let dir = first.stop().await;
    let bodies: Vec<String> = (0..300)
        .map(|i| created("data-lake", &[&format!("part-{i:04}")]))
        .collect();
    send(&sqs, &queue, bodies).await;

    // By now the quiet deadline has long passed; only the backlog says otherwise.
    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue), None).await;
    let mut client = server.client().await;
    let events = read_to_end(client.events(&watch.watch_id, 0).await.unwrap(), LIMIT).await;
    let Some(v1::watch_event::Kind::Completed(done)) = &events.last().unwrap().kind else {
        panic!("expected COMPLETED, got {:?}", kinds(&events));
    };
    assert_eq!(
        done.object_count, 300,
        "completed only once the queue had caught up"
    );
    assert_gapless(&events, 1);
}
