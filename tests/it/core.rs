//! Property tests of the engine and its pure core: parse -> fold/step -> outcome -> access.
//!
//! 1. A model-based test (proptest-state-machine): a naive reference model
//!    ([`crate::support::model`], written from PRODUCT.md §3, §4 and §6) against the real
//!    [`Engine`] on a real store ([`Backend`]; SQLite here): grant snapshots of every
//!    status and revocation reason, subscriptions of every status, payments and refunds,
//!    retries (same webhook id and bytes), replays (a new id), retries carrying a newer
//!    payload, out-of-order deliveries, operator accepts, rebuilds, reopening the store
//!    and clock advances, checking outcomes, the quarantine, listings and every access
//!    answer (default policy and an on_hold grace) after every transition.
//! 2. Plain properties over realistic lifecycles ([`crate::support::grant_lifecycles`]):
//!    convergence under any permutation with duplicates, idempotence, rejected snapshots
//!    changing nothing, sticky manual revocations, restorations, subscriptions, outcomes,
//!    timestamps as instants, and a parser that never panics.

use crate::support::model::{self, Family, MKey};
use crate::support::{
    self, at, delivery_ids, entry, fold_by_object, grant, grant_lifecycles, ms, parse_grant,
    payment, rejected_keys, shuffled_with_duplicates, subscription, subscription_history,
    summaries, summary, t0, ts_form, GrantSpec, Meta, PaymentRefunds, PaymentSpec, RefundSpec, St,
    SubSpec, Timestamp, TsForm, REASONS,
};
use chrono::Duration;
use entitlement_sync::access::{decide, GrantView, Policy, SubscriptionFacts};
use entitlement_sync::change::Answer;
use entitlement_sync::event::{self, Event, Grant, Subscription};
use entitlement_sync::fold::{self, outcome, Entry, Folded, Snap, Verdict, VersionKey};
use entitlement_sync::store::REBUILD_MEMORY;
use entitlement_sync::{Delivery, Engine, Outcome};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::Path;

/// Where proptest keeps this module's failures (committed).
const REGRESSIONS: &str = support::regressions_path!("core");

fn config() -> proptest::test_runner::Config {
    support::proptest_config(REGRESSIONS)
}

fn from_key(k: &VersionKey) -> MKey {
    (k.at, k.rank, k.hash)
}

/// Access views of every grant, grouped by the (customer, entitlement) of its *state*.
fn views_by_pair(
    folded: &BTreeMap<String, Folded<Grant>>,
) -> BTreeMap<(String, String), Vec<GrantView<'_>>> {
    let mut pairs: BTreeMap<(String, String), Vec<GrantView<'_>>> = BTreeMap::new();
    for f in folded.values() {
        if let Some(cur) = &f.state {
            let g = &cur.snap.body;
            pairs
                .entry((g.customer_id.clone(), g.entitlement_id.clone()))
                .or_default()
                .push(GrantView::of(g, cur.snap.key.at, None, None));
        }
    }
    pairs
}

// =======================================================================================
// 1. Model-based: the naive model against the real engine on a real store
// =======================================================================================

/// A store the model test runs against: opens (or reopens) an [`Engine`] with the default
/// policy on the store that belongs to `dir` (a fresh directory per test case, kept for the
/// whole case). SQLite keeps a file in it; PostgreSQL derives a schema name from it.
pub trait Backend {
    /// Opens the engine; panics if it cannot.
    fn open(dir: &Path) -> Engine;
    /// Removes what belongs to `dir` outside it, at the end of a case.
    fn close(_dir: &Path) {}
}

/// The default store: a SQLite file.
pub struct Sqlite;

impl Backend for Sqlite {
    fn open(dir: &Path) -> Engine {
        Engine::open(dir.join("model.db")).expect("open the SQLite store")
    }
}

/// The same store in a schema of the PostgreSQL test server (see [`crate::pg`]).
pub struct Postgres;

impl Postgres {
    fn schema(dir: &Path) -> crate::pg::Schema {
        use sha2::{Digest, Sha256};
        let url = crate::pg::url().expect("a PostgreSQL test server");
        let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        crate::pg::Schema::named(&url, &format!("model_{hex}"))
    }
}

impl Backend for Postgres {
    fn open(dir: &Path) -> Engine {
        let schema = Postgres::schema(dir);
        let engine = schema.engine();
        // Keep the schema until `close`: a reopened engine must find its store.
        std::mem::forget(schema);
        engine
    }

    fn close(dir: &Path) {
        drop(Postgres::schema(dir));
    }
}

/// The grants of the model test: (id, customer, entitlement, subscription, payment). Two
/// share a pair (access is an OR); `grant_1` belongs to a subscription (whose payment's
/// refunds must not deny it), `grant_2` to a one-time purchase (a full refund denies it),
/// `grant_4` to nothing (license keys only).
/// (grant id, customer, entitlement, subscription, payment).
type GrantRow = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

const GRANTS: [GrantRow; 4] = [
    (
        "grant_1",
        "cus_a",
        "ent_pro",
        Some("sub_1"),
        Some("pay_sub"),
    ),
    ("grant_2", "cus_a", "ent_pro", None, Some("pay_1")),
    ("grant_3", "cus_a", "ent_files", Some("sub_2"), None),
    ("grant_4", "cus_b", "ent_pro", None, None),
];

/// Subscriptions of the model test.
const SUBS: [&str; 2] = ["sub_1", "sub_2"];

/// Payments: (id, subscription).
const PAYMENTS: [(&str, Option<&str>); 2] = [("pay_1", None), ("pay_sub", Some("sub_1"))];

/// Refunds: (id, payment).
const REFUNDS: [(&str, &str); 3] = [("re_1", "pay_1"), ("re_2", "pay_1"), ("re_3", "pay_sub")];

/// The on_hold grace of the second policy every answer is asked under.
const GRACE_HOURS: i64 = 2;

/// Any snapshot the model test delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Snapshot {
    /// An entitlement grant.
    Grant(GrantSpec),
    /// A subscription.
    Sub(SubSpec),
    /// A payment.
    Payment(PaymentSpec),
    /// A refund.
    Refund(RefundSpec),
}

impl Snapshot {
    fn body(&self) -> Vec<u8> {
        match self {
            Snapshot::Grant(s) => s.body(),
            Snapshot::Sub(s) => s.body(),
            Snapshot::Payment(s) => s.body(),
            Snapshot::Refund(s) => s.body(),
        }
    }

    fn key(&self) -> MKey {
        match self {
            Snapshot::Grant(s) => s.key(),
            Snapshot::Sub(s) => s.key(),
            Snapshot::Payment(s) => s.key(),
            Snapshot::Refund(s) => s.key(),
        }
    }

    /// (kind, id) of the object, as `rejected()` names it.
    fn object(&self) -> (&'static str, &str) {
        match self {
            Snapshot::Grant(s) => ("grant", &s.id),
            Snapshot::Sub(s) => ("subscription", &s.id),
            Snapshot::Payment(s) => ("payment", &s.id),
            Snapshot::Refund(s) => ("refund", &s.id),
        }
    }
}

/// One stored delivery of the model: webhook id, snapshot, its bytes and key.
#[derive(Clone, Debug)]
pub struct Stored {
    webhook_id: String,
    snap: Snapshot,
    body: Vec<u8>,
    key: MKey,
}

/// What the last transition should report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nothing to check (clock, rebuild, reopen).
    Nothing,
    /// `ingest` returns this outcome.
    Outcome(&'static str),
    /// `accept` returns this object.
    Accepted(&'static str, String),
}

/// The model's world: every stored delivery, the operator's accepts, the clock.
#[derive(Clone, Debug)]
pub struct World {
    now: Timestamp,
    /// Every stored delivery (unique by webhook id and body), in arrival order.
    deliveries: Vec<Stored>,
    /// Keys of the snapshots an operator accepted.
    forced: BTreeSet<MKey>,
    /// Counter for fresh webhook ids.
    next_id: u32,
    /// What the last transition should report.
    expected: Expect,
}

/// A rejected snapshot: (object kind, object id, key).
type RejectedSnap = (&'static str, String, MKey);

/// Every object's fold, keyed by (kind, id).
struct Folds {
    grants: BTreeMap<String, model::Fold<GrantSpec>>,
    subs: BTreeMap<String, model::Fold<SubSpec>>,
    payments: BTreeMap<String, model::Fold<PaymentSpec>>,
    refunds: BTreeMap<String, model::Fold<RefundSpec>>,
}

impl Folds {
    /// (kind, id, key) of every rejected snapshot.
    fn rejected(&self) -> Vec<RejectedSnap> {
        fn of<S>(kind: &'static str, m: &BTreeMap<String, model::Fold<S>>) -> Vec<RejectedSnap> {
            m.iter()
                .flat_map(|(id, f)| f.rejected.iter().map(move |k| (kind, id.clone(), *k)))
                .collect()
        }
        let mut out = of("grant", &self.grants);
        out.extend(of("subscription", &self.subs));
        out.extend(of("payment", &self.payments));
        out.extend(of("refund", &self.refunds));
        out
    }

    /// What the policy may use about a grant.
    fn facts<'a>(&self, g: &'a GrantSpec) -> model::GrantFacts<'a> {
        let subscription = g.subscription_id.as_ref().and_then(|s| {
            let (spec, key, since) = self.subs.get(s)?.state.as_ref()?;
            Some(model::SubFacts {
                status: spec.status.canonical,
                as_of: key.0,
                since: *since,
            })
        });
        // The earliest full refund of the payment: by a refund object whose state is a
        // succeeded, non-partial refund (its version), or by the payment's own snapshot
        // (a listed refund not before its own object's version).
        let refunded_at = g.payment_id.as_ref().and_then(|p| {
            let by_refunds = self.refunds.values().filter_map(|f| {
                let (r, key, _) = f.state.as_ref()?;
                (&r.payment_id == p && model::refund_is_full(r)).then_some(key.0)
            });
            let own = |id: &str| {
                let (r, key, _) = self.refunds.get(id)?.state.as_ref()?;
                (&r.payment_id == p).then_some((key.0, r.status == "failed"))
            };
            let by_payment = self
                .payments
                .get(p)
                .and_then(|f| f.state.as_ref())
                .and_then(|(spec, _, _)| model::payment_refunded_at(spec, own));
            by_refunds.chain(by_payment).min()
        });
        model::GrantFacts {
            grant: g,
            subscription,
            refunded_at,
        }
    }
}

