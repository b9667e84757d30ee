//! `streamwatch ingest` sends notification documents from files (one JSON
//! document per line) and from stdin (a JSON array), and reports what the
//! server counted.

use std::time::Duration;

use crate::cli::*;
use streamwatch_client::WatchRequest;
use streamwatch_testkit::*;

async fn quiet_watch(server: &TestServer) -> String {
    let mut client = server.client().await;
    begin(
        &mut client,
        WatchRequest::new("lake").quiet_period(Duration::from_secs(3600)),
    )
    .await
    .watch_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_json_lines() {
    let server = TestServer::start().await;
    let id = quiet_watch(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notifications.jsonl");
    // The second document redelivers `a`: it counts once.
    std::fs::write(
        &file,
        format!(
            "{}\n\n{}\n",
            created_once("lake", &["a", "b"]),
            created_once("lake", &["c", "a"])
        ),
    )
    .unwrap();
    let run = server
        .cli()
        .run(&[
            "ingest",
            file.to_str().unwrap(),
            "--batch",
            "1",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let report = &run.json_lines()[0];
    assert_eq!(report["type"], "ingest");
    assert_eq!(report["documents"], 2);
    assert_eq!(report["requests"], 2);
    assert_eq!(report["records"], 4);
    assert_eq!(report["counted"], 3);
    assert_eq!(report["duplicates"], 1);
    assert_eq!(report["rejected"], serde_json::json!([]));
    let watch = server.client().await.get_watch(&id).await.unwrap();
    assert_eq!(watch.object_count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_on_stdin() {
    let server = TestServer::start().await;
    let id = quiet_watch(&server).await;
    // An array of documents: as objects, or as strings holding one.
    let document: serde_json::Value = serde_json::from_str(&created_once("lake", &["x"])).unwrap();
    let input = serde_json::json!([
        document,
        created_once("lake", &["y", "z"]),
        created_once("other", &["w"])
    ]);
    let run = server
        .cli()
        .stdin(serde_json::to_vec_pretty(&input).unwrap())
        .run(&["ingest"])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("sent 3 documents in 1 requests: 4 records, 3 matched a watch, 3 counted, 0 duplicates, 1 ignored, 0 rejected"),
        "{run:?}"
    );
    let watch = server.client().await.get_watch(&id).await.unwrap();
    assert_eq!(watch.object_count, 3);
}

#[tokio::test]
async fn malformed_input_sends_nothing_and_exits_1() {
    let server = TestServer::start().await;
    let id = quiet_watch(&server).await;
    let input = format!("{}\n{{\"Records\": [", created_once("lake", &["a"]));
    let run = server.cli().stdin(input).run(&["ingest", "-"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("cannot read stdin: invalid JSON"),
        "{run:?}"
    );
    let watch = server.client().await.get_watch(&id).await.unwrap();
    assert_eq!(watch.object_count, 0, "nothing was sent");
}
