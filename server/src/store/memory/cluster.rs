//! The memory store's [`ClusterTable`]: shard leases, replica heartbeats,
//! the route version and route items, and the lagging `live` index, with the
//! DynamoDB store's conditions. Each operation is one request (one atomic
//! step, then a yield); a lease changes only if its owner and version are
//! still as the caller read them, and every committed change of a lease is
//! kept for [`MemoryStore::lease_history`]. The index shows a write only
//! `index_lag` after it committed (tokio's clock). No policy: when to take
//! a lease or whom to trust is the cluster's.

use async_trait::async_trait;
use tokio::time::Instant;

use super::{LeaseChange, MemoryStore, transact::Tables};
use crate::{
    clock::Timestamp,
    store::{ClusterTable, ClusterView, LeaseItem, ReplicaItem, Result, RouteEntry, StoreError},
    watch::Watch,
};

impl Tables {
    /// Changes `seen`'s lease to `owner` (a new `version` when taken), if
    /// its owner and version are still as read; the lease after the change.
    fn change_lease(&mut self, seen: &LeaseItem, owner: &str, take: bool) -> Option<LeaseItem> {
        let lease = self.leases.get_mut(&seen.shard)?;
        if lease.owner != seen.owner || lease.version != seen.version {
            return None;
        }
        lease.owner = owner.to_owned();
        if take {
            lease.version += 1;
        }
        let changed = lease.clone();
        self.audited += 1;
        self.lease_history.push(LeaseChange {
            order: self.audited,
            at: Instant::now(),
            shard: changed.shard,
            owner: changed.owner.clone(),
            version: changed.version,
        });
        Some(changed)
    }

    /// The watches `shard`'s index shows now: each watch's latest update
    /// that is visible (older ones are dropped).
    fn live_in_shard(&mut self, shard: u32) -> Vec<Watch> {
        let now = Instant::now();
        let Some(index) = self.index.get_mut(&shard) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for updates in index.values_mut() {
            while updates.len() > 1 && updates[1].0 <= now {
                updates.pop_front();
            }
            if let Some((at, Some(watch))) = updates.front()
                && *at <= now
            {
                out.push(watch.clone());
            }
        }
        index.retain(|_, updates| !matches!(updates.front(), Some((at, None)) if *at <= now && updates.len() == 1));
        out
    }
}

#[async_trait]
impl ClusterTable for MemoryStore {
    fn shards(&self) -> u32 {
        self.shards
    }

    async fn ensure_shards(&self) -> Result<()> {
        let recorded = self
            .request(|t| *t.recorded_shards.get_or_insert(self.shards))
            .await;
        if recorded != self.shards {
            return Err(StoreError::Corrupt(format!(
                "the store is split into {recorded} shards, not {}: \
                 every replica must run with --shards {recorded}",
                self.shards
            )));
        }
        Ok(())
    }

    async fn cluster_view(&self) -> Result<ClusterView> {
        Ok(self
            .request(|t| ClusterView {
                leases: t.leases.values().cloned().collect(),
                replicas: t.replicas.values().cloned().collect(),
            })
            .await)
    }

    async fn create_lease(&self, shard: u32) -> Result<()> {
        self.request(|t| {
            if t.leases.contains_key(&shard) {
                return;
            }
            let free = LeaseItem {
                shard,
                owner: String::new(),
                version: 0,
            };
            t.leases.insert(shard, free);
            t.audited += 1;
            let order = t.audited;
            t.lease_history.push(LeaseChange {
                order,
                at: Instant::now(),
                shard,
                owner: String::new(),
                version: 0,
            });
        })
        .await;
        Ok(())
    }

    async fn take_lease(
        &self,
        seen: &LeaseItem,
        me: &str,
        _now: Timestamp,
    ) -> Result<Option<LeaseItem>> {
        Ok(self.request(|t| t.change_lease(seen, me, true)).await)
    }

    async fn release_lease(&self, lease: &LeaseItem, _now: Timestamp) -> Result<()> {
        self.request(|t| t.change_lease(lease, "", false)).await;
        Ok(())
    }

    async fn beat(&self, replica: &ReplicaItem, _now: Timestamp) -> Result<()> {
        self.request(|t| {
            let item = t
                .replicas
                .entry(replica.id.clone())
                .or_insert_with(|| ReplicaItem {
                    routes: 0,
                    ..replica.clone()
                });
            item.heartbeat = replica.heartbeat;
            item.settled = replica.settled;
            item.visibility = replica.visibility;
        })
        .await;
        Ok(())
    }

    async fn bump_routes(&self) -> Result<u64> {
        Ok(self
            .request(|t| {
                t.routes_version += 1;
                t.routes_version
            })
            .await)
    }

    async fn routes_version(&self) -> Result<u64> {
        Ok(self.request(|t| t.routes_version).await)
    }

    async fn ack_routes(&self, replica: &str, version: u64) -> Result<()> {
        self.request(|t| {
            if let Some(item) = t.replicas.get_mut(replica) {
                item.routes = version;
            }
        })
        .await;
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<ReplicaItem>> {
        Ok(self
            .request(|t| t.replicas.values().cloned().collect())
            .await)
    }

    async fn leave(&self, replica: &str) -> Result<()> {
        self.request(|t| t.replicas.remove(replica)).await;
        Ok(())
    }

    /// As DynamoDB's minute partitions read them: every route item created
    /// from `since` until the end of `until`'s minute.
    async fn routes_since(&self, since: Timestamp, until: Timestamp) -> Result<Vec<RouteEntry>> {
        let since = since.as_millis();
        let minute = since
            .div_euclid(60_000)
            .max(until.as_millis().div_euclid(60_000));
        let end = (minute + 1) * 60_000;
        Ok(self
            .request(|t| {
                t.routes
                    .iter()
                    .filter(|((at, _), _)| (since.max(0)..end).contains(at))
                    .map(|(_, route)| route.clone())
                    .collect()
            })
            .await)
    }

    async fn live_in_shard(&self, shard: u32) -> Result<Vec<Watch>> {
        Ok(self.request(|t| t.live_in_shard(shard)).await)
    }
}
