//! Reconcile, the pure part: objects read from Dodo's REST API as snapshot deliveries.
//!
//! `entsync reconcile` (the binary's shell: HTTP client, sweep, clock) fetches the
//! current state of what access depends on after missed webhooks and feeds it through the
//! same pipeline as a webhook. Everything it decides is here, without IO or clock:
//!
//! 1. [`snapshot`]: an API object becomes a [`Delivery`] whose body is a bare envelope
//!    `{"business_id","type","timestamp","data"}`, `data` the object as fetched, `type`
//!    the webhook type of the object's state (a `Delivered` grant is
//!    `entitlement_grant.delivered`), and whose id is
//!    `api:<kind>:<object id>:<first 16 hex of the SHA-256 of the object's canonical JSON>`
//!    ([`delivery_id`]).
//! 2. Its version ([`version`]): the object's own `updated_at` where the API gives one
//!    (grants, full payments); otherwise the instant of the response
//!    ([`response_instant`]: its `Date` when within [`DATE_TOLERANCE`] of the local
//!    clock, else the local clock) **minus one microsecond**. `Date` has one-second
//!    resolution and webhook timestamps carry microseconds: placed just before its
//!    second, an API copy is older than any webhook of that second or later, so on a tie
//!    the webhook's snapshot wins. A `Date` far off (a proxy's broken clock, a bug) would
//!    make a copy newer than every real webhook for as long as it is off (one in 2099
//!    would freeze the object): the local clock versions it then, and the shell warns.
//! 3. [`compare`]: a fetched object equal in content to the object's current stored state
//!    (on every field it carries, as the engine reads them) is unchanged and is not stored;
//!    so is a copy of the same `updated_at` as the stored state (a tie: the stored,
//!    webhook-brought snapshot wins). Anything else is ingested like any delivery: the
//!    fold says applied, stale (older than what webhooks brought) or rejected.
//! 4. [`Summary`]: the counts `entsync reconcile --json` prints.
//! 5. The client's rules: [`retry_wait`] (429 headers), [`backoff`], [`check_base_url`].
//! 6. [`checkpoint`]: where an interrupted sweep stands, and where the next run resumes.

use crate::delivery::{Delivery, Outcome};
use crate::event::{self, Kind};
use crate::store::ObjectRow;
use crate::wire::{format_timestamp, hex, parse_timestamp, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

pub mod checkpoint;

/// The prefix of every delivery id reconcile stores.
pub const DELIVERY_PREFIX: &str = "api:";

/// Dodo's live host.
pub const LIVE_URL: &str = "https://live.dodopayments.com";
/// Dodo's test-mode host.
pub const TEST_URL: &str = "https://test.dodopayments.com";

/// The largest `page_size` Dodo documents; never ask for more.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The default client-side rate limit, requests per second: below the sustained rate of
/// Dodo's lowest tier (240 / min).
pub const DEFAULT_RATE: f64 = 4.0;

/// The id field of an API object of `kind` (`None`: reconcile does not fetch that kind).
pub fn id_field(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Grant | Kind::LicenseKey => Some("id"),
        Kind::Subscription => Some("subscription_id"),
        Kind::Payment => Some("payment_id"),
        Kind::Refund => Some("refund_id"),
        Kind::Dispute => Some("dispute_id"),
        Kind::CreditEntry | Kind::CreditBalanceLow => None,
    }
}

