//! Group commit: one writer task owns the SQLite connection that writes. It
//! takes whatever commands have queued up (at most [`MAX_GROUP`]) and runs
//! them as one transaction on the blocking pool, each command inside its
//! own savepoint so one failing command never undoes another; replies go
//! out once the transaction committed (or with the commit's error).
//!
//! If SQLite rolls the whole transaction back (it may on a full disk or an I/O
//! error), the rest of the group is refused with that error, not run outside
//! a transaction. What each command writes is [`super::commands`]; this
//! module never touches a table itself.

use rusqlite::{Connection, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::commands::{self, FinishArgs};
use crate::{
    clock::Timestamp,
    store::{
        Activity, Applied, Change, Claimed, Created, NewWatch, RecordOutcome, Result, StoreError,
    },
    watch::{TenantId, WatchEvent, WatchId},
};

/// Commands one transaction may carry at most.
const MAX_GROUP: usize = 512;
/// Commands waiting for the writer at most; a caller waits for room beyond.
const QUEUE: usize = 4096;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

pub(super) enum Command {
    Create(Box<NewWatch>, Reply<Created>),
    Record(Vec<Activity>, Timestamp, Reply<RecordOutcome>),
    Apply(Box<Change>, Reply<Option<Applied>>),
    Retire(TenantId, WatchId, Reply<()>),
    Claim(Timestamp, Timestamp, usize, Reply<Claimed>),
    Finish(Box<FinishArgs>, Reply<Option<Vec<WatchEvent>>>),
    Close(Reply<()>),
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

/// Starts the writer task on `conn` (needs a tokio runtime); the store is
/// closed when the sender is dropped or a [`Command::Close`] ran.
pub(super) fn spawn(conn: Connection) -> mpsc::Sender<Command> {
    let (writer, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run_writer(conn, rx));
    writer
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
                        guarded(&mut tx, &mut aborted, |tx| commands::create(tx, *new)),
                    )),
                    Command::Record(activities, now, reply) => pending.push(Pending::Record(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| {
                            commands::record(tx, &activities, now)
                        }),
                    )),
                    Command::Apply(args, reply) => pending.push(Pending::Apply(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| commands::apply(tx, *args)),
                    )),
                    Command::Retire(tenant, id, reply) => pending.push(Pending::Retire(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| {
                            commands::retire(tx, &tenant, &id)
                        }),
                    )),
                    Command::Claim(now, lease_until, limit, reply) => pending.push(Pending::Claim(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| {
                            commands::claim(tx, now, lease_until, limit)
                        }),
                    )),
                    Command::Finish(args, reply) => pending.push(Pending::Finish(
                        reply,
                        guarded(&mut tx, &mut aborted, |tx| commands::finish(tx, *args)),
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
