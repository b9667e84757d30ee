//! `streamwatch wait` and `start --wait` exit with how the watch ended: 0
//! COMPLETED, 2 TIMED_OUT, 3 CANCELLED; 1 for errors, usage errors included.

use std::time::Duration;

use crate::cli::*;
use streamwatch_client::WatchRequest;
use streamwatch_testkit::*;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_watch_exits_0() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        WatchRequest::new("lake").quiet_period(Duration::from_millis(300)),
    )
    .await
    .watch_id;
    client
        .ingest_s3_events(vec![created_once("lake", &["a"])])
        .await
        .unwrap();
    let run = server.cli().run(&["wait", &id]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("{id} COMPLETED: 1 objects")),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_watch_exits_2() {
    let server = TestServer::start().await;
    let run = server
        .cli()
        .run(&[
            "start",
            "lake",
            "--expected",
            "5",
            "--timeout",
            "300ms",
            "--wait",
        ])
        .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("TIMED_OUT"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cancelled_while_waiting_exits_3() {
    let server = TestServer::start().await;
    let mut waiting = server.cli().spawn(&[
        "start",
        "lake",
        "--quiet-period",
        "1h",
        "--wait",
        "-o",
        "json",
    ]);
    let mut lines = BufReader::new(waiting.stdout.take().unwrap()).lines();
    let next_line = async |lines: &mut tokio::io::Lines<_>| -> serde_json::Value {
        let line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("a line within the limit")
            .unwrap()
            .expect("a line before the end");
        serde_json::from_str(&line).unwrap()
    };
    let watch = next_line(&mut lines).await;
    assert_eq!(watch["type"], "watch");
    let id = watch["watch_id"].as_str().unwrap().to_owned();
    // The STARTED event shows the waiter is following the stream.
    let started = next_line(&mut lines).await;
    assert_eq!(
        (started["type"].as_str(), started["kind"].as_str()),
        (Some("event"), Some("started"))
    );

    let mut client = server.client().await;
    client.cancel_watch(&id, "not needed").await.unwrap();
    let cancelled = next_line(&mut lines).await;
    assert_eq!(cancelled["kind"], "cancelled");
    assert_eq!(cancelled["reason"], "not needed");
    let end = next_line(&mut lines).await;
    assert_eq!(
        (end["type"].as_str(), end["state"].as_str()),
        (Some("watch"), Some("cancelled"))
    );
    let status = tokio::time::timeout(LIMIT, waiting.wait())
        .await
        .expect("exits within the limit")
        .unwrap();
    assert_eq!(status.code(), Some(3));
}

#[tokio::test]
async fn an_unknown_watch_exits_1_with_the_servers_answer() {
    let server = TestServer::start().await;
    let run = server
        .cli()
        .run(&["wait", "01a217c9-fdcb-7283-9345-0ff7f6536c65"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: NOT_FOUND"), "{run:?}");
}

#[tokio::test]
async fn usage_errors_exit_1_not_a_watch_state() {
    let run = Cli::new().run(&["start"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("<BUCKET>"), "{run:?}");
    let run = Cli::new()
        .run(&[
            "start",
            "lake",
            "--poll-delay",
            "1s",
            "--quiet-period",
            "1s",
            "--max-repeats",
            "2",
        ])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("cannot be used with"), "{run:?}");
}

#[tokio::test]
async fn an_unreachable_server_exits_1() {
    let closed = ClosedPort::new();
    let run = Cli::new()
        .env("STREAMWATCH_ENDPOINT", &closed.endpoint())
        .run(&["list"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("cannot reach the streamwatch server"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_targets_reach_the_server_and_a_refused_one_exits_1() {
    // The single-tenant server allows no callback target: the server names the field.
    let server = TestServer::start().await;
    let run = server
        .cli()
        .run(&[
            "start",
            "lake",
            "--notify-webhook",
            "https://hooks.example/done",
            "--notify-secret",
            "main",
        ])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: INVALID_ARGUMENT"), "{run:?}");
    assert!(
        run.stderr.contains("policy.notify[0].webhook.url"),
        "{run:?}"
    );
    // A webhook needs the name of the secret that signs it.
    let run = server
        .cli()
        .run(&[
            "start",
            "lake",
            "--notify-webhook",
            "https://hooks.example/done",
        ])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--notify-secret"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_started_with_members_exits_as_its_members_decide() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for prefix in ["a/", "b/"] {
        let run = server
            .cli()
            .run(&[
                "--output",
                "json",
                "start",
                "lake",
                "--prefix",
                prefix,
                "--expected",
                "5",
                "--timeout",
                "300ms",
            ])
            .await;
        assert_eq!(run.code, 0, "{run:?}");
        let watch: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        ids.push(watch["watch_id"].as_str().unwrap().to_owned());
    }
    let run = server
        .cli()
        .run(&["start", "--member", &ids[0], "--member", &ids[1], "--wait"])
        .await;
    assert_eq!(run.code, 2, "a member timed out: {run:?}");
    assert!(run.stdout.contains("group of 2"), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("member {} ended TIMED_OUT", ids[0])),
        "{run:?}"
    );
}
