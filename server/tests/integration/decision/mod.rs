//! Decision quality: producer traces as data, replayed against a policy
//! through the pure [`policy::evaluate`] with time simulated exactly, and
//! scored against the truth each trace knows.
//!
//! A trace says when each object lands; the delivery model adds each
//! notification's delay (seconds, with rare one-minute outliers) and
//! redelivered duplicates. The server's replay engine
//! ([`streamwatch_server::replay`], the one ReplayWatch runs) plays each run
//! against each policy. Everything comes from a seed: every run is identical.

#![allow(dead_code)] // the test and the table use different parts

use std::{collections::HashSet, fmt::Write as _, time::Duration};

use streamwatch_server::{
    clock::Timestamp,
    policy, replay,
    watch::{ActivityGaps, DelaySchedule, Policy, Rule, SeriesPrior},
};

/// Where simulated time starts; the watch starts here, objects 5s later.
pub const T0: i64 = 1_800_000_000_000;
/// Every scored policy reopens on late data for this long, so a premature
/// completion is seen (REOPENED) and the final completion can be measured.
pub const LATE_WINDOW: Duration = Duration::from_secs(6 * 3600);

/// The seeded variants of each trace the table and the test score.
pub const TABLE_SEEDS: std::ops::Range<u64> = 0..40;
/// Seeds never looked at while choosing the adaptive defaults.
pub const HOLDOUT_SEEDS: std::ops::Range<u64> = 1000..1040;

/// Seconds as f64 (trace generation) to whole milliseconds.
fn ms(secs: f64) -> i64 {
    (secs * 1000.0).round() as i64
}

fn uniform(rng: &mut fastrand::Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.f64()
}

fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.f64()).ln()
}

/// A producer pattern: when each object lands, in seconds after the watch started.
pub struct Trace {
    pub name: &'static str,
    pub shape: &'static str,
    /// Known to defeat every silence-based rule shorter than its gap (see DECISIONS.md).
    pub defeats_silence: bool,
    generate: fn(&mut fastrand::Rng) -> Vec<f64>,
}

/// Objects every `gap` seconds (times `jitter` either way) from `start`.
fn steady(rng: &mut fastrand::Rng, start: f64, n: usize, gap: f64, jitter: f64) -> Vec<f64> {
    let mut t = start;
    (0..n)
        .map(|_| {
            t += gap * uniform(rng, 1.0 - jitter, 1.0 + jitter);
            t
        })
        .collect()
}

fn paused(rng: &mut fastrand::Rng, pause: (f64, f64)) -> Vec<f64> {
    let mut lands = steady(rng, 5.0, 200, 1.0, 0.3);
    let resume = lands[199] + uniform(rng, pause.0, pause.1);
    lands.extend(steady(rng, resume, 200, 1.0, 0.3));
    lands
}

