//! Notifications through SQS: consumed, counted exactly, deleted once
//! durable; bodies that are not notifications go to the dead-letter queue;
//! no watch completes while its queue is still backed up; a watch that lists
//! its prefix counts objects whose notifications are held back, and counts
//! nothing twice when they arrive; and, from a real bucket with the default
//! flags, confirming that the queue has caught up costs a short receive, not
//! a long poll.

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

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
    require_emulator!();
    let sqs = aws::sqs().await;
    let (queue, _dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("ingest"), 5, Duration::from_secs(30)).await;
    let dir = DataDir::new();
    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue)).await;
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
    bodies.push(sns_wrapped(&bodies[10]));
    bodies.push(include_str!("../fixtures/s3_test_event.json").to_owned());
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
    // SQS has no change notification to await.
    eventually(
        "the recorded messages are deleted",
        LIMIT,
        async || match visible(&sqs, &queue).await {
            0 => Ok(()),
            left => Err(left),
        },
    )
    .await;
}

#[tokio::test]
async fn a_body_that_is_not_a_notification_goes_to_the_dead_letter_queue() {
    require_emulator!();
    let sqs = aws::sqs().await;
    let (queue, dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("poison"), 2, Duration::from_secs(1)).await;
    let dir = DataDir::new();
    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue)).await;
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

    let poison = eventually(
        "the poison message reaches the dead-letter queue",
        LIMIT,
        async || {
            let out = sqs
                .receive_message()
                .queue_url(&dlq)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            out.messages.unwrap_or_default().into_iter().next()
        },
    )
    .await;
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
    require_emulator!();
    let sqs = aws::sqs().await;
    let (queue, _dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("backlog"), 5, Duration::from_secs(30)).await;
    let dir = DataDir::new();
    // Start the watch with no consumer running, so its notifications pile up.
    let first = TestServer::start_in(dir.clone(), false).await;
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
    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue)).await;
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

