//! `entsync reconcile` against a fake Dodo API ([`super::fake_dodo`]) on 127.0.0.1: the
//! real binary on a real SQLite file, the store seeded with webhook-shaped deliveries
//! (`entsync ingest`), then the API's truth folded in. The contract (PRODUCT.md,
//! "Reconcile: after missed webhooks"): the flags, the `api:` delivery ids, the JSON
//! summary and the exit codes.

use super::fake_dodo::{self as dodo, Data, FakeDodo, KEY, READ_FORBIDDEN_KEY};
use entitlement_sync::reconcile::checkpoint;
use entitlement_sync::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_entsync");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn summary(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "summary is not json ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

fn entsync(db: &Path, args: &[&str], key: Option<&str>) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.arg("--db")
        .arg(db)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("DODO_PAYMENTS_API_KEY")
        .env_remove("ENTSYNC_DISPUTES")
        .env_remove("ENTSYNC_NO_REFUND_DENY")
        .env_remove("ENTSYNC_NO_SUBSCRIPTION_BACKSTOP")
        .env_remove("ENTSYNC_ON_HOLD_GRACE_HOURS")
        .stdin(Stdio::null());
    if let Some(key) = key {
        cmd.env("DODO_PAYMENTS_API_KEY", key);
    }
    let out = cmd.output().expect("run entsync");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `entsync reconcile --base-url FAKE --json` with the fake's key, fast, small pages.
fn reconcile(db: &Path, fake: &FakeDodo, extra: &[&str]) -> Out {
    let url = fake.url();
    let mut args = vec![
        "reconcile",
        "--base-url",
        &url,
        "--json",
        "--rate-limit",
        "200",
        "--page-size",
        "2",
    ];
    args.extend_from_slice(extra);
    entsync(db, &args, Some(KEY))
}

/// A webhook delivery of `data` as a bare envelope line (the webhook shape: with
/// `payload_type`).
fn webhook(event_type: &str, timestamp: &str, data: &Value, payload_type: &str) -> String {
    let mut data = data.clone();
    data["payload_type"] = json!(payload_type);
    json!({"business_id": dodo::BUSINESS, "type": event_type, "timestamp": timestamp, "data": data})
        .to_string()
}

