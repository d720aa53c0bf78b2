//! Standard Webhooks verification: published vectors, every error kind, the
//! edges where the reference libraries are subtle, and properties.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use entitlement_sync::verify::{
    sign, HeaderName, RawWebhookHeaders, Secret, SecretError, Verifier, VerifyError,
    WebhookHeaders, TOLERANCE_SECS,
};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::Sha256;

// The published vector shared by the Standard Webhooks reference test suites:
// github standard-webhooks/standard-webhooks
//   libraries/python/tests/test_webhooks.py (test_sign_function)
//   libraries/go/webhook_test.go (TestWebhookSign)
//   libraries/javascript/src/webhook.test.ts ("sign function works")
//   libraries/ruby/spec/webhook_spec.rb ("sign function works")
const SW_SECRET: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: i64 = 1614265330;
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// The vector of the Rust reference library's own tests:
// github standard-webhooks/standard-webhooks libraries/rust/src/lib.rs (test_sign).
const RS_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const RS_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const RS_TS: i64 = 1649367553;
const RS_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
const RS_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

// Decoy entries used by those suites (well-formed `v1` entries that match nothing).
// python test_multi_sig_payload_is_valid, go "valid multi sig is valid",
// javascript "multi sig payload is valid", ruby "multi sig pyload is valid":
const DECOY: &str = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
const DECOY_V2: &str = "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
// rust test_verify_with_multiple_signatures / test_no_verify_with_multiple_signatures:
const RS_DECOYS: [&str; 3] = [
    "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
    "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
    "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
];

fn secret(text: &str) -> Secret {
    Secret::parse(text).expect("test secret parses")
}

