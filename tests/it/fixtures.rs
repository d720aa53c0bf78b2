//! Fixture tests: real payloads as files under `tests/data/` (the seed documents'
//! examples byte for byte, and quirk variants), with what each must parse to and the
//! access answers they must give in `tests/data/expected.json`. One [`check`] runs the
//! whole table and reports every mismatch at once.

use crate::support::{at, entry, fold_by_object, Timestamp};
use entitlement_sync::access::{decide, GrantView, Policy, SubscriptionFacts};
use entitlement_sync::event::{self, Envelope, Event, Grant, ParseError, Subscription};
use entitlement_sync::fold::{Entry, Folded};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The expectation table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[allow(dead_code)]
    about: String,
    /// One row per fixture file: `file` plus the facts it must parse to (or `error`).
    files: Vec<Map<String, Value>>,
    /// Histories: files delivered together, in the listed order.
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    about: String,
    files: Vec<String>,
    /// The files whose snapshot the fold must reject.
    rejected: Vec<String>,
    access: Vec<AccessRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessRow {
    customer_id: String,
    entitlement_id: String,
    now: String,
    allowed: bool,
    status: String,
    reason: Option<String>,
    grant_id: Option<String>,
    oauth_url: Option<String>,
    error_code: Option<String>,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
}

fn read(file: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn error_kind(e: &ParseError) -> &'static str {
    match e {
        ParseError::NotUtf8(_) => "utf8",
        ParseError::Json(_) => "json",
        ParseError::Envelope(_) => "envelope",
        ParseError::Payload { .. } => "payload",
        ParseError::Nul => "nul",
    }
}

fn ts(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| json!(t.to_rfc3339()))
}

fn dec(d: Option<Decimal>) -> Value {
    d.map_or(Value::Null, |d| json!(d.to_string()))
}

/// The facts the table can name, read off a parsed envelope.
fn facts(env: &Envelope) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("event_type".into(), json!(env.event_type));
    let (family, object_id) = match &env.event {
        Event::Grant(s) => ("grant", Some(s.body.id.clone())),
        Event::Subscription(s) => ("subscription", Some(s.body.subscription_id.clone())),
        Event::Payment(s) => ("payment", Some(s.body.payment_id.clone())),
        Event::Refund(s) => ("refund", Some(s.body.refund_id.clone())),
        Event::Dispute(s) => ("dispute", Some(s.body.dispute_id.clone())),
        Event::LicenseKey(s) => ("license_key", Some(s.body.id.clone())),
        Event::CreditEntry(s) => ("credit_entry", Some(s.body.id.clone())),
        Event::CreditBalanceLow(s) => ("credit_balance_low", Some(s.body.object_id.clone())),
        Event::Unhandled => ("unhandled", None),
    };
    f.insert("family".into(), json!(family));
    f.insert("object_id".into(), json!(object_id));
    match &env.event {
        Event::Grant(s) => {
            let g = &s.body;
            f.insert("status".into(), json!(g.status.as_str()));
            f.insert(
                "revocation_reason".into(),
                json!(g.revocation_reason.as_ref().map(|r| r.as_str())),
            );
            f.insert("customer_id".into(), json!(g.customer_id));
            f.insert("entitlement_id".into(), json!(g.entitlement_id));
            f.insert("version".into(), ts(Some(s.key.at)));
            f.insert(
                "license_key_expires_at".into(),
                ts(g.license_key.as_ref().and_then(|k| k.expires_at)),
            );
        }
        Event::Subscription(s) => {
            f.insert("status".into(), json!(s.body.status.as_str()));
            f.insert("customer_id".into(), json!(s.body.customer_id()));
            f.insert("amount".into(), dec(s.body.recurring_pre_tax_amount));
            f.insert("version".into(), ts(Some(s.key.at)));
        }
        Event::Payment(s) => {
            f.insert(
                "status".into(),
                json!(s.body.status.as_ref().map(|x| x.as_str())),
            );
            f.insert("customer_id".into(), json!(s.body.customer_id()));
            f.insert("amount".into(), dec(s.body.total_amount));
            f.insert("version".into(), ts(Some(s.key.at)));
        }
        Event::CreditEntry(s) => {
            f.insert("status".into(), json!(s.body.transaction_type));
            f.insert("customer_id".into(), json!(s.body.customer_id));
            f.insert("amount".into(), dec(Some(s.body.amount)));
            f.insert("balance_after".into(), dec(Some(s.body.balance_after)));
            f.insert("version".into(), ts(Some(s.key.at)));
        }
        _ => {}
    }
    f
}

