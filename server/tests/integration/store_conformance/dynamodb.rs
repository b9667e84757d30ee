//! What only the DynamoDB store has: items written by an earlier version,
//! and the expiry (TTL) of every item, from the start or at retirement.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::Ordering,
};

use aws_sdk_dynamodb::types::AttributeValue;

use super::*;

type Item = HashMap<String, AttributeValue>;

/// A watch item written before items kept a `rev` (a table from an earlier
/// version) still takes changes, known by its `last_seq`, and gets a `rev`.
#[tokio::test]
async fn dynamodb_changes_a_watch_item_written_before_revisions() {
    streamwatch_testkit::require_emulator!();
    let (client, table, store) = dynamodb_table().await;
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

/// The items of `new`'s partition and of its client token, by sort key
/// (route items live elsewhere).
async fn items_of(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    new: &NewWatch,
) -> BTreeMap<String, Item> {
    let mut partitions = vec![format!("W#acme#{}", new.id)];
    partitions.extend(new.client_token.iter().map(|t| format!("C#acme#{t}")));
    let scan = client.scan().table_name(table).send().await.unwrap();
    scan.items
        .unwrap_or_default()
        .into_iter()
        .filter(|i| partitions.contains(i["pk"].as_s().unwrap()))
        .map(|i| (i["sk"].as_s().unwrap().clone(), i))
        .collect()
}

fn expires_at(item: &Item) -> Option<i64> {
    item.get("expires_at")
        .map(|v| v.as_n().unwrap().parse().unwrap())
}

/// Retiring a watch that may have gone on for good (no timeout) gives every
/// item of it an expiry (the TTL attribute) but its pending outbox entries,
/// its client token too, and takes the watch out of the live index with one
/// more write of its item.
#[tokio::test]
async fn dynamodb_retiring_gives_every_item_an_expiry() {
    streamwatch_testkit::require_emulator!();
    let (client, table, store) = dynamodb_table().await;
    let new = new_watch("acme", Some("retire-me"));
    create(&store, new.clone()).await;
    let objects = (0..30)
        .map(|i| activity(&new, ActivityKind::Created, &format!("day=1/{i}"), ""))
        .collect();
    store.record(objects, NOW).await.unwrap();
    let items = items_of(&client, &table, &new).await;
    assert!(items.values().all(|i| expires_at(i).is_none()), "{items:?}");
    store.retire(&new.tenant, &new.id, NOW).await.unwrap();

    let items = items_of(&client, &table, &new).await;
    let expiry = NOW.as_millis() / 1000 + 3600;
    assert_eq!(
        items.keys().filter(|sk| sk.starts_with("K#c#")).count(),
        30,
        "{items:?}"
    );
    assert!(items.contains_key("TOKEN") && items.contains_key("WATCH"));
    for (sk, item) in &items {
        assert_eq!(expires_at(item), Some(expiry), "{sk}");
    }
    let watch = &items["WATCH"];
    assert!(!watch.contains_key("live_shard"));
    assert_eq!(
        watch["rev"].as_n().unwrap(),
        "3",
        "created, recorded, retired"
    );
}

/// A watch whose life is bounded (a timeout, no late window) has every item
/// written with an expiry from the start: its retention (an hour here)
/// counted from a day past its timeout. Retiring it then writes its watch
/// item only; retired later than that expiry allows for, it writes every
/// item again.
#[tokio::test]
async fn dynamodb_a_bounded_watch_retires_without_writing_its_items_again() {
    streamwatch_testkit::require_emulator!();
    let (client, table, store) = dynamodb_table().await;
    let bounded = |token: &str| {
        let mut new = new_watch("acme", Some(token));
        new.policy.timeout = Some(Duration::from_secs(2 * 3600));
        new
    };
    let (on_time, late) = (bounded("on-time"), bounded("late"));
    let written = NOW.as_millis() / 1000 + 2 * 3600 + 24 * 3600 + 3600;
    for new in [&on_time, &late] {
        create(&store, new.clone()).await;
        let mut objects: Vec<Activity> = (0..30)
            .map(|i| activity(new, ActivityKind::Created, &format!("day=1/{i}"), ""))
            .collect();
        // A further sequencer of a key, and a removal: their items too.
        objects.push(activity(new, ActivityKind::Created, "day=1/0", "0B"));
        objects.push(activity(new, ActivityKind::Created, "day=1/0", "0C"));
        objects.push(activity(new, ActivityKind::Removed, "day=1/1", ""));
        store.record(objects, NOW).await.unwrap();
        let cancel = store
            .get_watch(&new.tenant, &new.id)
            .await
            .unwrap()
            .unwrap();
        let mut cancelled = cancel.lifecycle.clone();
        cancelled.state = WatchState::Cancelled;
        let change = Change::new(
            &new.tenant,
            &new.id,
            Guard::exact(&cancel),
            cancelled,
            vec![EventKind::Cancelled {
                reason: "done".into(),
            }],
            NOW.plus(Duration::from_secs(60)),
        );
        store.apply(change).await.unwrap();
        let items = items_of(&client, &table, new).await;
        assert!(items.keys().any(|sk| sk.starts_with("S#")), "{items:?}");
        assert!(items.keys().any(|sk| sk.starts_with("K#r#")), "{items:?}");
        for (sk, item) in items.iter().filter(|(sk, _)| *sk != "WATCH") {
            assert_eq!(expires_at(item), Some(written), "{sk} before retiring");
        }
    }

    let writes = || store.stats.write_units.load(Ordering::Relaxed);
    let before = writes();
    let retired_at = NOW.plus(Duration::from_secs(3600));
    store
        .retire(&on_time.tenant, &on_time.id, retired_at)
        .await
        .unwrap();
    assert_eq!(writes() - before, 1, "the watch item's write alone");
    let items = items_of(&client, &table, &on_time).await;
    for (sk, item) in &items {
        let expected = match sk.as_str() {
            "WATCH" => retired_at.as_millis() / 1000 + 3600,
            _ => written,
        };
        assert_eq!(expires_at(item), Some(expected), "{sk}");
    }
    assert!(!items["WATCH"].contains_key("live_shard"));

    // Retired two days past its timeout: a day later than its items' expiry
    // allows for, so they are written again to keep the retention.
    let retired_at = NOW.plus(Duration::from_secs(2 * 3600 + 2 * 24 * 3600));
    let before = writes();
    store
        .retire(&late.tenant, &late.id, retired_at)
        .await
        .unwrap();
    assert!(writes() - before > 30, "{}", writes() - before);
    let expiry = retired_at.as_millis() / 1000 + 3600;
    for (sk, item) in &items_of(&client, &table, &late).await {
        assert_eq!(expires_at(item), Some(expiry), "{sk}");
    }
}
