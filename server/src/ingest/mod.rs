//! Storage notifications in: parses notification documents (S3 `Records`,
//! SNS envelopes, EventBridge events, `s3:TestEvent`) into activities,
//! authorizes each bucket for the caller, routes each key to the watches whose
//! prefix it falls under and whose key filter takes it, and records them
//! through the store in one batch. A key a watch's filter leaves out is
//! nothing to that watch: neither counted nor activity.
//!
//! [`sqs`] consumes the same documents from SQS queues. [`Watermarks`] says
//! how far those queues have caught up, so no watch is called quiet while its
//! notifications may still sit in a queue.
//!
//! [`Routes`] is the in-memory routing table (which watches want which
//! bucket); the observer keeps it current. It also tracks batches that are
//! routed but not yet recorded, so the observer never calls a watch quiet
//! while activity for it is still on its way.

pub mod marker;
pub mod reconcile;
pub mod sqs;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
};

use aws_lambda_events::{
    eventbridge::EventBridgeEvent,
    s3::S3Event,
    sns::{SnsEvent, SnsMessage},
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::{
    auth::LiveTenants,
    clock::{Clock, Timestamp},
    error::Error,
    metrics::{Metrics, Notifications},
    observer::ObserverHandle,
    store::{Activity, ActivityKind, Recorded, Store},
    watch::{Bucket, KeyFilter, KeyMatcher, Prefix, Source, TenantId, WatchKey},
};

/// Largest notification document accepted (SQS and SNS cap bodies at 256 KiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most documents in one IngestS3Events call.
pub const MAX_DOCUMENTS: usize = 1000;
/// Most records across the documents of one call.
pub const MAX_RECORDS: usize = 10_000;
/// How deep SNS envelopes may nest.
const MAX_DEPTH: usize = 2;

/// One object-level fact from a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub bucket: String,
    /// Decoded: `+` is a space and `%XX` escapes are resolved.
    pub key: String,
    pub kind: NotificationKind,
    pub sequencer: String,
    /// `s3.object.size` (EventBridge: `detail.object.size`); 0 when absent.
    pub size: u64,
    /// `eventTime` (EventBridge: `time`), when the document had one.
    pub event_time: Option<Timestamp>,
}

/// An instant from a notification; the epoch stands for "not given".
fn event_instant(millis: i64) -> Option<Timestamp> {
    (millis > 0).then(|| Timestamp::from_millis(millis))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotificationKind {
    Created,
    Removed,
    /// Restores, replication, tagging...: not object activity.
    Other(String),
}

/// What one document held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Records(Vec<Notification>),
    /// `s3:TestEvent`, sent when a notification configuration is saved.
    Test,
}

/// The S3 part of an EventBridge `Object Created` / `Object Deleted` event.
#[derive(Debug, Deserialize, Serialize)]
struct S3Detail {
    bucket: DetailBucket,
    object: DetailObject,
}

#[derive(Debug, Deserialize, Serialize)]
struct DetailBucket {
    name: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct DetailObject {
    key: String,
    #[serde(default)]
    sequencer: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

/// Longest object key S3 allows, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why an object key in a notification cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A `%` not followed by two hex digits, at byte `at`.
    #[error("key {raw:?} has an invalid percent-escape at byte {at}")]
    InvalidEscape { raw: String, at: usize },
    #[error("key {raw:?} does not decode to UTF-8")]
    NotUtf8 { raw: String },
    #[error("key is empty")]
    Empty,
    /// Longer than [`MAX_KEY_BYTES`] once decoded.
    #[error("key is {bytes} bytes; S3 keys are at most {MAX_KEY_BYTES}")]
    TooLong { bytes: usize },
}

/// Why a notification document is rejected; a rejected document changes
/// nothing. Parser messages are kept as text (serde's errors are not `Clone`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("document is {bytes} bytes; at most {MAX_DOCUMENT_BYTES}")]
    TooLarge { bytes: usize },
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("a notification document must be a JSON object")]
    NotAnObject,
    #[error("invalid SNS event: {0}")]
    InvalidSnsEvent(String),
    #[error("invalid S3 event: {0}")]
    InvalidS3Event(String),
    /// `Records[index].field` is absent (or an empty bucket name).
    #[error("Records[{index}].{field} is missing")]
    MissingField { index: usize, field: &'static str },
    #[error("Records[{index}].s3.object.{key}")]
    RecordKey { index: usize, key: KeyError },
    #[error("invalid SNS envelope: {0}")]
    InvalidSnsEnvelope(String),
    #[error("SNS envelopes nested too deep")]
    NestedTooDeep,
    #[error("SNS Message is not JSON: {0}")]
    SnsMessageNotJson(String),
    #[error("invalid EventBridge S3 event: {0}")]
    InvalidEventBridge(String),
    #[error("EventBridge source {0:?} is not aws.s3")]
    NotS3Source(String),
    #[error("detail.object.{0}")]
    DetailKey(KeyError),
    #[error(
        "not a storage notification: expected S3 Records, an SNS envelope, an EventBridge event or s3:TestEvent"
    )]
    Unrecognised,
}

