//! `entsync bench`: builds its own store of the size given and measures, in one run,
//! the access path against a raw SQLite point lookup on the same table, durable ingest
//! (one writer, and concurrent writers sharing group commits) and rebuild.
//!
//! It never touches `--db`: the stores live in a temporary directory (or `--dir`).
//!
//! Its output is JSON, always (the product contract: "a built-in benchmark that prints
//! its figures as JSON"); there is no `--json` flag, since a flag can only mean
//! something if the default were not JSON.

use super::{alloc, CliError};
use clap::Args;
use entitlement_sync::index::Index;
use entitlement_sync::store::ObjectRow;
use entitlement_sync::synth::{
    customer, entitlement, grant_delivery, grant_row, Rng, ENTITLEMENTS,
};
use entitlement_sync::{Delivery, Engine, Policy};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Grants in the access store.
    #[arg(long, default_value_t = 100_000)]
    pub grants: usize,
    /// Access lookups to time (each path).
    #[arg(long, default_value_t = 200_000)]
    pub lookups: usize,
    /// Deliveries for the durable ingest runs (each run on a fresh store).
    #[arg(long, default_value_t = 2_000)]
    pub ingest: usize,
    /// Concurrent writers for the group-commit run.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// Also time a rebuild of the access store.
    #[arg(long)]
    pub rebuild: bool,
    /// Directory for the stores (default: a new temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also build an access index of this many grants straight from synthetic rows
    /// (no store: the rows the store would hold, decoded and applied one at a time), and
    /// measure its memory and `has_access` next to a `HashMap` of the same pairs.
    #[arg(long)]
    pub index_grants: Option<usize>,
    /// Also measure on this PostgreSQL database (in schemas of the bench's own, dropped
    /// afterwards), printed under `postgres`.
    #[arg(long, env = "ENTSYNC_BENCH_POSTGRES", value_name = "URL")]
    pub postgres: Option<String>,
    /// Grants in the PostgreSQL access store.
    #[arg(long, default_value_t = 20_000)]
    pub pg_grants: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct Latency {
    calls: usize,
    mean_ns: f64,
    pub(super) p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
}

/// The `q` quantile of sorted samples by the nearest-rank method (0 when empty): the
/// one percentile definition `bench` and `simulate` share.
pub(super) fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(super) fn latency(mut samples: Vec<u64>) -> Latency {
    samples.sort_unstable();
    let n = samples.len().max(1);
    let at = |q: f64| nearest_rank(&samples, q);
    Latency {
        calls: samples.len(),
        mean_ns: samples.iter().sum::<u64>() as f64 / n as f64,
        p50_ns: at(0.50),
        p99_ns: at(0.99),
        p999_ns: at(0.999),
    }
}

#[derive(Debug, Serialize)]
struct Report {
    grants: usize,
    build_seconds: f64,
    build_deliveries_per_sec: f64,
    has_access: Latency,
    access_answer: Latency,
    raw_sqlite_lookup: Latency,
    ratio_p50_raw_over_has_access: f64,
    ingest_one_writer_per_sec: f64,
    ingest_group_commit_per_sec: f64,
    group_commit_writers: usize,
    /// Bytes the process wrote (WAL frames, checkpoint copies) per delivery of the
    /// group-commit run (Linux `/proc/self/io`; absent elsewhere).
    ingest_group_commit_bytes_written_per_delivery: Option<f64>,
    /// Baseline: the same bodies inserted raw into one SQLite table (rowid, unique id,
    /// body; WAL, `synchronous=FULL`), committed in transactions of `writers` rows each.
    raw_batched_insert_per_sec: f64,
    raw_batched_insert_bytes_written_per_row: Option<f64>,
    ratio_raw_batched_insert_over_group_commit: f64,
    /// Baseline: the rows the group-commit run stored, written again by plain SQL into
    /// an empty store of the same schema (every table and index), with the reads an
    /// idempotent apply makes (the delivery seen before, the object's head, the pair's
    /// grants and answer), `writers` deliveries per transaction, as durably, and never
    /// checkpointing: what SQLite alone costs for the same work, no parsing, planning,
    /// evaluation or copying back.
    same_rows_insert_per_sec: f64,
    same_rows_insert_bytes_written_per_delivery: Option<f64>,
    ratio_same_rows_insert_over_group_commit: f64,
    rebuild_seconds: Option<f64>,
    /// Baseline (with `--rebuild`): the store's own object and history rows, read into
    /// memory first, written again in one transaction the way the rebuild writes them
    /// (lookup indexes dropped and recreated, old rows deleted): SQLite's part alone.
    rebuild_same_rows_rewrite_seconds: Option<f64>,
    rebuild_deliveries_per_sec: Option<f64>,
    /// Live heap bytes of an [`Index`] built from the store's own rows, per grant.
    index_bytes_per_grant: f64,
    /// Baseline: live heap bytes per entry of a `HashMap<(String, String), bool>` of
    /// the same pairs.
    hashmap_bytes_per_entry: f64,
    ratio_bytes_index_over_hashmap: f64,
    /// Baseline: that `HashMap`'s lookup, same pairs asked, same run.
    hashmap_lookup: Latency,
    ratio_p50_has_access_over_hashmap: f64,
    /// With `--index-grants`: the index at that scale, built from synthetic rows.
    index_at_scale: Option<IndexScale>,
    /// A fresh engine on the access store, as `serve` starts: from open to the first
    /// correct answer (from the store, while the index loads), and to the index loaded.
    cold_start: ColdStart,
    /// The same figures on PostgreSQL (`--postgres`), measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<super::bench_pg::PgReport>,
}

