//! Judges one run's [`History`]: what must hold whatever the faults.
//!
//! - every notification the service accepted is counted exactly once: each
//!   watch ends COMPLETED with as many objects and created events as
//!   distinct keys were sent (none lost, none twice);
//! - its log has seqs 1..n, at most one terminal event per generation, and
//!   no COMPLETED leaves out a notification accepted within the quiet window
//!   after the last one it counted (it would have completed while that
//!   notification was received but not recorded), nor comes before that
//!   window ended (for the polling rule: its delay times its repeats);
//! - every transition was written under the lease of its shard as it stood
//!   at the commit (no write by a fenced owner lands);
//! - a replica that went down alone lost its leases to the others within
//!   [`takeover_bound`];
//! - every subscriber saw the whole log, in order, each event once,
//!   whichever replicas it read from.

use std::{collections::BTreeMap, time::Duration};

use streamwatch_server::watch::{DelaySchedule, EventKind, Rule};
use tokio::time::Instant;

use super::world::{BASE_WALL_MS, HEARTBEAT, History, LEASE, Outage, Sent, kind_name};

/// How long after its holder went down a lease may stay with it: the taker
/// first reads the holder's last heartbeat up to a heartbeat after it was
/// written, and takes the lease a lease duration after that read (plus a
/// second for the requests on the way).
pub fn takeover_bound() -> Duration {
    LEASE + HEARTBEAT + Duration::from_secs(1)
}

/// Instants are milliseconds on the replicas' clocks: a millisecond of slack.
const SLACK: Duration = Duration::from_millis(1);

pub fn check(h: &History) -> Result<(), String> {
    counts(h)?;
    logs(h)?;
    fences(h)?;
    takeovers(h)?;
    subscribers(h)?;
    Ok(())
}

fn counts(h: &History) -> Result<(), String> {
    for w in &h.watches {
        let keys: std::collections::BTreeSet<_> = w.sent.iter().map(|s| &s.key).collect();
        let c = &w.watch.counters;
        if c.object_count != keys.len() as u64 || c.event_count != keys.len() as u64 {
            let sent: Vec<_> = w
                .sent
                .iter()
                .map(|s| {
                    format!(
                        "{} at {:?}{}",
                        s.key,
                        s.accepted - h.started,
                        if s.by_rpc { " by IngestS3Events" } else { "" }
                    )
                })
                .collect();
            return Err(format!(
                "watch {} ({:?}) counted {} objects and {} created events of {} sent: {sent:?}; log: {:?}",
                w.watch.id,
                w.watch.lifecycle.state,
                c.object_count,
                c.event_count,
                keys.len(),
                w.log
                    .iter()
                    .map(|e| format!(
                        "{} {} {:?}",
                        e.seq,
                        kind_name(&e.kind),
                        instant_of(h, "", e.time.as_millis()) - h.started
                    ))
                    .collect::<Vec<_>>()
            ));
        }
    }
    if !h.unfinished.is_empty() {
        return Err(format!(
            "not completed with everything sent: {:?}",
            h.unfinished
        ));
    }
    Ok(())
}

/// The cluster-time instant of a replica's wall time `ms`.
fn instant_of(h: &History, owner: &str, ms: i64) -> Instant {
    let skew = h.skews.get(owner).copied().unwrap_or(0);
    let since = ms - BASE_WALL_MS - skew;
    h.started + Duration::from_millis(u64::try_from(since).unwrap_or(0))
}

fn logs(h: &History) -> Result<(), String> {
    for w in &h.watches {
        let id = &w.watch.id;
        for (i, e) in w.log.iter().enumerate() {
            if e.seq != i as u64 + 1 {
                return Err(format!("watch {id}: event {} has seq {}", i + 1, e.seq));
            }
        }
        let mut terminal: BTreeMap<u32, &str> = BTreeMap::new();
        for e in &w.log {
            let kind = kind_name(&e.kind);
            if matches!(kind, "COMPLETED" | "TIMED_OUT" | "CANCELLED")
                && let Some(first) = terminal.insert(e.generation, kind)
            {
                return Err(format!(
                    "watch {id}: generation {} ended twice ({first}, then {kind} at seq {})",
                    e.generation, e.seq
                ));
            }
        }
        let window = quiet_window(&w.watch.policy.rule);
        // Who wrote each COMPLETED, for its clock.
        let writers: Vec<String> = h
            .commits
            .iter()
            .filter(|c| c.key.id == *id && c.events.contains(&"completed"))
            .map(|c| {
                c.fence
                    .as_ref()
                    .map(|f| f.owner.clone())
                    .unwrap_or_default()
            })
            .collect();
        let completions = w
            .log
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Completed { .. }));
        for (n, e) in completions.enumerate() {
            let EventKind::Completed { object_count, .. } = &e.kind else {
                unreachable!("filtered");
            };
            let owner = writers.get(n).map(String::as_str).unwrap_or_default();
            let decided = instant_of(h, owner, e.time.as_millis());
            // What this completion counted: the keys first counted in its
            // generation or before (a reopening counts late keys in the next).
            let counted = |s: &&Sent| {
                w.generations
                    .get(&s.key)
                    .is_some_and(|g| *g <= e.generation)
            };
            // (From the watch's start when it counted nothing.)
            let last = w
                .sent
                .iter()
                .filter(counted)
                .map(|s| s.accepted)
                .max()
                .unwrap_or(w.created);
            // Quiet from the last counted notification's arrival (it was
            // recorded then or later) until the deadline: anything accepted
            // in between and not counted was received, not recorded, and the
            // watch completed anyway.
            let missed: Vec<String> = w
                .sent
                .iter()
                .filter(|s| !counted(s) && s.accepted + SLACK < last + window)
                .map(|s| {
                    format!(
                        "{} accepted at {:?}{}",
                        s.key,
                        s.accepted - h.started,
                        if s.by_rpc { " by IngestS3Events" } else { "" }
                    )
                })
                .collect();
            if !missed.is_empty() {
                return Err(format!(
                    "watch {id} completed at {:?} (seq {}, generation {}, by {owner}) with \
                     {object_count} objects, the last accepted at {:?}, without {missed:?}",
                    decided - h.started,
                    e.seq,
                    e.generation,
                    last - h.started,
                ));
            }
            if decided + SLACK < last + window {
                return Err(format!(
                    "watch {id} completed at {:?} (seq {}), before the quiet window after {:?}",
                    decided - h.started,
                    e.seq,
                    last - h.started
                ));
            }
        }
    }
    Ok(())
}

