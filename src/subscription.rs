//! The pure subscription state machine, and the simpler families (payments, refunds,
//! disputes, license keys, credit notices) whose newest snapshot simply wins.
//!
//! Subscriptions, as a table ([`transition`]):
//!
//! | from \ to                            | pending | active/on_hold/paused/past_due | cancelled/expired | failed |
//! |--------------------------------------|---------|--------------------------------|-------------------|--------|
//! | pending                              | yes     | yes                            | yes               | yes    |
//! | active, on_hold, paused, past_due    | no      | yes                            | yes               | no     |
//! | cancelled, failed, expired           | no      | no (terminal)                  | same status only  | same status only |
//!
//! Subscriptions carry no `updated_at`: their version is the envelope `timestamp`.
//! An unknown status may follow a non-terminal one and be followed by anything but
//! `pending`; a terminal status stays terminal.

use crate::event::{
    CreditBalanceLow, CreditEntry, Dispute, DisputeStatus, LicenseKey, Payment, Refund,
    RefundStatus, Subscription, SubscriptionStatus,
};
use crate::fold::{always_legal, Machine, RejectReason};
use crate::wire::Timestamp;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// The rule for one subscription status edge.
pub fn transition(from: &SubscriptionStatus, to: &SubscriptionStatus) -> Result<(), RejectReason> {
    use SubscriptionStatus::*;
    if from == to {
        return Ok(());
    }
    match (from, to) {
        (Cancelled | Failed | Expired, _) => Err(RejectReason::Terminal),
        (_, Pending) => Err(RejectReason::IllegalTransition),
        (Pending, _) => Ok(()),
        (Active | OnHold | Paused | PastDue | Other(_), Failed) => {
            Err(RejectReason::IllegalTransition)
        }
        (Active | OnHold | Paused | PastDue | Other(_), _) => Ok(()),
    }
}

/// Lifecycle rank, to order two snapshots of the same instant.
pub fn rank(status: &SubscriptionStatus) -> u8 {
    use SubscriptionStatus::*;
    match status {
        Pending => 0,
        Active => 1,
        PastDue => 2,
        OnHold | Paused => 3,
        Other(_) => 4,
        Cancelled | Failed | Expired => 5,
    }
}

impl Machine for Subscription {
    fn object_id(&self) -> &str {
        &self.subscription_id
    }
    fn version_at(&self, envelope_ts: Timestamp) -> Timestamp {
        envelope_ts
    }
    fn rank(&self) -> u8 {
        rank(&self.status)
    }
    fn status_name(&self) -> &str {
        self.status.as_str()
    }
    fn check(prev: &Self, next: &Self) -> Result<(), RejectReason> {
        // As for a grant's business: once known, the customer may not be dropped, or
        // `A -> absent -> B` would move the subscription.
        if let Some(a) = prev.customer_id() {
            if next.customer_id() != Some(a) {
                return Err(RejectReason::IdentityChanged {
                    field: "customer_id".into(),
                });
            }
        }
        transition(&prev.status, &next.status)
    }
}

impl Machine for Payment {
    fn object_id(&self) -> &str {
        &self.payment_id
    }
    fn version_at(&self, envelope_ts: Timestamp) -> Timestamp {
        self.updated_at.unwrap_or(envelope_ts)
    }
    fn status_name(&self) -> &str {
        self.status.as_ref().map_or("unknown", |s| s.as_str())
    }
    fn check(prev: &Self, next: &Self) -> Result<(), RejectReason> {
        always_legal(prev, next)
    }
}

/// Refund lifecycle rank, to order two snapshots of the same instant: pending < review
/// < unknown < succeeded = failed (a refund ends in one of these).
pub fn refund_rank(status: &RefundStatus) -> u8 {
    match status {
        RefundStatus::Pending => 0,
        RefundStatus::Review => 1,
        RefundStatus::Other(_) => 2,
        RefundStatus::Succeeded | RefundStatus::Failed => 3,
    }
}

/// Dispute lifecycle rank, to order two snapshots of the same instant: opened <
/// challenged < unknown (`pre_arbitration_opened`, ...) < every outcome (won, lost,
/// accepted, cancelled, expired). A dispute opened and resolved within one instant (a
/// rapid dispute resolution) ends at its outcome, whichever arrives first.
pub fn dispute_rank(status: &DisputeStatus) -> u8 {
    match status {
        DisputeStatus::DisputeOpened => 0,
        DisputeStatus::DisputeChallenged => 1,
        DisputeStatus::Other(_) => 2,
        DisputeStatus::DisputeExpired
        | DisputeStatus::DisputeAccepted
        | DisputeStatus::DisputeCancelled
        | DisputeStatus::DisputeWon
        | DisputeStatus::DisputeLost => 3,
    }
}

/// Families whose newest snapshot simply wins: every transition is legal, the version is
/// the envelope `timestamp` (they carry no `updated_at`); snapshots of one instant fold
/// in lifecycle order where the family has one.
macro_rules! newest_wins {
    ($($ty:ty: id $id:ident, status |$s:ident| $status:expr, rank |$r:ident| $rank:expr;)+) => {$(
        impl Machine for $ty {
            fn object_id(&self) -> &str {
                &self.$id
            }
            fn version_at(&self, envelope_ts: Timestamp) -> Timestamp {
                envelope_ts
            }
            fn rank(&self) -> u8 {
                let $r = self;
                $rank
            }
            fn status_name(&self) -> &str {
                let $s = self;
                $status
            }
            fn check(prev: &Self, next: &Self) -> Result<(), RejectReason> {
                always_legal(prev, next)
            }
        }
    )+};
}

