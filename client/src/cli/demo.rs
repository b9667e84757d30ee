//! `streamwatch demo`: shows streamwatch working in a few seconds. Starts a
//! local `streamwatch-server` on a free loopback port with a temporary store
//! (unless `--endpoint` names a server), runs simulated producers that write
//! objects at different rates (announced by S3 notification documents, some
//! delivered twice, as S3 may), follows a quiet-period watch to completion,
//! prints what happened, and stops the server it started.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use streamwatch_client::{
    Client, ConnectOptions, WatchRequest,
    proto::{self as v1, WatchState},
};
use tokio::process::{Child, Command};

use super::{
    Connection, EXIT_COMPLETED, Format,
    output::{Printer, clock, human_duration, rfc3339, system_time},
    progress::Follower,
};

/// The server binary the demo starts.
const SERVER_BIN: &str = "streamwatch-server";
/// How long the local server may take to answer.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// How long the local server may take to stop after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(5);
const BUCKET: &str = "demo-lake";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated producers (each writes at its own rate)
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    producers: u8,

    /// How long the producers write
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// The watch's quiet period: it completes this long after the last object
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    quiet_period: Duration,

    /// The server binary to start [default: `streamwatch-server` beside this
    /// binary, else on PATH]
    #[arg(long, value_name = "PATH", env = "STREAMWATCH_SERVER_BIN")]
    server_bin: Option<PathBuf>,
}

/// A simulated producer: writes one object every `every`, for `share` of
/// the demo's duration; `redeliver_every` > 0 sends every so many
/// notifications twice.
struct ProducerSpec {
    name: &'static str,
    every: Duration,
    share: f64,
    redeliver_every: u64,
}

const PRODUCERS: [ProducerSpec; 5] = [
    ProducerSpec {
        name: "firehose-a",
        every: Duration::from_millis(80),
        share: 0.7,
        redeliver_every: 0,
    },
    ProducerSpec {
        name: "firehose-b",
        every: Duration::from_millis(200),
        share: 1.0,
        redeliver_every: 4,
    },
    ProducerSpec {
        name: "batch-export",
        every: Duration::from_millis(500),
        share: 0.5,
        redeliver_every: 0,
    },
    ProducerSpec {
        name: "firehose-c",
        every: Duration::from_millis(120),
        share: 0.8,
        redeliver_every: 3,
    },
    ProducerSpec {
        name: "backfill",
        every: Duration::from_millis(300),
        share: 0.9,
        redeliver_every: 0,
    },
];

/// What one producer did.
#[derive(Debug, Serialize)]
struct ProducerReport {
    name: &'static str,
    every_ms: u64,
    objects: u64,
    notifications: u64,
}

/// What `-o json` prints last.
#[derive(Debug, Serialize)]
struct DemoSummary {
    #[serde(rename = "type")]
    shape: &'static str,
    watch_id: String,
    state: &'static str,
    producers: Vec<ProducerReport>,
    objects_written: u64,
    objects_counted: u64,
    notifications_sent: u64,
    last_activity_at: Option<String>,
    completed_at: Option<String>,
    quiet_period_ms: u64,
    completion_latency_ms: Option<u64>,
    elapsed_ms: u64,
}

pub async fn run(connection: &Connection, printer: Printer, args: DemoArgs) -> anyhow::Result<u8> {
    let human = printer.format == Format::Human;
    let began = Instant::now();
    let server = match &connection.endpoint {
        Some(_) => None,
        None => {
            let bin = locate_server(args.server_bin.as_deref())?;
            let server = LocalServer::start(&bin).await?;
            if human {
                printer.line(&format!(
                    "started {} on {} (store {})",
                    bin.display(),
                    server.endpoint,
                    server.db.display()
                ))?;
            }
            Some(server)
        }
    };
    let endpoint = match &server {
        Some(server) => server.endpoint.clone(),
        None => connection.endpoint().to_owned(),
    };
    let outcome = watch_producers(connection, printer, &args, &endpoint, began).await;
    if let Some(server) = server {
        let stopped = server.stop().await;
        if human && stopped.is_ok() {
            printer.line("stopped the local server")?;
        }
        stopped?;
    }
    outcome
}

