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

use super::{Context, Result, StoreError};
use crate::access::{Access, Policy};
use crate::change::{self, Answer, Cause, Change, Diff};
use crate::event::Kind;
use crate::index::Index;
use crate::store::ObjectRow;
use crate::wire::{format_timestamp, parse_timestamp, Timestamp};
use crate::DisputePolicy;
use chrono::{DateTime, Datelike, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeSet;

/// A (customer, entitlement) pair.
pub(super) type Pair = (String, String);

/// What one write transaction evaluates answers with: the feed's policy and its clock,
/// which never runs backwards (a delivery received "earlier" than one already evaluated
/// is evaluated at the later instant).
pub(super) struct Feed {
    pub(super) policy: Policy,
    clock: Timestamp,
}

impl Feed {
    /// Starts the feed's part of a write transaction at `now`.
    pub(super) fn start(tx: &Connection, policy: Policy, now: Timestamp) -> Result<Feed> {
        let micros: i64 = tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'feed_clock'")?
            .query_row([], |r| r.get(0))
            .optional()
            .context("read the feed clock")?
            .unwrap_or(0);
        let stored = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default();
        Ok(Feed {
            policy,
            clock: now.max(stored),
        })
    }

    /// The instant to evaluate something that happened at `now`.
    pub(super) fn tick(&mut self, now: Timestamp) -> Timestamp {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// Records the clock; call before the commit.
    pub(super) fn finish(&self, tx: &Connection) -> Result<()> {
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'feed_clock'")?
            .execute([self.clock.timestamp_micros()])
            .context("write the feed clock")?;
        Ok(())
    }
}

/// The pairs an object's state backs, as its row says now. `kind`/`id` of a kind the
/// access index does not hold back no pair.
pub(super) fn pairs_of(tx: &Connection, kind: Kind, id: &str) -> Result<BTreeSet<Pair>> {
    let mut pairs = BTreeSet::new();
    if !kind.in_index() {
        return Ok(pairs);
    }
    let row: Option<(Option<String>, Option<String>)> = tx
        .prepare_cached("SELECT customer_id, ref_id FROM objects WHERE kind = ?1 AND id = ?2")?
        .query_row(params![kind.as_str(), id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .context("read an object's links")?;
    let Some((customer, ref_id)) = row else {
        return Ok(pairs);
    };
    let linked = |sql: &str, key: &str, pairs: &mut BTreeSet<Pair>| -> Result<()> {
        let mut stmt = tx.prepare_cached(sql)?;
        let rows = stmt.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for pair in rows {
            pairs.insert(pair.context("read the grants an object backs")?);
        }
        Ok(())
    };
    const BY_SUBSCRIPTION: &str = "SELECT customer_id, ref_id FROM objects
        WHERE kind = 'grant' AND json_extract(body, '$.subscription_id') = ?1";
    const BY_PAYMENT: &str = "SELECT customer_id, ref_id FROM objects
        WHERE kind = 'grant' AND json_extract(body, '$.payment_id') = ?1";
    match kind {
        Kind::Grant => {
            if let (Some(c), Some(e)) = (customer, ref_id) {
                pairs.insert((c, e));
            }
        }
        Kind::Subscription => linked(BY_SUBSCRIPTION, id, &mut pairs)?,
        Kind::Payment => linked(BY_PAYMENT, id, &mut pairs)?,
        Kind::Refund | Kind::Dispute => {
            if let Some(payment) = ref_id {
                linked(BY_PAYMENT, &payment, &mut pairs)?;
            }
        }
        Kind::LicenseKey | Kind::CreditEntry | Kind::CreditBalanceLow => {}
    }
    Ok(pairs)
}

/// The rows one pair's answer needs, inside the transaction (the same rows as
/// [`super::Reader::pair_rows`]).
fn pair_rows(tx: &Connection, customer: &str, entitlement: &str) -> Result<Vec<ObjectRow>> {
    let mut stmt = tx.prepare_cached(super::read::PAIR_ROWS)?;
    let rows = stmt.query_map(params![customer, entitlement], ObjectRow::from_row)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .context("read a pair's rows")
}

/// An index of one pair's rows (rows that do not decode are skipped, as the engine's
/// index skips them).
fn pair_index(tx: &Connection, customer: &str, entitlement: &str) -> Result<Index> {
    let mut index = Index::default();
    for row in pair_rows(tx, customer, entitlement)? {
        if let Ok(decoded) = Index::decode(&row) {
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

fn recorded(tx: &Connection, customer: &str, entitlement: &str) -> Result<Option<Recorded>> {
    tx.prepare_cached(
        "SELECT allowed, status, reason, grant_id, due_at FROM answers
          WHERE customer_id = ?1 AND entitlement_id = ?2",
    )?
    .query_row([customer, entitlement], |r| {
        Ok(Recorded {
            answer: Answer {
                allowed: r.get(0)?,
                status: r.get(1)?,
                reason: r.get(2)?,
            },
            grant_id: r.get(3)?,
            due_at: r.get(4)?,
        })
    })
    .optional()
    .context("read a pair's recorded answer")
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

/// Re-evaluates one pair from its rows at `at` and records a change if its answer
/// differs from the recorded one. Returns whether it recorded one.
pub(super) fn evaluate(
    tx: &Connection,
    pair: &Pair,
    policy: &Policy,
    at: Timestamp,
    cause: impl FnOnce(&Answer, &Answer) -> Cause,
) -> Result<bool> {
    let (customer, entitlement) = (pair.0.as_str(), pair.1.as_str());
    let index = pair_index(tx, customer, entitlement)?;
    let access = index.access(customer, entitlement, policy, at);
    let due = index.next_change(customer, entitlement, policy, at);
    record(tx, &access, due, at, cause)
}

/// Records `access` (the pair's answer at `at`; time may next change it at `due`).
fn record(
    tx: &Connection,
    access: &Access,
    due: Option<Timestamp>,
    at: Timestamp,
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
    let old = recorded(tx, customer, entitlement)?;
    let diff = change::diff(old.as_ref().map(|r| &r.answer), &new);
    let changed = matches!(diff, Diff::Changed { .. });
    if let Diff::Changed { previous } = diff {
        let cause = cause(&previous, &new);
        let (delivery_id, event_type, detail) = cause.columns();
        tx.prepare_cached(
            "INSERT INTO changes (customer_id, entitlement_id, allowed, status, reason, grant_id,
                 prev_allowed, prev_status, prev_reason, at, cause, delivery_id, event_type, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?
        .execute(params![
            customer,
            entitlement,
            new.allowed,
            new.status,
            new.reason,
            access.grant_id,
            previous.allowed,
            previous.status,
            previous.reason,
            format_timestamp(&at),
            cause.kind(),
            delivery_id,
            event_type,
            detail,
        ])
        .context("record an access change")?;
    }
    let same_row = old
        .as_ref()
        .is_some_and(|r| r.answer == new && r.grant_id == access.grant_id && r.due_at == due);
    if same_row {
        return Ok(changed);
    }
    if new == Answer::none() && due.is_none() {
        tx.prepare_cached("DELETE FROM answers WHERE customer_id = ?1 AND entitlement_id = ?2")?
            .execute([customer, entitlement])
            .context("forget a pair's answer")?;
    } else {
        tx.prepare_cached(
            "INSERT INTO answers (customer_id, entitlement_id, allowed, status, reason, grant_id, due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (customer_id, entitlement_id) DO UPDATE SET allowed = excluded.allowed,
                 status = excluded.status, reason = excluded.reason,
                 grant_id = excluded.grant_id, due_at = excluded.due_at",
        )?
        .execute(params![
            customer,
            entitlement,
            new.allowed,
            new.status,
            new.reason,
            access.grant_id,
            due
        ])
        .context("record a pair's answer")?;
    }
    Ok(changed)
}

/// How many due pairs [`advance`] reads at a time.
const DUE_CHUNK: usize = 256;

/// Records the changes time alone made up to `now`, each at the instant it happened.
/// Returns how many it recorded.
pub(super) fn advance(tx: &Connection, policy: &Policy, now: Timestamp) -> Result<usize> {
    let now_text = format_timestamp(&now);
    let mut recorded = 0;
    loop {
        let due: Vec<(String, String, String)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT customer_id, entitlement_id, due_at FROM answers INDEXED BY answers_due
                  WHERE due_at IS NOT NULL AND due_at <= ?1 ORDER BY due_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_text, DUE_CHUNK as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()
                .context("read the due answers")?
        };
        if due.is_empty() {
            return Ok(recorded);
        }
        for (customer, entitlement, at) in due {
            let at = parse_timestamp(&at)
                .ok_or_else(|| StoreError::Corrupt(format!("answers.due_at {at:?}")))?;
            // `next_change` only ever names instants after `at`: every pass moves on.
            let pair = (customer, entitlement);
            if evaluate(tx, &pair, policy, at, Cause::of_time)? {
                recorded += 1;
            }
        }
    }
}

/// The earliest instant at which time alone may change some answer.
pub(super) fn next_due(conn: &Connection) -> Result<Option<Timestamp>> {
    let due: Option<String> = conn
        .prepare_cached(
            "SELECT MIN(due_at) FROM answers INDEXED BY answers_due WHERE due_at IS NOT NULL",
        )?
        .query_row([], |r| r.get(0))
        .context("read the next due instant")?;
    due.map(|t| parse_timestamp(&t).ok_or_else(|| StoreError::Corrupt(format!("due_at {t:?}"))))
        .transpose()
}

/// Re-evaluates every pair (those with a grant, and those that recorded an answer) at
/// `at`, from one index of every row: for rebuild and a policy change.
pub(super) fn evaluate_all(
    tx: &Connection,
    policy: &Policy,
    at: Timestamp,
    cause: &Cause,
) -> Result<usize> {
    let mut index = Index::default();
    {
        let sql = format!(
            "SELECT kind, id, as_of, since, body FROM objects NOT INDEXED WHERE kind IN ({})",
            super::read::index_kinds()
        );
        let mut stmt = tx.prepare(&sql)?;
        let rows = stmt.query_map([], ObjectRow::from_row)?;
        for row in rows {
            if let Ok(decoded) = Index::decode(&row.context("read every object")?) {
                index.apply_decoded(decoded);
            }
        }
    }
    let mut pairs: BTreeSet<(&str, &str)> = index.pairs().collect();
    let recorded_pairs: Vec<Pair> = {
        let mut stmt = tx.prepare("SELECT customer_id, entitlement_id FROM answers")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()
            .context("read the recorded answers")?
    };
    pairs.extend(recorded_pairs.iter().map(|(c, e)| (c.as_str(), e.as_str())));
    let mut changed = 0;
    for (customer, entitlement) in pairs {
        let access = index.access(customer, entitlement, policy, at);
        let due = index.next_change(customer, entitlement, policy, at);
        if record(tx, &access, due, at, |_, _| cause.clone())? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Changes after `after`, oldest first, at most `limit`.
pub(super) fn changes(conn: &Connection, after: i64, limit: usize) -> Result<Vec<Change>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, customer_id, entitlement_id, allowed, status, reason, grant_id,
                prev_allowed, prev_status, prev_reason, at, cause, delivery_id, event_type, detail
           FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok((
            Change {
                seq: r.get(0)?,
                customer_id: r.get(1)?,
                entitlement_id: r.get(2)?,
                allowed: r.get(3)?,
                status: r.get(4)?,
                reason: r.get(5)?,
                grant_id: r.get(6)?,
                previous: Answer {
                    allowed: r.get(7)?,
                    status: r.get(8)?,
                    reason: r.get(9)?,
                },
                at: Timestamp::default(),
                cause: Cause::Rebuild,
            },
            r.get::<_, String>(10)?,
            (r.get::<_, String>(11)?, r.get(12)?, r.get(13)?, r.get(14)?),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (mut change, at, (kind, delivery_id, event_type, detail)) =
            row.context("read the change feed")?;
        change.at = parse_timestamp(&at)
            .ok_or_else(|| StoreError::Corrupt(format!("change {} at {at:?}", change.seq)))?;
        change.cause = Cause::from_columns(&kind, delivery_id, event_type, detail)
            .ok_or_else(|| StoreError::Corrupt(format!("change {} cause {kind:?}", change.seq)))?;
        out.push(change);
    }
    Ok(out)
}

/// The newest seq in the feed (0 when empty).
pub(super) fn last_seq(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM changes")?
        .query_row([], |r| r.get(0))
        .context("read the newest change")
}

/// The forwarder's cursor: the last seq it delivered.
pub(super) fn forward_cursor(conn: &Connection) -> Result<i64> {
    conn.prepare_cached(
        "SELECT COALESCE((SELECT value FROM meta WHERE key = 'forward_cursor'), 0)",
    )?
    .query_row([], |r| r.get(0))
    .context("read the forward cursor")
}

/// Moves the forwarder's cursor forward (never back).
pub(super) fn set_forward_cursor(tx: &Connection, seq: i64) -> Result<()> {
    tx.prepare_cached("UPDATE meta SET value = MAX(value, ?1) WHERE key = 'forward_cursor'")?
        .execute([seq])
        .context("write the forward cursor")?;
    Ok(())
}

/// The policy the feed was last computed under, if any was recorded.
pub(super) fn stored_policy(conn: &Connection) -> Result<Option<Policy>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM settings WHERE key = 'policy'")?
        .query_row([], |r| r.get(0))
        .optional()
        .context("read the feed's policy")?;
    text.map(|t| decode_policy(&t)).transpose()
}

/// Records the policy the feed is computed under.
pub(super) fn store_policy(tx: &Connection, policy: &Policy) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO settings (key, value) VALUES ('policy', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([encode_policy(policy)])
    .context("record the feed's policy")?;
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
pub(super) fn needs_evaluation(conn: &Connection) -> Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'needs_evaluation' AND value <> 0)",
    )?
    .query_row([], |r| r.get(0))
    .context("read the evaluation flag")
}

pub(super) fn clear_needs_evaluation(tx: &Connection) -> Result<()> {
    tx.prepare_cached("DELETE FROM meta WHERE key = 'needs_evaluation'")?
        .execute([])
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
