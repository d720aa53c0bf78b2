//! The pure access decision: `has_access(customer, entitlement, now)`.
//!
//! A pair is allowed iff some grant for it is `delivered`, its license key (if any) has
//! not expired at `now` (`now >= expires_at` is expired), and the [`Policy`] does not deny
//! it. Several grants: the OR over them. The answer says why, naming the most relevant
//! grant. Time is a parameter: expiry and grace are computed here, at read time, from
//! stored dates; nothing is scheduled.
//!
//! What the policy may use besides the grant itself, each only when it is known from a
//! snapshot **newer** than the grant's own version (so a later grant restoration wins):
//!
//! - the linked subscription (the *backstop*, on by default): `on_hold`, `paused`,
//!   `cancelled`, `expired` or `failed` deny with reason `subscription_<status>`, before
//!   the grant's own revocation arrives; `active`/`past_due` do not;
//! - a grace period for `on_hold` (off by default): access is kept for that long after
//!   the hold began, also when Dodo has already revoked the grant for
//!   `subscription_on_hold`;
//! - a full refund of the grant's one-time payment (on by default): reason `refund`;
//! - disputes of the grant's payment (`never` by default, `on_lost`, `on_opened`):
//!   reason `dispute`.

use crate::event::{Grant, GrantStatus, RevocationReason, SubscriptionStatus};
use crate::wire::Timestamp;
use chrono::Duration;
use serde::Serialize;

/// When disputes deny access to the disputed payment's grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputePolicy {
    /// Disputes never deny (Dodo itself does not revoke on disputes).
    #[default]
    Never,
    /// Deny once the dispute is lost or accepted.
    OnLost,
    /// Deny while a dispute is open, and once it is lost.
    OnOpened,
}

impl std::str::FromStr for DisputePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match crate::wire::normalize(s).as_str() {
            "never" => Ok(DisputePolicy::Never),
            "on_lost" => Ok(DisputePolicy::OnLost),
            "on_opened" => Ok(DisputePolicy::OnOpened),
            other => Err(format!(
                "unknown dispute policy {other:?} (expected never, on_lost or on_opened)"
            )),
        }
    }
}

/// The access policy. `Policy::default()` is the safe default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Deny a delivered grant whose subscription is known (newer than the grant) to be
    /// `on_hold`, `paused`, `cancelled`, `expired` or `failed`. Default: on.
    pub subscription_backstop: bool,
    /// Keep access this long after an `on_hold` began. Default: none.
    pub on_hold_grace: Option<Duration>,
    /// Deny grants of a fully refunded one-time payment (grants linked to a
    /// subscription are left to the subscription backstop). Default: on.
    pub refund_denies: bool,
    /// Disputes. Default: never.
    pub disputes: DisputePolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            subscription_backstop: true,
            on_hold_grace: None,
            refund_denies: true,
            disputes: DisputePolicy::Never,
        }
    }
}

/// What is known about a grant's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionFacts {
    /// The subscription id.
    pub subscription_id: String,
    /// Its current status.
    pub status: SubscriptionStatus,
    /// The version (envelope timestamp) of the snapshot that is its state.
    pub as_of: Timestamp,
    /// When its current status began.
    pub since: Timestamp,
}

/// What is known about a grant's payment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PaymentFacts {
    /// When it was refunded in full (a succeeded, non-partial refund, or a payment
    /// snapshot whose `refund_status` is `full`).
    pub refunded_at: Option<Timestamp>,
    /// The newest report of a lost or accepted dispute (its version: the dispute's
    /// snapshot, or the payment snapshot that lists it).
    pub lost_dispute_at: Option<Timestamp>,
    /// The newest report of a dispute still open (opened or challenged).
    pub open_dispute_at: Option<Timestamp>,
}

/// What the decision reads of a grant's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionView<'a> {
    /// Its current status.
    pub status: &'a SubscriptionStatus,
    /// The version (envelope timestamp) of the snapshot that is its state.
    pub as_of: Timestamp,
    /// When its current status began.
    pub since: Timestamp,
}

impl<'a> From<&'a SubscriptionFacts> for SubscriptionView<'a> {
    fn from(s: &'a SubscriptionFacts) -> Self {
        SubscriptionView {
            status: &s.status,
            as_of: s.as_of,
            since: s.since,
        }
    }
}