fn ingest(db: &Path, lines: &[String]) {
    let mut child = Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(["ingest", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("entsync ingest");
    let mut stdin = child.stdin.take().expect("stdin");
    for l in lines {
        writeln!(stdin, "{l}").expect("write a line");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("ingest output");
    assert!(out.status.success(), "ingest: {out:?}");
    let counts: Value = serde_json::from_slice(&out.stdout).expect("ingest counts");
    assert_eq!(
        counts["applied"],
        lines.len(),
        "every seed applies: {counts}"
    );
}

type Answer = (bool, String, Option<String>);

fn answers(db: &Path, pairs: &[(&str, &str)]) -> BTreeMap<String, Answer> {
    let engine = Engine::open(db).expect("open the store");
    let now = chrono::Utc::now();
    pairs
        .iter()
        .map(|(c, e)| {
            let a = engine.access(c, e, now).expect("access");
            (format!("{c}/{e}"), (a.allowed, a.status, a.reason))
        })
        .collect()
}

fn allowed() -> Answer {
    (true, "delivered".into(), None)
}

fn denied(status: &str, reason: &str) -> Answer {
    (false, status.into(), Some(reason.into()))
}

const PAIRS: [(&str, &str); 7] = [
    ("cus_a", "ent_pro"),
    ("cus_b", "ent_pro"),
    ("cus_c", "ent_pro"),
    ("cus_d", "ent_pro"),
    ("cus_e", "ent_pro"),
    ("cus_s", "ent_old"),
    ("cus_f", "ent_pro"),
];

/// The outage: what webhooks brought before the receiver went down, and what Dodo's API
/// says now.
fn outage(db: &Path) -> FakeDodo {
    let mar = "2026-03-01T09:05:00Z";
    let apr = "2026-04-02T00:00:03Z";
    let mut g_hold = dodo::grant("entg_hold", "cus_d", "ent_pro", "Delivered", mar);
    g_hold["subscription_id"] = json!("sub_d");
    let mut g_pay = dodo::grant("entg_pay", "cus_f", "ent_pro", "Delivered", mar);
    g_pay["payment_id"] = json!("pay_f");
    let sub_active = dodo::subscription("sub_d", "cus_d", "active");
    let pay = dodo::payment("pay_f", "cus_f");
    ingest(
        db,
        &[
            // Newer than the API's copy (Dodo's read path lagging): must not roll back.
            webhook(
                "entitlement_grant.revoked",
                apr,
                &dodo::revoked("entg_old", "cus_a", "ent_pro", "manual", apr),
                "EntitlementGrant",
            ),
            webhook(
                "entitlement_grant.delivered",
                mar,
                &dodo::grant("entg_rev", "cus_b", "ent_pro", "Delivered", mar),
                "EntitlementGrant",
            ),
            webhook(
                "entitlement_grant.revoked",
                apr,
                &dodo::revoked("entg_ill", "cus_c", "ent_pro", "manual", apr),
                "EntitlementGrant",
            ),
            webhook(
                "entitlement_grant.delivered",
                mar,
                &g_hold,
                "EntitlementGrant",
            ),
            webhook("subscription.active", mar, &sub_active, "Subscription"),
            webhook(
                "entitlement_grant.delivered",
                mar,
                &dodo::grant("entg_soft", "cus_s", "ent_old", "Delivered", mar),
                "EntitlementGrant",
            ),
            webhook(
                "entitlement_grant.delivered",
                mar,
                &g_pay,
                "EntitlementGrant",
            ),
            webhook("payment.succeeded", "2026-03-01T09:04:10Z", &pay, "Payment"),
        ],
    );
    let mut pay_refunded = pay.clone();
    pay_refunded["refund_status"] = json!("full");
    pay_refunded["refunds"] = json!([{"refund_id": "ref_f", "payment_id": "pay_f", "status": "succeeded",
        "is_partial": false, "created_at": "2026-04-10T12:00:00Z", "amount": 4900, "currency": "USD"}]);
    let data = Data {
        entitlements: vec![
            dodo::entitlement("ent_pro"),
            dodo::entitlement("ent_other"),
            dodo::entitlement("ent_old"),
        ],
        soft_deleted: ["ent_old".to_string()].into(),
        grants: vec![
            dodo::grant("entg_old", "cus_a", "ent_pro", "Delivered", mar),
            dodo::revoked("entg_rev", "cus_b", "ent_pro", "manual", apr),
            dodo::grant(
                "entg_ill",
                "cus_c",
                "ent_pro",
                "Delivered",
                "2026-05-01T00:00:00Z",
            ),
            g_hold,
            dodo::grant(
                "entg_new",
                "cus_e",
                "ent_pro",
                "Delivered",
                "2026-03-05T10:00:00Z",
            ),
            g_pay,
            dodo::revoked(
                "entg_soft",
                "cus_s",
                "ent_old",
                "subscription_cancelled",
                "2026-04-03T00:00:00Z",
            ),
        ],
        subscriptions: vec![dodo::subscription("sub_d", "cus_d", "on_hold")],
        license_keys: vec![dodo::license_key("lic_1", "cus_a", "active")],
        payments: vec![pay_refunded],
        refunds: vec![dodo::refund("ref_f", "pay_f", "cus_f")],
        disputes: vec![dodo::dispute("dp_1", "pay_f", "cus_f")],
        ..Data::default()
    };
    FakeDodo::start(data)
}

fn expected_after() -> BTreeMap<String, Answer> {
    [
        ("cus_a/ent_pro", denied("revoked", "manual")),
        ("cus_b/ent_pro", denied("revoked", "manual")),
        ("cus_c/ent_pro", denied("revoked", "manual")),
        ("cus_d/ent_pro", denied("delivered", "subscription_on_hold")),
        ("cus_e/ent_pro", allowed()),
        ("cus_s/ent_old", denied("revoked", "subscription_cancelled")),
        ("cus_f/ent_pro", denied("delivered", "refund")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn counts(s: &Value) -> [u64; 6] {
    [
        "fetched",
        "applied",
        "unchanged",
        "rejected",
        "access_changed",
        "errors",
    ]
    .map(|k| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}")))
}

#[test]
fn one_run_brings_every_answer_back_and_a_second_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let fake = outage(&db);
    let before = answers(&db, &PAIRS);
    assert_eq!(before["cus_b/ent_pro"], allowed());
    assert_eq!(before["cus_d/ent_pro"], allowed());
    assert_eq!(before["cus_e/ent_pro"].1, "none");

    // The API's clock: every copy without an updated_at of its own is versioned by it
    // (a `Date` within 5 minutes of the local clock; one further off is not used).
    fake.data().date = Some(api_date(
        chrono::Utc::now() - chrono::Duration::seconds(180),
    ));
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    // The exact contract: one line, these keys in this order. 7 grants, 1 subscription,
    // 1 license key, 1 payment, 1 refund; disputes are not fetched under the default
    // policy (disputes never deny).
    assert_eq!(
        out.stdout,
        "{\"fetched\":11,\"applied\":7,\"unchanged\":3,\"rejected\":1,\"access_changed\":5,\"errors\":0}\n",
        "stderr: {}",
        out.stderr
    );
    assert_eq!(answers(&db, &PAIRS), expected_after());

    let log = fake.take_log();
    // Pagination to the end, counting up from the page asked (never skipping page 1):
    // six grants of ent_pro at two a page are pages 0..=2, and page 3 is empty.
    for p in 0..=3 {
        let line = format!("/entitlements/ent_pro/grants?page_number={p}&page_size=2");
        assert!(log.contains(&line), "{line} not in {log:#?}");
    }
    assert!(
        !log.iter()
            .any(|l| l.contains("ent_pro/grants?page_number=4")),
        "{log:#?}"
    );
    // The soft-deleted entitlement, known from the store, is swept too; the empty one
    // in one short page.
    assert!(
        log.iter()
            .any(|l| l.starts_with("/entitlements/ent_old/grants")),
        "{log:#?}"
    );
    assert!(log.contains(&"/entitlements/ent_other/grants?page_number=0&page_size=2".to_string()));
    assert!(!log.iter().any(|l| l.starts_with("/disputes")), "{log:#?}");
    // Changed light list items are fetched in full by id; unchanged ones are not.
    assert!(
        log.contains(&"/subscriptions/sub_d".to_string()),
        "{log:#?}"
    );
    assert!(log.contains(&"/payments/pay_f".to_string()), "{log:#?}");

    // The stored deliveries: `api:<kind>:<id>:<16 hex>`, folded like any other.
    let engine = Engine::open(&db).expect("open");
    let deliveries = engine.deliveries(None, None).expect("deliveries");
    let api: Vec<_> = deliveries
        .iter()
        .filter(|d| d.delivery_id.starts_with("api:"))
        .collect();
    // Applied and rejected ones, and the stale copy of entg_old; unchanged ones are not
    // stored.
    assert_eq!(api.len(), 9, "{api:#?}");
    for d in &api {
        let parts: Vec<&str> = d.delivery_id.split(':').collect();
        assert_eq!(parts.len(), 4, "{}", d.delivery_id);
        assert!(
            parts[3].len() == 16 && parts[3].chars().all(|c| c.is_ascii_hexdigit()),
            "{}",
            d.delivery_id
        );
    }
    let stale = api
        .iter()
        .find(|d| d.delivery_id.starts_with("api:grant:entg_old:"))
        .expect("the older copy is stored");
    assert_eq!(stale.outcome, "stale");
    assert!(!api
        .iter()
        .any(|d| d.delivery_id.starts_with("api:grant:entg_hold:")));
    let types: BTreeMap<&str, Option<&str>> = api
        .iter()
        .map(|d| (d.delivery_id.as_str(), d.event_type.as_deref()))
        .collect();
    assert!(types
        .iter()
        .any(|(id, t)| id.starts_with("api:subscription:sub_d:")
            && *t == Some("subscription.on_hold")));
    assert!(types
        .iter()
        .any(|(id, t)| id.starts_with("api:grant:entg_rev:")
            && *t == Some("entitlement_grant.revoked")));
    // The illegal restoration is in the quarantine.
    let rejected = engine.rejected().expect("rejected");
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert!(rejected[0].delivery_id.starts_with("api:grant:entg_ill:"));
    let stored = deliveries.len();
    // The access-change feed names reconcile as the cause of exactly the pairs the
    // summary counted.
    let changes = engine.changes(0, 1000).expect("changes");
    let by_reconcile: std::collections::BTreeSet<String> = changes
        .iter()
        .filter(|c| c.cause.kind() == "reconcile")
        .map(|c| format!("{}/{}", c.customer_id, c.entitlement_id))
        .collect();
    let expected: std::collections::BTreeSet<String> = [
        "cus_b/ent_pro",
        "cus_d/ent_pro",
        "cus_e/ent_pro",
        "cus_f/ent_pro",
        "cus_s/ent_old",
    ]
    .map(String::from)
    .into();
    assert_eq!(by_reconcile, expected, "{changes:#?}");
    let feed = changes.len();
    drop(engine);

    // A second run (later by the API's clock, so that copies versioned by the response
    // are new bytes): nothing applied, nothing stored.
    fake.data().date = Some(api_date(chrono::Utc::now() - chrono::Duration::seconds(90)));
    let again = reconcile(&db, &fake, &[]);
    assert_eq!(again.code, Some(0), "stderr: {}", again.stderr);
    assert_eq!(
        counts(&again.summary()),
        [11, 0, 11, 0, 0, 0],
        "{}",
        again.stdout
    );
    let engine = Engine::open(&db).expect("open");
    assert_eq!(
        engine.deliveries(None, None).expect("deliveries").len(),
        stored
    );
    assert_eq!(engine.changes(0, 1000).expect("changes").len(), feed);
    let quarantine: Vec<String> = engine
        .rejected()
        .expect("rejected")
        .into_iter()
        .map(|r| r.delivery_id)
        .collect();
    drop(engine);
    assert_eq!(answers(&db, &PAIRS), expected_after());

    // Rebuild equals live.
    let rebuilt = entsync(&db, &["rebuild"], None);
    assert_eq!(rebuilt.code, Some(0), "{}", rebuilt.stderr);
    assert_eq!(answers(&db, &PAIRS), expected_after());
    let engine = Engine::open(&db).expect("open");
    let after_rebuild: Vec<String> = engine
        .rejected()
        .expect("rejected")
        .into_iter()
        .map(|r| r.delivery_id)
        .collect();
    assert_eq!(after_rebuild, quarantine);
    drop(engine);
    // And a run after the rebuild still changes nothing.
    fake.data().date = Some(api_date(chrono::Utc::now()));
    let third = reconcile(&db, &fake, &[]);
    assert_eq!(
        counts(&third.summary()),
        [11, 0, 11, 0, 0, 0],
        "{}",
        third.stdout
    );
}

/// `at` as an HTTP `Date` (IMF-fixdate).
fn api_date(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// A grant of ent_pro for cus_1 backed by sub_1, an API whose clock reads `date` and
/// whose sub_1 is on_hold.
fn tie_api(g: &Value, date: &str) -> FakeDodo {
    FakeDodo::start(Data {
        entitlements: vec![dodo::entitlement("ent_pro")],
        grants: vec![g.clone()],
        subscriptions: vec![dodo::subscription("sub_1", "cus_1", "on_hold")],
        date: Some(date.into()),
        ..Data::default()
    })
}

#[test]
fn a_webhook_of_the_response_instant_wins_the_tie() {
    let mar = "2026-03-01T09:05:00Z";
    let mut g = dodo::grant("entg_1", "cus_1", "ent_pro", "Delivered", mar);
    g["subscription_id"] = json!("sub_1");
    let grant = webhook("entitlement_grant.delivered", mar, &g, "EntitlementGrant");
    let sub = |status: &str, at: &str| {
        webhook(
            &format!("subscription.{status}"),
            at,
            &dodo::subscription("sub_1", "cus_1", status),
            "Subscription",
        )
    };
    // A whole second of the local clock's last minute, so that the API's `Date` is used.
    let base = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - 60, 0)
        .expect("an instant");
    let second = &base.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let date = &api_date(base);
    let pair = [("cus_1", "ent_pro")];

    // The webhook first: it says active at exactly the second the API answers in; the
    // API (a read replica behind) still says on_hold, which would outrank active in a
    // plain tie. The webhook's word stands.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    ingest(&db, &[grant.clone(), sub("active", second)]);
    let fake = tie_api(&g, date);
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary()), [2, 0, 2, 0, 0, 0], "{}", out.stdout);
    assert_eq!(answers(&db, &pair)["cus_1/ent_pro"], allowed());
    // One second later the API's word is newer than the webhook's, and it applies.
    fake.data().date = Some(api_date(base + chrono::Duration::seconds(1)));
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(counts(&out.summary()), [2, 1, 1, 0, 1, 0], "{}", out.stdout);
    assert_eq!(
        answers(&db, &pair)["cus_1/ent_pro"],
        denied("delivered", "subscription_on_hold")
    );

    // The API first, then the webhook of that same second, delayed: the webhook wins
    // (it applies; `ingest` checks that every line does).
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    ingest(&db, &[grant, sub("active", mar)]);
    let out = reconcile(&db, &tie_api(&g, date), &[]);
    assert_eq!(counts(&out.summary()), [2, 1, 1, 0, 1, 0], "{}", out.stdout);
    assert_eq!(
        answers(&db, &pair)["cus_1/ent_pro"],
        denied("delivered", "subscription_on_hold")
    );
    ingest(&db, &[sub("active", second)]);
    assert_eq!(answers(&db, &pair)["cus_1/ent_pro"], allowed());
    let rebuilt = entsync(&db, &["rebuild"], None);
    assert_eq!(rebuilt.code, Some(0), "{}", rebuilt.stderr);
    assert_eq!(answers(&db, &pair)["cus_1/ent_pro"], allowed());
}

/// An API whose `Date` is far from the local clock (here: 2099) does not version what it
/// sent: the copy is versioned by the local clock instead, with a warning, so that the
/// next real webhook of that subscription applies rather than being `stale` until 2099.
#[test]
fn a_date_far_from_the_local_clock_does_not_version_the_copy() {
    let mar = "2026-03-01T09:05:00Z";
    let mut g = dodo::grant("entg_1", "cus_1", "ent_pro", "Delivered", mar);
    g["subscription_id"] = json!("sub_1");
    let grant = webhook("entitlement_grant.delivered", mar, &g, "EntitlementGrant");
    let sub = |status: &str, at: chrono::DateTime<chrono::Utc>| {
        webhook(
            &format!("subscription.{status}"),
            &at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            &dodo::subscription("sub_1", "cus_1", status),
            "Subscription",
        )
    };
    let pair = [("cus_1", "ent_pro")];
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let now = chrono::Utc::now();
    ingest(
        &db,
        &[grant, sub("active", now - chrono::Duration::hours(1))],
    );
    let fake = tie_api(&g, "Thu, 01 Jan 2099 00:00:00 GMT");
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary()), [2, 1, 1, 0, 1, 0], "{}", out.stdout);
    assert_eq!(
        answers(&db, &pair)["cus_1/ent_pro"],
        denied("delivered", "subscription_on_hold")
    );
    let engine = Engine::open(&db).expect("open");
    let copy = engine
        .deliveries(None, None)
        .expect("deliveries")
        .into_iter()
        .find(|d| d.delivery_id.starts_with("api:subscription:sub_1:"))
        .expect("the API's copy is stored");
    let version = copy
        .event_at
        .as_deref()
        .and_then(entitlement_sync::wire::parse_timestamp)
        .expect("a version");
    assert!(
        (version - now).num_minutes().abs() < 10,
        "versioned {version}, not by the local clock"
    );
    drop(engine);
    // The customer pays again a moment later: the webhook applies.
    ingest(
        &db,
        &[sub(
            "active",
            chrono::Utc::now() + chrono::Duration::seconds(1),
        )],
    );
    assert_eq!(answers(&db, &pair)["cus_1/ent_pro"], allowed());
    assert!(
        out.stderr.contains("Date") && out.stderr.contains("local clock"),
        "no warning: {}",
        out.stderr
    );
}

#[test]
fn customer_reconciles_one_customer_through_the_per_customer_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let fake = outage(&db);
    let out = reconcile(&db, &fake, &["--customer", "cus_d"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    // entg_hold (unchanged) and sub_d (on_hold, applied); nothing of anyone else.
    assert_eq!(counts(&out.summary()), [2, 1, 1, 0, 1, 0], "{}", out.stdout);
    let log = fake.take_log();
    assert!(
        log.contains(&"/customers/cus_d/entitlement-grants?page_number=0&page_size=2".to_string()),
        "{log:#?}"
    );
    for l in &log {
        assert!(
            l.starts_with("/customers/cus_d/")
                || l.contains("customer_id=cus_d")
                || l == "/subscriptions/sub_d",
            "a request not limited to the customer: {l} in {log:#?}"
        );
    }
    let got = answers(&db, &PAIRS);
    assert_eq!(
        got["cus_d/ent_pro"],
        denied("delivered", "subscription_on_hold")
    );
    // Everyone else as the webhooks left them.
    assert_eq!(got["cus_b/ent_pro"], allowed());
    assert_eq!(got["cus_e/ent_pro"].1, "none");
    assert_eq!(got["cus_f/ent_pro"], allowed());
}

/// A small API: one entitlement with one new grant.
fn small() -> Data {
    Data {
        entitlements: vec![dodo::entitlement("ent_pro")],
        grants: vec![dodo::grant(
            "entg_1",
            "cus_1",
            "ent_pro",
            "Delivered",
            "2026-03-01T09:05:00Z",
        )],
        ..Data::default()
    }
}

#[test]
fn rate_limited_requests_wait_for_the_headers_then_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let mut data = small();
    data.rate_limited = vec![(Some("1".into()), None), (None, Some("1".into()))];
    data.unavailable = 1;
    let fake = FakeDodo::start(data);
    let started = Instant::now();
    let out = reconcile(&db, &fake, &[]);
    let took = started.elapsed();
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary()), [1, 1, 0, 0, 1, 0], "{}", out.stdout);
    assert!(took >= Duration::from_millis(1900), "waited {took:?}");
    // The first request was sent four times: two 429s, one 503, then the answer.
    let log = fake.take_log();
    let first = "/entitlements?page_number=0&page_size=2";
    assert_eq!(log.iter().filter(|l| *l == first).count(), 4, "{log:#?}");
    assert!(answers(&db, &[("cus_1", "ent_pro")])["cus_1/ent_pro"].0);
}