/// The object's id, when it has one (a non-empty string).
pub fn object_id(kind: Kind, obj: &Value) -> Option<&str> {
    obj.get(id_field(kind)?)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Does the API list of `kind` lack fields of the webhook shape (so that a changed item
/// is fetched again by id for the full object before it is stored)? Grants and license
/// keys are listed in full.
pub fn listed_light(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Subscription | Kind::Payment | Kind::Refund | Kind::Dispute
    )
}

/// The canonical JSON of a value: object keys sorted, no whitespace.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// `api:<kind>:<object id>:<first 16 hex of the SHA-256 of the object's canonical JSON>`.
///
/// # Example
///
/// ```
/// use entitlement_sync::{event::Kind, reconcile::delivery_id};
/// let obj = serde_json::json!({"id": "lic_1", "status": "active"});
/// let id = delivery_id(Kind::LicenseKey, "lic_1", &obj);
/// assert!(id.starts_with("api:license_key:lic_1:"));
/// assert_eq!(id.len(), "api:license_key:lic_1:".len() + 16);
/// ```
pub fn delivery_id(kind: Kind, id: &str, obj: &Value) -> String {
    let digest = hex(&Sha256::digest(canonical_json(obj).as_bytes()));
    format!("{DELIVERY_PREFIX}{}:{id}:{}", kind.as_str(), &digest[..16])
}

/// The webhook type matching the object's state (the engine reads state from `data`,
/// never from the type; the type names the delivery in listings).
pub fn event_type(kind: Kind, obj: &Value) -> String {
    let field = |name: &str| {
        obj.get(name)
            .and_then(Value::as_str)
            .map(crate::wire::normalize)
            .unwrap_or_default()
    };
    let known = |t: String, fallback: &str| {
        if event::KNOWN_TYPES.contains(&t.as_str()) {
            t
        } else {
            fallback.to_string()
        }
    };
    match kind {
        Kind::Grant => {
            let status = field("status");
            let suffix = if status == "pending" {
                "created"
            } else {
                &status
            };
            known(
                format!("entitlement_grant.{suffix}"),
                "entitlement_grant.created",
            )
        }
        Kind::Subscription => known(
            format!("subscription.{}", field("status")),
            "subscription.updated",
        ),
        Kind::Payment => known(format!("payment.{}", field("status")), "payment.processing"),
        Kind::Refund => format!("refund.{}", field("status")),
        Kind::Dispute => {
            let status = field("dispute_status");
            let suffix = status
                .strip_prefix("dispute_")
                .unwrap_or(&status)
                .to_string();
            format!("dispute.{suffix}")
        }
        Kind::LicenseKey => "license_key.created".into(),
        Kind::CreditEntry | Kind::CreditBalanceLow => "credit.manual_adjustment".into(),
    }
}

/// How far a response's `Date` may be from the local clock (either way, inclusive) and
/// still be taken as the instant the response showed: 5 minutes, as for a webhook's
/// timestamp. Clocks kept by NTP are within milliseconds.
pub const DATE_TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);

/// The instant a response showed the API's state at, as [`response_instant`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseInstant {
    /// Its `Date`, within [`DATE_TOLERANCE`] of the local clock.
    Date(Timestamp),
    /// The local clock: the response had no `Date` (or one that does not parse).
    Local(Timestamp),
    /// The local clock: the response's `Date` was further from it than
    /// [`DATE_TOLERANCE`] (to be counted and warned about).
    Skewed {
        /// The `Date` the response carried.
        date: Timestamp,
        /// The local clock, taken instead.
        local: Timestamp,
    },
}

impl ResponseInstant {
    /// The instant to version the response's objects by.
    pub fn at(self) -> Timestamp {
        match self {
            ResponseInstant::Date(t) | ResponseInstant::Local(t) => t,
            ResponseInstant::Skewed { local, .. } => local,
        }
    }
}

/// The instant of a response: its `Date` (`date`, when it had one that parses) if within
/// [`DATE_TOLERANCE`] of `local` (the local clock when the response arrived), else
/// `local`.
pub fn response_instant(date: Option<Timestamp>, local: Timestamp) -> ResponseInstant {
    match date {
        None => ResponseInstant::Local(local),
        Some(date) if (date - local).abs() <= DATE_TOLERANCE => ResponseInstant::Date(date),
        Some(date) => ResponseInstant::Skewed { date, local },
    }
}

/// The version of an API copy read at `response_at` when it carries no `updated_at` of
/// its own: one microsecond before the response's instant, so that a webhook of the same
/// instant (or, with a one-second `Date`, of the same second) is newer.
pub fn response_version(response_at: Timestamp) -> Timestamp {
    response_at - chrono::Duration::microseconds(1)
}