/// Receives from `queue` until it holds every notification of `keys`, each
/// kept invisible (held back from the server) for `hold`; any other message
/// goes back to the queue at once. Returns the held messages' receipt handles.
async fn hold_back(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    keys: &[String],
    hold: Duration,
) -> Vec<String> {
    let mut held = Vec::new();
    let mut missing: Vec<&String> = keys.iter().collect();
    eventually(
        "each notification to hold back reaches the queue",
        LIMIT,
        async || {
            let out = sqs
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .visibility_timeout(hold.as_secs() as i32)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            for m in out.messages.unwrap_or_default() {
                let (body, receipt) = (m.body().unwrap_or_default(), m.receipt_handle().unwrap());
                // Keys are URL-encoded in notifications (the emulator encodes `/` too).
                let names = |k: &str| [k.to_owned(), k.replace('/', "%2F")];
                match missing
                    .iter()
                    .position(|k| names(k).iter().any(|n| body.contains(n.as_str())))
                {
                    Some(i) => {
                        missing.remove(i);
                        held.push(receipt.to_owned());
                    }
                    None => release(sqs, queue, &[receipt.to_owned()]).await,
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(missing.clone())
            }
        },
    )
    .await;
    held
}

/// Makes held messages visible again: the server receives them now.
async fn release(sqs: &aws_sdk_sqs::Client, queue: &str, receipts: &[String]) {
    for receipt in receipts {
        sqs.change_message_visibility()
            .queue_url(queue)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_reconciling_watch_counts_held_back_notifications_by_listing_and_never_twice() {
    require_emulator!();
    let (s3, sqs) = (aws::s3().await, aws::sqs().await);
    let (bucket, queue) =
        aws::bucket_to_queue(&s3, &sqs, "heldback", Duration::from_secs(30)).await;
    let dir = DataDir::new();
    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue)).await;
    let mut client = server.client().await;
    let policy = |reconcile: bool| {
        let mut p = quiet_period(Duration::from_secs(3));
        p.min_objects = 1;
        p.reconcile = reconcile;
        // Activity after the completion would reopen the watch.
        p.late_window = Some(duration(Duration::from_secs(600)));
        p
    };
    let listing = begin(&mut client, start_request(&bucket, "in/", policy(true))).await;
    let trusting = begin(&mut client, start_request(&bucket, "in/", policy(false))).await;
    let dir = server.stop().await;

    // The producer writes 8 objects; S3's notifications of the last 3 are
    // late: the test takes them off the queue before the server runs and
    // holds them invisible.
    let keys: Vec<String> = (1..=8).map(|i| format!("in/part-{i}.json")).collect();
    for key in &keys {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(b"{}".to_vec().into())
            .send()
            .await
            .expect("put object");
    }
    let held = hold_back(&sqs, &queue, &keys[5..], Duration::from_secs(600)).await;
    // The emulator may deliver S3's notifications after the PUT returns:
    // the first five are in the queue before the server starts (the three
    // held back are in flight; S3's test event may be there too), as the
    // test means.
    eventually(
        "every notification reaches the queue (visible or held)",
        LIMIT,
        async || match visible(&sqs, &queue).await {
            n if n >= 8 => Ok(()),
            n => Err(n),
        },
    )
    .await;

    let server = TestServer::start_with(dir.clone(), sqs_config(&dir, &queue)).await;
    let mut client = server.client().await;
    let completed =
        |e: &v1::WatchEvent| matches!(e.kind, Some(v1::watch_event::Kind::Completed(_)));
    let mut listed = client.events(&listing.watch_id, 0).await.unwrap();
    let mut trusted = client.events(&trusting.watch_id, 0).await.unwrap();
    let listed_events = read_until(&mut listed, LIMIT, completed).await;
    assert_eq!(
        completed_count(&listed_events),
        8,
        "{:?}",
        kinds(&listed_events)
    );
    let trusted_events = read_until(&mut trusted, LIMIT, completed).await;
    // Only notifications told it: at most the five in the queue (under a
    // loaded emulator one of them can reach it after its 3s quiet window,
    // which then reopens it).
    let told = completed_count(&trusted_events);
    assert!(
        (1..=5).contains(&told),
        "only notifications told it: {told}"
    );
    // The listing counted the 3 objects while their notifications were
    // still held: once the server has deleted what it received, only those
    // are left (never fewer).
    eventually(
        "the server deletes what it received (messages left in the queue)",
        LIMIT,
        async || {
            let left = visible(&sqs, &queue).await;
            assert!(left >= 3, "a held notification left the queue: {left}");
            if left == 3 { Ok(()) } else { Err(left) }
        },
    )
    .await;

    // The held notifications arrive: the watch that never listed counts
    // them (and reopens); the one that listed counts nothing twice.
    release(&sqs, &queue, &held).await;
    let all_eight = |e: &v1::WatchEvent| matches!(&e.kind, Some(v1::watch_event::Kind::Completed(done)) if done.object_count == 8);
    let reopened = read_until(&mut trusted, LIMIT, all_eight).await;
    assert!(
        kinds(&reopened).contains(&"reopened"),
        "{:?}",
        kinds(&reopened)
    );
    eventually(
        "the released notifications are consumed",
        LIMIT,
        async || match visible(&sqs, &queue).await {
            0 => Ok(()),
            left => Err(left),
        },
    )
    .await;
    let watch = client.get_watch(&listing.watch_id).await.unwrap();
    assert_eq!(
        (watch.object_count, watch.event_count, watch.generation),
        (8, 8, 1),
        "the late notifications counted nothing and reopened nothing"
    );
    assert_eq!(watch.state, v1::WatchState::Completed as i32);
    assert_eq!(
        watch.last_seq,
        listed_events.last().unwrap().seq,
        "no event after COMPLETED"
    );
}

fn completed_count(events: &[v1::WatchEvent]) -> u64 {
    match &events.last().expect("events").kind {
        Some(v1::watch_event::Kind::Completed(done)) => done.object_count,
        other => panic!("expected COMPLETED last, got {other:?}"),
    }
}

/// Objects PUT into a bucket whose notifications go to the queue the server
/// consumes with its default flags (20s long polls, 2 consumers).
mod from_a_bucket {
    use std::time::Instant;

    use super::*;

    pub const OBJECTS: usize = 60;

    pub struct Run {
        /// When the last PUT returned.
        pub last_put: Instant,
        /// When each watch's COMPLETED reached the test, with its events and final state.
        pub completed: Vec<(Instant, Vec<v1::WatchEvent>, v1::Watch)>,
    }

    pub fn polling(delay: Duration, max_repeats: u32) -> v1::Policy {
        v1::Policy {
            rule: Some(v1::policy::Rule::Polling(v1::PollingRule {
                delay: Some(duration(delay)),
                max_repeats,
                schedule: v1::DelaySchedule::Fixed as i32,
            })),
            ..Default::default()
        }
    }

    /// Starts a server on a fresh bucket -> queue, starts one watch per
    /// policy, PUTs `objects` objects (and sends a redelivered copy of the
    /// first ten notifications), and follows each watch to its end.
    pub async fn run(policies: Vec<v1::Policy>, objects: usize) -> Run {
        let (s3, sqs) = (aws::s3().await, aws::sqs().await);
        let (bucket, queue) =
            aws::bucket_to_queue(&s3, &sqs, "sooner", Duration::from_secs(30)).await;
        let dir = DataDir::new();
        let mut config = dir.config(false);
        config.sqs_queue_urls = vec![queue.clone()];
        let server = TestServer::start_with(dir.clone(), config).await;
        let mut client = server.client().await;
        let mut followers = Vec::new();
        for mut policy in policies {
            // A producer that starts late must not look finished.
            policy.min_objects = objects as u64;
            let watch = begin(&mut client, start_request(&bucket, "in/", policy)).await;
            let stream = client.events(&watch.watch_id, 0).await.unwrap();
            let mut c = client.clone();
            followers.push(tokio::spawn(async move {
                let events = read_to_end(stream, LIMIT * 3).await;
                let at = Instant::now();
                (at, events, c.get_watch(&watch.watch_id).await.unwrap())
            }));
        }
        let keys: Vec<String> = (0..objects)
            .map(|i| format!("in/part {i:04}.json"))
            .collect();
        futures::future::join_all(keys.chunks(objects.div_ceil(8)).map(|chunk| {
            let (s3, bucket) = (s3.clone(), bucket.clone());
            async move {
                for key in chunk {
                    s3.put_object()
                        .bucket(&bucket)
                        .key(key)
                        .body(b"{}".to_vec().into())
                        .send()
                        .await
                        .expect("put object");
                }
            }
        }))
        .await;
        let last_put = Instant::now();
        // S3 delivers at least once: the emulator's records carry no
        // sequencer, so a redelivery is the same key without one.
        let copies: Vec<String> = keys[..10]
            .iter()
            .map(|k| s3_document(&bucket, &[("ObjectCreated:Put", k, "")]))
            .collect();
        send(&sqs, &queue, copies).await;
        let mut completed = Vec::new();
        for f in followers {
            completed.push(f.await.unwrap());
        }
        Run {
            last_put,
            completed,
        }
    }

    fn time(t: &Option<prost_types::Timestamp>) -> i64 {
        let t = t.as_ref().expect("a timestamp");
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
    }

    /// The completion was decided less than one long poll (the default
    /// 20s wait) after the instant it stands for: a receive started after
    /// that instant came back empty sooner than a long poll would have.
    fn assert_confirmed_sooner_than_a_long_poll(events: &[v1::WatchEvent], stands_for: i64) {
        let done = events.last().unwrap();
        let decided = time(&done.time);
        assert!(
            decided >= stands_for,
            "never before the instant it stands for"
        );
        let long_poll = streamwatch_server::ingest::sqs::DEFAULT_WAIT.as_millis() as i64;
        assert!(
            decided - stands_for < long_poll,
            "decided {}ms after the instant it stands for: it waited out a long poll",
            decided - stands_for
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_window_and_the_polling_rule_complete_on_a_short_confirming_receive() {
        require_emulator!();
        let window = Duration::from_secs(3);
        let run = run(
            vec![quiet_period(window), polling(Duration::from_secs(1), 3)],
            OBJECTS,
        )
        .await;
        for (_, events, watch) in &run.completed {
            let Some(v1::watch_event::Kind::Completed(done)) = &events.last().unwrap().kind else {
                panic!("expected COMPLETED, got {:?}", kinds(events));
            };
            assert_eq!(done.object_count, OBJECTS as u64);
            assert_eq!(watch.event_count, OBJECTS as u64, "redeliveries count once");
            assert_gapless(events, 1);
        }
        let quiet = &run.completed[0];
        assert_confirmed_sooner_than_a_long_poll(
            &quiet.1,
            time(&quiet.2.last_activity_at) + window.as_millis() as i64,
        );
        // Polling: three unchanged samples, a second apart, after the last
        // activity; no sample waited out a long poll.
        let polling = &run.completed[1];
        let ticks: Vec<i64> = polling
            .1
            .iter()
            .filter(|e| matches!(e.kind, Some(v1::watch_event::Kind::QuietTick(_))))
            .map(|e| time(&e.time))
            .collect();
        assert!(ticks.len() >= 3, "{:?}", kinds(&polling.1));
        assert_confirmed_sooner_than_a_long_poll(&polling.1, time(&polling.2.last_activity_at));
    }

    /// Measures (no assertion on speed): how long after the last PUT each
    /// rule's COMPLETED reaches a subscriber. BENCHMARKS.md has the figures.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement: cargo nextest run -p streamwatch-server --test integration -E 'test(/^sqs_ingest::/)' --run-ignored only --no-capture"]
    async fn measure_completion_after_the_last_put() {
        require_emulator!();
        let runs: usize = std::env::var("SOONER_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5);
        let objects: usize = std::env::var("SOONER_OBJECTS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(300);
        let mut quiet = Vec::new();
        let mut polling_ = Vec::new();
        for _ in 0..runs {
            let run = run(
                vec![
                    quiet_period(Duration::from_secs(3)),
                    polling(Duration::from_secs(1), 3),
                ],
                objects,
            )
            .await;
            let after = |i: usize| {
                run.completed[i]
                    .0
                    .duration_since(run.last_put)
                    .as_secs_f64()
            };
            quiet.push(after(0));
            polling_.push(after(1));
            println!(
                "run: quiet 3s {:.1}s, polling 1s x 3 {:.1}s",
                after(0),
                after(1)
            );
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{objects} objects, {runs} runs: quiet 3s median {:.1}s (min {:.1}, max {:.1}); polling 1s x 3 median {:.1}s (min {:.1}, max {:.1})",
            median(&mut quiet),
            quiet[0],
            quiet[runs - 1],
            median(&mut polling_),
            polling_[0],
            polling_[runs - 1]
        );
    }
}
