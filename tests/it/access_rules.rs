//! The access rules of docs/semantics.md that an adversarial review found broken, each
//! on a real [`Engine`] over a SQLite file: facts that arrive later never turn a denial
//! back into access, each dispute counts on its own, the live index forgets what a refund
//! no longer says, and a grant an on_hold grace keeps is held to its license key.

use entitlement_sync::access::Access;
use entitlement_sync::wire::{parse_timestamp, Timestamp};
use entitlement_sync::{Delivery, DisputePolicy, Engine, Outcome, Policy};
use serde_json::{json, Value};

fn ts(s: &str) -> Timestamp {
    parse_timestamp(s).unwrap_or_else(|| panic!("bad timestamp {s:?}"))
}

struct World {
    _dir: tempfile::TempDir,
    engine: Engine,
    next: u32,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path().join("e.db")).expect("engine opens");
        World {
            _dir: dir,
            engine,
            next: 0,
        }
    }
    fn send(&mut self, body: &Value) -> Outcome {
        self.next += 1;
        let id = format!("msg_{:05}", self.next);
        self.engine
            .ingest(Delivery::new(
                id,
                serde_json::to_vec(body).unwrap(),
                ts("2026-05-01T00:00:00Z"),
            ))
            .expect("ingest")
    }
    /// The store's file.
    fn path(&self) -> std::path::PathBuf {
        self._dir.path().join("e.db")
    }
    /// Closes the engine: the store's file, and the directory that keeps it.
    fn close(self) -> (tempfile::TempDir, std::path::PathBuf) {
        let path = self.path();
        drop(self.engine);
        (self._dir, path)
    }
    fn access(&self, c: &str, e: &str, at: &str, policy: &Policy) -> Access {
        self.engine
            .access_with(c, e, ts(at), policy)
            .expect("access")
    }
    /// (cus_1, ent_1)'s answer at `at`: (allowed, reason), the same from the live index,
    /// from the store's own rows, and as the change feed's last answer for the pair (the
    /// feed evaluates at the clock's now: for refunds, the same answer).
    fn refund_answer(&self, at: &str, policy: &Policy) -> (bool, Option<String>) {
        let live = self.access("cus_1", "ent_1", at, policy);
        let direct = self
            .engine
            .access_direct("cus_1", "ent_1", ts(at), policy)
            .unwrap();
        assert_eq!(
            (live.allowed, &live.reason),
            (direct.allowed, &direct.reason),
            "live index vs the store's own rows"
        );
        let feed = self.engine.changes(0, 100).unwrap();
        let last = feed
            .iter()
            .rfind(|c| (c.customer_id.as_str(), c.entitlement_id.as_str()) == ("cus_1", "ent_1"))
            .expect("a change of the pair");
        assert_eq!((last.allowed, &last.reason), (live.allowed, &live.reason));
        (live.allowed, live.reason)
    }
}

fn env(ty: &str, at: &str, data: Value) -> Value {
    json!({"business_id": "bus_1", "type": ty, "timestamp": at, "data": data})
}

fn grant(id: &str, status: &str, updated_at: &str, extra: Value) -> Value {
    let mut g = json!({
        "id": id, "business_id": "bus_1", "brand_id": "brd_1",
        "customer_id": "cus_1", "entitlement_id": "ent_1",
        "integration_type": "feature_flag", "metadata": {},
        "status": status, "created_at": "2026-05-01T09:00:00Z", "updated_at": updated_at,
    });
    for (k, v) in extra.as_object().unwrap() {
        g[k] = v.clone();
    }
    g
}

fn customer() -> Value {
    json!({"customer_id": "cus_1", "email": "a@example.com", "name": "A"})
}

