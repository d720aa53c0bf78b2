//! A deliberately naive reference model of PRODUCT.md §3, §4 and §6, written from the
//! text and independent of `src/`: it keeps every snapshot it was given, and recomputes
//! everything from scratch each time by sorting (version instant, status rank, content
//! hash) and walking the list with its own copy of the legality rules.
//!
//! It never calls `grant::transition`, `fold::fold`, `fold::step` or `access::decide`; it
//! works on the test's own [`GrantSpec`]/[`SubSpec`] descriptions, not on parsed values.

use super::{GrantSpec, PaymentRefunds, PaymentSpec, Reason, RefundSpec, St, SubSpec, Timestamp};
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
/// - any change of customer, entitlement or business is illegal, and a snapshot that
///   leaves out a business the grant had is such a change (docs/semantics.md);
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
        || (prev.business_id.is_some() && prev.business_id != next.business_id)
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

/// What the model needs of a family's snapshot description.
pub trait Family: Clone {
    /// Its version key (instant, lifecycle rank, content hash).
    fn key(&self) -> MKey;
    /// The canonical status, to tell when the current status began.
    fn status(&self) -> &'static str;
    /// The version instant.
    fn at(&self) -> Timestamp {
        self.key().0
    }
    /// May the object move from `prev` to `next`?
    fn legal(prev: &Self, next: &Self) -> bool;
}

impl Family for GrantSpec {
    fn key(&self) -> MKey {
        grant_key(self)
    }
    fn status(&self) -> &'static str {
        self.status.canonical()
    }
    fn legal(prev: &Self, next: &Self) -> bool {
        legal(prev, next)
    }
}

/// Subscription lifecycle rank (docs/semantics.md, "Ordering"): pending < active <
/// past_due < on_hold = paused < unknown < terminal.
pub fn sub_rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "active" => 1,
        "past_due" => 2,
        "on_hold" | "paused" => 3,
        "cancelled" | "failed" | "expired" => 5,
        _ => 4,
    }
}

impl Family for SubSpec {
    fn key(&self) -> MKey {
        (
            self.at,
            sub_rank(self.status.canonical),
            content_hash(&self.data()),
        )
    }
    fn status(&self) -> &'static str {
        self.status.canonical
    }
    fn legal(prev: &Self, next: &Self) -> bool {
        sub_legal(prev, next)
    }
}

/// Payments: the newest snapshot wins (no transition is illegal).
impl Family for PaymentSpec {
    fn key(&self) -> MKey {
        (self.at, 0, content_hash(&self.data()))
    }
    fn status(&self) -> &'static str {
        "succeeded"
    }
    fn legal(_: &Self, _: &Self) -> bool {
        true
    }
}

/// Refund lifecycle rank (docs/semantics.md, "Ordering"): pending < review < unknown <
/// succeeded = failed.
pub fn refund_rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "review" => 1,
        "succeeded" | "failed" => 3,
        _ => 2,
    }
}

/// Refunds: the newest snapshot wins; snapshots of one instant in lifecycle order.
impl Family for RefundSpec {
    fn key(&self) -> MKey {
        (
            self.at,
            refund_rank(self.status),
            content_hash(&self.data()),
        )
    }
    fn status(&self) -> &'static str {
        self.status
    }
    fn legal(_: &Self, _: &Self) -> bool {
        true
    }
}

/// The model's idea of one object after all its snapshots.
#[derive(Debug, Clone)]
pub struct Fold<S> {
    /// The snapshot that is the state, its key, and when its status began.
    pub state: Option<(S, MKey, Timestamp)>,
    /// Keys of the rejected snapshots.
    pub rejected: BTreeSet<MKey>,
    /// Keys of every distinct snapshot.
    pub keys: BTreeSet<MKey>,
    /// Keys applied only because an operator accepted them although illegal.
    pub forced_applied: BTreeSet<MKey>,
}

impl<S> Default for Fold<S> {
    fn default() -> Self {
        Fold {
            state: None,
            rejected: BTreeSet::new(),
            keys: BTreeSet::new(),
            forced_applied: BTreeSet::new(),
        }
    }
}

/// The model's idea of one grant.
pub type GrantFold = Fold<GrantSpec>;

/// Recomputes an object from all its snapshots (any order, any duplicates): sort by key,
/// drop repeated keys, walk the list applying what is legal. Snapshots whose key is in
/// `forced` were accepted by an operator: they apply whatever the rules say.
pub fn fold<'a, S: Family + 'a>(
    snaps: impl IntoIterator<Item = &'a S>,
    forced: &BTreeSet<MKey>,
) -> Fold<S> {
    fold_keyed(snaps.into_iter().map(|g| (g.key(), g)), forced)
}

