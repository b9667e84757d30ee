//! The client's integration tests, one binary: the CLI, the library's
//! connection options and typed requests, each against a real server that
//! the workspace's test kit (`streamwatch-testkit`) starts; `cli` runs the
//! `streamwatch` binary.

mod cli;
mod cli_demo;
mod cli_exit_codes;
mod cli_ingest;
mod cli_json;
mod cli_snapshots;
mod cli_tls;
mod connect_options;
mod resume_across_restart;
mod trace_context;
mod typed_requests;
