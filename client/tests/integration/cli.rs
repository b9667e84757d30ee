//! The `streamwatch` binary run as a user runs it, against a server the
//! test kit started: with none of the caller's `STREAMWATCH_*` settings
//! leaking in, stdin fed, and its exit code and output captured. The
//! binary is this crate's own, so this lives here and not in the kit.

use std::{path::PathBuf, process::Stdio, time::Duration};

use streamwatch_testkit::TestServer;
use tokio::io::AsyncWriteExt;

/// How long any single step of a test may take before it fails.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Runs the `streamwatch` binary against a server.
pub trait RunCli {
    /// The binary, its endpoint set to this server.
    fn cli(&self) -> Cli;
}

impl RunCli for TestServer {
    fn cli(&self) -> Cli {
        Cli::new().env("STREAMWATCH_ENDPOINT", &self.endpoint())
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
