//! Serde wire types of Dodo's webhook deliveries, converted into the core's snapshots.
//!
//! A delivery body is an envelope `{business_id, type, timestamp, data}`. Dispatch is on
//! `type` (the `data.payload_type` discriminator is optional: Dodo's SDK stopped
//! declaring it in 2026). Every family the engine folds has a typed snapshot here; every
//! other type (payouts, dunning, abandoned checkouts, types that do not exist yet) is
//! [`Event::Unhandled`]: stored and acknowledged, never refused.
//!
//! Parsing is pure and total: any byte string gives either an [`Envelope`] or a
//! [`ParseError`], never a panic.

use crate::fold::{Snap, VersionKey};
use crate::wire::{
    de_decimal, de_lenient_bool, de_opt_decimal, de_opt_i64, de_opt_id, de_opt_open,
    de_opt_timestamp, de_timestamp, open_enum, ser_opt_timestamp, ser_timestamp, Timestamp,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a body could not be turned into an event. Bodies that fail here are stored as
/// `malformed`; a later version that parses more can pick them up with a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not valid UTF-8.
    #[error("body is not valid utf-8 (byte {0})")]
    NotUtf8(usize),
    /// The body is not JSON.
    #[error("body is not json: {0}")]
    Json(String),
    /// The body is JSON but not an event envelope.
    #[error("not a webhook envelope: {0}")]
    Envelope(String),
    /// A string of the body (a value or a key, anywhere) holds U+0000. No id, status or
    /// reason can: PostgreSQL's text cannot store it, and Dodo, which keeps its objects
    /// in such text, never sends one. Refused on every store alike.
    #[error("body holds a U+0000 character in a string")]
    Nul,
    /// The envelope is fine but `data` does not fit the event's family.
    #[error("{event_type} payload does not parse: {message}")]
    Payload {
        /// The envelope's `type`.
        event_type: String,
        /// What serde said.
        message: String,
    },
}

impl ParseError {
    /// The envelope's `type`, when the envelope parsed and its `data` did not.
    pub fn event_type(&self) -> Option<&str> {
        match self {
            ParseError::Payload { event_type, .. } => Some(event_type),
            _ => None,
        }
    }
}

/// A parsed delivery body.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `business_id` of the envelope (may be absent in hand-made test bodies).
    pub business_id: Option<String>,
    /// The event type, e.g. `entitlement_grant.delivered`.
    pub event_type: String,
    /// When the event occurred (not when it was delivered).
    pub timestamp: Timestamp,
    /// The typed content.
    pub event: Event,
}

/// The typed content of one delivery.
#[derive(Debug, Clone)]
pub enum Event {
    /// `entitlement_grant.*`
    Grant(Snap<Grant>),
    /// `subscription.*`
    Subscription(Snap<Subscription>),
    /// `payment.*`
    Payment(Snap<Payment>),
    /// `refund.*`
    Refund(Snap<Refund>),
    /// `dispute.*`
    Dispute(Snap<Dispute>),
    /// `license_key.*`
    LicenseKey(Snap<LicenseKey>),
    /// `credit.*` ledger events (all but `credit.balance_low`).
    CreditEntry(Snap<CreditEntry>),
    /// `credit.balance_low`
    CreditBalanceLow(Snap<CreditBalanceLow>),
    /// Stored and listed, drives nothing: payouts, dunning, abandoned checkouts, and any
    /// type this version does not know.
    Unhandled,
}

impl Event {
    /// `(kind, object id)` of the object this event is a snapshot of.
    pub fn object(&self) -> Option<(Kind, &str)> {
        match self {
            Event::Grant(s) => Some((Kind::Grant, &s.body.id)),
            Event::Subscription(s) => Some((Kind::Subscription, &s.body.subscription_id)),
            Event::Payment(s) => Some((Kind::Payment, &s.body.payment_id)),
            Event::Refund(s) => Some((Kind::Refund, &s.body.refund_id)),
            Event::Dispute(s) => Some((Kind::Dispute, &s.body.dispute_id)),
            Event::LicenseKey(s) => Some((Kind::LicenseKey, &s.body.id)),
            Event::CreditEntry(s) => Some((Kind::CreditEntry, &s.body.id)),
            Event::CreditBalanceLow(s) => Some((Kind::CreditBalanceLow, &s.body.object_id)),
            Event::Unhandled => None,
        }
    }

