//! Tolerant decoding helpers for Dodo's wire format.
//!
//! Dodo's payloads drift over time: enum values are added (`past_due`, `auto_top_up`),
//! casing differs between sources (`Delivered` / `delivered`, `SubscriptionPaused`),
//! amounts arrive as numbers or decimal strings, and timestamps carry 0, 3 or 6
//! fractional digits. Everything here accepts all of that and never panics.

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use std::str::FromStr;

/// An instant, always compared as an instant (never as text).
pub type Timestamp = DateTime<Utc>;

/// Normalises an enum spelling: `SubscriptionPaused`, `subscription-paused` and
/// `SUBSCRIPTION_PAUSED` all become `subscription_paused`.
pub fn normalize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 4);
    let mut prev: Option<char> = None;
    for c in raw.trim().chars() {
        let c = if c == '-' || c == ' ' || c == '.' {
            '_'
        } else {
            c
        };
        // A word starts at an upper-case letter that lower-casing changes. One without a
        // lower-case form (`𝐀`, U+1D400) stays upper-case in the output, so an `_` before
        // it would be added again by every later pass: the normal form would not be
        // normal, and an `Other` value would not read back as itself.
        let starts_word = c.is_uppercase() && !c.to_lowercase().eq(std::iter::once(c));
        if starts_word && prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit()) {
            out.push('_');
        }
        out.extend(c.to_lowercase());
        prev = Some(c);
    }
    out
}

/// Declares an open enum: known values by their canonical snake_case name, anything else
/// kept verbatim (normalised) in `Other`. Parsing is case-insensitive.
macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this version does not know (kept, normalised to snake_case).
            Other(String),
        }

        impl $name {
            /// Parses any spelling; unknown values become `Other`.
            pub fn parse(raw: &str) -> Self {
                let n = $crate::wire::normalize(raw);
                match n.as_str() {
                    $($text => Self::$variant,)+
                    _ => Self::Other(n),
                }
            }

            /// The canonical snake_case name.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(s) => s,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok(Self::parse(&s))
            }
        }
    };
}
pub(crate) use open_enum;

/// Parses an RFC 3339 timestamp (any offset, 0–9 fractional digits); a timestamp without
/// an offset is taken as UTC.
///
/// Only instants whose UTC year is between 1 and 9999 are accepted: they are the ones
/// [`format_timestamp`] writes back as RFC 3339 that this function reads again, and whose
/// text sorts like the instant. `9999-12-31T23:30:00-01:00` (year 10000 in UTC) is
/// refused here, so a delivery carrying it is `malformed` instead of a stored value
/// that cannot be read back.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    let t = match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?
            .and_utc(),
    };
    (1..=9999).contains(&t.year()).then_some(t)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Formats an instant the way the engine prints it: RFC 3339, UTC, microseconds.
pub fn format_timestamp(t: &Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `serde(deserialize_with)`: a required timestamp.
pub fn de_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_timestamp(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}")))
}

/// `serde(deserialize_with)`: an optional timestamp; `null`, absent and `""` are `None`.
pub fn de_opt_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse_timestamp(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}"))),
    }
}

/// A JSON number or a decimal string, as an exact decimal.
///
/// Strings are exact. JSON numbers go through their shortest round-trip text, which is
/// exact for every value with at most 15 significant digits (all of Dodo's amounts).
fn decimal_from_value(v: &serde_json::Value) -> Result<Option<Decimal>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) if s.trim().is_empty() => Ok(None),
        serde_json::Value::String(s) => Decimal::from_str(s.trim())
            .or_else(|_| Decimal::from_scientific(s.trim()))
            .map(Some)
            .map_err(|_| format!("invalid decimal {s:?}")),
        serde_json::Value::Number(n) => {
            let text = n.to_string();
            Decimal::from_str(&text)
                .or_else(|_| Decimal::from_scientific(&text))
                .map(Some)
                .map_err(|_| format!("invalid decimal {text}"))
        }
        other => Err(format!(
            "expected a number or a decimal string, got {other}"
        )),
    }
}

/// `serde(deserialize_with)`: an optional amount (number or string).
pub fn de_opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    decimal_from_value(&v).map_err(serde::de::Error::custom)
}

/// `serde(deserialize_with)`: a required amount (number or string).
pub fn de_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    decimal_from_value(&v)
        .map_err(serde::de::Error::custom)?
        .ok_or_else(|| serde::de::Error::custom("missing amount"))
}

