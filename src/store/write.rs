//! The writer: stores each delivery raw with its outcome, and carries out the planner's
//! decision for its snapshot (append, duplicate, re-fold from a place) on the object's
//! state row and history rows, all in the batch's transaction.

use super::apply::apply_one;
use super::families::{kind_of, with_family, Stored};
use super::feed::{self, Feed, Links};
use super::refold::accept_keys;
use super::sql::{args, Arg, Backend, Db, Mode, Tx};
use super::{Context, Location, RebuildStats, Result, StoreError, WriteStore};
use crate::access::Policy;
use crate::change::Cause;
use crate::delivery::{Outcome, Prepared};
use crate::event::Kind;
use crate::fold::{decode_key, Current, VersionKey};
use crate::wire::{format_timestamp, parse_timestamp, Timestamp};
use std::collections::BTreeSet;
use std::path::Path;

/// The writing connection of one engine: SQLite's only writer, or one of any number of
/// writers sharing a PostgreSQL database.
pub struct Writer {
    pub(super) db: Box<dyn Db>,
    /// The policy this writer was opened with, if any (else the stored one).
    wanted: Option<Policy>,
    /// `wanted` is the stored policy (checked in a committed transaction).
    policy_synced: bool,
    /// The policy opened with, else the one stored at open: what the engine's answers
    /// use. The feed follows the stored one after the first transaction ([`Writer::begin`]).
    policy: Policy,
    /// Set once [`WriteStore::defer_sync`] was taken: the connection commits at
    /// `synchronous=NORMAL`, and every write but a batch syncs this before it returns.
    deferred: Option<super::sqlite::Log>,
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
    /// Opens the writer on the SQLite file `path`, creating and migrating it if needed
    /// (a file migrated from a version without the fold history is rebuilt once).
    ///
    /// # Errors
    ///
    /// [`StoreError::SchemaTooNew`] for a file written by a newer version (left
    /// untouched); [`StoreError::Sqlite`] if the file cannot be opened or written.
    pub fn open(path: &Path) -> Result<Writer> {
        Writer::open_with(path, None)
    }

    /// Like [`Writer::open`]; the access-change feed is computed under `policy`, or,
    /// for `None`, under the policy it was last computed under (the default if none).
    /// A policy other than the stored one re-evaluates every pair at the first write
    /// (cause `operator`, `policy_changed`) and becomes the stored one; after that
    /// write the feed follows whichever policy is stored (another writer's, later).
    ///
    /// # Errors
    ///
    /// See [`Writer::open`].
    pub fn open_with(path: &Path, policy: Option<Policy>) -> Result<Writer> {
        Writer::open_at(&Location::Sqlite(path.to_path_buf()), policy)
    }

    /// Like [`Writer::open_with`], for a store at any [`Location`]: a PostgreSQL schema
    /// is created and migrated if needed.
    ///
    /// # Errors
    ///
    /// See [`Writer::open`]; for PostgreSQL, a connection or migration failure.
    pub fn open_at(location: &Location, policy: Option<Policy>) -> Result<Writer> {
        let db = super::connect(location, true)?;
        let stored = feed::stored_policy(&*db)?;
        let writer = Writer {
            policy: policy.clone().or(stored).unwrap_or_default(),
            wanted: policy,
            policy_synced: false,
            db,
            deferred: None,
        };
        let needs_rebuild = writer
            .db
            .one(
                "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'needs_rebuild' AND value <> 0)",
                args![],
            )
            .context("read the rebuild flag")?
            .bool(0)?;
        if needs_rebuild {
            // No clock here (the shell's): the next write evaluates every pair, as the
            // flag says; it is committed with the rebuild, so it survives a crash.
            let tx = Tx::begin(&*writer.db, Mode::Write).context("begin the rebuild")?;
            let seq = next_seq(&*tx)?;
            super::rebuild::rebuild(&*tx, seq, super::REBUILD_MEMORY)?;
            feed::flag_needs_evaluation(&*tx)?;
            tx.commit().context("commit the rebuild")?;
        }
        Ok(writer)
    }