pub const SUITE: &[Trace] = &[
    Trace {
        name: "steady",
        shape: "one producer, 600 objects every 0.5s ±20%",
        defeats_silence: false,
        generate: |rng| steady(rng, 5.0, 600, 0.5, 0.2),
    },
    Trace {
        name: "bursty",
        shape: "15 bursts of 20-60 objects 50ms apart, 20-45s between bursts",
        defeats_silence: false,
        generate: |rng| {
            let mut lands = Vec::new();
            let mut t = 5.0;
            for _ in 0..15 {
                let n = rng.usize(20..=60);
                lands.extend(steady(rng, t, n, 0.05, 0.5));
                t = lands[lands.len() - 1] + uniform(rng, 20.0, 45.0);
            }
            lands
        },
    },
    Trace {
        name: "slow_start",
        shape: "12 objects 5-15s apart, then 800 objects every 0.1s ±50%",
        defeats_silence: false,
        generate: |rng| {
            let mut t = 5.0;
            let mut lands: Vec<f64> = (0..12)
                .map(|_| {
                    t += uniform(rng, 5.0, 15.0);
                    t
                })
                .collect();
            lands.extend(steady(rng, t, 800, 0.1, 0.5));
            lands
        },
    },
    Trace {
        name: "pause_1m",
        shape: "200 objects every 1s ±30%, a 50-70s pause, 200 more",
        defeats_silence: false,
        generate: |rng| paused(rng, (50.0, 70.0)),
    },
    Trace {
        name: "pause_5m",
        shape: "200 objects every 1s ±30%, a 270-330s pause, 200 more",
        defeats_silence: true,
        generate: |rng| paused(rng, (270.0, 330.0)),
    },
    Trace {
        name: "late_pause",
        shape: "100 objects every 2s ±30%, then a 40-60s pause (longer than any gap before it), 20 more",
        defeats_silence: false,
        generate: |rng| {
            let mut lands = steady(rng, 5.0, 100, 2.0, 0.3);
            let resume = lands[99] + uniform(rng, 40.0, 60.0);
            lands.extend(steady(rng, resume, 20, 2.0, 0.3));
            lands
        },
    },
    Trace {
        name: "many_producers",
        shape: "8 producers, one object every 0.2-8s each, finishing between 1 and 10 minutes",
        defeats_silence: false,
        generate: |rng| {
            let mut lands = Vec::new();
            for gap in [0.2, 0.35, 0.6, 1.0, 1.7, 3.0, 5.0, 8.0] {
                let start = 5.0 + uniform(rng, 0.0, 30.0);
                let end = uniform(rng, 60.0, 600.0);
                let n = ((end - start) / gap).max(1.0) as usize;
                lands.extend(steady(rng, start, n, gap, 0.3));
            }
            lands.sort_by(f64::total_cmp);
            lands
        },
    },
    Trace {
        name: "firehose_60s",
        shape: "2 delivery streams, each one object per 60s buffer interval ±2s, 25 each",
        defeats_silence: false,
        generate: |rng| {
            let mut lands = Vec::new();
            for _ in 0..2 {
                let phase = 5.0 + uniform(rng, 0.0, 60.0);
                lands.extend(steady(rng, phase, 25, 60.0, 2.0 / 60.0));
            }
            lands.sort_by(f64::total_cmp);
            lands
        },
    },
    Trace {
        name: "trickle",
        shape: "80 objects at random, 10s apart on average (Poisson)",
        defeats_silence: false,
        generate: |rng| {
            let mut t = 5.0;
            (0..80)
                .map(|_| {
                    t += exponential(rng, 10.0);
                    t
                })
                .collect()
        },
    },
];

/// The delivery model: notification delay 0.5-3s; one notification in 500
/// about a minute late (45-75s); 3% delivered twice, 1-35s apart.
pub const DELIVERY: &str = "notification delay 0.5-3s; 1 in 500 delayed 45-75s; \
                            3% redelivered 1-35s later";

#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    pub at_ms: i64,
    pub key: u32,
}

/// One seeded variant of a trace: its deliveries and the truth.
pub struct Run {
    pub trace: &'static str,
    pub seed: u64,
    /// By delivery instant, duplicates included.
    pub deliveries: Vec<Delivery>,
    pub objects: u64,
    /// When each object (by key) was created: what a listing at an instant shows.
    pub lands_ms: Vec<i64>,
    /// When the last object landed: the data set is complete from here on,
    /// and every delay is measured from it.
    pub last_landed_ms: i64,
    /// The longest gap between creations of consecutive objects: a quiet
    /// window in creation time needs to be longer (see [`oracle_ms`]).
    pub longest_creation_gap_ms: i64,
    /// When the last object's (first) notification was delivered: the data
    /// set is complete, as far as any watcher can know, from here on.
    pub done_ms: i64,
    /// The longest silence between first deliveries of distinct objects
    /// (every scored policy has `min_objects` 1, so the wait for the first
    /// object is no silence that could complete it).
    pub longest_silence_ms: i64,
}

