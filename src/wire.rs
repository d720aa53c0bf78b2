//! Tolerant decoding helpers for Dodo's wire format.
//!
//! Dodo's payloads drift over time: enum values are added (`past_due`, `auto_top_up`),
//! casing differs between sources (`Delivered` / `delivered`, `SubscriptionPaused`),
//! amounts arrive as numbers or decimal strings, and timestamps carry 0, 3 or 6
//! fractional digits. Everything here accepts all of that and never panics.

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

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

        impl $crate::wire::Open for $name {
            fn parse(raw: &str) -> Self {
                Self::parse(raw)
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

/// An enum declared by `open_enum!`: every text parses to a value.
pub trait Open: Sized {
    /// Parses any spelling; unknown values become `Other`.
    fn parse(raw: &str) -> Self;
}

/// An optional open enum: `null`, a missing field and a blank string (`""`, `"  "`) are
/// all "none". A blank value names nothing: read as `Other("")` it would be a reason
/// that no rule knows, shown to the app as the empty reason.
pub fn de_opt_open<'de, D: Deserializer<'de>, T: Open>(d: D) -> Result<Option<T>, D::Error> {
    let raw = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(raw.filter(|s| !s.trim().is_empty()).map(|s| T::parse(&s)))
}

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
    let mut buf = [0; RFC3339_MAX];
    match rfc3339(t, Fraction::Micros, &mut buf) {
        Some(text) => text.to_string(),
        None => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    }
}

/// The instant as the store keeps it: what [`parse_timestamp`] reads back from
/// [`format_timestamp`]'s text (truncated to the microsecond), without the text; `None`
/// for an instant outside the years that read back.
pub fn kept_timestamp(t: &Timestamp) -> Option<Timestamp> {
    let micros = t.nanosecond() / 1000 * 1000;
    (1..=9999)
        .contains(&t.year())
        .then(|| t.with_nanosecond(micros))
        .flatten()
}

/// `serde(serialize_with)`: a timestamp, written as chrono's `Serialize` writes it
/// (RFC 3339, `Z`, 0, 3, 6 or 9 fractional digits), without its formatting machinery.
pub fn ser_timestamp<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0; RFC3339_MAX];
    match rfc3339(t, Fraction::Auto, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => serde::Serialize::serialize(t, s),
    }
}

/// `serde(serialize_with)`: an optional timestamp, as [`ser_timestamp`] writes it.
pub fn ser_opt_timestamp<S: serde::Serializer>(
    t: &Option<Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    struct Text<'a>(&'a Timestamp);
    impl serde::Serialize for Text<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            ser_timestamp(self.0, s)
        }
    }
    match t {
        Some(t) => s.serialize_some(&Text(t)),
        None => s.serialize_none(),
    }
}

/// How many fractional digits [`rfc3339`] writes.
#[derive(Clone, Copy)]
enum Fraction {
    /// Always six.
    Micros,
    /// As few of 0, 3, 6 or 9 as say the instant exactly (chrono's `AutoSi`).
    Auto,
}

/// The longest text [`rfc3339`] writes: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const RFC3339_MAX: usize = 30;