/// Starts the watch and the producers, follows the watch to its end and
/// prints the summary.
async fn watch_producers(
    connection: &Connection,
    printer: Printer,
    args: &DemoArgs,
    endpoint: &str,
    began: Instant,
) -> anyhow::Result<u8> {
    let human = printer.format == Format::Human;
    let mut client = connection.connect_to(endpoint).await?;
    // A prefix of its own, so demos against a shared server do not mix.
    let run = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let prefix = format!("demo-{run}/");
    let started = client
        .start_watch(
            WatchRequest::new(BUCKET)
                .prefix(&prefix)
                .quiet_period(args.quiet_period)
                .label("source", "streamwatch-demo"),
        )
        .await?;
    let watch = started
        .watch
        .context("the server answered StartWatch without a watch")?;
    let specs = &PRODUCERS[..usize::from(args.producers)];
    if human {
        printer.line(&format!(
            "watching {BUCKET}/{prefix} until it has been quiet for {} (watch {})",
            human_duration(args.quiet_period),
            watch.watch_id
        ))?;
        for spec in specs {
            printer.line(&format!(
                "  producer {:<12} one object every {}, for {}{}",
                spec.name,
                human_duration(spec.every),
                human_duration(args.duration.mul_f64(spec.share)),
                if spec.redeliver_every > 0 {
                    format!(
                        ", every {}th notification delivered twice",
                        spec.redeliver_every
                    )
                } else {
                    String::new()
                }
            ))?;
        }
    }
    let producers: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(n, spec)| {
            let client = client.clone();
            let prefix = prefix.clone();
            let duration = args.duration.mul_f64(spec.share);
            tokio::spawn(produce(client, n, spec, prefix, duration))
        })
        .collect();

    let ended = Follower::new(printer, &watch)
        .wait(&mut client, &watch.watch_id)
        .await?;
    let mut reports = Vec::new();
    for producer in producers {
        reports.push(producer.await.context("a producer panicked")??);
    }
    let summary = summarize(&ended, reports, args.quiet_period, began);
    if human {
        print_summary(printer, &summary)?;
    } else {
        printer.json(&summary)?;
    }
    if ended.state() != WatchState::Completed {
        bail!("the watch ended {}, not completed", summary.state);
    }
    if summary.objects_counted != summary.objects_written {
        bail!(
            "the watch counted {} objects but the producers wrote {}",
            summary.objects_counted,
            summary.objects_written
        );
    }
    Ok(EXIT_COMPLETED)
}

/// One producer: writes objects under `prefix` at its rate for `duration`.
async fn produce(
    mut client: Client,
    n: usize,
    spec: &'static ProducerSpec,
    prefix: String,
    duration: Duration,
) -> anyhow::Result<ProducerReport> {
    let start = Instant::now();
    let mut report = ProducerReport {
        name: spec.name,
        every_ms: spec.every.as_millis() as u64,
        objects: 0,
        notifications: 0,
    };
    let mut tick = tokio::time::interval(spec.every);
    while start.elapsed() < duration {
        tick.tick().await;
        let i = report.objects;
        let key = format!("{prefix}{}/part-{i:05}.json", spec.name);
        let sequencer = format!("{n:02X}{i:016X}");
        let document = s3_document(&key, &sequencer);
        let copies =
            if spec.redeliver_every > 0 && i % spec.redeliver_every == spec.redeliver_every - 1 {
                2
            } else {
                1
            };
        for _ in 0..copies {
            client
                .ingest_s3_events(vec![document.clone()])
                .await
                .with_context(|| {
                    format!("producer {} could not deliver a notification", spec.name)
                })?;
            report.notifications += 1;
        }
        report.objects += 1;
    }
    Ok(report)
}

/// An `ObjectCreated:Put` notification for `key`, shaped as S3 delivers it.
/// Demo keys hold only characters S3 leaves unencoded.
fn s3_document(key: &str, sequencer: &str) -> String {
    serde_json::json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": rfc3339(SystemTime::now()),
            "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
            "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "streamwatch-demo",
                "bucket": {"name": BUCKET, "ownerIdentity": {"principalId": "A3NL1KOZZKEXAMPLE"}, "arn": format!("arn:aws:s3:::{BUCKET}")},
                "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": sequencer}
            }
        }]
    })
    .to_string()
}

fn summarize(
    watch: &v1::Watch,
    producers: Vec<ProducerReport>,
    quiet_period: Duration,
    began: Instant,
) -> DemoSummary {
    let last_activity = watch.last_activity_at.as_ref().and_then(system_time);
    let completed = watch.completed_at.as_ref().and_then(system_time);
    let latency = match (last_activity, completed) {
        (Some(last), Some(done)) => done.duration_since(last).ok(),
        _ => None,
    };
    DemoSummary {
        shape: "demo_summary",
        watch_id: watch.watch_id.clone(),
        state: super::output::state_name(watch.state()),
        objects_written: producers.iter().map(|p| p.objects).sum(),
        notifications_sent: producers.iter().map(|p| p.notifications).sum(),
        producers,
        objects_counted: watch.object_count,
        last_activity_at: last_activity.map(rfc3339),
        completed_at: completed.map(rfc3339),
        quiet_period_ms: quiet_period.as_millis() as u64,
        completion_latency_ms: latency.map(|d| d.as_millis() as u64),
        elapsed_ms: began.elapsed().as_millis() as u64,
    }
}

