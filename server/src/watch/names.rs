//! Typed ids and names, validated once at the edge: tenants, watch ids,
//! buckets, prefixes, key filters, a watch's source (objects or a group's
//! members) and its labels. Each parse names the field it refuses. Ids are
//! shared (`Arc<str>`): a watch's key is cloned into every index that names it.

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Longest prefix S3 could ever match: a key is at most 1024 bytes.
pub const MAX_PREFIX_BYTES: usize = 1024;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_BYTES: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
pub const MAX_CLIENT_TOKEN_BYTES: usize = 128;
pub const MAX_REASON_BYTES: usize = 1024;

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// An authenticated caller; owns its watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Tenant ids come from the tenants file: 1-64 of `[A-Za-z0-9._-]`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, Error> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(raw.into()))
        } else {
            Err(invalid(
                field,
                "must be 1-64 characters of A-Z a-z 0-9 . _ -",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A watch's id: a UUIDv7 (time-ordered) in its hyphenated form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WatchId(Arc<str>);

impl WatchId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string().into())
    }

    /// The id of a watch created at `at`, its other 74 bits from `random`.
    pub fn at(at: crate::clock::Timestamp, random: &mut fastrand::Rng) -> Self {
        let mut bytes = [0; 10];
        random.fill(&mut bytes);
        let millis = u64::try_from(at.as_millis()).unwrap_or(0);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid();
        Self(id.hyphenated().to_string().into())
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(invalid(field, "is required"));
        }
        uuid::Uuid::try_parse(raw)
            .map(|id| Self(id.hyphenated().to_string().into()))
            .map_err(|_| invalid(field, "is not a watch id (a UUID)"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An S3 bucket name, checked against the S3 naming rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bucket(Arc<str>);

/// Bucket name beginnings S3 reserves (punycode, its own configurator, documentation examples).
const RESERVED_BUCKET_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
/// Bucket name endings S3 reserves for access point aliases, Object Lambda,
/// Multi-Region Access Points, directory and table buckets.
const RESERVED_BUCKET_SUFFIXES: [&str; 5] =
    ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];

impl Bucket {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(invalid(field, "is required"));
        }
        if !(3..=63).contains(&raw.len()) {
            return Err(invalid(field, "must be 3-63 characters long"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(invalid(
                field,
                "may hold only lowercase letters, digits, '.' and '-'",
            ));
        }
        let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !edge_ok(raw.as_bytes()[0]) || !edge_ok(raw.as_bytes()[raw.len() - 1]) {
            return Err(invalid(field, "must begin and end with a letter or digit"));
        }
        if raw.contains("..") {
            return Err(invalid(field, "must not contain '..'"));
        }
        if raw.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(invalid(field, "must not be formatted as an IP address"));
        }
        if let Some(p) = RESERVED_BUCKET_PREFIXES
            .iter()
            .find(|p| raw.starts_with(*p))
        {
            return Err(invalid(
                field,
                format!("must not begin with {p:?} (reserved by S3)"),
            ));
        }
        if let Some(s) = RESERVED_BUCKET_SUFFIXES.iter().find(|s| raw.ends_with(*s)) {
            return Err(invalid(
                field,
                format!("must not end with {s:?} (reserved by S3)"),
            ));
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by bucket be looked up by a notification's bucket name.
/// `Bucket` derives its comparisons from the name, as `Borrow` requires.
impl std::borrow::Borrow<str> for Bucket {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key prefix; empty watches the whole bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Prefix(Arc<str>);

impl Prefix {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Error> {
        if raw.len() > MAX_PREFIX_BYTES {
            return Err(invalid(
                field,
                format!("is {} bytes; at most {MAX_PREFIX_BYTES}", raw.len()),
            ));
        }
        if raw.chars().any(|c| c == '\0') {
            return Err(invalid(field, "must not contain NUL"));
        }
        Ok(Self(raw.into()))
    }

    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(self.as_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `Prefix` derives its comparisons from the text, as `Borrow` requires.
impl std::borrow::Borrow<str> for Prefix {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Checks a marker key (`policy.marker.key`): the key below the prefix that
/// the producer writes last. The prefix and the key together must be a
/// valid S3 key; StartWatch checks that sum.
pub fn check_marker_key(field: &str, key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(invalid(
            field,
            "is required (the marker's key below the prefix, e.g. _SUCCESS)",
        ));
    }
    if key.starts_with('/') {
        return Err(invalid(
            field,
            "must not start with '/': it is the key below the prefix",
        ));
    }
    if key.len() > MAX_PREFIX_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes; at most {MAX_PREFIX_BYTES}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Most `include` (and, apart, `exclude`) patterns of one watch.
pub const MAX_KEY_PATTERNS: usize = 32;
/// Longest key pattern, in bytes.
pub const MAX_KEY_PATTERN_BYTES: usize = 256;

/// Which keys under the prefix belong to the data set: glob patterns on the
/// key below the prefix (`**` crosses `/`, `*` and `?` do not; `{a,b}` and
/// `[a-z]` as usual). A key belongs when it matches any `include` (no
/// `include`: every key) and no `exclude`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl KeyFilter {
    /// Checks both lists (errors name the field and index: `include[2]`).
    pub fn parse(include: Vec<String>, exclude: Vec<String>) -> Result<Self, Error> {
        for (field, patterns) in [("include", &include), ("exclude", &exclude)] {
            if patterns.len() > MAX_KEY_PATTERNS {
                return Err(invalid(
                    field,
                    format!(
                        "has {} patterns; at most {MAX_KEY_PATTERNS}",
                        patterns.len()
                    ),
                ));
            }
            for (i, pattern) in patterns.iter().enumerate() {
                let field = format!("{field}[{i}]");
                if pattern.is_empty() {
                    return Err(invalid(&field, "is empty"));
                }
                if pattern.len() > MAX_KEY_PATTERN_BYTES {
                    return Err(invalid(
                        &field,
                        format!(
                            "is {} bytes; at most {MAX_KEY_PATTERN_BYTES}",
                            pattern.len()
                        ),
                    ));
                }
                glob(pattern)
                    .map_err(|e| invalid(&field, format!("is not a glob: {}", e.kind())))?;
            }
        }
        Ok(Self { include, exclude })
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The patterns compiled for routing; `None` lets every key through.
    /// Patterns are checked when a watch starts, so stored ones compile; one
    /// that does not (damage) lets no key through.
    pub fn matcher(&self) -> Option<KeyMatcher> {
        if self.is_empty() {
            return None;
        }
        let set = |patterns: &[String]| -> Result<globset::GlobSet, globset::Error> {
            let mut b = globset::GlobSetBuilder::new();
            for p in patterns {
                b.add(glob(p)?);
            }
            b.build()
        };
        Some(match (set(&self.include), set(&self.exclude)) {
            (Ok(include), Ok(exclude)) => KeyMatcher {
                include: (!self.include.is_empty()).then_some(include),
                exclude,
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "a stored key pattern does not compile; the watch takes no keys");
                KeyMatcher {
                    include: Some(globset::GlobSet::empty()),
                    exclude: globset::GlobSet::empty(),
                }
            }
        })
    }
}

fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// A [`KeyFilter`], compiled.
#[derive(Clone, Debug)]
pub struct KeyMatcher {
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
}

impl KeyMatcher {
    /// Whether `below_prefix` (the key with the watch's prefix cut off) belongs.
    pub fn matches(&self, below_prefix: &str) -> bool {
        self.include
            .as_ref()
            .is_none_or(|i| i.is_match(below_prefix))
            && !self.exclude.is_match(below_prefix)
    }
}

/// Most members of one watch group.
pub const MAX_GROUP_MEMBERS: usize = 100;

/// What decides a watch's completion: the objects under a bucket's prefix
/// (counted from notifications), or other watches of the tenant (a watch
/// group, which takes no notifications).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Source {
    Objects(Objects),
    /// The watch group's members, in the order the caller named them.
    Members {
        members: Vec<WatchId>,
    },
}

/// The objects a watch counts: keys under `prefix` in `bucket` that pass `filter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objects {
    pub bucket: Bucket,
    pub prefix: Prefix,
    /// Which keys under the prefix count; absent from watches stored before it.
    #[serde(default, skip_serializing_if = "KeyFilter::is_empty")]
    pub filter: KeyFilter,
}

impl Source {
    pub fn objects(bucket: Bucket, prefix: Prefix, filter: KeyFilter) -> Self {
        Self::Objects(Objects {
            bucket,
            prefix,
            filter,
        })
    }

    /// The objects counted; `None` for a group.
    pub fn as_objects(&self) -> Option<&Objects> {
        match self {
            Self::Objects(o) => Some(o),
            Self::Members { .. } => None,
        }
    }

    /// A group's members; empty for a watch of objects.
    pub fn members(&self) -> &[WatchId] {
        match self {
            Self::Objects(_) => &[],
            Self::Members { members } => members,
        }
    }
}

/// Free-form labels a caller attaches to a watch and filters by.
pub type Labels = BTreeMap<String, String>;

pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            field,
            format!("has {} labels; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        let key_ok = (1..=MAX_LABEL_KEY_BYTES).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(invalid(
                field,
                format!(
                    "key {key:?} must be 1-{MAX_LABEL_KEY_BYTES} characters of A-Z a-z 0-9 . _ - /"
                ),
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Err(invalid(
                field,
                format!("value of {key:?} is over {MAX_LABEL_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}