/// `t` in RFC 3339, UTC, with `Z`, byte for byte as chrono writes it
/// (`to_rfc3339_opts(_, true)`, its `Serialize`), a leap second as `:60`; `None` for a
/// year outside 0..=9999, which chrono writes with a sign. chrono's formatting goes
/// through `core::fmt` and costs about 700 (`Micros`) to 2,300 (`Serialize`) instructions
/// per instant; the writer formats several per delivery.
fn rfc3339<'a>(
    t: &Timestamp,
    fraction: Fraction,
    buf: &'a mut [u8; RFC3339_MAX],
) -> Option<&'a str> {
    // The naive parts once: each of `DateTime`'s own accessors re-derives them.
    let (date, time) = (t.date_naive(), t.time());
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let (mut second, mut nano) = (time.second(), time.nanosecond());
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    let mut two = |at: usize, value: u32| {
        buf[at] = b'0' + (value / 10) as u8;
        buf[at + 1] = b'0' + (value % 10) as u8;
    };
    two(0, year / 100);
    two(2, year % 100);
    two(5, date.month());
    two(8, date.day());
    two(11, time.hour());
    two(14, time.minute());
    two(17, second);
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        buf[at] = sep;
    }
    let (digits, mut value) = match fraction {
        Fraction::Micros => (6, nano / 1000),
        Fraction::Auto if nano == 0 => (0, 0),
        Fraction::Auto if nano % 1_000_000 == 0 => (3, nano / 1_000_000),
        Fraction::Auto if nano % 1000 == 0 => (6, nano / 1000),
        Fraction::Auto => (9, nano),
    };
    let mut len = 19;
    if digits > 0 {
        buf[19] = b'.';
        for at in (20..20 + digits).rev() {
            buf[at] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        len = 20 + digits;
    }
    buf[len] = b'Z';
    std::str::from_utf8(&buf[..=len]).ok()
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

/// A JSON number or a decimal string, from its JSON text, as an exact decimal.
///
/// Exact or an error, never rounded: an amount with more than 28 decimal places or
/// beyond ±7.9·10²⁸ is refused (`rust_decimal`'s range), as is anything not a number, a
/// decimal string, `null` or `""`. The text must be the amount as it arrived: a
/// `serde_json::Value` holds a fractional number as an `f64`, which keeps about 15
/// significant digits, so [`crate::event::parse`] reads a payload that has one from
/// its text (see [`has_float`]).
fn decimal_from_json(raw: &str) -> Result<Option<Decimal>, String> {
    let text: std::borrow::Cow<'_, str> = match raw.as_bytes().first() {
        Some(b'n') if raw == "null" => return Ok(None),
        Some(b'"') => serde_json::from_str::<String>(raw)
            .map_err(|e| e.to_string())?
            .into(),
        Some(b'-' | b'0'..=b'9') => raw.into(),
        _ => return Err(format!("expected a number or a decimal string, got {raw}")),
    };
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let exact = match t.split_once(['e', 'E']) {
        // The mantissa exactly, then the exponent (which refuses a scale beyond 28).
        Some((mantissa, _)) => {
            Decimal::from_str_exact(mantissa).and_then(|_| Decimal::from_scientific(t))
        }
        None => Decimal::from_str_exact(t),
    };
    exact.map(Some).map_err(|e| match e {
        rust_decimal::Error::Underflow => {
            format!("amount {t} has more than 28 decimal places (not exactly representable)")
        }
        _ => format!("invalid decimal {raw}: {e}"),
    })
}

/// Whether `v` holds a number that serde_json keeps as an `f64` (a fraction, an
/// exponent, or an integer outside `i64`/`u64`): the amounts of such a payload must be
/// read from its text to be exact.
pub(crate) fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(a) => a.iter().any(has_float),
        serde_json::Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// The JSON text of the value being deserialized: as it arrived when read from text,
/// the value's own rendering when read from a `serde_json::Value`.
fn json_text<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Box<serde_json::value::RawValue>, D::Error> {
    Box::<serde_json::value::RawValue>::deserialize(d)
}

/// `serde(deserialize_with)`: an optional amount (number or string).
pub fn de_opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    decimal_from_json(json_text(d)?.get()).map_err(serde::de::Error::custom)
}

/// `serde(deserialize_with)`: a required amount (number or string).
pub fn de_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    decimal_from_json(json_text(d)?.get())
        .map_err(serde::de::Error::custom)?
        .ok_or_else(|| serde::de::Error::custom("missing amount"))
}

