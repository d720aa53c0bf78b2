//! The store: the only module that touches SQLite or PostgreSQL.
//!
//! It executes what the core decides and decides nothing itself: for each delivery the
//! pure planner ([`crate::plan`]) says append, duplicate or re-fold from a place, and the
//! writer carries that out inside one `BEGIN IMMEDIATE` transaction together with the
//! raw delivery and its outcome. Several deliveries share one transaction (group
//! commit); none is acknowledged before the commit.
//!
//! The seam the engine sees is two narrow traits: [`WriteStore`] (apply a batch
//! atomically, accept a quarantined delivery, rebuild) and [`ReadStore`] (the change
//! feed since a seq, the rows of one pair, listings). [`Writer`] and [`Reader`]
//! implement them once, over a connection of either backend: the store's logic runs
//! its SQL through the narrow `sql::Db` seam, which `sqlite.rs` and `postgres.rs`
//! implement.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | errors, where a store lives ([`Location`]), the two traits |
//! | `sql.rs` | the connection seam: statements, arguments, rows, transactions |
//! | `sqlite.rs` | SQLite: opening a file, pragmas, migrations (`schema.sql`, `migrations/*.sql`) |
//! | `postgres.rs` | PostgreSQL: connecting, the schema, migrations (`postgres/*.sql`), notifications |
//! | `families.rs` | the families as stored objects: [`Kind`] to type, lookup columns |
//! | `write.rs` | the writer: transactions, batches, accept, the object's head row |
//! | `apply.rs` | one delivery in the writer's transaction: plan carried out, changes recorded |
//! | `refold.rs` | re-folding an object from a place in its history (late snapshot, accept) |
//! | `history.rs` | the history rows (one per distinct snapshot; the quarantine) |
//! | `feed.rs` | the access-change feed: pairs re-evaluated in the writer's transaction |
//! | `rebuild.rs` | every projection recomputed from `deliveries` + `overrides` |
//! | `read.rs` | the reader: change feed for the index, one pair's rows |
//! | `records.rs` | listings and views (`deliveries`, `rejected`, `grants`, ...) |

mod apply;
mod families;
mod feed;
mod history;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod read;
mod rebuild;
mod records;
mod refold;
pub(crate) mod sql;
mod sqlite;
mod write;

pub use read::Reader;
pub use records::{
    Balance, CustomerView, DeliveryRecord, GrantRecord, ObjectRow, QuarantineRecord, RebuildStats,
    StoreStats,
};
pub use sqlite::VERSION;
/// The PostgreSQL schema version this build writes (its own numbering, `postgres/`).
#[cfg(feature = "postgres")]
pub const POSTGRES_VERSION: i64 = postgres::VERSION;
pub use write::{Applied, Writer};

use crate::change::Change;
use crate::delivery::{Outcome, Prepared};
use crate::event::Kind;
use crate::wire::Timestamp;
use std::path::{Path, PathBuf};

/// Errors of the store. [`StoreError::is_retryable`] tells the HTTP shell whether the
/// same request may succeed later (503, so that Dodo retries) or not (500).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed (busy, full disk, read-only file, corruption, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (connection lost, server shutting down, ...).
    #[cfg(feature = "postgres")]
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The store failed in a named operation.
    #[error("{context}: {source}")]
    Query {
        /// What the store was doing.
        context: &'static str,
        /// What the database said.
        source: Box<StoreError>,
    },
    /// A `postgres://` URL was given to a build without the `postgres` feature, or the
    /// URL or schema name is not valid.
    #[error("{0}")]
    Config(String),
    /// The database was written by a newer version of entitlement-sync.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade entsync")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file, or the PostgreSQL schema's newest migration.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A stored row does not decode (a projection written by another version?).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A group commit failed; every delivery in it was rolled back.
    #[error("commit failed: {message}")]
    Commit {
        /// What SQLite said.
        message: String,
        /// Whether retrying may help.
        retryable: bool,
    },
    /// The store's log could not be synced: what was committed since its last sync may
    /// not survive a power cut, so it was not acknowledged. A writer whose sync failed
    /// refuses every later delivery until the process is restarted (the kernel may have
    /// dropped the unsynced pages, so no later sync can vouch for them).
    #[error("the log could not be synced: {0}")]
    Sync(String),
    /// No such delivery.
    #[error("no delivery with id {0:?}")]
    UnknownDelivery(String),
    /// `accept` of a delivery that is not in the quarantine.
    #[error("delivery {0:?} is not in the quarantine")]
    NotQuarantined(String),
}

