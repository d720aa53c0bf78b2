//! Rebuild: every projection (objects, history, quarantine) recomputed from the stored
//! deliveries and overrides alone, in one transaction.
//!
//! The rebuild folds every object again and compares each row it computes with the row
//! stored: only rows that differ are written, rows the deliveries no longer give are
//! deleted. On an intact store (the usual case: a check, or a rebuild after an upgrade
//! that changed little) that writes almost nothing; the outcome is the same as clearing
//! the projections and writing them anew, which is what it does on an empty store (with
//! the lookup indexes dropped and built again by sorting).

use super::families::{with_family, Stored};
use super::history::{history_columns, insert_step, step_args, StepText, HISTORY_KEY_COLUMNS};
use super::sql::{args, key_range, Arg, Backend, Db, Row};
use super::write::{
    object_args, object_columns, write_object, ObjectText, OBJECT_KEY_COLUMNS, OBJECT_SEQ_COLUMN,
};
use super::{Context, RebuildStats, Result, StoreError};
use crate::delivery::Outcome;
use crate::event::{self, Event, Kind};
use crate::fold::{self, Entry};
use crate::index::Index;
use crate::plan;
use crate::wire::kept_timestamp;
use std::collections::{BTreeSet, HashMap};

/// Deliveries a rebuild reads (and parses in parallel) at a time.
const CHUNK: usize = 8192;

/// Objects whose stored rows (to compare them) a rebuild reads at a time.
const OBJECT_CHUNK: usize = 4096;

/// Deliveries a second read asks for by seq in one statement (a list shorter than this
/// repeats its last seq, so that there is one statement to prepare).
const SEQ_LIST: usize = 500;

