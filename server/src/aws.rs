//! The process's one AWS configuration: region, credentials and endpoint
//! from the standard chain (`AWS_ENDPOINT_URL` points it at an emulator),
//! loaded at most once and shared by everything that calls AWS: the DynamoDB
//! store, the queue consumers, listings and deliveries.
//!
//! It is loaded on first need, so a server that never calls AWS (the SQLite
//! store, no queues, no SQS, SNS or manifest targets) never looks for
//! credentials. It holds configuration only: the service clients are their
//! users' own.

use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};
use tokio::sync::OnceCell;

/// The shared AWS configuration; clones share one load.
#[derive(Clone, Debug, Default)]
pub struct AwsConfig(Arc<OnceCell<SdkConfig>>);

impl AwsConfig {
    /// Not loaded yet: the first [`get`](Self::get) loads it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration, loaded from the standard chain on the first call.
    pub async fn get(&self) -> &SdkConfig {
        self.0
            .get_or_init(|| aws_config::load_defaults(BehaviorVersion::latest()))
            .await
    }
}

/// S3 client settings from `shared`: buckets by path when an endpoint
/// override is set, as emulators serve them, by host name otherwise.
pub fn s3_config(shared: &SdkConfig) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(shared)
        .force_path_style(std::env::var_os("AWS_ENDPOINT_URL").is_some())
}
