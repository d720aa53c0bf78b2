//! The ingest planner: what one new snapshot does to its object, decided from what the
//! store holds, with no IO.
//!
//! A store keeps, per object, its state (the head: the state snapshot, when the current
//! status began, the newest key of the history) and its history: one [`Step`] per
//! distinct snapshot, in key order. For a new snapshot the planner says which of three
//! cases it is ([`place`]), and for each what to write:
//!
//! - **append** ([`append`]): newer than everything (the in-order case): one
//!   [`crate::fold::step`] from the head, one new history row;
//! - **duplicate**: its key is already in the history (the same snapshot under another
//!   delivery id): nothing changes but, perhaps, which delivery represents it
//!   ([`representative`]);
//! - **insert** ([`Refold`]): older than the newest: the fold re-runs from the snapshot's
//!   place, fed the stored steps after it one by one, and stops as soon as it produces a
//!   step equal to the stored one (from there on the history is unchanged). The cost is
//!   the number of steps whose verdict or state really changes, not the length of the
//!   history.
//!
//! Every case ends in an [`Outcome`] with the same rules as a whole re-fold
//! ([`crate::fold::outcome`]): `rejected` if the fold refuses the snapshot, `applied` if the
//! state or the set of rejected snapshots changed, `stale` otherwise. The stores
//! (SQLite, and any other) execute these plans and decide nothing.

use crate::delivery::Outcome;
use crate::fold::{Current, Folder, Machine, Snap, Step, VersionKey};

/// Where a new snapshot falls in its object's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Newer than every snapshot of the object (or the object is new): append.
    Newest,
    /// The same key is in the history already.
    Known,
    /// Older than the newest, and not in the history: re-fold from its place.
    Within,
}

/// Classifies a new key against the object's newest key and whether the history holds
/// it. `known` is only consulted when the key is not the newest (it costs a lookup).
pub fn place(
    max_key: Option<&VersionKey>,
    key: &VersionKey,
    known: impl FnOnce() -> bool,
) -> Place {
    match max_key {
        None => Place::Newest,
        Some(max) if key > max => Place::Newest,
        Some(_) if known() => Place::Known,
        Some(_) => Place::Within,
    }
}

/// The plan for a snapshot newer than everything.
#[derive(Debug, Clone)]
pub struct Append<T> {
    /// The new history row.
    pub step: Step,
    /// The new state when it applied (`None`: rejected, the state stays).
    pub state: Option<Current<T>>,
    /// `applied` or `rejected`.
    pub outcome: Outcome,
}

/// Plans the append of `snap` to an object whose state is `current`.
pub fn append<T: Machine>(
    current: Option<&Current<T>>,
    snap: &Snap<T>,
    delivery_id: &str,
) -> Append<T> {
    let mut folder = Folder::new(current.cloned());
    let step = folder.push(snap, delivery_id, false);
    let (state, outcome) = if step.is_rejected() {
        (None, Outcome::Rejected)
    } else {
        (folder.into_state(), Outcome::Applied)
    };
    Append {
        step,
        state,
        outcome,
    }
}

/// For a duplicate: the smallest delivery id carrying a snapshot represents it. Returns
/// the new representative when `delivery_id` takes over from the stored one.
pub fn representative<'a>(stored: &Step, delivery_id: &'a str) -> Option<&'a str> {
    (delivery_id < stored.delivery_id.as_str()).then_some(delivery_id)
}

/// Whether a [`Refold`] needs more of the stored history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Feed the next stored step.
    More,
    /// The fold met the stored history again: everything after is unchanged.
    Converged,
}

/// A re-fold from one place in an object's history, fed the stored steps after it.
///
/// Start it with the state before the first changed key ([`Refold::new`]), push the new
/// (or newly accepted) snapshot at its place with [`Refold::feed`] and `stored = None`,
/// then each stored step after it in key order with its snapshot, until it answers
/// [`Flow::Converged`] or the history ends; [`Refold::finish`] gives the rows to write.
#[derive(Debug, Clone)]
pub struct Refold<T> {
    folder: Folder<T>,
    writes: Vec<Step>,
    /// An existing step went from applied to rejected or back.
    flipped: bool,
    /// The stored step the fold met again.
    converged: Option<VersionKey>,
    /// The last fed step (written or not) that started a run of its status.
    run_start: Option<VersionKey>,
    /// A stored step stopped or began starting a run of its status.
    runs_moved: bool,
    /// The verdict of the snapshot the re-fold is for (the first fed with no stored step).
    subject: Option<bool>,
    /// No convergence on a step before this key ([`Refold::through`]).
    through: Option<VersionKey>,
}