/// [`fold`] of snapshots whose keys are already known.
pub fn fold_keyed<'a, S: Family + 'a>(
    snaps: impl IntoIterator<Item = (MKey, &'a S)>,
    forced: &BTreeSet<MKey>,
) -> Fold<S> {
    let mut all: Vec<(MKey, &S)> = snaps.into_iter().collect();
    all.sort_by_key(|a| a.0);
    all.dedup_by(|a, b| a.0 == b.0);
    let mut out = Fold::default();
    for (key, g) in all {
        out.keys.insert(key);
        let next = match &out.state {
            None => Some((g.clone(), key, g.at())),
            Some((prev, _, since)) => {
                let ok = S::legal(prev, g);
                if ok || forced.contains(&key) {
                    if !ok {
                        out.forced_applied.insert(key);
                    }
                    let since = if prev.status() == g.status() {
                        *since
                    } else {
                        g.at()
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

/// [`fold`] of a grant's snapshots.
pub fn fold_grant<'a>(
    snaps: impl IntoIterator<Item = &'a GrantSpec>,
    forced: &BTreeSet<MKey>,
) -> GrantFold {
    fold(snaps, forced)
}

/// What the model expects a new snapshot's delivery to report (PRODUCT.md §3, §8):
/// `duplicate` if that snapshot was seen, `rejected` if the rules refuse it, `applied` if
/// it changed the state or which snapshots are rejected, `stale` otherwise.
pub fn expected_outcome<S>(before: &Fold<S>, after: &Fold<S>, key: &MKey) -> &'static str {
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

/// The model's access answer (PRODUCT.md §6, docs/semantics.md "Access").
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
    /// Until when an on_hold grace keeps access.
    pub grace_until: Option<Timestamp>,
}

/// What the model knows of a grant's subscription: its status, the version of that
/// snapshot, and when the status began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubFacts {
    /// Canonical status.
    pub status: &'static str,
    /// Version of the snapshot that is the state.
    pub as_of: Timestamp,
    /// When the current status began.
    pub since: Timestamp,
}

/// One grant of a pair with what the policy may use.
#[derive(Debug, Clone)]
pub struct GrantFacts<'a> {
    /// The grant's current snapshot.
    pub grant: &'a GrantSpec,
    /// Its subscription's state, if known.
    pub subscription: Option<SubFacts>,
    /// When its payment was refunded in full, if it was.
    pub refunded_at: Option<Timestamp>,
}

/// The policy knobs the model knows: the defaults (backstop on, refunds deny, disputes
/// never), with an optional on_hold grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPolicy {
    /// `on_hold` grace.
    pub grace: Option<chrono::Duration>,
}

/// When a payment is refunded in full, by its own snapshot (docs/semantics.md: a
/// `refunds[]` entry that succeeded and is not partial, or `refund_status: full`, which
/// counts once the last refund that adds up to it was made). A listed refund counts from
/// its `created_at`, or from the version of the refund's own snapshot (`own`: its version,
/// and whether it failed) if that is later: it was made by then. The newest word on a
/// refund wins: when its own snapshot is newer than this payment snapshot and says it
/// failed, the payment's listing of it says nothing, and neither does `refund_status: full`.
pub fn payment_refunded_at(
    p: &PaymentSpec,
    own: impl Fn(&str) -> Option<(Timestamp, bool)>,
) -> Option<Timestamp> {
    let listed_refunds = match p.refunds {
        PaymentRefunds::None => 0,
        PaymentRefunds::Full(_) | PaymentRefunds::Partial(_) => 1,
        PaymentRefunds::FullByParts(..) => 2,
    };
    let withdrawn =
        |n: usize| own(&p.refund_ids[n]).is_some_and(|(at, failed)| failed && at > p.at);
    if (0..listed_refunds).any(withdrawn) {
        return None;
    }
    let listed = |n: usize, at: Timestamp| own(&p.refund_ids[n]).map_or(at, |(o, _)| o.max(at));
    match p.refunds {
        PaymentRefunds::None | PaymentRefunds::Partial(_) => None,
        PaymentRefunds::Full(at) => Some(listed(0, at)),
        PaymentRefunds::FullByParts(a, b) => Some(listed(0, a).max(listed(1, b))),
    }
}

/// Does a refund's current state refund its payment in full (succeeded, not partial)?
pub fn refund_is_full(r: &RefundSpec) -> bool {
    r.status == "succeeded" && !r.partial
}

/// Subscription statuses the backstop denies on.
const BACKSTOP: [&str; 5] = ["on_hold", "paused", "cancelled", "expired", "failed"];

/// The verdict on one grant: (allowed, reason, grace_until).
type Judgement = (bool, Option<String>, Option<Timestamp>);

/// Judges one grant.
fn judge(f: &GrantFacts<'_>, policy: ModelPolicy, now: Timestamp) -> Judgement {
    let g = f.grant;
    // The policy only uses facts newer than the grant's own version.
    let newer = |t: Timestamp| t > g.at;
    let in_grace = |began: Timestamp| policy.grace.map(|d| began + d).filter(|until| now < *until);
    match g.status {
        St::Pending => (false, None, None),
        St::Failed => (
            false,
            Some(g.error_code.clone().unwrap_or_else(|| "failed".into())),
            None,
        ),
        St::Revoked => {
            let reason = canonical(g.reason);
            // A newer subscription snapshot in another denying status ends the hold.
            let hold_ended = f.subscription.as_ref().is_some_and(|s| {
                newer(s.as_of) && BACKSTOP.contains(&s.status) && s.status != "on_hold"
            });
            if reason == Some("subscription_on_hold") && !hold_ended {
                // The hold began when the subscription went on_hold, else when the grant
                // was revoked (these snapshots carry `revoked_at` = their version).
                let began = match &f.subscription {
                    Some(s) if s.status == "on_hold" => s.since,
                    _ => g.at,
                };
                if let Some(until) = in_grace(began) {
                    // Kept by the grace, it is held to its license key and its payment
                    // as a delivered grant is.
                    return denied_by_facts(f, now).unwrap_or((true, None, Some(until)));
                }
            }
            (false, Some(reason.unwrap_or("revoked").to_string()), None)
        }
        St::Delivered => {
            if let Some(denied) = denied_by_facts(f, now) {
                return denied;
            }
            if let Some(s) = &f.subscription {
                if BACKSTOP.contains(&s.status) && newer(s.as_of) {
                    if s.status == "on_hold" {
                        if let Some(until) = in_grace(s.since) {
                            return (true, None, Some(until));
                        }
                    }
                    return (false, Some(format!("subscription_{}", s.status)), None);
                }
            }
            (true, None, None)
        }
    }
}

/// What denies a grant its status allows, besides its subscription: an expired license
/// key, a newer full refund of a one-time purchase.
fn denied_by_facts(f: &GrantFacts<'_>, now: Timestamp) -> Option<Judgement> {
    let g = f.grant;
    if g.license.flatten().is_some_and(|until| now >= until) {
        return Some((false, Some("license_key_expired".into()), None));
    }
    // Refunds deny only a one-time purchase's grants.
    if g.subscription_id.is_none() && f.refunded_at.is_some_and(|t| t > g.at) {
        return Some((false, Some("refund".into()), None));
    }
    None
}

/// Access for one pair, given the current snapshot of each of its grants and what is
/// known of their subscriptions and payments.
///
/// Allowed iff some grant is delivered, its license key (if any) has not expired
/// (`now >= expires_at` is expired) and the policy does not deny it. The explanation
/// names an allowing grant (a delivered one before a revoked one the grace keeps), else
/// the most relevant denial (delivered, then pending, revoked, failed); newest first
/// within each status, ties by grant id. Reasons:
/// the revocation reason, the failure's `error_code`, `license_key_expired`, `refund`,
/// `subscription_<status>`; none for pending; `no_grant` without grants.
pub fn access(grants: &[GrantFacts<'_>], policy: ModelPolicy, now: Timestamp) -> ModelAccess {
    let judged: Vec<(&GrantSpec, Judgement)> = grants
        .iter()
        .map(|f| (f.grant, judge(f, policy, now)))
        .collect();
    let relevance = |s: St| match s {
        St::Delivered => 0,
        St::Pending => 1,
        St::Revoked => 2,
        St::Failed => 3,
    };
    let best = judged.iter().min_by_key(|(g, (allowed, _, _))| {
        (
            !allowed,
            relevance(g.status),
            std::cmp::Reverse(g.at),
            &g.id,
        )
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
            grace_until: None,
        },
        Some((g, (allowed, reason, grace_until))) => ModelAccess {
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
            grace_until: *grace_until,
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
    // A snapshot without a customer may not follow one with it (as for a grant's business).
    (prev.customer_id.is_none() || prev.customer_id == next.customer_id)
        && sub_status_legal(prev.status.canonical, next.status.canonical)
}

/// The status part of [`sub_legal`], on canonical status names: the one copy of the
/// subscription table in the tests.
pub fn sub_status_legal(a: &str, b: &str) -> bool {
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
    let f = fold(snaps, &BTreeSet::new());
    (
        f.state.map(|(s, _, _)| s),
        f.rejected.iter().map(|k| k.0).collect(),
    )
}
