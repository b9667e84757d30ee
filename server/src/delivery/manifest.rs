//! The manifest target: for a COMPLETED delivery, writes the objects the
//! completion covers to S3 as JSON Lines. It pages the store's manifest
//! ([`Store::list_objects`], [`PAGE`] keys at a time) and streams the lines
//! out: one PutObject when they fit in one part, else a multipart upload of
//! parts of the configured size, aborted when an attempt fails. An attempt
//! holds one part and one page, never the whole manifest.
//!
//! A retry writes the same lines to the same key; an attempt for a
//! generation whose manifest a later completion's delivery replaces writes
//! nothing. This module only reads state; the delivery task records the
//! outcome. It never writes outside the bucket and key the target names.

use std::{collections::HashMap, sync::Arc, time::Duration};

use aws_sdk_s3::{
    Client,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart},
};
use serde::Serialize;

use super::Failure;
use crate::{
    store::{Delivery, ManifestEntry, ObjectsQuery, Store},
    watch::Bucket,
};

/// Keys read from the store per page.
pub const PAGE: usize = 1000;
/// The smallest part S3 takes (every part but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// The part size of a server started without `--manifest-part-size`.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// The largest part size accepted: one part is held per attempt in flight.
pub const MAX_PART_SIZE: usize = 64 * 1024 * 1024;
/// Parts S3 allows in one upload.
const MAX_PARTS: usize = 10_000;
/// The media type of the manifest.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// One line of the manifest.
#[derive(Serialize)]
struct Line<'a> {
    key: &'a str,
    size: u64,
    sequencer: &'a str,
    event_time: Option<String>,
    generation: u32,
}

/// `entry` as a manifest line, newline included.
pub fn line(entry: &ManifestEntry) -> Vec<u8> {
    let mut out = serde_json::to_vec(&Line {
        key: &entry.key,
        size: entry.size,
        sequencer: &entry.sequencer,
        event_time: entry.event_time.map(|t| t.to_string()),
        generation: entry.generation,
    })
    .unwrap_or_default();
    out.push(b'\n');
    out
}

/// Whether the completion of `generation` covers `entry`: counted in it or
/// before, and not removed.
pub fn covers(entry: &ManifestEntry, generation: u32) -> bool {
    !entry.removed && entry.generation <= generation
}

/// Writes manifests: the store they are read from and the part size.
pub struct Manifests {
    store: Arc<dyn Store>,
    part_size: usize,
}

impl Manifests {
    /// `part_size` is clamped to [[`MIN_PART_SIZE`], [`MAX_PART_SIZE`]].
    pub fn new(store: Arc<dyn Store>, part_size: usize) -> Self {
        Self {
            store,
            part_size: part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE),
        }
    }

    /// Writes the manifest of `d`'s completion to `s3://bucket/key`, within
    /// `timeout` in all. `Ok` is the status shown in GetWatch.
    pub async fn write(
        &self,
        s3: &Client,
        d: &Delivery,
        bucket: &Bucket,
        key: &str,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let store_error = |e: crate::store::StoreError| Failure::new("", e.to_string());
        let deliveries = self
            .store
            .deliveries(&d.tenant, &d.watch_id)
            .await
            .map_err(store_error)?;
        if let Some(later) = deliveries
            .iter()
            .filter(|o| o.target_index == d.target_index && o.generation > d.generation)
            .map(|o| o.generation)
            .max()
        {
            return Ok(format!(
                "s3 manifest skipped: generation {later} completed since and writes its own"
            ));
        }
        let mut upload = Upload {
            s3,
            bucket: bucket.as_str(),
            key,
            metadata: metadata(d),
            part_size: self.part_size,
            buf: Vec::new(),
            id: None,
            parts: Vec::new(),
            sent: 0,
        };
        let written = tokio::time::timeout(timeout, self.stream(d, &mut upload)).await;
        let failure = match written {
            Ok(Ok(written)) => return Ok(written.status()),
            Ok(Err(failure)) => failure,
            Err(_) => Failure::new(
                "",
                format!("the manifest was not written within {timeout:?} (--delivery-timeout)"),
            ),
        };
        upload.abort().await;
        Err(failure)
    }

    async fn stream(&self, d: &Delivery, upload: &mut Upload<'_>) -> Result<Written, Failure> {
        let mut written = Written::default();
        let mut query = ObjectsQuery {
            generation: None,
            after: None,
            limit: PAGE,
        };
        loop {
            let page = self
                .store
                .list_objects(&d.tenant, &d.watch_id, &query)
                .await
                .map_err(|e| Failure::new("", e.to_string()))?;
            for entry in page.iter().filter(|e| covers(e, d.generation)) {
                written.objects += 1;
                written.object_bytes += entry.size;
                upload.push(&line(entry)).await?;
            }
            if page.len() < PAGE {
                break;
            }
            query.after = page.last().map(|e| e.key.clone());
        }
        written.bytes = upload.bytes_so_far();
        written.parts = upload.finish().await?;
        Ok(written)
    }
}

