//! The compact index against a straightforward reference: the whole decoded grant
//! snapshots by id, their subscriptions' facts and their payments' sources kept as
//! they arrive (as the index did before it was made compact), each answer computed
//! by [`access`] over [`GrantView::of`] the full grants.

use super::*;
use crate::access::{DisputePolicy, Policy};
use chrono::Duration;
use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Default)]
struct Reference {
    grants: std::collections::HashMap<String, (Grant, Timestamp)>,
    subscriptions: std::collections::HashMap<String, SubscriptionFacts>,
    sources: std::collections::HashMap<String, PaymentSources>,
}

impl Reference {
    fn apply(&mut self, row: &ObjectRow) {
        // The index skips what does not decode; so does the reference.
        let Ok(Decoded(decoded)) = Index::decode(row) else {
            return;
        };
        match decoded {
            Row::Grant(_) => {
                let grant: Grant = serde_json::from_str(&row.body).expect("it decoded");
                let version = parse_timestamp(&row.as_of).expect("it decoded");
                self.grants.insert(grant.id.clone(), (grant, version));
            }
            Row::Subscription(facts) => {
                self.subscriptions
                    .insert(facts.subscription_id.clone(), facts);
            }
            Row::Refund {
                payment_id,
                refund_id,
                own,
            } => {
                // A refund speaks for the payment its state names, and no other.
                for src in self.sources.values_mut() {
                    src.refunds.remove(&refund_id);
                }
                let src = self.sources.entry(payment_id).or_default();
                src.refunds.insert(refund_id, own);
            }
            Row::Dispute {
                payment_id,
                dispute_id,
                status,
                as_of,
            } => {
                for src in self.sources.values_mut() {
                    src.disputes.remove(&dispute_id);
                }
                let src = self.sources.entry(payment_id).or_default();
                src.disputes.insert(dispute_id, (status, as_of));
            }
            Row::Payment {
                payment_id,
                embedded,
            } => {
                self.sources.entry(payment_id).or_default().embedded = embedded;
            }
            Row::Other => {}
        }
    }

    /// (payment id -> facts) as the old index held them: one entry per payment
    /// any source spoke of, default facts included.
    fn payments(&self) -> std::collections::HashMap<&str, PaymentFacts> {
        self.sources
            .iter()
            .map(|(id, src)| (id.as_str(), src.facts()))
            .collect()
    }

    fn views<'a>(
        &'a self,
        payments: &'a std::collections::HashMap<&str, PaymentFacts>,
        customer: &str,
        entitlement: &str,
    ) -> Vec<GrantView<'a>> {
        self.grants
            .values()
            .filter(|(g, _)| g.customer_id == customer && g.entitlement_id == entitlement)
            .map(|(g, version)| {
                GrantView::of(
                    g,
                    *version,
                    g.subscription_id
                        .as_ref()
                        .and_then(|s| self.subscriptions.get(s)),
                    g.payment_id.as_deref().and_then(|p| payments.get(p)),
                )
            })
            .collect()
    }
}

const CUSTOMERS: &[&str] = &["cus_a", "cus_b", "cus_c"];
const ENTITLEMENTS: &[&str] = &["ent_1", "ent_2"];

/// Instants with 0, 3, 6 and 9 fractional digits, offsets, a leap second, before
/// the epoch and at both ends of the accepted years.
fn instant() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00Z")),
        2 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00.250Z")),
        2 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00.123456Z")),
        2 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00.123456789Z")),
        1 => (0u32..40).prop_map(|m| format!("2026-05-01T12:{m:02}:00+02:00")),
        1 => Just("2026-06-30T23:59:60.5Z".to_string()),
        1 => Just("1969-12-31T23:59:59.999999Z".to_string()),
        1 => Just("0001-01-01T00:00:00Z".to_string()),
        1 => Just("9999-12-31T23:59:59.999999999Z".to_string()),
    ]
}

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop::sample::select(values)
}

fn opt(values: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::option::of(pick(values)).prop_map(|v| v.map_or(Value::Null, |s| json!(s)))
}

fn opt_instant() -> impl Strategy<Value = Value> {
    prop::option::of(instant()).prop_map(|v| v.map_or(Value::Null, |s| json!(s)))
}