    /// The version key of its snapshot.
    pub fn key(&self) -> Option<VersionKey> {
        Some(match self {
            Event::Grant(s) => s.key,
            Event::Subscription(s) => s.key,
            Event::Payment(s) => s.key,
            Event::Refund(s) => s.key,
            Event::Dispute(s) => s.key,
            Event::LicenseKey(s) => s.key,
            Event::CreditEntry(s) => s.key,
            Event::CreditBalanceLow(s) => s.key,
            Event::Unhandled => return None,
        })
    }

    /// Its typed snapshot as JSON: what the store writes as the object's state when the
    /// snapshot becomes it. Pure, so it runs ahead of the writer (see
    /// [`crate::delivery::Prepared`]); `None` for [`Event::Unhandled`].
    pub(crate) fn state_json(&self) -> Option<String> {
        let json = match self {
            Event::Grant(s) => serde_json::to_string(&s.body),
            Event::Subscription(s) => serde_json::to_string(&s.body),
            Event::Payment(s) => serde_json::to_string(&s.body),
            Event::Refund(s) => serde_json::to_string(&s.body),
            Event::Dispute(s) => serde_json::to_string(&s.body),
            Event::LicenseKey(s) => serde_json::to_string(&s.body),
            Event::CreditEntry(s) => serde_json::to_string(&s.body),
            Event::CreditBalanceLow(s) => serde_json::to_string(&s.body),
            Event::Unhandled => return None,
        };
        json.ok()
    }
}

/// The families of objects the engine folds: one variant per [`Event`] variant that
/// carries a snapshot. Adding a family starts here; the compiler lists the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Entitlement grants.
    Grant,
    /// Subscriptions.
    Subscription,
    /// Payments.
    Payment,
    /// Refunds.
    Refund,
    /// Disputes.
    Dispute,
    /// License keys.
    LicenseKey,
    /// Credit ledger entries.
    CreditEntry,
    /// `credit.balance_low` notices, one object per (customer, credit entitlement).
    CreditBalanceLow,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Grant,
        Kind::Subscription,
        Kind::Payment,
        Kind::Refund,
        Kind::Dispute,
        Kind::LicenseKey,
        Kind::CreditEntry,
        Kind::CreditBalanceLow,
    ];

    /// The stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Subscription => "subscription",
            Kind::Payment => "payment",
            Kind::Refund => "refund",
            Kind::Dispute => "dispute",
            Kind::LicenseKey => "license_key",
            Kind::CreditEntry => "credit_entry",
            Kind::CreditBalanceLow => "credit_balance_low",
        }
    }

    /// Inverse of [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Does the access decision read objects of this kind (so the access index holds
    /// them)?
    pub fn in_index(self) -> bool {
        match self {
            Kind::Grant | Kind::Subscription | Kind::Payment | Kind::Refund | Kind::Dispute => true,
            Kind::LicenseKey | Kind::CreditEntry | Kind::CreditBalanceLow => false,
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(default, deserialize_with = "de_opt_id")]
    business_id: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(deserialize_with = "de_timestamp", serialize_with = "ser_timestamp")]
    timestamp: Timestamp,
    #[serde(default)]
    data: serde_json::Value,
}

/// Parses a raw delivery body.
///
/// # Errors
///
/// [`ParseError`] when the body is not UTF-8, not JSON, not an envelope, or when `data`
/// does not fit the family named by `type`. Unknown types are not errors.
///
/// # Example
///
/// ```
/// use entitlement_sync::event::{parse, Event};
/// let body = br#"{"business_id":"bus_1","type":"payout.success","timestamp":"2026-05-01T10:00:00Z","data":{}}"#;
/// let env = parse(body)?;
/// assert!(matches!(env.event, Event::Unhandled));
/// # Ok::<(), entitlement_sync::event::ParseError>(())
/// ```
pub fn parse(body: &[u8]) -> Result<Envelope, ParseError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ParseError::NotUtf8(e.valid_up_to()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    // JSON writes U+0000 only as the escape `\u0000`: most bodies hold no backslash, and
    // the walk runs only for those that hold the escape's text.
    if body.contains(&b'\\') && body.windows(6).any(|w| w == b"\\u0000") && holds_nul(&value) {
        return Err(ParseError::Nul);
    }
    // By value: the envelope takes the parsed strings and `data` over (no copies).
    let raw = RawEnvelope::deserialize(value).map_err(|e| ParseError::Envelope(e.to_string()))?;
    let event =
        typed(&raw.event_type, raw.timestamp, raw.data, body).map_err(|e| ParseError::Payload {
            event_type: raw.event_type.clone(),
            message: e.to_string(),
        })?;
    Ok(Envelope {
        business_id: raw.business_id,
        event_type: raw.event_type,
        timestamp: raw.timestamp,
        event,
    })
}

