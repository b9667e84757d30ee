//! The `--cluster` flags ([`ClusterArgs`]) and the settings under which
//! leases could not work ([`ClusterArgsError`]). Data only: nothing here
//! reads the table.

use std::time::Duration;

/// `--cluster` and its settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Run as one of many replicas sharing the DynamoDB table and the SQS
    /// queues (needs `--store dynamodb`). Without it a server assumes it is alone.
    #[arg(long, env = "STREAMWATCH_CLUSTER")]
    pub cluster: bool,

    /// This replica's name in the lease table (default: host name and a random suffix).
    #[arg(long, env = "STREAMWATCH_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Shards watches are split into for observer ownership (and the DynamoDB
    /// `live` index). Every replica of a table must use the same number.
    #[arg(long, env = "STREAMWATCH_SHARDS", default_value_t = crate::store::dynamodb::DEFAULT_SHARDS,
        value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,

    /// How long a lease whose heartbeat stands still stays with its owner
    /// before another replica takes it over.
    #[arg(long, env = "STREAMWATCH_LEASE_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How often a replica renews its leases, publishes its heartbeat and rebalances.
    #[arg(long, env = "STREAMWATCH_HEARTBEAT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// How often a replica reads the watches other replicas started; StartWatch
    /// waits until every replica has read its watch, at most twice this.
    #[arg(long, env = "STREAMWATCH_ROUTE_REFRESH", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub route_refresh: Duration,

    /// How often owners re-read their watches and subscribers re-read the
    /// event log, for what other replicas wrote.
    #[arg(long, env = "STREAMWATCH_LOG_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub log_poll: Duration,
}

/// Settings under which leases could not work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterArgsError {
    #[error("--heartbeat, --route-refresh and --log-poll must be above zero")]
    ZeroInterval,
    /// A lease would expire on one late heartbeat.
    #[error(
        "--lease-duration ({}) must be at least twice --heartbeat ({}): a lease must survive a late renewal",
        humantime::format_duration(*.lease_duration),
        humantime::format_duration(*.heartbeat)
    )]
    LeaseTooShort {
        lease_duration: Duration,
        heartbeat: Duration,
    },
}

impl ClusterArgs {
    /// Refuses settings under which leases could not work.
    pub fn check(&self) -> Result<(), ClusterArgsError> {
        if self.heartbeat.is_zero() || self.route_refresh.is_zero() || self.log_poll.is_zero() {
            return Err(ClusterArgsError::ZeroInterval);
        }
        if self.lease_duration < self.heartbeat * 2 {
            return Err(ClusterArgsError::LeaseTooShort {
                lease_duration: self.lease_duration,
                heartbeat: self.heartbeat,
            });
        }
        Ok(())
    }

    pub(super) fn replica(&self) -> String {
        self.replica_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
            let suffix = uuid::Uuid::now_v7().simple().to_string();
            format!("{host}-{}", &suffix[suffix.len() - 8..])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(lease_duration: u64, heartbeat: u64) -> ClusterArgs {
        ClusterArgs {
            cluster: true,
            replica_id: None,
            shards: 16,
            lease_duration: Duration::from_secs(lease_duration),
            heartbeat: Duration::from_secs(heartbeat),
            route_refresh: Duration::from_millis(500),
            log_poll: Duration::from_secs(1),
        }
    }

    #[test]
    fn settings_under_which_leases_cannot_work_are_refused_saying_why() {
        assert_eq!(args(10, 3).check(), Ok(()));
        assert_eq!(
            args(10, 0).check().unwrap_err().to_string(),
            "--heartbeat, --route-refresh and --log-poll must be above zero"
        );
        assert_eq!(
            args(5, 3).check().unwrap_err().to_string(),
            "--lease-duration (5s) must be at least twice --heartbeat (3s): a lease must survive a late renewal"
        );
    }
}