impl Trace {
    pub fn run(&self, seed: u64) -> Run {
        let salt = self.name.bytes().fold(0u64, |h, b| {
            h.wrapping_mul(0x100_0000_01b3).wrapping_add(u64::from(b))
        });
        let mut rng = fastrand::Rng::with_seed(seed ^ salt);
        let lands = (self.generate)(&mut rng);
        let mut deliveries = Vec::with_capacity(lands.len() + lands.len() / 16);
        for (key, land) in lands.iter().enumerate() {
            let delay = if rng.u32(0..500) == 0 {
                uniform(&mut rng, 45.0, 75.0)
            } else {
                uniform(&mut rng, 0.5, 3.0)
            };
            let first = T0 + ms(land + delay);
            deliveries.push(Delivery {
                at_ms: first,
                key: key as u32,
            });
            if rng.f64() < 0.03 {
                deliveries.push(Delivery {
                    at_ms: first + ms(uniform(&mut rng, 1.0, 35.0)),
                    key: key as u32,
                });
            }
        }
        deliveries.sort_by_key(|d| (d.at_ms, d.key));
        let mut seen = HashSet::new();
        let mut firsts = Vec::with_capacity(lands.len());
        for d in &deliveries {
            if seen.insert(d.key) {
                firsts.push(d.at_ms);
            }
        }
        let longest_silence_ms = firsts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let lands_ms: Vec<i64> = lands.iter().map(|t| T0 + ms(*t)).collect();
        let mut created = lands_ms.clone();
        created.sort_unstable();
        Run {
            trace: self.name,
            seed,
            objects: lands.len() as u64,
            longest_creation_gap_ms: created.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0),
            lands_ms,
            last_landed_ms: T0 + ms(lands.iter().copied().fold(0.0, f64::max)),
            done_ms: *firsts.last().unwrap_or(&T0),
            longest_silence_ms,
            deliveries,
        }
    }
}

/// What a policy did on one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub first_completion_ms: Option<i64>,
    /// The object count the first completion reported.
    pub first_completion_objects: u64,
    pub final_completion_ms: Option<i64>,
    pub reopens: u32,
    /// ListObjectsV2 requests the confirming listings made (1,000 keys each).
    pub list_requests: u64,
    pub listings: u64,
}

impl Outcome {
    /// The first completion counted fewer objects than the run creates:
    /// post-processing would have started on partial data.
    pub fn false_completion(&self, run: &Run) -> bool {
        self.first_completion_ms.is_some() && self.first_completion_objects < run.objects
    }

    /// From the last object's creation to the completion that stood.
    pub fn delay_ms(&self, run: &Run) -> Option<i64> {
        self.final_completion_ms.map(|t| t - run.last_landed_ms)
    }
}

impl Run {
    /// The run as the replay engine takes it.
    pub fn history(&self) -> replay::History {
        let arrivals = self
            .deliveries
            .iter()
            .map(|d| replay::Arrival {
                at: Timestamp::from_millis(d.at_ms),
                object: d.key,
            })
            .collect();
        let created = self
            .lands_ms
            .iter()
            .map(|t| Timestamp::from_millis(*t))
            .collect();
        replay::History::new(Timestamp::from_millis(T0), created, arrivals)
    }
}

/// Replays `run` against `policy` (its late window set to [`LATE_WINDOW`])
/// with the server's replay engine, the one ReplayWatch runs.
pub fn replay(policy: &Policy, run: &Run) -> Outcome {
    let policy = Policy {
        late_window: Some(LATE_WINDOW),
        ..policy.clone()
    };
    let o = replay::replay(&policy, &run.history());
    assert!(!o.truncated, "{}#{} did not settle", run.trace, run.seed);
    Outcome {
        first_completion_ms: o.first_completion.map(Timestamp::as_millis),
        first_completion_objects: o.first_completion_objects,
        final_completion_ms: o.final_completion.map(Timestamp::as_millis),
        reopens: o.reopens,
        list_requests: o.list_requests,
        listings: o.listings,
    }
}

/// A policy to score, built per run (expected_count needs the run's true
/// count). Every one has `min_objects` 1, as a watch started ahead of its
/// data should: waiting for the first object is not what is scored.
pub struct Candidate {
    pub name: String,
    pub build: Box<dyn Fn(&Run) -> Policy + Sync>,
}

fn candidate(name: impl Into<String>, rule: Rule) -> Candidate {
    Candidate {
        name: name.into(),
        build: Box::new(move |_| Policy {
            rule: rule.clone(),
            min_objects: 1,
            ..Policy::default()
        }),
    }
}

/// The same, confirming each completion with a listing (`reconcile`).
fn listing(name: impl Into<String>, rule: Rule) -> Candidate {
    Candidate {
        name: format!("{} + listing", name.into()),
        build: Box::new(move |_| Policy {
            rule: rule.clone(),
            min_objects: 1,
            reconcile: true,
            ..Policy::default()
        }),
    }
}

pub const ADAPTIVE_DEFAULTS: &str = "adaptive (defaults)";
pub const ADAPTIVE_LISTING: &str = "adaptive (defaults) + listing";

