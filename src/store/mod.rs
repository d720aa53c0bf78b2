//! The SQLite store: the only module that touches SQLite.
//!
//! One delivery = one write inside a `BEGIN IMMEDIATE` transaction: store the raw
//! delivery, re-fold the object it touches, write the object's state and quarantine rows,
//! record the outcome. Several deliveries may share one transaction (group commit), each
//! inside its own savepoint; none is acknowledged before the commit.
//!
//! The interface is deliberately narrow (load an object's snapshots, write its folded
//! state and the delivery's outcome, read answers) so that another backend is an
//! addition, not a rewrite.

mod migrate;
mod records;

pub use records::{
    Balance, CustomerView, DeliveryRecord, GrantRecord, ObjectRow, QuarantineRecord, RebuildStats,
    StoreStats,
};

use crate::delivery::{Delivery, Outcome};
use crate::event::{
    self, CreditBalanceLow, CreditEntry, Dispute, Event, Grant, LicenseKey, Payment, Refund,
    Subscription,
};
use crate::fold::{self, decode_key, Current, Entry, Folded, Machine, Snap, Verdict};
use crate::wire::{format_timestamp, parse_timestamp, Timestamp};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Errors of the store. [`StoreError::is_retryable`] tells the HTTP shell whether a 5xx
/// (so that Dodo retries) makes sense.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (busy, full disk, read-only file, corruption, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                DatabaseBusy
                    | DatabaseLocked
                    | SystemIoFailure
                    | DiskFull
                    | OutOfMemory
                    | CannotOpen
                    | ReadOnly
            ),
            StoreError::Sqlite(_) => true,
            StoreError::Commit { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
    // Savepoints (one per delivery in a group commit) write a statement journal: keep
    // it in memory. A larger page cache keeps the indexes' upper levels resident.
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

// ---------------------------------------------------------------------------------------
// Families as stored objects

/// A family the store folds: how to find its snapshots in a parsed event and which
/// lookup columns its object row gets.
trait Stored: Machine + Serialize + DeserializeOwned + PartialEq {
    const KIND: &'static str;
    fn from_event(event: Event) -> Option<Snap<Self>>;
    fn customer_id(&self) -> Option<&str>;
    fn ref_id(&self) -> Option<&str>;
}

macro_rules! stored {
    ($ty:ty, $kind:literal, $variant:ident, |$s:ident| customer: $cust:expr, ref: $refid:expr) => {
        impl Stored for $ty {
            const KIND: &'static str = $kind;
            fn from_event(event: Event) -> Option<Snap<Self>> {
                match event {
                    Event::$variant(snap) => Some(snap),
                    _ => None,
                }
            }
            fn customer_id(&self) -> Option<&str> {
                let $s = self;
                $cust
            }
            fn ref_id(&self) -> Option<&str> {
                let $s = self;
                $refid
            }
        }
    };
}

stored!(Grant, "grant", Grant, |g| customer: Some(&g.customer_id), ref: Some(&g.entitlement_id));
stored!(Subscription, "subscription", Subscription, |s| customer: s.customer_id(), ref: s.product_id.as_deref());
stored!(Payment, "payment", Payment, |p| customer: p.customer_id(), ref: p.subscription_id.as_deref());
stored!(Refund, "refund", Refund, |r| customer: r.customer.as_ref().map(|c| c.customer_id.as_str()), ref: Some(&r.payment_id));
stored!(Dispute, "dispute", Dispute, |d| customer: d.customer.as_ref().map(|c| c.customer_id.as_str()), ref: Some(&d.payment_id));
stored!(LicenseKey, "license_key", LicenseKey, |k| customer: Some(&k.customer_id), ref: k.product_id.as_deref());
stored!(CreditEntry, "credit_entry", CreditEntry, |e| customer: Some(&e.customer_id), ref: Some(&e.credit_entitlement_id));
stored!(CreditBalanceLow, "credit_balance_low", CreditBalanceLow, |b| customer: Some(&b.customer_id), ref: Some(&b.credit_entitlement_id));

/// Calls `$f::<T>(args)` with `T` the family stored under `kind`.
macro_rules! with_family {
    ($kind:expr, $f:ident($($arg:expr),*)) => {
        match $kind {
            "grant" => $f::<Grant>($($arg),*),
            "subscription" => $f::<Subscription>($($arg),*),
            "payment" => $f::<Payment>($($arg),*),
            "refund" => $f::<Refund>($($arg),*),
            "dispute" => $f::<Dispute>($($arg),*),
            "license_key" => $f::<LicenseKey>($($arg),*),
            "credit_entry" => $f::<CreditEntry>($($arg),*),
            "credit_balance_low" => $f::<CreditBalanceLow>($($arg),*),
            other => Err(StoreError::Corrupt(format!("unknown object kind {other:?}"))),
        }
    };
}

// ---------------------------------------------------------------------------------------
// Writing

/// The single writing connection.
pub struct Writer {
    conn: Connection,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// What applying one delivery produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The outcome.
    pub outcome: Outcome,
    /// The event type, when the body parsed.
    pub event_type: Option<String>,
    /// Parse error or rejection message.
    pub detail: Option<String>,
}

impl Writer {
    /// Opens the writer on `path`, creating and migrating the file if needed.
    ///
    /// # Errors
    ///
    /// See [`open`].
    pub fn open(path: &Path) -> Result<Writer> {
        Ok(Writer { conn: open(path)? })
    }

    /// Applies a batch of deliveries in ONE transaction (group commit): each in its own
    /// savepoint, so one failing delivery does not take the others with it. Returns one
    /// result per delivery, in order; all of them are durable when this returns `Ok`.
    ///
    /// # Errors
    ///
    /// The outer error is a failure to begin or commit (then nothing was stored).
    pub fn apply_batch(&mut self, deliveries: &[Delivery]) -> Result<Vec<Result<Applied>>> {
        // Optimistic: all in one transaction. If any delivery fails, roll the whole
        // batch back and apply each in a transaction of its own, so one bad delivery
        // cannot take the others with it (savepoints would cost a statement journal
        // on every delivery of every batch).
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seq = next_seq(&tx)?;
        let mut results = Vec::with_capacity(deliveries.len());
        let mut failed = false;
        for d in deliveries {
            match apply_one(&tx, d, seq) {
                Ok(applied) => results.push(applied),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            tx.commit()?;
            return Ok(results.into_iter().map(Ok).collect());
        }
        drop(tx); // rolls back
        let mut results = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            results.push(self.apply_alone(d));
        }
        Ok(results)
    }

    fn apply_alone(&mut self, d: &Delivery) -> Result<Applied> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seq = next_seq(&tx)?;
        let applied = apply_one(&tx, d, seq)?;
        tx.commit()?;
        Ok(applied)
    }

    /// The operator override: applies the quarantined snapshot of `delivery_id`,
    /// recorded in `overrides` (so a rebuild applies it too). Returns the object's kind
    /// and id.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownDelivery`], [`StoreError::NotQuarantined`], or SQLite.
    pub fn accept(&mut self, delivery_id: &str, now: Timestamp) -> Result<(String, String)> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE delivery_id = ?1)",
            [delivery_id],
            |r| r.get(0),
        )?;
        if !known {
            return Err(StoreError::UnknownDelivery(delivery_id.to_string()));
        }
        // The quarantine holds one representative delivery per rejected snapshot; any
        // delivery carrying that snapshot may be named.
        let object: Option<(String, String)> = tx
            .query_row(
                "SELECT d.object_kind, d.object_id FROM deliveries d
                   JOIN quarantine q ON q.object_kind = d.object_kind
                    AND q.object_id = d.object_id AND q.version_key = d.version_key
                  WHERE d.delivery_id = ?1 LIMIT 1",
                [delivery_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((kind, id)) = object else {
            return Err(StoreError::NotQuarantined(delivery_id.to_string()));
        };
        tx.execute(
            "INSERT OR IGNORE INTO overrides (delivery_id, accepted_at) VALUES (?1, ?2)",
            params![delivery_id, format_timestamp(&now)],
        )?;
        let seq = next_seq(&tx)?;
        with_family!(kind.as_str(), refold_object(&tx, &id, seq))?;
        tx.commit()?;
        Ok((kind, id))
    }

    /// Recomputes every projection from the stored deliveries and overrides alone.
    /// Deliveries stored as `malformed` that parse now are picked up (their outcome
    /// becomes what the fold now says of them).
    ///
    /// # Errors
    ///
    /// SQLite errors; the rebuild is one transaction, so a failure changes nothing.
    pub fn rebuild(&mut self) -> Result<RebuildStats> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Bulk load: drop the lookup indexes of `objects` (recreated from their stored
        // definitions afterwards; building an index by sorting beats growing it). The
        // unique key stays: the writes below upsert on it.
        let indexes: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT name, sql FROM sqlite_master
                  WHERE type = 'index' AND tbl_name = 'objects' AND sql IS NOT NULL
                    AND name <> 'objects_key'",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (name, _) in &indexes {
            tx.execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
        }
        tx.execute_batch(
            "DELETE FROM objects; DELETE FROM quarantine;
             UPDATE meta SET value = value + 1 WHERE key = 'epoch';",
        )?;
        let seq = next_seq(&tx)?;
        let forced: std::collections::HashSet<String> = {
            let mut stmt = tx.prepare("SELECT delivery_id FROM overrides")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut groups = Groups::default();
        let mut stats = RebuildStats::default();
        let mut reparsed: Vec<Reparsed> = Vec::new();
        {
            let mut stmt =
                tx.prepare("SELECT seq, delivery_id, body, outcome FROM deliveries ORDER BY seq")?;
            let mut rows = stmt.query([])?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
            loop {
                // Read a chunk, parse it on every core, fold it in arrival order.
                let mut chunk: Vec<(i64, String, Vec<u8>, String)> =
                    Vec::with_capacity(REBUILD_CHUNK);
                while chunk.len() < REBUILD_CHUNK {
                    let Some(row) = rows.next()? else { break };
                    chunk.push((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?));
                }
                if chunk.is_empty() {
                    break;
                }
                let parsed = parse_all(&chunk, threads);
                for ((rowid, delivery_id, _, was), parsed) in chunk.into_iter().zip(parsed) {
                    stats.deliveries += 1;
                    let was_malformed = was == Outcome::Malformed.as_str();
                    match parsed {
                        Err(e) => {
                            stats.malformed += 1;
                            if !was_malformed {
                                reparsed.push((rowid, None, None, e.to_string()));
                            }
                        }
                        Ok(env) => {
                            let object = env
                                .event
                                .object()
                                .map(|(k, i)| (k.to_string(), i.to_string()));
                            if was_malformed {
                                stats.reparsed += 1;
                            }
                            if let Some((kind, id)) = &object {
                                let key = groups.push(
                                    env.event,
                                    delivery_id.clone(),
                                    forced.contains(&delivery_id),
                                );
                                if was_malformed {
                                    reparsed.push((
                                        rowid,
                                        Some((kind.clone(), id.clone(), key)),
                                        Some(env.event_type),
                                        String::new(),
                                    ));
                                }
                            } else if was_malformed {
                                reparsed.push((rowid, None, Some(env.event_type), String::new()));
                            }
                        }
                    }
                }
            }
        }
        stats.objects = groups.write(&tx, seq)?;
        for (_, sql) in &indexes {
            tx.execute_batch(sql)?;
        }
        // Deliveries whose parse result changed: record what they are now.
        for (rowid, object, event_type, error) in reparsed {
            let (kind, id, key) = match object {
                Some((k, i, key)) => (Some(k), Some(i), Some(key)),
                None => (None, None, None),
            };
            let outcome = match (&kind, &event_type) {
                (Some(kind), _) => {
                    let key = key.clone().unwrap_or_default();
                    let id = id.clone().unwrap_or_default();
                    outcome_in_history(&tx, kind, &id, &key)?
                }
                (None, Some(_)) => Outcome::Unhandled,
                (None, None) => Outcome::Malformed,
            };
            tx.execute(
                "UPDATE deliveries SET event_type = ?2, object_kind = ?3, object_id = ?4,
                        version_key = ?5, outcome = ?6, detail = ?7 WHERE seq = ?1",
                params![
                    rowid,
                    event_type,
                    kind,
                    id,
                    key,
                    outcome.as_str(),
                    (!error.is_empty()).then_some(error)
                ],
            )?;
        }
        stats.quarantined = tx.query_row("SELECT COUNT(*) FROM quarantine", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
        tx.commit()?;
        Ok(stats)
    }

    /// Runs `f` on the writer's connection inside a transaction (tests and benchmarks
    /// that need to build large stores fast).
    #[doc(hidden)]
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Deliveries a rebuild reads (and parses in parallel) at a time.
const REBUILD_CHUNK: usize = 8192;

/// Parses a chunk of stored bodies on `threads` threads, keeping their order.
fn parse_all(
    chunk: &[(i64, String, Vec<u8>, String)],
    threads: usize,
) -> Vec<Result<event::Envelope, event::ParseError>> {
    if threads <= 1 || chunk.len() < 256 {
        return chunk
            .iter()
            .map(|(_, _, body, _)| event::parse(body))
            .collect();
    }
    let per = chunk.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = chunk
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(_, _, body, _)| event::parse(body))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    // A panic in the parser is a bug; report it as unparseable, not a crash.
                    vec![Err(event::ParseError::Json("parser panicked".into())); per]
                })
            })
            .collect()
    })
}