/// How long a watch's rule stays quiet before completing. The polling rule
/// (fixed schedule): its last sample that saw the count move came after the
/// last counted notification was recorded, and each unchanged sample after
/// that is a delay later and stands for an instant every consumer had caught
/// up to, so whatever was accepted before it is counted in it.
fn quiet_window(rule: &Rule) -> Duration {
    match rule {
        Rule::QuietPeriod { window } => *window,
        Rule::Polling {
            delay,
            max_repeats,
            schedule: DelaySchedule::Fixed,
        } => *delay * *max_repeats,
        other => unreachable!("the workload starts no {other:?}"),
    }
}

fn fences(h: &History) -> Result<(), String> {
    // Lease changes and commits in the store's one commit order.
    let mut leases: BTreeMap<u32, (String, u64)> = BTreeMap::new();
    let mut changes = h.leases.iter().peekable();
    for c in &h.commits {
        while let Some(l) = changes.next_if(|l| l.order < c.order) {
            leases.insert(l.shard, (l.owner.clone(), l.version));
        }
        if c.events.iter().all(|k| *k == "started") {
            continue;
        }
        let Some(fence) = &c.fence else {
            return Err(format!(
                "watch {}: {:?} written without a fence",
                c.key.id, c.events
            ));
        };
        let held = leases.get(&fence.shard);
        if held != Some(&(fence.owner.clone(), fence.version)) {
            return Err(format!(
                "watch {}: {:?} written by {} under version {} of shard {}, which was then {held:?}",
                c.key.id, c.events, fence.owner, fence.version, fence.shard
            ));
        }
    }
    Ok(())
}

/// How long each shard of a replica down alone (past the bound) took to
/// change hands; `None` for one that did not within the bound.
pub fn takeover_times(h: &History) -> Vec<(u32, &str, Instant, Option<Duration>)> {
    let bound = takeover_bound();
    let mut out = Vec::new();
    for o in &h.outages {
        let lasted = o.until.map_or(Duration::MAX, |u| u - o.at);
        if lasted <= bound {
            continue;
        }
        // Only an outage alone: another fault may stop the takers.
        let alone = h.outages.iter().all(|other| {
            std::ptr::eq(other as *const Outage, o as *const Outage)
                || other.at > o.at + bound
                || other.until.is_some_and(|u| u + bound < o.at)
        }) && h.faults.len() == h.outages.len();
        if !alone {
            continue;
        }
        for &shard in &o.shards {
            // By another replica, or by this one restarted under its id.
            let taken = h
                .leases
                .iter()
                .find(|l| l.shard == shard && !l.owner.is_empty() && l.at > o.at)
                .map(|l| l.at - o.at)
                .filter(|took| *took <= bound);
            out.push((shard, o.replica.as_str(), o.at, taken));
        }
    }
    out
}

fn takeovers(h: &History) -> Result<(), String> {
    for (shard, replica, at, taken) in takeover_times(h) {
        if taken.is_none() {
            return Err(format!(
                "shard {shard} of {replica} (down at {:?}) was not taken over within {:?}",
                at - h.started,
                takeover_bound()
            ));
        }
    }
    Ok(())
}

fn subscribers(h: &History) -> Result<(), String> {
    for w in &h.watches {
        let log: Vec<u64> = w.log.iter().map(|e| e.seq).collect();
        for (n, seen) in w.subscribers.iter().enumerate() {
            if *seen != log {
                return Err(format!(
                    "watch {}: subscriber {n} saw {seen:?}, the log is {log:?}",
                    w.watch.id
                ));
            }
        }
    }
    Ok(())
}
