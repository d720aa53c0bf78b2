//! Standard Webhooks signature verification (pure: no IO, no clock).
//!
//! Dodo Payments signs every delivery the [Standard Webhooks] way: an
//! HMAC-SHA256, keyed with the endpoint secret, over
//! `webhook-id "." webhook-timestamp "." raw-body`, sent base64-encoded as a
//! `v1,<base64>` entry of the space-separated `webhook-signature` header.
//!
//! [`Verifier::verify`] follows the reference Rust library (`standardwebhooks`)
//! check for check, and stops at the first failure:
//!
//! 1. `webhook-id`: absent is [`VerifyError::MissingHeader`], not visible ASCII
//!    is [`VerifyError::InvalidHeader`]; then the same two checks for
//!    `webhook-signature`, then for `webhook-timestamp` (header by header, in
//!    that order, exactly as the reference does).
//! 2. The timestamp must parse as an `i64` ([`str::parse`] rules: an optional
//!    `+` or `-`, leading zeros allowed, nothing else), else
//!    [`VerifyError::InvalidTimestamp`].
//! 3. `now - timestamp > 300` is [`VerifyError::TimestampTooOld`];
//!    `timestamp > now + 300` is [`VerifyError::TimestampTooNew`]. Exactly 300 s
//!    either way is accepted. The tolerance is checked before the signature.
//! 4. For every configured secret, the expected MAC is computed over the id, the
//!    *parsed* timestamp written as a plain integer (so `+1614265330` and
//!    `01614265330` are signed as `1614265330`), and the raw body bytes. The
//!    header's entries are separated by single spaces; each is split at its
//!    first `,`; entries without a comma or with a version other than `v1` are
//!    skipped. An entry matches when its base64 decodes (canonical padding) to
//!    the 32-byte MAC, compared in constant time. No match is
//!    [`VerifyError::InvalidSignature`].
//!
//! The body does not have to be UTF-8 (the reference refuses that; whether the
//! body parses is the event parser's business, not this module's). Empty header
//! values count as present, as in the reference: an empty timestamp is
//! `invalid_timestamp`, an empty signature `invalid_signature`.
//!
//! Nothing here panics on input, and nothing allocates in proportion to the
//! headers or the body.
//!
//! [Standard Webhooks]: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
//!
//! # Example
//!
//! ```
//! use entitlement_sync::verify::{sign, Secret, Verifier, WebhookHeaders};
//!
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let body = br#"{"test": 2432232314}"#;
//! let signature = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
//!
//! let verifier = Verifier::new(vec![secret]);
//! let headers = WebhookHeaders {
//!     id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
//!     timestamp: Some("1614265330"),
//!     signature: Some(&signature),
//! };
//! verifier.verify(&headers, body, 1614265330 + 10)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::digest::generic_array::GenericArray;
use hmac::digest::{CtOutput, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far, in seconds, a `webhook-timestamp` may lie from `now` either way.
///
/// Both boundaries are inclusive: a timestamp exactly 300 s old or 300 s ahead
/// is accepted, 301 s is not.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::TOLERANCE_SECS;
///
/// assert_eq!(TOLERANCE_SECS, 5 * 60);
/// ```
pub const TOLERANCE_SECS: i64 = 300;

/// The optional prefix of a textual secret.
const SECRET_PREFIX: &str = "whsec_";
/// The only signature version of the symmetric scheme.
const SIGNATURE_VERSION: &str = "v1";
/// Length of the base64 text (with padding) of a 32-byte HMAC-SHA256 tag.
const SIGNATURE_B64_LEN: usize = 44;
/// HMAC-SHA256 block size: keys are normalised to this length (RFC 2104).
const HMAC_BLOCK_LEN: usize = 64;

/// One endpoint secret: the raw HMAC key.
///
/// Holds the key ready for HMAC (as the keyed hash state), never as text.
/// `Debug` prints `Secret(..)`, never the key.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::Secret;
///
/// let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// assert_eq!(format!("{secret:?}"), "Secret(..)");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Secret {
    /// HMAC-SHA256 keyed with the secret, before any message byte.
    keyed: HmacSha256,
}