/// An object's key as stored: (kind, id).
type ObjectKey = (&'static str, String);

/// One object's parsed deliveries, under its stored key.
type Group = (ObjectKey, (Kind, Vec<Stored_>));

/// One stored delivery as a rebuild reads it.
struct Read {
    seq: i64,
    delivery_id: String,
    body: Vec<u8>,
    /// Stored as malformed.
    malformed: bool,
    /// Stored without an event type (stores written before `eb78430` kept none for a
    /// malformed delivery of a known type).
    untyped: bool,
    /// An override accepted this delivery's body.
    forced: bool,
}

/// The columns of a [`Read`]; an override names a delivery id and the body it accepted.
const READ: &str = "SELECT d.seq, d.delivery_id, d.body,
        CASE WHEN d.outcome = 'malformed' THEN 1 ELSE 0 END,
        CASE WHEN d.event_type IS NULL THEN 1 ELSE 0 END,
        CASE WHEN EXISTS (SELECT 1 FROM overrides o
                           WHERE o.delivery_id = d.delivery_id
                             AND o.body_sha256 = d.body_sha256)
             THEN 1 ELSE 0 END
   FROM deliveries d";

impl Read {
    fn from_row(mut r: Row) -> Result<Read> {
        Ok(Read {
            seq: r.i64(0)?,
            delivery_id: r.string(1)?,
            body: r.blob(2)?,
            malformed: r.bool(3)?,
            untyped: r.bool(4)?,
            forced: r.bool(5)?,
        })
    }

    /// What the fold needs of it, with its parsed snapshot.
    fn stored(self, event: Event) -> Stored_ {
        Stored_ {
            event,
            bytes: self.body.len(),
            delivery_id: self.delivery_id,
            delivery_seq: self.seq,
            forced: self.forced,
            reparsed: self.malformed,
        }
    }
}

/// One stored delivery's snapshot, grouped by object.
struct Stored_ {
    event: Event,
    /// Its body's length: what the memory budget counts.
    bytes: usize,
    delivery_id: String,
    delivery_seq: i64,
    forced: bool,
    /// Stored as malformed, parses now: its outcome is recomputed.
    reparsed: bool,
}

/// What the first read of the deliveries keeps, by object.
enum Grouped {
    /// Every parsed delivery, while their bodies together fit in the budget (the bytes
    /// so far).
    Held(hashbrown::HashMap<(Kind, String), Vec<Stored_>>, usize),
    /// Past the budget: each object's delivery seqs and the bytes of their bodies. The
    /// deliveries are read and parsed again, one range of objects at a time.
    Seqs(hashbrown::HashMap<(Kind, String), (Vec<i64>, usize)>),
}

impl Grouped {
    fn objects(&self) -> usize {
        match self {
            Grouped::Held(groups, _) => groups.len(),
            Grouped::Seqs(seqs) => seqs.len(),
        }
    }

    /// Adds one parsed delivery of object `(kind, id)`; past `memory` bytes of bodies,
    /// lets go of every parsed snapshot and keeps seqs only.
    fn add(&mut self, kind: Kind, id: String, read: Read, event: Event, memory: usize) {
        match self {
            Grouped::Held(groups, held) => {
                *held += read.body.len();
                groups
                    .entry((kind, id))
                    .or_default()
                    .push(read.stored(event));
                if *held > memory {
                    let seqs = std::mem::take(groups)
                        .into_iter()
                        .map(|(key, entries)| {
                            let bytes = entries.iter().map(|e| e.bytes).sum();
                            (
                                key,
                                (entries.iter().map(|e| e.delivery_seq).collect(), bytes),
                            )
                        })
                        .collect();
                    *self = Grouped::Seqs(seqs);
                }
            }
            Grouped::Seqs(seqs) => {
                let (of, bytes) = seqs.entry((kind, id)).or_default();
                of.push(read.seq);
                *bytes += read.body.len();
            }
        }
    }
}

/// An object whose deliveries a ranged rebuild reads again.
struct Unread {
    key: ObjectKey,
    kind: Kind,
    /// Its deliveries' seqs.
    seqs: Vec<i64>,
    /// Their bodies' bytes.
    bytes: usize,
}

/// Deliveries whose parse result changed since they were stored: what they are now.
struct Reparsed {
    seq: i64,
    object: Option<(Kind, String, String)>,
    event_type: Option<String>,
    error: Option<String>,
}

/// Recomputes every projection inside the caller's write transaction, whose change
/// counter value is `seq`, holding at most about `memory` bytes of delivery bodies'
/// parsed snapshots at a time. Deliveries stored as `malformed` that parse now are
/// picked up (their outcome becomes what the fold now says of them). Returns, with the
/// figures, the access index of every state it wrote, built from the folded states
/// (the caller re-evaluates every pair with it: no row is read or parsed again).
///
/// The deliveries are read and parsed once, in arrival order, and grouped by object.
/// While their bodies fit in `memory` the parsed snapshots are kept and folded from
/// there; past it the rebuild keeps only each object's delivery seqs, splits the
/// objects in key order into ranges whose bodies fit, and reads and parses each range's
/// deliveries again (by seq) to fold it: memory stays bounded by about 2.8 times the
/// budget plus ~100 bytes per object and 8 per delivery, whatever the store's size.
pub(super) fn rebuild(tx: &dyn Db, seq: i64, memory: usize) -> Result<(RebuildStats, Index)> {
    // Onto empty projections, a bulk load into SQLite: the lookup indexes dropped (and
    // recreated from their stored definitions afterwards; building an index by sorting
    // beats growing it). The unique keys stay.
    let empty = tx
        .row("SELECT 1 FROM objects LIMIT 1", args![])
        .context("look for objects")?
        .is_none()
        && tx
            .row("SELECT 1 FROM history LIMIT 1", args![])
            .context("look for history")?
            .is_none();
    let indexes: Vec<(String, String)> = match tx.backend() {
        Backend::Sqlite if empty => tx
            .rows(
                "SELECT name, sql FROM sqlite_master
                  WHERE type = 'index' AND tbl_name IN ('objects', 'history') AND sql IS NOT NULL
                    AND name <> 'objects_key'",
                args![],
            )?
            .into_iter()
            .map(|mut r| Ok((r.string(0)?, r.string(1)?)))
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };
    for (name, _) in &indexes {
        tx.batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
    }
    // The epoch moves: other instances load every row anew (rows may have gone).
    tx.batch(
        "UPDATE meta SET value = value + 1 WHERE key = 'epoch';
         DELETE FROM meta WHERE key = 'needs_rebuild';",
    )
    .context("start the rebuild")?;
    // Grouped by object in a hash map; sorted afterwards (one sort beats a million
    // ordered inserts).
    let mut grouped = Grouped::Held(hashbrown::HashMap::new(), 0);
    let mut stats = RebuildStats::default();
    let mut reparsed: Vec<Reparsed> = Vec::new();
    {
        // Read a chunk, parse it on every core, group it by object.
        let mut flush = |chunk: Vec<Read>| {
            let parsed = parse_all(&chunk);
            for (read, parsed) in chunk.into_iter().zip(parsed) {
                stats.deliveries += 1;
                let env = match parsed {
                    Err(e) => {
                        stats.malformed += 1;
                        // Recorded anew when it parsed before, or when its type is
                        // known now and the row has none.
                        if !read.malformed || (read.untyped && e.event_type().is_some()) {
                            reparsed.push(Reparsed {
                                seq: read.seq,
                                object: None,
                                event_type: e.event_type().map(str::to_string),
                                error: Some(e.to_string()),
                            });
                        }
                        continue;
                    }
                    Ok(env) => env,
                };
                if read.malformed {
                    stats.reparsed += 1;
                    let key = env.event.key().map(|k| k.encode()).unwrap_or_default();
                    reparsed.push(Reparsed {
                        seq: read.seq,
                        object: env
                            .event
                            .object()
                            .map(|(kind, id)| (kind, id.to_string(), key)),
                        event_type: Some(env.event_type.clone()),
                        error: None,
                    });
                }
                let Some((kind, id)) = env.event.object().map(|(k, id)| (k, id.to_string())) else {
                    continue;
                };
                grouped.add(kind, id, read, env.event, memory);
            }
        };
        let mut chunk = Vec::with_capacity(CHUNK);
        tx.for_each(&format!("{READ} ORDER BY d.seq"), args![], &mut |r| {
            chunk.push(Read::from_row(r)?);
            if chunk.len() == CHUNK {
                flush(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
            }
            Ok(())
        })
        .context("read the deliveries")?;
        if !chunk.is_empty() {
            flush(chunk);
        }
    }
    stats.objects = grouped.objects() as u64;
    let mut repair = Repair {
        tx,
        seq,
        outcomes: HashMap::new(),
        index: Index::default(),
        rewritten: 0,
        after: None,
    };
    // By (kind as stored, id): the order of the stored rows' key (text compares
    // bytewise on both backends), so that the objects can be compared range by range.
    match grouped {
        Grouped::Held(groups, _) => {
            let mut groups: Vec<Group> = groups
                .into_iter()
                .map(|((kind, id), entries)| ((kind.as_str(), id), (kind, entries)))
                .collect();
            groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            stats.ranges = 1;
            repair.range(groups, true)?;
        }
        Grouped::Seqs(seqs) => {
            let mut objects: Vec<Unread> = seqs
                .into_iter()
                .map(|((kind, id), (seqs, bytes))| Unread {
                    key: (kind.as_str(), id),
                    kind,
                    seqs,
                    bytes,
                })
                .collect();
            objects.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            let mut objects = objects.into_iter().peekable();
            while objects.peek().is_some() {
                // The next objects whose bodies fit in the budget (at least one).
                let (mut range, mut bytes) = (Vec::new(), 0);
                while let Some(next) = objects.peek() {
                    if !range.is_empty() && bytes + next.bytes > memory {
                        break;
                    }
                    bytes += next.bytes;
                    range.extend(objects.next());
                }
                stats.ranges += 1;
                let groups = read_again(tx, range)?;
                repair.range(groups, objects.peek().is_none())?;
            }
        }
    }
    let Repair {
        outcomes,
        index,
        rewritten,
        ..
    } = repair;
    stats.rewritten = rewritten;
    for (_, sql) in &indexes {
        tx.batch(sql).context("recreate an index")?;
    }
    // Deliveries whose parse result changed: record what they are now.
    for r in reparsed {
        let (kind, id, key) = match &r.object {
            Some((k, i, key)) => (Some(k.as_str()), Some(i.as_str()), Some(key.as_str())),
            None => (None, None, None),
        };
        let outcome = match (&r.object, &r.error) {
            (Some(_), _) => outcomes.get(&r.seq).copied().unwrap_or(Outcome::Stale),
            (None, Some(_)) => Outcome::Malformed,
            (None, None) => Outcome::Unhandled,
        };
        tx.exec(
            "UPDATE deliveries SET event_type = ?2, object_kind = ?3, object_id = ?4,
                    version_key = ?5, outcome = ?6, detail = ?7 WHERE seq = ?1",
            args![
                r.seq,
                &r.event_type,
                kind,
                id,
                key,
                outcome.as_str(),
                &r.error
            ],
        )
        .context("record a re-parsed delivery")?;
    }
    stats.quarantined = tx
        .one(
            "SELECT COUNT(*) FROM history WHERE code IS NOT NULL",
            args![],
        )
        .context("count the quarantine")?
        .i64(0)? as u64;
    Ok((stats, index))
}

/// The rebuild's comparisons and writes, one range of objects after another in key
/// order.
struct Repair<'t> {
    tx: &'t dyn Db,
    /// The change counter value of the rebuild's transaction.
    seq: i64,
    /// What the fold now says of each re-parsed delivery.
    outcomes: HashMap<i64, Outcome>,
    /// The access index of every state folded.
    index: Index,
    /// Objects whose rows were written or deleted.
    rewritten: u64,
    /// The last object of the ranges done.
    after: Option<ObjectKey>,
}

impl Repair<'_> {
    /// Folds the objects of `groups` (sorted by key, all after the ranges done) and
    /// writes what differs from their stored rows, OBJECT_CHUNK objects at a time; the
    /// stored rows of objects between them that no delivery gives any more are deleted.
    /// The `last` range is open at its end, so that every stored row is met once.
    fn range(&mut self, groups: Vec<Group>, last: bool) -> Result<()> {
        let mut groups = groups.into_iter().peekable();
        loop {
            let chunk: Vec<_> = groups.by_ref().take(OBJECT_CHUNK).collect();
            let more = groups.peek().is_some();
            if chunk.is_empty() && !last {
                return Ok(());
            }
            let end = chunk.last().map(|((kind, id), _)| (*kind, id.clone()));
            let upto = if more || !last { end.as_ref() } else { None };
            let mut stored = StoredRows::read(self.tx, self.after.as_ref(), upto)?;
            for ((_, id), (kind, entries)) in chunk {
                let wrote = with_family!(
                    kind,
                    write_group(
                        self.tx,
                        &id,
                        entries,
                        self.seq,
                        &mut self.outcomes,
                        &mut self.index,
                        &mut stored
                    )
                )?;
                self.rewritten += u64::from(wrote);
            }
            self.rewritten += stored.delete_rest(self.tx)?;
            if upto.is_none() {
                return Ok(());
            }
            self.after = end;
            if !more {
                return Ok(());
            }
        }
    }
}

