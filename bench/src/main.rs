//! `streamwatch-bench`: the numbers users choose a completion service by,
//! measured side by side in one run against the real `streamwatch-server`
//! binary (a child process on loopback, SQLite store): unary RPC rate next to
//! a bare tonic server, ingest rate next to parsing alone, memory and CPU per
//! active watch, completion latency after the quiet window, and fan-out to
//! many subscribers. BENCHMARKS.md has the method and the results; `bench/run`
//! is the driver. `--smoke` runs every scenario at a tiny size (CI checks the
//! harness still works; its numbers mean nothing).

mod echo;
mod load;
mod process;
mod report;
mod scenarios;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::report::Report;

/// The allocator `streamwatch-server` runs with, so that the bare tonic
/// server it is measured against is not slowed by a different one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "streamwatch-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every scenario below, in order
    All(Options),
    /// GetWatch requests/s and latency, next to a bare tonic server
    Rpc(Options),
    /// Notifications/s through IngestS3Events into SQLite, next to parsing alone
    Ingest(Options),
    /// Memory and CPU of many ACTIVE quiet-period watches
    Watches(Options),
    /// Delay from the end of the quiet window to COMPLETED at the subscriber
    Completion(Options),
    /// Memory per idle stream and delivery latency to many subscribers of one watch
    Fanout(Options),
    /// The bare tonic server `rpc` compares with (started by `rpc` itself)
    #[command(hide = true)]
    EchoServer(echo::EchoArgs),
}

#[derive(Clone, Debug, Args)]
pub struct Options {
    /// Tiny sizes and one short run: checks the harness works, measures nothing
    #[arg(long)]
    smoke: bool,
    /// Runs of each measurement (the report gives their median, min and max)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also append every raw measurement to this file, one JSON object per line
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

impl Options {
    /// `full` normally, `smoke` with `--smoke`.
    pub fn size<T>(&self, full: T, smoke: T) -> T {
        if self.smoke { smoke } else { full }
    }

    pub fn runs(&self) -> usize {
        if self.smoke { 1 } else { self.runs.max(1) }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Two workers, as the server has: the load and the server share the
    // machine's cores, the same way for every side of a comparison.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (options, scenarios): (Options, &[&str]) = match cli.command {
            Command::EchoServer(args) => return echo::serve(args).await,
            Command::All(o) => (o, &["rpc", "ingest", "watches", "completion", "fanout"]),
            Command::Rpc(o) => (o, &["rpc"]),
            Command::Ingest(o) => (o, &["ingest"]),
            Command::Watches(o) => (o, &["watches"]),
            Command::Completion(o) => (o, &["completion"]),
            Command::Fanout(o) => (o, &["fanout"]),
        };
        let mut report = Report::new(options.out.clone())?;
        for scenario in scenarios {
            eprintln!("== {scenario}");
            match *scenario {
                "rpc" => scenarios::rpc::run(&options, &mut report).await?,
                "ingest" => scenarios::ingest::run(&options, &mut report).await?,
                "watches" => scenarios::watches::run(&options, &mut report).await?,
                "completion" => scenarios::completion::run(&options, &mut report).await?,
                "fanout" => scenarios::fanout::run(&options, &mut report).await?,
                other => unreachable!("no scenario {other}"),
            }
        }
        report.print();
        Ok(())
    })
}
