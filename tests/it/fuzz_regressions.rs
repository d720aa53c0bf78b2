//! Findings of the cargo-fuzz targets (`fuzz/`), each reproduced through the public API.
//!
//! The first: an RFC 3339 timestamp whose UTC instant lies outside years 0..=9999
//! (`9999-12-31T23:30:00-01:00` is `+10000-01-01T00:30:00Z`) parses, but chrono writes it
//! back as `+10000-...`, which the wire parser does not read, so a snapshot holding it
//! does not survive the store's JSON. PRODUCT.md ("Hardening: Values") says such a
//! delivery is `malformed`: stored raw, acknowledged, listed, and every other answer
//! stays correct. The second (at the end of the file): an open enum's normal form was not
//! its own normal form, the likely cause of a `parse` crash in CI whose input was lost.

use entitlement_sync::event::{parse, Event};
use entitlement_sync::{Delivery, Engine, Outcome};
use serde_json::{json, Value};

/// Year 10000 in UTC.
const BEYOND_9999: &str = "9999-12-31T23:30:00-01:00";
/// Year -1 in UTC.
const BEFORE_0000: &str = "0000-01-01T00:30:00+01:00";

fn now() -> entitlement_sync::wire::Timestamp {
    entitlement_sync::wire::parse_timestamp("2026-05-02T00:00:00Z").expect("now")
}

fn envelope(event_type: &str, timestamp: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "business_id": "bus_fz",
        "type": event_type,
        "timestamp": timestamp,
        "data": data,
    }))
    .expect("json")
}

fn grant_data(id: &str, customer: &str, entitlement: &str) -> Value {
    json!({
        "id": id,
        "customer_id": customer,
        "entitlement_id": entitlement,
        "status": "delivered",
        "updated_at": "2026-05-01T10:00:00Z",
        "subscription_id": null,
    })
}

/// A healthy, delivered grant for (cus_ok, ent_ok).
fn healthy() -> Delivery {
    let body = envelope(
        "entitlement_grant.delivered",
        "2026-05-01T10:00:00Z",
        grant_data("grt_ok", "cus_ok", "ent_ok"),
    );
    Delivery::new("msg_ok", body, now())
}

/// Sets `data.<path>` (dot-separated) to `value`.
fn with(mut data: Value, path: &str, value: &str) -> Value {
    let mut slot = &mut data;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        slot = slot
            .as_object_mut()
            .expect("object")
            .entry(part.to_string())
            .or_insert_with(|| json!({}));
    }
    slot[parts[parts.len() - 1]] = json!(value);
    data
}

