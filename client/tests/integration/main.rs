//! The client's integration tests, one binary: the CLI, the library's
//! connection options and typed requests, each against a real server;
//! `support` starts it.

mod cli_demo;
mod cli_exit_codes;
mod cli_ingest;
mod cli_json;
mod cli_snapshots;
mod cli_tls;
mod connect_options;
mod resume_across_restart;
mod support;
mod trace_context;
mod typed_requests;