/// `serde(deserialize_with)`: an optional integer that may arrive as a string.
pub fn de_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match decimal_from_value(&v).map_err(serde::de::Error::custom)? {
        None => Ok(None),
        Some(dec) => {
            use rust_decimal::prelude::ToPrimitive;
            dec.to_i64()
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an integer: {dec}")))
        }
    }
}

/// `serde(deserialize_with)`: a boolean that may be null/absent (false) or a string.
pub fn de_lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(false),
        serde_json::Value::Bool(b) => Ok(b),
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err(serde::de::Error::custom(format!("not a boolean: {s:?}"))),
        },
        other => Err(serde::de::Error::custom(format!("not a boolean: {other}"))),
    }
}

/// `serde(deserialize_with)`: an id that may arrive as a string or number; `""` is `None`.
pub fn de_opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) if s.is_empty() => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!("not an id: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_spellings() {
        for (raw, want) in [
            ("Delivered", "delivered"),
            ("SubscriptionPaused", "subscription_paused"),
            ("subscription_on_hold", "subscription_on_hold"),
            ("ON_HOLD", "on_hold"),
            ("past-due", "past_due"),
            ("LicenseKeyDisabled", "license_key_disabled"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }

    /// Every spelling's normal form is its own normal form, for every character after and
    /// before a lower-case letter, a digit, an upper-case letter and itself. Behind a
    /// `parse` fuzz crash in CI (its input was lost): `A𝐀` normalised to `a𝐀`, and `a𝐀`
    /// to `a_𝐀`, so a grant whose status was `A𝐀` did not read back from the store as the
    /// snapshot it had stored.
    #[test]
    fn normalize_is_idempotent_for_every_character() {
        let mut failures = Vec::new();
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            for raw in [
                format!("a{c}"),
                format!("1{c}"),
                format!("A{c}"),
                format!("{c}B"),
                format!("{c}{c}"),
                format!("x{c}Y"),
            ] {
                let once = normalize(&raw);
                let twice = normalize(&once);
                if once != twice && failures.len() < 10 {
                    failures.push((raw, once, twice));
                }
            }
        }
        assert!(failures.is_empty(), "not idempotent: {failures:?}");
        assert_eq!(normalize("A\u{1D400}"), "a\u{1D400}");
        assert_eq!(normalize("a\u{1D400}"), "a\u{1D400}");
        assert_eq!(normalize("\u{1C5}\u{1D400}"), "\u{1C6}\u{1D400}");
    }

    #[test]
    fn timestamps_compare_as_instants() {
        let a = parse_timestamp("2026-05-01T10:05:00Z").unwrap();
        let b = parse_timestamp("2026-05-01T10:05:00.250Z").unwrap();
        let c = parse_timestamp("2026-05-01T12:05:00.000000+02:00").unwrap();
        let d = parse_timestamp("2026-05-01T10:05:00").unwrap();
        assert!(a < b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert!(parse_timestamp("yesterday").is_none());
    }

    #[test]
    fn only_instants_that_read_back_parse() {
        for refused in [
            "9999-12-31T23:30:00-01:00", // year 10000 in UTC
            "0001-01-01T00:30:00+01:00", // year 0 in UTC
            "+10000-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(refused), None, "{refused}");
        }
        for accepted in [
            "9999-12-31T23:59:59.999999999Z",
            "9999-12-31T23:30:00+01:00",
            "0001-01-01T00:00:00Z",
            "2026-05-01T10:05:00.123456-11:30",
        ] {
            let t = parse_timestamp(accepted).expect(accepted);
            assert_eq!(
                parse_timestamp(&format_timestamp(&t)).map(|b| b.timestamp_micros()),
                Some(t.timestamp_micros()),
                "{accepted}"
            );
            let key = t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            assert_eq!(parse_timestamp(&key), Some(t), "{accepted}");
        }
    }

    #[test]
    fn decimals_are_exact() {
        let v: serde_json::Value = serde_json::json!(["0.1", 0.1, 12, "1e3", null]);
        let got: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| decimal_from_value(x).unwrap())
            .collect();
        assert_eq!(got[0], Some(Decimal::from_str("0.1").unwrap()));
        assert_eq!(got[1], Some(Decimal::from_str("0.1").unwrap()));
        assert_eq!(got[2], Some(Decimal::from(12)));
        assert_eq!(got[3], Some(Decimal::from(1000)));
        assert_eq!(got[4], None);
        assert!(decimal_from_value(&serde_json::json!("ten")).is_err());
    }
}