#[test]
fn a_refused_key_exits_2_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let fake = FakeDodo::start(small());
    let url = fake.url();
    for (key, status) in [
        ("sk_live_wrong_key_1234", "401"),
        (READ_FORBIDDEN_KEY, "403"),
    ] {
        let out = entsync(&db, &["reconcile", "--base-url", &url, "--json"], Some(key));
        assert_eq!(out.code, Some(2), "{key}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        assert!(
            out.stderr
                .contains("entsync reconcile: this key cannot read entitlements")
                && out.stderr.contains(status),
            "{}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(key),
            "the key is printed: {}",
            out.stderr
        );
        assert_eq!(
            out.stderr
                .lines()
                .filter(|l| l.starts_with("entsync "))
                .count(),
            1
        );
    }
    let engine = Engine::open(&db).expect("open");
    assert!(engine
        .deliveries(None, None)
        .expect("deliveries")
        .is_empty());
    // Usage: no key, a plain-http base URL beyond loopback.
    let out = entsync(&db, &["reconcile", "--base-url", &url], None);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("DODO_PAYMENTS_API_KEY"),
        "{}",
        out.stderr
    );
    let out = entsync(
        &db,
        &["reconcile", "--base-url", "http://example.com"],
        Some(KEY),
    );
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("loopback"), "{}", out.stderr);
}

