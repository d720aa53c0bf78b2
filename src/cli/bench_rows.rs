//! The floor under durable ingest: the rows the store wrote for a run's deliveries,
//! written again by plain SQL into an empty store of the same schema (every table,
//! every index), with the reads that an idempotent apply cannot skip, in transactions
//! of the group commit's size, as durably (WAL, `synchronous=FULL`). No parsing, no
//! planning, no access evaluation, and no checkpoint during the timed run (the log
//! only grows; the store must copy it back some time, so this is a floor): what SQLite
//! alone costs for exactly that work.

use super::CliError;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// One delivery's rows, copied from a store (each in its table's column list below).
struct Work {
    delivery: Vec<Value>,
    objects: Vec<Vec<Value>>,
    history: Vec<Vec<Value>>,
    changes: Vec<Vec<Value>>,
    answers: Vec<Vec<Value>>,
}

fn failed(e: rusqlite::Error) -> CliError {
    CliError::Refused(format!("same-rows baseline: {e}"))
}

/// Every row of `sql`, as values.
fn rows(conn: &Connection, sql: &str) -> Result<Vec<Vec<Value>>, CliError> {
    let mut stmt = conn.prepare(sql).map_err(failed)?;
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .map_err(failed)?;
    rows.collect::<Result<_, _>>().map_err(failed)
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        _ => String::new(),
    }
}

const OBJECTS: &str = "kind, id, customer_id, ref_id, status, as_of, since, state_key, max_key,
    delivery_id, body, seq, grant_subscription_id, grant_payment_id";
const HISTORY: &str = "kind, object_id, version_key, delivery_seq, delivery_id, accepted,
    starts_run, forced, code, reason, from_state, to_state, rejection";
const CHANGES: &str = "customer_id, entitlement_id, allowed, status, reason, grant_id,
    prev_allowed, prev_status, prev_reason, at, cause, delivery_id, event_type, detail";
const ANSWERS: &str = "customer_id, entitlement_id, allowed, status, reason, grant_id, due_at";
const DELIVERIES: &str = "seq, delivery_id, body_sha256, received_at, webhook_timestamp,
    webhook_signature, body, event_type, event_at, object_kind, object_id, version_key,
    outcome, detail";

/// The position of column `name` in the column list `cols`.
fn col(cols: &str, name: &str) -> usize {
    cols.split(',')
        .position(|c| c.trim() == name)
        .unwrap_or_else(|| unreachable!("{name} is one of the columns {cols}"))
}

