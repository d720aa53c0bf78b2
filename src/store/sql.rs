//! The one seam under the store: a connection that runs SQL with arguments and hands
//! back rows of plain values. The store's logic (the writer, the feed, the re-fold,
//! rebuild, the reader) is written once against [`Db`]; `sqlite.rs` and `postgres.rs`
//! implement it.
//!
//! The store's SQL is the portable subset both databases run: `?N` placeholders,
//! `ON CONFLICT ... DO UPDATE`, `RETURNING`, `EXISTS`, `COALESCE`. SQLite's planner
//! hints (`INDEXED BY x`, `NOT INDEXED`) are written where SQLite needs them; the
//! PostgreSQL backend removes them and turns `?N` into `$N` once per statement. Flags are
//! integer columns (0/1) on both, and text compares bytewise on both (`COLLATE "C"` in
//! the PostgreSQL schema), so that version keys and instants sort the same.

use super::{Result, StoreError};

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
}

/// An argument of a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Null,
    Int(i64),
    Bool(bool),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a &'a str> for Arg<'a> {
    fn from(v: &'a &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Arg<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Arg::Blob(v)
    }
}

impl<'a, T> From<Option<T>> for Arg<'a>
where
    T: Into<Arg<'a>>,
{
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(Arg::Null, Arg::Text)
    }
}

impl Arg<'_> {
    /// Whether a column that was written with this argument reads back as `v` (a flag
    /// reads back as an integer).
    pub(crate) fn reads_as(&self, v: &Val) -> bool {
        match (self, v) {
            (Arg::Null, Val::Null) => true,
            (Arg::Int(a), Val::Int(b)) => a == b,
            (Arg::Bool(a), Val::Int(b)) => i64::from(*a) == *b,
            (Arg::Text(a), Val::Text(b)) => *a == b,
            (Arg::Blob(a), Val::Blob(b)) => *a == b.as_slice(),
            _ => false,
        }
    }
}

/// ` WHERE ...` restricting a query to the keys (two text columns `columns`, compared
/// as a pair) after `after` and up to and with `upto` (unbounded where `None`; empty when
/// both are), with its arguments. Text compares bytewise on both backends, as in Rust, so
/// that ranges of keys taken in Rust's order cover the rows exactly.
pub(crate) fn key_range<'a>(
    columns: (&str, &str),
    after: Option<(&'a str, &'a str)>,
    upto: Option<(&'a str, &'a str)>,
) -> (String, Vec<Arg<'a>>) {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    for (bound, op) in [(after, ">"), (upto, "<=")] {
        if let Some((a, b)) = bound {
            let n = values.len();
            conditions.push(format!(
                "({}, {}) {op} (?{}, ?{})",
                columns.0,
                columns.1,
                n + 1,
                n + 2
            ));
            values.extend([Arg::Text(a), Arg::Text(b)]);
        }
    }
    let sql = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    (sql, values)
}

