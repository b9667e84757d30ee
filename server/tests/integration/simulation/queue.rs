//! An SQS queue in memory, with SQS's semantics where the service relies on
//! them: a received message is hidden for the visibility timeout and comes
//! back unless deleted with its latest receipt; a long poll waits for a
//! message or its wait; delivery is at least once (a redelivery burst brings
//! back in-flight messages at once and repeats some deleted ones). Each
//! replica reads it through a [`QueueView`] that its faults gate.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use streamwatch_server::ingest::queue::{BATCH, Queue, QueueCallError, Received};
use tokio::{sync::Notify, time::Instant};

use super::faults::Faults;

struct Message {
    body: String,
    visible_at: Instant,
    receives: u32,
}

#[derive(Default)]
struct State {
    next_id: u64,
    messages: BTreeMap<u64, Message>,
    /// Bodies deleted, in order: what a redelivery burst repeats.
    deleted: Vec<String>,
}

/// The queue every replica consumes.
pub struct MemoryQueue {
    visibility: Duration,
    state: Mutex<State>,
    arrived: Notify,
}

fn receipt(id: u64, receives: u32) -> String {
    format!("{id}:{receives}")
}

fn parse_receipt(r: &str) -> Option<(u64, u32)> {
    let (id, n) = r.split_once(':')?;
    Some((id.parse().ok()?, n.parse().ok()?))
}

impl MemoryQueue {
    pub fn new(visibility: Duration) -> Arc<Self> {
        Arc::new(Self {
            visibility,
            state: Mutex::default(),
            arrived: Notify::new(),
        })
    }

    /// Sends `body` (SQS accepted it once this returns).
    pub fn send(&self, body: String) {
        let mut state = self.state.lock().unwrap();
        let id = state.next_id;
        state.next_id += 1;
        state.messages.insert(
            id,
            Message {
                body,
                visible_at: Instant::now(),
                receives: 0,
            },
        );
        drop(state);
        self.arrived.notify_waiters();
    }

    /// Every message in flight visible again now, and every `nth` deleted
    /// one sent again: what a burst of at-least-once deliveries looks like.
    pub fn redeliver(&self, nth: usize) {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        for m in state.messages.values_mut() {
            m.visible_at = m.visible_at.min(now);
        }
        let again: Vec<String> = state.deleted.iter().step_by(nth.max(1)).cloned().collect();
        for body in again {
            let id = state.next_id;
            state.next_id += 1;
            state.messages.insert(
                id,
                Message {
                    body,
                    visible_at: now,
                    receives: 0,
                },
            );
        }
        drop(state);
        self.arrived.notify_waiters();
    }

    /// Receives what is visible for a consumer that never answers (a
    /// process killed during its long poll): hidden for the visibility timeout.
    pub fn take_as_lost(&self) -> usize {
        self.take_visible().0.len()
    }

    fn take_visible(&self) -> (Vec<Received>, Option<Instant>) {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut next = None::<Instant>;
        for (id, m) in state.messages.iter_mut() {
            if m.visible_at <= now {
                if out.len() < BATCH {
                    m.receives += 1;
                    m.visible_at = now + self.visibility;
                    out.push(Received {
                        id: id.to_string(),
                        receipt: receipt(*id, m.receives),
                        body: m.body.clone(),
                    });
                }
            } else {
                next = Some(next.map_or(m.visible_at, |n| n.min(m.visible_at)));
            }
        }
        (out, next)
    }

    async fn receive(&self, wait: Duration) -> Vec<Received> {
        let until = Instant::now() + Duration::from_secs(wait.as_secs());
        loop {
            let arrived = self.arrived.notified();
            let (out, next) = self.take_visible();
            if !out.is_empty() || Instant::now() >= until {
                return out;
            }
            let wake = next.map_or(until, |n| n.min(until));
            tokio::select! {
                biased;
                () = arrived => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn change_visibility(&self, receipts: &[String], to: Duration) {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        for (id, receives) in receipts.iter().filter_map(|r| parse_receipt(r)) {
            if let Some(m) = state.messages.get_mut(&id)
                && m.receives == receives
            {
                m.visible_at = now + to;
            }
        }
        drop(state);
        if to.is_zero() {
            self.arrived.notify_waiters();
        }
    }

    fn delete(&self, receipts: &[String]) -> usize {
        let mut state = self.state.lock().unwrap();
        let mut failed = 0;
        for r in receipts {
            match parse_receipt(r) {
                Some((id, receives))
                    if state
                        .messages
                        .get(&id)
                        .is_some_and(|m| m.receives == receives) =>
                {
                    let m = state.messages.remove(&id).expect("present");
                    state.deleted.push(m.body);
                }
                _ => failed += 1,
            }
        }
        failed
    }
}

/// One replica's way to the queue: every call passes its faults first.
pub struct QueueView {
    pub queue: Arc<MemoryQueue>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Queue for QueueView {
    fn url(&self) -> &str {
        "memory://notifications"
    }

    async fn visibility(&self) -> Result<Duration, QueueCallError> {
        Ok(self.queue.visibility)
    }

    async fn receive(&self, wait: Duration) -> Result<Vec<Received>, QueueCallError> {
        self.faults.queue_call().await?;
        let received = self.queue.receive(wait).await;
        // A replica killed during the long poll never sees what it received:
        // the messages come back after their visibility timeout.
        self.faults.queue_call().await?;
        Ok(received)
    }

    async fn change_visibility(
        &self,
        receipts: &[String],
        to: Duration,
    ) -> Result<(), QueueCallError> {
        self.faults.queue_call().await?;
        self.queue.change_visibility(receipts, to);
        Ok(())
    }

    async fn delete(&self, receipts: &[String]) -> Result<usize, QueueCallError> {
        self.faults.queue_call().await?;
        Ok(self.queue.delete(receipts))
    }
}