pub fn quiet_name(window_secs: u64) -> String {
    format!(
        "quiet_period {}",
        policy::human(Duration::from_secs(window_secs))
    )
}

/// Every policy the table scores.
pub fn candidates() -> Vec<Candidate> {
    let s = Duration::from_secs;
    let mut all = Vec::new();
    for (schedule, name, delay, repeats) in [
        (DelaySchedule::Fixed, "fixed", 10, 3),
        (DelaySchedule::Fixed, "fixed", 30, 3),
        (DelaySchedule::Fixed, "fixed", 60, 2),
        (DelaySchedule::Divide, "divide", 30, 3),
        (DelaySchedule::Divide, "divide", 60, 5),
        (DelaySchedule::Exponential, "exponential", 60, 3),
        (DelaySchedule::Exponential, "exponential", 300, 5),
    ] {
        all.push(candidate(
            format!("polling {name} {delay}s x{repeats}"),
            Rule::Polling {
                delay: s(delay),
                max_repeats: repeats,
                schedule,
            },
        ));
    }
    for window in [5, 15, 30, 60, 120, 300, 600] {
        all.push(candidate(
            quiet_name(window),
            Rule::QuietPeriod { window: s(window) },
        ));
    }
    all.push(Candidate {
        name: "expected_count (true count known)".into(),
        build: Box::new(|run| Policy {
            rule: Rule::ExpectedCount {
                objects: run.objects,
                quiet_window: None,
            },
            min_objects: 1,
            ..Policy::default()
        }),
    });
    all.push(candidate(ADAPTIVE_DEFAULTS, Rule::adaptive()));
    all.push(listing(ADAPTIVE_DEFAULTS, Rule::adaptive_confirmed()));
    let Rule::Adaptive {
        max_window,
        quantile,
        min_window: confirmed_min,
        ..
    } = Rule::adaptive_confirmed()
    else {
        unreachable!("Rule::adaptive_confirmed() is adaptive");
    };
    all.push(listing(
        "adaptive min_window 75s, safety_factor 3",
        Rule::Adaptive {
            min_window: confirmed_min,
            max_window,
            quantile,
            safety_factor: 3.0,
        },
    ));
    all.push(listing(quiet_name(75), Rule::QuietPeriod { window: s(75) }));
    let Rule::Adaptive {
        max_window,
        quantile,
        ..
    } = Rule::adaptive()
    else {
        unreachable!("Rule::adaptive() is adaptive");
    };
    for (min, factor) in [(100, 3.0), (30, 1.5)] {
        all.push(candidate(
            format!("adaptive min_window {min}s, safety_factor {factor}"),
            Rule::Adaptive {
                min_window: s(min),
                max_window,
                quantile,
                safety_factor: factor,
            },
        ));
    }
    all
}

/// Every seeded variant of every trace.
pub fn runs(seeds: std::ops::Range<u64>) -> Vec<Run> {
    SUITE
        .iter()
        .flat_map(|t| seeds.clone().map(move |seed| t.run(seed)))
        .collect()
}

/// How one policy did over a set of runs.
#[derive(Clone, Debug)]
pub struct Score {
    pub name: String,
    pub runs: usize,
    pub false_completions: usize,
    pub reopens: u32,
    /// Detection delays after the last delivery, ms, ascending.
    pub delays_ms: Vec<i64>,
    /// False completions per trace, in [`SUITE`] order.
    pub false_by_trace: Vec<usize>,
    /// p99 delay per trace, in [`SUITE`] order.
    pub p99_by_trace: Vec<Option<i64>>,
    /// ListObjectsV2 requests the confirming listings made, and the objects
    /// of the runs: requests per 1,000 objects is their ratio.
    pub list_requests: u64,
    pub objects: u64,
    /// Listings (each of one request per 1,000 keys) per completion.
    pub listings: u64,
}

/// The nearest-rank `p` quantile of ascending values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl Score {
    pub fn p50(&self) -> Option<i64> {
        percentile(&self.delays_ms, 0.50)
    }

    pub fn p99(&self) -> Option<i64> {
        percentile(&self.delays_ms, 0.99)
    }

    /// ListObjectsV2 requests per 1,000 objects counted.
    pub fn lists_per_1000(&self) -> f64 {
        self.list_requests as f64 * 1000.0 / self.objects.max(1) as f64
    }
}

