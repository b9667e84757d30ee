//! One conformance suite for every `Store` backend: the same behaviour on
//! the embedded SQLite file, on DynamoDB (against the AWS emulator the
//! test run starts; `AWS_ENDPOINT_URL` points at it) and on the in-memory
//! store that stands in for DynamoDB in one process.

use std::{sync::Arc, time::Duration};

use aws_sdk_dynamodb::types::AttributeValue;

use streamwatch_server::{
    clock::Timestamp,
    store::{
        Activity, ActivityKind, Applied, Change, Created, DeliveryState, Guard, ListQuery,
        ManifestEntry, NewWatch, ObjectsQuery, Recorded, Store, dynamodb::DynamoStore,
        memory::MemoryStore, sqlite::SqliteStore,
    },
    watch::{
        Bucket, EventKind, KeyFilter, Lifecycle, Notify, NotifyTarget, Policy, Prefix, Rule,
        Source, TenantId, TraceContext, WatchId, WatchState,
    },
};

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn tenant(name: &str) -> TenantId {
    TenantId::parse("tenant", name).unwrap()
}

fn new_watch(tenant_name: &str, token: Option<&str>) -> NewWatch {
    NewWatch {
        tenant: tenant(tenant_name),
        id: WatchId::generate(),
        source: Source::objects(
            Bucket::parse("bucket", "data-lake").unwrap(),
            Prefix::parse("prefix", "day=1/").unwrap(),
            Default::default(),
        ),
        policy: Policy::default(),
        labels: [("team".to_owned(), "etl".to_owned())].into(),
        client_token: token.map(str::to_owned),
        created_at: NOW,
        trace: Default::default(),
    }
}

fn activity(w: &NewWatch, kind: ActivityKind, key: &str, sequencer: &str) -> Activity {
    Activity {
        tenant: w.tenant.clone(),
        watch_id: w.id.clone(),
        kind,
        key: key.to_owned(),
        sequencer: sequencer.to_owned(),
        size: 0,
        event_time: None,
    }
}

async fn create(store: &dyn Store, new: NewWatch) -> streamwatch_server::watch::Watch {
    match store.create_watch(new).await.unwrap() {
        Created::New { watch, events } => {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].seq, 1);
            assert!(matches!(events[0].kind, EventKind::Started { .. }));
            watch
        }
        Created::Existing(w) => panic!("unexpected existing watch {}", w.id),
    }
}

async fn creates_reads_and_isolates_tenants(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    let watch = create(&*store, new.clone()).await;
    assert_eq!(watch.last_seq, 1);
    let read = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, watch);
    assert!(
        store
            .get_watch(&tenant("globex"), &new.id)
            .await
            .unwrap()
            .is_none()
    );
    let events = store
        .events_after(&tenant("globex"), &new.id, 0, 100)
        .await
        .unwrap();
    assert!(events.is_empty());
}

async fn client_tokens_are_idempotent_per_tenant(store: Arc<dyn Store>) {
    let first = create(&*store, new_watch("acme", Some("run-1"))).await;
    match store
        .create_watch(new_watch("acme", Some("run-1")))
        .await
        .unwrap()
    {
        Created::Existing(w) => assert_eq!(w.id, first.id),
        Created::New { .. } => panic!("the token must return the first watch"),
    }
    // Another tenant's identical token is its own.
    let other = create(&*store, new_watch("globex", Some("run-1"))).await;
    assert_ne!(other.id, first.id);
}

async fn records_each_key_exactly_once(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    create(&*store, new.clone()).await;
    let batch = vec![
        activity(&new, ActivityKind::Created, "day=1/a", "01"),
        activity(&new, ActivityKind::Created, "day=1/b", "01"),
        activity(&new, ActivityKind::Created, "day=1/a", "01"), // redelivered in the same batch
        activity(&new, ActivityKind::Created, "day=1/b", "02"), // overwritten in the same batch
        activity(&new, ActivityKind::Removed, "day=1/old", "05"),
    ];
    let out = store.record(batch.clone(), NOW).await.unwrap();
    use Recorded::*;
    assert_eq!(out.results, [Counted, Counted, Duplicate, Counted, Counted]);
    let (watch, events) = &out.updated[0];
    assert_eq!(
        (
            watch.counters.object_count,
            watch.counters.event_count,
            watch.counters.removed_count
        ),
        (2, 3, 1)
    );
    assert_eq!(watch.counters.last_activity_at, Some(NOW));
    assert!(
        events
            .iter()
            .all(|e| matches!(e.kind, EventKind::Progress { .. }))
    );

    // The whole batch again: nothing is new.
    let again = store.record(batch, NOW).await.unwrap();
    assert!(
        again.results.iter().all(|r| *r == Duplicate),
        "{:?}",
        again.results
    );
    assert!(again.updated.is_empty());
    let stored = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.counters, watch.counters);

    // A long key (over DynamoDB's sort-key limit once prefixed) counts once too.
    let long = format!("day=1/{}", "k".repeat(1018));
    let key = activity(&new, ActivityKind::Created, &long, "");
    assert_eq!(
        store.record(vec![key.clone()], NOW).await.unwrap().results,
        [Counted]
    );
    assert_eq!(
        store.record(vec![key], NOW).await.unwrap().results,
        [Duplicate]
    );
}

/// Records `batches` into a new watch and returns its counters
/// `(object_count, event_count, removed_count)` and how many activities counted.
async fn counters_after(
    store: &dyn Store,
    batches: &[Vec<(ActivityKind, String, String)>],
) -> ((u64, u64, u64), u64) {
    let new = new_watch("acme", None);
    create(store, new.clone()).await;
    let mut counted = 0;
    for batch in batches {
        let activities = batch
            .iter()
            .map(|(kind, key, sequencer)| activity(&new, *kind, key, sequencer))
            .collect();
        let out = store.record(activities, NOW).await.unwrap();
        counted += out
            .results
            .iter()
            .filter(|r| **r == Recorded::Counted)
            .count() as u64;
    }
    let c = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap()
        .counters;
    ((c.object_count, c.event_count, c.removed_count), counted)
}

