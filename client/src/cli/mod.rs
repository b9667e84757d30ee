//! The `streamwatch` commands: their arguments (clap, each flag also from the
//! environment where that makes sense), connecting with them, and running
//! each command. How things are printed lives in `output` and `progress`,
//! reading notification documents in `ingest`, the demo in `demo`.

mod demo;
mod ingest;
mod output;
mod progress;
mod replay;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use streamwatch_client::{
    Adaptive, Client, ConnectOptions, DEFAULT_ENDPOINT, DelaySchedule, ListFilter, NotifyTarget,
    Policy, WatchRequest,
    proto::{self as v1, WatchState},
};

use self::{output::Printer, progress::Follower};

/// The watch COMPLETED.
pub const EXIT_COMPLETED: u8 = 0;
/// Anything went wrong: bad arguments, an unreachable server, an unknown watch.
pub const EXIT_ERROR: u8 = 1;
/// The watch ended TIMED_OUT.
pub const EXIT_TIMED_OUT: u8 = 2;
/// The watch was CANCELLED.
pub const EXIT_CANCELLED: u8 = 3;
/// The watch FAILED.
pub const EXIT_FAILED: u8 = 4;

const EXIT_CODES: &str = "\
Exit codes of `wait` and `start --wait`:
  0  the watch COMPLETED
  2  the watch TIMED_OUT
  3  the watch was CANCELLED
  4  the watch FAILED
  1  an error (bad arguments, server unreachable, unknown watch); every other command exits 0 or 1";

/// Watch a bucket until all of its data has landed.
///
/// streamwatch counts a bucket's object-created notifications per watched
/// bucket/prefix and decides when the flow has stopped (a quiet period, an
/// expected count, the classic polling rule, or an adaptive window). This is
/// its command line: start and follow watches, feed notification documents,
/// and see it work with `streamwatch demo`.
#[derive(Debug, Parser)]
#[command(name = "streamwatch", version, term_width = 100, after_help = EXIT_CODES)]
pub struct Cli {
    /// Output format: `human` (a live progress line on a terminal) or `json`
    /// (one JSON object per line)
    #[arg(short, long, global = true, value_enum, env = "STREAMWATCH_OUTPUT", default_value_t = Format::Human)]
    output: Format,

    #[command(flatten)]
    connection: Connection,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
struct Connection {
    /// The server [default: http://127.0.0.1:50051]
    #[arg(long, global = true, env = "STREAMWATCH_ENDPOINT", value_name = "URL")]
    endpoint: Option<String>,

    /// Bearer token of your tenant
    #[arg(long, global = true, env = "STREAMWATCH_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// PEM file of the CA that signed the server's certificate (https:// endpoints)
    #[arg(long, global = true, env = "STREAMWATCH_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,

    /// The name the server's certificate must carry, if not the endpoint's host
    #[arg(
        long,
        global = true,
        env = "STREAMWATCH_TLS_DOMAIN",
        value_name = "NAME"
    )]
    tls_domain: Option<String>,

    /// PEM client certificate, for servers that authenticate clients by certificate
    #[arg(
        long,
        global = true,
        env = "STREAMWATCH_CLIENT_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(
        long,
        global = true,
        env = "STREAMWATCH_CLIENT_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// How long connecting may take
    #[arg(long, global = true, env = "STREAMWATCH_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// How long one call may take (not how long a stream stays open)
    #[arg(long, global = true, env = "STREAMWATCH_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
}

