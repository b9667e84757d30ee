//! Notification documents shaped as AWS delivers them: S3's `Records`
//! document (S3 to SQS, or sent through IngestS3Events), the same wrapped in
//! an SNS envelope, an EventBridge event, and S3's test event. Keys are
//! written URL-encoded with `+` for space, as S3 writes them; every record
//! has the same event time, [`EVENT_TIME`].

/// The `eventTime` of every record built here.
pub const EVENT_TIME: &str = "2026-11-26T10:00:00.000Z";

/// The `eventName` of an object created by a PUT.
pub const PUT: &str = "ObjectCreated:Put";

/// The sequencer of the first record of [`created`]; the next ones count up.
const FIRST_SEQUENCER: u64 = 0x0055_AED6_DCD9_0281;

/// One record of an S3 `Records` document: `event` (`ObjectCreated:Put`,
/// `ObjectRemoved:Delete`...) on `key`, with `sequencer`, 1,024 bytes.
pub fn s3_record(bucket: &str, event: &str, key: &str, sequencer: &str) -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": EVENT_TIME,
        "eventName": event,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "landing",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": url_encode(key), "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": sequencer}
        }
    })
}

/// One S3 `Records` document with a record per `(event, key, sequencer)`.
pub fn s3_document(bucket: &str, records: &[(&str, &str, &str)]) -> String {
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|(event, key, sequencer)| s3_record(bucket, event, key, sequencer))
        .collect();
    serde_json::json!({ "Records": records }).to_string()
}

/// Objects created under `keys`, with sequencers by position in the
/// document (`0055AED6DCD90281`, then one more each): the same document
/// sent again is a redelivery; a key at another position, an overwrite.
pub fn created(bucket: &str, keys: &[&str]) -> String {
    let sequencers: Vec<String> = (0..keys.len())
        .map(|i| format!("{:018X}", FIRST_SEQUENCER + i as u64))
        .collect();
    let records: Vec<(&str, &str, &str)> = keys
        .iter()
        .zip(&sequencers)
        .map(|(key, sequencer)| (PUT, *key, sequencer.as_str()))
        .collect();
    s3_document(bucket, &records)
}

/// Objects created under `keys`, each object once: its sequencer comes from
/// its key ([`key_sequencer`]), so a key in any later document is a redelivery.
pub fn created_once(bucket: &str, keys: &[&str]) -> String {
    let sequencers: Vec<String> = keys.iter().map(|key| key_sequencer(key)).collect();
    let records: Vec<(&str, &str, &str)> = keys
        .iter()
        .zip(&sequencers)
        .map(|(key, sequencer)| (PUT, *key, sequencer.as_str()))
        .collect();
    s3_document(bucket, &records)
}

/// A sequencer that is the same for the same key.
pub fn key_sequencer(key: &str) -> String {
    let sum = key
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("{sum:018X}")
}

/// An object-created record with only what the parser reads (event time
/// and name, bucket, key), written as JSON: for documents that must hold
/// many records in few bytes (see [`records_document`]).
pub fn minimal_created(bucket: &str, key: &str) -> String {
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        r#"{{"eventTime":"2026-11-26T10:00:00Z","eventName":"{PUT}","s3":{{"bucket":{{"name":{}}},"object":{{"key":{}}}}}}}"#,
        quoted(bucket),
        quoted(&url_encode(key))
    )
}

/// An S3 `Records` document of records already written as JSON.
pub fn records_document(records: &[String]) -> String {
    format!(r#"{{"Records":[{}]}}"#, records.join(","))
}

/// `document` as an SNS topic delivers it to an SQS queue (raw message
/// delivery off): a notification envelope holding it as a string.
pub fn sns_wrapped(document: &str) -> String {
    serde_json::json!({
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:data-lake-events",
        "Subject": "Amazon S3 Notification",
        "Message": document,
        "Timestamp": "2026-11-26T10:00:00.100Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:data-lake-events:c9135db0-26c4-47ec-8998-413945fb5a96"
    })
    .to_string()
}

/// An EventBridge event of S3: `detail_type` `Object Created` or `Object
/// Deleted`, for `key` with `sequencer`, 1,024 bytes.
pub fn eventbridge(bucket: &str, detail_type: &str, key: &str, sequencer: &str) -> String {
    serde_json::json!({
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-26T10:00:00Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:s3:::{bucket}")],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": url_encode(key), "size": 1024, "etag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": sequencer},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "203.0.113.10",
            "reason": "PutObject"
        }
    })
    .to_string()
}

/// The `s3:TestEvent` S3 sends when notifications are configured: no records.
pub fn s3_test_event(bucket: &str) -> String {
    serde_json::json!({
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": EVENT_TIME,
        "Bucket": bucket,
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"
    })
    .to_string()
}

/// `key` as S3 writes it into a notification: form-encoded, `+` for space.
pub fn url_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b' ' => "+".to_owned(),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