async fn counts_do_not_depend_on_arrival_order(store: Arc<dyn Store>) {
    use ActivityKind::*;
    let seq = |tail: &str| format!("0055AED6DCD90281{tail}");
    let notifications: Vec<(ActivityKind, String, String)> = [
        // Three events of one key (overwrites).
        (Created, "a", seq("E1")),
        (Created, "a", seq("E2")),
        (Created, "a", seq("E3")),
        (Created, "b", seq("E1")),
        // Told of without a sequencer too: that stands for one of its events.
        (Created, "c", String::new()),
        (Created, "c", seq("E5")),
        (Created, "c", seq("E6")),
        // Only ever told of without a sequencer.
        (Created, "d", String::new()),
        // One event, as S3 compares sequencers (padded with zeros, any case).
        (Created, "f", seq("F0")),
        (Created, "f", seq("f").to_lowercase()),
        (Removed, "e", seq("E7")),
        (Removed, "e", seq("E8")),
    ]
    .into_iter()
    .map(|(kind, key, sequencer)| (kind, format!("day=1/{key}"), sequencer))
    .collect();
    let expected = (5, 3 + 1 + 2 + 1 + 1, 2);

    let one_by_one: Vec<_> = notifications.iter().map(|n| vec![n.clone()]).collect();
    let mut reversed = notifications.clone();
    reversed.reverse();
    // Reversed, each one redelivered, all in one batch.
    let reversed_redelivered = vec![[reversed.clone(), reversed].concat()];
    // Another order (every fifth), in batches of three, then all redelivered.
    let mut shuffled: Vec<_> = (0..notifications.len())
        .map(|i| notifications[(i * 5) % notifications.len()].clone())
        .collect();
    shuffled.extend(notifications.iter().rev().step_by(2).cloned());
    let shuffled_batches: Vec<_> = shuffled.chunks(3).map(<[_]>::to_vec).collect();

    for (order, batches) in [
        ("in order, one at a time", one_by_one),
        (
            "reversed and redelivered in one batch",
            reversed_redelivered,
        ),
        ("shuffled in batches of three", shuffled_batches),
    ] {
        let (counters, counted) = counters_after(&*store, &batches).await;
        assert_eq!(counters, expected, "{order}");
        assert_eq!(
            counted,
            counters.1 + counters.2,
            "{order}: one activity per count"
        );
    }
}

async fn a_key_overwritten_many_times_in_one_batch_counts_each_event(store: Arc<dyn Store>) {
    // More events of one key than one DynamoDB transaction holds, with redeliveries.
    let events: Vec<(ActivityKind, String, String)> = (0..130u64)
        .rev()
        .map(|i| {
            (
                ActivityKind::Created,
                "day=1/hot".to_owned(),
                format!("{:018X}", 0x0055_AED6_DCD9_0000u64 + i),
            )
        })
        .chain((0..10).map(|i| (ActivityKind::Created, format!("day=1/{i}"), String::new())))
        .collect();
    let batch = [events.clone(), events].concat();
    let (counters, counted) = counters_after(&*store, &[batch]).await;
    assert_eq!(counters, (11, 140, 0));
    assert_eq!(counted, 140);
}

async fn large_batches_span_transactions_and_stay_exact(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    create(&*store, new.clone()).await;
    let batch: Vec<Activity> = (0..250)
        .map(|i| activity(&new, ActivityKind::Created, &format!("day=1/{i}"), ""))
        .collect();
    let out = store.record(batch.clone(), NOW).await.unwrap();
    assert!(out.results.iter().all(|r| *r == Recorded::Counted));
    let watch = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.counters.object_count, 250);
    let events = store
        .events_after(&new.tenant, &new.id, 0, 1000)
        .await
        .unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=watch.last_seq).collect::<Vec<_>>(),
        "gapless log"
    );
    // Half old, half new: only the new half counts.
    let mixed: Vec<Activity> = (125..375)
        .map(|i| activity(&new, ActivityKind::Created, &format!("day=1/{i}"), ""))
        .collect();
    let out = store.record(mixed, NOW).await.unwrap();
    assert_eq!(
        out.results
            .iter()
            .filter(|r| **r == Recorded::Counted)
            .count(),
        125
    );
    let watch = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.counters.object_count, 375);
}

async fn concurrent_recorders_never_double_count(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    create(&*store, new.clone()).await;
    let batch: Vec<Activity> = (0..60)
        .map(|i| activity(&new, ActivityKind::Created, &format!("day=1/{i}"), ""))
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, batch) = (store.clone(), batch.clone());
        tasks.push(tokio::spawn(async move {
            store.record(batch, NOW).await.unwrap()
        }));
    }
    let mut counted = 0;
    for t in tasks {
        counted += t
            .await
            .unwrap()
            .results
            .iter()
            .filter(|r| **r == Recorded::Counted)
            .count();
    }
    assert_eq!(counted, 60, "each key counted by exactly one recorder");
    let watch = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.counters.object_count, 60);
}

async fn concurrent_shuffled_recorders_count_each_event_once(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    create(&*store, new.clone()).await;
    // 40 keys with three events each; every recorder has them in its own order.
    let events: Vec<Activity> = (0..40)
        .flat_map(|k| (1..=3).map(move |e| (k, e)))
        .map(|(k, e)| {
            let sequencer = format!("0055AED6DCD9028{e:X}");
            activity(
                &new,
                ActivityKind::Created,
                &format!("day=1/{k}"),
                &sequencer,
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for seed in 0..4 {
        let mut mine = events.clone();
        fastrand::Rng::with_seed(seed).shuffle(&mut mine);
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut counted = 0;
            for batch in mine.chunks(15) {
                let out = store.record(batch.to_vec(), NOW).await.unwrap();
                counted += out
                    .results
                    .iter()
                    .filter(|r| **r == Recorded::Counted)
                    .count();
            }
            counted
        }));
    }
    let mut counted = 0;
    for t in tasks {
        counted += t.await.unwrap();
    }
    assert_eq!(counted, 120, "each event counted by exactly one recorder");
    let c = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap()
        .counters;
    assert_eq!((c.object_count, c.event_count), (40, 120));
}