/// The version of a fetched object: its own `updated_at` for grants and payments that
/// carry one (the engine reads it from `data`), else [`response_version`].
pub fn version(kind: Kind, obj: &Value, response_at: Timestamp) -> Timestamp {
    let own = match kind {
        Kind::Grant | Kind::Payment => obj
            .get("updated_at")
            .and_then(Value::as_str)
            .and_then(parse_timestamp),
        _ => None,
    };
    own.unwrap_or_else(|| response_version(response_at))
}

/// A fetched object as a delivery, ready to ingest.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its family.
    pub kind: Kind,
    /// Its id.
    pub object_id: String,
    /// Its version, exactly as the engine will key it.
    pub version: Timestamp,
    /// The delivery: id `api:...`, bare-envelope body, no webhook headers.
    pub delivery: Delivery,
}

/// Why an API object cannot become a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Reconcile does not fetch this kind.
    #[error("{0} objects are not reconciled")]
    Unsupported(Kind),
    /// The object has no id.
    #[error("{kind} object without {field}")]
    NoId {
        /// The family.
        kind: Kind,
        /// The missing field.
        field: &'static str,
    },
    /// The object does not parse as its family's snapshot.
    #[error("{kind} {id} does not parse: {message}")]
    Parse {
        /// The family.
        kind: Kind,
        /// The object id.
        id: String,
        /// What the parser said.
        message: String,
    },
}

#[derive(Serialize)]
struct Envelope<'a> {
    business_id: Option<&'a str>,
    #[serde(rename = "type")]
    event_type: String,
    timestamp: String,
    data: &'a Value,
}

/// Turns an API object into the delivery reconcile stores. `response_at`: the
/// response's `Date` (else the local clock); `business_id`: the envelope's when the
/// object has none of its own (subscriptions and payments lack it); `received_at`: the
/// local clock.
///
/// # Errors
///
/// [`SnapshotError`] when the object has no id or does not parse as its family (then it
/// is counted as an error and nothing is stored).
pub fn snapshot(
    kind: Kind,
    obj: &Value,
    response_at: Timestamp,
    business_id: Option<&str>,
    received_at: Timestamp,
) -> Result<Snapshot, SnapshotError> {
    let field = id_field(kind).ok_or(SnapshotError::Unsupported(kind))?;
    let id = object_id(kind, obj).ok_or(SnapshotError::NoId { kind, field })?;
    let business_id = obj
        .get("business_id")
        .and_then(Value::as_str)
        .or(business_id);
    let body = Envelope {
        business_id,
        event_type: event_type(kind, obj),
        timestamp: format_timestamp(&version(kind, obj, response_at)),
        data: obj,
    };
    let parse_err = |message: String| SnapshotError::Parse {
        kind,
        id: id.to_string(),
        message,
    };
    let body = serde_json::to_vec(&body).map_err(|e| parse_err(e.to_string()))?;
    // What the engine will make of it: the same parser, so the version is exactly its key.
    let env = event::parse(&body).map_err(|e| parse_err(e.to_string()))?;
    let (Some((k, parsed_id)), Some(key)) = (env.event.object(), env.event.key()) else {
        return Err(parse_err("not a snapshot of a folded family".into()));
    };
    if k != kind || parsed_id != id {
        return Err(parse_err(format!("parses as {k} {parsed_id}")));
    }
    Ok(Snapshot {
        kind,
        object_id: id.to_string(),
        version: key.at,
        delivery: Delivery::new(delivery_id(kind, id, obj), body, received_at),
    })
}

/// What to do with a fetched object, given the object's current stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Equal in content to the stored state: unchanged, not stored.
    Same,
    /// Different content of the same version as the stored state: the stored snapshot
    /// (brought by a webhook) wins the tie; unchanged, not stored.
    Tie,
    /// Different, or unknown to the store: ingest it (for a kind listed light, fetch the
    /// full object by id first).
    Ingest,
}