impl World {
    /// Nothing delivered yet, at [`t0`].
    fn empty() -> World {
        World {
            now: t0(),
            deliveries: Vec::new(),
            forced: BTreeSet::new(),
            next_id: 0,
            expected: Expect::Nothing,
        }
    }

    fn folds(&self) -> Folds {
        fn family<'a, S: model::Family + 'a>(
            deliveries: &'a [Stored],
            forced: &BTreeSet<MKey>,
            pick: impl Fn(&'a Snapshot) -> Option<&'a S>,
        ) -> BTreeMap<String, model::Fold<S>> {
            let mut by_id: BTreeMap<String, Vec<(MKey, &S)>> = BTreeMap::new();
            for d in deliveries {
                if let Some(s) = pick(&d.snap) {
                    by_id
                        .entry(d.snap.object().1.to_string())
                        .or_default()
                        .push((d.key, s));
                }
            }
            by_id
                .into_iter()
                .map(|(id, snaps)| (id, model::fold_keyed(snaps, forced)))
                .collect()
        }
        let (d, f) = (&self.deliveries[..], &self.forced);
        Folds {
            grants: family(d, f, |s| match s {
                Snapshot::Grant(g) => Some(g),
                _ => None,
            }),
            subs: family(d, f, |s| match s {
                Snapshot::Sub(g) => Some(g),
                _ => None,
            }),
            payments: family(d, f, |s| match s {
                Snapshot::Payment(g) => Some(g),
                _ => None,
            }),
            refunds: family(d, f, |s| match s {
                Snapshot::Refund(g) => Some(g),
                _ => None,
            }),
        }
    }

    /// The fold of one object: (rejected keys, every key, state key) before a delivery.
    fn object_fold(&self, snap: &Snapshot) -> model::Fold<()> {
        let (kind, id) = snap.object();
        let folds = self.folds();
        fn erase<S>(f: Option<&model::Fold<S>>) -> model::Fold<()> {
            f.map(|f| model::Fold {
                state: f.state.as_ref().map(|(_, k, since)| ((), *k, *since)),
                rejected: f.rejected.clone(),
                keys: f.keys.clone(),
                forced_applied: f.forced_applied.clone(),
            })
            .unwrap_or_default()
        }
        match kind {
            "grant" => erase(folds.grants.get(id)),
            "subscription" => erase(folds.subs.get(id)),
            "payment" => erase(folds.payments.get(id)),
            _ => erase(folds.refunds.get(id)),
        }
    }

    /// Webhook ids carrying each snapshot: (kind, id, key) -> ids.
    fn carriers(&self, kind: &str, id: &str, key: &MKey) -> BTreeSet<String> {
        self.deliveries
            .iter()
            .filter(|d| d.snap.object() == (kind, id) && &d.key == key)
            .map(|d| d.webhook_id.clone())
            .collect()
    }

    /// Webhook ids that carry a currently rejected snapshot, with every rejected snapshot
    /// each carries (a retry with a newer payload may carry several, of one object or of
    /// several), in key order.
    fn acceptable(&self) -> BTreeMap<String, Vec<RejectedSnap>> {
        let mut by_id: BTreeMap<String, Vec<RejectedSnap>> = BTreeMap::new();
        for (kind, id, key) in self.folds().rejected() {
            for w in self.carriers(kind, &id, &key) {
                by_id.entry(w).or_default().push((kind, id.clone(), key));
            }
        }
        for snaps in by_id.values_mut() {
            snaps.sort_by_key(|(_, _, key)| *key);
        }
        by_id
    }

    /// The newest version instant of anything delivered (where new snapshots start).
    fn newest(&self) -> Timestamp {
        self.deliveries
            .iter()
            .map(|d| d.key.0)
            .max()
            .unwrap_or_else(t0)
    }
}

/// A transition of the model test.
#[derive(Clone, Debug)]
pub enum Tr {
    /// A delivery: a new snapshot under a fresh webhook id; an earlier delivery again
    /// (same id, same bytes: a retry); an earlier snapshot under a fresh id (a dashboard
    /// replay); or a newer payload under an earlier webhook id (a retry carrying the
    /// latest state). Snapshots may be older than what is known (reordering).
    Deliver {
        /// The webhook id.
        webhook_id: String,
        /// The payload.
        snap: Box<Snapshot>,
    },
    /// The operator accepts the quarantined snapshot carried by this delivery.
    Accept {
        /// The webhook id named.
        webhook_id: String,
    },
    /// `rebuild`: every projection from the stored deliveries and overrides, holding
    /// the parsed snapshots of at most `memory` bytes of bodies at once (1: every object
    /// folded in a range of its own, its deliveries read and parsed a second time).
    Rebuild {
        /// The rebuild's memory budget.
        memory: usize,
    },
    /// Drop the engine and open the same store again.
    Reopen,
    /// Time passes (the `now` of every access question).
    Advance {
        /// By this many milliseconds.
        by_ms: i64,
    },
}

/// Shifts of a new snapshot's version from the newest one known: mostly newer (ties
/// included), sometimes older (an out-of-order delivery).
fn shift() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => prop::sample::select(vec![0i64, 250, 1_000, 60_000, 600_000, 1_800_000]),
        1 => prop::sample::select(vec![-250i64, -1_000, -60_000, -600_000, -3_600_000]),
    ]
    .prop_map(ms)
}

/// Any snapshot of grant `g` of [`GRANTS`]: every status, every reason of [`REASONS`]
/// (recoverable and final), license keys expiring around `base`, odd shapes and
/// identity changes.
fn grant_snapshot(g: usize, base: Timestamp) -> impl Strategy<Value = Snapshot> {
    let kind = prop_oneof![
        1 => Just((St::Pending, None)),
        3 => Just((St::Delivered, None)),
        1 => Just((St::Failed, None)),
        4 => (0..REASONS.len()).prop_map(|r| (St::Revoked, Some(REASONS[r]))),
    ];
    (
        (kind, 0..3usize, shift(), ts_form()),
        (
            prop::option::of(prop::option::of(0..240i64)),
            prop::option::of(prop::sample::select(vec![
                "github_permission_denied",
                "discord_guild_missing",
            ])),
            0..20u8,
            0..3u32,
            0..4u8,
            prop::sample::select(vec![0i64, 0, 1_500, -1_000]),
        ),
    )
        .prop_map(
            move |(((status, reason), spelling, shift, form), (lic, err, odd, rev, meta, lag))| {
                let (id, customer, entitlement, sub, pay) = GRANTS[g];
                let mut s = grant(id, status, base + shift)
                    .customer(customer)
                    .entitlement(entitlement)
                    .spelled(status.spellings()[spelling])
                    .form(form)
                    .revision(rev);
                s.subscription_id = sub.map(str::to_string);
                s.payment_id = pay.map(str::to_string);
                s.reason = reason;
                s.license = lic.map(|m| m.map(|m| base + Duration::minutes(m)));
                s.error_code = if status == St::Failed {
                    err.map(str::to_string)
                } else {
                    None
                };
                // Pending grants carry their consent URL; some others keep a stale one.
                s.oauth_url = (status == St::Pending || rev == 2)
                    .then(|| format!("https://discord.com/oauth2/authorize?grant={id}"));
                s.envelope_lag_ms = lag;
                s.metadata =
                    [Meta::Null, Meta::Absent, Meta::Empty, Meta::Mixed][usize::from(meta)];
                match odd {
                    0 => s.customer_id = "cus_intruder".to_string(),
                    1 => s.entitlement_id = "ent_other".to_string(),
                    2 => s.updated_at_in_payload = false,
                    3 => s.event_type = Some("entitlement_grant.delivered"),
                    4 => s.payload_type = true,
                    5 => s.business_id = Some("bus_other".to_string()),
                    6 => s.business_id = None,
                    _ => {}
                }
                Snapshot::Grant(s)
            },
        )
}

/// Any snapshot of subscription `i` of [`SUBS`]: every status (on_hold, paused,
/// past_due, cancelled, expired, failed, one unknown), rarely another customer.
fn sub_snapshot(i: usize, base: Timestamp) -> impl Strategy<Value = Snapshot> {
    (
        prop::sample::select(support::SUB_STATUSES.to_vec()),
        shift(),
        ts_form(),
        0..3u32,
        any::<bool>(),
        0..12u8,
    )
        .prop_map(
            move |(status, shift, form, revision, amount_as_string, odd)| {
                let mut s = subscription(SUBS[i], status.wire, base + shift);
                s.form = form;
                s.revision = revision;
                s.amount_as_string = amount_as_string;
                match odd {
                    0 => s.customer_id = Some("cus_intruder".to_string()),
                    1 => s.customer_id = None,
                    _ => {}
                }
                Snapshot::Sub(s)
            },
        )
}