/// Decodes a key as S3 writes it into notifications (form-encoded: `+` is a
/// space). A `%` not followed by two hex digits is an error, not a literal:
/// taken literally, `a%ZZ` and `a%25ZZ` would count as one key.
pub fn decode_key(raw: &str) -> Result<String, KeyError> {
    let bytes = raw.as_bytes();
    if let Some(at) = bytes.iter().enumerate().position(|(i, b)| {
        *b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    }) {
        return Err(KeyError::InvalidEscape {
            raw: raw.to_owned(),
            at,
        });
    }
    let spaced = raw.replace('+', " ");
    let key = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| KeyError::NotUtf8 {
            raw: raw.to_owned(),
        })?;
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { bytes: key.len() });
    }
    Ok(key)
}

fn kind_of(event_name: &str) -> NotificationKind {
    let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    if name.starts_with("ObjectCreated:") {
        NotificationKind::Created
    } else if name.starts_with("ObjectRemoved:") || name == "LifecycleExpiration:Delete" {
        NotificationKind::Removed
    } else {
        NotificationKind::Other(event_name.to_owned())
    }
}

/// Parses one notification document.
pub fn parse_document(raw: &str) -> Result<Document, DocumentError> {
    if raw.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge { bytes: raw.len() });
    }
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| DocumentError::MalformedJson(e.to_string()))?;
    parse_value(&value, 0)
}

fn parse_value(value: &serde_json::Value, depth: usize) -> Result<Document, DocumentError> {
    let obj = value.as_object().ok_or(DocumentError::NotAnObject)?;
    if obj.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Document::Test);
    }
    if let Some(records) = obj.get("Records") {
        let is_sns = records
            .as_array()
            .and_then(|r| r.first())
            .is_some_and(|r| r.get("Sns").is_some());
        if is_sns {
            let event = SnsEvent::deserialize(value)
                .map_err(|e| DocumentError::InvalidSnsEvent(e.to_string()))?;
            let mut out = Vec::new();
            for record in event.records {
                if let Document::Records(mut inner) = parse_sns_message(&record.sns.message, depth)?
                {
                    out.append(&mut inner);
                }
            }
            return Ok(Document::Records(out));
        }
        let event = S3Event::deserialize(&*with_optional_parts(value))
            .map_err(|e| DocumentError::InvalidS3Event(e.to_string()))?;
        let mut out = Vec::with_capacity(event.records.len());
        for (i, record) in event.records.into_iter().enumerate() {
            let bucket = record.s3.bucket.name.filter(|b| !b.is_empty());
            let missing = |field| DocumentError::MissingField { index: i, field };
            let bucket = bucket.ok_or_else(|| missing("s3.bucket.name"))?;
            let key = record
                .s3
                .object
                .key
                .ok_or_else(|| missing("s3.object.key"))?;
            let name = record.event_name.ok_or_else(|| missing("eventName"))?;
            out.push(Notification {
                bucket,
                key: decode_key(&key).map_err(|key| DocumentError::RecordKey { index: i, key })?,
                kind: kind_of(&name),
                sequencer: record.s3.object.sequencer.unwrap_or_default(),
                size: record
                    .s3
                    .object
                    .size
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                event_time: event_instant(record.event_time.timestamp_millis()),
            });
        }
        return Ok(Document::Records(out));
    }
    if obj.get("Type").and_then(|t| t.as_str()) == Some("Notification")
        && obj.contains_key("Message")
    {
        let message = SnsMessage::deserialize(value)
            .map_err(|e| DocumentError::InvalidSnsEnvelope(e.to_string()))?;
        return parse_sns_message(&message.message, depth);
    }
    if obj.contains_key("detail-type") && obj.contains_key("detail") {
        let event = EventBridgeEvent::<S3Detail>::deserialize(value)
            .map_err(|e| DocumentError::InvalidEventBridge(e.to_string()))?;
        if event.source != "aws.s3" {
            return Err(DocumentError::NotS3Source(event.source));
        }
        let kind = match event.detail_type.as_str() {
            "Object Created" => NotificationKind::Created,
            "Object Deleted" => NotificationKind::Removed,
            other => NotificationKind::Other(other.to_owned()),
        };
        return Ok(Document::Records(vec![Notification {
            bucket: event.detail.bucket.name,
            key: decode_key(&event.detail.object.key).map_err(DocumentError::DetailKey)?,
            kind,
            sequencer: event.detail.object.sequencer.unwrap_or_default(),
            size: event.detail.object.size.unwrap_or(0),
            event_time: event.time.and_then(|t| event_instant(t.timestamp_millis())),
        }]));
    }
    Err(DocumentError::Unrecognised)
}

/// Record parts that carry nothing streamwatch reads and that some
/// S3-compatible senders leave out; filled in empty so their records parse.
const OPTIONAL_RECORD_PARTS: [&str; 3] = ["userIdentity", "requestParameters", "responseElements"];

fn with_optional_parts(value: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    let complete = |r: &serde_json::Value| OPTIONAL_RECORD_PARTS.iter().all(|p| r.get(p).is_some());
    let records = value.get("Records").and_then(|r| r.as_array());
    if records.is_none_or(|r| r.iter().all(complete)) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut filled = value.clone();
    if let Some(records) = filled.get_mut("Records").and_then(|r| r.as_array_mut()) {
        for record in records.iter_mut().filter_map(|r| r.as_object_mut()) {
            for part in OPTIONAL_RECORD_PARTS {
                record.entry(part).or_insert_with(|| serde_json::json!({}));
            }
        }
    }
    std::borrow::Cow::Owned(filled)
}

