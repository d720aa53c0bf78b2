//! The access-change feed, written inside the writer's transactions.
//!
//! After a delivery changed an object's state, the writer asks this module to
//! re-evaluate the pairs that object backs: a grant its own pair (and the one it left, if
//! an override moved it), a subscription or a payment the pairs of the grants linked to
//! it, a refund or a dispute the pairs of its payment's grants. Found through indexes,
//! never by a scan. Each pair's answer is computed by the same pure code as every other
//! answer ([`Index::access`] over the pair's rows), compared with the answer the pair
//! last recorded ([`change::diff`]), and a change is written only when the triple
//! differs. The same step stores when time alone may next change the answer
//! ([`crate::access::next_change`]); [`advance`] records those changes when they are due.

use super::sql::{args, key_range, Db, Row};
use super::{Context, Result, StoreError};
use crate::access::{Access, Policy};
use crate::change::{self, Answer, Cause, Change, Diff};
use crate::event::Kind;
use crate::index::{Decoded, Index};
use crate::store::ObjectRow;
use crate::wire::{format_timestamp, parse_timestamp, Timestamp};
use crate::DisputePolicy;
use chrono::{DateTime, Datelike, Utc};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// A (customer, entitlement) pair.
pub(super) type Pair = (String, String);

/// What one write transaction evaluates answers with: the feed's policy and its clock,
/// which never runs backwards (a delivery received "earlier" than one already evaluated
/// is evaluated at the later instant).
pub(super) struct Feed {
    pub(super) policy: Policy,
    clock: Timestamp,
    /// The earliest `answers.due_at` (text): read once per transaction and kept up to
    /// date by [`record`], so that checking for due pairs before every delivery costs no
    /// query. (A range query with a bound parameter would be re-prepared by SQLite on
    /// every execution.)
    next_due: RefCell<Option<String>>,
}

impl Feed {
    /// Starts the feed's part of a write transaction at `now`.
    pub(super) fn start(tx: &dyn Db, policy: Policy, now: Timestamp) -> Result<Feed> {
        let micros = tx
            .row("SELECT value FROM meta WHERE key = 'feed_clock'", args![])
            .context("read the feed clock")?
            .map(|r| r.i64(0))
            .transpose()?
            .unwrap_or(0);
        let stored = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default();
        Ok(Feed {
            policy,
            clock: now.max(stored),
            next_due: RefCell::new(min_due(tx)?),
        })
    }

    fn note_due(&self, due: &str) {
        let mut next = self.next_due.borrow_mut();
        if next.as_deref().is_none_or(|n| due < n) {
            *next = Some(due.to_string());
        }
    }

    /// The instant to evaluate something that happened at `now`.
    pub(super) fn tick(&mut self, now: Timestamp) -> Timestamp {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// Records the clock; call before the commit.
    pub(super) fn finish(&self, tx: &dyn Db) -> Result<()> {
        tx.exec(
            "UPDATE meta SET value = ?1 WHERE key = 'feed_clock'",
            args![self.clock.timestamp_micros()],
        )
        .context("write the feed clock")?;
        Ok(())
    }
}

/// What of an object's state row says which pairs it backs, and whether a subscription
/// can bear on an answer: its `customer_id`, `ref_id` and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Links {
    pub(super) customer_id: Option<String>,
    pub(super) ref_id: Option<String>,
    pub(super) status: String,
}

/// The pairs an object's state backs, as its row says now. `kind`/`id` of a kind the
/// access index does not hold back no pair.
pub(super) fn pairs_of(tx: &dyn Db, kind: Kind, id: &str) -> Result<BTreeSet<Pair>> {
    if !kind.in_index() {
        return Ok(BTreeSet::new());
    }
    let row = tx
        .row(
            "SELECT customer_id, ref_id, status FROM objects WHERE kind = ?1 AND id = ?2",
            args![kind.as_str(), id],
        )
        .context("read an object's links")?;
    let links = row
        .map(|mut r| {
            Ok::<_, StoreError>(Links {
                customer_id: r.opt_string(0)?,
                ref_id: r.opt_string(1)?,
                status: r.string(2)?,
            })
        })
        .transpose()?;
    pairs_from(tx, kind, id, links.as_ref())
}

