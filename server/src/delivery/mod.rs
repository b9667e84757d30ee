//! Completion callbacks: the delivery task. It claims due outbox entries from
//! the store (written there by [`Store::apply`](crate::store::Store::apply) in
//! the transaction of the event they carry), sends each to its notify target
//! through a [`Transport`], and records the attempt: delivered, or retried
//! with exponential backoff and jitter until the delivery deadline, then
//! failed with a DELIVERY_FAILED event in the watch's log. A manifest target
//! is sent the same way; its document is built from the store when sent
//! ([`manifest`]), while the outbox keeps the small event document.
//!
//! Delivery is at least once: an attempt whose outcome was not recorded (a
//! crash, a lost lease) is made again, with the same body and idempotency key.
//! This task never blocks the observer: the observer only commits outbox rows
//! and wakes it through a [`Notify`]. It never logs a secret or a target URL.

pub mod address;
pub mod manifest;
pub mod send;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Clock,
    store::{Delivery, DeliveryState, Store},
    watch::EventKind,
};

pub use send::Targets;

/// Deliveries attempted at once by one server.
const MAX_IN_FLIGHT: usize = 32;
/// How often the task looks for due entries when nothing woke it (entries
/// other replicas wrote, leases that ran out).
const POLL: Duration = Duration::from_secs(5);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How deliveries are retried (the `--delivery-*` flags).
#[derive(Clone, Copy, Debug)]
pub struct DeliveryConfig {
    /// Retry until this long after the event; then the delivery fails.
    pub deadline: Duration,
    /// The wait after the first failed attempt; doubles with each attempt.
    pub backoff: Duration,
    /// The bound on one attempt (connect, send, answer; a whole manifest).
    pub timeout: Duration,
}

impl DeliveryConfig {
    /// How long a claimed entry is left to its attempt before anyone else
    /// (this server after a restart, another replica) may claim it again.
    pub fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(1)
    }
}

/// What a target answered to a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `HTTP 503`, ...; empty when there was no answer.
    pub status: String,
    pub error: String,
}

impl Failure {
    pub fn new(status: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            status: status.into(),
            error: error.into(),
        }
    }
}

/// Sends one delivery to its target.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// `Ok(status)` once the target accepted the delivery.
    async fn send(&self, delivery: &Delivery) -> Result<String, Failure>;
}

/// What the delivery task did, for operators and tests.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub attempts: AtomicU64,
    pub delivered: AtomicU64,
    /// Attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Deliveries given up at the deadline (each has a DELIVERY_FAILED event).
    pub failed: AtomicU64,
}

