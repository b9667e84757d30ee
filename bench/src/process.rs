//! The server under test as a child process: the release (or debug) binary
//! next to this one, on a free loopback port with a fresh SQLite file, and
//! what the kernel says it uses (resident memory, CPU time).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

pub struct ServerProcess {
    child: Child,
    pub endpoint: String,
    _dir: Option<tempfile::TempDir>,
}

/// A sibling executable of this one (`cargo build` puts them side by side).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p streamwatch-server)",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ServerProcess {
    /// `streamwatch-server` on a fresh SQLite file.
    pub async fn streamwatch() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = Command::new(sibling("streamwatch-server")?);
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.path().join("bench.db"));
        Self::spawn(command, port, Some(dir)).await
    }

    /// This binary's bare tonic server answering GetWatch with `response`.
    pub async fn echo(response: &[u8]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args([
            "echo-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--response",
            &hex::encode(response),
        ]);
        Self::spawn(command, port, None).await
    }

    async fn spawn(
        mut command: Command,
        port: u16,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if Endpoint::from_shared(endpoint.clone())?
                .connect()
                .await
                .is_ok()
            {
                return Ok(Self {
                    child,
                    endpoint,
                    _dir: dir,
                });
            }
            if Instant::now() > deadline {
                bail!("the server on port {port} did not come up");
            }
            // Nothing to await: the port is not open yet.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `n` separate HTTP/2 connections to the server.
    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels.push(
                Endpoint::from_shared(self.endpoint.clone())?
                    .connect()
                    .await?,
            );
        }
        Ok(channels)
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the server has exited")
    }

    /// Resident memory, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kib * 1024)
    }

    /// User plus system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime and stime are fields 14 and 15.
        let after = &stat[stat.rfind(')').context("bad stat")? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        // SAFETY: sysconf only reads a constant of the system.
        #[allow(unsafe_code)]
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / per_second)
    }
}
