//! The server's integration tests, one binary: each module is one area (its
//! own header says what it proves); `support` starts servers and builds
//! notification documents for all of them; `decision` is the decision harness.

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
mod sqs_ingest;
mod store_conformance;
mod support;
mod tenancy;
mod tls;
mod traces;
