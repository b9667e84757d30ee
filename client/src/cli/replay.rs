//! `streamwatch replay`: what completion policies would have decided on a
//! watch's own objects, or on a file of creation and arrival times, printed
//! as a table (or JSON lines). The server runs the replay; this parses the
//! file and prints.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use streamwatch_client::{Client, proto as v1};

use super::{
    Format,
    output::{Printer, rfc3339, system_time},
};

/// Objects a file may hold: the server replays at most this many.
const MAX_OBJECTS: usize = 100_000;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The watch whose objects to replay (when each was created, and counted)
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    watch_id: Option<String>,

    /// Replay a file instead: one object per line, `CREATED[,ARRIVED]`, each an RFC 3339 time or Unix seconds; `#` starts a comment
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

pub async fn run(client: &mut Client, printer: Printer, args: ReplayArgs) -> anyhow::Result<()> {
    let request = match (&args.watch_id, &args.file) {
        (Some(id), _) => v1::ReplayWatchRequest {
            watch_id: id.clone(),
            ..Default::default()
        },
        (None, Some(path)) => v1::ReplayWatchRequest {
            objects: read_objects(path)?,
            ..Default::default()
        },
        (None, None) => anyhow::bail!("give a watch id or --file"),
    };
    let replayed = client.replay_watch(request).await?;
    print(&printer, &replayed)?;
    Ok(())
}

/// Parses `CREATED[,ARRIVED]` lines.
fn read_objects(path: &Path) -> anyhow::Result<Vec<v1::ReplayObject>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut objects = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |field: &str| {
            instant(field.trim()).with_context(|| {
                format!(
                    "{}:{}: {field:?} is not an RFC 3339 time or Unix seconds",
                    path.display(),
                    n + 1
                )
            })
        };
        let mut fields = line.split(',');
        let created = at(fields.next().unwrap_or(""))?;
        let arrived = fields.next().map(at).transpose()?;
        anyhow::ensure!(
            fields.next().is_none(),
            "{}:{}: more than two times",
            path.display(),
            n + 1
        );
        objects.push(v1::ReplayObject {
            created: Some(created),
            arrived,
        });
        anyhow::ensure!(
            objects.len() <= MAX_OBJECTS,
            "{}: more than {MAX_OBJECTS} objects",
            path.display()
        );
    }
    anyhow::ensure!(!objects.is_empty(), "{}: no objects", path.display());
    Ok(objects)
}

/// An RFC 3339 time or (fractional) Unix seconds.
fn instant(field: &str) -> Option<prost_types::Timestamp> {
    let t = match field.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => UNIX_EPOCH + Duration::from_secs_f64(secs),
        Ok(_) => return None,
        Err(_) => humantime::parse_rfc3339_weak(field).ok()?,
    };
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    Some(prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).ok()?,
        nanos: i32::try_from(since.subsec_nanos()).ok()?,
    })
}

/// Signed seconds of a protobuf duration.
fn seconds(d: Option<&prost_types::Duration>) -> Option<f64> {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

#[derive(Serialize)]
struct OutcomeJson<'a> {
    #[serde(rename = "type")]
    shape: &'static str,
    name: &'a str,
    completed: bool,
    early: bool,
    /// Seconds after the last creation (negative: before).
    first_completion_s: Option<f64>,
    first_completion_objects: u64,
    reopens: u32,
    delay_s: Option<f64>,
    listings: u64,
    list_requests: u64,
}

fn print(printer: &Printer, r: &v1::ReplayWatchResponse) -> io::Result<()> {
    if printer.format == Format::Json {
        return r.outcomes.iter().try_for_each(|o| {
            printer.json(&OutcomeJson {
                shape: "replay",
                name: &o.name,
                completed: o.completed,
                early: o.early,
                first_completion_s: seconds(o.first_completion.as_ref()),
                first_completion_objects: o.first_completion_objects,
                reopens: o.reopens,
                delay_s: seconds(o.delay.as_ref()),
                listings: o.listings,
                list_requests: o.list_requests,
            })
        });
    }
    let stamp = |t: Option<&prost_types::Timestamp>| {
        t.and_then(system_time).map_or_else(|| "-".into(), rfc3339)
    };
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{} objects; watched from {}, the last created {}. Times are after that last creation.",
        r.objects,
        stamp(r.started.as_ref()),
        stamp(r.last_created.as_ref()),
    )?;
    let width = r
        .outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    writeln!(
        out,
        "{:<width$}  {:>10}  {:<28}  {:>7}  {:>8}",
        "POLICY", "COMPLETES", "FIRST COMPLETION", "REOPENS", "LISTINGS"
    )?;
    let secs = |d: Option<&prost_types::Duration>| {
        seconds(d).map_or_else(|| "never".into(), |s| format!("{s:+.1}s"))
    };
    for o in &r.outcomes {
        let first = if o.early {
            format!(
                "EARLY {} with {} objects",
                secs(o.first_completion.as_ref()),
                o.first_completion_objects
            )
        } else {
            "complete".to_owned()
        };
        let first = if o.completed { first } else { "-".to_owned() };
        writeln!(
            out,
            "{:<width$}  {:>10}  {:<28}  {:>7}  {:>8}",
            o.name,
            secs(o.delay.as_ref()),
            first,
            o.reopens,
            o.listings
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_unix_seconds() {
        let t = instant("2026-12-06T05:00:00.250Z").unwrap();
        assert_eq!((t.seconds, t.nanos), (1_796_533_200, 250_000_000));
        let u = instant("1796533200.25").unwrap();
        assert_eq!((u.seconds, u.nanos / 1_000_000), (1_796_533_200, 250));
        for bad in ["", "yesterday", "-5", "NaN", "inf"] {
            assert!(instant(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_file_names_the_line_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.csv");
        std::fs::write(&path, "# created,arrived\n100,101.5\n\n102\n103,soon\n").unwrap();
        let err = read_objects(&path).unwrap_err().to_string();
        assert!(
            err.ends_with(":5: \"soon\" is not an RFC 3339 time or Unix seconds"),
            "{err}"
        );
        std::fs::write(&path, "100,101.5\n102 # no arrival: at creation\n").unwrap();
        let objects = read_objects(&path).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].arrived, None);
    }
}
