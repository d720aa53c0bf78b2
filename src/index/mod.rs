//! The in-memory access index: the folded state of grants, subscriptions, payments,
//! refunds and disputes, keyed for `has_access` (customer + entitlement -> grants).
//!
//! Pure data: it is fed [`ObjectRow`]s read by the store (all of them at open, then the
//! rows changed since the last refresh) and answers with [`crate::access`]. It never
//! touches SQLite or the clock.
//!
//! # Layout
//!
//! It keeps of a grant only what an answer reads (the pair, status, revocation reason,
//! error code, a few instants, the links to its subscription and payment), not the
//! decoded snapshot. Ids are interned into dense `u32` handles (their bytes in shared
//! chunks, one hash table of handles per kind); statuses, reasons and error codes are
//! handles into small tables of the values seen (so an unknown value keeps its exact
//! text); instants are `i64` microseconds, the rare instant with sub-microsecond digits
//! or a leap second kept exactly in a side table. The pairs are one hash table of the
//! pair's first grant, its other grants chained through the grant records. Strings and
//! values once seen stay in their tables for the index's life (grants are never
//! removed, only moved between pairs by an operator override).

use crate::access::{
    self, Access, GrantFacts, GrantView, PaymentFacts, Policy, SubscriptionFacts, SubscriptionView,
};
use crate::event::{
    Dispute, DisputeStatus, Grant, GrantStatus, Payment, Refund, RefundStatus, RevocationReason,
    Subscription, SubscriptionStatus,
};
use crate::store::ObjectRow;
use crate::wire::{parse_timestamp, Timestamp};
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::hash::{BuildHasher, Hash};

/// No handle.
mod compact;
mod payments;
#[cfg(test)]
mod tests;

use compact::*;
use payments::*;

/// What a grant row contributes: the fields an answer reads, nothing else.
#[derive(Debug, Clone)]
struct GrantRow {
    id: String,
    customer: String,
    entitlement: String,
    status: GrantStatus,
    reason: Option<RevocationReason>,
    revoked_at: Option<Timestamp>,
    error_code: Option<String>,
    /// Kept for a pending grant only (the only one whose answer prints it).
    oauth_url: Option<String>,
    expires_at: Option<Timestamp>,
    subscription_id: Option<String>,
    payment_id: Option<String>,
    version: Timestamp,
}

impl GrantRow {
    fn of(g: Grant, version: Timestamp) -> GrantRow {
        GrantRow {
            oauth_url: g.oauth_url.filter(|_| g.status == GrantStatus::Pending),
            expires_at: g.license_key.and_then(|k| k.expires_at),
            id: g.id,
            customer: g.customer_id,
            entitlement: g.entitlement_id,
            status: g.status,
            reason: g.revocation_reason,
            revoked_at: g.revoked_at,
            error_code: g.error_code,
            subscription_id: g.subscription_id,
            payment_id: g.payment_id,
            version,
        }
    }
}

/// What [`Index::refile`] files under a payment.
#[derive(Debug, Clone, Copy)]
enum Filed {
    Refund,
    Dispute,
}

/// A decoded object row, ready for [`Index::apply_decoded`]: what [`Index::decode`]
/// makes of a stored row, or, where the typed state is at hand (a rebuild's fold), one
/// of the constructors below with the row's `as_of` and `since` (the instants as the
/// store keeps them, to the microsecond). Both ways give the same row.
#[derive(Debug, Clone)]
pub struct Decoded(Row);

impl Decoded {
    /// A grant's state at version `as_of`.
    pub(crate) fn grant(grant: Grant, as_of: Timestamp, _since: Timestamp) -> Decoded {
        Decoded(Row::Grant(Box::new(GrantRow::of(grant, as_of))))
    }

    /// A subscription's state at version `as_of`, in its status `since`.
    pub(crate) fn subscription(s: Subscription, as_of: Timestamp, since: Timestamp) -> Decoded {
        Decoded(Row::Subscription(SubscriptionFacts {
            subscription_id: s.subscription_id,
            status: s.status,
            as_of,
            since,
        }))
    }

    /// A refund's state at version `as_of`.
    pub(crate) fn refund(r: Refund, as_of: Timestamp, _since: Timestamp) -> Decoded {
        let succeeded = r.status == RefundStatus::Succeeded;
        Decoded(Row::Refund {
            payment_id: r.payment_id,
            refund_id: r.refund_id,
            own: OwnRefund {
                failed: r.status == RefundStatus::Failed,
                full: succeeded && !r.is_partial,
                at: as_of,
            },
        })
    }

    /// A dispute's state at version `as_of`.
    pub(crate) fn dispute(d: Dispute, as_of: Timestamp, _since: Timestamp) -> Decoded {
        Decoded(Row::Dispute {
            payment_id: d.payment_id,
            dispute_id: d.dispute_id,
            status: d.dispute_status,
            as_of,
        })
    }