/// The pairs an object with these links backs (`None`: no state, no pair). A grant
/// names its own; the others are found through the grants' link columns.
pub(super) fn pairs_from(
    tx: &dyn Db,
    kind: Kind,
    id: &str,
    links: Option<&Links>,
) -> Result<BTreeSet<Pair>> {
    let mut pairs = BTreeSet::new();
    let Some(links) = links.filter(|_| kind.in_index()) else {
        return Ok(pairs);
    };
    let linked = |sql: &str, key: &str, pairs: &mut BTreeSet<Pair>| -> Result<()> {
        tx.for_each(sql, args![key], &mut |mut r| {
            pairs.insert((r.string(0)?, r.string(1)?));
            Ok(())
        })
        .context("read the grants an object backs")
    };
    const BY_SUBSCRIPTION: &str = "SELECT customer_id, ref_id FROM objects
        WHERE grant_subscription_id = ?1 AND kind = 'grant'";
    const BY_PAYMENT: &str = "SELECT customer_id, ref_id FROM objects
        WHERE grant_payment_id = ?1 AND kind = 'grant'";
    match kind {
        Kind::Grant => {
            if let (Some(c), Some(e)) = (&links.customer_id, &links.ref_id) {
                pairs.insert((c.clone(), e.clone()));
            }
        }
        Kind::Subscription => linked(BY_SUBSCRIPTION, id, &mut pairs)?,
        Kind::Payment => linked(BY_PAYMENT, id, &mut pairs)?,
        Kind::Refund | Kind::Dispute => {
            if let Some(payment) = &links.ref_id {
                linked(BY_PAYMENT, payment, &mut pairs)?;
            }
        }
        Kind::LicenseKey | Kind::CreditEntry | Kind::CreditBalanceLow => {}
    }
    Ok(pairs)
}

/// The state row a delivery has just written in this transaction, as the access index
/// reads it: evaluating a pair takes this row from here instead of decoding its JSON
/// again. Both give the same row
/// (`rebuild::tests::a_folded_state_decodes_as_its_stored_row_does`).
pub(super) struct Fresh {
    pub(super) kind: Kind,
    pub(super) id: String,
    pub(super) decoded: Decoded,
}

/// An index of one pair's rows (rows that do not decode are skipped, as the engine's
/// index skips them); the row `fresh` names is taken as `fresh` says.
fn pair_index(
    tx: &dyn Db,
    customer: &str,
    entitlement: &str,
    fresh: Option<&Fresh>,
) -> Result<Index> {
    let mut index = Index::default();
    let rows = super::read::pair_rows(tx, customer, entitlement).context("read a pair's rows")?;
    for row in rows {
        let own = fresh.filter(|f| f.kind.as_str() == row.kind && f.id == row.id);
        let decoded = match own {
            Some(f) => Ok(f.decoded.clone()),
            None => Index::decode(&row),
        };
        if let Ok(decoded) = decoded {
            index.apply_decoded(decoded);
        }
    }
    Ok(index)
}

/// What a pair last recorded.
struct Recorded {
    answer: Answer,
    grant_id: Option<String>,
    due_at: Option<String>,
}

fn recorded(tx: &dyn Db, customer: &str, entitlement: &str) -> Result<Option<Recorded>> {
    tx.row(
        "SELECT allowed, status, reason, grant_id, due_at FROM answers
          WHERE customer_id = ?1 AND entitlement_id = ?2",
        args![customer, entitlement],
    )
    .context("read a pair's recorded answer")?
    .map(|mut r| Recorded::from_row(&mut r, 0))
    .transpose()
}

impl Recorded {
    /// From the columns allowed, status, reason, grant_id, due_at, starting at `at`.
    fn from_row(r: &mut Row, at: usize) -> Result<Recorded> {
        Ok(Recorded {
            answer: Answer {
                allowed: r.bool(at)?,
                status: r.string(at + 1)?,
                reason: r.opt_string(at + 2)?,
            },
            grant_id: r.opt_string(at + 3)?,
            due_at: r.opt_string(at + 4)?,
        })
    }
}

/// The recorded answers of the pairs after `after` (from the first if `None`) up to and
/// with `upto` (to the last if `None`), by pair.
fn recorded_range(
    tx: &dyn Db,
    after: Option<(&str, &str)>,
    upto: Option<(&str, &str)>,
) -> Result<BTreeMap<Pair, Recorded>> {
    let (range, values) = key_range(("customer_id", "entitlement_id"), after, upto);
    let sql = format!(
        "SELECT customer_id, entitlement_id, allowed, status, reason, grant_id, due_at
           FROM answers{range}"
    );
    let mut out = BTreeMap::new();
    tx.for_each(&sql, &values, &mut |mut r| {
        let pair = (r.string(0)?, r.string(1)?);
        out.insert(pair, Recorded::from_row(&mut r, 2)?);
        Ok(())
    })
    .context("read the recorded answers")?;
    Ok(out)
}

