//! The marker rule's view of a watch: whether the marker counts for the
//! current generation, and how its manifest check reads in a reason.

use crate::watch::Rule;
use crate::{
    clock::Timestamp,
    watch::{ManifestCheck, PollingProgress, Watch},
};

/// When the marker that counts for the current generation was recorded:
/// any marker in the first generation, one recorded after the previous
/// completion in a reopened one.
pub fn marker_seen(watch: &Watch) -> Option<Timestamp> {
    let at = watch.counters.marker_at?;
    let after = watch.lifecycle.polling.marker_after;
    after.is_none_or(|after| at > after).then_some(at)
}

/// "the manifest lists 100 files, 3 not counted yet", or its problem.
pub(super) fn manifest_summary(c: &ManifestCheck) -> String {
    if !c.problem.is_empty() {
        return c.problem.clone();
    }
    match c.missing {
        0 => format!(
            "the marker's manifest lists {} files, all counted",
            c.listed
        ),
        n => format!(
            "the marker's manifest lists {} files, {n} not counted yet",
            c.listed
        ),
    }
}

/// Where a marker rule stood, for a TIMED_OUT reason; `None` for other rules.
pub(super) fn marker_status(watch: &Watch, polling: &PollingProgress) -> Option<String> {
    let Rule::Marker {
        key,
        verify_manifest,
        ..
    } = &watch.policy.rule
    else {
        return None;
    };
    if marker_seen(watch).is_none() {
        return Some(format!("marker {key} not created"));
    }
    let check = polling
        .manifest
        .as_ref()
        .filter(|c| c.marker == watch.counters.marker_count);
    Some(match check {
        Some(c) if *verify_manifest => manifest_summary(c),
        _ if *verify_manifest => format!("marker {key} created, its manifest not read yet"),
        _ => format!("marker {key} created"),
    })
}
