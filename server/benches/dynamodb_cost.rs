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
//!
//! Then one producer trace, side by side: the requests the classic
//! Lambda + DynamoDB + SQS observer makes (one `UpdateItem` per notification,
//! one `GetItem` and one delayed `SendMessage` per poll, its polls replayed by
//! the same pure policy the service runs) and the requests streamwatch's
//! store makes for the same notifications (counted as sent), with the
//! detection delay after the last object for both.
//! `--quick` runs a smaller size (CI checks the harness still runs).

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use streamwatch_testkit::{aws, created};

use streamwatch_server::{
    Core,
    clock::{Clock, Timestamp},
    config::{Config, StoreKind},
    policy,
    service::StartWatch,
    store::{
        Activity, ActivityKind, Applied, Created, Guard, NewWatch, Store, dynamodb::DynamoStore,
    },
    watch::{Bucket, DelaySchedule, Policy, Prefix, Rule, Source, TenantId, Watch, WatchId},
};

/// Records `objects` objects into one watch, `batch` per call, lists its
/// manifest and retires it; `timeout`: the watch's (a bounded life: its
/// items are written with their expiry, so retiring writes none of them).
async fn cost_per_1000(
    objects: usize,
    batch: usize,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let store = Arc::new(DynamoStore::new(
        aws::dynamodb().await,
        aws::unique("bench"),
        Duration::from_secs(3600),
    ));
    store.create_table().await?;
    let tenant = TenantId::parse("tenant", "bench")?;
    let id = WatchId::generate();
    let now = Timestamp::from_millis(1_800_000_000_000);
    let new = NewWatch {
        tenant: tenant.clone(),
        id: id.clone(),
        source: Source::objects(
            Bucket::parse("bucket", "data-lake")?,
            Prefix::parse("prefix", "")?,
            Default::default(),
        ),
        policy: Policy {
            timeout,
            ..Policy::default()
        },
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
    // Keys, sizes and sequencers as a Spark job's output carries them.
    let keys: Vec<String> = (0..objects)
        .map(|i| format!("day=2026-12-06/part-{i:05}-5f0c7a4e-2b1d-4c3e-9a8f-7d6e5c4b3a21.c000.snappy.parquet"))
        .collect();
    for (n, chunk) in keys.chunks(batch).enumerate() {
        let activities = chunk
            .iter()
            .enumerate()
            .map(|(i, k)| Activity {
                tenant: tenant.clone(),
                watch_id: id.clone(),
                kind: ActivityKind::Created,
                key: k.clone(),
                sequencer: format!("{:018X}", 0x0066_A1B2_C3D4_E5F6u64 + (n * batch + i) as u64),
                size: 134_217_728 + (n * batch + i) as u64,
                event_time: Some(now),
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

    // The manifest, in ListWatchObjects' pages of 1,000 (each asks for one more).
    let before = snapshot(&store);
    let (mut after_key, mut listed) = (None, 0);
    loop {
        let query = streamwatch_server::store::ObjectsQuery {
            generation: None,
            after: after_key.take(),
            limit: 1001,
        };
        let mut page = store.list_objects(&tenant, &id, &query).await?;
        let more = page.len() > 1000;
        page.truncate(1000);
        listed += page.len();
        if !more {
            break;
        }
        after_key = page.last().map(|o| o.key.clone());
    }
    assert_eq!(listed, objects);
    let after = snapshot(&store);
    println!(
        "list the manifest of {objects} objects in pages of 1,000: {:.1} requests, {:.0} RCU per 1,000 objects",
        per_k(after.0 - before.0),
        per_k(after.2 - before.2),
    );

    let before = snapshot(&store);
    store.retire(&tenant, &id, now).await?;
    let after = snapshot(&store);
    let life = match timeout {
        Some(t) => format!("timeout {}", humantime::format_duration(t)),
        None => "no timeout".to_owned(),
    };
    println!(
        "retire the watch ({life}): {} requests, {} WCU, {} RCU ({:.0}, {:.0} and {:.0} per 1,000 objects)",
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        per_k(after.0 - before.0),
        per_k(after.1 - before.1),
        per_k(after.2 - before.2),
    );
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
    let sqs = aws::sqs().await;
    let queue = sqs
        .create_queue()
        .queue_name(aws::unique("bench"))
        .send()
        .await?
        .queue_url
        .unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let mut config = Config::embedded_default();
    config.data = dir.path().join("unused.db");
    config.store = StoreKind::Dynamodb;
    config.table = Some(aws::unique("bench"));
    config.create_table = true;
    config.sqs_queue_urls = vec![queue.clone()];
    config.sqs_wait = Duration::from_secs(1);
    config.sqs_consumers = 4;
    let core = Core::start(&config, Clock::new()).await?;
    let tenant = TenantId::parse("tenant", "default")?;
    let start = StartWatch {
        source: Source::objects(
            Bucket::parse("bucket", "data-lake")?,
            Prefix::parse("prefix", "")?,
            Default::default(),
        ),
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
            let body = created("data-lake", &[&format!("part-{i:06}.json")]);
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
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

/// A day's export, deterministic: three producers over ten minutes (one
/// object every 2s; one every 5s for 8 minutes, every fourth notification
/// delivered twice; a burst of 20 every minute). Notifications as
/// (milliseconds after the watch started, key), in delivery order.
fn producer_trace() -> Vec<(i64, String)> {
    let mut trace = Vec::new();
    for i in 0..300 {
        trace.push((2_000 * i + 500, format!("a/part-{i:04}.json")));
    }
    for i in 0..96 {
        let key = format!("b/part-{i:04}.json");
        trace.push((5_000 * i + 1_200, key.clone()));
        if i % 4 == 3 {
            trace.push((5_000 * i + 9_700, key));
        }
    }
    for burst in 0..10 {
        for j in 0..20 {
            trace.push((
                60_000 * burst + 30_000 + 40 * j,
                format!("c/{burst:02}-{j:02}.json"),
            ));
        }
    }
    trace.sort();
    trace
}

/// The classic rule's polls over `trace` until it completes: (polls,
/// completion instant), both by the service's own policy.
fn classic_polls(watch: &mut Watch, trace: &[(i64, String)]) -> (u64, i64) {
    let mut polls = 0;
    let mut now = Timestamp::from_millis(0);
    let mut delivered = 0;
    loop {
        let decision = policy::evaluate(watch, now, Timestamp::MAX);
        if let Some(lifecycle) = decision.lifecycle {
            watch.lifecycle = lifecycle;
        }
        let done = decision.events.iter().any(|e| e.is_terminal());
        // Every wake-up after the start is a poll: a delayed message that
        // triggers the function, which reads the count.
        if now.as_millis() > 0 {
            polls += 1;
        }
        if done {
            return (polls, now.as_millis());
        }
        let next = decision
            .wake_at
            .expect("an active polling watch wakes again");
        // Notifications delivered before the next poll: the classic design
        // counts every one (ADD 1), redeliveries included.
        while delivered < trace.len() && trace[delivered].0 <= next.as_millis() {
            watch.counters.event_count += 1;
            watch.counters.object_count += 1;
            watch.counters.last_activity_at = Some(Timestamp::from_millis(trace[delivered].0));
            delivered += 1;
        }
        now = next;
    }
}

async fn classic_side_by_side() -> anyhow::Result<()> {
    let trace = producer_trace();
    let last = trace.last().expect("a trace").0;
    let distinct: std::collections::BTreeSet<&str> =
        trace.iter().map(|(_, k)| k.as_str()).collect();

    // The classic design, polling every 30s and done after 3 unchanged
    // samples (the shortest fixed schedule without a false completion in
    // server/DECISIONS.md).
    let store = Arc::new(DynamoStore::new(
        aws::dynamodb().await,
        aws::unique("bench"),
        Duration::from_secs(3600),
    ));
    store.create_table().await?;
    let tenant = TenantId::parse("tenant", "bench")?;
    let new = |policy: Policy| -> anyhow::Result<NewWatch> {
        Ok(NewWatch {
            tenant: tenant.clone(),
            id: WatchId::generate(),
            source: Source::objects(
                Bucket::parse("bucket", "data-lake")?,
                Prefix::parse("prefix", "")?,
                Default::default(),
            ),
            policy,
            labels: Default::default(),
            client_token: None,
            created_at: Timestamp::from_millis(0),
            trace: Default::default(),
        })
    };
    let classic_policy = Policy {
        rule: Rule::Polling {
            delay: Duration::from_secs(30),
            max_repeats: 3,
            schedule: DelaySchedule::Fixed,
        },
        ..Policy::default()
    };
    let Created::New {
        watch: mut classic, ..
    } = store.create_watch(new(classic_policy)?).await?
    else {
        anyhow::bail!("watch exists")
    };
    let (polls, classic_done) = classic_polls(&mut classic, &trace);
    let classic_requests = trace.len() as u64 + 2 * polls;

    // streamwatch: the same notifications as SQS receives of up to 10, into
    // the store; a 2m quiet period (likewise the shortest without a false
    // completion there) completes with one transaction and no polls.
    let window = Duration::from_secs(120);
    let Created::New { watch, .. } = store
        .create_watch(new(Policy {
            rule: Rule::QuietPeriod { window },
            ..Policy::default()
        })?)
        .await?
    else {
        anyhow::bail!("watch exists")
    };
    let mut first_delivery = std::collections::HashMap::new();
    for (at, key) in &trace {
        first_delivery.entry(key.as_str()).or_insert(*at);
    }
    let before = snapshot(&store);
    for receive in trace.chunks(10) {
        let activities = receive
            .iter()
            .map(|(_, key)| Activity {
                tenant: tenant.clone(),
                watch_id: watch.id.clone(),
                kind: ActivityKind::Created,
                key: key.clone(),
                // S3's sequencer for the object's write; a redelivery repeats it.
                sequencer: format!("{:016X}", first_delivery[key.as_str()]),
                size: 0,
                event_time: None,
            })
            .collect();
        let at = Timestamp::from_millis(receive.last().expect("a receive").0);
        store.record(activities, at).await?;
    }
    let mut current = store.get_watch(&tenant, &watch.id).await?.expect("watch");
    let mut now = Timestamp::from_millis(last);
    let completed_at = loop {
        let decision = policy::evaluate(&current, now, Timestamp::MAX);
        if let Some(lifecycle) = decision.lifecycle {
            let Some(Applied::Done { watch: applied, .. }) = store
                .apply(streamwatch_server::store::Change::new(
                    &tenant,
                    &watch.id,
                    Guard::exact(&current),
                    lifecycle,
                    decision.events,
                    now,
                ))
                .await?
            else {
                anyhow::bail!("the completion did not apply")
            };
            current = applied;
        }
        if current.state().is_terminal() {
            break now.as_millis();
        }
        now = decision.wake_at.expect("an active watch wakes again");
    };
    let after = snapshot(&store);
    anyhow::ensure!(
        current.counters.object_count == distinct.len() as u64,
        "streamwatch counted {} of {} distinct objects",
        current.counters.object_count,
        distinct.len()
    );
    println!(
        "one producer trace: {} notifications of {} objects, the last {:.1}s after the start",
        trace.len(),
        distinct.len(),
        last as f64 / 1000.0
    );
    println!(
        "  classic (poll 30s, 3 unchanged): {classic_requests} requests ({} UpdateItem, {polls} GetItem, \
         {polls} SendMessage), counts {} objects, completes {:.1}s after the last object",
        trace.len(),
        classic.counters.object_count,
        (classic_done - last) as f64 / 1000.0
    );
    println!(
        "  streamwatch (quiet 2m): {} requests ({} WCU, {} RCU), counts {} objects, completes {:.1}s after the last object",
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        current.counters.object_count,
        (completed_at - last) as f64 / 1000.0
    );
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
        cost_per_1000(objects, batch, None).await?;
    }
    // A watch with a timeout and no late window: the same recording, and a
    // retirement that writes the watch item alone.
    cost_per_1000(100 * scale, 10, Some(Duration::from_secs(6 * 3600))).await?;
    let objects = 100 * scale;
    println!(
        "classic design (UpdateItem ADD 1 per notification, one GetItem per poll): 1,000 requests and \
         1,000 WCU per 1,000 objects, plus 1 request and 0.5 RCU per watch per poll; \
         it over-counts every redelivery"
    );
    sqs_to_dynamodb(objects).await?;
    classic_side_by_side().await?;
    Ok(())
}
