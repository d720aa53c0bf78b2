//! The lifecycles `entsync simulate` plays, and the answers it expects from them.
//!
//! Deterministic: the same seed and epoch give the same webhook ids and bodies, so a run
//! can be repeated against a restarted server (its re-sends are then duplicates). Every
//! customer's pairs are distinct, and each lifecycle's final grant snapshot decides its
//! pair under the default policy, so the expectation is a plain table.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// One unique delivery: its webhook id and raw body.
#[derive(Debug, Clone)]
pub struct Planned {
    pub webhook_id: String,
    pub event_type: &'static str,
    pub body: String,
}

/// The access answer expected for one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub customer_id: String,
    pub entitlement_id: String,
    pub allowed: bool,
    pub status: &'static str,
    pub reason: Option<String>,
}

/// The credit balance expected for one (customer, credit entitlement).
#[derive(Debug, Clone)]
pub struct ExpectedBalance {
    pub customer_id: String,
    pub credit_entitlement_id: String,
    pub balance: Decimal,
}

/// Everything one run sends and expects.
#[derive(Debug, Default)]
pub struct Plan {
    pub deliveries: Vec<Planned>,
    pub access: Vec<Expected>,
    pub balances: Vec<ExpectedBalance>,
}

/// The crate's one seedable PRNG.
pub use entitlement_sync::synth::Rng;

/// A grant as Dodo sends it, mutated step by step.
#[derive(Clone)]
struct Grant {
    id: String,
    customer_id: String,
    entitlement_id: String,
    integration_type: &'static str,
    status: &'static str,
    revocation_reason: Option<&'static str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    payment_id: Option<String>,
    subscription_id: Option<String>,
    oauth_url: Option<String>,
    oauth_expires_at: Option<DateTime<Utc>>,
    license_key: Option<(String, Option<DateTime<Utc>>)>,
    error_code: Option<&'static str>,
}

struct Customer {
    id: String,
    email: String,
    name: String,
}

/// The generator: one business, a pool of entitlements, customers with lifecycles.
struct Gen<'a> {
    rng: &'a mut Rng,
    epoch: DateTime<Utc>,
    business: String,
    brand: String,
    entitlements: Vec<String>,
    plan: Plan,
}

const FIRST_NAMES: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];