/// A delivery whose parse result changed in a rebuild: (row, object (kind, id, key),
/// event type, parse error).
type Reparsed = (
    i64,
    Option<(String, String, String)>,
    Option<String>,
    String,
);

/// After a rebuild: what a delivery's snapshot is in its object's history now.
fn outcome_in_history(tx: &Transaction<'_>, kind: &str, id: &str, key: &str) -> Result<Outcome> {
    let rejected: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM quarantine WHERE object_kind = ?1 AND object_id = ?2 AND version_key = ?3)",
        params![kind, id, key],
        |r| r.get(0),
    )?;
    if rejected {
        return Ok(Outcome::Rejected);
    }
    let state: Option<String> = tx
        .query_row(
            "SELECT state_key FROM objects WHERE kind = ?1 AND id = ?2",
            params![kind, id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(if state.as_deref() == Some(key) {
        Outcome::Applied
    } else {
        Outcome::Stale
    })
}

/// Rebuild's in-memory grouping of every object's snapshots.
#[derive(Default)]
struct Groups {
    grant: HashMap<String, Vec<Entry<Grant>>>,
    subscription: HashMap<String, Vec<Entry<Subscription>>>,
    payment: HashMap<String, Vec<Entry<Payment>>>,
    refund: HashMap<String, Vec<Entry<Refund>>>,
    dispute: HashMap<String, Vec<Entry<Dispute>>>,
    license_key: HashMap<String, Vec<Entry<LicenseKey>>>,
    credit_entry: HashMap<String, Vec<Entry<CreditEntry>>>,
    credit_balance_low: HashMap<String, Vec<Entry<CreditBalanceLow>>>,
}

impl Groups {
    /// Adds one snapshot; returns its encoded key.
    fn push(&mut self, event: Event, delivery_id: String, forced: bool) -> String {
        fn add<T: Machine>(
            map: &mut HashMap<String, Vec<Entry<T>>>,
            snap: Snap<T>,
            delivery_id: String,
            forced: bool,
        ) -> String {
            let key = snap.key.encode();
            map.entry(snap.body.object_id().to_string())
                .or_default()
                .push(Entry {
                    snap,
                    delivery_id,
                    forced,
                });
            key
        }
        match event {
            Event::Grant(s) => add(&mut self.grant, s, delivery_id, forced),
            Event::Subscription(s) => add(&mut self.subscription, s, delivery_id, forced),
            Event::Payment(s) => add(&mut self.payment, s, delivery_id, forced),
            Event::Refund(s) => add(&mut self.refund, s, delivery_id, forced),
            Event::Dispute(s) => add(&mut self.dispute, s, delivery_id, forced),
            Event::LicenseKey(s) => add(&mut self.license_key, s, delivery_id, forced),
            Event::CreditEntry(s) => add(&mut self.credit_entry, s, delivery_id, forced),
            Event::CreditBalanceLow(s) => add(&mut self.credit_balance_low, s, delivery_id, forced),
            Event::Unhandled => String::new(),
        }
    }

    fn write(self, tx: &Transaction<'_>, seq: i64) -> Result<u64> {
        fn write_all<T: Stored>(
            tx: &Transaction<'_>,
            map: HashMap<String, Vec<Entry<T>>>,
            seq: i64,
        ) -> Result<u64> {
            let n = map.len() as u64;
            for (id, entries) in map {
                let folded = fold::fold(entries);
                write_folded(tx, &id, &folded, seq, true)?;
            }
            Ok(n)
        }
        Ok(write_all(tx, self.grant, seq)?
            + write_all(tx, self.subscription, seq)?
            + write_all(tx, self.payment, seq)?
            + write_all(tx, self.refund, seq)?
            + write_all(tx, self.dispute, seq)?
            + write_all(tx, self.license_key, seq)?
            + write_all(tx, self.credit_entry, seq)?
            + write_all(tx, self.credit_balance_low, seq)?)
    }
}

fn next_seq(tx: &Connection) -> Result<i64> {
    Ok(tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
        [],
        |r| r.get(0),
    )?)
}

