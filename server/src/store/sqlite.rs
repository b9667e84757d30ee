//! The embedded store: one SQLite file in WAL mode. All writes go through one
//! writer task that commits whatever has queued up in a single transaction
//! (group commit), each command inside its own savepoint so one failing
//! command never undoes another. Reads use a small pool of read connections.
//!
//! If SQLite rolls the whole transaction back (it may on a full disk or an I/O
//! error), the rest of the group is refused with that error, not run outside
//! a transaction. SQLite errors become [`StoreError`]s here, classified by
//! their code (a full disk is [`StoreError::Full`]).
//!
//! Tables: `watches` (one row per watch), `watch_labels` (for label filters),
//! `seen_keys` (one row per watch, activity kind and key, with one sequencer
//! of the key, and the size, event time and generation of its first counted
//! notification: the rows of kind 0 are the watch's manifest, read in key
//! order) and `seen_sequencers` (one row per further distinct sequencer
//! of a key): the exactness of counting (see [`KeyEvent`]); `events` (the
//! per-watch log, keyed by `seq`), `outbox` (one row per event and notify
//! target, written in the transaction that appends the event; the delivery as
//! JSON in `record`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params, types::Value};
use tokio::sync::{mpsc, oneshot};

use super::{
    Activity, ActivityKind, Applied, Change, Claimed, Created, Delivery, KeyEvent, ListQuery,
    ManifestEntry, NewWatch, ObjectsQuery, RecordOutcome, Recorded, Result, Store, StoreError,
    outbox_for, rules, sequencer_identity,
};
use crate::{
    clock::Timestamp,
    watch::{
        Counters, EventKind, KeyFilter, Lifecycle, Prefix, Source, TenantId, TraceContext, Watch,
        WatchEvent, WatchId, WatchState,
    },
};

/// Commands one transaction may carry at most.
const MAX_GROUP: usize = 512;
const READERS: usize = 4;
/// 2: the `outbox` table. 3: the `seen_sequencers` table (files of version 2
/// get it, empty, when opened: their keys' earlier sequencers were not kept).
/// 4: key filters and `object_bytes` on `watches`; size, event time and
/// generation on `seen_keys` (rows of older files read as size 0, no event
/// time, generation 1). 5: `watches.members`, a watch group's members as a
/// JSON list (empty for a watch of objects; a group's `bucket` and `prefix`
/// are empty); `marker_count`, `marker_at` and `newest_event_at` on `watches`,
/// `recorded_at` on `seen_keys` (rows of kind 2 are markers).
const SCHEMA_VERSION: i64 = 5;

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

const WATCH_COLUMNS: &str = "tenant, watch_id, bucket, prefix, policy, labels, client_token, created_at, state, \
     generation, generation_started_at, completed_at, reason, polling, object_count, event_count, removed_count, \
     last_activity_at, last_seq, traceparent, tracestate, filter, object_bytes, members, marker_count, marker_at, \
     newest_event_at";

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Create(Box<NewWatch>, Reply<Created>),
    Record(Vec<Activity>, Timestamp, Reply<RecordOutcome>),
    Apply(Box<Change>, Reply<Option<Applied>>),
    Retire(TenantId, WatchId, Reply<()>),
    Claim(Timestamp, Timestamp, usize, Reply<Claimed>),
    Finish(Box<FinishArgs>, Reply<Option<Vec<WatchEvent>>>),
    Close(Reply<()>),
}

struct FinishArgs {
    delivery: Delivery,
    lease: Timestamp,
    event: Option<EventKind>,
    now: Timestamp,
}

/// A finished command waiting for its transaction to commit.
enum Pending {
    Create(Reply<Created>, Result<Created>),
    Record(Reply<RecordOutcome>, Result<RecordOutcome>),
    Apply(Reply<Option<Applied>>, Result<Option<Applied>>),
    Retire(Reply<()>, Result<()>),
    Claim(Reply<Claimed>, Result<Claimed>),
    Finish(
        Reply<Option<Vec<WatchEvent>>>,
        Result<Option<Vec<WatchEvent>>>,
    ),
}

