//! The reader (SQLite): change detection and the change feed for the in-memory access
//! index, the rows of one pair, and (in `records.rs`) the listings.

use super::{
    Balance, CustomerView, DeliveryRecord, GrantRecord, ObjectRow, QuarantineRecord, ReadStore,
    Result, StoreStats,
};
use crate::change::Change;
use crate::delivery::Outcome;
use crate::event::Kind;
use crate::wire::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

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
    /// See [`super::open_reader`].
    pub fn open(path: &Path) -> Result<Reader> {
        Ok(Reader {
            conn: super::open_reader(path)?,
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
            let mut stmt = tx.prepare_cached(&sql)?;
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
        Ok(pair_rows(&self.conn, customer, entitlement)?)
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

    /// One object's current state row, if the store has it.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn object(&self, kind: Kind, id: &str) -> Result<Option<ObjectRow>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT kind, id, as_of, since, body FROM objects WHERE kind = ?1 AND id = ?2",
            )?
            .query_row(params![kind.as_str(), id], ObjectRow::from_row)
            .optional()?)
    }

    /// The connection, for the listing queries in `records`.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// The rows one pair's answer needs: its grants, their subscriptions and payments, and
/// those payments' refunds and disputes. Point lookups by index, one statement each (a
/// single query with `IN (SELECT ...)` builds temporary B-trees on every call).
pub(super) fn pair_rows(
    conn: &Connection,
    customer: &str,
    entitlement: &str,
) -> rusqlite::Result<Vec<ObjectRow>> {
    let mut rows = Vec::new();
    let mut subscriptions = Vec::new();
    let mut payments = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT kind, id, as_of, since, body, grant_subscription_id, grant_payment_id
               FROM objects INDEXED BY objects_customer
              WHERE customer_id = ?1 AND kind = 'grant' AND ref_id = ?2",
        )?;
        let mut grants = stmt.query(params![customer, entitlement])?;
        while let Some(r) = grants.next()? {
            rows.push(ObjectRow::from_row(r)?);
            if let Some(s) = r.get::<_, Option<String>>(5)? {
                subscriptions.push(s);
            }
            if let Some(p) = r.get::<_, Option<String>>(6)? {
                payments.push(p);
            }
        }
    }
    subscriptions.sort_unstable();
    subscriptions.dedup();
    payments.sort_unstable();
    payments.dedup();
    let mut object = conn.prepare_cached(
        "SELECT kind, id, as_of, since, body FROM objects WHERE kind = ?1 AND id = ?2",
    )?;
    for (kind, ids) in [("subscription", &subscriptions), ("payment", &payments)] {
        for id in ids {
            if let Some(row) = object
                .query_row(params![kind, id], ObjectRow::from_row)
                .optional()?
            {
                rows.push(row);
            }
        }
    }
    let mut linked = conn.prepare_cached(
        "SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_ref
          WHERE kind = ?1 AND ref_id = ?2",
    )?;
    for payment in &payments {
        for kind in ["refund", "dispute"] {
            for row in linked.query_map(params![kind, payment], ObjectRow::from_row)? {
                rows.push(row?);
            }
        }
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

impl ReadStore for Reader {
    fn data_version(&mut self) -> Result<i64> {
        Reader::data_version(self)
    }
    fn changed_since(&mut self, seq: i64) -> Result<(Vec<ObjectRow>, i64, i64)> {
        Reader::changed_since(self, seq)
    }
    fn pair_rows(&mut self, customer: &str, entitlement: &str) -> Result<Vec<ObjectRow>> {
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
        Reader::grants(self, customer)
    }
    fn customer(&mut self, customer: &str) -> Result<CustomerView> {
        Reader::customer(self, customer)
    }
    fn balance(&mut self, customer: &str, credit_entitlement: &str) -> Result<Option<Balance>> {
        Reader::balance(self, customer, credit_entitlement)
    }
    fn stats(&mut self) -> Result<StoreStats> {
        Reader::stats(self)
    }
    fn quarantine_size(&mut self) -> Result<u64> {
        Reader::quarantine_size(self)
    }
    fn changes(&mut self, after: i64, limit: usize) -> Result<Vec<Change>> {
        super::feed::changes(&self.conn, after, limit)
    }
    fn last_change_seq(&mut self) -> Result<i64> {
        super::feed::last_seq(&self.conn)
    }
    fn forward_cursor(&mut self) -> Result<i64> {
        super::feed::forward_cursor(&self.conn)
    }
    fn next_due(&mut self) -> Result<Option<Timestamp>> {
        super::feed::next_due(&self.conn)
    }
    fn object(&mut self, kind: Kind, id: &str) -> Result<Option<ObjectRow>> {
        Reader::object(self, kind, id)
    }
}
