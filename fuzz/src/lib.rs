//! Shared pieces of the fuzz targets: structured webhook envelopes built from fuzzer
//! bytes (so the fuzzer reaches the typed paths instead of dying in JSON syntax), and the
//! snapshot round-trip check (the store writes typed snapshots as JSON and must read
//! them back).

use arbitrary::{Arbitrary, Result, Unstructured};
use entitlement_sync::event::{Envelope, Event, KNOWN_TYPES};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

/// Timestamps that sit on an edge: offsets that push the UTC instant out of years
/// 0..=9999, leap seconds, odd separators, 0/3/6/9/10 fractional digits.
pub const EDGE_TIMESTAMPS: &[&str] = &[
    "9999-12-31T23:30:00-01:00",
    "9999-12-31T23:59:59.999999999Z",
    "0000-01-01T00:30:00+01:00",
    "0000-01-01T00:00:00Z",
    "+10000-01-01T00:00:00",
    "-0001-12-31T23:59:59",
    "2026-06-30T23:59:60Z",
    "2026-05-01T10:00:00.250Z",
    "2026-05-01T12:00:00.123456+02:00",
    "2026-05-01t10:00:00z",
    "2026-05-01 10:00:00Z",
    "2026-05-01T10:00:00.1234567891Z",
    "2026-05-01T10:00:00",
    " 2026-05-01T10:00:00Z ",
    "2026-02-30T10:00:00Z",
    "1970-01-01T00:00:00Z",
    "",
];

const ODD_SUFFIXES: &[&str] = &[
    "",
    " ",
    "\u{e9}",
    "\u{0}",
    "'",
    "\"",
    "%",
    "../x",
    "\u{1F600}",
    "\t",
    "\u{202e}",
    "\u{130}",
    "\u{17f}",
    "_",
    ":",
    "/",
    "\\",
];

const GRANT_STATUSES: &[&str] = &[
    "pending",
    "delivered",
    "failed",
    "revoked",
    "Delivered",
    "Revoked",
    "PENDING",
    "Failed",
    "suspended",
];
const REVOCATION_REASONS: &[&str] = &[
    "manual",
    "subscription_on_hold",
    "SubscriptionPaused",
    "subscription_paused",
    "license_key_disabled",
    "platform_external",
    "subscription_cancelled",
    "subscription_expired",
    "refund",
    "plan_changed",
    "chargeback",
];
const SUBSCRIPTION_STATUSES: &[&str] = &[
    "pending",
    "active",
    "on_hold",
    "paused",
    "past_due",
    "cancelled",
    "failed",
    "expired",
    "Active",
    "OnHold",
    "trialing",
];
const PAYMENT_STATUSES: &[&str] = &[
    "succeeded",
    "failed",
    "cancelled",
    "processing",
    "requires_customer_action",
    "Succeeded",
];
const REFUND_STATUSES: &[&str] = &["succeeded", "failed", "pending", "review", "Succeeded"];
const DISPUTE_STATUSES: &[&str] = &[
    "dispute_opened",
    "dispute_expired",
    "dispute_accepted",
    "dispute_cancelled",
    "dispute_challenged",
    "dispute_won",
    "dispute_lost",
    "DisputeLost",
];
const LICENSE_KEY_STATUSES: &[&str] = &["active", "expired", "disabled", "Active"];
const TRANSACTION_TYPES: &[&str] = &["credit_added", "credit_deducted", "manual_adjustment"];
const SCI: &[&str] = &[
    "1e30",
    "-1E-5",
    "1e400",
    "1e-400",
    "1e28",
    "7.9e28",
    "-0",
    "0.0000",
    "1_000",
    "+5",
    ".5",
    "5.",
    "NaN",
    "inf",
    " 12 ",
    "0x10",
    "1e9999999999",
];

/// The family of a generated envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Family {
    Grant,
    Subscription,
    Payment,
    Refund,
    Dispute,
    LicenseKey,
    CreditEntry,
    CreditBalanceLow,
    Unhandled,
}

