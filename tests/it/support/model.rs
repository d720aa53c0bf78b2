//! A deliberately naive reference model of PRODUCT.md §3, §4 and §6, written from the
//! text and independent of `src/`: it keeps every snapshot it was given, and recomputes
//! everything from scratch each time by sorting (version instant, status rank, content
//! hash) and walking the list with its own copy of the legality rules.
//!
//! It never calls `grant::transition`, `fold::fold`, `fold::step` or `access::decide`; it
//! works on the test's own [`GrantSpec`]/[`SubSpec`] descriptions, not on parsed values.

use super::{GrantSpec, Reason, St, SubSpec, Timestamp};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The model's version key: (instant, lifecycle rank, SHA-256 of the canonical JSON of
/// `data`). PRODUCT.md §3 asks for "ties broken deterministically, e.g. by status rank
/// then content hash"; the model takes that example literally.
pub type MKey = (Timestamp, u8, [u8; 32]);

/// SHA-256 of the canonical JSON (object keys sorted) of a value.
pub fn content_hash(data: &serde_json::Value) -> [u8; 32] {
    // `serde_json::Value` keeps object keys sorted (no `preserve_order` in this build).
    Sha256::digest(serde_json::to_vec(data).expect("serialisable")).into()
}

/// The key of a grant snapshot.
pub fn grant_key(g: &GrantSpec) -> MKey {
    (g.at, g.status.rank(), content_hash(&g.data()))
}

fn canonical(r: Option<Reason>) -> Option<&'static str> {
    r.map(|r| r.canonical)
}

/// PRODUCT.md §4, grants, read literally:
///
/// - any change of customer, entitlement or business is illegal;
/// - `pending -> delivered | failed | revoked`, `delivered -> revoked`, `failed -> revoked`;
/// - same-status updates are legal, except that a revoked grant's reason may change only
///   from a recoverable one;
/// - `revoked -> delivered` only after a recoverable reason (a missing or unknown reason
///   is not recoverable);
/// - everything else (`delivered -> pending | failed`, `failed -> pending | delivered`,
///   `revoked -> pending | failed`) is illegal.
pub fn legal(prev: &GrantSpec, next: &GrantSpec) -> bool {
    if prev.customer_id != next.customer_id
        || prev.entitlement_id != next.entitlement_id
        || prev.business_id != next.business_id
    {
        return false;
    }
    let recoverable = prev.reason.is_some_and(|r| r.recoverable);
    match (prev.status, next.status) {
        (St::Pending, _) => true,
        (St::Delivered, St::Delivered | St::Revoked) => true,
        (St::Failed, St::Failed | St::Revoked) => true,
        (St::Revoked, St::Delivered) => recoverable,
        (St::Revoked, St::Revoked) => {
            recoverable || canonical(prev.reason) == canonical(next.reason)
        }
        _ => false,
    }
}

/// The model's idea of one grant after all its snapshots.
#[derive(Debug, Clone, Default)]
pub struct GrantFold {
    /// The snapshot that is the state, its key, and when its status began.
    pub state: Option<(GrantSpec, MKey, Timestamp)>,
    /// Keys of the rejected snapshots.
    pub rejected: BTreeSet<MKey>,
    /// Keys of every distinct snapshot.
    pub keys: BTreeSet<MKey>,
    /// Keys applied only because an operator accepted them although illegal.
    pub forced_applied: BTreeSet<MKey>,
}

/// Recomputes a grant from all its snapshots (any order, any duplicates). Snapshots whose
/// key is in `forced` were accepted by an operator: they apply whatever the rules say.
pub fn fold_grant<'a>(
    snaps: impl IntoIterator<Item = &'a GrantSpec>,
    forced: &BTreeSet<MKey>,
) -> GrantFold {
    let mut all: Vec<(MKey, &GrantSpec)> = snaps.into_iter().map(|g| (grant_key(g), g)).collect();
    all.sort_by_key(|a| a.0);
    all.dedup_by(|a, b| a.0 == b.0);
    let mut out = GrantFold::default();
    for (key, g) in all {
        out.keys.insert(key);
        let next = match &out.state {
            None => Some((g.clone(), key, g.at)),
            Some((prev, _, since)) => {
                let ok = legal(prev, g);
                if ok || forced.contains(&key) {
                    if !ok {
                        out.forced_applied.insert(key);
                    }
                    let since = if prev.status == g.status {
                        *since
                    } else {
                        g.at
                    };
                    Some((g.clone(), key, since))
                } else {
                    out.rejected.insert(key);
                    None
                }
            }
        };
        if next.is_some() {
            out.state = next;
        }
    }
    out
}

/// What the model expects a new snapshot's delivery to report (PRODUCT.md §3, §8):
/// `duplicate` if that snapshot was seen, `rejected` if the rules refuse it, `applied` if
/// it changed the state or which snapshots are rejected, `stale` otherwise.
pub fn expected_outcome(before: &GrantFold, after: &GrantFold, key: &MKey) -> &'static str {
    if before.keys.contains(key) {
        "duplicate"
    } else if after.rejected.contains(key) {
        "rejected"
    } else if before.state.as_ref().map(|s| s.1) != after.state.as_ref().map(|s| s.1)
        || before.rejected != after.rejected
    {
        "applied"
    } else {
        "stale"
    }
}

