//! The SQLite backend of [`Db`]: one file, WAL, `synchronous=FULL` (or `NORMAL` with
//! the log synced by [`Log`] before anyone hears of a commit), append-only migrations
//! versioned by `PRAGMA user_version`.

use super::sql::{Arg, Backend, Db, Mode, Row, Val};
use super::{Result, StoreError};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// One SQLite connection.
pub(crate) struct Sqlite {
    pub(crate) conn: Connection,
    /// The writer's checkpoint thread (see [`checkpoint_aside`]); `None` for readers.
    pub(crate) checkpointer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sqlite {
    /// The writer's close: the checkpoint thread is stopped (its checkpoint in flight
    /// finishes first), then the whole log is copied into the database file and the log
    /// emptied, so that what the store wrote (a rebuild's gigabytes, say) neither stays
    /// on disk as a log nor waits for the next process to copy it. A failure leaves the
    /// log as it is, which the next open copies as usual: nothing is lost either way.
    fn drop(&mut self) {
        let Some(thread) = self.checkpointer.take() else {
            return;
        };
        // The hook owns the thread's wake-up channel: without it the thread ends.
        self.conn
            .wal_hook(None::<fn(&mut rusqlite::hooks::Wal, i32) -> rusqlite::Result<()>>)
            .ok();
        let _ = thread.join();
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Null => ValueRef::Null,
            Arg::Int(v) => ValueRef::Integer(v),
            Arg::Bool(v) => ValueRef::Integer(i64::from(v)),
            Arg::Text(s) => ValueRef::Text(s.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn val(v: ValueRef<'_>, i: usize) -> Result<Val> {
    Ok(match v {
        ValueRef::Null => Val::Null,
        ValueRef::Integer(v) => Val::Int(v),
        ValueRef::Real(_) => return Err(StoreError::Corrupt(format!("column {i}: a float"))),
        ValueRef::Text(t) => Val::Text(
            std::str::from_utf8(t)
                .map_err(|_| StoreError::Corrupt(format!("column {i}: text is not UTF-8")))?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Val::Blob(b.to_vec()),
    })
}

impl Db for Sqlite {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        let n = self
            .conn
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?;
        Ok(n as u64)
    }

    fn for_each(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: &mut dyn FnMut(Row) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(val(r.get_ref(i)?, i)?);
            }
            f(Row(values))?;
        }
        Ok(())
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.conn.execute_batch(sql)?)
    }

    fn begin(&self, mode: Mode) -> Result<()> {
        Ok(self.conn.execute_batch(match mode {
            Mode::Write => "BEGIN IMMEDIATE",
            Mode::Read => "BEGIN",
        })?)
    }

    fn commit(&self) -> Result<()> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    fn rollback(&self) -> Result<()> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    fn as_sqlite(&self) -> Option<&Connection> {
        Some(&self.conn)
    }
}

/// A SQLite store's log file (`<file>-wal`), opened on its own to sync it. A writer
/// that defers its syncs ([`super::WriteStore::defer_sync`]) commits at
/// `synchronous=NORMAL` and has the log synced through this before anyone hears of the
/// commit; a reader of the access-change feed syncs it before it hands out changes it
/// has not seen synced (see `Reader`'s `changes`). One `fdatasync` of the log makes
/// every commit appended to it before the call durable, whichever connection or process
/// appended it. SQLite takes no locks on the log file itself, so opening and closing it
/// here releases none of the store's.
pub(crate) struct Log {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    /// Set by a failed sync, shared by the handles of one writer ([`Log::of`] and its
    /// [`Log::again`]s): after a failed `fdatasync` the kernel may have dropped the
    /// unsynced pages, so a later sync that succeeds vouches for nothing before it.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Syncs of the file through this handle that succeeded.
    pub(crate) syncs: u64,
}

impl Log {
    /// The log of the file `conn` has open; `None` for an in-memory database.
    pub(crate) fn of(conn: &Connection) -> Option<Log> {
        let db = conn.path().filter(|p| !p.is_empty())?;
        Some(Log {
            path: format!("{db}-wal").into(),
            file: None,
            failed: std::sync::Arc::default(),
            syncs: 0,
        })
    }

