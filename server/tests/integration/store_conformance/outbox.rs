//! Conformance: the delivery outbox: entries written with terminal
//! events, claimed once per lease, attempts fenced by it.

use super::*;

/// A watch delivering its terminal events to a webhook and a queue.
pub(super) fn notifying_watch(tenant_name: &str) -> NewWatch {
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
pub(super) async fn complete(
    store: &dyn Store,
    watch: &streamwatch_server::watch::Watch,
) -> Option<Applied> {
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

pub(super) async fn terminal_events_write_outbox_entries_with_the_event(store: Arc<dyn Store>) {
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

pub(super) async fn due_deliveries_are_claimed_once_per_lease(store: Arc<dyn Store>) {
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

pub(super) async fn attempts_are_fenced_by_the_lease_and_failures_logged(store: Arc<dyn Store>) {
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