#[test]
fn failed_requests_are_counted_and_exit_1_the_rest_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let mut data = small();
    data.license_keys = vec![dodo::license_key("lic_1", "cus_1", "active")];
    data.broken_path = Some("/license_keys".into());
    let fake = FakeDodo::start(data);
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary()), [1, 1, 0, 0, 1, 1], "{}", out.stdout);
    // Retried with backoff before giving up: 1 + 4 retries.
    let log = fake.take_log();
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("/license_keys"))
            .count(),
        5
    );
    // Mended, a rerun resumes where the sweep failed: the grants and subscriptions read
    // before it are not listed again, the license keys are.
    fake.data().broken_path = None;
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary()), [1, 1, 0, 0, 0, 0], "{}", out.stdout);
    assert!(
        out.stderr.contains("resuming the sweep begun at")
            && out.stderr.contains("after subscriptions"),
        "{}",
        out.stderr
    );
    let log = fake.take_log();
    assert!(
        log.iter()
            .all(|l| !l.starts_with("/entitlements/") && !l.starts_with("/subscriptions")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("/license_keys")),
        "{log:#?}"
    );
    // That sweep is complete: the next run lists everything again.
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary()), [2, 0, 2, 0, 0, 0], "{}", out.stdout);
    assert!(!out.stderr.contains("resuming"), "{}", out.stderr);
}

