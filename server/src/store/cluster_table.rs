//! What replicas coordinate through ([`ClusterTable`]): shard leases, replica
//! heartbeats, the route version and route items, and the live watches of a
//! shard. The cluster (`crate::cluster`) reads and writes these only through
//! this trait; [`DynamoStore`](super::dynamodb::DynamoStore) keeps them in
//! its table and [`MemoryStore`](super::memory::MemoryStore) in memory, with
//! the same conditions. This module holds no policy: when to take a lease or
//! whom to trust is the cluster's.

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Fence, Result, Store};
use crate::{
    clock::Timestamp,
    watch::{Source, Watch, WatchId, WatchKey},
};

/// One shard's lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseItem {
    pub shard: u32,
    /// The replica holding it; empty when free.
    pub owner: String,
    /// The fencing token: changes whenever the owner does.
    pub version: u64,
}

impl LeaseItem {
    pub fn fence(&self) -> Fence {
        Fence {
            shard: self.shard,
            owner: self.owner.clone(),
            version: self.version,
        }
    }
}

/// One replica's heartbeat as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaItem {
    pub id: String,
    pub heartbeat: u64,
    /// How far its queue consumers have recorded everything ([`Timestamp::MAX`] without queues).
    pub settled: Timestamp,
    /// The longest visibility timeout of its queues: how long after it stops
    /// a message it had received may still come back.
    pub visibility: Duration,
    /// The route version whose route items it has loaded (0: none yet).
    pub routes: u64,
}

/// Every lease and replica of the table, read at once.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub leases: Vec<LeaseItem>,
    pub replicas: Vec<ReplicaItem>,
}

/// A watch as routing needs it, from its route item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub key: WatchKey,
    /// What the watch routes (nothing, for a group: it is listed to be adopted).
    pub source: Source,
    /// The marker key below the prefix (`policy.marker`).
    pub marker: Option<String>,
    pub created_at: Timestamp,
}

/// The cluster's operations on the shared table. Every lease change is
/// conditional on the lease's owner and version as read, so two replicas
/// cannot both take one; reads of leases, replicas and the route version are
/// strongly consistent; [`live_in_shard`](Self::live_in_shard) reads an index
/// that may lag.
#[async_trait]
pub trait ClusterTable: Store {
    /// How many shards the watches are split into.
    fn shards(&self) -> u32;

    /// The shard `id` belongs to.
    fn shard(&self, id: &WatchId) -> u32 {
        shard_of(id, self.shards())
    }

    /// Records the shard count, or checks it against the one recorded:
    /// replicas that split watches differently would lose some.
    async fn ensure_shards(&self) -> Result<()>;

    /// Every lease and replica item, read at once (strongly consistent).
    async fn cluster_view(&self) -> Result<ClusterView>;

    /// Creates `shard`'s lease, free, unless it exists.
    async fn create_lease(&self, shard: u32) -> Result<()>;

    /// Takes `seen` (free, expired or stolen) for `me`, if its owner and
    /// version are still as read; the new version fences off the old owner.
    /// `None` when someone else moved first.
    async fn take_lease(
        &self,
        seen: &LeaseItem,
        me: &str,
        now: Timestamp,
    ) -> Result<Option<LeaseItem>>;

    /// Gives up a lease held by `lease.owner`, if still as read.
    async fn release_lease(&self, lease: &LeaseItem, now: Timestamp) -> Result<()>;

    /// Writes `replica`'s heartbeat, settled instant and visibility (its
    /// `routes` are written by [`Self::ack_routes`] alone).
    async fn beat(&self, replica: &ReplicaItem, now: Timestamp) -> Result<()>;

    /// Bumps the route version after a route item was written; the version
    /// after the bump.
    async fn bump_routes(&self) -> Result<u64>;

    /// The route version (strongly consistent).
    async fn routes_version(&self) -> Result<u64>;

    /// Records that `replica` loaded the route items of `version` (nothing
    /// when its item is gone: it left).
    async fn ack_routes(&self, replica: &str, version: u64) -> Result<()>;

    /// Every replica item (strongly consistent).
    async fn replicas(&self) -> Result<Vec<ReplicaItem>>;

    /// Removes `replica`'s item: the others stop counting it as live at once.
    async fn leave(&self, replica: &str) -> Result<()>;

    /// The watches created from `since` to `until` (by their creator's
    /// clock), from their route items (strongly consistent).
    async fn routes_since(&self, since: Timestamp, until: Timestamp) -> Result<Vec<RouteEntry>>;

    /// The live watches of one shard (from an index that may lag).
    async fn live_in_shard(&self, shard: u32) -> Result<Vec<Watch>>;
}

/// The shard of `shards` a watch belongs to: stable across processes and versions.
pub fn shard_of(id: &WatchId, shards: u32) -> u32 {
    let digest = Sha256::digest(id.as_str().as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % shards.max(1)
}