/// Any snapshot of payment `i` of [`PAYMENTS`]: no refund, a full one, a partial one, or
/// partial ones adding up to full.
fn payment_snapshot(i: usize, base: Timestamp) -> impl Strategy<Value = Snapshot> {
    (shift(), ts_form(), 0..2u32, 0..4u8, 0..3_600_000i64).prop_map(
        move |(shift, form, revision, refunds, before)| {
            let (id, sub) = PAYMENTS[i];
            let at = base + shift;
            let mut p = payment(id, at);
            p.subscription_id = sub.map(str::to_string);
            // The refunds it lists are the refund objects of [`REFUNDS`] where there are
            // such (their own snapshots say when they were made).
            let mut listed = REFUNDS.iter().filter(|(_, pay)| *pay == id).map(|(r, _)| r);
            for slot in &mut p.refund_ids {
                if let Some(r) = listed.next() {
                    *slot = r.to_string();
                }
            }
            p.form = form;
            p.revision = revision;
            p.refunds = match refunds {
                0 => PaymentRefunds::None,
                1 => PaymentRefunds::Full(at - ms(before)),
                2 => PaymentRefunds::Partial(at - ms(before)),
                _ => PaymentRefunds::FullByParts(at - ms(before), at - ms(before / 2)),
            };
            Snapshot::Payment(p)
        },
    )
}

/// Any snapshot of refund `i` of [`REFUNDS`]: succeeded, pending or failed, partial or not.
fn refund_snapshot(i: usize, base: Timestamp) -> impl Strategy<Value = Snapshot> {
    (
        prop::sample::select(vec!["succeeded", "succeeded", "pending", "failed"]),
        prop::sample::select(vec![false, false, false, true]),
        shift(),
        ts_form(),
    )
        .prop_map(move |(status, partial, shift, form)| {
            let (id, payment_id) = REFUNDS[i];
            Snapshot::Refund(RefundSpec {
                id: id.to_string(),
                payment_id: payment_id.to_string(),
                status,
                partial,
                at: base + shift,
                form,
            })
        })
}

/// Any snapshot of any object, grants most often.
fn any_snapshot(base: Timestamp) -> BoxedStrategy<Snapshot> {
    prop_oneof![
        4 => (0..GRANTS.len()).prop_flat_map(move |g| grant_snapshot(g, base)),
        2 => (0..SUBS.len()).prop_flat_map(move |i| sub_snapshot(i, base)),
        1 => (0..PAYMENTS.len()).prop_flat_map(move |i| payment_snapshot(i, base)),
        1 => (0..REFUNDS.len()).prop_flat_map(move |i| refund_snapshot(i, base)),
    ]
    .boxed()
}

/// Another snapshot of the object `of` is about (a retry's newer payload).
fn snapshot_like(of: &Snapshot, base: Timestamp) -> BoxedStrategy<Snapshot> {
    let index = |ids: &[&str], id: &str| ids.iter().position(|x| *x == id).unwrap_or(0);
    match of {
        Snapshot::Grant(g) => {
            let ids: Vec<&str> = GRANTS.iter().map(|g| g.0).collect();
            grant_snapshot(index(&ids, &g.id), base).boxed()
        }
        Snapshot::Sub(s) => sub_snapshot(index(&SUBS, &s.id), base).boxed(),
        Snapshot::Payment(p) => {
            let ids: Vec<&str> = PAYMENTS.iter().map(|p| p.0).collect();
            payment_snapshot(index(&ids, &p.id), base).boxed()
        }
        Snapshot::Refund(r) => {
            let ids: Vec<&str> = REFUNDS.iter().map(|r| r.0).collect();
            refund_snapshot(index(&ids, &r.id), base).boxed()
        }
    }
}

impl ReferenceStateMachine for World {
    type State = World;
    type Transition = Tr;

    fn init_state() -> BoxedStrategy<World> {
        Just(World::empty()).boxed()
    }

    fn transitions(state: &World) -> BoxedStrategy<Tr> {
        let base = state.newest();
        let fresh = format!("wh_{}", state.next_id);
        let deliver = |webhook_id: String, snap: Snapshot| Tr::Deliver {
            webhook_id,
            snap: Box::new(snap),
        };
        let f = fresh.clone();
        let mut options: Vec<(u32, BoxedStrategy<Tr>)> = vec![
            (
                8,
                any_snapshot(base)
                    .prop_map(move |s| deliver(f.clone(), s))
                    .boxed(),
            ),
            (
                2,
                prop::sample::select(vec![
                    0i64, 250, 60_000, 600_000, 1_800_000, 3_600_000, 7_200_000,
                ])
                .prop_map(|by_ms| Tr::Advance { by_ms })
                .boxed(),
            ),
            (
                1,
                prop::sample::select(vec![1, 2_000, REBUILD_MEMORY])
                    .prop_map(|memory| Tr::Rebuild { memory })
                    .boxed(),
            ),
            (1, Just(Tr::Reopen).boxed()),
        ];
        if !state.deliveries.is_empty() {
            let earlier: Vec<(String, Snapshot)> = state
                .deliveries
                .iter()
                .map(|d| (d.webhook_id.clone(), d.snap.clone()))
                .collect();
            // A retry: the same id and bytes.
            options.push((
                2,
                prop::sample::select(earlier.clone())
                    .prop_map(move |(w, s)| deliver(w, s))
                    .boxed(),
            ));
            // A replay: an earlier snapshot under a fresh id.
            let f = fresh.clone();
            options.push((
                1,
                prop::sample::select(earlier.clone())
                    .prop_map(move |(_, s)| deliver(f.clone(), s))
                    .boxed(),
            ));
            // A retry carrying a newer payload of the same object under the same id.
            options.push((
                2,
                prop::sample::select(earlier)
                    .prop_flat_map(move |(w, s)| {
                        snapshot_like(&s, base).prop_map(move |n| deliver(w.clone(), n))
                    })
                    .boxed(),
            ));
        }
        let acceptable: Vec<String> = state.acceptable().into_keys().collect();
        if !acceptable.is_empty() {
            options.push((
                3,
                prop::sample::select(acceptable)
                    .prop_map(|webhook_id| Tr::Accept { webhook_id })
                    .boxed(),
            ));
        }
        prop::strategy::Union::new_weighted(options).boxed()
    }

    fn preconditions(state: &World, tr: &Tr) -> bool {
        match tr {
            Tr::Accept { webhook_id } => state.acceptable().contains_key(webhook_id),
            _ => true,
        }
    }

    fn apply(mut state: World, tr: &Tr) -> World {
        state.expected = Expect::Nothing;
        state.next_id += 1;
        match tr {
            Tr::Deliver { webhook_id, snap } => {
                let body = snap.body();
                let seen = state
                    .deliveries
                    .iter()
                    .any(|d| &d.webhook_id == webhook_id && d.body == body);
                state.expected = if seen {
                    // The same webhook id with the same bytes: dropped unread.
                    Expect::Outcome("duplicate")
                } else {
                    let key = snap.key();
                    let before = state.object_fold(snap);
                    state.deliveries.push(Stored {
                        webhook_id: webhook_id.clone(),
                        snap: (**snap).clone(),
                        body,
                        key,
                    });
                    let after = state.object_fold(snap);
                    Expect::Outcome(model::expected_outcome(&before, &after, &key))
                };
            }
            Tr::Accept { webhook_id } => {
                if let Some(snaps) = state.acceptable().remove(webhook_id) {
                    // Every one is accepted; `accept` names the object of the first.
                    let (kind, id, _) = snaps[0].clone();
                    state.forced.extend(snaps.iter().map(|(_, _, key)| *key));
                    state.expected = Expect::Accepted(kind, id);
                }
            }
            Tr::Advance { by_ms } => state.now += ms(*by_ms),
            Tr::Rebuild { .. } | Tr::Reopen => {}
        }
        state
    }
}

/// The system under test: the real [`Engine`] on a store of backend `B`.
pub struct Sut<B: Backend> {
    dir: tempfile::TempDir,
    engine: Option<Engine>,
    last: Expect,
    backend: PhantomData<B>,
}

impl<B: Backend> Sut<B> {
    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("an open engine")
    }
}

impl<B: Backend> Drop for Sut<B> {
    fn drop(&mut self) {
        drop(self.engine.take());
        B::close(self.dir.path());
    }
}

/// The model's answer for every pair under one policy, in the engine's terms.
fn model_answer(a: &entitlement_sync::access::Access) -> model::ModelAccess {
    model::ModelAccess {
        allowed: a.allowed,
        status: a.status.clone(),
        reason: a.reason.clone(),
        grant_id: a.grant_id.clone(),
        oauth_url: a.oauth_url.clone(),
        grants: a.grants,
        as_of: a.as_of,
        grace_until: a.grace_until,
    }
}

impl<B: Backend> StateMachineTest for Sut<B> {
    type SystemUnderTest = Sut<B>;
    type Reference = World;