async fn keeps_the_start_trace_context(store: Arc<dyn Store>) {
    let trace = TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: "vendor=opaque".into(),
    };
    let new = NewWatch {
        trace: trace.clone(),
        ..new_watch("acme", None)
    };
    let created = match store.create_watch(new.clone()).await.unwrap() {
        Created::New { watch, events } => {
            let EventKind::Started { watch: snapshot } = &events[0].kind else {
                panic!("the first event is STARTED");
            };
            assert_eq!(snapshot.trace, trace, "the STARTED snapshot carries it");
            watch
        }
        Created::Existing(_) => panic!("a new watch"),
    };
    assert_eq!(created.trace, trace);
    // Counting and a lifecycle change rewrite the watch; the context stays.
    let out = store
        .record(
            vec![activity(&new, ActivityKind::Created, "day=1/a", "01")],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(out.updated[0].0.trace, trace);
    let current = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    let done = Lifecycle {
        state: WatchState::Completed,
        completed_at: Some(NOW),
        ..current.lifecycle.clone()
    };
    let applied = store
        .apply(Change::new(
            &new.tenant,
            &new.id,
            Guard::exact(&current),
            done,
            vec![EventKind::Completed {
                object_count: 1,
                object_bytes: 0,
                reason: "test".into(),
            }],
            NOW,
        ))
        .await
        .unwrap();
    let Some(Applied::Done { watch, .. }) = applied else {
        panic!("the guard holds");
    };
    assert_eq!(watch.trace, trace);
    let read = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.trace, trace);
    // A watch started without one reads back without one.
    let plain = create(&*store, new_watch("acme", None)).await;
    let read = store
        .get_watch(&plain.tenant, &plain.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.trace, TraceContext::default());
}

async fn finished_watches_take_no_activity(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    let watch = create(&*store, new.clone()).await;
    let done = Lifecycle {
        state: WatchState::Cancelled,
        completed_at: Some(NOW),
        ..watch.lifecycle.clone()
    };
    let guard = Guard {
        state: WatchState::Active,
        generation: 1,
        activity: None,
    };
    let applied = store
        .apply(Change::new(
            &new.tenant,
            &new.id,
            guard,
            done,
            vec![EventKind::Cancelled { reason: "x".into() }],
            NOW,
        ))
        .await
        .unwrap();
    assert!(matches!(applied, Some(Applied::Done { .. })));
    let out = store
        .record(
            vec![activity(&new, ActivityKind::Created, "day=1/a", "")],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(out.results, [Recorded::NotLive]);
    let missing = NewWatch {
        id: WatchId::generate(),
        ..new
    };
    let out = store
        .record(
            vec![activity(&missing, ActivityKind::Created, "day=1/a", "")],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(out.results, [Recorded::NotLive]);
}

/// A created notification of `key` with a size and an event time.
fn sized(w: &NewWatch, key: &str, sequencer: &str, size: u64) -> Activity {
    Activity {
        size,
        event_time: Some(Timestamp::from_millis(NOW.as_millis() - 1000 + size as i64)),
        ..activity(w, ActivityKind::Created, key, sequencer)
    }
}

async fn objects(
    store: &dyn Store,
    w: &NewWatch,
    generation: Option<u32>,
    after: Option<&str>,
    limit: usize,
) -> Vec<ManifestEntry> {
    let query = ObjectsQuery {
        generation,
        after: after.map(str::to_owned),
        limit,
    };
    store.list_objects(&w.tenant, &w.id, &query).await.unwrap()
}

fn keys(objects: &[ManifestEntry]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

async fn keeps_key_filters_and_sums_object_bytes_once_per_key(store: Arc<dyn Store>) {
    let new = NewWatch {
        source: Source::objects(
            Bucket::parse("bucket", "data-lake").unwrap(),
            Prefix::parse("prefix", "day=1/").unwrap(),
            KeyFilter::parse(vec!["**/*.parquet".into()], vec!["_temporary/**".into()]).unwrap(),
        ),
        ..new_watch("acme", None)
    };
    let watch = create(&*store, new.clone()).await;
    assert_eq!(watch.source, new.source);
    let read = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.source, new.source, "the filter is stored");
    let out = store
        .record(
            vec![
                sized(&new, "day=1/a", "01", 100),
                sized(&new, "day=1/a", "01", 100), // redelivered
                sized(&new, "day=1/a", "02", 7),   // overwritten: the key counted once
                sized(&new, "day=1/b", "", 20),
                activity(&new, ActivityKind::Removed, "day=1/b", "03"),
            ],
            NOW,
        )
        .await
        .unwrap();
    let (watch, events) = &out.updated[0];
    assert_eq!(
        (watch.counters.object_count, watch.counters.object_bytes),
        (2, 120)
    );
    assert!(
        matches!(&events[0].kind, EventKind::Progress { counters } if counters.object_bytes == 120)
    );
    // Redelivered again, in a later batch, with a first sequencer for b.
    store
        .record(
            vec![
                sized(&new, "day=1/a", "01", 100),
                sized(&new, "day=1/b", "04", 20),
            ],
            NOW,
        )
        .await
        .unwrap();
    let read = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.counters.object_bytes, 120,
        "a removal subtracts nothing"
    );
}

async fn counts_markers_apart_from_objects_once_per_marker(store: Arc<dyn Store>) {
    let new = NewWatch {
        policy: Policy {
            rule: Rule::Marker {
                key: "_SUCCESS".into(),
                quiet_window: None,
                verify_manifest: true,
            },
            ..Policy::default()
        },
        ..new_watch("acme", None)
    };
    let watch = create(&*store, new.clone()).await;
    assert_eq!(watch.marker_key(), Some("_SUCCESS"));
    let marker =
        |sequencer: &str| activity(&new, ActivityKind::Marker, "day=1/_SUCCESS", sequencer);
    let later = Timestamp::from_millis(NOW.as_millis() + 5_000);
    let out = store
        .record(
            vec![sized(&new, "day=1/a", "01", 10), marker("0A"), marker("0A")],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        out.results,
        [Recorded::Counted, Recorded::Counted, Recorded::Duplicate]
    );
    // Redelivered in a later batch: the same marker.
    let out = store.record(vec![marker("0A")], later).await.unwrap();
    assert_eq!(out.results, [Recorded::Duplicate]);
    let read = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    let c = read.counters;
    assert_eq!(
        (c.object_count, c.object_bytes, c.event_count),
        (1, 10, 1),
        "the marker is no object"
    );
    assert_eq!((c.marker_count, c.marker_at), (1, Some(NOW)));
    assert_eq!(
        keys(&objects(&*store, &new, None, None, 10).await),
        ["day=1/a"],
        "nor in the manifest"
    );
    // A rewritten marker (another sequencer) is a new marker.
    store.record(vec![marker("0B")], later).await.unwrap();
    let read = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (read.counters.marker_count, read.counters.marker_at),
        (2, Some(later))
    );
    assert_eq!(read.counters.activity(), 3);
    let asked = [
        "day=1/a".to_owned(),
        "day=1/_SUCCESS".into(),
        "day=1/b".into(),
        "day=1/a".into(),
    ];
    let counted = store
        .counted_keys(&new.tenant, &new.id, &asked)
        .await
        .unwrap();
    assert_eq!(
        counted,
        [true, false, false, true],
        "only created objects are counted keys"
    );
    let other = new_watch("acme", None);
    create(&*store, other.clone()).await;
    assert_eq!(
        store
            .counted_keys(&other.tenant, &other.id, &asked[..1])
            .await
            .unwrap(),
        [false],
        "per watch"
    );
}