impl Family {
    fn prefix(self) -> &'static str {
        match self {
            Family::Grant => "entitlement_grant.",
            Family::Subscription => "subscription.",
            Family::Payment => "payment.",
            Family::Refund => "refund.",
            Family::Dispute => "dispute.",
            Family::LicenseKey => "license_key.",
            Family::CreditEntry => "credit.",
            Family::CreditBalanceLow => "credit.balance_low",
            Family::Unhandled => "payout.",
        }
    }
}

fn pick<'a>(u: &mut Unstructured<'_>, items: &[&'a str]) -> Result<&'a str> {
    Ok(items[u.choose_index(items.len())?])
}

/// A timestamp in one of the many forms the wire may carry.
pub fn timestamp(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 | 1 => pick(u, EDGE_TIMESTAMPS)?.to_string(),
        2 => String::arbitrary(u)?,
        _ => {
            let year: i64 = match u.int_in_range(0u8..=7)? {
                0 => 9999,
                1 => 0,
                2 => u.int_in_range(0..=9999)?,
                3 => u.int_in_range(9990..=9999)?,
                _ => u.int_in_range(2024..=2028)?,
            };
            let signed_year = u.ratio(1u8, 12)?;
            let year = if signed_year {
                match u.int_in_range(0u8..=2)? {
                    0 => format!("+{}", u.int_in_range(10000i64..=262_143)?),
                    1 => format!("-{:04}", u.int_in_range(1i64..=262_143)?),
                    _ => format!("+{year:04}"),
                }
            } else {
                format!("{year:04}")
            };
            let month = if u.ratio(1u8, 20)? {
                u.int_in_range(0u8..=13)?
            } else {
                u.int_in_range(1u8..=12)?
            };
            let day = u.int_in_range(1u8..=31)?;
            let hour = u.int_in_range(0u8..=23)?;
            let minute = u.int_in_range(0u8..=59)?;
            let second = u.int_in_range(0u8..=60)?;
            let frac = pick(
                u,
                &[
                    "",
                    "",
                    ".250",
                    ".123456",
                    ".1",
                    ".000",
                    ".999999999",
                    ".0000000001",
                ],
            )?;
            let sep = pick(u, &["T", "T", "T", "t", " "])?;
            let offset = match u.int_in_range(0u8..=9)? {
                0..=3 => "Z".to_string(),
                4 => pick(u, &["z", "", "+00:00", "-00:00", "+0000"])?.to_string(),
                _ => {
                    let sign = if bool::arbitrary(u)? { '+' } else { '-' };
                    let hh = u.int_in_range(0u8..=23)?;
                    let mm = pick(u, &["00", "30", "45", "59"])?;
                    format!("{sign}{hh:02}:{mm}")
                }
            };
            format!(
                "{year}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}:{second:02}{frac}{offset}"
            )
        }
    })
}

/// An amount as a JSON number, a decimal string, a huge or scientific value, or junk.
pub fn decimal(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0u8..=10)? {
        0 => Value::from(i64::arbitrary(u)?),
        1 => Value::from(u64::arbitrary(u)?),
        2 => serde_json::Number::from_f64(f64::arbitrary(u)?)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        3 => Value::from(i64::arbitrary(u)?.to_string()),
        4 | 5 => {
            let int_digits = u.int_in_range(0usize..=32)?;
            let frac_digits = u.int_in_range(0usize..=32)?;
            let mut s = String::new();
            if bool::arbitrary(u)? {
                s.push('-');
            }
            for _ in 0..int_digits.max(1) {
                s.push(char::from(b'0' + u.int_in_range(0u8..=9)?));
            }
            if frac_digits > 0 {
                s.push('.');
                for _ in 0..frac_digits {
                    s.push(char::from(b'0' + u.int_in_range(0u8..=9)?));
                }
            }
            Value::from(s)
        }
        6 => Value::from(pick(u, SCI)?),
        7 => Value::from(format!(
            "{}e{}",
            i32::arbitrary(u)?,
            i64::from(i16::arbitrary(u)?)
        )),
        8 => Value::from(String::arbitrary(u)?),
        9 => Value::Null,
        _ => Value::from(u.int_in_range(0i64..=100_000)?),
    })
}