/// What the decision ([`allowed`], and [`decide`]'s verdict) reads of one grant of the
/// pair: its own fields that bear on access, and what the policy may use besides.
#[derive(Debug, Clone, Copy)]
pub struct GrantFacts<'a> {
    /// The grant's status.
    pub status: &'a GrantStatus,
    /// Why it was revoked, for a revoked grant.
    pub revocation_reason: Option<&'a RevocationReason>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// The failure's code.
    pub error_code: Option<&'a str>,
    /// Its license key's expiry, if any.
    pub license_key_expires_at: Option<Timestamp>,
    /// Not linked to a subscription (a one-time purchase's grant).
    pub one_time: bool,
    /// The grant's version instant.
    pub version: Timestamp,
    /// Its subscription, if known.
    pub subscription: Option<SubscriptionView<'a>>,
    /// Its payment, if known.
    pub payment: Option<&'a PaymentFacts>,
}

/// One grant of the pair as the answer shows it: the [`GrantFacts`] the decision reads,
/// and what only the explanation prints.
#[derive(Debug, Clone, Copy)]
pub struct GrantView<'a> {
    /// What the decision reads.
    pub facts: GrantFacts<'a>,
    /// The grant id.
    pub id: &'a str,
    /// Its subscription's id, if any (`facts.one_time` is its absence).
    pub subscription_id: Option<&'a str>,
    /// Where the customer completes delivery; printed for a pending grant only.
    pub oauth_url: Option<&'a str>,
}

impl<'a> GrantView<'a> {
    /// The view of a whole decoded grant snapshot, versioned `version`, with its
    /// subscription and payment facts if known.
    pub fn of(
        grant: &'a Grant,
        version: Timestamp,
        subscription: Option<&'a SubscriptionFacts>,
        payment: Option<&'a PaymentFacts>,
    ) -> Self {
        GrantView {
            facts: GrantFacts {
                status: &grant.status,
                revocation_reason: grant.revocation_reason.as_ref(),
                revoked_at: grant.revoked_at,
                error_code: grant.error_code.as_deref(),
                license_key_expires_at: grant.license_key.as_ref().and_then(|k| k.expires_at),
                one_time: grant.subscription_id.is_none(),
                version,
                subscription: subscription.map(SubscriptionView::from),
                payment,
            },
            id: &grant.id,
            subscription_id: grant.subscription_id.as_deref(),
            oauth_url: grant.oauth_url.as_deref(),
        }
    }
}

/// The access answer, as the CLI and the HTTP API print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Access {
    /// The decision.
    pub allowed: bool,
    /// The customer asked about.
    pub customer_id: String,
    /// The entitlement asked about.
    pub entitlement_id: String,
    /// Status of the most relevant grant: `delivered`, `pending`, `failed`, `revoked`, or
    /// `none` when there is no grant.
    pub status: String,
    /// Why not (null when allowed or pending): the revocation reason, the failure's
    /// `error_code`, `license_key_expired`, `subscription_<status>`, `refund`, `dispute`,
    /// `no_grant`.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reason: Option<String>,
    /// The most relevant grant.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub grant_id: Option<String>,
    /// For a pending grant: where the customer completes delivery.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub oauth_url: Option<String>,
    /// For a failed grant: the error code.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error_code: Option<String>,
    /// The grant's license key expiry, if any.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub license_key_expires_at: Option<Timestamp>,
    /// The grant's subscription, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub subscription_id: Option<String>,
    /// That subscription's status, if known.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub subscription_status: Option<String>,
    /// Access kept by the on_hold grace period until then.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub grace_until: Option<Timestamp>,
    /// How many grants the pair has.
    pub grants: usize,
    /// Freshness: the version (`updated_at`) of the most relevant grant.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub as_of: Option<Timestamp>,
    /// The instant the answer was computed for.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub evaluated_at: Timestamp,
}

/// Why a grant does not allow, without allocating: the answer's `reason` text.
#[derive(Debug, Clone, Copy)]
enum Reason<'a> {
    /// The text itself.
    Text(&'a str),
    /// `subscription_<status>`.
    Subscription(&'a SubscriptionStatus),
}

impl Reason<'_> {
    fn text(self) -> String {
        match self {
            Reason::Text(s) => s.to_string(),
            Reason::Subscription(s) => format!("subscription_{s}"),
        }
    }
}

/// The verdict on one grant.
struct Judgement<'a> {
    allowed: bool,
    reason: Option<Reason<'a>>,
    grace_until: Option<Timestamp>,
}

impl<'a> Judgement<'a> {
    fn deny(reason: Reason<'a>) -> Self {
        Judgement {
            allowed: false,
            reason: Some(reason),
            grace_until: None,
        }
    }
    fn allow() -> Self {
        Judgement {
            allowed: true,
            reason: None,
            grace_until: None,
        }
    }
}

/// Whether a subscription in `status` can bear on any answer: only the statuses the
/// backstop denies on (and `on_hold`'s grace) do. A subscription moving between two
/// statuses that cannot (`active`, `past_due`, `pending`, unknown ones) changes no answer
/// under any policy, whatever its versions.
pub fn subscription_status_matters(status: &SubscriptionStatus) -> bool {
    backstop_denies(status)
}