/// `serde(deserialize_with)`: an optional integer that may arrive as a string.
pub fn de_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match decimal_from_json(json_text(d)?.get()).map_err(serde::de::Error::custom)? {
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

    /// Every instant from year -50 to 10050 (leap seconds, every fraction, the years
    /// chrono writes with a sign), whole-second, millisecond, microsecond and nanosecond
    /// ones alike: the engine's formatting is chrono's, byte for byte, and the kept
    /// instant is what reading the stored text back gives.
    fn formats_as_chrono_does(secs: i64, nanos: u32, unit: u32) {
        let nanos = nanos / unit * unit;
        // chrono holds a leap second only at :59; elsewhere the same fraction without it.
        let t = DateTime::from_timestamp(secs, nanos)
            .or_else(|| DateTime::from_timestamp(secs, nanos % 1_000_000_000))
            .expect("an instant in chrono's range");
        assert_eq!(
            format_timestamp(&t),
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        #[derive(serde::Serialize)]
        struct Ours {
            #[serde(serialize_with = "ser_timestamp")]
            at: Timestamp,
            #[serde(serialize_with = "ser_opt_timestamp")]
            some: Option<Timestamp>,
            #[serde(serialize_with = "ser_opt_timestamp")]
            none: Option<Timestamp>,
        }
        #[derive(serde::Serialize)]
        struct Chronos {
            at: Timestamp,
            some: Option<Timestamp>,
            none: Option<Timestamp>,
        }
        let ours = Ours {
            at: t,
            some: Some(t),
            none: None,
        };
        let chronos = Chronos {
            at: t,
            some: Some(t),
            none: None,
        };
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&chronos).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&ours).unwrap(),
            serde_json::to_value(&chronos).unwrap()
        );
        assert_eq!(kept_timestamp(&t), parse_timestamp(&format_timestamp(&t)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        #[test]
        fn timestamps_format_as_chrono_does(
            secs in -63_900_000_000i64..253_500_000_000,
            nanos in 0u32..2_000_000_000,
            unit in proptest::sample::select(vec![1u32, 1000, 1_000_000, 1_000_000_000]),
        ) {
            formats_as_chrono_does(secs, nanos, unit);
        }
    }

    #[test]
    fn timestamps_format_as_chrono_does_at_the_edges() {
        for text in [
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2016-12-31T23:59:60.5Z",
            "2016-12-31T23:59:60Z",
            "2026-05-01T10:00:00.250Z",
            "2026-05-01T10:00:00.000001Z",
            "2026-05-01T10:00:00.000000001Z",
        ] {
            let t = DateTime::parse_from_rfc3339(text).unwrap().to_utc();
            formats_as_chrono_does(t.timestamp(), t.timestamp_subsec_nanos(), 1);
        }
        let t = DateTime::parse_from_rfc3339("2016-12-31T23:59:60.5Z")
            .unwrap()
            .to_utc();
        assert_eq!(format_timestamp(&t), "2016-12-31T23:59:60.500000Z");
        let far = DateTime::from_timestamp(253_402_300_800, 0).unwrap();
        assert_eq!(format_timestamp(&far), "+10000-01-01T00:00:00.000000Z");
        assert_eq!(kept_timestamp(&far), None);
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
        let dec = |t: &str| Some(Decimal::from_str_exact(t).unwrap());
        let from_text = |json: &str| {
            let mut de = serde_json::Deserializer::from_str(json);
            de_opt_decimal(&mut de).map_err(|e| e.to_string())
        };
        let from_value = |v: serde_json::Value| de_opt_decimal(v).map_err(|e| e.to_string());
        // Read from text, a JSON number keeps every digit it arrived with.
        let digits = "12345678901234567890.123456789";
        assert_eq!(from_text(digits), Ok(dec(digits)));
        assert_eq!(from_text(&format!("\"{digits}\"")), Ok(dec(digits)));
        assert_eq!(from_text("0.1"), Ok(dec("0.1")));
        assert_eq!(from_text("-0.10"), Ok(dec("-0.10")));
        assert_eq!(
            from_text("99999999999999999999999"),
            Ok(dec("99999999999999999999999"))
        );
        assert_eq!(from_text("1e3"), Ok(dec("1000")));
        assert_eq!(from_text("1.5E+2"), Ok(dec("150")));
        assert_eq!(from_text("25e-3"), Ok(dec("0.025")));
        assert_eq!(from_text("\" 7.5 \""), Ok(dec("7.5")));
        assert_eq!(from_text("\"\""), Ok(None));
        assert_eq!(from_text("null"), Ok(None));
        // A `Value` holds strings and integers exactly.
        assert_eq!(from_value(serde_json::json!("0.1")), Ok(dec("0.1")));
        assert_eq!(from_value(serde_json::json!(12)), Ok(dec("12")));
        assert_eq!(
            from_value(serde_json::json!(u64::MAX)),
            Ok(dec("18446744073709551615"))
        );
        assert_eq!(from_value(serde_json::Value::Null), Ok(None));
        // Never rounded: an amount Decimal cannot hold exactly is refused, not rounded.
        for refused in [
            "0.00000000000000000000000000001",
            "\"1.00000000000000000000000000001\"",
            "1.00000000000000000000000000001e2",
            "1e40",
            "123456789012345678901234567890",
            "\"ten\"",
            "true",
            "[1]",
        ] {
            assert!(from_text(refused).is_err(), "{refused} was accepted");
        }
    }

    #[test]
    fn floats_are_found_wherever_they_are() {
        assert!(!has_float(
            &serde_json::json!({"a": [1, "2.5", -3, {"b": null}]})
        ));
        assert!(has_float(&serde_json::json!({"a": [1, {"b": 2.5}]})));
        assert!(has_float(&serde_json::json!([1e3])));
        let huge: serde_json::Value = serde_json::from_str("[123456789012345678901]").unwrap();
        assert!(has_float(&huge));
    }
}
