//! Unary RPC: GetWatch of one watch from 50 connections with 1,000 calls in
//! flight, against streamwatch and against the bare tonic server answering
//! with the same bytes, alternating which goes first in each run.

use std::{sync::Arc, time::Duration};

use prost::Message;
use streamwatch::v1::{self as v1, watch_service_client::WatchServiceClient};

use super::start_watch;
use crate::{Options, load::closed_loop, process::ServerProcess, report::Report};

const CONNECTIONS: usize = 50;
const IN_FLIGHT: usize = 1000;

pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let streamwatch = ServerProcess::streamwatch().await?;
    let mut client = WatchServiceClient::new(streamwatch.channels(1).await?.remove(0));
    let watch_id =
        start_watch(&mut client, "bench-lake", "rpc/", Duration::from_secs(3600)).await?;
    let request = v1::GetWatchRequest { watch_id };
    let answer = client.get_watch(request.clone()).await?.into_inner();
    let echo = ServerProcess::echo(&answer.encode_to_vec()).await?;

    let warmup = options.size(Duration::from_secs(2), Duration::from_millis(200));
    let measure = options.size(Duration::from_secs(5), Duration::from_millis(500));
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for run in 0..options.runs() {
        let order = if run % 2 == 0 {
            [&streamwatch, &echo]
        } else {
            [&echo, &streamwatch]
        };
        for server in order {
            let clients: Arc<Vec<_>> = Arc::new(
                server
                    .channels(CONNECTIONS)
                    .await?
                    .into_iter()
                    .map(WatchServiceClient::new)
                    .collect(),
            );
            let request = request.clone();
            let sample = closed_loop(IN_FLIGHT, warmup, measure, move |caller| {
                let mut client = clients[caller % CONNECTIONS].clone();
                let request = request.clone();
                async move {
                    client.get_watch(request).await?;
                    Ok(())
                }
            })
            .await?;
            if std::ptr::eq(server, &streamwatch) {
                ours.push(sample);
            } else {
                bare.push(sample);
            }
        }
    }
    let rate = |s: &[crate::load::Sample]| s.iter().map(|s| s.per_second).collect::<Vec<_>>();
    let p = |s: &[crate::load::Sample], f: fn(&crate::load::Sample) -> f64| {
        s.iter().map(f).collect::<Vec<_>>()
    };
    report.add("rpc", "GetWatch streamwatch", "requests/s", rate(&ours))?;
    report.add("rpc", "GetWatch bare tonic", "requests/s", rate(&bare))?;
    report.add(
        "rpc",
        "GetWatch streamwatch / bare tonic",
        "ratio",
        ours.iter()
            .zip(&bare)
            .map(|(a, b)| a.per_second / b.per_second)
            .collect(),
    )?;
    report.add(
        "rpc",
        "GetWatch streamwatch p50",
        "ms",
        p(&ours, |s| s.p50()),
    )?;
    report.add(
        "rpc",
        "GetWatch streamwatch p99",
        "ms",
        p(&ours, |s| s.p99()),
    )?;
    report.add(
        "rpc",
        "GetWatch bare tonic p50",
        "ms",
        p(&bare, |s| s.p50()),
    )?;
    report.add(
        "rpc",
        "GetWatch bare tonic p99",
        "ms",
        p(&bare, |s| s.p99()),
    )?;
    Ok(())
}