impl Gen<'_> {
    /// A timestamp as Dodo writes them: 0, 3 or 6 fractional digits (mixed on purpose).
    fn ts(&mut self, t: DateTime<Utc>) -> String {
        use chrono::SecondsFormat::*;
        match self.rng.below(3) {
            0 => t.to_rfc3339_opts(Secs, true),
            1 => t.to_rfc3339_opts(Millis, true),
            _ => t.to_rfc3339_opts(Micros, true),
        }
    }

    fn opt_ts(&mut self, t: Option<DateTime<Utc>>) -> Value {
        t.map_or(Value::Null, |t| Value::String(self.ts(t)))
    }

    fn step(&mut self, t: &mut DateTime<Utc>) -> DateTime<Utc> {
        // At least 2 s apart, so that whole-second timestamps still order the steps.
        *t += Duration::milliseconds(2_000 + (self.rng.unit() * 3.0 * 3600.0 * 1000.0) as i64);
        *t
    }

    fn emit(&mut self, event_type: &'static str, at: DateTime<Utc>, data: Value) {
        let envelope = json!({
            "business_id": self.business,
            "type": event_type,
            "timestamp": self.ts(at),
            "data": data,
        });
        // Pretty-printed like Dodo's examples half the time: only a raw-body verifier passes.
        let body = if self.rng.chance(0.5) {
            serde_json::to_string_pretty(&envelope)
        } else {
            serde_json::to_string(&envelope)
        }
        .unwrap_or_default();
        let webhook_id = self.rng.ident("msg_", 27);
        self.plan.deliveries.push(Planned {
            webhook_id,
            event_type,
            body,
        });
    }

    fn customer_ref(c: &Customer) -> Value {
        json!({ "customer_id": c.id, "email": c.email, "name": c.name })
    }

    fn grant_json(&mut self, g: &Grant) -> Value {
        let license_key = match &g.license_key {
            Some((key, expires)) => {
                json!({ "key": key, "activations_used": 0, "activations_limit": 3, "expires_at": self.opt_ts(*expires) })
            }
            None => Value::Null,
        };
        json!({
            "payload_type": "EntitlementGrant",
            "id": g.id,
            "brand_id": self.brand,
            "business_id": self.business,
            "customer_id": g.customer_id,
            "entitlement_id": g.entitlement_id,
            "integration_type": g.integration_type,
            "metadata": if self.rng.chance(0.5) { json!({"tier": "pro", "seats": 3}) } else { Value::Null },
            "status": g.status,
            "revocation_reason": g.revocation_reason,
            "created_at": self.ts(g.created_at),
            "updated_at": self.ts(g.updated_at),
            "delivered_at": self.opt_ts(g.delivered_at),
            "revoked_at": self.opt_ts(g.revoked_at),
            "payment_id": g.payment_id,
            "subscription_id": g.subscription_id,
            "oauth_url": g.oauth_url,
            "oauth_expires_at": self.opt_ts(g.oauth_expires_at),
            "license_key": license_key,
            "error_code": g.error_code,
            "error_message": g.error_code.map(|_| "the authorization link expired before the customer used it"),
        })
    }

    fn emit_grant(&mut self, event_type: &'static str, g: &Grant) {
        let data = self.grant_json(g);
        self.emit(event_type, g.updated_at, data);
    }

    fn new_grant(
        &mut self,
        c: &Customer,
        entitlement: &str,
        integration_type: &'static str,
        at: DateTime<Utc>,
    ) -> Grant {
        Grant {
            id: self.rng.ident("grant_", 22),
            customer_id: c.id.clone(),
            entitlement_id: entitlement.to_string(),
            integration_type,
            status: "Pending",
            revocation_reason: None,
            created_at: at,
            updated_at: at,
            delivered_at: None,
            revoked_at: None,
            payment_id: None,
            subscription_id: None,
            oauth_url: None,
            oauth_expires_at: None,
            license_key: None,
            error_code: None,
        }
    }

    fn deliver(&mut self, g: &mut Grant, at: DateTime<Utc>) {
        g.status = "Delivered";
        g.updated_at = at;
        g.delivered_at = Some(at);
        g.revocation_reason = None;
        g.revoked_at = None;
        g.oauth_url = None;
        g.oauth_expires_at = None;
        self.emit_grant("entitlement_grant.delivered", g);
    }

    fn revoke(&mut self, g: &mut Grant, reason: &'static str, at: DateTime<Utc>) {
        g.status = "Revoked";
        g.revocation_reason = Some(reason);
        g.updated_at = at;
        g.revoked_at = Some(at);
        self.emit_grant("entitlement_grant.revoked", g);
    }

    fn payment(
        &mut self,
        c: &Customer,
        subscription_id: Option<&str>,
        product_id: &str,
        at: DateTime<Utc>,
    ) -> String {
        let payment_id = self.rng.ident("pay_", 22);
        let data = json!({
            "payload_type": "Payment",
            "payment_id": payment_id,
            "business_id": self.business,
            "brand_id": self.brand,
            "status": "succeeded",
            "customer": Self::customer_ref(c),
            "subscription_id": subscription_id,
            "total_amount": 2999,
            "settlement_amount": 2999,
            "currency": "USD",
            "settlement_currency": "USD",
            "refunds": [],
            "disputes": [],
            "created_at": self.ts(at),
            "updated_at": self.ts(at),
            "digital_products_delivered": false,
            "is_update_payment_method": false,
            "metadata": {},
            "payment_provider": "stripe",
            "retry_attempt": 0,
            "billing": { "country": "US", "zipcode": " " },
            "product_cart": [{ "product_id": product_id, "quantity": 1 }],
        });
        self.emit("payment.succeeded", at, data);
        payment_id
    }

    fn subscription(
        &mut self,
        event_type: &'static str,
        (c, id, product_id, created): (&Customer, &str, &str, DateTime<Utc>),
        status: &str,
        at: DateTime<Utc>,
    ) {
        let data = json!({
            "payload_type": "Subscription",
            "subscription_id": id,
            "status": status,
            "customer": Self::customer_ref(c),
            "product_id": product_id,
            "quantity": 1,
            "next_billing_date": self.ts(at + Duration::days(30)),
            "previous_billing_date": self.ts(at),
            "cancel_at_next_billing_date": false,
            "cancelled_at": if status == "cancelled" { Value::String(self.ts(at)) } else { Value::Null },
            "paused_at": if status == "paused" { Value::String(self.ts(at)) } else { Value::Null },
            "created_at": self.ts(created),
            "recurring_pre_tax_amount": 1500,
            "currency": "USD",
            "tax_inclusive": false,
            "payment_frequency_count": 1,
            "payment_frequency_interval": "Month",
            "subscription_period_count": 10,
            "subscription_period_interval": "Year",
            "trial_period_days": 0,
            "on_demand": false,
            "addons": [],
            "meters": [],
            "credit_entitlement_cart": [],
            "meter_credit_entitlement_cart": [],
            "billing": { "country": "DE", "city": "Berlin" },
            "brand_id": self.brand,
            "metadata": {},
        });
        self.emit(event_type, at, data);
    }

    fn expect(&mut self, g: &Grant, allowed: bool, reason: Option<&str>) {
        let status = match g.status {
            "Delivered" => "delivered",
            "Pending" => "pending",
            "Failed" => "failed",
            _ => "revoked",
        };
        self.plan.access.push(Expected {
            customer_id: g.customer_id.clone(),
            entitlement_id: g.entitlement_id.clone(),
            allowed,
            status,
            reason: reason.map(str::to_string),
        });
    }

    /// One-time purchase of an OAuth integration (Discord, GitHub): pending with an
    /// `oauth_url` until the customer consents; some never do, some links expire.
    fn oauth(&mut self, c: &Customer, ent: &str, mut t: DateTime<Utc>) {
        let product = format!("pdt_{}", &ent[4..]);
        let at = self.step(&mut t);
        let payment = self.payment(c, None, &product, at);
        let at = self.step(&mut t);
        let kind = if self.rng.chance(0.5) {
            "discord"
        } else {
            "github"
        };
        let mut g = self.new_grant(c, ent, kind, at);
        g.payment_id = Some(payment);
        g.oauth_url = Some(format!(
            "https://{kind}.example/oauth2/authorize?state={}",
            g.id
        ));
        g.oauth_expires_at = Some(at + Duration::days(1));
        self.emit_grant("entitlement_grant.created", &g);
        let roll = self.rng.unit();
        if roll < 0.7 {
            let at = self.step(&mut t);
            self.deliver(&mut g, at);
            self.expect(&g, true, None);
        } else if roll < 0.85 {
            self.expect(&g, false, None);
        } else {
            g.status = "Failed";
            g.error_code = Some("oauth_link_expired");
            g.updated_at = self.step(&mut t);
            self.emit_grant("entitlement_grant.failed", &g);
            self.expect(&g, false, Some("oauth_link_expired"));
        }
    }

    /// One-time license key: `license_key.created`, then the grant created already
    /// delivered (the same snapshot again as `delivered`). Some keys have expired.
    fn license(&mut self, c: &Customer, ent: &str, mut t: DateTime<Utc>) {
        let expired = self.rng.chance(0.3);
        if expired {
            t = self.epoch - Duration::days(20);
        }
        let product = format!("pdt_{}", &ent[4..]);
        let at = self.step(&mut t);
        let payment = self.payment(c, None, &product, at);
        let at = self.step(&mut t);
        let expires = if expired {
            at + Duration::days(7)
        } else {
            at + Duration::days(365)
        };
        let key = format!(
            "{}-{}-{}",
            self.rng.ident("", 5),
            self.rng.ident("", 5),
            self.rng.ident("", 5)
        )
        .to_uppercase();
        let data = json!({
            "payload_type": "LicenseKey",
            "id": self.rng.ident("lic_", 20),
            "key": key,
            "business_id": self.business,
            "brand_id": self.brand,
            "customer_id": c.id,
            "product_id": product,
            "status": "active",
            "expires_at": self.ts(expires),
            "instances_count": 0,
            "activations_limit": 3,
            "payment_id": payment,
            "subscription_id": null,
            "source": "auto",
            "created_at": self.ts(at),
        });
        self.emit("license_key.created", at, data);
        let mut g = self.new_grant(c, ent, "license_key", at);
        g.status = "Delivered";
        g.delivered_at = Some(at);
        g.payment_id = Some(payment);
        g.license_key = Some((key, Some(expires)));
        let snapshot = self.grant_json(&g);
        self.emit("entitlement_grant.created", at, snapshot.clone());
        self.emit("entitlement_grant.delivered", at, snapshot);
        if expired {
            self.expect(&g, false, Some("license_key_expired"));
        } else {
            self.expect(&g, true, None);
        }
    }

    /// A subscription: active, perhaps on hold (grant revoked `subscription_on_hold`)
    /// and recovered (same grant id delivered again), paused, or cancelled.
    fn subscription_life(&mut self, c: &Customer, ent: &str, mut t: DateTime<Utc>) {
        let product = format!("pdt_{}", &ent[4..]);
        let sub = self.rng.ident("sub_", 22);
        let created = self.step(&mut t);
        self.subscription(
            "subscription.active",
            (c, &sub, &product, created),
            "active",
            created,
        );
        let at = self.step(&mut t);
        self.payment(c, Some(&sub), &product, at);
        let at = self.step(&mut t);
        let mut g = self.new_grant(c, ent, "feature_flag", at);
        g.subscription_id = Some(sub.clone());
        g.status = "Delivered";
        g.delivered_at = Some(at);
        self.emit_grant("entitlement_grant.created", &g);
        let roll = self.rng.unit();
        if roll < 0.35 {
            self.expect(&g, true, None);
        } else if roll < 0.8 {
            let who = (c, sub.as_str(), product.as_str(), created);
            self.subscription_revokes(
                who,
                &mut t,
                "subscription.on_hold",
                "on_hold",
                &mut g,
                "subscription_on_hold",
            );
            if self.rng.chance(0.6) {
                let at = self.step(&mut t);
                self.payment(c, Some(&sub), &product, at);
                let at = self.step(&mut t);
                self.subscription(
                    "subscription.active",
                    (c, &sub, &product, created),
                    "active",
                    at,
                );
                let at = self.step(&mut t);
                self.deliver(&mut g, at);
                self.expect(&g, true, None);
            } else {
                self.expect(&g, false, Some("subscription_on_hold"));
            }
        } else if roll < 0.9 {
            let who = (c, sub.as_str(), product.as_str(), created);
            // Dodo spells this reason in PascalCase.
            self.subscription_revokes(
                who,
                &mut t,
                "subscription.paused",
                "paused",
                &mut g,
                "SubscriptionPaused",
            );
            self.expect(&g, false, Some("subscription_paused"));
        } else {
            let who = (c, sub.as_str(), product.as_str(), created);
            self.subscription_revokes(
                who,
                &mut t,
                "subscription.cancelled",
                "cancelled",
                &mut g,
                "subscription_cancelled",
            );
            self.expect(&g, false, Some("subscription_cancelled"));
        }
    }

    /// The subscription moves to `status` (event `event_type`), then Dodo revokes the
    /// grant for `reason` (as spelled on the wire).
    fn subscription_revokes(
        &mut self,
        who: (&Customer, &str, &str, DateTime<Utc>),
        t: &mut DateTime<Utc>,
        event_type: &'static str,
        status: &'static str,
        g: &mut Grant,
        reason: &'static str,
    ) {
        let at = self.step(t);
        self.subscription(event_type, who, status, at);
        let at = self.step(t);
        self.revoke(g, reason, at);
    }

    /// Revoked by the merchant. Sometimes a newer snapshot then claims the grant is
    /// delivered again: an illegal restoration the server must quarantine.
    fn manual(&mut self, c: &Customer, ent: &str, mut t: DateTime<Utc>) {
        let product = format!("pdt_{}", &ent[4..]);
        let at = self.step(&mut t);
        let payment = self.payment(c, None, &product, at);
        let at = self.step(&mut t);
        let mut g = self.new_grant(c, ent, "digital_files", at);
        g.payment_id = Some(payment);
        self.emit_grant("entitlement_grant.created", &g);
        let at = self.step(&mut t);
        self.deliver(&mut g, at);
        let at = self.step(&mut t);
        self.revoke(&mut g, "manual", at);
        let expected = g.clone();
        if self.rng.chance(0.3) {
            let at = self.step(&mut t);
            let mut bogus = g.clone();
            self.deliver(&mut bogus, at);
        }
        self.expect(&expected, false, Some("manual"));
    }

    /// A plan change: the old plan's grant revoked `plan_changed`, a new grant for the
    /// new plan's entitlement.
    fn plan_change(&mut self, c: &Customer, old: &str, new: &str, mut t: DateTime<Utc>) {
        let product = format!("pdt_{}", &old[4..]);
        let new_product = format!("pdt_{}", &new[4..]);
        let sub = self.rng.ident("sub_", 22);
        let created = self.step(&mut t);
        self.subscription(
            "subscription.active",
            (c, &sub, &product, created),
            "active",
            created,
        );
        let at = self.step(&mut t);
        let mut g = self.new_grant(c, old, "feature_flag", at);
        g.subscription_id = Some(sub.clone());
        g.status = "Delivered";
        g.delivered_at = Some(at);
        self.emit_grant("entitlement_grant.created", &g);
        let at = self.step(&mut t);
        self.subscription(
            "subscription.plan_changed",
            (c, &sub, &new_product, created),
            "active",
            at,
        );
        let at = self.step(&mut t);
        self.payment(c, Some(&sub), &new_product, at);
        let at = self.step(&mut t);
        self.revoke(&mut g, "plan_changed", at);
        self.expect(&g, false, Some("plan_changed"));
        let at = self.step(&mut t);
        let mut g2 = self.new_grant(c, new, "feature_flag", at);
        g2.subscription_id = Some(sub);
        g2.status = "Delivered";
        g2.delivered_at = Some(at);
        self.emit_grant("entitlement_grant.created", &g2);
        self.expect(&g2, true, None);
    }

    /// A one-time purchase refunded: `refund.succeeded`, then the grant revoked `refund`.
    fn refund(&mut self, c: &Customer, ent: &str, mut t: DateTime<Utc>) {
        let product = format!("pdt_{}", &ent[4..]);
        let at = self.step(&mut t);
        let payment = self.payment(c, None, &product, at);
        let at = self.step(&mut t);
        let mut g = self.new_grant(c, ent, "digital_files", at);
        g.payment_id = Some(payment.clone());
        g.status = "Delivered";
        g.delivered_at = Some(at);
        self.emit_grant("entitlement_grant.created", &g);
        let at = self.step(&mut t);
        let data = json!({
            "payload_type": "Refund",
            "refund_id": self.rng.ident("ref_", 22),
            "payment_id": payment,
            "business_id": self.business,
            "brand_id": self.brand,
            "status": "succeeded",
            "is_partial": false,
            "customer": Self::customer_ref(c),
            "amount": 2999,
            "currency": "USD",
            "reason": "requested_by_customer",
            "metadata": {},
            "created_at": self.ts(at),
        });
        self.emit("refund.succeeded", at, data);
        let at = self.step(&mut t);
        self.revoke(&mut g, "refund", at);
        self.expect(&g, false, Some("refund"));
    }

    /// A credit ledger: a grant of credits, then usage; exact decimal strings.
    fn credits(&mut self, c: &Customer, mut t: DateTime<Utc>) {
        let ce = self.rng.ident("cent_", 20);
        let mut balance = Decimal::ZERO;
        let granted = Decimal::from(1000);
        let entries = 2 + self.rng.below(5);
        let mut low_sent = false;
        for i in 0..entries {
            let at = self.step(&mut t);
            let (event_type, tx, amount, is_credit) = if i == 0 {
                ("credit.added", "credit_added", granted, true)
            } else {
                // 0.001 to 250.000 credits, three decimals.
                let milli = 1 + self.rng.below(250_000) as i64;
                let amount = Decimal::new(milli, 3).min(balance);
                ("credit.deducted", "credit_deducted", amount, false)
            };
            let before = balance;
            balance = if is_credit {
                balance + amount
            } else {
                balance - amount
            };
            let data = json!({
                "payload_type": "CreditLedgerEntry",
                "id": self.rng.ident("cle_", 22),
                "business_id": self.business,
                "brand_id": self.brand,
                "customer_id": c.id,
                "credit_entitlement_id": ce,
                "transaction_type": tx,
                "amount": amount.to_string(),
                "balance_before": before.to_string(),
                "balance_after": balance.to_string(),
                "overage_before": "0",
                "overage_after": "0",
                "is_credit": is_credit,
                "created_at": self.ts(at),
                "description": if is_credit { "monthly credits" } else { "api usage" },
                "reference_type": "api",
                "metadata": {},
            });
            self.emit(event_type, at, data);
            if !low_sent && balance < granted / Decimal::from(5) {
                low_sent = true;
                let at = self.step(&mut t);
                let data = json!({
                    "payload_type": "CreditBalanceLow",
                    "customer_id": c.id,
                    "credit_entitlement_id": ce,
                    "credit_entitlement_name": "API calls",
                    "subscription_id": self.rng.ident("sub_", 22),
                    "available_balance": balance.to_string(),
                    "subscription_credits_amount": granted.to_string(),
                    "threshold_amount": "200",
                    "threshold_percent": 20,
                    "brand_id": self.brand,
                });
                self.emit("credit.balance_low", at, data);
            }
        }
        self.plan.balances.push(ExpectedBalance {
            customer_id: c.id.clone(),
            credit_entitlement_id: ce,
            balance,
        });
    }

    /// Business-level events the engine stores but does not fold.
    fn payout(&mut self, mut t: DateTime<Utc>) {
        let id = self.rng.ident("pout_", 20);
        for status in ["not_initiated", "in_progress", "success"] {
            let at = self.step(&mut t);
            let event_type = match status {
                "not_initiated" => "payout.created",
                "in_progress" => "payout.in_progress",
                _ => "payout.success",
            };
            let data = json!({
                "payload_type": "Payout",
                "payout_id": id,
                "business_id": self.business,
                "amount": 125_000,
                "fee": 250,
                "currency": "USD",
                "payment_method": "bank_transfer",
                "status": status,
                "created_at": self.ts(at),
                "updated_at": self.ts(at),
            });
            self.emit(event_type, at, data);
        }
    }
}