/// The poison delivery is acknowledged as `malformed`, listed, and contained: the
/// healthy grant keeps answering, every listing works, rebuild equals live, reopen works.
/// Every problem is collected, so that a failure names all that goes wrong.
fn assert_contained(poison: &[u8], poisoned_pair: (&str, &str)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.db");
    let engine = Engine::open(&path).expect("open");
    assert_eq!(
        engine.ingest(healthy()).expect("healthy ingest"),
        Outcome::Applied
    );
    let mut problems: Vec<String> = Vec::new();

    let outcome = engine.ingest(Delivery::new("msg_poison", poison.to_vec(), now()));
    if !matches!(outcome, Ok(Outcome::Malformed)) {
        problems.push(format!("ingest: {outcome:?}, expected Ok(Malformed)"));
    }
    match engine.deliveries(Some(Outcome::Malformed), None) {
        Ok(listed) if listed.iter().any(|d| d.delivery_id == "msg_poison") => {}
        Ok(_) => problems.push("not listed as malformed".into()),
        Err(e) => problems.push(format!("deliveries(malformed): {e}")),
    }

    let check = |engine: &Engine, stage: &str, problems: &mut Vec<String>| {
        let mut p = |what: &str, r: Result<(), String>| {
            if let Err(e) = r {
                problems.push(format!("{stage}: {what}: {e}"));
            }
        };
        p(
            "access(cus_ok, ent_ok)",
            match engine.access("cus_ok", "ent_ok", now()) {
                Ok(a) if a.allowed => Ok(()),
                Ok(a) => Err(format!("the healthy grant lost access: {a:?}")),
                Err(e) => Err(e.to_string()),
            },
        );
        p(
            "access(poisoned pair)",
            engine
                .access(poisoned_pair.0, poisoned_pair.1, now())
                .map(drop)
                .map_err(|e| e.to_string()),
        );
        let all = engine.deliveries(None, None).map_err(|e| e.to_string());
        p("deliveries", all.as_ref().map(drop).map_err(Clone::clone));
        let rejected = engine.rejected().map_err(|e| e.to_string());
        p(
            "rejected",
            rejected.as_ref().map(drop).map_err(Clone::clone),
        );
        let customer = engine.customer(poisoned_pair.0).map_err(|e| e.to_string());
        p(
            "customer",
            customer.as_ref().map(drop).map_err(Clone::clone),
        );
        let grants = engine.grants(None).map_err(|e| e.to_string());
        p("grants", grants.as_ref().map(drop).map_err(Clone::clone));
        (
            grants.ok(),
            rejected.ok(),
            customer.ok(),
            engine.access("cus_ok", "ent_ok", now()).ok(),
        )
    };
    let live = check(&engine, "live", &mut problems);
    match engine.rebuild(chrono::Utc::now()) {
        Ok(_) => {
            if check(&engine, "after rebuild", &mut problems) != live {
                problems.push("rebuild != live".into());
            }
        }
        Err(e) => problems.push(format!("rebuild: {e}")),
    }
    drop(engine);
    match Engine::open(&path) {
        Ok(engine) => {
            if check(&engine, "after reopen", &mut problems) != live {
                problems.push("reopen != live".into());
            }
        }
        Err(e) => problems.push(format!("reopen: {e}")),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The pure half of the finding: the typed snapshot does not survive serde_json.
#[test]
fn grant_snapshot_with_instant_beyond_9999_round_trips_or_is_refused() {
    let body = envelope(
        "entitlement_grant.created",
        "2026-05-01T10:00:00Z",
        with(
            grant_data("grt_1", "cus_1", "ent_1"),
            "oauth_expires_at",
            BEYOND_9999,
        ),
    );
    // Either the parser refuses the instant (then the engine stores it as malformed), or
    // what it parsed reads back equal.
    if let Ok(env) = parse(&body) {
        assert_grant_reads_back(env.event, BEYOND_9999);
    }
}

/// The typed grant snapshot survives the store's JSON: serialised and read back, it is
/// equal to itself.
fn assert_grant_reads_back(event: Event, case: &str) {
    let Event::Grant(snap) = event else {
        panic!("not a grant: {case:?}")
    };
    let json = serde_json::to_string(&snap.body).expect("serialize");
    let back: entitlement_sync::event::Grant =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(back, snap.body, "{case:?}");
}

#[test]
fn grant_oauth_expires_at_beyond_9999_is_malformed() {
    let data = with(
        grant_data("grt_1", "cus_1", "ent_1"),
        "oauth_expires_at",
        BEYOND_9999,
    );
    let body = envelope("entitlement_grant.created", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn grant_updated_at_beyond_9999_is_malformed() {
    let data = with(
        grant_data("grt_1", "cus_1", "ent_1"),
        "updated_at",
        BEYOND_9999,
    );
    let body = envelope("entitlement_grant.delivered", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn grant_license_key_expires_at_beyond_9999_is_malformed() {
    let data = with(
        grant_data("grt_1", "cus_1", "ent_1"),
        "license_key.expires_at",
        BEYOND_9999,
    );
    let body = envelope("entitlement_grant.delivered", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn grant_delivered_at_before_year_0_is_malformed() {
    let data = with(
        grant_data("grt_1", "cus_1", "ent_1"),
        "delivered_at",
        BEFORE_0000,
    );
    let body = envelope("entitlement_grant.delivered", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn envelope_timestamp_beyond_9999_is_malformed() {
    let mut data = grant_data("grt_1", "cus_1", "ent_1");
    data.as_object_mut().expect("object").remove("updated_at");
    let body = envelope("entitlement_grant.delivered", BEYOND_9999, data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn subscription_date_beyond_9999_is_malformed() {
    let data = json!({
        "subscription_id": "sub_1",
        "status": "active",
        "customer": {"customer_id": "cus_1"},
        "next_billing_date": BEYOND_9999,
    });
    let body = envelope("subscription.active", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn license_key_expires_at_beyond_9999_is_malformed() {
    let data = json!({
        "id": "lic_1",
        "customer_id": "cus_1",
        "status": "active",
        "expires_at": BEYOND_9999,
    });
    let body = envelope("license_key.created", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn payment_updated_at_beyond_9999_is_malformed() {
    let data = json!({
        "payment_id": "pay_1",
        "status": "succeeded",
        "customer": {"customer_id": "cus_1"},
        "updated_at": BEYOND_9999,
    });
    let body = envelope("payment.succeeded", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

#[test]
fn credit_entry_created_at_beyond_9999_is_malformed() {
    let data = json!({
        "id": "cle_1",
        "customer_id": "cus_1",
        "credit_entitlement_id": "cent_1",
        "amount": "10",
        "balance_after": "10",
        "created_at": BEYOND_9999,
    });
    let body = envelope("credit.added", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

/// As found by the ingest target: the refund's row then breaks the access index for
/// every pair (`corrupt row: index: cannot decode refund ...`).
#[test]
fn refund_created_at_beyond_9999_is_malformed() {
    let data = json!({
        "refund_id": "ref_1",
        "payment_id": "pay_1",
        "status": "succeeded",
        "customer": {"customer_id": "cus_1"},
        "created_at": BEYOND_9999,
    });
    let body = envelope("refund.succeeded", "2026-05-01T10:00:00Z", data);
    assert_contained(&body, ("cus_1", "ent_1"));
}

/// The class behind the `parse` target's second crash (CI's input was lost; this class was
/// found by reading `wire::normalize` and fails this test on the code before the fix): an
/// unknown status or reason whose spelling holds
/// an upper-case letter without a lower-case form (`ℂ`, `𝐀`) after a cased letter was
/// normalised differently the second time (`Aℂ` → `aℂ` → `a_ℂ`), so the stored snapshot
/// read back as another value. Every open enum of a grant must read back as itself.
#[test]
fn grant_with_an_uncased_capital_in_its_status_and_reason_round_trips() {
    for spelling in ["A\u{2102}", "A\u{1D400}", "x\u{3D2}Y", "\u{1C5}\u{2102}"] {
        let mut data = with(grant_data("grt_1", "cus_1", "ent_1"), "status", spelling);
        data["revocation_reason"] = Value::from(spelling);
        let body = envelope("entitlement_grant.revoked", "2026-05-01T10:00:00Z", data);
        let env = parse(&body).expect("parses");
        assert_grant_reads_back(env.event, spelling);
    }
}
