//! Helpers shared by every test module: wire bodies built from small specs, realistic
//! lifecycle generators, folding helpers, and ([`model`]) a deliberately naive reference
//! model of the rules in `PRODUCT.md`.
//!
//! Everything here describes snapshots the way a test thinks about them (a status, an
//! instant, a reason as Dodo spells it) and renders them to the exact bytes Dodo would send,
//! so the code under test always starts from `event::parse` of a body.

pub mod model;

use chrono::{DateTime, Duration, FixedOffset, TimeZone, Timelike, Utc};
use entitlement_sync::event::{self, Event, Grant, Subscription};
use entitlement_sync::fold::{self, Entry, Folded, Machine, Snap, Verdict, VersionKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// An instant, as the crate uses it.
pub type Timestamp = DateTime<Utc>;

/// The business every generated snapshot belongs to.
pub const BUSINESS: &str = "bus_test";

/// The absolute path of a module's regression file,
/// `<repo>/proptest-regressions/it/<name>.txt` (committed), e.g.
/// `support::regressions_path!("core")`.
macro_rules! regressions_path {
    ($name:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/it/",
            $name,
            ".txt"
        )
    };
}
pub(crate) use regressions_path;

/// The proptest configuration of this crate: the defaults (256 cases, or
/// `PROPTEST_CASES`), with failures persisted in `file` (use [`regressions_path!`]): the
/// repository's top-level `proptest-regressions/`, whatever directory the test runs from
/// (proptest's default would put an integration test's file under `tests/`).
pub fn proptest_config(file: &'static str) -> Config {
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        ..Config::default()
    }
}

/// The bodies of every `tests/data/events/*.json` fixture (one per Dodo event type), in
/// file-name order.
pub fn event_fixture_bodies() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/events");
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("events dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("fixture"))
        .collect()
}

/// Grant histories of every status and revocation reason, each grant's snapshots in
/// version order (so some transitions are illegal and quarantined): (webhook id
/// `msg_G_S`, body). Grant `grant_G` belongs to `cus_{G % customers}` and grants
/// `ent_{G % entitlements}`.
pub fn grant_histories(
    seed: u64,
    grants: usize,
    customers: usize,
    entitlements: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut rng = entitlement_sync::synth::Rng::new(seed);
    let statuses = [St::Pending, St::Delivered, St::Revoked, St::Failed];
    let mut out = Vec::new();
    for g in 0..grants {
        let id = format!("grant_{g}");
        let mut at = t0();
        for step in 0..1 + rng.below(5) {
            at += ms(1 + rng.below(100_000) as i64);
            let status = statuses[rng.below(statuses.len())];
            let mut spec = grant(&id, status, at)
                .customer(&format!("cus_{}", g % customers))
                .entitlement(&format!("ent_{}", g % entitlements));
            if status == St::Revoked {
                spec = spec.reason(REASONS[rng.below(REASONS.len())].wire);
            }
            out.push((format!("msg_{g}_{step}"), spec.body()));
        }
    }
    out
}

/// The origin of every generated timeline: 2026-05-01T10:00:00Z.
pub fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0).unwrap()
}

/// `n` milliseconds.
pub fn ms(n: i64) -> Duration {
    Duration::milliseconds(n)
}

/// Parses an RFC 3339 literal written in a test (panics on a typo).
pub fn at(text: &str) -> Timestamp {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad test timestamp {text:?}: {e}"))
        .with_timezone(&Utc)
}

// ---------------------------------------------------------------------------------------
// Timestamps on the wire
// ---------------------------------------------------------------------------------------

/// How an instant is written on the wire: 0, 3, 6 or 9 fractional digits, and `Z` or a
/// numeric offset. Digits are raised when the instant needs them (an instant with 250 ms
/// is never written with 0 digits), so a form never changes the instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsForm {
    /// Requested fractional digits: 0, 3, 6 or 9.
    pub frac_digits: u8,
    /// Offset east of UTC in minutes; 0 is written `Z`.
    pub offset_minutes: i32,
}

impl TsForm {
    /// `2026-05-01T10:00:00Z`.
    pub const Z: TsForm = TsForm {
        frac_digits: 0,
        offset_minutes: 0,
    };

    /// Renders `at` in this form.
    pub fn render(&self, at: Timestamp) -> String {
        let nanos = at.nanosecond() % 1_000_000_000;
        let needed = if nanos == 0 {
            0
        } else if nanos % 1_000_000 == 0 {
            3
        } else if nanos % 1_000 == 0 {
            6
        } else {
            9
        };
        let digits = self.frac_digits.max(needed);
        let offset = FixedOffset::east_opt(self.offset_minutes * 60).expect("offset in range");
        let local = at.with_timezone(&offset);
        let mut s = local.format("%Y-%m-%dT%H:%M:%S").to_string();
        if digits > 0 {
            let scaled = nanos / 10u32.pow(9 - u32::from(digits));
            s.push_str(&format!(".{scaled:0width$}", width = usize::from(digits)));
        }
        if self.offset_minutes == 0 {
            s.push('Z');
        } else {
            let sign = if self.offset_minutes < 0 { '-' } else { '+' };
            let m = self.offset_minutes.abs();
            s.push_str(&format!("{sign}{:02}:{:02}", m / 60, m % 60));
        }
        s
    }
}

