//! What the users of the cluster do in a run: start watches (retrying with
//! their client token), send each watch's objects through the queue or
//! `IngestS3Events` on any replica, and follow each watch's events from a
//! replica, resuming on another where the stream ends.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use streamwatch_server::{
    service::{Service, StartWatch},
    store::ClusterTable,
    watch::{Bucket, Policy, Prefix, Rule, Source, Watch, WatchId},
};
use streamwatch_testkit::documents;
use tokio::time::Instant;

use super::world::{
    BASE_WALL_MS, POLL_DELAY, POLL_REPEATS, QUIET, REPLICAS, Rules, Sent, World, tenant,
};

const BUCKET: &str = "data-lake";

/// The service of a replica that is up (not killed), chosen by `pick`.
async fn some_service(world: &World, pick: usize) -> Option<Arc<Service>> {
    some_replica(world, pick).await.map(|(_, service)| service)
}

/// [`some_service`], with the clock skew of its replica.
async fn some_replica(world: &World, pick: usize) -> Option<(i64, Arc<Service>)> {
    for i in 0..REPLICAS {
        let r = world.replicas[(pick + i) % REPLICAS].lock().await;
        if let Some(core) = &r.core {
            if world.verbose {
                eprintln!("{:?}: calling {}", Instant::now() - world.started, r.id);
            }
            return Some((r.skew_ms, core.service.clone()));
        }
    }
    None
}

type Seen = Arc<Mutex<Vec<u64>>>;

/// Starts watch `w`, follows it with subscribers, and sends its objects.
pub async fn produce(
    world: &Arc<World>,
    w: usize,
    rng: &mut fastrand::Rng,
) -> (Watch, Instant, Vec<Sent>, Vec<Seen>) {
    let prefix = format!("w{w}/");
    let rule = match world.rules {
        Rules::PollingToo if w % 2 == 1 => Rule::Polling {
            delay: POLL_DELAY,
            max_repeats: POLL_REPEATS,
            schedule: Default::default(),
        },
        _ => Rule::QuietPeriod { window: QUIET },
    };
    let start = StartWatch {
        source: Source::objects(
            Bucket::parse("bucket", BUCKET).unwrap(),
            Prefix::parse("prefix", &prefix).unwrap(),
            Default::default(),
        ),
        policy: Policy {
            rule,
            // Late data reopens the watch: nothing sent is ever dropped.
            late_window: Some(Duration::from_secs(3600)),
            ..Policy::default()
        },
        labels: Default::default(),
        client_token: Some(format!("watch-{w}")),
        trace: Default::default(),
    };
    // StartWatch is retried with its client token until a replica answers.
    let (watch, created) = loop {
        let pick = rng.usize(0..REPLICAS);
        if let Some((skew_ms, service)) = some_replica(world, pick).await {
            let tenant = tenant();
            let call = service.start_watch(&tenant, start.clone());
            let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
            if world.verbose {
                eprintln!(
                    "{:?}: StartWatch {w}: {:?}",
                    Instant::now() - world.started,
                    answer
                        .as_ref()
                        .map(|a| a.as_ref().map(|(w, new)| (w.id.clone(), *new)))
                );
            }
            if let Ok(Ok((watch, _))) = answer {
                if world.verbose {
                    let version = world.table.routes_version().await;
                    let acks: Vec<_> = world
                        .table
                        .replicas()
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| (r.id, r.routes, r.heartbeat))
                        .collect();
                    eprintln!("  route version {version:?}, acknowledged {acks:?}");
                }
                let since = watch.created_at.as_millis() - BASE_WALL_MS - skew_ms;
                let created = world.started + Duration::from_millis(since.max(0) as u64);
                break (watch, created);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let subscribers: Vec<Seen> = (0..1 + rng.usize(0..2))
        .map(|_| {
            let seen = Seen::default();
            tokio::spawn(follow(
                world.clone(),
                watch.id.clone(),
                rng.usize(0..REPLICAS),
                seen.clone(),
            ));
            seen
        })
        .collect();
    let objects = 3 + rng.usize(0..20);
    let mut sent = Vec::new();
    for o in 0..objects {
        tokio::time::sleep(Duration::from_millis(
            rng.u64(0..QUIET.as_millis() as u64 / 3),
        ))
        .await;
        let key = format!("{prefix}part-{o:04}.parquet");
        let document = documents::s3_document(
            BUCKET,
            &[(documents::PUT, &key, &format!("{:018X}", 0x1000 + o))],
        );
        let by_rpc = rng.u8(0..4) == 0;
        let accepted = if by_rpc {
            ingest(world, &document, rng).await
        } else {
            world.queue.send(document);
            Instant::now()
        };
        sent.push(Sent {
            key,
            accepted,
            by_rpc,
        });
    }
    (watch, created, sent, subscribers)
}

/// IngestS3Events on some replica until one accepts; when the call that
/// was accepted began (the service had the notification from then on).
async fn ingest(world: &World, document: &str, rng: &mut fastrand::Rng) -> Instant {
    let (tenant, documents) = (tenant(), vec![document.to_owned()]);
    loop {
        if let Some(service) = some_service(world, rng.usize(0..REPLICAS)).await {
            let began = Instant::now();
            let call = service.ingest(&tenant, &documents);
            // Half the callers give up on a call after 2 s; the others wait
            // as long as a client without a deadline would.
            let patience = if rng.bool() {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(60)
            };
            let answer = tokio::time::timeout(patience, call).await;
            if world.verbose {
                eprintln!("{:?}: IngestS3Events: {answer:?}", began - world.started);
            }
            if let Ok(Ok(report)) = answer
                && report.rejected.is_empty()
            {
                return began;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A subscriber: follows the watch's events from a replica, and from
/// another where the stream ends, resuming after the last event it got.
async fn follow(world: Arc<World>, id: WatchId, mut pick: usize, seen: Seen) {
    loop {
        if let Some(service) = some_service(&world, pick).await {
            let after = seen.lock().unwrap().last().copied().unwrap_or(0);
            if let Ok(Ok(mut events)) = tokio::time::timeout(
                Duration::from_secs(5),
                service.stream_events(&tenant(), &id, after),
            )
            .await
            {
                while let Some(Ok(event)) = events.next().await {
                    seen.lock().unwrap().push(event.seq);
                }
            }
        }
        pick += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