/// What an attempt wrote.
#[derive(Debug, Default)]
struct Written {
    objects: u64,
    /// The sum of the objects' sizes.
    object_bytes: u64,
    /// The manifest's own size.
    bytes: u64,
    /// 0 for a single PutObject.
    parts: usize,
}

impl Written {
    fn status(&self) -> String {
        let how = match self.parts {
            0 => "1 PutObject".to_owned(),
            n => format!("multipart, {n} parts"),
        };
        format!(
            "s3 manifest {} objects ({} bytes), {} bytes written, {how}",
            self.objects, self.object_bytes, self.bytes
        )
    }
}

/// The object's user metadata: which completion the manifest belongs to.
/// The prefix is form-encoded as S3 encodes keys in notifications (metadata
/// is US-ASCII).
fn metadata(d: &Delivery) -> HashMap<String, String> {
    let body: serde_json::Value = serde_json::from_str(&d.body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let prefix: String =
        url::form_urlencoded::byte_serialize(text(&body["watch"]["prefix"]).as_bytes()).collect();
    HashMap::from([
        ("streamwatch-watch-id".to_owned(), d.watch_id.to_string()),
        (
            "streamwatch-generation".to_owned(),
            d.generation.to_string(),
        ),
        ("streamwatch-seq".to_owned(), d.seq.to_string()),
        (
            "streamwatch-completed-at".to_owned(),
            text(&body["event"]["time"]),
        ),
        (
            "streamwatch-bucket".to_owned(),
            text(&body["watch"]["bucket"]),
        ),
        ("streamwatch-prefix".to_owned(), prefix),
    ])
}

/// `what` failed: S3's error code and message, or what kept the request
/// from an answer.
fn s3_error<E, R>(what: &str, e: SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let why = match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or_default()
        ),
        None => DisplayErrorContext(&e).to_string(),
    };
    Failure::new("", format!("{what}: {why}"))
}

/// One manifest on its way out: the part being filled, and the upload once
/// the lines outgrow one part.
struct Upload<'a> {
    s3: &'a Client,
    bucket: &'a str,
    key: &'a str,
    metadata: HashMap<String, String>,
    part_size: usize,
    buf: Vec<u8>,
    /// The multipart upload, once started.
    id: Option<String>,
    parts: Vec<CompletedPart>,
    sent: u64,
}