/// Whether a string of `value` (a key or a value, at any depth) holds U+0000.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The family of an event type, by its prefix; `None` for types the engine does not fold.
pub fn family(event_type: &str) -> Option<Kind> {
    let prefix = event_type.split('.').next().unwrap_or("");
    Some(match prefix {
        "entitlement_grant" => Kind::Grant,
        "subscription" => Kind::Subscription,
        "payment" => Kind::Payment,
        "refund" => Kind::Refund,
        "dispute" => Kind::Dispute,
        "license_key" => Kind::LicenseKey,
        "credit" if event_type == "credit.balance_low" => Kind::CreditBalanceLow,
        "credit" => Kind::CreditEntry,
        _ => return None,
    })
}

/// Every event type Dodo documents (`reference/dodo-webhooks.md` §2: the SDK's 47 and
/// `subscription.past_due`). A payload of one of these that does not fit its family is
/// malformed; a type outside this list whose payload does not fit is only unhandled.
pub const KNOWN_TYPES: [&str; 48] = [
    "payment.succeeded",
    "payment.failed",
    "payment.processing",
    "payment.cancelled",
    "refund.succeeded",
    "refund.failed",
    "dispute.opened",
    "dispute.expired",
    "dispute.accepted",
    "dispute.cancelled",
    "dispute.challenged",
    "dispute.won",
    "dispute.lost",
    "subscription.active",
    "subscription.renewed",
    "subscription.on_hold",
    "subscription.paused",
    "subscription.unpaused",
    "subscription.cancelled",
    "subscription.failed",
    "subscription.expired",
    "subscription.plan_changed",
    "subscription.updated",
    "subscription.update_payment_method",
    "subscription.past_due",
    "license_key.created",
    "payout.created",
    "payout.on_hold",
    "payout.in_progress",
    "payout.failed",
    "payout.success",
    "credit.added",
    "credit.deducted",
    "credit.expired",
    "credit.rolled_over",
    "credit.rollover_forfeited",
    "credit.overage_charged",
    "credit.overage_reset",
    "credit.manual_adjustment",
    "credit.balance_low",
    "abandoned_checkout.detected",
    "abandoned_checkout.recovered",
    "dunning.started",
    "dunning.recovered",
    "entitlement_grant.created",
    "entitlement_grant.delivered",
    "entitlement_grant.failed",
    "entitlement_grant.revoked",
];

/// The typed event, or [`Event::Unhandled`] for a type this version does not know whose
/// payload is not its family's object (a future `payment.*` event about something else
/// must be stored and acknowledged, not called malformed).
fn typed(
    event_type: &str,
    envelope_ts: Timestamp,
    data: serde_json::Value,
    body: &[u8],
) -> Result<Event, serde_json::Error> {
    match typed_family(event_type, envelope_ts, data, body) {
        Err(_) if !KNOWN_TYPES.contains(&event_type) => Ok(Event::Unhandled),
        other => other,
    }
}

