//! The real server under test, started the two ways tests need it: in this
//! process ([`TestServer`]: `serve_with_listeners` on a listener the kit
//! binds to `127.0.0.1:0`; stopped, and restarted on the same data file and
//! port) and as the binary ([`ServerProcess`]: `--listen 127.0.0.1:0
//! --address-file FILE`, the server writes the addresses it bound). Either
//! is handed over once its health service answers SERVING, or the start
//! fails with the server's own error. Also the data directory a server
//! keeps across restarts, the test tenants with their tokens, and a port
//! that refuses connections ([`ClosedPort`]).
//!
//! Never binds a port to learn a free number for someone else to bind.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sha2::{Digest, Sha256};
use streamwatch_client::{Backoff, Client, ConnectOptions};
use streamwatch_server::{clock::Clock, config::Config};
use tokio::{net::TcpListener, process::Child, sync::oneshot, task::JoinHandle, time::Instant};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::wait::eventually;

/// The bearer token of the `acme` tenant (see [`tenants_toml`]).
pub const ACME_TOKEN: &str = "acme-token-0123456789";
/// The bearer token of the `globex` tenant (see [`tenants_toml`]).
pub const GLOBEX_TOKEN: &str = "globex-token-0123456789";

/// How long a server may take to serve: a replica of a cluster on the AWS
/// emulator takes tens of seconds.
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// How long the kit's clients keep reconnecting to a server that went away
/// (a restart in a test), retrying quickly so that restarts cost little.
pub const RECONNECT_LIMIT: Duration = Duration::from_secs(30);