/// An independent HMAC-SHA256 (the `hmac` crate used directly, raw key) as
/// `v1,<base64>`: the oracle for `sign`.
fn oracle(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key");
    mac.update(message);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------
// The table: one delivery per row, checked by `check`.

struct Case {
    name: &'static str,
    secrets: Vec<&'static str>,
    id: Option<Vec<u8>>,
    timestamp: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
    body: Vec<u8>,
    now: i64,
    expect: Result<(), VerifyError>,
}

/// A row starting from the published vector (valid at `now == SW_TS`).
fn case(name: &'static str) -> Case {
    Case {
        name,
        secrets: vec![SW_SECRET],
        id: Some(SW_ID.into()),
        timestamp: Some(SW_TS.to_string().into()),
        signature: Some(SW_SIG.into()),
        body: SW_BODY.to_vec(),
        now: SW_TS,
        expect: Ok(()),
    }
}

impl Case {
    fn secrets(mut self, secrets: &[&'static str]) -> Self {
        self.secrets = secrets.to_vec();
        self
    }
    fn id(mut self, v: Option<impl AsRef<[u8]>>) -> Self {
        self.id = v.map(|v| v.as_ref().to_vec());
        self
    }
    fn ts(mut self, v: Option<impl AsRef<[u8]>>) -> Self {
        self.timestamp = v.map(|v| v.as_ref().to_vec());
        self
    }
    fn sig(mut self, v: Option<impl AsRef<[u8]>>) -> Self {
        self.signature = v.map(|v| v.as_ref().to_vec());
        self
    }
    fn body(mut self, v: impl AsRef<[u8]>) -> Self {
        self.body = v.as_ref().to_vec();
        self
    }
    fn now(mut self, now: i64) -> Self {
        self.now = now;
        self
    }
    fn fails(mut self, err: VerifyError) -> Self {
        self.expect = Err(err);
        self
    }
}

const NONE: Option<&str> = None;

fn text(value: &Option<Vec<u8>>) -> Result<Option<&str>, std::str::Utf8Error> {
    value.as_deref().map(std::str::from_utf8).transpose()
}

/// Runs every row through `verify_raw` and, when all values are UTF-8, through
/// `verify` too; reports every mismatching row at once.
fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let verifier = Verifier::new(c.secrets.iter().map(|s| secret(s)).collect());
        let raw = RawWebhookHeaders {
            id: c.id.as_deref(),
            timestamp: c.timestamp.as_deref(),
            signature: c.signature.as_deref(),
        };
        let got = verifier.verify_raw(&raw, &c.body, c.now);
        if got != c.expect {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                c.name, c.expect, got
            ));
        }
        if let (Ok(id), Ok(timestamp), Ok(signature)) =
            (text(&c.id), text(&c.timestamp), text(&c.signature))
        {
            let headers = WebhookHeaders {
                id,
                timestamp,
                signature,
            };
            let got_text = verifier.verify(&headers, &c.body, c.now);
            if got_text != got {
                failures.push(format!(
                    "{}: verify gave {:?} but verify_raw {:?}",
                    c.name, got_text, got
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn published_vectors_sign() {
    let rows = [
        (SW_SECRET, SW_ID, SW_TS, SW_BODY, SW_SIG),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            SW_ID,
            SW_TS,
            SW_BODY,
            SW_SIG,
        ),
        (RS_SECRET, RS_ID, RS_TS, RS_BODY, RS_SIG),
        (&RS_SECRET[6..], RS_ID, RS_TS, RS_BODY, RS_SIG),
    ];
    for (secret_text, id, ts, body, expected) in rows {
        assert_eq!(
            sign(&secret(secret_text), id, ts, body),
            expected,
            "{secret_text}"
        );
    }
}

#[test]
fn published_vectors_verify() {
    use VerifyError::*;
    let s = secret(SW_SECRET);
    // The suites sign at "now"; here "now" is a parameter.
    let at = |ts: i64| sign(&s, SW_ID, ts, SW_BODY);
    let tol = TOLERANCE_SECS;
    check(vec![
        // python test_valid_signature_is_valid_and_returns_json, go "valid signature is valid", ...
        case("valid signature"),
        case("valid, key with whsec_ prefix").secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]),
        case("rust reference vector")
            .secrets(&[RS_SECRET])
            .id(Some(RS_ID))
            .ts(Some(RS_TS.to_string()))
            .sig(Some(RS_SIG))
            .body(RS_BODY)
            .now(RS_TS),
        // python test_invalid_signature_raises_error: last character changed.
        case("python invalid signature")
            .sig(Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="))
            .fails(InvalidSignature),
        // go "invalid signature is invalid"
        case("go invalid signature")
            .sig(Some(DECOY))
            .fails(InvalidSignature),
        // javascript "invalid signature throws error"
        case("js short signature")
            .sig(Some("v1,dawfeoifkpqwoekfpqoekf"))
            .fails(InvalidSignature),
        // javascript "partial signature throws error"
        case("js partial signature")
            .sig(Some(&SW_SIG[..8]))
            .fails(InvalidSignature),
        case("js partial signature: v1, alone")
            .sig(Some("v1,"))
            .fails(InvalidSignature),
        // ruby "invalid signature raises error"
        case("ruby invalid signature")
            .sig(Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLawdd"))
            .fails(InvalidSignature),
        // rust test_no_verify
        case("rust invalid signature")
            .secrets(&[RS_SECRET])
            .id(Some(RS_ID))
            .ts(Some(RS_TS.to_string()))
            .sig(Some("v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU="))
            .body(RS_BODY)
            .now(RS_TS)
            .fails(InvalidSignature),
        // python/go/js/ruby multi-sig: decoy, v2 decoy, valid, decoy.
        case("multi sig with one valid entry")
            .sig(Some(format!("{DECOY} {DECOY_V2} {SW_SIG} {DECOY}"))),
        // rust test_verify_with_multiple_signatures / test_no_verify_with_multiple_signatures
        case("rust multi sig, valid third")
            .secrets(&[RS_SECRET])
            .id(Some(RS_ID))
            .ts(Some(RS_TS.to_string()))
            .sig(Some(format!(
                "{} {} {RS_SIG} {}",
                RS_DECOYS[0], RS_DECOYS[1], RS_DECOYS[2]
            )))
            .body(RS_BODY)
            .now(RS_TS),
        case("rust multi sig, none valid")
            .secrets(&[RS_SECRET])
            .id(Some(RS_ID))
            .ts(Some(RS_TS.to_string()))
            .sig(Some(RS_DECOYS.join(" ")))
            .body(RS_BODY)
            .now(RS_TS)
            .fails(InvalidSignature),
        // missing headers (every suite)
        case("missing id")
            .id(NONE)
            .fails(MissingHeader(HeaderName::Id)),
        case("missing timestamp")
            .ts(NONE)
            .fails(MissingHeader(HeaderName::Timestamp)),
        case("missing signature")
            .sig(NONE)
            .fails(MissingHeader(HeaderName::Signature)),
        // python/js "hello", ruby "teadwd"
        case("timestamp hello")
            .ts(Some("hello"))
            .fails(InvalidTimestamp),
        case("timestamp teadwd")
            .ts(Some("teadwd"))
            .fails(InvalidTimestamp),
        // old/new by tolerance + 1 s (python, js, ruby, rust), re-signed at that time.
        case("old timestamp")
            .ts(Some((SW_TS - tol - 1).to_string()))
            .sig(Some(at(SW_TS - tol - 1)))
            .fails(TimestampTooOld),
        case("new timestamp")
            .ts(Some((SW_TS + tol + 1).to_string()))
            .sig(Some(at(SW_TS + tol + 1)))
            .fails(TimestampTooNew),
        // go "invalid timestamp fails when ignoring tolerance": header changed, not re-signed.
        case("timestamp changed after signing")
            .ts(Some((SW_TS + 1).to_string()))
            .fails(InvalidSignature),
        // Dodo's Node SDK test (dodopayments-typescript webhooks.test.ts): timestamp 5.
        case("dodo sdk timestamp 5")
            .ts(Some("5"))
            .fails(TimestampTooOld),
    ]);
}

#[test]
fn check_order_follows_the_reference() {
    use VerifyError::*;
    // The reference takes id, then signature, then timestamp, each one
    // "present?" then "visible ASCII?"; the timestamp is parsed right after;
    // the tolerance comes before the signature.
    check(vec![
        case("nothing at all")
            .id(NONE)
            .ts(NONE)
            .sig(NONE)
            .fails(MissingHeader(HeaderName::Id)),
        case("signature and timestamp missing")
            .ts(NONE)
            .sig(NONE)
            .fails(MissingHeader(HeaderName::Signature)),
        case("id missing, signature invalid")
            .id(NONE)
            .sig(Some("v1,\u{e9}"))
            .fails(MissingHeader(HeaderName::Id)),
        case("id invalid, signature missing")
            .id(Some(b"msg_\xff"))
            .sig(NONE)
            .fails(InvalidHeader(HeaderName::Id)),
        case("signature invalid, timestamp missing")
            .sig(Some(b"v1,\x00"))
            .ts(NONE)
            .fails(InvalidHeader(HeaderName::Signature)),
        case("signature missing, timestamp invalid")
            .sig(NONE)
            .ts(Some(b"\x80"))
            .fails(MissingHeader(HeaderName::Signature)),
        case("timestamp not ascii, signature wrong")
            .ts(Some("\u{661}\u{662}"))
            .sig(Some("nope"))
            .fails(InvalidHeader(HeaderName::Timestamp)),
        case("timestamp unparsable, signature wrong")
            .ts(Some("soon"))
            .sig(Some("nope"))
            .fails(InvalidTimestamp),
        case("too old beats wrong signature")
            .now(SW_TS + 301)
            .sig(Some("nope"))
            .fails(TimestampTooOld),
        case("too new beats wrong signature")
            .now(SW_TS - 301)
            .sig(Some("nope"))
            .fails(TimestampTooNew),
        case("too old beats no configured secret")
            .secrets(&[])
            .now(SW_TS + 301)
            .fails(TimestampTooOld),
        case("no configured secret")
            .secrets(&[])
            .fails(InvalidSignature),
    ]);
}

#[test]
fn error_kinds() {
    use VerifyError::*;
    let rows = [
        (
            MissingHeader(HeaderName::Id),
            "missing_header",
            "missing header webhook-id",
        ),
        (
            MissingHeader(HeaderName::Timestamp),
            "missing_header",
            "missing header webhook-timestamp",
        ),
        (
            MissingHeader(HeaderName::Signature),
            "missing_header",
            "missing header webhook-signature",
        ),
        (
            InvalidHeader(HeaderName::Id),
            "invalid_header",
            "invalid header webhook-id: not visible ascii",
        ),
        (
            InvalidTimestamp,
            "invalid_timestamp",
            "invalid webhook timestamp",
        ),
        (
            TimestampTooOld,
            "timestamp_too_old",
            "webhook timestamp too old",
        ),
        (
            TimestampTooNew,
            "timestamp_too_new",
            "webhook timestamp too far in the future",
        ),
        (
            InvalidSignature,
            "invalid_signature",
            "no matching webhook signature",
        ),
    ];
    for (err, kind, message) in rows {
        assert_eq!(err.kind(), kind, "{err:?}");
        assert_eq!(err.to_string(), message, "{err:?}");
    }
    assert_eq!(HeaderName::Id.to_string(), "webhook-id");
    assert_eq!(HeaderName::Timestamp.to_string(), "webhook-timestamp");
    assert_eq!(HeaderName::Signature.to_string(), "webhook-signature");
}

#[test]
fn timestamps() {
    use VerifyError::*;
    let s = secret(SW_SECRET);
    let at = |ts: i64| sign(&s, SW_ID, ts, SW_BODY);
    let tol = TOLERANCE_SECS;
    // The signed text uses the *parsed* integer; this is what a sender that
    // signed the raw header text would have produced for "+1614265330".
    let raw_text_sig = oracle(
        &STANDARD.decode(SW_SECRET).expect("base64"),
        format!(
            "{SW_ID}.+{SW_TS}.{}",
            std::str::from_utf8(SW_BODY).expect("utf8")
        )
        .as_bytes(),
    );
    check(vec![
        // Boundaries: exactly 300 s either way accepted, 301 s refused.
        case("300 s old").now(SW_TS + tol),
        case("301 s old")
            .now(SW_TS + tol + 1)
            .fails(TimestampTooOld),
        case("300 s ahead").now(SW_TS - tol),
        case("301 s ahead")
            .now(SW_TS - tol - 1)
            .fails(TimestampTooNew),
        case("years old")
            .now(SW_TS + 100_000_000)
            .fails(TimestampTooOld),
        // str::parse::<i64> semantics, as the reference.
        case("plus sign").ts(Some(format!("+{SW_TS}"))),
        case("leading zero").ts(Some(format!("0{SW_TS}"))),
        case("plus and zeros").ts(Some(format!("+000{SW_TS}"))),
        case("signature over the raw '+' text is not the scheme")
            .ts(Some(format!("+{SW_TS}")))
            .sig(Some(&raw_text_sig))
            .fails(InvalidSignature),
        case("minus zero is zero")
            .ts(Some("-0"))
            .sig(Some(at(0)))
            .now(0),
        case("negative timestamp")
            .ts(Some("-5"))
            .sig(Some(at(-5)))
            .now(0),
        case("empty timestamp").ts(Some("")).fails(InvalidTimestamp),
        case("lone plus").ts(Some("+")).fails(InvalidTimestamp),
        case("lone minus").ts(Some("-")).fails(InvalidTimestamp),
        case("double sign")
            .ts(Some(format!("++{SW_TS}")))
            .fails(InvalidTimestamp),
        case("leading space")
            .ts(Some(format!(" {SW_TS}")))
            .fails(InvalidTimestamp),
        case("trailing space")
            .ts(Some(format!("{SW_TS} ")))
            .fails(InvalidTimestamp),
        case("tab is visible but not a digit")
            .ts(Some(format!("{SW_TS}\t")))
            .fails(InvalidTimestamp),
        case("fraction (python/js accept)")
            .ts(Some(format!("{SW_TS}.0")))
            .fails(InvalidTimestamp),
        case("trailing garbage (js accepts)")
            .ts(Some(format!("{SW_TS}abc")))
            .fails(InvalidTimestamp),
        case("exponent").ts(Some("1.6e9")).fails(InvalidTimestamp),
        case("hex").ts(Some("0x6038b5f2")).fails(InvalidTimestamp),
        case("milliseconds are far in the future")
            .ts(Some((SW_TS * 1000).to_string()))
            .fails(TimestampTooNew),
        case("beyond i64")
            .ts(Some("9223372036854775808"))
            .fails(InvalidTimestamp),
        // Extremes: no overflow, no panic.
        case("i64::MIN timestamp, i64::MAX now")
            .ts(Some(i64::MIN.to_string()))
            .now(i64::MAX)
            .fails(TimestampTooOld),
        case("i64::MAX timestamp, i64::MIN now")
            .ts(Some(i64::MAX.to_string()))
            .now(i64::MIN)
            .fails(TimestampTooNew),
        case("i64::MAX both")
            .ts(Some(i64::MAX.to_string()))
            .sig(Some(at(i64::MAX)))
            .now(i64::MAX),
        case("i64::MIN both")
            .ts(Some(i64::MIN.to_string()))
            .sig(Some(at(i64::MIN)))
            .now(i64::MIN),
    ]);
}

#[test]
fn signature_lists() {
    use VerifyError::*;
    let tail = &SW_SIG[3..]; // the base64 of the valid tag
    check(vec![
        // The pre-98abef1 reference compared only the common prefix: "v1," passed.
        case("v1, alone").sig(Some("v1,")).fails(InvalidSignature),
        case("v1, alone among decoys")
            .sig(Some(format!("{DECOY} v1, {DECOY_V2}")))
            .fails(InvalidSignature),
        case("prefix of the valid tag")
            .sig(Some(format!("v1,{}", &tail[..20])))
            .fails(InvalidSignature),
        case("valid tag without padding")
            .sig(Some(format!("v1,{}", &tail[..43])))
            .fails(InvalidSignature),
        case("valid tag plus extra padding")
            .sig(Some(format!("{SW_SIG}=")))
            .fails(InvalidSignature),
        case("valid tag plus trailing text")
            .sig(Some(format!("{SW_SIG}AAAA")))
            .fails(InvalidSignature),
        // 'E' -> 'F': same 32 bytes, but non-zero trailing bits (not canonical);
        // the reference compares the text, so it refuses this too.
        case("non-canonical base64 of the valid tag")
            .sig(Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF="))
            .fails(InvalidSignature),
        case("empty signature header")
            .sig(Some(""))
            .fails(InvalidSignature),
        case("only spaces").sig(Some("   ")).fails(InvalidSignature),
        case("no comma")
            .sig(Some(format!("v1{tail}")))
            .fails(InvalidSignature),
        case("v2 entry skipped")
            .sig(Some(format!("v2,{tail}")))
            .fails(InvalidSignature),
        case("V1 is not v1")
            .sig(Some(format!("V1,{tail}")))
            .fails(InvalidSignature),
        case("v1a (asymmetric) skipped")
            .sig(Some(format!("v1a,{tail}")))
            .fails(InvalidSignature),
        case("empty version")
            .sig(Some(format!(",{tail}")))
            .fails(InvalidSignature),
        case("split at the first comma only")
            .sig(Some(format!("v1,,{tail}")))
            .fails(InvalidSignature),
        case("comma-joined entries are one entry")
            .sig(Some(format!("{DECOY},{SW_SIG}")))
            .fails(InvalidSignature),
        case("tab is not a separator")
            .sig(Some(format!("{DECOY}\t{SW_SIG}")))
            .fails(InvalidSignature),
        case("leading and repeated spaces").sig(Some(format!("  {DECOY}   {SW_SIG}  "))),
        case("garbage entries skipped").sig(Some(format!("x y,z v1 ,, {SW_SIG}"))),
        case("valid entry first").sig(Some(format!("{SW_SIG} {DECOY}"))),
        case("valid entry last").sig(Some(format!("{DECOY} {DECOY_V2} {SW_SIG}"))),
        case("the same entry twice").sig(Some(format!("{SW_SIG} {SW_SIG}"))),
    ]);
}

#[test]
fn header_values() {
    use VerifyError::*;
    let s = secret(SW_SECRET);
    check(vec![
        case("non-ascii id (utf-8)")
            .id(Some("msg_\u{e9}"))
            .fails(InvalidHeader(HeaderName::Id)),
        case("non-utf-8 id")
            .id(Some(b"msg_\xff\xfe"))
            .fails(InvalidHeader(HeaderName::Id)),
        case("obs-text byte in signature")
            .sig(Some(format!("{SW_SIG} \u{a0}").as_bytes()))
            .fails(InvalidHeader(HeaderName::Signature)),
        case("nul in id")
            .id(Some(b"msg\x00"))
            .fails(InvalidHeader(HeaderName::Id)),
        case("newline in signature")
            .sig(Some(format!("{SW_SIG}\n")))
            .fails(InvalidHeader(HeaderName::Signature)),
        case("DEL in timestamp")
            .ts(Some(b"1614265330\x7f"))
            .fails(InvalidHeader(HeaderName::Timestamp)),
        case("non-utf-8 timestamp")
            .ts(Some(b"\xc3\x28"))
            .fails(InvalidHeader(HeaderName::Timestamp)),
        // http::HeaderValue::to_str accepts a horizontal tab.
        case("tab in id is visible ascii")
            .id(Some("msg\t1"))
            .sig(Some(sign(&s, "msg\t1", SW_TS, SW_BODY))),
        case("empty id is present and signed")
            .id(Some(""))
            .sig(Some(sign(&s, "", SW_TS, SW_BODY))),
        case("empty id, signature for another id")
            .id(Some(""))
            .fails(InvalidSignature),
    ]);
}

#[test]
fn bodies() {
    use VerifyError::*;
    let s = secret(SW_SECRET);
    let not_utf8: &[u8] = b"\xff\xfe{\"a\":\x80}";
    check(vec![
        // The reference returns InvalidPayload here; parsing is not our job.
        case("non-utf-8 body, signed")
            .body(not_utf8)
            .sig(Some(sign(&s, SW_ID, SW_TS, not_utf8))),
        case("empty body, signed")
            .body(b"")
            .sig(Some(sign(&s, SW_ID, SW_TS, b""))),
        case("body re-serialised")
            .body(br#"{"test":2432232314}"#)
            .fails(InvalidSignature),
        case("body with trailing newline")
            .body(
                br#"{"test": 2432232314}
"#,
            )
            .fails(InvalidSignature),
    ]);
}

#[test]
fn rotation() {
    use VerifyError::*;
    let old = secret(RS_SECRET);
    let both = format!(
        "{} {}",
        sign(&old, SW_ID, SW_TS, SW_BODY),
        SW_SIG, // signed with the new secret
    );
    check(vec![
        case("old and new configured, signed with new").secrets(&[RS_SECRET, SW_SECRET]),
        case("new and old configured, signed with new").secrets(&[SW_SECRET, RS_SECRET]),
        case("old and new configured, signed with old")
            .secrets(&[SW_SECRET, RS_SECRET])
            .sig(Some(sign(&old, SW_ID, SW_TS, SW_BODY))),
        case("only old configured, signed with new")
            .secrets(&[RS_SECRET])
            .fails(InvalidSignature),
        case("sender signs with both, only new configured").sig(Some(&both)),
        case("sender signs with both, only old configured")
            .secrets(&[RS_SECRET])
            .sig(Some(&both)),
        case("prefix or not, same key")
            .secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", SW_SECRET]),
    ]);
}

#[test]
fn from_list() {
    let two = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let rows: [(&str, Result<usize, SecretError>); 12] = [
        (SW_SECRET, Ok(1)),
        (two, Ok(2)),
        (&two.replace(' ', ","), Ok(2)),
        (&two.replace(' ', " , "), Ok(2)),
        (&format!(",, {two} ,\n"), Ok(2)),
        (&format!("{two}\t{SW_SECRET}"), Ok(3)),
        ("", Err(SecretError::Empty)),
        ("  ", Err(SecretError::Empty)),
        (" , ,, ", Err(SecretError::Empty)),
        ("whsec_", Err(SecretError::Empty)),
        (
            &format!("{SW_SECRET},whsec_%%"),
            Err(SecretError::InvalidBase64),
        ),
        (
            &format!("{SW_SECRET};{RS_SECRET}"),
            Err(SecretError::InvalidBase64),
        ),
    ];
    for (list, expected) in rows {
        let got = Verifier::from_list(list).map(|v| format!("{v:?}"));
        let expected = expected.map(|n| format!("Verifier {{ secrets: {n} }}"));
        assert_eq!(got, expected, "{list:?}");
    }

    // The rotated pair verifies either signature.
    let verifier = Verifier::from_list(two).expect("two secrets");
    for (id, ts, body, sig) in [
        (SW_ID, SW_TS, SW_BODY, SW_SIG),
        (RS_ID, RS_TS, RS_BODY, RS_SIG),
    ] {
        let headers = WebhookHeaders {
            id: Some(id),
            timestamp: Some(&ts.to_string()),
            signature: Some(sig),
        };
        assert_eq!(verifier.verify(&headers, body, ts), Ok(()), "{id}");
    }
}

#[test]
fn secrets() {
    let rows: [(&str, Result<(), SecretError>); 16] = [
        (SW_SECRET, Ok(())),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Ok(())),
        ("QQ==", Ok(())), // one byte is enough for HMAC
        ("whsec_QQ==", Ok(())),
        ("", Err(SecretError::Empty)),
        ("whsec_", Err(SecretError::Empty)),
        ("QQ", Err(SecretError::InvalidBase64)), // padding required
        ("QR==", Err(SecretError::InvalidBase64)), // non-zero trailing bits
        (
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            Err(SecretError::InvalidBase64),
        ),
        (
            "Mf-Q9r8GKYqrTwjUPD8ILPZIo2LaLa_w",
            Err(SecretError::InvalidBase64),
        ), // url-safe
        (
            " MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Err(SecretError::InvalidBase64),
        ),
        (
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
            Err(SecretError::InvalidBase64),
        ),
        (
            "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Err(SecretError::InvalidBase64),
        ),
        (
            "whsec_whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Err(SecretError::InvalidBase64),
        ),
        (
            "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Err(SecretError::InvalidBase64),
        ),
        ("====", Err(SecretError::InvalidBase64)),
    ];
    for (text, expected) in rows {
        assert_eq!(Secret::parse(text).map(|_| ()), expected, "{text:?}");
    }
    assert_eq!(Secret::from_bytes(b"").map(|_| ()), Err(SecretError::Empty));
    assert!(Secret::from_bytes(b"k").is_ok());

    for (err, message) in [
        (SecretError::Empty, "webhook secret is empty"),
        (
            SecretError::InvalidBase64,
            "webhook secret is not valid base64",
        ),
    ] {
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn debug_never_shows_the_key() {
    let with_prefix = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let s = secret(with_prefix);
    assert_eq!(format!("{s:?}"), "Secret(..)");
    assert_eq!(format!("{s:#?}"), "Secret(..)");
    let v = Verifier::from_list(&format!("{with_prefix} {RS_SECRET}")).expect("two");
    let shown = format!("{v:?} {v:#?}");
    for needle in [SW_SECRET, &RS_SECRET[6..], "MfKQ", "whsec"] {
        assert!(!shown.contains(needle), "{shown}");
    }
    assert_eq!(format!("{v:?}"), "Verifier { secrets: 2 }");
    // Errors about a bad secret never echo it.
    let bad = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa!!";
    let err = Secret::parse(bad).map(|_| ()).expect_err("invalid");
    assert!(!format!("{err} {err:?}").contains("MfKQ"));
}

// ---------------------------------------------------------------------------
// Properties.

/// Header-safe ids: visible ASCII (tab included), as `http` would pass them.
fn id_strategy() -> impl Strategy<Value = String> {
    "[\t -~]{0,48}"
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Across the 64-byte HMAC block size, where the key is hashed first.
    prop::collection::vec(any::<u8>(), 1..=160)
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=300)
}

fn verify_text(
    verifier: &Verifier,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let headers = WebhookHeaders {
        id: Some(id),
        timestamp: Some(timestamp),
        signature: Some(signature),
    };
    verifier.verify(&headers, body, now)
}

/// Where proptest keeps this module's failures (committed).
const REGRESSIONS: &str = crate::support::regressions_path!("verify");

proptest! {
    #![proptest_config(crate::support::proptest_config(REGRESSIONS))]

    #[test]
    fn sign_matches_an_independent_hmac(
        key in key_strategy(),
        id in id_strategy(),
        ts in any::<i64>(),
        body in body_strategy(),
    ) {
        let secret = Secret::from_bytes(&key).expect("non-empty key");
        let mut message = format!("{id}.{ts}.").into_bytes();
        message.extend_from_slice(&body);
        prop_assert_eq!(sign(&secret, &id, ts, &body), oracle(&key, &message));
        // And through the textual form of the same key.
        let text = format!("whsec_{}", STANDARD.encode(&key));
        prop_assert_eq!(sign(&Secret::parse(&text).expect("canonical"), &id, ts, &body), oracle(&key, &message));
    }

    #[test]
    fn round_trip(
        key in key_strategy(),
        others in prop::collection::vec(key_strategy(), 0..3),
        position in any::<prop::sample::Index>(),
        id in id_strategy(),
        ts in any::<i64>(),
        skew in -TOLERANCE_SECS..=TOLERANCE_SECS,
        body in body_strategy(),
        decoys in 0usize..3,
    ) {
        prop_assume!(ts.checked_add(skew).is_some());
        let secret = Secret::from_bytes(&key).expect("non-empty key");
        let signature = sign(&secret, &id, ts, &body);
        // The right key anywhere among other configured keys.
        let mut secrets: Vec<Secret> = others
            .iter()
            .map(|k| Secret::from_bytes(k).expect("non-empty key"))
            .collect();
        secrets.insert(position.index(secrets.len() + 1), secret);
        let verifier = Verifier::new(secrets);
        let header = std::iter::repeat_n(DECOY, decoys)
            .chain([signature.as_str()])
            .collect::<Vec<_>>()
            .join(" ");
        prop_assert_eq!(
            verify_text(&verifier, &id, &ts.to_string(), &header, &body, ts + skew),
            Ok(())
        );
    }

    #[test]
    fn any_single_byte_change_fails(
        key in key_strategy(),
        id in id_strategy(),
        ts in 0i64..=4_102_444_800,
        body in body_strategy(),
        field in 0usize..4,
        at in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let secret = Secret::from_bytes(&key).expect("non-empty key");
        let verifier = Verifier::new(vec![secret.clone()]);
        let signature = sign(&secret, &id, ts, &body);
        let mut values = [
            id.into_bytes(),
            ts.to_string().into_bytes(),
            signature.into_bytes(),
            body,
        ];
        let target = &mut values[field];
        prop_assume!(!target.is_empty());
        let i = at.index(target.len());
        prop_assume!(target[i] != replacement);
        target[i] = replacement;
        let [id, timestamp, signature, body] = &values;
        let headers = RawWebhookHeaders {
            id: Some(id),
            timestamp: Some(timestamp),
            signature: Some(signature),
        };
        let got = verifier.verify_raw(&headers, body, ts);
        prop_assert!(got.is_err(), "field {} byte {} -> {:?}: {:?}", field, i, replacement, got);
        if field == 0 || field == 3 {
            // An id or body change leaves the headers well-formed unless the
            // new byte is not visible ASCII.
            let visible = (0x20..0x7f).contains(&replacement) || replacement == b'\t';
            let expected = if field == 0 && !visible {
                VerifyError::InvalidHeader(HeaderName::Id)
            } else {
                VerifyError::InvalidSignature
            };
            prop_assert_eq!(got, Err(expected));
        }
    }

    #[test]
    fn tolerance_edges(
        ts in any::<i64>(),
        skew in -(TOLERANCE_SECS + 5)..=(TOLERANCE_SECS + 5),
    ) {
        prop_assume!(ts.checked_add(skew).is_some());
        let secret = Secret::from_bytes(b"key").expect("key");
        let verifier = Verifier::new(vec![secret.clone()]);
        let signature = sign(&secret, "msg", ts, b"{}");
        let now = ts + skew;
        let expected = if skew > TOLERANCE_SECS {
            Err(VerifyError::TimestampTooOld)
        } else if skew < -TOLERANCE_SECS {
            Err(VerifyError::TimestampTooNew)
        } else {
            Ok(())
        };
        prop_assert_eq!(verify_text(&verifier, "msg", &ts.to_string(), &signature, b"{}", now), expected);
    }

    #[test]
    fn arbitrary_headers_never_panic(
        id in proptest::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        timestamp in proptest::option::of(prop::collection::vec(any::<u8>(), 0..24)),
        signature in proptest::option::of(prop::collection::vec(any::<u8>(), 0..200)),
        body in body_strategy(),
        now in any::<i64>(),
    ) {
        let verifier = Verifier::new(vec![secret(SW_SECRET)]);
        let headers = RawWebhookHeaders {
            id: id.as_deref(),
            timestamp: timestamp.as_deref(),
            signature: signature.as_deref(),
        };
        // Random bytes essentially never carry a valid tag.
        prop_assert!(verifier.verify_raw(&headers, &body, now).is_err());
    }

    #[test]
    fn debug_hides_any_key(key in key_strategy()) {
        let encoded = STANDARD.encode(&key);
        let secret = Secret::parse(&format!("whsec_{encoded}")).expect("canonical");
        let verifier = Verifier::new(vec![secret.clone()]);
        let shown = format!("{secret:?} {secret:#?} {verifier:?} {verifier:#?}");
        prop_assert!(!shown.contains(&encoded));
        prop_assert_eq!(format!("{secret:?}"), "Secret(..)");
        prop_assert_eq!(format!("{verifier:?}"), "Verifier { secrets: 1 }");
    }
}
