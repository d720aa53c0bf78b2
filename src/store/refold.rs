//! Re-folding an object from a place in its history: a snapshot older than the newest
//! one, or an `accept`. Reads the stored steps after the place only until the fold meets
//! them again (see [`crate::plan::Refold`]), and writes what changed.

use super::apply::links_of;
use super::families::Stored;
use super::feed::Links;
use super::history::{load_steps_from, representative_of, since_of, write_step};
use super::sql::{args, Db};
use super::write::{decode, load_head, upsert_object, Head};
use super::{Context, Result, StoreError};
use crate::delivery::Outcome;
use crate::event;
use crate::fold::{Current, Snap, VersionKey};
use crate::plan::{Flow, Refold};
use crate::wire::{format_timestamp, Timestamp};
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
    if let Some(last) = accept.iter().max() {
        refold = refold.through(*last);
    }
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
            let snap = load_snap::<T>(tx, id, delivery_seq, &stored.key)?;
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
            "SELECT delivery_seq, version_key FROM history
              WHERE kind = ?1 AND object_id = ?2 AND version_key < ?3 AND code IS NULL
              ORDER BY version_key DESC LIMIT 1",
            args![T::KIND.as_str(), id, &key.encode()],
        )
        .context("load the state before")?;
    let Some(row) = row else {
        return Ok(None);
    };
    let delivery_seq = row.i64(0)?;
    let stored_key = decode(row.str(1)?)?;
    let snap = load_snap::<T>(tx, id, delivery_seq, &stored_key)?;
    // `since` does not steer the fold; the store recomputes it from `starts_run`.
    let since = snap.key.at;
    Ok(Some(Current { snap, since }))
}

/// The snapshot of a stored delivery, parsed again from its raw bytes: the one its
/// history row with key `key` of object `id` records. [`reparse`] first; the full parse
/// where that cannot tell.
fn load_snap<T: Stored>(
    tx: &dyn Db,
    id: &str,
    delivery_seq: i64,
    key: &VersionKey,
) -> Result<Snap<T>> {
    let body = tx
        .one(
            "SELECT body FROM deliveries WHERE seq = ?1",
            args![delivery_seq],
        )
        .context("load a stored delivery")?
        .blob(0)?;
    if let Some(snap) = reparse::<T>(&body, id, key) {
        return Ok(snap);
    }
    event::parse(&body)
        .ok()
        .and_then(|env| T::from_event(env.event))
        .ok_or_else(|| StoreError::Corrupt(format!("delivery #{delivery_seq} no longer parses")))
}

/// The snapshot in a stored body whose key the history already holds, without what
/// [`event::parse`] spends on a new one: `data` goes straight into `T` (no
/// `serde_json::Value` in between) and the content hash is the stored key's, not
/// computed again (a re-fold reads one stored body per step it meets, on the writer's
/// serial path). The same snapshot `event::parse` gives, or `None` where this cannot
/// tell: a body that does not deserialise this way (a duplicated field, which the full
/// parse takes the last of), or whose object, instant or rank is not the stored key's
/// (a credit notification's id, which the full parse composes).
fn reparse<T: Stored>(body: &[u8], id: &str, key: &VersionKey) -> Option<Snap<T>> {
    #[derive(serde::Deserialize)]
    struct Kept<T> {
        #[serde(deserialize_with = "crate::wire::de_timestamp")]
        timestamp: Timestamp,
        data: T,
    }
    let stored: Kept<T> = serde_json::from_slice(body).ok()?;
    let body = stored.data;
    let same = body.object_id() == id
        && body.version_at(stored.timestamp) == key.at
        && body.rank() == key.rank;
    same.then_some(Snap { body, key: *key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Kind};
    use crate::store::families::with_family;

    /// What [`reparse`] made of one body: the snapshot the full parse gives, or `None`.
    fn fast_path<T: Stored + std::fmt::Debug>(body: &[u8], event: Event) -> Option<()> {
        let full = T::from_event(event).expect("family");
        let id = full.body.object_id().to_string();
        let fast = reparse::<T>(body, &id, &full.key)?;
        assert_eq!(fast, full, "{}", String::from_utf8_lossy(body));
        // A key that is not this body's is not taken on trust.
        let mut later = full.key;
        later.at += chrono::Duration::nanoseconds(1);
        assert_eq!(reparse::<T>(body, &id, &later), None);
        assert_eq!(reparse::<T>(body, "some_other_object", &full.key), None);
        Some(())
    }

    /// Every real-shaped payload of a family the store folds re-parses to the snapshot
    /// the full parse gives; only the credit notification, whose id the parser composes,
    /// takes the full parse.
    #[test]
    fn a_stored_body_reparses_as_the_full_parse_does() {
        let mut fast = 0;
        let mut fell_back = Vec::new();
        for dir in ["events", "quirks"] {
            let dir = format!("{}/tests/data/{dir}", env!("CARGO_MANIFEST_DIR"));
            for entry in std::fs::read_dir(dir).expect("fixtures") {
                let path = entry.expect("fixture").path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let body = std::fs::read(&path).expect("read");
                let Ok(env) = event::parse(&body) else {
                    continue;
                };
                let Some(kind) = env.event.object().map(|(k, _)| k) else {
                    continue;
                };
                match with_family!(kind, fast_path(&body, env.event)) {
                    Some(_) => fast += 1,
                    None => fell_back.push((kind, path)),
                }
            }
        }
        assert!(fast >= 30, "only {fast} payloads took the fast path");
        assert!(
            fell_back.iter().all(|(k, _)| *k == Kind::CreditBalanceLow),
            "{fell_back:?}"
        );
    }

    /// A field given twice: the full parse keeps the last, and the fast path leaves it
    /// to the full parse rather than choose.
    #[test]
    fn a_duplicated_field_takes_the_full_parse() {
        let body = br#"{"business_id":"bus_1","type":"refund.succeeded","timestamp":"2026-05-01T10:00:00Z",
            "data":{"refund_id":"ref_1","payment_id":"pay_1","business_id":"bus_1","status":"pending",
                    "status":"succeeded","created_at":"2026-05-01T09:00:00Z","is_partial":false,
                    "amount":100,"currency":"USD"}}"#;
        let env = event::parse(body).expect("parse");
        let Event::Refund(full) = env.event else {
            panic!("a refund");
        };
        assert_eq!(full.body.status.as_str(), "succeeded");
        assert_eq!(
            reparse::<crate::event::Refund>(body, "ref_1", &full.key),
            None
        );
        // The same body with the field once takes the fast path: the field given twice
        // is what sent it to the full parse.
        let once = String::from_utf8_lossy(body).replacen(r#""status":"pending","#, "", 1);
        let Event::Refund(full) = event::parse(once.as_bytes()).expect("parse").event else {
            panic!("a refund");
        };
        let fast = reparse::<crate::event::Refund>(once.as_bytes(), "ref_1", &full.key);
        assert_eq!(fast, Some(full));
    }
}
