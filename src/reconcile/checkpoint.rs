//! Where an interrupted sweep stands, so that the next run resumes there instead of
//! listing everything again.
//!
//! A sweep reads its listings in one fixed order ([`Listing`]'s): the customer's grant
//! list (with `--customer`), each entitlement's grants by entitlement id, then
//! subscriptions, license keys, payments, refunds and disputes. While a run has met no
//! error, the shell saves a [`Checkpoint`] after each page it stored and after each
//! listing it finished: everything before that point was read and stored. A run that
//! stops early (the API unreachable, a failed request, the process killed) leaves the
//! checkpoint of its last clean page; a run that finishes without an error clears it.
//!
//! The next run in the same scope ([`scope`]: the API's base URL and the customer)
//! resumes there when it reads the same kinds of listing at the same page size and the
//! sweep began less than [`RESUME_WITHIN`] ago ([`resumable`]):
//! listings before the checkpoint are skipped ([`Start::Skip`]), and the interrupted one
//! starts one page before its first unread page ([`Start::Page`]), so that an object
//! moved back a page by a deletion in between is still read. The entitlements list itself
//! is always read again: it only names the listings.
//!
//! Why a bound: a resumed sweep is one sweep that took longer, and the objects it
//! skipped were read when it began. Dodo retries a webhook for about 28 hours, so a
//! change to one of them since then still arrives by webhook within the bound; past it,
//! the run sweeps everything again.

use crate::wire::Timestamp;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// How long after a sweep began its checkpoint is resumed (below the ~28 hours over
/// which Dodo retries a webhook).
pub const RESUME_WITHIN: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The kinds of listing, in sweep order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `GET /customers/{C}/entitlement-grants` (with `--customer`).
    CustomerGrants,
    /// `GET /entitlements/{id}/grants`, entitlement by entitlement id.
    EntitlementGrants,
    /// `GET /subscriptions`.
    Subscriptions,
    /// `GET /license_keys`.
    LicenseKeys,
    /// `GET /payments`.
    Payments,
    /// `GET /refunds`.
    Refunds,
    /// `GET /disputes`.
    Disputes,
}

/// One listing of a sweep; the sweep reads them in this type's order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Listing {
    /// Which list.
    pub step: Step,
    /// The entitlement of an [`Step::EntitlementGrants`] listing; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entitlement: String,
}

impl Listing {
    /// A listing that is not per entitlement.
    pub fn of(step: Step) -> Listing {
        Listing {
            step,
            entitlement: String::new(),
        }
    }

    /// The grants of one entitlement.
    pub fn grants(entitlement: &str) -> Listing {
        Listing {
            step: Step::EntitlementGrants,
            entitlement: entitlement.to_string(),
        }
    }
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Step::CustomerGrants => f.write_str("the customer's grants"),
            Step::EntitlementGrants => write!(f, "the grants of {}", self.entitlement),
            Step::Subscriptions => f.write_str("subscriptions"),
            Step::LicenseKeys => f.write_str("license keys"),
            Step::Payments => f.write_str("payments"),
            Step::Refunds => f.write_str("refunds"),
            Step::Disputes => f.write_str("disputes"),
        }
    }
}

/// Where a sweep stands: every listing before `listing` was read and stored, and of
/// `listing` its first `pages` pages (all of it when `complete`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// When the sweep began: the start of its first run, kept by the runs that resume it.
    pub started: Timestamp,
    /// The listing it stands in.
    pub listing: Listing,
    /// Pages of `listing` read and stored (page numbers `0..pages`).
    pub pages: u32,
    /// The whole of `listing` was read and stored.
    pub complete: bool,
    /// The page size its pages were read at: a count of pages means nothing at another.
    pub page_size: u32,
    /// The kinds of listing the sweep reads (payments, refunds and disputes depend on the
    /// policy): a sweep of other kinds could skip one it never read by the order alone.
    pub steps: Vec<Step>,
}

