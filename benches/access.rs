//! Criterion benchmarks of the hot paths, each next to its baseline in the same run:
//!
//! - `access/has_access` (in-memory index) vs `access/raw_sqlite_lookup` (a prepared,
//!   cached point lookup through the same table's index) on a store of
//!   `ENTSYNC_BENCH_GRANTS` grants (default 100 000);
//! - `index/has_access` and `index/answer` on an `Index` built straight from
//!   `ENTSYNC_BENCH_INDEX_GRANTS` synthetic rows (default 1 000 000; no store, no lock)
//!   vs `index/hashmap_baseline`, a `HashMap<(String, String), bool>` of the same pairs;
//! - `parse/grant` and `fold/step`: the pure per-delivery work;
//! - `ingest/group_commit`: durable ingest (`synchronous=FULL`) of 64 concurrent
//!   deliveries sharing commits.
//!
//! `cargo bench --bench access`. `entsync bench` reports p50/p99 and ratios as JSON.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use entitlement_sync::index::Index;
use entitlement_sync::synth::{
    customer, entitlement, grant_delivery, grant_row, Rng, ENTITLEMENTS,
};
use entitlement_sync::{event, fold, Delivery, Engine, Policy};
use std::collections::HashMap;
use std::hint::black_box;

fn grants() -> usize {
    std::env::var("ENTSYNC_BENCH_GRANTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

fn build(engine: &Engine, n: usize) {
    let now = chrono::Utc::now();
    let mut rng = Rng(1);
    let mut seq = 0;
    while seq < n {
        let end = (seq + 10_000).min(n);
        let batch: Vec<Delivery> = (seq..end)
            .map(|i| grant_delivery(i, n / 3 + 1, i, &mut rng, now))
            .collect();
        for r in engine.ingest_batch(batch).expect("batch") {
            r.expect("delivery");
        }
        seq = end;
    }
}

fn access(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path().join("bench.db")).expect("open");
    let n = grants();
    build(&engine, n);
    let customers = n / 3 + 1;
    let now = chrono::Utc::now();
    let mut rng = Rng(7);
    let pairs: Vec<(String, String)> = (0..4096)
        .map(|_| {
            (
                customer(rng.below(customers)),
                entitlement(rng.below(ENTITLEMENTS)),
            )
        })
        .collect();
    assert!(engine.grant_count() == n);
    let reader = engine.open_reader().expect("reader");
    let mut g = c.benchmark_group("access");
    let mut i = 0;
    g.bench_function("has_access", |b| {
        b.iter(|| {
            i = (i + 1) % pairs.len();
            let (c, e) = &pairs[i];
            black_box(engine.has_access(c, e, now))
        })
    });
    g.bench_function("answer", |b| {
        b.iter(|| {
            i = (i + 1) % pairs.len();
            let (c, e) = &pairs[i];
            black_box(engine.access(c, e, now).expect("access"))
        })
    });
    g.bench_function("raw_sqlite_lookup", |b| {
        b.iter(|| {
            i = (i + 1) % pairs.len();
            let (c, e) = &pairs[i];
            black_box(reader.raw_grant_lookup(c, e).expect("lookup"))
        })
    });
    g.finish();
}

fn index(c: &mut Criterion) {
    let n: usize = std::env::var("ENTSYNC_BENCH_INDEX_GRANTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let customers = (n / 3).max(1);
    let mut rng = Rng(1);
    let mut index = Index::default();
    for i in 0..n {
        let row = grant_row(i, customers, i, &mut rng);
        index.apply_decoded(Index::decode(&row).expect("decode"));
    }
    let now = chrono::Utc::now();
    let policy = Policy::default();
    let map: HashMap<(String, String), bool> = index
        .pairs()
        .map(|(c, e)| {
            let allowed = index.has_access(c, e, &policy, now);
            ((c.to_string(), e.to_string()), allowed)
        })
        .collect();
    let mut rng = Rng(7);
    let pairs: Vec<(String, String)> = (0..4096)
        .map(|_| {
            (
                customer(rng.below(customers)),
                entitlement(rng.below(ENTITLEMENTS)),
            )
        })
        .collect();
    let mut g = c.benchmark_group("index");
    let mut i = 0;
    g.bench_function("has_access", |b| {
        b.iter(|| {
            i = (i + 1) % pairs.len();
            let (c, e) = &pairs[i];
            black_box(index.has_access(c, e, &policy, now))
        })
    });
    g.bench_function("answer", |b| {
        b.iter(|| {
            i = (i + 1) % pairs.len();
            let (c, e) = &pairs[i];
            black_box(index.access(c, e, &policy, now))
        })
    });
    g.bench_function("hashmap_baseline", |b| {
        b.iter(|| {
            i = (i + 1) % pairs.len();
            black_box(map.get(&pairs[i]).copied())
        })
    });
    g.finish();
}

fn pure(c: &mut Criterion) {
    let mut rng = Rng(3);
    let d = grant_delivery(1, 1, 1, &mut rng, chrono::Utc::now());
    let mut g = c.benchmark_group("pure");
    g.throughput(Throughput::Bytes(d.body.len() as u64));
    g.bench_function("parse/grant", |b| {
        b.iter(|| black_box(event::parse(&d.body).expect("parse")))
    });
    // A payment as Dodo's example has it (amounts as strings and integers: read from the
    // parsed value), then with one amount a fraction (the payload read again from its
    // text, for exact decimals).
    let payment = include_bytes!("../tests/data/events/payment.succeeded.json").to_vec();
    let fraction = String::from_utf8(payment.clone())
        .expect("utf-8")
        .replacen("\"total_amount\": \"2999\"", "\"total_amount\": 29.99", 1)
        .into_bytes();
    assert_ne!(fraction, payment, "the fixture's total_amount is \"2999\"");
    g.bench_function("parse/payment", |b| {
        b.iter(|| black_box(event::parse(&payment).expect("parse")))
    });
    g.bench_function("parse/payment_fraction", |b| {
        b.iter(|| black_box(event::parse(&fraction).expect("parse")))
    });
    let env = event::parse(&d.body).expect("parse");
    let event::Event::Grant(snap) = env.event else {
        panic!("not a grant")
    };
    let current = fold::step(None, &snap, false).1.expect("state");
    g.bench_function("fold/step", |b| {
        b.iter(|| black_box(fold::step(Some(&current), &snap, false)))
    });
    g.finish();
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10);
    g.throughput(Throughput::Elements(64));
    let mut round = 0usize;
    g.bench_function("group_commit_64", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let engine = Engine::open(dir.path().join("ingest.db")).expect("open");
                round += 1;
                let mut rng = Rng(round as u64);
                let now = chrono::Utc::now();
                let ds: Vec<Delivery> = (0..64)
                    .map(|i| grant_delivery(i, 20, i, &mut rng, now))
                    .collect();
                (dir, engine, ds)
            },
            |(_dir, engine, ds)| {
                std::thread::scope(|s| {
                    for d in ds {
                        let engine = engine.clone();
                        s.spawn(move || engine.ingest(d).expect("ingest"));
                    }
                });
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, access, index, pure, ingest);
criterion_main!(benches);
