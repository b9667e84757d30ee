//! What the conformance suite cannot show of the memory store: the lagging
//! index under a paused clock, a fence checked at commit rather than at
//! read, and the audit trail of what committed.

use std::time::Duration;

use super::*;
use crate::{
    store::{Guard, LeaseItem},
    watch::{Bucket, Labels, Lifecycle, Policy, Prefix, Source, WatchState},
};

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn new_watch() -> NewWatch {
    NewWatch {
        tenant: TenantId::parse("tenant", "acme").unwrap(),
        id: WatchId::generate(),
        source: Source::objects(
            Bucket::parse("bucket", "data-lake").unwrap(),
            Prefix::parse("prefix", "daily/").unwrap(),
            Default::default(),
        ),
        policy: Policy::default(),
        labels: Labels::default(),
        client_token: None,
        created_at: T0,
        trace: Default::default(),
    }
}

async fn create(store: &MemoryStore) -> Watch {
    match store.create_watch(new_watch()).await.unwrap() {
        Created::New { watch, .. } => watch,
        Created::Existing(w) => panic!("a new watch, not {}", w.id),
    }
}

/// The change completing `watch` as read.
fn complete(watch: &Watch) -> LifecycleChange {
    let lifecycle = Lifecycle {
        state: WatchState::Completed,
        completed_at: Some(T0),
        reason: "quiet".into(),
        ..watch.lifecycle.clone()
    };
    let events = vec![EventKind::Completed {
        object_count: 0,
        object_bytes: 0,
        reason: "quiet".into(),
    }];
    LifecycleChange::new(
        &watch.tenant,
        &watch.id,
        Guard::exact(watch),
        lifecycle,
        events,
        T0,
    )
}

async fn index_states(store: &MemoryStore) -> Vec<WatchState> {
    store
        .live_in_shard(0)
        .await
        .unwrap()
        .iter()
        .map(|w| w.state())
        .collect()
}

/// A store of one shard whose lease `owner` holds.
async fn leased(owner: &str) -> (MemoryStore, LeaseItem) {
    let store = MemoryStore::new(1);
    store.create_lease(0).await.unwrap();
    let free = store.cluster_view().await.unwrap().leases.remove(0);
    let lease = store.take_lease(&free, owner, T0).await.unwrap().unwrap();
    (store, lease)
}

