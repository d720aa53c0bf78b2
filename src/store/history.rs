//! The history rows: one per distinct snapshot of an object, in key order, with what
//! the fold did with it (the quarantine is the rejected ones).

use super::sql::{args, Arg, Db, Row};
use super::{Context, Result, StoreError};
use crate::event::Kind;
use crate::fold::{decode_key, Rejection, Step, Verdict, VersionKey};
use crate::wire::Timestamp;

const STEP_COLUMNS: &str =
    "version_key, delivery_id, accepted, starts_run, forced, rejection, delivery_seq";

pub(super) fn step_from_row(mut r: Row) -> Result<(Step, i64)> {
    let bad = |what: &str| StoreError::Corrupt(format!("history row: bad {what}"));
    let key = decode_key(r.str(0)?).ok_or_else(|| bad("version key"))?;
    let verdict = match r.opt_str(5)? {
        None => Verdict::Applied { forced: r.bool(4)? },
        Some(json) => Verdict::Rejected(
            serde_json::from_str::<Rejection>(json).map_err(|_| bad("rejection"))?,
        ),
    };
    Ok((
        Step {
            key,
            delivery_id: r.string(1)?,
            accepted: r.bool(2)?,
            verdict,
            // Not stored: the loader sets the state the step met.
            state: key,
            starts_run: r.bool(3)?,
        },
        r.i64(6)?,
    ))
}

pub(super) fn load_step(
    tx: &dyn Db,
    kind: Kind,
    id: &str,
    key: &str,
) -> Result<Option<(Step, i64)>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "SELECT {STEP_COLUMNS} FROM history WHERE kind = ?1 AND object_id = ?2 AND version_key = ?3"
        )
    });
    tx.row(sql, args![kind.as_str(), id, key])
        .context("load a step")?
        .map(step_from_row)
        .transpose()
}

pub(super) fn load_steps_from(
    tx: &dyn Db,
    kind: Kind,
    id: &str,
    from: &str,
    inclusive: bool,
    limit: usize,
) -> Result<Vec<(Step, i64)>> {
    static SQL: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        [">=", ">"].map(|op| {
            format!(
                "SELECT {STEP_COLUMNS} FROM history WHERE kind = ?1 AND object_id = ?2 AND version_key {op} ?3
                  ORDER BY version_key LIMIT ?4"
            )
        })
    });
    let sql = &sql[usize::from(!inclusive)];
    tx.rows(sql, args![kind.as_str(), id, from, limit as i64])
        .context("load steps")?
        .into_iter()
        .map(step_from_row)
        .collect()
}

/// `since` of the object's state: the key instant of its last run-starting step. Walks
/// the object's history back from its newest step (no index: the re-fold knows the
/// answer itself in all but rare cases, see `write::refold`).
pub(super) fn since_of(tx: &dyn Db, kind: Kind, id: &str) -> Result<Option<Timestamp>> {
    let row = tx
        .row(
            "SELECT version_key FROM history
              WHERE kind = ?1 AND object_id = ?2 AND starts_run = 1
              ORDER BY version_key DESC LIMIT 1",
            args![kind.as_str(), id],
        )
        .context("find when the status began")?;
    row.map(|r| super::write::decode(r.str(0)?).map(|k| k.at))
        .transpose()
}

pub(super) fn representative_of(
    tx: &dyn Db,
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
    tx: &dyn Db,
    kind: Kind,
    id: &str,
    step: &Step,
    delivery_seq: i64,
) -> Result<()> {
    write_step_keyed(tx, kind, id, step, &step.key.encode(), delivery_seq)
}

/// [`write_step`] with the step's key already encoded.
pub(super) fn write_step_keyed(
    tx: &dyn Db,
    kind: Kind,
    id: &str,
    step: &Step,
    key: &str,
    delivery_seq: i64,
) -> Result<()> {
    let owned = StepText::of(step);
    insert_step(
        tx,
        &step_args(kind, id, step, key, delivery_seq, &owned),
        false,
    )
}

/// The columns of a history row, in the order [`step_args`] gives their values.
macro_rules! history_columns {
    () => {
        "kind, object_id, version_key, delivery_seq, delivery_id, accepted, starts_run, forced,
         code, reason, from_state, to_state, rejection"
    };
}
pub(super) use history_columns;

/// How many of the history columns are the row's key (kind, object id, version key).
pub(super) const HISTORY_KEY_COLUMNS: usize = 3;

/// The text a rejected step's row holds beside its borrowed values.
pub(super) struct StepText {
    message: Option<String>,
    rejection: Option<String>,
}

impl StepText {
    pub(super) fn of(step: &Step) -> StepText {
        match &step.verdict {
            Verdict::Applied { .. } => StepText {
                message: None,
                rejection: None,
            },
            Verdict::Rejected(r) => StepText {
                message: Some(r.message()),
                rejection: serde_json::to_string(r).ok(),
            },
        }
    }
}

/// The values of a step's history row, in the order of [`history_columns`].
pub(super) fn step_args<'a>(
    kind: Kind,
    id: &'a str,
    step: &'a Step,
    key: &'a str,
    delivery_seq: i64,
    text: &'a StepText,
) -> [Arg<'a>; 13] {
    let (forced, rejection) = match &step.verdict {
        Verdict::Applied { forced } => (*forced, None),
        Verdict::Rejected(r) => (false, Some(r)),
    };
    *args![
        kind.as_str(),
        id,
        key,
        delivery_seq,
        &step.delivery_id,
        step.accepted,
        step.starts_run,
        forced,
        rejection.map(|r| r.reason.code()),
        &text.message,
        rejection.map(|r| r.from.as_str()),
        rejection.map(|r| r.to.as_str()),
        &text.rejection,
    ]
}

/// Inserts or replaces one history row from the values [`step_args`] gives. A row that
/// exists keeps its representative delivery (`delivery_seq`, `delivery_id`) unless
/// `whole`: a rebuild that found the row different sets every column.
pub(super) fn insert_step(tx: &dyn Db, values: &[Arg<'_>; 13], whole: bool) -> Result<()> {
    const INSERT: &str = concat!(
        "INSERT INTO history (",
        history_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (kind, object_id, version_key) DO UPDATE SET accepted = excluded.accepted,
             starts_run = excluded.starts_run,
             forced = excluded.forced, code = excluded.code, reason = excluded.reason,
             from_state = excluded.from_state, to_state = excluded.to_state,
             rejection = excluded.rejection"
    );
    const WHOLE: &str = concat!(
        "INSERT INTO history (",
        history_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (kind, object_id, version_key) DO UPDATE SET
             delivery_seq = excluded.delivery_seq, delivery_id = excluded.delivery_id,
             accepted = excluded.accepted, starts_run = excluded.starts_run,
             forced = excluded.forced, code = excluded.code, reason = excluded.reason,
             from_state = excluded.from_state, to_state = excluded.to_state,
             rejection = excluded.rejection"
    );
    tx.exec(if whole { WHOLE } else { INSERT }, values)
        .context("write a history step")?;
    Ok(())
}
