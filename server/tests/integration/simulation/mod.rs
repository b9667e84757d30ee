//! The cluster under simulated faults: several replicas (each a whole
//! [`Core`] with its observer, lease, route and queue tasks), one in-memory
//! store with DynamoDB's semantics, one in-memory SQS queue, producers that
//! send notifications through the queue and through `IngestS3Events` on any
//! replica, and subscribers that follow every watch from any replica and
//! resume elsewhere when theirs goes. All of it runs in one process on one
//! current-thread tokio runtime with a paused clock, so minutes of cluster
//! time take milliseconds and a seed fixes the workload, the clock skews and
//! the faults (kill and restart, stalls longer than a lease, a replica cut
//! off from the store, slow or failing store calls, redelivery bursts).
//! [`checker`] then judges the run's history against the invariants.
//!
//! Seeds: `STREAMWATCH_SIM_SEEDS=n` runs n per test (default 250, four
//! tests of quiet-period watches and one with polling ones), plus the seeds
//! in [`FIXED`]; `STREAMWATCH_SIM_SEED=s` runs seed s alone, logging. A
//! failing seed is printed with the command that replays it, and a seed
//! plays one history: the seed fixes tokio's RNG too (`select!` and the
//! watch channel draw from it; see `.cargo/config.toml`), and what the
//! replicas iterate over on the way to the store is kept in ordered maps.

mod checker;
mod crash;
mod faults;
mod queue;
mod schedule;
mod workload;
mod world;

use std::time::Duration;

use self::world::Rules;

/// Seeds that still break an invariant, with what they show (a part of the
/// checker's message); each must go on breaking it until fixed, and then
/// leave this list.
const OPEN: &[(u64, &str)] = &[];

/// Seeds past the usual range that once broke an invariant, run with it:
/// each fails on the code before its fix (with the workload as it stood).
/// 1153 and 5000: a fenced write under a lease its replica had lost and
/// taken again made the replica stop observing the shard it held again, and
/// two watches never completed. 2314: a stream stuck reading the log of a
/// killed replica never ended.
const FIXED: &[u64] = &[1153, 5000, 2314];

/// `STREAMWATCH_SIM_SEED`, when set.
fn one_seed() -> Option<u64> {
    let one = std::env::var("STREAMWATCH_SIM_SEED").ok()?;
    Some(one.parse().expect("STREAMWATCH_SIM_SEED is a number"))
}

/// Seeds per test: `STREAMWATCH_SIM_SEEDS`, 250 by default.
fn per_test() -> u64 {
    std::env::var("STREAMWATCH_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(250)
}

/// The seeds each of the four tests of quiet-period watches runs: ranges
/// that do not overlap, and the [`FIXED`] seeds past them.
fn seeds(part: u64) -> Vec<u64> {
    if let Some(seed) = one_seed() {
        return if seed % 4 == part { vec![seed] } else { vec![] };
    }
    let per_part = per_test();
    let fixed = FIXED
        .iter()
        .filter(|s| *s % 4 == part && **s >= per_part * 4);
    (0..per_part)
        .map(|i| i * 4 + part)
        .chain(fixed.copied())
        .collect()
}

fn run_part(part: u64) {
    run_seeds(
        &seeds(part),
        Rules::Quiet,
        &format!("seeds_{part}_mod_4_hold_every_invariant"),
    );
}

/// Runs `seeds` with `rules`; `test` names the test, for the replay command.
fn run_seeds(seeds: &[u64], rules: Rules, test: &str) {
    let verbose = std::env::var("STREAMWATCH_SIM_SEED").is_ok();
    if verbose && std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let started = std::time::Instant::now();
    let mut simulated = Duration::ZERO;
    let mut takeovers = Vec::new();
    for &seed in seeds {
        let history = world::run(seed, rules, verbose);
        simulated += history.simulated;
        if let Some((_, what)) = OPEN.iter().find(|(s, _)| *s == seed) {
            let violation = checker::check(&history)
                .expect_err("a seed listed as open holds every invariant now: take it off OPEN");
            assert!(
                violation.contains(what),
                "open seed {seed} broke another invariant: {violation}"
            );
            continue;
        }
        if verbose {
            use std::hash::{Hash, Hasher};
            let mut digest = std::hash::DefaultHasher::new();
            history.digest().hash(&mut digest);
            eprintln!("seed {seed}: history {:016x}", digest.finish());
            for l in &history.leases {
                eprintln!(
                    "{:?}: shard {} to {:?} (version {})",
                    l.at - history.started,
                    l.shard,
                    l.owner,
                    l.version
                );
            }
        }
        takeovers.extend(
            checker::takeover_times(&history)
                .into_iter()
                .filter_map(|(.., took)| took),
        );
        if let Err(violation) = checker::check(&history) {
            panic!(
                "seed {seed} broke an invariant: {violation}\nfaults: {:#?}\n\
                 replay: STREAMWATCH_SIM_SEED={seed} cargo test -p streamwatch-server --test integration \
                 simulation::{test} -- --nocapture",
                history.faults
            );
        }
    }
    takeovers.sort();
    let at = |q: f64| {
        takeovers
            .get(((takeovers.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, Duration::as_secs_f64)
    };
    eprintln!(
        "simulated {} seeds ({:.0} s of cluster time) in {:.1} s; {} takeovers: \
         median {:.1} s, p99 {:.1} s, max {:.1} s (bound {:?})",
        seeds.len(),
        simulated.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        takeovers.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        checker::takeover_bound()
    );
}

#[test]
fn seeds_0_mod_4_hold_every_invariant() {
    run_part(0);
}

#[test]
fn seeds_1_mod_4_hold_every_invariant() {
    run_part(1);
}

#[test]
fn seeds_2_mod_4_hold_every_invariant() {
    run_part(2);
}

#[test]
fn seeds_3_mod_4_hold_every_invariant() {
    run_part(3);
}

#[test]
fn polling_watches_hold_every_invariant_too() {
    let seeds: Vec<u64> = match one_seed() {
        Some(seed) => vec![seed],
        None => (0..per_test()).collect(),
    };
    run_seeds(
        &seeds,
        Rules::PollingToo,
        "polling_watches_hold_every_invariant_too",
    );
}

/// Seeds that played two histories in one run of three or more: the first
/// seven while tokio's RNG was unseeded, the last four (with it seeded)
/// while the lease task, the observer, the hub and the routing table
/// iterated hash maps, whose order differs per process and per map.
const ONCE_TWO_HISTORIES: &[(u64, Rules)] = &[
    (436, Rules::Quiet),
    (638, Rules::Quiet),
    (1078, Rules::Quiet),
    (1136, Rules::Quiet),
    (301, Rules::PollingToo),
    (723, Rules::PollingToo),
    (883, Rules::PollingToo),
    (57, Rules::PollingToo),
    (905, Rules::PollingToo),
    (917, Rules::PollingToo),
    (975, Rules::PollingToo),
];

#[test]
fn a_seed_replays_the_same_history() {
    if !cfg!(tokio_unstable) {
        panic!(
            "built without `--cfg tokio_unstable` (set in .cargo/config.toml; a RUSTFLAGS \
             variable replaces it): tokio's RNG cannot be seeded, so a seed can play two histories"
        );
    }
    for &(seed, rules) in ONCE_TWO_HISTORIES {
        let first = world::run(seed, rules, false).digest();
        for _ in 0..2 {
            assert_eq!(
                first,
                world::run(seed, rules, false).digest(),
                "seed {seed} ran two different histories"
            );
        }
    }
}