    fn init_test(_: &World) -> Sut<B> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = B::open(dir.path());
        assert_eq!(
            engine.policy(),
            &Policy::default(),
            "backends open with the default policy"
        );
        Sut {
            dir,
            engine: Some(engine),
            last: Expect::Nothing,
            backend: PhantomData,
        }
    }

    fn apply(mut sut: Sut<B>, world: &World, tr: Tr) -> Sut<B> {
        sut.last = Expect::Nothing;
        match tr {
            Tr::Deliver { webhook_id, snap } => {
                let d = Delivery::new(webhook_id, snap.body(), world.now);
                let outcome = sut.engine().ingest(d).expect("ingest");
                sut.last = Expect::Outcome(outcome.as_str());
            }
            Tr::Accept { webhook_id } => {
                let (kind, id) = sut.engine().accept(&webhook_id, world.now).expect("accept");
                let kind = kind.as_str();
                sut.last = Expect::Accepted(kind, id);
            }
            Tr::Rebuild { memory } => {
                let stats = sut
                    .engine()
                    .rebuild_within(world.now, memory)
                    .expect("rebuild");
                assert_eq!(stats.deliveries, world.deliveries.len() as u64, "{stats:?}");
                assert_eq!(stats.malformed, 0, "{stats:?}");
                if memory == 1 && stats.objects > 0 {
                    assert_eq!(stats.ranges, stats.objects, "{stats:?}");
                }
            }
            Tr::Reopen => {
                drop(sut.engine.take());
                sut.engine = Some(B::open(sut.dir.path()));
            }
            // What `serve`'s timer does when time moves on.
            Tr::Advance { .. } => {
                sut.engine().advance(world.now).expect("advance");
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut<B>, world: &World) {
        let engine = sut.engine();
        assert_eq!(
            sut.last, world.expected,
            "what the last transition reported"
        );
        assert_eq!(
            engine.deliveries(None, None).expect("deliveries").len(),
            world.deliveries.len(),
            "stored deliveries"
        );
        let folds = world.folds();

        // The quarantine: each rejected snapshot once, named by a delivery carrying it.
        let mut records: Vec<(String, String, String)> = engine
            .rejected()
            .expect("rejected")
            .into_iter()
            .map(|q| (q.object_kind, q.object_id, q.delivery_id))
            .collect();
        records.sort();
        let want = folds.rejected();
        let mut unused = records.clone();
        for (kind, id, key) in &want {
            let carriers = world.carriers(kind, id, key);
            let found = unused
                .iter()
                .position(|(k, i, w)| k == kind && i == id && carriers.contains(w));
            match found {
                Some(n) => {
                    unused.remove(n);
                }
                None => panic!(
                    "rejected {kind} {id} (carried by {carriers:?}) is not in the quarantine {records:?}"
                ),
            }
        }
        assert!(
            unused.is_empty(),
            "quarantined but not rejected by the model: {unused:?} (model: {want:?})"
        );

        // Grants as listed.
        let got: BTreeSet<(String, String, String, String, Option<String>)> = engine
            .grants(None)
            .expect("grants")
            .into_iter()
            .map(|g| {
                (
                    g.grant_id,
                    g.customer_id,
                    g.entitlement_id,
                    g.status,
                    g.revocation_reason,
                )
            })
            .collect();
        let states: Vec<&GrantSpec> = folds
            .grants
            .values()
            .filter_map(|f| f.state.as_ref().map(|s| &s.0))
            .collect();
        let want: BTreeSet<(String, String, String, String, Option<String>)> = states
            .iter()
            .map(|g| {
                (
                    g.id.clone(),
                    g.customer_id.clone(),
                    g.entitlement_id.clone(),
                    g.status.canonical().to_string(),
                    g.reason.map(|r| r.canonical.to_string()),
                )
            })
            .collect();
        assert_eq!(got, want, "grants");

        // Subscriptions as the customer view lists them.
        for customer in ["cus_a", "cus_intruder"] {
            let got: BTreeSet<(String, String)> = engine
                .customer(customer)
                .expect("customer")
                .subscriptions
                .into_iter()
                .map(|s| (s.subscription_id, s.status))
                .collect();
            let want: BTreeSet<(String, String)> = folds
                .subs
                .values()
                .filter_map(|f| f.state.as_ref())
                .filter(|(s, _, _)| s.customer_id.as_deref() == Some(customer))
                .map(|(s, _, _)| (s.id.clone(), s.status.canonical.to_string()))
                .collect();
            assert_eq!(got, want, "subscriptions of {customer}");
        }

        // Access, for every pair either side knows of and one nobody has, under the
        // default policy and with an on_hold grace.
        let mut pairs: BTreeSet<(String, String)> = GRANTS
            .iter()
            .map(|g| (g.1.to_string(), g.2.to_string()))
            .collect();
        pairs.insert(("cus_nobody".into(), "ent_pro".into()));
        pairs.extend(got.iter().map(|g| (g.1.clone(), g.2.clone())));
        pairs.extend(want.iter().map(|g| (g.1.clone(), g.2.clone())));
        let grace = Policy {
            on_hold_grace: Some(Duration::hours(GRACE_HOURS)),
            ..Policy::default()
        };
        let policies = [
            (Policy::default(), model::ModelPolicy { grace: None }),
            (
                grace,
                model::ModelPolicy {
                    grace: Some(Duration::hours(GRACE_HOURS)),
                },
            ),
        ];
        let feed = folded_feed(engine);
        let none = Answer::none();
        for (c, e) in &pairs {
            let facts: Vec<model::GrantFacts<'_>> = states
                .iter()
                .filter(|g| (&g.customer_id, &g.entitlement_id) == (c, e))
                .map(|g| folds.facts(g))
                .collect();
            for (n, (policy, mp)) in policies.iter().enumerate() {
                let got = if n == 0 {
                    engine.access(c, e, world.now)
                } else {
                    engine.access_with(c, e, world.now, policy)
                }
                .expect("access");
                let want = model::access(&facts, *mp, world.now);
                assert_eq!(
                    model_answer(&got),
                    want,
                    "access of ({c}, {e}) at {} under {policy:?}\nfacts: {facts:?}",
                    world.now
                );
                assert_eq!(got.evaluated_at, world.now);
                if n == 0 {
                    assert_eq!(engine.has_access(c, e, world.now), want.allowed);
                    // The feed is never wrong about the current answer.
                    let fed = feed.get(&(c.clone(), e.clone())).unwrap_or(&none);
                    let want = Answer {
                        allowed: want.allowed,
                        status: want.status.clone(),
                        reason: want.reason.clone(),
                    };
                    assert_eq!(
                        fed, &want,
                        "the feed's last answer for ({c}, {e}) at {}\nfacts: {facts:?}",
                        world.now
                    );
                }
            }
        }
    }
}

/// The access-change feed folded per pair, after checking its invariants: seqs strictly
/// increase, each change's `previous` is the pair's change before it (or `none`), and
/// no change repeats the answer before it.
pub fn folded_feed(engine: &Engine) -> BTreeMap<(String, String), Answer> {
    let changes = engine.changes(0, usize::MAX).expect("changes");
    let mut last: BTreeMap<(String, String), Answer> = BTreeMap::new();
    let mut seq = 0;
    for c in changes {
        assert!(c.seq > seq, "seq {} after {seq}", c.seq);
        seq = c.seq;
        let pair = (c.customer_id.clone(), c.entitlement_id.clone());
        let before = last.get(&pair).cloned().unwrap_or_else(Answer::none);
        assert_eq!(c.previous, before, "previous of change {c:?}");
        assert_ne!(
            c.answer(),
            before,
            "change {c:?} repeats the answer before it"
        );
        last.insert(pair, c.answer());
    }
    last
}

/// Runs one sequence of transitions through the model test on SQLite.
fn replay(transitions: Vec<Tr>) {
    <Sut<Sqlite> as StateMachineTest>::test_sequential(config(), World::empty(), transitions, None);
}

/// A delivery of `grant_2` (one-time purchase) in `status` at `t0 + minutes`.
fn grant_2(webhook_id: &str, status: St, minutes: i64, reason: Option<&str>) -> Tr {
    let (id, customer, entitlement, _, payment) = GRANTS[1];
    let mut g = grant(id, status, t0() + Duration::minutes(minutes))
        .customer(customer)
        .entitlement(entitlement);
    g.payment_id = payment.map(str::to_string);
    if let Some(r) = reason {
        g = g.reason(r);
    }
    Tr::Deliver {
        webhook_id: webhook_id.to_string(),
        snap: Box::new(Snapshot::Grant(g)),
    }
}

/// The lifecycle the model test covers, as one readable example: a manual revocation,
/// a rejected restoration, the operator's accept, a newer snapshot on the fast path,
/// a replay, an older snapshot (re-fold), a rebuild and a reopen.
#[test]
fn model_example_accept_then_newer_snapshots_under_new_ids() {
    replay(vec![
        grant_2("wh_1", St::Revoked, 0, Some("manual")),
        grant_2("wh_2", St::Delivered, 1, None),
        Tr::Accept {
            webhook_id: "wh_2".into(),
        },
        grant_2("wh_3", St::Revoked, 3, Some("subscription_on_hold")),
        grant_2("wh_4", St::Revoked, 3, Some("subscription_on_hold")),
        grant_2("wh_5", St::Delivered, 2, None),
        Tr::Rebuild {
            memory: REBUILD_MEMORY,
        },
        Tr::Reopen,
        Tr::Advance { by_ms: 3_600_000 },
    ]);
}

/// Overrides are recorded per (webhook id, body hash): the operator accepts `wh_2` (a
/// restoration after `manual`); Dodo then retries `wh_2` with a newer payload (`pending`,
/// illegal after `delivered`). It is rejected, live and after a rebuild alike. (Before
/// overrides named the body, a rebuild forced every body of `wh_2`: live != rebuild.)
#[test]
fn a_retry_under_an_accepted_webhook_id_is_not_forced() {
    replay(vec![
        grant_2("wh_1", St::Revoked, 0, Some("manual")),
        grant_2("wh_2", St::Delivered, 1, None),
        Tr::Accept {
            webhook_id: "wh_2".into(),
        },
        grant_2("wh_2", St::Pending, 2, None),
        // Each object in a range of its own: the override is found on the second read.
        Tr::Rebuild { memory: 1 },
        Tr::Reopen,
    ]);
}

/// Two rejected snapshots carried by one webhook id (a restoration after `manual`, then
/// its retry with a newer payload) are both in the quarantine. (When the quarantine was
/// keyed by webhook id alone, one of them was lost.)
#[test]
fn two_rejected_payloads_under_one_webhook_id_are_both_quarantined() {
    replay(vec![
        grant_2("wh_1", St::Revoked, 0, Some("manual")),
        grant_2("wh_2", St::Delivered, 1, None),
        grant_2("wh_2", St::Delivered, 2, None),
    ]);
}

/// `rejected()` lists a quarantined snapshot once, however many bodies its webhook id
/// carries.
#[test]
fn rejected_lists_a_snapshot_once_whatever_its_webhook_id_carries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Sqlite::open(dir.path());
    let active = subscription("sub_1", "active", t0()).body();
    let pending = subscription("sub_1", "pending", t0() + Duration::minutes(1)).body();
    assert_eq!(
        engine.ingest(Delivery::new("wh_1", active, t0())).unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        engine.ingest(Delivery::new("wh_1", pending, t0())).unwrap(),
        Outcome::Rejected
    );
    let q = engine.rejected().expect("rejected");
    assert_eq!(q.len(), 1, "{q:?}");
}