    /// A payment's state at version `as_of`: the refunds and disputes it embeds.
    pub(crate) fn payment(p: Payment, as_of: Timestamp, _since: Timestamp) -> Decoded {
        let failed = p
            .refunds
            .iter()
            .filter(|r| r.status == RefundStatus::Failed)
            .map(|r| r.refund_id.clone())
            .collect();
        let refunds = p
            .refunds
            .into_iter()
            .filter(|r| r.status == RefundStatus::Succeeded)
            .map(|r| ListedRefund {
                refund_id: r.refund_id,
                partial: r.is_partial,
                created_at: r.created_at,
            })
            .collect();
        let disputes = p
            .disputes
            .iter()
            .map(|d| (d.dispute_id.clone(), (d.dispute_status.clone(), as_of)))
            .collect();
        Decoded(Row::Payment {
            payment_id: p.payment_id,
            embedded: Embedded {
                as_of: Some(as_of),
                refunds,
                failed,
                // `refund_status: full` also covers partial refunds that add up.
                full: p
                    .refund_status
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("full")),
                disputes,
            },
        })
    }

    /// A row of a kind the index does not hold.
    pub(crate) fn other() -> Decoded {
        Decoded(Row::Other)
    }
}

#[derive(Debug, Clone)]
enum Row {
    Grant(Box<GrantRow>),
    Subscription(SubscriptionFacts),
    Refund {
        payment_id: String,
        refund_id: String,
        own: OwnRefund,
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
#[derive(Default)]
pub struct Index {
    /// Grant ids; a grant's handle indexes `grants`.
    grant_ids: Interner,
    grants: Chunked<GrantRec>,
    /// Customer and entitlement ids.
    names: Interner,
    /// The first grant of each pair (hashed by the pair's two ids).
    pairs: HashTable<u32>,
    pair_hasher: DefaultHashBuilder,
    /// Subscription ids; a subscription's handle indexes `subscriptions`.
    subscription_ids: Interner,
    subscriptions: Chunked<SubRec>,
    /// Payment ids, and what is known of the few with refunds or disputes.
    payment_ids: Interner,
    sources: HashMap<u32, PaymentSources>,
    /// The payment each refund and dispute was last filed under: a newer snapshot of one
    /// may name another payment, and then it no longer speaks for the old one.
    filed_refunds: HashMap<Box<str>, u32>,
    filed_disputes: HashMap<Box<str>, u32>,
    payments: HashMap<u32, PaymentFacts>,
    /// Pending grants' `oauth_url`, by grant handle.
    oauth_urls: HashMap<u32, Box<str>>,
    statuses: Values<GrantStatus>,
    reasons: Values<RevocationReason>,
    error_codes: Values<String>,
    sub_statuses: Values<SubscriptionStatus>,
    instants: Instants,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("grants", &self.grants.len())
            .field("pairs", &self.pairs.len())
            .field("subscriptions", &self.subscriptions.len())
            .field("payments", &self.payments.len())
            .finish_non_exhaustive()
    }
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

fn pair_hash(hasher: &DefaultHashBuilder, customer: &str, entitlement: &str) -> u64 {
    hasher.hash_one((customer, entitlement))
}

impl Index {
    /// Number of grants held.
    pub fn grants(&self) -> usize {
        self.grants.len()
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
        fn body<T: serde::de::DeserializeOwned>(
            row: &ObjectRow,
            err: impl Fn(String) -> IndexError,
        ) -> Result<T, IndexError> {
            serde_json::from_str(&row.body).map_err(|e| err(e.to_string()))
        }
        Ok(match row.kind.as_str() {
            "grant" => Decoded::grant(body(row, err)?, as_of, since),
            "subscription" => Decoded::subscription(body(row, err)?, as_of, since),
            "refund" => Decoded::refund(body(row, err)?, as_of, since),
            "dispute" => Decoded::dispute(body(row, err)?, as_of, since),
            "payment" => Decoded::payment(body(row, err)?, as_of, since),
            _ => Decoded::other(),
        })
    }

    /// Applies a decoded row (insert or replace).
    pub fn apply_decoded(&mut self, decoded: Decoded) {
        match decoded.0 {
            Row::Grant(grant) => self.put_grant(*grant),
            Row::Subscription(facts) => {
                let h = self.subscription(&facts.subscription_id);
                let rec = SubRec {
                    status: self.sub_statuses.handle(&facts.status),
                    as_of: self.instants.encode(facts.as_of),
                    since: self.instants.encode(facts.since),
                };
                *self.subscriptions.get_mut(h) = rec;
            }
            Row::Refund {
                payment_id,
                refund_id,
                own,
            } => {
                let h = self.payment_ids.intern(&payment_id);
                self.refile(Filed::Refund, &refund_id, h);
                let src = self.sources.entry(h).or_default();
                src.refunds.insert(refund_id, own);
                self.derive(h);
            }
            Row::Dispute {
                payment_id,
                dispute_id,
                status,
                as_of,
            } => {
                let h = self.payment_ids.intern(&payment_id);
                self.refile(Filed::Dispute, &dispute_id, h);
                let src = self.sources.entry(h).or_default();
                src.disputes.insert(dispute_id, (status, as_of));
                self.derive(h);
            }
            Row::Payment {
                payment_id,
                embedded,
            } => {
                let h = self.payment_ids.intern(&payment_id);
                let src = self.sources.entry(h).or_default();
                src.embedded = embedded;
                self.derive(h);
            }
            Row::Other => {}
        }
    }

    /// The subscription's handle, with a record (unknown until its snapshot arrives).
    fn subscription(&mut self, id: &str) -> u32 {
        let h = self.subscription_ids.intern(id);
        while self.subscriptions.len() <= at(h) {
            self.subscriptions.push(UNKNOWN_SUB);
        }
        h
    }

    /// Files the refund or dispute `id` under `payment`, taking it out of the payment
    /// it was filed under before, if another.
    fn refile(&mut self, what: Filed, id: &str, payment: u32) {
        let filed = match what {
            Filed::Refund => &mut self.filed_refunds,
            Filed::Dispute => &mut self.filed_disputes,
        };
        let before = match filed.get_mut(id) {
            Some(h) => std::mem::replace(h, payment),
            None => {
                filed.insert(id.into(), payment);
                return;
            }
        };
        if before == payment {
            return;
        }
        if let Some(src) = self.sources.get_mut(&before) {
            match what {
                Filed::Refund => drop(src.refunds.remove(id)),
                Filed::Dispute => drop(src.disputes.remove(id)),
            }
        }
        self.derive(before);
    }

    /// Recomputes a payment's facts from its sources. A payment whose sources say
    /// nothing has no entry: its facts would be the default, which denies nothing.
    fn derive(&mut self, payment: u32) {
        match self.sources.get(&payment) {
            Some(src) if !src.is_empty() => {
                let facts = src.facts();
                if facts == PaymentFacts::default() {
                    self.payments.remove(&payment);
                } else {
                    self.payments.insert(payment, facts);
                }
            }
            _ => {
                self.sources.remove(&payment);
                self.payments.remove(&payment);
            }
        }
    }

    fn put_grant(&mut self, g: GrantRow) {
        let customer = self.names.intern(&g.customer);
        let entitlement = self.names.intern(&g.entitlement);
        let subscription = match &g.subscription_id {
            Some(s) => self.subscription(s),
            None => NIL,
        };
        let payment = match &g.payment_id {
            Some(p) => self.payment_ids.intern(p),
            None => NIL,
        };
        let rec = GrantRec {
            version: self.instants.encode(g.version),
            revoked_at: self.instants.encode_opt(g.revoked_at),
            expires_at: self.instants.encode_opt(g.expires_at),
            customer,
            entitlement,
            next: NIL,
            subscription,
            payment,
            status: self.statuses.handle(&g.status),
            reason: g.reason.as_ref().map_or(NIL, |r| self.reasons.handle(r)),
            error_code: g
                .error_code
                .as_deref()
                .map_or(NIL, |c| self.error_codes.handle(c)),
        };
        let id = match self.grant_ids.find(&g.id) {
            Some(id) => {
                let old = *self.grants.get(id);
                if (old.customer, old.entitlement) == (customer, entitlement) {
                    *self.grants.get_mut(id) = GrantRec {
                        next: old.next,
                        ..rec
                    };
                } else {
                    // An operator override may move a grant to another pair: take it
                    // out of the old.
                    self.unlink(id);
                    *self.grants.get_mut(id) = rec;
                    self.link(id);
                }
                id
            }
            None => {
                let id = self.grant_ids.intern(&g.id);
                let pushed = self.grants.push(rec);
                debug_assert_eq!(id, pushed, "grant handles index the grant records");
                self.link(id);
                id
            }
        };
        match g.oauth_url {
            Some(url) => {
                self.oauth_urls.insert(id, url.into_boxed_str());
            }
            None => {
                self.oauth_urls.remove(&id);
            }
        }
    }

    /// The pair's first grant, from the records' handles.
    fn head_of(&self, hash: u64, customer: u32, entitlement: u32) -> Option<u32> {
        self.pairs
            .find(hash, |&h| {
                let r = self.grants.get(h);
                r.customer == customer && r.entitlement == entitlement
            })
            .copied()
    }

    fn rec_hash(&self, g: u32) -> u64 {
        let r = self.grants.get(g);
        pair_hash(
            &self.pair_hasher,
            self.names.get(r.customer),
            self.names.get(r.entitlement),
        )
    }

    /// Puts grant `g` (not in any pair's chain) into its pair's.
    fn link(&mut self, g: u32) {
        let hash = self.rec_hash(g);
        let r = *self.grants.get(g);
        match self.head_of(hash, r.customer, r.entitlement) {
            Some(head) => {
                let after = self.grants.get(head).next;
                self.grants.get_mut(g).next = after;
                self.grants.get_mut(head).next = g;
            }
            None => {
                self.grants.get_mut(g).next = NIL;
                let (grants, names, hasher) = (&self.grants, &self.names, &self.pair_hasher);
                self.pairs.insert_unique(hash, g, |&h| {
                    let r = grants.get(h);
                    pair_hash(hasher, names.get(r.customer), names.get(r.entitlement))
                });
            }
        }
    }

    /// Takes grant `g` out of its pair's chain.
    fn unlink(&mut self, g: u32) {
        let hash = self.rec_hash(g);
        let r = *self.grants.get(g);
        let grants = &self.grants;
        let Ok(mut entry) = self.pairs.find_entry(hash, |&h| {
            let o = grants.get(h);
            o.customer == r.customer && o.entitlement == r.entitlement
        }) else {
            return;
        };
        if *entry.get() == g {
            if r.next == NIL {
                entry.remove();
            } else {
                *entry.get_mut() = r.next;
            }
        } else {
            let mut p = *entry.get();
            loop {
                let next = self.grants.get(p).next;
                if next == g {
                    self.grants.get_mut(p).next = r.next;
                    break;
                }
                if next == NIL {
                    break;
                }
                p = next;
            }
        }
        self.grants.get_mut(g).next = NIL;
    }

    /// The pair's first grant, from the ids asked about.
    fn head(&self, customer: &str, entitlement: &str) -> Option<u32> {
        let hash = pair_hash(&self.pair_hasher, customer, entitlement);
        self.pairs
            .find(hash, |&h| {
                let r = self.grants.get(h);
                self.names.get(r.customer) == customer
                    && self.names.get(r.entitlement) == entitlement
            })
            .copied()
    }

    /// The pair's grants' handles.
    fn chain(&self, customer: &str, entitlement: &str) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.head(customer, entitlement).unwrap_or(NIL);
        std::iter::from_fn(move || {
            (next != NIL).then(|| {
                let g = next;
                next = self.grants.get(g).next;
                g
            })
        })
    }

    /// What the decision reads of grant `g`.
    fn facts(&self, g: u32) -> GrantFacts<'_> {
        let r = self.grants.get(g);
        let subscription = (r.subscription != NIL)
            .then(|| self.subscriptions.get(r.subscription))
            .and_then(|s| {
                Some(SubscriptionView {
                    status: self.sub_statuses.opt(s.status)?,
                    as_of: self.instants.must(s.as_of),
                    since: self.instants.must(s.since),
                })
            });
        GrantFacts {
            status: self.statuses.get(r.status),
            revocation_reason: self.reasons.opt(r.reason),
            revoked_at: self.instants.get(r.revoked_at),
            error_code: self.error_codes.opt(r.error_code).map(String::as_str),
            license_key_expires_at: self.instants.get(r.expires_at),
            one_time: r.subscription == NIL,
            version: self.instants.must(r.version),
            subscription,
            payment: (r.payment != NIL)
                .then(|| self.payments.get(&r.payment))
                .flatten(),
        }
    }

    /// Grant `g` as the answer shows it.
    fn view(&self, g: u32) -> GrantView<'_> {
        let r = self.grants.get(g);
        GrantView {
            facts: self.facts(g),
            id: self.grant_ids.get(g),
            subscription_id: (r.subscription != NIL)
                .then(|| self.subscription_ids.get(r.subscription)),
            oauth_url: self.oauth_urls.get(&g).map(|u| &**u),
        }
    }

    fn views(&self, customer: &str, entitlement: &str) -> Vec<GrantView<'_>> {
        self.chain(customer, entitlement)
            .map(|g| self.view(g))
            .collect()
    }

    /// The full answer.
    pub fn access(
        &self,
        customer: &str,
        entitlement: &str,
        policy: &Policy,
        now: Timestamp,
    ) -> Access {
        let views = self.views(customer, entitlement);
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
        let views = self.views(customer, entitlement);
        access::next_change(&views, policy, now)
    }

    /// Every (customer, entitlement) pair that has a grant.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|&g| {
            let r = self.grants.get(g);
            (self.names.get(r.customer), self.names.get(r.entitlement))
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
        access::allowed(
            self.chain(customer, entitlement).map(|g| self.facts(g)),
            policy,
            now,
        )
    }
}
