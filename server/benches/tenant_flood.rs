//! Does one tenant's flood slow another tenant down? Runs the real server on
//! loopback with the embedded store and measures the latency of a quiet
//! tenant's calls (IngestS3Events of one document, then GetWatch) over real
//! gRPC, first alone, then while another tenant floods IngestS3Events from
//! several connections:
//!
//! ```sh
//! cargo bench -p streamwatch-server --bench tenant_flood
//! ```
//!
//! The flood runs twice: against a flooder held to 100 records a second
//! by its quota (most of its calls are refused at once with
//! RESOURCE_EXHAUSTED), and against one with the default quotas (whose
//! records all reach the store). Prints the quiet tenant's median and p99
//! per phase and the p99 ratio to idle. `--quick` runs a small size (CI
//! checks the harness still runs); the numbers of a quick run mean little.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use streamwatch_client::{Client, proto as v1};
use streamwatch_testkit::{DataDir, TestServer, created, token_digest};

const QUIET_TOKEN: &str = "quiet-tenant-token-0123456789";
const FLOOD_TOKEN: &str = "flood-tenant-token-0123456789";
const FLOODERS: usize = 4;
const FLOOD_DOCUMENTS_PER_CALL: usize = 10;

/// One object created under `key`.
fn document(bucket: &str, key: &str) -> String {
    created(bucket, &[key])
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct Phase {
    name: &'static str,
    median: Duration,
    p99: Duration,
    flood_served: u64,
    flood_refused: u64,
}

/// `calls` of the quiet tenant, one after another, each timed.
async fn quiet_calls(
    client: &mut Client,
    watch_id: &str,
    calls: usize,
    round: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..calls {
        let started = Instant::now();
        client
            .ingest_s3_events(vec![document("quiet-lake", &format!("r{round}/k{i}"))])
            .await
            .expect("the quiet tenant's ingest");
        client
            .get_watch(watch_id)
            .await
            .expect("the quiet tenant's get");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

async fn run(flood_quotas: Option<&str>, calls: usize) -> anyhow::Result<Vec<Phase>> {
    let dir = DataDir::new();
    let mut config = dir.config(false);
    config.tenants = Some(dir.write_tenants(&format!(
        "[[tenant]]\nid = \"quiet\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"quiet-*\"]\n\n\
         [[tenant]]\nid = \"flood\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"flood-*\"]\n{}\n",
        token_digest(QUIET_TOKEN),
        token_digest(FLOOD_TOKEN),
        flood_quotas.unwrap_or("")
    )));
    let server = TestServer::start_with(dir, config).await;
    let mut quiet = server.client_with_token(QUIET_TOKEN).await;
    let policy = v1::Policy {
        rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
            window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })),
        ..Default::default()
    };
    let started = quiet
        .start_watch(v1::StartWatchRequest {
            bucket: "quiet-lake".into(),
            policy: Some(policy.clone()),
            ..Default::default()
        })
        .await?;
    let watch_id = started.watch.expect("watch").watch_id;
    let mut flood = server.client_with_token(FLOOD_TOKEN).await;
    flood
        .start_watch(v1::StartWatchRequest {
            bucket: "flood-lake".into(),
            policy: Some(policy),
            ..Default::default()
        })
        .await?;

    // Warm up, then idle.
    quiet_calls(&mut quiet, &watch_id, calls / 10 + 1, 0).await;
    let idle = quiet_calls(&mut quiet, &watch_id, calls, 1).await;

    let flooding = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for f in 0..FLOODERS {
        // Each flooder on its own connection, as separate clients would be.
        let mut client = server.client_with_token(FLOOD_TOKEN).await;
        let (flooding, served, refused) = (flooding.clone(), served.clone(), refused.clone());
        flooders.push(tokio::spawn(async move {
            let mut i = 0u64;
            while flooding.load(Ordering::Relaxed) {
                let documents: Vec<String> = (0..FLOOD_DOCUMENTS_PER_CALL)
                    .map(|d| document("flood-lake", &format!("f{f}/{i}/{d}")))
                    .collect();
                i += 1;
                match client.ingest_s3_events(documents).await {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let under_flood = quiet_calls(&mut quiet, &watch_id, calls, 2).await;
    flooding.store(false, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await?;
    }
    server.stop().await;

    let flood_name = if flood_quotas.is_some() {
        "flood held to its quota"
    } else {
        "flood at the default quotas"
    };
    Ok(vec![
        Phase {
            name: "idle",
            median: quantile(&idle, 0.5),
            p99: quantile(&idle, 0.99),
            flood_served: 0,
            flood_refused: 0,
        },
        Phase {
            name: flood_name,
            median: quantile(&under_flood, 0.5),
            p99: quantile(&under_flood, 0.99),
            flood_served: served.load(Ordering::Relaxed),
            flood_refused: refused.load(Ordering::Relaxed),
        },
    ])
}

fn print(phases: &[Phase]) {
    let idle_p99 = phases[0].p99.as_secs_f64();
    for p in phases {
        println!(
            "  {:<28} median {:>8.2} ms  p99 {:>8.2} ms  p99/idle {:>5.2}x  flood calls served {:>6}  refused {:>6}",
            p.name,
            p.median.as_secs_f64() * 1e3,
            p.p99.as_secs_f64() * 1e3,
            p.p99.as_secs_f64() / idle_p99,
            p.flood_served,
            p.flood_refused,
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 50 } else { 1000 };
    println!(
        "quiet tenant: {calls} timed calls per phase (IngestS3Events of 1 document + GetWatch); \
         flood: {FLOODERS} connections of IngestS3Events with {FLOOD_DOCUMENTS_PER_CALL} documents"
    );
    println!("with the flooder's quota at 100 records/s:");
    print(
        &run(
            Some("[tenant.quotas]\ningest_records_per_second = 100\ningest_burst = 100"),
            calls,
        )
        .await?,
    );
    println!("with the flooder at the default quotas (10,000 records/s, burst 20,000):");
    print(&run(None, calls).await?);
    Ok(())
}
