//! `wait_for_completion` and the resumable events stream survive a server
//! restart in the middle of a watch: both reconnect from the last `seq`,
//! see every event once, in order, and end on the right terminal state.

use std::time::Duration;

use crate::cli::*;
use futures::StreamExt;
use streamwatch_client::{WatchRequest, proto::WatchState};
use streamwatch_testkit::*;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_completion_survives_a_restart_mid_watch() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Long enough that the watch cannot complete while the server restarts.
    let id = begin(
        &mut client,
        WatchRequest::new("lake")
            .prefix("day=1/")
            .quiet_period(Duration::from_secs(3)),
    )
    .await
    .watch_id;

    let mut subscription = client.subscribe(&id, 0);
    let streamed = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = subscription.next().await {
            events.push(event.expect("the subscription resumes instead of failing"));
        }
        (events, subscription.reconnects())
    });
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let waited = tokio::spawn({
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let mut events = Vec::new();
            let watch = client
                .wait_for_completion_with(&id, |event| {
                    events.push(event.clone());
                    let _ = seen_tx.send(event.clone());
                })
                .await;
            (watch, events)
        }
    });

    client
        .ingest_s3_events(vec![created_once("lake", &["day=1/a", "day=1/b"])])
        .await
        .unwrap();
    // The waiter has seen the first objects before the server goes away.
    tokio::time::timeout(LIMIT, async {
        while let Some(event) = seen.recv().await {
            if kind(&event) == "progress" {
                return;
            }
        }
        panic!("the waiter stopped before any progress");
    })
    .await
    .expect("progress within the limit");

    let server = server.restart().await;
    // The same client: its connection comes back by itself.
    let report = client
        .ingest_s3_events(vec![created_once("lake", &["day=1/b", "day=1/c"])])
        .await
        .unwrap();
    assert_eq!((report.counted, report.duplicates), (1, 1));

    let (watch, waiter_events) = tokio::time::timeout(LIMIT, waited)
        .await
        .expect("wait_for_completion returned")
        .unwrap();
    let watch = watch.expect("wait_for_completion succeeds across the restart");
    assert_eq!(watch.state(), WatchState::Completed);
    assert_eq!(watch.object_count, 3);

    let (events, reconnects) = tokio::time::timeout(LIMIT, streamed)
        .await
        .expect("the events stream ended")
        .unwrap();
    assert!(
        reconnects >= 1,
        "the restart broke the stream and it reconnected"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=watch.last_seq).collect::<Vec<_>>(),
        "every event once, in order, no gap"
    );
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"completed"));
    assert_eq!(
        kinds.iter().filter(|k| **k == "progress").count(),
        2,
        "one progress per ingest that counted: {kinds:?}"
    );
    // The waiter saw the same events up to the terminal one.
    let waiter_seqs: Vec<u64> = waiter_events.iter().map(|e| e.seq).collect();
    assert_eq!(waiter_seqs, seqs);
    drop(server);
}

#[tokio::test]
async fn an_unknown_watch_is_a_final_answer_not_a_reason_to_retry() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let error = tokio::time::timeout(
        LIMIT,
        client.wait_for_completion("01a217c9-fdcb-7283-9345-0ff7f6536c65"),
    )
    .await
    .expect("answered at once")
    .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{error}");
    assert!(!error.is_retryable());
}
