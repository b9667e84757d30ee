//! Which leases a replica takes on a heartbeat: a pure function of what it
//! read, as the Kinesis Client Library balances shard leases. Each live
//! replica aims at `ceil(shards / live replicas)`; it takes free and expired
//! leases first, and steals from the most loaded replica only while that one
//! holds more than the target, so a balanced cluster stays put.

use std::collections::BTreeMap;

use crate::store::LeaseItem;

/// A lease as this replica sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub lease: LeaseItem,
    /// Its owner has not renewed it for a whole lease duration (by this replica's clock).
    pub expired: bool,
}

/// The most leases each of `live` replicas should hold.
pub fn target(shards: usize, live: usize) -> usize {
    shards.div_ceil(live.max(1))
}

/// The leases `me` should try to take now, given every lease and how many
/// replicas are live (`me` included).
pub fn plan(me: &str, leases: &[Seen], live: usize) -> Vec<LeaseItem> {
    let target = target(leases.len(), live);
    let mine = leases.iter().filter(|s| s.lease.owner == me).count();
    let mut want = target.saturating_sub(mine);
    if want == 0 {
        return Vec::new();
    }
    // Spread replicas over different free leases, so they rarely race for one.
    let order = |shard: u32| fxhash(me, shard);
    let mut available: Vec<&Seen> = leases
        .iter()
        .filter(|s| s.lease.owner != me && (s.lease.owner.is_empty() || s.expired))
        .collect();
    available.sort_by_key(|s| (!s.lease.owner.is_empty(), order(s.lease.shard)));
    let mut take: Vec<LeaseItem> = available
        .into_iter()
        .take(want)
        .map(|s| s.lease.clone())
        .collect();
    want -= take.len();
    if want == 0 {
        return take;
    }
    // Nothing free: steal from the busiest live owner, down to the target.
    let mut held: BTreeMap<&str, Vec<&LeaseItem>> = BTreeMap::new();
    for s in leases
        .iter()
        .filter(|s| !s.expired && !s.lease.owner.is_empty() && s.lease.owner != me)
    {
        held.entry(&s.lease.owner).or_default().push(&s.lease);
    }
    if let Some((_, mut theirs)) = held
        .into_iter()
        .max_by_key(|(owner, held)| (held.len(), std::cmp::Reverse(*owner)))
        .filter(|(_, held)| held.len() > target)
    {
        let surplus = theirs.len() - target;
        theirs.sort_by_key(|l| order(l.shard));
        take.extend(theirs.into_iter().take(want.min(surplus)).cloned());
    }
    take
}

/// A cheap, stable mix of a replica id and a shard.
fn fxhash(me: &str, shard: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain(shard.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: u32, owner: &str) -> Seen {
        Seen {
            lease: LeaseItem {
                shard,
                owner: owner.into(),
                version: 1,
            },
            expired: false,
        }
    }

    fn shards(plan: &[LeaseItem]) -> Vec<u32> {
        let mut s: Vec<u32> = plan.iter().map(|l| l.shard).collect();
        s.sort_unstable();
        s
    }

    #[test]
    fn a_lone_replica_takes_every_free_lease() {
        let leases: Vec<Seen> = (0..64).map(|s| lease(s, "")).collect();
        assert_eq!(shards(&plan("a", &leases, 1)), (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn replicas_take_only_their_share_of_free_leases() {
        let leases: Vec<Seen> = (0..64).map(|s| lease(s, "")).collect();
        assert_eq!(plan("a", &leases, 3).len(), 22);
    }

    #[test]
    fn expired_leases_are_taken_and_live_ones_are_not() {
        let mut leases: Vec<Seen> = (0..4).map(|s| lease(s, "b")).collect();
        leases[2].expired = true;
        leases[3].expired = true;
        // "b" still counts as live here (two replicas), but two of its leases stopped.
        let taken = shards(&plan("a", &leases, 2));
        assert_eq!(taken, vec![2, 3]);
    }

    #[test]
    fn a_new_replica_steals_from_the_busiest_down_to_the_target() {
        let mut leases: Vec<Seen> = (0..6).map(|s| lease(s, "a")).collect();
        leases.extend((6..8).map(|s| lease(s, "b")));
        // Three live replicas: target ceil(8 / 3) = 3. "c" holds none; "a" holds 6.
        let taken = plan("c", &leases, 3);
        assert_eq!(taken.len(), 3);
        assert!(
            taken.iter().all(|l| l.owner == "a"),
            "stolen from the busiest"
        );
    }

    #[test]
    fn a_balanced_cluster_stays_put() {
        // 64 over 3: 22, 21, 21. Nobody holds more than the target, nobody steals.
        let mut leases: Vec<Seen> = Vec::new();
        for s in 0..64 {
            let owner = match s {
                0..22 => "a",
                22..43 => "b",
                _ => "c",
            };
            leases.push(lease(s, owner));
        }
        for me in ["a", "b", "c"] {
            assert!(plan(me, &leases, 3).is_empty(), "{me} takes nothing");
        }
    }

    #[test]
    fn a_replica_at_its_target_takes_nothing_even_when_leases_expire() {
        let mut leases: Vec<Seen> = (0..4).map(|s| lease(s, "a")).collect();
        leases.extend((4..8).map(|s| lease(s, "b")));
        for l in &mut leases[4..] {
            l.expired = true;
        }
        assert!(plan("a", &leases, 2).is_empty(), "target 4, holds 4");
        assert_eq!(
            plan("a", &leases, 1).len(),
            4,
            "alone: takes the expired four"
        );
    }
}