    /// The policy opened with, else the one stored at open (the engine answers under
    /// it; the feed follows the policy stored last).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// With deferred syncs, once one failed: no write, since none could be made durable.
    fn refuse_after_failed_sync(&self) -> Result<()> {
        self.deferred
            .as_ref()
            .map_or(Ok(()), super::sqlite::Log::check)
    }

    /// After a write other than a batch: with deferred syncs, makes it (and every
    /// commit before it) durable before it returns.
    fn settle(&mut self) -> Result<()> {
        match &mut self.deferred {
            Some(log) => log.sync(),
            None => Ok(()),
        }
    }

    /// Begins a write transaction and the feed's part of it at `now`: the policy
    /// recorded (re-evaluating every pair if it changed), a store that has never been
    /// evaluated evaluated (after a rebuild or the migration that added the feed). The
    /// access changes time alone made before `now` are recorded first, at their own
    /// instants and under the policy then in force, so that a re-evaluation does not
    /// take them for its own.
    fn begin(&self, now: Timestamp) -> Result<(Tx<'_>, Feed, i64)> {
        self.refuse_after_failed_sync()?;
        let tx = Tx::begin(&*self.db, Mode::Write).context("begin a write transaction")?;
        // First, before reading anything: take the change counter. Its row lock
        // serialises every writer on the database (PostgreSQL, where several instances
        // write; SQLite's write lock already does), so that whatever this transaction
        // reads next is what every earlier writer committed, and seqs are commit-ordered.
        let seq = next_seq(&*tx)?;
        // A newer build may have migrated the store since this one opened it (a
        // rolling upgrade): this build's writes would not follow its rules.
        check_schema_version(&*tx)?;
        // Opened with a policy: it becomes the stored one at this writer's first
        // transaction. After that, and when opened without one: the stored one, read in
        // every transaction, so that when another instance starts with another policy
        // (a rolling restart), the feed follows the newest and never flips between the
        // two with each instance's writes.
        let stored = feed::stored_policy(&*tx)?;
        let policy = match &self.wanted {
            Some(p) if !self.policy_synced => p.clone(),
            _ => stored.clone().unwrap_or_default(),
        };
        let replaced = stored.as_ref().filter(|s| **s != policy);
        let evaluate = feed::needs_evaluation(&*tx)?;
        if replaced.is_some() || evaluate {
            let mut then = Feed::start(&*tx, replaced.unwrap_or(&policy).clone(), now)?;
            let at = then.tick(now);
            feed::advance(&*tx, &then, at)?;
        }
        let mut feed = Feed::start(&*tx, policy, now)?;
        let at = feed.tick(now);
        if stored.as_ref() != Some(&feed.policy) {
            feed::store_policy(&*tx, &feed.policy)?;
            if stored.is_some() {
                let cause = Cause::Operator {
                    delivery_id: None,
                    detail: "policy_changed".into(),
                };
                feed::evaluate_all(&*tx, &feed, at, &cause)?;
            }
        }
        if evaluate {
            feed::evaluate_all(&*tx, &feed, at, &Cause::Rebuild)?;
            feed::clear_needs_evaluation(&*tx)?;
        }
        Ok((tx, feed, seq))
    }

    fn commit(tx: Tx<'_>, feed: &Feed) -> Result<()> {
        feed.finish(&*tx)?;
        // PostgreSQL: delivered at commit, the other instances' indexes catch up at once.
        tx.notify_commit().context("notify the other instances")?;
        tx.commit().context("commit")
    }

    fn apply_alone(&mut self, p: &mut Prepared) -> Result<Applied> {
        let (tx, mut feed, seq) = self.begin(p.delivery.received_at)?;
        let mut seqs = Seqs::start(&*tx, seq)?;
        let applied = apply_one(&*tx, p, &mut seqs, &mut feed)?;
        Writer::commit(tx, &feed)?;
        self.policy_synced = true;
        Ok(applied)
    }

