//! The embedded store: one SQLite file in WAL mode, the service's default.
//! This module is the [`Store`] impl: it opens the file (`schema` upgrades
//! it), hands every write to the one writer task (`writer`: group commit;
//! the writes themselves are `commands`) and answers reads from a small
//! pool of read-only connections, decoding rows with `codec`. It never
//! writes outside the writer task.
//!
//! SQLite errors become [`StoreError`]s here, classified by their code (a
//! full disk is [`StoreError::Full`]); no `rusqlite` error leaves the store.

mod codec;
mod commands;
mod schema;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, params, types::Value};
use tokio::sync::{mpsc, oneshot};

use self::{
    codec::{WATCH_COLUMNS, from_json, load_watch, row_to_event, row_to_watch, to_i64},
    commands::FinishArgs,
    writer::{Command, Reply},
};
use super::{
    Activity, Applied, Change, Claimed, Created, Delivery, ListQuery, ManifestEntry, NewWatch,
    ObjectsQuery, RecordOutcome, Result, Store, StoreError,
};
use crate::{
    clock::Timestamp,
    watch::{EventKind, TenantId, Watch, WatchEvent, WatchId},
};

/// Read-only connections answering reads.
const READERS: usize = 4;

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
        schema::upgrade(&mut conn, &path)?;

        let conns = (0..READERS)
            .map(|_| {
                open(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            writer: writer::spawn(conn),
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
