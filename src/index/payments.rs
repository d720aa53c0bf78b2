//! What a payment's refunds and disputes say, from their own events and from the
//! payment snapshot's embedded lists.

use super::*;

/// What a payment snapshot's own `refunds[]` / `disputes[]` say.
#[derive(Debug, Clone, Default)]
pub(super) struct Embedded {
    /// When it was refunded in full, by the snapshot.
    pub(super) refunded_at: Option<Timestamp>,
    /// dispute id -> (status, version of the payment snapshot that reports it)
    pub(super) disputes: HashMap<String, (DisputeStatus, Timestamp)>,
}

/// What a payment's refunds and disputes say, from each source.
#[derive(Debug, Clone, Default)]
pub(super) struct PaymentSources {
    /// refund id -> (succeeded in full?, when)
    pub(super) refunds: HashMap<String, (bool, Timestamp)>,
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
            && self.embedded.refunded_at.is_none()
            && self.embedded.disputes.is_empty()
    }

    pub(super) fn facts(&self) -> PaymentFacts {
        let refunded_at = self
            .refunds
            .values()
            .filter(|(full, _)| *full)
            .map(|(_, at)| *at)
            .chain(self.embedded.refunded_at)
            .min();
        // Per dispute, the newest word on it wins, whichever source says it (a dispute
        // won that only the payment snapshot reports overrides an older `opened`).
        let mut disputes = self.disputes.clone();
        for (id, (status, at)) in &self.embedded.disputes {
            match disputes.get(id) {
                Some((_, known)) if known >= at => {}
                _ => {
                    disputes.insert(id.clone(), (status.clone(), *at));
                }
            }
        }
        let worst = |pick: fn(&DisputeStatus) -> bool| {
            disputes
                .values()
                .filter(|(s, _)| pick(s))
                .max_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)))
                .cloned()
        };
        let dispute = worst(DisputeStatus::is_lost)
            .or_else(|| worst(DisputeStatus::is_open))
            .or_else(|| worst(|_| true));
        PaymentFacts {
            refunded_at,
            dispute,
        }
    }
}