/// Reads and parses again the deliveries of one range of objects (sorted by key; each
/// with its delivery seqs), grouped as the first read grouped them.
fn read_again(tx: &dyn Db, range: Vec<Unread>) -> Result<Vec<Group>> {
    let mut seqs: Vec<i64> = range.iter().flat_map(|o| o.seqs.iter().copied()).collect();
    seqs.sort_unstable();
    let mut at: hashbrown::HashMap<(Kind, String), usize> = hashbrown::HashMap::new();
    let mut groups: Vec<Group> = Vec::with_capacity(range.len());
    for Unread {
        key,
        kind,
        seqs: of,
        ..
    } in range
    {
        at.insert((kind, key.1.clone()), groups.len());
        groups.push((key, (kind, Vec::with_capacity(of.len()))));
    }
    let list = (1..=SEQ_LIST)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("{READ} WHERE d.seq IN ({list}) ORDER BY d.seq");
    for part in seqs.chunks(CHUNK) {
        let mut chunk = Vec::with_capacity(part.len());
        for some in part.chunks(SEQ_LIST) {
            let values: Vec<Arg<'_>> = (0..SEQ_LIST)
                .map(|i| Arg::Int(some[i.min(some.len() - 1)]))
                .collect();
            tx.for_each(&sql, &values, &mut |r| {
                chunk.push(Read::from_row(r)?);
                Ok(())
            })
            .context("read the deliveries again")?;
        }
        let parsed = parse_all(&chunk);
        for (read, parsed) in chunk.into_iter().zip(parsed) {
            // A delivery that does not parse was counted by the first read.
            let Ok(env) = parsed else { continue };
            let found = env
                .event
                .object()
                .and_then(|(kind, id)| at.get(&(kind, id.to_string())).copied());
            let Some(i) = found else {
                return Err(StoreError::Corrupt(format!(
                    "delivery {} parsed as another object when it was read again",
                    read.seq
                )));
            };
            groups[i].1 .1.push(read.stored(env.event));
        }
    }
    Ok(groups)
}

