//! Any bytes as a notification document (S3 `Records`, SNS envelopes,
//! EventBridge, `s3:TestEvent`) and as an object key: the parser answers
//! with records or a reason, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamwatch_server::ingest::{Document, decode_key, parse_document};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = decode_key(text) {
        // Decoding only ever removes escapes: it never grows a key.
        assert!(key.len() <= text.len());
    }
    if let Ok(Document::Records(records)) = parse_document(text) {
        for record in records {
            assert!(!record.bucket.is_empty(), "a record always names its bucket");
        }
    }
});
