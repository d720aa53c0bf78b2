//! The one fold every object goes through.
//!
//! Each delivery carries the *latest* state of one object (a snapshot). The state of an
//! object is a deterministic left fold of **all** its verified snapshots, sorted by their
//! [`VersionKey`] (version instant, then status rank, then content hash) and deduplicated
//! by that key. Each snapshot in the fold is either applied or rejected by the family's
//! transition rules ([`Machine::check`]); a rejected one leaves the state unchanged.
//!
//! Because the result is a function of the *set* of snapshots, any permutation of the
//! deliveries, with any duplicates, gives the same final state and the same set of
//! rejected snapshots as in-order delivery. The store only has to keep an object's short
//! history and re-fold it when a snapshot arrives out of order; in order, one [`step`]
//! suffices.
//!
//! Pure: no IO, no clock.

use crate::wire::{hex, Timestamp};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cmp::Ordering;

/// Total order of an object's snapshots: when (an instant, never text), then the status
/// rank (a lifecycle tie-break for snapshots of the same instant), then the SHA-256 of
/// the snapshot's canonical JSON (deterministic last resort; equal hash = same snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionKey {
    /// The snapshot's version instant.
    pub at: Timestamp,
    /// Lifecycle rank of its status.
    pub rank: u8,
    /// SHA-256 of the canonical `data` JSON.
    pub hash: [u8; 32],
}

impl VersionKey {
    /// A short, stable text form: `<rfc3339, UTC, nanoseconds>/<rank>/<hex hash>`; as
    /// text it sorts like the key (for years 1000 to 9999).
    pub fn encode(&self) -> String {
        let mut s = self.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        s.push('/');
        s.push_str(&self.rank.to_string());
        s.push('/');
        s.push_str(&hex(&self.hash));
        s
    }
}

/// Inverse of [`VersionKey::encode`].
pub fn decode_key(s: &str) -> Option<VersionKey> {
    let mut parts = s.split('/');
    let at = crate::wire::parse_timestamp(parts.next()?)?;
    let rank = parts.next()?.parse().ok()?;
    let hex_hash = parts.next()?;
    if hex_hash.len() != 64 || parts.next().is_some() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_hash.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(VersionKey { at, rank, hash })
}

/// A snapshot with its version key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap<T> {
    /// The typed snapshot.
    pub body: T,
    /// Its place in the object's history.
    pub key: VersionKey,
}

/// A family of objects with transition rules: grants, subscriptions, payments, ...
pub trait Machine: Clone {
    /// The id of the object this is a snapshot of.
    fn object_id(&self) -> &str;
    /// The version instant, given the envelope `timestamp` (used when the payload has no
    /// `updated_at` of its own).
    fn version_at(&self, envelope_ts: Timestamp) -> Timestamp;
    /// Lifecycle rank of the status, to order snapshots of the same instant.
    fn rank(&self) -> u8 {
        0
    }
    /// The status, as used to tell when the current status began.
    fn status_name(&self) -> &str;
    /// A short description for messages, e.g. `revoked(manual)`.
    fn describe(&self) -> String {
        self.status_name().to_string()
    }
    /// May the object move from `prev` to `next`? `Err` names why not.
    fn check(prev: &Self, next: &Self) -> Result<(), RejectReason>;
}

/// Why a snapshot was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum RejectReason {
    /// The transition table has no such edge.
    IllegalTransition,
    /// A revoked grant may only be restored after a recoverable reason.
    ForbiddenRestoration {
        /// The revocation reason that forbids it.
        reason: String,
    },
    /// A revoked grant's reason may change only from a recoverable one.
    ReasonChange {
        /// The reason it had.
        from: String,
        /// The reason that arrived.
        to: String,
    },
    /// The object's owner changed.
    IdentityChanged {
        /// The field that changed.
        field: Cow<'static, str>,
    },
    /// The object is in a terminal state.
    Terminal,
}

impl RejectReason {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::IllegalTransition => "illegal_transition",
            RejectReason::ForbiddenRestoration { .. } => "forbidden_restoration",
            RejectReason::ReasonChange { .. } => "reason_change",
            RejectReason::IdentityChanged { .. } => "identity_changed",
            RejectReason::Terminal => "terminal",
        }
    }
}

