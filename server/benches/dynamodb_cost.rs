//! What the DynamoDB backend costs and how fast SQS notifications reach it,
//! against the AWS emulator (`AWS_ENDPOINT_URL`; `.ci/run` starts one, or
//! run `moto_server` yourself):
//!
//! ```sh
//! cargo bench -p streamwatch-server --bench dynamodb_cost
//! ```
//!
//! Reports DynamoDB requests and capacity units per 1,000 objects (counted by
//! the store: the emulator returns no consumed capacity for transactions, so
//! units follow DynamoDB's documented rules) next to the classic design (one
//! `UpdateItem ADD 1` per notification plus one read per poll), and the rate
//! at which notifications flow from SQS into DynamoDB. The emulator, not AWS,
//! bounds that rate: every call is a local HTTP round trip into Python.
//! `--quick` runs a smaller size (CI checks the harness still runs).

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use streamwatch_server::{
    Core,
    clock::{Clock, Timestamp},
    config::{Config, StoreKind},
    policy::{Policy, Rule},
    service::StartWatch,
    store::{Activity, ActivityKind, Created, NewWatch, Store, dynamodb::DynamoStore},
    watch::{Bucket, Prefix, TenantId, WatchId},
};

fn name(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &id[id.len() - 12..])
}

async fn cost_per_1000(objects: usize, batch: usize) -> anyhow::Result<()> {
    let store = Arc::new(DynamoStore::new(
        DynamoStore::client_from_env().await,
        name("bench"),
        Duration::from_secs(3600),
    ));
    store.create_table().await?;
    let tenant = TenantId::parse("tenant", "bench")?;
    let id = WatchId::generate();
    let now = Timestamp::from_millis(1_800_000_000_000);
    let new = NewWatch {
        tenant: tenant.clone(),
        id: id.clone(),
        bucket: Bucket::parse("bucket", "data-lake")?,
        prefix: Prefix::parse("prefix", "")?,
        policy: Policy::default(),
        labels: Default::default(),
        client_token: None,
        created_at: now,
        trace: Default::default(),
    };
    let Created::New { .. } = store.create_watch(new).await? else {
        anyhow::bail!("watch exists")
    };
    let before = snapshot(&store);
    let started = Instant::now();
    let keys: Vec<String> = (0..objects).map(|i| format!("part-{i:06}.json")).collect();
    for chunk in keys.chunks(batch) {
        let activities = chunk
            .iter()
            .map(|k| Activity {
                tenant: tenant.clone(),
                watch_id: id.clone(),
                kind: ActivityKind::Created,
                key: k.clone(),
                sequencer: String::new(),
            })
            .collect();
        store.record(activities, now).await?;
    }
    let elapsed = started.elapsed();
    let after = snapshot(&store);
    let per_k = |v: u64| v as f64 * 1000.0 / objects as f64;
    println!(
        "record {objects} objects, {batch} per call: {:.0} requests, {:.0} WCU, {:.0} RCU per 1,000 objects; \
         {:.0} objects/s into the emulator",
        per_k(after.0 - before.0),
        per_k(after.1 - before.1),
        per_k(after.2 - before.2),
        objects as f64 / elapsed.as_secs_f64()
    );
    let watch = store.get_watch(&tenant, &id).await?.expect("watch");
    assert_eq!(watch.counters.object_count, objects as u64);
    Ok(())
}

fn snapshot(store: &DynamoStore) -> (u64, u64, u64) {
    (
        store.stats.requests.load(Ordering::Relaxed),
        store.stats.write_units.load(Ordering::Relaxed),
        store.stats.read_units.load(Ordering::Relaxed),
    )
}

async fn sqs_to_dynamodb(objects: usize) -> anyhow::Result<()> {
    let sqs = aws_sdk_sqs::Client::new(
        &aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    );
    let queue = sqs
        .create_queue()
        .queue_name(name("bench"))
        .send()
        .await?
        .queue_url
        .unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let mut config = Config::embedded_default();
    config.data = dir.path().join("unused.db");
    config.store = StoreKind::Dynamodb;
    config.table = Some(name("bench"));
    config.create_table = true;
    config.sqs_queue_urls = vec![queue.clone()];
    config.sqs_wait = Duration::from_secs(1);
    config.sqs_consumers = 4;
    let core = Core::start(&config, Clock::new()).await?;
    let tenant = TenantId::parse("tenant", "default")?;
    let start = StartWatch {
        bucket: Bucket::parse("bucket", "data-lake")?,
        prefix: Prefix::parse("prefix", "")?,
        policy: Policy {
            rule: Rule::ExpectedCount {
                objects: objects as u64,
                quiet_window: None,
            },
            ..Policy::default()
        },
        labels: Default::default(),
        client_token: None,
        trace: Default::default(),
    };
    let (watch, _) = core.service.start_watch(&tenant, start).await?;
    let mut stream = core.service.stream_events(&tenant, &watch.id, 0).await?;
    let started = Instant::now();
    for chunk in (0..objects).collect::<Vec<_>>().chunks(10) {
        let entries = chunk.iter().map(|i| {
            let body = serde_json::json!({"Records": [{
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": "2026-11-26T10:00:00.000Z", "eventName": "ObjectCreated:Put",
                "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "data-lake"},
                       "object": {"key": format!("part-{i:06}.json"), "size": 1}}}]});
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body.to_string())
                .build()
                .expect("entry")
        });
        sqs.send_message_batch()
            .queue_url(&queue)
            .set_entries(Some(entries.collect()))
            .send()
            .await?;
    }
    use futures::StreamExt;
    while let Some(event) = stream.next().await {
        if event?.kind.is_terminal() {
            break;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "SQS -> DynamoDB: {objects} notifications, 4 consumers: completed after {:.2}s, {:.0} notifications/s",
        elapsed.as_secs_f64(),
        objects as f64 / elapsed.as_secs_f64()
    );
    core.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        anyhow::bail!("set AWS_ENDPOINT_URL to an AWS emulator (moto_server); see the module docs");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 10 };
    println!("DynamoDB cost and SQS ingest rate against the AWS emulator");
    for (objects, batch) in [(20 * scale, 1), (100 * scale, 10), (200 * scale, 100)] {
        cost_per_1000(objects, batch).await?;
    }
    let objects = 100 * scale;
    println!(
        "classic design (UpdateItem ADD 1 per notification, one GetItem per poll): 1,000 requests and \
         1,000 WCU per 1,000 objects, plus 1 request and 0.5 RCU per watch per poll; \
         it over-counts every redelivery"
    );
    sqs_to_dynamodb(objects).await?;
    Ok(())
}