fn typed_family(
    event_type: &str,
    envelope_ts: Timestamp,
    data: serde_json::Value,
    raw: &[u8],
) -> Result<Event, serde_json::Error> {
    fn snap<T: crate::fold::Machine + for<'de> Deserialize<'de>>(
        data: serde_json::Value,
        envelope_ts: Timestamp,
        raw: &[u8],
    ) -> Result<Snap<T>, serde_json::Error> {
        // Hashed first, then taken apart by value: the body takes the strings over.
        let hash = content_hash(&data);
        let body = if crate::wire::has_float(&data) {
            // A `Value` keeps a fraction as an `f64`: read the amounts from the text.
            T::deserialize(&mut serde_json::Deserializer::from_slice(data_text(raw)?))?
        } else {
            T::deserialize(data)?
        };
        let at = body.version_at(envelope_ts);
        let key = VersionKey {
            at,
            rank: body.rank(),
            hash,
        };
        Ok(Snap { body, key })
    }
    let Some(kind) = family(event_type) else {
        return Ok(Event::Unhandled);
    };
    Ok(match kind {
        Kind::Grant => Event::Grant(snap(data, envelope_ts, raw)?),
        Kind::Subscription => Event::Subscription(snap(data, envelope_ts, raw)?),
        Kind::Payment => Event::Payment(snap(data, envelope_ts, raw)?),
        Kind::Refund => Event::Refund(snap(data, envelope_ts, raw)?),
        Kind::Dispute => Event::Dispute(snap(data, envelope_ts, raw)?),
        Kind::LicenseKey => Event::LicenseKey(snap(data, envelope_ts, raw)?),
        Kind::CreditEntry => Event::CreditEntry(snap(data, envelope_ts, raw)?),
        Kind::CreditBalanceLow => {
            let mut s: Snap<CreditBalanceLow> = snap(data, envelope_ts, raw)?;
            s.body.object_id = format!("{}:{}", s.body.customer_id, s.body.credit_entitlement_id);
            Event::CreditBalanceLow(s)
        }
    })
}

/// The text of the envelope's `data`, as it arrived (`null` when there is none).
///
/// Only for a payload that holds a fraction. The body parsed once already; this second
/// reading fails only where the body repeats a key, which a `Value` forgives (the last
/// wins) and a typed reading does not: such a payload is malformed.
fn data_text(body: &[u8]) -> Result<&[u8], serde_json::Error> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow, default)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let d: Data<'_> = serde_json::from_slice(body)?;
    Ok(d.data.map_or(b"null".as_slice(), |r| r.get().as_bytes()))
}

/// SHA-256 of the canonical JSON of `data` (object keys sorted), so that the same
/// snapshot delivered twice under different webhook ids is recognised as the same.
pub fn content_hash(data: &serde_json::Value) -> [u8; 32] {
    /// Feeds serialized bytes straight into the hash.
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // serde_json's map is ordered by key (no `preserve_order`), so this is canonical;
    // serialising a `Value` into an infallible writer cannot fail.
    let mut w = HashWriter(Sha256::new());
    let _ = serde_json::to_writer(&mut w, data);
    w.0.finalize().into()
}

open_enum! {
    /// Lifecycle status of an entitlement grant (Dodo sends `Pending`, `Delivered`, ...).
    GrantStatus {
        /// Created, waiting for delivery (e.g. OAuth consent).
        Pending = "pending",
        /// Access delivered.
        Delivered = "delivered",
        /// Delivery failed (non-retryable).
        Failed = "failed",
        /// Access revoked; see the revocation reason.
        Revoked = "revoked",
    }
}

open_enum! {
    /// Why a grant was revoked.
    RevocationReason {
        /// The subscription was cancelled.
        SubscriptionCancelled = "subscription_cancelled",
        /// A renewal failed; recoverable.
        SubscriptionOnHold = "subscription_on_hold",
        /// The subscription's term ended.
        SubscriptionExpired = "subscription_expired",
        /// The subscription was paused; recoverable (`SubscriptionPaused` on the wire).
        SubscriptionPaused = "subscription_paused",
        /// The plan changed; the old grant is replaced by a new one.
        PlanChanged = "plan_changed",
        /// The one-time payment was refunded.
        Refund = "refund",
        /// Revoked by the merchant; never restored automatically.
        Manual = "manual",
        /// The license key was disabled; restored when it is re-enabled.
        LicenseKeyDisabled = "license_key_disabled",
        /// The platform side drifted; restored once fixed.
        PlatformExternal = "platform_external",
    }
}

/// The license key attached to a grant, once issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantLicenseKey {
    /// The key text.
    #[serde(default)]
    pub key: String,
    /// When the key stops being valid (`None`: never).
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub expires_at: Option<Timestamp>,
    /// Activations used so far.
    #[serde(default, deserialize_with = "de_opt_i64")]
    pub activations_used: Option<i64>,
    /// Activation limit, if any.
    #[serde(default, deserialize_with = "de_opt_i64")]
    pub activations_limit: Option<i64>,
}