impl StoreError {
    /// Could the same operation succeed later (busy, locked, I/O, full disk, a lost
    /// connection to PostgreSQL)?
    pub fn is_retryable(&self) -> bool {
        use rusqlite::ErrorCode::*;
        let sqlite = match self {
            StoreError::Sqlite(e) => e,
            StoreError::Query { source, .. } => return source.is_retryable(),
            #[cfg(feature = "postgres")]
            StoreError::Postgres(e) => return postgres::is_retryable(e),
            StoreError::Commit { retryable, .. } => return *retryable,
            // Dodo retries; a restarted process takes the delivery again.
            StoreError::Sync(_) => return true,
            // A newer build migrated the store while this one runs (a rolling upgrade):
            // the retry reaches an upgraded instance.
            StoreError::SchemaTooNew { .. } => return true,
            _ => return false,
        };
        match sqlite {
            rusqlite::Error::SqliteFailure(e, _) => matches!(
                e.code,
                DatabaseBusy
                    | DatabaseLocked
                    | SystemIoFailure
                    | DiskFull
                    | OutOfMemory
                    | CannotOpen
                    | ReadOnly
            ),
            _ => true,
        }
    }
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Names the operation a database error happened in.
trait Context<T> {
    fn context(self, context: &'static str) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, context: &'static str) -> Result<T> {
        self.map_err(|source| match source {
            // A row that does not decode says what it is; a database error gets the
            // operation it failed in.
            StoreError::Corrupt(_) => source,
            source => StoreError::Query {
                context,
                source: Box::new(source),
            },
        })
    }
}

/// Where a store lives: a SQLite file, or a schema of a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL) and the schema that
    /// holds every table (created if missing).
    Postgres {
        /// The connection URL.
        url: String,
        /// The schema (`entsync` by default).
        schema: String,
    },
}

/// The PostgreSQL schema a store uses unless told otherwise.
pub const DEFAULT_PG_SCHEMA: &str = "entsync";

/// The bytes of delivery bodies whose parsed snapshots a rebuild holds at once, by
/// default (`entsync rebuild --memory`). Parsed and grouped, a body takes about 2.8
/// times its size (1 M deliveries, 872 MB of bodies: a 2.4 GB peak); a store whose
/// bodies fit is read and parsed once, a larger one once more, range of objects by
/// range, with a peak of about 2.8 times the budget plus ~250 bytes per object.
pub const REBUILD_MEMORY: usize = 1 << 30;

impl Location {
    /// A file path, or a `postgres://` / `postgresql://` URL (then with `schema`, or
    /// [`DEFAULT_PG_SCHEMA`]).
    pub fn parse(db: &str, schema: Option<&str>) -> Location {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            Location::Postgres {
                url: db.to_string(),
                schema: schema.unwrap_or(DEFAULT_PG_SCHEMA).to_string(),
            }
        } else {
            Location::Sqlite(PathBuf::from(db))
        }
    }

    /// [`Location::parse`] of a path (a URL passed as a path works too).
    pub fn from_path(path: &Path) -> Location {
        match path.to_str() {
            Some(s) => Location::parse(s, None),
            None => Location::Sqlite(path.to_path_buf()),
        }
    }

    /// What to show of it: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres { url, schema } => {
                format!("{} (schema {schema})", redact_password(url))
            }
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
/// Whether a store can hold `key` (an id of a delivery, customer, object ...): not when
/// it holds U+0000, which PostgreSQL's text cannot keep. So that both stores agree,
/// neither takes such a key, and nothing is found by one.
pub(crate) fn storable_key(key: &str) -> bool {
    !key.contains('\0')
}

fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// What makes a deferring writer's commits durable ([`WriteStore::defer_sync`]); it
/// may be called from any thread.
pub trait SyncLog: Send {
    /// Makes every commit the writer returned from before this call durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sync`]: those commits may not survive a power cut.
    fn sync(&mut self) -> Result<()>;
}