fn grant_body() -> impl Strategy<Value = Value> {
    (
        (
            pick(&["g1", "g2", "g3", "g4", "g5", "g6"]),
            pick(CUSTOMERS),
            pick(ENTITLEMENTS),
            pick(&[
                "Delivered",
                "delivered",
                "Pending",
                "Failed",
                "Revoked",
                "revoked",
                "Mystery",
                "SomethingNew",
            ]),
            opt(&[
                "subscription_on_hold",
                "SubscriptionOnHold",
                "SubscriptionPaused",
                "subscription_cancelled",
                "manual",
                "refund",
                "license_key_disabled",
                "brand_new_reason",
                "WeirdThing",
            ]),
        ),
        (
            opt(&["card_declined", "E42", "weird code"]),
            opt(&["https://oauth.example/1", "https://oauth.example/2"]),
            prop::option::of(opt_instant()),
            opt_instant(),
            opt(&["sub_1", "sub_2", "sub_3"]),
            opt(&["pay_1", "pay_2", "pay_3"]),
        ),
    )
        .prop_map(
            |((id, c, e, status, reason), (code, oauth, key, revoked, sub, pay))| {
                json!({
                    "id": id,
                    "customer_id": c,
                    "entitlement_id": e,
                    "status": status,
                    "revocation_reason": reason,
                    "error_code": code,
                    "oauth_url": oauth,
                    "license_key": key.map(|at| json!({"key": "K", "expires_at": at})),
                    "revoked_at": revoked,
                    "subscription_id": sub,
                    "payment_id": pay,
                    "metadata": {"plan": "pro"},
                })
            },
        )
}

fn subscription_body() -> impl Strategy<Value = Value> {
    (
        pick(&["sub_1", "sub_2", "sub_3"]),
        pick(&[
            "pending",
            "active",
            "on_hold",
            "OnHold",
            "paused",
            "cancelled",
            "expired",
            "failed",
            "past_due",
            "zombie",
        ]),
    )
        .prop_map(|(id, status)| json!({"subscription_id": id, "status": status}))
}

const PAYMENTS: &[&str] = &["pay_1", "pay_2", "pay_3"];
const DISPUTES: &[&str] = &[
    "dispute_opened",
    "dispute_challenged",
    "dispute_won",
    "dispute_lost",
    "dispute_accepted",
    "dispute_expired",
    "dispute_brand_new",
];

fn refund_body() -> impl Strategy<Value = Value> {
    (
        pick(&["re_1", "re_2"]),
        pick(PAYMENTS),
        pick(&["succeeded", "failed", "pending", "odd"]),
        any::<bool>(),
    )
        .prop_map(|(id, pay, status, partial)| {
            json!({"refund_id": id, "payment_id": pay, "status": status, "is_partial": partial})
        })
}

fn dispute_body() -> impl Strategy<Value = Value> {
    (pick(&["dp_1", "dp_2"]), pick(PAYMENTS), pick(DISPUTES)).prop_map(
        |(id, pay, status)| json!({"dispute_id": id, "payment_id": pay, "dispute_status": status}),
    )
}

fn payment_body() -> impl Strategy<Value = Value> {
    (
        pick(PAYMENTS),
        opt(&["full", "Full", "partial"]),
        prop::collection::vec(
            (
                pick(&["re_1", "re_2"]),
                pick(&["succeeded", "failed"]),
                any::<bool>(),
                opt_instant(),
            ),
            0..3,
        ),
        prop::collection::vec((pick(&["dp_1", "dp_2"]), pick(DISPUTES)), 0..3),
    )
        .prop_map(|(id, refund_status, refunds, disputes)| {
            json!({
                "payment_id": id,
                "refund_status": refund_status,
                "refunds": refunds.into_iter().map(|(r, s, p, at)| json!({
                    "refund_id": r, "status": s, "is_partial": p, "created_at": at,
                })).collect::<Vec<_>>(),
                "disputes": disputes.into_iter().map(|(d, s)| json!({
                    "dispute_id": d, "dispute_status": s,
                })).collect::<Vec<_>>(),
            })
        })
}