prop_state_machine! {
    #![proptest_config(config())]

    /// The real engine on SQLite agrees with the naive model after every transition.
    #[test]
    fn sqlite_engine_matches_the_naive_model(sequential 1..48 => Sut<Sqlite>);
}

prop_state_machine! {
    #![proptest_config(pg_config())]

    /// The same suite on PostgreSQL (run by the test below when there is a server).
    fn postgres_model(sequential 1..48 => Sut<Postgres>);
}

/// Fewer cases than on SQLite (each case creates and drops a schema): 64, or
/// `PROPTEST_CASES`.
fn pg_config() -> proptest::test_runner::Config {
    let mut config = config();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

/// The real engine on PostgreSQL agrees with the naive model after every transition.
#[test]
fn postgres_engine_matches_the_naive_model() {
    if crate::pg::url().is_some() {
        postgres_model();
    }
}

// =======================================================================================
// 2. Plain properties
// =======================================================================================

/// Parses every spec once.
fn snaps_of(specs: &[GrantSpec]) -> Vec<Snap<Grant>> {
    specs.iter().map(GrantSpec::snap).collect()
}

/// Folds `snaps[i]` for every `(i, delivery id)`.
fn fold_order(snaps: &[Snap<Grant>], order: &[(usize, String)]) -> BTreeMap<String, Folded<Grant>> {
    fold_by_object(
        order
            .iter()
            .map(|(i, id)| entry(snaps[*i].clone(), id.clone())),
    )
}

fn in_order(n: usize) -> Vec<(usize, String)> {
    (0..n).map(|i| (i, format!("wh_{i}"))).collect()
}

/// Every access answer of every pair at a few instants.
fn all_answers(folded: &BTreeMap<String, Folded<Grant>>) -> Vec<entitlement_sync::access::Access> {
    let views = views_by_pair(folded);
    let mut out = Vec::new();
    for h in [0i64, 1, 30, 400, 2_100] {
        let now = t0() + Duration::hours(h);
        for ((c, e), vs) in &views {
            out.push(decide(c, e, vs, &Policy::default(), now));
        }
    }
    out
}

fn lifecycles_with_order() -> impl Strategy<Value = (Vec<GrantSpec>, Vec<(usize, bool)>)> {
    grant_lifecycles(6).prop_flat_map(|specs| {
        let n = specs.len();
        (Just(specs), shuffled_with_duplicates(n))
    })
}

proptest! {
    #![proptest_config(config())]

    /// PRODUCT.md §3: any permutation, with any duplicates (retries under the same webhook
    /// id, replays under new ones), gives the in-order state, the same rejected snapshots
    /// and the same access answers; and the naive model agrees with both.
    #[test]
    fn any_arrival_order_converges((specs, order) in lifecycles_with_order()) {
        let snaps = snaps_of(&specs);
        let ordered = fold_order(&snaps, &in_order(specs.len()));
        let shuffled = fold_order(&snaps, &delivery_ids(&order));
        prop_assert_eq!(summaries(&ordered), summaries(&shuffled));
        for (id, f) in &ordered {
            prop_assert_eq!(rejected_keys(f), rejected_keys(&shuffled[id]));
        }
        prop_assert_eq!(all_answers(&ordered), all_answers(&shuffled));
        for (id, f) in &ordered {
            let want = model::fold_grant(specs.iter().filter(|g| &g.id == id), &BTreeSet::new());
            let cur = f.state.as_ref().expect("a state");
            prop_assert_eq!(Some(from_key(&cur.snap.key)), want.state.map(|s| s.1));
            let rejected: BTreeSet<MKey> = f.rejected().map(|(s, _)| from_key(&s.key)).collect();
            prop_assert_eq!(rejected, want.rejected);
        }
    }

    /// Folding the history twice over (the list concatenated with itself) changes nothing.
    #[test]
    fn folding_twice_changes_nothing(specs in grant_lifecycles(6)) {
        let snaps = snaps_of(&specs);
        let once = in_order(specs.len());
        let twice: Vec<(usize, String)> = once.iter().chain(once.iter()).cloned().collect();
        prop_assert_eq!(fold_order(&snaps, &once), fold_order(&snaps, &twice));
    }

    /// A rejected snapshot never changes state: folding without the rejected snapshots
    /// gives the same state, applies every remaining snapshot, and rejects none.
    #[test]
    fn rejected_snapshots_change_nothing(specs in grant_lifecycles(6)) {
        let snaps = snaps_of(&specs);
        let all = fold_order(&snaps, &in_order(specs.len()));
        let rejected: BTreeSet<VersionKey> =
            all.values().flat_map(rejected_keys).collect();
        let kept: Vec<(usize, String)> = in_order(specs.len())
            .into_iter()
            .filter(|(i, _)| !rejected.contains(&snaps[*i].key))
            .collect();
        let without = fold_order(&snaps, &kept);
        for (id, f) in &all {
            let w = &without[id];
            prop_assert_eq!(&f.state, &w.state);
            prop_assert_eq!(w.rejected().count(), 0);
            let applied: Vec<VersionKey> = f
                .steps
                .iter()
                .filter(|s| matches!(s.verdict, Verdict::Applied { .. }))
                .map(|s| s.key)
                .collect();
            prop_assert_eq!(applied, w.steps.iter().map(|s| s.key).collect::<Vec<_>>());
        }
    }

    /// `outcome()`: a snapshot whose key is already in the history is `duplicate`, under
    /// any webhook id, and changes nothing.
    #[test]
    fn re_added_key_is_duplicate(
        (specs, pick) in grant_lifecycles(6).prop_flat_map(|s| {
            let n = s.len();
            (Just(s), 0..n)
        })
    ) {
        let snaps = snaps_of(&specs);
        let id = &snaps[pick].body.id;
        let history: Vec<Entry<Grant>> = snaps
            .iter()
            .enumerate()
            .filter(|(_, s)| &s.body.id == id)
            .map(|(i, s)| entry(s.clone(), format!("wh_{i}")))
            .collect();
        let before = fold::fold(history.clone());
        let mut more = history;
        more.push(entry(snaps[pick].clone(), "wh_replay"));
        let after = fold::fold(more);
        prop_assert_eq!(outcome(&before, &after, &snaps[pick].key), Outcome::Duplicate);
        prop_assert_eq!(summary(&before), summary(&after));
    }

    /// Delivered one at a time in any order, each delivery reports what the model says:
    /// `duplicate`, `rejected`, `applied` or `stale`.
    #[test]
    fn outcomes_match_the_model((specs, order) in lifecycles_with_order()) {
        let snaps = snaps_of(&specs);
        let mut seen: Vec<GrantSpec> = Vec::new();
        let mut histories: BTreeMap<String, Vec<Entry<Grant>>> = BTreeMap::new();
        for (i, wid) in delivery_ids(&order) {
            let snap = &snaps[i];
            let h = histories.entry(snap.body.id.clone()).or_default();
            let before = fold::fold(h.clone());
            h.push(entry(snap.clone(), wid));
            let after = fold::fold(h.clone());
            let m_before = model::fold_grant(seen.iter().filter(|g| g.id == specs[i].id), &BTreeSet::new());
            seen.push(specs[i].clone());
            let m_after = model::fold_grant(seen.iter().filter(|g| g.id == specs[i].id), &BTreeSet::new());
            let want = model::expected_outcome(&m_before, &m_after, &model::grant_key(&specs[i]));
            prop_assert_eq!(outcome(&before, &after, &snap.key).as_str(), want);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Manual revocation, restoration, forbidden restoration
// ---------------------------------------------------------------------------------------

/// Legal ways into a manual revocation (PRODUCT.md §4: from pending, delivered, failed,
/// or a recoverable revocation).
fn prefix(kind: u8, begin: Timestamp) -> Vec<GrantSpec> {
    let g = |s: St, k: i64| grant("grant_m", s, begin + Duration::minutes(k));
    match kind % 7 {
        0 => vec![],
        1 => vec![g(St::Pending, 0)],
        2 => vec![g(St::Pending, 0), g(St::Delivered, 1)],
        3 => vec![g(St::Delivered, 0)],
        4 => vec![g(St::Pending, 0), g(St::Failed, 1)],
        5 => vec![
            g(St::Delivered, 0),
            g(St::Revoked, 1).reason("subscription_on_hold"),
        ],
        _ => vec![
            g(St::Delivered, 0),
            g(St::Revoked, 1).reason("SubscriptionPaused"),
            g(St::Delivered, 2),
        ],
    }
}

/// A manual revocation at `T`, legal where it lands, then later snapshots: deliveries
/// (to be rejected), other reasons (rejected), the same reason again (legal).
fn manual_story() -> impl Strategy<Value = (Vec<GrantSpec>, usize)> {
    (
        0..7u8,
        prop::sample::select(vec!["manual", "Manual"]),
        ts_form(),
        prop::collection::vec(
            (
                1..600i64,
                0..4u8,
                0..REASONS.len(),
                0..3usize,
                ts_form(),
                0..3u32,
            ),
            1..6,
        ),
    )
        .prop_map(|(kind, manual, form, later)| {
            let mut specs = prefix(kind, t0());
            let revoke_at = t0() + Duration::minutes(10);
            specs.push(
                grant("grant_m", St::Revoked, revoke_at)
                    .reason(manual)
                    .form(form),
            );
            let manual_index = specs.len() - 1;
            for (secs, what, r, spelling, form, rev) in later {
                let when = revoke_at + Duration::seconds(secs) - ms(750);
                let s = match what {
                    0 | 1 => grant("grant_m", St::Delivered, when)
                        .spelled(St::Delivered.spellings()[spelling]),
                    2 => grant("grant_m", St::Revoked, when).reason(REASONS[r].wire),
                    _ => grant("grant_m", St::Revoked, when).reason("manual"),
                };
                specs.push(s.form(form).revision(rev));
            }
            (specs, manual_index)
        })
}

proptest! {
    #![proptest_config(config())]

    /// PRODUCT.md §3/§4: after a `manual` revocation every later `delivered` is rejected,
    /// whatever the arrival order, and the grant stays revoked for `manual`.
    #[test]
    fn manual_revocation_is_sticky(
        ((specs, manual), order) in manual_story().prop_flat_map(|(s, m)| {
            let n = s.len();
            (Just((s, m)), shuffled_with_duplicates(n))
        })
    ) {
        let snaps = snaps_of(&specs);
        let folded = fold_order(&snaps, &delivery_ids(&order));
        let f = &folded["grant_m"];
        let manual_key = snaps[manual].key;
        let verdict = |k: &VersionKey| f.steps.iter().find(|s| &s.key == k).map(|s| s.verdict.clone());
        prop_assert_eq!(verdict(&manual_key), Some(Verdict::Applied { forced: false }));
        for (spec, snap) in specs.iter().zip(&snaps) {
            if snap.key > manual_key && spec.status == St::Delivered {
                prop_assert!(
                    matches!(verdict(&snap.key), Some(Verdict::Rejected(_))),
                    "a delivery after the manual revocation was not rejected: {:?}", spec
                );
            }
        }
        let cur = f.state.as_ref().expect("a state");
        prop_assert_eq!(cur.snap.body.status.as_str(), "revoked");
        prop_assert_eq!(
            cur.snap.body.revocation_reason.as_ref().map(|r| r.as_str()),
            Some("manual")
        );
        let views = views_by_pair(&folded);
        let a = decide("cus_a", "ent_pro", &views[&("cus_a".to_string(), "ent_pro".to_string())], &Policy::default(), t0() + Duration::days(1));
        prop_assert!(!a.allowed);
        prop_assert_eq!(a.reason.as_deref(), Some("manual"));
    }

    /// PRODUCT.md §4: restoration after `subscription_on_hold`, a pause
    /// (`SubscriptionPaused`), `license_key_disabled` or `platform_external` is legal, keeps
    /// the grant id, and may repeat; any arrival order gives the last snapshot's state.
    #[test]
    fn restoration_after_recoverable_reasons(
        (cycles, order) in prop::collection::vec(
            (prop::sample::select(support::recoverable_reasons()), ts_form(), ts_form(), 1..3_600i64),
            1..5,
        ).prop_flat_map(|c| {
            let n = 1 + 2 * c.len();
            (Just(c), shuffled_with_duplicates(n))
        })
    ) {
        let mut specs = vec![grant("grant_r", St::Delivered, t0()).license_until(None)];
        let mut when = t0();
        for (reason, f1, f2, secs) in &cycles {
            when += Duration::seconds(*secs);
            specs.push(grant("grant_r", St::Revoked, when).reason(reason.wire).form(*f1).license_until(None));
            when += Duration::seconds(*secs);
            specs.push(grant("grant_r", St::Delivered, when).spelled("Delivered").form(*f2).license_until(None));
        }
        let snaps = snaps_of(&specs);
        let folded = fold_order(&snaps, &delivery_ids(&order));
        let f = &folded["grant_r"];
        prop_assert_eq!(f.rejected().count(), 0, "a restoration was rejected: {:?}", f.rejected().collect::<Vec<_>>());
        let cur = f.state.as_ref().expect("a state");
        prop_assert_eq!(cur.snap.key, snaps[snaps.len() - 1].key);
        prop_assert_eq!(cur.snap.body.id.as_str(), "grant_r");
        let views = views_by_pair(&folded);
        let a = decide("cus_a", "ent_pro", &views[&("cus_a".to_string(), "ent_pro".to_string())], &Policy::default(), when);
        prop_assert!(a.allowed);
        prop_assert_eq!(a.grant_id.as_deref(), Some("grant_r"));
    }

    /// PRODUCT.md §4: no restoration after `manual`, `subscription_cancelled`,
    /// `subscription_expired`, `refund`, `plan_changed`, an unknown or a missing reason;
    /// and such a reason never changes.
    #[test]
    fn final_revocations_stay_final(
        (reason, missing, other, order) in (
            prop::sample::select(support::final_reasons()),
            any::<bool>(),
            prop::sample::select(REASONS.to_vec()),
        ).prop_flat_map(|(r, m, o)| (Just(r), Just(m), Just(o), shuffled_with_duplicates(4)))
    ) {
        let mut revoked = grant("grant_f", St::Revoked, t0() + Duration::minutes(1)).reason(reason.wire);
        if missing {
            revoked.reason = None;
        }
        let mut change = grant("grant_f", St::Revoked, t0() + Duration::minutes(3)).reason(other.wire);
        // The reason changes unless it is the same (and present).
        let changes = missing || other.canonical != reason.canonical;
        if !changes {
            change.revision = 1;
        }
        let specs = vec![
            grant("grant_f", St::Delivered, t0()),
            revoked,
            grant("grant_f", St::Delivered, t0() + Duration::minutes(2)).spelled("Delivered"),
            change,
        ];
        let snaps = snaps_of(&specs);
        let f = &fold_order(&snaps, &delivery_ids(&order))["grant_f"];
        let rejected: BTreeSet<VersionKey> = rejected_keys(f).into_iter().collect();
        prop_assert!(rejected.contains(&snaps[2].key), "restored after {:?} (missing: {})", reason, missing);
        prop_assert_eq!(rejected.contains(&snaps[3].key), changes);
        let cur = f.state.as_ref().expect("a state");
        prop_assert_eq!(cur.snap.body.status.as_str(), "revoked");
        let want = if missing { None } else { Some(reason.canonical) };
        prop_assert_eq!(cur.snap.body.revocation_reason.as_ref().map(|r| r.as_str()), want);
    }
}

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

fn sub_snaps(specs: &[SubSpec]) -> Vec<Snap<Subscription>> {
    specs.iter().map(SubSpec::snap).collect()
}

fn fold_subs(snaps: &[Snap<Subscription>], order: &[(usize, String)]) -> Folded<Subscription> {
    fold::fold(
        order
            .iter()
            .map(|(i, id)| entry(snaps[*i].clone(), id.clone())),
    )
}

proptest! {
    #![proptest_config(config())]

    /// Subscriptions converge too; along the fold nothing returns to `pending` and a
    /// terminal status stays terminal (only same-status updates follow it).
    #[test]
    fn subscriptions_converge(
        (specs, order) in subscription_history(false).prop_flat_map(|s| {
            let n = s.len();
            (Just(s), shuffled_with_duplicates(n))
        })
    ) {
        let snaps = sub_snaps(&specs);
        let ordered = fold_subs(&snaps, &in_order(specs.len()));
        let shuffled = fold_subs(&snaps, &delivery_ids(&order));
        prop_assert_eq!(summary(&ordered), summary(&shuffled));
        let status_of: BTreeMap<VersionKey, String> = snaps
            .iter()
            .map(|s| (s.key, s.body.status.as_str().to_string()))
            .collect();
        let mut prev: Option<&str> = None;
        for s in &ordered.steps {
            if let Verdict::Applied { .. } = s.verdict {
                let now = status_of[&s.key].as_str();
                if let Some(p) = prev {
                    prop_assert!(!(now == "pending" && p != "pending"), "{} -> pending", p);
                    prop_assert!(!(model::sub_terminal(p) && now != p), "terminal {} -> {}", p, now);
                }
                prev = Some(now);
            }
        }
    }

    /// With distinct instants, the subscription fold is the naive model's.
    #[test]
    fn subscriptions_match_the_model(
        (specs, order) in subscription_history(true).prop_flat_map(|s| {
            let n = s.len();
            (Just(s), shuffled_with_duplicates(n))
        })
    ) {
        let snaps = sub_snaps(&specs);
        let f = fold_subs(&snaps, &delivery_ids(&order));
        let (state, rejected) = model::fold_subscription(&specs);
        let state = state.expect("a state");
        let cur = f.state.as_ref().expect("a state");
        prop_assert_eq!(cur.snap.key.at, state.at);
        prop_assert_eq!(cur.snap.body.status.as_str(), state.status.canonical);
        let got: BTreeSet<Timestamp> = f.rejected().map(|(s, _)| s.key.at).collect();
        prop_assert_eq!(got, rejected);
    }
}

// ---------------------------------------------------------------------------------------
// Timestamps are instants
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Versions are instants, whatever their text (0/3/6/9 digits, `Z` or offsets):
    /// `delivered` at `a` then `revoked(subscription_on_hold)` at `b > a` ends revoked in
    /// either arrival order, and each key is the instant written.
    #[test]
    fn versions_are_instants(
        a_ms in 0..7_200_000i64,
        gap_ms in prop::sample::select(vec![1i64, 250, 999, 1_000, 3_600_000, 7_200_000]),
        fa in ts_form(),
        fb in ts_form(),
        reverse in any::<bool>(),
    ) {
        let a = t0() + ms(a_ms);
        let b = a + ms(gap_ms);
        let delivered = grant("grant_t", St::Delivered, a).form(fa);
        let revoked = grant("grant_t", St::Revoked, b).reason("subscription_on_hold").form(fb);
        let (sa, sb) = (delivered.snap(), revoked.snap());
        prop_assert_eq!(sa.key.at, a);
        prop_assert_eq!(sb.key.at, b);
        let order = if reverse { vec![sb.clone(), sa.clone()] } else { vec![sa.clone(), sb.clone()] };
        let f = fold::fold(order.into_iter().enumerate().map(|(i, s)| entry(s, format!("wh_{i}"))));
        prop_assert_eq!(f.state.as_ref().map(|c| c.snap.key), Some(sb.key));
        prop_assert_eq!(f.rejected().count(), 0);
    }
}

/// The examples of PRODUCT.md §3, where text order and instant order disagree.
#[test]
fn timestamps_compare_as_instants_not_text() {
    // (delivered at, revoked(subscription_on_hold) at, which one is newer)
    // As text, "…00.250Z" < "…00Z" and "12:04:59+02:00" > "10:05:00Z".
    let cases = [
        (
            "2026-05-01T10:05:00Z",
            "2026-05-01T10:05:00.250Z",
            "revoked",
        ),
        (
            "2026-05-01T10:05:00.250Z",
            "2026-05-01T10:05:00Z",
            "delivered",
        ),
        (
            "2026-05-01T12:04:59+02:00",
            "2026-05-01T10:05:00Z",
            "revoked",
        ),
        (
            "2026-05-01T10:05:00.000001Z",
            "2026-05-01T12:05:00.000+02:00",
            "delivered",
        ),
        (
            "2026-05-01T05:05:00.5-05:00",
            "2026-05-01T10:05:00.499999Z",
            "delivered",
        ),
    ];
    for (d, r, newer) in cases {
        let body = |status: &str, ts: &str, reason: Option<&str>| {
            let mut data = grant("grant_t", St::Delivered, t0()).data();
            data["status"] = status.into();
            data["updated_at"] = ts.into();
            data["revocation_reason"] = reason.into();
            serde_json::to_vec(&support::envelope("entitlement_grant.updated", ts, data))
                .expect("json")
        };
        let sd = parse_grant(&body("Delivered", d, None));
        let sr = parse_grant(&body("Revoked", r, Some("subscription_on_hold")));
        assert_eq!(sd.key.at, at(d), "{d}");
        assert_eq!(sr.key.at, at(r), "{r}");
        for order in [[&sd, &sr], [&sr, &sd]] {
            let f = fold::fold(
                order
                    .iter()
                    .enumerate()
                    .map(|(i, s)| entry((*s).clone(), format!("wh_{i}"))),
            );
            let state = f.state.expect("a state").snap.body.status.to_string();
            assert_eq!(state, newer, "delivered {d}, revoked {r}");
        }
    }
    // Equal instants in different text are one version: ranks order them.
    assert_eq!(
        parse_grant(&grant("g", St::Pending, at("2026-05-01T10:05:00Z")).body())
            .key
            .at,
        parse_grant(
            &grant("g", St::Pending, at("2026-05-01T10:05:00Z"))
                .form(TsForm {
                    frac_digits: 6,
                    offset_minutes: 120
                })
                .body()
        )
        .key
        .at
    );
}

/// PRODUCT.md §3: "a `manual` revocation followed by a newer `delivered` must be rejected
/// whichever arrives first" — also when a snapshot with a status this version does not
/// know (PRODUCT.md §5: every enum is open) comes in between. Otherwise an unknown status
/// launders a final revocation (or a failure) back into access.
#[test]
fn unknown_status_does_not_launder_a_final_state() {
    let cases: [(St, Option<&str>); 3] = [
        (St::Revoked, Some("manual")),
        (St::Revoked, Some("refund")),
        (St::Failed, None),
    ];
    for (status, reason) in cases {
        let mut first = grant("grant_u", status, t0());
        if let Some(r) = reason {
            first = first.reason(r);
        }
        let mut odd = grant("grant_u", St::Pending, t0() + Duration::minutes(1));
        odd.status_wire = "Suspended";
        let later = grant("grant_u", St::Delivered, t0() + Duration::minutes(2));
        let snaps = snaps_of(&[first, odd, later]);
        assert_eq!(snaps[1].body.status.as_str(), "suspended");
        let f = fold::fold(
            snaps
                .iter()
                .enumerate()
                .map(|(i, s)| entry(s.clone(), format!("wh_{i}"))),
        );
        let cur = f.state.as_ref().expect("a state");
        assert_ne!(
            cur.snap.body.status.as_str(),
            "delivered",
            "{status:?}({reason:?}) -> suspended -> delivered was accepted: {:?}",
            f.steps
        );
        let folded = BTreeMap::from([("grant_u".to_string(), f.clone())]);
        let views = views_by_pair(&folded);
        let a = decide(
            "cus_a",
            "ent_pro",
            &views[&("cus_a".to_string(), "ent_pro".to_string())],
            &Policy::default(),
            t0() + Duration::hours(1),
        );
        assert!(!a.allowed, "{status:?}({reason:?}): access came back");
    }
}

// ---------------------------------------------------------------------------------------
// The parser never panics
// ---------------------------------------------------------------------------------------

/// Folds whatever parsed, alongside a valid snapshot, and asks every question of it, with
/// a grace policy that does date arithmetic: nothing may panic.
fn exercise(body: &[u8]) {
    let Ok(env) = event::parse(body) else {
        return;
    };
    let _ = env.event.object();
    match env.event {
        Event::Grant(snap) => {
            let valid = grant(&snap.body.id, St::Delivered, t0()).snap();
            let f = fold::fold([entry(valid, "wh_0"), entry(snap.clone(), "wh_1")]);
            let _ = snap.key.encode();
            for s in f.rejected() {
                let _ = s.1.message();
            }
            if let Some(cur) = &f.state {
                let sub = SubscriptionFacts {
                    subscription_id: "sub_1".into(),
                    status: entitlement_sync::event::SubscriptionStatus::OnHold,
                    as_of: cur.snap.key.at,
                    since: cur.snap.key.at,
                };
                let policy = Policy {
                    on_hold_grace: Some(Duration::days(30)),
                    ..Policy::default()
                };
                for (version, subscription) in [(cur.snap.key.at, None), (t0(), Some(&sub))] {
                    let view = GrantView::of(&cur.snap.body, version, subscription, None);
                    let _ = decide("c", "e", &[view], &policy, t0());
                    let _ = decide("c", "e", &[view], &Policy::default(), cur.snap.key.at);
                }
            }
        }
        Event::Subscription(snap) => {
            let _ = fold::fold([entry(snap.clone(), "a"), entry(snap, "b")]);
        }
        Event::Payment(snap) => {
            let _ = fold::fold([entry(snap, "a")]);
        }
        Event::CreditEntry(snap) => {
            let _ = fold::fold([entry(snap.clone(), "a"), entry(snap, "b")]);
        }
        _ => {}
    }
}

/// Every family's event types, and some that do not exist.
fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "entitlement_grant.created",
            "entitlement_grant.delivered",
            "entitlement_grant.revoked",
            "subscription.active",
            "subscription.past_due",
            "payment.succeeded",
            "refund.succeeded",
            "dispute.lost",
            "license_key.created",
            "credit.added",
            "credit.balance_low",
            "payout.success",
            "dunning.started",
            "abandoned_checkout.detected",
            "",
            ".",
            "credit",
        ])
        .prop_map(str::to_string),
        "[a-z_.]{0,24}",
    ]
}

