//! Completion latency: many quiet-period watches, one subscriber each, one
//! object each, all landing within about a second, so their deadlines fall
//! together. Measures the time from the end of each quiet window (the last
//! activity the server counted plus the window) to COMPLETED arriving at the
//! subscriber, and counts completions decided before the window had passed.

use std::time::Duration;

use streamwatch::v1::{
    self as v1, ingest_service_client::IngestServiceClient,
    watch_service_client::WatchServiceClient,
};

use streamwatch_testkit::created_once;

use super::{delays, follow, start_watch};
use crate::{
    Options,
    process::ServerProcess,
    report::{Report, quantile},
};

const BUCKET: &str = "bench-lake";
const CONNECTIONS: usize = 100;
const WINDOW: Duration = Duration::from_secs(2);

pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = options.size(10_000, 200);
    let server = ServerProcess::streamwatch().await?;
    let channels = server.channels(CONNECTIONS).await?;
    let (mut p50, mut p99, mut max, mut early) = (vec![], vec![], vec![], vec![]);
    let mut decided_p99 = vec![];
    for run in 0..options.runs() {
        let mut ids = Vec::with_capacity(n);
        let mut client = WatchServiceClient::new(channels[0].clone());
        for i in 0..n {
            ids.push(start_watch(&mut client, BUCKET, &format!("c{run}/w{i}/"), WINDOW).await?);
        }
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel(n);
        let subscribers: Vec<_> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                tokio::spawn(follow(
                    channels[i % CONNECTIONS].clone(),
                    id,
                    ready_tx.clone(),
                ))
            })
            .collect();
        for _ in 0..n {
            ready.recv().await;
        }
        let docs: Vec<String> = (0..n)
            .map(|i| created_once(BUCKET, &[&format!("c{run}/w{i}/part-0.json")]))
            .collect();
        let mut ingest = IngestServiceClient::new(channels[1].clone());
        for documents in docs.chunks(1000) {
            ingest
                .ingest_s3_events(v1::IngestS3EventsRequest {
                    documents: documents.to_vec(),
                })
                .await?;
        }
        let mut completions = Vec::with_capacity(n);
        for subscriber in subscribers {
            completions.push(subscriber.await??);
        }
        let window_ms = WINDOW.as_secs_f64() * 1000.0;
        let mut decided: Vec<f64> = completions
            .iter()
            .map(|c| c.decided_ms - (c.last_activity_ms + window_ms))
            .collect();
        decided.sort_by(f64::total_cmp);
        decided_p99.push(quantile(&decided, 0.99));
        let (sorted, decided_early) = delays(&completions, WINDOW);
        p50.push(quantile(&sorted, 0.50));
        p99.push(quantile(&sorted, 0.99));
        max.push(quantile(&sorted, 1.0));
        early.push(decided_early as f64);
    }
    let label = format!("{n} watches, quiet {}s", WINDOW.as_secs());
    report.add("completion", format!("{label}: delay p50"), "ms", p50)?;
    report.add("completion", format!("{label}: delay p99"), "ms", p99)?;
    report.add("completion", format!("{label}: delay max"), "ms", max)?;
    report.add(
        "completion",
        format!("{label}: decided early"),
        "watches",
        early,
    )?;
    report.add(
        "completion",
        format!("{label}: deciding share (event time), p99"),
        "ms",
        decided_p99,
    )?;
    Ok(())
}
