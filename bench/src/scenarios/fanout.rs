//! Fan-out: many StreamWatchEvents subscribers of one watch. Measures the
//! server's resident memory per idle stream (all caught up, waiting) and the
//! delay from the end of the quiet window to COMPLETED at each subscriber.

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
const WINDOW: Duration = Duration::from_secs(1);

pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = options.size(10_000, 200);
    let server = ServerProcess::streamwatch().await?;
    let channels = server.channels(CONNECTIONS).await?;
    let (mut per_stream, mut p50, mut p99, mut max) = (vec![], vec![], vec![], vec![]);
    for run in 0..options.runs() {
        let prefix = format!("f{run}/");
        let mut client = WatchServiceClient::new(channels[0].clone());
        let id = start_watch(&mut client, BUCKET, &prefix, WINDOW).await?;
        let rss_before = server.rss()?;
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel(n);
        let subscribers: Vec<_> = (0..n)
            .map(|i| {
                tokio::spawn(follow(
                    channels[i % CONNECTIONS].clone(),
                    id.clone(),
                    ready_tx.clone(),
                ))
            })
            .collect();
        for _ in 0..n {
            ready.recv().await;
        }
        per_stream.push(server.rss()?.saturating_sub(rss_before) as f64 / n as f64);
        IngestServiceClient::new(channels[1].clone())
            .ingest_s3_events(v1::IngestS3EventsRequest {
                documents: vec![created_once(BUCKET, &[&format!("{prefix}part-0.json")])],
            })
            .await?;
        let mut completions = Vec::with_capacity(n);
        for subscriber in subscribers {
            completions.push(subscriber.await??);
        }
        let (sorted, early) = delays(&completions, WINDOW);
        anyhow::ensure!(
            early == 0,
            "COMPLETED decided before the quiet window passed"
        );
        p50.push(quantile(&sorted, 0.50));
        p99.push(quantile(&sorted, 0.99));
        max.push(quantile(&sorted, 1.0));
    }
    let label = format!("{n} subscribers of one watch");
    report.add(
        "fanout",
        format!("{label}: memory per idle stream"),
        "bytes",
        per_stream,
    )?;
    report.add("fanout", format!("{label}: delivery delay p50"), "ms", p50)?;
    report.add("fanout", format!("{label}: delivery delay p99"), "ms", p99)?;
    report.add("fanout", format!("{label}: delivery delay max"), "ms", max)?;
    Ok(())
}