/// Folds one object's whole history and writes those of its state and history rows
/// that differ from the stored ones (taken out of `stored`); the outcomes of its
/// re-parsed deliveries go into `outcomes`. Returns whether it wrote or deleted a row.
fn write_group<T: Stored>(
    tx: &dyn Db,
    id: &str,
    entries: Vec<Stored_>,
    seq: i64,
    outcomes: &mut HashMap<i64, Outcome>,
    index: &mut Index,
    stored: &mut StoredRows,
) -> Result<bool> {
    let kind = T::KIND;
    let mut seqs: HashMap<(fold::VersionKey, String), i64> = HashMap::new();
    let mut reparsed: Vec<(i64, fold::VersionKey)> = Vec::new();
    let entries: Vec<Entry<T>> = entries
        .into_iter()
        .filter_map(|e| {
            let snap = T::from_event(e.event)?;
            seqs.entry((snap.key, e.delivery_id.clone()))
                .or_insert(e.delivery_seq);
            if e.reparsed {
                reparsed.push((e.delivery_seq, snap.key));
            }
            Some(Entry {
                snap,
                delivery_id: e.delivery_id,
                forced: e.forced,
            })
        })
        .collect();
    let folded = fold::fold(entries);
    let mut wrote = false;
    let mut stored_steps = stored.take_history(kind, id);
    for step in &folded.steps {
        let delivery_seq = seqs
            .get(&(step.key, step.delivery_id.clone()))
            .copied()
            .unwrap_or_default();
        let key = step.key.encode();
        let text = StepText::of(step);
        let values = step_args(kind, id, step, &key, delivery_seq, &text);
        let same = stored_steps
            .remove(&key)
            .is_some_and(|row| reads_as(&values, &row, HISTORY_KEY_COLUMNS, None));
        if !same {
            insert_step(tx, &values, true)?;
            wrote = true;
        }
    }
    for key in stored_steps.into_keys() {
        tx.exec(
            "DELETE FROM history WHERE kind = ?1 AND object_id = ?2 AND version_key = ?3",
            args![kind.as_str(), id, &key],
        )
        .context("delete a history step")?;
        wrote = true;
    }
    let stored_object = stored.take_object(kind, id);
    let (Some(state), Some(max_key)) = (&folded.state, folded.max_key()) else {
        if stored_object.is_some() {
            delete_object(tx, kind.as_str(), id)?;
            wrote = true;
        }
        return Ok(wrote);
    };
    for (delivery_seq, key) in reparsed {
        if let Some(step) = folded.steps.iter().find(|s| s.key == key) {
            outcomes.insert(delivery_seq, plan::outcome_in_fold(step, &state.snap.key));
        }
    }
    let delivery_id = folded
        .steps
        .iter()
        .find(|s| s.key == state.snap.key)
        .map(|s| s.delivery_id.as_str())
        .unwrap_or_default();
    let (state_key, max_key) = (state.snap.key.encode(), max_key.encode());
    let text = ObjectText::of(state, None)?;
    let values = object_args(id, state, (&state_key, &max_key), delivery_id, seq, &text);
    // The row's key columns are the map's; `seq` says when it was written, not what.
    let same = stored_object
        .as_ref()
        .is_some_and(|row| reads_as(&values, row, OBJECT_KEY_COLUMNS, Some(OBJECT_SEQ_COLUMN)));
    if !same {
        write_object(tx, &values, stored_object.is_some())?;
        wrote = true;
    }
    // The instants as the row keeps them (to the microsecond), as a read of the row
    // would give them; an instant the store cannot write back decodes to no row.
    let instants = (
        kept_timestamp(&state.snap.key.at),
        kept_timestamp(&state.since),
    );
    if let (true, (Some(as_of), Some(since)), Some(state)) =
        (T::KIND.in_index(), instants, folded.state)
    {
        index.apply_decoded(state.snap.body.decoded(as_of, since));
    }
    Ok(wrote)
}