    /// Records the access changes time alone made up to `now` (cause `time`), each at
    /// the instant it happened. Returns how many.
    ///
    /// # Errors
    ///
    /// SQLite errors (nothing is recorded then).
    pub fn advance(&mut self, now: Timestamp) -> Result<usize> {
        let (tx, mut feed, _) = self.begin(now)?;
        let at = feed.tick(now);
        let n = feed::advance(&*tx, &feed, at)?;
        Writer::commit(tx, &feed)?;
        self.policy_synced = true;
        self.settle()?;
        Ok(n)
    }

    /// Moves the forwarder's cursor to `seq` (never back).
    ///
    /// # Errors
    ///
    /// The database's errors.
    pub fn set_forward_cursor(&mut self, seq: i64) -> Result<()> {
        self.refuse_after_failed_sync()?;
        let tx = Tx::begin(&*self.db, Mode::Write).context("begin a write transaction")?;
        feed::set_forward_cursor(&*tx, seq)?;
        tx.commit().context("commit")?;
        self.settle()
    }

    /// Saves (`Some`) or clears (`None`) the checkpoint `name`, durably.
    ///
    /// # Errors
    ///
    /// The database's errors.
    pub fn set_checkpoint(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        self.refuse_after_failed_sync()?;
        let tx = Tx::begin(&*self.db, Mode::Write).context("begin a write transaction")?;
        feed::set_checkpoint(&*tx, name, value)?;
        tx.commit().context("commit")?;
        self.settle()
    }
}

impl WriteStore for Writer {
    fn defer_sync(&mut self) -> Option<Box<dyn super::SyncLog>> {
        if self.deferred.is_some() {
            return None; // taken once
        }
        let conn = self.db.as_sqlite()?;
        let mine = super::sqlite::Log::of(conn)?;
        let theirs = mine.again();
        // Nothing is in flight: no transaction is open on the writer thread between
        // calls. If the switch fails, every commit stays synced.
        conn.pragma_update(None, "synchronous", "NORMAL").ok()?;
        self.deferred = Some(mine);
        Some(Box::new(theirs))
    }

