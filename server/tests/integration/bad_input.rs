//! Bad input gets INVALID_ARGUMENT naming the field, and changes nothing.

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

fn polling(delay: Option<prost_types::Duration>, max_repeats: u32, schedule: i32) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::Polling(v1::PollingRule {
            delay,
            max_repeats,
            schedule,
        })),
        ..Default::default()
    }
}

fn marker(key: &str, verify_manifest: bool) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::Marker(v1::MarkerRule {
            key: key.into(),
            quiet_window: None,
            verify_manifest,
        })),
        ..Default::default()
    }
}

/// An adaptive policy; `None` leaves a window unset, 0.0 a number.
fn adaptive(
    min_window_secs: Option<f64>,
    quantile: f64,
    max_window_secs: Option<f64>,
) -> v1::Policy {
    let d = |s: f64| duration(Duration::from_secs_f64(s));
    v1::Policy {
        rule: Some(v1::policy::Rule::Adaptive(v1::AdaptiveRule {
            min_window: min_window_secs.map(d),
            max_window: max_window_secs.map(d),
            quantile,
            safety_factor: 0.0,
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_adaptive_policy_with_nothing_set_takes_its_defaults() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let watch = client
        .start_watch(start_request("data-lake", "", adaptive(None, 0.0, None)))
        .await
        .expect("defaults are valid")
        .watch
        .unwrap();
    let Some(v1::policy::Rule::Adaptive(rule)) = watch.policy.unwrap().rule else {
        panic!("the stored policy is adaptive");
    };
    assert_eq!(rule.min_window, Some(duration(Duration::from_secs(100))));
    assert_eq!(rule.max_window, Some(duration(Duration::from_secs(3600))));
    assert_eq!((rule.quantile, rule.safety_factor), (0.99, 1.5));
    let window = watch
        .adaptive_window
        .expect("an adaptive watch shows its window");
    assert_eq!(window.window, Some(duration(Duration::from_secs(100))));
    assert_eq!((window.gaps, window.gap_quantile), (0, None));
    assert_eq!(window.explanation, "min_window; no gaps seen yet");
}

#[tokio::test]
async fn invalid_start_requests_name_the_field_and_create_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let ok_policy = quiet_period(Duration::from_secs(60));
    let negative = prost_types::Duration {
        seconds: -5,
        nanos: 0,
    };
    let absurd = prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    };
    let mut labelled = start_request("data-lake", "", ok_policy.clone());
    labelled.labels.insert("bad key!".into(), "v".into());
    let mut with_timeout = ok_policy.clone();
    with_timeout.timeout = Some(absurd);

    let cases: Vec<(v1::StartWatchRequest, &str)> = vec![
        (start_request("", "", ok_policy.clone()), "bucket"),
        (start_request("Bad_Bucket", "", ok_policy.clone()), "bucket"),
        (start_request("ab", "", ok_policy.clone()), "bucket"),
        (
            start_request("192.168.1.1", "", ok_policy.clone()),
            "bucket",
        ),
        (
            start_request("data-lake", &"p".repeat(1025), ok_policy.clone()),
            "prefix",
        ),
        (
            start_request(
                "data-lake",
                "",
                polling(Some(duration(Duration::from_secs(1))), 0, 1),
            ),
            "policy.polling.max_repeats",
        ),
        (
            start_request("data-lake", "", polling(None, 3, 1)),
            "policy.polling.delay",
        ),
        (
            start_request(
                "data-lake",
                "",
                polling(Some(duration(Duration::from_secs(1))), 3, 42),
            ),
            "policy.polling.schedule",
        ),
        (
            start_request(
                "data-lake",
                "",
                v1::Policy {
                    rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
                        window: Some(negative),
                    })),
                    ..Default::default()
                },
            ),
            "policy.quiet_period.window",
        ),
        (
            start_request(
                "data-lake",
                "",
                v1::Policy {
                    rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
                        window: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 0,
                        }),
                    })),
                    ..Default::default()
                },
            ),
            "policy.quiet_period.window",
        ),
        (
            start_request("data-lake", "", with_timeout),
            "policy.timeout",
        ),
        (
            start_request(
                "data-lake",
                "",
                v1::Policy {
                    rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
                        objects: 0,
                        quiet_window: None,
                    })),
                    ..Default::default()
                },
            ),
            "policy.expected_count.objects",
        ),
        (
            start_request("data-lake", "", adaptive(Some(0.0), 0.0, None)),
            "policy.adaptive.min_window",
        ),
        (
            start_request("data-lake", "", adaptive(None, 0.0, Some(1.0))),
            "policy.adaptive.max_window",
        ),
        (
            start_request("data-lake", "", adaptive(None, 99.0, None)),
            "policy.adaptive.quantile",
        ),
        (
            start_request("data-lake", "", adaptive(None, -0.5, None)),
            "policy.adaptive.quantile",
        ),
        (
            start_request("data-lake", "", {
                let mut p = adaptive(None, 0.0, None);
                if let Some(v1::policy::Rule::Adaptive(r)) = &mut p.rule {
                    r.safety_factor = 1e9;
                }
                p
            }),
            "policy.adaptive.safety_factor",
        ),
        (labelled, "labels"),
        (
            start_request("data-lake", "", marker("", false)),
            "policy.marker.key",
        ),
        (
            start_request("data-lake", "", marker("/_SUCCESS", false)),
            "policy.marker.key",
        ),
        (
            start_request("data-lake", "", marker("a\u{7}b", false)),
            "policy.marker.key",
        ),
        (
            start_request(
                "data-lake",
                &"p".repeat(1000),
                marker(&"m".repeat(25), false),
            ),
            "policy.marker.key",
        ),
        (
            start_request("data-lake", "", {
                let mut p = marker("_SUCCESS", false);
                if let Some(v1::policy::Rule::Marker(r)) = &mut p.rule {
                    r.quiet_window = Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    });
                }
                p
            }),
            "policy.marker.quiet_window",
        ),
        // This server has no AWS access to read the marker.
        (
            start_request("data-lake", "", marker("_SUCCESS", true)),
            "policy.marker.verify_manifest",
        ),
    ];
    for (request, field) in cases {
        let status = client.start_watch(request.clone()).await.expect_err(field);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().starts_with(&format!("invalid {field}:")),
            "{field}: {}",
            status.message()
        );
    }
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
async fn invalid_ids_and_pages_name_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for status in [
        client.get_watch("").await.unwrap_err(),
        client.get_watch("not-a-uuid").await.unwrap_err(),
        client.cancel_watch("../../etc", "").await.unwrap_err(),
        client.events("x", 0).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("invalid watch_id:"),
            "{}",
            status.message()
        );
    }
    let bad_page = v1::ListWatchesRequest {
        page_token: "zzz".into(),
        ..Default::default()
    };
    let status = client.list_watches(bad_page).await.unwrap_err();
    assert!(
        status.message().starts_with("invalid page_token:"),
        "{}",
        status.message()
    );
    let bad_state = v1::ListWatchesRequest {
        state: 99,
        ..Default::default()
    };
    assert!(
        client
            .list_watches(bad_state)
            .await
            .unwrap_err()
            .message()
            .starts_with("invalid state:")
    );
    let big_page = v1::ListWatchesRequest {
        page_size: 100_000,
        ..Default::default()
    };
    assert!(
        client
            .list_watches(big_page)
            .await
            .unwrap_err()
            .message()
            .starts_with("invalid page_size:")
    );
}