fn print_summary(printer: Printer, s: &DemoSummary) -> std::io::Result<()> {
    let at = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .map(clock)
            .unwrap_or_else(|| "-".into())
    };
    printer.line("")?;
    printer.line(&format!("watch {} {}", s.watch_id, s.state.to_uppercase()))?;
    printer.line(&format!(
        "  objects        {} counted, {} written by {} producers ({} notifications: {} redeliveries not counted twice)",
        s.objects_counted,
        s.objects_written,
        s.producers.len(),
        s.notifications_sent,
        s.notifications_sent - s.objects_written
    ))?;
    for p in &s.producers {
        printer.line(&format!(
            "    {:<12} {:>3} objects, {:>3} notifications",
            p.name, p.objects, p.notifications
        ))?;
    }
    printer.line(&format!("  last activity  {} UTC", at(&s.last_activity_at)))?;
    printer.line(&format!(
        "  completed      {} UTC, {} after the last object (quiet period {})",
        at(&s.completed_at),
        s.completion_latency_ms
            .map(|ms| format!("{:.3}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into()),
        human_duration(Duration::from_millis(s.quiet_period_ms))
    ))?;
    printer.line(&format!(
        "  demo took      {}",
        human_duration(Duration::from_millis(s.elapsed_ms))
    ))
}

/// `explicit`, else `streamwatch-server` beside this binary, else on PATH.
fn locate_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("--server-bin {}: no such file", path.display());
    }
    let file = format!("{SERVER_BIN}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&file)));
    if let Some(path) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(path.clone());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(&file))
        .find(|p| p.is_file());
    if let Some(path) = on_path {
        return Ok(path);
    }
    let dir = beside
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "this binary's directory".into());
    bail!(
        "cannot find `{SERVER_BIN}` in {dir} or on PATH.\n\
         Build it with `cargo build --release` (it lands beside `streamwatch` in target/release),\n\
         pass its path with --server-bin PATH, or run the demo against a server with --endpoint URL."
    )
}

/// The server the demo started, with its temporary store.
struct LocalServer {
    child: Child,
    endpoint: String,
    db: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalServer {
    async fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("streamwatch-demo-")
            .tempdir()
            .context("cannot create a temporary directory for the demo's store")?;
        let db = dir.path().join("demo.db");
        let log = dir.path().join("server.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port")?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let output = File::create(&log).context("cannot create the server log")?;
        let child = Command::new(bin)
            .args(["--listen", &listen, "--shutdown-grace", "2s", "--data"])
            .arg(&db)
            // The demo's server is configured by its flags alone.
            .env_remove("STREAMWATCH_TENANTS")
            .env_remove("STREAMWATCH_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut server = Self {
            child,
            endpoint: format!("http://{listen}"),
            db,
            log,
            _dir: dir,
        };
        server.wait_until_serving().await?;
        Ok(server)
    }

    /// Polls the server with a deadline until it answers a call.
    async fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        let options = ConnectOptions::new()
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Some(Duration::from_secs(2)));
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{SERVER_BIN} exited during startup ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut client) = Client::connect_with(&self.endpoint, options.clone()).await {
                let probe = v1::ListWatchesRequest {
                    page_size: 1,
                    ..Default::default()
                };
                if client.list_watches(probe).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{SERVER_BIN} did not answer on {} within {}; its log:\n{}",
                    self.endpoint,
                    human_duration(STARTUP_LIMIT),
                    self.log_tail()
                );
            }
            // The port is not open yet: nothing to await but time.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then a graceful exit within [`STOP_LIMIT`]; SIGKILL if not.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| libc::pid_t::try_from(id).ok())
        {
            // SAFETY: kill(2) only sends a signal; `pid` is our child, not yet
            // reaped (`id()` is Some until then), so it names no other process.
            #[allow(unsafe_code)]
            let sent = unsafe { libc::kill(pid, libc::SIGTERM) } == 0;
            if sent && let Ok(status) = tokio::time::timeout(STOP_LIMIT, self.child.wait()).await {
                let status = status.context("cannot wait for the local server")?;
                if !status.success() {
                    bail!(
                        "the local server exited with {status}; its log:\n{}",
                        self.log_tail()
                    );
                }
                return Ok(());
            }
        }
        self.child
            .start_kill()
            .context("cannot stop the local server")?;
        self.child.wait().await?;
        bail!(
            "the local server did not stop within {} of SIGTERM and was killed",
            human_duration(STOP_LIMIT)
        )
    }
}