/// Compares one expected fact with what was parsed: instants as instants, amounts as
/// exact decimals, the rest as JSON.
fn same(key: &str, want: &Value, got: &Value) -> bool {
    match (key, want, got) {
        ("version" | "license_key_expires_at", Value::String(w), Value::String(g)) => {
            at(w) == at(g)
        }
        ("amount" | "balance_after", Value::String(w), Value::String(g)) => {
            match (Decimal::from_str(w), Decimal::from_str(g)) {
                (Ok(w), Ok(g)) => w == g,
                _ => false,
            }
        }
        _ => want == got,
    }
}

fn check_file(row: &Map<String, Value>, failures: &mut Vec<String>) {
    let file = row["file"].as_str().expect("file is a string");
    let parsed = event::parse(&read(file));
    match (row.get("error"), parsed) {
        (Some(want), Err(e)) => {
            if want.as_str() != Some(error_kind(&e)) {
                failures.push(format!("{file}: want a {want} error, got {e}"));
            }
        }
        (Some(want), Ok(env)) => failures.push(format!(
            "{file}: want a {want} error, parsed {:?}",
            env.event
        )),
        (None, Err(e)) => failures.push(format!("{file}: does not parse: {e}")),
        (None, Ok(env)) => {
            assert!(
                row.contains_key("family") && row.contains_key("object_id"),
                "{file}: every row names its family and object id"
            );
            let got = facts(&env);
            for (key, want) in row.iter().filter(|(k, _)| *k != "file") {
                let Some(g) = got.get(key) else {
                    panic!("{file}: the table names {key:?}, which `facts` does not know");
                };
                if !same(key, want, g) {
                    failures.push(format!("{file}: {key}: want {want}, got {g}"));
                }
            }
        }
    }
}