pub fn score(candidate: &Candidate, runs: &[&Run]) -> Score {
    let mut s = Score {
        name: candidate.name.clone(),
        runs: runs.len(),
        false_completions: 0,
        reopens: 0,
        delays_ms: Vec::new(),
        false_by_trace: vec![0; SUITE.len()],
        p99_by_trace: vec![None; SUITE.len()],
        list_requests: 0,
        objects: 0,
        listings: 0,
    };
    let mut by_trace = vec![Vec::new(); SUITE.len()];
    for run in runs {
        let outcome = replay(&(candidate.build)(run), run);
        let t = SUITE.iter().position(|t| t.name == run.trace).unwrap();
        if outcome.false_completion(run) {
            s.false_completions += 1;
            s.false_by_trace[t] += 1;
        }
        s.reopens += outcome.reopens;
        s.list_requests += outcome.list_requests;
        s.listings += outcome.listings;
        s.objects += run.objects;
        let delay = outcome
            .delay_ms(run)
            .unwrap_or_else(|| panic!("{} never completed {}#{}", s.name, run.trace, run.seed));
        s.delays_ms.push(delay);
        by_trace[t].push(delay);
    }
    s.delays_ms.sort_unstable();
    for (t, delays) in by_trace.iter_mut().enumerate() {
        delays.sort_unstable();
        s.p99_by_trace[t] = percentile(delays, 0.99);
    }
    s
}

/// The shortest fixed window, in creation time, with no false completion on
/// `runs`: longer than every gap between two creations.
pub fn oracle_ms(runs: &[&Run]) -> i64 {
    runs.iter()
        .map(|r| r.longest_creation_gap_ms)
        .max()
        .unwrap_or(0)
        + 1
}

/// Runs whose trace is not one known to defeat silence-based rules.
pub fn target(runs: &[Run]) -> Vec<&Run> {
    runs.iter()
        .filter(|r| !SUITE.iter().any(|t| t.name == r.trace && t.defeats_silence))
        .collect()
}

fn secs(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => format!("{:.1}", ms as f64 / 1000.0),
        None => "-".into(),
    }
}

