//! The cost of a delivery does not grow with the object's history (issue 8): 20 000
//! deliveries of ONE grant object against 20 000 deliveries of 20 000 objects, in the
//! same run, in shuffled and in reverse arrival order, through `Engine::ingest_batch` on
//! a real SQLite file (durable commits of 512 deliveries each).
//!
//! `cargo bench --bench replay` prints one JSON object: microseconds per delivery for
//! each case, and the ratio one-object / many-objects (1.0 = no dependence on history).
//! The one object is delivered, put on hold every tenth version and restored; a second
//! one object stays delivered throughout (one run of one status).
//! `ENTSYNC_BENCH_REPLAY` sets the count (default 20 000).

use entitlement_sync::synth::Rng;
use entitlement_sync::{Delivery, Engine};
use std::time::Instant;

fn count() -> usize {
    std::env::var("ENTSYNC_BENCH_REPLAY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Microseconds per delivery to ingest `deliveries` in batches of 512.
fn ingest(deliveries: Vec<Delivery>) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path().join("replay.db")).expect("open");
    let n = deliveries.len();
    let started = Instant::now();
    let mut rest = deliveries;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(512));
        for r in engine.ingest_batch(rest).expect("batch") {
            r.expect("delivery");
        }
        rest = tail;
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn grant(object: usize, seq: usize, holds: bool, now: chrono::DateTime<chrono::Utc>) -> Delivery {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z").expect("t0");
    let at = (t0 + chrono::Duration::milliseconds(seq as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (status, reason, event) = if holds && seq % 10 == 9 {
        ("Revoked", Some("subscription_on_hold"), "revoked")
    } else {
        ("Delivered", None, "delivered")
    };
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "business_id": "bus_bench",
        "type": format!("entitlement_grant.{event}"),
        "timestamp": at,
        "data": {
            "id": format!("grant_{object:012}"), "business_id": "bus_bench",
            "customer_id": format!("cus_{object:010}"), "entitlement_id": "ent_pro",
            "subscription_id": format!("sub_{object:010}"), "payment_id": null,
            "status": status, "revocation_reason": reason, "license_key": null,
            "delivered_at": "2026-05-01T10:00:00Z", "revoked_at": reason.map(|_| &at),
            "error_code": null, "error_message": null, "oauth_url": null,
            "metadata": {"plan": "pro", "seats": 3},
            "created_at": "2026-05-01T10:00:00Z", "updated_at": at,
        }
    }))
    .expect("json");
    Delivery::new(format!("msg_{object}_{seq}"), body, now)
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

fn main() {
    let n = count();
    let now = chrono::Utc::now();
    // Snapshot `seq` of object `object(seq)`, the same content for both cases: a grant
    // delivered, put on hold every tenth version and restored (legal histories).
    // `holds: false`: the grant stays delivered through all its versions, one run of one
    // status (a late snapshot lands inside that run, wherever it starts).
    let make = |object: &dyn Fn(usize) -> usize, holds: bool| -> Vec<Delivery> {
        (0..n)
            .map(|seq| grant(object(seq), seq, holds, now))
            .collect()
    };
    let mut figures = serde_json::Map::new();
    for order in ["shuffled", "reverse"] {
        let arrange = |mut v: Vec<Delivery>| {
            match order {
                "shuffled" => shuffle(&mut v, &mut Rng(11)),
                _ => v.reverse(),
            }
            v
        };
        let one = ingest(arrange(make(&|_| 0, true)));
        let one_status = ingest(arrange(make(&|_| 0, false)));
        let many = ingest(arrange(make(&|seq| seq, true)));
        figures.insert(
            order.into(),
            serde_json::json!({
                "one_object_us_per_delivery": (one * 10.0).round() / 10.0,
                "many_objects_us_per_delivery": (many * 10.0).round() / 10.0,
                "ratio": (one / many * 100.0).round() / 100.0,
                "one_object_one_status_us_per_delivery": (one_status * 10.0).round() / 10.0,
                "one_status_ratio": (one_status / many * 100.0).round() / 100.0,
            }),
        );
    }
    figures.insert("deliveries".into(), n.into());
    println!("{}", serde_json::Value::Object(figures));
}