impl Decision {
    /// Unchanged: nothing to store.
    pub fn is_unchanged(self) -> bool {
        !matches!(self, Decision::Ingest)
    }
}

/// The typed snapshot of `v` as the engine reads it, back as JSON (normalised spellings,
/// instants, decimals).
fn typed(kind: Kind, v: &Value) -> Option<Value> {
    fn norm<T: DeserializeOwned + Serialize>(v: &Value) -> Option<Value> {
        serde_json::to_value(T::deserialize(v).ok()?).ok()
    }
    match kind {
        Kind::Grant => norm::<event::Grant>(v),
        Kind::Subscription => norm::<event::Subscription>(v),
        Kind::Payment => norm::<event::Payment>(v),
        Kind::Refund => norm::<event::Refund>(v),
        Kind::Dispute => norm::<event::Dispute>(v),
        Kind::LicenseKey => norm::<event::LicenseKey>(v),
        Kind::CreditEntry => norm::<event::CreditEntry>(v),
        Kind::CreditBalanceLow => norm::<event::CreditBalanceLow>(v),
    }
}

/// Compares a fetched object with the object's current state row. Content is compared
/// on every field the fetched object carries, as the engine reads them (so a list item,
/// lighter than the webhook shape, equals a full stored state that agrees on what it
/// shows; `payload_type` and fields the engine ignores never count). `version` is the
/// fetched copy's ([`version`]).
pub fn compare(
    kind: Kind,
    fetched: &Value,
    current: Option<&ObjectRow>,
    version: Timestamp,
) -> Decision {
    let Some(row) = current else {
        return Decision::Ingest;
    };
    let stored = serde_json::from_str::<Value>(&row.body)
        .ok()
        .and_then(|v| typed(kind, &v));
    let (Some(Value::Object(stored)), Some(Value::Object(new)), Value::Object(raw)) =
        (stored, typed(kind, fetched), fetched)
    else {
        return Decision::Ingest;
    };
    let same = new
        .iter()
        .filter(|(k, _)| raw.contains_key(k.as_str()))
        .all(|(k, v)| stored.get(k).unwrap_or(&Value::Null) == v);
    if same {
        return Decision::Same;
    }
    if parse_timestamp(&row.as_of) == Some(version) {
        return Decision::Tie;
    }
    Decision::Ingest
}

/// The summary `entsync reconcile --json` prints, in this field order.
/// `fetched = applied + unchanged + rejected`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Objects fetched and classified.
    pub fetched: u64,
    /// Stored and folded: they changed an object's state.
    pub applied: u64,
    /// Equal to the stored state (not stored), or stored and found stale or duplicate.
    pub unchanged: u64,
    /// Stored and quarantined: an illegal transition.
    pub rejected: u64,
    /// (customer, entitlement) pairs whose answer differs after the run from before it.
    pub access_changed: u64,
    /// Requests that failed (after retries) and objects that could not be stored.
    pub errors: u64,
}

impl Summary {
    /// Counts one fetched object that was not stored.
    pub fn unchanged(&mut self) {
        self.fetched += 1;
        self.unchanged += 1;
    }

    /// Counts one ingested object by its outcome. `unhandled` and `malformed` (which
    /// [`snapshot`] rules out) count as errors.
    pub fn outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => {
                self.fetched += 1;
                self.applied += 1;
            }
            Outcome::Duplicate | Outcome::Stale => self.unchanged(),
            Outcome::Rejected => {
                self.fetched += 1;
                self.rejected += 1;
            }
            Outcome::Unhandled | Outcome::Malformed => self.errors += 1,
        }
    }

    /// Counts one failure.
    pub fn error(&mut self) {
        self.errors += 1;
    }
}