/// The whole report as markdown (the target suite, then every trace), and
/// the scores over the target suite it shows first.
pub fn table(seeds: std::ops::Range<u64>) -> (String, Vec<Score>) {
    let all = runs(seeds.clone());
    let target_runs = target(&all);
    let every: Vec<&Run> = all.iter().collect();
    let candidates = candidates();
    let scores: Vec<Score> = candidates.iter().map(|c| score(c, &target_runs)).collect();
    let scores_all: Vec<Score> = candidates.iter().map(|c| score(c, &every)).collect();
    let oracle = oracle_ms(&target_runs);
    let arrival_oracle = target_runs
        .iter()
        .map(|r| r.longest_silence_ms)
        .max()
        .unwrap_or(0)
        + 1;

    let mut out = String::new();
    let n_target = SUITE.iter().filter(|t| !t.defeats_silence).count();
    writeln!(
        out,
        "Target suite: {n_target} traces x {} seeds = {} runs (every trace but those marked \
         *defeats silence*). Delays in seconds after the last object was created; p50/p99 \
         pooled over all runs. LIST: ListObjectsV2 requests of the confirming listings per \
         1,000 objects, and listings per run.\n",
        seeds.end - seeds.start,
        target_runs.len()
    )
    .unwrap();
    out.push_str(
        "| policy | false completions | reopens | p50 delay | p99 delay | max delay | LIST per 1k objects | listings per run |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in &scores {
        writeln!(
            out,
            "| {} | {} / {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            s.name,
            s.false_completions,
            s.runs,
            s.reopens,
            secs(s.p50()),
            secs(s.p99()),
            secs(s.delays_ms.last().copied()),
            s.lists_per_1000(),
            s.listings as f64 / s.runs as f64,
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nThe oracle, known only in hindsight: the shortest fixed window with no false \
         completion on these runs. Counted in creation time (what a rule confirmed by a \
         listing needs: longest gap between two creations + 1ms): {}s; counted in arrival \
         time (what a rule without a listing needs, delivery delay included: longest silence \
         between first deliveries + 1ms): {}s.\n",
        secs(Some(oracle)),
        secs(Some(arrival_oracle))
    )
    .unwrap();

    out.push_str("False completions per trace (all traces):\n\n| policy |");
    for t in SUITE {
        write!(out, " {} |", t.name).unwrap();
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(SUITE.len()));
    out.push('\n');
    for s in &scores_all {
        write!(out, "| {} |", s.name).unwrap();
        for n in &s.false_by_trace {
            write!(out, " {n} |").unwrap();
        }
        out.push('\n');
    }

    out.push_str("\np99 delay per trace, seconds (all traces), under each trace's oracle in creation time:\n\n| policy |");
    for t in SUITE {
        write!(out, " {} |", t.name).unwrap();
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(SUITE.len()));
    out.push_str("\n| *oracle* |");
    for t in SUITE {
        let runs: Vec<&Run> = all.iter().filter(|r| r.trace == t.name).collect();
        write!(out, " *{}* |", secs(Some(oracle_ms(&runs)))).unwrap();
    }
    out.push('\n');
    for s in &scores_all {
        write!(out, "| {} |", s.name).unwrap();
        for p in &s.p99_by_trace {
            write!(out, " {} |", secs(*p)).unwrap();
        }
        out.push('\n');
    }
    (out, scores)
}

/// Runs in each series of the series suite; runs from [`SERIES_SCORED_FROM`]
/// on (0-based) have three or more earlier runs and are scored.
pub const SERIES_LEN: u64 = 8;
pub const SERIES_SCORED_FROM: usize = 3;

impl Run {
    /// The run without its `m` last created objects (keys stay dense: the
    /// traces number objects in creation order).
    pub fn without_last(&self, m: usize) -> Run {
        let keep = self.lands_ms.len().saturating_sub(m).max(1);
        let lands: Vec<i64> = self.lands_ms[..keep].to_vec();
        let deliveries = self
            .deliveries
            .iter()
            .copied()
            .filter(|d| (d.key as usize) < keep)
            .collect();
        Run::of(self.trace, self.seed, lands, deliveries)
    }

    /// The run with `extra` more objects, the first `pause_ms` after its
    /// last, then one a second, each notified a second after it lands.
    pub fn with_more(&self, extra: usize, pause_ms: i64) -> Run {
        let mut lands = self.lands_ms.clone();
        let mut deliveries = self.deliveries.clone();
        let last = lands.iter().copied().max().unwrap_or(T0);
        for i in 0..extra {
            let at = last + pause_ms + 1000 * i as i64;
            deliveries.push(Delivery {
                at_ms: at + 1000,
                key: lands.len() as u32,
            });
            lands.push(at);
        }
        deliveries.sort_by_key(|d| (d.at_ms, d.key));
        Run::of(self.trace, self.seed, lands, deliveries)
    }

    /// A run from its creations and deliveries, its truths derived.
    fn of(trace: &'static str, seed: u64, lands_ms: Vec<i64>, deliveries: Vec<Delivery>) -> Run {
        let mut seen = HashSet::new();
        let firsts: Vec<i64> = deliveries
            .iter()
            .filter(|d| seen.insert(d.key))
            .map(|d| d.at_ms)
            .collect();
        let mut created = lands_ms.clone();
        created.sort_unstable();
        Run {
            trace,
            seed,
            objects: lands_ms.len() as u64,
            longest_creation_gap_ms: created.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0),
            last_landed_ms: created.last().copied().unwrap_or(T0),
            done_ms: firsts.iter().copied().max().unwrap_or(T0),
            longest_silence_ms: firsts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0),
            lands_ms,
            deliveries,
        }
    }
}

/// What StartWatch gives a watch of a series whose earlier runs (oldest
/// first) are `earlier`: the newest five, as the server reads them.
pub fn prior(earlier: &[Run]) -> SeriesPrior {
    let newest: Vec<(u64, u64)> = earlier
        .iter()
        .rev()
        .take(streamwatch_server::service::SERIES_RUNS)
        .map(|r| {
            let mut created = r.lands_ms.clone();
            created.sort_unstable();
            let mut gaps = ActivityGaps::default();
            for w in created.windows(2) {
                gaps.add(Duration::from_millis((w[1] - w[0]) as u64));
            }
            (
                r.objects,
                gaps.quantile(1.0).map_or(0, |d| d.as_millis() as u64),
            )
        })
        .collect();
    SeriesPrior::of(earlier[0].trace.to_owned(), &newest)
}

