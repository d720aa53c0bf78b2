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
const NIL: u32 = u32::MAX;

/// A handle as an index (handles are dense `u32`s).
fn at(handle: u32) -> usize {
    handle as usize
}

/// The next dense handle for a table of `len` values.
fn handle(len: usize) -> u32 {
    // More than 4 G distinct ids, grants or values: the index cannot hold them (nor the
    // memory of the machine it runs on).
    u32::try_from(len)
        .ok()
        .filter(|h| *h != NIL)
        .unwrap_or_else(|| panic!("index: more than {} entries in one table", NIL))
}

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// A vector in fixed chunks: no doubling, so no up-to-2× slack at scale and no copying
/// of millions of records when it grows.
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, value: T) -> u32 {
        let h = handle(self.len);
        match self.chunks.last_mut() {
            // The first chunk grows as a `Vec` does (an index of a few rows, as the
            // change feed builds per delivery, stays small); the others are allocated
            // whole.
            Some(chunk) if chunk.len() < CHUNK => chunk.push(value),
            Some(_) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
            None => self.chunks.push(vec![value]),
        }
        self.len += 1;
        h
    }

    fn get(&self, h: u32) -> &T {
        &self.chunks[at(h >> CHUNK_BITS)][at(h) & (CHUNK - 1)]
    }

    fn get_mut(&mut self, h: u32) -> &mut T {
        &mut self.chunks[at(h >> CHUNK_BITS)][at(h) & (CHUNK - 1)]
    }
}

/// Where an interned string's bytes are.
#[derive(Debug, Clone, Copy)]
struct Span {
    chunk: u32,
    start: u32,
    len: u32,
}

/// Bytes per chunk of interned strings (a longer string gets a chunk of its own).
const TEXT_CHUNK: usize = 1 << 16;

/// Strings -> dense `u32` handles and back. The bytes live in shared chunks; the hash
/// table holds only handles (4 bytes and a control byte per slot).
#[derive(Debug, Default)]
struct Interner {
    table: HashTable<u32>,
    spans: Chunked<Span>,
    text: Vec<String>,
    hasher: DefaultHashBuilder,
}

impl Interner {
    fn get(&self, h: u32) -> &str {
        let s = self.spans.get(h);
        let start = at(s.start);
        &self.text[at(s.chunk)][start..start + at(s.len)]
    }

    fn find(&self, s: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(s);
        self.table.find(hash, |&h| self.get(h) == s).copied()
    }

    fn intern(&mut self, s: &str) -> u32 {
        let hash = self.hasher.hash_one(s);
        if let Some(&h) = self.table.find(hash, |&h| self.get(h) == s) {
            return h;
        }
        // As for `Chunked`, the first chunk grows as a `String` does (to about
        // `TEXT_CHUNK`), the others are allocated whole.
        let fits = match self.text.last() {
            Some(t) if self.text.len() == 1 => t.len() + s.len() <= TEXT_CHUNK,
            Some(t) => t.capacity() - t.len() >= s.len(),
            None => false,
        };
        if !fits {
            let capacity = if self.text.is_empty() {
                s.len()
            } else {
                TEXT_CHUNK.max(s.len())
            };
            self.text.push(String::with_capacity(capacity));
        }
        let chunk = self.text.len() - 1;
        let text = &mut self.text[chunk];
        let start = text.len();
        text.push_str(s);
        let span = Span {
            chunk: handle(chunk),
            start: handle(start),
            len: handle(s.len()),
        };
        let h = self.spans.push(span);
        let (spans, text, hasher) = (&self.spans, &self.text, &self.hasher);
        self.table.insert_unique(hash, h, |&h| {
            let s = spans.get(h);
            let start = at(s.start);
            hasher.hash_one(&text[at(s.chunk)][start..start + at(s.len)])
        });
        h
    }
}