/// `args![a, b, c]`: the arguments of a statement, each converted with `Arg::from`.
macro_rules! args {
    () => { &[] as &[$crate::store::sql::Arg<'_>] };
    ($($v:expr),+ $(,)?) => { &[$($crate::store::sql::Arg::from($v)),+] };
}
pub(crate) use args;

/// A value read from a row. Booleans arrive as `Int` (0/1) from both backends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(pub(crate) Vec<Val>);

fn mismatch(i: usize, want: &str, got: &Val) -> StoreError {
    let got = match got {
        Val::Null => "NULL",
        Val::Int(_) => "an integer",
        Val::Text(_) => "text",
        Val::Blob(_) => "a blob",
    };
    StoreError::Corrupt(format!("column {i}: expected {want}, found {got}"))
}

impl Row {
    fn at(&self, i: usize) -> Result<&Val> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("no column {i}")))
    }

    pub(crate) fn i64(&self, i: usize) -> Result<i64> {
        match self.at(i)? {
            Val::Int(v) => Ok(*v),
            other => Err(mismatch(i, "an integer", other)),
        }
    }

    pub(crate) fn bool(&self, i: usize) -> Result<bool> {
        self.i64(i).map(|v| v != 0)
    }

    pub(crate) fn str(&self, i: usize) -> Result<&str> {
        match self.at(i)? {
            Val::Text(s) => Ok(s),
            other => Err(mismatch(i, "text", other)),
        }
    }

    pub(crate) fn opt_str(&self, i: usize) -> Result<Option<&str>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            _ => self.str(i).map(Some),
        }
    }

    /// Takes a text column out of the row.
    pub(crate) fn string(&mut self, i: usize) -> Result<String> {
        match self.0.get_mut(i) {
            Some(Val::Text(s)) => Ok(std::mem::take(s)),
            Some(other) => Err(mismatch(i, "text", other)),
            None => Err(StoreError::Corrupt(format!("no column {i}"))),
        }
    }

    /// Takes a nullable text column out of the row.
    pub(crate) fn opt_string(&mut self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            _ => self.string(i).map(Some),
        }
    }

    /// Takes a blob column out of the row.
    pub(crate) fn blob(&mut self, i: usize) -> Result<Vec<u8>> {
        match self.0.get_mut(i) {
            Some(Val::Blob(b)) => Ok(std::mem::take(b)),
            Some(other) => Err(mismatch(i, "a blob", other)),
            None => Err(StoreError::Corrupt(format!("no column {i}"))),
        }
    }
}

/// What a transaction is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A write transaction: SQLite takes the write lock at once (`BEGIN IMMEDIATE`).
    Write,
    /// A consistent read of several statements.
    Read,
}

/// A connection. Methods take `&self` so that the store's functions can pass one
/// connection around freely; a backend that needs `&mut` keeps its client in a cell.
pub(crate) trait Db: Send {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Runs one statement; returns the number of rows it changed.
    fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64>;

    /// Runs one query and calls `f` with each row, in order. `f` must not use the
    /// connection.
    fn for_each(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: &mut dyn FnMut(Row) -> Result<()>,
    ) -> Result<()>;

    /// Runs several statements without arguments.
    fn batch(&self, sql: &str) -> Result<()>;

    /// Begins a transaction.
    fn begin(&self, mode: Mode) -> Result<()>;

    /// Commits the open transaction.
    fn commit(&self) -> Result<()>;

    /// Rolls the open transaction back (nothing if none is open).
    fn rollback(&self) -> Result<()>;

    /// Called in a write transaction just before its commit: PostgreSQL notifies the
    /// other instances' listeners (delivered at commit).
    fn notify_commit(&self) -> Result<()> {
        Ok(())
    }

    /// The SQLite connection underneath, for the raw baseline `entsync bench` measures
    /// the store against.
    fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        None
    }

    /// Every row of a query.
    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        self.for_each(sql, args, &mut |r| {
            rows.push(r);
            Ok(())
        })?;
        Ok(rows)
    }

    /// The first row of a query, if any.
    fn row(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// The one row a query always returns (an aggregate, `RETURNING`).
    fn one(&self, sql: &str, args: &[Arg<'_>]) -> Result<Row> {
        self.row(sql, args)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row from {sql:?}")))
    }
}

/// An open transaction; rolled back when dropped without [`Tx::commit`].
pub(crate) struct Tx<'a> {
    db: &'a dyn Db,
    open: bool,
}

impl<'a> Tx<'a> {
    pub(crate) fn begin(db: &'a dyn Db, mode: Mode) -> Result<Tx<'a>> {
        db.begin(mode)?;
        Ok(Tx { db, open: true })
    }

    /// Commits; a commit that fails is rolled back (SQLite may keep the transaction
    /// open after a failed `COMMIT`, and the next `BEGIN` must not meet it).
    pub(crate) fn commit(mut self) -> Result<()> {
        self.open = false;
        let committed = self.db.commit();
        if committed.is_err() {
            let _ = self.db.rollback();
        }
        committed
    }
}

impl<'a> std::ops::Deref for Tx<'a> {
    type Target = dyn Db + 'a;
    fn deref(&self) -> &Self::Target {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.db.rollback();
        }
    }
}