/// A subscription status that the backstop denies on.
fn backstop_denies(status: &SubscriptionStatus) -> bool {
    use SubscriptionStatus::*;
    matches!(status, OnHold | Paused | Cancelled | Expired | Failed)
}

/// The end of the on-hold grace that began at `began`, while it lasts at `now`. A grace
/// that would end past the last representable instant lasts to that instant.
fn on_hold_grace(policy: &Policy, began: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let until = began
        .checked_add_signed(policy.on_hold_grace?)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    (now < until).then_some(until)
}

fn judge<'a>(view: &GrantFacts<'a>, policy: &Policy, now: Timestamp) -> Judgement<'a> {
    judge_with(view, policy, now, true)
}

/// [`judge`], with `facts: false` blind to what [`deny_by_facts`] denies on: the grace a
/// grant is in even while its license key or payment denies it, whose end changes the
/// reason of the denial (see [`next_change`]).
fn judge_with<'a>(
    view: &GrantFacts<'a>,
    policy: &Policy,
    now: Timestamp,
    facts: bool,
) -> Judgement<'a> {
    let newer = |t: Timestamp| t > view.version;
    match view.status {
        GrantStatus::Delivered => {}
        GrantStatus::Pending => {
            return Judgement {
                allowed: false,
                reason: None,
                grace_until: None,
            }
        }
        GrantStatus::Failed => {
            return Judgement::deny(Reason::Text(view.error_code.unwrap_or("failed")))
        }
        GrantStatus::Revoked => {
            let reason = view.revocation_reason;
            // With the backstop on, the hold is over when the subscription is known,
            // from a snapshot newer than the revocation, to have moved on to another
            // denying status (cancelled, expired, paused, failed): no grace then, as for
            // a delivered grant of that subscription. With it off, the subscription is
            // not consulted to deny, and the grace runs its course.
            let hold_ended = policy.subscription_backstop
                && view.subscription.is_some_and(|s| {
                    newer(s.as_of)
                        && backstop_denies(s.status)
                        && *s.status != SubscriptionStatus::OnHold
                });
            let grace = (reason == Some(&RevocationReason::SubscriptionOnHold) && !hold_ended)
                .then(|| {
                    let began = view
                        .subscription
                        .filter(|s| *s.status == SubscriptionStatus::OnHold)
                        .map(|s| s.since)
                        .or(view.revoked_at)
                        .unwrap_or(view.version);
                    on_hold_grace(policy, began, now)
                })
                .flatten();
            let Some(until) = grace else {
                return Judgement::deny(Reason::Text(reason.map_or("revoked", |r| r.as_str())));
            };
            // Kept by the grace, it is held to everything a delivered grant is held to
            // (its license key, its payment); the subscription's hold is what the grace
            // is for.
            if let Some(denied) = facts.then(|| deny_by_facts(view, policy, now)).flatten() {
                return denied;
            }
            return Judgement {
                grace_until: Some(until),
                ..Judgement::allow()
            };
        }
        GrantStatus::Other(s) => return Judgement::deny(Reason::Text(s)),
    }
    if let Some(denied) = facts.then(|| deny_by_facts(view, policy, now)).flatten() {
        return denied;
    }
    if let Some(s) = view.subscription {
        if policy.subscription_backstop && backstop_denies(s.status) && newer(s.as_of) {
            if *s.status == SubscriptionStatus::OnHold {
                if let Some(until) = on_hold_grace(policy, s.since, now) {
                    return Judgement {
                        grace_until: Some(until),
                        ..Judgement::allow()
                    };
                }
            }
            return Judgement::deny(Reason::Subscription(s.status));
        }
    }
    Judgement::allow()
}

/// What denies a grant that its status allows, besides its subscription: an expired
/// license key, a full refund of its one-time payment, a dispute the policy counts.
fn deny_by_facts<'a>(
    view: &GrantFacts<'a>,
    policy: &Policy,
    now: Timestamp,
) -> Option<Judgement<'a>> {
    let newer = |t: Timestamp| t > view.version;
    if let Some(expires) = view.license_key_expires_at {
        if now >= expires {
            return Some(Judgement::deny(Reason::Text("license_key_expired")));
        }
    }
    let p = view.payment?;
    // Only a one-time purchase's grants: Dodo revokes on refunds for those alone; a
    // subscription's grants follow the subscription.
    if policy.refund_denies && view.one_time && p.refunded_at.is_some_and(newer) {
        return Some(Judgement::deny(Reason::Text("refund")));
    }
    let disputed = match policy.disputes {
        DisputePolicy::Never => None,
        DisputePolicy::OnLost => p.lost_dispute_at,
        DisputePolicy::OnOpened => p.lost_dispute_at.max(p.open_dispute_at),
    };
    if disputed.is_some_and(newer) {
        return Some(Judgement::deny(Reason::Text("dispute")));
    }
    None
}