/// An id from a small pool (so that snapshots of the same object collide), sometimes
/// with odd characters, sometimes anything.
pub fn id(u: &mut Unstructured<'_>, prefix: &str, pool: u8) -> Result<Value> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => Value::from(String::arbitrary(u)?),
        1 => Value::from(u.int_in_range(0u32..=3)?),
        2 => Value::from(format!(
            "{prefix}_{}{}",
            u.int_in_range(0..=pool)?,
            pick(u, ODD_SUFFIXES)?
        )),
        _ => Value::from(format!("{prefix}_{}", u.int_in_range(0..=pool)?)),
    })
}

fn status(u: &mut Unstructured<'_>, pool: &[&str]) -> Result<Value> {
    Ok(if u.ratio(1u8, 16)? {
        Value::from(String::arbitrary(u)?)
    } else {
        Value::from(pick(u, pool)?)
    })
}

fn boolish(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => Value::Null,
        1 => Value::from("true"),
        2 => Value::from("0"),
        3 => Value::from(String::arbitrary(u)?),
        _ => Value::from(bool::arbitrary(u)?),
    })
}

fn small_json(u: &mut Unstructured<'_>, depth: u8) -> Result<Value> {
    Ok(match u.int_in_range(0u8..=6)? {
        0 => Value::Null,
        1 => Value::from(bool::arbitrary(u)?),
        2 => Value::from(i64::arbitrary(u)?),
        3 => Value::from(String::arbitrary(u)?),
        4 if depth > 0 => {
            let n = u.int_in_range(0usize..=3)?;
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(small_json(u, depth - 1)?);
            }
            Value::Array(v)
        }
        5 if depth > 0 => {
            let n = u.int_in_range(0usize..=3)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(String::arbitrary(u)?, small_json(u, depth - 1)?);
            }
            Value::Object(m)
        }
        _ => Value::from(pick(u, &["x", "", "2026-05-01T10:00:00Z"])?),
    })
}

/// Builds a JSON object field by field: required fields are almost always there,
/// optional ones are absent, null or a value.
struct Obj<'u, 'a> {
    u: &'u mut Unstructured<'a>,
    map: Map<String, Value>,
}

impl<'u, 'a> Obj<'u, 'a> {
    fn new(u: &'u mut Unstructured<'a>) -> Self {
        Obj { u, map: Map::new() }
    }

    fn req(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Unstructured<'a>) -> Result<Value>,
    ) -> Result<()> {
        if self.u.ratio(1u8, 40)? {
            if bool::arbitrary(self.u)? {
                self.map.insert(key.into(), Value::Null);
            }
            return Ok(());
        }
        let v = f(self.u)?;
        self.map.insert(key.into(), v);
        Ok(())
    }

    fn opt(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Unstructured<'a>) -> Result<Value>,
    ) -> Result<()> {
        match self.u.int_in_range(0u8..=5)? {
            0 => {}
            1 => {
                self.map.insert(key.into(), Value::Null);
            }
            _ => {
                let v = f(self.u)?;
                self.map.insert(key.into(), v);
            }
        }
        Ok(())
    }

    fn ts(&mut self, key: &str) -> Result<()> {
        self.opt(key, |u| timestamp(u).map(Value::from))
    }

    fn dec(&mut self, key: &str) -> Result<()> {
        self.opt(key, decimal)
    }

    fn text(&mut self, key: &str) -> Result<()> {
        self.opt(key, |u| String::arbitrary(u).map(Value::from))
    }

    fn extras(&mut self) -> Result<()> {
        self.opt("metadata", |u| small_json(u, 2))?;
        if self.u.ratio(1u8, 8)? {
            let k = String::arbitrary(self.u)?;
            let v = small_json(self.u, 2)?;
            self.map.insert(k, v);
        }
        Ok(())
    }

    fn done(self) -> Value {
        Value::Object(self.map)
    }
}

fn customer(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("customer_id", |u| id(u, "cus", 2))?;
    o.text("email")?;
    o.text("name")?;
    o.extras()?;
    Ok(o.done())
}

