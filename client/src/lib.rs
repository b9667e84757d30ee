//! Rust client for streamwatch: connect (token, TLS, timeouts), start watches
//! from typed builders, read and cancel them, ingest notification documents,
//! and follow a watch's events through dropped connections and server
//! restarts without missing or repeating one.
//!
//! ```no_run
//! # async fn run() -> Result<(), streamwatch_client::Error> {
//! use std::time::Duration;
//! use streamwatch_client::{Client, WatchRequest};
//!
//! let mut client = Client::connect("http://127.0.0.1:50051").await?;
//! let started = client
//!     .start_watch(WatchRequest::new("data-lake").prefix("day=1/").quiet_period(Duration::from_secs(90)))
//!     .await?;
//! let watch = client.wait_for_completion(&started.watch.unwrap().watch_id).await?;
//! println!("{} objects landed", watch.object_count);
//! # Ok(())
//! # }
//! ```
//!
//! The library itself never prints, reads files or starts processes; the
//! `streamwatch` binary (feature `cli`) does that. Feature `otel` (on by
//! default, as `cli` is) sends the current OpenTelemetry context with each call.

mod client;
mod connect;
mod error;
mod events;
mod policy;
mod request;

pub use client::Client;
pub use connect::{ConnectOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
pub use error::Error;
pub use events::{Backoff, EventStream, is_terminal};
pub use policy::{Adaptive, DelaySchedule, NotifyTarget, Policy, Rule};
pub use request::{ListFilter, WatchRequest};
pub use streamwatch::{DEFAULT_ENDPOINT, v1 as proto};