/// The write side of a store: what the engine's writer thread calls.
pub trait WriteStore: Send {
    /// Lets [`WriteStore::apply_batch`] return as soon as its commit is written, before
    /// it is durable, and returns what makes it durable. Whoever takes it must call
    /// [`SyncLog::sync`] after a batch and before telling anyone that the batch is
    /// stored (a 2xx, a reply, a wake-up), and must not give this store another batch
    /// after a failed sync. Its use: the next batch is built and written while the
    /// previous one's sync runs. Every other write (accept, rebuild, advance, the
    /// forwarder's cursor) stays durable when it returns, and so does every commit
    /// before it in the log. Readers may see a deferred commit before it is durable;
    /// the access-change feed's reader syncs the log before it hands out a change, so
    /// that no change is seen that a power cut could take back (and its seq reuse).
    ///
    /// `None`, the default and PostgreSQL's: every commit is durable when it returns.
    fn defer_sync(&mut self) -> Option<Box<dyn SyncLog>> {
        None
    }

    /// Applies a batch of deliveries atomically (group commit). One result per delivery,
    /// in order; all are durable when this returns `Ok` (or, once
    /// [`WriteStore::defer_sync`] was taken, after the next sync). A delivery that fails alone is
    /// reported in its slot and stores nothing. The deliveries come hashed and parsed
    /// ([`Prepared`]): that work is done by the callers, off the writer thread.
    ///
    /// # Errors
    ///
    /// A failure to begin or commit: then nothing was stored.
    fn apply_batch(&mut self, deliveries: Vec<Prepared>) -> Result<Vec<Result<Applied>>>;

    /// The operator override: applies the quarantined snapshot(s) carried by
    /// `delivery_id`, recorded per (delivery id, body hash), each object re-folded with
    /// its own. Returns the object of the first in version order.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownDelivery`], [`StoreError::NotQuarantined`], or the backend's.
    fn accept(&mut self, delivery_id: &str, now: Timestamp) -> Result<(Kind, String)>;

    /// Recomputes every projection from the stored deliveries and overrides alone, and
    /// records the access changes that makes (cause `rebuild`, at `now`), holding at
    /// most [`REBUILD_MEMORY`] bytes of parsed deliveries at once.
    ///
    /// # Errors
    ///
    /// The backend's; a failed rebuild changes nothing.
    fn rebuild(&mut self, now: Timestamp) -> Result<RebuildStats> {
        self.rebuild_within(now, REBUILD_MEMORY)
    }

    /// [`WriteStore::rebuild`], holding the parsed snapshots of at most about `memory`
    /// bytes of delivery bodies at once: past that, the objects are folded range by
    /// range, each range's deliveries read and parsed a second time. The outcome is the
    /// same for every budget.
    ///
    /// # Errors
    ///
    /// The backend's; a failed rebuild changes nothing.
    fn rebuild_within(&mut self, now: Timestamp, memory: usize) -> Result<RebuildStats>;

    /// Records the access changes time alone made up to `now` (cause `time`), each at
    /// the instant it happened. Returns how many.
    ///
    /// # Errors
    ///
    /// The backend's; nothing is recorded then.
    fn advance(&mut self, now: Timestamp) -> Result<usize>;

    /// Moves the forwarder's cursor to `seq` (never back).
    ///
    /// # Errors
    ///
    /// The backend's.
    fn set_forward_cursor(&mut self, seq: i64) -> Result<()>;

    /// Saves (`Some`) or clears (`None`) the checkpoint `name` (reconcile's sweep
    /// position), durably.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn set_checkpoint(&mut self, name: &str, value: Option<&str>) -> Result<()>;
}

/// The read side of a store: change detection for the access index, listings.
pub trait ReadStore: Send {
    /// A cheap token that changes whenever anyone committed (SQLite's
    /// `PRAGMA data_version`).
    ///
    /// # Errors
    ///
    /// The backend's.
    fn data_version(&mut self) -> Result<i64>;

    /// Object rows of the kinds the access index holds, changed after `seq` (all of them
    /// for `seq = 0`), with the store's `(seq, epoch)` at the time of reading.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn changed_since(&mut self, seq: i64) -> Result<(Vec<ObjectRow>, i64, i64)>;

