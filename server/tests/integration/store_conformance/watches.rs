//! Conformance: creating, reading, listing and changing watches, their
//! event logs, recovery and retirement.

use super::*;

pub(super) async fn creates_reads_and_isolates_tenants(store: Arc<dyn Store>) {
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

pub(super) async fn client_tokens_are_idempotent_per_tenant(store: Arc<dyn Store>) {
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

pub(super) async fn keeps_the_start_trace_context(store: Arc<dyn Store>) {
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

pub(super) async fn reads_many_watches_each_once(store: Arc<dyn Store>) {
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

pub(super) async fn lifecycle_changes_are_guarded(store: Arc<dyn Store>) {
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

pub(super) async fn events_page_in_order(store: Arc<dyn Store>) {
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

pub(super) async fn lists_filter_and_page_newest_first(store: Arc<dyn Store>) {
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

pub(super) async fn live_watches_are_found_for_recovery(store: Arc<dyn Store>) {
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

pub(super) async fn keeps_a_watch_groups_members(store: Arc<dyn Store>) {
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
pub(super) async fn a_change_without_events_survives_a_concurrent_recording(store: Arc<dyn Store>) {
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