/// Applies one delivery inside the caller's transaction.
fn apply_one(tx: &Connection, d: &Delivery, seq: i64) -> Result<Applied> {
    let body_sha256 = fold::hex(&Sha256::digest(&d.body));
    let seen: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE delivery_id = ?1 AND body_sha256 = ?2)",
        )?
        .query_row(params![&d.id, &body_sha256], |r| r.get(0))?;
    if seen {
        return Ok(Applied {
            outcome: Outcome::Duplicate,
            event_type: None,
            detail: None,
        });
    }
    let mut row = DeliveryRow {
        d,
        body_sha256,
        event_type: None,
        event_at: None,
        object: None,
        key: None,
        outcome: Outcome::Malformed,
        detail: None,
    };
    match event::parse(&d.body) {
        Err(e) => row.detail = Some(e.to_string()),
        Ok(env) => {
            row.event_type = Some(env.event_type.clone());
            row.event_at = Some(format_timestamp(&env.timestamp));
            row.outcome = Outcome::Unhandled;
            if let Some((kind, id)) = env.event.object() {
                let (kind, id) = (kind.to_string(), id.to_string());
                let (outcome, key, detail) =
                    with_family!(kind.as_str(), apply_snapshot(tx, env.event, &d.id, seq))?;
                row.object = Some((kind, id));
                row.key = Some(key);
                row.outcome = outcome;
                row.detail = detail;
            }
        }
    }
    row.insert(tx)?;
    Ok(Applied {
        outcome: row.outcome,
        event_type: row.event_type,
        detail: row.detail,
    })
}