/// Any wire form: 0/3/6/9 digits, `Z` or offsets seen in RFC 3339 (`+02:00`, `-05:00`,
/// `+05:30`, `-00:30`, `+14:00`).
pub fn ts_form() -> impl Strategy<Value = TsForm> {
    (
        prop::sample::select(vec![0u8, 3, 6, 9]),
        prop::sample::select(vec![0i32, 0, 0, 120, -300, 330, -30, 840]),
    )
        .prop_map(|(frac_digits, offset_minutes)| TsForm {
            frac_digits,
            offset_minutes,
        })
}

// ---------------------------------------------------------------------------------------
// Grant statuses and revocation reasons, as the product text defines them
// ---------------------------------------------------------------------------------------

/// A grant status (PRODUCT.md §4), independent of the crate's own enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum St {
    /// `Pending`
    Pending,
    /// `Delivered`
    Delivered,
    /// `Failed`
    Failed,
    /// `Revoked`
    Revoked,
}

impl St {
    /// The canonical (snake_case) name, as the access answer prints it.
    pub fn canonical(self) -> &'static str {
        match self {
            St::Pending => "pending",
            St::Delivered => "delivered",
            St::Failed => "failed",
            St::Revoked => "revoked",
        }
    }

    /// Spellings seen on the wire: the SDK's capitalised enum, the docs' lower case, and
    /// an all-caps one (status parses case-insensitively, PRODUCT.md §5).
    pub fn spellings(self) -> [&'static str; 3] {
        match self {
            St::Pending => ["pending", "Pending", "PENDING"],
            St::Delivered => ["delivered", "Delivered", "DELIVERED"],
            St::Failed => ["failed", "Failed", "FAILED"],
            St::Revoked => ["revoked", "Revoked", "REVOKED"],
        }
    }

    /// Lifecycle rank, the tie-break of snapshots of one instant (PRODUCT.md §3: "ties
    /// broken deterministically, e.g. by status rank then content hash").
    pub fn rank(self) -> u8 {
        match self {
            St::Pending => 0,
            St::Delivered => 1,
            St::Failed => 2,
            St::Revoked => 3,
        }
    }

    /// The event name Dodo would most likely send with this status.
    pub fn event_type(self) -> &'static str {
        match self {
            St::Pending => "entitlement_grant.created",
            St::Delivered => "entitlement_grant.delivered",
            St::Failed => "entitlement_grant.failed",
            St::Revoked => "entitlement_grant.revoked",
        }
    }
}

/// A revocation reason as Dodo spells it, with the product's reading of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason {
    /// As sent on the wire.
    pub wire: &'static str,
    /// The canonical snake_case name (what the access answer's `reason` says).
    pub canonical: &'static str,
    /// PRODUCT.md §4: restoration (`revoked -> delivered`, same grant id) and a change of
    /// reason are allowed only after these.
    pub recoverable: bool,
}

const fn reason(wire: &'static str, canonical: &'static str, recoverable: bool) -> Reason {
    Reason {
        wire,
        canonical,
        recoverable,
    }
}

/// Every revocation reason the tests send: the documented ones (dodo-webhooks.md §4, seed
/// 000), `SubscriptionPaused` as the docs spell it, case variants, and reasons this
/// version does not know (final, like `manual`).
pub const REASONS: &[Reason] = &[
    reason("subscription_on_hold", "subscription_on_hold", true),
    reason("SubscriptionPaused", "subscription_paused", true),
    reason("subscription_paused", "subscription_paused", true),
    reason("license_key_disabled", "license_key_disabled", true),
    reason("platform_external", "platform_external", true),
    reason("subscription_cancelled", "subscription_cancelled", false),
    reason("subscription_expired", "subscription_expired", false),
    reason("plan_changed", "plan_changed", false),
    reason("refund", "refund", false),
    reason("manual", "manual", false),
    reason("Manual", "manual", false),
    reason("account_frozen", "account_frozen", false),
    reason("ACCOUNT_FROZEN", "account_frozen", false),
];

/// The reasons after which Dodo restores a grant.
pub fn recoverable_reasons() -> Vec<Reason> {
    REASONS.iter().copied().filter(|r| r.recoverable).collect()
}

/// The reasons that end a grant for good.
pub fn final_reasons() -> Vec<Reason> {
    REASONS.iter().copied().filter(|r| !r.recoverable).collect()
}

/// Looks a reason up by its wire spelling (panics if the table lacks it).
pub fn reason_named(wire: &str) -> Reason {
    *REASONS
        .iter()
        .find(|r| r.wire == wire)
        .unwrap_or_else(|| panic!("reason {wire:?} is not in support::REASONS"))
}

// ---------------------------------------------------------------------------------------
// Grant snapshots
// ---------------------------------------------------------------------------------------

/// The shape of `data.metadata` (PRODUCT.md §5: null, absent or mixed-type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meta {
    /// `"metadata": null`
    Null,
    /// No `metadata` key.
    Absent,
    /// `"metadata": {}`
    Empty,
    /// String, number, boolean and null values.
    Mixed,
}