fn payment(id: &str, at: &str, extra: Value) -> Value {
    let mut p = json!({
        "payment_id": id, "business_id": "bus_1", "brand_id": "brd_1",
        "customer": customer(), "status": "succeeded", "total_amount": 2999,
        "currency": "USD", "created_at": "2026-05-01T09:00:00Z", "updated_at": at,
        "refunds": [], "disputes": [], "metadata": {}, "subscription_id": null,
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// A full refund that its own event shows to be newer than the grant denies, and goes on
/// denying once the payment snapshot that lists the same refund (created before the
/// grant's version) arrives: a listed refund counts from its own snapshot when later.
#[test]
fn a_payment_listing_a_refund_does_not_undo_the_refund_its_own_event_reported() {
    let mut w = World::new();
    let policy = Policy::default();
    // One-time purchase; the customer asks for a refund at 10:30 (refund created);
    // the grant is delivered at 11:00 (e.g. OAuth consent completed); the refund
    // succeeds at 12:00. Dodo's `refund` revocation of the grant is late.
    w.send(&grant_of_pay_1());
    w.send(&env(
        "refund.succeeded",
        "2026-05-01T12:00:00Z",
        json!({
        "refund_id": "ref_1", "payment_id": "pay_1", "business_id": "bus_1", "brand_id": "brd_1",
        "status": "succeeded", "is_partial": false, "amount": 2999, "currency": "USD",
        "customer": customer(), "metadata": {}, "created_at": "2026-05-01T10:30:00Z"}),
    ));
    let before = w.access("cus_1", "ent_1", "2026-05-01T13:00:00Z", &policy);
    assert!(!before.allowed, "refund alone denies: {before:?}");
    assert_eq!(before.reason.as_deref(), Some("refund"));
    // The payment's own snapshot at 12:00 reports the same refund, in full.
    w.send(&env(
        "payment.succeeded",
        "2026-05-01T12:00:00Z",
        payment(
            "pay_1",
            "2026-05-01T12:00:00Z",
            json!({
        "refund_status": "full",
        "refunds": [{"refund_id": "ref_1", "payment_id": "pay_1", "business_id": "bus_1",
                     "created_at": "2026-05-01T10:30:00Z", "is_partial": false,
                     "status": "succeeded", "amount": 2999, "currency": "USD"}]}),
        ),
    ));
    let after = w.access("cus_1", "ent_1", "2026-05-01T13:00:00Z", &policy);
    assert!(
        !after.allowed,
        "more information about the same full refund re-allowed access: {after:?}"
    );
}

fn subscription(id: &str, status: &str) -> Value {
    json!({
        "subscription_id": id, "status": status, "customer": customer(),
        "product_id": "pdt_1", "quantity": 1, "business_id": "bus_1", "brand_id": "brd_1",
        "created_at": "2026-04-01T00:00:00Z", "currency": "USD", "metadata": {},
        "recurring_pre_tax_amount": 1000, "cancel_at_next_billing_date": false,
    })
}

/// With `disputes: on_opened`, a dispute opened after the grant's version denies, also
/// when an older lost dispute of the same payment (older than the grant) is known.
#[test]
fn an_older_lost_dispute_does_not_hide_a_newer_open_one() {
    let mut w = World::new();
    let policy = Policy {
        disputes: DisputePolicy::OnOpened,
        ..Policy::default()
    };
    let dispute = |id: &str, status: &str| {
        json!({
        "dispute_id": id, "payment_id": "pay_1", "business_id": "bus_1", "brand_id": "brd_1",
        "dispute_status": status, "dispute_stage": "dispute", "amount": "2999", "currency": "USD",
        "customer": customer(), "payment_provider": "stripe", "created_at": "2026-05-01T09:30:00Z"})
    };
    w.send(&env(
        "dispute.lost",
        "2026-05-01T10:00:00Z",
        dispute("dsp_1", "dispute_lost"),
    ));
    // The grant is (re)delivered after that dispute: the later grant wins over it, by design.
    w.send(&grant_of_pay_1());
    let a = w.access("cus_1", "ent_1", "2026-05-01T11:30:00Z", &policy);
    assert!(a.allowed, "{a:?}");
    // Control: without dsp_1, a dispute opened at 12:00 denies under on_opened.
    let mut control = World::new();
    control.send(&grant_of_pay_1());
    control.send(&env(
        "dispute.opened",
        "2026-05-01T12:00:00Z",
        dispute("dsp_2", "dispute_opened"),
    ));
    let c = control.access("cus_1", "ent_1", "2026-05-01T13:00:00Z", &policy);
    assert!(!c.allowed, "control: {c:?}");
    // Same new dispute in the world that also knows the old lost one.
    w.send(&env(
        "dispute.opened",
        "2026-05-01T12:00:00Z",
        dispute("dsp_2", "dispute_opened"),
    ));
    let b = w.access("cus_1", "ent_1", "2026-05-01T13:00:00Z", &policy);
    assert!(
        !b.allowed,
        "a newer open dispute does not deny because an older lost one exists: {b:?}"
    );
}

fn refund(id: &str, payment_id: &str, status: &str, partial: bool) -> Value {
    json!({
        "refund_id": id, "payment_id": payment_id, "business_id": "bus_1", "brand_id": "brd_1",
        "status": status, "is_partial": partial, "amount": 2999, "currency": "USD",
        "customer": customer(), "metadata": {}, "created_at": "2026-05-01T12:00:00Z"})
}

/// A refund snapshot whose `payment_id` differs from an older one's is legal (newest
/// wins): the live index takes the refund out of the old payment, so its answer is the
/// one the store's rows give and the one of the reverse arrival order.
#[test]
fn a_refund_moved_to_another_payment_no_longer_denies_the_first() {
    let policy = Policy::default();
    let g = grant_of_pay_1();
    let a = env(
        "refund.succeeded",
        "2026-05-01T12:00:00Z",
        refund("ref_1", "pay_1", "succeeded", false),
    );
    let b = env(
        "refund.succeeded",
        "2026-05-01T12:05:00Z",
        refund("ref_1", "pay_2", "succeeded", false),
    );
    let at = "2026-05-01T13:00:00Z";

    let mut in_order = World::new();
    for d in [&g, &a] {
        in_order.send(d);
    }
    let first = in_order.access("cus_1", "ent_1", at, &policy);
    assert!(!first.allowed, "the refund of pay_1 denies: {first:?}");
    in_order.send(&b);
    let live = in_order.access("cus_1", "ent_1", at, &policy);
    let direct = in_order
        .engine
        .access_direct("cus_1", "ent_1", ts(at), &policy)
        .unwrap();

    let mut reversed = World::new();
    for d in [&g, &b, &a] {
        reversed.send(d);
    }
    let rev = reversed.access("cus_1", "ent_1", at, &policy);

    assert_eq!(
        (live.allowed, &live.reason),
        (direct.allowed, &direct.reason),
        "live index vs the store's own rows"
    );
    assert_eq!(
        (live.allowed, &live.reason),
        (rev.allowed, &rev.reason),
        "in-order vs reversed arrival"
    );
}

/// A payment snapshot of `pay_1` at `at` that lists `ref_1` as succeeded, in full
/// (`refund_status: full` as well when `status_full`).
fn pay_1_lists_ref_1(at: &str, status_full: bool) -> Value {
    let mut extra = json!({
        "refunds": [{"refund_id": "ref_1", "payment_id": "pay_1", "business_id": "bus_1",
                     "created_at": "2026-05-01T12:00:00Z", "is_partial": false,
                     "status": "succeeded", "amount": 2999, "currency": "USD"}]});
    if status_full {
        extra["refund_status"] = json!("full");
    }
    env("payment.succeeded", at, payment("pay_1", at, extra))
}

/// Per refund the newest word wins: a refund that a payment snapshot lists as succeeded
/// no longer denies once its own newer snapshot says it failed, and denies again when a
/// still newer payment snapshot lists it as succeeded. The live index, the store's own
/// rows and every arrival order agree.
#[test]
fn a_listed_refund_that_its_own_newer_snapshot_says_failed_no_longer_denies() {
    let policy = Policy::default();
    let at = "2026-05-01T15:00:00Z";
    let failed = env(
        "refund.failed",
        "2026-05-01T12:30:00Z",
        refund("ref_1", "pay_1", "failed", false),
    );
    for status_full in [false, true] {
        let listed = pay_1_lists_ref_1("2026-05-01T12:10:00Z", status_full);
        let listed_again = pay_1_lists_ref_1("2026-05-01T13:00:00Z", status_full);
        let answers = |sends: &[&Value]| -> Vec<(bool, Option<String>)> {
            let mut w = World::new();
            w.send(&grant_of_pay_1());
            sends
                .iter()
                .map(|d| {
                    w.send(d);
                    w.refund_answer(at, &policy)
                })
                .collect()
        };
        let refund = Some("refund".to_string());
        assert_eq!(
            answers(&[&listed, &failed, &listed_again]),
            [
                (false, refund.clone()),
                (true, None),
                (false, refund.clone())
            ],
            "refund_status full: {status_full}"
        );
        // The same three facts in other orders end alike; the failure alone denies nothing.
        assert_eq!(
            answers(&[&failed, &listed_again, &listed])[2],
            (false, refund.clone())
        );
        assert_eq!(answers(&[&failed, &listed]), [(true, None), (true, None)]);
        assert_eq!(
            answers(&[&listed_again, &failed])[1],
            (false, refund.clone())
        );
    }
}

/// The same rule the other way: a refund whose own snapshot says it succeeded no longer
/// denies once a newer payment snapshot lists it as failed; at the same instant the
/// succeeded word stands (a tie denies).
#[test]
fn a_refund_that_a_newer_payment_snapshot_lists_as_failed_no_longer_denies() {
    let policy = Policy::default();
    let at = "2026-05-01T15:00:00Z";
    let succeeded = env(
        "refund.succeeded",
        "2026-05-01T12:10:00Z",
        refund("ref_1", "pay_1", "succeeded", false),
    );
    let lists_failed = |when: &str| {
        env(
            "payment.succeeded",
            when,
            payment(
                "pay_1",
                when,
                json!({"refunds": [{"refund_id": "ref_1", "payment_id": "pay_1",
                    "business_id": "bus_1", "created_at": "2026-05-01T12:00:00Z",
                    "is_partial": false, "status": "failed", "amount": 2999, "currency": "USD"}]}),
            ),
        )
    };
    let later = lists_failed("2026-05-01T12:30:00Z");
    let tie = lists_failed("2026-05-01T12:10:00Z");
    let last_answer = |sends: &[&Value]| {
        let mut w = World::new();
        w.send(&grant_of_pay_1());
        for d in sends {
            w.send(d);
        }
        w.refund_answer(at, &policy)
    };
    let refund = (false, Some("refund".to_string()));
    assert_eq!(last_answer(&[&succeeded]), refund);
    assert_eq!(last_answer(&[&succeeded, &later]), (true, None));
    assert_eq!(last_answer(&[&later, &succeeded]), (true, None));
    assert_eq!(last_answer(&[&succeeded, &tie]), refund);
}

/// A grace of 72 hours after a subscription went on_hold, the other knobs the defaults.
fn grace_of_72_hours() -> Policy {
    Policy {
        on_hold_grace: Some(chrono::Duration::hours(72)),
        ..Policy::default()
    }
}

/// `sub_1` goes on_hold at 10:00.
fn sub_1_on_hold_at_10() -> Value {
    env(
        "subscription.on_hold",
        "2026-05-01T10:00:00Z",
        subscription("sub_1", "on_hold"),
    )
}

/// A grant revoked for `subscription_on_hold` that the grace keeps is held to its license
/// key as the same grant `delivered` is: expired, it is denied.
#[test]
fn a_grant_the_grace_keeps_is_denied_by_an_expired_license_key() {
    let policy = grace_of_72_hours();
    let key = json!({"key": "K-1", "activations_used": 0, "expires_at": "2026-05-01T11:00:00Z"});
    let run = |status: &str, reason: Value| {
        let mut w = World::new();
        w.send(&sub_1_on_hold_at_10());
        w.send(&env(
            "entitlement_grant.revoked",
            "2026-05-01T09:00:00Z",
            grant(
                "grt_1",
                status,
                "2026-05-01T09:00:00Z",
                json!({
                "subscription_id": "sub_1", "revocation_reason": reason,
                "revoked_at": "2026-05-01T09:00:00Z", "license_key": key}),
            ),
        ));
        w.access("cus_1", "ent_1", "2026-05-01T12:00:00Z", &policy)
    };
    let delivered = run("Delivered", Value::Null);
    assert!(!delivered.allowed);
    let revoked = run("Revoked", json!("subscription_on_hold"));
    assert!(
        !revoked.allowed,
        "license key expired at 11:00, asked at 12:00: {revoked:?}"
    );
}

/// docs/semantics.md: among allowing grants the answer names a delivered one before a
/// newer revoked one that the grace keeps (whose access ends sooner).
#[test]
fn the_answer_names_a_delivered_grant_before_one_the_grace_keeps() {
    let policy = grace_of_72_hours();
    let mut w = World::new();
    w.send(&env(
        "entitlement_grant.delivered",
        "2026-05-01T08:00:00Z",
        grant("grt_old", "Delivered", "2026-05-01T08:00:00Z", json!({})),
    ));
    w.send(&sub_1_on_hold_at_10());
    w.send(&env(
        "entitlement_grant.revoked",
        "2026-05-01T10:00:01Z",
        grant(
            "grt_new",
            "Revoked",
            "2026-05-01T10:00:01Z",
            json!({
            "subscription_id": "sub_1", "revocation_reason": "subscription_on_hold",
            "revoked_at": "2026-05-01T10:00:01Z"}),
        ),
    ));
    let a = w.access("cus_1", "ent_1", "2026-05-01T12:00:00Z", &policy);
    assert!(a.allowed);
    assert_eq!(a.grant_id.as_deref(), Some("grt_old"), "{a:?}");
    assert_eq!(
        (a.status.as_str(), a.grace_until),
        ("delivered", None),
        "{a:?}"
    );
}

/// An upgrade re-evaluates what the change feed recorded under the previous rules
/// (`migrations/0005_access_rules.sql`): a pair whose recorded answer the old rules gave
/// (here: allowed, which the refund rule above no longer gives) gets a change of cause
/// `rebuild` to the answer of these rules, with the next write.
#[test]
fn an_upgraded_store_records_the_answers_of_the_new_rules() {
    let mut w = World::new();
    w.send(&grant_of_pay_1());
    w.send(&env(
        "refund.succeeded",
        "2026-05-01T12:00:00Z",
        refund("ref_1", "pay_1", "succeeded", false),
    ));
    let (_dir, path) = w.close();
    // As a version 4 store whose feed recorded the old rules' answer for the pair.
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    conn.execute_batch(
        "UPDATE answers SET allowed = 1, status = 'delivered', reason = NULL
          WHERE customer_id = 'cus_1' AND entitlement_id = 'ent_1';
         DELETE FROM meta WHERE key = 'needs_evaluation';
         PRAGMA user_version = 4;",
    )
    .expect("downgrade");
    drop(conn);
    let engine = Engine::open(&path).expect("migrate");
    let last = engine.last_change_seq().expect("seq");
    let other = env(
        "entitlement_grant.delivered",
        "2026-05-01T13:00:00Z",
        json!({"id": "grt_2", "business_id": "bus_1", "customer_id": "cus_2",
               "entitlement_id": "ent_1", "status": "Delivered",
               "created_at": "2026-05-01T13:00:00Z", "updated_at": "2026-05-01T13:00:00Z"}),
    );
    engine
        .ingest(Delivery::new(
            "msg_other",
            serde_json::to_vec(&other).unwrap(),
            ts("2026-05-01T13:00:00Z"),
        ))
        .expect("a write");
    let changes = engine.changes(last, 100).expect("changes");
    let pair: Vec<_> = changes
        .iter()
        .filter(|c| c.customer_id == "cus_1" && c.entitlement_id == "ent_1")
        .collect();
    assert_eq!(pair.len(), 1, "{changes:?}");
    assert_eq!(pair[0].cause, entitlement_sync::change::Cause::Rebuild);
    assert_eq!(
        (pair[0].allowed, pair[0].reason.as_deref()),
        (false, Some("refund"))
    );
    assert!(pair[0].previous.allowed, "{:?}", pair[0]);
}

/// The delivery of grant `grt_1` of (cus_1, ent_1), bought by payment `pay_1`, at 11:00.
fn grant_of_pay_1() -> Value {
    env(
        "entitlement_grant.delivered",
        "2026-05-01T11:00:00Z",
        grant(
            "grt_1",
            "Delivered",
            "2026-05-01T11:00:00Z",
            json!({"payment_id": "pay_1"}),
        ),
    )
}

/// A `dispute.*` delivery of dispute `id` of `pay_1` at `at`, in `status`.
fn dispute_event(id: &str, status: &str, at: &str) -> Value {
    let ty = format!("dispute.{}", status.trim_start_matches("dispute_"));
    env(
        &ty,
        at,
        json!({
        "dispute_id": id, "payment_id": "pay_1", "business_id": "bus_1", "brand_id": "brd_1",
        "dispute_status": status, "dispute_stage": "dispute", "amount": "2999", "currency": "USD",
        "customer": customer(), "payment_provider": "stripe", "created_at": "2026-05-01T11:30:00Z"}),
    )
}

/// A dispute opened and resolved within one instant (a rapid dispute resolution) ends
/// at its outcome in either arrival order: the lifecycle rank breaks the tie, not the
/// content hash. Lost or accepted deny under on_lost; won allows under on_opened.
#[test]
fn a_dispute_opened_and_resolved_in_one_instant_ends_at_its_outcome() {
    let on = |disputes| Policy {
        disputes,
        ..Policy::default()
    };
    let at = "2026-05-01T12:00:00Z";
    for (outcome, policy, allowed) in [
        ("dispute_lost", on(DisputePolicy::OnLost), false),
        ("dispute_accepted", on(DisputePolicy::OnLost), false),
        ("dispute_won", on(DisputePolicy::OnOpened), true),
        ("dispute_cancelled", on(DisputePolicy::OnOpened), true),
    ] {
        for outcome_first in [false, true] {
            let mut w = World::new();
            w.send(&grant_of_pay_1());
            let opened = dispute_event("dsp_1", "dispute_opened", at);
            let resolved = dispute_event("dsp_1", outcome, at);
            let (first, second) = if outcome_first {
                (resolved, opened)
            } else {
                (opened, resolved)
            };
            w.send(&first);
            w.send(&second);
            let what = format!("{outcome}, outcome first: {outcome_first}");
            let a = w.access("cus_1", "ent_1", "2026-05-01T13:00:00Z", &policy);
            assert_eq!(a.allowed, allowed, "{what}: {a:?}");
            let conn = rusqlite::Connection::open(w.path()).expect("raw");
            let status: String = conn
                .query_row(
                    "SELECT status FROM objects WHERE kind = 'dispute' AND id = 'dsp_1'",
                    [],
                    |r| r.get(0),
                )
                .expect("the dispute's state");
            assert_eq!(status, outcome, "{what}");
        }
    }
}

/// A store written before refunds and disputes had a lifecycle rank (schema version 5:
/// rank 0 in their version keys) is rebuilt once when it is opened, to keys with the
/// ranks, and answers as a new store does.
#[test]
fn a_version_5_store_is_rebuilt_to_the_dispute_and_refund_ranks() {
    let mut w = World::new();
    w.send(&grant_of_pay_1());
    w.send(&dispute_event(
        "dsp_1",
        "dispute_lost",
        "2026-05-01T12:00:00Z",
    ));
    w.send(&dispute_event(
        "dsp_1",
        "dispute_opened",
        "2026-05-01T12:00:00Z",
    ));
    w.send(&env(
        "refund.succeeded",
        "2026-05-01T12:30:00Z",
        refund("ref_1", "pay_1", "succeeded", true),
    ));
    let (_dir, path) = w.close();
    let keys = |conn: &rusqlite::Connection| -> Vec<String> {
        let mut st = conn
            .prepare(
                "SELECT version_key FROM history WHERE kind IN ('dispute', 'refund')
                 ORDER BY version_key",
            )
            .unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    let ranked = keys(&conn);
    assert_eq!(ranked.len(), 3, "{ranked:?}");
    // As version 5 wrote them: rank 0 everywhere.
    for k in &ranked {
        let old = k.replace("/3/", "/0/");
        conn.execute(
            "UPDATE history SET version_key = ?2 WHERE version_key = ?1",
            [k, &old],
        )
        .unwrap();
        conn.execute(
            "UPDATE deliveries SET version_key = ?2 WHERE version_key = ?1",
            [k, &old],
        )
        .unwrap();
    }
    conn.execute_batch("PRAGMA user_version = 5;").unwrap();
    assert_ne!(keys(&conn), ranked, "the downgrade changed the keys");
    drop(conn);
    let engine = Engine::open(&path).expect("migrate");
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    assert_eq!(keys(&conn), ranked, "the keys carry the ranks again");
    let pending: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM meta WHERE key = 'needs_rebuild' AND value <> 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0, "the rebuild ran once");
    let on_lost = Policy {
        disputes: DisputePolicy::OnLost,
        ..Policy::default()
    };
    let a = engine
        .access_with("cus_1", "ent_1", ts("2026-05-01T13:00:00Z"), &on_lost)
        .expect("access");
    assert_eq!(
        (a.allowed, a.reason.as_deref()),
        (false, Some("dispute")),
        "{a:?}"
    );
}