    /// [`ReadStore::changed_since`] in chunks of at most `chunk` rows, each handed to `f`
    /// as it is read (one read transaction): a full load never holds every row at once.
    /// Returns the store's `(seq, epoch)` at the time of reading.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn scan_changed(
        &mut self,
        seq: i64,
        chunk: usize,
        f: &mut dyn FnMut(Vec<ObjectRow>),
    ) -> Result<(i64, i64)>;

    /// The rows one access answer needs: the pair's grants, their subscriptions and
    /// payments, those payments' refunds and disputes.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn pair_rows(&mut self, customer: &str, entitlement: &str) -> Result<Vec<ObjectRow>>;

    /// Stored deliveries in arrival order (only one outcome; the newest `limit`).
    ///
    /// # Errors
    ///
    /// The backend's.
    fn deliveries(
        &mut self,
        outcome: Option<Outcome>,
        limit: Option<u64>,
    ) -> Result<Vec<DeliveryRecord>>;

    /// The quarantine.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn rejected(&mut self) -> Result<Vec<QuarantineRecord>>;

    /// Grants, all or one customer's.
    ///
    /// # Errors
    ///
    /// The backend's, or a row that does not decode.
    fn grants(&mut self, customer: Option<&str>) -> Result<Vec<GrantRecord>>;

    /// Everything known about one customer.
    ///
    /// # Errors
    ///
    /// The backend's, or a row that does not decode.
    fn customer(&mut self, customer: &str) -> Result<CustomerView>;

    /// The credit balance of (customer, credit entitlement).
    ///
    /// # Errors
    ///
    /// The backend's, or a row that does not decode.
    fn balance(&mut self, customer: &str, credit_entitlement: &str) -> Result<Option<Balance>>;

    /// Counters for monitoring.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn stats(&mut self) -> Result<StoreStats>;

    /// How many snapshots the quarantine holds (cheap: for every `/metrics` scrape).
    ///
    /// # Errors
    ///
    /// The backend's.
    fn quarantine_size(&mut self) -> Result<u64>;

    /// Access changes after seq `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The backend's, or a row that does not decode.
    fn changes(&mut self, after: i64, limit: usize) -> Result<Vec<Change>>;

    /// The newest seq in the access-change feed (0 when it is empty).
    ///
    /// # Errors
    ///
    /// The backend's.
    fn last_change_seq(&mut self) -> Result<i64>;

    /// The forwarder's cursor: the last seq `serve --forward-url` delivered.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn forward_cursor(&mut self) -> Result<i64>;

    /// The checkpoint saved under `name`, if any.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn checkpoint(&mut self, name: &str) -> Result<Option<String>>;

    /// The earliest instant at which time alone may change some answer.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn next_due(&mut self) -> Result<Option<Timestamp>>;

    /// One object's current state row (`entsync reconcile` compares what the API says
    /// with it), or `None` when the store has never seen the object.
    ///
    /// # Errors
    ///
    /// The backend's.
    fn object(&mut self, kind: Kind, id: &str) -> Result<Option<ObjectRow>>;
}

/// Opens a connection to the store at `location`. The writer's (`writer`) creates and
/// migrates the store; a reader's expects it to exist.
fn connect(location: &Location, writer: bool) -> Result<Box<dyn sql::Db>> {
    match location {
        Location::Sqlite(path) => {
            let (conn, checkpointer) = if writer {
                let mut conn = sqlite::open(path)?;
                let thread = sqlite::checkpoint_aside(&mut conn, path)?;
                (conn, Some(thread))
            } else {
                (sqlite::open_reader(path)?, None)
            };
            Ok(Box::new(sqlite::Sqlite { conn, checkpointer }))
        }
        #[cfg(feature = "postgres")]
        Location::Postgres { url, schema } => {
            Ok(Box::new(postgres::Postgres::connect(url, schema, writer)?))
        }
        #[cfg(not(feature = "postgres"))]
        Location::Postgres { .. } => Err(StoreError::Config(
            "this build has no PostgreSQL support (cargo feature `postgres`)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_a_path_or_a_postgres_url() {
        assert_eq!(
            Location::parse("data/entsync.db", Some("x")),
            Location::Sqlite("data/entsync.db".into())
        );
        assert_eq!(
            Location::parse("postgresql://u@h/db", None),
            Location::Postgres {
                url: "postgresql://u@h/db".into(),
                schema: "entsync".into()
            }
        );
        let pg = Location::parse(
            "postgres://app:s3cret@db.internal:5432/app?sslmode=require",
            Some("tenant_a"),
        );
        assert_eq!(
            pg.display(),
            "postgres://app:***@db.internal:5432/app?sslmode=require (schema tenant_a)"
        );
        assert!(!format!("{pg:?}").contains("s3cret"));
    }
}
