//! Ingest: notifications per second through IngestS3Events into the SQLite
//! store (1,000 one-record documents per call, as S3 sends them to SQS; 4
//! calls in flight; 10 watches share the keys), once with every key distinct
//! and once with 20% redeliveries, next to the rate of parsing the same
//! documents alone on one core. Every run checks the counts are exact.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::ensure;
use streamwatch::v1::{
    self as v1, ingest_service_client::IngestServiceClient,
    watch_service_client::WatchServiceClient,
};
use streamwatch_server::ingest::parse_document;

use streamwatch_testkit::created_once;

use super::start_watch;
use crate::{Options, process::ServerProcess, report::Report};

const WATCHES: usize = 10;
const DOCUMENTS_PER_CALL: usize = 1000;
const CALLS_IN_FLIGHT: usize = 4;
const BUCKET: &str = "bench-lake";

/// Documents of `n` notifications under `root`; with `duplicates`, every
/// fifth is a redelivery of an earlier one. Returns them and the distinct count.
fn documents(root: &str, n: usize, duplicates: bool) -> (Vec<String>, u64) {
    let mut distinct = 0;
    let docs = (0..n)
        .map(|i| {
            let original = if duplicates && i % 5 == 4 { i - 3 } else { i };
            if original == i {
                distinct += 1;
            }
            let key = format!("{root}w{}/part-{original:08}.json", original % WATCHES);
            created_once(BUCKET, &[&key])
        })
        .collect();
    (docs, distinct)
}

/// Sends `documents` and returns notifications per second; checks that
/// exactly `distinct` counted.
async fn ingest(
    server: &ServerProcess,
    documents: Vec<String>,
    distinct: u64,
) -> anyhow::Result<f64> {
    let total = documents.len();
    let calls: Vec<Vec<String>> = documents
        .chunks(DOCUMENTS_PER_CALL)
        .map(<[String]>::to_vec)
        .collect();
    let calls = Arc::new(Mutex::new(calls.into_iter()));
    let channels = server.channels(CALLS_IN_FLIGHT).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for channel in channels {
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = IngestServiceClient::new(channel)
                .max_encoding_message_size(usize::MAX)
                .max_decoding_message_size(usize::MAX);
            let (mut counted, mut duplicates) = (0, 0);
            loop {
                let next = calls.lock().expect("not poisoned").next();
                let Some(documents) = next else {
                    return anyhow::Ok((counted, duplicates));
                };
                let answer = client
                    .ingest_s3_events(v1::IngestS3EventsRequest { documents })
                    .await?
                    .into_inner();
                ensure!(
                    answer.rejected.is_empty(),
                    "rejected: {:?}",
                    answer.rejected
                );
                counted += answer.counted;
                duplicates += answer.duplicates;
            }
        }));
    }
    let (mut counted, mut duplicates) = (0, 0);
    for task in tasks {
        let (c, d) = task.await??;
        counted += c;
        duplicates += d;
    }
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        counted == distinct && counted + duplicates == total as u64,
        "counted {counted} and {duplicates} duplicates of {total} notifications; expected {distinct} distinct"
    );
    Ok(total as f64 / seconds)
}

pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = options.size(300_000, 5_000);
    let server = ServerProcess::streamwatch().await?;
    let mut watches = WatchServiceClient::new(server.channels(1).await?.remove(0));
    let (mut distinct_rates, mut duplicate_rates, mut parse_rates) =
        (Vec::new(), Vec::new(), Vec::new());
    for run in 0..options.runs() {
        for duplicates in [false, true] {
            let root = format!("r{run}-{}/", if duplicates { "dup" } else { "distinct" });
            for w in 0..WATCHES {
                let prefix = format!("{root}w{w}/");
                start_watch(&mut watches, BUCKET, &prefix, Duration::from_secs(3600)).await?;
            }
            let (docs, distinct) = documents(&root, n, duplicates);
            if duplicates {
                duplicate_rates.push(ingest(&server, docs, distinct).await?);
            } else {
                // Parsing alone, on one core, over the very same documents.
                let (docs, parse_rate) = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let mut records = 0;
                    for doc in &docs {
                        if let Ok(streamwatch_server::ingest::Document::Records(r)) =
                            parse_document(doc)
                        {
                            records += r.len();
                        }
                    }
                    let rate = records as f64 / started.elapsed().as_secs_f64();
                    (docs, rate)
                })
                .await?;
                parse_rates.push(parse_rate);
                distinct_rates.push(ingest(&server, docs, distinct).await?);
            }
        }
    }
    report.add(
        "ingest",
        "IngestS3Events -> SQLite, distinct keys",
        "notifications/s",
        distinct_rates.clone(),
    )?;
    report.add(
        "ingest",
        "IngestS3Events -> SQLite, 20% redeliveries",
        "notifications/s",
        duplicate_rates,
    )?;
    report.add(
        "ingest",
        "parse only (same documents, one core)",
        "notifications/s",
        parse_rates.clone(),
    )?;
    report.add(
        "ingest",
        "distinct keys / parse only",
        "ratio",
        distinct_rates
            .iter()
            .zip(&parse_rates)
            .map(|(a, b)| a / b)
            .collect(),
    )?;
    Ok(())
}