impl Secret {
    /// Parses a secret as shown in the Dodo dashboard: `whsec_` followed by
    /// base64, the prefix being optional.
    ///
    /// The base64 uses the standard alphabet with canonical padding and zero
    /// trailing bits, as the reference library requires. Nothing is trimmed.
    ///
    /// # Errors
    ///
    /// [`SecretError::InvalidBase64`] if the text after the optional prefix is
    /// not canonical standard base64, [`SecretError::Empty`] if it decodes to
    /// no bytes at all (`""`, `"whsec_"`).
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::{Secret, SecretError};
    ///
    /// Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// assert_eq!(Secret::parse("whsec_").err(), Some(SecretError::Empty));
    /// assert_eq!(Secret::parse("whsec_not base64!").err(), Some(SecretError::InvalidBase64));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        let encoded = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        Secret::from_bytes(&key)
    }

    /// Uses `key` as the raw HMAC key.
    ///
    /// # Errors
    ///
    /// [`SecretError::Empty`] if `key` is empty.
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::{Secret, SecretError};
    ///
    /// Secret::from_bytes(b"0123456789abcdef01234567")?;
    /// assert_eq!(Secret::from_bytes(b"").err(), Some(SecretError::Empty));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_bytes(key: &[u8]) -> Result<Secret, SecretError> {
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        // RFC 2104: a key longer than the block is replaced by its hash, a
        // shorter one is padded with zeros. Doing it here gives a block-sized
        // key, for which HMAC's constructor is infallible.
        let mut block = GenericArray::<u8, _>::default();
        if key.len() > HMAC_BLOCK_LEN {
            let digest = Sha256::digest(key);
            block[..digest.len()].copy_from_slice(&digest);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Ok(Secret {
            keyed: <HmacSha256 as KeyInit>::new(&block),
        })
    }

    /// The MAC of `id.timestamp.body`, streamed (no concatenated copy).
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> CtOutput<HmacSha256> {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret could not be configured. Messages never contain the secret.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::{Secret, SecretError};
///
/// assert_eq!(Secret::parse("whsec_%%%").err(), Some(SecretError::InvalidBase64));
/// assert_eq!(SecretError::InvalidBase64.to_string(), "webhook secret is not valid base64");
/// ```
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The key is empty, or the list of secrets holds none.
    #[error("webhook secret is empty")]
    Empty,
    /// The text after the optional `whsec_` prefix is not canonical standard
    /// base64.
    #[error("webhook secret is not valid base64")]
    InvalidBase64,
}

/// The configured secrets: a delivery verifies if it is signed with any of
/// them.
///
/// Dodo keeps the old secret valid for 24 h after a rotation, so during that
/// window both the old and the new one are configured. `Debug` shows only how
/// many secrets there are.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::Verifier;
///
/// let verifier = Verifier::from_list(
///     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
/// )?;
/// assert_eq!(format!("{verifier:?}"), "Verifier { secrets: 2 }");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
}

