//! `streamwatch ingest`: reads notification documents from files or stdin
//! (one JSON document per line, documents one after another, or a JSON array
//! of them) and sends them in batches through IngestS3Events.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use streamwatch_client::Client;

use super::output::{IngestJson, Printer, RejectedJson};

/// Documents per IngestS3Events call by default (the server takes up to 1000).
const DEFAULT_BATCH: u16 = 500;
/// Bytes of documents per call at most (the server takes up to 16 MiB).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files of notification documents: JSON lines, or a JSON array of
    /// documents; `-` or none reads stdin
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Documents per request
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,
}

pub async fn run(client: &mut Client, printer: Printer, args: IngestArgs) -> anyhow::Result<()> {
    let sources = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files
    };
    let mut documents = Vec::new();
    for source in &sources {
        let text = read_source(source)?;
        documents.extend(
            parse_documents(&text).with_context(|| format!("cannot read {}", name(source)))?,
        );
    }
    let mut report = IngestJson {
        shape: "ingest",
        documents: documents.len() as u64,
        ..Default::default()
    };
    let mut offset = 0u64;
    for batch in batches(documents, usize::from(args.batch)) {
        let size = batch.len() as u64;
        let answer = client.ingest_s3_events(batch).await.with_context(|| {
            format!(
                "IngestS3Events failed for documents {offset}..{}",
                offset + size
            )
        })?;
        report.requests += 1;
        report.records += answer.records;
        report.matched += answer.matched;
        report.counted += answer.counted;
        report.duplicates += answer.duplicates;
        report.ignored += answer.ignored;
        report
            .rejected
            .extend(answer.rejected.into_iter().map(|r| RejectedJson {
                index: offset + u64::from(r.index),
                reason: r.reason,
            }));
        offset += size;
    }
    printer.ingest_report(&report)?;
    Ok(())
}

fn name(source: &Path) -> String {
    if source == Path::new("-") {
        "stdin".to_owned()
    } else {
        source.display().to_string()
    }
}

fn read_source(source: &Path) -> anyhow::Result<String> {
    if source == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(source).with_context(|| format!("cannot read {}", source.display()))
}

/// The documents in `text`: JSON values one after another (one per line, or
/// pretty-printed), where an array stands for its elements. A document is a
/// JSON object, or a string holding one (as IngestS3Events takes them).
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<String>> {
    let mut documents = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value.context("invalid JSON")? {
            Value::Array(items) => {
                for item in items {
                    documents.push(document(item)?);
                }
            }
            item => documents.push(document(item)?),
        }
    }
    Ok(documents)
}

fn document(value: Value) -> anyhow::Result<String> {
    match value {
        Value::String(text) => Ok(text),
        Value::Object(_) => Ok(value.to_string()),
        other => anyhow::bail!("a document must be a JSON object or a string, not {other}"),
    }
}

/// Splits into calls of at most `size` documents and [`MAX_BATCH_BYTES`].
fn batches(documents: Vec<String>, size: usize) -> Vec<Vec<String>> {
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for document in documents {
        let full = batches
            .last()
            .is_none_or(|b| b.len() >= size || bytes + document.len() > MAX_BATCH_BYTES);
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += document.len();
        batches
            .last_mut()
            .expect("a batch was just pushed")
            .push(document);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_arrays_and_strings_are_all_documents() {
        let text = "{\"Records\":[]}\n[{\"a\":1}, \"{\\\"b\\\":2}\"]\n{\n  \"c\": 3\n}\n";
        assert_eq!(
            parse_documents(text).unwrap(),
            ["{\"Records\":[]}", "{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]
        );
    }

    #[test]
    fn a_number_is_not_a_document() {
        let error = parse_documents("[1]").unwrap_err();
        assert!(error.to_string().contains("not 1"), "{error}");
    }

    #[test]
    fn batches_hold_at_most_the_batch_size() {
        let docs: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let sizes: Vec<usize> = batches(docs, 2).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }
}
