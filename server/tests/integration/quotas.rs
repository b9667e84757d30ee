//! Per-tenant quotas over real gRPC: a tenant at a limit gets
//! RESOURCE_EXHAUSTED naming the limit (with a retry hint where waiting
//! helps), and another tenant's calls keep succeeding meanwhile. Request
//! sizes are capped before a message is decoded.

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

const LIMIT: Duration = Duration::from_secs(20);

/// A server where acme has the given `[tenant.quotas]` lines and globex the defaults.
async fn server_with_acme_quotas(quotas: &str) -> TestServer {
    let dir = DataDir::new();
    let mut config = dir.config(true);
    config.tenants =
        Some(dir.write_tenants(&tenants_toml(&format!("[tenant.quotas]\n{quotas}"), "")));
    TestServer::start_with(dir, config).await
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
    eventually("the place is freed", LIMIT, async || {
        match acme.events(&a.watch_id, 0).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::ResourceExhausted => Err(e),
            Err(e) => panic!("{e}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_flooding_tenant_is_refused_with_a_retry_hint_while_others_are_served() {
    // One record a second, five at once: the flood drains acme's bucket in one call.
    let server = server_with_acme_quotas("ingest_records_per_second = 1\ningest_burst = 5").await;
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
                assert!(e.message().contains("ingest_records_per_second"), "{e}");
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

#[tokio::test]
async fn the_ingest_rate_is_charged_per_notification_record_not_per_document() {
    let server = server_with_acme_quotas("ingest_records_per_second = 2\ningest_burst = 100").await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let a = begin(&mut acme, start_request("acme-lake", "", hour())).await;
    let keys: Vec<String> = (0..1500).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();

    // One document holding 1,500 records is 1,500 against a burst of 100.
    let refused = acme
        .ingest_s3_events(vec![created("acme-lake", &keys)])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("1500 notification records"),
        "{refused}"
    );

    // 60 records fit the burst once; the next 60 wait for the rate.
    acme.ingest_s3_events(vec![created("acme-lake", &keys[..60])])
        .await
        .expect("within the burst");
    let refused = acme
        .ingest_s3_events(vec![created("acme-lake", &keys[60..120])])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("ingest_records_per_second"),
        "{refused}"
    );
    assert_eq!(
        acme.get_watch(&a.watch_id).await.unwrap().object_count,
        60,
        "refused calls counted nothing"
    );
}

#[tokio::test]
async fn reopening_by_late_data_counts_against_max_active_watches() {
    const MAX: usize = 3;
    const CYCLES: usize = 5;
    let server = server_with_acme_quotas(&format!("max_active_watches = {MAX}")).await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut policy = quiet_period(Duration::from_millis(200));
    policy.min_objects = 1;
    policy.late_window = Some(duration(Duration::from_secs(3600)));

    // Five cycles of three watches, each completed: never more than three active.
    let mut ids = Vec::new();
    for cycle in 0..CYCLES {
        let mut streams = Vec::new();
        for i in 0..MAX {
            let prefix = format!("c{cycle}w{i}/");
            let w = begin(
                &mut acme,
                start_request("acme-lake", &prefix, policy.clone()),
            )
            .await;
            acme.ingest_s3_events(vec![created("acme-lake", &[&format!("{prefix}first")])])
                .await
                .unwrap();
            let stream = acme.events(&w.watch_id, 0).await.unwrap();
            streams.push(stream);
            ids.push(w.watch_id);
        }
        for mut stream in streams {
            read_until(&mut stream, LIMIT, |e| {
                matches!(e.kind, Some(v1::watch_event::Kind::Completed(_)))
            })
            .await;
        }
    }

    // One call brings late data for all fifteen.
    let late: Vec<String> = (0..CYCLES)
        .flat_map(|c| (0..MAX).map(move |i| format!("c{c}w{i}/late")))
        .collect();
    let late: Vec<&str> = late.iter().map(String::as_str).collect();
    let report = acme
        .ingest_s3_events(vec![created("acme-lake", &late)])
        .await
        .unwrap();
    assert_eq!(report.counted, (CYCLES * MAX) as u64);

    // Each watch is decided: reopened, or left completed saying why.
    // Decisions come from the observer's loop: no event reaches this client.
    let (reopened, refused) = eventually(
        "every watch decided (reopened, refused)",
        LIMIT,
        async || {
            let mut reopened = 0;
            let mut refused = 0;
            for id in &ids {
                let w = acme.get_watch(id).await.unwrap();
                if w.generation == 2 {
                    reopened += 1;
                } else if w.reason.contains("max_active_watches") {
                    assert_eq!(w.state(), v1::WatchState::Completed);
                    refused += 1;
                }
            }
            if reopened + refused == ids.len() {
                Ok((reopened, refused))
            } else {
                Err((reopened, refused))
            }
        },
    )
    .await;
    assert_eq!((reopened, refused), (MAX, CYCLES * MAX - MAX));
    let active = acme
        .list_watches(v1::ListWatchesRequest {
            state: v1::WatchState::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .watches
        .len();
    assert!(active <= MAX, "{active} active with a quota of {MAX}");
}
