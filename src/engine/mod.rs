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
use crate::delivery::{Delivery, Outcome};
use crate::event::Kind;
use crate::index::{Decoded, Index, IndexError};
use crate::store::{
    Applied, Balance, CustomerView, DeliveryRecord, GrantRecord, Location, ObjectRow,
    QuarantineRecord, ReadStore, Reader, RebuildStats, StoreError, StoreStats, Writer,
};
use crate::wire::Timestamp;
use writer::{writer_loop, Job, Signal, Store};

mod changes;
mod lease;
pub use lease::Lease;
mod writer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl EngineError {
    /// Could the same call succeed later? (A shell answers 503 then, else 500.)
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Store(e) => e.is_retryable(),
            EngineError::WriterStopped | EngineError::Spawn(_) => true,
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

/// Default of [`Engine::set_external_check_interval`] on PostgreSQL: the listener
/// brings the index up to date on every notification and every second, so reads do not
/// ask the server themselves.
#[cfg(feature = "postgres")]
const PG_EXTERNAL_CHECK: Duration = Duration::from_secs(1);

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

/// Rows the access index could not decode: skipped, so that one bad row never touches
/// another object's answer, and reported (`/metrics`, `/healthz`).
#[derive(Debug, Clone, Default)]
pub struct BadRows {
    /// How many rows were skipped in all.
    pub count: u64,
    /// The most recent ones: `(kind, id, why)`, at most [`BadRows::KEPT`].
    pub recent: Vec<(String, String, String)>,
}

impl BadRows {
    /// How many named rows are kept.
    pub const KEPT: usize = 16;

    fn record(&mut self, e: &IndexError) {
        self.count += 1;
        if self.recent.len() == Self::KEPT {
            self.recent.remove(0);
        }
        self.recent
            .push((e.kind.clone(), e.id.clone(), e.message.clone()));
    }
}

/// How far the in-memory access index is (see [`Engine::warm_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum IndexState {
    /// Not loaded yet: the first read loads it (and waits for it).
    Lazy,
    /// Loading in the background: reads are answered from the store meanwhile.
    Warming,
    /// Loaded: reads are answered from memory.
    Ready,
}

impl IndexState {
    /// `lazy`, `warming` or `ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexState::Lazy => "lazy",
            IndexState::Warming => "warming",
            IndexState::Ready => "ready",
        }
    }
}

const LAZY: u8 = 0;
const WARMING: u8 = 1;
const READY: u8 = 2;

struct Inner {
    /// [`IndexState`], as `LAZY`, `WARMING`, `READY`.
    state: std::sync::atomic::AtomicU8,
    location: Location,
    /// The SQLite file, or the redacted PostgreSQL URL (see [`Engine::path`]).
    path: PathBuf,
    policy: Policy,
    jobs: mpsc::Sender<Job>,
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
    /// every pair (cause `operator`, detail `policy_changed`) and stores it.
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
        std::thread::Builder::new()
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
                generation,
                synced: AtomicU64::new(0),
                checked_at: AtomicU64::new(0),
                external_interval: AtomicU64::new(external.as_nanos() as u64),
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

    /// PostgreSQL: other instances' commits wake a listener thread, which brings the
    /// index up to date (if it was ever loaded) on every notification, after every
    /// reconnect, and once a second. It holds the engine weakly and stops with it.
    #[cfg(feature = "postgres")]
    fn listen(&self) -> Result<(), Error> {
        let Location::Postgres { url, schema } = &self.inner.location else {
            return Ok(());
        };
        let weak = Arc::downgrade(&self.inner);
        crate::store::postgres::spawn_listener(url, schema, move |_| {
            let Some(inner) = weak.upgrade() else {
                return false;
            };
            let engine = Engine { inner };
            // Only an index that was loaded is kept current: commands that never read
            // never pay for it. A failed refresh is retried by the next wake or read.
            if lock(&engine.inner.sync).epoch >= 0 {
                let _ = engine.refresh();
            }
            true
        })?;
        Ok(())
    }

