//! Values that parse but cannot be kept, overrides under retries, the quarantine's rows,
//! same-instant credit entries, and policy arithmetic at the edge of the calendar
//! (issue 8, the store's half).

use crate::support::{self, grant, t0, St};
use entitlement_sync::event::{self, Event};
use entitlement_sync::{Delivery, Engine, Outcome, Policy};
use serde_json::{json, Value};
use std::path::Path;

/// Instants that parse as RFC 3339 but lie outside what the store writes back: year
/// 10000 and year 0 in UTC, reached through an offset.
const POISON: [&str; 2] = ["9999-12-31T23:30:00-01:00", "0001-01-01T00:30:00+01:00"];

fn fixtures() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/events");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read");
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, serde_json::from_str(&text).expect("json")));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every path (as a list of keys/indices) to a string that parses as a timestamp.
fn timestamp_paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::String(s) if entitlement_sync::wire::parse_timestamp(s).is_some() => {
            out.push(here.clone())
        }
        Value::Object(m) => {
            for (k, v) in m {
                here.push(json!(k));
                timestamp_paths(v, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                here.push(json!(i));
                timestamp_paths(v, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn set(v: &mut Value, path: &[Value], to: &str) {
    let mut at = v;
    for p in path {
        at = match p {
            Value::String(k) => &mut at[k.as_str()],
            Value::Number(i) => &mut at[i.as_u64().unwrap() as usize],
            _ => unreachable!(),
        };
    }
    *at = json!(to);
}

/// A typed snapshot written as the store writes it reads back the same.
fn reads_back(event: &Event) -> bool {
    fn same<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq>(t: &T) -> bool {
        let text = serde_json::to_string(t).expect("encode");
        serde_json::from_str::<T>(&text).is_ok_and(|back| &back == t)
    }
    match event {
        Event::Grant(s) => same(&s.body),
        Event::Subscription(s) => same(&s.body),
        Event::Payment(s) => same(&s.body),
        Event::Refund(s) => same(&s.body),
        Event::Dispute(s) => same(&s.body),
        Event::LicenseKey(s) => same(&s.body),
        Event::CreditEntry(s) => same(&s.body),
        Event::CreditBalanceLow(s) => same(&s.body),
        Event::Unhandled => true,
    }
}

fn good_grant() -> Vec<u8> {
    grant("grant_good", St::Delivered, t0())
        .customer("cus_good")
        .body()
}

/// Issue 8, item 1: one signed delivery with a timestamp beyond year 9999 in UTC
/// (`oauth_expires_at: 9999-12-31T23:30:00-01:00`) made every access answer 503, for
/// every customer, through restarts and rebuilds. Now: every timestamp field of every
/// fixture, set to each poison value, is either refused by the parser (stored
/// `malformed`, acknowledged, listed) or reads back exactly; every other answer stays
/// right, after a reopen and after a rebuild too.
#[test]
fn a_value_that_cannot_be_read_back_is_malformed_and_harms_no_other_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entitlements.db");
    let engine = Engine::open(&path).unwrap();
    assert_eq!(
        engine
            .ingest(Delivery::new("good", good_grant(), t0()))
            .unwrap(),
        Outcome::Applied
    );
    let mut variants = 0;
    let mut malformed = 0;
    for (name, fixture) in fixtures() {
        let mut paths = Vec::new();
        timestamp_paths(&fixture, &mut Vec::new(), &mut paths);
        for p in &paths {
            for poison in POISON {
                let mut body = fixture.clone();
                set(&mut body, p, poison);
                let bytes = serde_json::to_vec(&body).unwrap();
                let parsed = event::parse(&bytes);
                if let Ok(env) = &parsed {
                    assert!(reads_back(&env.event), "{name} {p:?}: does not read back");
                }
                let id = format!("poison_{variants}");
                let outcome = engine
                    .ingest(Delivery::new(&id, bytes, t0()))
                    .unwrap_or_else(|e| panic!("{name} {p:?} = {poison}: {e}"));
                assert_eq!(
                    outcome == Outcome::Malformed,
                    parsed.is_err(),
                    "{name} {p:?} = {poison}: {outcome}"
                );
                malformed += usize::from(parsed.is_err());
                variants += 1;
                assert!(
                    engine.has_access("cus_good", "ent_pro", t0()),
                    "{name} {p:?}"
                );
            }
        }
    }
    // The fields the engine reads are among them (the envelope timestamp, `updated_at`,
    // `created_at` of ledger entries, ...).
    assert!(
        malformed >= 40,
        "only {malformed} of {variants} were refused"
    );
    let check = |engine: &Engine| {
        assert!(engine.has_access("cus_good", "ent_pro", t0()));
        let access = engine.access("cus_fx", "ent_fx", t0()).expect("answers");
        assert_eq!(access.customer_id, "cus_fx");
        engine.grants(None).expect("grants list");
        engine.customer("cus_fx").expect("customer view");
        engine.rejected().expect("quarantine");
        assert_eq!(engine.bad_rows().count, 0, "{:?}", engine.bad_rows());
        let listed = engine
            .deliveries(Some(Outcome::Malformed), None)
            .expect("deliveries");
        assert_eq!(listed.len(), malformed);
    };
    check(&engine);
    drop(engine);
    let engine = Engine::open(&path).unwrap();
    check(&engine);
    let stats = engine.rebuild(chrono::Utc::now()).expect("rebuild");
    assert_eq!(stats.malformed as usize, malformed);
    check(&engine);
}

/// A row that does not decode (written by hand here, as a downgrade or a bug would) is
/// skipped by the index, counted and named; every other answer stays right.
#[test]
fn an_undecodable_row_is_skipped_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entitlements.db");
    let engine = Engine::open(&path).unwrap();
    engine
        .ingest(Delivery::new("good", good_grant(), t0()))
        .unwrap();
    let bad = grant("grant_bad", St::Delivered, t0()).customer("cus_bad");
    engine
        .ingest(Delivery::new("bad", bad.body(), t0()))
        .unwrap();
    drop(engine);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE objects SET body = '{\"not\": \"a grant\"}' WHERE id = 'grant_bad'",
        [],
    )
    .unwrap();
    drop(conn);
    let engine = Engine::open(&path).unwrap();
    assert!(engine.has_access("cus_good", "ent_pro", t0()));
    assert!(!engine.has_access("cus_bad", "ent_pro", t0()));
    let bad = engine.bad_rows();
    assert_eq!(bad.count, 1);
    assert_eq!(bad.recent[0].0, "grant");
    assert_eq!(bad.recent[0].1, "grant_bad");
    // A rebuild writes the row anew from the stored delivery.
    engine.rebuild(chrono::Utc::now()).unwrap();
    assert!(engine.has_access("cus_bad", "ent_pro", t0()));
}

fn rejected_ids(engine: &Engine) -> Vec<String> {
    let mut ids: Vec<String> = engine
        .rejected()
        .unwrap()
        .into_iter()
        .map(|q| q.delivery_id)
        .collect();
    ids.sort();
    ids
}

/// Everything an answer or an operator sees of one pair and the quarantine.
fn view(engine: &Engine) -> (String, Vec<String>) {
    let a = engine.access("cus_a", "ent_pro", t0()).unwrap();
    (
        format!("{} {} {:?} {:?}", a.allowed, a.status, a.reason, a.grant_id),
        rejected_ids(engine),
    )
}

/// Issue 8, item 6: overrides were keyed by delivery id alone and the fast path ignored
/// them. An accepted delivery retried under the same id with a newer, illegal payload
/// must not be accepted with it, and live state must equal a rebuild.
#[test]
fn an_accept_binds_the_bytes_it_accepted_not_the_webhook_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("e.db")).unwrap();
    let at = |s: i64| t0() + chrono::Duration::seconds(s);
    let revoked = grant("g1", St::Revoked, at(1)).reason("manual");
    let restored = grant("g1", St::Delivered, at(2));
    let back_to_pending = grant("g1", St::Pending, at(3));
    engine
        .ingest(Delivery::new("m_rev", revoked.body(), t0()))
        .unwrap();
    assert_eq!(
        engine
            .ingest(Delivery::new("m_x", restored.body(), t0()))
            .unwrap(),
        Outcome::Rejected
    );
    engine.accept("m_x", t0()).unwrap();
    assert!(engine.has_access("cus_a", "ent_pro", t0()));
    // Dodo retries m_x with the object's latest state: an illegal delivered -> pending.
    assert_eq!(
        engine
            .ingest(Delivery::new("m_x", back_to_pending.body(), t0()))
            .unwrap(),
        Outcome::Rejected
    );
    let live = view(&engine);
    assert!(live.0.starts_with("true delivered"), "{live:?}");
    assert_eq!(live.1, vec!["m_x".to_string()]);
    engine.rebuild(chrono::Utc::now()).unwrap();
    assert_eq!(view(&engine), live, "rebuild equals live");
    // The same story out of order converges to the same state.
    let dir2 = tempfile::tempdir().unwrap();
    let other = Engine::open(dir2.path().join("e.db")).unwrap();
    other
        .ingest(Delivery::new("m_x", restored.body(), t0()))
        .unwrap();
    other
        .ingest(Delivery::new("m_rev", revoked.body(), t0()))
        .unwrap();
    other.accept("m_x", t0()).unwrap();
    other
        .ingest(Delivery::new("m_x", back_to_pending.body(), t0()))
        .unwrap();
    assert_eq!(view(&other), live);
}