/// The model's access answer (PRODUCT.md §6, default policy, no subscription or payment
/// facts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAccess {
    /// Allowed?
    pub allowed: bool,
    /// Status of the most relevant grant, or `none`.
    pub status: String,
    /// Why not.
    pub reason: Option<String>,
    /// The most relevant grant.
    pub grant_id: Option<String>,
    /// Its `oauth_url`, when pending.
    pub oauth_url: Option<String>,
    /// Number of grants of the pair.
    pub grants: usize,
    /// The most relevant grant's version.
    pub as_of: Option<Timestamp>,
}

/// Access for one pair, given the current snapshot of each of its grants.
///
/// Allowed iff some grant is delivered and its license key (if any) has not expired
/// (`now >= expires_at` is expired). The explanation names the allowing grant with the
/// newest version, else the most relevant denial (delivered, then pending, revoked,
/// failed), newest first; ties by grant id. Reasons: the revocation reason, the failure's
/// `error_code`, `license_key_expired`; none for pending; `no_grant` without grants.
pub fn access(grants: &[&GrantSpec], now: Timestamp) -> ModelAccess {
    let judged: Vec<(&GrantSpec, bool, Option<String>)> = grants
        .iter()
        .map(|g| {
            let (allowed, reason) = match g.status {
                St::Delivered => match g.license.flatten() {
                    Some(until) if now >= until => (false, Some("license_key_expired".into())),
                    _ => (true, None),
                },
                St::Pending => (false, None),
                St::Failed => (
                    false,
                    Some(g.error_code.clone().unwrap_or_else(|| "failed".into())),
                ),
                St::Revoked => (
                    false,
                    Some(canonical(g.reason).unwrap_or("revoked").to_string()),
                ),
            };
            (*g, allowed, reason)
        })
        .collect();
    let relevance = |s: St| match s {
        St::Delivered => 0,
        St::Pending => 1,
        St::Revoked => 2,
        St::Failed => 3,
    };
    let best = judged.iter().min_by(|a, b| {
        let ka = (
            !a.1,
            relevance(a.0.status),
            std::cmp::Reverse(a.0.at),
            &a.0.id,
        );
        let kb = (
            !b.1,
            relevance(b.0.status),
            std::cmp::Reverse(b.0.at),
            &b.0.id,
        );
        ka.cmp(&kb)
    });
    match best {
        None => ModelAccess {
            allowed: false,
            status: "none".into(),
            reason: Some("no_grant".into()),
            grant_id: None,
            oauth_url: None,
            grants: 0,
            as_of: None,
        },
        Some((g, allowed, reason)) => ModelAccess {
            allowed: *allowed,
            status: g.status.canonical().into(),
            reason: reason.clone(),
            grant_id: Some(g.id.clone()),
            oauth_url: if g.status == St::Pending {
                g.oauth_url.clone()
            } else {
                None
            },
            grants: grants.len(),
            as_of: Some(g.at),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

/// Terminal subscription statuses (a re-purchase is a new subscription).
pub fn sub_terminal(status: &str) -> bool {
    matches!(status, "cancelled" | "failed" | "expired")
}

/// PRODUCT.md §4, subscriptions: `pending` may move to any other status; `active`,
/// `on_hold`, `paused` and `past_due` move among each other and to `cancelled` or
/// `expired`; nothing returns to `pending`; `cancelled`, `failed` and `expired` are
/// terminal. Same-status updates are legal. A status the text does not know is treated
/// like the middle group (it may be followed by anything but `pending` and `failed`).
/// The customer may not change.
pub fn sub_legal(prev: &SubSpec, next: &SubSpec) -> bool {
    if prev.customer_id != next.customer_id {
        return false;
    }
    let (a, b) = (prev.status.canonical, next.status.canonical);
    if a == b {
        return true;
    }
    if sub_terminal(a) || b == "pending" {
        return false;
    }
    a == "pending" || b != "failed"
}

/// The model's subscription after all its snapshots, for histories whose distinct
/// snapshots have distinct instants: the state and the instants of the rejected ones.
pub fn fold_subscription<'a>(
    snaps: impl IntoIterator<Item = &'a SubSpec>,
) -> (Option<SubSpec>, BTreeSet<Timestamp>) {
    let mut all: Vec<&SubSpec> = snaps.into_iter().collect();
    all.sort_by_key(|s| s.at);
    all.dedup_by(|a, b| a == b);
    let mut state: Option<SubSpec> = None;
    let mut rejected = BTreeSet::new();
    for s in all {
        match &state {
            None => state = Some(s.clone()),
            Some(prev) if sub_legal(prev, s) => state = Some(s.clone()),
            Some(_) => {
                rejected.insert(s.at);
            }
        }
    }
    (state, rejected)
}