/// The access index at scale, built without a store.
#[derive(Debug, Serialize)]
struct IndexScale {
    grants: usize,
    /// Distinct pairs asked about (each asked `lookups / distinct_pairs` times).
    distinct_pairs: usize,
    /// How the index was built.
    source: &'static str,
    build_seconds: f64,
    /// Live heap bytes (counting allocator) of the index, per grant.
    index_bytes_per_grant: f64,
    /// Growth of the process's resident set while building it, per grant.
    rss_bytes_per_grant: f64,
    /// `Index::has_access` directly (no engine, no lock).
    has_access: Latency,
    /// `Index::access` (the full answer) directly.
    access_answer: Latency,
    hashmap_bytes_per_entry: f64,
    hashmap_lookup: Latency,
    ratio_bytes_index_over_hashmap: f64,
    ratio_p50_has_access_over_hashmap: f64,
}

/// The pairs asked about (`distinct` of them, at least one): mostly existing ones, 10%
/// unknown.
fn query_pairs(customers: usize, distinct: usize) -> Vec<(String, String)> {
    let mut rng = Rng(0x5eed_0003);
    (0..distinct.max(1))
        .map(|i| {
            if i % 10 == 9 {
                (
                    customer(customers + rng.below(customers)),
                    entitlement(rng.below(ENTITLEMENTS)),
                )
            } else {
                (
                    customer(rng.below(customers)),
                    entitlement(rng.below(ENTITLEMENTS)),
                )
            }
        })
        .collect()
}

/// Times `lookups` calls of `f` over `pairs` (after a warm-up), one sample per call.
fn time_calls(
    pairs: &[(String, String)],
    lookups: usize,
    f: &mut dyn FnMut(&(String, String)),
) -> Latency {
    for p in pairs.iter().take(10_000) {
        f(p);
    }
    let mut samples = Vec::with_capacity(lookups);
    for i in 0..lookups {
        let p = &pairs[i % pairs.len()];
        let t = Instant::now();
        f(p);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    latency(samples)
}

/// The process's resident set, in bytes (0 where `/proc` does not say).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Live bytes allocated by `f` and still held when it returns, with its result.
fn measured<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let before = alloc::live();
    let value = f();
    (value, (alloc::live() - before) as f64)
}

/// The `HashMap` baseline: every pair of `index`, with its decision.
fn hashmap_of(
    index: &Index,
    now: chrono::DateTime<chrono::Utc>,
) -> HashMap<(String, String), bool> {
    let policy = Policy::default();
    index
        .pairs()
        .map(|(c, e)| {
            (
                (c.to_string(), e.to_string()),
                index.has_access(c, e, &policy, now),
            )
        })
        .collect()
}

fn per(bytes: f64, n: usize) -> f64 {
    bytes / n.max(1) as f64
}