impl Connection {
    fn endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    }

    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .connect_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout));
        if let Some(token) = &self.token {
            options = options.token(token);
        }
        if let Some(path) = &self.ca_file {
            options = options.ca_certificate(path);
        }
        if let Some(domain) = &self.tls_domain {
            options = options.tls_domain(domain);
        }
        // The OpenTelemetry convention for handing a trace to a process:
        // calls continue the caller's trace.
        if let Ok(parent) = std::env::var("TRACEPARENT")
            && !parent.is_empty()
        {
            let state = std::env::var("TRACESTATE").unwrap_or_default();
            options = options.trace_context(parent, state);
        }
        if let (Some(certificate), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.client_certificate(certificate, key);
        }
        options
    }

    async fn connect_to(&self, endpoint: &str) -> anyhow::Result<Client> {
        Client::connect_with(endpoint, self.options())
            .await
            .with_context(|| format!("cannot reach the streamwatch server at {endpoint}"))
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_to(self.endpoint()).await
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start watching a bucket/prefix, or a group of watches (--member)
    #[command(after_help = EXIT_CODES)]
    // Boxed: the policy flags make it much larger than the other commands.
    Start(Box<StartArgs>),
    /// Show one watch
    Get { watch_id: String },
    /// List your watches, newest first
    List(ListArgs),
    /// Cancel an active watch
    Cancel {
        watch_id: String,
        /// Why, recorded in the CANCELLED event
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Follow a watch's events until its stream ends, resuming after a dropped connection
    Events {
        watch_id: String,
        /// Only events after this sequence number
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after_seq: u64,
    },
    /// List the objects a watch counted (its manifest), in key order
    Objects {
        watch_id: String,
        /// Only the objects first counted in this generation [default: all]
        #[arg(long, value_name = "N", default_value_t = 0)]
        generation: u32,
    },
    /// What completion policies would have decided on a watch's objects (or on a file of them): when each completes, whether early
    Replay(replay::ReplayArgs),
    /// Wait until a watch ends; the exit code tells how it ended
    #[command(after_help = EXIT_CODES)]
    Wait { watch_id: String },
    /// Send notification documents (S3, SNS-wrapped, EventBridge) to the server
    Ingest(ingest::IngestArgs),
    /// Start a local server, simulated producers and a watch, and watch it complete
    Demo(demo::DemoArgs),
}

#[derive(Debug, Args)]
struct StartArgs {
    /// The bucket to watch
    #[arg(required_unless_present = "members")]
    bucket: Option<String>,

    /// Start a watch group instead: it completes once every member watch has completed (repeatable, 1-100 watch ids)
    #[arg(long = "member", value_name = "WATCH_ID", conflicts_with_all = ["bucket", "prefix", "include", "exclude"])]
    members: Vec<String>,

    /// Only keys under this prefix
    #[arg(long)]
    prefix: Option<String>,

    /// Count only keys matching this glob, on the key below the prefix: `**/*.parquet` (repeatable; `**` crosses `/`, `*` does not)
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,

    /// Leave out keys matching this glob: `_temporary/**`, `**/_SUCCESS` (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,

    #[command(flatten)]
    policy: PolicyArgs,

    #[command(flatten)]
    notify: NotifyArgs,

    /// A label to find the watch by (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,

    /// Makes retries safe: starting again with the same token returns the same watch
    #[arg(long, value_name = "TOKEN")]
    client_token: Option<String>,

    /// Follow the watch until it ends, then exit as `wait` does
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Completion policy (default: the server's 60s quiet period)")]
struct PolicyArgs {
    /// Complete this long after the last activity; with --expected, also complete after this long without activity
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    quiet_period: Option<Duration>,

    /// Complete when N distinct objects have landed
    #[arg(long, value_name = "N")]
    expected: Option<u64>,

    /// The classic rule: sample the count every DURATION (at least 1s) and complete after --max-repeats unchanged samples
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "max_repeats", conflicts_with_all = ["quiet_period", "expected"])]
    poll_delay: Option<Duration>,

    /// Unchanged samples that complete a polling watch
    #[arg(long, value_name = "N", requires = "poll_delay")]
    max_repeats: Option<u32>,

    /// How a polling watch spaces its samples [default: fixed]
    #[arg(long, value_enum, requires = "poll_delay")]
    schedule: Option<Schedule>,

    /// Complete when the silence exceeds a window learnt from the gaps between activities
    #[arg(long, conflicts_with_all = ["quiet_period", "expected", "poll_delay"])]
    adaptive: bool,

    /// The adaptive window's lower bound [server default: 100s; 75s with --reconcile]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "adaptive")]
    adaptive_min: Option<Duration>,

    /// The adaptive window's upper bound [server default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "adaptive")]
    adaptive_max: Option<Duration>,

    /// The quantile of the gaps the adaptive window scales, in (0, 1] [server default: 0.99]
    #[arg(long, value_name = "Q", requires = "adaptive")]
    adaptive_quantile: Option<f64>,

    /// The multiplier on that quantile, 1 to 100 [server default: 1.5; 1.15 with --reconcile]
    #[arg(long, value_name = "F", requires = "adaptive")]
    adaptive_safety_factor: Option<f64>,

    /// Complete when the producer creates this marker key below the prefix (e.g. _SUCCESS); with --quiet-period, after that long without activity after it
    #[arg(long, value_name = "KEY", conflicts_with_all = ["expected", "poll_delay", "adaptive"])]
    marker: Option<String>,

    /// With --marker: complete only once every file the marker's committer manifest lists is counted
    #[arg(long, requires = "marker")]
    verify_manifest: bool,

    /// Never complete with fewer distinct objects
    #[arg(long, value_name = "N")]
    min_objects: Option<u64>,

    /// End TIMED_OUT this long after the watch started
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// Reopen the watch on activity this long after it completed
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    late_window: Option<Duration>,

    /// Before completing, list the prefix in S3 and count objects no notification told of
    #[arg(long)]
    reconcile: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Completion callbacks (allowed by the tenants file)")]
struct NotifyArgs {
    /// POST the terminal event to this URL, signed with --notify-secret (repeatable)
    #[arg(
        long = "notify-webhook",
        value_name = "URL",
        requires = "notify_secret"
    )]
    webhooks: Vec<String>,

    /// The name of the tenant's callback secret that signs the webhooks
    #[arg(long, value_name = "NAME", requires = "webhooks")]
    notify_secret: Option<String>,

    /// Send the terminal event to this SQS queue (repeatable)
    #[arg(long = "notify-sqs", value_name = "QUEUE_URL")]
    queues: Vec<String>,

    /// Publish the terminal event to this SNS topic (repeatable)
    #[arg(long = "notify-sns", value_name = "TOPIC_ARN")]
    topics: Vec<String>,

    /// Also deliver REOPENED events
    #[arg(long)]
    notify_reopened: bool,
}