    /// Where the store lives.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// How long reads may trust the in-memory index about commits made by *other
    /// processes* before asking SQLite (`PRAGMA data_version`) again. Commits made
    /// through this engine are always visible to the next read. Default 1 ms; `ZERO`
    /// asks on every read (about 1.5 µs more per read).
    pub fn set_external_check_interval(&self, interval: Duration) {
        let ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        self.inner.external_interval.store(ns, Ordering::Relaxed);
    }

    /// Loads the access index on a thread of its own and returns at once: until it is
    /// loaded, reads are answered from the store, pair by pair (the same answers,
    /// slower: [`Engine::access_direct`]), instead of waiting for the whole index. For a
    /// server that should answer right after it starts on a large store. Reads before
    /// any call to this load the index themselves, on the first one.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub fn warm_up(&self) -> Result<(), Error> {
        if self
            .inner
            .state
            .compare_exchange(LAZY, WARMING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(());
        }
        let engine = self.clone();
        let spawned = std::thread::Builder::new()
            .name("entsync-warm".into())
            .spawn(move || {
                // Until the load succeeds; a failing store is retried.
                let mut delay = Duration::from_millis(100);
                while engine.refresh().is_err() {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                engine.inner.state.store(READY, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.inner.state.store(LAZY, Ordering::Release);
            return Err(EngineError::Spawn(e));
        }
        Ok(())
    }

    /// How far the access index is.
    pub fn index_state(&self) -> IndexState {
        match self.inner.state.load(Ordering::Acquire) {
            WARMING => IndexState::Warming,
            READY => IndexState::Ready,
            _ => {
                if lock(&self.inner.sync).epoch >= 0 {
                    IndexState::Ready
                } else {
                    IndexState::Lazy
                }
            }
        }
    }

    /// The index is being loaded in the background: answer from the store.
    fn warming(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == WARMING
    }

    /// Refreshes the index only when this engine committed since, or when the external
    /// check interval has passed.
    fn refresh_for_read(&self) -> Result<(), Error> {
        if self.index_is_current() {
            return Ok(());
        }
        self.refresh()
    }

    /// Nothing committed through this engine since the index was brought up to date,
    /// and the check for other processes' commits is not due: reads need no SQLite.
    fn index_is_current(&self) -> bool {
        let inner = &self.inner;
        let generation = inner.generation.load();
        let now = inner.started.elapsed().as_nanos() as u64;
        let checked = inner.checked_at.load(Ordering::Relaxed);
        generation == inner.synced.load(Ordering::Acquire)
            && now.saturating_sub(checked) < inner.external_interval.load(Ordering::Relaxed)
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
        let job = Job::Deliver {
            delivery,
            reply: Box::new(done),
        };
        if let Err(mpsc::SendError(Job::Deliver { reply, .. })) = self.inner.jobs.send(job) {
            reply(Err(writer_gone()));
        }
    }

    /// Stores and applies many deliveries in one transaction (bulk ingest). One result
    /// per delivery, in order.
    ///
    /// # Errors
    ///
    /// The outer error: the transaction failed and none of them was stored.
    pub fn ingest_batch(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<Result<Applied, Error>>, Error> {
        Ok(self
            .with_writer(move |w| w.apply_batch(&deliveries))??
            .into_iter()
            .map(|r| r.map_err(Error::from))
            .collect())
    }

    /// Runs `f` on the writer thread, in order with the deliveries queued before it.
    fn with_writer<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (reply, result) = mpsc::sync_channel(1);
        let job = Job::Exec(Box::new(move |w: &mut Store, generation: &Signal| {
            let r = f(w);
            generation.bump();
            let _ = reply.send(r);
        }));
        self.inner.jobs.send(job).map_err(|_| writer_gone())?;
        result.recv().map_err(|_| writer_gone())
    }

    /// Brings the index up to date with the file if any connection committed.
    fn refresh(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let mut sync = lock(&inner.sync);
        // Read the generation first: whatever committed before it is in what we load.
        let generation = inner.generation.load();
        let now = inner.started.elapsed().as_nanos() as u64;
        let dv = sync.reader.data_version()?;
        inner.checked_at.store(now, Ordering::Relaxed);
        if dv == sync.data_version {
            inner.synced.store(generation, Ordering::Release);
            return Ok(());
        }
        let since = sync.seq;
        let (mut rows, mut seq, epoch) = sync.reader.changed_since(since)?;
        let full = epoch != sync.epoch;
        if full {
            // First load, or a rebuild replaced every row: load everything anew.
            (rows, seq, _) = sync.reader.changed_since(0)?;
        }
        // Decode (and for a full load, build) without holding the index: readers keep
        // answering from the previous state meanwhile. A row that does not decode is
        // skipped and reported; every other answer stays right.
        let (decoded, bad) = decode_rows(&rows);
        if !bad.is_empty() {
            let mut rows = lock(&inner.bad_rows);
            for e in &bad {
                rows.record(e);
            }
        }
        if full {
            let mut fresh = Index::default();
            for d in decoded {
                fresh.apply_decoded(d);
            }
            *self.inner.index.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        } else {
            let mut index = self.inner.index.write().unwrap_or_else(|p| p.into_inner());
            for d in decoded {
                index.apply_decoded(d);
            }
        }
        sync.data_version = dv;
        sync.seq = seq;
        sync.epoch = epoch;
        inner.synced.store(generation, Ordering::Release);
        Ok(())
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|p| p.into_inner())
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

    /// Brings the in-memory access index up to date now, instead of on the next read
    /// (which would otherwise pay for loading whatever was committed since). A shell
    /// under write load can call it from a background thread after commits, so that
    /// reads keep finding the index current.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the changed rows could not be read.
    pub fn sync_index(&self) -> Result<(), Error> {
        if self.warming() {
            return Ok(());
        }
        self.refresh_for_read()
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

    /// Rows the access index skipped because they do not decode.
    pub fn bad_rows(&self) -> BadRows {
        lock(&self.inner.bad_rows).clone()
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

    /// Counters for monitoring.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn stats(&self) -> Result<StoreStats, Error> {
        Ok(self.listing().stats()?)
    }

    /// The operator override: applies the quarantined snapshot carried by `delivery_id`,
    /// recorded so that rebuilds apply it too. Returns (object kind, object id).
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownDelivery`], [`StoreError::NotQuarantined`], or SQLite.
    pub fn accept(&self, delivery_id: &str, now: Timestamp) -> Result<(Kind, String), Error> {
        let delivery_id = delivery_id.to_string();
        Ok(self.with_writer(move |w| w.accept(&delivery_id, now))??)
    }

    /// Recomputes every projection from the stored deliveries and overrides, and
    /// records the access changes that makes (cause `rebuild`, at `now`).
    ///
    /// # Errors
    ///
    /// SQLite errors (nothing changes then).
    pub fn rebuild(&self, now: Timestamp) -> Result<RebuildStats, Error> {
        Ok(self.with_writer(move |w| w.rebuild(now))??)
    }

    /// Opens a second, independent reader on the same store (benchmarks).
    #[doc(hidden)]
    pub fn open_reader(&self) -> Result<Reader, Error> {
        Ok(Reader::open_at(&self.inner.location)?)
    }
}

/// Decodes changed rows, on every core when there are many (loading a large store).
/// Rows that do not decode are returned apart, in order.
fn decode_rows(rows: &[ObjectRow]) -> (Vec<Decoded>, Vec<IndexError>) {
    let decode = |part: &[ObjectRow]| -> (Vec<Decoded>, Vec<IndexError>) {
        let mut good = Vec::with_capacity(part.len());
        let mut bad = Vec::new();
        for row in part {
            match Index::decode(row) {
                Ok(d) => good.push(d),
                Err(e) => bad.push(e),
            }
        }
        (good, bad)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads <= 1 || rows.len() < 4096 {
        return decode(rows);
    }
    let per = rows.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = rows
            .chunks(per)
            .map(|part| (part, s.spawn(move || decode(part))))
            .collect();
        let mut good = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for (part, handle) in parts {
            // A decoder that panicked is a bug: decode its part again here, where a
            // panic would at least be reported.
            let (g, b) = handle.join().unwrap_or_else(|_| decode(part));
            good.extend(g);
            bad.extend(b);
        }
        (good, bad)
    })
}

fn writer_gone() -> Error {
    EngineError::WriterStopped
}