/// The index of `n` synthetic grants, built one row at a time, against its baseline.
fn index_at_scale(n: usize, lookups: usize) -> IndexScale {
    let customers = (n / 3).max(1);
    eprintln!("bench: building an index of {n} grants from synthetic rows");
    let mut rng = Rng(0x5eed_0001);
    let rss_before = rss();
    let started = Instant::now();
    let (index, bytes) = measured(|| {
        let mut index = Index::default();
        for i in 0..n {
            let row = grant_row(i, customers, i, &mut rng);
            if let Ok(d) = Index::decode(&row) {
                index.apply_decoded(d);
            }
        }
        index
    });
    let build_seconds = started.elapsed().as_secs_f64();
    let rss_grown = rss().saturating_sub(rss_before) as f64;
    eprintln!(
        "bench: index of {} grants built in {build_seconds:.1}s, {:.0} bytes/grant",
        index.grants(),
        per(bytes, n)
    );
    // Up to a million distinct pairs, so that the pairs asked about do not fit in the
    // caches (the engine's run above asks 100 000, cycled).
    let pairs = query_pairs(customers, lookups.min(1_000_000));
    let now = chrono::Utc::now();
    let policy = Policy::default();
    let mut allowed = 0usize;
    let has_access = time_calls(&pairs, lookups, &mut |(c, e)| {
        allowed += usize::from(index.has_access(c, e, &policy, now));
    });
    let access_answer = time_calls(&pairs, lookups, &mut |(c, e)| {
        let _ = std::hint::black_box(index.access(c, e, &policy, now));
    });
    let (map, map_bytes) = measured(|| hashmap_of(&index, now));
    let hashmap_lookup = time_calls(&pairs, lookups, &mut |p| {
        allowed += usize::from(map.get(p).copied().unwrap_or(false));
    });
    std::hint::black_box(allowed);
    let index_bytes_per_grant = per(bytes, index.grants());
    let hashmap_bytes_per_entry = per(map_bytes, map.len());
    IndexScale {
        grants: index.grants(),
        distinct_pairs: pairs.len(),
        source: "synth::grant_row rows decoded and applied one at a time (no store)",
        build_seconds,
        index_bytes_per_grant,
        rss_bytes_per_grant: per(rss_grown, index.grants()),
        ratio_p50_has_access_over_hashmap: has_access.p50_ns as f64
            / hashmap_lookup.p50_ns.max(1) as f64,
        has_access,
        access_answer,
        hashmap_bytes_per_entry,
        hashmap_lookup,
        ratio_bytes_index_over_hashmap: index_bytes_per_grant / hashmap_bytes_per_entry,
    }
}

/// Opens a bench store.
fn open(path: &Path) -> Result<Engine, CliError> {
    Engine::open(path).map_err(|source| CliError::Open {
        store: path.display().to_string(),
        source,
    })
}

fn ingest_run(dir: &Path, name: &str, n: usize, writers: usize) -> Result<f64, CliError> {
    let engine = open(&dir.join(name))?;
    ingest_concurrently(&[engine], bench_deliveries(n), writers)
}

/// The baseline for durable ingest: `deliveries`' ids and bodies inserted into one
/// SQLite table, `batch` rows per transaction, as durably as the store commits (WAL,
/// `synchronous=FULL`), straight through rusqlite; rows per second.
fn raw_batched_insert(path: &Path, deliveries: &[Delivery], batch: usize) -> Result<f64, CliError> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let failed = |e: rusqlite::Error| CliError::Refused(format!("raw insert baseline: {e}"));
    let conn = rusqlite::Connection::open(path).map_err(failed)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE raw (seq INTEGER PRIMARY KEY, delivery_id TEXT NOT NULL UNIQUE,
                           body BLOB NOT NULL);",
    )
    .map_err(failed)?;
    let started = Instant::now();
    for chunk in deliveries.chunks(batch.max(1)) {
        let tx = conn.unchecked_transaction().map_err(failed)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO raw (delivery_id, body) VALUES (?1, ?2)")
                .map_err(failed)?;
            for d in chunk {
                insert
                    .execute(rusqlite::params![d.id, d.body])
                    .map_err(failed)?;
            }
        }
        tx.commit().map_err(failed)?;
    }
    Ok(deliveries.len() as f64 / started.elapsed().as_secs_f64())
}

/// Bytes this process has written so far (`wchar` of `/proc/self/io`), where the
/// system tells.
fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes written since `before`, per item.
fn bytes_per(before: Option<u64>, items: usize) -> Option<f64> {
    let (before, now) = (before?, bytes_written()?);
    Some(now.saturating_sub(before) as f64 / items.max(1) as f64)
}

/// `n` synthetic grant deliveries, the same in every ingest run (SQLite and PostgreSQL).
pub(super) fn bench_deliveries(n: usize) -> Vec<Delivery> {
    let mut rng = Rng(0x5eed_0002);
    (0..n)
        .map(|i| grant_delivery(i, n / 3 + 1, i, &mut rng, chrono::Utc::now()))
        .collect()
}

