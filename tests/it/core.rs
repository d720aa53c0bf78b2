//! Property tests of the pure core: parse -> fold/step -> outcome -> access.
//!
//! 1. A model-based test (proptest-state-machine): a naive reference model
//!    ([`crate::support::model`]) against the real `event::parse`, `fold::fold`,
//!    `fold::step`, `fold::outcome` and `access::decide`, over deliveries of every kind,
//!    redeliveries, out-of-order deliveries, clock advances and operator accepts.
//! 2. Plain properties over realistic lifecycles ([`crate::support::grant_lifecycles`]):
//!    convergence under any permutation with duplicates, idempotence, rejected snapshots
//!    changing nothing, sticky manual revocations, restorations, subscriptions, outcomes,
//!    timestamps as instants, and a parser that never panics.

use crate::support::model::{self, MKey};
use crate::support::{
    self, at, delivery_ids, entry, fold_by_object, grant, grant_lifecycles, ms, parse_grant,
    rejected_keys, shuffled_with_duplicates, subscription, subscription_history, summaries,
    summary, t0, ts_form, GrantSpec, Meta, St, SubSpec, Timestamp, TsForm, REASONS,
};
use chrono::Duration;
use entitlement_sync::access::{decide, GrantView, Policy, SubscriptionFacts};
use entitlement_sync::event::{self, Event, Grant, Subscription};
use entitlement_sync::fold::{self, outcome, step, Entry, Folded, Snap, Verdict, VersionKey};
use entitlement_sync::Outcome;
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::collections::{BTreeMap, BTreeSet};

/// Where proptest keeps this module's failures (committed).
const REGRESSIONS: &str = support::regressions_path!("core");

fn config() -> proptest::test_runner::Config {
    support::proptest_config(REGRESSIONS)
}

fn to_key(k: &MKey) -> VersionKey {
    VersionKey {
        at: k.0,
        rank: k.1,
        hash: k.2,
    }
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
                .push(GrantView {
                    grant: g,
                    version: cur.snap.key.at,
                    subscription: None,
                    payment: None,
                });
        }
    }
    pairs
}

// =======================================================================================
// 1. Model-based: the naive model against the engine
// =======================================================================================

/// The grants of the model test: two share a pair (access is an OR), two have pairs of
/// their own.
const GRANTS: [(&str, &str, &str); 4] = [
    ("grant_1", "cus_a", "ent_pro"),
    ("grant_2", "cus_a", "ent_pro"),
    ("grant_3", "cus_a", "ent_files"),
    ("grant_4", "cus_b", "ent_pro"),
];

/// The model's world: every delivery ever made, the operator's accepts, the clock.
#[derive(Clone, Debug)]
pub struct World {
    now: Timestamp,
    /// `(webhook id, snapshot)` of every accepted delivery, in arrival order.
    deliveries: Vec<(String, GrantSpec)>,
    /// Keys an operator accepted.
    forced: BTreeSet<MKey>,
    /// Next fresh webhook id.
    next_id: u32,
    /// What the last delivery should report (`None` after a non-delivery transition).
    expected: Option<&'static str>,
}

impl World {
    fn webhook_seen(&self, id: &str) -> bool {
        self.deliveries.iter().any(|(w, _)| w == id)
    }

    fn grant_fold(&self, grant_id: &str) -> model::GrantFold {
        model::fold_grant(
            self.deliveries
                .iter()
                .map(|(_, g)| g)
                .filter(|g| g.id == grant_id),
            &self.forced,
        )
    }

    fn folds(&self) -> BTreeMap<String, model::GrantFold> {
        GRANTS
            .iter()
            .map(|(id, _, _)| (id.to_string(), self.grant_fold(id)))
            .filter(|(_, f)| f.state.is_some())
            .collect()
    }

    fn rejected(&self) -> Vec<MKey> {
        self.folds()
            .values()
            .flat_map(|f| f.rejected.iter().copied())
            .collect()
    }

    fn newest(&self, grant_id: &str) -> Option<Timestamp> {
        self.deliveries
            .iter()
            .filter(|(_, g)| g.id == grant_id)
            .map(|(_, g)| g.at)
            .max()
    }
}

/// A transition of the model test.
#[derive(Clone, Debug)]
pub enum Tr {
    /// A new delivery of some grant snapshot (newer or older than what is known).
    Deliver {
        webhook_id: String,
        snap: Box<GrantSpec>,
    },
    /// An earlier delivery again: a retry (same webhook id) or a replay (new id).
    Redeliver {
        index: usize,
        webhook_id: Option<String>,
    },
    /// The operator accepts a quarantined snapshot.
    Accept { key: MKey },
    /// Time passes.
    Advance { by_ms: i64 },
}

