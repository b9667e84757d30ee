//! A producer's marker and its manifest (`policy.marker.verify_manifest`):
//! read the marker object from S3, take the files its manifest lists (the
//! `filenames` of the `_SUCCESS` JSON the Hadoop S3A and manifest committers
//! write), and look each up among the keys the watch counted. What it finds
//! becomes a [`ManifestCheck`] for the policy; this module decides nothing.
//!
//! The committers' format: a JSON object whose `filenames` is a list of
//! strings, either keys with a leading `/` (S3A committers:
//! `/table/part-00000.parquet`) or URIs (the manifest committer:
//! `s3a://bucket/table/part-00000.parquet`, percent-encoded), and, in newer
//! versions, `"success": true`. The committers list only a job's first files
//! (S3A: 100), so a check proves those, not the whole data set.

use aws_sdk_s3::{
    error::{DisplayErrorContext, SdkError},
    operation::get_object::GetObjectError,
    primitives::ByteStreamError,
};
use serde::Deserialize;

use crate::{
    store::{Store, StoreError},
    watch::{ManifestCheck, Watch},
};

/// Largest marker read; a manifest listing 100,000 files is about 10 MB.
pub const MAX_MARKER_BYTES: i64 = 16 << 20;
/// Most files a manifest may list.
pub const MAX_LISTED_FILES: usize = 100_000;

/// What a check found, with the keys still missing (a later check of the
/// same marker looks up only those, without reading the marker again).
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub check: ManifestCheck,
    pub missing: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    filenames: Option<serde_json::Value>,
    success: Option<serde_json::Value>,
}

/// Why a marker's manifest cannot complete the watch (the check's `problem`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the marker is not a committer manifest (JSON object): {0}")]
    NotAManifest(String),
    /// The committer wrote `"success": false`.
    #[error("the marker's manifest says the job failed (\"success\": false)")]
    JobFailed,
    #[error("the marker's manifest has \"success\": {0}; expected true or false")]
    BadSuccess(String),
    #[error("the marker's manifest has no \"filenames\" list")]
    NoFilenames,
    #[error("the marker's manifest lists {0} files; at most {MAX_LISTED_FILES} are checked")]
    TooManyFiles(usize),
    #[error("the marker's manifest filenames[{0}] is not a string")]
    NotAString(usize),
    /// A listed file outside the watch's bucket (or not an S3 URI).
    #[error("the marker's manifest lists {name:?}, which is not in bucket {bucket}")]
    OtherBucket { name: String, bucket: String },
}

/// Why a marker's manifest could not be checked at all (the observer logs it
/// and checks again later). What a manifest that was read says against the
/// watch is a [`ManifestError`], kept in the check instead.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Only a watch of objects with a marker rule is checked.
    #[error("the watch has no marker rule")]
    NoMarker,
    /// GetObject of the marker failed: no such key, no permission, or S3
    /// could not be reached.
    #[error("cannot read the marker {key}: {}", DisplayErrorContext(.error))]
    Get {
        key: String,
        error: Box<SdkError<GetObjectError>>,
    },
    /// The marker's body broke off while it was read.
    #[error("cannot read the marker {key}: {error}")]
    Body { key: String, error: ByteStreamError },
    /// The counted keys could not be looked up.
    #[error("cannot look up the files the marker lists: {0}")]
    Store(StoreError),
}

/// The keys a marker's body lists, or why it cannot complete the watch. An
/// empty body (the classic committer's marker) lists nothing.
pub fn listed_keys(body: &[u8], bucket: &str) -> Result<Vec<String>, ManifestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let manifest: Manifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::NotAManifest(e.to_string()))?;
    match manifest.success {
        None | Some(serde_json::Value::Bool(true)) => {}
        Some(serde_json::Value::Bool(false)) => return Err(ManifestError::JobFailed),
        Some(other) => return Err(ManifestError::BadSuccess(other.to_string())),
    }
    let Some(serde_json::Value::Array(files)) = manifest.filenames else {
        return Err(ManifestError::NoFilenames);
    };
    if files.len() > MAX_LISTED_FILES {
        return Err(ManifestError::TooManyFiles(files.len()));
    }
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f.as_str().ok_or(ManifestError::NotAString(i))?;
            file_key(name, bucket).ok_or_else(|| ManifestError::OtherBucket {
                name: name.to_owned(),
                bucket: bucket.to_owned(),
            })
        })
        .collect()
}