impl std::fmt::Display for Checkpoint {
    /// `the sweep begun at T, after subscriptions` or `..., at license keys, 3 pages
    /// read`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let started = crate::wire::format_timestamp(&self.started);
        match (self.complete, self.pages) {
            (true, _) => write!(f, "the sweep begun at {started}, after {}", self.listing),
            (false, 1) => write!(
                f,
                "the sweep begun at {started}, at {}, 1 page read",
                self.listing
            ),
            (false, n) => write!(
                f,
                "the sweep begun at {started}, at {}, {n} pages read",
                self.listing
            ),
        }
    }
}

/// Where a listing starts in a resumed sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Read from this page number on.
    Page(u32),
    /// Read and stored before the interruption: not read again.
    Skip,
}

impl Checkpoint {
    /// Where `listing` starts when the sweep resumes from this checkpoint.
    pub fn start(&self, listing: &Listing) -> Start {
        match listing.cmp(&self.listing) {
            Ordering::Less => Start::Skip,
            Ordering::Equal if self.complete => Start::Skip,
            // One page of overlap: a deletion in between may have moved an unread
            // object back onto the last page read.
            Ordering::Equal => Start::Page(self.pages.saturating_sub(1)),
            Ordering::Greater => Start::Page(0),
        }
    }

    /// The checkpoint as the store keeps it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored checkpoint; `None` for text this build cannot read (the run then sweeps
    /// everything, which is always correct).
    pub fn decode(text: &str) -> Option<Checkpoint> {
        serde_json::from_str(text).ok()
    }
}

/// Whether a sweep saved at `saved` is resumed by a run starting at `now` that reads
/// `steps` at `page_size`: the same listings at the same page size, and it began less
/// than [`RESUME_WITHIN`] ago (and not in the future of a clock set back since).
pub fn resumable(saved: &Checkpoint, now: Timestamp, page_size: u32, steps: &[Step]) -> bool {
    saved.page_size == page_size
        && saved.steps == steps
        && saved.started <= now
        && now - saved.started < RESUME_WITHIN
}