/// The policy the series suite scores: adaptive at its defaults with a listing.
fn series_policy() -> Policy {
    Policy {
        rule: Rule::adaptive_confirmed(),
        min_objects: 1,
        reconcile: true,
        late_window: Some(LATE_WINDOW),
        ..Policy::default()
    }
}

/// How the adaptive rule with a listing did on a set of scored series runs,
/// without history and with the earlier runs' history.
#[derive(Clone, Debug, Default)]
pub struct SeriesScore {
    pub runs: usize,
    pub repeats: bool,
    pub oracle_ms: i64,
    pub false_alone: usize,
    pub false_learnt: usize,
    pub delays_alone: Vec<i64>,
    pub delays_learnt: Vec<i64>,
    /// Objects the scored runs created, and the ListObjectsV2 requests of
    /// the listings without history and with it (probes included).
    pub objects: u64,
    pub list_requests_alone: u64,
    pub list_requests_learnt: u64,
    /// Listings without history and with it, and how many of the latter were probes.
    pub listings_alone: u64,
    pub listings_learnt: u64,
    pub probes_learnt: u64,
}

impl SeriesScore {
    /// The scores of several sets of runs, pooled (counts and delays only).
    pub fn pooled<'a>(scores: impl IntoIterator<Item = &'a SeriesScore>) -> SeriesScore {
        let mut all = SeriesScore::default();
        for s in scores {
            all.runs += s.runs;
            all.false_alone += s.false_alone;
            all.false_learnt += s.false_learnt;
            all.objects += s.objects;
            all.list_requests_alone += s.list_requests_alone;
            all.list_requests_learnt += s.list_requests_learnt;
            all.listings_alone += s.listings_alone;
            all.listings_learnt += s.listings_learnt;
            all.probes_learnt += s.probes_learnt;
        }
        all
    }

    /// ListObjectsV2 requests per 1,000 objects, without history and with it.
    pub fn lists_per_1000(&self) -> (f64, f64) {
        let per = |n: u64| n as f64 * 1000.0 / self.objects.max(1) as f64;
        (
            per(self.list_requests_alone),
            per(self.list_requests_learnt),
        )
    }
}

/// Scores the runs `scored` (indexes) of each of `series` (oldest run
/// first), each given the runs before it.
pub fn score_series(series: &[Vec<Run>], scored: std::ops::Range<usize>) -> SeriesScore {
    let mut s = SeriesScore {
        repeats: true,
        ..SeriesScore::default()
    };
    let mut runs_scored = Vec::new();
    for runs in series {
        s.repeats &= runs.iter().all(|r| r.objects == runs[0].objects);
        for k in scored.clone().filter(|k| *k < runs.len()) {
            let run = &runs[k];
            let history = run.history();
            let alone = replay::replay(&series_policy(), &history);
            let learnt =
                replay::replay_in_series(&series_policy(), &history, Some(prior(&runs[..k])));
            s.objects += run.objects;
            s.list_requests_alone += alone.list_requests;
            s.list_requests_learnt += learnt.list_requests;
            s.listings_alone += alone.listings;
            s.listings_learnt += learnt.listings;
            s.probes_learnt += learnt.probes;
            for (o, false_n, delays) in [
                (alone, &mut s.false_alone, &mut s.delays_alone),
                (learnt, &mut s.false_learnt, &mut s.delays_learnt),
            ] {
                if o.early(&history) {
                    *false_n += 1;
                }
                delays.extend(o.delay_ms(&history));
            }
            runs_scored.push(run);
        }
    }
    s.runs = runs_scored.len();
    s.oracle_ms = oracle_ms(&runs_scored);
    s.delays_alone.sort_unstable();
    s.delays_learnt.sort_unstable();
    s
}

/// The series of `trace` for each of `seeds`: [`SERIES_LEN`] runs, as
/// generated, or with a seeded 1-10% of each run's last objects dropped
/// (`vary`), so that the count varies.
pub fn series_of(trace: &Trace, seeds: std::ops::Range<u64>, vary: bool) -> Vec<Vec<Run>> {
    seeds
        .map(|seed| {
            (0..SERIES_LEN)
                .map(|k| {
                    let run = trace.run(seed * 100 + k);
                    if !vary {
                        return run;
                    }
                    let mut rng = fastrand::Rng::with_seed(seed * 100 + k);
                    let n = run.objects as usize;
                    run.without_last(rng.usize(1..=(n / 10).max(1)))
                })
                .collect()
        })
        .collect()
}