/// Just the decision, without building the explanation: the OR over the grants.
pub fn allowed<'a>(
    grants: impl IntoIterator<Item = GrantFacts<'a>>,
    policy: &Policy,
    now: Timestamp,
) -> bool {
    grants.into_iter().any(|v| judge(&v, policy, now).allowed)
}

/// How relevant a non-allowing grant is for the explanation (lower first).
fn relevance(status: &GrantStatus) -> u8 {
    match status {
        GrantStatus::Delivered => 0,
        GrantStatus::Pending => 1,
        GrantStatus::Revoked => 2,
        GrantStatus::Failed => 3,
        GrantStatus::Other(_) => 4,
    }
}

/// Decides access for one (customer, entitlement) pair from its grants.
///
/// # Example
///
/// ```
/// use entitlement_sync::access::{decide, Policy};
/// let now = chrono::Utc::now();
/// let answer = decide("cus_1", "ent_1", &[], &Policy::default(), now);
/// assert!(!answer.allowed);
/// assert_eq!(answer.status, "none");
/// assert_eq!(answer.reason.as_deref(), Some("no_grant"));
/// ```
pub fn decide(
    customer_id: &str,
    entitlement_id: &str,
    grants: &[GrantView<'_>],
    policy: &Policy,
    now: Timestamp,
) -> Access {
    let judged: Vec<(&GrantView<'_>, Judgement<'_>)> = grants
        .iter()
        .map(|v| (v, judge(&v.facts, policy, now)))
        .collect();
    // An allowing grant (a delivered one before one an on_hold grace keeps), else the most
    // relevant denial; newest first within each status, ties by grant id, so the answer
    // does not depend on input order.
    let best = judged.iter().min_by(|(a, ja), (b, jb)| {
        (
            !ja.allowed,
            relevance(a.facts.status),
            std::cmp::Reverse(a.facts.version),
            a.id,
        )
            .cmp(&(
                !jb.allowed,
                relevance(b.facts.status),
                std::cmp::Reverse(b.facts.version),
                b.id,
            ))
    });
    let Some((view, judgement)) = best else {
        return Access {
            allowed: false,
            customer_id: customer_id.to_string(),
            entitlement_id: entitlement_id.to_string(),
            status: "none".into(),
            reason: Some("no_grant".into()),
            grant_id: None,
            oauth_url: None,
            error_code: None,
            license_key_expires_at: None,
            subscription_id: None,
            subscription_status: None,
            grace_until: None,
            grants: 0,
            as_of: None,
            evaluated_at: now,
        };
    };
    let g = &view.facts;
    Access {
        allowed: judgement.allowed,
        customer_id: customer_id.to_string(),
        entitlement_id: entitlement_id.to_string(),
        status: g.status.to_string(),
        reason: if judgement.allowed {
            None
        } else {
            judgement.reason.map(Reason::text)
        },
        grant_id: Some(view.id.to_string()),
        oauth_url: (*g.status == GrantStatus::Pending)
            .then(|| view.oauth_url.map(str::to_string))
            .flatten(),
        error_code: g.error_code.map(str::to_string),
        license_key_expires_at: g.license_key_expires_at,
        subscription_id: view.subscription_id.map(str::to_string),
        subscription_status: g.subscription.map(|s| s.status.to_string()),
        grace_until: judgement.grace_until,
        grants: grants.len(),
        as_of: Some(g.version),
        evaluated_at: now,
    }
}

/// The next instant after `now` at which time alone may change the pair's answer: the
/// earliest license key expiry still ahead, or the end of an on-hold grace under way.
/// `None` when no time-driven change is ahead. Recomputing the answer at that instant
/// may still give the same answer (another grant may keep it allowed); the caller then
/// asks again from there.
///
/// # Example
///
/// ```
/// use entitlement_sync::access::{next_change, Policy};
/// let now = chrono::Utc::now();
/// assert_eq!(next_change(&[], &Policy::default(), now), None);
/// ```
pub fn next_change(grants: &[GrantView<'_>], policy: &Policy, now: Timestamp) -> Option<Timestamp> {
    grants
        .iter()
        .flat_map(|v| {
            let expiry = v.facts.license_key_expires_at.filter(|e| *e > now);
            // The grace's end even where the key or the payment denies meanwhile: the
            // denial's reason changes then (from `license_key_expired` to
            // `subscription_on_hold`, say).
            let grace = judge_with(&v.facts, policy, now, false)
                .grace_until
                .filter(|g| *g > now);
            expiry.into_iter().chain(grace)
        })
        .min()
}