#[tokio::test(start_paused = true)]
async fn the_live_index_shows_a_write_only_after_its_lag() {
    let lag = Duration::from_secs(5);
    let store = MemoryStore::new(1).with_index_lag(lag);
    let watch = create(&store).await;
    assert!(index_states(&store).await.is_empty(), "a new watch lags");
    assert!(store.live_watches(T0).await.unwrap().is_empty());
    assert!(
        store
            .get_watch(&watch.tenant, &watch.id)
            .await
            .unwrap()
            .is_some(),
        "a read of the watch itself is strongly consistent"
    );
    tokio::time::advance(lag - Duration::from_millis(1)).await;
    assert!(index_states(&store).await.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(index_states(&store).await, [WatchState::Active]);
    assert_eq!(store.live_watches(T0).await.unwrap().len(), 1);

    // Completed and retired: the index shows the old item until the lag passed.
    let Some(Applied::Done { .. }) = store.apply(complete(&watch)).await.unwrap() else {
        panic!("the completion applies");
    };
    store.retire(&watch.tenant, &watch.id, T0).await.unwrap();
    assert_eq!(
        index_states(&store).await,
        [WatchState::Active],
        "the index still holds the item as it was"
    );
    tokio::time::advance(lag - Duration::from_millis(1)).await;
    assert_eq!(index_states(&store).await, [WatchState::Active]);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(index_states(&store).await.is_empty(), "retired, it left");
    assert!(store.live_watches(T0).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_completed_watch_shows_completed_in_the_index_after_the_lag_until_retired() {
    let lag = Duration::from_secs(2);
    let store = MemoryStore::new(1).with_index_lag(lag);
    let watch = create(&store).await;
    tokio::time::advance(lag).await;
    store.apply(complete(&watch)).await.unwrap();
    assert_eq!(index_states(&store).await, [WatchState::Active]);
    tokio::time::advance(lag).await;
    assert_eq!(
        index_states(&store).await,
        [WatchState::Completed],
        "the index holds the watch until it is retired"
    );
}

#[tokio::test]
async fn a_fence_lost_between_read_and_commit_refuses_the_change_and_writes_nothing() {
    let (store, a) = leased("replica-a").await;
    let watch = create(&store).await;
    let before = store.commits();

    // replica-a reads the watch; before its write lands, replica-b takes the lease.
    let mut change = Box::pin(store.apply(complete(&watch).fenced(a.fence())));
    assert!(
        futures::poll!(&mut change).is_pending(),
        "the change read the watch and waits for its write"
    );
    let b = store
        .take_lease(&a, "replica-b", T0)
        .await
        .unwrap()
        .expect("replica-b takes the lease");
    let refused = change.await.expect_err("the lease moved before the commit");
    assert!(
        matches!(refused, StoreError::Fenced { shard: 0 }),
        "{refused}"
    );

    let now = store
        .get_watch(&watch.tenant, &watch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now, watch, "the watch is as it was");
    let log = store
        .events_after(&watch.tenant, &watch.id, 0, 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 1, "only STARTED: {log:?}");
    assert_eq!(store.commits(), before, "nothing committed");

    // The new owner's change, from the same read, goes through.
    let done = store
        .apply(complete(&watch).fenced(b.fence()))
        .await
        .unwrap();
    assert!(matches!(done, Some(Applied::Done { .. })), "{done:?}");
}

#[tokio::test]
async fn concurrent_changes_from_one_read_apply_once() {
    let store = MemoryStore::new(1);
    let watch = create(&store).await;
    let (first, second) =
        tokio::join!(store.apply(complete(&watch)), store.apply(complete(&watch)));
    // Both read the watch before either wrote: one commits, the other's
    // commit is cancelled, and its retry finds the guard broken.
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, Some(Applied::Conflict(_))));
    let [Some(Applied::Done { .. }), Some(Applied::Conflict(now))] = &outcomes else {
        panic!("one change applies, the other conflicts: {outcomes:?}");
    };
    assert_eq!(now.state(), WatchState::Completed);
    let log = store
        .events_after(&watch.tenant, &watch.id, 0, 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 2, "one COMPLETED: {log:?}");
}

#[tokio::test]
async fn the_audit_trail_holds_what_committed_and_nothing_else() {
    let (store, a) = leased("replica-a").await;
    let watch = create(&store).await;

    // A take from a stale read and a release by a non-owner change nothing.
    let free = LeaseItem {
        shard: 0,
        owner: String::new(),
        version: 0,
    };
    assert_eq!(
        store.take_lease(&free, "replica-b", T0).await.unwrap(),
        None
    );
    let foreign = LeaseItem {
        owner: "replica-c".into(),
        ..a.clone()
    };
    store.release_lease(&foreign, T0).await.unwrap();
    store.create_lease(0).await.unwrap();

    // A fenced change with a wrong fence, and a change whose guard fails.
    let wrong = Fence {
        version: a.version + 1,
        ..a.fence()
    };
    let refused = store.apply(complete(&watch).fenced(wrong)).await;
    assert!(matches!(refused, Err(StoreError::Fenced { shard: 0 })));
    let mut moved = watch.clone();
    moved.lifecycle.generation += 1;
    let conflict = store.apply(complete(&moved)).await.unwrap();
    assert!(matches!(conflict, Some(Applied::Conflict(_))));
    assert!(store.commits().is_empty(), "{:?}", store.commits());

    // What commits is recorded, in order, at the instant it committed.
    let start = Instant::now();
    store
        .apply(complete(&watch).fenced(a.fence()))
        .await
        .unwrap();
    store.release_lease(&a, T0).await.unwrap();
    let commits = store.commits();
    assert_eq!(commits.len(), 1);
    let commit = &commits[0];
    assert_eq!(
        (&commit.key, &commit.fence, &commit.events[..]),
        (&watch.key(), &Some(a.fence()), &["completed"][..])
    );
    assert!(commit.at >= start);
    let history = store.lease_history();
    let history: Vec<(u32, &str, u64)> = history
        .iter()
        .map(|c| (c.shard, c.owner.as_str(), c.version))
        .collect();
    assert_eq!(
        history,
        [(0, "", 0), (0, "replica-a", 1), (0, "", 1)],
        "created, taken, released"
    );
}