fn parse_sns_message(message: &str, depth: usize) -> Result<Document, DocumentError> {
    if depth >= MAX_DEPTH {
        return Err(DocumentError::NestedTooDeep);
    }
    let inner: serde_json::Value = serde_json::from_str(message)
        .map_err(|e| DocumentError::SnsMessageNotJson(e.to_string()))?;
    parse_value(&inner, depth + 1)
}

#[derive(Clone, Debug)]
/// The watches of one bucket, indexed by prefix. A key matches exactly the
/// prefixes that are its leading bytes, so a lookup tries one hash probe per
/// prefix length in use instead of comparing the key with every watch; then
/// each watch's key filter, if it has one, sees the key below the prefix.
#[derive(Default)]
struct BucketRoutes {
    by_prefix: HashMap<Prefix, Watchers>,
    /// How many distinct prefixes of each length (in bytes) are routed.
    lengths: BTreeMap<usize, usize>,
}

/// What one watch takes below its prefix.
#[derive(Clone, Debug)]
struct Route {
    filter: Option<Arc<KeyMatcher>>,
    /// The marker key below the prefix (`policy.marker`): routed whatever the filter says.
    marker: Option<Box<str>>,
}

/// The watches of one prefix: nearly always one, kept in place (a map per
/// prefix would cost a million watches on distinct prefixes a few hundred
/// megabytes); a map once a second watch shares the prefix.
#[derive(Clone, Debug)]
enum Watchers {
    One(WatchKey, Route),
    Many(HashMap<WatchKey, Route>),
}

impl Watchers {
    fn insert(&mut self, key: WatchKey, route: Route) {
        match self {
            Self::One(only, existing) if *only == key => *existing = route,
            Self::One(only, existing) => {
                let first = (only.clone(), existing.clone());
                *self = Self::Many(HashMap::from([first, (key, route)]));
            }
            Self::Many(map) => {
                map.insert(key, route);
            }
        }
    }

