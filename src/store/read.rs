//! The reader: change detection and the change feed for the in-memory access index, the
//! rows of one pair, and (in `records.rs`) the listings.

use super::sql::{args, Backend, Db, Mode, Tx};
use super::{
    Balance, CustomerView, DeliveryRecord, GrantRecord, Location, ObjectRow, QuarantineRecord,
    ReadStore, Result, StoreStats,
};
use crate::change::Change;
use crate::delivery::Outcome;
use crate::event::Kind;
use crate::wire::Timestamp;
use std::path::Path;

/// A reading connection: change detection for the in-memory index, listings, views.
pub struct Reader {
    db: Box<dyn Db>,
    /// SQLite: the store's log, and the newest change seq seen after a sync of it
    /// (see [`ReadStore::changes`]).
    pub(super) log: Option<(super::sqlite::Log, i64)>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    /// Opens a reader on an existing, migrated SQLite file.
    ///
    /// # Errors
    ///
    /// [`super::StoreError::SchemaTooNew`], or SQLite's.
    pub fn open(path: &Path) -> Result<Reader> {
        Reader::open_at(&Location::Sqlite(path.to_path_buf()))
    }

    /// Opens a reader on a store at any [`Location`] (already created by a
    /// [`super::Writer`]).
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn open_at(location: &Location) -> Result<Reader> {
        let db = super::connect(location, false)?;
        let log = db
            .as_sqlite()
            .and_then(super::sqlite::Log::of)
            .map(|log| (log, 0));
        Ok(Reader { db, log })
    }

    /// A token that changes whenever anyone committed: SQLite's `PRAGMA data_version`
    /// (any connection, in this process or another), PostgreSQL's change counter.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn data_version(&self) -> Result<i64> {
        let sql = match self.db.backend() {
            Backend::Sqlite => "PRAGMA data_version",
            Backend::Postgres => "SELECT value FROM meta WHERE key = 'seq'",
        };
        self.db.one(sql, args![])?.i64(0)
    }

    /// `(seq, epoch)`: the change counter and the rebuild counter.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn counters(&self) -> Result<(i64, i64)> {
        counters(&*self.db)
    }

    /// Object rows of the kinds the access index holds, changed after `seq`
    /// (all of them for `seq = 0`), in one read transaction.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn changed_since(&mut self, seq: i64) -> Result<(Vec<ObjectRow>, i64, i64)> {
        let mut rows = Vec::new();
        let (now_seq, epoch) = self.scan_changed(seq, usize::MAX, &mut |chunk| {
            rows.extend(chunk);
        })?;
        Ok((rows, now_seq, epoch))
    }

    /// [`Reader::changed_since`] in chunks of at most `chunk` rows, each handed to `f` as
    /// it is read, in one read transaction.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn scan_changed(
        &mut self,
        seq: i64,
        chunk: usize,
        f: &mut dyn FnMut(Vec<ObjectRow>),
    ) -> Result<(i64, i64)> {
        let tx = Tx::begin(&*self.db, Mode::Read)?;
        let (now_seq, epoch) = counters(&*tx)?;
        // INDEXED BY: without statistics the planner may prefer an index on `kind` for
        // the `kind IN (...)` term, which reads every object of those kinds on every
        // refresh (milliseconds per commit at 100k objects) instead of the changed
        // ones. A full load (seq 0) reads the table in storage order instead: one
        // sequential scan beats a million index probes.
        let indexed = if seq == 0 {
            "NOT INDEXED"
        } else {
            "INDEXED BY objects_seq"
        };
        let sql = format!(
            "SELECT kind, id, as_of, since, body FROM objects {indexed}
              WHERE seq > ?1 AND kind IN ({})",
            index_kinds()
        );
        let mut rows = Vec::new();
        tx.for_each(&sql, args![seq], &mut |r| {
            rows.push(ObjectRow::from_row(r)?);
            if rows.len() >= chunk {
                f(std::mem::take(&mut rows));
            }
            Ok(())
        })?;
        if !rows.is_empty() {
            f(rows);
        }
        tx.commit()?;
        Ok((now_seq, epoch))
    }

    /// The rows one access answer needs, read straight from SQLite: the pair's grants,
    /// their subscriptions and payments, and those payments' refunds and disputes. For
    /// one-shot answers (`entsync check`) that should not load the whole index.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn pair_rows(&self, customer: &str, entitlement: &str) -> Result<Vec<ObjectRow>> {
        pair_rows(&*self.db, customer, entitlement)
    }

    /// The raw point lookup the in-memory index is measured against: a grant pair's
    /// object bodies through the `objects_customer` index.
    ///
    /// # Errors
    ///
    /// The database's.
    pub fn raw_grant_lookup(&self, customer: &str, entitlement: &str) -> Result<usize> {
        const SQL: &str = "SELECT status, body FROM objects INDEXED BY objects_customer
            WHERE customer_id = ?1 AND kind = 'grant' AND ref_id = ?2";
        if let Some(conn) = self.db.as_sqlite() {
            // Straight through rusqlite: the baseline pays for nothing of ours.
            let mut stmt = conn.prepare_cached(SQL)?;
            let mut rows = stmt.query(rusqlite::params![customer, entitlement])?;
            let mut n = 0;
            while let Some(row) = rows.next()? {
                let _status: &str = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
                n += 1;
            }
            return Ok(n);
        }
        let mut n = 0;
        self.db
            .for_each(SQL, args![customer, entitlement], &mut |_| {
                n += 1;
                Ok(())
            })?;
        Ok(n)
    }

    /// One object's current state row, if the store has it.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn object(&self, kind: Kind, id: &str) -> Result<Option<ObjectRow>> {
        self.db
            .row(
                "SELECT kind, id, as_of, since, body FROM objects WHERE kind = ?1 AND id = ?2",
                args![kind.as_str(), id],
            )?
            .map(ObjectRow::from_row)
            .transpose()
    }

    /// The connection, for the listing queries in `records`.
    pub(crate) fn db(&self) -> &dyn Db {
        &*self.db
    }
}