fn grant(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("id", |u| id(u, "grt", 2))?;
    o.opt("business_id", |u| id(u, "bus", 1))?;
    o.req("customer_id", |u| id(u, "cus", 2))?;
    o.req("entitlement_id", |u| id(u, "ent", 2))?;
    o.req("status", |u| status(u, GRANT_STATUSES))?;
    o.opt("revocation_reason", |u| status(u, REVOCATION_REASONS))?;
    o.ts("created_at")?;
    o.ts("updated_at")?;
    o.ts("delivered_at")?;
    o.ts("revoked_at")?;
    o.opt("error_code", |u| status(u, &["oauth_failed", "E42"]))?;
    o.text("error_message")?;
    o.opt("payment_id", |u| id(u, "pay", 1))?;
    o.opt("subscription_id", |u| id(u, "sub", 1))?;
    o.text("oauth_url")?;
    o.ts("oauth_expires_at")?;
    o.opt("license_key", |u| {
        let mut k = Obj::new(u);
        k.text("key")?;
        k.ts("expires_at")?;
        k.dec("activations_used")?;
        k.dec("activations_limit")?;
        Ok(k.done())
    })?;
    o.extras()?;
    Ok(o.done())
}

fn subscription(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("subscription_id", |u| id(u, "sub", 1))?;
    o.req("status", |u| status(u, SUBSCRIPTION_STATUSES))?;
    o.opt("customer", customer)?;
    o.opt("product_id", |u| id(u, "pdt", 1))?;
    o.dec("quantity")?;
    o.ts("next_billing_date")?;
    o.ts("previous_billing_date")?;
    o.opt("cancel_at_next_billing_date", boolish)?;
    o.ts("cancelled_at")?;
    o.ts("paused_at")?;
    o.ts("expires_at")?;
    o.ts("past_due_ends_at")?;
    o.ts("created_at")?;
    o.dec("recurring_pre_tax_amount")?;
    o.text("currency")?;
    o.opt("scheduled_change", |u| {
        let mut c = Obj::new(u);
        c.opt("product_id", |u| id(u, "pdt", 1))?;
        c.dec("quantity")?;
        c.ts("effective_at")?;
        c.text("product_name")?;
        Ok(c.done())
    })?;
    o.extras()?;
    Ok(o.done())
}

fn payment(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("payment_id", |u| id(u, "pay", 1))?;
    o.opt("status", |u| status(u, PAYMENT_STATUSES))?;
    o.opt("customer", customer)?;
    o.opt("subscription_id", |u| id(u, "sub", 1))?;
    o.dec("total_amount")?;
    o.text("currency")?;
    o.opt("refund_status", |u| status(u, &["partial", "full"]))?;
    o.opt("refunds", |u| {
        let n = u.int_in_range(0usize..=2)?;
        let mut v = Vec::new();
        for _ in 0..n {
            let mut r = Obj::new(u);
            r.req("refund_id", |u| id(u, "ref", 1))?;
            r.req("status", |u| status(u, REFUND_STATUSES))?;
            r.opt("is_partial", boolish)?;
            r.ts("created_at")?;
            r.dec("amount")?;
            v.push(r.done());
        }
        Ok(Value::Array(v))
    })?;
    o.opt("disputes", |u| {
        let n = u.int_in_range(0usize..=2)?;
        let mut v = Vec::new();
        for _ in 0..n {
            let mut d = Obj::new(u);
            d.req("dispute_id", |u| id(u, "dsp", 1))?;
            d.req("dispute_status", |u| status(u, DISPUTE_STATUSES))?;
            d.ts("created_at")?;
            v.push(d.done());
        }
        Ok(Value::Array(v))
    })?;
    o.ts("created_at")?;
    o.ts("updated_at")?;
    o.text("error_code")?;
    o.extras()?;
    Ok(o.done())
}

fn refund(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("refund_id", |u| id(u, "ref", 1))?;
    o.req("payment_id", |u| id(u, "pay", 1))?;
    o.req("status", |u| status(u, REFUND_STATUSES))?;
    o.opt("is_partial", boolish)?;
    o.opt("customer", customer)?;
    o.dec("amount")?;
    o.text("currency")?;
    o.ts("created_at")?;
    o.extras()?;
    Ok(o.done())
}

