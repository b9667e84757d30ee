//! Many replicas on one DynamoDB table and one set of queues (`--cluster`).
//! Replicas coordinate only through the table:
//!
//! - **Observer ownership by shard leases.** A watch belongs to shard
//!   `hash(watch id) % shards`; each shard has a lease item (owner, version).
//!   A lease is not renewed: it stays its owner's while the owner's replica
//!   item keeps moving (as the Kinesis Client Library's newer leases do), so
//!   a heartbeat is one write, whatever the leases held. Every heartbeat a
//!   replica reads all leases and replicas in one Query, writes its replica
//!   item, takes free leases and leases whose owner's heartbeat stood still
//!   for a lease duration (by its own clock, from when it first saw that
//!   heartbeat, so clocks need not agree), and steals from a replica holding
//!   more than its share ([`balance`]). A take is conditional on the lease's
//!   owner and version as read, so two takers cannot both win. Only the
//!   owner of a watch's shard times it, and every transition it writes is
//!   fenced by the lease's version: once another replica took the lease, the
//!   write fails ([`StoreError::Fenced`]) and the old owner stops timing
//!   that shard (it also drops the shard when its next Query shows the
//!   lease taken).
//! - **Shared routing with bounded staleness.** Every replica consumes the
//!   queues and counts into any watch. A watch's route item is written with
//!   it, and StartWatch then bumps the route version item. Each replica reads
//!   the route version every `--route-refresh`, reads the new route items
//!   when it moved, and acknowledges the version it loaded in its replica
//!   item; it refuses to route a notification with a route table older than
//!   [`Cluster::route_staleness`] (twice the refresh interval), or once its
//!   own heartbeat has failed for a lease duration less a heartbeat (the
//!   others stop waiting for its acknowledgements by then). StartWatch
//!   returns once every replica acknowledged its version ([`Routing`]), or
//!   the staleness bound passed since the bump; either way a notification
//!   any replica routes after StartWatch returned finds the watch.
//! - **Quiet means quiet everywhere.** Each replica publishes how far its
//!   queue consumers have recorded (its watermark) with its heartbeat; an
//!   owner holds a completion until every live replica has settled past it.
//!   A replica that stopped beating holds completions back for a lease
//!   duration plus its queues' visibility timeout: the messages it had
//!   received come back to the queue by then, for the others to count.
//!   A replica's watermark also stays before what it received and has not
//!   recorded (an `IngestS3Events` call), and a replica restarted under the
//!   id of a crashed process holds its queue marks for their visibility
//!   timeout (`crate::startup`).
//! - **Events from the shared log.** Owners re-read their watches for
//!   activity other replicas counted (every `--log-poll` those whose decision
//!   is near or may come at any count, the others every [`SWEEP`]), and
//!   subscribers re-read the event log every `--log-poll`, so a stream on any
//!   replica sees every event in order.
//!
//! This file holds [`Cluster`] (joining, starting the tasks, leaving). Its
//! parts: `args` (the flags), `ownership` (the shards held, for the
//! observer), `leases` (the heartbeat task), `route_refresh` (the route task
//! and how fresh its routes are), `routing` (StartWatch's wait), [`balance`]
//! (which leases to take). A replica must never write a watch's transition
//! without its shard's fence, nor route with a table past its staleness.
//!
//! [`StoreError::Fenced`]: crate::store::StoreError::Fenced
//! [`SWEEP`]: crate::observer::SWEEP

mod args;
pub mod balance;
mod leases;
mod ownership;
mod route_refresh;
mod routing;

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

pub use self::{
    args::{ClusterArgs, ClusterArgsError},
    ownership::Ownership,
    routing::{RouteTable, Routing},
};
use self::{
    leases::Leases,
    route_refresh::{Freshness, RouteBook, RouteRefresher},
};
use crate::{
    clock::{Clock, Timestamp},
    ingest::Routes,
    metrics::Metrics,
    observer::ObserverHandle,
    store::{ClusterTable, LeaseItem, StoreError},
};

/// Why a replica cannot join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Settings(#[from] ClusterArgsError),
    /// The table could not be read or written (its shard count, the first
    /// heartbeat, the first route refresh), or holds another shard count.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This replica's part of the cluster: built by [`Cluster::start`], which