    fn apply_batch(&mut self, mut deliveries: Vec<Prepared>) -> Result<Vec<Result<Applied>>> {
        // Optimistic: all in one transaction. If any delivery fails, roll the whole
        // batch back and apply each in a transaction of its own, so one bad delivery
        // cannot take the others with it (savepoints would cost a statement journal
        // on every delivery of every batch).
        let Some(first) = deliveries.first() else {
            return Ok(Vec::new());
        };
        let (tx, mut feed, seq) = self.begin(first.delivery.received_at)?;
        let mut seqs = Seqs::start(&*tx, seq)?;
        let mut results = Vec::with_capacity(deliveries.len());
        let mut failed = false;
        for p in &mut deliveries {
            match apply_one(&*tx, p, &mut seqs, &mut feed) {
                Ok(applied) => results.push(applied),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            Writer::commit(tx, &feed)?;
            self.policy_synced = true;
            return Ok(results.into_iter().map(Ok).collect());
        }
        drop(tx); // rolls back
        Ok(deliveries.iter_mut().map(|p| self.apply_alone(p)).collect())
    }

    fn accept(&mut self, delivery_id: &str, now: Timestamp) -> Result<(Kind, String)> {
        let (tx, mut feed, seq) = self.begin(now)?;
        let at = feed.tick(now);
        feed::advance(&*tx, &feed, at)?;
        // The quarantined snapshots this delivery id carried (one per body it came with).
        let quarantined: Vec<(String, String, String, String)> = tx
            .rows(
                "SELECT d.body_sha256, d.object_kind, d.object_id, d.version_key
                   FROM deliveries d JOIN history h ON h.kind = d.object_kind
                    AND h.object_id = d.object_id AND h.version_key = d.version_key
                  WHERE d.delivery_id = ?1 AND h.code IS NOT NULL
                  ORDER BY d.version_key",
                args![delivery_id],
            )
            .context("find the quarantined delivery")?
            .into_iter()
            .map(|mut r| Ok((r.string(0)?, r.string(1)?, r.string(2)?, r.string(3)?)))
            .collect::<Result<_>>()?;
        if quarantined.is_empty() {
            let known = tx
                .one(
                    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE delivery_id = ?1)",
                    args![delivery_id],
                )?
                .bool(0)?;
            return Err(if known {
                StoreError::NotQuarantined(delivery_id.to_string())
            } else {
                StoreError::UnknownDelivery(delivery_id.to_string())
            });
        }
        // The keys to accept, by object: one webhook id may have carried bodies of
        // several objects, and each is re-folded with its own.
        let mut objects: Vec<(Kind, String, Vec<VersionKey>)> = Vec::new();
        for (body_sha256, kind, id, key) in &quarantined {
            tx.exec(
                "INSERT INTO overrides (delivery_id, body_sha256, accepted_at)
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                args![delivery_id, body_sha256, &format_timestamp(&now)],
            )
            .context("record the override")?;
            let (kind, key) = (kind_of(kind)?, decode(key)?);
            match objects.iter_mut().find(|(k, i, _)| *k == kind && i == id) {
                Some((_, _, keys)) => keys.push(key),
                None => objects.push((kind, id.clone(), vec![key])),
            }
        }
        let cause = Cause::Operator {
            delivery_id: Some(delivery_id.to_string()),
            detail: "accept".into(),
        };
        // Every object re-folded before any pair is evaluated, so that a pair two of them
        // back records one change, not one per object.
        let mut pairs = BTreeSet::new();
        for (kind, id, _) in &objects {
            pairs.extend(feed::pairs_of(&*tx, *kind, id)?);
        }
        for (kind, id, keys) in &objects {
            with_family!(*kind, accept_keys(&*tx, id, keys, seq))?;
        }
        for (kind, id, _) in &objects {
            pairs.extend(feed::pairs_of(&*tx, *kind, id)?);
        }
        for pair in &pairs {
            feed::evaluate(&*tx, pair, &feed, at, None, |_, _| cause.clone())?;
        }
        // The object of the first in version order (`quarantined` is not empty).
        let (kind, id, _) = objects.swap_remove(0);
        Writer::commit(tx, &feed)?;
        self.policy_synced = true;
        self.settle()?;
        Ok((kind, id))
    }

    fn rebuild_within(&mut self, now: Timestamp, memory: usize) -> Result<RebuildStats> {
        // One transaction: the projections recomputed, then every pair re-evaluated
        // with the index the rebuild built from its folded states, the access changes
        // recorded with cause `rebuild`.
        let (tx, mut feed, seq) = self.begin(now)?;
        let at = feed.tick(now);
        // What time alone changed before now, at its own instants, before the rebuild
        // re-evaluates every pair.
        feed::advance(&*tx, &feed, at)?;
        let (stats, index) = super::rebuild::rebuild(&*tx, seq, memory)?;
        feed::evaluate_index(&*tx, &feed, &index, at, &Cause::Rebuild)?;
        drop(index);
        Writer::commit(tx, &feed)?;
        self.policy_synced = true;
        self.settle()?;
        Ok(stats)
    }

    fn advance(&mut self, now: Timestamp) -> Result<usize> {
        Writer::advance(self, now)
    }

    fn set_forward_cursor(&mut self, seq: i64) -> Result<()> {
        Writer::set_forward_cursor(self, seq)
    }

    fn set_checkpoint(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        Writer::set_checkpoint(self, name, value)
    }
}

/// The counters one transaction hands out: the change counter (`meta.seq`, one value
/// per transaction) and the arrival order of deliveries (`deliveries.seq`).
pub(super) struct Seqs {
    pub(super) change: i64,
    pub(super) delivery: i64,
}

impl Seqs {
    /// `change`: the transaction's value of the change counter ([`next_seq`]).
    fn start(tx: &dyn Db, change: i64) -> Result<Seqs> {
        let delivery = tx
            .one("SELECT COALESCE(MAX(seq), 0) FROM deliveries", args![])
            .context("read the arrival counter")?
            .i64(0)?;
        Ok(Seqs { change, delivery })
    }
}

