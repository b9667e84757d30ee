//! Conformance: what the store keeps of each counted object (sizes, key
//! filters, markers, generations) and the manifest that pages through it.

use super::*;

/// A created notification of `key` with a size and an event time.
pub(super) fn sized(w: &NewWatch, key: &str, sequencer: &str, size: u64) -> Activity {
    Activity {
        size,
        event_time: Some(Timestamp::from_millis(NOW.as_millis() - 1000 + size as i64)),
        ..activity(w, ActivityKind::Created, key, sequencer)
    }
}

pub(super) async fn objects(
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

pub(super) fn keys(objects: &[ManifestEntry]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

pub(super) async fn keeps_key_filters_and_sums_object_bytes_once_per_key(store: Arc<dyn Store>) {
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

pub(super) async fn counts_markers_apart_from_objects_once_per_marker(store: Arc<dyn Store>) {
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

pub(super) async fn late_objects_belong_to_the_generation_their_reopening_starts(
    store: Arc<dyn Store>,
) {
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

pub(super) async fn manifests_page_in_key_order_with_what_was_told(store: Arc<dyn Store>) {
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