impl NotifyArgs {
    fn apply(self, mut policy: Policy) -> Policy {
        let secret_ref = self.notify_secret.unwrap_or_default();
        for url in self.webhooks {
            policy = policy.notify(NotifyTarget::Webhook {
                url,
                secret_ref: secret_ref.clone(),
            });
        }
        for queue_url in self.queues {
            policy = policy.notify(NotifyTarget::Sqs { queue_url });
        }
        for topic_arn in self.topics {
            policy = policy.notify(NotifyTarget::Sns { topic_arn });
        }
        policy.notify_reopened = self.notify_reopened;
        policy
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Schedule {
    /// every sample waits the delay
    Fixed,
    /// waits delay / repeated
    Divide,
    /// waits ceil(delay * exp(-repeated)) whole seconds
    Exponential,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        let mut policy = match (self.quiet_period, self.expected, self.poll_delay) {
            (quiet, _, _) if self.marker.is_some() => {
                let mut policy = Policy::marker(self.marker.clone().unwrap_or_default());
                if self.verify_manifest {
                    policy = policy.verify_manifest();
                }
                match quiet {
                    Some(window) => policy.quiet_window(window),
                    None => policy,
                }
            }
            _ if self.adaptive => Policy::adaptive(Adaptive {
                min_window: self.adaptive_min,
                max_window: self.adaptive_max,
                quantile: self.adaptive_quantile,
                safety_factor: self.adaptive_safety_factor,
            }),
            (_, _, Some(delay)) => Policy::polling(delay, self.max_repeats.unwrap_or_default())
                .schedule(match self.schedule.unwrap_or(Schedule::Fixed) {
                    Schedule::Fixed => DelaySchedule::Fixed,
                    Schedule::Divide => DelaySchedule::Divide,
                    Schedule::Exponential => DelaySchedule::Exponential,
                }),
            (quiet, Some(objects), None) => {
                let policy = Policy::expected_count(objects);
                match quiet {
                    Some(window) => policy.quiet_window(window),
                    None => policy,
                }
            }
            (Some(window), None, None) => Policy::quiet_period(window),
            (None, None, None) => Policy::default(),
        };
        policy.min_objects = self.min_objects.unwrap_or_default();
        policy.timeout = self.timeout;
        policy.late_window = self.late_window;
        policy.reconcile = self.reconcile;
        policy
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only watches in this state
    #[arg(long, value_enum)]
    state: Option<StateFilter>,

    /// Only watches carrying this label (repeatable; all must match)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateFilter {
    Active,
    Completed,
    TimedOut,
    Cancelled,
    Failed,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Runs the command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let printer = Printer::new(cli.output);
    match cli.command {
        Command::Start(args) => start(&cli.connection, printer, *args).await,
        Command::Get { watch_id } => {
            let watch = cli.connection.connect().await?.get_watch(&watch_id).await?;
            printer.watch(&watch, None)?;
            Ok(EXIT_COMPLETED)
        }
        Command::List(args) => {
            let mut filter = ListFilter::new();
            if let Some(state) = args.state {
                filter = filter.state(match state {
                    StateFilter::Active => WatchState::Active,
                    StateFilter::Completed => WatchState::Completed,
                    StateFilter::TimedOut => WatchState::TimedOut,
                    StateFilter::Cancelled => WatchState::Cancelled,
                    StateFilter::Failed => WatchState::Failed,
                });
            }
            for (key, value) in args.labels {
                filter = filter.label(key, value);
            }
            let watches = cli
                .connection
                .connect()
                .await?
                .list_all_watches(&filter)
                .await?;
            printer.watch_list(&watches)?;
            Ok(EXIT_COMPLETED)
        }
        Command::Cancel { watch_id, reason } => {
            let mut client = cli.connection.connect().await?;
            let watch = client.cancel_watch(&watch_id, &reason).await?;
            printer.watch(&watch, None)?;
            Ok(EXIT_COMPLETED)
        }
        Command::Events {
            watch_id,
            after_seq,
        } => {
            let mut client = cli.connection.connect().await?;
            let watch = client.get_watch(&watch_id).await?;
            let mut follower = Follower::new(printer, &watch);
            follower.follow(&client, &watch_id, after_seq).await?;
            Ok(EXIT_COMPLETED)
        }
        Command::Objects {
            watch_id,
            generation,
        } => {
            let mut client = cli.connection.connect().await?;
            client
                .for_each_watch_object::<anyhow::Error>(&watch_id, generation, |page| {
                    Ok(printer.objects(&page)?)
                })
                .await?;
            Ok(EXIT_COMPLETED)
        }
        Command::Replay(args) => {
            let mut client = cli.connection.connect().await?;
            replay::run(&mut client, printer, args).await?;
            Ok(EXIT_COMPLETED)
        }
        Command::Wait { watch_id } => {
            let mut client = cli.connection.connect().await?;
            let watch = client.get_watch(&watch_id).await?;
            wait(&mut client, printer, &watch).await
        }
        Command::Ingest(args) => {
            let mut client = cli.connection.connect().await?;
            ingest::run(&mut client, printer, args).await?;
            Ok(EXIT_COMPLETED)
        }
        Command::Demo(args) => demo::run(&cli.connection, printer, args).await,
    }
}

async fn start(connection: &Connection, printer: Printer, args: StartArgs) -> anyhow::Result<u8> {
    let request = match args.bucket {
        _ if !args.members.is_empty() => WatchRequest::group(args.members),
        bucket => WatchRequest::new(bucket.unwrap_or_default()),
    };
    let mut request = request
        .prefix(args.prefix.unwrap_or_default())
        .policy(args.notify.apply(args.policy.policy()));
    for pattern in args.include {
        request = request.include(pattern);
    }
    for pattern in args.exclude {
        request = request.exclude(pattern);
    }
    for (key, value) in args.labels {
        request = request.label(key, value);
    }
    if let Some(token) = args.client_token {
        request = request.client_token(token);
    }
    let mut client = connection.connect().await?;
    let started = client.start_watch(request).await?;
    let watch = started
        .watch
        .context("the server answered StartWatch without a watch")?;
    printer.watch(&watch, Some(started.created))?;
    if !args.wait {
        return Ok(EXIT_COMPLETED);
    }
    wait(&mut client, printer, &watch).await
}

/// Follows `watch` to its end (showing progress) and returns the exit code
/// for how it ended.
async fn wait(client: &mut Client, printer: Printer, watch: &v1::Watch) -> anyhow::Result<u8> {
    let watch = Follower::new(printer, watch)
        .wait(client, &watch.watch_id)
        .await?;
    printer.end_state(&watch)?;
    exit_code(&watch)
}

fn exit_code(watch: &v1::Watch) -> anyhow::Result<u8> {
    match watch.state() {
        WatchState::Completed => Ok(EXIT_COMPLETED),
        WatchState::TimedOut => Ok(EXIT_TIMED_OUT),
        WatchState::Cancelled => Ok(EXIT_CANCELLED),
        WatchState::Failed => Ok(EXIT_FAILED),
        state => anyhow::bail!(
            "the event stream of watch {} ended while it is {}",
            watch.watch_id,
            output::state_name(state)
        ),
    }
}