/// A rejected snapshot: the state it met, what arrived, and why it may not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.message())]
pub struct Rejection {
    /// Why.
    pub reason: RejectReason,
    /// The state it met, e.g. `revoked(manual)`.
    pub from: String,
    /// The snapshot that arrived, e.g. `delivered`.
    pub to: String,
}

impl Rejection {
    /// One lowercase line for operators.
    pub fn message(&self) -> String {
        let Rejection { reason, from, to } = self;
        match reason {
            RejectReason::IllegalTransition => format!("illegal transition {from} -> {to}"),
            RejectReason::ForbiddenRestoration { reason } => {
                format!("restoring a grant revoked for {reason} is not allowed ({from} -> {to})")
            }
            RejectReason::ReasonChange { from: a, to: b } => {
                format!("revocation reason may not change from {a} to {b} ({from} -> {to})")
            }
            RejectReason::IdentityChanged { field } => {
                format!("{field} changed ({from} -> {to})")
            }
            RejectReason::Terminal => format!("{from} is terminal ({from} -> {to})"),
        }
    }
}

/// One delivery's snapshot as input to the fold.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// The snapshot.
    pub snap: Snap<T>,
    /// The delivery (webhook id) that carried it.
    pub delivery_id: String,
    /// An operator accepted it: apply even if illegal.
    pub forced: bool,
}

/// What the fold did with one distinct snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It became the state (`forced`: by operator override, although illegal).
    Applied {
        /// Applied only because an operator accepted it.
        forced: bool,
    },
    /// It was refused; the state stayed as it was.
    Rejected(Rejection),
}

/// One distinct snapshot of the history, in fold order: what the fold did with it and
/// the state after it. A store keeps these rows (its `history`), so that a snapshot
/// arriving out of order re-folds only from its place until the fold meets a stored step
/// again ([`crate::plan::Refold`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Its key.
    pub key: VersionKey,
    /// The smallest delivery id that carried it (deterministic representative).
    pub delivery_id: String,
    /// An operator accepted one of the deliveries carrying it.
    pub accepted: bool,
    /// What happened to it.
    pub verdict: Verdict,
    /// The key of the state snapshot after this step: its own key when applied, the
    /// state it met when rejected. (Stores need not keep it: it follows from the steps
    /// before.)
    pub state: VersionKey,
    /// Applied, and the object's status differs from the one before (or it is the
    /// first): the current status began here. `since` of a state is the key instant of
    /// the last such step.
    pub starts_run: bool,
}

impl Step {
    /// Was it rejected?
    pub fn is_rejected(&self) -> bool {
        matches!(self.verdict, Verdict::Rejected(_))
    }

    /// The rejection, if it was rejected.
    pub fn rejection(&self) -> Option<&Rejection> {
        match &self.verdict {
            Verdict::Rejected(r) => Some(r),
            Verdict::Applied { .. } => None,
        }
    }
}

/// An object's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current<T> {
    /// The snapshot that is the state.
    pub snap: Snap<T>,
    /// The version instant at which the current status began (e.g. when `on_hold` began).
    pub since: Timestamp,
}

/// The result of folding an object's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded<T> {
    /// The state (`None` only for an empty history).
    pub state: Option<Current<T>>,
    /// Every distinct snapshot, in fold order, with its verdict.
    pub steps: Vec<Step>,
}

impl<T> Folded<T> {
    /// The rejected snapshots.
    pub fn rejected(&self) -> impl Iterator<Item = (&Step, &Rejection)> {
        self.steps.iter().filter_map(|s| match &s.verdict {
            Verdict::Rejected(r) => Some((s, r)),
            Verdict::Applied { .. } => None,
        })
    }

    /// The newest key of the whole history (applied or not).
    pub fn max_key(&self) -> Option<VersionKey> {
        self.steps.last().map(|s| s.key)
    }
}

/// Applies one snapshot to a state: the fold's single step.
///
/// The first snapshot of an object may have any status. A `forced` snapshot applies even
/// if the rules refuse it.
pub fn step<T: Machine>(
    current: Option<&Current<T>>,
    snap: &Snap<T>,
    forced: bool,
) -> (Verdict, Option<Current<T>>) {
    let Some(cur) = current else {
        let next = Current {
            snap: snap.clone(),
            since: snap.key.at,
        };
        return (Verdict::Applied { forced: false }, Some(next));
    };
    let check = T::check(&cur.snap.body, &snap.body);
    if let Err(reason) = &check {
        if !forced {
            let rejection = Rejection {
                reason: reason.clone(),
                from: cur.snap.body.describe(),
                to: snap.body.describe(),
            };
            return (Verdict::Rejected(rejection), None);
        }
    }
    let since = if cur.snap.body.status_name() == snap.body.status_name() {
        cur.since
    } else {
        snap.key.at
    };
    let next = Current {
        snap: snap.clone(),
        since,
    };
    (
        Verdict::Applied {
            forced: check.is_err(),
        },
        Some(next),
    )
}