fn dispute(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("dispute_id", |u| id(u, "dsp", 1))?;
    o.req("payment_id", |u| id(u, "pay", 1))?;
    o.req("dispute_status", |u| status(u, DISPUTE_STATUSES))?;
    o.text("dispute_stage")?;
    o.dec("amount")?;
    o.text("currency")?;
    o.opt("customer", customer)?;
    o.opt("is_resolved_by_rdr", boolish)?;
    o.ts("created_at")?;
    o.extras()?;
    Ok(o.done())
}

fn license_key(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("id", |u| id(u, "lic", 1))?;
    o.req("customer_id", |u| id(u, "cus", 2))?;
    o.opt("product_id", |u| id(u, "pdt", 1))?;
    o.req("status", |u| status(u, LICENSE_KEY_STATUSES))?;
    o.ts("expires_at")?;
    o.dec("instances_count")?;
    o.dec("activations_limit")?;
    o.opt("payment_id", |u| id(u, "pay", 1))?;
    o.opt("subscription_id", |u| id(u, "sub", 1))?;
    o.ts("created_at")?;
    o.extras()?;
    Ok(o.done())
}

fn credit_entry(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("id", |u| id(u, "cle", 2))?;
    o.req("customer_id", |u| id(u, "cus", 2))?;
    o.req("credit_entitlement_id", |u| id(u, "cent", 1))?;
    o.opt("transaction_type", |u| status(u, TRANSACTION_TYPES))?;
    o.req("amount", decimal)?;
    o.dec("balance_before")?;
    o.req("balance_after", decimal)?;
    o.dec("overage_before")?;
    o.dec("overage_after")?;
    o.opt("is_credit", boolish)?;
    o.req("created_at", |u| timestamp(u).map(Value::from))?;
    o.text("description")?;
    o.extras()?;
    Ok(o.done())
}

fn credit_balance_low(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut o = Obj::new(u);
    o.req("customer_id", |u| id(u, "cus", 2))?;
    o.req("credit_entitlement_id", |u| id(u, "cent", 1))?;
    o.opt("subscription_id", |u| id(u, "sub", 1))?;
    o.dec("available_balance")?;
    o.dec("threshold_amount")?;
    o.dec("threshold_percent")?;
    o.extras()?;
    Ok(o.done())
}

/// The `data` of one family.
pub fn data(u: &mut Unstructured<'_>, family: Family) -> Result<Value> {
    match family {
        Family::Grant => grant(u),
        Family::Subscription => subscription(u),
        Family::Payment => payment(u),
        Family::Refund => refund(u),
        Family::Dispute => dispute(u),
        Family::LicenseKey => license_key(u),
        Family::CreditEntry => credit_entry(u),
        Family::CreditBalanceLow => credit_balance_low(u),
        Family::Unhandled => small_json(u, 3),
    }
}

/// An envelope `{business_id, type, timestamp, data}` of a (mostly) known type whose
/// `data` has the family's shape with fuzzed values.
pub fn envelope(u: &mut Unstructured<'_>) -> Result<Value> {
    let family = Family::arbitrary(u)?;
    let data_family = if u.ratio(1u8, 16)? {
        Family::arbitrary(u)?
    } else {
        family
    };
    let of_family: Vec<&str> = KNOWN_TYPES
        .iter()
        .copied()
        .filter(|t| match family {
            Family::CreditEntry => t.starts_with("credit.") && *t != "credit.balance_low",
            Family::Unhandled => {
                ![
                    "entitlement_grant.",
                    "subscription.",
                    "payment.",
                    "refund.",
                    "dispute.",
                ]
                .iter()
                .any(|p| t.starts_with(p))
                    && !t.starts_with("license_key.")
                    && !t.starts_with("credit.")
            }
            f => t.starts_with(f.prefix()),
        })
        .collect();
    let event_type = match u.int_in_range(0u8..=15)? {
        0 => Value::from(format!("{}{}", family.prefix(), String::arbitrary(u)?)),
        1 => Value::from(String::arbitrary(u)?),
        _ => Value::from(pick(u, &of_family)?),
    };
    let mut o = Obj::new(u);
    o.opt("business_id", |u| id(u, "bus", 1))?;
    o.req("type", |_| Ok(event_type))?;
    o.req("timestamp", |u| timestamp(u).map(Value::from))?;
    o.req("data", |u| data(u, data_family))?;
    if o.u.ratio(1u8, 4)? {
        let pt = pick(
            o.u,
            &[
                "EntitlementGrant",
                "Subscription",
                "Payment",
                "Refund",
                "Dispute",
                "LicenseKey",
            ],
        )?;
        if let Some(Value::Object(d)) = o.map.get_mut("data") {
            d.insert("payload_type".into(), Value::from(pt));
        }
    }
    Ok(o.done())
}