impl Meta {
    fn value(self) -> Option<Value> {
        match self {
            Meta::Null => Some(Value::Null),
            Meta::Absent => None,
            Meta::Empty => Some(json!({})),
            Meta::Mixed => Some(json!({"tier": "pro", "seats": 5, "beta": true, "note": null})),
        }
    }
}

/// One entitlement-grant snapshot, as a test describes it. [`GrantSpec::body`] renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSpec {
    /// Grant id.
    pub id: String,
    /// `data.business_id` (`None`: left out, which Dodo's schema does not allow).
    pub business_id: Option<String>,
    /// `data.customer_id`.
    pub customer_id: String,
    /// `data.entitlement_id`.
    pub entitlement_id: String,
    /// Status.
    pub status: St,
    /// Its wire spelling.
    pub status_wire: &'static str,
    /// Revocation reason (revoked grants; `None` = `null`).
    pub reason: Option<Reason>,
    /// The snapshot's version instant: `data.updated_at`, or the envelope `timestamp` when
    /// `updated_at_in_payload` is false.
    pub at: Timestamp,
    /// Whether `data.updated_at` is sent (else the version is the envelope timestamp).
    pub updated_at_in_payload: bool,
    /// Envelope `timestamp` minus `at`, in ms, when `updated_at` is sent (the event time
    /// is not the version).
    pub envelope_lag_ms: i64,
    /// How every timestamp of the snapshot is written.
    pub form: TsForm,
    /// `license_key`: `None` = null; `Some(None)` = a key without expiry.
    pub license: Option<Option<Timestamp>>,
    /// `error_code` (and a matching `error_message`).
    pub error_code: Option<String>,
    /// `oauth_url`.
    pub oauth_url: Option<String>,
    /// `subscription_id`.
    pub subscription_id: Option<String>,
    /// `payment_id`.
    pub payment_id: Option<String>,
    /// `metadata`.
    pub metadata: Meta,
    /// Free content counter (`external_id`, activations used): distinct content at one
    /// instant.
    pub revision: u32,
    /// Add `data.payload_type: "EntitlementGrant"` (optional on the wire).
    pub payload_type: bool,
    /// The envelope `type`; `None` = the usual one for the status. State never depends on
    /// it (PRODUCT.md §2).
    pub event_type: Option<&'static str>,
}

/// A grant snapshot with plain defaults: customer `cus_a`, entitlement `ent_pro`,
/// lower-case status, `updated_at` sent, `Z` timestamps, no license key.
pub fn grant(id: &str, status: St, at: Timestamp) -> GrantSpec {
    GrantSpec {
        id: id.to_string(),
        business_id: Some(BUSINESS.to_string()),
        customer_id: "cus_a".to_string(),
        entitlement_id: "ent_pro".to_string(),
        status,
        status_wire: status.spellings()[0],
        reason: None,
        at,
        updated_at_in_payload: true,
        envelope_lag_ms: 0,
        form: TsForm::Z,
        license: None,
        error_code: None,
        oauth_url: None,
        subscription_id: None,
        payment_id: None,
        metadata: Meta::Null,
        revision: 0,
        payload_type: false,
        event_type: None,
    }
}

impl GrantSpec {
    /// Sets the revocation reason by its wire spelling (see [`REASONS`]).
    pub fn reason(mut self, wire: &str) -> Self {
        self.reason = Some(reason_named(wire));
        self
    }

    /// Sets the customer.
    pub fn customer(mut self, c: &str) -> Self {
        self.customer_id = c.to_string();
        self
    }

    /// Sets the entitlement.
    pub fn entitlement(mut self, e: &str) -> Self {
        self.entitlement_id = e.to_string();
        self
    }

    /// Sets the wire spelling of the status.
    pub fn spelled(mut self, wire: &'static str) -> Self {
        self.status_wire = wire;
        self
    }

    /// Attaches a license key expiring at `until` (`None`: never).
    pub fn license_until(mut self, until: Option<Timestamp>) -> Self {
        self.license = Some(until);
        self
    }

    /// Writes every timestamp in `form`.
    pub fn form(mut self, form: TsForm) -> Self {
        self.form = form;
        self
    }

    /// Sets the content revision.
    pub fn revision(mut self, r: u32) -> Self {
        self.revision = r;
        self
    }

    /// The envelope timestamp.
    pub fn envelope_at(&self) -> Timestamp {
        if self.updated_at_in_payload {
            self.at + ms(self.envelope_lag_ms)
        } else {
            self.at
        }
    }

