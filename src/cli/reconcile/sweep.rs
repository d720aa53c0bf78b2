//! The sweep: what access depends on, fetched from Dodo's API and fed to the engine.
//!
//! Entitlements (the API's list plus every entitlement id already in the store, since a
//! soft-deleted entitlement keeps its grants), each one's grants; all subscriptions;
//! license keys; payments, refunds and disputes where the policy uses them. With
//! `--customer C`, the per-customer endpoint and `customer_id` filters instead. Each
//! object is compared with its stored state ([`reconcile::compare`]): unchanged ones are
//! not stored; the others are ingested like any delivery, one batch (one transaction)
//! per page. The run is idempotent; an interrupted one leaves a checkpoint
//! ([`reconcile::checkpoint`]) after its last clean page, where the next run resumes.

use super::client::{ApiError, Client, Page};
use entitlement_sync::event::Kind;
use entitlement_sync::reconcile::checkpoint::{self, Checkpoint, Listing, Start, Step};
use entitlement_sync::reconcile::{self, Decision, Summary};
use entitlement_sync::wire::Timestamp;
use entitlement_sync::{Delivery, DisputePolicy, Engine, Policy};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Only this customer.
    pub customer: Option<String>,
    /// The access policy (which of payments, refunds, disputes matter).
    pub policy: Policy,
    /// Resume an interrupted sweep of the same scope from its checkpoint (when it began
    /// within [`checkpoint::RESUME_WITHIN`]); `false` sweeps everything.
    pub resume: bool,
}

impl Plan {
    /// The kinds of listing the sweep reads, in order: grants, subscriptions, license
    /// keys, and payments, refunds and disputes where the policy uses them.
    pub fn steps(&self) -> Vec<Step> {
        let disputes = self.policy.disputes != DisputePolicy::Never;
        let refunds = self.policy.refund_denies;
        [
            (Step::CustomerGrants, self.customer.is_some()),
            (Step::EntitlementGrants, true),
            (Step::Subscriptions, true),
            (Step::LicenseKeys, true),
            (Step::Payments, refunds || disputes),
            (Step::Refunds, refunds),
            (Step::Disputes, disputes),
        ]
        .into_iter()
        .filter_map(|(step, read)| read.then_some(step))
        .collect()
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Report {
    /// The counts.
    pub summary: Summary,
    /// Requests sent (retries included).
    pub requests: u64,
    /// Responses whose `Date` was too far from the local clock to version their objects
    /// (the local clock did), as [`Client::skewed_dates`] counts them.
    pub skewed_dates: u64,
    /// The key was refused (401/403): the run stopped there.
    pub refused: Option<String>,
    /// The checkpoint this run resumed from.
    pub resumed: Option<Checkpoint>,
}

/// Progress, for a bar on a terminal.
pub trait Progress: Send + Sync {
    /// Called after every page.
    fn update(&self, what: &str, summary: &Summary, requests: u64);

    /// Called once, before the first request, when the run resumes an interrupted sweep.
    fn resumed(&self, _from: &Checkpoint) {}
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&self, _: &str, _: &Summary, _: u64) {}
}

/// The access answer's identity: what the change feed compares too.
type Answer = (bool, String, Option<String>);

/// Why the run stops early.
enum Stop {
    Refused(String),
    /// The store failed (not yet counted).
    Engine(String),
    /// A batch of this many snapshots was not stored (each counted as an error).
    NotStored(String),
    /// The API could not be reached even after retries: the rest of the sweep would
    /// only wait for the same timeouts (the failure is already counted).
    Unreachable(String),
}

struct Run<'a> {
    engine: &'a Engine,
    client: &'a Client,
    progress: &'a dyn Progress,
    summary: Summary,
    /// Object ids already handled in this run, per kind (lists may repeat items).
    seen: HashMap<Kind, HashSet<String>>,
    business_id: Option<String>,
    /// The name of this sweep's checkpoint.
    scope: String,
    /// When the sweep began: now, or when the run it resumes began.
    started: Timestamp,
    /// The checkpoint this run resumes from.
    from: Option<Checkpoint>,
    /// The kinds of listing this sweep reads, in order.
    steps: Vec<Step>,
}

/// The API's collection of `kind` (`GET /<collection>` lists it, `/<collection>/{id}` is
/// one), for the kinds listed flat.
fn collection(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Subscription => Some("subscriptions"),
        Kind::LicenseKey => Some("license_keys"),
        Kind::Payment => Some("payments"),
        Kind::Refund => Some("refunds"),
        Kind::Dispute => Some("disputes"),
        Kind::Grant | Kind::CreditEntry | Kind::CreditBalanceLow => None,
    }
}