/// An envelope as body bytes, compact or pretty.
pub fn envelope_bytes(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let v = envelope(u)?;
    Ok(if bool::arbitrary(u)? {
        serde_json::to_vec(&v).unwrap_or_default()
    } else {
        serde_json::to_vec_pretty(&v).unwrap_or_default()
    })
}

/// Why a typed snapshot did not survive JSON and back.
#[derive(Debug)]
pub struct RoundTripFailure {
    /// The family.
    pub family: &'static str,
    /// The JSON the snapshot serialized to (empty if serialization failed).
    pub json: String,
    /// What went wrong.
    pub message: String,
}

impl RoundTripFailure {
    /// The known finding: the snapshot holds an instant outside years 0..=9999 in UTC
    /// (e.g. `9999-12-31T23:30:00-01:00`), which chrono writes as `+10000-...` and the
    /// wire parser does not read back. Filed as the ignored regression tests in
    /// tests/it/fuzz_regressions.rs; set ENTSYNC_FUZZ_STRICT=1 to report it anyway.
    pub fn is_known_year_out_of_range(&self) -> bool {
        serde_json::from_str::<Value>(&self.json)
            .map(|v| has_out_of_range_year(&v))
            .unwrap_or(false)
    }
}

fn is_out_of_range_year(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 6 || !(b[0] == b'+' || b[0] == b'-') {
        return false;
    }
    let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    digits >= 4 && b.get(1 + digits) == Some(&b'-')
}

/// Does the JSON hold a chrono timestamp outside years 0..=9999?
pub fn has_out_of_range_year(v: &Value) -> bool {
    match v {
        Value::String(s) => is_out_of_range_year(s),
        Value::Array(a) => a.iter().any(has_out_of_range_year),
        Value::Object(m) => m.values().any(has_out_of_range_year),
        _ => false,
    }
}

fn round_trip<T>(family: &'static str, body: &T) -> std::result::Result<(), RoundTripFailure>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(body).map_err(|e| RoundTripFailure {
        family,
        json: String::new(),
        message: format!("does not serialize: {e}"),
    })?;
    let back: T = serde_json::from_str(&json).map_err(|e| RoundTripFailure {
        family,
        json: json.clone(),
        message: format!("does not read back: {e}"),
    })?;
    if &back != body {
        return Err(RoundTripFailure {
            family,
            json,
            message: format!("reads back different: {body:?} != {back:?}"),
        });
    }
    Ok(())
}

/// Serializes the typed snapshot of `env` as the store does (serde_json) and reads it
/// back: it must be equal.
pub fn snapshot_round_trip(env: &Envelope) -> std::result::Result<(), RoundTripFailure> {
    match &env.event {
        Event::Grant(s) => round_trip("grant", &s.body),
        Event::Subscription(s) => round_trip("subscription", &s.body),
        Event::Payment(s) => round_trip("payment", &s.body),
        Event::Refund(s) => round_trip("refund", &s.body),
        Event::Dispute(s) => round_trip("dispute", &s.body),
        Event::LicenseKey(s) => round_trip("license_key", &s.body),
        Event::CreditEntry(s) => round_trip("credit_entry", &s.body),
        Event::CreditBalanceLow(s) => round_trip("credit_balance_low", &s.body),
        Event::Unhandled => Ok(()),
    }
}

/// Strict by default: the out-of-range-instant finding is fixed (`wire::parse_timestamp`
/// refuses such instants), so nothing is skipped. `ENTSYNC_FUZZ_STRICT=0` skips that class
/// again, e.g. to fuzz an older build.
pub fn strict() -> bool {
    std::env::var_os("ENTSYNC_FUZZ_STRICT").is_none_or(|v| v != "0")
}