/// Any grant snapshot of one of [`GRANTS`], every status and every reason of
/// [`REASONS`]; usually newer than what the grant has (`after`), sometimes older.
fn any_snapshot(newest: [Option<Timestamp>; 4]) -> impl Strategy<Value = GrantSpec> {
    let kind = prop_oneof![
        1 => Just((St::Pending, None)),
        3 => Just((St::Delivered, None)),
        1 => Just((St::Failed, None)),
        4 => (0..REASONS.len()).prop_map(|r| (St::Revoked, Some(REASONS[r]))),
    ];
    let timing = prop_oneof![
        3 => prop::sample::select(vec![0i64, 250, 1_000, 60_000, 600_000]),
        1 => prop::sample::select(vec![-250i64, -1_000, -60_000, -600_000, -1_800_000]),
    ];
    (
        (0..GRANTS.len(), kind, 0..3usize, timing, ts_form()),
        (
            prop::option::of(prop::option::of(0..90i64)),
            prop::option::of(prop::sample::select(vec![
                "github_permission_denied",
                "discord_guild_missing",
            ])),
            0..16u8,
            0..3u32,
            0..4u8,
            prop::sample::select(vec![0i64, 0, 1_500, -1_000]),
        ),
    )
        .prop_map(
            move |(
                (g, (status, reason), spelling, shift, form),
                (lic, err, odd, rev, meta, lag),
            )| {
                let (id, customer, entitlement) = GRANTS[g];
                let base = newest[g].unwrap_or_else(t0);
                let mut s = grant(id, status, base + ms(shift))
                    .customer(customer)
                    .entitlement(entitlement)
                    .spelled(status.spellings()[spelling])
                    .form(form)
                    .revision(rev);
                s.reason = reason;
                s.license = lic.map(|m| m.map(|m| t0() + Duration::minutes(m)));
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
                    5 => s.business_id = "bus_other".to_string(),
                    _ => {}
                }
                s
            },
        )
}

impl ReferenceStateMachine for World {
    type State = World;
    type Transition = Tr;

    fn init_state() -> BoxedStrategy<World> {
        Just(World {
            now: t0(),
            deliveries: Vec::new(),
            forced: BTreeSet::new(),
            next_id: 0,
            expected: None,
        })
        .boxed()
    }

    fn transitions(state: &World) -> BoxedStrategy<Tr> {
        let newest = [0, 1, 2, 3].map(|i| state.newest(GRANTS[i].0));
        let webhook_id = format!("wh_{}", state.next_id);
        let fresh = webhook_id.clone();
        let mut options: Vec<(u32, BoxedStrategy<Tr>)> = vec![
            (
                8,
                any_snapshot(newest)
                    .prop_map(move |snap| Tr::Deliver {
                        webhook_id: fresh.clone(),
                        snap: Box::new(snap),
                    })
                    .boxed(),
            ),
            (
                2,
                prop::sample::select(vec![0i64, 250, 60_000, 600_000, 1_800_000, 3_600_000])
                    .prop_map(|by_ms| Tr::Advance { by_ms })
                    .boxed(),
            ),
        ];
        if !state.deliveries.is_empty() {
            let n = state.deliveries.len();
            options.push((
                3,
                (0..n, any::<bool>())
                    .prop_map(move |(index, replay)| Tr::Redeliver {
                        index,
                        webhook_id: replay.then(|| webhook_id.clone()),
                    })
                    .boxed(),
            ));
        }
        let rejected = state.rejected();
        if !rejected.is_empty() {
            options.push((
                2,
                prop::sample::select(rejected)
                    .prop_map(|key| Tr::Accept { key })
                    .boxed(),
            ));
        }
        prop::strategy::Union::new_weighted(options).boxed()
    }

    fn preconditions(state: &World, tr: &Tr) -> bool {
        match tr {
            Tr::Deliver { webhook_id, .. } => !state.webhook_seen(webhook_id),
            Tr::Redeliver { index, webhook_id } => {
                *index < state.deliveries.len()
                    && webhook_id.as_ref().is_none_or(|w| !state.webhook_seen(w))
            }
            Tr::Accept { key } => state.rejected().contains(key),
            Tr::Advance { .. } => true,
        }
    }

