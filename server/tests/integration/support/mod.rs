//! Shared test harness: starts the real server on `127.0.0.1:0` with a fresh
//! data file (in process, or as the binary, which reports the ports it bound
//! through `--address-file`), hands out real clients, and builds notification
//! documents the way S3 writes them.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod aws;
pub mod pki;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use sha2::{Digest, Sha256};
use streamwatch_client::{Client, ConnectOptions, proto as v1};
use streamwatch_server::{clock::Clock, config::Config};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub const ACME_TOKEN: &str = "acme-token-0123456789";
pub const GLOBEX_TOKEN: &str = "globex-token-0123456789";

/// A temporary directory that outlives server restarts within one test.
#[derive(Clone)]
pub struct DataDir(Arc<tempfile::TempDir>);

impl DataDir {
    pub fn new() -> Self {
        Self(Arc::new(tempfile::tempdir().expect("temp dir")))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("streamwatch.db")
    }

    /// Writes a tenants file: `acme` may use `acme-*` and `shared-*`, `globex` `globex-*` and `shared-*`.
    pub fn tenants_file(&self) -> PathBuf {
        self.write_tenants(&tenants_toml("", ""))
    }

    /// Writes `toml` as the tenants file (`tenants.toml` in this directory).
    pub fn write_tenants(&self, toml: &str) -> PathBuf {
        let path = self.path().join("tenants.toml");
        std::fs::write(&path, toml).expect("write tenants file");
        path
    }

    pub fn config(&self, tenants: bool) -> Config {
        let mut config = Config::embedded_default();
        config.data = self.db();
        config.tenants = tenants.then(|| self.tenants_file());
        config.shutdown_grace = Duration::from_secs(5);
        // Tests here may pause tokio's clock, which drives only tasks of
        // their runtime; servers run as binaries, and the client's tests,
        // run the observer on its own thread.
        config.observer_thread = false;
        config
    }
}

/// The hex SHA-256 digest of a token, as the tenants file holds it.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The `acme` and `globex` tenants (see [`DataDir::tenants_file`]), each
/// followed by extra lines (`client_subjects`, a `[tenant.quotas]` table...).
pub fn tenants_toml(acme_extra: &str, globex_extra: &str) -> String {
    format!(
        "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"acme-*\", \"shared-*\"]\n{acme_extra}\n\n\
         [[tenant]]\nid = \"globex\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"globex-*\", \"shared-*\"]\n{globex_extra}\n",
        token_digest(ACME_TOKEN),
        token_digest(GLOBEX_TOKEN)
    )
}

/// The real server, serving on loopback in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, for servers started with it.
    pub metrics: Option<SocketAddr>,
    pub dir: DataDir,
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), streamwatch_server::ServeError>>>,
}

impl TestServer {
    /// A single-tenant server (no tenants file) on a fresh data file.
    pub async fn start() -> Self {
        Self::start_in(DataDir::new(), false, None).await
    }

    /// A server with the `acme` and `globex` tenants.
    pub async fn start_with_tenants() -> Self {
        Self::start_in(DataDir::new(), true, None).await
    }

    /// Starts on `dir`'s data file, on `addr` if given (to come back on the same port).
    pub async fn start_in(dir: DataDir, tenants: bool, addr: Option<SocketAddr>) -> Self {
        let config = dir.config(tenants);
        Self::start_with(dir, config, addr).await
    }

    /// A single-tenant server that also serves `/metrics` (on [`Self::metrics`]).
    pub async fn start_with_metrics() -> Self {
        let dir = DataDir::new();
        let config = dir.config(false);
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_serving(dir, config, None, Some(metrics)).await
    }

    /// Starts with `config` (whose files live in `dir`), on `addr` if given.
    pub async fn start_with(dir: DataDir, config: Config, addr: Option<SocketAddr>) -> Self {
        Self::start_serving(dir, config, addr, None).await
    }