/// The key of one listed file: `/key` as S3A writes it, or a URI of the
/// watch's bucket (`s3a://`, `s3://`, `s3n://`); `None` for another bucket.
fn file_key(name: &str, bucket: &str) -> Option<String> {
    let Some((scheme, rest)) = name.split_once("://") else {
        return Some(name.trim_start_matches('/').to_owned());
    };
    if !matches!(scheme, "s3a" | "s3" | "s3n") {
        return None;
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority != bucket {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    Some(decoded.into_owned())
}

/// Reads `watch`'s marker and looks up the files it lists.
pub async fn check(
    s3: &aws_sdk_s3::Client,
    store: &dyn Store,
    watch: &Watch,
) -> Result<Checked, CheckError> {
    // A group has no marker of its own.
    let (Some(marker), Some(objects)) = (watch.marker_key(), watch.source.as_objects()) else {
        return Err(CheckError::NoMarker);
    };
    let key = format!("{}{marker}", objects.prefix.as_str());
    let object = match s3
        .get_object()
        .bucket(objects.bucket.as_str())
        .key(&key)
        .send()
        .await
    {
        Ok(object) => object,
        Err(error) => {
            return Err(CheckError::Get {
                key,
                error: Box::new(error),
            });
        }
    };
    let check = |listed: u64, problem: String| ManifestCheck {
        marker: watch.counters.marker_count,
        activity: watch.counters.activity(),
        listed,
        missing: 0,
        problem,
    };
    if let Some(size) = object.content_length.filter(|s| *s > MAX_MARKER_BYTES) {
        let problem = format!(
            "the marker is {size} bytes; manifests over {MAX_MARKER_BYTES} bytes are not read"
        );
        return Ok(Checked {
            check: check(0, problem),
            missing: Vec::new(),
        });
    }
    let body = match object.body.collect().await {
        Ok(body) => body.into_bytes(),
        Err(error) => return Err(CheckError::Body { key, error }),
    };
    match listed_keys(&body, objects.bucket.as_str()) {
        Err(problem) => Ok(Checked {
            check: check(0, problem.to_string()),
            missing: Vec::new(),
        }),
        Ok(keys) => {
            let listed = keys.len() as u64;
            let mut checked = missing(store, watch, keys)
                .await
                .map_err(CheckError::Store)?;
            checked.check.listed = listed;
            Ok(checked)
        }
    }
}

/// Looks up `keys` (files a manifest of `watch`'s current marker lists)
/// among the counted keys; `listed` is left for the caller.
pub async fn missing(
    store: &dyn Store,
    watch: &Watch,
    keys: Vec<String>,
) -> Result<Checked, StoreError> {
    let counted = store.counted_keys(&watch.tenant, &watch.id, &keys).await?;
    let missing: Vec<String> = keys
        .into_iter()
        .zip(counted)
        .filter_map(|(key, counted)| (!counted).then_some(key))
        .collect();
    let outside = missing.iter().find(|k| !counts(watch, k));
    let problem = outside
        .map(|k| format!("the marker's manifest lists {k:?}, which this watch does not count (outside its prefix or key filter)"))
        .unwrap_or_default();
    Ok(Checked {
        check: ManifestCheck {
            marker: watch.counters.marker_count,
            activity: watch.counters.activity(),
            listed: 0,
            missing: missing.len() as u64,
            problem,
        },
        missing,
    })
}

/// Whether `watch` counts `key`: under its prefix, and taken by its key filter.
fn counts(watch: &Watch, key: &str) -> bool {
    let Some(o) = watch.source.as_objects() else {
        return false;
    };
    key.strip_prefix(o.prefix.as_str())
        .is_some_and(|below| o.filter.matcher().is_none_or(|m| m.matches(below)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committers_manifests_list_their_files_as_keys() {
        let s3a = include_bytes!("../../tests/fixtures/markers/s3a_success.json");
        let keys = listed_keys(s3a, "lake").unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0], "out/day=1/part-00000-3b1c.c000.snappy.parquet");
        let manifest = include_bytes!("../../tests/fixtures/markers/manifest_success.json");
        let keys = listed_keys(manifest, "lake").unwrap();
        assert_eq!(
            keys,
            [
                "out/day=1/part-00000 a+b.parquet",
                "out/day=1/part-00001-é.parquet"
            ]
        );
    }

    #[test]
    fn an_empty_marker_lists_nothing_and_bad_ones_say_why() {
        assert_eq!(listed_keys(b"", "lake").unwrap(), Vec::<String>::new());
        assert_eq!(listed_keys(b" \n", "lake").unwrap(), Vec::<String>::new());
        for (body, says) in [
            (&b"done"[..], "not a committer manifest"),
            (b"{\"name\": \"x\"}", "no \"filenames\" list"),
            (b"{\"filenames\": [1]}", "filenames[0] is not a string"),
            (b"{\"filenames\": [], \"success\": false}", "the job failed"),
            (
                b"{\"filenames\": [\"s3a://other/x\"]}",
                "not in bucket lake",
            ),
            (b"{\"filenames\": [\"gs://lake/x\"]}", "not in bucket lake"),
        ] {
            let err = listed_keys(body, "lake").unwrap_err().to_string();
            assert!(
                err.contains(says),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
