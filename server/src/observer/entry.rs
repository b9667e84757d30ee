//! What the observer keeps per live watch: the watch itself (without what
//! it never reads), its timer and writes on their way, and what only some
//! watches need, kept aside. No decisions and no I/O here.

use super::*;
use std::collections::HashMap;

/// A live watch the observer times. Boxed in the table (a million of them
/// would otherwise double in place on every resize), with what only some
/// watches need kept aside.
pub(super) struct Entry {
    pub(super) watch: Watch,
    pub(super) timer: Option<delay_queue::Key>,
    /// The instant its next decision wants ingest settled past, as told to
    /// the queue consumers.
    pub(super) wanted: Option<Timestamp>,
    /// Writes of this watch on their way; it is not decided meanwhile.
    pub(super) writing: u32,
    /// Writes in a row that found it changed.
    pub(super) conflicts: u32,
    /// It was due while a write was on its way: decide it when the write returns.
    pub(super) again: bool,
    /// Listings, manifest checks and a group's members: allocated the first
    /// time a watch needs one of them.
    pub(super) aside: Option<Box<Aside>>,
}

/// What the observer keeps of a watch: everything but its labels and client
/// token, which it never reads (they stay in the store and in what the
/// store returns to callers).
pub(super) fn kept(mut watch: Watch) -> Watch {
    watch.labels = Default::default();
    watch.client_token = None;
    watch
}

impl Entry {
    pub(super) fn new(watch: Watch) -> Box<Self> {
        Box::new(Self {
            watch: kept(watch),
            timer: None,
            wanted: None,
            writing: 0,
            conflicts: 0,
            again: false,
            aside: None,
        })
    }

    pub(super) fn aside(&mut self) -> &mut Aside {
        self.aside.get_or_insert_default()
    }

    /// Keeps `watch` unless the one kept is newer.
    pub(super) fn update(&mut self, watch: Watch) {
        if self.watch.last_seq <= watch.last_seq {
            self.watch = kept(watch);
        }
    }
}

/// What the observer keeps for watches that list S3, check a marker's
/// manifest or group other watches.
#[derive(Default)]
pub(super) struct Aside {
    /// The activity level S3 was last listed at (`policy.reconcile`).
    pub(super) reconciled_at: Option<u64>,
    pub(super) reconciling: bool,
    /// A probe listing that finished: the activity level it left and when
    /// it listed, until the next decision records it.
    pub(super) probed: Option<(u64, Timestamp)>,
    /// The marker rule's manifest check: on its way, and its result until
    /// the next decision writes it into the lifecycle.
    pub(super) checking_manifest: bool,
    pub(super) manifest_checked: Option<marker::Checked>,
    /// The files of the current marker's manifest not counted at the last
    /// check (a later check looks up only these): `(marker_count, keys)`.
    pub(super) manifest_missing: Option<(u64, Vec<String>)>,
    /// A group's view of its members.
    pub(super) members: HashMap<WatchId, Member>,
    /// A read of the group's members is on its way.
    pub(super) reading_members: bool,
}
