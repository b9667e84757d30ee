//! The shards this replica holds leases on ([`Ownership`]), shared by the
//! lease task (the only writer) and the observer, which times only watches
//! of held shards and fences each write with the lease's version.

use std::{collections::HashMap, sync::RwLock};

use crate::{
    store::{Fence, dynamodb::shard_of},
    watch::WatchId,
};

/// The shards this replica holds leases on, with each lease's version:
/// shared by the lease task (which changes it) and the observer (which times
/// only owned watches and fences its writes with the version).
pub struct Ownership {
    pub replica: String,
    shards: u32,
    held: RwLock<HashMap<u32, u64>>,
}

impl Ownership {
    pub fn new(replica: String, shards: u32) -> Self {
        Self {
            replica,
            shards,
            held: RwLock::default(),
        }
    }

    pub fn shard(&self, id: &WatchId) -> u32 {
        shard_of(id, self.shards)
    }

    /// The fence for a write to `id`, if this replica owns its shard.
    pub fn fence(&self, id: &WatchId) -> Option<Fence> {
        let shard = self.shard(id);
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.get(&shard).map(|&version| Fence {
            shard,
            owner: self.replica.clone(),
            version,
        })
    }

    pub fn owns(&self, id: &WatchId) -> bool {
        self.fence(id).is_some()
    }

    pub fn holds(&self, shard: u32) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.contains_key(&shard)
    }

    pub fn held(&self) -> Vec<(u32, u64)> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u32, u64)> = held.iter().map(|(s, v)| (*s, *v)).collect();
        out.sort_unstable();
        out
    }

    pub(super) fn insert(&self, shard: u32, version: u64) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        held.insert(shard, version);
    }

    /// Forgets `shard` if held at `version` (a newer take stays); whether it did.
    pub fn lose(&self, shard: u32, version: u64) -> bool {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if held.get(&shard) == Some(&version) {
            held.remove(&shard);
            true
        } else {
            false
        }
    }
}

impl crate::observer::Owned for Ownership {
    fn shard(&self, id: &WatchId) -> u32 {
        Ownership::shard(self, id)
    }

    fn fence(&self, id: &WatchId) -> Option<Fence> {
        Ownership::fence(self, id)
    }

    fn lose(&self, shard: u32, version: u64) -> bool {
        Ownership::lose(self, shard, version)
    }
}
