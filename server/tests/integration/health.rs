//! Health: the server serves only once its store and every configured queue
//! have answered, and reports NOT_SERVING the moment shutdown starts, while
//! calls are still draining.

use std::time::Duration;

use streamwatch_server::clock::Clock;
use streamwatch_testkit::*;
use tokio::net::TcpListener;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_missing_queue_stops_startup_naming_it() {
    require_emulator!();
    let sqs = aws::sqs().await;
    let (present, _dlq) =
        aws::queue_with_dlq(&sqs, &aws::unique("present"), 5, Duration::from_secs(30)).await;
    // The same endpoint and account as a real queue, under a name nobody created.
    let (account, _) = present.rsplit_once('/').expect("queue url has a path");
    let missing = format!("{account}/{}", aws::unique("missing"));
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.sqs_queue_urls = vec![present.clone(), missing.clone()];
    config.sqs_wait = Duration::from_secs(1);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");

    let served = tokio::time::timeout(
        LIMIT,
        streamwatch_server::serve_with_clock(
            config,
            listener,
            Clock::new(),
            std::future::pending(),
        ),
    )
    .await
    .expect("startup must fail, not hang or serve");

    let error = format!(
        "{:#}",
        served.expect_err("a missing queue must stop startup")
    );
    assert!(
        error.contains(&format!("cannot reach the SQS queue {missing}")),
        "{error}"
    );
    assert!(
        !error.contains(&present),
        "the reachable queue is not the problem: {error}"
    );
}

#[tokio::test]
async fn shutdown_reports_not_serving_while_calls_drain() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    // "" is the whole server, what a probe without a service name asks about.
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = statuses
        .message()
        .await
        .expect("status")
        .expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let stopping = tokio::spawn(server.stop());
    // This Watch call is still open (shutdown waits for it to drain), and it
    // hears NOT_SERVING before it ends.
    let next = tokio::time::timeout(LIMIT, statuses.message())
        .await
        .expect("a status change before the grace period ends")
        .expect("status")
        .expect("the stream stays open while draining");
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(statuses);
    tokio::time::timeout(LIMIT, stopping)
        .await
        .expect("shutdown finishes once the call ended")
        .expect("stop task");
}