/// The rows `source` holds, grouped by the delivery that wrote them, in arrival order.
fn work_of(source: &Path) -> Result<Vec<Work>, CliError> {
    let conn = Connection::open(source).map_err(failed)?;
    let by = |sql: &str, key: usize| -> Result<HashMap<String, Vec<Vec<Value>>>, CliError> {
        let mut map: HashMap<String, Vec<Vec<Value>>> = HashMap::new();
        for row in rows(&conn, sql)? {
            map.entry(text(&row[key])).or_default().push(row);
        }
        Ok(map)
    };
    let mut objects = by(
        &format!("SELECT {OBJECTS} FROM objects"),
        col(OBJECTS, "delivery_id"),
    )?;
    let mut history = by(
        &format!("SELECT {HISTORY} FROM history"),
        col(HISTORY, "delivery_seq"),
    )?;
    let mut changes = by(
        &format!("SELECT {CHANGES} FROM changes ORDER BY seq"),
        col(CHANGES, "delivery_id"),
    )?;
    let (customer, entitlement) = (col(OBJECTS, "customer_id"), col(OBJECTS, "ref_id"));
    let (seq, delivery_id) = (col(DELIVERIES, "seq"), col(DELIVERIES, "delivery_id"));
    let answers: HashMap<(String, String), Vec<Value>> =
        rows(&conn, &format!("SELECT {ANSWERS} FROM answers"))?
            .into_iter()
            .map(|r| ((text(&r[0]), text(&r[1])), r))
            .collect();
    let deliveries = rows(
        &conn,
        &format!("SELECT {DELIVERIES} FROM deliveries ORDER BY seq"),
    )?;
    Ok(deliveries
        .into_iter()
        .map(|d| {
            let id = text(&d[delivery_id]);
            let objects = objects.remove(&id).unwrap_or_default();
            let changes = changes.remove(&id).unwrap_or_default();
            let answers = objects
                .iter()
                .filter_map(|o| {
                    let pair = (text(&o[customer]), text(&o[entitlement]));
                    answers.get(&pair).cloned()
                })
                .collect();
            Work {
                history: history.remove(&text(&d[seq])).unwrap_or_default(),
                delivery: d,
                objects,
                changes,
                answers,
            }
        })
        .collect())
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the rows `source` holds into `target` (a fresh store: `open` creates its
/// schema) by plain SQL, `batch` deliveries per transaction; deliveries per second.
pub(super) fn same_rows_insert(
    source: &Path,
    target: &Path,
    batch: usize,
    open: impl FnOnce(&Path) -> Result<(), CliError>,
) -> Result<f64, CliError> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
    }
    let work = work_of(source)?;
    open(target)?;
    let conn = Connection::open(target).map_err(failed)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0;",
    )
    .map_err(failed)?;
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(failed)?;
    let insert = |table: &str, cols: &str| {
        let n = cols.split(',').count();
        format!("INSERT INTO {table} ({cols}) VALUES ({})", placeholders(n))
    };
    let (ins_delivery, ins_object, ins_history, ins_change) = (
        insert("deliveries", DELIVERIES),
        insert("objects", OBJECTS),
        insert("history", HISTORY),
        insert("changes", CHANGES),
    );
    let ins_answer = format!(
        "{} ON CONFLICT (customer_id, entitlement_id) DO UPDATE SET allowed = excluded.allowed,
             status = excluded.status, reason = excluded.reason, grant_id = excluded.grant_id,
             due_at = excluded.due_at",
        insert("answers", ANSWERS)
    );
    let in_delivery = |name| col(DELIVERIES, name);
    let (seq, delivery_id, sha) = (
        in_delivery("seq"),
        in_delivery("delivery_id"),
        in_delivery("body_sha256"),
    );
    let o = |name| col(OBJECTS, name);
    let (kind, id, customer, entitlement) = (o("kind"), o("id"), o("customer_id"), o("ref_id"));
    let started = Instant::now();
    for chunk in work.chunks(batch.max(1)) {
        let tx = conn.unchecked_transaction().map_err(failed)?;
        for w in chunk {
            // The reads an idempotent apply makes: the delivery seen before, the
            // object's head, the pair's grants, the pair's recorded answer.
            let mut seen = tx
                .prepare_cached(
                    "SELECT 1 FROM deliveries WHERE delivery_id = ?1 AND body_sha256 = ?2",
                )
                .map_err(failed)?;
            seen.query_row([&w.delivery[delivery_id], &w.delivery[sha]], |_| Ok(()))
                .optional()
                .map_err(failed)?;
            for o in &w.objects {
                let mut head = tx
                    .prepare_cached(
                        "SELECT state_key, max_key, since, body, customer_id, ref_id, status
                           FROM objects WHERE kind = ?1 AND id = ?2",
                    )
                    .map_err(failed)?;
                head.query_row([&o[kind], &o[id]], |_| Ok(()))
                    .optional()
                    .map_err(failed)?;
                let mut grants = tx
                    .prepare_cached(
                        "SELECT kind, id, as_of, since, body FROM objects INDEXED BY objects_customer
                          WHERE customer_id = ?1 AND kind = 'grant' AND ref_id = ?2",
                    )
                    .map_err(failed)?;
                let mut q = grants
                    .query([&o[customer], &o[entitlement]])
                    .map_err(failed)?;
                while q.next().map_err(failed)?.is_some() {}
                let mut answer = tx
                    .prepare_cached(
                        "SELECT allowed, status, reason, grant_id, due_at FROM answers
                          WHERE customer_id = ?1 AND entitlement_id = ?2",
                    )
                    .map_err(failed)?;
                answer
                    .query_row([&o[customer], &o[entitlement]], |_| Ok(()))
                    .optional()
                    .map_err(failed)?;
            }
            let run = |sql: &str, values: &[Value]| -> Result<(), CliError> {
                tx.prepare_cached(sql)
                    .map_err(failed)?
                    .execute(params_from_iter(values))
                    .map_err(failed)?;
                Ok(())
            };
            run(&ins_delivery, &w.delivery)?;
            for o in &w.objects {
                run(&ins_object, o)?;
            }
            for h in &w.history {
                run(&ins_history, h)?;
            }
            for c in &w.changes {
                run(&ins_change, c)?;
            }
            for a in &w.answers {
                run(&ins_answer, a)?;
            }
            run(
                "UPDATE meta SET value = ?1 WHERE key = 'seq'",
                std::slice::from_ref(&w.delivery[seq]),
            )?;
        }
        tx.commit().map_err(failed)?;
    }
    Ok(work.len() as f64 / started.elapsed().as_secs_f64())
}

/// The floor under a rebuild: the store's own object and history rows (read into
/// memory first) written again in one transaction, as the rebuild writes them: the
/// lookup indexes dropped and recreated from their definitions, the old rows deleted.
/// No reading or parsing of deliveries, no folding, no evaluation. Seconds.
pub(super) fn same_rows_rewrite(path: &Path) -> Result<f64, CliError> {
    let conn = Connection::open(path).map_err(failed)?;
    conn.execute_batch("PRAGMA synchronous = FULL;")
        .map_err(failed)?;
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(failed)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(failed)?;
    let objects = rows(&conn, &format!("SELECT {OBJECTS} FROM objects"))?;
    let history = rows(&conn, &format!("SELECT {HISTORY} FROM history"))?;
    let indexes: Vec<(String, String)> = rows(
        &conn,
        "SELECT name, sql FROM sqlite_master
          WHERE type = 'index' AND tbl_name IN ('objects', 'history') AND sql IS NOT NULL
            AND name <> 'objects_key'",
    )?
    .into_iter()
    .map(|r| (text(&r[0]), text(&r[1])))
    .collect();
    let started = Instant::now();
    let tx = conn.unchecked_transaction().map_err(failed)?;
    for (name, _) in &indexes {
        tx.execute_batch(&format!("DROP INDEX \"{name}\""))
            .map_err(failed)?;
    }
    tx.execute_batch("DELETE FROM objects; DELETE FROM history;")
        .map_err(failed)?;
    for (table, cols, all) in [
        ("objects", OBJECTS, &objects),
        ("history", HISTORY, &history),
    ] {
        let sql = format!(
            "INSERT INTO {table} ({cols}) VALUES ({})",
            placeholders(cols.split(',').count())
        );
        let mut insert = tx.prepare_cached(&sql).map_err(failed)?;
        for row in all.iter() {
            insert.execute(params_from_iter(row)).map_err(failed)?;
        }
    }
    for (_, sql) in &indexes {
        tx.execute_batch(sql).map_err(failed)?;
    }
    tx.commit().map_err(failed)?;
    Ok(started.elapsed().as_secs_f64())
}