#[tokio::test]
async fn bad_documents_are_rejected_one_by_one_and_change_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let good = created("data-lake", &["good"]);
    let half_bad = {
        let mut doc: serde_json::Value =
            serde_json::from_str(&created("data-lake", &["x1", "x2"])).unwrap();
        doc["Records"][1]["s3"]["object"]["key"] = serde_json::Value::Null;
        doc.to_string()
    };
    let report = client
        .ingest_s3_events(vec![
            "{\"Records\": [".into(),
            good,
            s3_test_event("data-lake"),
            half_bad,
            "{\"something\": \"else\"}".into(),
            "bad%FF".into(),
        ])
        .await
        .unwrap();
    let rejected: Vec<u32> = report.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [0, 3, 4, 5], "{:?}", report.rejected);
    assert!(
        report.rejected[1]
            .reason
            .contains("Records[1].s3.object.key"),
        "{:?}",
        report.rejected[1]
    );
    assert_eq!((report.records, report.counted, report.ignored), (1, 1, 1));
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!(
        watch.object_count, 1,
        "nothing of the half-bad document counted"
    );
}

#[tokio::test]
async fn an_oversized_ingest_call_is_refused_whole() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = begin(
        &mut client,
        start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let keys: Vec<String> = (0..10_001).map(|i| format!("k{i}")).collect();
    let documents: Vec<String> = keys
        .chunks(1000)
        .map(|c| {
            created(
                "data-lake",
                &c.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .collect();
    let status = client.ingest_s3_events(documents).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("nothing was recorded"),
        "{}",
        status.message()
    );
    assert_eq!(client.get_watch(&id).await.unwrap().object_count, 0);
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_not_stored() {
    // W3C trace context says to ignore a context that does not parse.
    let server = TestServer::start().await;
    let mut raw = v1::watch_service_client::WatchServiceClient::connect(server.endpoint())
        .await
        .unwrap();
    for bad in [
        "garbage",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    ] {
        let mut request = tonic::Request::new(start_request(
            "data-lake",
            "",
            quiet_period(Duration::from_secs(3600)),
        ));
        request
            .metadata_mut()
            .insert("traceparent", bad.parse().unwrap());
        request
            .metadata_mut()
            .insert("tracestate", "vendor=opaque".parse().unwrap());
        let watch = raw
            .start_watch(request)
            .await
            .unwrap()
            .into_inner()
            .watch
            .unwrap();
        assert_eq!(
            (watch.traceparent.as_str(), watch.tracestate.as_str()),
            ("", ""),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn invalid_watch_groups_name_the_field_and_create_nothing() {
    let server = TestServer::start_with_tenants().await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let mut request = start_request("acme-lake", "", quiet_period(Duration::from_secs(3600)));
    request.client_token = "run-7".into();
    let mine = begin(&mut acme, request).await.watch_id;
    let theirs = begin(
        &mut globex,
        start_request("globex-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let missing = "01930000-0000-7000-8000-000000000000".to_owned();
    let group = |members: Vec<String>| v1::StartWatchRequest {
        members,
        ..Default::default()
    };
    let with = |f: &dyn Fn(&mut v1::StartWatchRequest)| {
        let mut r = group(vec![mine.clone()]);
        f(&mut r);
        r
    };
    let policy = |f: &dyn Fn(&mut v1::Policy)| {
        with(&|r: &mut v1::StartWatchRequest| {
            let mut p = v1::Policy::default();
            f(&mut p);
            r.policy = Some(p);
        })
    };

    let cases: Vec<(v1::StartWatchRequest, &str, &str)> = vec![
        (
            group(vec![mine.clone(), missing.clone()]),
            "members[1]",
            "no such watch",
        ),
        (
            group(vec![mine.clone(), theirs.clone()]),
            "members[1]",
            "no such watch",
        ),
        (
            group(vec!["day-1".into()]),
            "members[0]",
            "is not a watch id",
        ),
        (group(vec![mine.clone(); 101]), "members", "at most 100"),
        (
            group(vec![mine.clone(), mine.clone()]),
            "members[1]",
            "repeats members[0]",
        ),
        (
            with(&|r| r.client_token = "run-7".into()),
            "members[0]",
            "a group cannot contain itself",
        ),
        (
            with(&|r| r.bucket = "acme-lake".into()),
            "bucket",
            "takes none",
        ),
        (
            with(&|r| r.prefix = "day=1/".into()),
            "prefix",
            "takes none",
        ),
        (
            with(&|r| r.include = vec!["*.csv".into()]),
            "include",
            "takes none",
        ),
        (
            with(&|r| r.exclude = vec!["*.crc".into()]),
            "exclude",
            "takes none",
        ),
        (
            policy(&|p| *p = quiet_period(Duration::from_secs(5))),
            "policy.quiet_period",
            "takes none",
        ),
        (
            policy(&|p| p.reconcile = true),
            "policy.reconcile",
            "takes none",
        ),
        (
            policy(&|p| p.min_objects = 3),
            "policy.min_objects",
            "takes none",
        ),
    ];
    for (request, field, says) in cases {
        let status = acme.start_watch(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().starts_with(&format!("invalid {field}:"))
                && status.message().contains(says),
            "{field}: {}",
            status.message()
        );
    }
    // Another tenant's watch is told of exactly as one that never was.
    let unknown = |id: &str| {
        let request = group(vec![id.to_owned()]);
        let mut acme = acme.clone();
        async move {
            acme.start_watch(request)
                .await
                .unwrap_err()
                .message()
                .to_owned()
        }
    };
    assert_eq!(unknown(&theirs).await, unknown(&missing).await);
    let listed = acme.list_watches(Default::default()).await.unwrap().watches;
    assert_eq!(listed.len(), 1, "a refused group creates nothing");
    assert_eq!(
        globex
            .list_watches(Default::default())
            .await
            .unwrap()
            .watches
            .len(),
        1
    );
}

#[tokio::test]
async fn a_manifest_target_needs_one_of_the_tenants_buckets_and_a_valid_key() {
    let server = TestServer::start_with_tenants().await;
    let mut client = server.client_with_token(ACME_TOKEN).await;
    let manifest = |bucket: &str, key: &str| {
        let mut policy = quiet_period(Duration::from_secs(60));
        policy.notify = vec![v1::NotifyTarget {
            target: Some(v1::notify_target::Target::Manifest(v1::S3ManifestTarget {
                bucket: bucket.into(),
                key: key.into(),
            })),
        }];
        start_request("acme-landing", "", policy)
    };
    let cases = [
        (
            manifest("globex-out", "m.jsonl"),
            "policy.notify[0].manifest.bucket",
            "not one of the tenant's buckets",
        ),
        (
            manifest("Not_A_Bucket", "m.jsonl"),
            "policy.notify[0].manifest.bucket",
            "lowercase",
        ),
        (
            manifest("acme-out", ""),
            "policy.notify[0].manifest.key",
            "is required",
        ),
        (
            manifest("acme-out", &"k".repeat(1025)),
            "policy.notify[0].manifest.key",
            "at most 1024",
        ),
        (
            manifest("acme-out", "day=1/\nmanifest.jsonl"),
            "policy.notify[0].manifest.key",
            "control characters",
        ),
    ];
    for (request, field, why) in cases {
        let status = client.start_watch(request).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(&format!("invalid {field}:"))
                && status.message().contains(why),
            "{field}: {}",
            status.message()
        );
    }
    assert!(
        client
            .list_watches(Default::default())
            .await
            .unwrap()
            .watches
            .is_empty(),
        "nothing was created"
    );
    // A key of exactly 1024 bytes in one of the tenant's buckets is fine.
    begin(&mut client, manifest("shared-out", &"k".repeat(1024))).await;
}

#[tokio::test]
async fn invalid_replays_name_the_field() {
    let server = TestServer::start_with_tenants().await;
    let mut acme = server.client_with_token(ACME_TOKEN).await;
    let mut globex = server.client_with_token(GLOBEX_TOKEN).await;
    let theirs = begin(
        &mut globex,
        start_request("globex-lake", "", quiet_period(Duration::from_secs(3600))),
    )
    .await
    .watch_id;
    let t = |seconds: i64| prost_types::Timestamp { seconds, nanos: 0 };
    let object = |created: Option<prost_types::Timestamp>,
                  arrived: Option<prost_types::Timestamp>| {
        v1::ReplayObject { created, arrived }
    };
    let objects = |list: Vec<v1::ReplayObject>| v1::ReplayWatchRequest {
        objects: list,
        ..Default::default()
    };
    let ok = || vec![object(Some(t(1_800_000_000)), None)];
    let cases: Vec<(v1::ReplayWatchRequest, &str, &str)> = vec![
        (v1::ReplayWatchRequest::default(), "watch_id", "is required"),
        (
            v1::ReplayWatchRequest {
                watch_id: theirs.clone(),
                objects: ok(),
                ..Default::default()
            },
            "objects",
            "not both",
        ),
        (
            objects(vec![object(None, None)]),
            "objects[0].created",
            "is required",
        ),
        (
            objects(vec![object(Some(t(-5)), None)]),
            "objects[0].created",
            "between 1970 and 9999",
        ),
        (
            objects(vec![object(Some(t(100)), Some(t(99)))]),
            "objects[0].arrived",
            "before the object was created",
        ),
        (
            objects(vec![object(Some(t(100)), None); 100_001]),
            "objects",
            "at most 100000",
        ),
        (
            v1::ReplayWatchRequest {
                objects: ok(),
                policies: vec![quiet_period(Duration::from_secs(1)); 11],
                ..Default::default()
            },
            "policies",
            "at most 10",
        ),
        (
            v1::ReplayWatchRequest {
                objects: ok(),
                policies: vec![
                    quiet_period(Duration::from_secs(1)),
                    quiet_period(Duration::ZERO),
                ],
                ..Default::default()
            },
            "policies[1].quiet_period.window",
            "",
        ),
    ];
    for (request, field, why) in cases {
        let status = acme.replay_watch(request).await.expect_err(field);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().starts_with(&format!("invalid {field}:"))
                && status.message().contains(why),
            "{field}: {}",
            status.message()
        );
    }
    // Another tenant's watch is not there.
    let status = acme
        .replay_watch(v1::ReplayWatchRequest {
            watch_id: theirs,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}