/// What a [`Refold`] decided.
#[derive(Debug, Clone)]
pub struct RefoldPlan<T> {
    /// History rows to insert or replace (those whose stored form changed, in key
    /// order; the first is the inserted snapshot, when there is one).
    pub writes: Vec<Step>,
    /// The object's new state, when the fold ran to the end of the history without
    /// meeting it again (`None`: the state stays as stored; its `since` may still have
    /// moved, which the store recomputes from the steps' `starts_run`).
    pub state: Option<Current<T>>,
    /// The outcome for the snapshot the re-fold is for.
    pub outcome: Outcome,
    /// The stored step the fold met again (`None`: it ran to the end of the history).
    pub converged: Option<VersionKey>,
    /// The last step the re-fold went through that starts a run of its status.
    pub run_start: Option<VersionKey>,
    /// A stored step stopped or began starting a run of its status.
    pub runs_moved: bool,
}

impl<T> RefoldPlan<T> {
    /// `since` of the object afterwards, when the re-fold alone tells: `old_since` is the
    /// stored `since`, the key instant of the history's last run-starting step. `None`:
    /// the store must look it up (a run's start moved before the re-folded steps, or
    /// instants tie). A re-fold that starts no run and leaves every stored step's
    /// `starts_run` as it was keeps `since`, however long the run it lands in: the
    /// store's look-up walks the run back to its start, which would make a delivery's
    /// cost grow with the object's history.
    pub fn since(&self, old_since: crate::wire::Timestamp) -> Option<crate::wire::Timestamp> {
        match (self.converged, self.run_start) {
            // The run that makes `since` starts at or after the stored step met again:
            // untouched.
            (Some(k), _) if old_since > k.at => Some(old_since),
            (Some(k), _) if old_since == k.at => None,
            // Otherwise the last run start is among the re-folded steps, if any is.
            (_, Some(start)) => Some(start.at),
            (_, None) if !self.runs_moved => Some(old_since),
            (_, None) => None,
        }
    }
}

impl<T: Machine> Refold<T> {
    /// Starts from the state before the first key to be fed.
    pub fn new(before: Option<Current<T>>) -> Self {
        Refold {
            folder: Folder::new(before),
            writes: Vec::new(),
            flipped: false,
            converged: None,
            run_start: None,
            runs_moved: false,
            subject: None,
            through: None,
        }
    }

    /// Goes on through the stored step at `last` even where the fold meets the stored
    /// history before it. An accept of several keys needs this: between two of them the
    /// fold may meet an unchanged step, but the later key's verdict still changes.
    pub fn through(mut self, last: VersionKey) -> Self {
        self.through = Some(last);
        self
    }

    /// Feeds the next distinct snapshot in key order, carried by `delivery_id` (its
    /// representative). `stored`: the history's step for this key (`None` for the
    /// snapshot being inserted); `accepted`: an operator accepted it.
    pub fn feed(
        &mut self,
        snap: &Snap<T>,
        delivery_id: &str,
        stored: Option<&Step>,
        accepted: bool,
    ) -> Flow {
        let step = self.folder.push(snap, delivery_id, accepted);
        match stored {
            Some(old) if &step == old && self.through.is_none_or(|k| step.key >= k) => {
                self.converged = Some(step.key);
                return Flow::Converged;
            }
            _ => {}
        }
        if step.starts_run {
            self.run_start = Some(step.key);
        }
        match stored {
            None => {
                self.subject = Some(step.is_rejected());
                self.writes.push(step);
                Flow::More
            }
            Some(old) => {
                self.flipped |= step.is_rejected() != old.is_rejected();
                self.runs_moved |= step.starts_run != old.starts_run;
                // The state a step met is not stored (it follows from the steps before):
                // a rejected step that met another state but says the same needs no write.
                let stored_same = step.verdict == old.verdict
                    && step.accepted == old.accepted
                    && step.starts_run == old.starts_run;
                if !stored_same {
                    self.writes.push(step);
                }
                Flow::More
            }
        }
    }

    /// The plan. `stored_state`: the key of the object's stored state.
    pub fn finish(self, stored_state: Option<&VersionKey>) -> RefoldPlan<T> {
        let state = if self.converged.is_some() {
            None
        } else {
            self.folder.into_state()
        };
        let state_changed = state
            .as_ref()
            .is_some_and(|s| Some(&s.snap.key) != stored_state);
        let outcome = match self.subject {
            Some(true) => Outcome::Rejected,
            _ if state_changed || self.flipped => Outcome::Applied,
            // An accepted snapshot that changes nothing, or an older one washed out.
            _ => Outcome::Stale,
        };
        RefoldPlan {
            writes: self.writes,
            state,
            outcome,
            converged: self.converged,
            run_start: self.run_start,
            runs_moved: self.runs_moved,
        }
    }
}

/// After a rebuild: a delivery's outcome from its snapshot's step in the fold.
pub fn outcome_in_fold(step: &Step, state: &VersionKey) -> Outcome {
    if step.is_rejected() {
        Outcome::Rejected
    } else if &step.key == state {
        Outcome::Applied
    } else {
        Outcome::Stale
    }
}
