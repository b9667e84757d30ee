//! Watches at rest: resident memory and CPU of the server holding many
//! ACTIVE quiet-period watches (a timer each, nothing due), the rate they are
//! started at, and the server CPU one activity costs (parse, record, push the
//! watch's deadline back). One run: starting a million watches takes minutes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::ensure;
use streamwatch::v1::{
    self as v1, ingest_service_client::IngestServiceClient,
    watch_service_client::WatchServiceClient,
};

use streamwatch_testkit::created_once;

use super::start_watch;
use crate::{Options, process::ServerProcess, report::Report};

const BUCKET: &str = "bench-lake";
const CONNECTIONS: usize = 8;
const IN_FLIGHT: usize = 256;

pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = options.size(1_000_000, 2_000);
    let server = ServerProcess::streamwatch().await?;
    let channels = server.channels(CONNECTIONS).await?;
    let quiet = Duration::from_secs(24 * 3600);
    // One watch first, so the baseline includes what the first one allocates.
    start_watch(
        &mut WatchServiceClient::new(channels[0].clone()),
        BUCKET,
        "warm/",
        quiet,
    )
    .await?;
    let rss_before = server.rss()?;
    let cpu_before = server.cpu_seconds()?;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..IN_FLIGHT {
        let mut client = WatchServiceClient::new(channels[caller % CONNECTIONS].clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                start_watch(&mut client, BUCKET, &format!("w{i}/"), quiet).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let start_seconds = started.elapsed().as_secs_f64();
    let start_cpu = server.cpu_seconds()? - cpu_before;
    let rss_after = server.rss()?;

    let idle = options.size(Duration::from_secs(10), Duration::from_millis(500));
    let cpu_idle_before = server.cpu_seconds()?;
    // Measuring what the server does while nothing happens: the wait is the measurement.
    tokio::time::sleep(idle).await;
    let idle_cpu = (server.cpu_seconds()? - cpu_idle_before) / idle.as_secs_f64();

    // One activity for each of the first `k` watches: each pushes its deadline back.
    let k = n.min(100_000);
    let docs: Vec<String> = (0..k)
        .map(|i| created_once(BUCKET, &[&format!("w{i}/part-0.json")]))
        .collect();
    let mut ingest = IngestServiceClient::new(channels[0].clone());
    let cpu_activity_before = server.cpu_seconds()?;
    let activity_started = Instant::now();
    let mut counted = 0;
    for documents in docs.chunks(1000) {
        counted += ingest
            .ingest_s3_events(v1::IngestS3EventsRequest {
                documents: documents.to_vec(),
            })
            .await?
            .into_inner()
            .counted;
    }
    let activity_seconds = activity_started.elapsed().as_secs_f64();
    let activity_cpu = server.cpu_seconds()? - cpu_activity_before;
    ensure!(counted == k as u64, "counted {counted} of {k} activities");

    report.add("watches", "ACTIVE watches held", "watches", vec![n as f64])?;
    report.add(
        "watches",
        "resident memory per ACTIVE watch",
        "bytes",
        vec![(rss_after.saturating_sub(rss_before)) as f64 / n as f64],
    )?;
    report.add(
        "watches",
        "server resident memory with them",
        "MiB",
        vec![rss_after as f64 / (1024.0 * 1024.0)],
    )?;
    report.add(
        "watches",
        "StartWatch rate (256 in flight)",
        "watches/s",
        vec![n as f64 / start_seconds],
    )?;
    report.add(
        "watches",
        "server CPU per StartWatch",
        "us",
        vec![start_cpu / n as f64 * 1e6],
    )?;
    report.add(
        "watches",
        "server CPU while they wait",
        "% of a core",
        vec![idle_cpu * 100.0],
    )?;
    report.add(
        "watches",
        "server CPU per activity (parse, record, push back)",
        "us",
        vec![activity_cpu / k as f64 * 1e6],
    )?;
    report.add(
        "watches",
        "activities pushing deadlines back (1,000 per call)",
        "activities/s",
        vec![k as f64 / activity_seconds],
    )?;
    Ok(())
}
