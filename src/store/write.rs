//! The writer: stores each delivery raw with its outcome, and carries out the planner's
//! decision for its snapshot (append, duplicate, re-fold from a place) on the object's
//! state row and history rows, all in the batch's transaction.

use super::families::{kind_of, with_family, Stored};
use super::feed::{self, Feed, Links, Pair};
use super::history::load_step;
pub(super) use super::history::write_step;
use super::history::write_step_keyed;
use super::refold::{accept_keys, refold};
use super::sql::{args, Db, Mode, Tx};
use super::{Context, Location, RebuildStats, Result, StoreError, WriteStore};
use crate::access::{self, Policy};
use crate::change::Cause;
use crate::delivery::{Delivery, Outcome};
use crate::event::{self, Kind, SubscriptionStatus};
use crate::fold::{decode_key, Current, Rejection, Snap, VersionKey};
use crate::plan::{self, Place};
use crate::wire::{format_timestamp, hex, parse_timestamp, Timestamp};
use sha2::{Digest, Sha256};
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
    /// The policy the feed is computed under.
    policy: Policy,
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
    /// (cause `operator`, `policy_changed`) and becomes the stored one.
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
            // The feed is brought up to date by the next write (the rebuild flags it).
            super::rebuild::rebuild(&*writer.db)?;
        }
        Ok(writer)
    }

    /// The policy the feed is computed under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Begins a write transaction and the feed's part of it at `now`: the policy
    /// recorded (re-evaluating every pair if it changed), a store that has never been
    /// evaluated evaluated (after a rebuild or the migration that added the feed).
    fn begin(&self, now: Timestamp) -> Result<(Tx<'_>, Feed, i64)> {
        let tx = Tx::begin(&*self.db, Mode::Write).context("begin a write transaction")?;
        // First, before reading anything: take the change counter. Its row lock
        // serialises every writer on the database (PostgreSQL, where several instances
        // write; SQLite's write lock already does), so that whatever this transaction
        // reads next is what every earlier writer committed, and seqs are commit-ordered.
        let seq = next_seq(&*tx)?;
        // Opened with a policy: it is the feed's; compared with the stored one until a
        // transaction that checked it committed. Opened without: the stored one, read
        // in every transaction (`serve` may change it), the default stored if none is.
        let (policy, stored) = match &self.wanted {
            Some(p) if self.policy_synced => (p.clone(), Some(p.clone())),
            Some(p) => (p.clone(), feed::stored_policy(&*tx)?),
            None => {
                let stored = feed::stored_policy(&*tx)?;
                (stored.clone().unwrap_or_default(), stored)
            }
        };
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
        if feed::needs_evaluation(&*tx)? {
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

    fn apply_alone(&mut self, d: &Delivery) -> Result<Applied> {
        let (tx, mut feed, seq) = self.begin(d.received_at)?;
        let mut seqs = Seqs::start(&*tx, seq)?;
        let applied = apply_one(&*tx, d, &mut seqs, &mut feed)?;
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
        Ok(n)
    }

    /// Moves the forwarder's cursor to `seq` (never back).
    ///
    /// # Errors
    ///
    /// The database's errors.
    pub fn set_forward_cursor(&mut self, seq: i64) -> Result<()> {
        let tx = Tx::begin(&*self.db, Mode::Write).context("begin a write transaction")?;
        feed::set_forward_cursor(&*tx, seq)?;
        tx.commit().context("commit")
    }
}

impl WriteStore for Writer {
    fn apply_batch(&mut self, deliveries: &[Delivery]) -> Result<Vec<Result<Applied>>> {
        // Optimistic: all in one transaction. If any delivery fails, roll the whole
        // batch back and apply each in a transaction of its own, so one bad delivery
        // cannot take the others with it (savepoints would cost a statement journal
        // on every delivery of every batch).
        let Some(first) = deliveries.first() else {
            return Ok(Vec::new());
        };
        let (tx, mut feed, seq) = self.begin(first.received_at)?;
        let mut seqs = Seqs::start(&*tx, seq)?;
        let mut results = Vec::with_capacity(deliveries.len());
        let mut failed = false;
        for d in deliveries {
            match apply_one(&*tx, d, &mut seqs, &mut feed) {
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
        Ok(deliveries.iter().map(|d| self.apply_alone(d)).collect())
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
        let Some((_, kind, id, _)) = quarantined.first().cloned() else {
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
        };
        let mut keys = Vec::new();
        for (body_sha256, _, _, key) in &quarantined {
            tx.exec(
                "INSERT INTO overrides (delivery_id, body_sha256, accepted_at)
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                args![delivery_id, body_sha256, &format_timestamp(&now)],
            )
            .context("record the override")?;
            keys.push(decode(key)?);
        }
        let kind = kind_of(&kind)?;
        let before = feed::pairs_of(&*tx, kind, &id)?;
        with_family!(kind, accept_keys(&*tx, &id, &keys, seq))?;
        let cause = Cause::Operator {
            delivery_id: Some(delivery_id.to_string()),
            detail: "accept".into(),
        };
        evaluate_pairs(&*tx, &feed, kind, &id, before, at, |_, _| cause.clone())?;
        Writer::commit(tx, &feed)?;
        self.policy_synced = true;
        Ok((kind, id))
    }

    fn rebuild(&mut self, now: Timestamp) -> Result<RebuildStats> {
        let stats = super::rebuild::rebuild(&*self.db)?;
        // The rebuild flagged the feed for evaluation: this records the changes it made.
        let (tx, feed, _) = self.begin(now)?;
        Writer::commit(tx, &feed)?;
        self.policy_synced = true;
        Ok(stats)
    }

    fn advance(&mut self, now: Timestamp) -> Result<usize> {
        Writer::advance(self, now)
    }

    fn set_forward_cursor(&mut self, seq: i64) -> Result<()> {
        Writer::set_forward_cursor(self, seq)
    }
}

/// The counters one transaction hands out: the change counter (`meta.seq`, one value
/// per transaction) and the arrival order of deliveries (`deliveries.seq`).
struct Seqs {
    change: i64,
    delivery: i64,
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
pub(super) fn next_seq(tx: &dyn Db) -> Result<i64> {
    tx.one(
        "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
        args![],
    )
    .context("bump the change counter")?
    .i64(0)
}

/// Re-evaluates the pairs an object backs, now and (`before`) before it changed.
fn evaluate_pairs(
    tx: &dyn Db,
    feed: &Feed,
    kind: Kind,
    id: &str,
    mut pairs: BTreeSet<Pair>,
    at: Timestamp,
    cause: impl Fn(&crate::change::Answer, &crate::change::Answer) -> Cause,
) -> Result<()> {
    pairs.extend(feed::pairs_of(tx, kind, id)?);
    for pair in &pairs {
        feed::evaluate(tx, pair, feed, at, &cause)?;
    }
    Ok(())
}

/// Applies one delivery inside the caller's transaction.
fn apply_one(tx: &dyn Db, d: &Delivery, seqs: &mut Seqs, feed: &mut Feed) -> Result<Applied> {
    let body_sha256 = hex(&Sha256::digest(&d.body));
    let seen = tx
        .one(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE delivery_id = ?1 AND body_sha256 = ?2)",
            args![&d.id, &body_sha256],
        )
        .context("look up the idempotency key")?
        .bool(0)?;
    if seen {
        return Ok(Applied {
            outcome: Outcome::Duplicate,
            event_type: None,
            detail: None,
        });
    }
    seqs.delivery += 1;
    let mut row = DeliveryRow {
        d,
        seq: seqs.delivery,
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
                let (kind, id) = (kind, id.to_string());
                let arrival = Arrival {
                    delivery_id: &d.id,
                    delivery_seq: row.seq,
                    seq: seqs.change,
                };
                // Time first: what became due before this delivery is time's doing.
                let at = feed.tick(d.received_at);
                feed::advance(tx, feed, at)?;
                let done = with_family!(kind, apply_snapshot(tx, env.event, &arrival))?;
                // A subscription that neither was nor is in a status that can bear on
                // an answer (`active` renewed, `past_due`) changes none: skip the pairs.
                let matters = |links: &Option<Links>| {
                    links.as_ref().is_some_and(|l| {
                        access::subscription_status_matters(&SubscriptionStatus::parse(&l.status))
                    })
                };
                let inert =
                    kind == Kind::Subscription && !matters(&done.before) && !matters(&done.after);
                if done.changed && !inert {
                    // The pairs it backs now, and those a grant, refund or dispute backed
                    // before (an accepted snapshot may move it).
                    let mut pairs = feed::pairs_from(tx, kind, &id, done.after.as_ref())?;
                    let moved = matches!(kind, Kind::Grant | Kind::Refund | Kind::Dispute)
                        && done.before.as_ref().map(|l| (&l.customer_id, &l.ref_id))
                            != done.after.as_ref().map(|l| (&l.customer_id, &l.ref_id));
                    if moved {
                        pairs.extend(feed::pairs_from(tx, kind, &id, done.before.as_ref())?);
                    }
                    let cause = Cause::of_delivery(&d.id, &env.event_type);
                    for pair in &pairs {
                        feed::evaluate(tx, pair, feed, at, |_, _| cause.clone())?;
                    }
                }
                row.object = Some((kind, id));
                row.key = Some(done.key);
                row.outcome = done.outcome;
                row.detail = done.detail;
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

/// The delivery a snapshot arrived in.
struct Arrival<'a> {
    delivery_id: &'a str,
    /// Its `deliveries.seq`.
    delivery_seq: i64,
    /// The transaction's change counter.
    seq: i64,
}

struct DeliveryRow<'a> {
    d: &'a Delivery,
    seq: i64,
    body_sha256: String,
    event_type: Option<String>,
    event_at: Option<String>,
    object: Option<(Kind, String)>,
    key: Option<String>,
    outcome: Outcome,
    detail: Option<String>,
}

impl DeliveryRow<'_> {
    fn insert(&self, tx: &dyn Db) -> Result<()> {
        let (kind, id) = match &self.object {
            Some((k, i)) => (Some(k.as_str()), Some(i.as_str())),
            None => (None, None),
        };
        tx.exec(
            "INSERT INTO deliveries (seq, delivery_id, received_at, webhook_timestamp,
                webhook_signature, body, event_type, event_at, object_kind, object_id,
                version_key, outcome, detail, body_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            args![
                self.seq,
                &self.d.id,
                &format_timestamp(&self.d.received_at),
                &self.d.webhook_timestamp,
                &self.d.webhook_signature,
                &self.d.body,
                &self.event_type,
                &self.event_at,
                kind,
                id,
                &self.key,
                self.outcome.as_str(),
                &self.detail,
                &self.body_sha256,
            ],
        )
        .context("store the delivery")?;
        Ok(())
    }
}

/// An object's stored state row.
pub(super) struct Head {
    pub(super) state_key: VersionKey,
    pub(super) max_key: VersionKey,
    pub(super) since: Timestamp,
    body: String,
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

fn current_of<T: Stored>(head: &Head) -> Result<Current<T>> {
    let body: T = serde_json::from_str(&head.body)
        .map_err(|e| StoreError::Corrupt(format!("{} state: {e}", T::KIND)))?;
    Ok(Current {
        snap: Snap {
            body,
            key: head.state_key,
        },
        since: head.since,
    })
}

/// What folding one snapshot did.
struct Done {
    outcome: Outcome,
    /// Its encoded key.
    key: String,
    /// The rejection message, if rejected.
    detail: Option<String>,
    /// Whether the object's state row changed.
    changed: bool,
    /// The state row's links before and after (`None`: no state).
    before: Option<Links>,
    after: Option<Links>,
}

/// The links of a state.
pub(super) fn links_of<T: Stored>(state: &Current<T>) -> Links {
    let body = &state.snap.body;
    Links {
        customer_id: body.customer_id().map(str::to_string),
        ref_id: body.ref_id().map(str::to_string),
        status: body.status_name().to_string(),
    }
}

/// Folds one new snapshot into its object, as the planner says.
fn apply_snapshot<T: Stored>(tx: &dyn Db, event: event::Event, at: &Arrival<'_>) -> Result<Done> {
    let snap =
        T::from_event(event).ok_or_else(|| StoreError::Corrupt("event family mismatch".into()))?;
    let id = snap.body.object_id().to_string();
    let key = snap.key.encode();
    let head = load_head(tx, T::KIND, &id)?;
    let mut known = None;
    let place = plan::place(head.as_ref().map(|h| &h.max_key), &snap.key, || {
        let found = load_step(tx, T::KIND, &id, &key);
        let is_known = matches!(found, Ok(Some(_)));
        known = Some(found);
        is_known
    });
    match place {
        Place::Newest => {
            let current = head.as_ref().map(current_of::<T>).transpose()?;
            let append = plan::append(current.as_ref(), &snap, at.delivery_id);
            write_step_keyed(tx, T::KIND, &id, &append.step, &key, at.delivery_seq)?;
            match &append.state {
                Some(state) => {
                    upsert_object_keyed(tx, &id, state, &key, &key, at.delivery_id, at.seq)?;
                }
                None => {
                    tx.exec(
                        "UPDATE objects SET max_key = ?3 WHERE kind = ?1 AND id = ?2",
                        args![T::KIND.as_str(), &id, &key],
                    )
                    .context("move the newest key")?;
                }
            }
            let detail = append.step.rejection().map(Rejection::message);
            let before = head.map(|h| h.links);
            let after = append
                .state
                .as_ref()
                .map(links_of)
                .or_else(|| before.clone());
            Ok(Done {
                outcome: append.outcome,
                key,
                detail,
                changed: append.state.is_some(),
                before,
                after,
            })
        }
        Place::Known => {
            let Some(Ok(Some((stored, _)))) = known else {
                return Err(StoreError::Corrupt(format!("history of {} {id}", T::KIND)));
            };
            if let Some(rep) = plan::representative(&stored, at.delivery_id) {
                tx.exec(
                    "UPDATE history SET delivery_id = ?4, delivery_seq = ?5
                      WHERE kind = ?1 AND object_id = ?2 AND version_key = ?3",
                    args![T::KIND.as_str(), &id, &key, rep, at.delivery_seq],
                )
                .context("update the representative delivery")?;
                tx.exec(
                    "UPDATE objects SET delivery_id = ?3 WHERE kind = ?1 AND id = ?2 AND state_key = ?4",
                    args![T::KIND.as_str(), &id, rep, &key],
                )
                .context("update the representative delivery")?;
            }
            let before = head.map(|h| h.links);
            Ok(Done {
                outcome: Outcome::Duplicate,
                key,
                detail: None,
                changed: false,
                after: before.clone(),
                before,
            })
        }
        Place::Within => {
            // The lookup that placed it must not have failed: an error is not "unknown".
            if let Some(Err(e)) = known {
                return Err(e);
            }
            let head = head.ok_or_else(|| StoreError::Corrupt("history without state".into()))?;
            let new = (&snap, at.delivery_id, at.delivery_seq);
            let (outcome, changed, state) =
                refold::<T>(tx, &id, &head, snap.key, Some(new), &[], at.seq)?;
            let detail = match outcome {
                Outcome::Rejected => load_step(tx, T::KIND, &id, &key)?
                    .and_then(|(s, _)| s.rejection().map(Rejection::message)),
                _ => None,
            };
            let after = state.unwrap_or_else(|| head.links.clone());
            Ok(Done {
                outcome,
                key,
                detail,
                changed,
                before: Some(head.links),
                after: Some(after),
            })
        }
    }
}

pub(super) fn upsert_object<T: Stored>(
    tx: &dyn Db,
    id: &str,
    state: &Current<T>,
    max_key: &VersionKey,
    delivery_id: &str,
    seq: i64,
) -> Result<()> {
    let (state_key, max_key) = (state.snap.key.encode(), max_key.encode());
    upsert_object_keyed(tx, id, state, &state_key, &max_key, delivery_id, seq)
}

/// [`upsert_object`] with the state's and the newest key already encoded.
fn upsert_object_keyed<T: Stored>(
    tx: &dyn Db,
    id: &str,
    state: &Current<T>,
    state_key: &str,
    max_key: &str,
    delivery_id: &str,
    seq: i64,
) -> Result<()> {
    let body = serde_json::to_string(&state.snap.body)
        .map_err(|e| StoreError::Corrupt(format!("encode {}: {e}", T::KIND)))?;
    tx.exec(
        "INSERT INTO objects (kind, id, customer_id, ref_id, status, as_of, since, state_key,
                              max_key, delivery_id, body, seq, grant_subscription_id,
                              grant_payment_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (kind, id) DO UPDATE SET customer_id = excluded.customer_id,
             ref_id = excluded.ref_id, status = excluded.status, as_of = excluded.as_of,
             since = excluded.since, state_key = excluded.state_key, max_key = excluded.max_key,
             delivery_id = excluded.delivery_id, body = excluded.body, seq = excluded.seq,
             grant_subscription_id = excluded.grant_subscription_id,
             grant_payment_id = excluded.grant_payment_id",
        args![
            T::KIND.as_str(),
            id,
            state.snap.body.customer_id(),
            state.snap.body.ref_id(),
            &state.snap.body.status_name(),
            &format_timestamp(&state.snap.key.at),
            &format_timestamp(&state.since),
            state_key,
            max_key,
            delivery_id,
            &body,
            seq,
            state.snap.body.grant_links().0,
            state.snap.body.grant_links().1,
        ],
    )
    .context("write the object")?;
    Ok(())
}
