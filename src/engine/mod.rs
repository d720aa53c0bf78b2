//! The engine: the crate's paved path. Open a file, ingest verified deliveries, ask
//! access questions.
//!
//! An [`Engine`] is `Send + Sync` and cheap to clone (an `Arc` inside): share it between
//! request handlers. Writes go through one writer connection with **group commit**:
//! concurrent [`Engine::ingest`] calls share one transaction and one fsync, and each
//! returns only after the transaction holding its delivery committed. Reads are answered
//! from an in-memory index kept coherent with the store: after this engine's own commits
//! at once; other processes' commits are noticed by asking the store whether anyone
//! committed (SQLite's `PRAGMA data_version`, every millisecond of reads by default) or,
//! on PostgreSQL, by a listener woken by `LISTEN/NOTIFY` and at least once a second. It
//! then loads the rows changed since. Readers never wait behind a writer's transaction.

use crate::access::{Access, Policy};
use crate::delivery::{Delivery, Outcome, Prepared};
use crate::event::Kind;
use crate::index::Index;
use crate::reconcile::checkpoint::Checkpoint;
use crate::store::{
    Applied, Balance, CustomerView, DeliveryRecord, GrantRecord, Location, ObjectRow,
    QuarantineRecord, ReadStore, Reader, RebuildStats, StoreError, StoreStats, Writer,
};
use crate::wire::Timestamp;
use writer::{writer_loop, Job, Signal, Store};

mod changes;
mod coherence;
use coherence::{decode_rows, LAZY};
pub use coherence::{BadRows, IndexState};
mod lease;
pub use lease::Lease;
mod writer;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed; see [`StoreError::is_retryable`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread is gone (it could not start, or the engine is shutting down):
    /// nothing was stored.
    #[error("the writer thread has stopped")]
    WriterStopped,
    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    Spawn(std::io::Error),
    /// No store can keep this delivery: its id holds U+0000 (PostgreSQL's text cannot,
    /// so SQLite refuses it too). Nothing was stored; a retry fails the same way.
    #[error("the delivery id holds a U+0000 character")]
    DeliveryId,
}