    fn apply(mut state: World, tr: &Tr) -> World {
        state.expected = None;
        match tr {
            Tr::Deliver { webhook_id, snap } => {
                let before = state.grant_fold(&snap.id);
                state
                    .deliveries
                    .push((webhook_id.clone(), (**snap).clone()));
                let after = state.grant_fold(&snap.id);
                state.expected = Some(model::expected_outcome(
                    &before,
                    &after,
                    &model::grant_key(snap),
                ));
                state.next_id += 1;
            }
            Tr::Redeliver { index, webhook_id } => {
                let snap = state.deliveries[*index].1.clone();
                if let Some(w) = webhook_id {
                    state.deliveries.push((w.clone(), snap));
                    state.next_id += 1;
                }
                // A retry is dropped by its webhook id; a replay is a known snapshot.
                state.expected = Some("duplicate");
            }
            Tr::Accept { key } => {
                state.forced.insert(*key);
            }
            Tr::Advance { by_ms } => state.now += ms(*by_ms),
        }
        state
    }
}

/// The system under test: the pure core driven the way the store will drive it (dedupe
/// by webhook id, keep each object's history, one `step` when a snapshot is the newest,
/// else a re-fold).
pub struct Engine {
    now: Timestamp,
    webhooks: BTreeSet<String>,
    histories: BTreeMap<String, Vec<Entry<Grant>>>,
    folded: BTreeMap<String, Folded<Grant>>,
    last: Option<Outcome>,
}

impl Engine {
    fn deliver(&mut self, webhook_id: &str, body: &[u8]) {
        if !self.webhooks.insert(webhook_id.to_string()) {
            self.last = Some(Outcome::Duplicate);
            return;
        }
        let snap = parse_grant(body);
        let id = snap.body.id.clone();
        let before = self.folded.get(&id).cloned().unwrap_or(Folded {
            state: None,
            steps: Vec::new(),
        });
        let history = self.histories.entry(id.clone()).or_default();
        history.push(entry(snap.clone(), webhook_id));
        let after = fold::fold(history.clone());
        // In order, one step on the current state must agree with the re-fold.
        if before.max_key().is_none_or(|k| snap.key > k) {
            let (verdict, next) = step(before.state.as_ref(), &snap, false);
            let last = after.steps.last().expect("a step");
            assert_eq!(last.key, snap.key);
            assert_eq!(last.verdict, verdict, "step and fold disagree on {id}");
            assert_eq!(
                after.state,
                next.or(before.state.clone()),
                "step and fold disagree on {id}"
            );
        }
        self.last = Some(outcome(&before, &after, &snap.key));
        self.folded.insert(id, after);
    }

    fn accept(&mut self, key: &VersionKey) {
        let (grant_id, delivery_id) = self
            .folded
            .iter()
            .find_map(|(id, f)| {
                f.rejected()
                    .find(|(s, _)| &s.key == key)
                    .map(|(s, _)| (id.clone(), s.delivery_id.clone()))
            })
            .expect("the engine quarantined the snapshot the model says is rejected");
        let history = self.histories.get_mut(&grant_id).expect("a history");
        for e in history.iter_mut().filter(|e| e.delivery_id == delivery_id) {
            e.forced = true;
        }
        self.folded.insert(grant_id, fold::fold(history.clone()));
    }
}

impl StateMachineTest for Engine {
    type SystemUnderTest = Engine;
    type Reference = World;

    fn init_test(ref_state: &World) -> Engine {
        Engine {
            now: ref_state.now,
            webhooks: BTreeSet::new(),
            histories: BTreeMap::new(),
            folded: BTreeMap::new(),
            last: None,
        }
    }

    fn apply(mut sut: Engine, ref_state: &World, tr: Tr) -> Engine {
        sut.last = None;
        match tr {
            Tr::Deliver { webhook_id, snap } => sut.deliver(&webhook_id, &snap.body()),
            Tr::Redeliver { index, webhook_id } => {
                let (original_id, snap) = &ref_state.deliveries[index];
                let id = webhook_id.unwrap_or_else(|| original_id.clone());
                sut.deliver(&id, &snap.body());
            }
            Tr::Accept { key } => sut.accept(&to_key(&key)),
            Tr::Advance { by_ms } => sut.now += ms(by_ms),
        }
        sut
    }