fn counters(db: &dyn Db) -> Result<(i64, i64)> {
    let r = db.one(
        "SELECT (SELECT value FROM meta WHERE key = 'seq'), (SELECT value FROM meta WHERE key = 'epoch')",
        args![],
    )?;
    Ok((r.i64(0)?, r.i64(1)?))
}

/// The rows one pair's answer needs: its grants, their subscriptions and payments, and
/// those payments' refunds and disputes. Point lookups by index, one statement each (a
/// single query with `IN (SELECT ...)` builds temporary B-trees on every call).
pub(super) fn pair_rows(
    conn: &dyn Db,
    customer: &str,
    entitlement: &str,
) -> Result<Vec<ObjectRow>> {
    let mut rows = Vec::new();
    let mut subscriptions = Vec::new();
    let mut payments = Vec::new();
    conn.for_each(
        "SELECT kind, id, as_of, since, body, grant_subscription_id, grant_payment_id
           FROM objects INDEXED BY objects_customer
          WHERE customer_id = ?1 AND kind = 'grant' AND ref_id = ?2",
        args![customer, entitlement],
        &mut |mut r| {
            if let Some(s) = r.opt_string(5)? {
                subscriptions.push(s);
            }
            if let Some(p) = r.opt_string(6)? {
                payments.push(p);
            }
            rows.push(ObjectRow::from_row(r)?);
            Ok(())
        },
    )?;
    subscriptions.sort_unstable();
    subscriptions.dedup();
    payments.sort_unstable();
    payments.dedup();
    // A subscription, a payment and that payment's disputes and refunds in one statement
    // (an id bound as NULL matches no row), as many times as the longer list: most pairs
    // need one execution, and the writer reads a pair for every delivery. The rows'
    // order does not matter to the index. Not `kind IN (...)`: SQLite runs an IN list
    // through an ephemeral table, whose page cache (~86 KB) is allocated and freed again
    // on every execution (page faults in the writer). `kind <> 'grant'` is the
    // `objects_ref` index's condition (it holds no grants), which SQLite must see written.
    for at in 0..subscriptions.len().max(payments.len()) {
        conn.for_each(
            "SELECT kind, id, as_of, since, body FROM objects
              WHERE kind = 'subscription' AND id = ?1
             UNION ALL
             SELECT kind, id, as_of, since, body FROM objects
              WHERE kind = 'payment' AND id = ?2
             UNION ALL
             SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_ref
              WHERE kind = 'dispute' AND ref_id = ?2 AND kind <> 'grant'
             UNION ALL
             SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_ref
              WHERE kind = 'refund' AND ref_id = ?2 AND kind <> 'grant'",
            args![subscriptions.get(at), payments.get(at)],
            &mut |r| {
                rows.push(ObjectRow::from_row(r)?);
                Ok(())
            },
        )?;
    }
    Ok(rows)
}