/// The fold as a machine fed one distinct snapshot at a time, in key order: from the
/// empty state for a whole history, or from the state before some key for a suffix.
#[derive(Debug, Clone)]
pub struct Folder<T> {
    state: Option<Current<T>>,
}

impl<T: Machine> Folder<T> {
    /// Starts from `state` (the state before the first snapshot to be pushed).
    pub fn new(state: Option<Current<T>>) -> Self {
        Folder { state }
    }

    /// The state so far.
    pub fn state(&self) -> Option<&Current<T>> {
        self.state.as_ref()
    }

    /// The state reached.
    pub fn into_state(self) -> Option<Current<T>> {
        self.state
    }

    /// Folds the next distinct snapshot (`accepted`: an operator accepted it).
    pub fn push(&mut self, snap: &Snap<T>, delivery_id: &str, accepted: bool) -> Step {
        let (verdict, next) = step(self.state.as_ref(), snap, accepted);
        let starts_run = match (&next, &self.state) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(n), Some(c)) => n.snap.body.status_name() != c.snap.body.status_name(),
        };
        if let Some(next) = next {
            self.state = Some(next);
        }
        Step {
            key: snap.key,
            delivery_id: delivery_id.to_string(),
            accepted,
            verdict,
            // A push always leaves a state: the first snapshot always applies.
            state: self.state.as_ref().map_or(snap.key, |c| c.snap.key),
            starts_run,
        }
    }
}

/// Folds a whole history. The input may be in any order and contain duplicates.
pub fn fold<T: Machine>(entries: impl IntoIterator<Item = Entry<T>>) -> Folded<T> {
    let mut entries: Vec<Entry<T>> = entries.into_iter().collect();
    entries.sort_by(|a, b| match a.snap.key.cmp(&b.snap.key) {
        Ordering::Equal => a.delivery_id.cmp(&b.delivery_id),
        other => other,
    });
    let mut folder = Folder::new(None);
    let mut steps: Vec<Step> = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        // Entries with the same key are one snapshot: forced if any delivery was accepted.
        let mut j = i + 1;
        let mut forced = entries[i].forced;
        while j < entries.len() && entries[j].snap.key == entries[i].snap.key {
            forced |= entries[j].forced;
            j += 1;
        }
        let entry = &entries[i];
        steps.push(folder.push(&entry.snap, &entry.delivery_id, forced));
        i = j;
    }
    Folded {
        state: folder.into_state(),
        steps,
    }
}

/// A family whose snapshots never conflict: the newest one is the state.
/// Used for payments, refunds, disputes, license keys and balance-low notices.
pub fn always_legal<T>(_prev: &T, _next: &T) -> Result<(), RejectReason> {
    Ok(())
}

/// The outcome for a new snapshot, from the object's fold before and after it joined.
///
/// `duplicate` if its key was already in the history; `rejected` if the fold refused it;
/// `applied` if the state or the set of rejected snapshots changed; `stale` otherwise.
pub fn outcome<T: PartialEq>(
    before: &Folded<T>,
    after: &Folded<T>,
    key: &VersionKey,
) -> crate::delivery::Outcome {
    use crate::delivery::Outcome;
    if before.steps.iter().any(|s| &s.key == key) {
        return Outcome::Duplicate;
    }
    let verdict = after
        .steps
        .iter()
        .find(|s| &s.key == key)
        .map(|s| &s.verdict);
    if let Some(Verdict::Rejected(_)) = verdict {
        return Outcome::Rejected;
    }
    let state_key = |f: &Folded<T>| f.state.as_ref().map(|c| c.snap.key);
    let rejected_keys = |f: &Folded<T>| f.rejected().map(|(s, _)| s.key).collect::<Vec<_>>();
    if state_key(before) != state_key(after) || rejected_keys(before) != rejected_keys(after) {
        Outcome::Applied
    } else {
        Outcome::Stale
    }
}