    /// Another handle on the same log, sharing its failure.
    pub(crate) fn again(&self) -> Log {
        Log {
            path: self.path.clone(),
            file: None,
            failed: std::sync::Arc::clone(&self.failed),
            syncs: 0,
        }
    }

    /// Fails the log as a failed `fdatasync` does.
    #[cfg(test)]
    pub(crate) fn poison(&self) {
        self.failed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// [`StoreError::Sync`] once a sync through this handle or one of its
    /// [`Log::again`]s failed: nothing written since can be made durable.
    pub(crate) fn check(&self) -> Result<()> {
        if self.failed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Sync(format!(
                "an earlier sync of {} failed; restart to go on",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Syncs the log: everything any connection appended to it before this call is on
    /// disk when it returns `Ok`. A store with no log file has nothing to sync.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sync`], now and for good.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.check()?;
        let result = self.sync_file();
        if result.is_err() {
            self.failed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        result
    }

    fn sync_file(&mut self) -> Result<()> {
        let failed = |e: std::io::Error| StoreError::Sync(format!("{}: {e}", self.path.display()));
        if self.file.is_none() {
            match std::fs::File::open(&self.path) {
                Ok(file) => self.file = Some(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(failed(e)),
            }
        }
        let file = self.file.as_ref().expect("opened above");
        file.sync_data().map_err(failed)?;
        self.syncs += 1;
        Ok(())
    }
}

impl super::SyncLog for Log {
    fn sync(&mut self) -> Result<()> {
        Log::sync(self)
    }
}

/// Opens (creating if needed) a database file and applies the migrations.
///
/// # Errors
///
/// [`StoreError::SchemaTooNew`] for a file written by a newer version (left untouched);
/// [`StoreError::Sqlite`] if the file cannot be opened or written.
pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Refuse a newer file before touching it (even switching it to WAL is a write).
    check_version(&conn)?;
    configure(&conn)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Prepared statements kept per connection. rusqlite's default of 16 is fewer than the
/// writer's distinct statements per delivery, so its LRU cache evicted each one before
/// its next use and every execution re-parsed and re-planned its SQL (16 % of the
/// writer's time when it commits one delivery at a time).
const STATEMENT_CACHE: usize = 256;

/// Plans each cached statement once, whatever is bound to it.
///
/// Without the query planner stability guarantee SQLite may plan with the values bound:
/// a `LIMIT ?`, or any `column = ?` that an index leaves to a filter, marks the statement
/// to be re-planned when that value changes. rusqlite clears a statement's bindings when
/// it goes back to the cache, and SQLite expires every statement so marked when its
/// bindings are cleared, so each such statement was parsed and planned again on every
/// use: under `serve`'s webhook load three history reads of the out-of-order path did
/// so about 1,100 times a second each, 7 % of the writer's time (docs/benchmarks.md,
/// twelfth sitting). Our statements name their indexes by their conditions and never
/// rely on a bound value to pick one, so a plan made once is the plan they want.
fn plan_once(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    plan_once(conn)?;
    // WAL: readers never wait behind the writer. FULL: a commit is on disk before we
    // acknowledge (the engine's writer switches to NORMAL and syncs the log itself:
    // `Log`). Never ANALYZE/optimize: STAT4 makes every point lookup re-plan.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Rebuild's sorts spill to a temporary store: keep it in memory. A larger page cache
    // keeps the indexes' upper levels resident.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    // When the log starts over, its file is cut back to this size: a log that once
    // grew large (a rebuild writes gigabytes) does not keep its disk space for good.
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    Ok(())
}

/// Bytes of log file kept when the log starts over (64 MiB: the inline checkpoint's
/// bound, [`CHECKPOINT_INLINE_FRAMES`] pages).
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// WAL frames after which a commit first asks the checkpointer thread for a checkpoint
/// (SQLite's own automatic threshold).
const CHECKPOINT_FRAMES: i32 = 1000;

/// WAL frames the writer appends between two requests for a background checkpoint while
/// the log is short. A page that every transaction touches (a table's or an index's
/// upper levels) is copied once per checkpoint, not once per commit: asking after every
/// commit, as SQLite does, the bench's group commit wrote 49 KB per delivery (log and
/// copies), against 36–38 KB with this step and the catch-up below (docs/benchmarks.md,
/// fourth sitting). Past [`CHECKPOINT_CATCH_UP_FRAMES`] the writer asks after every
/// commit again, so that the log can start over (below).
const CHECKPOINT_STEP_FRAMES: i32 = 4 * CHECKPOINT_FRAMES;

/// WAL frames past which the checkpointer is asked after every commit, to catch up with
/// the writer, and past which the writer, once the checkpointer is within
/// [`CHECKPOINT_FINISH_FRAMES`] of the log's end, finishes the checkpoint itself (a
/// short copy) so that its next transaction starts the log over.
const CHECKPOINT_CATCH_UP_FRAMES: i32 = 8 * CHECKPOINT_FRAMES;

/// How far behind the log's end the checkpointer may be for the writer to finish the
/// checkpoint inline: at most this many pages copied while the writer waits.
const CHECKPOINT_FINISH_FRAMES: i32 = 256;

/// WAL frames (64 MB of log at 4 KiB pages) after which the writer checkpoints itself,
/// inline, whatever the checkpointer has done. The background checkpoint cannot finish
/// while the writer keeps appending, and the log only starts over once a checkpoint
/// has copied all of it, so this bounds the log should the checkpointer fall behind.
const CHECKPOINT_INLINE_FRAMES: i32 = 16 * CHECKPOINT_FRAMES;

/// Moves the writer's WAL checkpoints to a thread of their own, on a connection of its
/// own, so that copying the log into the database file (and that file's fsync) overlaps
/// the writer's next transactions instead of stalling them. Durability is unchanged:
/// every commit's log is synced (`synchronous=FULL`, or [`Log`]) before anyone hears of
/// it, and a checkpoint syncs the log before it copies it; the
/// checkpoint is `PASSIVE` (it never blocks the writer or a reader). The thread ends
/// when the writer's connection is closed.
///
/// The writer's WAL hook decides when (see the `CHECKPOINT_*` constants): a background
/// checkpoint every [`CHECKPOINT_STEP_FRAMES`] frames from [`CHECKPOINT_FRAMES`] on,
/// after every commit from [`CHECKPOINT_CATCH_UP_FRAMES`] on, and an inline one when
/// the checkpointer is nearly done or at [`CHECKPOINT_INLINE_FRAMES`].
///
/// # Errors
///
/// SQLite errors while opening the checkpointer's connection.
pub fn checkpoint_aside(
    writer: &mut Connection,
    path: &Path,
) -> Result<std::thread::JoinHandle<()>> {
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;

    let conn = open_reader(path)?;
    let (wake, wakes) = std::sync::mpsc::sync_channel::<()>(1);
    // The frames of the log the checkpointer's last checkpoint copied (0: none since
    // the log started over). It may lag or, right after the log starts over, still hold
    // the old log's figure; the worst a wrong figure does is an inline checkpoint that
    // copies more than CHECKPOINT_FINISH_FRAMES, which the inline bound does anyway.
    let copied = Arc::new(AtomicI32::new(0));
    let published = Arc::clone(&copied);
    let thread = std::thread::Builder::new()
        .name("entsync-checkpoint".into())
        .spawn(move || {
            // A failed checkpoint is retried at the next wake; the log only grows
            // meanwhile, and the writer's inline checkpoint bounds it.
            while wakes.recv().is_ok() {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    row.get::<_, i32>(2)
                });
                if let Ok(frames) = done {
                    published.store(frames, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| StoreError::Config(format!("cannot start the checkpoint thread: {e}")))?;
    let mut next = CHECKPOINT_FRAMES;
    let mut last = 0;
    writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames: i32| {
        if frames < last {
            // The log started over.
            copied.store(0, Ordering::Relaxed);
            next = CHECKPOINT_FRAMES;
        }
        last = frames;
        let behind = frames - copied.load(Ordering::Relaxed);
        if frames >= CHECKPOINT_INLINE_FRAMES
            || (frames >= CHECKPOINT_CATCH_UP_FRAMES && behind <= CHECKPOINT_FINISH_FRAMES)
        {
            let _ = wal.checkpoint();
        } else if frames >= next {
            // Full: a checkpoint is already asked for.
            let _ = wake.try_send(());
            next = if frames >= CHECKPOINT_CATCH_UP_FRAMES {
                frames
            } else {
                frames + CHECKPOINT_STEP_FRAMES
            };
        }
        Ok(())
    }))?;
    Ok(thread)
}

/// Opens a second connection to an existing, migrated file (for reads).
pub fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    plan_once(&conn)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    check_version(&conn)?;
    Ok(conn)
}

/// The migrations, in order. Never edit one that has shipped: append.
const MIGRATIONS: &[&str] = &[
    include_str!("../../schema.sql"),
    include_str!("../../migrations/0002_history.sql"),
    include_str!("../../migrations/0003_changes.sql"),
    include_str!("../../migrations/0004_partial_indexes.sql"),
    include_str!("../../migrations/0005_access_rules.sql"),
    include_str!("../../migrations/0006_dispute_refund_ranks.sql"),
    include_str!("../../migrations/0007_identity_rule.sql"),
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Refuses a file newer than this build, untouched.
pub fn check_version(conn: &Connection) -> Result<i64> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: VERSION,
        });
    }
    Ok(found)
}

/// Applies the missing migrations in one transaction.
pub fn migrate(conn: &Connection) -> Result<()> {
    let found = check_version(conn)?;
    if found == VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<()> {
        // Re-read under the write lock: another process may have migrated meanwhile.
        let found = check_version(conn)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            conn.execute_batch("COMMIT")?;
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A cached statement is planned once: neither a `LIMIT ?` nor a `column = ?` that
    /// the index leaves to a filter may make SQLite re-plan it when it comes back from
    /// the cache with other values (the reprepare loop of docs/benchmarks.md, twelfth
    /// sitting). Both the writer's and a reader's connections.
    #[test]
    fn cached_statements_are_not_re_planned_for_new_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let writer = open(&path).unwrap();
        let reader = open_reader(&path).unwrap();
        // The shapes of `history::since_of` and `history::load_steps_from`.
        let queries = [
            "SELECT version_key FROM history
              WHERE kind = ?1 AND object_id = ?2 AND starts_run = 1
              ORDER BY version_key DESC LIMIT 1",
            "SELECT version_key FROM history WHERE kind = ?1 AND object_id = ?2 AND version_key > ?3
              ORDER BY version_key LIMIT ?4",
        ];
        for conn in [&writer, &reader] {
            for sql in queries {
                let count = sql.matches('?').count();
                for round in 0..4_i64 {
                    let mut stmt = conn.prepare_cached(sql).unwrap();
                    for i in 1..=count {
                        let value: rusqlite::types::Value = if i == 4 {
                            (round + 1).into()
                        } else {
                            format!("v{round}").into()
                        };
                        stmt.raw_bind_parameter(i, value).unwrap();
                    }
                    let mut rows = stmt.raw_query();
                    while rows.next().unwrap().is_some() {}
                    drop(rows);
                    assert_eq!(
                        stmt.get_status(StatementStatus::RePrepare),
                        0,
                        "re-planned on round {round}: {sql}"
                    );
                }
            }
        }
    }
}