/// `'grant', 'subscription', ...`: the kinds the access index holds, as an SQL list.
pub(super) fn index_kinds() -> &'static str {
    static LIST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        let kinds: Vec<String> = Kind::ALL
            .into_iter()
            .filter(|k| k.in_index())
            .map(|k| format!("'{}'", k.as_str()))
            .collect();
        kinds.join(", ")
    })
}

/// Whether a key of a lookup cannot be stored ([`super::storable_key`]), so that nothing
/// is found by it (on PostgreSQL the query would fail).
fn unstored(keys: &[&str]) -> bool {
    !keys.iter().all(|k| super::storable_key(k))
}

impl ReadStore for Reader {
    fn data_version(&mut self) -> Result<i64> {
        Reader::data_version(self)
    }
    fn changed_since(&mut self, seq: i64) -> Result<(Vec<ObjectRow>, i64, i64)> {
        Reader::changed_since(self, seq)
    }
    fn scan_changed(
        &mut self,
        seq: i64,
        chunk: usize,
        f: &mut dyn FnMut(Vec<ObjectRow>),
    ) -> Result<(i64, i64)> {
        Reader::scan_changed(self, seq, chunk, f)
    }
    fn pair_rows(&mut self, customer: &str, entitlement: &str) -> Result<Vec<ObjectRow>> {
        if unstored(&[customer, entitlement]) {
            return Ok(Vec::new());
        }
        Reader::pair_rows(self, customer, entitlement)
    }
    fn deliveries(
        &mut self,
        outcome: Option<Outcome>,
        limit: Option<u64>,
    ) -> Result<Vec<DeliveryRecord>> {
        Reader::deliveries(self, outcome.map(Outcome::as_str), limit)
    }
    fn rejected(&mut self) -> Result<Vec<QuarantineRecord>> {
        Reader::rejected(self)
    }
    fn grants(&mut self, customer: Option<&str>) -> Result<Vec<GrantRecord>> {
        if unstored(customer.as_slice()) {
            return Ok(Vec::new());
        }
        Reader::grants(self, customer)
    }
    fn customer(&mut self, customer: &str) -> Result<CustomerView> {
        if unstored(&[customer]) {
            return Ok(CustomerView::unknown(customer));
        }
        Reader::customer(self, customer)
    }
    fn balance(&mut self, customer: &str, credit_entitlement: &str) -> Result<Option<Balance>> {
        if unstored(&[customer, credit_entitlement]) {
            return Ok(None);
        }
        Reader::balance(self, customer, credit_entitlement)
    }
    fn stats(&mut self) -> Result<StoreStats> {
        Reader::stats(self)
    }
    fn quarantine_size(&mut self) -> Result<u64> {
        Reader::quarantine_size(self)
    }
    fn changes(&mut self, after: i64, limit: usize) -> Result<Vec<Change>> {
        let changes = super::feed::changes(&*self.db, after, limit)?;
        // A writer that defers its syncs (`WriteStore::defer_sync`, in this process or
        // another) makes a commit visible before it is durable. A change handed out
        // and then lost to a power cut would see its seq reused by a different change,
        // which a consumer past that seq would never read: so the log is synced first,
        // which makes everything this read saw durable. Once per new seq seen.
        if let (Some(last), Some((log, synced))) = (changes.last(), &mut self.log) {
            if last.seq > *synced {
                log.sync()?;
                *synced = last.seq;
            }
        }
        Ok(changes)
    }
    fn last_change_seq(&mut self) -> Result<i64> {
        super::feed::last_seq(&*self.db)
    }
    fn forward_cursor(&mut self) -> Result<i64> {
        super::feed::forward_cursor(&*self.db)
    }
    fn checkpoint(&mut self, name: &str) -> Result<Option<String>> {
        super::feed::checkpoint(&*self.db, name)
    }
    fn next_due(&mut self) -> Result<Option<Timestamp>> {
        super::feed::next_due(&*self.db)
    }
    fn object(&mut self, kind: Kind, id: &str) -> Result<Option<ObjectRow>> {
        if unstored(&[id]) {
            return Ok(None);
        }
        Reader::object(self, kind, id)
    }
}