struct DeliveryRow<'a> {
    d: &'a Delivery,
    body_sha256: String,
    event_type: Option<String>,
    event_at: Option<String>,
    object: Option<(String, String)>,
    key: Option<String>,
    outcome: Outcome,
    detail: Option<String>,
}

impl DeliveryRow<'_> {
    fn insert(&self, tx: &Connection) -> Result<()> {
        let (kind, id) = match &self.object {
            Some((k, i)) => (Some(k.as_str()), Some(i.as_str())),
            None => (None, None),
        };
        tx.prepare_cached(
            "INSERT INTO deliveries (delivery_id, received_at, webhook_timestamp, webhook_signature,
                body, event_type, event_at, object_kind, object_id, version_key, outcome, detail,
                body_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            self.d.id,
            format_timestamp(&self.d.received_at),
            self.d.webhook_timestamp,
            self.d.webhook_signature,
            self.d.body,
            self.event_type,
            self.event_at,
            kind,
            id,
            self.key,
            self.outcome.as_str(),
            self.detail,
            self.body_sha256,
        ])?;
        Ok(())
    }
}

/// The stored state row of one object.
struct StateRow {
    state_key: String,
    max_key: String,
    since: String,
    body: String,
}

fn load_state(tx: &Connection, kind: &str, id: &str) -> Result<Option<StateRow>> {
    Ok(tx
        .prepare_cached(
            "SELECT state_key, max_key, since, body FROM objects WHERE kind = ?1 AND id = ?2",
        )?
        .query_row(params![kind, id], |r| {
            Ok(StateRow {
                state_key: r.get(0)?,
                max_key: r.get(1)?,
                since: r.get(2)?,
                body: r.get(3)?,
            })
        })
        .optional()?)
}