/// Bumps the change counter and returns its new value: the first statement of every
/// write transaction.
/// Refuses to write to a store whose schema is newer than this build's: the error is
/// retryable, so that a webhook is answered 503 and Dodo's retry finds an upgraded
/// instance.
fn check_schema_version(tx: &dyn Db) -> Result<()> {
    let (sql, supported) = match tx.backend() {
        Backend::Sqlite => (
            "SELECT user_version FROM pragma_user_version",
            super::sqlite::VERSION,
        ),
        #[cfg(feature = "postgres")]
        Backend::Postgres => (
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            super::postgres::VERSION,
        ),
        #[cfg(not(feature = "postgres"))]
        Backend::Postgres => return Ok(()),
    };
    let found = tx
        .one(sql, args![])
        .context("read the schema version")?
        .i64(0)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    Ok(())
}

pub(super) fn next_seq(tx: &dyn Db) -> Result<i64> {
    tx.one(
        "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
        args![],
    )
    .context("bump the change counter")?
    .i64(0)
}

/// An object's stored state row.
pub(super) struct Head {
    pub(super) state_key: VersionKey,
    pub(super) max_key: VersionKey,
    pub(super) since: Timestamp,
    pub(super) body: String,
    /// Which pairs it backs.
    pub(super) links: Links,
}

pub(super) fn decode(key: &str) -> Result<VersionKey> {
    decode_key(key).ok_or_else(|| StoreError::Corrupt(format!("version key {key:?}")))
}

pub(super) fn load_head(tx: &dyn Db, kind: Kind, id: &str) -> Result<Option<Head>> {
    let row = tx
        .row(
            "SELECT state_key, max_key, since, body, customer_id, ref_id, status
               FROM objects WHERE kind = ?1 AND id = ?2",
            args![kind.as_str(), id],
        )
        .context("load the object")?;
    row.map(|mut r| {
        let since = r.str(2)?;
        Ok(Head {
            state_key: decode(r.str(0)?)?,
            max_key: decode(r.str(1)?)?,
            since: parse_timestamp(since)
                .ok_or_else(|| StoreError::Corrupt(format!("since {since:?}")))?,
            body: r.string(3)?,
            links: Links {
                customer_id: r.opt_string(4)?,
                ref_id: r.opt_string(5)?,
                status: r.string(6)?,
            },
        })
    })
    .transpose()
}

/// Writes an object's state row. `exists`: the object has a row already (its update is
/// then cheaper, see [`upsert_object_keyed`]).
pub(super) fn upsert_object<T: Stored>(
    tx: &dyn Db,
    id: &str,
    state: &Current<T>,
    max_key: &VersionKey,
    delivery_id: &str,
    seq: i64,
    exists: bool,
) -> Result<()> {
    let (state_key, max_key) = (state.snap.key.encode(), max_key.encode());
    let keys = (state_key.as_str(), max_key.as_str());
    upsert_object_keyed(tx, id, state, keys, delivery_id, seq, exists, None)
}

/// [`upsert_object`] with the state's and the newest key already encoded.
///
/// SQLite rewrites the entry of every index on a column an `UPDATE` sets, changed or
/// not, and so dirties a page of each. When the object exists and its lookup columns
/// (customer, ref, grant links) stay as they are, which is most updates, only the other
/// columns are set: four fewer index pages written per update (only `objects_seq` is
/// rewritten). (PostgreSQL skips
/// unchanged index entries by itself, and pays per statement: one upsert there.)
///
/// `json`: the state's body as JSON when already made (see [`ObjectText::of`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn upsert_object_keyed<T: Stored>(
    tx: &dyn Db,
    id: &str,
    state: &Current<T>,
    keys: (&str, &str),
    delivery_id: &str,
    seq: i64,
    exists: bool,
    json: Option<&str>,
) -> Result<()> {
    let text = ObjectText::of(state, json)?;
    write_object(
        tx,
        &object_args(id, state, keys, delivery_id, seq, &text),
        exists,
    )
}

