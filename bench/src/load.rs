//! Closed-loop load: a fixed number of callers, each issuing its next call
//! as soon as the previous one answers, for a warm-up and then a measured
//! interval. Only calls that start and end inside the interval are counted.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::report::quantile;

/// What a measured interval saw.
pub struct Sample {
    pub per_second: f64,
    /// Latencies of the counted calls, in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
}

impl Sample {
    pub fn p50(&self) -> f64 {
        quantile(&self.latencies_ms, 0.50)
    }

    pub fn p99(&self) -> f64 {
        quantile(&self.latencies_ms, 0.99)
    }
}

/// Runs `callers` loops of `call(caller)` for `warmup + measure`.
pub async fn closed_loop<F, Fut>(
    callers: usize,
    warmup: Duration,
    measure: Duration,
    call: F,
) -> anyhow::Result<Sample>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let call = Arc::new(call);
    let from = Instant::now() + warmup;
    let until = from + measure;
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let start = Instant::now();
                if start >= until {
                    return anyhow::Ok(latencies);
                }
                call(caller).await?;
                let end = Instant::now();
                if start >= from && end <= until {
                    latencies.push((end - start).as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    let mut latencies_ms = Vec::new();
    for task in tasks {
        latencies_ms.extend(task.await??);
    }
    latencies_ms.sort_by(f64::total_cmp);
    Ok(Sample {
        per_second: latencies_ms.len() as f64 / measure.as_secs_f64(),
        latencies_ms,
    })
}