#[test]
fn a_listing_without_items_or_one_that_repeats_itself_is_a_failed_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    // Not the list shape: a failed request, not an empty list.
    let mut data = small();
    data.no_items_path = Some("/subscriptions".into());
    let fake = FakeDodo::start(data);
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary())[5], 1, "{}", out.stdout);
    assert!(out.stderr.contains("no items"), "{}", out.stderr);

    // A server that answers page 0 whatever page is asked: the sweep stops there, and
    // says the rest was not read, instead of reporting a complete listing.
    let db = dir.path().join("store2.db");
    let mut data = small();
    data.grants = (0..3)
        .map(|n| {
            dodo::grant(
                &format!("entg_{n}"),
                &format!("cus_{n}"),
                "ent_pro",
                "Delivered",
                "2026-03-01T09:05:00Z",
            )
        })
        .collect();
    data.ignore_page_number = true;
    let fake = FakeDodo::start(data);
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert!(counts(&out.summary())[5] >= 1, "{}", out.stdout);
    assert!(out.stderr.contains("repeats only items"), "{}", out.stderr);
    let log = fake.take_log();
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("/entitlements/ent_pro/grants"))
            .count(),
        2,
        "page 0, then page 1 (the same items), then no more: {log:#?}"
    );
}

#[test]
fn what_a_page_fetched_before_the_api_refused_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let mut data = small();
    data.subscriptions = vec![
        dodo::subscription("sub_a", "cus_1", "active"),
        dodo::subscription("sub_b", "cus_1", "active"),
    ];
    // The key loses its access between the page's two by-id fetches.
    data.forbidden_path = Some("/subscriptions/sub_b".into());
    let fake = FakeDodo::start(data);
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    let engine = Engine::open(&db).expect("open");
    let stored = |id: &str| {
        engine
            .object(entitlement_sync::event::Kind::Subscription, id)
            .expect("read")
            .is_some()
    };
    assert!(stored("sub_a"), "fetched before the refusal, so stored");
    assert!(!stored("sub_b"));
}