/// One mutation of a JSON document.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace the value at a path.
    Set(Vec<usize>, serde_json::Value),
    /// Delete the field at a path.
    Delete(Vec<usize>),
    /// Add a field to the object at a path.
    Insert(Vec<usize>, String, serde_json::Value),
}

/// Applies one mutation.
fn mutate(doc: &mut serde_json::Value, m: &Mutation) {
    use serde_json::Value;
    /// Follows `path` (indices modulo the number of children) down to a container and,
    /// for an object, the key chosen at the last step.
    fn walk<'a>(v: &'a mut Value, path: &[usize]) -> (&'a mut Value, Option<String>) {
        enum Next {
            Field(String),
            Item(usize),
            Stop(Option<String>),
        }
        let Some((i, rest)) = path.split_first() else {
            return (v, None);
        };
        let next = match &*v {
            Value::Object(map) if !map.is_empty() => {
                let k = map.keys().nth(i % map.len()).cloned().expect("a key");
                if !rest.is_empty() && (map[&k].is_object() || map[&k].is_array()) {
                    Next::Field(k)
                } else {
                    Next::Stop(Some(k))
                }
            }
            Value::Array(items) if !items.is_empty() && !rest.is_empty() => {
                Next::Item(i % items.len())
            }
            _ => Next::Stop(None),
        };
        match next {
            Next::Field(k) => walk(v.get_mut(&k).expect("present"), rest),
            Next::Item(n) => walk(v.get_mut(n).expect("present"), rest),
            Next::Stop(k) => (v, k),
        }
    }
    match m {
        Mutation::Set(path, value) => match walk(doc, path) {
            (Value::Object(map), Some(k)) => {
                map.insert(k, value.clone());
            }
            (other, _) => *other = value.clone(),
        },
        Mutation::Delete(path) => {
            if let (Value::Object(map), Some(k)) = walk(doc, path) {
                map.remove(&k);
            }
        }
        Mutation::Insert(path, k, value) => {
            if let (Value::Object(map), _) = walk(doc, path) {
                map.insert(k.clone(), value.clone());
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let path = prop::collection::vec(0..32usize, 1..4);
    let value = prop_oneof![
        support::any_json(),
        support::interesting_string().prop_map(serde_json::Value::String),
    ];
    prop_oneof![
        3 => (path.clone(), value.clone()).prop_map(|(p, v)| Mutation::Set(p, v)),
        1 => path.clone().prop_map(Mutation::Delete),
        1 => (path, support::field_name(), value).prop_map(|(p, k, v)| Mutation::Insert(p, k, v)),
    ]
}

/// A valid body of every family: a grant of the lifecycle generator, a subscription,
/// the payment of seed 001, a credit entry.
fn valid_body() -> impl Strategy<Value = serde_json::Value> {
    let lifecycle = grant_lifecycles(3);
    prop_oneof![
        3 => lifecycle.prop_flat_map(|specs| {
            let n = specs.len();
            (0..n).prop_map(move |i| specs[i].envelope())
        }),
        1 => Just(serde_json::from_slice(&subscription("sub_1", "on_hold", t0()).body()).expect("json")),
        1 => Just(serde_json::json!({
            "business_id": "bus_xxxxx", "type": "payment.succeeded", "timestamp": "2024-01-01T12:00:00Z",
            "data": {"payload_type": "Payment", "payment_id": "pay_xxxxx", "total_amount": 2999, "currency": "USD",
                     "customer": {"customer_id": "cust_xxxxx", "email": "customer@example.com", "name": "John Doe"}}
        })),
        1 => Just(serde_json::json!({
            "business_id": "bus_1", "type": "credit.added", "timestamp": "2026-05-01T10:00:00.000Z",
            "data": {"id": "cle_1", "customer_id": "cus_a", "credit_entitlement_id": "cent_1", "amount": "10.500",
                     "balance_before": "100", "balance_after": "110.500", "overage_before": "0", "overage_after": "0",
                     "is_credit": true, "created_at": "2026-05-01T10:00:00.000Z", "transaction_type": "credit_added",
                     "metadata": null, "brand_id": "br_1", "business_id": "bus_1"}
        })),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: an error or an envelope, never a panic.
    #[test]
    fn parse_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&body);
    }

    /// Any JSON value, bare or as the `data` of an envelope of any type.
    #[test]
    fn parse_never_panics_on_json(
        value in support::any_json(),
        ty in event_type(),
        ts in prop_oneof![support::interesting_string(), Just("2026-05-01T10:00:00Z".to_string())],
    ) {
        exercise(&serde_json::to_vec(&value).expect("json"));
        let env = serde_json::json!({"business_id": "bus_1", "type": ty, "timestamp": ts, "data": value});
        exercise(&serde_json::to_vec(&env).expect("json"));
    }

    /// Any mutation of a valid body: fields replaced (with odd timestamps, huge decimals,
    /// wrong types), deleted or added, then bytes flipped, cut or inserted.
    #[test]
    fn parse_never_panics_on_mutated_bodies(
        doc in valid_body(),
        mutations in prop::collection::vec(mutation(), 1..6),
        byte_edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..3),
    ) {
        let mut doc = doc;
        for m in &mutations {
            mutate(&mut doc, m);
        }
        let mut body = serde_json::to_vec(&doc).expect("json");
        exercise(&body);
        for (i, b, op) in &byte_edits {
            if body.is_empty() {
                break;
            }
            let at = i.index(body.len());
            match op {
                0 => body[at] = *b,
                1 => body.insert(at, *b),
                _ => {
                    body.truncate(at);
                }
            }
        }
        exercise(&body);
    }
}