async fn late_objects_belong_to_the_generation_their_reopening_starts(store: Arc<dyn Store>) {
    let new = NewWatch {
        policy: Policy {
            late_window: Some(Duration::from_secs(3600)),
            ..Policy::default()
        },
        ..new_watch("acme", None)
    };
    create(&*store, new.clone()).await;
    store
        .record(vec![sized(&new, "day=1/a", "01", 1)], NOW)
        .await
        .unwrap();
    let watch = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    let done = Lifecycle {
        state: WatchState::Completed,
        completed_at: Some(NOW),
        ..watch.lifecycle.clone()
    };
    let completed = EventKind::Completed {
        object_count: 1,
        object_bytes: 1,
        reason: "done".into(),
    };
    store
        .apply(Change::new(
            &new.tenant,
            &new.id,
            Guard::exact(&watch),
            done,
            vec![completed],
            NOW,
        ))
        .await
        .unwrap();
    // Late data, recorded before the observer reopens the watch.
    let out = store
        .record(vec![sized(&new, "day=1/late", "02", 2)], NOW)
        .await
        .unwrap();
    assert_eq!(out.results, [Recorded::Counted]);
    assert_eq!(
        keys(&objects(&*store, &new, Some(2), None, 10).await),
        ["day=1/late"]
    );
    assert_eq!(
        keys(&objects(&*store, &new, Some(1), None, 10).await),
        ["day=1/a"]
    );
}