    fn check_invariants(sut: &Engine, world: &World) {
        assert_eq!(sut.now, world.now);
        assert_eq!(
            sut.last.map(Outcome::as_str),
            world.expected,
            "outcome of the last delivery"
        );
        let folds = world.folds();
        let engine_ids: BTreeSet<&String> = sut.folded.keys().collect();
        assert_eq!(engine_ids, folds.keys().collect(), "known grants");
        for (id, want) in &folds {
            let got = &sut.folded[id];
            let (spec, key, since) = want.state.as_ref().expect("a state");
            let cur = got.state.as_ref().expect("the engine has a state");
            assert_eq!(from_key(&cur.snap.key), *key, "state of {id}");
            assert_eq!(cur.since, *since, "since of {id}");
            let g = &cur.snap.body;
            assert_eq!(g.status.as_str(), spec.status.canonical(), "status of {id}");
            assert_eq!(
                g.revocation_reason.as_ref().map(|r| r.as_str()),
                spec.reason.map(|r| r.canonical),
                "reason of {id}"
            );
            assert_eq!(
                (&g.customer_id, &g.entitlement_id),
                (&spec.customer_id, &spec.entitlement_id)
            );
            let rejected: BTreeSet<MKey> = got.rejected().map(|(s, _)| from_key(&s.key)).collect();
            assert_eq!(rejected, want.rejected, "rejected snapshots of {id}");
            let forced: BTreeSet<MKey> = got
                .steps
                .iter()
                .filter(|s| s.verdict == Verdict::Applied { forced: true })
                .map(|s| from_key(&s.key))
                .collect();
            assert_eq!(forced, want.forced_applied, "operator-forced steps of {id}");
            let keys: BTreeSet<MKey> = got.steps.iter().map(|s| from_key(&s.key)).collect();
            assert_eq!(keys, want.keys, "distinct snapshots of {id}");
        }
        // Access, for every pair either side knows of, plus pairs nobody has.
        let mut model_pairs: BTreeMap<(String, String), Vec<&GrantSpec>> = BTreeMap::new();
        for f in folds.values() {
            let (g, _, _) = f.state.as_ref().expect("a state");
            model_pairs
                .entry((g.customer_id.clone(), g.entitlement_id.clone()))
                .or_default()
                .push(g);
        }
        let engine_pairs = views_by_pair(&sut.folded);
        let mut pairs: BTreeSet<(String, String)> = GRANTS
            .iter()
            .map(|(_, c, e)| (c.to_string(), e.to_string()))
            .collect();
        pairs.insert(("cus_nobody".into(), "ent_pro".into()));
        pairs.extend(model_pairs.keys().cloned());
        pairs.extend(engine_pairs.keys().cloned());
        let policy = Policy::default();
        for pair in &pairs {
            let views = engine_pairs.get(pair).cloned().unwrap_or_default();
            let got = decide(&pair.0, &pair.1, &views, &policy, sut.now);
            let want = model::access(
                model_pairs.get(pair).map(Vec::as_slice).unwrap_or(&[]),
                world.now,
            );
            let got_m = model::ModelAccess {
                allowed: got.allowed,
                status: got.status.clone(),
                reason: got.reason.clone(),
                grant_id: got.grant_id.clone(),
                oauth_url: got.oauth_url.clone(),
                grants: got.grants,
                as_of: got.as_of,
            };
            assert_eq!(got_m, want, "access of {pair:?} at {}", world.now);
            assert_eq!((&got.customer_id, &got.entitlement_id), (&pair.0, &pair.1));
            assert_eq!(got.evaluated_at, sut.now);
            let mut reversed = views.clone();
            reversed.reverse();
            let again = decide(&pair.0, &pair.1, &reversed, &policy, sut.now);
            assert_eq!(again, got, "access depends on the order of the grants");
        }
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    /// The engine agrees with the naive model after every transition.
    #[test]
    fn engine_matches_the_naive_model(sequential 1..48 => Engine);
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
                    let view = GrantView {
                        grant: &cur.snap.body,
                        version,
                        subscription,
                        payment: None,
                    };
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
        let payment = PaymentFacts {
            refunded_at: refunded.map(m),
            dispute: dispute.map(|(s, k)| (DisputeStatus::parse(s), m(k))),
        };
        let policy = Policy {
            subscription_backstop: backstop,
            on_hold_grace: grace.map(Duration::minutes),
            refund_denies,
            disputes: disputes.parse::<DisputePolicy>().expect("a policy"),
        };
        let now = m(now_min);
        let view = GrantView { grant: &snap.body, version, subscription: facts.as_ref(), payment: Some(&payment) };
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
        } else {
            if let Some((s, as_of, age)) = &sub {
                if backstop && BACKSTOP_DENIES.contains(&s.canonical) && m(*as_of) > version {
                    if s.canonical == "on_hold" && in_grace(m(as_of - age)) {
                        kept_by_grace = true;
                    } else {
                        denials.push(format!("subscription_{}", s.canonical));
                    }
                }
            }
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