fn decode_current<T: Stored>(row: &StateRow) -> Result<Current<T>> {
    let body: T = serde_json::from_str(&row.body)
        .map_err(|e| StoreError::Corrupt(format!("{} state: {e}", T::KIND)))?;
    let key = decode_key(&row.state_key)
        .ok_or_else(|| StoreError::Corrupt(format!("state key {:?}", row.state_key)))?;
    let since = parse_timestamp(&row.since)
        .ok_or_else(|| StoreError::Corrupt(format!("since {:?}", row.since)))?;
    Ok(Current {
        snap: Snap { body, key },
        since,
    })
}

/// Folds one new snapshot into its object. Returns (outcome, encoded key, detail).
fn apply_snapshot<T: Stored>(
    tx: &Connection,
    event: Event,
    delivery_id: &str,
    seq: i64,
) -> Result<(Outcome, String, Option<String>)> {
    let snap =
        T::from_event(event).ok_or_else(|| StoreError::Corrupt("event family mismatch".into()))?;
    let id = snap.body.object_id().to_string();
    let vkey = snap.key;
    let key = vkey.encode();
    let state = load_state(tx, T::KIND, &id)?;
    // Fast path: newer than everything in the history (the in-order case) -> one step.
    let newest = state.as_ref().is_none_or(|s| key > s.max_key);
    if newest {
        let current = state.as_ref().map(decode_current::<T>).transpose()?;
        let (verdict, next) = fold::step(current.as_ref(), &snap, false);
        return match (verdict, next) {
            (Verdict::Rejected(rejection), _) => {
                insert_quarantine(tx, T::KIND, &id, delivery_id, &key, &rejection)?;
                tx.prepare_cached(
                    "UPDATE objects SET max_key = ?3, seq = ?4 WHERE kind = ?1 AND id = ?2",
                )?
                .execute(params![T::KIND, id, key, seq])?;
                Ok((Outcome::Rejected, key, Some(rejection.message())))
            }
            (Verdict::Applied { .. }, Some(next)) => {
                upsert_object(tx, &id, &next, &key, delivery_id, seq)?;
                Ok((Outcome::Applied, key, None))
            }
            (Verdict::Applied { .. }, None) => Err(StoreError::Corrupt("step lost state".into())),
        };
    }
    // Slow path: re-fold the object's whole (short) history with and without it.
    let history = load_history::<T>(tx, &id)?;
    let before = fold::fold(history.iter().cloned());
    let mut with_new = history;
    with_new.push(Entry {
        snap,
        delivery_id: delivery_id.to_string(),
        forced: false,
    });
    let after = fold::fold(with_new);
    let outcome = fold::outcome(&before, &after, &vkey);
    let detail = after
        .rejected()
        .find(|(s, _)| s.key == vkey)
        .map(|(_, r)| r.message());
    write_object(tx, &id, &after, seq)?;
    Ok((outcome, key, detail))
}