/// An `EntitlementGrant` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The grant id (stable across its whole life, restorations included).
    pub id: String,
    /// Owning business.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub business_id: Option<String>,
    /// The customer.
    pub customer_id: String,
    /// The entitlement.
    pub entitlement_id: String,
    /// Status (case-insensitive on the wire).
    pub status: GrantStatus,
    /// Why it was revoked, for revoked grants.
    #[serde(default, deserialize_with = "de_opt_open")]
    pub revocation_reason: Option<RevocationReason>,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
    /// Last modification: the grant's version.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub updated_at: Option<Timestamp>,
    /// When it was delivered.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub delivered_at: Option<Timestamp>,
    /// When it was revoked.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub revoked_at: Option<Timestamp>,
    /// Machine-readable failure code.
    #[serde(default)]
    pub error_code: Option<String>,
    /// Human-readable failure message.
    #[serde(default)]
    pub error_message: Option<String>,
    /// The one-time payment behind the grant.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub payment_id: Option<String>,
    /// The subscription behind the grant.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub subscription_id: Option<String>,
    /// Where the customer completes OAuth consent, for pending grants.
    #[serde(default)]
    pub oauth_url: Option<String>,
    /// When `oauth_url` stops working.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub oauth_expires_at: Option<Timestamp>,
    /// The license key, for license-key grants.
    #[serde(default)]
    pub license_key: Option<GrantLicenseKey>,
}

open_enum! {
    /// Subscription status. `past_due` is documented but gated; more may come.
    SubscriptionStatus {
        /// Created, not yet active.
        Pending = "pending",
        /// Active.
        Active = "active",
        /// A renewal failed; access revoked until it recovers.
        OnHold = "on_hold",
        /// Paused deliberately.
        Paused = "paused",
        /// A renewal failed inside the grace window; access kept.
        PastDue = "past_due",
        /// Cancelled (terminal).
        Cancelled = "cancelled",
        /// Mandate or first payment failed (terminal).
        Failed = "failed",
        /// The term ended (terminal).
        Expired = "expired",
    }
}

/// A `Subscription` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The subscription id.
    pub subscription_id: String,
    /// Status.
    pub status: SubscriptionStatus,
    /// The customer (from the nested `customer` object).
    #[serde(default, rename = "customer")]
    pub customer: Option<CustomerRef>,
    /// The product subscribed to.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub product_id: Option<String>,
    /// Quantity.
    #[serde(default, deserialize_with = "de_opt_i64")]
    pub quantity: Option<i64>,
    /// End of the current period.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub next_billing_date: Option<Timestamp>,
    /// Start of the current period.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub previous_billing_date: Option<Timestamp>,
    /// Cancellation scheduled at the period end.
    #[serde(default, deserialize_with = "de_lenient_bool")]
    pub cancel_at_next_billing_date: bool,
    /// When it was cancelled.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub cancelled_at: Option<Timestamp>,
    /// When it was paused.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub paused_at: Option<Timestamp>,
    /// When the term ends, if it does.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub expires_at: Option<Timestamp>,
    /// When the `past_due` grace ends.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub past_due_ends_at: Option<Timestamp>,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
    /// Recurring amount before tax, minor units.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub recurring_pre_tax_amount: Option<Decimal>,
    /// Currency.
    #[serde(default)]
    pub currency: Option<String>,
    /// A plan change scheduled for a later date, if any.
    #[serde(default, deserialize_with = "de_lenient_opt")]
    pub scheduled_change: Option<ScheduledChange>,
}

/// A plan change scheduled for later (`change-plan` with `effective_at:
/// next_billing_date`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduledChange {
    /// The product the subscription moves to.
    #[serde(default, deserialize_with = "de_opt_id")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub product_id: Option<String>,
    /// The quantity it will have.
    #[serde(default, deserialize_with = "de_opt_i64")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub quantity: Option<i64>,
    /// When the change takes effect.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub effective_at: Option<Timestamp>,
    /// The new product's name, when given.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub product_name: Option<String>,
}

