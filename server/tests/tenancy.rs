//! Tenants are invisible to each other: another tenant's watch answers
//! exactly like a watch that does not exist, and notifications count only
//! into watches of tenants allowed the bucket.

mod support;

use std::time::Duration;

use support::*;

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
async fn a_shared_bucket_counts_into_each_allowed_tenants_watch() {
    let server = TestServer::start_with_tenants().await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let policy = quiet_period(Duration::from_secs(3600));
    let a = begin(&mut acme, start_request("shared-lake", "", policy.clone())).await;
    let g = begin(&mut globex, start_request("shared-lake", "", policy)).await;
    let report = acme
        .ingest_s3_events(vec![created("shared-lake", &["k"])])
        .await
        .unwrap();
    assert_eq!(report.counted, 2);
    assert_eq!(acme.get_watch(&a.watch_id).await.unwrap().object_count, 1);
    assert_eq!(globex.get_watch(&g.watch_id).await.unwrap().object_count, 1);
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused() {
    let server = TestServer::start_with_tenants().await;
    let mut anonymous = server.client().await;
    let mut wrong = server.client_with_token("not-a-token").await;
    for status in [
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
