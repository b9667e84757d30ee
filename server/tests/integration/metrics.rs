//! `/metrics`: scraped over HTTP and read with a Prometheus text parser;
//! each counter moves by exactly what the calls in between caused.

use std::{net::SocketAddr, time::Duration};

use prometheus_parse::{Scrape, Value};
use streamwatch_client::proto as v1;
use streamwatch_testkit::{TestServer, begin, created, eventually, read_until, start_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);
const START: &str = "streamwatch.v1.WatchService/StartWatch";
const GET: &str = "streamwatch.v1.WatchService/GetWatch";
const INGEST: &str = "streamwatch.v1.IngestService/IngestS3Events";

/// `GET /metrics` over HTTP/1.1; the content type and the parsed exposition.
async fn scrape(addr: SocketAddr) -> (String, Scrape) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .expect("a content type");
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    (content_type, parsed)
}

/// The value of `name` with exactly `labels` (0 when absent: not yet created).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            s.labels.len() == labels.len() && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} appears {} times",
        found.len()
    );
    found.first().copied().unwrap_or(0.0)
}

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(after, name, labels) - value(before, name, labels)
}

#[tokio::test]
async fn counters_move_by_what_the_calls_did() {
    let server = TestServer::start_with_metrics().await;
    let metrics = server.metrics.expect("metrics endpoint");
    let mut client = server.client().await;
    let (content_type, before) = scrape(metrics).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );

    let policy = v1::Policy {
        rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects: 2,
            quiet_window: None,
        })),
        ..Default::default()
    };
    let watch = begin(&mut client, start_request("data-lake", "run/", policy)).await;
    let mut stream = client.events(&watch.watch_id, 0).await.unwrap();
    read_until(&mut stream, LIMIT, |e| e.kind_name() == "started").await;
    let (_, open) = scrape(metrics).await;
    assert_eq!(value(&open, "streamwatch_subscribers", &[]), 1.0);
    assert_eq!(value(&open, "streamwatch_live_watches", &[]), 1.0);

    // One new object, then a redelivery of it with a second one; an
    // unparseable document and an object no watch wants.
    client
        .ingest_s3_events(vec![created("data-lake", &["run/a"])])
        .await
        .unwrap();
    let report = client
        .ingest_s3_events(vec![
            created("data-lake", &["run/a", "run/b"]),
            "{not json".to_owned(),
            created("data-lake", &["elsewhere/x"]),
        ])
        .await
        .unwrap();
    assert_eq!((report.counted, report.duplicates), (1, 1));
    assert!(client.get_watch("not-a-watch-id").await.is_err());
    read_until(&mut stream, LIMIT, |e| e.kind_name() == "completed").await;
    drop(stream);
    client.get_watch(&watch.watch_id).await.unwrap();

    let (_, after) = scrape(metrics).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let rpc = "streamwatch_rpc_requests_total";
    assert_eq!(d(rpc, &[("method", START), ("code", "OK")]), 1.0);
    assert_eq!(d(rpc, &[("method", INGEST), ("code", "OK")]), 2.0);
    assert_eq!(
        d(rpc, &[("method", GET), ("code", "INVALID_ARGUMENT")]),
        1.0
    );
    assert_eq!(d(rpc, &[("method", GET), ("code", "OK")]), 1.0);
    assert_eq!(
        d(
            "streamwatch_rpc_duration_seconds_count",
            &[("method", INGEST)]
        ),
        2.0
    );
    let n = "streamwatch_notifications_total";
    assert_eq!(d(n, &[("outcome", "received")]), 4.0);
    assert_eq!(d(n, &[("outcome", "counted")]), 2.0);
    assert_eq!(d(n, &[("outcome", "duplicate")]), 1.0);
    assert_eq!(d(n, &[("outcome", "ignored")]), 1.0);
    assert_eq!(d(n, &[("outcome", "rejected")]), 1.0);
    // Two recorded batches (the unwanted object records nothing); one watch created.
    assert_eq!(d("streamwatch_store_record_batch_size_count", &[]), 2.0);
    assert_eq!(d("streamwatch_store_record_batch_size_sum", &[]), 3.0);
    let store = "streamwatch_store_transaction_duration_seconds_count";
    assert_eq!(d(store, &[("operation", "create_watch")]), 1.0);
    assert_eq!(d(store, &[("operation", "record")]), 2.0);
    assert_eq!(
        d(
            "streamwatch_watch_transitions_total",
            &[("event", "completed")]
        ),
        1.0
    );
    assert_eq!(d("streamwatch_completion_delay_seconds_count", &[]), 1.0);
    assert_eq!(d("streamwatch_subscriber_catch_ups_total", &[]), 0.0);

    // The stream ended with the completion; the watch left the observer.
    eventually(
        "the gauges fall back to 0 (subscribers, live watches)",
        LIMIT,
        async || {
            let (_, now) = scrape(metrics).await;
            let gauges = (
                value(&now, "streamwatch_subscribers", &[]),
                value(&now, "streamwatch_live_watches", &[]),
            );
            if gauges == (0.0, 0.0) {
                Ok(())
            } else {
                Err(gauges)
            }
        },
    )
    .await;
    server.stop().await;
}
