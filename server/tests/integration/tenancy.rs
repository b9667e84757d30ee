//! Tenants are invisible to each other: another tenant's watch answers
//! exactly like a watch that does not exist; notifications a tenant sends
//! count only into its own watches (a `forwarder`'s into every tenant
//! allowed the bucket).

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

#[tokio::test]
async fn another_tenants_watch_is_not_found_by_any_rpc() {
    let server = TestServer::start_with_tenants().await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let id = begin(
        &mut acme,
        start_request("acme-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let missing = "01930000-0000-7000-8000-000000000000";

    for watch_id in [id.as_str(), missing] {
        let get = globex.get_watch(watch_id).await.unwrap_err();
        let cancel = globex.cancel_watch(watch_id, "").await.unwrap_err();
        let stream = globex.events(watch_id, 0).await.unwrap_err();
        for status in [&get, &cancel, &stream] {
            assert_eq!(
                status.code(),
                tonic::Code::NotFound,
                "{watch_id}: {status:?}"
            );
            assert_eq!(
                status.message(),
                "watch not found",
                "no hint that the watch exists"
            );
        }
    }
    assert!(
        globex
            .list_watches(Default::default())
            .await
            .unwrap()
            .watches
            .is_empty()
    );
    assert_eq!(
        acme.list_watches(Default::default())
            .await
            .unwrap()
            .watches
            .len(),
        1
    );
    assert_eq!(
        acme.get_watch(&id).await.unwrap().state,
        streamwatch_client::proto::WatchState::Active as i32
    );
}

#[tokio::test]
async fn a_tenant_cannot_watch_or_ingest_for_buckets_it_is_not_allowed() {
    let server = TestServer::start_with_tenants().await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let id = begin(
        &mut acme,
        start_request("acme-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;

    let denied = globex
        .start_watch(start_request(
            "acme-lake",
            "",
            quiet_period(Duration::from_secs(1)),
        ))
        .await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);

    let report = globex
        .ingest_s3_events(vec![created("acme-lake", &["forged"])])
        .await
        .unwrap();
    assert_eq!((report.counted, report.rejected.len()), (0, 1));
    assert!(
        report.rejected[0].reason.contains("not allowed"),
        "{:?}",
        report.rejected
    );
    assert_eq!(acme.get_watch(&id).await.unwrap().object_count, 0);
}

#[tokio::test]
async fn on_a_shared_bucket_a_tenant_can_neither_count_into_nor_learn_of_anothers_watch() {
    let server = TestServer::start_with_tenants().await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    // Complete once two objects landed: a forged second one would do it.
    let two = v1::Policy {
        rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects: 2,
            quiet_window: None,
        })),
        ..Default::default()
    };
    let g = begin(&mut globex, start_request("shared-lake", "g/", two)).await;
    globex
        .ingest_s3_events(vec![s3_document(
            "shared-lake",
            &[("ObjectCreated:Put", "g/real", "0B")],
        )])
        .await
        .unwrap();

    // acme forges notifications under globex's prefix: a new key (that would
    // complete the expected count), an older sequencer of globex's object
    // (whose answer would tell that it exists), and a removal.
    for forged in [
        created("shared-lake", &["g/forged"]),
        s3_document("shared-lake", &[("ObjectCreated:Put", "g/real", "0A")]),
        s3_document("shared-lake", &[("ObjectRemoved:Delete", "g/real", "0C")]),
    ] {
        let report = acme.ingest_s3_events(vec![forged]).await.unwrap();
        assert_eq!(
            (
                report.records,
                report.matched,
                report.counted,
                report.duplicates
            ),
            (1, 0, 0, 0),
            "acme's response says nothing of globex's watch"
        );
    }
    let watch = globex.get_watch(&g.watch_id).await.unwrap();
    assert_eq!(
        (watch.object_count, watch.removed_count, watch.last_seq),
        (1, 0, 2),
        "globex's watch has only its own object: STARTED, PROGRESS"
    );

    // acme's own watch on the shared bucket counts what acme sends.
    let a = begin(
        &mut acme,
        start_request("shared-lake", "g/", quiet_period(Duration::from_secs(3600))),
    )
    .await;
    let report = acme
        .ingest_s3_events(vec![created("shared-lake", &["g/mine"])])
        .await
        .unwrap();
    assert_eq!((report.matched, report.counted), (1, 1));
    assert_eq!(acme.get_watch(&a.watch_id).await.unwrap().object_count, 1);
    assert_eq!(globex.get_watch(&g.watch_id).await.unwrap().object_count, 1);
}

#[tokio::test]
async fn a_forwarder_relays_a_shared_buckets_notifications_to_every_allowed_tenant() {
    let dir = DataDir::new();
    let mut config = dir.config(true);
    config.tenants = Some(dir.write_tenants(&tenants_toml("forwarder = true", "")));
    let server = TestServer::start_with(dir, config).await;
    let mut relay = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let policy = quiet_period(Duration::from_secs(3600));
    let a = begin(&mut relay, start_request("shared-lake", "", policy.clone())).await;
    let g = begin(&mut globex, start_request("shared-lake", "", policy)).await;
    let report = relay
        .ingest_s3_events(vec![created("shared-lake", &["k"])])
        .await
        .unwrap();
    assert_eq!(report.counted, 2);
    assert_eq!(relay.get_watch(&a.watch_id).await.unwrap().object_count, 1);
    assert_eq!(globex.get_watch(&g.watch_id).await.unwrap().object_count, 1);
    // globex is no forwarder: what it sends counts into its own watch only.
    globex
        .ingest_s3_events(vec![created("shared-lake", &["k2"])])
        .await
        .unwrap();
    assert_eq!(relay.get_watch(&a.watch_id).await.unwrap().object_count, 1);
    assert_eq!(globex.get_watch(&g.watch_id).await.unwrap().object_count, 2);
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused() {
    let server = TestServer::start_with_tenants().await;
    let mut anonymous = server.client().await;
    let mut wrong = server.client_with_token("not-a-token").await;
    // Tokens are compared exactly: padded, it is another token.
    let mut padded = server.client_with_token(&format!("{ACME_TOKEN} ")).await;
    let mut tabbed = server.client_with_token(&format!("\t{ACME_TOKEN}")).await;
    for status in [
        padded.list_watches(Default::default()).await.unwrap_err(),
        tabbed.list_watches(Default::default()).await.unwrap_err(),
        anonymous
            .list_watches(Default::default())
            .await
            .unwrap_err(),
        wrong.list_watches(Default::default()).await.unwrap_err(),
        wrong
            .ingest_s3_events(vec![created("acme-lake", &["k"])])
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
}

#[tokio::test]
async fn without_a_tenants_file_the_server_refuses_non_loopback_addresses() {
    let dir = DataDir::new();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = streamwatch_server::serve(dir.config(false), listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without a tenants file"), "{err}");
    assert!(!dir.db().exists(), "refused before touching the store");
}
