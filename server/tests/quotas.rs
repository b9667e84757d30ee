//! Per-tenant quotas over real gRPC: a tenant at a limit gets
//! RESOURCE_EXHAUSTED naming the limit (with a retry hint where waiting
//! helps), and another tenant's calls keep succeeding meanwhile. Request
//! sizes are capped before a message is decoded.

mod support;

use std::time::Duration;

use streamwatch_client::proto as v1;
use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// A server where acme has the given `[tenant.quotas]` lines and globex the defaults.
async fn server_with_acme_quotas(quotas: &str) -> TestServer {
    let dir = DataDir::new();
    let mut config = dir.config(true);
    config.tenants =
        Some(dir.write_tenants(&tenants_toml(&format!("[tenant.quotas]\n{quotas}"), "")));
    TestServer::start_with(dir, config, None).await
}

fn hour() -> v1::Policy {
    quiet_period(Duration::from_secs(3600))
}

#[tokio::test]
async fn active_watches_are_capped_per_tenant() {
    let server = server_with_acme_quotas("max_active_watches = 2").await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let first = begin(&mut acme, start_request("acme-lake", "a/", hour())).await;
    let mut retried = start_request("acme-lake", "b/", hour());
    retried.client_token = "start-b".into();
    begin(&mut acme, retried.clone()).await;

    let refused = acme
        .start_watch(start_request("acme-lake", "c/", hour()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("max_active_watches") && refused.message().contains('2'),
        "{refused}"
    );
    let again = acme
        .start_watch(retried)
        .await
        .expect("a retried start is answered");
    assert!(!again.created, "the retry returns the watch it started");
    begin(&mut globex, start_request("globex-lake", "", hour())).await;
    assert_eq!(
        acme.list_watches(Default::default())
            .await
            .unwrap()
            .watches
            .len(),
        2,
        "the refused start created nothing"
    );

    acme.cancel_watch(&first.watch_id, "").await.unwrap();
    begin(&mut acme, start_request("acme-lake", "c/", hour())).await;
}

#[tokio::test]
async fn open_event_streams_are_capped_per_tenant_and_freed_when_closed() {
    let server = server_with_acme_quotas("max_streams = 1").await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let a = begin(&mut acme, start_request("acme-lake", "", hour())).await;
    let g = begin(&mut globex, start_request("globex-lake", "", hour())).await;

    let mut open = acme.events(&a.watch_id, 0).await.unwrap();
    read_until(&mut open, LIMIT, |e| kind(e) == "started").await;
    let refused = acme.events(&a.watch_id, 0).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("max_streams"), "{refused}");
    let mut other = globex
        .events(&g.watch_id, 0)
        .await
        .expect("globex has its own quota");
    read_until(&mut other, LIMIT, |e| kind(e) == "started").await;

    drop(open);
    // The server frees the place when it sees the stream reset; no event
    // tells the client when that happened, so retry until it has.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match acme.events(&a.watch_id, 0).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_flooding_tenant_is_refused_with_a_retry_hint_while_others_are_served() {
    // One document a second, five at once: the flood drains acme's bucket in one call.
    let server = server_with_acme_quotas("ingest_documents_per_second = 1\ningest_burst = 5").await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let g = begin(&mut globex, start_request("globex-lake", "", hour())).await;

    let five: Vec<String> = (0..5)
        .map(|i| created("acme-lake", &[&format!("k{i}")]))
        .collect();
    acme.ingest_s3_events(five.clone())
        .await
        .expect("the burst");
    let mut refused = 0;
    let mut served = 0;
    for round in 0..20 {
        match acme.ingest_s3_events(five.clone()).await {
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
                assert!(e.message().contains("ingest_documents_per_second"), "{e}");
                let status = e.status().expect("the server answered");
                let wait: u64 = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .expect("a retry hint")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    (1..=5000).contains(&wait),
                    "five documents at 1/s: {wait} ms"
                );
                refused += 1;
            }
            Ok(_) => panic!("acme's empty bucket took five more documents in round {round}"),
        }
        globex
            .ingest_s3_events(vec![created("globex-lake", &[&format!("g{round}")])])
            .await
            .expect("globex is not held back by acme's flood");
        served += 1;
    }
    assert_eq!((refused, served), (20, 20));
    assert_eq!(
        globex.get_watch(&g.watch_id).await.unwrap().object_count,
        20
    );
}

#[tokio::test]
async fn an_oversized_watch_request_is_refused_before_it_is_decoded() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = start_request("data-lake", "", hour());
    request.labels.insert(
        "padding".into(),
        "x".repeat(streamwatch_server::MAX_WATCH_REQUEST_BYTES),
    );
    let refused = client.start_watch(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused}");
    assert!(refused.message().contains("too large"), "{refused}");
    assert!(
        client
            .list_watches(Default::default())
            .await
            .unwrap()
            .watches
            .is_empty()
    );
}