impl EngineError {
    /// Could the same call succeed later? (A shell answers 503 then, else 500.)
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Store(e) => e.is_retryable(),
            EngineError::WriterStopped | EngineError::Spawn(_) => true,
            EngineError::DeliveryId => false,
        }
    }

    /// The store error, if that is what it is.
    pub fn as_store(&self) -> Option<&StoreError> {
        match self {
            EngineError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// Errors of the engine.
pub type Error = EngineError;

/// Default of [`Engine::set_external_check_interval`] on SQLite.
const DEFAULT_EXTERNAL_CHECK: Duration = Duration::from_millis(1);

/// Default of [`Engine::set_external_check_interval`] on PostgreSQL: never. The listener
/// thread brings the index up to date on every notification and every second, so reads
/// never ask the server themselves, and never wait for it: when it is away, they answer
/// from the index as it was (and `/healthz` says the store is unavailable).
#[cfg(feature = "postgres")]
const PG_EXTERNAL_CHECK: Duration = Duration::MAX;

/// A handle on one database file. Clone it freely.
///
/// # Example
///
/// ```
/// use entitlement_sync::{Delivery, Engine, Outcome};
/// let dir = tempfile::tempdir()?;
/// let engine = Engine::open(dir.path().join("entitlements.db"))?;
/// let body = br#"{"business_id":"bus_1","type":"entitlement_grant.delivered",
///   "timestamp":"2026-05-01T10:25:33Z","data":{"id":"grant_1","customer_id":"cus_1",
///   "entitlement_id":"ent_1","status":"Delivered","updated_at":"2026-05-01T10:25:33Z"}}"#;
/// let now = chrono::Utc::now();
/// assert_eq!(engine.ingest(Delivery::new("msg_1", body.to_vec(), now))?, Outcome::Applied);
/// assert_eq!(engine.ingest(Delivery::new("msg_1", body.to_vec(), now))?, Outcome::Duplicate);
/// assert!(engine.has_access("cus_1", "ent_1", now));
/// assert!(!engine.has_access("cus_1", "ent_2", now));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("location", &self.inner.location)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

struct Sync {
    reader: Box<dyn ReadStore>,
    data_version: i64,
    seq: i64,
    epoch: i64,
}

impl Drop for Inner {
    /// The last clone is gone: the queue closes, and this waits for the writer thread
    /// to finish its last job and close the store (for SQLite, a final checkpoint), so
    /// that a process that drops its engine and exits never cuts that short. (On the
    /// writer thread itself, when a job held the last clone, there is nothing to wait
    /// for: the thread ends right after.)
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.writer_thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

struct Inner {
    /// [`IndexState`], as `LAZY`, `WARMING`, `READY`.
    state: std::sync::atomic::AtomicU8,
    location: Location,
    /// The SQLite file, or the redacted PostgreSQL URL (see [`Engine::path`]).
    path: PathBuf,
    policy: Policy,
    jobs: mpsc::Sender<Job>,
    /// The writer thread, joined when the last clone goes (see `Drop`).
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Bumped by the writer thread after every commit, before anyone is answered.
    generation: Arc<Signal>,
    /// The generation the index reflects.
    synced: AtomicU64,
    /// When `PRAGMA data_version` was last asked (ns since `started`).
    checked_at: AtomicU64,
    /// How long to trust the index about other processes' writes (ns).
    external_interval: AtomicU64,
    started: Instant,
    sync: Mutex<Sync>,
    index: RwLock<Index>,
    listing: Mutex<Box<dyn ReadStore>>,
    bad_rows: Mutex<BadRows>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves data we only ever replace wholesale or
    // re-read from SQLite: continuing is safe.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Opens (creating and migrating if needed) the database at `path` with the policy
    /// the store's access-change feed was last computed under ([`Policy::default`] for
    /// a new store). The access index is loaded by the first read.
    ///
    /// `path` is a SQLite file, or a `postgres://` / `postgresql://` URL: then the store
    /// lives in the schema `entsync` of that database ([`Engine::open_at`] names
    /// another), and any number of engines, in any number of processes and machines,
    /// may share it.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store cannot be opened, is newer than this build, or its
    /// projections do not decode.
    pub fn open(path: impl AsRef<Path>) -> Result<Engine, Error> {
        Engine::open_at(Location::from_path(path.as_ref()), None)
    }

    /// Like [`Engine::open`], with an access policy. The access-change feed is computed
    /// under it too: when it differs from the stored one, the first write re-evaluates
    /// every pair (cause `operator`, detail `policy_changed`) and stores it. Call
    /// [`Engine::advance`] right after opening to make that write at once (as
    /// `entsync serve` does), rather than at the first delivery. From then on the feed
    /// follows the policy stored last: another engine opened later with another policy
    /// (a rolling restart) takes the feed over, and this one's writes follow it.
    ///
    /// # Errors
    ///
    /// See [`Engine::open`].
    pub fn open_with(path: impl AsRef<Path>, policy: Policy) -> Result<Engine, Error> {
        Engine::open_at(Location::from_path(path.as_ref()), Some(policy))
    }

    /// Opens the store at `location` (a SQLite file, or a PostgreSQL database and
    /// schema), with `policy` as [`Engine::open_with`] takes it, or, for `None`, the
    /// stored one as [`Engine::open`] does.
    ///
    /// # Errors
    ///
    /// See [`Engine::open`].
    pub fn open_at(location: Location, policy: Option<Policy>) -> Result<Engine, Error> {
        let writer = Writer::open_at(&location, policy)?;
        let policy = writer.policy().clone();
        let writer: Store = Box::new(writer);
        let reader: Box<dyn ReadStore> = Box::new(Reader::open_at(&location)?);
        let listing: Box<dyn ReadStore> = Box::new(Reader::open_at(&location)?);
        let (path, external) = match &location {
            Location::Sqlite(path) => (path.clone(), DEFAULT_EXTERNAL_CHECK),
            #[cfg(feature = "postgres")]
            Location::Postgres { .. } => (PathBuf::from(location.display()), PG_EXTERNAL_CHECK),
            #[cfg(not(feature = "postgres"))]
            Location::Postgres { .. } => {
                (PathBuf::from(location.display()), DEFAULT_EXTERNAL_CHECK)
            }
        };
        let (jobs, queue) = mpsc::channel();
        let generation = Arc::new(Signal::new());
        let bump = Arc::clone(&generation);
        let writer_thread = std::thread::Builder::new()
            .name("entsync-writer".into())
            .spawn(move || writer_loop(writer, queue, &bump))
            .map_err(EngineError::Spawn)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                state: std::sync::atomic::AtomicU8::new(LAZY),
                location,
                path,
                policy,
                jobs,
                writer_thread: Some(writer_thread),
                generation,
                synced: AtomicU64::new(0),
                checked_at: AtomicU64::new(0),
                external_interval: AtomicU64::new(
                    u64::try_from(external.as_nanos()).unwrap_or(u64::MAX),
                ),
                started: Instant::now(),
                sync: Mutex::new(Sync {
                    reader,
                    data_version: i64::MIN,
                    seq: 0,
                    epoch: -1,
                }),
                index: RwLock::new(Index::default()),
                listing: Mutex::new(listing),
                bad_rows: Mutex::new(BadRows::default()),
            }),
        };
        #[cfg(feature = "postgres")]
        engine.listen()?;
        // The access index loads on the first read, so commands that only write or
        // list do not pay for it.
        Ok(engine)
    }

    /// Where the store lives.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// The database file; for PostgreSQL, the URL without its password and the schema.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The access policy answers use by default.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Stores and applies one verified delivery; returns only once it is durable.
    /// Concurrent callers share transactions (group commit).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store failed: nothing of this delivery was stored, and the
    /// sender should retry (an HTTP shell answers 5xx).
    pub fn ingest(&self, delivery: Delivery) -> Result<Outcome, Error> {
        self.ingest_detailed(delivery).map(|a| a.outcome)
    }

    /// Like [`Engine::ingest`], with the event type and the parse error or rejection
    /// message.
    ///
    /// # Errors
    ///
    /// See [`Engine::ingest`].
    pub fn ingest_detailed(&self, delivery: Delivery) -> Result<Applied, Error> {
        let (reply, result) = mpsc::sync_channel(1);
        self.ingest_then(delivery, move |r| {
            let _ = reply.send(r);
        });
        result.recv().map_err(|_| writer_gone())?
    }

    /// Queues a delivery for the next group commit and returns at once; `done` is called
    /// on the writer thread with the result once the transaction holding it committed
    /// (or failed). This is how an async server acknowledges without blocking its
    /// workers: `done` completes a oneshot channel the request handler awaits. `done`
    /// must be quick (it runs inside the commit loop).
    pub fn ingest_then(
        &self,
        delivery: Delivery,
        done: impl FnOnce(Result<Applied, Error>) + Send + 'static,
    ) {
        if !crate::store::storable_key(&delivery.id) {
            return done(Err(EngineError::DeliveryId));
        }
        // Hashed and parsed here, on the caller's thread: the writer only writes.
        let job = Job::Deliver {
            delivery: Box::new(Prepared::new(delivery)),
            reply: Box::new(done),
        };
        if let Err(mpsc::SendError(Job::Deliver { reply, .. })) = self.inner.jobs.send(job) {
            reply(Err(writer_gone()));
        }
    }

    /// Stores and applies many deliveries in one transaction (bulk ingest). One result
    /// per delivery, in order. They are hashed and parsed on every core first.
    ///
    /// # Errors
    ///
    /// The outer error: the transaction failed and none of them was stored.
    pub fn ingest_batch(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<Result<Applied, Error>>, Error> {
        if !deliveries.iter().all(|d| crate::store::storable_key(&d.id)) {
            // The others are stored as a batch; the refused have their error in place.
            let kept: Vec<bool> = deliveries
                .iter()
                .map(|d| crate::store::storable_key(&d.id))
                .collect();
            let good = deliveries
                .into_iter()
                .zip(&kept)
                .filter_map(|(d, &k)| k.then_some(d));
            let mut stored = self.ingest_batch(good.collect())?.into_iter();
            return Ok(kept
                .into_iter()
                .map(|kept| match kept {
                    true => stored.next().unwrap_or_else(|| Err(writer_gone())),
                    false => Err(EngineError::DeliveryId),
                })
                .collect());
        }
        let prepared = prepare_all(deliveries);
        let (reply, result) = mpsc::sync_channel(1);
        let job = Job::Batch {
            deliveries: prepared,
            reply: Box::new(move |r| {
                let _ = reply.send(r);
            }),
        };
        self.inner.jobs.send(job).map_err(|_| writer_gone())?;
        result.recv().map_err(|_| writer_gone())?
    }

    /// Why the writer's last write failed (a group commit of deliveries, its sync, or an
    /// accept, advance or other write), while no later write has succeeded; `None` when
    /// the last one succeeded or none was made. A failure of the store (a full disk, a
    /// failed sync, a store a newer build migrated), not of the caller (accepting a
    /// delivery that is not quarantined). One atomic load when all is well: for health
    /// checks, which should not write to find out. It says nothing about a write that
    /// has not been tried: a store that failed once stays reported until one succeeds.
    pub fn write_failure(&self) -> Option<String> {
        self.inner.generation.write_failure()
    }

    /// Runs `f` on the writer thread, in order with the deliveries queued before it. How
    /// it went counts for [`Engine::write_failure`], unless it failed for the caller's
    /// reason (no such delivery to accept), not the store's.
    fn with_writer<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<Result<R, StoreError>, Error> {
        let (reply, result) = mpsc::sync_channel(1);
        let job = Job::Exec(Box::new(move |w: &mut Store, generation: &Signal| {
            let r = f(w);
            match &r {
                Err(StoreError::UnknownDelivery(_) | StoreError::NotQuarantined(_)) => {}
                other => generation.wrote(other.as_ref().map(|_| ())),
            }
            // A failed write gave its caller nothing to read back (it rolled back, or its
            // sync failed and the store refuses writes from then on): the index need not
            // catch up, and a store that cannot be read would turn reads the index
            // answers into 503s. The periodic check for commits still sees any commit.
            if r.is_ok() {
                generation.bump();
            }
            let _ = reply.send(r);
        }));
        self.inner.jobs.send(job).map_err(|_| writer_gone())?;
        result.recv().map_err(|_| writer_gone())
    }

    /// The access answer for (customer, entitlement) at `now`, with the engine's policy.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the index could not be brought up to date.
    pub fn access(
        &self,
        customer: &str,
        entitlement: &str,
        now: Timestamp,
    ) -> Result<Access, Error> {
        self.access_with(customer, entitlement, now, &self.inner.policy)
    }

    /// The access answer under another policy.
    ///
    /// # Errors
    ///
    /// See [`Engine::access`].
    pub fn access_with(
        &self,
        customer: &str,
        entitlement: &str,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Access, Error> {
        if self.warming() {
            return self.access_direct(customer, entitlement, now, policy);
        }
        self.refresh_for_read()?;
        Ok(self.index().access(customer, entitlement, policy, now))
    }

    /// [`Engine::access`] only when it can be answered from memory, without reading
    /// SQLite first; `None` when the index must be refreshed (after a commit, or when
    /// the check for other processes' writes is due), and then [`Engine::access`] is
    /// the call to make, from a thread that may block. For async handlers: the common
    /// case is answered in microseconds on the spot, the refresh goes to a blocking
    /// pool. (It may still wait for a refresh that is putting rows into the index.)
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::Engine;
    /// let dir = tempfile::tempdir()?;
    /// let engine = Engine::open(dir.path().join("entitlements.db"))?;
    /// let now = chrono::Utc::now();
    /// let answer = match engine.access_if_current("cus_1", "ent_1", now) {
    ///     Some(answer) => answer,
    ///     None => engine.access("cus_1", "ent_1", now)?, // in async code: spawn_blocking
    /// };
    /// assert!(!answer.allowed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn access_if_current(
        &self,
        customer: &str,
        entitlement: &str,
        now: Timestamp,
    ) -> Option<Access> {
        (!self.warming() && self.index_is_current()).then(|| {
            self.index()
                .access(customer, entitlement, &self.inner.policy, now)
        })
    }

    /// The access answer computed from the pair's own rows in SQLite, without loading
    /// (or consulting) the in-memory index: for one-shot callers such as `entsync check`
    /// on a large store. Same answer as [`Engine::access_with`].
    ///
    /// # Errors
    ///
    /// SQLite errors, or a row that does not decode.
    pub fn access_direct(
        &self,
        customer: &str,
        entitlement: &str,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Access, Error> {
        let rows = self.listing().pair_rows(customer, entitlement)?;
        let mut index = Index::default();
        for d in decode_rows(&rows).0 {
            index.apply_decoded(d);
        }
        Ok(index.access(customer, entitlement, policy, now))
    }

    /// Does `customer` have `entitlement` at `now`? Fails closed: `false` if the store
    /// could not be read.
    pub fn has_access(&self, customer: &str, entitlement: &str, now: Timestamp) -> bool {
        if self.warming() {
            return self
                .access_direct(customer, entitlement, now, &self.inner.policy)
                .is_ok_and(|a| a.allowed);
        }
        if self.refresh_for_read().is_err() {
            return false;
        }
        self.index()
            .has_access(customer, entitlement, &self.inner.policy, now)
    }

    /// Number of grants in the access index (0 while it warms up).
    pub fn grant_count(&self) -> usize {
        if !self.warming() {
            let _ = self.refresh_for_read();
        }
        self.index().grants()
    }

    fn listing(&self) -> MutexGuard<'_, Box<dyn ReadStore>> {
        lock(&self.inner.listing)
    }

    /// Stored deliveries in arrival order (only one outcome, the newest `limit`).
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn deliveries(
        &self,
        outcome: Option<Outcome>,
        limit: Option<u64>,
    ) -> Result<Vec<DeliveryRecord>, Error> {
        Ok(self.listing().deliveries(outcome, limit)?)
    }

    /// The quarantine.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn rejected(&self) -> Result<Vec<QuarantineRecord>, Error> {
        Ok(self.listing().rejected()?)
    }

    /// Grants, all or one customer's.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn grants(&self, customer: Option<&str>) -> Result<Vec<GrantRecord>, Error> {
        Ok(self.listing().grants(customer)?)
    }

    /// Everything known about one customer.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn customer(&self, customer: &str) -> Result<CustomerView, Error> {
        Ok(self.listing().customer(customer)?)
    }

    /// The credit balance of (customer, credit entitlement), if any ledger entry is known.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn credit_balance(
        &self,
        customer: &str,
        credit_entitlement: &str,
    ) -> Result<Option<Balance>, Error> {
        Ok(self.listing().balance(customer, credit_entitlement)?)
    }

    /// How many snapshots the quarantine holds.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn quarantine_size(&self) -> Result<u64, Error> {
        Ok(self.listing().quarantine_size()?)
    }

    /// One object's current state row (kind, id, version, state JSON), read from the
    /// store; `None` when it was never seen. `entsync reconcile` compares what Dodo's API
    /// says with it.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn object(&self, kind: Kind, id: &str) -> Result<Option<ObjectRow>, Error> {
        Ok(self.listing().object(kind, id)?)
    }

    /// The checkpoint of the reconcile sweep `scope`
    /// ([`checkpoint::scope`](crate::reconcile::checkpoint::scope)), if one is saved and
    /// this build can read it.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn reconcile_checkpoint(&self, scope: &str) -> Result<Option<Checkpoint>, Error> {
        Ok(self
            .listing()
            .checkpoint(scope)?
            .as_deref()
            .and_then(Checkpoint::decode))
    }

    /// Saves (`Some`) or clears (`None`) the checkpoint of the reconcile sweep `scope`,
    /// durably.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn set_reconcile_checkpoint(
        &self,
        scope: &str,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), Error> {
        let (scope, text) = (scope.to_string(), checkpoint.map(Checkpoint::encode));
        Ok(self.with_writer(move |w| w.set_checkpoint(&scope, text.as_deref()))??)
    }

    /// Counters for monitoring.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn stats(&self) -> Result<StoreStats, Error> {
        Ok(self.listing().stats()?)
    }

    /// The operator override: applies the quarantined snapshot carried by `delivery_id`
    /// (every one, where retries under that id carried several, of one object or more),
    /// recorded so that rebuilds apply it too. Returns (object kind, object id) of the
    /// first in version order.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownDelivery`], [`StoreError::NotQuarantined`], or SQLite.
    pub fn accept(&self, delivery_id: &str, now: Timestamp) -> Result<(Kind, String), Error> {
        let delivery_id = delivery_id.to_string();
        if !crate::store::storable_key(&delivery_id) {
            // No store holds such an id; asking is the caller's error, not the store's.
            return Err(StoreError::UnknownDelivery(delivery_id).into());
        }
        Ok(self.with_writer(move |w| w.accept(&delivery_id, now))??)
    }

    /// Recomputes every projection from the stored deliveries and overrides, and
    /// records the access changes that makes (cause `rebuild`, at `now`).
    ///
    /// # Errors
    ///
    /// SQLite errors (nothing changes then).
    pub fn rebuild(&self, now: Timestamp) -> Result<RebuildStats, Error> {
        self.rebuild_within(now, crate::store::REBUILD_MEMORY)
    }

    /// [`Engine::rebuild`] holding the parsed snapshots of at most about `memory` bytes
    /// of delivery bodies at once (see [`crate::store::REBUILD_MEMORY`]); a store
    /// whose bodies are larger is folded range of objects by range, reading and parsing
    /// each range's deliveries a second time. The outcome does not depend on `memory`.
    ///
    /// # Errors
    ///
    /// SQLite errors (nothing changes then).
    pub fn rebuild_within(&self, now: Timestamp, memory: usize) -> Result<RebuildStats, Error> {
        Ok(self.with_writer(move |w| w.rebuild_within(now, memory))??)
    }

    /// Opens a second, independent reader on the same store (benchmarks).
    #[doc(hidden)]
    pub fn open_reader(&self) -> Result<Reader, Error> {
        Ok(Reader::open_at(&self.inner.location)?)
    }
}

