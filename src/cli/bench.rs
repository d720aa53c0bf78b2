//! `entsync bench`: builds its own store of the size given and measures, in one run,
//! the access path against a raw SQLite point lookup on the same table, durable ingest
//! (one writer, and concurrent writers sharing group commits) and rebuild.
//!
//! It never touches `--db`: the stores live in a temporary directory (or `--dir`).
//!
//! Its output is JSON, always (the product contract: "a built-in benchmark that prints
//! its figures as JSON"); there is no `--json` flag, since a flag can only mean
//! something if the default were not JSON.

use super::CliError;
use clap::Args;
use entitlement_sync::synth::{customer, entitlement, grant_delivery, Rng, ENTITLEMENTS};
use entitlement_sync::{Delivery, Engine};
use serde::Serialize;
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
    rebuild_seconds: Option<f64>,
    rebuild_deliveries_per_sec: Option<f64>,
    /// A fresh engine on the access store, as `serve` starts: from open to the first
    /// correct answer (from the store, while the index loads), and to the index loaded.
    cold_start: ColdStart,
    /// The same figures on PostgreSQL (`--postgres`), measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<super::bench_pg::PgReport>,
}

/// Opens a bench store.
fn open(path: &Path) -> Result<Engine, CliError> {
    Engine::open(path).map_err(|source| CliError::Open {
        store: path.display().to_string(),
        source,
    })
}

fn ingest_run(dir: &Path, name: &str, n: usize, writers: usize) -> Result<f64, CliError> {
    let path = dir.join(name);
    let engine = open(&path)?;
    let mut rng = Rng(0x5eed_0002);
    let deliveries: Vec<Delivery> = (0..n)
        .map(|i| grant_delivery(i, n / 3 + 1, i, &mut rng, chrono::Utc::now()))
        .collect();
    let started = Instant::now();
    let chunks: Vec<Vec<Delivery>> = {
        let mut chunks: Vec<Vec<Delivery>> = (0..writers.max(1)).map(|_| Vec::new()).collect();
        for (i, d) in deliveries.into_iter().enumerate() {
            chunks[i % writers.max(1)].push(d);
        }
        chunks
    };
    let errors = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let engine = engine.clone();
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
            .sum::<usize>()
    });
    let secs = started.elapsed().as_secs_f64();
    if errors > 0 {
        return Err(CliError::NotStored(errors as u64));
    }
    Ok(n as f64 / secs)
}

/// Runs the benchmark and prints its report as JSON.
pub fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
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
    // The pairs asked about: mostly existing ones, 10% unknown.
    let mut rng = Rng(0x5eed_0003);
    let pairs: Vec<(String, String)> = (0..args.lookups.clamp(1, 100_000))
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
        .collect();
    let now = chrono::Utc::now();
    let time = |f: &mut dyn FnMut(&str, &str)| -> Latency {
        // Warm up, then time each call.
        for (c, e) in pairs.iter().take(10_000) {
            f(c, e);
        }
        let mut samples = Vec::with_capacity(args.lookups);
        for i in 0..args.lookups {
            let (c, e) = &pairs[i % pairs.len()];
            let t = Instant::now();
            f(c, e);
            samples.push(t.elapsed().as_nanos() as u64);
        }
        latency(samples)
    };
    let mut allowed = 0usize;
    let has_access = time(&mut |c, e| allowed += usize::from(engine.has_access(c, e, now)));
    let access_answer = time(&mut |c, e| {
        let _ = std::hint::black_box(engine.access(c, e, now));
    });
    let reader = engine
        .open_reader()
        .map_err(CliError::store("cannot open a reader"))?;
    let raw = time(&mut |c, e| {
        let _ = std::hint::black_box(reader.raw_grant_lookup(c, e));
    });
    std::hint::black_box(allowed);
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
    eprintln!("bench: durable ingest, one writer");
    let one = ingest_run(dir, "ingest-one.db", args.ingest, 1)?;
    eprintln!(
        "bench: durable ingest, {} writers (group commit)",
        args.writers
    );
    let group = ingest_run(dir, "ingest-group.db", args.ingest * 4, args.writers)?;
    let ratio = raw.p50_ns as f64 / has_access.p50_ns.max(1) as f64;
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
        rebuild_seconds,
        rebuild_deliveries_per_sec: rebuild_rate,
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
