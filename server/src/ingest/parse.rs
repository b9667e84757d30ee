//! Notification documents to [`Notification`]s: plain S3 `Records`, SNS
//! envelopes (nested at most twice), EventBridge `Object Created` / `Object
//! Deleted` events and `s3:TestEvent`; object keys form-decoded (`+` is a
//! space) and checked ([`decode_key`]). A document that is not one of these
//! is a [`DocumentError`] naming what is wrong.
//!
//! It only reads text: it must never route, authorize or record (that is
//! [`super::Ingest`]'s), and never panic on input.

use aws_lambda_events::{
    eventbridge::EventBridgeEvent,
    s3::S3Event,
    sns::{SnsEvent, SnsMessage},
};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// Largest notification document accepted (SQS and SNS cap bodies at 256 KiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
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

#[cfg(test)]
mod tests {
    use super::*;

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