    /// Removes `key`; whether no watch is left.
    fn remove(&mut self, key: &WatchKey) -> bool {
        match self {
            Self::One(only, _) => only == key,
            Self::Many(map) => {
                map.remove(key);
                map.is_empty()
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&WatchKey, &Route)> {
        let (one, many) = match self {
            Self::One(key, route) => (Some((key, route)), None),
            Self::Many(map) => (None, Some(map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl BucketRoutes {
    fn add(&mut self, prefix: &Prefix, key: &WatchKey, route: Route) {
        match self.by_prefix.get_mut(prefix.as_str()) {
            Some(watchers) => watchers.insert(key.clone(), route),
            None => {
                *self.lengths.entry(prefix.as_str().len()).or_default() += 1;
                self.by_prefix
                    .insert(prefix.clone(), Watchers::One(key.clone(), route));
            }
        }
    }

    fn remove(&mut self, prefix: &Prefix, key: &WatchKey) {
        let Some(watchers) = self.by_prefix.get_mut(prefix.as_str()) else {
            return;
        };
        if watchers.remove(key) {
            self.by_prefix.remove(prefix.as_str());
            let len = prefix.as_str().len();
            if let Some(n) = self.lengths.get_mut(&len) {
                *n -= 1;
                if *n == 0 {
                    self.lengths.remove(&len);
                }
            }
        }
    }

    /// The watches whose prefix `key` starts with and whose filter takes it,
    /// each with whether `key` is its marker.
    fn matching<'a>(&'a self, key: &'a str) -> impl Iterator<Item = (&'a WatchKey, bool)> + 'a {
        self.lengths
            .keys()
            .take_while(move |&&len| len <= key.len())
            .filter_map(move |&len| Some((key.get(..len)?, &key[len..])))
            .filter_map(|(prefix, below)| Some((self.by_prefix.get(prefix)?, below)))
            .flat_map(|(watches, below)| {
                watches.iter().filter_map(move |(key, route)| {
                    if route.marker.as_deref() == Some(below) {
                        return Some((key, true));
                    }
                    let takes = route.filter.as_ref().is_none_or(|f| f.matches(below));
                    takes.then_some((key, false))
                })
            })
    }

    fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// How long a notification waits for stale routes to be refreshed before
/// ingest gives up with UNAVAILABLE (the queue redelivers it).
const FRESH_ROUTES_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which watches want which bucket, and which have activity on its way.
#[derive(Default)]
pub struct Routes {
    by_bucket: RwLock<HashMap<Bucket, BucketRoutes>>,
    in_flight: Mutex<HashMap<WatchKey, usize>>,
    /// In a cluster: when the last route refresh started, and how old it may
    /// be when a notification is routed (see [`crate::cluster`]).
    freshness: Option<(
        tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
        std::time::Duration,
    )>,
}

impl Routes {
    /// A table that other replicas add to: routing waits until it was
    /// refreshed within `staleness`.
    pub fn refreshed(
        fresh: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
        staleness: std::time::Duration,
    ) -> Self {
        Self {
            freshness: Some((fresh, staleness)),
            ..Self::default()
        }
    }

    /// Returns once the table holds every watch started more than its
    /// staleness ago (at once outside a cluster).
    async fn wait_fresh(&self) -> Result<(), Error> {
        let Some((fresh, staleness)) = &self.freshness else {
            return Ok(());
        };
        let mut fresh = fresh.clone();
        let is_fresh =
            |at: &Option<tokio::time::Instant>| at.is_some_and(|at| at.elapsed() <= *staleness);
        if is_fresh(&fresh.borrow_and_update()) {
            return Ok(());
        }
        match tokio::time::timeout(FRESH_ROUTES_WAIT, fresh.wait_for(is_fresh)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unavailable {
                message: "the routing table could not be refreshed from the store; retry".into(),
                retry_after: Some(crate::store::BUSY_RETRY),
            }),
        }
    }

    /// Routes the keys of `bucket` under `prefix` that `filter` takes to
    /// `key`, and the marker key below the prefix, if any, as its marker.
    pub fn add(
        &self,
        bucket: &Bucket,
        key: &WatchKey,
        prefix: &Prefix,
        filter: &KeyFilter,
        marker: Option<&str>,
    ) {
        let route = Route {
            filter: filter.matcher().map(Arc::new),
            marker: marker.map(Into::into),
        };
        let mut map = self.by_bucket.write().unwrap_or_else(|p| p.into_inner());
        map.entry(bucket.clone())
            .or_default()
            .add(prefix, key, route);
    }

    /// Routes what `source` counts to `key`, and its marker key below the
    /// prefix, if any, as its marker (a group counts nothing).
    pub fn add_source(&self, source: &Source, key: &WatchKey, marker: Option<&str>) {
        if let Some(o) = source.as_objects() {
            self.add(&o.bucket, key, &o.prefix, &o.filter, marker);
        }
    }

    /// Undoes [`Self::add_source`].
    pub fn remove_source(&self, source: &Source, key: &WatchKey) {
        if let Some(o) = source.as_objects() {
            self.remove(&o.bucket, key, &o.prefix);
        }
    }

    pub fn remove(&self, bucket: &Bucket, key: &WatchKey, prefix: &Prefix) {
        let mut map = self.by_bucket.write().unwrap_or_else(|p| p.into_inner());
        if let Some(routes) = map.get_mut(bucket) {
            routes.remove(prefix, key);
            if routes.is_empty() {
                map.remove(bucket);
            }
        }
    }

    /// Whether a routed batch for `key` is not yet recorded.
    pub fn in_flight(&self, key: &WatchKey) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|n| *n > 0)
    }

    fn begin(self: &Arc<Self>, keys: Vec<WatchKey>) -> InFlight {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for k in &keys {
            *map.entry(k.clone()).or_default() += 1;
        }
        InFlight {
            routes: self.clone(),
            keys,
        }
    }
}

/// Marks watches as having a batch on its way until dropped.
struct InFlight {
    routes: Arc<Routes>,
    keys: Vec<WatchKey>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self
            .routes
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }
}

/// How far each notification queue has caught up: every notification sent
/// to it before its mark has been recorded. With no queues nothing can be in
/// flight outside the process, and the settled instant is [`Timestamp::MAX`].
///
/// It also holds the instants decisions will want the queues settled past
/// (quiet deadlines, polling samples, held decisions: the observer keeps
/// them), so a consumer ends its long poll by the next one and confirms
/// with a short receive started after it, instead of a long poll that only
/// comes back after its full wait.
pub struct Watermarks {
    queues: Mutex<Vec<Option<Timestamp>>>,
    settled: tokio::sync::watch::Sender<Timestamp>,
    /// Wanted instants, with how many watches want each.
    wanted: Mutex<BTreeMap<Timestamp, usize>>,
}

impl Watermarks {
    pub fn new(queues: usize) -> Self {
        let initial = if queues == 0 {
            Timestamp::MAX
        } else {
            Timestamp::from_millis(0)
        };
        Self {
            queues: Mutex::new(vec![None; queues]),
            settled: tokio::sync::watch::channel(initial).0,
            wanted: Mutex::new(BTreeMap::new()),
        }
    }

    /// One watch's wanted instant moves from `from` to `to` (either may be none).
    pub fn rewant(&self, from: Option<Timestamp>, to: Option<Timestamp>) {
        if from == to {
            return;
        }
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(from) = from
            && let Some(n) = wanted.get_mut(&from)
        {
            *n -= 1;
            if *n == 0 {
                wanted.remove(&from);
            }
        }
        if let Some(to) = to {
            *wanted.entry(to).or_default() += 1;
        }
    }

    /// The earliest instant a decision wants settled (passed already while
    /// a decision waits for it or is about to be made again).
    pub fn next_wanted(&self) -> Option<Timestamp> {
        let wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        wanted.keys().next().copied()
    }

    /// Follows the settled instant (the lowest mark over all queues).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Timestamp> {
        self.settled.subscribe()
    }

    pub fn settled_until(&self) -> Timestamp {
        *self.settled.borrow()
    }

    /// Queue `queue` has caught up to `to` (marks only move forward).
    pub fn advance(&self, queue: usize, to: Timestamp) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mark) = queues.get_mut(queue) else {
            return;
        };
        if mark.is_some_and(|m| m >= to) {
            return;
        }
        *mark = Some(to);
        let settled = queues
            .iter()
            .map(|m| m.unwrap_or(Timestamp::from_millis(0)))
            .min()
            .unwrap_or(Timestamp::MAX);
        self.settled.send_if_modified(|current| {
            let changed = *current != settled;
            *current = settled;
            changed
        });
    }
}