newest_wins! {
    Refund: id refund_id, status |r| r.status.as_str(), rank |r| refund_rank(&r.status);
    Dispute: id dispute_id, status |d| d.dispute_status.as_str(), rank |d| dispute_rank(&d.dispute_status);
    // A key is enabled and disabled again at will: no lifecycle order.
    LicenseKey: id id, status |k| k.status.as_str(), rank |_k| 0;
    CreditBalanceLow: id object_id, status |_b| "balance_low", rank |_b| 0;
}

/// A ledger entry is immutable: one id, one entry. The same entry spelled differently
/// (amounts as numbers or strings, `"12.5"` or `"12.500"`: equal as decimals) is the
/// same entry, not a conflict. Two different entries under the same id keep the first
/// in fold order (the other is recorded as rejected).
impl Machine for CreditEntry {
    fn object_id(&self) -> &str {
        &self.id
    }
    fn version_at(&self, _envelope_ts: Timestamp) -> Timestamp {
        self.created_at
    }
    fn status_name(&self) -> &str {
        "entry"
    }
    fn check(prev: &Self, next: &Self) -> Result<(), RejectReason> {
        if prev == next {
            Ok(())
        } else {
            Err(RejectReason::IllegalTransition)
        }
    }
}

/// The newest of a customer's ledger entries that share the newest instant, given the
/// newest entry before that instant (`before`, if any): the end of their chain. Entries of
/// one instant are ordered by the ledger itself, not by their content hash.
///
/// Each entry is a step from its `(balance_before, overage_before)` to its
/// `(balance_after, overage_after)`; the ledger's order of the instant is a walk through
/// all of them that starts where `before` left the balance. Where the walk ends follows
/// from the steps alone, whatever order they took: at the one balance more steps reach
/// than leave, or, when every balance is reached as often as it is left (100 → 0 and
/// 0 → 100 at a cycle's reset), back where it started. The last entry of the given order
/// that ends there is the newest. Overages take part when every entry gives both. When
/// the steps do not make one walk (a missing `balance_before`, a start that does not
/// continue `before`, no `before` and a cycle), the end of the chain decides if there is
/// one (the entry whose `balance_after` no other entry's `balance_before` continues), and
/// otherwise the last in the given order.
pub fn newest_entry<'a>(
    before: Option<&CreditEntry>,
    same_instant: &'a [CreditEntry],
) -> Option<&'a CreditEntry> {
    if same_instant.len() <= 1 {
        return same_instant.first();
    }
    let overage = same_instant
        .iter()
        .all(|e| e.overage_before.is_some() && e.overage_after.is_some())
        && before.is_none_or(|b| b.overage_after.is_some());
    if let Some(end) = walk_end(before, same_instant, overage) {
        return same_instant.iter().rev().find(|e| e.after(overage) == end);
    }
    let continued = |e: &CreditEntry| {
        same_instant
            .iter()
            .any(|o| !std::ptr::eq(o, e) && o.balance_before == Some(e.balance_after))
    };
    let mut ends = same_instant.iter().filter(|e| !continued(e));
    match (ends.next(), ends.next()) {
        (Some(end), None) => Some(end),
        _ => same_instant.last(),
    }
}

/// A balance in the ledger: the balance and, when every entry gives it, the overage.
type LedgerPoint = (Decimal, Option<Decimal>);

impl CreditEntry {
    fn before(&self, overage: bool) -> Option<LedgerPoint> {
        let over = if overage { self.overage_before } else { None };
        Some((
            self.balance_before?.normalize(),
            over.map(|o| o.normalize()),
        ))
    }
    fn after(&self, overage: bool) -> LedgerPoint {
        let over = if overage { self.overage_after } else { None };
        (self.balance_after.normalize(), over.map(|o| o.normalize()))
    }
}

/// Where a walk through every step of `same_instant` that continues `before` ends, when
/// the steps' counts say so (see [`newest_entry`]).
fn walk_end(
    before: Option<&CreditEntry>,
    same_instant: &[CreditEntry],
    overage: bool,
) -> Option<LedgerPoint> {
    // Steps leaving a balance minus steps reaching it.
    let mut net: BTreeMap<LedgerPoint, i64> = BTreeMap::new();
    for e in same_instant {
        *net.entry(e.before(overage)?).or_default() += 1;
        *net.entry(e.after(overage)).or_default() -= 1;
    }
    let start = before.map(|b| b.after(overage));
    let mut leaves = net.iter().filter(|(_, n)| **n > 0);
    let mut reaches = net.iter().filter(|(_, n)| **n < 0);
    match (leaves.next(), leaves.next(), reaches.next(), reaches.next()) {
        // A cycle: it ends where it began, which only `before` says.
        (None, None, None, None) => start.filter(|s| net.contains_key(s)),
        (Some((from, 1)), None, Some((to, -1)), None) => {
            (start.is_none() || start.as_ref() == Some(from)).then_some(*to)
        }
        _ => None,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use SubscriptionStatus::*;
        let all = [
            Pending, Active, OnHold, Paused, PastDue, Cancelled, Failed, Expired,
        ];
        for from in &all {
            for to in &all {
                let legal = transition(from, to).is_ok();
                let want = from == to
                    || match from {
                        Pending => true,
                        Active | OnHold | Paused | PastDue => !matches!(to, Pending | Failed),
                        _ => false,
                    };
                assert_eq!(legal, want, "{from} -> {to}");
            }
        }
        let other = SubscriptionStatus::parse("trialing");
        assert!(transition(&Active, &other).is_ok());
        assert!(transition(&other, &Active).is_ok());
        assert!(transition(&Cancelled, &other).is_err());
        assert!(transition(&other, &Pending).is_err());
    }
}