impl Pending {
    fn send(self, commit: &Result<()>) {
        fn out<T>(reply: Reply<T>, result: Result<T>, commit: &Result<()>) {
            let result = match commit {
                Ok(()) => result,
                Err(e) => Err(e.clone()),
            };
            // The caller may have gone away; the change is committed regardless.
            let _ = reply.send(result);
        }
        match self {
            Self::Create(r, v) => out(r, v, commit),
            Self::Record(r, v) => out(r, v, commit),
            Self::Apply(r, v) => out(r, v, commit),
            Self::Retire(r, v) => out(r, v, commit),
            Self::Claim(r, v) => out(r, v, commit),
            Self::Finish(r, v) => out(r, v, commit),
        }
    }
}

pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    readers: Arc<Readers>,
}

struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let conn = self.conns[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }
}

/// Classifies SQLite's errors by their code: a full disk, contention and I/O
/// failures pass; corruption and everything else do not.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        // For these codes SQLite's message is a fixed phrase ("database or disk is full").
        let cause = || format!("SQLite: {e}");
        match e.sqlite_error_code() {
            Some(Code::DiskFull) => Self::Full(cause()),
            Some(Code::DatabaseBusy | Code::DatabaseLocked) => Self::Busy(cause()),
            Some(
                Code::SystemIoFailure
                | Code::CannotOpen
                | Code::ReadOnly
                | Code::OutOfMemory
                | Code::FileLockingProtocolFailed,
            ) => Self::Unavailable(cause()),
            Some(Code::DatabaseCorrupt | Code::NotADatabase) => Self::Corrupt(cause()),
            _ => Self::Internal(format!("sqlite: {e}")),
        }
    }
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path`. Needs a tokio runtime.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let mut conn = open(&path, OpenFlags::default())?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with NORMAL survives a killed process; only an OS crash can lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
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

        let conns = (0..READERS)
            .map(|_| {
                open(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let (writer, rx) = mpsc::channel(4096);
        tokio::spawn(run_writer(conn, rx));
        Ok(Self {
            writer,
            readers: Arc::new(Readers {
                conns,
                next: AtomicUsize::new(0),
            }),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }
}

/// The writer task: takes whatever commands have queued up and runs them as
/// one transaction on the blocking pool (so a paused test clock never jumps
/// while a commit is in flight).
async fn run_writer(conn: Connection, mut rx: mpsc::Receiver<Command>) {
    let mut conn = Some(conn);
    while let Some(first) = rx.recv().await {
        let mut commands = vec![first];
        while commands.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => commands.push(c),
                Err(_) => break,
            }
        }
        let Some(mut c) = conn.take() else { return };
        let group = tokio::task::spawn_blocking(move || {
            let closing = run_group(&mut c, commands);
            (c, closing)
        })
        .await;
        match group {
            Ok((c, false)) => conn = Some(c),
            Ok((_, true)) => break,
            Err(e) => {
                tracing::error!(error = %e, "the sqlite writer failed; the store is closed");
                break;
            }
        }
    }
    // Commands that raced the close are answered with Closed when dropped.
    rx.close();
}

/// Runs one group of commands in one transaction; true when the group closed the store.
fn run_group(conn: &mut Connection, commands: Vec<Command>) -> bool {
    let mut closing = Vec::new();
    let mut pending = Vec::with_capacity(commands.len());
    let commit = match conn.transaction() {
        Ok(mut tx) => {
            // Set when SQLite rolled the whole transaction back: what ran is
            // gone, and what is left must not run outside a transaction.
            let mut aborted: Option<StoreError> = None;
            for command in commands {
                match command {
                    Command::Create(new, reply) => pending.push(Pending::Create(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| create(tx, *new)),
                    )),
                    Command::Record(activities, now, reply) => pending.push(Pending::Record(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| record(tx, &activities, now)),
                    )),
                    Command::Apply(args, reply) => pending.push(Pending::Apply(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| apply(tx, *args)),
                    )),
                    Command::Retire(tenant, id, reply) => pending.push(Pending::Retire(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| retire(tx, &tenant, &id)),
                    )),
                    Command::Claim(now, lease_until, limit, reply) => pending.push(Pending::Claim(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| {
                            claim(tx, now, lease_until, limit)
                        }),
                    )),
                    Command::Finish(args, reply) => pending.push(Pending::Finish(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| finish(tx, *args)),
                    )),
                    Command::Close(reply) => closing.push(reply),
                }
            }
            match aborted {
                Some(cause) => Err(cause),
                None => tx.commit().map_err(StoreError::from),
            }
        }
        Err(e) => Err(e.into()),
    };
    match &commit {
        Err(e) if e.is_transient() => tracing::warn!(error = %e, "sqlite commit failed"),
        Err(e) => tracing::error!(error = %e, "sqlite commit failed"),
        Ok(()) => {}
    }
    for p in pending {
        p.send(&commit);
    }
    if closing.is_empty() {
        return false;
    }
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "final checkpoint failed");
    }
    for reply in closing {
        let _ = reply.send(Ok(()));
    }
    true
}

/// Runs one command in its own savepoint of `tx`, unless the transaction was
/// already `aborted`; sets `aborted` when this command's failure made SQLite
/// roll the whole transaction back.
fn guarded<T>(
    tx: &mut Transaction<'_>,
    aborted: &mut Option<StoreError>,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    if let Some(cause) = aborted {
        return Err(cause.clone());
    }
    let result = in_savepoint(tx, f);
    if let Err(e) = &result
        && tx.is_autocommit()
    {
        *aborted = Some(e.clone());
    }
    result
}

fn in_savepoint<T>(
    tx: &mut Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let sp = tx.savepoint()?;
    let value = f(&sp)?;
    sp.commit()?;
    Ok(value)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Rebuilds a name newtype from its stored text (validated when it was written).
fn stored<T: serde::de::DeserializeOwned>(raw: String) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(raw))
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row_to_watch(row: &Row<'_>) -> Result<Watch> {
    let text = |i: usize| -> Result<String> { Ok(row.get::<_, String>(i)?) };
    let ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(Timestamp::from_millis))
    };
    let count = |i: usize| -> Result<u64> { Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0)) };
    let state_raw = text(8)?;
    let state = WatchState::from_str_opt(&state_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown watch state {state_raw:?}")))?;
    let filter = text(21)?;
    let members = text(23)?;
    let source = if members.is_empty() {
        Source::objects(
            stored(text(2)?)?,
            stored::<Prefix>(text(3)?)?,
            if filter.is_empty() {
                KeyFilter::default()
            } else {
                from_json(&filter)?
            },
        )
    } else {
        Source::Members {
            members: from_json(&members)?,
        }
    };
    Ok(Watch {
        tenant: stored(text(0)?)?,
        id: stored(text(1)?)?,
        source,
        policy: from_json(&text(4)?)?,
        labels: from_json(&text(5)?)?,
        client_token: row.get(6)?,
        created_at: Timestamp::from_millis(row.get(7)?),
        lifecycle: Lifecycle {
            state,
            generation: row.get(9)?,
            generation_started_at: Timestamp::from_millis(row.get(10)?),
            completed_at: ts(11)?,
            reason: text(12)?,
            polling: from_json(&text(13)?)?,
        },
        counters: Counters {
            object_count: count(14)?,
            event_count: count(15)?,
            removed_count: count(16)?,
            object_bytes: count(22)?,
            last_activity_at: ts(17)?,
            marker_count: count(24)?,
            marker_at: ts(25)?,
            newest_event_at: ts(26)?,
        },
        last_seq: count(18)?,
        trace: TraceContext {
            traceparent: text(19)?,
            tracestate: text(20)?,
        },
    })
}

fn load_watch(conn: &Connection, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {WATCH_COLUMNS} FROM watches WHERE tenant = ?1 AND watch_id = ?2"
    ))?;
    let mut rows = stmt.query(params![tenant.as_str(), id.as_str()])?;
    match rows.next()? {
        Some(row) => Ok(Some(row_to_watch(row)?)),
        None => Ok(None),
    }
}

fn append_events(
    conn: &Connection,
    watch: &mut Watch,
    kinds: Vec<EventKind>,
    now: Timestamp,
) -> Result<Vec<WatchEvent>> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (tenant, watch_id, seq, time, generation, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let events = rules::sequence(watch, kinds, now);
    for e in &events {
        stmt.execute(params![
            e.tenant.as_str(),
            e.watch_id.as_str(),
            to_i64(e.seq),
            e.time.as_millis(),
            e.generation,
            e.kind.name(),
            json(&e.kind)?,
        ])?;
    }
    Ok(events)
}

fn create(conn: &Connection, new: NewWatch) -> Result<Created> {
    if let Some(token) = &new.client_token {
        let existing: Option<String> = conn
            .prepare_cached("SELECT watch_id FROM watches WHERE tenant = ?1 AND client_token = ?2")?
            .query_row(params![new.tenant.as_str(), token], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            let id: WatchId = stored(id)?;
            let watch = load_watch(conn, &new.tenant, &id)?
                .ok_or_else(|| StoreError::Corrupt("client token names a missing watch".into()))?;
            return Ok(Created::Existing(watch));
        }
    }
    let mut watch = new.into_watch();
    let objects = watch.source.as_objects();
    let late_window_ms = watch
        .policy
        .late_window
        .map_or(0, |w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX));
    conn.prepare_cached(
        "INSERT INTO watches (tenant, watch_id, bucket, prefix, policy, labels, client_token, created_at, state, \
         generation, generation_started_at, completed_at, reason, polling, late_window_ms, object_count, event_count, \
         removed_count, last_activity_at, last_seq, traceparent, tracestate, filter, object_bytes, members) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, '', ?12, ?13, 0, 0, 0, NULL, 1, ?14, ?15, ?16, 0, ?17)",
    )?
    .execute(params![
        watch.tenant.as_str(),
        watch.id.as_str(),
        objects.map_or("", |o| o.bucket.as_str()),
        objects.map_or("", |o| o.prefix.as_str()),
        json(&watch.policy)?,
        json(&watch.labels)?,
        watch.client_token,
        watch.created_at.as_millis(),
        watch.lifecycle.state.as_str(),
        watch.lifecycle.generation,
        watch.lifecycle.generation_started_at.as_millis(),
        json(&watch.lifecycle.polling)?,
        late_window_ms,
        watch.trace.traceparent,
        watch.trace.tracestate,
        match objects {
            Some(o) if !o.filter.is_empty() => json(&o.filter)?,
            _ => String::new(),
        },
        match &watch.source {
            Source::Members { members } => json(members)?,
            Source::Objects(_) => String::new(),
        },
    ])?;
    let mut label_stmt = conn.prepare_cached(
        "INSERT INTO watch_labels (tenant, watch_id, key, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (k, v) in &watch.labels {
        label_stmt.execute(params![watch.tenant.as_str(), watch.id.as_str(), k, v])?;
    }
    let (started, at) = (rules::started(&watch), watch.created_at);
    let events = append_events(conn, &mut watch, vec![started], at)?;
    Ok(Created::New { watch, events })
}

fn record(conn: &Connection, activities: &[Activity], now: Timestamp) -> Result<RecordOutcome> {
    let mut watches: HashMap<(TenantId, WatchId), Option<(Watch, bool)>> = HashMap::new();
    let mut order = Vec::new();
    let mut results = Vec::with_capacity(activities.len());
    let mut seen = conn.prepare_cached(
        "SELECT sequencer FROM seen_keys WHERE tenant = ?1 AND watch_id = ?2 AND kind = ?3 AND key = ?4",
    )?;
    let mut remember = conn.prepare_cached(
        "INSERT INTO seen_keys (tenant, watch_id, kind, key, sequencer, size, event_time, generation, recorded_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (tenant, watch_id, kind, key) DO UPDATE SET sequencer = excluded.sequencer",
    )?;
    let mut remember_other = conn.prepare_cached(
        "INSERT OR IGNORE INTO seen_sequencers (tenant, watch_id, kind, key, sequencer) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for a in activities {
        let slot = match watches.entry((a.tenant.clone(), a.watch_id.clone())) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let loaded =
                    load_watch(conn, &a.tenant, &a.watch_id)?.filter(|w| w.accepts_activity(now));
                if loaded.is_some() {
                    order.push(e.key().clone());
                }
                e.insert(loaded.map(|w| (w, false)))
            }
        };
        let Some((watch, changed)) = slot else {
            results.push(Recorded::NotLive);
            continue;
        };
        let kind = match a.kind {
            ActivityKind::Created => 0,
            ActivityKind::Removed => 1,
            ActivityKind::Marker => 2,
        };
        let stored: Option<String> = seen
            .query_row(
                params![a.tenant.as_str(), a.watch_id.as_str(), kind, a.key],
                |r| r.get(0),
            )
            .optional()?;
        let sequencer = sequencer_identity(&a.sequencer);
        let stored = stored.as_deref().map(sequencer_identity);
        let key_params = params![
            a.tenant.as_str(),
            a.watch_id.as_str(),
            kind,
            a.key,
            sequencer
        ];
        let first = params![
            a.tenant.as_str(),
            a.watch_id.as_str(),
            kind,
            a.key,
            sequencer,
            to_i64(a.size),
            a.event_time.map(Timestamp::as_millis),
            watch.counting_generation(),
            now.as_millis(),
        ];
        let event = match KeyEvent::of(stored.as_deref(), &sequencer) {
            // A key taking its first sequencer updates the sequencer only: it
            // keeps its first size and time.
            event @ (KeyEvent::NewKey | KeyEvent::FirstSequencer) => {
                remember.execute(first)?;
                event
            }
            KeyEvent::Repeat => KeyEvent::Repeat,
            KeyEvent::OtherSequencer => {
                let new_pair = remember_other.execute(key_params)? == 1;
                KeyEvent::OtherSequencer.given_pair(!new_pair)
            }
        };
        let outcome = rules::count(watch, event, a, now);
        *changed |= outcome == Recorded::Counted;
        results.push(outcome);
    }
    let mut updated = Vec::new();
    let mut update = conn.prepare_cached(
        "UPDATE watches SET object_count = ?3, event_count = ?4, removed_count = ?5, last_activity_at = ?6, \
         last_seq = ?7, object_bytes = ?8, marker_count = ?9, marker_at = ?10, newest_event_at = ?11 WHERE tenant = ?1 AND watch_id = ?2",
    )?;
    for key in order {
        let Some(Some((mut watch, true))) = watches.remove(&key) else {
            continue;
        };
        let counters = watch.counters;
        let progress = rules::progress(&watch);
        let events = append_events(conn, &mut watch, vec![progress], now)?;
        update.execute(params![
            watch.tenant.as_str(),
            watch.id.as_str(),
            to_i64(counters.object_count),
            to_i64(counters.event_count),
            to_i64(counters.removed_count),
            counters.last_activity_at.map(Timestamp::as_millis),
            to_i64(watch.last_seq),
            to_i64(counters.object_bytes),
            to_i64(counters.marker_count),
            counters.marker_at.map(Timestamp::as_millis),
            counters.newest_event_at.map(Timestamp::as_millis),
        ])?;
        updated.push((watch, events));
    }
    Ok(RecordOutcome { results, updated })
}

fn apply(conn: &Connection, args: Change) -> Result<Option<Applied>> {
    let Some(mut watch) = load_watch(conn, &args.tenant, &args.id)? else {
        return Ok(None);
    };
    if !args.guard.holds(&watch) {
        return Ok(Some(Applied::Conflict(watch)));
    }
    watch.lifecycle = args.lifecycle;
    let events = append_events(conn, &mut watch, args.events, args.now)?;
    let life = &watch.lifecycle;
    conn.prepare_cached(
        "UPDATE watches SET state = ?3, generation = ?4, generation_started_at = ?5, completed_at = ?6, reason = ?7, \
         polling = ?8, last_seq = ?9 WHERE tenant = ?1 AND watch_id = ?2",
    )?
    .execute(params![
        watch.tenant.as_str(),
        watch.id.as_str(),
        life.state.as_str(),
        life.generation,
        life.generation_started_at.as_millis(),
        life.completed_at.map(Timestamp::as_millis),
        life.reason,
        json(&life.polling)?,
        to_i64(watch.last_seq),
    ])?;
    for delivery in outbox_for(&watch, &events, args.now) {
        put_delivery(conn, &delivery, true)?;
    }
    Ok(Some(Applied::Done { watch, events }))
}

/// Writes an outbox row (`new`: insert; else replace the existing one).
fn put_delivery(conn: &Connection, d: &Delivery, new: bool) -> Result<()> {
    let sql = if new {
        "INSERT INTO outbox (tenant, watch_id, seq, target, state, next_attempt_at, record) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    } else {
        "UPDATE outbox SET state = ?5, next_attempt_at = ?6, record = ?7 \
         WHERE tenant = ?1 AND watch_id = ?2 AND seq = ?3 AND target = ?4"
    };
    conn.prepare_cached(sql)?.execute(params![
        d.tenant.as_str(),
        d.watch_id.as_str(),
        to_i64(d.seq),
        d.target_index,
        d.state.as_str(),
        d.next_attempt_at.as_millis(),
        json(d)?,
    ])?;
    Ok(())
}

fn claim(
    conn: &Connection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
) -> Result<Claimed> {
    let mut stmt = conn.prepare_cached(
        "SELECT record FROM outbox WHERE state = 'PENDING' AND next_attempt_at <= ?1 \
         ORDER BY next_attempt_at LIMIT ?2",
    )?;
    let records: Vec<String> = stmt
        .query_map(
            params![now.as_millis(), i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut deliveries = Vec::with_capacity(records.len());
    for raw in records {
        let mut d: Delivery = from_json(&raw)?;
        d.next_attempt_at = lease_until;
        put_delivery(conn, &d, false)?;
        deliveries.push(d);
    }
    // Includes the leases just taken, and entries due now beyond `limit`.
    let next_due: Option<i64> = conn
        .prepare_cached("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'PENDING'")?
        .query_row([], |r| r.get(0))?;
    Ok(Claimed {
        deliveries,
        next_due: next_due.map(Timestamp::from_millis),
    })
}

fn finish(conn: &Connection, args: FinishArgs) -> Result<Option<Vec<WatchEvent>>> {
    let d = &args.delivery;
    let leased: Option<i64> = conn
        .prepare_cached(
            "SELECT next_attempt_at FROM outbox WHERE tenant = ?1 AND watch_id = ?2 AND seq = ?3 \
             AND target = ?4 AND state = 'PENDING'",
        )?
        .query_row(
            params![
                d.tenant.as_str(),
                d.watch_id.as_str(),
                to_i64(d.seq),
                d.target_index
            ],
            |r| r.get(0),
        )
        .optional()?;
    if leased != Some(args.lease.as_millis()) {
        return Ok(None);
    }
    put_delivery(conn, d, false)?;
    let mut events = Vec::new();
    if let Some(kind) = args.event
        && let Some(mut watch) = load_watch(conn, &d.tenant, &d.watch_id)?
    {
        events = append_events(conn, &mut watch, vec![kind], args.now)?;
        conn.prepare_cached(
            "UPDATE watches SET last_seq = ?3 WHERE tenant = ?1 AND watch_id = ?2",
        )?
        .execute(params![
            watch.tenant.as_str(),
            watch.id.as_str(),
            to_i64(watch.last_seq)
        ])?;
    }
    Ok(Some(events))
}

/// Drops the further sequencers; the seen keys stay: they are the manifest.
fn retire(conn: &Connection, tenant: &TenantId, id: &WatchId) -> Result<()> {
    conn.prepare_cached("DELETE FROM seen_sequencers WHERE tenant = ?1 AND watch_id = ?2")?
        .execute(params![tenant.as_str(), id.as_str()])?;
    Ok(())
}

fn row_to_event(row: &Row<'_>) -> Result<WatchEvent> {
    Ok(WatchEvent {
        tenant: stored(row.get(0)?)?,
        watch_id: stored(row.get(1)?)?,
        seq: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        time: Timestamp::from_millis(row.get(3)?),
        generation: row.get(4)?,
        kind: from_json(&row.get::<_, String>(5)?)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_watch(&self, new: NewWatch) -> Result<Created> {
        self.call(|reply| Command::Create(Box::new(new), reply))
            .await
    }

    async fn get_watch(&self, tenant: &TenantId, id: &WatchId) -> Result<Option<Watch>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read(move |conn| load_watch(conn, &tenant, &id)).await
    }

    async fn list_watches(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Watch>> {
        let tenant = tenant.clone();
        let query = query.clone();
        self.read(move |conn| {
            let mut sql = format!("SELECT {WATCH_COLUMNS} FROM watches w WHERE tenant = ?1");
            let mut args: Vec<Value> = vec![Value::Text(tenant.as_str().to_owned())];
            if let Some(state) = query.state {
                args.push(Value::Text(state.as_str().to_owned()));
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            if let Some(after) = &query.after {
                args.push(Value::Text(after.as_str().to_owned()));
                sql.push_str(&format!(" AND watch_id < ?{}", args.len()));
            }
            for (k, v) in &query.labels {
                args.push(Value::Text(k.clone()));
                args.push(Value::Text(v.clone()));
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM watch_labels l WHERE l.tenant = w.tenant AND l.watch_id = w.watch_id \
                     AND l.key = ?{} AND l.value = ?{})",
                    args.len() - 1,
                    args.len()
                ));
            }
            args.push(Value::Integer(i64::try_from(query.limit).unwrap_or(i64::MAX)));
            sql.push_str(&format!(" ORDER BY watch_id DESC LIMIT ?{}", args.len()));
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(row_to_watch(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn record(&self, activities: Vec<Activity>, now: Timestamp) -> Result<RecordOutcome> {
        if activities.is_empty() {
            return Ok(RecordOutcome::default());
        }
        self.call(|reply| Command::Record(activities, now, reply))
            .await
    }

    async fn apply(&self, change: Change) -> Result<Option<Applied>> {
        if change.fence.is_some() {
            return Err(StoreError::Unsupported(
                "this store cannot fence writes; clusters need --store dynamodb",
            ));
        }
        self.call(|reply| Command::Apply(Box::new(change), reply))
            .await
    }

    async fn list_objects(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        query: &ObjectsQuery,
    ) -> Result<Vec<ManifestEntry>> {
        let (tenant, id, query) = (tenant.clone(), id.clone(), query.clone());
        self.read(move |conn| {
            // Walks the primary key from `after`: a page reads only its rows.
            let mut stmt = conn.prepare_cached(
                "SELECT k.key, k.size, k.sequencer, k.event_time, k.generation, k.recorded_at, \
                 EXISTS (SELECT 1 FROM seen_keys r WHERE r.tenant = k.tenant AND r.watch_id = k.watch_id \
                 AND r.kind = 1 AND r.key = k.key) \
                 FROM seen_keys k WHERE k.tenant = ?1 AND k.watch_id = ?2 AND k.kind = 0 AND k.key > ?3 \
                 AND (?4 IS NULL OR k.generation = ?4) ORDER BY k.key LIMIT ?5",
            )?;
            let mut rows = stmt.query(params![
                tenant.as_str(),
                id.as_str(),
                query.after.as_deref().unwrap_or(""),
                query.generation,
                i64::try_from(query.limit).unwrap_or(i64::MAX),
            ])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(ManifestEntry {
                    key: row.get(0)?,
                    size: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    sequencer: row.get(2)?,
                    event_time: row.get::<_, Option<i64>>(3)?.map(Timestamp::from_millis),
                    generation: row.get(4)?,
                    recorded_at: row.get::<_, Option<i64>>(5)?.map(Timestamp::from_millis),
                    removed: row.get(6)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn counted_keys(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        keys: &[String],
    ) -> Result<Vec<bool>> {
        let (tenant, id, keys) = (tenant.clone(), id.clone(), keys.to_vec());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM seen_keys WHERE tenant = ?1 AND watch_id = ?2 AND kind = 0 AND key = ?3)",
            )?;
            keys.iter()
                .map(|key| {
                    Ok(stmt.query_row(params![tenant.as_str(), id.as_str(), key], |r| r.get(0))?)
                })
                .collect()
        })
        .await
    }

    async fn events_after(
        &self,
        tenant: &TenantId,
        id: &WatchId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<WatchEvent>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT tenant, watch_id, seq, time, generation, payload FROM events \
                 WHERE tenant = ?1 AND watch_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let mut rows = stmt.query(params![
                tenant.as_str(),
                id.as_str(),
                to_i64(after_seq),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(row_to_event(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn live_watches(&self, now: Timestamp) -> Result<Vec<Watch>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {WATCH_COLUMNS} FROM watches WHERE state = 'ACTIVE' \
                 OR (state = 'COMPLETED' AND late_window_ms > 0 AND completed_at + late_window_ms >= ?1)"
            ))?;
            let mut rows = stmt.query(params![now.as_millis()])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(row_to_watch(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn retire(&self, tenant: &TenantId, id: &WatchId, _now: Timestamp) -> Result<()> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.call(|reply| Command::Retire(tenant, id, reply)).await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Claimed> {
        self.call(|reply| Command::Claim(now, lease_until, limit, reply))
            .await
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        event: Option<EventKind>,
        now: Timestamp,
    ) -> Result<Option<Vec<WatchEvent>>> {
        let args = FinishArgs {
            delivery: delivery.clone(),
            lease,
            event,
            now,
        };
        self.call(|reply| Command::Finish(Box::new(args), reply))
            .await
    }

    async fn deliveries(&self, tenant: &TenantId, id: &WatchId) -> Result<Vec<Delivery>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT record FROM outbox WHERE tenant = ?1 AND watch_id = ?2 ORDER BY seq, target",
            )?;
            let records: Vec<String> = stmt
                .query_map(params![tenant.as_str(), id.as_str()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            records.iter().map(|raw| from_json(raw)).collect()
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        self.call(Command::Close).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{Bucket, Labels};

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

    fn classified(e: rusqlite::Error) -> StoreError {
        StoreError::from(e)
    }

    #[test]
    fn a_full_database_is_full() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        // SQLite reports a database at its page limit exactly as a full disk.
        conn.pragma_update(None, "max_page_count", 8).unwrap();
        let e = (0..100)
            .find_map(|_| {
                conn.execute("INSERT INTO t VALUES (zeroblob(4096))", [])
                    .err()
            })
            .expect("the database fills up");
        let e = classified(e);
        assert!(
            matches!(&e, StoreError::Full(m) if m == "SQLite: database or disk is full"),
            "{e:?}"
        );
        assert!(e.is_transient());
    }

    #[test]
    fn a_locked_database_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.db");
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let e = classified(other.execute_batch("BEGIN IMMEDIATE").unwrap_err());
        assert!(
            matches!(&e, StoreError::Busy(m) if m == "SQLite: database is locked"),
            "{e:?}"
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let e = classified(Connection::open(dir.path().join("missing/dir/x.db")).unwrap_err());
        assert!(matches!(&e, StoreError::Unavailable(_)), "{e:?}");
    }

    #[test]
    fn damage_and_bugs_are_not_conditions_to_wait_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let conn = Connection::open(&path).unwrap();
        let e = classified(
            conn.execute_batch("SELECT * FROM sqlite_master")
                .unwrap_err(),
        );
        assert!(matches!(&e, StoreError::Corrupt(_)), "{e:?}");

        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
            .unwrap();
        let e = classified(conn.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert!(matches!(&e, StoreError::Internal(_)), "{e:?}");
        assert!(!e.is_transient());
    }
}
