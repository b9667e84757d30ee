//! Typed requests for the common calls: [`WatchRequest`] for StartWatch (a
//! watch of a bucket, or a watch group over other watches) and
//! [`ListFilter`] for ListWatches. They convert to the protobuf requests, so
//! a caller never has to fill in protobuf structs for the usual paths.

use std::{collections::BTreeMap, time::Duration};

use streamwatch::v1;

use crate::policy::{Policy, Rule};

/// A watch to start on `bucket`.
///
/// ```
/// use std::time::Duration;
/// use streamwatch_client::WatchRequest;
///
/// let request = WatchRequest::new("data-lake")
///     .prefix("day=1/")
///     .quiet_period(Duration::from_secs(90))
///     .timeout(Duration::from_secs(3600))
///     .label("job", "daily-report");
/// # let _ = request;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct WatchRequest {
    pub bucket: String,
    pub prefix: String,
    /// Globs on the key below the prefix; a key counts when it matches any
    /// (none: every key) ...
    pub include: Vec<String>,
    /// ... and none of these.
    pub exclude: Vec<String>,
    pub policy: Policy,
    pub labels: BTreeMap<String, String>,
    pub client_token: Option<String>,
    /// A watch group's members (watch ids); empty for a watch of a bucket.
    pub members: Vec<String>,
}

impl WatchRequest {
    /// A watch on the whole bucket under the server's default policy.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            policy: Policy::default(),
            labels: BTreeMap::new(),
            client_token: None,
            members: Vec::new(),
        }
    }

    /// A watch group: completes once every one of `members` (ids of the
    /// caller's watches) has completed. Takes no bucket, prefix, key filter or
    /// rule; timeout, late window and labels apply.
    ///
    /// ```
    /// use streamwatch_client::WatchRequest;
    ///
    /// let request = WatchRequest::group(["0193a5c0-0000-7000-8000-000000000001"])
    ///     .member("0193a5c0-0000-7000-8000-000000000002");
    /// # let _ = request;
    /// ```
    pub fn group(members: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            members: members.into_iter().map(Into::into).collect(),
            ..Self::new("")
        }
    }

    /// Adds a member to a watch group.
    pub fn member(mut self, watch_id: impl Into<String>) -> Self {
        self.members.push(watch_id.into());
        self
    }

    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Counts only keys matching `pattern` (or another include), a glob on
    /// the key below the prefix: `**/*.parquet`. `**` crosses `/`, `*` does not.
    pub fn include(mut self, pattern: impl Into<String>) -> Self {
        self.include.push(pattern.into());
        self
    }

    /// Leaves out keys matching `pattern`: `_temporary/**`, `**/_SUCCESS`.
    pub fn exclude(mut self, pattern: impl Into<String>) -> Self {
        self.exclude.push(pattern.into());
        self
    }

    /// Replaces the whole policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Completes `window` after the last activity (keeps the limits set so far).
    pub fn quiet_period(mut self, window: Duration) -> Self {
        self.policy.rule = Some(Rule::QuietPeriod { window });
        self
    }

    /// Completes when `objects` distinct objects landed (keeps the limits set so far).
    pub fn expected_count(mut self, objects: u64) -> Self {
        self.policy.rule = Some(Rule::ExpectedCount {
            objects,
            quiet_window: None,
        });
        self
    }

    /// The classic polling rule (keeps the limits set so far).
    pub fn polling(mut self, delay: Duration, max_repeats: u32) -> Self {
        self.policy.rule = Policy::polling(delay, max_repeats).rule;
        self
    }

    pub fn min_objects(mut self, objects: u64) -> Self {
        self.policy.min_objects = objects;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.policy.timeout = Some(timeout);
        self
    }

    pub fn late_window(mut self, window: Duration) -> Self {
        self.policy.late_window = Some(window);
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Makes the call idempotent: retrying with the same token returns the
    /// watch the first call started.
    pub fn client_token(mut self, token: impl Into<String>) -> Self {
        self.client_token = Some(token.into());
        self
    }
}

impl From<WatchRequest> for v1::StartWatchRequest {
    fn from(request: WatchRequest) -> Self {
        let policy = (request.policy != Policy::default()).then(|| request.policy.into());
        v1::StartWatchRequest {
            bucket: request.bucket,
            prefix: request.prefix,
            policy,
            labels: request.labels.into_iter().collect(),
            client_token: request.client_token.unwrap_or_default(),
            include: request.include,
            exclude: request.exclude,
            members: request.members,
        }
    }
}

/// Which watches to list: all of the caller's by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListFilter {
    pub state: Option<v1::WatchState>,
    pub labels: BTreeMap<String, String>,
}

impl ListFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Only watches in `state`.
    pub fn state(mut self, state: v1::WatchState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only watches carrying this label (every label given must match).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub(crate) fn page(&self, page_token: String) -> v1::ListWatchesRequest {
        v1::ListWatchesRequest {
            state: self.state.unwrap_or(v1::WatchState::Unspecified) as i32,
            labels: self.labels.clone().into_iter().collect(),
            page_size: 0,
            page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_policy_leaves_it_to_the_server() {
        let request: v1::StartWatchRequest = WatchRequest::new("lake").prefix("a/").into();
        assert_eq!(request.policy, None);
        assert_eq!(
            (request.bucket.as_str(), request.prefix.as_str()),
            ("lake", "a/")
        );
    }

    #[test]
    fn limits_survive_a_later_rule() {
        let request: v1::StartWatchRequest = WatchRequest::new("lake")
            .timeout(Duration::from_secs(10))
            .min_objects(2)
            .expected_count(5)
            .label("job", "x")
            .client_token("t-1")
            .into();
        let policy = request.policy.expect("policy");
        assert_eq!(policy.timeout.map(|d| d.seconds), Some(10));
        assert_eq!(policy.min_objects, 2);
        assert!(matches!(
            policy.rule,
            Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
                objects: 5,
                ..
            }))
        ));
        assert_eq!(request.labels.get("job").map(String::as_str), Some("x"));
        assert_eq!(request.client_token, "t-1");
    }

    #[test]
    fn a_group_names_members_and_no_bucket() {
        let request: v1::StartWatchRequest = WatchRequest::group(["a", "b"])
            .member("c")
            .timeout(Duration::from_secs(60))
            .into();
        assert_eq!(request.members, ["a", "b", "c"]);
        assert_eq!(request.bucket, "");
        assert_eq!(request.policy.and_then(|p| p.rule), None);
    }

    #[test]
    fn key_filters_keep_their_order() {
        let request: v1::StartWatchRequest = WatchRequest::new("lake")
            .include("**/*.parquet")
            .include("*.csv")
            .exclude("_temporary/**")
            .into();
        assert_eq!(request.include, ["**/*.parquet", "*.csv"]);
        assert_eq!(request.exclude, ["_temporary/**"]);
    }
}
