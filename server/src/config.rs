//! Server configuration: every flag has an environment variable, durations
//! are human (`10s`, `1m`), and the defaults run the embedded store on
//! loopback with nothing to install.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

pub const DEFAULT_DATA_FILE: &str = "streamwatch.db";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "10s";

/// streamwatch: tells you when a data set has finished landing in object storage.
#[derive(Clone, Debug, Parser)]
#[command(name = "streamwatch-server", version, about)]
pub struct Config {
    /// Address to serve gRPC on. Without a tenants file only loopback addresses are allowed.
    #[arg(long, env = "STREAMWATCH_LISTEN", default_value = streamwatch::DEFAULT_LISTEN_ADDR)]
    pub listen: SocketAddr,

    /// SQLite file holding watches, counters and event logs (created if missing).
    #[arg(long, env = "STREAMWATCH_DATA", default_value = DEFAULT_DATA_FILE)]
    pub data: PathBuf,

    /// Tenants file (TOML). Without one, a single tenant `default` runs without tokens.
    #[arg(long, env = "STREAMWATCH_TENANTS")]
    pub tenants: Option<PathBuf>,

    /// How long shutdown waits for in-flight calls before closing connections.
    #[arg(long, env = "STREAMWATCH_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: `text` or `json`.
    #[arg(long, env = "STREAMWATCH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// The configuration of a server started with no flags and no environment.
    pub fn embedded_default() -> Self {
        Self::parse_from(["streamwatch-server"])
    }
}