    /// The envelope `type`.
    pub fn event_type(&self) -> &'static str {
        self.event_type.unwrap_or(self.status.event_type())
    }

    /// `data`, as Dodo's `EntitlementGrantResponse` (seed 000 shape).
    pub fn data(&self) -> Value {
        let r = |t: Timestamp| Value::String(self.form.render(t));
        let created = self.at.min(t0());
        let mut data = json!({
            "id": self.id,
            "business_id": self.business_id,
            "entitlement_id": self.entitlement_id,
            "customer_id": self.customer_id,
            "external_id": format!("ext_{}", self.revision),
            "payment_id": self.payment_id,
            "subscription_id": self.subscription_id,
            "status": self.status_wire,
            "revocation_reason": self.reason.map(|x| x.wire),
            "license_key": self.license.map(|until| json!({
                "key": format!("KEY-{}", self.id),
                "expires_at": until.map(r),
                "activations_used": self.revision,
                "activations_limit": 5,
            })),
            "digital_product_delivery": null,
            "delivered_at": (self.status == St::Delivered).then(|| r(self.at)),
            "revoked_at": (self.status == St::Revoked).then(|| r(self.at)),
            "error_code": self.error_code,
            "error_message": self.error_code.as_ref().map(|c| format!("delivery failed: {c}")),
            "oauth_url": self.oauth_url,
            "oauth_expires_at": self.oauth_url.as_ref().map(|_| r(self.at + Duration::days(7))),
            "created_at": r(created),
        });
        let obj = data.as_object_mut().expect("an object");
        if let Some(m) = self.metadata.value() {
            obj.insert("metadata".into(), m);
        }
        if self.updated_at_in_payload {
            obj.insert("updated_at".into(), r(self.at));
        }
        if self.payload_type {
            obj.insert("payload_type".into(), json!("EntitlementGrant"));
        }
        if self.business_id.is_none() {
            obj.remove("business_id");
        }
        data
    }

    /// The whole envelope.
    pub fn envelope(&self) -> Value {
        envelope(
            self.event_type(),
            &self.form.render(self.envelope_at()),
            self.data(),
        )
    }

    /// The raw delivery body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.envelope()).expect("serialisable")
    }

    /// The body, parsed by the code under test (panics unless it is a grant).
    pub fn snap(&self) -> Snap<Grant> {
        parse_grant(&self.body())
    }
}

/// An envelope `{business_id, type, timestamp, data}`.
pub fn envelope(event_type: &str, timestamp: &str, data: Value) -> Value {
    json!({
        "business_id": BUSINESS,
        "type": event_type,
        "timestamp": timestamp,
        "data": data,
    })
}

/// Parses a body that must be a grant snapshot.
pub fn parse_grant(body: &[u8]) -> Snap<Grant> {
    match event::parse(body) {
        Ok(env) => match env.event {
            Event::Grant(s) => s,
            other => panic!("expected a grant, got {other:?}"),
        },
        Err(e) => panic!(
            "grant body does not parse: {e}\n{}",
            String::from_utf8_lossy(body)
        ),
    }
}

/// Parses a body that must be a subscription snapshot.
pub fn parse_subscription(body: &[u8]) -> Snap<Subscription> {
    match event::parse(body) {
        Ok(env) => match env.event {
            Event::Subscription(s) => s,
            other => panic!("expected a subscription, got {other:?}"),
        },
        Err(e) => panic!(
            "subscription body does not parse: {e}\n{}",
            String::from_utf8_lossy(body)
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Subscription snapshots
// ---------------------------------------------------------------------------------------

/// A subscription status as the product text defines it (PRODUCT.md §4, dodo-webhooks.md
/// §5), plus one this version does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubSt {
    /// As sent.
    pub wire: &'static str,
    /// Canonical name.
    pub canonical: &'static str,
}

/// Every subscription status the tests send.
pub const SUB_STATUSES: &[SubSt] = &[
    SubSt {
        wire: "pending",
        canonical: "pending",
    },
    SubSt {
        wire: "active",
        canonical: "active",
    },
    SubSt {
        wire: "Active",
        canonical: "active",
    },
    SubSt {
        wire: "on_hold",
        canonical: "on_hold",
    },
    SubSt {
        wire: "paused",
        canonical: "paused",
    },
    SubSt {
        wire: "past_due",
        canonical: "past_due",
    },
    SubSt {
        wire: "cancelled",
        canonical: "cancelled",
    },
    SubSt {
        wire: "failed",
        canonical: "failed",
    },
    SubSt {
        wire: "expired",
        canonical: "expired",
    },
    SubSt {
        wire: "trialing",
        canonical: "trialing",
    },
];

/// Looks a subscription status up by wire spelling.
pub fn sub_status(wire: &str) -> SubSt {
    *SUB_STATUSES
        .iter()
        .find(|s| s.wire == wire)
        .unwrap_or_else(|| panic!("status {wire:?} is not in support::SUB_STATUSES"))
}

/// One subscription snapshot. Subscriptions carry no `updated_at`: the version is the
/// envelope timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubSpec {
    /// `subscription_id`.
    pub id: String,
    /// `customer.customer_id` (`None`: no `customer`, which Dodo's schema does not allow).
    pub customer_id: Option<String>,
    /// Status.
    pub status: SubSt,
    /// Envelope timestamp = version.
    pub at: Timestamp,
    /// How timestamps are written.
    pub form: TsForm,
    /// Content counter.
    pub revision: u32,
    /// `recurring_pre_tax_amount` as a decimal string instead of a number.
    pub amount_as_string: bool,
}

/// A subscription snapshot with plain defaults (customer `cus_a`).
pub fn subscription(id: &str, status: &str, at: Timestamp) -> SubSpec {
    SubSpec {
        id: id.to_string(),
        customer_id: Some("cus_a".to_string()),
        status: sub_status(status),
        at,
        form: TsForm::Z,
        revision: 0,
        amount_as_string: false,
    }
}

impl SubSpec {
    /// `data`, in the SDK's `Subscription` shape (trimmed to what matters).
    pub fn data(&self) -> Value {
        let r = |t: Timestamp| Value::String(self.form.render(t));
        let amount = if self.amount_as_string {
            json!("2999")
        } else {
            json!(2999)
        };
        json!({
            "subscription_id": self.id,
            "status": self.status.wire,
            "customer": self.customer_id.as_ref().map(|c| json!({"customer_id": c, "email": "a@example.com", "name": "A"})),
            "product_id": "prod_pro",
            "quantity": 1,
            "recurring_pre_tax_amount": amount,
            "currency": "USD",
            "cancel_at_next_billing_date": false,
            "next_billing_date": r(t0() + Duration::days(30)),
            "previous_billing_date": r(t0()),
            "created_at": r(t0()),
            "metadata": {"revision": self.revision},
            "payload_type": "Subscription",
        })
    }

    /// The envelope type: `subscription.<status>` (any name would do: state comes from
    /// `data.status`).
    pub fn event_type(&self) -> String {
        format!("subscription.{}", self.status.canonical)
    }

    /// The raw body.
    pub fn body(&self) -> Vec<u8> {
        let env = envelope(&self.event_type(), &self.form.render(self.at), self.data());
        serde_json::to_vec(&env).expect("serialisable")
    }

    /// Parsed by the code under test.
    pub fn snap(&self) -> Snap<Subscription> {
        parse_subscription(&self.body())
    }
}

// ---------------------------------------------------------------------------------------
// Payment and refund snapshots
// ---------------------------------------------------------------------------------------

/// What a payment snapshot says about refunds of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentRefunds {
    /// None: `refunds: []`, `refund_status: null`.
    None,
    /// One succeeded, non-partial refund created at that instant (`refund_status: full`).
    Full(Timestamp),
    /// One succeeded partial refund (`refund_status: partial`): no denial.
    Partial(Timestamp),
    /// Two succeeded partial refunds that add up (`refund_status: full`), created at these
    /// instants.
    FullByParts(Timestamp, Timestamp),
}