/// Whether a stored row reads as the values a rebuild computed for it, from column
/// `from` on (the columns before it are the row's key), `skip` aside.
fn reads_as(values: &[Arg<'_>], row: &Row, from: usize, skip: Option<usize>) -> bool {
    values.len() == row.0.len()
        && (from..values.len())
            .filter(|&i| Some(i) != skip)
            .all(|i| values[i].reads_as(&row.0[i]))
}

fn delete_object(tx: &dyn Db, kind: &str, id: &str) -> Result<()> {
    tx.exec(
        "DELETE FROM objects WHERE kind = ?1 AND id = ?2",
        args![kind, id],
    )
    .context("delete an object")?;
    Ok(())
}

/// The stored rows of one range of objects, by kind and id (the key columns taken out of
/// each row into the maps' keys). The rows a rebuild meets again are taken out; what
/// stays, the deliveries no longer give.
#[derive(Default)]
struct StoredRows {
    objects: HashMap<String, HashMap<String, Row>>,
    /// Kind, object id, version key.
    history: HashMap<String, HashMap<String, HashMap<String, Row>>>,
}

impl StoredRows {
    /// The rows of the objects after `after` (from the first if `None`) up to and with
    /// `upto` (to the last if `None`), by (kind, id).
    fn read<'a>(
        tx: &dyn Db,
        after: Option<&'a ObjectKey>,
        upto: Option<&'a ObjectKey>,
    ) -> Result<StoredRows> {
        let mut stored = StoredRows::default();
        let bounds = |b: Option<&'a ObjectKey>| b.map(|(k, id)| (*k, id.as_str()));
        let (range, values) = key_range(("kind", "id"), bounds(after), bounds(upto));
        let objects = format!(
            concat!("SELECT ", object_columns!(), " FROM objects{}"),
            range
        );
        tx.for_each(&objects, &values, &mut |mut r| {
            let (kind, id) = (r.string(0)?, r.string(1)?);
            stored.objects.entry(kind).or_default().insert(id, r);
            Ok(())
        })
        .context("read the stored objects")?;
        let (range, values) = key_range(("kind", "object_id"), bounds(after), bounds(upto));
        let history = format!(
            concat!("SELECT ", history_columns!(), " FROM history{}"),
            range
        );
        tx.for_each(&history, &values, &mut |mut r| {
            let (kind, id, key) = (r.string(0)?, r.string(1)?, r.string(2)?);
            stored
                .history
                .entry(kind)
                .or_default()
                .entry(id)
                .or_default()
                .insert(key, r);
            Ok(())
        })
        .context("read the stored history")?;
        Ok(stored)
    }

    fn take_object(&mut self, kind: Kind, id: &str) -> Option<Row> {
        self.objects.get_mut(kind.as_str())?.remove(id)
    }

    /// The object's history rows by version key.
    fn take_history(&mut self, kind: Kind, id: &str) -> HashMap<String, Row> {
        self.history
            .get_mut(kind.as_str())
            .and_then(|ids| ids.remove(id))
            .unwrap_or_default()
    }

    /// Deletes the rows of the objects the rebuild did not meet; returns how many
    /// objects they were.
    fn delete_rest(self, tx: &dyn Db) -> Result<u64> {
        let mut gone: BTreeSet<(String, String)> = BTreeSet::new();
        for (kind, ids) in self.objects {
            for id in ids.into_keys() {
                delete_object(tx, &kind, &id)?;
                gone.insert((kind.clone(), id));
            }
        }
        for (kind, ids) in self.history {
            for id in ids.into_keys() {
                tx.exec(
                    "DELETE FROM history WHERE kind = ?1 AND object_id = ?2",
                    args![&kind, &id],
                )
                .context("delete an object's history")?;
                gone.insert((kind.clone(), id));
            }
        }
        Ok(gone.len() as u64)
    }
}