/// The distinct values of a small open set (statuses, reasons, error codes): each gets
/// a handle, and its exact value back.
#[derive(Debug)]
struct Values<T> {
    values: Vec<T>,
    handles: HashMap<T, u32>,
}

impl<T> Default for Values<T> {
    fn default() -> Self {
        Values {
            values: Vec::new(),
            handles: HashMap::default(),
        }
    }
}

impl<T: Clone + Eq + Hash> Values<T> {
    fn handle<Q>(&mut self, value: &Q) -> u32
    where
        T: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = T>,
    {
        if let Some(&h) = self.handles.get(value) {
            return h;
        }
        let h = handle(self.values.len());
        self.values.push(value.to_owned());
        self.handles.insert(value.to_owned(), h);
        h
    }

    fn get(&self, h: u32) -> &T {
        &self.values[at(h)]
    }

    fn opt(&self, h: u32) -> Option<&T> {
        (h != NIL).then(|| self.get(h))
    }
}

/// An instant in 8 bytes: `2 × µs since the epoch` when it has no digits below the
/// microsecond (every instant Dodo sends), `2 × i + 1` for the `i`th exact instant of
/// [`Instants`] otherwise; [`Instant::NONE`] for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Instant(i64);

impl Instant {
    const NONE: Instant = Instant(i64::MIN);
}

/// The instants that microseconds do not hold exactly (nanoseconds, leap seconds).
#[derive(Debug, Default)]
struct Instants {
    exact: Values<Timestamp>,
}

impl Instants {
    fn encode(&mut self, t: Timestamp) -> Instant {
        let nanos = t.timestamp_subsec_nanos();
        if nanos % 1000 == 0 && nanos < 1_000_000_000 {
            // Years 1..=9999 (all `parse_timestamp` accepts) are far inside ±2^62 µs.
            Instant(t.timestamp_micros() << 1)
        } else {
            Instant((i64::from(self.exact.handle(&t)) << 1) | 1)
        }
    }

    fn encode_opt(&mut self, t: Option<Timestamp>) -> Instant {
        t.map_or(Instant::NONE, |t| self.encode(t))
    }

    fn get(&self, i: Instant) -> Option<Timestamp> {
        if i == Instant::NONE {
            None
        } else if i.0 & 1 == 0 {
            chrono::DateTime::from_timestamp_micros(i.0 >> 1)
        } else {
            self.exact
                .values
                .get(usize::try_from(i.0 >> 1).ok()?)
                .copied()
        }
    }

    fn must(&self, i: Instant) -> Timestamp {
        self.get(i).unwrap_or_default()
    }
}

/// What the index keeps of a grant (56 bytes). Its handle is its grant id's.
#[derive(Debug, Clone, Copy)]
struct GrantRec {
    version: Instant,
    revoked_at: Instant,
    expires_at: Instant,
    /// Customer and entitlement handles (in `names`).
    customer: u32,
    entitlement: u32,
    /// The pair's next grant, or [`NIL`].
    next: u32,
    /// Subscription handle, or [`NIL`].
    subscription: u32,
    /// Payment handle, or [`NIL`].
    payment: u32,
    /// Handles in `statuses`, `reasons`, `error_codes` ([`NIL`]: none).
    status: u32,
    reason: u32,
    error_code: u32,
}

/// What the index keeps of a subscription (24 bytes), by subscription handle.
#[derive(Debug, Clone, Copy)]
struct SubRec {
    /// Handle in `sub_statuses`, or [`NIL`] while no snapshot of it is known.
    status: u32,
    as_of: Instant,
    since: Instant,
}

const UNKNOWN_SUB: SubRec = SubRec {
    status: NIL,
    as_of: Instant::NONE,
    since: Instant::NONE,
};

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
    /// Nothing said: the same as no sources at all.
    fn is_empty(&self) -> bool {
        self.refunds.is_empty()
            && self.disputes.is_empty()
            && self.embedded.refunded_at.is_none()
            && self.embedded.disputes.is_empty()
    }

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