/// Every snapshot stored for one object, with operator overrides.
fn load_history<T: Stored>(tx: &Connection, id: &str) -> Result<Vec<Entry<T>>> {
    let mut stmt = tx.prepare_cached(
        "SELECT d.delivery_id, d.body, o.delivery_id IS NOT NULL
           FROM deliveries d LEFT JOIN overrides o ON o.delivery_id = d.delivery_id
          WHERE d.object_kind = ?1 AND d.object_id = ?2",
    )?;
    let mut rows = stmt.query(params![T::KIND, id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let delivery_id: String = row.get(0)?;
        let body: Vec<u8> = row.get(1)?;
        let forced: bool = row.get(2)?;
        // Rows with an object id parsed when stored; a body that no longer parses (a
        // downgrade) is skipped rather than failing the whole object.
        if let Ok(env) = event::parse(&body) {
            if let Some(snap) = T::from_event(env.event) {
                out.push(Entry {
                    snap,
                    delivery_id,
                    forced,
                });
            }
        }
    }
    Ok(out)
}

fn refold_object<T: Stored>(tx: &Transaction<'_>, id: &str, seq: i64) -> Result<()> {
    let history = load_history::<T>(tx, id)?;
    let folded = fold::fold(history);
    write_object(tx, id, &folded, seq)
}

/// Writes an object's folded state and replaces its quarantine rows.
fn write_object<T: Stored>(tx: &Connection, id: &str, folded: &Folded<T>, seq: i64) -> Result<()> {
    write_folded(tx, id, folded, seq, false)
}

/// [`write_object`]; `fresh`: the quarantine is known to hold nothing of this object.
fn write_folded<T: Stored>(
    tx: &Connection,
    id: &str,
    folded: &Folded<T>,
    seq: i64,
    fresh: bool,
) -> Result<()> {
    if !fresh {
        tx.prepare_cached("DELETE FROM quarantine WHERE object_kind = ?1 AND object_id = ?2")?
            .execute(params![T::KIND, id])?;
    }
    for (step, rejection) in folded.rejected() {
        insert_quarantine(
            tx,
            T::KIND,
            id,
            &step.delivery_id,
            &step.key.encode(),
            rejection,
        )?;
    }
    let Some(state) = &folded.state else {
        return Ok(());
    };
    let max_key = folded.max_key().map(|k| k.encode()).unwrap_or_default();
    let delivery_id = folded
        .steps
        .iter()
        .find(|s| s.key == state.snap.key)
        .map(|s| s.delivery_id.as_str())
        .unwrap_or_default();
    upsert_object(tx, id, state, &max_key, delivery_id, seq)
}

fn upsert_object<T: Stored>(
    tx: &Connection,
    id: &str,
    state: &Current<T>,
    max_key: &str,
    delivery_id: &str,
    seq: i64,
) -> Result<()> {
    let body = serde_json::to_string(&state.snap.body)
        .map_err(|e| StoreError::Corrupt(format!("encode {}: {e}", T::KIND)))?;
    tx.prepare_cached(
        "INSERT INTO objects (kind, id, customer_id, ref_id, status, as_of, since, state_key,
                              max_key, delivery_id, body, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (kind, id) DO UPDATE SET customer_id = excluded.customer_id,
             ref_id = excluded.ref_id, status = excluded.status, as_of = excluded.as_of,
             since = excluded.since, state_key = excluded.state_key, max_key = excluded.max_key,
             delivery_id = excluded.delivery_id, body = excluded.body, seq = excluded.seq",
    )?
    .execute(params![
        T::KIND,
        id,
        state.snap.body.customer_id(),
        state.snap.body.ref_id(),
        state.snap.body.status_name(),
        format_timestamp(&state.snap.key.at),
        format_timestamp(&state.since),
        state.snap.key.encode(),
        max_key,
        delivery_id,
        body,
        seq,
    ])?;
    Ok(())
}

fn insert_quarantine(
    tx: &Connection,
    kind: &str,
    id: &str,
    delivery_id: &str,
    key: &str,
    rejection: &fold::Rejection,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO quarantine (delivery_id, object_kind, object_id, version_key, code,
                                            reason, from_state, to_state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        delivery_id,
        kind,
        id,
        key,
        rejection.reason.code(),
        rejection.message(),
        rejection.from,
        rejection.to,
    ])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading

/// A reading connection: change detection for the in-memory index, listings, views.
pub struct Reader {
    conn: Connection,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    /// Opens a reader on an existing, migrated file.
    ///
    /// # Errors
    ///
    /// See [`open_reader`].
    pub fn open(path: &Path) -> Result<Reader> {
        Ok(Reader {
            conn: open_reader(path)?,
        })
    }

    /// `PRAGMA data_version`: changes whenever another connection (in this process or
    /// another) committed to the file.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// `(seq, epoch)`: the change counter and the rebuild counter.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn counters(&self) -> Result<(i64, i64)> {
        Ok(self.conn.prepare_cached(
            "SELECT (SELECT value FROM meta WHERE key = 'seq'), (SELECT value FROM meta WHERE key = 'epoch')",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    /// Object rows of the kinds the access index holds, changed after `seq`
    /// (all of them for `seq = 0`), in one read transaction.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn changed_since(&mut self, seq: i64) -> Result<(Vec<ObjectRow>, i64, i64)> {
        let tx = self.conn.transaction()?;
        let (now_seq, epoch) = {
            let mut stmt = tx.prepare_cached(
                "SELECT (SELECT value FROM meta WHERE key = 'seq'), (SELECT value FROM meta WHERE key = 'epoch')",
            )?;
            stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?
        };
        let rows = {
            // INDEXED BY: without statistics the planner prefers `objects_ref` for the
            // `kind IN (...)` term, which reads every object of those kinds on every
            // refresh (milliseconds per commit at 100k objects) instead of the changed
            // ones.
            // A full load (seq 0) reads the table in storage order instead: one
            // sequential scan beats a million index probes.
            let sql = if seq == 0 {
                "SELECT kind, id, as_of, since, body FROM objects NOT INDEXED
                  WHERE seq > ?1 AND kind IN ('grant', 'subscription', 'payment', 'refund', 'dispute')"
            } else {
                "SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_seq
                  WHERE seq > ?1 AND kind IN ('grant', 'subscription', 'payment', 'refund', 'dispute')"
            };
            let mut stmt = tx.prepare_cached(sql)?;
            let rows = stmt.query_map([seq], ObjectRow::from_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok((rows, now_seq, epoch))
    }

    /// The rows one access answer needs, read straight from SQLite: the pair's grants,
    /// their subscriptions and payments, and those payments' refunds and disputes. For
    /// one-shot answers (`entsync check`) that should not load the whole index.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn pair_rows(&self, customer: &str, entitlement: &str) -> Result<Vec<ObjectRow>> {
        let mut stmt = self.conn.prepare_cached(
            "WITH g AS (SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_customer
                         WHERE customer_id = ?1 AND kind = 'grant' AND ref_id = ?2)
             SELECT kind, id, as_of, since, body FROM g
             UNION ALL
             SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_key
              WHERE kind = 'subscription'
                AND id IN (SELECT json_extract(body, '$.subscription_id') FROM g)
             UNION ALL
             SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_key
              WHERE kind = 'payment' AND id IN (SELECT json_extract(body, '$.payment_id') FROM g)
             UNION ALL
             SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_ref
              WHERE kind IN ('refund', 'dispute')
                AND ref_id IN (SELECT json_extract(body, '$.payment_id') FROM g)",
        )?;
        let rows = stmt.query_map(params![customer, entitlement], ObjectRow::from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The raw point lookup the in-memory index is measured against: a grant pair's
    /// object bodies through the `objects_customer` index.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn raw_grant_lookup(&self, customer: &str, entitlement: &str) -> Result<usize> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT status, body FROM objects INDEXED BY objects_customer WHERE customer_id = ?1 AND kind = 'grant' AND ref_id = ?2",
        )?;
        let mut rows = stmt.query(params![customer, entitlement])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let _status: String = row.get(0)?;
            n += 1;
        }
        Ok(n)
    }

    /// The connection, for the listing queries in `records`.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}