/// Generates the lifecycles of `customers` customers, as of `epoch`.
pub fn generate(rng: &mut Rng, customers: usize, epoch: DateTime<Utc>) -> Plan {
    let mut gen = Gen {
        business: rng.ident("bus_", 14),
        brand: rng.ident("brnd_", 14),
        entitlements: Vec::new(),
        epoch,
        plan: Plan::default(),
        rng,
    };
    gen.entitlements = (0..12).map(|_| gen.rng.ident("ent_", 20)).collect();
    for n in 0..customers {
        let name = FIRST_NAMES[gen.rng.below(FIRST_NAMES.len())];
        let c = Customer {
            id: gen.rng.ident("cus_", 22),
            email: format!("{}.{n}@example.com", name.to_lowercase()),
            name: name.to_string(),
        };
        let mut ents = gen.entitlements.clone();
        gen.rng.shuffle(&mut ents);
        let mut ents = ents.into_iter();
        let lifecycles = 1 + gen.rng.below(3);
        for _ in 0..lifecycles {
            // Each lifecycle starts 2 to 30 days before the epoch and lasts under a day.
            let start = epoch - Duration::seconds(2 * 86_400 + gen.rng.below(28 * 86_400) as i64);
            let (Some(ent), kind) = (ents.next(), gen.rng.below(10)) else {
                break;
            };
            match kind {
                0 | 1 => gen.oauth(&c, &ent, start),
                2 | 3 => gen.license(&c, &ent, start),
                4..=6 => gen.subscription_life(&c, &ent, start),
                7 => gen.manual(&c, &ent, start),
                8 => match ents.next() {
                    Some(new) => gen.plan_change(&c, &ent, &new, start),
                    None => gen.subscription_life(&c, &ent, start),
                },
                _ => gen.refund(&c, &ent, start),
            }
        }
        if gen.rng.chance(0.3) {
            let start = epoch - Duration::days(3);
            gen.credits(&c, start);
        }
        if n % 25 == 0 {
            let start = epoch - Duration::days(5);
            gen.payout(start);
        }
    }
    gen.plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use entitlement_sync::wire::format_timestamp;
    use entitlement_sync::{Delivery, Engine};

    fn show(t: DateTime<Utc>) -> String {
        format_timestamp(&t)
    }

    fn epoch() -> DateTime<Utc> {
        entitlement_sync::wire::parse_timestamp("2026-06-01T12:00:00Z").unwrap_or_default()
    }

    #[test]
    fn deterministic_for_a_seed_and_epoch() {
        let a = generate(&mut Rng::new(7), 30, epoch());
        let b = generate(&mut Rng::new(7), 30, epoch());
        let ids = |p: &Plan| -> Vec<(String, String)> {
            p.deliveries
                .iter()
                .map(|d| (d.webhook_id.clone(), d.body.clone()))
                .collect()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&generate(&mut Rng::new(8), 30, epoch())));
    }

    /// The model's expectations hold when the plan is applied by the engine itself, in
    /// order and shuffled with duplicates.
    #[test]
    fn the_engine_agrees_with_the_model() -> Result<(), Box<dyn std::error::Error>> {
        let plan = generate(&mut Rng::new(42), 100, epoch());
        let kinds: std::collections::BTreeSet<&str> =
            plan.deliveries.iter().map(|d| d.event_type).collect();
        for k in [
            "entitlement_grant.created",
            "entitlement_grant.delivered",
            "entitlement_grant.revoked",
            "entitlement_grant.failed",
            "subscription.on_hold",
            "subscription.plan_changed",
            "refund.succeeded",
            "license_key.created",
            "credit.deducted",
            "payout.success",
        ] {
            assert!(kinds.contains(k), "no {k} in the plan");
        }
        let reasons: std::collections::BTreeSet<(bool, &str, Option<&str>)> = plan
            .access
            .iter()
            .map(|e| (e.allowed, e.status, e.reason.as_deref()))
            .collect();
        for r in [
            (true, "delivered", None),
            (false, "pending", None),
            (false, "failed", Some("oauth_link_expired")),
            (false, "delivered", Some("license_key_expired")),
            (false, "revoked", Some("subscription_on_hold")),
            (false, "revoked", Some("subscription_paused")),
            (false, "revoked", Some("subscription_cancelled")),
            (false, "revoked", Some("manual")),
            (false, "revoked", Some("plan_changed")),
            (false, "revoked", Some("refund")),
        ] {
            assert!(reasons.contains(&r), "no pair expecting {r:?}");
        }
        assert!(!plan.balances.is_empty());
        for shuffled in [false, true] {
            let dir = tempfile::tempdir()?;
            let engine = Engine::open(dir.path().join("t.db"))?;
            let mut order: Vec<&Planned> = plan.deliveries.iter().collect();
            if shuffled {
                let mut rng = Rng::new(1);
                let extra: Vec<&Planned> = (0..order.len() / 5)
                    .map(|_| order[rng.below(order.len())])
                    .collect();
                order.extend(extra);
                rng.shuffle(&mut order);
            }
            let order: Vec<Delivery> = order
                .into_iter()
                .map(|d| Delivery::new(d.webhook_id.clone(), d.body.clone(), epoch()))
                .collect();
            for chunk in order.chunks(64) {
                for r in engine.ingest_batch(chunk.to_vec())? {
                    r?;
                }
            }
            let now = epoch() + Duration::hours(1);
            for e in &plan.access {
                let a = engine.access(&e.customer_id, &e.entitlement_id, now)?;
                assert_eq!(
                    (a.allowed, a.status.as_str(), a.reason.as_deref()),
                    (e.allowed, e.status, e.reason.as_deref()),
                    "{e:?} (shuffled: {shuffled}) at {}",
                    show(now)
                );
            }
            for b in &plan.balances {
                let got = engine.credit_balance(&b.customer_id, &b.credit_entitlement_id)?;
                assert_eq!(got.map(|g| g.balance), Some(b.balance), "{b:?}");
            }
        }
        Ok(())
    }
}