/// Parses a chunk of stored bodies on every core, keeping their order.
fn parse_all(chunk: &[Read]) -> Vec<Result<event::Envelope, event::ParseError>> {
    let parse = |part: &[Read]| -> Vec<_> {
        part.iter()
            .map(|Read { body, .. }| {
                // A panic in the parser is a bug; the delivery stays stored as
                // unparseable, and the rebuild goes on.
                std::panic::catch_unwind(|| event::parse(body))
                    .unwrap_or_else(|_| Err(event::ParseError::Json("parser panicked".into())))
            })
            .collect()
    };
    crate::par::map_parts(chunk, 256, parse)
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectRow;
    use crate::wire::{format_timestamp, parse_timestamp, Timestamp};

    /// The index a rebuild builds from its folded states is the one a read of the rows
    /// it wrote would build: for every real-shaped payload of the families the index
    /// holds, the state's own row equals the decoded stored row (instants with
    /// nanoseconds included, which the store keeps to the microsecond).
    #[test]
    fn a_folded_state_decodes_as_its_stored_row_does() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/events");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("fixture").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let env = event::parse(&std::fs::read(&path).expect("read")).expect("parse");
            let Some(kind) = env.event.object().map(|(k, _)| k) else {
                continue;
            };
            if kind.in_index() {
                with_family!(kind, same_row(env.event));
                checked += 1;
            }
        }
        assert!(
            checked >= 15,
            "only {checked} fixtures of the index's families"
        );
    }

    fn same_row<T: Stored>(event: Event) {
        let mut snap = T::from_event(event).expect("family");
        snap.key.at += chrono::Duration::nanoseconds(123_456_789);
        let since = snap.key.at - chrono::Duration::nanoseconds(86_400_000_000_321);
        let row = ObjectRow {
            kind: T::KIND.as_str().to_string(),
            id: snap.body.object_id().to_string(),
            as_of: format_timestamp(&snap.key.at),
            since: format_timestamp(&since),
            body: serde_json::to_string(&snap.body).expect("encode"),
        };
        let stored = Index::decode(&row).expect("decode");
        let kept = |t: &Timestamp| parse_timestamp(&format_timestamp(t)).expect("instant");
        let own = snap.body.decoded(kept(&snap.key.at), kept(&since));
        assert_eq!(format!("{own:?}"), format!("{stored:?}"), "{}", row.body);
    }
}