/// One payment snapshot. The version is `data.updated_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentSpec {
    /// `payment_id`.
    pub id: String,
    /// `customer.customer_id`.
    pub customer_id: String,
    /// `subscription_id` (a subscription's payment) or none (a one-time purchase).
    pub subscription_id: Option<String>,
    /// `updated_at` = version.
    pub at: Timestamp,
    /// `refunds[]` and `refund_status`.
    pub refunds: PaymentRefunds,
    /// The ids of the first and second refund `refunds[]` lists.
    pub refund_ids: [String; 2],
    /// How timestamps are written.
    pub form: TsForm,
    /// Content counter (`metadata.revision`).
    pub revision: u32,
}

/// A payment snapshot with plain defaults (customer `cus_a`, one-time, no refunds).
pub fn payment(id: &str, at: Timestamp) -> PaymentSpec {
    PaymentSpec {
        id: id.to_string(),
        customer_id: "cus_a".to_string(),
        subscription_id: None,
        at,
        refunds: PaymentRefunds::None,
        refund_ids: [0, 1].map(|n| format!("re_{id}_{n}")),
        form: TsForm::Z,
        revision: 0,
    }
}

impl PaymentSpec {
    /// `data`, in the SDK's `Payment` shape (trimmed to what matters).
    pub fn data(&self) -> Value {
        let r = |t: Timestamp| Value::String(self.form.render(t));
        let entry = |n: usize, at: Timestamp, partial: bool| {
            json!({"refund_id": self.refund_ids[n], "status": "succeeded",
                   "is_partial": partial, "created_at": r(at), "amount": if partial { 1000 } else { 2999 }})
        };
        let (refunds, status) = match self.refunds {
            PaymentRefunds::None => (json!([]), Value::Null),
            PaymentRefunds::Full(at) => (json!([entry(0, at, false)]), json!("full")),
            PaymentRefunds::Partial(at) => (json!([entry(0, at, true)]), json!("partial")),
            PaymentRefunds::FullByParts(a, b) => {
                (json!([entry(0, a, true), entry(1, b, true)]), json!("full"))
            }
        };
        json!({
            "payload_type": "Payment",
            "payment_id": self.id,
            "status": "succeeded",
            "customer": {"customer_id": self.customer_id, "email": "a@example.com", "name": "A"},
            "subscription_id": self.subscription_id,
            "total_amount": 2999,
            "currency": "USD",
            "refund_status": status,
            "refunds": refunds,
            "disputes": [],
            "created_at": r(t0()),
            "updated_at": r(self.at),
            "metadata": {"revision": self.revision},
        })
    }

    /// The raw body (`payment.succeeded`, whatever the refunds say: state comes from data).
    pub fn body(&self) -> Vec<u8> {
        let env = envelope("payment.succeeded", &self.form.render(self.at), self.data());
        serde_json::to_vec(&env).expect("serialisable")
    }
}

/// One refund snapshot. Refunds carry no `updated_at`: the version is the envelope
/// timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundSpec {
    /// `refund_id`.
    pub id: String,
    /// `payment_id`.
    pub payment_id: String,
    /// `succeeded`, `pending` or `failed`.
    pub status: &'static str,
    /// `is_partial`.
    pub partial: bool,
    /// Envelope timestamp = version.
    pub at: Timestamp,
    /// How timestamps are written.
    pub form: TsForm,
}

