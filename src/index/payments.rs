//! What a payment's refunds and disputes say, from their own events and from the
//! payment snapshot's embedded lists.

use super::*;

/// A succeeded refund that a payment snapshot's `refunds[]` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListedRefund {
    pub(super) refund_id: String,
    pub(super) partial: bool,
    /// Its `created_at`: when it was asked for, which may be well before it succeeded.
    pub(super) created_at: Option<Timestamp>,
}

/// What a payment snapshot's own `refunds[]` / `disputes[]` say.
#[derive(Debug, Clone, Default)]
pub(super) struct Embedded {
    /// The version of the payment snapshot.
    pub(super) as_of: Option<Timestamp>,
    /// Its succeeded refunds.
    pub(super) refunds: Vec<ListedRefund>,
    /// The ids of the refunds it lists as failed.
    pub(super) failed: Vec<String>,
    /// Its `refund_status` is `full` (partial refunds may add up to it).
    pub(super) full: bool,
    /// dispute id -> (status, version of the payment snapshot that reports it)
    pub(super) disputes: HashMap<String, (DisputeStatus, Timestamp)>,
}

/// What a refund's own snapshot (its state) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OwnRefund {
    /// It failed.
    pub(super) failed: bool,
    /// It succeeded, and in full.
    pub(super) full: bool,
    /// Its version.
    pub(super) at: Timestamp,
}

/// What a payment's refunds and disputes say, from each source.
#[derive(Debug, Clone, Default)]
pub(super) struct PaymentSources {
    /// refund id -> what its own snapshot says
    pub(super) refunds: HashMap<String, OwnRefund>,
    /// dispute id -> (status, when)
    pub(super) disputes: HashMap<String, (DisputeStatus, Timestamp)>,
    /// From the payment snapshot's own `refunds[]` / `disputes[]`.
    pub(super) embedded: Embedded,
}

impl PaymentSources {
    /// Nothing said: the same as no sources at all.
    pub(super) fn is_empty(&self) -> bool {
        self.refunds.is_empty()
            && self.disputes.is_empty()
            && self.embedded.refunds.is_empty()
            && self.embedded.failed.is_empty()
            && !self.embedded.full
            && self.embedded.disputes.is_empty()
    }

    /// When a refund the payment lists is known to have been made: not before its
    /// `created_at` (else the payment snapshot's version), and not before the refund's
    /// own snapshot, when the store has one: a refund asked for at 10:30 that succeeded
    /// at 12:00 is a fact of 12:00, however many payment snapshots list it as created at
    /// 10:30. `None` when neither instant is known.
    fn listed_at(&self, r: &ListedRefund, fallback: Option<Timestamp>) -> Option<Timestamp> {
        let own = self.refunds.get(&r.refund_id).map(|own| own.at);
        r.created_at.or(fallback).into_iter().chain(own).max()
    }

    /// A refund the payment snapshot lists as succeeded whose own snapshot is newer than
    /// that payment snapshot and says it failed: per refund, the newest word wins, as for
    /// disputes, and a tie goes to `succeeded`. (Any other status of its own, newer or
    /// not, leaves the listing standing: a refund does not go from succeeded back to
    /// pending, so that word is a late one.) [`PaymentSources::listed_failed`] is the same
    /// rule the other way.
    fn withdrawn(&self, r: &ListedRefund) -> bool {
        self.refunds.get(&r.refund_id).is_some_and(|own| {
            own.failed && self.embedded.as_of.is_some_and(|listed| own.at > listed)
        })
    }

    /// A refund whose own snapshot says it succeeded that a newer payment snapshot lists
    /// as failed.
    fn listed_failed(&self, id: &str, own: &OwnRefund) -> bool {
        let embedded = &self.embedded;
        embedded.as_of.is_some_and(|listed| listed > own.at)
            && embedded.failed.iter().any(|f| f == id)
    }

    pub(super) fn facts(&self) -> PaymentFacts {
        let embedded = &self.embedded;
        // One refund in full, listed.
        let single = embedded
            .refunds
            .iter()
            .filter(|r| !r.partial && !self.withdrawn(r))
            .filter_map(|r| self.listed_at(r, embedded.as_of))
            .min();
        // `refund_status: full`: in full once the last of the refunds that add up to it
        // was made (the snapshot's version when none says when); not once one of them is
        // known, since, to have failed.
        let full = (embedded.full && !embedded.refunds.iter().any(|r| self.withdrawn(r)))
            .then(|| {
                embedded
                    .refunds
                    .iter()
                    .filter_map(|r| self.listed_at(r, None))
                    .max()
                    .or(embedded.as_of)
            })
            .flatten();
        let refunded_at = self
            .refunds
            .iter()
            .filter(|(id, own)| own.full && !self.listed_failed(id, own))
            .map(|(_, own)| own.at)
            .chain(single)
            .chain(full)
            .min();
        // Per dispute, the newest word on it wins, whichever source says it (a dispute
        // won that only the payment snapshot reports overrides an older `opened`).
        let mut disputes = self.disputes.clone();
        for (id, (status, at)) in &embedded.disputes {
            match disputes.get(id) {
                Some((_, known)) if known >= at => {}
                _ => {
                    disputes.insert(id.clone(), (status.clone(), *at));
                }
            }
        }
        // The newest report of each class: a policy denies on a class when some dispute
        // of it is newer than the grant, so the newest one decides.
        let newest = |pick: fn(&DisputeStatus) -> bool| {
            disputes
                .values()
                .filter(|(s, _)| pick(s))
                .map(|(_, at)| *at)
                .max()
        };
        PaymentFacts {
            refunded_at,
            lost_dispute_at: newest(DisputeStatus::is_lost),
            open_dispute_at: newest(DisputeStatus::is_open),
        }
    }
}