/// takes its first leases before the server serves.
pub struct Cluster {
    pub ownership: Arc<Ownership>,
    /// How old a route table may be when a notification is routed with it.
    pub route_staleness: Duration,
    /// StartWatch's wait until every replica routes a new watch.
    pub routing: Arc<Routing>,
    freshness: Arc<Freshness>,
    /// The last instant every replica's queues had recorded up to (for the observer).
    pub settled: watch::Receiver<Timestamp>,
    /// The start of the last successful route refresh (for ingest).
    pub routes_fresh: watch::Receiver<Option<Instant>>,
    /// Until when this replica's consumers may take messages off the queues.
    pub in_touch: watch::Receiver<Option<Instant>>,
    store: Arc<dyn ClusterTable>,
    args: ClusterArgs,
    clock: Clock,
    metrics: Arc<Metrics>,
    book: Arc<RouteBook>,
    settled_tx: watch::Sender<Timestamp>,
}

impl Cluster {
    /// Checks the settings and the table's shard count.
    pub async fn new(
        args: &ClusterArgs,
        store: Arc<dyn ClusterTable>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClusterError> {
        args.check()?;
        store.ensure_shards().await?;
        let (settled_tx, settled) = watch::channel(Timestamp::from_millis(0));
        let (freshness, routes_fresh, in_touch) = Freshness::new(args);
        let replica = args.replica();
        tracing::info!(%replica, shards = store.shards(), lease_duration = ?args.lease_duration,
            heartbeat = ?args.heartbeat, "joining the cluster");
        let route_staleness = args.route_refresh * 2;
        Ok(Self {
            routing: Arc::new(Routing::new(
                Arc::new(store.clone()),
                route_staleness,
                (args.route_refresh / 4)
                    .clamp(Duration::from_millis(25), Duration::from_millis(250)),
            )),
            freshness: Arc::new(freshness),
            ownership: Arc::new(Ownership::new(replica, store.shards())),
            route_staleness,
            settled,
            routes_fresh,
            in_touch,
            store,
            args: args.clone(),
            clock,
            metrics,
            book: Arc::default(),
            settled_tx,
        })
    }

    pub fn log_poll(&self) -> Duration {
        self.args.log_poll
    }

    /// Starts the lease and route tasks: the first heartbeat (which takes
    /// free leases) and the first route refresh are done when this returns;
    /// also whether an earlier process under this replica id stopped without
    /// leaving.
    pub async fn start(
        &self,
        routes: Arc<Routes>,
        observer: ObserverHandle,
        local_settled: watch::Receiver<Timestamp>,
        visibility: Duration,
        end: CancellationToken,
    ) -> crate::store::Result<(Vec<tokio::task::JoinHandle<()>>, bool)> {
        let mut leases = Leases::new(
            self,
            observer.clone(),
            local_settled,
            visibility,
            routes.clone(),
        );
        // An earlier process under this id that stopped without leaving
        // left its replica item (see `Core::start_on` for what follows).
        let me = &self.ownership.replica;
        let crashed = self.store.replicas().await?.iter().any(|r| &r.id == me);
        // The replica item exists before the first route refresh: a watch
        // started after another replica read the replica items is one this
        // replica's first refresh finds.
        leases.beat().await?;
        let mut refresher = RouteRefresher::new(self, routes, observer);
        refresher.refresh().await?;
        leases.heartbeat().await?;
        let every = self.args.route_refresh;
        Ok((
            vec![
                tokio::spawn(refresher.run(every, end.clone())),
                tokio::spawn(leases.run(end.clone())),
                tokio::spawn(self.routing.clone().poll_acks(end)),
            ],
            crashed,
        ))
    }

    /// Gives up every lease this replica holds and leaves the replica list,
    /// so the others take the leases on their next heartbeat (after the
    /// observer and the queue consumers stopped: nothing is written under
    /// the leases, and nothing received is left unrecorded).
    pub async fn release(&self) {
        let now = self.clock.now();
        for (shard, version) in self.ownership.held() {
            let lease = LeaseItem {
                shard,
                owner: self.ownership.replica.clone(),
                version,
            };
            self.ownership.lose(shard, version);
            if let Err(e) = self.store.release_lease(&lease, now).await {
                tracing::warn!(shard, error = %e, "cannot release a lease; it expires instead");
            }
        }
        if let Err(e) = self.store.leave(&self.ownership.replica).await {
            tracing::warn!(error = %e, "cannot leave the replica list; the others notice after a lease duration");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ReplicaItem;

    /// A replica item with its heartbeat and acknowledged route version.
    pub(super) fn replica(id: &str, heartbeat: u64, routes: u64) -> ReplicaItem {
        ReplicaItem {
            id: id.into(),
            heartbeat,
            settled: Timestamp::MAX,
            visibility: Duration::ZERO,
            routes,
        }
    }
}
