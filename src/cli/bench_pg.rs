//! `entsync bench --postgres URL`: the same figures on PostgreSQL, printed beside the
//! SQLite ones, in a schema of their own (`entsync_bench_<pid>`, dropped afterwards):
//! durable ingest with one writer, with many writers on one instance (group commit) and
//! spread over three instances; `has_access` from the index against a direct query of
//! the same rows; and how long a commit on one instance takes to reach another's index.

use super::bench::{bench_deliveries, ingest_concurrently, latency, Latency};
use super::CliError;
use entitlement_sync::store::Location;
use entitlement_sync::synth::{customer, entitlement, grant_delivery, Rng, ENTITLEMENTS};
use entitlement_sync::{Delivery, Engine};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What `bench` reports for PostgreSQL.
#[derive(Debug, Serialize)]
pub(super) struct PgReport {
    grants: usize,
    build_deliveries_per_sec: f64,
    has_access: Latency,
    raw_postgres_lookup: Latency,
    ratio_p50_raw_over_has_access: f64,
    ingest_one_writer_per_sec: f64,
    ingest_group_commit_per_sec: f64,
    ingest_three_instances_per_sec: f64,
    group_commit_writers: usize,
    /// From `ingest` returning on one instance to `has_access` answering from the new
    /// state on another (woken by LISTEN/NOTIFY).
    propagation: Latency,
}

/// A schema of the bench's, dropped when this is.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn location(&self) -> Location {
        Location::Postgres {
            url: self.url.clone(),
            schema: self.name.clone(),
        }
    }

    fn open(&self) -> Result<Engine, CliError> {
        Engine::open_at(self.location(), None).map_err(|source| CliError::Open {
            store: self.location().display(),
            source,
        })
    }

    fn drop_schema(&self) -> Result<(), CliError> {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls)
            .map_err(|e| CliError::Refused(format!("cannot connect to PostgreSQL: {e}")))?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .map_err(|e| CliError::Refused(format!("cannot drop {}: {e}", self.name)))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = self.drop_schema();
    }
}

fn schema(url: &str, what: &str) -> Result<Schema, CliError> {
    let schema = Schema {
        url: url.to_string(),
        name: format!("entsync_bench_{}_{what}", std::process::id()),
    };
    schema.drop_schema()?;
    Ok(schema)
}

/// The PostgreSQL figures: a store of `grants`, `lookups` timed lookups, `ingest`
/// deliveries per ingest run, `writers` concurrent writers.
pub(super) fn bench(
    url: &str,
    grants: usize,
    lookups: usize,
    ingest_n: usize,
    writers: usize,
) -> Result<PgReport, CliError> {
    let store = || CliError::store("cannot build the PostgreSQL store");
    let access = schema(url, "access")?;
    let engine = access.open()?;
    eprintln!("bench: postgres: building a store of {grants} grants");
    let started = Instant::now();
    let mut rng = Rng(0x5eed_0001);
    let all: Vec<Delivery> = (0..grants)
        .map(|i| grant_delivery(i, grants / 3 + 1, i, &mut rng, chrono::Utc::now()))
        .collect();
    for batch in all.chunks(2_000) {
        for r in engine.ingest_batch(batch.to_vec()).map_err(store())? {
            r.map_err(store())?;
        }
    }
    let build = started.elapsed().as_secs_f64();
    let count = engine.grant_count();
    let customers = (grants / 3).max(1);
    let mut rng = Rng(0x5eed_0003);
    let pairs: Vec<(String, String)> = (0..lookups.clamp(1, 100_000))
        .map(|_| {
            (
                customer(rng.below(customers)),
                entitlement(rng.below(ENTITLEMENTS)),
            )
        })
        .collect();
    let now = chrono::Utc::now();
    let time = |f: &mut dyn FnMut(&str, &str), calls: usize| -> Latency {
        for (c, e) in pairs.iter().take(1_000) {
            f(c, e);
        }
        let mut samples = Vec::with_capacity(calls);
        for i in 0..calls {
            let (c, e) = &pairs[i % pairs.len()];
            let t = Instant::now();
            f(c, e);
            samples.push(t.elapsed().as_nanos() as u64);
        }
        latency(samples)
    };
    let has_access = time(
        &mut |c, e| {
            std::hint::black_box(engine.has_access(c, e, now));
        },
        lookups,
    );
    let reader = engine
        .open_reader()
        .map_err(CliError::store("cannot open a PostgreSQL reader"))?;
    // A round trip per lookup: fewer of them.
    let raw = time(
        &mut |c, e| {
            let _ = std::hint::black_box(reader.raw_grant_lookup(c, e));
        },
        (lookups / 20).max(1_000),
    );

    // Propagation: commits on `engine`, seen by another instance's index.
    let other = access.open()?;
    other.set_external_check_interval(Duration::from_secs(3600));
    let _ = other.grant_count(); // load its index
    let mut samples = Vec::new();
    for i in 0..200 {
        let body = serde_json::json!({
            "business_id": "bus_bench", "type": "entitlement_grant.delivered",
            "timestamp": "2026-05-01T10:25:33Z",
            "data": {"id": format!("grant_prop_{i}"), "customer_id": "cus_prop",
                     "entitlement_id": format!("ent_prop_{i}"), "status": "Delivered",
                     "updated_at": "2026-05-01T10:25:33Z"}
        });
        let d = Delivery::new(
            format!("msg_prop_{i}"),
            body.to_string().into_bytes(),
            chrono::Utc::now(),
        );
        engine.ingest(d).map_err(store())?;
        let t = Instant::now();
        let deadline = t + Duration::from_secs(5);
        let ent = format!("ent_prop_{i}");
        while !other.has_access("cus_prop", &ent, now) {
            if Instant::now() > deadline {
                return Err(CliError::Refused(
                    "a commit did not reach the other instance within 5 s".into(),
                ));
            }
            std::hint::spin_loop();
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let propagation = latency(samples);
    drop((engine, other, reader));
    drop(access);

    eprintln!("bench: postgres: durable ingest, one writer");
    let one = {
        let s = schema(url, "one")?;
        ingest_concurrently(&[s.open()?], bench_deliveries(ingest_n), 1)?
    };
    eprintln!("bench: postgres: durable ingest, {writers} writers (group commit)");
    let group = {
        let s = schema(url, "group")?;
        ingest_concurrently(&[s.open()?], bench_deliveries(ingest_n * 4), writers)?
    };
    eprintln!("bench: postgres: durable ingest, {writers} writers over three instances");
    let three = {
        let s = schema(url, "three")?;
        let engines = [s.open()?, s.open()?, s.open()?];
        ingest_concurrently(&engines, bench_deliveries(ingest_n * 4), writers)?
    };
    Ok(PgReport {
        grants: count,
        build_deliveries_per_sec: grants as f64 / build.max(f64::EPSILON),
        ratio_p50_raw_over_has_access: raw.p50_ns as f64 / has_access.p50_ns.max(1) as f64,
        has_access,
        raw_postgres_lookup: raw,
        ingest_one_writer_per_sec: one,
        ingest_group_commit_per_sec: group,
        ingest_three_instances_per_sec: three,
        group_commit_writers: writers,
        propagation,
    })
}
