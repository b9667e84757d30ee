//! The server under test as a child process: the release (or debug) binary
//! next to this one on a fresh SQLite file, started by the test kit on a
//! loopback port it picks and reports, and what the kernel says it uses
//! (resident memory, CPU time).

use std::{path::PathBuf, process::Stdio};

use anyhow::{Context, bail};
use tokio::process::Command;
use tonic::transport::{Channel, Endpoint};

pub struct ServerProcess {
    process: streamwatch_testkit::ServerProcess,
    pub endpoint: String,
    /// Its data file and the file it reports its address in.
    _dir: tempfile::TempDir,
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

impl ServerProcess {
    /// `streamwatch-server` on a fresh SQLite file.
    pub async fn streamwatch() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(sibling("streamwatch-server")?);
        command.arg("--data").arg(dir.path().join("bench.db"));
        Self::spawn(command, dir).await
    }

    /// This binary's bare tonic server answering GetWatch with `response`.
    pub async fn echo(response: &[u8]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["echo-server", "--response", &hex::encode(response)]);
        Self::spawn(command, dir).await
    }

    async fn spawn(mut command: Command, dir: tempfile::TempDir) -> anyhow::Result<Self> {
        command.env("RUST_LOG", "warn").stdout(Stdio::null());
        let process = streamwatch_testkit::ServerProcess::try_spawn(command, dir.path(), false)
            .await
            .context("cannot start the server")?;
        Ok(Self {
            endpoint: process.endpoint.clone(),
            process,
            _dir: dir,
        })
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
        self.process.child.id().context("the server has exited")
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
