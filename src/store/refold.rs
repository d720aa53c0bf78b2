//! Re-folding an object from a place in its history: a snapshot older than the newest
//! one, or an `accept`. Reads the stored steps after the place only until the fold meets
//! them again (see [`crate::plan::Refold`]), and writes what changed.

use super::apply::links_of;
use super::families::Stored;
use super::feed::Links;
use super::history::{load_steps_from, representative_of, since_of, write_step};
use super::sql::{args, Db};
use super::write::{load_head, upsert_object, Head};
use super::{Context, Result, StoreError};
use crate::delivery::Outcome;
use crate::event;
use crate::fold::{Current, Snap, VersionKey};
use crate::plan::{Flow, Refold};
use crate::wire::format_timestamp;
use std::collections::HashMap;

/// How many stored steps a re-fold reads at a time.
const REFOLD_CHUNK: usize = 32;

/// `accept`: re-folds the object from the first newly accepted key.
pub(super) fn accept_keys<T: Stored>(
    tx: &dyn Db,
    id: &str,
    keys: &[VersionKey],
    seq: i64,
) -> Result<()> {
    let head = load_head(tx, T::KIND, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("no state for {} {id}", T::KIND)))?;
    let Some(from) = keys.iter().min() else {
        return Ok(());
    };
    refold::<T>(tx, id, &head, *from, None, keys, seq)?;
    Ok(())
}

/// Re-folds an object from key `from`: with the new snapshot `new` inserted there, or
/// (for `accept`) with the steps of `accept` now accepted. Reads the stored steps after
/// it only until the fold meets them again, writes what changed, and returns the outcome
/// for `new`, whether the object's state row changed, and the new state's links if it
/// has a new state.
pub(super) fn refold<T: Stored>(
    tx: &dyn Db,
    id: &str,
    head: &Head,
    from: VersionKey,
    new: Option<(&Snap<T>, &str, i64)>,
    accept: &[VersionKey],
    seq: i64,
) -> Result<(Outcome, bool, Option<Links>)> {
    let kind = T::KIND;
    let before = state_before::<T>(tx, id, &from)?;
    // The state each stored step met, as stored: followed along the old history.
    let mut stored_state = before.as_ref().map(|c| c.snap.key);
    let mut refold = Refold::new(before);
    // Where each fed step's representative delivery is.
    let mut delivery_seqs: HashMap<VersionKey, i64> = HashMap::new();
    let mut after = from.encode();
    let mut inclusive = true;
    if let Some((snap, delivery_id, delivery_seq)) = new {
        refold.feed(snap, delivery_id, None, false);
        delivery_seqs.insert(snap.key, delivery_seq);
        inclusive = false;
    }
    'read: loop {
        let rows = load_steps_from(tx, kind, id, &after, inclusive, REFOLD_CHUNK)?;
        let n = rows.len();
        for (mut stored, delivery_seq) in rows {
            if !stored.is_rejected() {
                stored_state = Some(stored.key);
            }
            stored.state = stored_state.unwrap_or(stored.key);
            let snap = load_snap::<T>(tx, delivery_seq)?;
            let accepted = stored.accepted || accept.contains(&stored.key);
            if refold.feed(&snap, &stored.delivery_id, Some(&stored), accepted) == Flow::Converged {
                break 'read;
            }
            delivery_seqs.insert(stored.key, delivery_seq);
            after = stored.key.encode();
        }
        if n < REFOLD_CHUNK {
            break;
        }
        inclusive = false;
    }
    let planned = refold.finish(Some(&head.state_key));
    for step in &planned.writes {
        let delivery_seq = delivery_seqs.get(&step.key).copied().unwrap_or_default();
        write_step(tx, kind, id, step, delivery_seq)?;
    }
    let since = match planned.since(head.since) {
        Some(since) => Some(since),
        None => since_of(tx, kind, id)?,
    };
    let mut links = None;
    let changed = match planned.state {
        Some(mut state) => {
            state.since = since.unwrap_or(state.snap.key.at);
            let delivery_id = representative_of(tx, kind, id, &state.snap.key)?;
            upsert_object(tx, id, &state, &head.max_key, &delivery_id, seq, true)?;
            links = Some(links_of(&state));
            true
        }
        None if since.is_some_and(|s| s != head.since) => {
            tx.exec(
                "UPDATE objects SET since = ?3, seq = ?4 WHERE kind = ?1 AND id = ?2",
                args![
                    kind.as_str(),
                    id,
                    since.map(|s| format_timestamp(&s)).as_ref(),
                    seq
                ],
            )
            .context("move since")?;
            true
        }
        None => false,
    };
    Ok((planned.outcome, changed, links))
}

/// The state just before key `key`: the snapshot of the last applied step before it.
fn state_before<T: Stored>(tx: &dyn Db, id: &str, key: &VersionKey) -> Result<Option<Current<T>>> {
    let row = tx
        .row(
            "SELECT delivery_seq FROM history
              WHERE kind = ?1 AND object_id = ?2 AND version_key < ?3 AND code IS NULL
              ORDER BY version_key DESC LIMIT 1",
            args![T::KIND.as_str(), id, &key.encode()],
        )
        .context("load the state before")?;
    let Some(row) = row else {
        return Ok(None);
    };
    let delivery_seq = row.i64(0)?;
    let snap = load_snap::<T>(tx, delivery_seq)?;
    // `since` does not steer the fold; the store recomputes it from `starts_run`.
    let since = snap.key.at;
    Ok(Some(Current { snap, since }))
}

/// The snapshot of a stored delivery, parsed again from its raw bytes.
fn load_snap<T: Stored>(tx: &dyn Db, delivery_seq: i64) -> Result<Snap<T>> {
    let body = tx
        .one(
            "SELECT body FROM deliveries WHERE seq = ?1",
            args![delivery_seq],
        )
        .context("load a stored delivery")?
        .blob(0)?;
    event::parse(&body)
        .ok()
        .and_then(|env| T::from_event(env.event))
        .ok_or_else(|| StoreError::Corrupt(format!("delivery #{delivery_seq} no longer parses")))
}
