//! Clients that try to make the server hold memory: idle connections that
//! never speak (they take places up to `--max-connections`, then further
//! clients wait instead of piling up), and a notification document with
//! 100,000 records (rejected whole with a reason, nothing of it applied).
//! A subscriber that stops reading is covered in `hub`'s unit tests.

mod support;

use std::time::Duration;

use streamwatch_client::{Client, ConnectOptions};
use support::*;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn idle_connections_cannot_take_more_than_their_places() {
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.transport.max_connections = 2;
    let server = TestServer::start_with(dir, config, None).await;
    let short = || {
        ConnectOptions::new()
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Some(Duration::from_millis(500)))
    };

    // Two clients that connect and never send a byte.
    let idle_a = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _idle_b = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let blocked = async {
        let mut client = Client::connect_with(server.endpoint(), short()).await?;
        client.list_watches(Default::default()).await
    }
    .await;
    assert!(
        blocked.is_err(),
        "both places are taken: a third client is not served"
    );

    drop(idle_a);
    // The place frees once the server sees the idle client go; no event tells
    // this test when that happened, so it retries until it has.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let served = async {
            let mut client = Client::connect_with(server.endpoint(), short()).await?;
            client.list_watches(Default::default()).await
        }
        .await;
        match served {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "a freed place was never given to a waiting client: {e}"
            ),
        }
    }
}

#[tokio::test]
async fn a_document_of_100_000_records_is_rejected_whole() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let record = |i: usize| {
        format!(
            r#"{{"eventTime":"2026-11-26T10:00:00Z","eventName":"ObjectCreated:Put","s3":{{"bucket":{{"name":"data-lake"}},"object":{{"key":"k{i}"}}}}}}"#
        )
    };
    let records: Vec<String> = (0..100_000).map(record).collect();
    let huge = format!(r#"{{"Records":[{}]}}"#, records.join(","));
    let report = client
        .ingest_s3_events(vec![huge, created("data-lake", &["good"])])
        .await
        .expect("the call is answered; the document is rejected");
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert_eq!(report.rejected[0].index, 0);
    let reason = &report.rejected[0].reason;
    assert!(
        reason.contains("bytes") && reason.contains("at most"),
        "the reason names the limit: {reason}"
    );
    assert_eq!(
        (report.records, report.counted),
        (1, 1),
        "only the good document"
    );
    assert_eq!(
        client.get_watch(&id).await.unwrap().object_count,
        1,
        "nothing of the huge document was applied"
    );

    // The same records in documents small enough to parse: the call is refused whole.
    let documents: Vec<String> = records
        .chunks(1000)
        .map(|c| format!(r#"{{"Records":[{}]}}"#, c.join(",")))
        .collect();
    let refused = client.ingest_s3_events(documents).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused.message().contains("nothing was recorded"),
        "{refused}"
    );
    assert_eq!(client.get_watch(&id).await.unwrap().object_count, 1);
}