/// `t` rounded up to the microsecond (what the store keeps of an instant).
fn ceil_micros(t: Timestamp) -> Option<Timestamp> {
    match t.timestamp_subsec_nanos() % 1000 {
        0 => Some(t),
        rest => t.checked_add_signed(chrono::Duration::nanoseconds(i64::from(1000 - rest))),
    }
}

/// The last instant the store can write back (see [`crate::wire::parse_timestamp`]).
fn storable(t: Timestamp) -> Option<Timestamp> {
    (t.year() <= 9999).then_some(t)
}

/// Re-evaluates one pair from its rows at `at` (the one `fresh` names taken from it) and
/// records a change if its answer differs from the recorded one. Returns whether it
/// recorded one.
pub(super) fn evaluate(
    tx: &dyn Db,
    pair: &Pair,
    feed: &Feed,
    at: Timestamp,
    fresh: Option<&Fresh>,
    cause: impl FnOnce(&Answer, &Answer) -> Cause,
) -> Result<bool> {
    let (customer, entitlement) = (pair.0.as_str(), pair.1.as_str());
    let index = pair_index(tx, customer, entitlement, fresh)?;
    let access = index.access(customer, entitlement, &feed.policy, at);
    let due = index.next_change(customer, entitlement, &feed.policy, at);
    record(tx, feed, &access, due, at, cause)
}

/// Records `access` (the pair's answer at `at`; time may next change it at `due`).
fn record(
    tx: &dyn Db,
    feed: &Feed,
    access: &Access,
    due: Option<Timestamp>,
    at: Timestamp,
    cause: impl FnOnce(&Answer, &Answer) -> Cause,
) -> Result<bool> {
    let old = recorded(tx, &access.customer_id, &access.entitlement_id)?;
    record_over(tx, feed, access, due, at, old, cause)
}

/// [`record`] over the pair's recorded answer `old`, already read.
fn record_over(
    tx: &dyn Db,
    feed: &Feed,
    access: &Access,
    due: Option<Timestamp>,
    at: Timestamp,
    old: Option<Recorded>,
    cause: impl FnOnce(&Answer, &Answer) -> Cause,
) -> Result<bool> {
    let (customer, entitlement) = (access.customer_id.as_str(), access.entitlement_id.as_str());
    let new = Answer::of(access);
    // Stored to the microsecond, rounded up: evaluated at the stored instant, the change
    // has happened. Never at or before `at`, so that `advance` always moves on.
    let due = due
        .and_then(ceil_micros)
        .filter(|t| *t > at)
        .and_then(storable)
        .map(|t| format_timestamp(&t));
    if let Some(due) = &due {
        feed.note_due(due);
    }
    let diff = change::diff(old.as_ref().map(|r| &r.answer), &new);
    let changed = matches!(diff, Diff::Changed { .. });
    if let Diff::Changed { previous } = diff {
        let cause = cause(&previous, &new);
        let (delivery_id, event_type, detail) = cause.columns();
        tx.exec(
            "INSERT INTO changes (customer_id, entitlement_id, allowed, status, reason, grant_id,
                 prev_allowed, prev_status, prev_reason, at, cause, delivery_id, event_type, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            args![
                customer,
                entitlement,
                new.allowed,
                &new.status,
                &new.reason,
                &access.grant_id,
                previous.allowed,
                &previous.status,
                &previous.reason,
                &format_timestamp(&at),
                cause.kind(),
                delivery_id,
                event_type,
                detail,
            ],
        )
        .context("record an access change")?;
    }
    let same_row = old
        .as_ref()
        .is_some_and(|r| r.answer == new && r.grant_id == access.grant_id && r.due_at == due);
    if same_row {
        return Ok(changed);
    }
    if new == Answer::none() && due.is_none() {
        tx.exec(
            "DELETE FROM answers WHERE customer_id = ?1 AND entitlement_id = ?2",
            args![customer, entitlement],
        )
        .context("forget a pair's answer")?;
    } else {
        tx.exec(
            "INSERT INTO answers (customer_id, entitlement_id, allowed, status, reason, grant_id, due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (customer_id, entitlement_id) DO UPDATE SET allowed = excluded.allowed,
                 status = excluded.status, reason = excluded.reason,
                 grant_id = excluded.grant_id, due_at = excluded.due_at",
            args![
                customer,
                entitlement,
                new.allowed,
                &new.status,
                &new.reason,
                &access.grant_id,
                &due
            ],
        )
        .context("record a pair's answer")?;
    }
    Ok(changed)
}