impl RefundSpec {
    /// `data`, in the SDK's `Refund` shape.
    pub fn data(&self) -> Value {
        json!({
            "payload_type": "Refund",
            "refund_id": self.id,
            "payment_id": self.payment_id,
            "business_id": BUSINESS,
            "status": self.status,
            "is_partial": self.partial,
            "amount": if self.partial { 1000 } else { 2999 },
            "currency": "USD",
            "customer": {"customer_id": "cus_a", "email": "a@example.com", "name": "A"},
            "created_at": self.form.render(self.at),
            "reason": null,
        })
    }

    /// The raw body (`refund.<status>`).
    pub fn body(&self) -> Vec<u8> {
        let env = envelope(
            &format!("refund.{}", self.status),
            &self.form.render(self.at),
            self.data(),
        );
        serde_json::to_vec(&env).expect("serialisable")
    }
}

// ---------------------------------------------------------------------------------------
// Folding helpers
// ---------------------------------------------------------------------------------------

/// A delivery as the fold sees it.
pub fn entry<T>(snap: Snap<T>, delivery_id: impl Into<String>) -> Entry<T> {
    Entry {
        snap,
        delivery_id: delivery_id.into(),
        forced: false,
    }
}

/// Folds every object of a mixed list separately, keyed by object id.
pub fn fold_by_object<T: Machine>(
    entries: impl IntoIterator<Item = Entry<T>>,
) -> BTreeMap<String, Folded<T>> {
    let mut by_id: BTreeMap<String, Vec<Entry<T>>> = BTreeMap::new();
    for e in entries {
        by_id
            .entry(e.snap.body.object_id().to_string())
            .or_default()
            .push(e);
    }
    by_id
        .into_iter()
        .map(|(id, es)| (id, fold::fold(es)))
        .collect()
}

/// What must not depend on arrival order: the state (snapshot, key, since) and every
/// distinct snapshot's verdict, in fold order. (The representative delivery id of a step
/// is left out: a replay under a new webhook id may legitimately change it.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<T> {
    /// Current snapshot, its key and since.
    pub state: Option<(T, VersionKey, Timestamp)>,
    /// `(key, verdict)` of every distinct snapshot.
    pub steps: Vec<(VersionKey, Verdict)>,
}

/// The order-independent part of a fold.
pub fn summary<T: Clone>(f: &Folded<T>) -> Summary<T> {
    Summary {
        state: f
            .state
            .as_ref()
            .map(|c| (c.snap.body.clone(), c.snap.key, c.since)),
        steps: f.steps.iter().map(|s| (s.key, s.verdict.clone())).collect(),
    }
}

/// Summaries of every object.
pub fn summaries<T: Clone>(m: &BTreeMap<String, Folded<T>>) -> BTreeMap<String, Summary<T>> {
    m.iter().map(|(k, v)| (k.clone(), summary(v))).collect()
}

