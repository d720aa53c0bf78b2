//! The in-memory access index: the folded state of grants, subscriptions, payments,
//! refunds and disputes, keyed for `has_access` (customer -> entitlement -> grants).
//!
//! Pure data: it is fed [`ObjectRow`]s read by the store (all of them at open, then the
//! rows changed since the last refresh) and answers with [`crate::access`]. It never
//! touches SQLite or the clock.

use crate::access::{self, Access, GrantView, PaymentFacts, Policy, SubscriptionFacts};
use crate::event::{Dispute, DisputeStatus, Grant, Payment, Refund, RefundStatus, Subscription};
use crate::store::ObjectRow;
use crate::wire::{parse_timestamp, Timestamp};
use std::collections::HashMap;

#[derive(Debug, Clone)]
struct GrantEntry {
    grant: Grant,
    version: Timestamp,
}

/// What a payment snapshot's own `refunds[]` / `disputes[]` say.
#[derive(Debug, Clone, Default)]
struct Embedded {
    /// When it was refunded in full, by the snapshot.
    refunded_at: Option<Timestamp>,
    /// dispute id -> (status, version of the payment snapshot that reports it)
    disputes: HashMap<String, (DisputeStatus, Timestamp)>,
}

/// What a payment's refunds and disputes say, from each source.
#[derive(Debug, Clone, Default)]
struct PaymentSources {
    /// refund id -> (succeeded in full?, when)
    refunds: HashMap<String, (bool, Timestamp)>,
    /// dispute id -> (status, when)
    disputes: HashMap<String, (DisputeStatus, Timestamp)>,
    /// From the payment snapshot's own `refunds[]` / `disputes[]`.
    embedded: Embedded,
}