/// Every odd string of [`support::INTERESTING`] in every timestamp field of a grant
/// of every status: a parse error or an answer, never a panic (date arithmetic included).
#[test]
fn odd_timestamps_never_panic() {
    let fields = [
        "updated_at",
        "revoked_at",
        "created_at",
        "delivered_at",
        "oauth_expires_at",
    ];
    for base in [
        grant("g", St::Revoked, t0()).reason("subscription_on_hold"),
        grant("g", St::Delivered, t0()).license_until(Some(t0())),
        grant("g", St::Pending, t0()),
    ] {
        for field in fields {
            for s in support::INTERESTING {
                let mut data = base.data();
                data[field] = (*s).into();
                if let Some(key) = data.get_mut("license_key").filter(|k| k.is_object()) {
                    key["expires_at"] = (*s).into();
                }
                for envelope_ts in [*s, "2026-05-01T10:00:00Z"] {
                    let env =
                        support::envelope("entitlement_grant.revoked", envelope_ts, data.clone());
                    exercise(&serde_json::to_vec(&env).expect("json"));
                }
            }
        }
    }
    // The far edge that does parse: date arithmetic from it must not overflow.
    let edge = grant("g", St::Revoked, at("9999-12-31T23:59:59.999999999Z"))
        .reason("subscription_on_hold")
        .form(TsForm {
            frac_digits: 9,
            offset_minutes: 0,
        });
    assert_eq!(edge.snap().key.at, at("9999-12-31T23:59:59.999999999Z"));
    exercise(&edge.body());
}