/// The keys a fold rejected.
pub fn rejected_keys<T>(f: &Folded<T>) -> Vec<VersionKey> {
    f.rejected().map(|(s, _)| s.key).collect()
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Any permutation of `items` with any number of them delivered again (up to `len`
/// extra copies). Each copy is `(original index, replay)`: `replay` false means a retry
/// under the same webhook id, true a dashboard replay under a new one.
pub fn shuffled_with_duplicates(len: usize) -> BoxedStrategy<Vec<(usize, bool)>> {
    if len == 0 {
        return Just(Vec::new()).boxed();
    }
    prop::collection::vec((0..len, any::<bool>()), 0..=len)
        .prop_flat_map(move |extra| {
            let mut all: Vec<(usize, bool)> = (0..len).map(|i| (i, false)).collect();
            all.extend(extra);
            Just(all).prop_shuffle()
        })
        .boxed()
}

/// Delivery ids for [`shuffled_with_duplicates`]: `wh_<i>` for the original and a retry,
/// `wh_<i>_replay<k>` for the k-th copy that is a replay.
pub fn delivery_ids(order: &[(usize, bool)]) -> Vec<(usize, String)> {
    order
        .iter()
        .enumerate()
        .map(|(k, &(i, replay))| {
            let id = if replay {
                format!("wh_{i}_replay{k}")
            } else {
                format!("wh_{i}")
            };
            (i, id)
        })
        .collect()
}

/// Gaps between consecutive snapshots: the same instant (a tie), sub-second, seconds,
/// minutes, hours, a day.
const GAPS_MS: [i64; 7] = [0, 250, 1_000, 60_000, 600_000, 3_600_000, 86_400_000];

/// The raw random choices of one lifecycle step; [`materialize`] turns them into a
/// realistic snapshot given where the grant is.
#[derive(Clone, Debug)]
pub struct StepChoice {
    choice: u8,
    reason: usize,
    gap: usize,
    form: TsForm,
    spelling: usize,
    oddity: u8,
    meta: u8,
    lag_ms: i64,
}

fn step_choice() -> impl Strategy<Value = StepChoice> {
    (
        any::<u8>(),
        0..REASONS.len(),
        0..GAPS_MS.len(),
        ts_form(),
        0..3usize,
        0..24u8,
        0..4u8,
        prop::sample::select(vec![0i64, 0, 3, 1_500, -1_000]),
    )
        .prop_map(
            |(choice, reason, gap, form, spelling, oddity, meta, lag_ms)| StepChoice {
                choice,
                reason,
                gap,
                form,
                spelling,
                oddity,
                meta,
                lag_ms,
            },
        )
}

/// How a grant begins (dodo-webhooks.md §4, seed 000).
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// An OAuth integration: created `pending` with an `oauth_url`.
    OauthPending,
    /// An auto-fulfilled license key: created already `delivered`, announced twice
    /// (`created` and `delivered`, same data).
    LicenseKeyDelivered,
    /// A feature flag: created `delivered`.
    FeatureFlag,
}

/// Which grant a lifecycle is for.
#[derive(Clone, Debug)]
pub struct Who {
    /// Grant id.
    pub id: String,
    /// Customer.
    pub customer: String,
    /// Entitlement.
    pub entitlement: String,
    /// Subscription behind the grant.
    pub subscription: Option<String>,
}

/// Turns random choices into a realistic, in-order history of one grant: created
/// pending or delivered; delivered; failed (with an error code); revoked with every
/// reason; restorations after recoverable reasons; reason changes; manual and other final
/// revocations followed by later deliveries (which the rules must reject); snapshots whose
/// customer or entitlement changed (also to be rejected); timestamps in every wire form,
/// ties included.
pub fn materialize(
    who: &Who,
    start: Start,
    begin: Timestamp,
    expiry_hours: Option<i64>,
    steps: &[StepChoice],
) -> Vec<GrantSpec> {
    let mut out = Vec::new();
    let mut base = grant(&who.id, St::Pending, begin)
        .customer(&who.customer)
        .entitlement(&who.entitlement);
    base.subscription_id = who.subscription.clone();
    base.payment_id = who
        .subscription
        .is_none()
        .then(|| format!("pay_{}", who.id));
    let expiry = expiry_hours.map(|h| begin + Duration::hours(h));
    match start {
        Start::OauthPending => {
            base.oauth_url = Some(format!("https://discord.com/oauth2/authorize?g={}", who.id));
            out.push(base.clone());
        }
        Start::LicenseKeyDelivered => {
            base.status = St::Delivered;
            base.status_wire = "delivered";
            base.license = Some(expiry);
            let mut created = base.clone();
            created.event_type = Some("entitlement_grant.created");
            out.push(created);
            out.push(base.clone());
        }
        Start::FeatureFlag => {
            base.status = St::Delivered;
            base.status_wire = "Delivered";
            base.event_type = Some("entitlement_grant.created");
            out.push(base.clone());
            base.event_type = None;
        }
    }
    // Where the grant really is (what Dodo believes), to pick the next realistic step.
    let mut cur = base.clone();
    let mut now = begin;
    for (n, c) in steps.iter().enumerate() {
        now += ms(GAPS_MS[c.gap]);
        let mut next = cur.clone();
        next.at = now;
        next.form = c.form;
        next.envelope_lag_ms = c.lag_ms;
        next.event_type = None;
        next.revision = u32::try_from(n).unwrap_or(u32::MAX) + 1;
        next.metadata = match c.meta {
            0 => Meta::Null,
            1 => Meta::Absent,
            2 => Meta::Empty,
            _ => Meta::Mixed,
        };
        let reason = REASONS[c.reason];
        let (status, why) = match (cur.status, cur.reason) {
            (St::Pending, _) => match c.choice % 4 {
                0 | 1 => (St::Delivered, None),
                2 => (St::Failed, None),
                _ => (St::Revoked, Some(reason)),
            },
            (St::Delivered, _) => match c.choice % 3 {
                0 => (St::Delivered, None),
                _ => (St::Revoked, Some(reason)),
            },
            (St::Failed, _) => match c.choice % 3 {
                0 => (St::Failed, None),
                1 => (St::Revoked, Some(reason_named("manual"))),
                _ => (St::Revoked, Some(reason)),
            },
            (St::Revoked, r) => match c.choice % 4 {
                // A restoration, or (after a final reason) a later delivery to be rejected.
                0 | 1 => (St::Delivered, None),
                2 => (St::Revoked, r),
                _ => (St::Revoked, Some(reason)),
            },
        };
        next.status = status;
        next.status_wire = status.spellings()[c.spelling];
        next.reason = why;
        next.error_code = (status == St::Failed).then(|| "github_permission_denied".to_string());
        // The consent URL stays on pending grants; some later snapshots keep a stale one.
        next.oauth_url = if status == St::Pending || c.meta == 3 {
            cur.oauth_url.clone()
        } else {
            None
        };
        // Rarely: an envelope type that disagrees with the status (a late delivery).
        if c.oddity == 1 {
            next.event_type = Some("entitlement_grant.delivered");
        }
        // Rarely: a snapshot that changes who the grant belongs to, or an odd shape.
        match c.oddity {
            2 => next.customer_id = "cus_intruder".to_string(),
            3 => next.entitlement_id = "ent_other".to_string(),
            4 => next.updated_at_in_payload = false,
            5 => next.payload_type = true,
            6 => next.business_id = Some("bus_other".to_string()),
            7 => next.business_id = None,
            _ => {}
        }
        out.push(next.clone());
        // Dodo's own state moves only along legal edges; an identity change is noise.
        if model::legal(&cur, &next) {
            cur = next;
            cur.updated_at_in_payload = true;
            cur.payload_type = false;
        }
    }
    out
}

/// One grant's realistic lifecycle (see [`materialize`]), starting at `begin`, of up to
/// `max_steps` steps after its creation.
pub fn grant_lifecycle(
    who: Who,
    begin: Timestamp,
    max_steps: usize,
) -> impl Strategy<Value = Vec<GrantSpec>> {
    (
        prop_oneof![
            Just(Start::OauthPending),
            Just(Start::LicenseKeyDelivered),
            Just(Start::FeatureFlag),
        ],
        prop::option::of(1..2_000i64),
        prop::collection::vec(step_choice(), 0..=max_steps),
    )
        .prop_map(move |(start, expiry, steps)| materialize(&who, start, begin, expiry, &steps))
}

/// Several grants' lifecycles, interleaved by version: two grants of one (customer,
/// entitlement) pair (so access is an OR) and one of another pair. In-order delivery is
/// the returned order.
pub fn grant_lifecycles(max_steps: usize) -> impl Strategy<Value = Vec<GrantSpec>> {
    let who = |id: &str, c: &str, e: &str, s: Option<&str>| Who {
        id: id.to_string(),
        customer: c.to_string(),
        entitlement: e.to_string(),
        subscription: s.map(str::to_string),
    };
    (
        grant_lifecycle(
            who("grant_a", "cus_a", "ent_pro", Some("sub_1")),
            t0(),
            max_steps,
        ),
        prop::option::of(grant_lifecycle(
            who("grant_b", "cus_a", "ent_pro", None),
            t0() + ms(250),
            max_steps,
        )),
        prop::option::of(grant_lifecycle(
            who("grant_c", "cus_b", "ent_files", None),
            t0(),
            max_steps,
        )),
    )
        .prop_map(|(a, b, c)| {
            let mut all: Vec<GrantSpec> = a
                .into_iter()
                .chain(b.unwrap_or_default())
                .chain(c.unwrap_or_default())
                .collect();
            all.sort_by_key(|g| g.at);
            all
        })
}

/// A random history of one subscription: any statuses (legal or not), any instants.
/// With `distinct_instants`, no two snapshots share an instant, so the expected fold does
/// not depend on a tie-break.
pub fn subscription_history(distinct_instants: bool) -> impl Strategy<Value = Vec<SubSpec>> {
    prop::collection::vec(
        (
            prop::sample::select(SUB_STATUSES.to_vec()),
            0..40i64,
            ts_form(),
            0..3u32,
            any::<bool>(),
            0..10u8,
        ),
        1..12,
    )
    .prop_map(move |raw| {
        let mut seen = std::collections::BTreeSet::new();
        raw.into_iter()
            .filter_map(|(status, minute, form, revision, amount_as_string, odd)| {
                let at = t0() + Duration::minutes(minute) + ms(if odd == 0 { 250 } else { 0 });
                if distinct_instants && !seen.insert(at) {
                    return None;
                }
                Some(SubSpec {
                    id: "sub_1".to_string(),
                    customer_id: match odd {
                        1 => Some("cus_intruder".to_string()),
                        2 => None,
                        _ => Some("cus_a".to_string()),
                    },
                    status,
                    at,
                    form,
                    revision,
                    amount_as_string,
                })
            })
            .collect()
    })
}

/// Any JSON value (bounded depth and size).
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names that the decoders look at, and some that they do not.
pub fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "type",
            "timestamp",
            "data",
            "status",
            "customer_id",
            "entitlement_id",
            "business_id",
            "updated_at",
            "revocation_reason",
            "license_key",
            "expires_at",
            "subscription_id",
            "payment_id",
            "customer",
            "amount",
            "balance_after",
            "created_at",
            "total_amount",
            "refunds",
            "disputes",
            "dispute_status",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,10}",
    ]
}

/// Strings that stress the decoders: timestamps at the edges of what chrono represents,
/// huge and odd decimals, odd casings.
pub const INTERESTING: &[&str] = &[
    "",
    " ",
    "2026-05-01T10:00:00Z",
    "2026-05-01T10:00:00.123456789Z",
    "2026-05-01T10:00:00",
    "+262143-12-31T23:59:59Z",
    "+262143-12-31T23:59:59",
    "-262144-01-01T00:00:00",
    "9999-12-31T23:59:59.999999999+14:00",
    "0000-01-01T00:00:00-14:00",
    "2026-02-30T10:00:00Z",
    "1e28",
    "1e29",
    "1e-28",
    "1e99999999999",
    "-1e-99999999999",
    "79228162514264337593543950335",
    "79228162514264337593543950336",
    "-0.0000000000000000000000000001",
    "0.00000000000000000000000000001",
    "NaN",
    "Infinity",
    "1_000",
    "SubscriptionPaused",
    "DELIVERED",
    "Revoked",
    "İ",
    "ß",
    "\u{0}",
];

/// One of [`INTERESTING`].
pub fn interesting_string() -> impl Strategy<Value = String> {
    prop::sample::select(INTERESTING.to_vec()).prop_map(str::to_string)
}
