//! The faults a seed draws ([`draw_faults`]) and their infliction on the
//! replicas at their instants ([`inflict`]), with the outages the checker
//! judges takeovers by. Faults only: what the replicas do is theirs.

use std::{sync::Arc, time::Duration};

use streamwatch_server::store::ClusterTable;
use tokio::time::Instant;

use super::world::{LEASE, REPLICAS, World};

/// A fault the seed drew, and when it began (cluster time from the start).
#[derive(Clone, Debug)]
pub enum Fault {
    Kill {
        replica: usize,
        restart_after: Duration,
    },
    Stall {
        replica: usize,
        lasting: Duration,
    },
    CutOff {
        replica: usize,
        lasting: Duration,
    },
    Slow {
        replica: usize,
        at_most: Duration,
        lasting: Duration,
    },
    Failing {
        replica: usize,
        probability: f64,
        lasting: Duration,
    },
    Redeliver {
        every: usize,
    },
}

/// A replica incarnation going down (killed, stalled or cut off) and the
/// shards it held then.
#[derive(Clone, Debug)]
pub struct Outage {
    pub replica: String,
    pub at: Instant,
    pub until: Option<Instant>,
    pub shards: Vec<u32>,
}

pub fn draw_faults(rng: &mut fastrand::Rng) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::new();
    for _ in 0..rng.usize(1..=3) {
        let at = Duration::from_millis(rng.u64(3_000..60_000));
        let replica = rng.usize(0..REPLICAS);
        let fault = match rng.u8(0..6) {
            0 => Fault::Kill {
                replica,
                restart_after: Duration::from_millis(rng.u64(1_000..20_000)),
            },
            1 => Fault::Stall {
                replica,
                lasting: Duration::from_millis(rng.u64(LEASE.as_millis() as u64..25_000)),
            },
            2 => Fault::CutOff {
                replica,
                lasting: Duration::from_millis(rng.u64(2_000..40_000)),
            },
            3 => Fault::Slow {
                replica,
                at_most: Duration::from_millis(rng.u64(100..8_000)),
                lasting: Duration::from_millis(rng.u64(5_000..30_000)),
            },
            4 => Fault::Failing {
                replica,
                probability: 0.1 + rng.f64() * 0.5,
                lasting: Duration::from_millis(rng.u64(5_000..30_000)),
            },
            _ => Fault::Redeliver {
                every: rng.usize(1..4),
            },
        };
        faults.push((at, fault));
    }
    faults.sort_by_key(|(at, _)| *at);
    faults
}

async fn held_shards(world: &World, replica: &str) -> Vec<u32> {
    world
        .table
        .cluster_view()
        .await
        .expect("memory store")
        .leases
        .into_iter()
        .filter(|l| l.owner == replica)
        .map(|l| l.shard)
        .collect()
}

pub async fn inflict(world: Arc<World>, faults: Vec<(Duration, Fault)>) {
    let mut restarts = Vec::new();
    for (at, fault) in faults {
        tokio::time::sleep_until(world.started + at).await;
        if world.verbose {
            eprintln!("{:?}: {fault:?}", at);
        }
        let now = Instant::now();
        let outage = |replica: usize, until: Option<Instant>| {
            let world = world.clone();
            async move {
                let id = world.replicas[replica].lock().await.id.clone();
                let shards = held_shards(&world, &id).await;
                world.outages.lock().unwrap().push(Outage {
                    replica: id,
                    at: now,
                    until,
                    shards,
                });
            }
        };
        match fault {
            Fault::Kill {
                replica,
                restart_after,
            } => {
                outage(replica, None).await;
                let mut r = world.replicas[replica].lock().await;
                r.faults.kill();
                if let Some(core) = r.core.take() {
                    core.end_streams();
                    world.zombies.lock().unwrap().push(core);
                }
                drop(r);
                let world = world.clone();
                restarts.push(tokio::spawn(async move {
                    tokio::time::sleep(restart_after).await;
                    world.start_replica(replica).await;
                }));
            }
            Fault::Stall { replica, lasting } => {
                outage(replica, Some(now + lasting)).await;
                world.replicas[replica]
                    .lock()
                    .await
                    .faults
                    .stall_until(now + lasting);
            }
            Fault::CutOff { replica, lasting } => {
                outage(replica, Some(now + lasting)).await;
                world.replicas[replica]
                    .lock()
                    .await
                    .faults
                    .cut_off_until(now + lasting);
            }
            Fault::Slow {
                replica,
                at_most,
                lasting,
            } => world.replicas[replica]
                .lock()
                .await
                .faults
                .slow_until(at_most, now + lasting),
            Fault::Failing {
                replica,
                probability,
                lasting,
            } => world.replicas[replica]
                .lock()
                .await
                .faults
                .failing_until(probability, now + lasting),
            Fault::Redeliver { every } => world.queue.redeliver(every),
        }
    }
    for r in restarts {
        r.await.expect("restart");
    }
    // Every fault has ended by the time the longest one could.
    tokio::time::sleep(Duration::from_secs(45)).await;
}
