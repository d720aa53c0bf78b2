//! Applying one delivery inside the writer's transaction: the idempotency check, the
//! parse, the planner's decision for its snapshot carried out on the object's state and
//! history rows, the access changes it makes, and the raw delivery row with its outcome.

use super::families::{with_family, Stored};
use super::feed::{self, Feed, Fresh, Links};
use super::history::{load_step, write_step_keyed};
use super::refold::refold;
use super::sql::{args, Db};
use super::write::{load_head, upsert_object_keyed, Applied, Head, Seqs};
use super::{Context, Result, StoreError};
use crate::access;
use crate::change::Cause;
use crate::delivery::{Delivery, Outcome, Prepared};
use crate::event::{self, Kind, SubscriptionStatus};
use crate::fold::{Current, Rejection, Snap};
use crate::plan::{self, Place};
use crate::wire::{format_timestamp, kept_timestamp};

/// Applies one delivery inside the caller's transaction.
pub(super) fn apply_one(
    tx: &dyn Db,
    p: &mut Prepared,
    seqs: &mut Seqs,
    feed: &mut Feed,
) -> Result<Applied> {
    let parsed = p.take_parsed();
    let (d, body_sha256) = (&p.delivery, p.body_sha256.clone());
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
    match parsed {
        Err(e) => {
            row.event_type = e.event_type().map(str::to_string);
            row.detail = Some(e.to_string());
        }
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
                let json = p.state_json.as_deref();
                let done = with_family!(kind, apply_snapshot(tx, env.event, json, &arrival))?;
                if done.changed && !inert(kind, &done.before, &done.after) {
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
                        let fresh = done.fresh.as_ref();
                        feed::evaluate(tx, pair, feed, at, fresh, |_, _| cause.clone())?;
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
    /// The state row as the access index reads it, when this snapshot wrote it as the
    /// newest (a re-fold leaves the pairs to read it back).
    fresh: Option<Fresh>,
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

/// Whether a change between these links can change no answer: a subscription that
/// neither was nor is in a status that can bear on one (`active` renewed, `past_due`).
fn inert(kind: Kind, before: &Option<Links>, after: &Option<Links>) -> bool {
    let matters = |links: &Option<Links>| {
        links.as_ref().is_some_and(|l| {
            access::subscription_status_matters(&SubscriptionStatus::parse(&l.status))
        })
    };
    kind == Kind::Subscription && !matters(before) && !matters(after)
}

/// The access index's row of a state just written (`None` for the kinds it does not
/// hold, and for instants the row cannot keep: that row does not decode either).
fn fresh_of<T: Stored>(id: &str, state: &Current<T>) -> Option<Fresh> {
    if !T::KIND.in_index() {
        return None;
    }
    let as_of = kept_timestamp(&state.snap.key.at)?;
    let since = kept_timestamp(&state.since)?;
    Some(Fresh {
        kind: T::KIND,
        id: id.to_string(),
        decoded: state.snap.body.clone().decoded(as_of, since),
    })
}

/// Folds one new snapshot into its object, as the planner says. `json`: the snapshot's
/// [`event::Event::state_json`], if made ahead.
fn apply_snapshot<T: Stored>(
    tx: &dyn Db,
    event: event::Event,
    json: Option<&str>,
    at: &Arrival<'_>,
) -> Result<Done> {
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
                    let keys = (key.as_str(), key.as_str());
                    let exists = head.is_some();
                    // The JSON made ahead is this state's when the state is the snapshot.
                    let json = json.filter(|_| state.snap.body == snap.body);
                    let (row, seq) = (at.delivery_id, at.seq);
                    upsert_object_keyed(tx, &id, state, keys, row, seq, exists, json)?;
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
            // Only for the pairs `apply_one` evaluates.
            let fresh = (!inert(T::KIND, &before, &after))
                .then(|| append.state.as_ref().and_then(|state| fresh_of(&id, state)))
                .flatten();
            Ok(Done {
                outcome: append.outcome,
                key,
                detail,
                changed: append.state.is_some(),
                before,
                after,
                fresh,
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
                fresh: None,
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
                fresh: None,
            })
        }
    }
}