/// Runs the blocking engine call `f` off the async workers.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, entitlement_sync::EngineError> + Send + 'static,
) -> Result<R, Stop> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(Stop::Engine(e.to_string())),
        Err(e) => Err(Stop::Engine(format!("engine task failed: {e}"))),
    }
}

/// The answers of every (customer, entitlement) pair with a grant in the store (one
/// customer's with `customer`), at `now`.
async fn answers(
    engine: &Engine,
    customer: Option<String>,
    now: Timestamp,
) -> Result<BTreeMap<(String, String), Answer>, Stop> {
    let engine = engine.clone();
    blocking(move || {
        let grants = engine.grants(customer.as_deref())?;
        let pairs: BTreeSet<(String, String)> = grants
            .into_iter()
            .map(|g| (g.customer_id, g.entitlement_id))
            .collect();
        let mut out = BTreeMap::new();
        for (c, e) in pairs {
            let a = engine.access(&c, &e, now)?;
            out.insert((c, e), (a.allowed, a.status.to_string(), a.reason.clone()));
        }
        Ok(out)
    })
    .await
}

/// One sweep. `now`: the local clock at the start (access before and after is compared
/// at this instant, so that only what the run brought counts).
pub async fn run(
    engine: &Engine,
    client: &Client,
    plan: &Plan,
    progress: &dyn Progress,
    now: Timestamp,
) -> Report {
    let mut run = Run {
        engine,
        client,
        progress,
        summary: Summary::default(),
        seen: HashMap::new(),
        business_id: None,
        scope: checkpoint::scope(client.base_url(), plan.customer.as_deref()),
        started: now,
        from: None,
        steps: plan.steps(),
    };
    let refused = match run.sweep(plan, now).await {
        Ok(()) => None,
        Err(Stop::Refused(m)) => Some(m),
        Err(Stop::Engine(m)) => {
            tracing::error!(error = %m, "the store failed; the sweep stopped");
            run.summary.error();
            None
        }
        Err(Stop::NotStored(m)) => {
            tracing::error!(error = %m, "the store failed; the sweep stopped");
            None
        }
        Err(Stop::Unreachable(m)) => {
            tracing::error!(error = %m, "the API cannot be reached; the sweep stopped");
            None
        }
    };
    Report {
        summary: run.summary,
        requests: client.requests(),
        skewed_dates: client.skewed_dates(),
        refused,
        resumed: run.from,
    }
}