/// `serde(deserialize_with)`: an optional sub-object that is informational only; a
/// shape this version does not understand is dropped rather than failing the snapshot.
fn de_lenient_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(v).ok())
}

impl Subscription {
    /// The customer id, when the snapshot carries one.
    pub fn customer_id(&self) -> Option<&str> {
        self.customer.as_ref().map(|c| c.customer_id.as_str())
    }
}

/// `CustomerLimitedDetails`, as nested in payments, subscriptions, refunds, disputes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRef {
    /// The customer id.
    pub customer_id: String,
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

open_enum! {
    /// Payment intent status.
    PaymentStatus {
        /// Paid.
        Succeeded = "succeeded",
        /// Failed.
        Failed = "failed",
        /// Cancelled.
        Cancelled = "cancelled",
        /// In flight.
        Processing = "processing",
        /// Waiting for the customer (3DS, ...).
        RequiresCustomerAction = "requires_customer_action",
    }
}

/// An entry of `payment.refunds[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefund {
    /// The refund id.
    pub refund_id: String,
    /// Status.
    pub status: RefundStatus,
    /// Partial refund?
    #[serde(default, deserialize_with = "de_lenient_bool")]
    pub is_partial: bool,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
    /// Amount, minor units.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub amount: Option<Decimal>,
}

/// An entry of `payment.disputes[]` (the small dispute shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDispute {
    /// The dispute id.
    pub dispute_id: String,
    /// Status.
    pub dispute_status: DisputeStatus,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
}

/// A `Payment` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The payment id.
    pub payment_id: String,
    /// Status (nullable on the wire).
    #[serde(default, deserialize_with = "de_opt_open")]
    pub status: Option<PaymentStatus>,
    /// The customer.
    #[serde(default)]
    pub customer: Option<CustomerRef>,
    /// The subscription, for subscription payments.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub subscription_id: Option<String>,
    /// Total, minor units (number or string on the wire).
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub total_amount: Option<Decimal>,
    /// Currency.
    #[serde(default)]
    pub currency: Option<String>,
    /// `partial` or `full`.
    #[serde(default)]
    pub refund_status: Option<String>,
    /// Refunds of this payment.
    #[serde(default, deserialize_with = "de_vec_or_null")]
    pub refunds: Vec<PaymentRefund>,
    /// Disputes of this payment.
    #[serde(default, deserialize_with = "de_vec_or_null")]
    pub disputes: Vec<PaymentDispute>,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
    /// Last modification, when present: the payment's version.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub updated_at: Option<Timestamp>,
    /// Failure code.
    #[serde(default)]
    pub error_code: Option<String>,
}

impl Payment {
    /// The customer id, when the snapshot carries one.
    pub fn customer_id(&self) -> Option<&str> {
        self.customer.as_ref().map(|c| c.customer_id.as_str())
    }
}

fn de_vec_or_null<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

open_enum! {
    /// Refund status.
    RefundStatus {
        /// Money returned.
        Succeeded = "succeeded",
        /// Failed.
        Failed = "failed",
        /// In flight.
        Pending = "pending",
        /// Under review.
        Review = "review",
    }
}

/// A `Refund` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The refund id.
    pub refund_id: String,
    /// The refunded payment.
    pub payment_id: String,
    /// Status.
    pub status: RefundStatus,
    /// Partial refund?
    #[serde(default, deserialize_with = "de_lenient_bool")]
    pub is_partial: bool,
    /// The customer.
    #[serde(default)]
    pub customer: Option<CustomerRef>,
    /// Amount, minor units.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub amount: Option<Decimal>,
    /// Currency.
    #[serde(default)]
    pub currency: Option<String>,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
}

open_enum! {
    /// Dispute status.
    DisputeStatus {
        /// Opened by the customer.
        DisputeOpened = "dispute_opened",
        /// Expired unresolved.
        DisputeExpired = "dispute_expired",
        /// Accepted by the merchant (money lost).
        DisputeAccepted = "dispute_accepted",
        /// Cancelled.
        DisputeCancelled = "dispute_cancelled",
        /// Challenged by the merchant.
        DisputeChallenged = "dispute_challenged",
        /// Won by the merchant.
        DisputeWon = "dispute_won",
        /// Lost by the merchant.
        DisputeLost = "dispute_lost",
    }
}