async fn reads_many_watches_each_once(store: Arc<dyn Store>) {
    let (a, b) = (new_watch("acme", None), new_watch("acme", None));
    create(&*store, a.clone()).await;
    create(&*store, b.clone()).await;
    let key = |w: &NewWatch| streamwatch_server::watch::WatchKey {
        tenant: w.tenant.clone(),
        id: w.id.clone(),
    };
    let missing = new_watch("acme", None);
    // Groups that share a member ask for it twice.
    let read = store
        .watches(&[key(&a), key(&b), key(&a), key(&missing)])
        .await
        .unwrap();
    let mut ids: Vec<_> = read.iter().map(|w| w.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
}

async fn manifests_page_in_key_order_with_what_was_told(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    let watch = create(&*store, new.clone()).await;
    let names = ["day=1/e", "day=1/a b", "day=1/ü", "day=1/c+d", "day=1/b%20"];
    let batch: Vec<Activity> = names
        .iter()
        .enumerate()
        .map(|(i, k)| sized(&new, k, &format!("0{i}"), 10 + i as u64))
        .collect();
    store.record(batch, NOW).await.unwrap();
    // The removal of one, and its creation redelivered: nothing changes in the manifest but `removed`.
    store
        .record(
            vec![
                activity(&new, ActivityKind::Removed, "day=1/e", "09"),
                sized(&new, "day=1/e", "00", 999),
            ],
            NOW,
        )
        .await
        .unwrap();

    let first = objects(&*store, &new, None, None, 2).await;
    assert_eq!(
        keys(&first),
        ["day=1/a b", "day=1/b%20"],
        "byte order of the keys"
    );
    assert_eq!(
        first[0],
        ManifestEntry {
            key: "day=1/a b".into(),
            size: 11,
            sequencer: "01".into(),
            event_time: Some(Timestamp::from_millis(NOW.as_millis() - 1000 + 11)),
            generation: 1,
            recorded_at: Some(NOW),
            removed: false,
        }
    );
    // New objects arrive between pages: one before the cursor, one after.
    store
        .record(
            vec![sized(&new, "day=1/0", "", 1), sized(&new, "day=1/d", "", 2)],
            NOW,
        )
        .await
        .unwrap();
    let second = objects(&*store, &new, None, Some("day=1/b%20"), 2).await;
    assert_eq!(keys(&second), ["day=1/c+d", "day=1/d"]);
    let third = objects(&*store, &new, None, Some("day=1/d"), 2).await;
    assert_eq!(keys(&third), ["day=1/e", "day=1/ü"]);
    assert!(third[0].removed && !third[1].removed);
    assert_eq!(third[0].size, 10, "the first counted notification's size");
    assert!(
        objects(&*store, &new, None, Some("day=1/ü"), 2)
            .await
            .is_empty()
    );

    // A reopened watch: keys counted now are in generation 2.
    let guard = Guard {
        state: WatchState::Active,
        generation: 1,
        activity: None,
    };
    let reopened = Lifecycle::fresh(2, NOW, watch.counters.activity());
    store
        .apply(Change::new(
            &new.tenant,
            &new.id,
            guard,
            reopened,
            vec![],
            NOW,
        ))
        .await
        .unwrap();
    store
        .record(
            vec![
                sized(&new, "day=1/late", "", 5),
                sized(&new, "day=1/a b", "", 5),
            ],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        keys(&objects(&*store, &new, Some(2), None, 10).await),
        ["day=1/late"]
    );
    assert_eq!(objects(&*store, &new, Some(1), None, 10).await.len(), 7);
    assert_eq!(objects(&*store, &new, None, None, 100).await.len(), 8);
    // A generation filter still fills a page.
    assert_eq!(
        keys(&objects(&*store, &new, Some(1), Some("day=1/c+d"), 2).await),
        ["day=1/d", "day=1/e"]
    );
    // Another tenant sees none of it.
    let stranger = NewWatch {
        tenant: tenant("globex"),
        ..new.clone()
    };
    assert!(objects(&*store, &stranger, None, None, 10).await.is_empty());
    // Retiring the watch keeps its manifest.
    store.retire(&new.tenant, &new.id, NOW).await.unwrap();
    assert_eq!(objects(&*store, &new, None, None, 100).await.len(), 8);
}

async fn lifecycle_changes_are_guarded(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    let watch = create(&*store, new.clone()).await;
    store
        .record(
            vec![activity(&new, ActivityKind::Created, "day=1/a", "")],
            NOW,
        )
        .await
        .unwrap();
    // A decision taken on the snapshot before that activity must not land.
    let completed = Lifecycle {
        state: WatchState::Completed,
        completed_at: Some(NOW),
        ..watch.lifecycle.clone()
    };
    let stale = store
        .apply(Change::new(
            &new.tenant,
            &new.id,
            Guard::exact(&watch),
            completed.clone(),
            vec![],
            NOW,
        ))
        .await
        .unwrap();
    let Some(Applied::Conflict(current)) = stale else {
        panic!("expected a conflict, got {stale:?}")
    };
    assert_eq!(current.counters.object_count, 1);
    let events = vec![EventKind::Completed {
        object_count: 1,
        object_bytes: 0,
        reason: "done".into(),
    }];
    let fresh = store
        .apply(Change::new(
            &new.tenant,
            &new.id,
            Guard::exact(&current),
            completed,
            events,
            NOW,
        ))
        .await
        .unwrap();
    let Some(Applied::Done { watch, events }) = fresh else {
        panic!("expected the change to land")
    };
    assert_eq!(
        (watch.state(), watch.last_seq, events[0].seq),
        (WatchState::Completed, 3, 3)
    );
    let missing = store
        .apply(Change::new(
            &new.tenant,
            &WatchId::generate(),
            Guard::exact(&watch),
            watch.lifecycle.clone(),
            vec![],
            NOW,
        ))
        .await
        .unwrap();
    assert!(missing.is_none());
}

async fn events_page_in_order(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    create(&*store, new.clone()).await;
    for i in 0..30 {
        store
            .record(
                vec![activity(
                    &new,
                    ActivityKind::Created,
                    &format!("day=1/{i}"),
                    "",
                )],
                NOW,
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .events_after(&new.tenant, &new.id, after, 7)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().unwrap().seq;
        seen.extend(page.into_iter().map(|e| e.seq));
    }
    assert_eq!(seen, (1..=31).collect::<Vec<_>>());
}

async fn lists_filter_and_page_newest_first(store: Arc<dyn Store>) {
    let t = format!("lister{}", rand_suffix());
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut new = new_watch(&t, None);
        new.labels = [(
            "team".to_owned(),
            if i % 2 == 0 { "etl" } else { "bi" }.to_owned(),
        )]
        .into();
        ids.push(create(&*store, new).await.id);
    }
    let all = store
        .list_watches(
            &tenant(&t),
            &ListQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let listed: Vec<WatchId> = all.iter().map(|w| w.id.clone()).collect();
    assert_eq!(listed, ids.iter().rev().cloned().collect::<Vec<_>>());
    let page = store
        .list_watches(
            &tenant(&t),
            &ListQuery {
                limit: 2,
                after: Some(ids[3].clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|w| w.id.clone()).collect::<Vec<_>>(),
        [ids[2].clone(), ids[1].clone()]
    );
    let etl = store
        .list_watches(
            &tenant(&t),
            &ListQuery {
                limit: 10,
                labels: [("team".to_owned(), "etl".to_owned())].into(),
                state: Some(WatchState::Active),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(etl.len(), 3);
}

async fn live_watches_are_found_for_recovery(store: Arc<dyn Store>) {
    let new = new_watch("acme", None);
    let watch = create(&*store, new.clone()).await;
    let live = store.live_watches(NOW).await.unwrap();
    assert!(live.iter().any(|w| w.id == watch.id));
    store.retire(&new.tenant, &new.id, NOW).await.unwrap();
    let cancelled = Lifecycle {
        state: WatchState::Cancelled,
        completed_at: Some(NOW),
        ..watch.lifecycle.clone()
    };
    let guard = Guard {
        state: WatchState::Active,
        generation: 1,
        activity: None,
    };
    store
        .apply(Change::new(
            &new.tenant,
            &new.id,
            guard,
            cancelled,
            vec![],
            NOW,
        ))
        .await
        .unwrap();
    store.retire(&new.tenant, &new.id, NOW).await.unwrap();
    let live = store.live_watches(NOW).await.unwrap();
    assert!(
        !live.iter().any(|w| w.id == watch.id),
        "a retired watch is not recovered"
    );
    // Retiring keeps the watch and its log readable.
    let kept = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.state(), WatchState::Cancelled);
    assert_eq!(
        store
            .events_after(&new.tenant, &new.id, 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A watch delivering its terminal events to a webhook and a queue.
fn notifying_watch(tenant_name: &str) -> NewWatch {
    let mut new = new_watch(tenant_name, None);
    new.policy.notify = Notify {
        targets: vec![
            NotifyTarget::Webhook {
                url: "https://hooks.acme.example/done".into(),
                secret_ref: "main".into(),
            },
            NotifyTarget::Sqs {
                queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/done".into(),
            },
        ],
        reopened: false,
    };
    new
}

/// Completes `watch` (as it is now) at `NOW`.
async fn complete(store: &dyn Store, watch: &streamwatch_server::watch::Watch) -> Option<Applied> {
    let completed = Lifecycle {
        state: WatchState::Completed,
        completed_at: Some(NOW),
        ..watch.lifecycle.clone()
    };
    store
        .apply(Change::new(
            &watch.tenant,
            &watch.id,
            Guard::exact(watch),
            completed,
            vec![EventKind::Completed {
                object_count: watch.counters.object_count,
                object_bytes: 0,
                reason: "quiet".into(),
            }],
            NOW,
        ))
        .await
        .unwrap()
}

async fn terminal_events_write_outbox_entries_with_the_event(store: Arc<dyn Store>) {
    let new = notifying_watch("acme");
    let watch = create(&*store, new.clone()).await;
    // Progress is never delivered.
    store
        .record(
            vec![activity(&new, ActivityKind::Created, "day=1/a", "")],
            NOW,
        )
        .await
        .unwrap();
    assert!(
        store
            .deliveries(&new.tenant, &new.id)
            .await
            .unwrap()
            .is_empty()
    );
    // A decision on a stale snapshot lands nothing, outbox included.
    assert!(matches!(
        complete(&*store, &watch).await,
        Some(Applied::Conflict(_))
    ));
    assert!(
        store
            .deliveries(&new.tenant, &new.id)
            .await
            .unwrap()
            .is_empty()
    );

    let current = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    let Some(Applied::Done { events, .. }) = complete(&*store, &current).await else {
        panic!("completes");
    };
    let seq = events[0].seq;
    let deliveries = store.deliveries(&new.tenant, &new.id).await.unwrap();
    assert_eq!(deliveries.len(), 2, "one per target");
    for (i, d) in deliveries.iter().enumerate() {
        assert_eq!((d.seq, d.generation, d.target_index), (seq, 1, i as u32));
        assert_eq!(d.target, new.policy.notify.targets[i]);
        assert_eq!(
            (d.state, d.attempts, d.next_attempt_at),
            (DeliveryState::Pending, 0, NOW)
        );
        assert!(d.body.contains(&d.idempotency_key()), "{}", d.body);
    }
    // Another tenant sees none of them; a watch without targets has none.
    assert!(
        store
            .deliveries(&tenant("globex"), &new.id)
            .await
            .unwrap()
            .is_empty()
    );
    let plain = create(&*store, new_watch("acme", None)).await;
    assert!(matches!(
        complete(&*store, &plain).await,
        Some(Applied::Done { .. })
    ));
    assert!(
        store
            .deliveries(&plain.tenant, &plain.id)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn due_deliveries_are_claimed_once_per_lease(store: Arc<dyn Store>) {
    let watch = create(&*store, notifying_watch("acme")).await;
    complete(&*store, &watch).await.unwrap();
    let lease = NOW.plus(Duration::from_secs(10));
    let claimed = store.claim_deliveries(NOW, lease, 10).await.unwrap();
    assert_eq!(claimed.deliveries.len(), 2);
    assert!(
        claimed
            .deliveries
            .iter()
            .all(|d| d.next_attempt_at == lease)
    );
    // Leased: nobody else gets them before the lease ends.
    let again = store.claim_deliveries(NOW, lease, 10).await.unwrap();
    assert!(again.deliveries.is_empty());
    assert_eq!(again.next_due, Some(lease));
    // A lease that ran out (a crashed attempt) is claimed again, within the limit.
    let later = lease.plus(Duration::from_secs(10));
    let reclaimed = store.claim_deliveries(lease, later, 1).await.unwrap();
    assert_eq!(reclaimed.deliveries.len(), 1);
    assert!(
        reclaimed.next_due.is_some_and(|at| at <= lease),
        "one more is due"
    );
}

async fn attempts_are_fenced_by_the_lease_and_failures_logged(store: Arc<dyn Store>) {
    let watch = create(&*store, notifying_watch("acme")).await;
    complete(&*store, &watch).await.unwrap();
    let lease = NOW.plus(Duration::from_secs(10));
    let mut d = store
        .claim_deliveries(NOW, lease, 1)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    d.attempts = 1;
    d.last_status = "HTTP 503".into();
    d.last_error = "HTTP 503: busy".into();
    d.next_attempt_at = NOW.plus(Duration::from_secs(5));
    // Someone holding another lease records nothing.
    let stale = store
        .finish_delivery(&d, NOW.plus(Duration::from_secs(9)), None, NOW)
        .await
        .unwrap();
    assert!(stale.is_none());
    let recorded = store.finish_delivery(&d, lease, None, NOW).await.unwrap();
    assert_eq!(recorded, Some(Vec::new()));
    let stored = store.deliveries(&watch.tenant, &watch.id).await.unwrap();
    let stored = stored
        .iter()
        .find(|s| s.target_index == d.target_index)
        .unwrap();
    assert_eq!(stored, &d);

    // Due again at its retry time; this time it fails for good, with an event.
    let retry_at = NOW.plus(Duration::from_secs(5));
    let lease = retry_at.plus(Duration::from_secs(10));
    let claimed = store
        .claim_deliveries(retry_at, lease, 10)
        .await
        .unwrap()
        .deliveries;
    let mut d = claimed
        .into_iter()
        .find(|c| c.target_index == d.target_index)
        .unwrap();
    d.attempts = 2;
    d.state = DeliveryState::Failed;
    d.finished_at = Some(retry_at);
    let event = EventKind::DeliveryFailed {
        seq: d.seq,
        target: d.target_index,
        attempts: 2,
        last_error: d.last_error.clone(),
    };
    let before = store
        .get_watch(&watch.tenant, &watch.id)
        .await
        .unwrap()
        .unwrap();
    let appended = store
        .finish_delivery(&d, lease, Some(event.clone()), retry_at)
        .await
        .unwrap()
        .expect("the lease holds");
    assert_eq!(appended.len(), 1);
    assert_eq!(
        (appended[0].seq, &appended[0].kind),
        (before.last_seq + 1, &event)
    );
    let after = store
        .get_watch(&watch.tenant, &watch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.last_seq, before.last_seq + 1);
    assert_eq!(
        after.lifecycle, before.lifecycle,
        "a delivery changes no lifecycle"
    );
    let log = store
        .events_after(&watch.tenant, &watch.id, before.last_seq, 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].kind, event);
    // A finished delivery is never claimed again.
    let far = retry_at.plus(Duration::from_secs(3600));
    let left = store
        .claim_deliveries(far, far.plus(Duration::from_secs(10)), 10)
        .await
        .unwrap();
    assert!(
        left.deliveries
            .iter()
            .all(|c| c.target_index != d.target_index)
    );
}

fn rand_suffix() -> String {
    WatchId::generate().as_str().replace('-', "")[20..].to_owned()
}

async fn keeps_a_watch_groups_members(store: Arc<dyn Store>) {
    let members = vec![WatchId::generate(), WatchId::generate()];
    let new = NewWatch {
        source: Source::Members {
            members: members.clone(),
        },
        ..new_watch("acme", Some("group-1"))
    };
    let watch = create(&*store, new.clone()).await;
    assert_eq!(watch.source.members(), members);
    assert!(watch.source.as_objects().is_none(), "a group has no bucket");
    let read = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, watch);
    let events = store
        .events_after(&new.tenant, &new.id, 0, 10)
        .await
        .unwrap();
    let EventKind::Started { watch: started } = &events[0].kind else {
        panic!("{events:?}")
    };
    assert_eq!(
        started.source, watch.source,
        "the log keeps the members too"
    );
    match store.create_watch(new.clone()).await.unwrap() {
        Created::Existing(w) => assert_eq!(w.source, watch.source),
        Created::New { .. } => panic!("the token must return the group"),
    }
    let listed = store
        .list_watches(
            &new.tenant,
            &ListQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed, std::slice::from_ref(&watch));
    let live = store.live_watches(NOW).await.unwrap();
    assert!(
        live.contains(&watch),
        "an active group is armed after a restart"
    );
    let done = complete(&*store, &watch).await;
    let Some(Applied::Done { watch: done, .. }) = done else {
        panic!("{done:?}")
    };
    assert_eq!(
        (done.state(), done.source.members()),
        (WatchState::Completed, &members[..])
    );
}

/// A lifecycle change that appends no event (a polling sample) and a
/// recording, started together: whichever writes first, the other builds on
/// it. A recording based on a read from before the sample must not write
/// the old lifecycle back.
async fn a_change_without_events_survives_a_concurrent_recording(store: Arc<dyn Store>) {
    for round in 0..3 {
        let new = new_watch("acme", None);
        let watch = create(&*store, new.clone()).await;
        let mut sampled = watch.lifecycle.clone();
        sampled.polling.repeated = 3;
        sampled.polling.next_sample_at = Some(NOW.plus(Duration::from_secs(60)));
        // Holds before and after the recording.
        let guard = Guard {
            state: WatchState::Active,
            generation: 1,
            activity: None,
        };
        let sample = Change::new(&new.tenant, &new.id, guard, sampled.clone(), vec![], NOW);
        let object = activity(&new, ActivityKind::Created, "day=1/a", "0A");
        // `futures::join!` polls the sample first: both read the watch
        // before either writes, and the sample lands first (memory; DynamoDB
        // mostly: its recording reads the seen items in between).
        let (applied, recorded) =
            futures::join!(store.apply(sample), store.record(vec![object], NOW));
        assert!(
            matches!(applied, Ok(Some(Applied::Done { .. }))),
            "round {round}: {applied:?}"
        );
        assert_eq!(recorded.unwrap().results, [Recorded::Counted]);
        let now = store
            .get_watch(&new.tenant, &new.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.counters.object_count, 1, "round {round}");
        assert_eq!(
            now.lifecycle.polling, sampled.polling,
            "round {round}: the sample survives"
        );
    }
}

async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("conformance.db")).unwrap();
    (Arc::new(store), dir)
}

async fn dynamodb() -> (Arc<dyn Store>, ()) {
    streamwatch_testkit::aws::expect_emulator();
    let table = format!("conformance-{}", rand_suffix());
    let store = DynamoStore::new(
        streamwatch_testkit::aws::dynamodb().await,
        table,
        Duration::from_secs(3600),
    );
    store
        .create_table()
        .await
        .expect("create the table in the emulator");
    (Arc::new(store), ())
}

async fn memory() -> (Arc<dyn Store>, ()) {
    (Arc::new(MemoryStore::new(64)), ())
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let (store, _guard) = super::sqlite().await;
                    super::$test(store).await;
                }
            )*
        }
        mod on_memory {
            $(
                #[tokio::test]
                async fn $test() {
                    let (store, _guard) = super::memory().await;
                    super::$test(store).await;
                }
            )*
        }
        mod on_dynamodb {
            $(
                #[tokio::test]
                async fn $test() {
                    streamwatch_testkit::require_emulator!();
                    let (store, _guard) = super::dynamodb().await;
                    super::$test(store).await;
                }
            )*
        }
    };
}

conformance!(
    creates_reads_and_isolates_tenants,
    a_change_without_events_survives_a_concurrent_recording,
    client_tokens_are_idempotent_per_tenant,
    records_each_key_exactly_once,
    counts_do_not_depend_on_arrival_order,
    a_key_overwritten_many_times_in_one_batch_counts_each_event,
    keeps_the_start_trace_context,
    large_batches_span_transactions_and_stay_exact,
    concurrent_recorders_never_double_count,
    concurrent_shuffled_recorders_count_each_event_once,
    finished_watches_take_no_activity,
    lifecycle_changes_are_guarded,
    events_page_in_order,
    lists_filter_and_page_newest_first,
    live_watches_are_found_for_recovery,
    terminal_events_write_outbox_entries_with_the_event,
    due_deliveries_are_claimed_once_per_lease,
    attempts_are_fenced_by_the_lease_and_failures_logged,
    keeps_key_filters_and_sums_object_bytes_once_per_key,
    manifests_page_in_key_order_with_what_was_told,
    keeps_a_watch_groups_members,
    counts_markers_apart_from_objects_once_per_marker,
    late_objects_belong_to_the_generation_their_reopening_starts,
    reads_many_watches_each_once,
);

/// A watch item written before items kept a `rev` (a table from an earlier
/// version) still takes changes, known by its `last_seq`, and gets a `rev`.
#[tokio::test]
async fn dynamodb_changes_a_watch_item_written_before_revisions() {
    streamwatch_testkit::require_emulator!();
    streamwatch_testkit::aws::expect_emulator();
    let client = streamwatch_testkit::aws::dynamodb().await;
    let table = format!("conformance-{}", rand_suffix());
    let store = DynamoStore::new(client.clone(), table.clone(), Duration::from_secs(3600));
    store.create_table().await.unwrap();
    let new = new_watch("acme", None);
    let watch = create(&store, new.clone()).await;
    let key = |item: aws_sdk_dynamodb::operation::get_item::builders::GetItemFluentBuilder| {
        item.table_name(&table)
            .key("pk", AttributeValue::S(format!("W#acme#{}", new.id)))
            .key("sk", AttributeValue::S("WATCH".into()))
    };
    let rev = || async {
        let item = key(client.get_item()).send().await.unwrap().item.unwrap();
        item.get("rev").map(|v| v.as_n().unwrap().clone())
    };
    assert_eq!(rev().await.as_deref(), Some("1"), "a new item starts at 1");
    client
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(format!("W#acme#{}", new.id)))
        .key("sk", AttributeValue::S("WATCH".into()))
        .update_expression("REMOVE rev")
        .send()
        .await
        .unwrap();

    let mut sampled = watch.lifecycle.clone();
    sampled.polling.repeated = 2;
    let sample = Change::new(
        &new.tenant,
        &new.id,
        Guard::exact(&watch),
        sampled.clone(),
        vec![],
        NOW,
    );
    let applied = store.apply(sample).await.unwrap();
    assert!(matches!(applied, Some(Applied::Done { .. })), "{applied:?}");
    assert_eq!(rev().await.as_deref(), Some("1"));
    let object = activity(&new, ActivityKind::Created, "day=1/a", "0A");
    let recorded = store.record(vec![object], NOW).await.unwrap();
    assert_eq!(recorded.results, [Recorded::Counted]);
    assert_eq!(rev().await.as_deref(), Some("2"));
    let now = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.lifecycle.polling, sampled.polling);
    assert_eq!(now.counters.object_count, 1);
}

