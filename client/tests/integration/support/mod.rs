//! Shared test harness: the real server in this process on `127.0.0.1:0`
//! (restartable on the same port and data file), real clients, notification
//! documents shaped as S3 writes them, and the `streamwatch` binary run
//! against the server.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::{net::SocketAddr, path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use streamwatch_client::{Backoff, Client, ConnectOptions};
use streamwatch_server::{clock::Clock, config::Config};
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::oneshot, task::JoinHandle};

/// How long any single step of a test may take before it fails.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The real server, serving on loopback in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    dir: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), streamwatch_server::ServeError>>>,
}

impl TestServer {
    /// A single-tenant server on a fresh data file.
    pub async fn start() -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().expect("temp dir")), None).await
    }

    async fn start_in(dir: Arc<tempfile::TempDir>, addr: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut config = Config::embedded_default();
        config.data = dir.path().join("streamwatch.db");
        config.shutdown_grace = Duration::from_secs(5);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(streamwatch_server::serve_with_clock(
            config,
            listener,
            Clock::new(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client that reconnects quickly, so restarts do not slow tests down.
    pub async fn client(&self) -> Client {
        let backoff = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            give_up_after: Some(LIMIT),
        };
        Client::connect_with(self.endpoint(), ConnectOptions::new().backoff(backoff))
            .await
            .expect("connect")
    }

    /// Stops gracefully and starts again on the same data file and port.
    pub async fn restart(mut self) -> Self {
        self.shutdown().await;
        Self::start_in(self.dir.clone(), Some(self.addr)).await
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    /// Runs the `streamwatch` binary against this server.
    pub fn cli(&self) -> Cli {
        Cli::new().env("STREAMWATCH_ENDPOINT", &self.endpoint())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The `streamwatch` binary, with none of the caller's `STREAMWATCH_*`
/// settings leaking in.
pub struct Cli {
    command: tokio::process::Command,
    stdin: Option<Vec<u8>>,
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout lines parsed as JSON objects.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{self:?}"))
            })
            .collect()
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_streamwatch"))
}

impl Cli {
    pub fn new() -> Self {
        let mut command = tokio::process::Command::new(bin());
        for (name, _) in std::env::vars() {
            if name.starts_with("STREAMWATCH_") {
                command.env_remove(name);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Self {
            command,
            stdin: None,
        }
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.command.stdin(Stdio::piped());
        self.stdin = Some(input.into());
        self
    }

    /// Starts the binary with `args`, for tests that read its output as it runs.
    pub fn spawn(mut self, args: &[&str]) -> tokio::process::Child {
        self.command.args(args).spawn().expect("spawn streamwatch")
    }

    /// Runs the binary with `args` to its end (failing after [`LIMIT`]).
    pub async fn run(mut self, args: &[&str]) -> Run {
        let mut child = self.command.args(args).spawn().expect("spawn streamwatch");
        if let Some(input) = self.stdin.take() {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(&input).await.expect("write stdin");
        }
        let output = tokio::time::timeout(LIMIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("streamwatch {args:?} did not finish within {LIMIT:?}"))
            .expect("wait for streamwatch");
        Run {
            code: output
                .status
                .code()
                .expect("exited, not killed by a signal"),
            stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
        }
    }
}

/// One S3 `Records` document with an `ObjectCreated:Put` record per key,
/// each with its own sequencer, shaped as S3 delivers it.
pub fn created(bucket: &str, keys: &[&str]) -> String {
    let records: Vec<serde_json::Value> = keys
        .iter()
        .map(|key| s3_record(bucket, key, &sequencer(key)))
        .collect();
    serde_json::json!({ "Records": records }).to_string()
}

/// A sequencer that is the same for the same key: sending a key twice is a redelivery.
fn sequencer(key: &str) -> String {
    let sum = key
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("{sum:018X}")
}

pub fn s3_record(bucket: &str, key: &str, sequencer: &str) -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-26T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "landing",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": sequencer}
        }
    })
}

/// The name of an event's kind, for readable assertions.
pub fn kind(event: &streamwatch_client::proto::WatchEvent) -> &'static str {
    event.kind_name()
}

/// Starts a watch through the library and returns its id.
pub async fn start_watch(client: &mut Client, request: streamwatch_client::WatchRequest) -> String {
    client
        .start_watch(request)
        .await
        .expect("start watch")
        .watch
        .expect("a watch")
        .watch_id
}