/// Ingests `deliveries` one by one from `writers` threads, dealt round-robin over
/// `engines` (one engine: one instance's group commit); deliveries per second.
pub(super) fn ingest_concurrently(
    engines: &[Engine],
    deliveries: Vec<Delivery>,
    writers: usize,
) -> Result<f64, CliError> {
    let writers = writers.max(1);
    let n = deliveries.len();
    let mut chunks: Vec<Vec<Delivery>> = (0..writers).map(|_| Vec::new()).collect();
    for (i, d) in deliveries.into_iter().enumerate() {
        chunks[i % writers].push(d);
    }
    let started = Instant::now();
    let errors: usize = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .enumerate()
            .map(|(k, chunk)| {
                let engine = engines[k % engines.len()].clone();
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .filter(|d| engine.ingest(d.clone()).is_err())
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(usize::MAX))
            .sum()
    });
    let secs = started.elapsed().as_secs_f64();
    if errors > 0 {
        return Err(CliError::NotStored(errors as u64));
    }
    Ok(n as f64 / secs)
}

/// Runs the benchmark and prints its report as JSON.
pub fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    alloc::start();
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("entsync-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)
        .map_err(CliError::io(format!("cannot create {}", dir.display())))?;
    let result = bench(&dir, &args);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    super::print_json(&result?)?;
    Ok(ExitCode::SUCCESS)
}