/// How long to wait before retrying a 429, from its headers: `retry-after-ms`, else
/// `Retry-After` (seconds or an HTTP date), else `X-RateLimit-Reset` (seconds to wait, or
/// a Unix time when above 10^9). `None`: no usable header (back off instead).
pub fn retry_wait(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    reset: Option<&str>,
    now: Timestamp,
) -> Option<Duration> {
    let until = |t: Timestamp| (t - now).to_std().unwrap_or(Duration::ZERO);
    // A wait longer than a `Duration` holds is as long as one holds: the caller caps it.
    let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX);
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(secs(ms / 1000.0));
        }
    }
    if let Some(v) = retry_after.map(str::trim) {
        if let Ok(secs_f) = v.parse::<f64>() {
            if secs_f.is_finite() && secs_f >= 0.0 {
                return Some(secs(secs_f));
            }
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc2822(v) {
            return Some(until(t.with_timezone(&chrono::Utc)));
        }
    }
    let reset = reset.and_then(|v| v.trim().parse::<f64>().ok())?;
    if !reset.is_finite() || reset < 0.0 {
        return None;
    }
    if reset > 1e9 {
        let t = chrono::DateTime::from_timestamp(reset as i64, 0)?;
        return Some(until(t));
    }
    Some(secs(reset))
}

/// The wait before retry number `attempt` (0-based) of a 5xx, a timeout or a 429
/// without headers: 500 ms doubling, capped at 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1u64 << attempt.min(16)))
        .min(Duration::from_secs(30))
}