/// The wait before attempt `attempts + 1`: `backoff * 2^(attempts - 1)`, at
/// most [`MAX_BACKOFF`], of which the upper half is random ("equal jitter":
/// retries of many deliveries spread out, and none comes back sooner than half
/// its step). `jitter` is uniform in `[0, 1)`.
pub fn retry_delay(backoff: Duration, attempts: u32, jitter: f64) -> Duration {
    let step = backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// The delivery task.
pub struct Deliverer {
    ctx: Arc<Context>,
    wake: Arc<Notify>,
}

struct Context {
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    clock: Clock,
    config: DeliveryConfig,
    stats: Arc<DeliveryStats>,
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        clock: Clock,
        config: DeliveryConfig,
    ) -> Self {
        Self {
            ctx: Arc::new(Context {
                store,
                transport,
                clock,
                config,
                stats: Arc::new(DeliveryStats::default()),
            }),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Wakes the task to look for due entries (the observer calls it after
    /// committing events that have deliveries).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.ctx.stats.clone()
    }

    /// Runs until `shutdown` is cancelled. Attempts still running then are
    /// stopped and their leases given back, so the entries are due at once
    /// for the next server (an attempt may have reached its target: at least
    /// once).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut in_flight = JoinSet::new();
        let mut leased: HashMap<tokio::task::Id, Delivery> = HashMap::new();
        loop {
            let now = self.ctx.clock.now();
            let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
            let mut next_due = None;
            if room > 0 {
                let lease_until = now.plus(self.ctx.config.lease());
                match self
                    .ctx
                    .store
                    .claim_deliveries(now, lease_until, room)
                    .await
                {
                    Ok(claimed) => {
                        next_due = claimed.next_due;
                        for delivery in claimed.deliveries {
                            let task = in_flight.spawn(attempt(self.ctx.clone(), delivery.clone()));
                            leased.insert(task.id(), delivery);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim due deliveries; retrying");
                        next_due = Some(now.plus(Duration::from_secs(1)));
                    }
                }
            }
            let wait = next_due.map_or(POLL, |at| now.until(at).min(POLL));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => e.id(),
                    };
                    leased.remove(&id);
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        in_flight.abort_all();
        while let Some(done) = in_flight.join_next_with_id().await {
            if let Ok((id, ())) = done {
                leased.remove(&id);
            }
        }
        let now = self.ctx.clock.now();
        for (_, mut delivery) in leased {
            let lease = delivery.next_attempt_at;
            delivery.next_attempt_at = now;
            // Fenced by the lease: an attempt that recorded its outcome before
            // it was stopped keeps it.
            if let Err(e) = self
                .ctx
                .store
                .finish_delivery(&delivery, lease, None, now)
                .await
            {
                tracing::warn!(watch_id = %delivery.watch_id, seq = delivery.seq, error = %e,
                    "cannot give back a delivery's lease; it is due when the lease ends");
            }
        }
    }
}

/// Makes one attempt at `delivery` (leased until its `next_attempt_at`) and records it.
async fn attempt(ctx: Arc<Context>, mut delivery: Delivery) {
    let lease = delivery.next_attempt_at;
    let sent = ctx.transport.send(&delivery).await;
    let now = ctx.clock.now();
    ctx.stats.attempts.fetch_add(1, Ordering::Relaxed);
    delivery.attempts += 1;
    let mut event = None;
    match sent {
        Ok(status) => {
            delivery.state = DeliveryState::Delivered;
            delivery.last_status = status;
            delivery.last_error.clear();
            delivery.finished_at = Some(now);
        }
        Err(failure) => {
            delivery.last_status = failure.status;
            delivery.last_error = failure.error;
            let next = now.plus(retry_delay(
                ctx.config.backoff,
                delivery.attempts,
                fastrand::f64(),
            ));
            if next > delivery.created_at.plus(ctx.config.deadline) {
                delivery.state = DeliveryState::Failed;
                delivery.finished_at = Some(now);
                event = Some(EventKind::DeliveryFailed {
                    seq: delivery.seq,
                    target: delivery.target_index,
                    attempts: delivery.attempts,
                    last_error: delivery.last_error.clone(),
                });
            } else {
                delivery.next_attempt_at = next;
            }
        }
    }
    let d = &delivery;
    match ctx.store.finish_delivery(d, lease, event, now).await {
        Ok(Some(_)) => match d.state {
            DeliveryState::Delivered => {
                ctx.stats.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::info!(tenant = %d.tenant, watch_id = %d.watch_id, seq = d.seq,
                        target = d.target_index, attempts = d.attempts, status = %d.last_status, "delivered");
            }
            DeliveryState::Pending => {
                ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::info!(tenant = %d.tenant, watch_id = %d.watch_id, seq = d.seq,
                        target = d.target_index, attempts = d.attempts, error = %d.last_error,
                        next_attempt_at = %d.next_attempt_at, "delivery failed; will retry");
            }
            DeliveryState::Failed => {
                ctx.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tenant = %d.tenant, watch_id = %d.watch_id, seq = d.seq,
                        target = d.target_index, attempts = d.attempts, error = %d.last_error,
                        "delivery given up at the deadline");
            }
        },
        Ok(None) => {
            tracing::debug!(watch_id = %d.watch_id, seq = d.seq, target = d.target_index,
                "the delivery's lease ran out before its attempt was recorded");
        }
        Err(e) => {
            tracing::warn!(watch_id = %d.watch_id, seq = d.seq, target = d.target_index, error = %e,
                "cannot record a delivery attempt; it is made again when its lease ends");
        }
    }
}

#[cfg(test)]
mod tests;