/// Hashes and parses a bulk batch on every core, keeping its order.
fn prepare_all(deliveries: Vec<Delivery>) -> Vec<Prepared> {
    let ahead = crate::par::map_parts(&deliveries, 256, |part| {
        part.iter().map(Prepared::ahead).collect::<Vec<_>>()
    });
    deliveries
        .into_iter()
        .zip(ahead.into_iter().flatten())
        .map(|(delivery, ahead)| Prepared::with(delivery, ahead))
        .collect()
}

fn writer_gone() -> Error {
    EngineError::WriterStopped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bulk batch prepared on several threads is the batch prepared in order, one by
    /// one: same deliveries, same hashes, same parses, same order.
    #[test]
    fn a_batch_prepared_in_parallel_keeps_its_order() {
        let at = crate::wire::parse_timestamp("2026-06-15T08:00:00Z").expect("instant");
        let deliveries: Vec<Delivery> = (0..1001)
            .map(|i| {
                let body = if i % 7 == 0 {
                    format!("not json {i}")
                } else {
                    format!(
                        r#"{{"type":"payout.success","timestamp":"2026-05-01T10:00:00Z","data":{{"n":{i}}}}}"#
                    )
                };
                Delivery::new(format!("msg_{i}"), body, at)
            })
            .collect();
        let one_by_one: Vec<Prepared> = deliveries.iter().cloned().map(Prepared::new).collect();
        let parallel = prepare_all(deliveries);
        assert_eq!(parallel.len(), one_by_one.len());
        for (p, q) in parallel.iter().zip(&one_by_one) {
            assert_eq!(p.delivery, q.delivery);
            assert_eq!(p.body_sha256, q.body_sha256);
            assert_eq!(format!("{:?}", p.parsed), format!("{:?}", q.parsed));
        }
    }
}