/// Checks a base URL: `https://` anywhere, plain `http://` only for loopback hosts
/// (`localhost`, `127.0.0.0/8`, `[::1]`). Returns it without a trailing `/`.
///
/// # Errors
///
/// A message saying what is wrong.
pub fn check_base_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("base url {url:?} has no scheme (use https://...)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("base url {url:?} has no usable host"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(url.to_string()),
        "http" if is_loopback(host) => Ok(url.to_string()),
        "http" => Err(format!(
            "plain http:// is accepted for loopback hosts only, not {host:?} (use https://)"
        )),
        other => Err(format!("base url scheme {other:?} is not http(s)")),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        parse_timestamp(s).expect("test instant")
    }

    fn row(kind: Kind, body: &Value, as_of: &str) -> ObjectRow {
        ObjectRow {
            kind: kind.as_str().into(),
            id: "x".into(),
            as_of: as_of.into(),
            since: as_of.into(),
            body: body.to_string(),
        }
    }

    /// The grant example of `reference/dodo-api.md`.
    fn api_grant() -> Value {
        json!({"id":"entg_w0ZCJZgNXuNDdMVzvja6p","brand_id":"brd_123","business_id":"bus_H4ekzPSlcg","customer_id":"cus_TV52uJWWXt2yIoBBxpjaa","entitlement_id":"ent_jt7jcvI79Xh8eehqgWdcm","integration_type":"feature_flag","metadata":{},"status":"Revoked","payment_id":null,"subscription_id":"sub_7EeHq2ewQuadropD2ra","delivered_at":"2026-03-01T09:05:00Z","revoked_at":"2026-04-02T00:00:03Z","revocation_reason":"subscription_on_hold","error_code":null,"oauth_url":null,"license_key":null,"feature":{"feature_id":"pro","feature_type":"boolean"},"created_at":"2026-03-01T09:05:00Z","updated_at":"2026-04-02T00:00:03Z"})
    }

    fn api_subscription() -> Value {
        json!({"subscription_id":"sub_7EeHq2ewQuadropD2ra","status":"on_hold","customer":{"customer_id":"cus_TV52uJWWXt2yIoBBxpjaa","email":"ana@example.com","name":"Ana"},"product_id":"pdt_RUST4raxbl0Rfe4VQi1z","product_name":"Pro","quantity":1,"billing":{"country":"US"},"currency":"USD","metadata":{},"created_at":"2026-03-01T09:00:00Z","previous_billing_date":"2026-03-01T09:00:00Z","next_billing_date":"2026-04-01T09:00:00Z","cancel_at_next_billing_date":false,"on_demand":false,"payment_frequency_count":1,"payment_frequency_interval":"Month","subscription_period_count":1,"subscription_period_interval":"Year","recurring_pre_tax_amount":1500,"tax_inclusive":false,"trial_period_days":0,"discounts":[],"cancelled_at":null,"paused_at":null,"scheduled_change":null})
    }

    #[test]
    fn canonical_json_sorts_keys_without_whitespace() {
        let v = json!({"b": [1, {"d": null, "c": "x"}], "a": {"z": true, "y": 1.5}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"y":1.5,"z":true},"b":[1,{"c":"x","d":null}]}"#
        );
    }

    #[test]
    fn grant_snapshot_id_type_and_version() {
        let obj = api_grant();
        let date = at("2026-12-01T20:41:51Z");
        let s = snapshot(Kind::Grant, &obj, date, None, date).expect("snapshot");
        let digest = hex(&Sha256::digest(canonical_json(&obj).as_bytes()));
        assert_eq!(
            s.delivery.id,
            format!("api:grant:entg_w0ZCJZgNXuNDdMVzvja6p:{}", &digest[..16])
        );
        assert_eq!(s.version, at("2026-04-02T00:00:03Z"));
        let body: Value = serde_json::from_slice(&s.delivery.body).expect("json");
        assert_eq!(body["type"], "entitlement_grant.revoked");
        assert_eq!(body["business_id"], "bus_H4ekzPSlcg");
        assert_eq!(body["timestamp"], "2026-04-02T00:00:03.000000Z");
        assert_eq!(body["data"], obj);
        let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 4);
        // The same object always gives the same id, whatever its key order.
        let again =
            snapshot(Kind::Grant, &obj, at("2027-01-01T00:00:00Z"), None, date).expect("snapshot");
        assert_eq!(again.delivery.id, s.delivery.id);
        assert_eq!(again.delivery.body, s.delivery.body);
    }

    #[test]
    fn event_types_follow_the_state() {
        for (kind, obj, expected) in [
            (
                Kind::Grant,
                json!({"status": "Delivered"}),
                "entitlement_grant.delivered",
            ),
            (
                Kind::Grant,
                json!({"status": "Pending"}),
                "entitlement_grant.created",
            ),
            (
                Kind::Grant,
                json!({"status": "Failed"}),
                "entitlement_grant.failed",
            ),
            (
                Kind::Grant,
                json!({"status": "Weird"}),
                "entitlement_grant.created",
            ),
            (
                Kind::Subscription,
                json!({"status": "on_hold"}),
                "subscription.on_hold",
            ),
            (
                Kind::Subscription,
                json!({"status": "pending"}),
                "subscription.updated",
            ),
            (
                Kind::Payment,
                json!({"status": "succeeded"}),
                "payment.succeeded",
            ),
            (
                Kind::Payment,
                json!({"status": "requires_merchant_action"}),
                "payment.processing",
            ),
            (
                Kind::Refund,
                json!({"status": "succeeded"}),
                "refund.succeeded",
            ),
            (
                Kind::Dispute,
                json!({"dispute_status": "dispute_lost"}),
                "dispute.lost",
            ),
            (
                Kind::LicenseKey,
                json!({"status": "disabled"}),
                "license_key.created",
            ),
        ] {
            assert_eq!(event_type(kind, &obj), expected, "{obj}");
        }
    }

    #[test]
    fn a_date_far_from_the_local_clock_is_not_the_response_instant() {
        let local = at("2026-12-07T17:00:00.250Z");
        for (date, expected) in [
            (None, ResponseInstant::Local(local)),
            (
                Some("2026-12-07T17:00:00Z"),
                ResponseInstant::Date(at("2026-12-07T17:00:00Z")),
            ),
            (
                Some("2026-12-07T17:05:00.250Z"),
                ResponseInstant::Date(at("2026-12-07T17:05:00.250Z")),
            ),
            (
                Some("2026-12-07T16:55:00.250Z"),
                ResponseInstant::Date(at("2026-12-07T16:55:00.250Z")),
            ),
            (
                Some("2026-12-07T17:05:01Z"),
                ResponseInstant::Skewed {
                    date: at("2026-12-07T17:05:01Z"),
                    local,
                },
            ),
            (
                Some("2026-12-07T16:55:00Z"),
                ResponseInstant::Skewed {
                    date: at("2026-12-07T16:55:00Z"),
                    local,
                },
            ),
            (
                Some("2099-01-01T00:00:00Z"),
                ResponseInstant::Skewed {
                    date: at("2099-01-01T00:00:00Z"),
                    local,
                },
            ),
        ] {
            let got = response_instant(date.map(at), local);
            assert_eq!(got, expected, "{date:?}");
            let version = match got {
                ResponseInstant::Date(d) => d,
                _ => local,
            };
            assert_eq!(got.at(), version, "{date:?}");
        }
    }

    #[test]
    fn versions_without_updated_at_come_just_before_the_response() {
        let date = at("2026-12-01T20:41:51Z");
        let s = snapshot(
            Kind::Subscription,
            &api_subscription(),
            date,
            Some("bus_1"),
            date,
        )
        .expect("snapshot");
        assert_eq!(s.version, at("2026-12-01T20:41:50.999999Z"));
        assert!(s.version < date, "a webhook of the Date's instant is newer");
        let body: Value = serde_json::from_slice(&s.delivery.body).expect("json");
        assert_eq!(body["business_id"], "bus_1");
        assert_eq!(body["type"], "subscription.on_hold");
        // A payment's own updated_at is its version; without it, the response's.
        let pay = json!({"payment_id": "pay_1", "status": "succeeded", "updated_at": "2026-05-01T00:00:00Z"});
        assert_eq!(
            version(Kind::Payment, &pay, date),
            at("2026-05-01T00:00:00Z")
        );
        let pay = json!({"payment_id": "pay_1", "status": "succeeded"});
        assert_eq!(version(Kind::Payment, &pay, date), response_version(date));
    }

    #[test]
    fn objects_that_cannot_be_snapshots() {
        let date = at("2026-12-01T20:41:51Z");
        let no_id = json!({"status": "Delivered"});
        assert!(matches!(
            snapshot(Kind::Grant, &no_id, date, None, date),
            Err(SnapshotError::NoId { .. })
        ));
        let bad = json!({"id": "g1", "status": "Delivered"});
        assert!(matches!(
            snapshot(Kind::Grant, &bad, date, None, date),
            Err(SnapshotError::Parse { .. })
        ));
        assert!(matches!(
            snapshot(Kind::CreditEntry, &bad, date, None, date),
            Err(SnapshotError::Unsupported(_))
        ));
    }

    #[test]
    fn unchanged_rule() {
        let obj = api_grant();
        let v = version(Kind::Grant, &obj, at("2026-12-01T00:00:00Z"));
        // The stored state as the engine keeps it (typed, with payload_type dropped).
        let mut webhook = obj.clone();
        webhook["payload_type"] = json!("EntitlementGrant");
        let stored: event::Grant = serde_json::from_value(webhook).expect("grant");
        let stored = serde_json::to_value(stored).expect("json");
        let same = row(Kind::Grant, &stored, "2026-04-02T00:00:03.000000Z");
        assert_eq!(compare(Kind::Grant, &obj, Some(&same), v), Decision::Same);
        assert_eq!(compare(Kind::Grant, &obj, None, v), Decision::Ingest);
        // Spelling differences the engine normalises do not count.
        let mut lower = obj.clone();
        lower["status"] = json!("revoked");
        assert_eq!(compare(Kind::Grant, &lower, Some(&same), v), Decision::Same);
        // A different state of the same version: the stored one wins the tie.
        let mut other = obj.clone();
        other["revocation_reason"] = json!("manual");
        assert_eq!(compare(Kind::Grant, &other, Some(&same), v), Decision::Tie);
        // Newer and different: ingest.
        other["updated_at"] = json!("2026-05-01T00:00:00Z");
        let v2 = version(Kind::Grant, &other, v);
        assert_eq!(
            compare(Kind::Grant, &other, Some(&same), v2),
            Decision::Ingest
        );
        // A list item lacking fields of the stored (webhook) shape equals it on what it
        // shows.
        let sub = api_subscription();
        let mut full = sub.clone();
        full["expires_at"] = json!("2027-03-01T09:00:00Z");
        full["brand_id"] = json!("brd_123");
        let stored: event::Subscription = serde_json::from_value(full).expect("subscription");
        let stored = row(
            Kind::Subscription,
            &serde_json::to_value(stored).expect("json"),
            "2026-04-01T09:00:00.000000Z",
        );
        let sv = response_version(at("2026-12-01T00:00:00Z"));
        assert_eq!(
            compare(Kind::Subscription, &sub, Some(&stored), sv),
            Decision::Same
        );
        let mut active = sub.clone();
        active["status"] = json!("active");
        assert_eq!(
            compare(Kind::Subscription, &active, Some(&stored), sv),
            Decision::Ingest
        );
    }

    #[test]
    fn summary_counts() {
        let mut s = Summary::default();
        for o in [
            Outcome::Applied,
            Outcome::Stale,
            Outcome::Duplicate,
            Outcome::Rejected,
            Outcome::Malformed,
        ] {
            s.outcome(o);
        }
        s.unchanged();
        assert_eq!(s.fetched, s.applied + s.unchanged + s.rejected);
        assert_eq!(
            (s.fetched, s.applied, s.unchanged, s.rejected, s.errors),
            (5, 1, 3, 1, 1)
        );
        assert_eq!(
            serde_json::to_string(&Summary::default()).expect("json"),
            r#"{"fetched":0,"applied":0,"unchanged":0,"rejected":0,"access_changed":0,"errors":0}"#
        );
    }

    #[test]
    fn retry_waits() {
        let now = at("2026-12-01T20:41:51Z");
        let s = Duration::from_secs;
        for (ms, after, reset, expected) in [
            (None, Some("3"), None, Some(s(3))),
            (
                Some("1500"),
                Some("3"),
                None,
                Some(Duration::from_millis(1500)),
            ),
            (
                None,
                Some("Tue, 01 Dec 2026 20:42:01 GMT"),
                None,
                Some(s(10)),
            ),
            (
                None,
                Some("Tue, 01 Dec 2026 20:40:00 GMT"),
                None,
                Some(Duration::ZERO),
            ),
            (None, None, Some("7"), Some(s(7))),
            (None, Some("soon"), Some("7"), Some(s(7))),
            (None, None, Some("1796157731"), Some(s(20))),
            (None, None, Some("-1"), None),
            (None, None, None, None),
            // Beyond what a `Duration` holds: the longest one (the caller caps it), not
            // a panic.
            (None, Some("1e20"), None, Some(Duration::MAX)),
            (
                None,
                Some("99999999999999999999"),
                None,
                Some(Duration::MAX),
            ),
            (Some("1e30"), None, None, Some(Duration::MAX)),
            (None, None, Some("5e8"), Some(s(500_000_000))),
        ] {
            assert_eq!(
                retry_wait(ms, after, reset, now),
                expected,
                "{ms:?} {after:?} {reset:?}"
            );
        }
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(3), s(4));
        assert_eq!(backoff(40), s(30));
    }

    #[test]
    fn base_urls() {
        for (url, ok) in [
            ("https://live.dodopayments.com", true),
            ("https://test.dodopayments.com/", true),
            ("http://127.0.0.1:8080", true),
            ("http://127.3.2.1", true),
            ("http://localhost:9/", true),
            ("http://[::1]:8080", true),
            ("http://live.dodopayments.com", false),
            ("http://10.0.0.1:80", false),
            ("http://user@127.0.0.1", false),
            ("ftp://127.0.0.1", false),
            ("live.dodopayments.com", false),
            ("https://", false),
        ] {
            assert_eq!(check_base_url(url).is_ok(), ok, "{url}");
        }
        assert_eq!(
            check_base_url("http://127.0.0.1:8080/").ok().as_deref(),
            Some("http://127.0.0.1:8080")
        );
    }
}
