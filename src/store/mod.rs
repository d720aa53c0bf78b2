//! The store: the only module that touches SQLite.
//!
//! It executes what the core decides and decides nothing itself: for each delivery the
//! pure planner ([`crate::plan`]) says append, duplicate or re-fold from a place, and the
//! writer carries that out inside one `BEGIN IMMEDIATE` transaction together with the
//! raw delivery and its outcome. Several deliveries share one transaction (group
//! commit); none is acknowledged before the commit.
//!
//! The seam the engine sees is two narrow traits: [`WriteStore`] (apply a batch
//! atomically, accept a quarantined delivery, rebuild) and [`ReadStore`] (the change
//! feed since a seq, the rows of one pair, listings). [`Writer`] and [`Reader`] are the
//! SQLite implementations; another backend implements the same two traits.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | errors, opening a file, the two traits |
//! | `migrate.rs` | append-only migrations (`schema.sql`, `migrations/*.sql`) |
//! | `families.rs` | the families as stored objects: [`Kind`] to type, lookup columns |
//! | `write.rs` | the writer: deliveries, plans carried out, accept |
//! | `refold.rs` | re-folding an object from a place in its history (late snapshot, accept) |
//! | `history.rs` | the history rows (one per distinct snapshot; the quarantine) |
//! | `feed.rs` | the access-change feed: pairs re-evaluated in the writer's transaction |
//! | `rebuild.rs` | every projection recomputed from `deliveries` + `overrides` |
//! | `read.rs` | the reader: change feed for the index, one pair's rows |
//! | `records.rs` | listings and views (`deliveries`, `rejected`, `grants`, ...) |

mod families;
mod feed;
mod history;
mod migrate;
mod read;
mod rebuild;
mod records;
mod refold;
mod write;

pub use read::Reader;
pub use records::{
    Balance, CustomerView, DeliveryRecord, GrantRecord, ObjectRow, QuarantineRecord, RebuildStats,
    StoreStats,
};
pub use write::{Applied, Writer};

use crate::change::Change;
use crate::delivery::{Delivery, Outcome};
use crate::event::Kind;
use crate::wire::Timestamp;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// Errors of the store. [`StoreError::is_retryable`] tells the HTTP shell whether the
/// same request may succeed later (503, so that Dodo retries) or not (500).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed (busy, full disk, read-only file, corruption, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// SQLite failed in a named operation.
    #[error("sqlite, {context}: {source}")]
    Query {
        /// What the store was doing.
        context: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database was written by a newer version of entitlement-sync.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade entsync")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
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
    /// No such delivery.
    #[error("no delivery with id {0:?}")]
    UnknownDelivery(String),
    /// `accept` of a delivery that is not in the quarantine.
    #[error("delivery {0:?} is not in the quarantine")]
    NotQuarantined(String),
}

impl StoreError {
    /// Could the same operation succeed later (busy, locked, I/O, full disk)?
    pub fn is_retryable(&self) -> bool {
        use rusqlite::ErrorCode::*;
        let sqlite = match self {
            StoreError::Sqlite(e) | StoreError::Query { source: e, .. } => e,
            StoreError::Commit { retryable, .. } => return *retryable,
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

/// Names the operation a SQLite error happened in.
trait Context<T> {
    fn context(self, context: &'static str) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn context(self, context: &'static str) -> Result<T> {
        self.map_err(|source| StoreError::Query { context, source })
    }
}

/// The write side of a store: what the engine's writer thread calls.
pub trait WriteStore: Send {
    /// Applies a batch of deliveries atomically (group commit). One result per delivery,
    /// in order; all are durable when this returns `Ok`. A delivery that fails alone is
    /// reported in its slot and stores nothing.
    ///
    /// # Errors
    ///
    /// A failure to begin or commit: then nothing was stored.
    fn apply_batch(&mut self, deliveries: &[Delivery]) -> Result<Vec<Result<Applied>>>;

    /// The operator override: applies the quarantined snapshot(s) carried by
    /// `delivery_id`, recorded per (delivery id, body hash). Returns the object.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownDelivery`], [`StoreError::NotQuarantined`], or the backend's.
    fn accept(&mut self, delivery_id: &str, now: Timestamp) -> Result<(Kind, String)>;

    /// Recomputes every projection from the stored deliveries and overrides alone, and
    /// records the access changes that makes (cause `rebuild`, at `now`).
    ///
    /// # Errors
    ///
    /// The backend's; a failed rebuild changes nothing.
    fn rebuild(&mut self, now: Timestamp) -> Result<RebuildStats>;

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
    migrate::check_version(&conn)?;
    configure(&conn)?;
    migrate::migrate(&conn)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL: readers never wait behind the writer. FULL: a commit is on disk before we
    // acknowledge. Never ANALYZE/optimize: STAT4 makes every point lookup re-plan.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Rebuild's sorts spill to a temporary store: keep it in memory. A larger page cache
    // keeps the indexes' upper levels resident.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    Ok(())
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
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate::check_version(&conn)?;
    Ok(conn)
}