impl Verifier {
    /// A verifier accepting signatures made with any of `secrets`.
    ///
    /// With no secret at all every delivery fails with
    /// [`VerifyError::InvalidSignature`] (after the header and timestamp
    /// checks); [`Verifier::from_list`] refuses that case up front.
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::{Secret, Verifier};
    ///
    /// let old = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let new = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")?;
    /// let verifier = Verifier::new(vec![old, new]);
    /// # let _ = verifier;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn new(secrets: Vec<Secret>) -> Verifier {
        Verifier { secrets }
    }

    /// Parses a list of secrets separated by commas and/or whitespace, such as
    /// the value of `DODO_PAYMENTS_WEBHOOK_SECRET`. Each one is read by
    /// [`Secret::parse`]; empty items (`"a,,b"`, trailing separators) are
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`SecretError::Empty`] if the list holds no secret at all; otherwise
    /// the first error of [`Secret::parse`] among the items.
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::{SecretError, Verifier};
    ///
    /// Verifier::from_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// Verifier::from_list(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,C2FVsBQIhrscChlQIMV+b5sSYspob7oD ")?;
    /// assert_eq!(Verifier::from_list(" , ").err(), Some(SecretError::Empty));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_list(list: &str) -> Result<Verifier, SecretError> {
        let secrets = list
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|item| !item.is_empty())
            .map(Secret::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Verifier { secrets })
    }

    /// Verifies one delivery: its three Standard Webhooks header values, its
    /// raw body, and the current time in Unix seconds.
    ///
    /// The checks and their order are described in the [module
    /// documentation](self).
    ///
    /// # Errors
    ///
    /// The first failing check, as a [`VerifyError`]; see
    /// [`VerifyError::kind`] for the stable names.
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::{HeaderName, Verifier, VerifyError, WebhookHeaders};
    ///
    /// let verifier = Verifier::from_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let body = br#"{"test": 2432232314}"#;
    /// let mut headers = WebhookHeaders {
    ///     id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
    ///     timestamp: Some("1614265330"),
    ///     signature: Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
    /// };
    /// verifier.verify(&headers, body, 1614265330)?;
    ///
    /// assert_eq!(
    ///     verifier.verify(&headers, body, 1614265330 + 301),
    ///     Err(VerifyError::TimestampTooOld),
    /// );
    /// headers.id = None;
    /// assert_eq!(
    ///     verifier.verify(&headers, body, 1614265330),
    ///     Err(VerifyError::MissingHeader(HeaderName::Id)),
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(
        &self,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError> {
        self.verify_raw(&RawWebhookHeaders::from(*headers), body, now_unix)
    }

    /// [`Verifier::verify`] for header values as raw bytes, as HTTP delivers
    /// them (they need not be UTF-8).
    ///
    /// A value with a byte that is not visible ASCII (`0x20..=0x7E`, or a tab,
    /// which is what `http::HeaderValue::to_str` accepts) is
    /// [`VerifyError::InvalidHeader`].
    ///
    /// # Errors
    ///
    /// As [`Verifier::verify`].
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::{HeaderName, RawWebhookHeaders, Verifier, VerifyError};
    ///
    /// let verifier = Verifier::from_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let body = br#"{"test": 2432232314}"#;
    /// let mut headers = RawWebhookHeaders {
    ///     id: Some(b"msg_p5jXN8AQM9LWM0D4loKWxJek"),
    ///     timestamp: Some(b"1614265330"),
    ///     signature: Some(b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
    /// };
    /// verifier.verify_raw(&headers, body, 1614265330)?;
    ///
    /// headers.id = Some(b"msg_\xff");
    /// assert_eq!(
    ///     verifier.verify_raw(&headers, body, 1614265330),
    ///     Err(VerifyError::InvalidHeader(HeaderName::Id)),
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify_raw(
        &self,
        headers: &RawWebhookHeaders<'_>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError> {
        // Header by header, presence then visibility, in the reference order.
        let id = header_text(HeaderName::Id, headers.id)?;
        let signature = header_text(HeaderName::Signature, headers.signature)?;
        let timestamp = header_text(HeaderName::Timestamp, headers.timestamp)?
            .parse::<i64>()
            .map_err(|_| VerifyError::InvalidTimestamp)?;

        // Widened so that no `now` or timestamp can overflow.
        let age = i128::from(now_unix) - i128::from(timestamp);
        if age > i128::from(TOLERANCE_SECS) {
            return Err(VerifyError::TimestampTooOld);
        }
        if -age > i128::from(TOLERANCE_SECS) {
            return Err(VerifyError::TimestampTooNew);
        }

        for secret in &self.secrets {
            let expected = secret.mac(id, timestamp, body);
            if v1_candidates(signature).any(|candidate| candidate == expected) {
                return Ok(());
            }
        }
        Err(VerifyError::InvalidSignature)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// The decoded tags of the well-formed `v1` entries of a `webhook-signature`
/// value. Entries that cannot be a 32-byte tag in canonical base64 are
/// skipped: they could never match.
fn v1_candidates(signature: &str) -> impl Iterator<Item = CtOutput<HmacSha256>> + '_ {
    signature
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| {
            if encoded.len() != SIGNATURE_B64_LEN {
                return None;
            }
            // The engine asks for room for 33 bytes when decoding 44
            // characters; a canonical 44-character text holds exactly 32.
            let mut buf = [0u8; 33];
            let n = STANDARD.decode_slice(encoded, &mut buf).ok()?;
            let tag: [u8; 32] = buf.get(..n)?.try_into().ok()?;
            Some(CtOutput::new(tag.into()))
        })
}

/// The value of one header as text, or why it is unusable.
fn header_text(name: HeaderName, value: Option<&[u8]>) -> Result<&str, VerifyError> {
    let value = value.ok_or(VerifyError::MissingHeader(name))?;
    if !value.iter().all(|&b| is_visible_ascii(b)) {
        return Err(VerifyError::InvalidHeader(name));
    }
    std::str::from_utf8(value).map_err(|_| VerifyError::InvalidHeader(name))
}

/// What `http::HeaderValue::to_str` accepts: printable ASCII and tab.
fn is_visible_ascii(b: u8) -> bool {
    (0x20..0x7f).contains(&b) || b == b'\t'
}

/// The three Standard Webhooks header values as received, as text.
///
/// `None` means the header was absent. A value may still be refused as
/// [`VerifyError::InvalidHeader`] if it holds anything but visible ASCII. For
/// values that may not even be UTF-8, use [`RawWebhookHeaders`].
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::WebhookHeaders;
///
/// let headers = WebhookHeaders {
///     id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
///     timestamp: Some("1614265330"),
///     ..WebhookHeaders::default()
/// };
/// assert!(headers.signature.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookHeaders<'a> {
    /// `webhook-id`: the message id, stable across retries.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`: the attempt time in Unix seconds.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`: space-separated `v1,<base64>` entries.
    pub signature: Option<&'a str>,
}