/// A series whose count repeats for five runs and then grows: steady runs
/// cut to 500 objects, and a sixth with 40 more, the first `pause_ms` after
/// the 500th.
pub fn series_that_grows(seeds: std::ops::Range<u64>, pause_ms: i64) -> Vec<Vec<Run>> {
    let steady = SUITE.iter().find(|t| t.name == "steady").expect("steady");
    seeds
        .map(|seed| {
            (0..6)
                .map(|k| {
                    let run = steady.run(seed * 100 + k);
                    let cut = run.without_last(run.objects as usize - 500);
                    if k == 5 {
                        cut.with_more(40, pause_ms)
                    } else {
                        cut
                    }
                })
                .collect()
        })
        .collect()
}

pub const GROWS: &str = "steady, count repeats 5 runs then grows after 20s";
pub const GROWS_AT_ONCE: &str = "steady, count repeats 5 runs then grows 1s later";

/// The series suite as markdown, and its scores by (trace, variant).
pub fn series_table(seeds: std::ops::Range<u64>) -> (String, Vec<(String, SeriesScore)>) {
    let mut scores = Vec::new();
    for trace in SUITE {
        for (variant, vary) in [("as generated", false), ("count varies", true)] {
            let series = series_of(trace, seeds.clone(), vary);
            let s = score_series(&series, SERIES_SCORED_FROM..SERIES_LEN as usize);
            scores.push((format!("{} ({variant})", trace.name), s));
        }
    }
    scores.push((
        GROWS.into(),
        score_series(&series_that_grows(seeds.clone(), 20_000), 5..6),
    ));
    scores.push((
        GROWS_AT_ONCE.into(),
        score_series(&series_that_grows(seeds.clone(), 1_000), 5..6),
    ));
    let mut out = String::new();
    writeln!(
        out,
        "Series suite: each series is {SERIES_LEN} runs of one trace (seeds {}-{} x 100 + run); \
         runs 4-{SERIES_LEN} are scored given the runs before them (the newest five, as StartWatch \
         reads them). The policy: adaptive at its defaults with a listing, without history and \
         with it. Delays in seconds after the last creation. LIST: ListObjectsV2 requests per \
         1,000 objects (every listing, probes included); probes: the listings with history \
         that were probes.\n",
        seeds.start,
        seeds.end - 1
    )
    .unwrap();
    out.push_str("| series | count | runs | oracle | false, no history | false, history | p99, no history | p99, history | LIST per 1k, no history | LIST per 1k, history | probes |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (name, s) in &scores {
        let (lists_alone, lists_learnt) = s.lists_per_1000();
        writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {lists_alone:.2} | {lists_learnt:.2} | {} / {} |",
            if s.repeats { "repeats" } else { "varies" },
            s.runs,
            secs(Some(s.oracle_ms)),
            s.false_alone,
            s.false_learnt,
            secs(percentile(&s.delays_alone, 0.99)),
            secs(percentile(&s.delays_learnt, 0.99)),
            s.probes_learnt,
            s.listings_learnt,
        )
        .unwrap();
    }
    let pools = [
        ("all", SeriesScore::pooled(scores.iter().map(|(_, s)| s))),
        (
            "the series whose count repeats",
            SeriesScore::pooled(scores.iter().filter(|(_, s)| s.repeats).map(|(_, s)| s)),
        ),
    ];
    out.push('\n');
    for (which, pool) in pools {
        let (alone, learnt) = pool.lists_per_1000();
        writeln!(
            out,
            "Pooled over {which} ({} scored runs): {alone:.2} ListObjectsV2 requests per 1,000 \
             objects without history, {learnt:.2} with it; {:.2} and {:.2} listings per run \
             ({} probes).",
            pool.runs,
            pool.listings_alone as f64 / pool.runs as f64,
            pool.listings_learnt as f64 / pool.runs as f64,
            pool.probes_learnt,
        )
        .unwrap();
    }
    (out, scores)
}