/// What a grant row contributes: the fields an answer reads, nothing else.
#[derive(Debug)]
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

/// A decoded object row, ready for [`Index::apply_decoded`].
#[derive(Debug)]
pub struct Decoded(Row);

#[derive(Debug)]
enum Row {
    Grant(Box<GrantRow>),
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
        Ok(Decoded(match row.kind.as_str() {
            "grant" => {
                let grant: Grant =
                    serde_json::from_str(&row.body).map_err(|e| err(e.to_string()))?;
                Row::Grant(Box::new(GrantRow::of(grant, as_of)))
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
                full,
                as_of,
            } => {
                let h = self.payment_ids.intern(&payment_id);
                let src = self.sources.entry(h).or_default();
                src.refunds.insert(refund_id, (full, as_of));
                self.derive(h);
            }
            Row::Dispute {
                payment_id,
                dispute_id,
                status,
                as_of,
            } => {
                let h = self.payment_ids.intern(&payment_id);
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

#[cfg(test)]
mod tests {
    //! The compact index against a straightforward reference: the whole decoded grant
    //! snapshots by id, their subscriptions' facts and their payments' sources kept as
    //! they arrive (as the index did before it was made compact), each answer computed
    //! by [`access`] over [`GrantView::of`] the full grants.

    use super::*;
    use crate::access::{DisputePolicy, Policy};
    use chrono::Duration;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    #[derive(Default)]
    struct Reference {
        grants: std::collections::HashMap<String, (Grant, Timestamp)>,
        subscriptions: std::collections::HashMap<String, SubscriptionFacts>,
        sources: std::collections::HashMap<String, PaymentSources>,
    }

    impl Reference {
        fn apply(&mut self, row: &ObjectRow) {
            // The index skips what does not decode; so does the reference.
            let Ok(Decoded(decoded)) = Index::decode(row) else {
                return;
            };
            match decoded {
                Row::Grant(_) => {
                    let grant: Grant = serde_json::from_str(&row.body).expect("it decoded");
                    let version = parse_timestamp(&row.as_of).expect("it decoded");
                    self.grants.insert(grant.id.clone(), (grant, version));
                }
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
                    let src = self.sources.entry(payment_id).or_default();
                    src.refunds.insert(refund_id, (full, as_of));
                }
                Row::Dispute {
                    payment_id,
                    dispute_id,
                    status,
                    as_of,
                } => {
                    let src = self.sources.entry(payment_id).or_default();
                    src.disputes.insert(dispute_id, (status, as_of));
                }
                Row::Payment {
                    payment_id,
                    embedded,
                } => {
                    self.sources.entry(payment_id).or_default().embedded = embedded;
                }
                Row::Other => {}
            }
        }

        /// (payment id -> facts) as the old index held them: one entry per payment
        /// any source spoke of, default facts included.
        fn payments(&self) -> std::collections::HashMap<&str, PaymentFacts> {
            self.sources
                .iter()
                .map(|(id, src)| (id.as_str(), src.facts()))
                .collect()
        }

        fn views<'a>(
            &'a self,
            payments: &'a std::collections::HashMap<&str, PaymentFacts>,
            customer: &str,
            entitlement: &str,
        ) -> Vec<GrantView<'a>> {
            self.grants
                .values()
                .filter(|(g, _)| g.customer_id == customer && g.entitlement_id == entitlement)
                .map(|(g, version)| {
                    GrantView::of(
                        g,
                        *version,
                        g.subscription_id
                            .as_ref()
                            .and_then(|s| self.subscriptions.get(s)),
                        g.payment_id.as_deref().and_then(|p| payments.get(p)),
                    )
                })
                .collect()
        }
    }

    const CUSTOMERS: &[&str] = &["cus_a", "cus_b", "cus_c"];
    const ENTITLEMENTS: &[&str] = &["ent_1", "ent_2"];

    /// Instants with 0, 3, 6 and 9 fractional digits, offsets, a leap second, before
    /// the epoch and at both ends of the accepted years.
    fn instant() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00Z")),
            2 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00.250Z")),
            2 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00.123456Z")),
            2 => (0u32..40).prop_map(|m| format!("2026-05-01T10:{m:02}:00.123456789Z")),
            1 => (0u32..40).prop_map(|m| format!("2026-05-01T12:{m:02}:00+02:00")),
            1 => Just("2026-06-30T23:59:60.5Z".to_string()),
            1 => Just("1969-12-31T23:59:59.999999Z".to_string()),
            1 => Just("0001-01-01T00:00:00Z".to_string()),
            1 => Just("9999-12-31T23:59:59.999999999Z".to_string()),
        ]
    }