#[test]
fn an_unreachable_api_stops_the_sweep_with_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = entsync(
        &db,
        &[
            "reconcile",
            "--base-url",
            &url,
            "--json",
            "--rate-limit",
            "200",
        ],
        Some(KEY),
    );
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    // One failed request (after its retries), then the sweep stops instead of waiting
    // for every other endpoint's retries.
    assert_eq!(counts(&out.summary()), [0, 0, 0, 0, 0, 1], "{}", out.stdout);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(out.stderr.contains("cannot be reached"), "{}", out.stderr);
}

#[test]
fn a_sweep_of_1000_grants_at_the_default_rate_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let mut data = small();
    data.grants = dodo::delivered_grants(1000);
    let fake = FakeDodo::start(data);
    let url = fake.url();
    let args = ["reconcile", "--base-url", &url, "--json"];
    let started = Instant::now();
    let out = entsync(&db, &args, Some(KEY));
    let first = started.elapsed();
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(
        counts(&out.summary()),
        [1000, 1000, 0, 0, 1000, 0],
        "{}",
        out.stdout
    );
    // 1 for the entitlements, 11 for the grants (ten full pages of 100, then an empty
    // one), one each for subscriptions, license keys, payments and refunds.
    let requests = fake.take_log().len();
    assert_eq!(requests, 16);
    // At 4 requests a second, 15 intervals of 250 ms.
    assert!(first >= Duration::from_millis(3700), "{first:?}");
    let started = Instant::now();
    let out = entsync(&db, &args, Some(KEY));
    let second = started.elapsed();
    assert_eq!(
        counts(&out.summary()),
        [1000, 0, 1000, 0, 0, 0],
        "{}",
        out.stdout
    );
    assert_eq!(fake.take_log().len(), 16);
    eprintln!(
        "reconcile of 1000 grants at the default rate limit: {requests} requests, first run {:.2} s, rerun {:.2} s",
        first.as_secs_f64(),
        second.as_secs_f64()
    );
}

/// The checkpoint of the full sweep against `fake`, read from the file as it is (another
/// process may be writing it).
fn saved_checkpoint(db: &Path, fake: &FakeDodo) -> Option<Value> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let key = format!("checkpoint:{}", checkpoint::scope(&fake.url(), None));
    let text: String = conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .ok()?;
    Some(serde_json::from_str(&text).expect("a checkpoint is json"))
}

#[test]
fn a_sweep_killed_mid_listing_resumes_one_page_before_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let mut data = small();
    data.grants = dodo::delivered_grants(40);
    let fake = FakeDodo::start(data);
    let url = fake.url();
    // Twenty pages of two grants at ten requests a second; killed once five are stored.
    let mut child = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .args(["reconcile", "--base-url", &url, "--json"])
        .args(["--rate-limit", "10", "--page-size", "2"])
        .env("DODO_PAYMENTS_API_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start entsync reconcile");
    super::changes::wait_for("five pages stored", Duration::from_secs(30), || {
        saved_checkpoint(&db, &fake).is_some_and(|c| c["pages"].as_u64() >= Some(5))
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let saved = saved_checkpoint(&db, &fake).expect("the checkpoint outlives the process");
    assert_eq!(
        saved["listing"],
        json!({"step": "entitlement_grants", "entitlement": "ent_pro"})
    );
    assert_eq!(saved["complete"], false, "killed mid-listing: {saved}");
    let pages = u32::try_from(saved["pages"].as_u64().expect("pages")).expect("u32");
    assert!(pages < 20, "{saved}");
    fake.take_log();

    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("resuming the sweep begun at")
            && out
                .stderr
                .contains(&format!("at the grants of ent_pro, {pages} pages read")),
        "{}",
        out.stderr
    );
    // From the page before the first unread one, to the end (the closing empty page 20).
    let asked = dodo::pages_asked(&fake.take_log(), "/entitlements/ent_pro/grants");
    assert_eq!(asked, (pages - 1..=20).collect::<Vec<_>>());
    // Each of those pages' grants fetched once: the overlap page's unchanged.
    let summary = out.summary();
    assert_eq!(summary["fetched"], 2 * (20 - (pages - 1)), "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    let pairs: Vec<(String, &str)> = (0..40)
        .map(|i| (format!("cus_{i:04}"), "ent_pro"))
        .collect();
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(c, e)| (c.as_str(), *e)).collect();
    let got = answers(&db, &pairs);
    assert!(got.values().all(|a| *a == allowed()), "{got:?}");
    assert_eq!(saved_checkpoint(&db, &fake), None, "complete: cleared");
}