/// Issue 8, item 6: two rejected snapshots under one delivery id kept one quarantine row
/// (`INSERT OR REPLACE`). Each is its own row now, and accepting the id accepts both.
#[test]
fn two_rejected_snapshots_under_one_delivery_id_are_two_quarantine_rows() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("e.db")).unwrap();
    let at = |s: i64| t0() + chrono::Duration::seconds(s);
    let revoked = grant("g1", St::Revoked, at(1)).reason("manual");
    engine
        .ingest(Delivery::new("m_rev", revoked.body(), t0()))
        .unwrap();
    for (s, rev) in [(2, 0), (3, 1)] {
        let body = grant("g1", St::Delivered, at(s)).revision(rev).body();
        assert_eq!(
            engine.ingest(Delivery::new("m_y", body, t0())).unwrap(),
            Outcome::Rejected
        );
    }
    assert_eq!(rejected_ids(&engine), vec!["m_y", "m_y"]);
    assert_eq!(engine.quarantine_size().unwrap(), 2);
    engine.rebuild(chrono::Utc::now()).unwrap();
    assert_eq!(rejected_ids(&engine), vec!["m_y", "m_y"]);
    engine.accept("m_y", t0()).unwrap();
    assert!(rejected_ids(&engine).is_empty());
    let a = engine.access("cus_a", "ent_pro", t0()).unwrap();
    assert!(a.allowed);
    assert_eq!(a.as_of, Some(at(3)));
}