/// Retiring a watch gives every item of it an expiry (the TTL attribute)
/// but its pending outbox entries, its client token too, and takes the
/// watch out of the live index with one more write of its item.
#[tokio::test]
async fn dynamodb_retiring_gives_every_item_an_expiry() {
    streamwatch_testkit::require_emulator!();
    streamwatch_testkit::aws::expect_emulator();
    let client = streamwatch_testkit::aws::dynamodb().await;
    let table = format!("conformance-{}", rand_suffix());
    let store = DynamoStore::new(client.clone(), table.clone(), Duration::from_secs(3600));
    store.create_table().await.unwrap();
    let new = new_watch("acme", Some("retire-me"));
    create(&store, new.clone()).await;
    let objects = (0..30)
        .map(|i| activity(&new, ActivityKind::Created, &format!("day=1/{i}"), ""))
        .collect();
    store.record(objects, NOW).await.unwrap();
    store.retire(&new.tenant, &new.id, NOW).await.unwrap();

    let scan = client.scan().table_name(&table).send().await.unwrap();
    // The watch's partition and its token (route items live elsewhere).
    let partitions = [format!("W#acme#{}", new.id), "C#acme#retire-me".to_owned()];
    let items: Vec<_> = scan
        .items
        .unwrap_or_default()
        .into_iter()
        .filter(|i| partitions.contains(i["pk"].as_s().unwrap()))
        .collect();
    let expiry = (NOW.as_millis() / 1000 + 3600).to_string();
    let sks: Vec<&str> = items
        .iter()
        .map(|i| i["sk"].as_s().unwrap().as_str())
        .collect();
    assert_eq!(
        sks.iter().filter(|sk| sk.starts_with("K#c#")).count(),
        30,
        "{sks:?}"
    );
    assert!(sks.contains(&"TOKEN") && sks.contains(&"WATCH"), "{sks:?}");
    for item in &items {
        let sk = item["sk"].as_s().unwrap();
        let expires = item.get("expires_at").map(|v| v.as_n().unwrap().as_str());
        assert_eq!(expires, Some(expiry.as_str()), "{sk}");
    }
    let watch = items
        .iter()
        .find(|i| i["sk"].as_s().unwrap() == "WATCH")
        .unwrap();
    assert!(!watch.contains_key("live_shard"));
    assert_eq!(
        watch["rev"].as_n().unwrap(),
        "3",
        "created, recorded, retired"
    );
}