impl Upload<'_> {
    async fn push(&mut self, line: &[u8]) -> Result<(), Failure> {
        self.buf.extend_from_slice(line);
        if self.buf.len() >= self.part_size {
            self.send_part().await?;
        }
        Ok(())
    }

    fn bytes_so_far(&self) -> u64 {
        self.sent + self.buf.len() as u64
    }

    async fn send_part(&mut self) -> Result<(), Failure> {
        if self.parts.len() == MAX_PARTS {
            return Err(Failure::new(
                "",
                format!(
                    "the manifest needs more than {MAX_PARTS} parts; raise --manifest-part-size"
                ),
            ));
        }
        let id = match &self.id {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .s3
                    .create_multipart_upload()
                    .bucket(self.bucket)
                    .key(self.key)
                    .content_type(CONTENT_TYPE)
                    .set_metadata(Some(self.metadata.clone()))
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .send()
                    .await
                    .map_err(|e| s3_error("CreateMultipartUpload", e))?;
                let id = created.upload_id.unwrap_or_default();
                self.id = Some(id.clone());
                id
            }
        };
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let body = std::mem::take(&mut self.buf);
        let size = body.len() as u64;
        let part = self
            .s3
            .upload_part()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error("UploadPart", e))?;
        self.sent += size;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag)
                .set_checksum_crc32(part.checksum_crc32)
                .build(),
        );
        Ok(())
    }

    /// Sends what is left; the number of parts (0: one PutObject).
    async fn finish(&mut self) -> Result<usize, Failure> {
        let Some(id) = self.id.clone() else {
            self.s3
                .put_object()
                .bucket(self.bucket)
                .key(self.key)
                .content_type(CONTENT_TYPE)
                .set_metadata(Some(self.metadata.clone()))
                .body(ByteStream::from(std::mem::take(&mut self.buf)))
                .send()
                .await
                .map_err(|e| s3_error("PutObject", e))?;
            return Ok(0);
        };
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        self.s3
            .complete_multipart_upload()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", e))?;
        self.id = None;
        Ok(self.parts.len())
    }

    /// Aborts the multipart upload, if one was started and not completed, so
    /// its parts are not kept (and billed) by S3.
    async fn abort(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        if let Err(e) = self
            .s3
            .abort_multipart_upload()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(id)
            .send()
            .await
        {
            tracing::warn!(error = %DisplayErrorContext(e),
                "cannot abort a manifest's multipart upload; a bucket lifecycle rule must remove it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    fn entry(key: &str, generation: u32, removed: bool) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size: 134_217_728,
            sequencer: "0066A1B2C3D4E5F6".into(),
            event_time: Some(Timestamp::from_millis(1_796_000_000_000)),
            generation,
            recorded_at: Some(Timestamp::from_millis(1_796_000_001_000)),
            removed,
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_the_key_as_s3_names_it() {
        let e = entry("out/a b+c/é.parquet", 2, false);
        let line = line(&e);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"key": "out/a b+c/é.parquet", "size": 134_217_728u64,
                "sequencer": "0066A1B2C3D4E5F6", "event_time": "2026-11-30T00:53:20.000Z",
                "generation": 2})
        );
        let none = ManifestEntry {
            event_time: None,
            ..e
        };
        let value: serde_json::Value = serde_json::from_slice(&super::line(&none)).unwrap();
        assert!(value["event_time"].is_null());
    }

    #[test]
    fn a_completion_covers_what_was_counted_up_to_it_and_not_removed() {
        assert!(covers(&entry("a", 1, false), 1));
        assert!(covers(&entry("a", 1, false), 2), "earlier generations too");
        assert!(!covers(&entry("a", 2, false), 1), "not later ones");
        assert!(!covers(&entry("a", 1, true), 1), "not removed keys");
    }

    /// The manifest's size per 1,000 objects with 82-byte keys (as a Spark
    /// job names its output), the README's cost figure.
    #[test]
    fn a_thousand_spark_keys_make_about_two_hundred_kilobytes() {
        let bytes: usize = (0..1000)
            .map(|i| {
                let key = format!(
                    "day=2026-12-06/part-{i:05}-3f1c2a9e-7b4d-4e8a-9c1f-0a2b3c4d5e6f-c000.snappy.parquet"
                );
                assert_eq!(key.len(), 82);
                line(&entry(&key, 1, false)).len()
            })
            .sum();
        println!("manifest bytes per 1,000 objects (82-byte keys): {bytes}");
        assert_eq!(bytes, 1000 * 196);
    }
}