impl DisputeStatus {
    /// The money went back to the customer.
    pub fn is_lost(&self) -> bool {
        matches!(
            self,
            DisputeStatus::DisputeLost | DisputeStatus::DisputeAccepted
        )
    }

    /// Still undecided.
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            DisputeStatus::DisputeOpened | DisputeStatus::DisputeChallenged
        )
    }
}

/// A `Dispute` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    /// The dispute id.
    pub dispute_id: String,
    /// The disputed payment.
    pub payment_id: String,
    /// Status.
    pub dispute_status: DisputeStatus,
    /// Stage: `pre_dispute`, `dispute`, `pre_arbitration`.
    #[serde(default)]
    pub dispute_stage: Option<String>,
    /// Amount (a string on the wire).
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub amount: Option<Decimal>,
    /// Currency.
    #[serde(default)]
    pub currency: Option<String>,
    /// The customer.
    #[serde(default)]
    pub customer: Option<CustomerRef>,
    /// Visa RDR auto-refund.
    #[serde(default, deserialize_with = "de_lenient_bool")]
    pub is_resolved_by_rdr: bool,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
}

open_enum! {
    /// License key status.
    LicenseKeyStatus {
        /// Usable.
        Active = "active",
        /// Past its expiry.
        Expired = "expired",
        /// Disabled by the merchant.
        Disabled = "disabled",
    }
}

/// A `LicenseKey` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseKey {
    /// The key's id.
    pub id: String,
    /// The customer.
    pub customer_id: String,
    /// The product.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub product_id: Option<String>,
    /// Status.
    pub status: LicenseKeyStatus,
    /// Expiry, if any.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub expires_at: Option<Timestamp>,
    /// Activations used.
    #[serde(default, deserialize_with = "de_opt_i64")]
    pub instances_count: Option<i64>,
    /// Activation limit.
    #[serde(default, deserialize_with = "de_opt_i64")]
    pub activations_limit: Option<i64>,
    /// The payment behind it.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub payment_id: Option<String>,
    /// The subscription behind it.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub subscription_id: Option<String>,
    /// Creation time.
    #[serde(
        default,
        deserialize_with = "de_opt_timestamp",
        serialize_with = "ser_opt_timestamp"
    )]
    pub created_at: Option<Timestamp>,
}

/// A `CreditLedgerEntry`: one immutable line of a customer's credit ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditEntry {
    /// The ledger entry id (the dedupe key).
    pub id: String,
    /// The customer.
    pub customer_id: String,
    /// The credit entitlement.
    pub credit_entitlement_id: String,
    /// `credit_added`, `credit_deducted`, ... (open).
    #[serde(default)]
    pub transaction_type: Option<String>,
    /// Amount of this entry.
    #[serde(deserialize_with = "de_decimal")]
    pub amount: Decimal,
    /// Balance before.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub balance_before: Option<Decimal>,
    /// Balance after: the balance, if this is the newest entry.
    #[serde(deserialize_with = "de_decimal")]
    pub balance_after: Decimal,
    /// Overage before.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub overage_before: Option<Decimal>,
    /// Overage after.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub overage_after: Option<Decimal>,
    /// Credit (true) or debit.
    #[serde(default, deserialize_with = "de_lenient_bool")]
    pub is_credit: bool,
    /// When the entry was written: its position in the ledger.
    #[serde(deserialize_with = "de_timestamp", serialize_with = "ser_timestamp")]
    pub created_at: Timestamp,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// A `CreditBalanceLow` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditBalanceLow {
    /// `customer_id:credit_entitlement_id`, filled in by the parser.
    #[serde(default)]
    pub object_id: String,
    /// The customer.
    pub customer_id: String,
    /// The credit entitlement.
    pub credit_entitlement_id: String,
    /// The subscription.
    #[serde(default, deserialize_with = "de_opt_id")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub subscription_id: Option<String>,
    /// Balance available when it fired.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, example = "1250.5"))]
    pub available_balance: Option<Decimal>,
    /// The threshold amount.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, example = "1250.5"))]
    pub threshold_amount: Option<Decimal>,
    /// The threshold percent.
    #[serde(default, deserialize_with = "de_opt_i64")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub threshold_percent: Option<i64>,
}