/// A temporary directory that outlives server restarts within one test.
#[derive(Clone)]
pub struct DataDir(Arc<tempfile::TempDir>);

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDir {
    pub fn new() -> Self {
        Self(Arc::new(tempfile::tempdir().expect("temp dir")))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The SQLite data file.
    pub fn db(&self) -> PathBuf {
        self.path().join("streamwatch.db")
    }

    /// Writes the tenants file of [`tenants_toml`] (no extra lines).
    pub fn tenants_file(&self) -> PathBuf {
        self.write_tenants(&tenants_toml("", ""))
    }

    /// Writes `toml` as the tenants file (`tenants.toml` in this directory).
    pub fn write_tenants(&self, toml: &str) -> PathBuf {
        let path = self.path().join("tenants.toml");
        std::fs::write(&path, toml).expect("write tenants file");
        path
    }

    /// The embedded server's configuration on this directory's data file,
    /// with the tenants of [`tenants_toml`] when `tenants` (single-tenant
    /// otherwise), a 5s shutdown grace, and the observer as a task of the
    /// test's runtime: a test may pause tokio's clock, which drives only its
    /// runtime's tasks (servers run as binaries keep it on its own thread).
    pub fn config(&self, tenants: bool) -> Config {
        let mut config = Config::embedded_default();
        config.data = self.db();
        config.tenants = tenants.then(|| self.tenants_file());
        config.shutdown_grace = Duration::from_secs(5);
        config.observer_thread = false;
        config
    }

    /// A file name in this directory no other start in this process uses.
    fn address_file(&self) -> PathBuf {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        self.path().join(format!("address-{n}"))
    }
}

/// The hex SHA-256 digest of a token, as the tenants file holds it.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The `acme` tenant (buckets `acme-*` and `shared-*`, token [`ACME_TOKEN`])
/// and the `globex` tenant (`globex-*` and `shared-*`, [`GLOBEX_TOKEN`]),
/// each followed by extra lines (`client_subjects`, a `[tenant.quotas]` table...).
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
        Self::start_in(DataDir::new(), false).await
    }

    /// A server with the `acme` and `globex` tenants.
    pub async fn start_with_tenants() -> Self {
        Self::start_in(DataDir::new(), true).await
    }

    /// Starts on `dir`'s data file (with the test tenants when `tenants`).
    pub async fn start_in(dir: DataDir, tenants: bool) -> Self {
        let config = dir.config(tenants);
        Self::start_with(dir, config).await
    }

    /// A single-tenant server that also serves `/metrics` (on [`Self::metrics`]).
    pub async fn start_with_metrics() -> Self {
        let dir = DataDir::new();
        let config = dir.config(false);
        Self::serve(dir, config, loopback(), Some(loopback())).await
    }

    /// Starts with `config`, whose files live in `dir`.
    pub async fn start_with(dir: DataDir, config: Config) -> Self {
        Self::serve(dir, config, loopback(), None).await
    }

    async fn serve(
        dir: DataDir,
        config: Config,
        addr: SocketAddr,
        metrics: Option<SocketAddr>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = match metrics {
            Some(at) => Some(TcpListener::bind(at).await.expect("bind metrics")),
            None => None,
        };
        let metrics_addr = metrics
            .as_ref()
            .map(|m| m.local_addr().expect("local addr"));
        // The kit holds no certificate a TLS server would accept: such a
        // server is ready once it wrote the addresses it serves on.
        let mut serving = config.clone();
        let address_file = config
            .transport
            .tls_cert
            .is_some()
            .then(|| dir.address_file());
        serving.address_file = address_file.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(streamwatch_server::serve_with_listeners(
            serving,
            listener,
            metrics,
            Clock::new(),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut server = Self {
            addr,
            metrics: metrics_addr,
            dir,
            config,
            stop: Some(stop),
            task: Some(task),
        };
        server.ready(address_file).await;
        server
    }

    /// Returns once the server serves; fails with its error if it stopped.
    async fn ready(&mut self, address_file: Option<PathBuf>) {
        let endpoint = self.endpoint();
        let task = self.task.as_mut().expect("started");
        let serving = async {
            match address_file {
                Some(file) => {
                    eventually("the server writes its addresses", START_LIMIT, async || {
                        file.exists().then_some(())
                    })
                    .await;
                    Ok(())
                }
                None => health(endpoint).await,
            }
        };
        let answered = tokio::select! {
            ended = &mut *task => panic!("the server stopped before serving: {}", outcome(ended)),
            answered = tokio::time::timeout(START_LIMIT, serving) => answered,
        };
        match answered {
            Ok(Ok(())) => {}
            // A server that failed to start closes its listener: its own error says why.
            Ok(Err(unanswered)) => match tokio::time::timeout(START_LIMIT, task).await {
                Ok(ended) => panic!("the server did not start: {}", outcome(ended)),
                Err(_) => panic!("the server runs but its health service failed: {unanswered}"),
            },
            Err(_) => panic!("the server did not serve within {START_LIMIT:?}"),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client that reconnects quickly, so restarts do not slow tests down.
    pub async fn client(&self) -> Client {
        Client::connect_with(self.endpoint(), client_options())
            .await
            .expect("connect")
    }

    /// [`Self::client`] calling as the tenant of `token`.
    pub async fn client_with_token(&self, token: &str) -> Client {
        Client::connect_with(self.endpoint(), client_options().token(token))
            .await
            .expect("connect")
    }

    /// Graceful shutdown; returns the data directory to start again on.
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

    /// Stops gracefully and starts again on the same data file and ports, so
    /// that clients connected before reconnect by themselves.
    pub async fn restart(mut self) -> Self {
        self.shutdown().await;
        Self::serve(
            self.dir.clone(),
            self.config.clone(),
            self.addr,
            self.metrics,
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn client_options() -> ConnectOptions {
    ConnectOptions::new().backoff(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        give_up_after: Some(RECONNECT_LIMIT),
    })
}

fn outcome(
    ended: Result<Result<(), streamwatch_server::ServeError>, tokio::task::JoinError>,
) -> String {
    match ended {
        Ok(Ok(())) => "it returned without an error".into(),
        Ok(Err(e)) => {
            // The error and every cause under it.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
        Err(e) => format!("its task failed: {e}"),
    }
}

/// Asks the health service about the whole server ("" is what a probe
/// without a service name asks about); `Ok` once it answers SERVING.
async fn health(endpoint: String) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|status| format!("the health check failed: {status}"))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("the health service says {other:?}")),
    }
}

/// A loopback port that refuses connections, for as long as this value
/// lives: bound but never listening, so nothing else can take it meanwhile.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind(loopback()).expect("bind");
        let addr = socket.local_addr().expect("local addr");
        Self {
            addr,
            _socket: socket,
        }
    }

    /// `http://` and the address.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// The server binary (or another that takes `--listen` and
/// `--address-file` and serves health), started as a child process.
pub struct ServerProcess {
    /// Killed when dropped.
    pub child: Child,
    pub endpoint: String,
    /// Where `/metrics` is served, when started with it.
    pub metrics: Option<SocketAddr>,
}

impl ServerProcess {
    /// [`Self::try_spawn`], failing the test if the server does not serve.
    pub async fn spawn(command: tokio::process::Command, dir: &Path, metrics: bool) -> Self {
        Self::try_spawn(command, dir, metrics)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `command` (the binary with its other flags set) on ports the
    /// kernel picks (`--listen 127.0.0.1:0`, and `--metrics-addr 127.0.0.1:0`
    /// with `metrics`), reads the addresses it bound from its
    /// `--address-file` (a new file in `dir`), and returns once its health
    /// service answers SERVING.
    pub async fn try_spawn(
        mut command: tokio::process::Command,
        dir: &Path,
        metrics: bool,
    ) -> anyhow::Result<Self> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let file = dir.join(format!("process-address-{n}"));
        let _ = std::fs::remove_file(&file);
        command
            .args(["--listen", "127.0.0.1:0", "--address-file"])
            .arg(&file);
        if metrics {
            command.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        let mut child = command
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server")?;
        let deadline = Instant::now() + START_LIMIT;
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                break text;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the server exited before serving: {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not write its addresses within {START_LIMIT:?}"
            );
            // A file's creation has no event to await; the server renames it into place whole.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let address = |name: &str| -> anyhow::Result<Option<SocketAddr>> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(|a| a.parse().with_context(|| format!("{name} address {a:?}")))
                .transpose()
        };
        let grpc = address("grpc")?.context("the address file names no gRPC address")?;
        let endpoint = format!("http://{grpc}");
        let answered = tokio::time::timeout(START_LIMIT, health(endpoint.clone())).await;
        match answered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("the server at {endpoint} is not serving: {e}"),
            Err(_) => anyhow::bail!("the health service at {endpoint} did not answer"),
        }
        Ok(Self {
            child,
            endpoint,
            metrics: address("metrics")?,
        })
    }
}