/// How many due pairs [`advance`] reads at a time.
const DUE_CHUNK: usize = 256;

/// Records the changes time alone made up to `now`, each at the instant it happened.
/// Returns how many it recorded.
pub(super) fn advance(tx: &dyn Db, feed: &Feed, now: Timestamp) -> Result<usize> {
    let now_text = format_timestamp(&now);
    let due_now = feed
        .next_due
        .borrow()
        .as_deref()
        .is_some_and(|d| d <= now_text.as_str());
    if !due_now {
        return Ok(0);
    }
    let mut recorded = 0;
    loop {
        let due: Vec<(String, String, String)> = tx
            .rows(
                "SELECT customer_id, entitlement_id, due_at FROM answers INDEXED BY answers_due
                  WHERE due_at IS NOT NULL AND due_at <= ?1 ORDER BY due_at LIMIT ?2",
                args![&now_text, DUE_CHUNK as i64],
            )
            .context("read the due answers")?
            .into_iter()
            .map(|mut r| Ok((r.string(0)?, r.string(1)?, r.string(2)?)))
            .collect::<Result<_>>()?;
        if due.is_empty() {
            *feed.next_due.borrow_mut() = min_due(tx)?;
            return Ok(recorded);
        }
        for (customer, entitlement, at) in due {
            let at = parse_timestamp(&at)
                .ok_or_else(|| StoreError::Corrupt(format!("answers.due_at {at:?}")))?;
            // `next_change` only ever names instants after `at`: every pass moves on.
            let pair = (customer, entitlement);
            if evaluate(tx, &pair, feed, at, None, Cause::of_time)? {
                recorded += 1;
            }
        }
    }
}

/// The earliest `answers.due_at`, as stored.
fn min_due(conn: &dyn Db) -> Result<Option<String>> {
    // The index holds only the answers with a due instant, and SQLite uses it only when
    // the query says so (MIN ignores NULLs: the same answer).
    conn.one(
        "SELECT MIN(due_at) FROM answers INDEXED BY answers_due WHERE due_at IS NOT NULL",
        args![],
    )
    .context("read the next due instant")?
    .opt_string(0)
}

/// The earliest instant at which time alone may change some answer.
pub(super) fn next_due(conn: &dyn Db) -> Result<Option<Timestamp>> {
    let due = min_due(conn)?;
    due.map(|t| parse_timestamp(&t).ok_or_else(|| StoreError::Corrupt(format!("due_at {t:?}"))))
        .transpose()
}

/// Re-evaluates every pair (those with a grant, and those that recorded an answer) at
/// `at`, from one index of every row: for a policy change and after a migration.
pub(super) fn evaluate_all(
    tx: &dyn Db,
    feed: &Feed,
    at: Timestamp,
    cause: &Cause,
) -> Result<usize> {
    let mut index = Index::default();
    let sql = format!(
        "SELECT kind, id, as_of, since, body FROM objects NOT INDEXED WHERE kind IN ({})",
        super::read::index_kinds()
    );
    tx.for_each(&sql, args![], &mut |r| {
        if let Ok(decoded) = Index::decode(&ObjectRow::from_row(r)?) {
            index.apply_decoded(decoded);
        }
        Ok(())
    })
    .context("read every object")?;
    evaluate_index(tx, feed, &index, at, cause)
}