fn row() -> impl Strategy<Value = ObjectRow> {
    let body = prop_oneof![
        8 => grant_body().prop_map(|b| ("grant", b.to_string())),
        3 => subscription_body().prop_map(|b| ("subscription", b.to_string())),
        1 => refund_body().prop_map(|b| ("refund", b.to_string())),
        1 => dispute_body().prop_map(|b| ("dispute", b.to_string())),
        2 => payment_body().prop_map(|b| ("payment", b.to_string())),
        1 => Just(("license_key", "{}".to_string())),
        1 => Just(("grant", "{\"id\": 7}".to_string())),
    ];
    (body, instant(), instant()).prop_map(|((kind, body), as_of, since)| ObjectRow {
        kind: kind.into(),
        id: "x".into(),
        as_of,
        since,
        body,
    })
}

fn policies() -> Vec<Policy> {
    vec![
        Policy::default(),
        Policy {
            on_hold_grace: Some(Duration::minutes(10)),
            ..Policy::default()
        },
        Policy {
            subscription_backstop: false,
            on_hold_grace: Some(Duration::days(400_000_000)),
            ..Policy::default()
        },
        Policy {
            refund_denies: false,
            disputes: DisputePolicy::OnLost,
            ..Policy::default()
        },
        Policy {
            disputes: DisputePolicy::OnOpened,
            ..Policy::default()
        },
    ]
}

/// The index answers as the reference for every pair, policy and instant of the test.
fn same_answers(index: &Index, reference: &Reference) -> Result<(), TestCaseError> {
    prop_assert_eq!(index.grants(), reference.grants.len());
    let mut got: Vec<(&str, &str)> = index.pairs().collect();
    got.sort_unstable();
    let mut want: Vec<(&str, &str)> = reference
        .grants
        .values()
        .map(|(g, _)| (g.customer_id.as_str(), g.entitlement_id.as_str()))
        .collect();
    want.sort_unstable();
    want.dedup();
    prop_assert_eq!(got, want);

    let payments = reference.payments();
    let nows: Vec<Timestamp> = [
        "2026-05-01T09:00:00Z",
        "2026-05-01T10:15:00.250Z",
        "2026-05-01T10:30:00.123456789Z",
        "2026-05-02T00:00:00Z",
    ]
    .iter()
    .filter_map(|s| parse_timestamp(s))
    .collect();
    for c in CUSTOMERS.iter().chain(&["cus_unknown"]) {
        for e in ENTITLEMENTS {
            let views = reference.views(&payments, c, e);
            for policy in &policies() {
                for &now in &nows {
                    let want = access::decide(c, e, &views, policy, now);
                    let got = index.access(c, e, policy, now);
                    prop_assert_eq!(
                        serde_json::to_string(&got).expect("json"),
                        serde_json::to_string(&want).expect("json")
                    );
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(
                        index.has_access(c, e, policy, now),
                        access::allowed(views.iter().map(|v| v.facts), policy, now)
                    );
                    prop_assert_eq!(index.has_access(c, e, policy, now), want.allowed);
                    prop_assert_eq!(
                        index.next_change(c, e, policy, now),
                        access::next_change(&views, policy, now)
                    );
                }
            }
        }
    }
    Ok(())
}

/// Refund and dispute rows after the grants they may deny, each id moving between
/// payments (a newer snapshot naming another payment).
fn moving_fact() -> impl Strategy<Value = ObjectRow> {
    let body = prop_oneof![
        (
            pick(&["re_1", "re_2"]),
            pick(&["pay_1", "pay_2"]),
            pick(&["succeeded", "failed"]),
            prop::bool::weighted(0.2)
        )
            .prop_map(|(id, pay, status, partial)| (
                "refund",
                json!({
                    "refund_id": id, "payment_id": pay, "status": status, "is_partial": partial,
                })
            )),
        (
            pick(&["dp_1", "dp_2"]),
            pick(&["pay_1", "pay_2"]),
            pick(DISPUTES)
        )
            .prop_map(|(id, pay, status)| (
                "dispute",
                json!({
                    "dispute_id": id, "payment_id": pay, "dispute_status": status,
                })
            )),
    ];
    (body, 10u32..20).prop_map(|((kind, body), m)| ObjectRow {
        kind: kind.into(),
        id: "x".into(),
        as_of: format!("2026-05-01T10:{m:02}:00Z"),
        since: format!("2026-05-01T10:{m:02}:00Z"),
        body: body.to_string(),
    })
}