fn bench(dir: &Path, args: &BenchArgs) -> Result<Report, CliError> {
    let path = dir.join("access.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let engine = open(&path)?;
    let customers = (args.grants / 3).max(1);
    let mut rng = Rng(0x5eed_0001);
    eprintln!(
        "bench: building a store of {} grants in {}",
        args.grants,
        path.display()
    );
    let started = Instant::now();
    let mut seq = 0;
    while seq < args.grants {
        let end = (seq + 10_000).min(args.grants);
        let batch: Vec<Delivery> = (seq..end)
            .map(|i| grant_delivery(i, customers, i, &mut rng, chrono::Utc::now()))
            .collect();
        let store = || CliError::store("cannot build the access store");
        for r in engine.ingest_batch(batch).map_err(store())? {
            r.map_err(store())?;
        }
        seq = end;
    }
    let build = started.elapsed().as_secs_f64();
    let loaded = Instant::now();
    let count = engine.grant_count();
    eprintln!(
        "bench: built in {build:.1}s; index of {count} grants loaded in {:.2?}",
        loaded.elapsed()
    );
    let pairs = query_pairs(customers, args.lookups.min(100_000));
    let now = chrono::Utc::now();
    let time = |f: &mut dyn FnMut(&str, &str)| -> Latency {
        time_calls(&pairs, args.lookups, &mut |(c, e)| f(c, e))
    };
    let mut allowed = 0usize;
    let has_access = time(&mut |c, e| allowed += usize::from(engine.has_access(c, e, now)));
    let access_answer = time(&mut |c, e| {
        let _ = std::hint::black_box(engine.access(c, e, now));
    });
    let mut reader = engine
        .open_reader()
        .map_err(CliError::store("cannot open a reader"))?;
    let raw = time(&mut |c, e| {
        let _ = std::hint::black_box(reader.raw_grant_lookup(c, e));
    });
    // The index's memory, from the store's own rows (as `serve` loads them), against a
    // HashMap of the same pairs; and that HashMap's lookup.
    let rows: Vec<ObjectRow> = reader
        .changed_since(0)
        .map_err(|e| CliError::store("cannot read the rows")(e.into()))?
        .0;
    let (index, index_bytes) = measured(|| {
        let mut index = Index::default();
        for row in &rows {
            if let Ok(d) = Index::decode(row) {
                index.apply_decoded(d);
            }
        }
        index
    });
    drop(rows);
    let (map, map_bytes) = measured(|| hashmap_of(&index, now));
    let hashmap_lookup = time_calls(&pairs, args.lookups, &mut |p| {
        allowed += usize::from(map.get(p).copied().unwrap_or(false));
    });
    let index_bytes_per_grant = per(index_bytes, index.grants());
    let hashmap_bytes_per_entry = per(map_bytes, map.len());
    drop((index, map));
    std::hint::black_box(allowed);
    let index_at_scale = args.index_grants.map(|n| index_at_scale(n, args.lookups));
    let (rebuild_seconds, rebuild_rate) = if args.rebuild {
        eprintln!("bench: rebuilding");
        let t = Instant::now();
        let stats = engine
            .rebuild(chrono::Utc::now())
            .map_err(CliError::store("cannot rebuild"))?;
        let secs = t.elapsed().as_secs_f64();
        (Some(secs), Some(stats.deliveries as f64 / secs))
    } else {
        (None, None)
    };
    let rewrite_seconds = if args.rebuild {
        eprintln!("bench: the same rows rewritten by plain SQL (baseline)");
        Some(super::bench_rows::same_rows_rewrite(&path)?)
    } else {
        None
    };
    eprintln!("bench: durable ingest, one writer");
    let one = ingest_run(dir, "ingest-one.db", args.ingest, 1)?;
    eprintln!(
        "bench: durable ingest, {} writers (group commit)",
        args.writers
    );
    let written = bytes_written();
    let group = ingest_run(dir, "ingest-group.db", args.ingest * 4, args.writers)?;
    let group_bytes = bytes_per(written, args.ingest * 4);
    eprintln!("bench: raw batched insert (baseline)");
    let written = bytes_written();
    let raw_insert = raw_batched_insert(
        &dir.join("raw-insert.db"),
        &bench_deliveries(args.ingest * 4),
        args.writers,
    )?;
    let raw_insert_bytes = bytes_per(written, args.ingest * 4);
    eprintln!("bench: the same rows by plain SQL (baseline)");
    let written = bytes_written();
    let same_rows = super::bench_rows::same_rows_insert(
        &dir.join("ingest-group.db"),
        &dir.join("same-rows.db"),
        args.writers,
        |path| open(path).map(drop),
    )?;
    let same_rows_bytes = bytes_per(written, args.ingest * 4);
    let ratio = raw.p50_ns as f64 / has_access.p50_ns.max(1) as f64;
    let has_access_p50 = has_access.p50_ns;
    drop(reader);
    let probe = pairs[0].clone();
    let want = engine
        .access(&probe.0, &probe.1, now)
        .map_err(CliError::store("cannot answer"))?;
    drop(engine);
    eprintln!("bench: cold start");
    let cold_start = cold_start(&path, &probe, &want, now)?;
    let postgres = match &args.postgres {
        Some(url) => Some(super::bench_pg::bench(
            url,
            args.pg_grants,
            args.lookups,
            args.ingest,
            args.writers,
        )?),
        None => None,
    };
    Ok(Report {
        grants: count,
        build_seconds: build,
        build_deliveries_per_sec: args.grants as f64 / build.max(f64::EPSILON),
        has_access,
        access_answer,
        raw_sqlite_lookup: raw,
        ratio_p50_raw_over_has_access: ratio,
        ingest_one_writer_per_sec: one,
        ingest_group_commit_per_sec: group,
        group_commit_writers: args.writers,
        ingest_group_commit_bytes_written_per_delivery: group_bytes,
        raw_batched_insert_per_sec: raw_insert,
        raw_batched_insert_bytes_written_per_row: raw_insert_bytes,
        ratio_raw_batched_insert_over_group_commit: raw_insert / group.max(f64::EPSILON),
        same_rows_insert_per_sec: same_rows,
        same_rows_insert_bytes_written_per_delivery: same_rows_bytes,
        ratio_same_rows_insert_over_group_commit: same_rows / group.max(f64::EPSILON),
        rebuild_seconds,
        rebuild_same_rows_rewrite_seconds: rewrite_seconds,
        rebuild_deliveries_per_sec: rebuild_rate,
        index_bytes_per_grant,
        hashmap_bytes_per_entry,
        ratio_bytes_index_over_hashmap: index_bytes_per_grant / hashmap_bytes_per_entry,
        ratio_p50_has_access_over_hashmap: has_access_p50 as f64
            / hashmap_lookup.p50_ns.max(1) as f64,
        hashmap_lookup,
        index_at_scale,
        cold_start,
        postgres,
    })
}

#[derive(Debug, Serialize)]
struct ColdStart {
    /// `Engine::open`, `warm_up`, then one access answer (from the store).
    first_answer_ms: f64,
    /// Until the index is loaded and answers come from memory.
    index_ready_ms: f64,
}

/// Opens a fresh engine on `path` the way `serve` does and times it.
fn cold_start(
    path: &Path,
    (customer, entitlement): &(String, String),
    want: &entitlement_sync::Access,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ColdStart, CliError> {
    let started = Instant::now();
    let engine = open(path)?;
    engine
        .warm_up()
        .map_err(CliError::store("cannot start loading the index"))?;
    let answer = engine
        .access(customer, entitlement, now)
        .map_err(CliError::store("cannot answer"))?;
    let first = started.elapsed();
    if &answer != want {
        return Err(CliError::Refused(format!(
            "the first answer after a cold start differs: {answer:?}, not {want:?}"
        )));
    }
    while engine.index_state() != entitlement_sync::IndexState::Ready {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(ColdStart {
        first_answer_ms: first.as_secs_f64() * 1e3,
        index_ready_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}
