//! Standard Webhooks verification: no panic on any headers, body and `now`; and what the
//! crate's own signer signs verifies at `now = timestamp`, within ±300 s inclusive, and
//! fails with `invalid_signature` once one body byte is flipped.
#![no_main]

use arbitrary::Arbitrary;
use entitlement_sync::verify::{
    sign, RawWebhookHeaders, Secret, Verifier, VerifyError, WebhookHeaders, TOLERANCE_SECS,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    id: Option<&'a [u8]>,
    timestamp: Option<&'a [u8]>,
    signature: Option<&'a [u8]>,
    body: &'a [u8],
    now: i64,
    secret_text: &'a str,
    key: &'a [u8],
    /// For the round trip: the id (mapped to visible ASCII), the timestamp.
    sign_id: &'a [u8],
    sign_ts: i64,
    flip_at: usize,
    flip_mask: u8,
    junk_entries: Vec<&'a str>,
}

fn visible(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(0x20 + b % 95)).collect()
}

fuzz_target!(|input: Input<'_>| {
    // Any secret text or list: no panic.
    let _ = Secret::parse(input.secret_text);
    let _ = Verifier::from_list(input.secret_text);

    let key: &[u8] = if input.key.is_empty() {
        b"k"
    } else {
        input.key
    };
    let secret = Secret::from_bytes(key).expect("non-empty key");
    let verifier = Verifier::new(vec![secret.clone()]);

    // 1. Arbitrary headers and body: no panic, and an Ok implies the documented checks.
    let raw = RawWebhookHeaders {
        id: input.id,
        timestamp: input.timestamp,
        signature: input.signature,
    };
    let result = verifier.verify_raw(&raw, input.body, input.now);
    if result.is_ok() {
        let ts: i64 = std::str::from_utf8(input.timestamp.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!((i128::from(input.now) - i128::from(ts)).abs() <= i128::from(TOLERANCE_SECS));
    }
    // The text API agrees with the raw one.
    if let (Some(Ok(id)), Some(Ok(ts)), Some(Ok(sig))) = (
        input.id.map(std::str::from_utf8),
        input.timestamp.map(std::str::from_utf8),
        input.signature.map(std::str::from_utf8),
    ) {
        let text = WebhookHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        };
        assert_eq!(verifier.verify(&text, input.body, input.now), result);
    }

    // 2. Round trip with the crate's signer.
    let id = visible(input.sign_id);
    let ts = input.sign_ts;
    let ts_text = ts.to_string();
    let signature = sign(&secret, &id, ts, input.body);
    let headers = |sig: &str, ts_text: &str| -> Result<(), VerifyError> {
        let h = WebhookHeaders {
            id: Some(&id),
            timestamp: Some(ts_text),
            signature: Some(sig),
        };
        verifier.verify(&h, input.body, ts)
    };
    assert_eq!(headers(&signature, &ts_text), Ok(()));
    let h = WebhookHeaders {
        id: Some(&id),
        timestamp: Some(&ts_text),
        signature: Some(&signature),
    };
    if let Some(edge) = ts.checked_add(TOLERANCE_SECS) {
        assert_eq!(verifier.verify(&h, input.body, edge), Ok(()));
    }
    if let Some(edge) = ts.checked_sub(TOLERANCE_SECS) {
        assert_eq!(verifier.verify(&h, input.body, edge), Ok(()));
    }
    if let Some(late) = ts.checked_add(TOLERANCE_SECS + 1) {
        assert_eq!(
            verifier.verify(&h, input.body, late),
            Err(VerifyError::TimestampTooOld)
        );
    }
    if let Some(early) = ts.checked_sub(TOLERANCE_SECS + 1) {
        assert_eq!(
            verifier.verify(&h, input.body, early),
            Err(VerifyError::TimestampTooNew)
        );
    }
    // Leading `+` and zeros are signed as the plain integer.
    if ts >= 0 {
        assert_eq!(headers(&signature, &format!("+0{ts}")), Ok(()));
    }
    // Among other entries (any order), and with a rotated-out secret configured too.
    let junk: Vec<String> = input
        .junk_entries
        .iter()
        .take(4)
        .map(|j| visible(j.as_bytes()).replace(' ', ""))
        .filter(|j| !j.is_empty())
        .collect();
    let mut entries = junk.clone();
    entries.insert(input.flip_at % (entries.len() + 1), signature.clone());
    assert_eq!(headers(&entries.join(" "), &ts_text), Ok(()));
    let other = Secret::from_bytes(b"another secret").unwrap();
    let rotated = Verifier::new(vec![other.clone(), secret.clone()]);
    assert_eq!(rotated.verify(&h, input.body, ts), Ok(()));
    assert_eq!(
        Verifier::new(vec![other]).verify(&h, input.body, ts),
        Err(VerifyError::InvalidSignature),
    );
    // Junk alone never verifies (a junk entry equal to the real one is 2^-256 unlikely).
    if !junk.iter().any(|j| *j == signature) {
        assert_eq!(
            headers(&junk.join(" "), &ts_text),
            Err(VerifyError::InvalidSignature)
        );
    }

    // One flipped body byte: invalid_signature.
    if !input.body.is_empty() {
        let mut body = input.body.to_vec();
        let at = input.flip_at % body.len();
        body[at] ^= input.flip_mask.max(1);
        assert_eq!(
            verifier.verify(&h, &body, ts),
            Err(VerifyError::InvalidSignature)
        );
    }
});