/// The columns of an object's row, in the order [`object_args`] gives their values.
macro_rules! object_columns {
    () => {
        "kind, id, customer_id, ref_id, status, as_of, since, state_key, max_key, delivery_id,
         body, seq, grant_subscription_id, grant_payment_id"
    };
}
pub(super) use object_columns;

/// How many of [`object_columns`] are the row's key (kind, id).
pub(super) const OBJECT_KEY_COLUMNS: usize = 2;

/// Where `seq` (the change counter value of the row's last write) is among
/// [`object_columns`]: not part of what the row says.
pub(super) const OBJECT_SEQ_COLUMN: usize = 11;

/// The text an object's row holds beside its borrowed values: the state as JSON and
/// its two instants.
pub(super) struct ObjectText<'j> {
    body: std::borrow::Cow<'j, str>,
    as_of: String,
    since: String,
}

impl<'j> ObjectText<'j> {
    /// The text of `state`'s row; `json`, if given, must be `state.snap.body` as JSON
    /// (made ahead of the writer: [`crate::event::Event::state_json`]).
    pub(super) fn of<T: Stored>(state: &Current<T>, json: Option<&'j str>) -> Result<Self> {
        let body = match json {
            Some(json) => json.into(),
            None => serde_json::to_string(&state.snap.body)
                .map_err(|e| StoreError::Corrupt(format!("encode {}: {e}", T::KIND)))?
                .into(),
        };
        Ok(ObjectText {
            body,
            as_of: format_timestamp(&state.snap.key.at),
            since: format_timestamp(&state.since),
        })
    }
}

/// The values of an object's row, in the order of [`object_columns`].
pub(super) fn object_args<'a, T: Stored>(
    id: &'a str,
    state: &'a Current<T>,
    (state_key, max_key): (&'a str, &'a str),
    delivery_id: &'a str,
    seq: i64,
    text: &'a ObjectText<'_>,
) -> [Arg<'a>; 14] {
    let b = &state.snap.body;
    let (grant_subscription, grant_payment) = b.grant_links();
    *args![
        T::KIND.as_str(),
        id,
        b.customer_id(),
        b.ref_id(),
        b.status_name(),
        &text.as_of,
        &text.since,
        state_key,
        max_key,
        delivery_id,
        &*text.body,
        seq,
        grant_subscription,
        grant_payment,
    ]
}