    fn pick(values: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        prop::sample::select(values)
    }

    fn opt(values: &'static [&'static str]) -> impl Strategy<Value = Value> {
        prop::option::of(pick(values)).prop_map(|v| v.map_or(Value::Null, |s| json!(s)))
    }

    fn opt_instant() -> impl Strategy<Value = Value> {
        prop::option::of(instant()).prop_map(|v| v.map_or(Value::Null, |s| json!(s)))
    }

    fn grant_body() -> impl Strategy<Value = Value> {
        (
            (
                pick(&["g1", "g2", "g3", "g4", "g5", "g6"]),
                pick(CUSTOMERS),
                pick(ENTITLEMENTS),
                pick(&[
                    "Delivered",
                    "delivered",
                    "Pending",
                    "Failed",
                    "Revoked",
                    "revoked",
                    "Mystery",
                    "SomethingNew",
                ]),
                opt(&[
                    "subscription_on_hold",
                    "SubscriptionOnHold",
                    "SubscriptionPaused",
                    "subscription_cancelled",
                    "manual",
                    "refund",
                    "license_key_disabled",
                    "brand_new_reason",
                    "WeirdThing",
                ]),
            ),
            (
                opt(&["card_declined", "E42", "weird code"]),
                opt(&["https://oauth.example/1", "https://oauth.example/2"]),
                prop::option::of(opt_instant()),
                opt_instant(),
                opt(&["sub_1", "sub_2", "sub_3"]),
                opt(&["pay_1", "pay_2", "pay_3"]),
            ),
        )
            .prop_map(
                |((id, c, e, status, reason), (code, oauth, key, revoked, sub, pay))| {
                    json!({
                        "id": id,
                        "customer_id": c,
                        "entitlement_id": e,
                        "status": status,
                        "revocation_reason": reason,
                        "error_code": code,
                        "oauth_url": oauth,
                        "license_key": key.map(|at| json!({"key": "K", "expires_at": at})),
                        "revoked_at": revoked,
                        "subscription_id": sub,
                        "payment_id": pay,
                        "metadata": {"plan": "pro"},
                    })
                },
            )
    }

    fn subscription_body() -> impl Strategy<Value = Value> {
        (
            pick(&["sub_1", "sub_2", "sub_3"]),
            pick(&[
                "pending",
                "active",
                "on_hold",
                "OnHold",
                "paused",
                "cancelled",
                "expired",
                "failed",
                "past_due",
                "zombie",
            ]),
        )
            .prop_map(|(id, status)| json!({"subscription_id": id, "status": status}))
    }

    const PAYMENTS: &[&str] = &["pay_1", "pay_2", "pay_3"];
    const DISPUTES: &[&str] = &[
        "dispute_opened",
        "dispute_challenged",
        "dispute_won",
        "dispute_lost",
        "dispute_accepted",
        "dispute_expired",
        "dispute_brand_new",
    ];

    fn refund_body() -> impl Strategy<Value = Value> {
        (
            pick(&["re_1", "re_2"]),
            pick(PAYMENTS),
            pick(&["succeeded", "failed", "pending", "odd"]),
            any::<bool>(),
        )
            .prop_map(|(id, pay, status, partial)| {
                json!({"refund_id": id, "payment_id": pay, "status": status, "is_partial": partial})
            })
    }

    fn dispute_body() -> impl Strategy<Value = Value> {
        (pick(&["dp_1", "dp_2"]), pick(PAYMENTS), pick(DISPUTES)).prop_map(|(id, pay, status)| {
            json!({"dispute_id": id, "payment_id": pay, "dispute_status": status})
        })
    }

    fn payment_body() -> impl Strategy<Value = Value> {
        (
            pick(PAYMENTS),
            opt(&["full", "Full", "partial"]),
            prop::collection::vec(
                (
                    pick(&["re_1", "re_2"]),
                    pick(&["succeeded", "failed"]),
                    any::<bool>(),
                    opt_instant(),
                ),
                0..3,
            ),
            prop::collection::vec((pick(&["dp_1", "dp_2"]), pick(DISPUTES)), 0..3),
        )
            .prop_map(|(id, refund_status, refunds, disputes)| {
                json!({
                    "payment_id": id,
                    "refund_status": refund_status,
                    "refunds": refunds.into_iter().map(|(r, s, p, at)| json!({
                        "refund_id": r, "status": s, "is_partial": p, "created_at": at,
                    })).collect::<Vec<_>>(),
                    "disputes": disputes.into_iter().map(|(d, s)| json!({
                        "dispute_id": d, "dispute_status": s,
                    })).collect::<Vec<_>>(),
                })
            })
    }

    fn row() -> impl Strategy<Value = ObjectRow> {
        let body = prop_oneof![
            8 => grant_body().prop_map(|b| ("grant", b.to_string())),
            3 => subscription_body().prop_map(|b| ("subscription", b.to_string())),
            1 => refund_body().prop_map(|b| ("refund", b.to_string())),
            1 => dispute_body().prop_map(|b| ("dispute", b.to_string())),
            2 => payment_body().prop_map(|b| ("payment", b.to_string())),
            1 => Just(("license_key", "{}".to_string())),
            1 => Just(("grant", "{\"id\": 7}".to_string())),
        ];
        (body, instant(), instant()).prop_map(|((kind, body), as_of, since)| ObjectRow {
            kind: kind.into(),
            id: "x".into(),
            as_of,
            since,
            body,
        })
    }

    fn policies() -> Vec<Policy> {
        vec![
            Policy::default(),
            Policy {
                on_hold_grace: Some(Duration::minutes(10)),
                ..Policy::default()
            },
            Policy {
                subscription_backstop: false,
                on_hold_grace: Some(Duration::days(400_000_000)),
                ..Policy::default()
            },
            Policy {
                refund_denies: false,
                disputes: DisputePolicy::OnLost,
                ..Policy::default()
            },
            Policy {
                disputes: DisputePolicy::OnOpened,
                ..Policy::default()
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn answers_like_the_full_grants(rows in prop::collection::vec(row(), 0..40)) {
            let mut index = Index::default();
            let mut reference = Reference::default();
            for row in &rows {
                if let Ok(d) = Index::decode(row) {
                    index.apply_decoded(d);
                }
                reference.apply(row);
            }
            prop_assert_eq!(index.grants(), reference.grants.len());
            let mut got: Vec<(&str, &str)> = index.pairs().collect();
            got.sort_unstable();
            let mut want: Vec<(&str, &str)> = reference
                .grants
                .values()
                .map(|(g, _)| (g.customer_id.as_str(), g.entitlement_id.as_str()))
                .collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(got, want);

            let payments = reference.payments();
            let nows: Vec<Timestamp> = [
                "2026-05-01T09:00:00Z",
                "2026-05-01T10:15:00.250Z",
                "2026-05-01T10:30:00.123456789Z",
                "2026-05-02T00:00:00Z",
            ]
            .iter()
            .filter_map(|s| parse_timestamp(s))
            .collect();
            for c in CUSTOMERS.iter().chain(&["cus_unknown"]) {
                for e in ENTITLEMENTS {
                    let views = reference.views(&payments, c, e);
                    for policy in &policies() {
                        for &now in &nows {
                            let want = access::decide(c, e, &views, policy, now);
                            let got = index.access(c, e, policy, now);
                            prop_assert_eq!(
                                serde_json::to_string(&got).expect("json"),
                                serde_json::to_string(&want).expect("json")
                            );
                            prop_assert_eq!(&got, &want);
                            prop_assert_eq!(
                                index.has_access(c, e, policy, now),
                                access::allowed(views.iter().map(|v| v.facts), policy, now)
                            );
                            prop_assert_eq!(index.has_access(c, e, policy, now), want.allowed);
                            prop_assert_eq!(
                                index.next_change(c, e, policy, now),
                                access::next_change(&views, policy, now)
                            );
                        }
                    }
                }
            }
        }
    }

    /// Past the first chunk of records (4096 grants) and of id bytes (64 KiB), with an
    /// id longer than a chunk, grants moved between pairs and renewed in place.
    #[test]
    fn answers_like_the_full_grants_past_the_first_chunks() {
        let n = 10_000;
        let customers = n / 3;
        let mut rng = crate::synth::Rng(11);
        let mut rows: Vec<ObjectRow> = (0..n)
            .map(|i| crate::synth::grant_row(i, customers, i, &mut rng))
            .collect();
        let long = format!("cus_{}", "x".repeat(70_000));
        for (i, customer) in [
            (5usize, long.as_str()),
            (4100, "cus_moved"),
            (9000, "cus_moved"),
        ] {
            let mut grant: Grant = serde_json::from_str(&rows[i].body).expect("synthetic");
            grant.customer_id = customer.to_string();
            grant.status = GrantStatus::Other("brand_new".into());
            let mut row = rows[i].clone();
            row.body = serde_json::to_string(&grant).expect("json");
            rows.push(row);
        }
        // Renewed in place (same pair, a newer version).
        let mut again = rows[7000].clone();
        again.as_of = "2026-05-02T00:00:00.000001Z".into();
        rows.push(again);
        let mut index = Index::default();
        let mut reference = Reference::default();
        for row in &rows {
            index.apply_decoded(Index::decode(row).expect("decodes"));
            reference.apply(row);
        }
        assert_eq!(index.grants(), n);
        let payments = reference.payments();
        let now = parse_timestamp("2026-05-01T10:30:00Z").expect("instant");
        let policy = Policy::default();
        let mut pairs: Vec<(String, String)> = reference
            .grants
            .values()
            .map(|(g, _)| (g.customer_id.clone(), g.entitlement_id.clone()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut got: Vec<(String, String)> = index
            .pairs()
            .map(|(c, e)| (c.to_string(), e.to_string()))
            .collect();
        got.sort_unstable();
        assert_eq!(got, pairs);
        for (c, e) in &pairs {
            let views = reference.views(&payments, c, e);
            let want = access::decide(c, e, &views, &policy, now);
            assert_eq!(index.access(c, e, &policy, now), want, "{c} {e}");
            assert_eq!(index.has_access(c, e, &policy, now), want.allowed);
        }
    }

    #[test]
    fn instants_round_trip_exactly() {
        let mut instants = Instants::default();
        for s in [
            "2026-05-01T10:25:33Z",
            "2026-05-01T10:25:33.123456Z",
            "2026-05-01T10:25:33.123456789Z",
            "2026-06-30T23:59:60.5Z",
            "2026-06-30T23:59:60Z",
            "1969-12-31T23:59:59.999999Z",
            "1969-12-31T23:59:59.999999999Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            let t = parse_timestamp(s).expect(s);
            let i = instants.encode(t);
            assert_ne!(i, Instant::NONE, "{s}");
            assert_eq!(instants.get(i), Some(t), "{s}");
        }
        assert_eq!(instants.get(Instant::NONE), None);
    }
}