/// [`evaluate_all`] with the index of every row at hand (a rebuild builds it from the
/// states it folds, and so reads and parses no row again).
pub(super) fn evaluate_index(
    tx: &dyn Db,
    feed: &Feed,
    index: &Index,
    at: Timestamp,
    cause: &Cause,
) -> Result<usize> {
    // Pair order, chunk by chunk: the index's pairs, and the recorded answers of the
    // chunk's range of pairs read in one statement (pairs only recorded are evaluated
    // too: the index may no longer back them). The last range is open.
    let pairs: BTreeSet<(&str, &str)> = index.pairs().collect();
    let mut pairs = pairs.into_iter().peekable();
    let mut after: Option<(&str, &str)> = None;
    let mut changed = 0;
    loop {
        let chunk: Vec<(&str, &str)> = pairs.by_ref().take(PAIR_CHUNK).collect();
        let more = pairs.peek().is_some();
        let upto = if more { chunk.last().copied() } else { None };
        let mut recorded = recorded_range(tx, after, upto)?.into_iter().peekable();
        let mut chunk_pairs = chunk.iter().copied().peekable();
        loop {
            let from_index = chunk_pairs.peek().copied();
            let from_store = recorded.peek().map(|((c, e), _)| (c.as_str(), e.as_str()));
            let (pair, old) = match (from_index, from_store) {
                (None, None) => break,
                (Some(p), Some(r)) if p == r => {
                    chunk_pairs.next();
                    let (pair, old) = recorded.next().expect("peeked");
                    (pair, Some(old))
                }
                (Some(p), r) if r.is_none_or(|r| p < r) => {
                    chunk_pairs.next();
                    ((p.0.to_string(), p.1.to_string()), None)
                }
                _ => {
                    let (pair, old) = recorded.next().expect("peeked");
                    (pair, Some(old))
                }
            };
            let access = index.access(&pair.0, &pair.1, &feed.policy, at);
            let due = index.next_change(&pair.0, &pair.1, &feed.policy, at);
            if record_over(tx, feed, &access, due, at, old, |_, _| cause.clone())? {
                changed += 1;
            }
        }
        if !more {
            break;
        }
        after = upto;
    }
    Ok(changed)
}

/// Pairs [`evaluate_index`] evaluates (and whose recorded answers it reads) at a time.
const PAIR_CHUNK: usize = 4096;

/// Changes after `after`, oldest first, at most `limit`.
pub(super) fn changes(conn: &dyn Db, after: i64, limit: usize) -> Result<Vec<Change>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.rows(
        "SELECT seq, customer_id, entitlement_id, allowed, status, reason, grant_id,
                prev_allowed, prev_status, prev_reason, at, cause, delivery_id, event_type, detail
           FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        args![after, limit],
    )
    .context("read the change feed")?
    .into_iter()
    .map(change_from_row)
    .collect()
}

fn change_from_row(mut r: Row) -> Result<Change> {
    let seq = r.i64(0)?;
    let at = r.str(10)?;
    let at = parse_timestamp(at)
        .ok_or_else(|| StoreError::Corrupt(format!("change {seq} at {at:?}")))?;
    let kind = r.string(11)?;
    let cause = Cause::from_columns(
        &kind,
        r.opt_string(12)?,
        r.opt_string(13)?,
        r.opt_string(14)?,
    )
    .ok_or_else(|| StoreError::Corrupt(format!("change {seq} cause {kind:?}")))?;
    Ok(Change {
        seq,
        customer_id: r.string(1)?,
        entitlement_id: r.string(2)?,
        allowed: r.bool(3)?,
        status: r.string(4)?,
        reason: r.opt_string(5)?,
        grant_id: r.opt_string(6)?,
        previous: Answer {
            allowed: r.bool(7)?,
            status: r.string(8)?,
            reason: r.opt_string(9)?,
        },
        at,
        cause,
    })
}

/// The newest seq in the feed (0 when empty).
pub(super) fn last_seq(conn: &dyn Db) -> Result<i64> {
    conn.one("SELECT COALESCE(MAX(seq), 0) FROM changes", args![])
        .context("read the newest change")?
        .i64(0)
}

/// The forwarder's cursor: the last seq it delivered.
pub(super) fn forward_cursor(conn: &dyn Db) -> Result<i64> {
    conn.one(
        "SELECT COALESCE((SELECT value FROM meta WHERE key = 'forward_cursor'), 0)",
        args![],
    )
    .context("read the forward cursor")?
    .i64(0)
}

/// Moves the forwarder's cursor forward (never back).
pub(super) fn set_forward_cursor(tx: &dyn Db, seq: i64) -> Result<()> {
    tx.exec(
        "UPDATE meta SET value = ?1 WHERE key = 'forward_cursor' AND value < ?1",
        args![seq],
    )
    .context("write the forward cursor")?;
    Ok(())
}

/// The policy the feed was last computed under, if any was recorded.
pub(super) fn stored_policy(conn: &dyn Db) -> Result<Option<Policy>> {
    conn.row("SELECT value FROM settings WHERE key = 'policy'", args![])
        .context("read the feed's policy")?
        .map(|r| decode_policy(r.str(0)?))
        .transpose()
}

