//! What only the DynamoDB store has: items written by an earlier version,
//! and the expiry retirement gives every item.

use aws_sdk_dynamodb::types::AttributeValue;

use super::*;

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

/// Retiring a watch gives every item of it an expiry (the TTL attribute)
/// but its pending outbox entries, its client token too, and takes the
/// watch out of the live index with one more write of its item.
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