// ---------------------------------------------------------------------------------------
// Access policy (PRODUCT.md §6)
// ---------------------------------------------------------------------------------------

const BACKSTOP_DENIES: [&str; 5] = ["on_hold", "paused", "cancelled", "expired", "failed"];

proptest! {
    #![proptest_config(config())]

    /// The policy knobs, against PRODUCT.md §6 and the contract in `access.rs`: a
    /// subscription known (by a snapshot newer than the grant) to be on_hold, paused,
    /// cancelled, expired or failed denies with `subscription_<status>` when the backstop
    /// is on; an on_hold grace keeps access until the hold is that old (also for a grant
    /// already revoked for `subscription_on_hold`); a newer full refund denies with
    /// `refund` when on; disputes deny with `dispute` per `never` / `on_lost` /
    /// `on_opened`. Older facts never deny.
    #[test]
    fn policy_denials_follow_the_rules(
        revoked_on_hold in any::<bool>(),
        version_min in 0..100i64,
        sub in prop::option::of((prop::sample::select(support::SUB_STATUSES.to_vec()), 0..200i64, 0..100i64)),
        refunded in prop::option::of(0..200i64),
        dispute in prop::option::of((prop::sample::select(vec![
            "dispute_opened", "dispute_challenged", "dispute_lost", "dispute_accepted",
            "dispute_won", "dispute_expired", "dispute_cancelled", "pre_arbitration_opened",
        ]), 0..200i64)),
        backstop in any::<bool>(),
        grace in prop::option::of(0..300i64),
        refund_denies in any::<bool>(),
        disputes in prop::sample::select(vec!["never", "on_lost", "on_opened"]),
        now_min in 0..400i64,
    ) {
        use entitlement_sync::access::{DisputePolicy, PaymentFacts};
        use entitlement_sync::event::{DisputeStatus, SubscriptionStatus};
        let m = |k: i64| t0() + Duration::minutes(k);
        let version = m(version_min);
        let spec = if revoked_on_hold {
            grant("grant_p", St::Revoked, version).reason("subscription_on_hold")
        } else {
            grant("grant_p", St::Delivered, version)
        };
        let snap = spec.snap();
        let facts = sub.map(|(s, as_of, age)| SubscriptionFacts {
            subscription_id: "sub_1".into(),
            status: SubscriptionStatus::parse(s.wire),
            as_of: m(as_of),
            since: m(as_of - age),
        });
        let reported = |pick: fn(&DisputeStatus) -> bool| {
            dispute.and_then(|(s, k)| pick(&DisputeStatus::parse(s)).then(|| m(k)))
        };
        let payment = PaymentFacts {
            refunded_at: refunded.map(m),
            lost_dispute_at: reported(DisputeStatus::is_lost),
            open_dispute_at: reported(DisputeStatus::is_open),
        };
        let policy = Policy {
            subscription_backstop: backstop,
            on_hold_grace: grace.map(Duration::minutes),
            refund_denies,
            disputes: disputes.parse::<DisputePolicy>().expect("a policy"),
        };
        let now = m(now_min);
        let view = GrantView::of(&snap.body, version, facts.as_ref(), Some(&payment));
        let got = decide("cus_a", "ent_pro", &[view], &policy, now);

        // The expectation, from the text.
        let in_grace = |began: Timestamp| grace.is_some_and(|g| now < began + Duration::minutes(g));
        let mut denials: Vec<String> = Vec::new();
        let mut kept_by_grace = false;
        if revoked_on_hold {
            let began = match &sub {
                Some((s, as_of, age)) if s.canonical == "on_hold" => m(as_of - age),
                _ => version, // revoked_at = updated_at in these snapshots
            };
            // With the backstop on, a newer snapshot saying the hold ended in another
            // denying status (cancelled, expired, ...) ends the grace too.
            let hold_ended = backstop
                && matches!(&sub, Some((s, as_of, _))
                    if BACKSTOP_DENIES.contains(&s.canonical) && s.canonical != "on_hold" && m(*as_of) > version);
            if !hold_ended && in_grace(began) {
                kept_by_grace = true;
            } else {
                denials.push("subscription_on_hold".into());
            }
        } else if let Some((s, as_of, age)) = &sub {
            if backstop && BACKSTOP_DENIES.contains(&s.canonical) && m(*as_of) > version {
                if s.canonical == "on_hold" && in_grace(m(as_of - age)) {
                    kept_by_grace = true;
                } else {
                    denials.push(format!("subscription_{}", s.canonical));
                }
            }
        }
        // A grant the grace keeps is held to its payment's facts as a delivered one is.
        if !revoked_on_hold || kept_by_grace {
            if refund_denies && refunded.is_some_and(|k| m(k) > version) {
                denials.push("refund".into());
            }
            if let Some((s, k)) = dispute {
                let lost = matches!(s, "dispute_lost" | "dispute_accepted");
                let open = matches!(s, "dispute_opened" | "dispute_challenged");
                let denies = match disputes {
                    "on_lost" => lost,
                    "on_opened" => lost || open,
                    _ => false,
                };
                if denies && m(k) > version {
                    denials.push("dispute".into());
                }
            }
        }
        prop_assert_eq!(got.allowed, denials.is_empty(), "denials {:?}, got {:?}", denials, got);
        if got.allowed {
            prop_assert_eq!(got.reason, None);
            prop_assert_eq!(got.grace_until.is_some(), kept_by_grace);
        } else {
            let reason = got.reason.clone().expect("a reason");
            prop_assert!(denials.contains(&reason), "reason {:?} not among {:?}", reason, denials);
            prop_assert_eq!(got.grace_until, None);
        }
        prop_assert_eq!(got.status.as_str(), if revoked_on_hold { "revoked" } else { "delivered" });
        prop_assert_eq!(got.grant_id.as_deref(), Some("grant_p"));
    }
}