/// Delivered one-time grants of `pay_1` and `pay_2`, at 09:00, older than every fact.
fn one_time_grants() -> Vec<ObjectRow> {
    [("g1", "cus_a", "pay_1"), ("g2", "cus_b", "pay_2")]
        .iter()
        .map(|(id, customer, pay)| ObjectRow {
            kind: "grant".into(),
            id: (*id).into(),
            as_of: "2026-05-01T09:00:00Z".into(),
            since: "2026-05-01T09:00:00Z".into(),
            body: json!({"id": id, "customer_id": customer, "entitlement_id": "ent_1",
                         "status": "Delivered", "payment_id": pay})
            .to_string(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn answers_like_the_full_grants(rows in prop::collection::vec(row(), 0..40)) {
        let mut index = Index::default();
        let mut reference = Reference::default();
        for row in &rows {
            if let Ok(d) = Index::decode(row) {
                index.apply_decoded(d);
            }
            reference.apply(row);
        }
        same_answers(&index, &reference)?;
    }

    /// A refund or dispute that moves to another payment speaks for that one only, and
    /// the answers after every row are the reference's.
    #[test]
    fn answers_like_the_full_grants_as_refunds_and_disputes_move(
        facts in prop::collection::vec(moving_fact(), 1..8),
    ) {
        let mut index = Index::default();
        let mut reference = Reference::default();
        for row in one_time_grants().iter().chain(&facts) {
            index.apply_decoded(Index::decode(row).expect("decodes"));
            reference.apply(row);
            same_answers(&index, &reference)?;
        }
    }
}

/// Past the first chunk of records (4096 grants) and of id bytes (64 KiB), with an
/// id longer than a chunk, grants moved between pairs and renewed in place.
#[test]
fn answers_like_the_full_grants_past_the_first_chunks() {
    let n = 10_000;
    let customers = n / 3;
    let mut rng = crate::synth::Rng(11);
    let mut rows: Vec<ObjectRow> = (0..n)
        .map(|i| crate::synth::grant_row(i, customers, i, &mut rng))
        .collect();
    let long = format!("cus_{}", "x".repeat(70_000));
    for (i, customer) in [
        (5usize, long.as_str()),
        (4100, "cus_moved"),
        (9000, "cus_moved"),
    ] {
        let mut grant: Grant = serde_json::from_str(&rows[i].body).expect("synthetic");
        grant.customer_id = customer.to_string();
        grant.status = GrantStatus::Other("brand_new".into());
        let mut row = rows[i].clone();
        row.body = serde_json::to_string(&grant).expect("json");
        rows.push(row);
    }
    // Renewed in place (same pair, a newer version).
    let mut again = rows[7000].clone();
    again.as_of = "2026-05-02T00:00:00.000001Z".into();
    rows.push(again);
    let mut index = Index::default();
    let mut reference = Reference::default();
    for row in &rows {
        index.apply_decoded(Index::decode(row).expect("decodes"));
        reference.apply(row);
    }
    assert_eq!(index.grants(), n);
    let payments = reference.payments();
    let now = parse_timestamp("2026-05-01T10:30:00Z").expect("instant");
    let policy = Policy::default();
    let mut pairs: Vec<(String, String)> = reference
        .grants
        .values()
        .map(|(g, _)| (g.customer_id.clone(), g.entitlement_id.clone()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut got: Vec<(String, String)> = index
        .pairs()
        .map(|(c, e)| (c.to_string(), e.to_string()))
        .collect();
    got.sort_unstable();
    assert_eq!(got, pairs);
    for (c, e) in &pairs {
        let views = reference.views(&payments, c, e);
        let want = access::decide(c, e, &views, &policy, now);
        assert_eq!(index.access(c, e, &policy, now), want, "{c} {e}");
        assert_eq!(index.has_access(c, e, &policy, now), want.allowed);
    }
}

#[test]
fn instants_round_trip_exactly() {
    let mut instants = Instants::default();
    for s in [
        "2026-05-01T10:25:33Z",
        "2026-05-01T10:25:33.123456Z",
        "2026-05-01T10:25:33.123456789Z",
        "2026-06-30T23:59:60.5Z",
        "2026-06-30T23:59:60Z",
        "1969-12-31T23:59:59.999999Z",
        "1969-12-31T23:59:59.999999999Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
    ] {
        let t = parse_timestamp(s).expect(s);
        let i = instants.encode(t);
        assert_ne!(i, Instant::NONE, "{s}");
        assert_eq!(instants.get(i), Some(t), "{s}");
    }
    assert_eq!(instants.get(Instant::NONE), None);
}