#[test]
fn a_failed_page_is_where_the_next_run_resumes_and_restart_sweeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let mut data = small();
    data.subscriptions = (0..6)
        .map(|i| dodo::subscription(&format!("sub_{i}"), "cus_1", "active"))
        .collect();
    let broken = "/subscriptions?page_number=2&page_size=2";
    data.broken_request = Some(broken.into());
    let fake = FakeDodo::start(data);
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert_eq!(counts(&out.summary()), [5, 5, 0, 0, 1, 1], "{}", out.stdout);
    // The sweep went on past the failure; its checkpoint stayed before it.
    let log = fake.take_log();
    assert!(
        log.iter().any(|l| l.starts_with("/license_keys")),
        "{log:#?}"
    );
    let saved = saved_checkpoint(&db, &fake).expect("a checkpoint");
    assert_eq!(
        (&saved["listing"], &saved["pages"], &saved["complete"]),
        (&json!({"step": "subscriptions"}), &json!(2), &json!(false)),
        "{saved}"
    );

    // Mended: the rerun reads neither the grants nor the first subscriptions page again.
    fake.data().broken_request = None;
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("at subscriptions, 2 pages read"),
        "{}",
        out.stderr
    );
    // sub_2 and sub_3 (page 1, read again) unchanged; sub_4, sub_5 applied.
    assert_eq!(counts(&out.summary()), [4, 2, 2, 0, 0, 0], "{}", out.stdout);
    let log = fake.take_log();
    assert!(
        log.iter().all(|l| !l.starts_with("/entitlements/")),
        "{log:#?}"
    );
    assert_eq!(dodo::pages_asked(&log, "/subscriptions"), [1, 2, 3]);
    let engine = Engine::open(&db).expect("open");
    for i in 0..6 {
        let id = format!("sub_{i}");
        let stored = engine
            .object(entitlement_sync::event::Kind::Subscription, &id)
            .expect("read");
        assert!(stored.is_some(), "{id}");
    }
    drop(engine);
    assert_eq!(saved_checkpoint(&db, &fake), None, "complete: cleared");

    // Interrupted again, then --restart: everything is listed, from page 0.
    fake.data().broken_request = Some(broken.into());
    assert_eq!(reconcile(&db, &fake, &[]).code, Some(1));
    assert!(saved_checkpoint(&db, &fake).is_some());
    fake.data().broken_request = None;
    fake.take_log();
    let out = reconcile(&db, &fake, &["--restart"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(!out.stderr.contains("resuming"), "{}", out.stderr);
    assert_eq!(counts(&out.summary()), [7, 0, 7, 0, 0, 0], "{}", out.stdout);
    let log = fake.take_log();
    assert_eq!(dodo::pages_asked(&log, "/entitlements/ent_pro/grants"), [0]);
    assert_eq!(dodo::pages_asked(&log, "/subscriptions"), [0, 1, 2, 3]);
    assert_eq!(saved_checkpoint(&db, &fake), None);
}

#[test]
fn a_checkpoint_older_than_a_day_or_of_another_scope_page_size_or_policy_is_not_resumed() {
    use entitlement_sync::reconcile::checkpoint::{Checkpoint, Listing, Step};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let mut data = small();
    data.license_keys = vec![dodo::license_key("lic_1", "cus_1", "active")];
    let fake = FakeDodo::start(data);
    let scope = checkpoint::scope(&fake.url(), None);
    // What the default policy reads, at the page size `reconcile()` asks.
    let steps = vec![
        Step::EntitlementGrants,
        Step::Subscriptions,
        Step::LicenseKeys,
        Step::Payments,
        Step::Refunds,
    ];
    let save = |hours_ago: i64, page_size: u32, steps: &[Step]| {
        let engine = Engine::open(&db).expect("open");
        let at = Checkpoint {
            started: chrono::Utc::now() - chrono::Duration::hours(hours_ago),
            listing: Listing::of(Step::Subscriptions),
            pages: 1,
            complete: true,
            page_size,
            steps: steps.to_vec(),
        };
        engine
            .set_reconcile_checkpoint(&scope, Some(&at))
            .expect("save a checkpoint");
    };
    let grants_listed = |log: &[String]| {
        log.iter()
            .any(|l| l.starts_with("/entitlements/ent_pro/grants"))
    };

    // Begun 25 hours ago: swept again from the start, and cleared when complete.
    save(25, 2, &steps);
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(!out.stderr.contains("resuming"), "{}", out.stderr);
    assert_eq!(counts(&out.summary()), [2, 2, 0, 0, 1, 0], "{}", out.stdout);
    assert!(grants_listed(&fake.take_log()));
    assert_eq!(saved_checkpoint(&db, &fake), None);

    // Read at another page size (one page of 100 is not one of 2), or under a policy
    // that reads other listings (no refunds): swept from the start.
    for (page_size, steps) in [(100, &steps[..]), (2, &steps[..4])] {
        save(1, page_size, steps);
        let out = reconcile(&db, &fake, &[]);
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
        assert!(!out.stderr.contains("resuming"), "{}", out.stderr);
        assert_eq!(counts(&out.summary()), [2, 0, 2, 0, 0, 0], "{}", out.stdout);
        assert!(grants_listed(&fake.take_log()));
        assert_eq!(saved_checkpoint(&db, &fake), None);
    }

    // Begun an hour ago: a --customer run is a sweep of its own and does not resume it.
    save(1, 2, &steps);
    let out = reconcile(&db, &fake, &["--customer", "cus_1"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(!out.stderr.contains("resuming"), "{}", out.stderr);
    let log = fake.take_log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("/customers/cus_1/entitlement-grants")),
        "{log:#?}"
    );
    assert!(
        saved_checkpoint(&db, &fake).is_some(),
        "the full sweep's checkpoint is kept"
    );

    // The full sweep resumes it: past subscriptions, only license keys and the lists
    // after them.
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("after subscriptions"), "{}", out.stderr);
    assert_eq!(counts(&out.summary()), [1, 0, 1, 0, 0, 0], "{}", out.stdout);
    let log = fake.take_log();
    assert!(!grants_listed(&log), "{log:#?}");
    assert!(
        log.iter().any(|l| l.starts_with("/license_keys")),
        "{log:#?}"
    );
    assert_eq!(saved_checkpoint(&db, &fake), None);
}

