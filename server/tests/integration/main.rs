//! The server's integration tests, one binary: each module is one area (its
//! own header says what it proves); the workspace's test kit
//! (`streamwatch-testkit`) starts servers, builds notification documents and
//! waits for them; `decision` is the decision harness.

mod bad_input;
mod callbacks;
mod cluster;
mod completion;
mod counting;
mod decision;
mod decision_quality;
mod health;
mod hostile;
mod list;
mod logs;
mod metrics;
mod observer;
mod quotas;
mod reconcile;
mod reload;
mod restart;
mod resume;
mod simulation;
mod sqs_ingest;
mod store_conformance;
mod tenancy;
mod tls;
mod traces;
