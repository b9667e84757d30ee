//! StartWatch's wait until every replica routes a new watch ([`Routing`]):
//! bump the route version, then wait for every replica not silent to
//! acknowledge it (one poller reads the acknowledgements for every waiting
//! StartWatch), or for the route staleness to pass since the bump.
//!
//! It must never return before a notification any replica routes would
//! find the watch.

use std::{
    collections::BTreeSet,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::route_refresh::ROUTE_REQUERY;
use crate::store::{ClusterTable, ReplicaItem};

/// Bumps of the route version a StartWatch tries before it waits out
/// [`ROUTE_REQUERY`] instead.
const BUMP_ATTEMPTS: u32 = 3;

/// StartWatch's wait until every replica routes a new watch: it bumps the
/// route version, then waits until every replica not silent has
/// acknowledged that version in its replica item (read by one poller for
/// every waiting StartWatch), or the route staleness has passed since the
/// bump (a replica that has not loaded it by then refuses to route).
pub struct Routing {
    table: Arc<dyn RouteTable>,
    bound: Duration,
    poll: Duration,
    /// Replicas whose heartbeat stood still for a lease duration (from the lease task).
    pub(super) silent: Arc<RwLock<BTreeSet<String>>>,
    /// StartWatches waiting.
    waiting: watch::Sender<usize>,
    /// The last read of the acknowledgements: when it started, and the
    /// version every replica not silent had loaded.
    acked: watch::Sender<(Option<Instant>, u64)>,
}

/// What [`Routing`] asks of the table.
#[async_trait::async_trait]
pub trait RouteTable: Send + Sync {
    /// Bumps the route version; the version after the bump.
    async fn bump_routes(&self) -> crate::store::Result<u64>;
    /// Every replica item, with the route version it acknowledged.
    async fn replicas(&self) -> crate::store::Result<Vec<ReplicaItem>>;
}

#[async_trait::async_trait]
impl RouteTable for Arc<dyn ClusterTable> {
    async fn bump_routes(&self) -> crate::store::Result<u64> {
        ClusterTable::bump_routes(&**self).await
    }

    async fn replicas(&self) -> crate::store::Result<Vec<ReplicaItem>> {
        ClusterTable::replicas(&**self).await
    }
}

/// Counts a waiting StartWatch while it lives.
struct Waiting<'a>(&'a watch::Sender<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The route version every replica of `replicas` except the `silent` ones
/// has loaded (`u64::MAX` when none is left to wait for).
fn acked_everywhere(replicas: &[ReplicaItem], silent: &BTreeSet<String>) -> u64 {
    replicas
        .iter()
        .filter(|r| !silent.contains(&r.id))
        .map(|r| r.routes)
        .min()
        .unwrap_or(u64::MAX)
}

impl Routing {
    pub(super) fn new(table: Arc<dyn RouteTable>, bound: Duration, poll: Duration) -> Self {
        Self {
            table,
            bound,
            poll,
            silent: Arc::default(),
            waiting: watch::channel(0).0,
            acked: watch::channel((None, 0)).0,
        }
    }

    /// Returns once every replica routes notifications to a watch whose
    /// route item is written.
    pub async fn routed_everywhere(&self) {
        let Some(version) = self.bump().await else {
            // Every replica reads the route items within a requery and a
            // refresh (half the bound), bumped or not, and routes with them
            // within the bound after.
            tokio::time::sleep(ROUTE_REQUERY + self.bound + self.bound / 2).await;
            return;
        };
        let bumped = Instant::now();
        self.waiting.send_modify(|n| *n += 1);
        let _waiting = Waiting(&self.waiting);
        let mut acked = self.acked.subscribe();
        // Only a read that started after the bump counts: a replica that
        // joined later refreshes after that read, and finds the watch.
        let everywhere = acked
            .wait_for(|(read, acked)| read.is_some_and(|read| read >= bumped) && *acked >= version);
        match tokio::time::timeout_at(bumped + self.bound, everywhere).await {
            Ok(_) => tracing::debug!(version, took = ?bumped.elapsed(), "routed everywhere"),
            Err(_) => tracing::debug!(
                version,
                "route staleness passed before every replica acknowledged"
            ),
        }
    }

    async fn bump(&self) -> Option<u64> {
        let mut wait = Duration::from_millis(50);
        for attempt in 1..=BUMP_ATTEMPTS {
            match self.table.bump_routes().await {
                Ok(version) => return Some(version),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "cannot bump the route version");
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
            }
        }
        None
    }

    /// Reads the replicas' acknowledgements every `poll` while a StartWatch waits.
    pub(super) async fn poll_acks(self: Arc<Self>, end: CancellationToken) {
        let mut waiting = self.waiting.subscribe();
        loop {
            tokio::select! {
                biased;
                () = end.cancelled() => return,
                someone = waiting.wait_for(|n| *n > 0) => if someone.is_err() { return },
            }
            let started = Instant::now();
            match self.table.replicas().await {
                Ok(replicas) => {
                    let silent = self
                        .silent
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let acked = acked_everywhere(&replicas, &silent);
                    tracing::debug!(
                        ?silent,
                        acked,
                        read = replicas.len(),
                        "route acknowledgements"
                    );
                    self.acked.send_replace((Some(started), acked));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the route acknowledgements"),
            }
            tokio::select! {
                biased;
                () = end.cancelled() => return,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::cluster::tests::replica;

    #[test]
    fn routes_are_acknowledged_everywhere_at_the_least_version_of_the_replicas_not_silent() {
        let replicas = [replica("a", 1, 7), replica("b", 1, 5), replica("c", 1, 2)];
        assert_eq!(acked_everywhere(&replicas, &BTreeSet::new()), 2);
        let silent: BTreeSet<String> = ["c".to_owned()].into();
        assert_eq!(acked_everywhere(&replicas, &silent), 5);
        assert_eq!(acked_everywhere(&[], &silent), u64::MAX);
    }

    /// The route version and replica items, in memory.
    #[derive(Default)]
    struct Table {
        state: Mutex<(u64, Vec<ReplicaItem>)>,
    }

    impl Table {
        fn with(replicas: &[&str]) -> Arc<Self> {
            let table = Self::default();
            table.state.lock().unwrap().1 = replicas.iter().map(|id| replica(id, 1, 0)).collect();
            Arc::new(table)
        }

        /// `id` acknowledges the route version as it is now.
        fn ack(&self, id: &str) {
            let mut state = self.state.lock().unwrap();
            let version = state.0;
            for r in state.1.iter_mut().filter(|r| r.id == id) {
                r.routes = version;
            }
        }
    }

    #[async_trait::async_trait]
    impl RouteTable for Table {
        async fn bump_routes(&self) -> crate::store::Result<u64> {
            let mut state = self.state.lock().unwrap();
            state.0 += 1;
            Ok(state.0)
        }

        async fn replicas(&self) -> crate::store::Result<Vec<ReplicaItem>> {
            Ok(self.state.lock().unwrap().1.clone())
        }
    }

    const BOUND: Duration = Duration::from_secs(1);
    const POLL: Duration = Duration::from_millis(125);

    /// A StartWatch's wait on `table` (with its acknowledgement poller),
    /// `silent` excused; how long it took.
    fn start(
        table: Arc<Table>,
        silent: &[&str],
    ) -> (
        Arc<Routing>,
        tokio::task::JoinHandle<Duration>,
        CancellationToken,
    ) {
        let routing = Arc::new(Routing::new(table, BOUND, POLL));
        *routing.silent.write().unwrap() = silent.iter().map(|s| s.to_string()).collect();
        let end = CancellationToken::new();
        tokio::spawn(routing.clone().poll_acks(end.clone()));
        let waiter = routing.clone();
        let wait = tokio::spawn(async move {
            let started = Instant::now();
            waiter.routed_everywhere().await;
            started.elapsed()
        });
        (routing, wait, end)
    }

    /// Lets the start bump the version (paused time moves on by 1ms).
    async fn bumped() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_returns_once_every_replica_acknowledged_its_version() {
        let table = Table::with(&["a", "b"]);
        let (_routing, wait, end) = start(table.clone(), &[]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        table.ack("a");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!wait.is_finished(), "b has not acknowledged");
        table.ack("b");
        let took = wait.await.unwrap();
        assert!(
            took >= Duration::from_millis(500) && took <= Duration::from_millis(500) + POLL,
            "{took:?}"
        );
        end.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_waits_out_the_bound_for_a_replica_that_does_not_acknowledge() {
        let table = Table::with(&["a", "b"]);
        let (_routing, wait, end) = start(table.clone(), &[]);
        bumped().await;
        table.ack("a");
        assert_eq!(wait.await.unwrap(), BOUND);
        end.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_replica_is_not_waited_for() {
        let table = Table::with(&["a", "b", "gone"]);
        let (_routing, wait, end) = start(table.clone(), &["gone"]);
        bumped().await;
        table.ack("a");
        table.ack("b");
        let took = wait.await.unwrap();
        assert!(took <= POLL + Duration::from_millis(1), "{took:?}");
        end.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_from_before_the_bump_does_not_count() {
        let table = Table::with(&["a"]);
        let routing = Arc::new(Routing::new(table.clone(), BOUND, POLL));
        // A read that saw every replica far ahead, but before this start's
        // bump; no poller reads again.
        routing.acked.send_replace((Some(Instant::now()), u64::MAX));
        tokio::time::advance(Duration::from_millis(10)).await;
        let started = Instant::now();
        routing.routed_everywhere().await;
        assert_eq!(started.elapsed(), BOUND);
    }

    #[test]
    fn a_waiting_start_is_counted_until_its_wait_ends() {
        let waiting = watch::channel(0).0;
        let mut seen = waiting.subscribe();
        {
            waiting.send_modify(|n| *n += 1);
            let _one = Waiting(&waiting);
            assert_eq!(*seen.borrow_and_update(), 1);
        }
        assert_eq!(
            *seen.borrow_and_update(),
            0,
            "a finished wait is no longer counted"
        );
    }
}
