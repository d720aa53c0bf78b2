//! Synthetic deliveries for benchmarks (`entsync bench`, `benches/`). Deterministic:
//! the same arguments give the same bytes.

use crate::store::ObjectRow;
use crate::Delivery;

/// A small deterministic PRNG (SplitMix64), so runs are comparable: the one the
/// benchmarks, the load generator and the forwarder's jitter share. Any seed works.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 for `n = 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// `prefix` followed by `len` random ASCII letters and digits (Dodo-like ids).
    pub fn ident(&mut self, prefix: &str, len: usize) -> String {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = String::with_capacity(prefix.len() + len);
        s.push_str(prefix);
        for _ in 0..len {
            s.push(ALNUM[self.below(ALNUM.len())] as char);
        }
        s
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Entitlements in the synthetic catalogue.
pub const ENTITLEMENTS: usize = 20;

/// The `i`th synthetic customer id.
pub fn customer(i: usize) -> String {
    format!("cus_{i:010}")
}
/// The `i`th synthetic entitlement id.
pub fn entitlement(i: usize) -> String {
    format!("ent_{i:04}")
}

/// A realistic grant delivery (pretty-printed like Dodo's, ~1 KB): grant `n` of
/// customer `n % customers`, webhook id `msg_<seq>`.
pub fn grant_delivery(
    n: usize,
    customers: usize,
    seq: usize,
    rng: &mut Rng,
    received_at: crate::wire::Timestamp,
) -> Delivery {
    let (status, data) = grant_data(n, customers, seq, rng);
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "business_id": "bus_bench",
        "type": format!("entitlement_grant.{}", status.to_lowercase()),
        "timestamp": "2026-05-01T10:25:33.000000Z",
        "data": data,
    }))
    .unwrap_or_default();
    Delivery::new(format!("msg_{seq:012}"), body, received_at)
}

/// The `objects` row the store holds for [`grant_delivery`]`(n, customers, seq, rng, _)`
/// once it is applied (the typed snapshot as JSON, versioned by its `updated_at`): for
/// building an [`crate::index::Index`] directly, without a store. Same draws from `rng`
/// as [`grant_delivery`].
pub fn grant_row(n: usize, customers: usize, seq: usize, rng: &mut Rng) -> ObjectRow {
    let (_, data) = grant_data(n, customers, seq, rng);
    let grant: crate::event::Grant = serde_json::from_value(data).unwrap_or_else(|e| {
        unreachable!("the synthetic grant always parses: {e}");
    });
    let as_of = grant
        .updated_at
        .map(|t| crate::wire::format_timestamp(&t))
        .unwrap_or_default();
    ObjectRow {
        kind: "grant".into(),
        id: grant.id.clone(),
        since: as_of.clone(),
        as_of,
        body: serde_json::to_string(&grant).unwrap_or_default(),
    }
}

/// The `data` of synthetic grant `n` and its status.
fn grant_data(
    n: usize,
    customers: usize,
    seq: usize,
    rng: &mut Rng,
) -> (&'static str, serde_json::Value) {
    let cus = customer(n % customers.max(1));
    let ent = entitlement(rng.below(ENTITLEMENTS));
    let status = if rng.below(10) < 8 {
        "Delivered"
    } else {
        "Revoked"
    };
    let reason = if status == "Revoked" {
        "\"subscription_cancelled\""
    } else {
        "null"
    };
    let data = serde_json::json!({
        "payload_type": "EntitlementGrant",
        "id": format!("grant_{n:012}"),
        "business_id": "bus_bench",
        "entitlement_id": ent,
        "customer_id": cus,
        "external_id": null,
        "payment_id": format!("pay_{n:012}"),
        "subscription_id": null,
        "status": status,
        "revocation_reason": serde_json::from_str::<serde_json::Value>(reason).unwrap_or_default(),
        "license_key": null,
        "digital_product_delivery": null,
        "delivered_at": "2026-05-01T10:25:33Z",
        "revoked_at": null,
        "error_code": null,
        "error_message": null,
        "oauth_url": null,
        "oauth_expires_at": null,
        "metadata": {"plan": "pro", "seats": 3, "beta": true},
        "created_at": "2026-05-01T10:25:33Z",
        "updated_at": format!("2026-05-01T10:{:02}:{:02}.{:06}Z", (seq / 60) % 60, seq % 60, seq % 1_000_000),
    });
    (status, data)
}
