//! One server (SQLite, no cluster) restarted after a crash, on the
//! simulation's queue under a paused clock: what the crashed process's long
//! poll took stays hidden for the visibility timeout, and the restarted
//! server decides nothing that waits on the queue before it is back.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use streamwatch_server::{
    Backends, Core,
    auth::LiveTenants,
    clock::{Clock, Timestamp},
    service::StartWatch,
    watch::{Bucket, EventKind, Policy, Prefix, Rule, Source, TenantId},
};
use streamwatch_testkit::{DataDir, documents};

use super::{
    faults::Faults,
    queue::{MemoryQueue, QueueView},
};

const VISIBILITY: Duration = Duration::from_secs(10);

async fn core(dir: &DataDir, queue: &Arc<MemoryQueue>) -> Core {
    let config = dir.config(false);
    let mut backends = Backends::open(&config).await.expect("open");
    backends.queues.push(Arc::new(QueueView {
        queue: queue.clone(),
        faults: Faults::new(0),
    }));
    backends.visibility = VISIBILITY;
    let clock = Clock::starting_at(Timestamp::from_millis(1_800_000_000_000));
    Core::start_on(&config, clock, backends, LiveTenants::load(None).unwrap())
        .await
        .expect("start")
}

fn document(key: &str, sequencer: u64) -> String {
    documents::s3_document(
        "data-lake",
        &[(documents::PUT, key, &format!("{sequencer:018X}"))],
    )
}

#[tokio::test(start_paused = true)]
async fn a_server_restarted_after_a_crash_waits_for_what_the_crashed_one_had_received() {
    let dir = DataDir::new();
    let queue = MemoryQueue::new(VISIBILITY);
    let tenant = TenantId::parse("tenant", "default").unwrap();
    let first = core(&dir, &queue).await;
    let start = StartWatch {
        source: Source::objects(
            Bucket::parse("bucket", "data-lake").unwrap(),
            Prefix::parse("prefix", "").unwrap(),
            Default::default(),
        ),
        policy: Policy {
            rule: Rule::QuietPeriod {
                window: Duration::from_secs(2),
            },
            ..Policy::default()
        },
        labels: Default::default(),
        client_token: None,
        trace: Default::default(),
    };
    let (watch, _) = first.service.start_watch(&tenant, start).await.unwrap();
    // The process dies: its core is never shut down, and its last long
    // poll took a notification it never recorded.
    std::mem::forget(first);
    queue.send(document("part-0", 1));
    queue.take_as_lost();

    let second = core(&dir, &queue).await;
    let mut events = second
        .service
        .stream_events(&tenant, &watch.id, 0)
        .await
        .unwrap();
    let completed = loop {
        let event = events.next().await.expect("an event").expect("event");
        if let EventKind::Completed { object_count, .. } = event.kind {
            break object_count;
        }
    };
    assert_eq!(
        completed, 1,
        "completed before the crashed process's notification came back"
    );
}