/// The outcome of one ingest call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub records: u64,
    pub matched: u64,
    pub counted: u64,
    pub duplicates: u64,
    pub ignored: u64,
    /// `(document index, reason)`; a rejected document changes nothing.
    pub rejected: Vec<(u32, String)>,
}

pub struct Ingest {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) observer: ObserverHandle,
    pub(crate) tenants: LiveTenants,
    pub(crate) clock: Clock,
    pub(crate) metrics: Arc<Metrics>,
}

/// Whose watches a batch of notifications counts into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience<'a> {
    /// The bucket's own notifications (the server's queues, or a tenant the
    /// tenants file names a `forwarder`): every tenant allowed the bucket.
    AllowedTenants,
    /// Notifications a tenant sent through IngestS3Events: its own watches
    /// only, so it can neither count into nor learn of another's.
    Tenant(&'a TenantId),
}

impl Audience<'_> {
    fn includes(self, tenant: &TenantId) -> bool {
        match self {
            Self::AllowedTenants => true,
            Self::Tenant(t) => t == tenant,
        }
    }
}

/// The documents of one IngestS3Events call, parsed and authorized, not yet recorded.
pub struct Parsed {
    notifications: Vec<Notification>,
    report: IngestReport,
    cost: usize,
}

impl Parsed {
    /// What the call costs against the tenant's ingest rate: each document
    /// its number of notification records, at least 1 (a test event, a
    /// rejected document), so parsing is never free.
    pub fn cost(&self) -> usize {
        self.cost
    }
}