/// Writes an object's row from the values [`object_args`] gives (one numbering for both
/// statements). `exists`: see [`upsert_object_keyed`].
pub(super) fn write_object(tx: &dyn Db, values: &[Arg<'_>; 14], exists: bool) -> Result<()> {
    if exists && tx.backend() == Backend::Sqlite {
        let updated = tx
            .exec(
                "UPDATE objects SET status = ?5, as_of = ?6, since = ?7, state_key = ?8,
                        max_key = ?9, delivery_id = ?10, body = ?11, seq = ?12
                  WHERE kind = ?1 AND id = ?2 AND customer_id IS NOT DISTINCT FROM ?3
                    AND ref_id IS NOT DISTINCT FROM ?4
                    AND grant_subscription_id IS NOT DISTINCT FROM ?13
                    AND grant_payment_id IS NOT DISTINCT FROM ?14",
                values,
            )
            .context("write the object")?;
        if updated == 1 {
            return Ok(());
        }
    }
    tx.exec(
        concat!(
            "INSERT INTO objects (",
            object_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (kind, id) DO UPDATE SET customer_id = excluded.customer_id,
                 ref_id = excluded.ref_id, status = excluded.status, as_of = excluded.as_of,
                 since = excluded.since, state_key = excluded.state_key,
                 max_key = excluded.max_key, delivery_id = excluded.delivery_id,
                 body = excluded.body, seq = excluded.seq,
                 grant_subscription_id = excluded.grant_subscription_id,
                 grant_payment_id = excluded.grant_payment_id"
        ),
        values,
    )
    .context("write the object")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Delivery;
    use crate::store::{ReadStore, Reader};

    const GRANT: &str = include_str!("../../tests/data/events/entitlement_grant.delivered.json");

    fn delivery(id: &str, body: &str) -> Prepared {
        let at = parse_timestamp("2026-06-15T08:00:00Z").expect("instant");
        Prepared::new(Delivery::new(id, body, at))
    }

    fn revoked() -> String {
        GRANT
            .replace("\"Delivered\"", "\"Revoked\"")
            .replace("entitlement_grant.delivered", "entitlement_grant.revoked")
            .replace(
                "\"revoked_at\": null",
                "\"revoked_at\": \"2026-05-02T10:00:00Z\"",
            )
            .replace(
                "10:00:00.250Z\",\n    \"delivered_at",
                "10:00:01Z\",\n    \"delivered_at",
            )
    }

    /// A writer on a new store in `dir`, its syncs deferred: the store's path, the
    /// writer, the log handle it gave out.
    fn deferred(
        dir: &tempfile::TempDir,
    ) -> Result<(std::path::PathBuf, Writer, Box<dyn super::super::SyncLog>)> {
        let path = dir.path().join("e.db");
        let mut writer = Writer::open(&path)?;
        let log = writer.defer_sync().expect("SQLite defers");
        Ok((path, writer, log))
    }

    /// The object rows of a store, every column but `seq`, in key order.
    fn object_rows(writer: &Writer) -> Vec<Vec<Option<String>>> {
        let conn = writer.db.as_sqlite().expect("sqlite");
        let mut stmt = conn
            .prepare(
                "SELECT kind, id, customer_id, ref_id, status, as_of, since, state_key, max_key,
                        delivery_id, body, grant_subscription_id, grant_payment_id
                   FROM objects ORDER BY kind, id",
            )
            .expect("prepare");
        stmt.query_map([], |r| (0..13).map(|i| r.get(i)).collect())
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// A writer on a fresh store in a directory of its own (which goes when dropped).
    fn scratch() -> Result<(tempfile::TempDir, Writer)> {
        let dir = tempfile::tempdir().expect("dir");
        let writer = Writer::open(&dir.path().join("e.db"))?;
        Ok((dir, writer))
    }

    /// The JSON made ahead of the writer is the JSON the writer makes: every real-shaped
    /// payload, ingested once with it and once without, leaves the same object rows.
    #[test]
    fn state_json_made_ahead_writes_the_rows_the_writer_would() -> Result<()> {
        let ((_with_dir, mut with), (_without_dir, mut without)) = (scratch()?, scratch()?);
        let mut made_ahead = 0;
        for dir in ["events", "quirks"] {
            let dir = format!("{}/tests/data/{dir}", env!("CARGO_MANIFEST_DIR"));
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .expect("fixtures")
                .map(|e| e.expect("fixture").path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            paths.sort();
            for path in paths {
                let body = std::fs::read_to_string(&path).expect("read");
                let id = format!("msg_{}", path.display());
                let ahead = delivery(&id, &body);
                let mut plain = ahead.clone();
                made_ahead += usize::from(plain.state_json.take().is_some());
                let a = with.apply_batch(vec![ahead])?;
                let b = without.apply_batch(vec![plain])?;
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{}", path.display());
            }
        }
        assert!(
            made_ahead >= 30,
            "only {made_ahead} payloads had their JSON made ahead"
        );
        let rows = object_rows(&with);
        assert!(rows.len() >= 20, "{} objects", rows.len());
        assert_eq!(rows, object_rows(&without));
        Ok(())
    }

    /// A caller that replaces a prepared delivery's body and drops its parse, as the
    /// field docs allow, gets the new body stored: the JSON made ahead for the old body
    /// goes with the old parse.
    #[test]
    fn a_replaced_body_is_stored_as_itself_not_as_the_json_made_ahead() -> Result<()> {
        let ((_dir, mut writer), (_direct_dir, mut direct)) = (scratch()?, scratch()?);
        let body = revoked();
        let mut p = delivery("msg_1", GRANT);
        p.delivery.body = body.clone().into_bytes();
        p.body_sha256 = delivery("msg_1", &body).body_sha256;
        p.parsed = None;
        let a = writer.apply_batch(vec![p])?;
        let b = direct.apply_batch(vec![delivery("msg_1", &body)])?;
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let rows = object_rows(&writer);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows,
            object_rows(&direct),
            "stored as the new body alone is"
        );
        Ok(())
    }

    /// Deferred syncs: the connection commits at `synchronous=NORMAL`, the log handle
    /// syncs the file for real, and a batch is stored as usual.
    #[test]
    fn a_deferred_writer_commits_at_normal_and_its_log_syncs_the_file() -> Result<()> {
        let dir = tempfile::tempdir().expect("dir");
        let mut writer = Writer::open(&dir.path().join("e.db"))?;
        let level = |w: &Writer| -> i64 {
            let conn = w.db.as_sqlite().expect("sqlite");
            conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .expect("pragma")
        };
        assert_eq!(level(&writer), 2, "FULL before");
        let mut log = writer.defer_sync().expect("SQLite defers");
        assert!(writer.defer_sync().is_none(), "taken once");
        assert_eq!(level(&writer), 1, "NORMAL after");
        let results = writer.apply_batch(vec![delivery("msg_1", GRANT)])?;
        assert!(results[0].is_ok(), "{results:?}");
        log.sync()?;
        // The writer's own handle synced nothing yet: a batch leaves it to the caller.
        assert_eq!(writer.deferred.as_ref().map(|l| l.syncs), Some(0));
        // Every other write syncs before it returns.
        writer.advance(parse_timestamp("2026-06-16T08:00:00Z").expect("instant"))?;
        assert_eq!(writer.deferred.as_ref().map(|l| l.syncs), Some(1));
        Ok(())
    }

    /// After a failed sync nothing more is written: the kernel may have dropped what
    /// the failed sync was to make durable, so a later "stored" could not be trusted.
    #[test]
    fn after_a_failed_sync_the_writer_refuses_every_write() -> Result<()> {
        let dir = tempfile::tempdir().expect("dir");
        let (path, mut writer, log) = deferred(&dir)?;
        writer.apply_batch(vec![delivery("msg_1", GRANT)])?;
        writer.deferred.as_ref().expect("deferred").poison();
        drop(log);
        let refused = |r: Result<()>| matches!(r, Err(StoreError::Sync(_)));
        assert!(refused(
            writer
                .apply_batch(vec![delivery("msg_2", &revoked())])
                .map(drop)
        ));
        let now = parse_timestamp("2026-06-16T08:00:00Z").expect("instant");
        assert!(refused(writer.advance(now).map(drop)));
        assert!(refused(writer.set_forward_cursor(1)));
        assert!(refused(writer.accept("msg_1", now).map(drop)));
        drop(writer);
        // Nothing of msg_2 reached the store.
        let mut reader = Reader::open(&path)?;
        assert_eq!(reader.changes(0, 100)?.len(), 1);
        Ok(())
    }

    /// A reader of the feed syncs the log before it hands out a change it has not
    /// seen synced, once per new change, not on every read.
    #[test]
    fn the_feed_syncs_the_log_before_it_hands_out_new_changes() -> Result<()> {
        let dir = tempfile::tempdir().expect("dir");
        let (path, mut writer, _log) = deferred(&dir)?;
        let mut reader = Reader::open(&path)?;
        let syncs = |r: &Reader| r.log.as_ref().map(|(log, _)| log.syncs);
        assert!(reader.changes(0, 100)?.is_empty());
        assert_eq!(
            syncs(&reader),
            Some(0),
            "nothing to hand out, nothing synced"
        );
        writer.apply_batch(vec![delivery("msg_1", GRANT)])?;
        assert_eq!(reader.changes(0, 100)?.len(), 1);
        assert_eq!(syncs(&reader), Some(1));
        assert_eq!(reader.changes(0, 100)?.len(), 1);
        assert_eq!(syncs(&reader), Some(1), "seen synced already");
        writer.apply_batch(vec![delivery("msg_2", &revoked())])?;
        let changes = reader.changes(0, 100)?;
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(syncs(&reader), Some(2));
        Ok(())
    }
}