    async fn start_serving(
        dir: DataDir,
        config: Config,
        addr: Option<SocketAddr>,
        metrics: Option<TcpListener>,
    ) -> Self {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics_addr = metrics
            .as_ref()
            .map(|m| m.local_addr().expect("local addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(streamwatch_server::serve_with_listeners(
            config.clone(),
            listener,
            metrics,
            Clock::new(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            metrics: metrics_addr,
            dir,
            config,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.endpoint()).await.expect("connect")
    }

    pub async fn client_with_token(&self, token: &str) -> Client {
        Client::connect_with(self.endpoint(), ConnectOptions::new().token(token))
            .await
            .expect("connect")
    }

    /// Graceful shutdown; returns the data directory to restart on.
    pub async fn stop(mut self) -> DataDir {
        self.shutdown().await;
        self.dir.clone()
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

    /// Stops and starts again on the same data file and port.
    pub async fn restart(mut self) -> Self {
        self.shutdown().await;
        Self::start_with(self.dir.clone(), self.config.clone(), Some(self.addr)).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One S3 `Records` document, as S3 delivers it, with a record per `(event, key, sequencer)`.
/// `key` is written URL-encoded as S3 does (`+` for space).
pub fn s3_document(bucket: &str, records: &[(&str, &str, &str)]) -> String {
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|(event, key, sequencer)| {
            let encoded: String = url_encode(key);
            serde_json::json!({
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-26T10:00:00.000Z",
                "eventName": event,
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
                "requestParameters": {"sourceIPAddress": "203.0.113.10"},
                "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "landing",
                    "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": format!("arn:aws:s3:::{bucket}")},
                    "object": {"key": encoded, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": sequencer}
                }
            })
        })
        .collect();
    serde_json::json!({ "Records": records }).to_string()
}

/// Objects created under `keys`, each with its own sequencer.
pub fn created(bucket: &str, keys: &[&str]) -> String {
    let sequencers: Vec<String> = (0..keys.len())
        .map(|i| format!("{:018X}", 0x0055_AED6_DCD9_0281u64 + i as u64))
        .collect();
    let records: Vec<(&str, &str, &str)> = keys
        .iter()
        .zip(&sequencers)
        .map(|(k, s)| ("ObjectCreated:Put", *k, s.as_str()))
        .collect();
    s3_document(bucket, &records)
}

fn url_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b' ' => "+".to_owned(),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn quiet_period(window: Duration) -> v1::Policy {
    v1::Policy {
        rule: Some(v1::policy::Rule::QuietPeriod(v1::QuietPeriodRule {
            window: Some(duration(window)),
        })),
        ..Default::default()
    }
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn start_request(bucket: &str, prefix: &str, policy: v1::Policy) -> v1::StartWatchRequest {
    v1::StartWatchRequest {
        bucket: bucket.into(),
        prefix: prefix.into(),
        policy: Some(policy),
        ..Default::default()
    }
}

/// Reads a stream to its end, failing the test if it takes over `limit`.
pub async fn read_to_end(
    mut stream: tonic::Streaming<v1::WatchEvent>,
    limit: Duration,
) -> Vec<v1::WatchEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(limit, async {
        while let Some(event) = stream.message().await.expect("stream error") {
            events.push(event);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stream did not end within {limit:?}; got {events:?}"));
    events
}

/// Reads events until one matches `until`, failing after `limit`.
pub async fn read_until(
    stream: &mut tonic::Streaming<v1::WatchEvent>,
    limit: Duration,
    until: impl Fn(&v1::WatchEvent) -> bool,
) -> Vec<v1::WatchEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(limit, async {
        while let Some(event) = stream.message().await.expect("stream error") {
            let done = until(&event);
            events.push(event);
            if done {
                return;
            }
        }
        panic!("stream ended before the expected event");
    })
    .await
    .unwrap_or_else(|_| panic!("no expected event within {limit:?}"));
    events
}

/// The name of an event's kind, for readable assertions.
pub fn kind(event: &v1::WatchEvent) -> &'static str {
    event.kind_name()
}

pub fn kinds(events: &[v1::WatchEvent]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}

/// Asserts `seq` runs from `first` upwards without gaps.
pub fn assert_gapless(events: &[v1::WatchEvent], first: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (first..first + events.len() as u64).collect();
    assert_eq!(seqs, expected, "event seqs must run without gaps");
}

/// Starts a watch the server must accept, and returns it.
pub async fn begin(client: &mut Client, request: v1::StartWatchRequest) -> v1::Watch {
    let response = client.start_watch(request).await.expect("StartWatch");
    response.watch.expect("StartWatch returns the watch")
}

/// Where a server binary started by [`spawn_binary`] listens.
pub struct Bound {
    pub endpoint: String,
    pub metrics: Option<SocketAddr>,
}

/// Starts the server binary as `command` (its other flags set) on ports the
/// kernel picks (`--listen 127.0.0.1:0`, and `--metrics-addr 127.0.0.1:0`
/// with `metrics`), and returns once it wrote the addresses it bound
/// (`--address-file`): it is serving then. Each call uses its own file in `dir`.
pub async fn spawn_binary(
    mut command: tokio::process::Command,
    dir: &Path,
    metrics: bool,
) -> (tokio::process::Child, Bound) {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = dir.join(format!("address-{n}"));
    let _ = std::fs::remove_file(&file);
    command
        .args(["--listen", "127.0.0.1:0", "--address-file"])
        .arg(&file);
    if metrics {
        command.args(["--metrics-addr", "127.0.0.1:0"]);
    }
    let mut child = command.kill_on_drop(true).spawn().expect("spawn server");
    // A replica of a cluster on the emulator may take tens of seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited before serving: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not write its addresses"
        );
        // A file's creation has no event to await here; the server renames it into place whole.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let address = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|a| a.parse::<SocketAddr>().expect("an address"))
    };
    let grpc = address("grpc").expect("the gRPC address");
    let bound = Bound {
        endpoint: format!("http://{grpc}"),
        metrics: address("metrics"),
    };
    (child, bound)
}