impl PaymentSources {
    fn facts(&self) -> PaymentFacts {
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

/// A decoded object row, ready for [`Index::apply_decoded`].
#[derive(Debug)]
pub struct Decoded(Row);

#[derive(Debug)]
enum Row {
    Grant(Box<Grant>, Timestamp),
    Subscription(SubscriptionFacts),
    Refund {
        payment_id: String,
        refund_id: String,
        full: bool,
        as_of: Timestamp,
    },
    Dispute {
        payment_id: String,
        dispute_id: String,
        status: DisputeStatus,
        as_of: Timestamp,
    },
    Payment {
        payment_id: String,
        embedded: Embedded,
    },
    Other,
}

/// The index. Build it with [`Index::default`] and feed it rows decoded with
/// [`Index::decode`] through [`Index::apply_decoded`].
#[derive(Debug, Default)]
pub struct Index {
    pairs: HashMap<String, HashMap<String, Vec<GrantEntry>>>,
    grant_pair: HashMap<String, (String, String)>,
    subscriptions: HashMap<String, SubscriptionFacts>,
    sources: HashMap<String, PaymentSources>,
    payments: HashMap<String, PaymentFacts>,
    grants: usize,
}

/// A row the index could not decode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("index: cannot decode {kind} {id}: {message}")]
pub struct IndexError {
    /// The row's kind.
    pub kind: String,
    /// The row's object id.
    pub id: String,
    /// Why it does not decode.
    pub message: String,
}

impl Index {
    /// Number of grants held.
    pub fn grants(&self) -> usize {
        self.grants
    }

    /// Decodes a row without touching the index (pure: rows can be decoded on several
    /// threads, then applied in order).
    ///
    /// # Errors
    ///
    /// [`IndexError`] when the row does not decode.
    pub fn decode(row: &ObjectRow) -> Result<Decoded, IndexError> {
        let err = |message: String| IndexError {
            kind: row.kind.clone(),
            id: row.id.clone(),
            message,
        };
        let as_of = parse_timestamp(&row.as_of).ok_or_else(|| err("as_of".into()))?;
        let since = parse_timestamp(&row.since).ok_or_else(|| err("since".into()))?;
        Ok(Decoded(match row.kind.as_str() {
            "grant" => {
                let grant: Grant =
                    serde_json::from_str(&row.body).map_err(|e| err(e.to_string()))?;
                Row::Grant(Box::new(grant), as_of)
            }
            "subscription" => {
                let s: Subscription =
                    serde_json::from_str(&row.body).map_err(|e| err(e.to_string()))?;
                Row::Subscription(SubscriptionFacts {
                    subscription_id: s.subscription_id,
                    status: s.status,
                    as_of,
                    since,
                })
            }
            "refund" => {
                let r: Refund = serde_json::from_str(&row.body).map_err(|e| err(e.to_string()))?;
                let full = r.status == RefundStatus::Succeeded && !r.is_partial;
                Row::Refund {
                    payment_id: r.payment_id,
                    refund_id: r.refund_id,
                    full,
                    as_of,
                }
            }
            "dispute" => {
                let d: Dispute = serde_json::from_str(&row.body).map_err(|e| err(e.to_string()))?;
                Row::Dispute {
                    payment_id: d.payment_id,
                    dispute_id: d.dispute_id,
                    status: d.dispute_status,
                    as_of,
                }
            }
            "payment" => {
                let p: Payment = serde_json::from_str(&row.body).map_err(|e| err(e.to_string()))?;
                let succeeded = || {
                    p.refunds
                        .iter()
                        .filter(|r| r.status == RefundStatus::Succeeded)
                };
                let single = succeeded()
                    .filter(|r| !r.is_partial)
                    .map(|r| r.created_at.unwrap_or(as_of))
                    .min();
                // `refund_status: full` also covers partial refunds that add up.
                let full = p
                    .refund_status
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("full"))
                    .then(|| {
                        succeeded()
                            .filter_map(|r| r.created_at)
                            .max()
                            .unwrap_or(as_of)
                    });
                let disputes = p
                    .disputes
                    .iter()
                    .map(|d| (d.dispute_id.clone(), (d.dispute_status.clone(), as_of)))
                    .collect();
                Row::Payment {
                    payment_id: p.payment_id,
                    embedded: Embedded {
                        refunded_at: single.into_iter().chain(full).min(),
                        disputes,
                    },
                }
            }
            _ => Row::Other,
        }))
    }

    /// Applies a decoded row (insert or replace).
    pub fn apply_decoded(&mut self, decoded: Decoded) {
        match decoded.0 {
            Row::Grant(grant, as_of) => self.put_grant(*grant, as_of),
            Row::Subscription(facts) => {
                self.subscriptions
                    .insert(facts.subscription_id.clone(), facts);
            }
            Row::Refund {
                payment_id,
                refund_id,
                full,
                as_of,
            } => {
                let src = self.sources.entry(payment_id.clone()).or_default();
                src.refunds.insert(refund_id, (full, as_of));
                self.derive(&payment_id);
            }
            Row::Dispute {
                payment_id,
                dispute_id,
                status,
                as_of,
            } => {
                let src = self.sources.entry(payment_id.clone()).or_default();
                src.disputes.insert(dispute_id, (status, as_of));
                self.derive(&payment_id);
            }
            Row::Payment {
                payment_id,
                embedded,
            } => {
                let src = self.sources.entry(payment_id.clone()).or_default();
                src.embedded = embedded;
                self.derive(&payment_id);
            }
            Row::Other => {}
        }
    }

    fn derive(&mut self, payment_id: &str) {
        if let Some(src) = self.sources.get(payment_id) {
            self.payments.insert(payment_id.to_string(), src.facts());
        }
    }

    fn put_grant(&mut self, grant: Grant, version: Timestamp) {
        let pair = (grant.customer_id.clone(), grant.entitlement_id.clone());
        // An operator override may move a grant to another pair: take it out of the old.
        if let Some(old) = self.grant_pair.get(&grant.id) {
            if *old != pair {
                let old = old.clone();
                self.remove_grant(&grant.id, &old);
            }
        }
        let list = self
            .pairs
            .entry(pair.0.clone())
            .or_default()
            .entry(pair.1.clone())
            .or_default();
        let entry = GrantEntry { grant, version };
        match list.iter_mut().find(|e| e.grant.id == entry.grant.id) {
            Some(slot) => *slot = entry,
            None => {
                self.grant_pair.insert(entry.grant.id.clone(), pair);
                list.push(entry);
                self.grants += 1;
            }
        }
    }

    fn remove_grant(&mut self, id: &str, pair: &(String, String)) {
        if let Some(list) = self.pairs.get_mut(&pair.0).and_then(|m| m.get_mut(&pair.1)) {
            let before = list.len();
            list.retain(|e| e.grant.id != id);
            self.grants -= before - list.len();
        }
        self.grant_pair.remove(id);
    }

    fn views<'a>(
        &'a self,
        customer: &str,
        entitlement: &str,
    ) -> impl Iterator<Item = GrantView<'a>> {
        self.pairs
            .get(customer)
            .and_then(|m| m.get(entitlement))
            .into_iter()
            .flatten()
            .map(|e| GrantView {
                grant: &e.grant,
                version: e.version,
                subscription: e
                    .grant
                    .subscription_id
                    .as_ref()
                    .and_then(|s| self.subscriptions.get(s)),
                payment: e
                    .grant
                    .payment_id
                    .as_ref()
                    .and_then(|p| self.payments.get(p)),
            })
    }

    /// The full answer.
    pub fn access(
        &self,
        customer: &str,
        entitlement: &str,
        policy: &Policy,
        now: Timestamp,
    ) -> Access {
        let views: Vec<GrantView<'_>> = self.views(customer, entitlement).collect();
        access::decide(customer, entitlement, &views, policy, now)
    }

    /// When time alone may next change the pair's answer ([`access::next_change`]).
    pub fn next_change(
        &self,
        customer: &str,
        entitlement: &str,
        policy: &Policy,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let views: Vec<GrantView<'_>> = self.views(customer, entitlement).collect();
        access::next_change(&views, policy, now)
    }

    /// Every (customer, entitlement) pair that has a grant.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().flat_map(|(c, m)| {
            m.iter()
                .filter(|(_, list)| !list.is_empty())
                .map(move |(e, _)| (c.as_str(), e.as_str()))
        })
    }

    /// Just the decision.
    pub fn has_access(
        &self,
        customer: &str,
        entitlement: &str,
        policy: &Policy,
        now: Timestamp,
    ) -> bool {
        access::allowed(self.views(customer, entitlement), policy, now)
    }
}