impl Ingest {
    /// Parses `documents` sent by `caller` and authorizes their buckets; a
    /// document naming a bucket `caller` may not use is rejected whole.
    pub fn parse(&self, caller: &TenantId, documents: &[String]) -> Result<Parsed, Error> {
        if documents.len() > MAX_DOCUMENTS {
            return Err(Error::invalid(
                "documents",
                format!("{} documents; at most {MAX_DOCUMENTS}", documents.len()),
            ));
        }
        let mut report = IngestReport::default();
        let mut notifications = Vec::new();
        let mut cost = 0;
        let tenants = self.tenants.current();
        for (i, raw) in documents.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let parsed = parse_document(raw);
            cost += match &parsed {
                Ok(Document::Records(records)) => records.len().max(1),
                _ => 1,
            };
            match parsed {
                Ok(Document::Test) => report.ignored += 1,
                Ok(Document::Records(records)) => {
                    if let Some(b) = records.iter().find(|n| !tenants.allows(caller, &n.bucket)) {
                        report.rejected.push((
                            index,
                            format!("bucket {:?} is not allowed for this tenant", b.bucket),
                        ));
                        continue;
                    }
                    notifications.extend(records);
                    if notifications.len() > MAX_RECORDS {
                        return Err(Error::invalid(
                            "documents",
                            format!(
                                "more than {MAX_RECORDS} records in one call; nothing was recorded"
                            ),
                        ));
                    }
                }
                Err(reason) => report.rejected.push((index, reason.to_string())),
            }
        }
        report.records = notifications.len() as u64;
        Ok(Parsed {
            notifications,
            report,
            cost,
        })
    }

    /// Records what [`Ingest::parse`] accepted into the watches of `audience`.
    pub async fn record_parsed(
        &self,
        parsed: Parsed,
        audience: Audience<'_>,
    ) -> Result<IngestReport, Error> {
        let Parsed {
            notifications,
            mut report,
            cost: _,
        } = parsed;
        self.metrics
            .notifications(Notifications::Rejected, report.rejected.len() as u64);
        self.metrics
            .notifications(Notifications::Ignored, report.ignored);
        self.record(&notifications, audience, &mut report).await?;
        Ok(report)
    }

    /// Routes parsed notifications to the watches that want them (of
    /// `audience`'s tenants allowed the bucket) and records them; adds the
    /// outcome to `report`.
    pub async fn record(
        &self,
        notifications: &[Notification],
        audience: Audience<'_>,
        report: &mut IngestReport,
    ) -> Result<(), Error> {
        let before = report.clone();
        let span = tracing::info_span!(
            "ingest.batch",
            records = notifications.len() as i64,
            matched = tracing::field::Empty,
            counted = tracing::field::Empty,
            duplicates = tracing::field::Empty,
        );
        let result = self
            .route_and_record(notifications, audience, report)
            .instrument(span.clone())
            .await;
        let delta = |after: u64, before: u64| after.saturating_sub(before);
        let (matched, counted, duplicates, ignored) = (
            delta(report.matched, before.matched),
            delta(report.counted, before.counted),
            delta(report.duplicates, before.duplicates),
            delta(report.ignored, before.ignored),
        );
        // Span fields as i64: the OpenTelemetry bridge exports u64 as text.
        span.record("matched", matched as i64);
        span.record("counted", counted as i64);
        span.record("duplicates", duplicates as i64);
        let m = &self.metrics;
        m.notifications(Notifications::Received, notifications.len() as u64);
        m.notifications(Notifications::Counted, counted);
        m.notifications(Notifications::Duplicates, duplicates);
        m.notifications(Notifications::Ignored, ignored);
        result
    }

    async fn route_and_record(
        &self,
        notifications: &[Notification],
        audience: Audience<'_>,
        report: &mut IngestReport,
    ) -> Result<(), Error> {
        self.routes.wait_fresh().await?;
        let mut activities = Vec::new();
        let tenants = self.tenants.current();
        {
            let map = self
                .routes
                .by_bucket
                .read()
                .unwrap_or_else(|p| p.into_inner());
            for n in notifications {
                let kind = match n.kind {
                    NotificationKind::Created => ActivityKind::Created,
                    NotificationKind::Removed => ActivityKind::Removed,
                    NotificationKind::Other(_) => {
                        report.ignored += 1;
                        continue;
                    }
                };
                // Only valid buckets are routed, so a plain lookup by name suffices.
                let routes = map.get(n.bucket.as_str());
                let mut matched = false;
                for (watch, marker) in routes.into_iter().flat_map(|r| r.matching(&n.key)) {
                    if audience.includes(&watch.tenant) && tenants.allows(&watch.tenant, &n.bucket)
                    {
                        let kind = match (marker, kind) {
                            (false, kind) => kind,
                            (true, ActivityKind::Created) => ActivityKind::Marker,
                            // Removing the marker changes nothing.
                            (true, ActivityKind::Removed | ActivityKind::Marker) => continue,
                        };
                        matched = true;
                        activities.push(Activity {
                            tenant: watch.tenant.clone(),
                            watch_id: watch.id.clone(),
                            kind,
                            key: n.key.clone(),
                            sequencer: n.sequencer.clone(),
                            size: n.size,
                            event_time: n.event_time,
                        });
                    }
                }
                if matched {
                    report.matched += 1;
                } else {
                    report.ignored += 1;
                }
            }
        }
        if activities.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<WatchKey> = activities
            .iter()
            .map(|a| WatchKey {
                tenant: a.tenant.clone(),
                id: a.watch_id.clone(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        let in_flight = self.routes.begin(keys.clone());
        let recorded = self.store.record(activities, self.clock.now()).await;
        // Settle before telling the observer: from here on it either sees the
        // new counters or its guarded write conflicts and re-reads them.
        drop(in_flight);
        let outcome = match recorded {
            Ok(outcome) => outcome,
            Err(e) => {
                self.observer.activity(Vec::new(), keys).await;
                return Err(e.into());
            }
        };
        for result in &outcome.results {
            match result {
                Recorded::Counted => report.counted += 1,
                Recorded::Duplicate => report.duplicates += 1,
                Recorded::NotLive => {}
            }
        }
        let watches = outcome.updated.into_iter().map(|(w, _)| w).collect();
        self.observer.activity(watches, keys).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn watch_key() -> WatchKey {
        WatchKey {
            tenant: TenantId::parse("tenant", "t").unwrap(),
            id: crate::watch::WatchId::generate(),
        }
    }

    fn routed(routes: &Routes, bucket: &str, key: &str) -> HashSet<WatchKey> {
        let map = routes.by_bucket.read().unwrap();
        map.get(bucket)
            .map(|r| r.matching(key).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_key_reaches_every_watch_whose_prefix_it_starts_with() {
        let routes = Routes::default();
        let lake = Bucket::parse("bucket", "lake").unwrap();
        let prefix = |p: &str| Prefix::parse("prefix", p).unwrap();
        let (all, day, day1, day10, other) = (
            watch_key(),
            watch_key(),
            watch_key(),
            watch_key(),
            watch_key(),
        );
        routes.add(&lake, &all, &prefix(""), &KeyFilter::default(), None);
        routes.add(&lake, &day, &prefix("day="), &KeyFilter::default(), None);
        routes.add(&lake, &day1, &prefix("day=1/"), &KeyFilter::default(), None);
        routes.add(
            &lake,
            &day10,
            &prefix("day=10/"),
            &KeyFilter::default(),
            None,
        );
        routes.add(
            &Bucket::parse("bucket", "other").unwrap(),
            &other,
            &prefix(""),
            &KeyFilter::default(),
            None,
        );
        // Adding a route twice keeps one.
        routes.add(&lake, &day1, &prefix("day=1/"), &KeyFilter::default(), None);

        assert_eq!(
            routed(&routes, "lake", "day=1/a"),
            HashSet::from([all.clone(), day.clone(), day1.clone()])
        );
        assert_eq!(
            routed(&routes, "lake", "day=10/a"),
            HashSet::from([all.clone(), day.clone(), day10.clone()])
        );
        assert_eq!(routed(&routes, "lake", "d"), HashSet::from([all.clone()]));
        // A prefix length that falls inside a multi-byte character is skipped, not a panic.
        assert_eq!(routed(&routes, "lake", "dä"), HashSet::from([all.clone()]));
        assert_eq!(routed(&routes, "nobody", "day=1/a"), HashSet::new());

        routes.remove(&lake, &day1, &prefix("day=1/"));
        routes.remove(&lake, &all, &prefix(""));
        assert_eq!(
            routed(&routes, "lake", "day=1/a"),
            HashSet::from([day.clone()])
        );
        routes.remove(&lake, &day, &prefix("day="));
        routes.remove(&lake, &day10, &prefix("day=10/"));
        assert!(
            !routes.by_bucket.read().unwrap().contains_key("lake"),
            "a bucket without watches is dropped"
        );
    }

    #[test]
    fn watches_sharing_a_prefix_are_routed_until_each_is_removed() {
        let routes = Routes::default();
        let lake = Bucket::parse("bucket", "lake").unwrap();
        let prefix = Prefix::parse("prefix", "day=1/").unwrap();
        let (a, b, c) = (watch_key(), watch_key(), watch_key());
        let add = |key: &WatchKey| routes.add(&lake, key, &prefix, &KeyFilter::default(), None);
        add(&a);
        // A second route of the same watch replaces the first.
        add(&a);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([a.clone()])
        );
        add(&b);
        add(&c);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([a.clone(), b.clone(), c.clone()])
        );
        routes.remove(&lake, &b, &prefix);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([a.clone(), c.clone()])
        );
        routes.remove(&lake, &a, &prefix);
        routes.remove(&lake, &a, &prefix);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([c.clone()])
        );
        routes.remove(&lake, &c, &prefix);
        assert!(!routes.by_bucket.read().unwrap().contains_key("lake"));
    }

    #[test]
    fn a_watch_takes_only_the_keys_its_filter_takes_below_its_prefix() {
        let routes = Routes::default();
        let lake = Bucket::parse("bucket", "lake").unwrap();
        let prefix = Prefix::parse("prefix", "out/").unwrap();
        let filter = KeyFilter::parse(
            vec!["**/*.parquet".into(), "*.csv".into()],
            vec!["_temporary/**".into(), "**/_SUCCESS".into()],
        )
        .unwrap();
        let (filtered, all) = (watch_key(), watch_key());
        routes.add(&lake, &filtered, &prefix, &filter, None);
        routes.add(&lake, &all, &prefix, &KeyFilter::default(), None);
        let takes = |key: &str| routed(&routes, "lake", key).contains(&filtered);
        assert!(takes("out/day=1/part 0.parquet"), "** crosses /");
        assert!(takes("out/a.parquet"), "**/ also matches no directory");
        assert!(takes("out/top.csv"));
        assert!(!takes("out/day=1/deep.csv"), "* does not cross /");
        assert!(!takes("out/_temporary/0/part.parquet"), "excluded");
        assert!(!takes("out/day=1/_SUCCESS"));
        assert!(!takes("out/day=1/part.json"), "not included");
        assert!(
            !takes("out.parquet") && !takes("other/a.parquet"),
            "outside the prefix"
        );
        assert!(takes("out/ü +%/x.parquet"), "any characters");
        assert!(
            routed(&routes, "lake", "out/_temporary/x.json").contains(&all),
            "another watch of the prefix is unaffected"
        );
    }

    #[test]
    fn bad_key_patterns_are_named_with_their_index() {
        let err = |include: &[&str], exclude: &[&str]| {
            KeyFilter::parse(
                include.iter().map(|s| s.to_string()).collect(),
                exclude.iter().map(|s| s.to_string()).collect(),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(err(&["*.json", "*.csv", "a[b"], &[]).contains("include[2]"));
        assert!(err(&[], &["{a,b"]).contains("exclude[0]"));
        assert!(err(&[""], &[]).contains("include[0]"));
        let long = "x".repeat(crate::watch::MAX_KEY_PATTERN_BYTES + 1);
        assert!(err(&[], &["ok", &long]).contains("exclude[1]"));
        let many = vec!["*"; crate::watch::MAX_KEY_PATTERNS + 1];
        assert!(err(&many, &[]).contains("invalid include: has 33 patterns"));
    }

    #[test]
    fn consumers_learn_the_earliest_instant_a_decision_wants() {
        let marks = Watermarks::new(1);
        let at = Timestamp::from_millis;
        assert_eq!(marks.next_wanted(), None);
        marks.rewant(None, Some(at(5_000)));
        marks.rewant(None, Some(at(5_000)));
        marks.rewant(None, Some(at(9_000)));
        assert_eq!(marks.next_wanted(), Some(at(5_000)));
        // One of the two watches at 5s moves on; the other still wants 5s.
        marks.rewant(Some(at(5_000)), Some(at(12_000)));
        assert_eq!(marks.next_wanted(), Some(at(5_000)));
        marks.rewant(Some(at(5_000)), None);
        assert_eq!(marks.next_wanted(), Some(at(9_000)));
        marks.rewant(Some(at(9_000)), None);
        marks.rewant(Some(at(12_000)), None);
        assert_eq!(marks.next_wanted(), None);
    }

    fn records(raw: &str) -> Vec<Notification> {
        match parse_document(raw) {
            Ok(Document::Records(r)) => r,
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn s3_records_decode_keys_and_kinds() {
        let r = records(include_str!("../../tests/fixtures/s3_put.json"));
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].bucket, "data-lake");
        assert_eq!(
            r[0].key, "day=1/part 0001 + more.json",
            "'+' is a space, %2B a plus"
        );
        assert_eq!(r[0].kind, NotificationKind::Created);
        assert_eq!(r[0].sequencer, "0055AED6DCD90281E5");
        assert_eq!(r[0].size, 1024);
        assert_eq!(
            r[0].event_time,
            Some(Timestamp::from_millis(1_795_687_200_000))
        );
        assert_eq!(r[1].size, 0, "a removal carries no size");
        assert_eq!(r[1].kind, NotificationKind::Removed);
        assert_eq!(
            r[2].kind,
            NotificationKind::Other("ObjectRestore:Completed".into())
        );
    }

    #[test]
    fn sns_envelopes_unwrap_to_the_s3_document() {
        for fixture in [
            include_str!("../../tests/fixtures/sns_envelope.json"),
            include_str!("../../tests/fixtures/sns_lambda_event.json"),
        ] {
            let r = records(fixture);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].key, "day=1/part 0001 + more.json");
            assert_eq!(r[0].kind, NotificationKind::Created);
        }
    }

    #[test]
    fn eventbridge_events_carry_bucket_and_key_under_detail() {
        let r = records(include_str!(
            "../../tests/fixtures/eventbridge_created.json"
        ));
        assert_eq!(
            r,
            vec![Notification {
                bucket: "data-lake".into(),
                key: "day=1/eb file.json".into(),
                kind: NotificationKind::Created,
                sequencer: "00617F08299329D189".into(),
                size: 5,
                event_time: Some(Timestamp::from_millis(1_795_687_200_000)),
            }]
        );
        let r = records(include_str!(
            "../../tests/fixtures/eventbridge_deleted.json"
        ));
        assert_eq!(r[0].kind, NotificationKind::Removed);
    }

    #[test]
    fn records_without_identity_parts_still_parse() {
        // As S3-compatible stores (and the AWS emulator) send them.
        let doc = r#"{"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-11-26T12:22:32.197Z", "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "dbg-bucket"},
            "object": {"key": "day%3D1%2Fproducer+1%2Fpart+%C3%BC%2B0001.json", "size": 2}}}]}"#;
        let r = records(doc);
        assert_eq!(r[0].key, "day=1/producer 1/part ü+0001.json");
        assert_eq!(r[0].sequencer, "");
    }

    #[test]
    fn test_events_are_recognised() {
        assert_eq!(
            parse_document(include_str!("../../tests/fixtures/s3_test_event.json")),
            Ok(Document::Test)
        );
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let cases = [
            ("{not json", "malformed JSON"),
            ("[1, 2]", "must be a JSON object"),
            ("{\"hello\": 1}", "not a storage notification"),
            (
                "{\"Records\": [{\"eventName\": \"ObjectCreated:Put\"}]}",
                "invalid S3 event",
            ),
            (
                "{\"Type\": \"Notification\", \"Message\": \"x\"}",
                "invalid SNS envelope",
            ),
            (
                "{\"detail-type\": \"Object Created\", \"source\": \"aws.ec2\", \"detail\": {\"bucket\": {\"name\": \"b\"}, \"object\": {\"key\": \"k\"}}}",
                "not aws.s3",
            ),
        ];
        for (doc, expected) in cases {
            let err = parse_document(doc).expect_err(doc).to_string();
            assert!(err.contains(expected), "{doc}: {err}");
        }
        let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_DOCUMENT_BYTES));
        assert!(
            parse_document(&huge)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }

    #[test]
    fn sns_nesting_is_bounded() {
        let mut doc = include_str!("../../tests/fixtures/s3_test_event.json").to_owned();
        for _ in 0..4 {
            doc = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": doc,
                "Timestamp": "2026-11-26T10:00:00Z", "SignatureVersion": "1", "Signature": "s",
                "SigningCertURL": "c", "UnsubscribeURL": "u"})
            .to_string();
        }
        assert!(
            parse_document(&doc)
                .unwrap_err()
                .to_string()
                .contains("nested too deep")
        );
    }

    #[test]
    fn keys_that_are_not_utf8_are_rejected() {
        assert!(decode_key("bad%FF").is_err());
        assert_eq!(decode_key("a%2Fb+c").unwrap(), "a/b c");
    }

    #[test]
    fn invalid_percent_escapes_are_rejected_not_taken_literally() {
        for raw in ["a%ZZ", "a%", "a%2", "%G0b", "x%%41"] {
            let reason = decode_key(raw).expect_err(raw).to_string();
            assert!(reason.contains("invalid percent-escape"), "{raw}: {reason}");
        }
        assert_eq!(
            decode_key("a%25ZZ").unwrap(),
            "a%ZZ",
            "the escaped form is one key"
        );
        let doc = include_str!("../../tests/fixtures/s3_put.json")
            .replace("day%3D1/old.json", "day%3D1/a%ZZ");
        let reason = parse_document(&doc).unwrap_err().to_string();
        assert!(reason.contains("Records[1].s3.object.key"), "{reason}");
    }

    #[test]
    fn keys_longer_than_s3_allows_are_rejected() {
        let longest = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(decode_key(&longest).unwrap(), longest);
        let reason = decode_key(&format!("{longest}k")).unwrap_err().to_string();
        assert!(reason.contains("1025 bytes"), "{reason}");
        // Measured after decoding: escapes do not count.
        assert!(decode_key(&"%6B".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(decode_key("").is_err());
    }
}
