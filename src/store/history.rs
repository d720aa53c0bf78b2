//! The history rows: one per distinct snapshot of an object, in key order, with what
//! the fold did with it (the quarantine is the rejected ones).

use super::{Context, Result};
use crate::event::Kind;
use crate::fold::{decode_key, Rejection, Step, Verdict, VersionKey};
use crate::wire::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};

const STEP_COLUMNS: &str =
    "version_key, delivery_id, accepted, starts_run, forced, rejection, delivery_seq";

pub(super) fn step_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Step, i64)> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("bad {what}").into(),
        )
    };
    let key: String = r.get(0)?;
    let key = decode_key(&key).ok_or_else(|| bad(0, "version key"))?;
    let rejection: Option<String> = r.get(5)?;
    let verdict = match rejection {
        None => Verdict::Applied { forced: r.get(4)? },
        Some(json) => Verdict::Rejected(
            serde_json::from_str::<Rejection>(&json).map_err(|_| bad(5, "rejection"))?,
        ),
    };
    Ok((
        Step {
            key,
            delivery_id: r.get(1)?,
            accepted: r.get(2)?,
            verdict,
            // Not stored: the loader sets the state the step met.
            state: key,
            starts_run: r.get(3)?,
        },
        r.get(6)?,
    ))
}

pub(super) fn load_step(
    tx: &Connection,
    kind: Kind,
    id: &str,
    key: &str,
) -> Result<Option<(Step, i64)>> {
    tx.prepare_cached(&format!(
        "SELECT {STEP_COLUMNS} FROM history WHERE kind = ?1 AND object_id = ?2 AND version_key = ?3"
    ))?
    .query_row(params![kind.as_str(), id, key], step_from_row)
    .optional()
    .context("load a step")
}

pub(super) fn load_steps_from(
    tx: &Connection,
    kind: Kind,
    id: &str,
    from: &str,
    inclusive: bool,
    limit: usize,
) -> Result<Vec<(Step, i64)>> {
    let op = if inclusive { ">=" } else { ">" };
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {STEP_COLUMNS} FROM history WHERE kind = ?1 AND object_id = ?2 AND version_key {op} ?3
          ORDER BY version_key LIMIT ?4"
    ))?;
    let rows = stmt.query_map(
        params![kind.as_str(), id, from, limit as i64],
        step_from_row,
    )?;
    rows.collect::<Result<_, _>>().context("load steps")
}

/// `since` of the object's state: the key instant of its last run-starting step. Walks
/// the object's history back from its newest step (no index: the re-fold knows the
/// answer itself in all but rare cases, see `write::refold`).
pub(super) fn since_of(tx: &Connection, kind: Kind, id: &str) -> Result<Option<Timestamp>> {
    let key: Option<String> = tx
        .prepare_cached(
            "SELECT version_key FROM history
              WHERE kind = ?1 AND object_id = ?2 AND starts_run = 1
              ORDER BY version_key DESC LIMIT 1",
        )?
        .query_row(params![kind.as_str(), id], |r| r.get(0))
        .optional()
        .context("find when the status began")?;
    key.map(|k| super::write::decode(&k).map(|k| k.at))
        .transpose()
}

pub(super) fn representative_of(
    tx: &Connection,
    kind: Kind,
    id: &str,
    key: &VersionKey,
) -> Result<String> {
    Ok(load_step(tx, kind, id, &key.encode())?
        .map(|(s, _)| s.delivery_id)
        .unwrap_or_default())
}

/// Inserts or replaces one history row.
pub(super) fn write_step(
    tx: &Connection,
    kind: Kind,
    id: &str,
    step: &Step,
    delivery_seq: i64,
) -> Result<()> {
    write_step_keyed(tx, kind, id, step, &step.key.encode(), delivery_seq)
}

/// [`write_step`] with the step's key already encoded.
pub(super) fn write_step_keyed(
    tx: &Connection,
    kind: Kind,
    id: &str,
    step: &Step,
    key: &str,
    delivery_seq: i64,
) -> Result<()> {
    let (forced, rejection) = match &step.verdict {
        Verdict::Applied { forced } => (*forced, None),
        Verdict::Rejected(r) => (false, Some(r)),
    };
    tx.prepare_cached(
        "INSERT INTO history (kind, object_id, version_key, delivery_seq, delivery_id, accepted,
                              starts_run, forced, code, reason, from_state, to_state, rejection)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (kind, object_id, version_key) DO UPDATE SET accepted = excluded.accepted,
             starts_run = excluded.starts_run,
             forced = excluded.forced, code = excluded.code, reason = excluded.reason,
             from_state = excluded.from_state, to_state = excluded.to_state,
             rejection = excluded.rejection",
    )?
    .execute(params![
        kind.as_str(),
        id,
        key,
        delivery_seq,
        step.delivery_id,
        step.accepted,
        step.starts_run,
        forced,
        rejection.map(|r| r.reason.code()),
        rejection.map(Rejection::message),
        rejection.map(|r| r.from.as_str()),
        rejection.map(|r| r.to.as_str()),
        rejection.and_then(|r| serde_json::to_string(r).ok()),
    ])
    .context("write a history step")?;
    Ok(())
}