/// Records the policy the feed is computed under.
pub(super) fn store_policy(tx: &dyn Db, policy: &Policy) -> Result<()> {
    tx.exec(
        "INSERT INTO settings (key, value) VALUES ('policy', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![&encode_policy(policy)],
    )
    .context("record the feed's policy")?;
    Ok(())
}

/// A checkpoint saved under `name` (in `settings`, as `checkpoint:<name>`): text the
/// caller encodes (reconcile's sweep position).
pub(super) fn checkpoint(conn: &dyn Db, name: &str) -> Result<Option<String>> {
    conn.row(
        "SELECT value FROM settings WHERE key = ?1",
        args![&format!("checkpoint:{name}")],
    )
    .context("read a checkpoint")?
    .map(|r| r.str(0).map(str::to_string))
    .transpose()
}

/// Saves (`Some`) or clears (`None`) the checkpoint `name`.
pub(super) fn set_checkpoint(tx: &dyn Db, name: &str, value: Option<&str>) -> Result<()> {
    let key = format!("checkpoint:{name}");
    match value {
        Some(v) => tx.exec(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            args![&key, v],
        ),
        None => tx.exec("DELETE FROM settings WHERE key = ?1", args![&key]),
    }
    .context("write a checkpoint")?;
    Ok(())
}

fn encode_policy(p: &Policy) -> String {
    serde_json::json!({
        "subscription_backstop": p.subscription_backstop,
        "on_hold_grace_seconds": p.on_hold_grace.map(|d| d.num_seconds()),
        "refund_denies": p.refund_denies,
        "disputes": p.disputes,
    })
    .to_string()
}

fn decode_policy(text: &str) -> Result<Policy> {
    let bad = || StoreError::Corrupt(format!("stored policy {text:?}"));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let flag = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(bad)
    };
    let grace = match v.get("on_hold_grace_seconds") {
        None | Some(serde_json::Value::Null) => None,
        Some(s) => Some(chrono::Duration::seconds(s.as_i64().ok_or_else(bad)?)),
    };
    let disputes: DisputePolicy = v
        .get("disputes")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    Ok(Policy {
        subscription_backstop: flag("subscription_backstop")?,
        on_hold_grace: grace,
        refund_denies: flag("refund_denies")?,
        disputes,
    })
}

/// Whether the store holds objects the feed has never evaluated (set by the migration
/// that added the feed); cleared by [`clear_needs_evaluation`].
pub(super) fn needs_evaluation(conn: &dyn Db) -> Result<bool> {
    conn.one(
        "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'needs_evaluation' AND value <> 0)",
        args![],
    )
    .context("read the evaluation flag")?
    .bool(0)
}

/// Flags the store for [`evaluate_all`] in the next write transaction.
pub(super) fn flag_needs_evaluation(tx: &dyn Db) -> Result<()> {
    tx.exec(
        "INSERT INTO meta (key, value) VALUES ('needs_evaluation', 1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![],
    )
    .context("flag the feed for evaluation")?;
    Ok(())
}

pub(super) fn clear_needs_evaluation(tx: &dyn Db) -> Result<()> {
    tx.exec("DELETE FROM meta WHERE key = 'needs_evaluation'", args![])
        .context("clear the evaluation flag")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_up_to_the_microsecond() {
        let t = parse_timestamp("2026-06-15T08:00:00.123456001Z").unwrap();
        assert_eq!(
            format_timestamp(&ceil_micros(t).unwrap()),
            "2026-06-15T08:00:00.123457Z"
        );
        let exact = parse_timestamp("2026-06-15T08:00:00.123456Z").unwrap();
        assert_eq!(ceil_micros(exact), Some(exact));
        assert_eq!(ceil_micros(DateTime::<Utc>::MAX_UTC), None);
    }

    #[test]
    fn a_policy_reads_back_as_written() {
        let policies = [
            Policy::default(),
            Policy {
                subscription_backstop: false,
                on_hold_grace: Some(chrono::Duration::hours(72)),
                refund_denies: false,
                disputes: DisputePolicy::OnOpened,
            },
        ];
        for p in policies {
            assert_eq!(decode_policy(&encode_policy(&p)).unwrap(), p);
        }
        assert!(decode_policy("{}").is_err());
    }
}