/// The three Standard Webhooks header values as raw bytes, as an HTTP server
/// hands them over (`http::HeaderValue::as_bytes`); verified by
/// [`Verifier::verify_raw`].
///
/// `None` means the header was absent.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::{RawWebhookHeaders, WebhookHeaders};
///
/// let text = WebhookHeaders { id: Some("msg_1"), ..WebhookHeaders::default() };
/// let raw = RawWebhookHeaders::from(text);
/// assert_eq!(raw.id, Some(&b"msg_1"[..]));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RawWebhookHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a [u8]>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a [u8]>,
    /// `webhook-signature`.
    pub signature: Option<&'a [u8]>,
}

impl<'a> From<WebhookHeaders<'a>> for RawWebhookHeaders<'a> {
    fn from(headers: WebhookHeaders<'a>) -> Self {
        RawWebhookHeaders {
            id: headers.id.map(str::as_bytes),
            timestamp: headers.timestamp.map(str::as_bytes),
            signature: headers.signature.map(str::as_bytes),
        }
    }
}

/// Why a delivery failed verification.
///
/// The `Display` messages are for humans; [`VerifyError::kind`] gives the
/// stable machine-readable name.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::{HeaderName, VerifyError};
///
/// let err = VerifyError::MissingHeader(HeaderName::Signature);
/// assert_eq!(err.kind(), "missing_header");
/// assert_eq!(err.to_string(), "missing header webhook-signature");
/// ```
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(HeaderName),
    /// A header value holds something other than visible ASCII.
    #[error("invalid header {0}: not visible ascii")]
    InvalidHeader(HeaderName),
    /// `webhook-timestamp` is not an integer number of seconds.
    #[error("invalid webhook timestamp")]
    InvalidTimestamp,
    /// `webhook-timestamp` is more than [`TOLERANCE_SECS`] in the past.
    #[error("webhook timestamp too old")]
    TimestampTooOld,
    /// `webhook-timestamp` is more than [`TOLERANCE_SECS`] in the future.
    #[error("webhook timestamp too far in the future")]
    TimestampTooNew,
    /// No `v1` entry of `webhook-signature` matches any configured secret.
    #[error("no matching webhook signature")]
    InvalidSignature,
}

impl VerifyError {
    /// The stable name of this kind of failure, for logs, metrics and the
    /// CLI: `missing_header`, `invalid_header`, `invalid_timestamp`,
    /// `timestamp_too_old`, `timestamp_too_new` or `invalid_signature`.
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::VerifyError;
    ///
    /// assert_eq!(VerifyError::TimestampTooNew.kind(), "timestamp_too_new");
    /// ```
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::InvalidHeader(_) => "invalid_header",
            VerifyError::InvalidTimestamp => "invalid_timestamp",
            VerifyError::TimestampTooOld => "timestamp_too_old",
            VerifyError::TimestampTooNew => "timestamp_too_new",
            VerifyError::InvalidSignature => "invalid_signature",
        }
    }
}

/// One of the three Standard Webhooks headers. `Display` gives its HTTP name.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::HeaderName;
///
/// assert_eq!(HeaderName::Timestamp.to_string(), "webhook-timestamp");
/// assert_eq!(HeaderName::Id.as_str(), "webhook-id");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// `webhook-id`.
    Id,
    /// `webhook-timestamp`.
    Timestamp,
    /// `webhook-signature`.
    Signature,
}

impl HeaderName {
    /// The lower-case HTTP header name: `webhook-id`, `webhook-timestamp` or
    /// `webhook-signature`.
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::verify::HeaderName;
    ///
    /// assert_eq!(HeaderName::Signature.as_str(), "webhook-signature");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderName::Id => "webhook-id",
            HeaderName::Timestamp => "webhook-timestamp",
            HeaderName::Signature => "webhook-signature",
        }
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signs a delivery: returns the `webhook-signature` entry `v1,<base64>` for
/// the message `id`, the attempt `timestamp` (Unix seconds) and the raw
/// `body`, as a sender would.
///
/// # Example
///
/// ```
/// use entitlement_sync::verify::{sign, Secret};
///
/// // The published vector of the Standard Webhooks libraries.
/// let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let signature = sign(
///     &secret,
///     "msg_p5jXN8AQM9LWM0D4loKWxJek",
///     1614265330,
///     br#"{"test": 2432232314}"#,
/// );
/// assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret.mac(id, timestamp, body).into_bytes();
    format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag))
}