/// The name a sweep's checkpoint is stored under: one per API base URL (live, test, or
/// another) and customer (a `--customer` run is a sweep of its own).
pub fn scope(base_url: &str, customer: Option<&str>) -> String {
    match customer {
        Some(c) => format!("reconcile {base_url} customer={c}"),
        None => format!("reconcile {base_url}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_timestamp;

    fn at(s: &str) -> Timestamp {
        parse_timestamp(s).expect("timestamp")
    }

    const STEPS: [Step; 4] = [
        Step::EntitlementGrants,
        Step::Subscriptions,
        Step::LicenseKeys,
        Step::Refunds,
    ];

    fn checkpoint(listing: Listing, pages: u32, complete: bool) -> Checkpoint {
        Checkpoint {
            started: at("2026-12-07T10:00:00Z"),
            listing,
            pages,
            complete,
            page_size: 100,
            steps: STEPS.to_vec(),
        }
    }

    #[test]
    fn listings_before_the_checkpoint_are_skipped_the_interrupted_one_overlaps_a_page() {
        let c = checkpoint(Listing::grants("ent_m"), 5, false);
        let cases = [
            (Listing::of(Step::CustomerGrants), Start::Skip),
            (Listing::grants("ent_a"), Start::Skip),
            (Listing::grants("ent_m"), Start::Page(4)),
            (Listing::grants("ent_z"), Start::Page(0)),
            (Listing::of(Step::Subscriptions), Start::Page(0)),
            (Listing::of(Step::Disputes), Start::Page(0)),
        ];
        for (listing, start) in cases {
            assert_eq!(c.start(&listing), start, "{listing:?}");
        }
        let first_page = checkpoint(Listing::of(Step::Payments), 1, false);
        assert_eq!(
            first_page.start(&Listing::of(Step::Payments)),
            Start::Page(0)
        );
        let none_read = checkpoint(Listing::of(Step::Payments), 0, false);
        assert_eq!(
            none_read.start(&Listing::of(Step::Payments)),
            Start::Page(0)
        );
        let done = checkpoint(Listing::of(Step::LicenseKeys), 3, true);
        assert_eq!(done.start(&Listing::of(Step::LicenseKeys)), Start::Skip);
        assert_eq!(done.start(&Listing::of(Step::Payments)), Start::Page(0));
        assert_eq!(done.start(&Listing::grants("ent_z")), Start::Skip);
    }

    #[test]
    fn a_checkpoint_is_resumed_within_a_day_of_the_sweeps_start() {
        let c = checkpoint(Listing::of(Step::Subscriptions), 2, false);
        let resumed_at = |now: &str| resumable(&c, at(now), 100, &STEPS);
        assert!(resumed_at("2026-12-07T10:00:00Z"));
        assert!(resumed_at("2026-12-08T09:59:59Z"));
        assert!(!resumed_at("2026-12-08T10:00:00Z"));
        // A clock set back since the sweep began: not resumed.
        assert!(!resumed_at("2026-12-07T09:59:59Z"));
    }

    #[test]
    fn a_checkpoint_of_another_page_size_or_other_listings_is_not_resumed() {
        let c = checkpoint(Listing::of(Step::Subscriptions), 5, false);
        let now = at("2026-12-07T11:00:00Z");
        assert!(resumable(&c, now, 100, &STEPS));
        // Five pages of 10 are not five pages of 100.
        assert!(!resumable(&c, now, 10, &STEPS));
        // A policy that adds or drops a listing: by order alone, a listing added before
        // the checkpoint (refunds, to a sweep stopped in disputes) would be skipped
        // unread, so any other set of listings is swept from the start.
        let mut more = STEPS.to_vec();
        more.push(Step::Disputes);
        assert!(!resumable(&c, now, 100, &more));
        assert!(!resumable(&c, now, 100, &STEPS[..3]));
    }

    #[test]
    fn the_stored_text_reads_back_and_unreadable_text_is_no_checkpoint() {
        for c in [
            checkpoint(Listing::grants("ent_1"), 7, false),
            checkpoint(Listing::of(Step::Refunds), 0, true),
        ] {
            let text = c.encode();
            assert_eq!(Checkpoint::decode(&text), Some(c), "{text}");
        }
        assert_eq!(
            checkpoint(Listing::of(Step::Subscriptions), 3, false).encode(),
            r#"{"started":"2026-12-07T10:00:00Z","listing":{"step":"subscriptions"},"pages":3,"complete":false,"page_size":100,"steps":["entitlement_grants","subscriptions","license_keys","refunds"]}"#
        );
        for bad in [
            "",
            "{}",
            "not json",
            r#"{"started":"x","listing":{"step":"subscriptions"},"pages":1,"complete":false}"#,
        ] {
            assert_eq!(Checkpoint::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_checkpoint_says_where_the_sweep_stands() {
        assert_eq!(
            checkpoint(Listing::grants("ent_1"), 3, false).to_string(),
            "the sweep begun at 2026-12-07T10:00:00.000000Z, at the grants of ent_1, 3 pages read"
        );
        assert_eq!(
            checkpoint(Listing::of(Step::LicenseKeys), 1, true).to_string(),
            "the sweep begun at 2026-12-07T10:00:00.000000Z, after license keys"
        );
    }

    #[test]
    fn scopes_differ_by_host_and_customer() {
        let scopes = [
            scope("https://live.dodopayments.com", None),
            scope("https://test.dodopayments.com", None),
            scope("https://live.dodopayments.com", Some("cus_1")),
            scope("https://live.dodopayments.com", Some("cus_2")),
        ];
        let distinct: std::collections::HashSet<&String> = scopes.iter().collect();
        assert_eq!(distinct.len(), scopes.len());
    }
}
