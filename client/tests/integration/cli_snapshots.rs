//! Snapshots of what people read: `--help` of the command and of `start`, and
//! the human view of a watch. Update them with `SNAPSHOTS=overwrite`.

use std::time::Duration;

use crate::cli::*;
use snapbox::{assert_data_eq, file};
use streamwatch_client::WatchRequest;
use streamwatch_testkit::*;

#[tokio::test]
async fn top_level_help() {
    let run = Cli::new().run(&["--help"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_data_eq!(run.stdout, file!["snapshots/help.txt"]);
}

#[tokio::test]
async fn start_help() {
    let run = Cli::new().run(&["start", "--help"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_data_eq!(run.stdout, file!["snapshots/start_help.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_watch_for_a_human() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        WatchRequest::new("lake")
            .prefix("day=1/")
            .quiet_period(Duration::from_millis(200))
            .timeout(Duration::from_secs(3600))
            .label("job", "report"),
    )
    .await
    .watch_id;
    client
        .ingest_s3_events(vec![created_once("lake", &["day=1/a", "day=1/b"])])
        .await
        .unwrap();
    client.wait_for_completion(&id).await.unwrap();
    let run = server.cli().run(&["get", &id]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_data_eq!(run.stdout, file!["snapshots/get_completed.txt"]);
}