impl Run<'_> {
    async fn sweep(&mut self, plan: &Plan, now: Timestamp) -> Result<(), Stop> {
        let (engine, scope) = (self.engine.clone(), self.scope.clone());
        match blocking(move || engine.reconcile_checkpoint(&scope)).await? {
            Some(saved)
                if plan.resume
                    && checkpoint::resumable(&saved, now, self.client.page_size(), &self.steps) =>
            {
                self.progress.resumed(&saved);
                self.started = saved.started;
                self.from = Some(saved);
            }
            // Too old, or --restart: swept again from the start, and forgotten now so
            // that this run's own interruption is not resumed from the old one.
            Some(_) => self.save(None).await?,
            None => {}
        }
        let before = answers(self.engine, plan.customer.clone(), now).await?;
        let result = self.fetch_all(plan, &before).await;
        if result.is_ok() && self.summary.errors == 0 {
            // Complete: the next run sweeps everything again.
            self.save(None).await?;
        }
        // Count what changed even when the run stopped early.
        let after = answers(self.engine, plan.customer.clone(), now).await?;
        let none: Answer = (false, "none".into(), Some("no_grant".into()));
        let pairs: BTreeSet<&(String, String)> = before.keys().chain(after.keys()).collect();
        self.summary.access_changed = pairs
            .into_iter()
            .filter(|p| before.get(*p).unwrap_or(&none) != after.get(*p).unwrap_or(&none))
            .count() as u64;
        result
    }

    async fn fetch_all(
        &mut self,
        plan: &Plan,
        before: &BTreeMap<(String, String), Answer>,
    ) -> Result<(), Stop> {
        let by_customer = |c: &Option<String>| -> Vec<(&'static str, String)> {
            c.iter().map(|c| ("customer_id", c.clone())).collect()
        };
        // Entitlement ids the store knows (of this customer's grants, with --customer).
        let stored: BTreeSet<String> = before.keys().map(|(_, e)| e.clone()).collect();
        match &plan.customer {
            None => {
                let mut listed = BTreeSet::new();
                self.progress
                    .update("entitlements", &self.summary, self.client.requests());
                let mut pager = self
                    .client
                    .pages(vec!["entitlements".into()], Vec::new(), "id", 0);
                loop {
                    match pager.next().await {
                        Ok(Some(page)) => {
                            for e in page.items {
                                if self.business_id.is_none() {
                                    self.business_id = e
                                        .get("business_id")
                                        .and_then(Value::as_str)
                                        .map(str::to_string);
                                }
                                if let Some(id) = e.get("id").and_then(Value::as_str) {
                                    listed.insert(id.to_string());
                                }
                            }
                            self.progress.update(
                                "entitlements",
                                &self.summary,
                                self.client.requests(),
                            );
                        }
                        Ok(None) => break,
                        Err(e) => {
                            self.failed(e)?;
                            break;
                        }
                    }
                }
                // In id order, the order a checkpoint counts in.
                for e in listed.union(&stored) {
                    let soft_deleted = !listed.contains(e);
                    let segments = vec!["entitlements".into(), e.clone(), "grants".into()];
                    let listing = Listing::grants(e);
                    self.list(Kind::Grant, listing, segments, Vec::new(), soft_deleted)
                        .await?;
                }
            }
            Some(c) => {
                let segments = vec!["customers".into(), c.clone(), "entitlement-grants".into()];
                let listing = Listing::of(Step::CustomerGrants);
                self.list(Kind::Grant, listing, segments, Vec::new(), false)
                    .await?;
                // Grants of entitlements the per-customer list may leave out (soft-deleted).
                let seen = self.seen.get(&Kind::Grant).cloned().unwrap_or_default();
                let (engine, customer) = (self.engine.clone(), c.clone());
                let missing: BTreeSet<String> = blocking(move || {
                    Ok(engine
                        .grants(Some(&customer))?
                        .into_iter()
                        .filter(|g| !seen.contains(&g.grant_id))
                        .map(|g| g.entitlement_id)
                        .collect())
                })
                .await?;
                for e in missing {
                    let listing = Listing::grants(&e);
                    let segments = vec!["entitlements".into(), e, "grants".into()];
                    let query = by_customer(&plan.customer);
                    self.list(Kind::Grant, listing, segments, query, true)
                        .await?;
                }
            }
        }
        // The flat lists, in the plan's order (the grants are above).
        let filter = by_customer(&plan.customer);
        for step in self.steps.clone() {
            let kind = match step {
                Step::Subscriptions => Kind::Subscription,
                Step::LicenseKeys => Kind::LicenseKey,
                Step::Payments => Kind::Payment,
                Step::Refunds => Kind::Refund,
                Step::Disputes => Kind::Dispute,
                Step::CustomerGrants | Step::EntitlementGrants => continue,
            };
            let segments = collection(kind).map(str::to_string).into_iter().collect();
            self.list(kind, Listing::of(step), segments, filter.clone(), false)
                .await?;
        }
        Ok(())
    }

    /// Counts a failed request; a refused key or an unreachable API stops the run.
    fn failed(&mut self, e: ApiError) -> Result<(), Stop> {
        match e {
            ApiError::Refused(m) => Err(Stop::Refused(m)),
            e @ ApiError::Transport { .. } => {
                self.summary.error();
                Err(Stop::Unreachable(e.to_string()))
            }
            e => {
                tracing::warn!(error = %e, "request failed");
                self.summary.error();
                Ok(())
            }
        }
    }

    /// One list endpoint to the end (from where a resumed sweep left it), each page
    /// folded as it comes, the checkpoint saved after each. `may_be_gone`: a 404 is not
    /// an error (an entitlement only the store still knows).
    async fn list(
        &mut self,
        kind: Kind,
        listing: Listing,
        segments: Vec<String>,
        query: Vec<(&'static str, String)>,
        may_be_gone: bool,
    ) -> Result<(), Stop> {
        let first = match self.from.as_ref().map(|c| c.start(&listing)) {
            Some(Start::Skip) => return Ok(()),
            Some(Start::Page(p)) => p,
            None => 0,
        };
        let id_field = reconcile::id_field(kind).unwrap_or("id");
        let what = segments.join("/");
        self.progress
            .update(&what, &self.summary, self.client.requests());
        let mut pager = self.client.pages(segments, query, id_field, first);
        let mut pages = first;
        loop {
            match pager.next().await {
                Ok(Some(page)) => {
                    let last = page.last;
                    pages = page.number + 1;
                    self.page(kind, page).await?;
                    if !last {
                        self.mark(&listing, pages, false).await?;
                    }
                    self.progress
                        .update(&what, &self.summary, self.client.requests());
                }
                Ok(None) => return self.mark(&listing, pages, true).await,
                Err(ApiError::NotFound { path }) if may_be_gone => {
                    tracing::debug!(%path, "not found: an entitlement the API no longer has");
                    return self.mark(&listing, pages, true).await;
                }
                Err(e) => return self.failed(e),
            }
        }
    }

    /// Saves the checkpoint: `pages` of `listing` (all of it when `complete`) and
    /// everything before it were read and stored. Only while the run has met no error:
    /// past one, the checkpoint stays before it, so that the next run reads it again.
    async fn mark(&mut self, listing: &Listing, pages: u32, complete: bool) -> Result<(), Stop> {
        if self.summary.errors > 0 {
            return Ok(());
        }
        let at = Checkpoint {
            started: self.started,
            listing: listing.clone(),
            pages,
            complete,
            page_size: self.client.page_size(),
            steps: self.steps.clone(),
        };
        self.save(Some(at)).await
    }

    /// Saves (`Some`) or clears (`None`) this sweep's checkpoint.
    async fn save(&mut self, at: Option<Checkpoint>) -> Result<(), Stop> {
        let (engine, scope) = (self.engine.clone(), self.scope.clone());
        blocking(move || engine.set_reconcile_checkpoint(&scope, at.as_ref())).await
    }

    /// Folds one page: compare each item with its stored state, fetch the full object
    /// of a changed light list item, ingest the rest in one batch.
    async fn page(&mut self, kind: Kind, page: Page) -> Result<(), Stop> {
        let response_at = page.date;
        let seen = self.seen.entry(kind).or_default();
        let mut items = Vec::with_capacity(page.items.len());
        for item in page.items {
            match reconcile::object_id(kind, &item) {
                Some(id) if seen.insert(id.to_string()) => items.push((id.to_string(), item)),
                Some(_) => {}
                None => {
                    tracing::warn!(%kind, "an api object without an id");
                    self.summary.error();
                }
            }
        }
        let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
        let engine = self.engine.clone();
        let current = blocking(move || {
            ids.iter()
                .map(|id| engine.object(kind, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        let mut batch = Vec::new();
        for ((id, item), current) in items.into_iter().zip(current) {
            let v = reconcile::version(kind, &item, response_at);
            if reconcile::compare(kind, &item, current.as_ref(), v).is_unchanged() {
                self.summary.unchanged();
                continue;
            }
            let (obj, at) = if reconcile::listed_light(kind) {
                let full = match self.full(kind, &id).await {
                    Ok(full) => full,
                    Err(stop) => {
                        // The API went away mid-page: what was fetched is stored first.
                        self.store(batch).await?;
                        return Err(stop);
                    }
                };
                match full {
                    Some((obj, at)) => {
                        let v = reconcile::version(kind, &obj, at);
                        if reconcile::compare(kind, &obj, current.as_ref(), v) != Decision::Ingest {
                            self.summary.unchanged();
                            continue;
                        }
                        (obj, at)
                    }
                    None => continue,
                }
            } else {
                (item, response_at)
            };
            match reconcile::snapshot(
                kind,
                &obj,
                at,
                self.business_id.as_deref(),
                chrono::Utc::now(),
            ) {
                Ok(s) => batch.push(s.delivery),
                Err(e) => {
                    tracing::warn!(error = %e, "an api object that cannot be stored");
                    self.summary.error();
                }
            }
        }
        self.store(batch).await
    }

    /// Stores a page's snapshots in one batch and counts their outcomes.
    async fn store(&mut self, batch: Vec<Delivery>) -> Result<(), Stop> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        let engine = self.engine.clone();
        match tokio::task::spawn_blocking(move || engine.ingest_batch(batch)).await {
            Ok(Ok(results)) => {
                for r in results {
                    match r {
                        Ok(a) => self.summary.outcome(a.outcome),
                        Err(e) => {
                            tracing::warn!(error = %e, "an api snapshot was not stored");
                            self.summary.error();
                        }
                    }
                }
                Ok(())
            }
            Ok(Err(e)) => {
                self.summary.errors += n;
                Err(Stop::NotStored(format!("a batch was not stored: {e}")))
            }
            Err(e) => {
                self.summary.errors += n;
                Err(Stop::NotStored(format!("engine task failed: {e}")))
            }
        }
    }

    /// The full object of a light list item (`GET /subscriptions/{id}`, ...), with the
    /// response's `Date`; `None` when it could not be fetched (counted as an error).
    async fn full(&mut self, kind: Kind, id: &str) -> Result<Option<(Value, Timestamp)>, Stop> {
        let Some(collection) = collection(kind) else {
            return Ok(None);
        };
        match self.client.get(&[collection, id], &[]).await {
            Ok(resp) => Ok(Some((resp.body, resp.date))),
            Err(e) => {
                self.failed(e)?;
                Ok(None)
            }
        }
    }
}