/// One HTTP/1.1 GET, the body.
fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn serve_reconciles_in_the_background_and_reports_in_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let fake = outage(&db);
    let mut child = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--reconcile-every",
            "1h",
        ])
        .args([
            "--reconcile-base-url",
            &fake.url(),
            "--reconcile-rate-limit",
            "200",
        ])
        .env("DODO_PAYMENTS_WEBHOOK_SECRET", SECRET)
        .env("DODO_PAYMENTS_API_KEY", KEY)
        .env("RUST_LOG", "warn")
        .env_remove("ENTSYNC_API_TOKEN")
        .env_remove("ENTSYNC_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("entsync serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_default();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("no listening line: {line:?}")
        })
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = get(&addr, "/metrics");
        if m.lines().any(|l| l == "entsync_reconcile_runs_total 1") || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let access = get(&addr, "/v1/access/cus_e/ent_pro");
    let _ = child.kill();
    let _ = child.wait();
    for line in [
        "entsync_reconcile_runs_total 1",
        "entsync_reconcile_last_run_outcome{outcome=\"ok\"} 1",
        "entsync_reconcile_last_run_objects{count=\"fetched\"} 11",
        "entsync_reconcile_last_run_objects{count=\"applied\"} 7",
        "entsync_reconcile_last_run_objects{count=\"access_changed\"} 5",
        "entsync_reconcile_last_run_objects{count=\"errors\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    assert!(metrics.contains("entsync_reconcile_last_run_timestamp_seconds "));
    let access: Value = serde_json::from_str(access.trim()).expect("access json");
    assert_eq!(access["allowed"], true, "{access}");
}

/// `entsync check` with these arguments and extra environment: (exit code, answer).
fn check(db: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--db")
        .arg(db)
        .args(["check", "cus_1", "ent_pro", "--json"])
        .args(args)
        .env_remove("ENTSYNC_DISPUTES")
        .env_remove("ENTSYNC_NO_REFUND_DENY")
        .env_remove("ENTSYNC_NO_SUBSCRIPTION_BACKSTOP")
        .env_remove("ENTSYNC_ON_HOLD_GRACE_HOURS")
        .envs(env.iter().copied());
    let out = cmd.output().expect("run entsync check");
    let answer = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), answer)
}

/// `serve` ran with `--disputes on_opened` and recorded it. `check` and a `reconcile` of
/// their own, run without policy flags, take that policy: the sweep fetches the
/// disputes, `check` denies for the open one, and the recorded policy is left as it
/// was. A flag or its variable still overrides it, for that command alone.
#[test]
fn check_and_reconcile_take_the_policy_serve_recorded_where_their_flags_are_silent() {
    use entitlement_sync::{store::Location, Delivery, DisputePolicy, Outcome, Policy};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let on_opened = Policy {
        disputes: DisputePolicy::OnOpened,
        ..Policy::default()
    };
    let mar = "2026-03-01T09:05:00Z";
    let mut grant = dodo::grant("entg_1", "cus_1", "ent_pro", "Delivered", mar);
    grant["payment_id"] = json!("pay_1");
    let payment = dodo::payment("pay_1", "cus_1");
    {
        // What `serve --disputes on_opened` does: open under its policy, then store.
        let engine = Engine::open_at(Location::Sqlite(db.clone()), Some(on_opened.clone()))
            .expect("open the store");
        let lines = [
            webhook(
                "entitlement_grant.delivered",
                mar,
                &grant,
                "EntitlementGrant",
            ),
            webhook(
                "payment.succeeded",
                "2026-03-01T09:04:11Z",
                &payment,
                "Payment",
            ),
        ];
        for (i, line) in lines.iter().enumerate() {
            let d = Delivery::new(
                format!("msg_{i}"),
                line.clone().into_bytes(),
                chrono::Utc::now(),
            );
            assert_eq!(engine.ingest(d).expect("ingest"), Outcome::Applied);
        }
    }
    let (code, before) = check(&db, &[], &[]);
    assert_eq!(
        (code, &before["allowed"]),
        (Some(0), &json!(true)),
        "{before}"
    );

    let mut dispute = dodo::dispute("dsp_1", "pay_1", "cus_1");
    dispute["dispute_status"] = json!("dispute_opened");
    let fake = FakeDodo::start(Data {
        entitlements: vec![dodo::entitlement("ent_pro")],
        grants: vec![grant],
        payments: vec![payment],
        disputes: vec![dispute],
        ..Data::default()
    });
    let out = reconcile(&db, &fake, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let log = fake.take_log();
    assert!(
        log.iter().any(|l| l.starts_with("/disputes")),
        "the sweep fetches disputes under the recorded on_opened: {log:#?}"
    );

    let (code, after) = check(&db, &[], &[]);
    assert_eq!(
        (code, &after["allowed"], &after["reason"]),
        (Some(1), &json!(false), &json!("dispute")),
        "{after}"
    );
    let (code, flag) = check(&db, &["--disputes", "never"], &[]);
    assert_eq!((code, &flag["allowed"]), (Some(0), &json!(true)), "{flag}");
    let (code, var) = check(&db, &[], &[("ENTSYNC_DISPUTES", "never")]);
    assert_eq!((code, &var["allowed"]), (Some(0), &json!(true)), "{var}");
    // The other knobs as recorded too: the refund knob given alone keeps on_opened.
    let (code, other) = check(&db, &["--no-refund-deny"], &[]);
    assert_eq!(
        (code, &other["reason"]),
        (Some(1), &json!("dispute")),
        "{other}"
    );

    let engine = Engine::open_at(Location::Sqlite(db.clone()), None).expect("reopen");
    assert_eq!(
        engine.policy(),
        &on_opened,
        "the recorded policy is unchanged"
    );
}