fn check_case(case: &Case, failures: &mut Vec<String>) {
    let mut grants: Vec<Entry<Grant>> = Vec::new();
    let mut subs: Vec<Entry<Subscription>> = Vec::new();
    for file in &case.files {
        let env = event::parse(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        match env.event {
            Event::Grant(s) => grants.push(entry(s, file.clone())),
            Event::Subscription(s) => subs.push(entry(s, file.clone())),
            other => panic!("{file}: cases hold grants and subscriptions, not {other:?}"),
        }
    }
    let folded = fold_by_object(grants.clone());
    let sub_folded = fold_by_object(subs.clone());
    // The listed order is one arrival order; the reverse must give the same.
    let reversed = fold_by_object(grants.into_iter().rev());
    for (id, f) in &folded {
        if f.state != reversed[id].state {
            failures.push(format!("{}: {id} depends on arrival order", case.about));
        }
    }
    let rejected: BTreeSet<String> = folded
        .values()
        .flat_map(|f| f.rejected().map(|(s, _)| s.delivery_id.clone()))
        .chain(
            sub_folded
                .values()
                .flat_map(|f| f.rejected().map(|(s, _)| s.delivery_id.clone())),
        )
        .collect();
    let want: BTreeSet<String> = case.rejected.iter().cloned().collect();
    if rejected != want {
        failures.push(format!(
            "{}: rejected {rejected:?}, want {want:?}",
            case.about
        ));
    }
    let facts: BTreeMap<String, SubscriptionFacts> = sub_folded
        .iter()
        .filter_map(|(id, f)| {
            f.state.as_ref().map(|cur| {
                (
                    id.clone(),
                    SubscriptionFacts {
                        subscription_id: id.clone(),
                        status: cur.snap.body.status.clone(),
                        as_of: cur.snap.key.at,
                        since: cur.since,
                    },
                )
            })
        })
        .collect();
    for row in &case.access {
        let views = views(&folded, &facts, &row.customer_id, &row.entitlement_id);
        let a = decide(
            &row.customer_id,
            &row.entitlement_id,
            &views,
            &Policy::default(),
            at(&row.now),
        );
        let got = (
            a.allowed,
            a.status.as_str(),
            a.reason.as_deref(),
            a.grant_id.as_deref(),
            a.oauth_url.as_deref(),
            a.error_code.as_deref(),
        );
        let want = (
            row.allowed,
            row.status.as_str(),
            row.reason.as_deref(),
            row.grant_id.as_deref(),
            row.oauth_url.as_deref(),
            row.error_code.as_deref(),
        );
        if got != want {
            failures.push(format!(
                "{}: access of ({}, {}) at {}:\n   got  {got:?}\n   want {want:?}",
                case.about, row.customer_id, row.entitlement_id, row.now
            ));
        }
    }
}

fn views<'a>(
    folded: &'a BTreeMap<String, Folded<Grant>>,
    subs: &'a BTreeMap<String, SubscriptionFacts>,
    customer: &str,
    entitlement: &str,
) -> Vec<GrantView<'a>> {
    folded
        .values()
        .filter_map(|f| f.state.as_ref())
        .filter(|c| {
            c.snap.body.customer_id == customer && c.snap.body.entitlement_id == entitlement
        })
        .map(|c| {
            let subscription = c
                .snap
                .body
                .subscription_id
                .as_ref()
                .and_then(|s| subs.get(s));
            GrantView::of(&c.snap.body, c.snap.key.at, subscription, None)
        })
        .collect()
}

/// Runs the whole table; returns every mismatch.
fn check(table: &Table) -> Vec<String> {
    let mut failures = Vec::new();
    for row in &table.files {
        check_file(row, &mut failures);
    }
    for case in &table.cases {
        check_case(case, &mut failures);
    }
    failures
}

#[test]
fn fixtures_parse_and_answer_as_the_table_says() {
    let text = std::fs::read_to_string(data_dir().join("expected.json")).expect("the table");
    let table: Table = serde_json::from_str(&text).expect("a valid table");
    // Every fixture file has a row, and every row a file.
    let mut on_disk = BTreeSet::new();
    for dir in ["seed", "quirks"] {
        for f in std::fs::read_dir(data_dir().join(dir)).expect("a fixture dir") {
            let name = f.expect("an entry").file_name();
            on_disk.insert(format!("{dir}/{}", name.to_string_lossy()));
        }
    }
    let listed: BTreeSet<String> = table
        .files
        .iter()
        .map(|r| r["file"].as_str().expect("file").to_string())
        .collect();
    let unlisted: Vec<&String> = on_disk
        .iter()
        .filter(|f| !f.ends_with(".md") && !listed.contains(*f))
        .collect();
    assert!(unlisted.is_empty(), "fixtures without a row: {unlisted:?}");
    assert!(table.files.len() >= 20 && table.cases.len() >= 15);
    let failures = check(&table);
    assert!(
        failures.is_empty(),
        "{} fixture mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The seed fixtures are JSON, except seed 001's example as printed (see
/// `tests/data/README.md` for where each file comes from).
#[test]
fn seed_fixtures_are_valid_json_except_the_commented_one() {
    for f in std::fs::read_dir(data_dir().join("seed")).expect("seed dir") {
        let path = f.expect("entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .to_string();
        if name.ends_with(".md") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("readable");
        let json: Result<Value, _> = serde_json::from_slice(&bytes);
        // Seed 001's example carries a `// ...` comment: not JSON (the engine must store
        // it as malformed, not crash); the `.json` twin drops only that line.
        assert_eq!(json.is_ok(), !name.ends_with(".jsonc"), "{name}");
    }
}
