//! Conformance: counting activity exactly, whatever the order, the batch
//! size or the number of concurrent recorders.

use super::*;

pub(super) async fn records_each_key_exactly_once(store: Arc<dyn Store>) {
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
pub(super) async fn counters_after(
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

pub(super) async fn counts_do_not_depend_on_arrival_order(store: Arc<dyn Store>) {
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

pub(super) async fn a_key_overwritten_many_times_in_one_batch_counts_each_event(
    store: Arc<dyn Store>,
) {
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

pub(super) async fn large_batches_span_transactions_and_stay_exact(store: Arc<dyn Store>) {
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

pub(super) async fn concurrent_recorders_never_double_count(store: Arc<dyn Store>) {
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

pub(super) async fn concurrent_shuffled_recorders_count_each_event_once(store: Arc<dyn Store>) {
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

pub(super) async fn finished_watches_take_no_activity(store: Arc<dyn Store>) {
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

/// A watch with a timeout and no late window that no observer has timed out
/// yet takes activity until a day past its timeout, and none after: it is
/// over all the same (and on DynamoDB its items' expiry counts from then).
pub(super) async fn a_watch_a_day_past_its_timeout_takes_no_activity(store: Arc<dyn Store>) {
    let mut new = new_watch("acme", None);
    new.policy.timeout = Some(Duration::from_secs(3600));
    create(&*store, new.clone()).await;
    let grace_ends = NOW.plus(Duration::from_secs(3600 + 24 * 3600));
    let at = |t: Timestamp, key: &str| {
        let store = store.clone();
        let a = activity(&new, ActivityKind::Created, key, "");
        async move { store.record(vec![a], t).await.unwrap().results }
    };
    let just_before = Timestamp::from_millis(grace_ends.as_millis() - 1);
    assert_eq!(at(just_before, "day=1/a").await, [Recorded::Counted]);
    assert_eq!(at(grace_ends, "day=1/b").await, [Recorded::NotLive]);
    let watch = store
        .get_watch(&new.tenant, &new.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.state(), WatchState::Active);
    assert_eq!(watch.counters.object_count, 1);

    // Without a timeout, or with a late window, a watch may go on for good.
    for policy in [
        Policy::default(),
        Policy {
            timeout: Some(Duration::from_secs(3600)),
            late_window: Some(Duration::from_secs(60)),
            ..Policy::default()
        },
    ] {
        let new = NewWatch {
            id: WatchId::generate(),
            policy,
            ..new.clone()
        };
        create(&*store, new.clone()).await;
        let a = activity(&new, ActivityKind::Created, "day=1/a", "");
        let out = store.record(vec![a], grace_ends).await.unwrap();
        assert_eq!(out.results, [Recorded::Counted]);
    }
}