fn ledger_entry(id: &str, before: i64, after: i64, at: &str) -> Vec<u8> {
    let (kind, is_credit) = if after > before {
        ("credit_added", true)
    } else {
        ("credit_deducted", false)
    };
    let data = json!({
        "id": id, "amount": (before - after).abs(), "balance_before": before,
        "balance_after": after, "overage_before": 0, "overage_after": 0,
        "business_id": support::BUSINESS, "created_at": at, "credit_entitlement_id": "cent_1",
        "customer_id": "cus_a", "is_credit": is_credit, "transaction_type": kind,
    });
    let event = format!("credit.{}", &kind["credit_".len()..]);
    serde_json::to_vec(&support::envelope(&event, at, data)).unwrap()
}

/// A store that took the ledger entries `bodies`, in their order or `reversed`.
fn ledger(mut bodies: Vec<Vec<u8>>, reversed: bool) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("e.db")).unwrap();
    if reversed {
        bodies.reverse();
    }
    for (i, body) in bodies.into_iter().enumerate() {
        engine
            .ingest(Delivery::new(format!("m{i}"), body, t0()))
            .unwrap();
    }
    (dir, engine)
}

/// Issue 8, item 4: two chained entries of the same instant (100 -> 90, then 90 -> 80)
/// gave 90 when their content hashes ordered them the other way. The chain orders them.
#[test]
fn same_instant_ledger_entries_are_ordered_by_their_chain() {
    let at = "2026-05-01T10:00:00Z";
    // Both id assignments, so that the content hashes order the pair both ways.
    for (first, second) in [
        ("cle_a", "cle_b"),
        ("cle_b", "cle_a"),
        ("x", "y"),
        ("y", "x"),
    ] {
        for reversed in [false, true] {
            let bodies = vec![
                ledger_entry(first, 100, 90, at),
                ledger_entry(second, 90, 80, at),
            ];
            let (_dir, engine) = ledger(bodies, reversed);
            let balance = engine.credit_balance("cus_a", "cent_1").unwrap().unwrap();
            assert_eq!(
                balance.balance.to_string(),
                "80",
                "{first} {second} {reversed}"
            );
            assert_eq!(balance.entry_id, second);
        }
    }
}

