//! The SQLite file's tables and their upgrades. [`upgrade`] brings a file
//! of any earlier version to [`SCHEMA_VERSION`] in one transaction when the
//! store opens it, and refuses a file of a later version; it never changes
//! or drops what a file holds, only adds tables and columns (an older file's
//! rows read with the added columns' defaults).
//!
//! Tables: `watches` (one row per watch), `watch_labels` (for label filters),
//! `seen_keys` (one row per watch, activity kind and key, with one sequencer
//! of the key, and the size, event time and generation of its first counted
//! notification: the rows of kind 0 are the watch's manifest, read in key
//! order) and `seen_sequencers` (one row per further distinct sequencer of
//! a key): the exactness of counting (see [`crate::store::KeyEvent`]);
//! `events` (the per-watch log, keyed by `seq`), `outbox` (one row per event
//! and notify target, written in the transaction that appends the event; the
//! delivery as JSON in `record`).
//!
//! Upgrades go by the columns a file has, not by its `user_version` alone:
//! the trace columns were added without a version of their own.

use std::path::Path;

use rusqlite::Connection;

use crate::store::{Result, StoreError};

/// 2: the `outbox` table. 3: the `seen_sequencers` table (files of version 2
/// get it, empty, when opened: their keys' earlier sequencers were not kept).
/// 4: key filters and `object_bytes` on `watches`; size, event time and
/// generation on `seen_keys` (rows of older files read as size 0, no event
/// time, generation 1). 5: `watches.members`, a watch group's members as a
/// JSON list (empty for a watch of objects; a group's `bucket` and `prefix`
/// are empty); `marker_count`, `marker_at` and `newest_event_at` on `watches`,
/// `recorded_at` on `seen_keys` (rows of kind 2 are markers).
pub(super) const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS watches (
    tenant TEXT NOT NULL,
    watch_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    policy TEXT NOT NULL,
    labels TEXT NOT NULL,
    client_token TEXT,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL,
    generation_started_at INTEGER NOT NULL,
    completed_at INTEGER,
    reason TEXT NOT NULL,
    polling TEXT NOT NULL,
    late_window_ms INTEGER NOT NULL,
    object_count INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    removed_count INTEGER NOT NULL,
    last_activity_at INTEGER,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, watch_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS watches_by_client_token ON watches (tenant, client_token)
    WHERE client_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS watches_by_state ON watches (state);
CREATE TABLE IF NOT EXISTS watch_labels (
    tenant TEXT NOT NULL,
    watch_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tenant, watch_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_keys (
    tenant TEXT NOT NULL,
    watch_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    key TEXT NOT NULL,
    sequencer TEXT NOT NULL,
    PRIMARY KEY (tenant, watch_id, kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_sequencers (
    tenant TEXT NOT NULL,
    watch_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    key TEXT NOT NULL,
    sequencer TEXT NOT NULL,
    PRIMARY KEY (tenant, watch_id, kind, key, sequencer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    tenant TEXT NOT NULL,
    watch_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (tenant, watch_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    tenant TEXT NOT NULL,
    watch_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    target INTEGER NOT NULL,
    state TEXT NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (tenant, watch_id, seq, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at) WHERE state = 'PENDING';
";

/// The StartWatch trace context of each watch: added to `watches` of files
/// created before it (and of new files), once, when the column is missing.
const TRACE_COLUMNS: &str = "
ALTER TABLE watches ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
ALTER TABLE watches ADD COLUMN tracestate TEXT NOT NULL DEFAULT '';
";

/// Version 4: added to files created before it (and to new files), once,
/// when `watches.object_bytes` is missing.
const MANIFEST_COLUMNS: &str = "
ALTER TABLE watches ADD COLUMN filter TEXT NOT NULL DEFAULT '';
ALTER TABLE watches ADD COLUMN object_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE seen_keys ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE seen_keys ADD COLUMN event_time INTEGER;
ALTER TABLE seen_keys ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
";

/// Version 5: added to files created before it (and to new files), once,
/// when `watches.members` is missing.
const MEMBERS_COLUMN: &str = "
ALTER TABLE watches ADD COLUMN members TEXT NOT NULL DEFAULT '';
";

/// Version 5 too: added once, when `watches.marker_count` is missing.
const MARKER_COLUMNS: &str = "
ALTER TABLE watches ADD COLUMN marker_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE watches ADD COLUMN marker_at INTEGER;
ALTER TABLE watches ADD COLUMN newest_event_at INTEGER;
ALTER TABLE seen_keys ADD COLUMN recorded_at INTEGER;
";

/// Brings the file behind `conn` (at `path`, for messages) to
/// [`SCHEMA_VERSION`], in one transaction.
pub(super) fn upgrade(conn: &mut Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{} has schema version {version}; this server knows up to {SCHEMA_VERSION}",
            path.display()
        )));
    }
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    // Columns added since the first version, each once, when missing.
    for (column, add) in [
        ("traceparent", TRACE_COLUMNS),
        ("object_bytes", MANIFEST_COLUMNS),
        ("members", MEMBERS_COLUMN),
        ("marker_count", MARKER_COLUMNS),
    ] {
        let present: bool = tx.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('watches') WHERE name = ?1",
            [column],
            |r| r.get(0),
        )?;
        if !present {
            tx.execute_batch(add)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::SCHEMA_VERSION;
    use crate::{
        clock::Timestamp,
        store::{
            Activity, ActivityKind, Created, NewWatch, ObjectsQuery, Recorded, Store,
            sqlite::SqliteStore,
        },
        watch::{Bucket, KeyFilter, Labels, Prefix, Source, TenantId, WatchId},
    };

    #[tokio::test]
    async fn a_version_2_file_is_upgraded_and_keeps_counting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let tenant = TenantId::parse("tenant", "acme").unwrap();
        let id = WatchId::generate();
        let activity = |sequencer: &str| Activity {
            tenant: tenant.clone(),
            watch_id: id.clone(),
            kind: ActivityKind::Created,
            key: "a".into(),
            sequencer: sequencer.into(),
            size: 0,
            event_time: None,
        };
        let now = Timestamp::from_millis(1_800_000_000_000);
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_watch(data_lake_watch(&tenant, &id, now))
            .await
            .unwrap();
        store
            .record(vec![activity("0055aed6dcd90281e2")], now)
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        // Version 2 had no seen_sequencers; its seen_keys held the key's last sequencer as sent.
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE seen_sequencers; PRAGMA user_version = 2;")
            .unwrap();

        let store = SqliteStore::open(&path).unwrap();
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let out = store
            .record(
                vec![
                    activity("0055AED6DCD90281E2"),
                    activity("0055AED6DCD90281E3"),
                    activity("0055AED6DCD90281E3"),
                ],
                now,
            )
            .await
            .unwrap();
        use Recorded::*;
        assert_eq!(out.results, [Duplicate, Counted, Duplicate]);
        let watch = store.get_watch(&tenant, &id).await.unwrap().unwrap();
        assert_eq!(
            (watch.counters.object_count, watch.counters.event_count),
            (1, 2)
        );
    }

    /// A watch of all of `data-lake` with the default policy.
    fn data_lake_watch(tenant: &TenantId, id: &WatchId, now: Timestamp) -> NewWatch {
        NewWatch {
            tenant: tenant.clone(),
            id: id.clone(),
            source: Source::objects(
                Bucket::parse("bucket", "data-lake").unwrap(),
                Prefix::parse("prefix", "").unwrap(),
                KeyFilter::default(),
            ),
            policy: crate::watch::Policy::default(),
            labels: Labels::default(),
            client_token: None,
            created_at: now,
            trace: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_version_3_file_gets_manifest_columns_and_keeps_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        let tenant = TenantId::parse("tenant", "acme").unwrap();
        let id = WatchId::generate();
        let created = |key: &str, size: u64| Activity {
            tenant: tenant.clone(),
            watch_id: id.clone(),
            kind: ActivityKind::Created,
            key: key.into(),
            sequencer: String::new(),
            size,
            event_time: Some(Timestamp::from_millis(1_800_000_000_500)),
        };
        let now = Timestamp::from_millis(1_800_000_000_000);
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_watch(data_lake_watch(&tenant, &id, now))
            .await
            .unwrap();
        store.record(vec![created("old", 7)], now).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        // Version 3 had none of the manifest columns.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "ALTER TABLE watches DROP COLUMN filter; ALTER TABLE watches DROP COLUMN object_bytes; \
                 ALTER TABLE seen_keys DROP COLUMN size; ALTER TABLE seen_keys DROP COLUMN event_time; \
                 ALTER TABLE seen_keys DROP COLUMN generation; ALTER TABLE watches DROP COLUMN marker_count; \
                 ALTER TABLE watches DROP COLUMN marker_at; ALTER TABLE watches DROP COLUMN newest_event_at; ALTER TABLE seen_keys DROP COLUMN recorded_at; PRAGMA user_version = 3;",
            )
            .unwrap();

        let store = SqliteStore::open(&path).unwrap();
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let out = store
            .record(vec![created("old", 7), created("new", 5)], now)
            .await
            .unwrap();
        assert_eq!(out.results, [Recorded::Duplicate, Recorded::Counted]);
        let watch = store.get_watch(&tenant, &id).await.unwrap().unwrap();
        assert_eq!(watch.counters.object_count, 2);
        assert_eq!(
            watch.counters.object_bytes, 5,
            "sizes before the upgrade were not kept"
        );
        let query = ObjectsQuery {
            limit: 10,
            ..Default::default()
        };
        let objects = store.list_objects(&tenant, &id, &query).await.unwrap();
        let listed: Vec<_> = objects
            .iter()
            .map(|o| (o.key.as_str(), o.size, o.event_time.is_some(), o.generation))
            .collect();
        assert_eq!(listed, [("new", 5, true, 1), ("old", 0, false, 1)]);
    }

    #[tokio::test]
    async fn a_version_4_file_gets_group_members_and_keeps_its_watches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        let tenant = TenantId::parse("tenant", "acme").unwrap();
        let id = WatchId::generate();
        let now = Timestamp::from_millis(1_800_000_000_000);
        let store = SqliteStore::open(&path).unwrap();
        let old = match store
            .create_watch(data_lake_watch(&tenant, &id, now))
            .await
            .unwrap()
        {
            Created::New { watch, .. } => watch,
            Created::Existing(_) => unreachable!("a fresh file"),
        };
        store.close().await.unwrap();
        drop(store);
        // Version 4 had no members column.
        Connection::open(&path)
            .unwrap()
            .execute_batch("ALTER TABLE watches DROP COLUMN members; PRAGMA user_version = 4;")
            .unwrap();

        let store = SqliteStore::open(&path).unwrap();
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 5);
        let read = store.get_watch(&tenant, &id).await.unwrap().unwrap();
        assert_eq!(read, old, "a watch of objects reads as before");
        let group = NewWatch {
            id: WatchId::generate(),
            source: Source::Members {
                members: vec![id.clone()],
            },
            ..data_lake_watch(&tenant, &id, now)
        };
        store.create_watch(group.clone()).await.unwrap();
        let read = store.get_watch(&tenant, &group.id).await.unwrap().unwrap();
        assert_eq!(read.source, group.source);
    }
}