/// Same-instant entries whose chain returns to a balance it passed (a cycle's reset takes
/// the 100 credits left to 0 and adds the next cycle's 100): each entry's `balance_after`
/// is another's `balance_before`, so the chain has no end of its own. It starts at the
/// previous instant's balance, which says where it ends: 100 for the reset, 90 for
/// 100 -> 90 -> 100 -> 90. Both ended on whichever entry the content hashes put last.
#[test]
fn a_same_instant_chain_that_returns_to_a_balance_starts_at_the_previous_balance() {
    let earlier = "2026-04-01T00:00:00Z";
    let at = "2026-05-01T00:00:00Z";
    let cases: [(&[(i64, i64)], &str); 3] = [
        (&[(100, 0), (0, 100)], "100"),
        (&[(100, 90), (90, 100), (100, 90)], "90"),
        (&[(100, 0), (0, 100), (100, 40)], "40"),
    ];
    for (steps, want) in cases {
        // Id assignments that put the content hashes in different orders, and both
        // arrival orders.
        for ids in [
            ["a", "b", "c"],
            ["c", "b", "a"],
            ["x", "y", "z"],
            ["z", "x", "y"],
        ] {
            for reversed in [false, true] {
                let mut bodies: Vec<Vec<u8>> = steps
                    .iter()
                    .zip(ids)
                    .map(|(&(from, to), id)| ledger_entry(id, from, to, at))
                    .collect();
                bodies.push(ledger_entry("first", 0, 100, earlier));
                let (_dir, engine) = ledger(bodies, reversed);
                let balance = engine.credit_balance("cus_a", "cent_1").unwrap().unwrap();
                assert_eq!(
                    balance.balance.to_string(),
                    want,
                    "{steps:?} {ids:?} {reversed}"
                );
                engine.rebuild(chrono::Utc::now()).unwrap();
                let rebuilt = engine.credit_balance("cus_a", "cent_1").unwrap().unwrap();
                assert_eq!(rebuilt.balance.to_string(), want);
            }
        }
    }
}

/// More entries at one instant than a page of rows: the balance still follows every one
/// of them and the previous instant's balance. A read that took only the newest 64 rows
/// saw part of the chain and not where it started: a cycle of 66 entries (100 -> 0,
/// 0 -> 100, ...) must end at 100, where it began, and a line of 70 entries (1000 -> 999
/// -> ... -> 930) at 930.
#[test]
fn a_chain_of_more_than_64_entries_at_one_instant_is_followed_to_its_end() {
    let earlier = "2026-04-01T00:00:00Z";
    let at = "2026-05-01T00:00:00Z";
    let cycle: Vec<(i64, i64)> = (0..66)
        .map(|i| if i % 2 == 0 { (100, 0) } else { (0, 100) })
        .collect();
    let line: Vec<(i64, i64)> = (0..70).map(|i| (1000 - i, 999 - i)).collect();
    for (steps, start, want) in [(&cycle, 100, "100"), (&line, 1000, "930")] {
        for salt in ["a", "b"] {
            let mut bodies: Vec<Vec<u8>> = steps
                .iter()
                .enumerate()
                .map(|(i, &(from, to))| ledger_entry(&format!("{salt}{i}"), from, to, at))
                .collect();
            bodies.push(ledger_entry("first", 0, start, earlier));
            let (_dir, engine) = ledger(bodies.clone(), salt == "b");
            // The same read on PostgreSQL, where there is a test server.
            let schema = crate::pg::Schema::new("long_chain");
            let on_pg = schema.as_ref().map(|schema| {
                let engine = schema.engine();
                for (i, body) in bodies.into_iter().enumerate() {
                    engine
                        .ingest(Delivery::new(format!("m{i}"), body, t0()))
                        .unwrap();
                }
                engine
            });
            for (store, engine) in [("sqlite", Some(&engine)), ("postgres", on_pg.as_ref())] {
                let Some(engine) = engine else { continue };
                let balance = engine.credit_balance("cus_a", "cent_1").unwrap().unwrap();
                assert_eq!(balance.balance.to_string(), want, "{store} {salt}");
                assert_eq!(balance.entries, steps.len() as u64 + 1, "{store}");
            }
        }
    }
}

/// Issue 8, item 6: `--on-hold-grace-hours` near `u32::MAX` with a subscription on hold
/// near the end of the calendar overflowed `began + grace` and panicked.
#[test]
fn a_grace_beyond_the_calendar_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy {
        on_hold_grace: Some(chrono::Duration::hours(i64::from(u32::MAX))),
        ..Policy::default()
    };
    let engine = Engine::open_with(dir.path().join("e.db"), policy).unwrap();
    let late = support::at("9999-12-31T23:00:00Z");
    let mut g = grant("g1", St::Delivered, t0());
    g.subscription_id = Some("sub_1".into());
    engine.ingest(Delivery::new("m1", g.body(), t0())).unwrap();
    let sub = support::subscription("sub_1", "on_hold", late);
    engine
        .ingest(Delivery::new("m2", sub.body(), t0()))
        .unwrap();
    let revoked = grant("g1", St::Revoked, late).reason("subscription_on_hold");
    let mut revoked = revoked;
    revoked.subscription_id = Some("sub_1".into());
    engine
        .ingest(Delivery::new("m3", revoked.body(), t0()))
        .unwrap();
    let a = engine.access("cus_a", "ent_pro", late).unwrap();
    assert!(a.allowed, "{a:?}");
    assert!(a.grace_until.is_some());
}
