//! The engine: the crate's paved path. Open a file, ingest verified deliveries, ask
//! access questions.
//!
//! An [`Engine`] is `Send + Sync` and cheap to clone (an `Arc` inside): share it between
//! request handlers. Writes go through one writer connection with **group commit**:
//! concurrent [`Engine::ingest`] calls share one transaction and one fsync, and each
//! returns only after the transaction holding its delivery committed. Reads are answered
//! from an in-memory index kept coherent with the file: every read first asks SQLite's
//! `PRAGMA data_version` whether any connection (this process or another) committed, and
//! if so loads the rows changed since. Readers never wait behind a writer's transaction.

use crate::access::{Access, Policy};
use crate::delivery::{Delivery, Outcome};
use crate::index::Index;
use crate::store::{
    self, Applied, Balance, CustomerView, DeliveryRecord, GrantRecord, QuarantineRecord, Reader,
    RebuildStats, StoreError, StoreStats, Writer,
};
use crate::wire::Timestamp;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};

/// Errors of the engine.
pub type Error = StoreError;

/// How many deliveries one group commit takes at most.
const MAX_GROUP: usize = 512;

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
            .field("path", &self.inner.path)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

struct Job {
    delivery: Delivery,
    reply: mpsc::SyncSender<Result<Applied, StoreError>>,
}

struct Sync {
    reader: Reader,
    data_version: i64,
    seq: i64,
    epoch: i64,
}

struct Inner {
    path: PathBuf,
    policy: Policy,
    writer: Mutex<Writer>,
    queue: Mutex<Vec<Job>>,
    sync: Mutex<Sync>,
    index: RwLock<Index>,
    listing: Mutex<Reader>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves data we only ever replace wholesale or
    // re-read from SQLite: continuing is safe.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Opens (creating and migrating if needed) the database at `path` with the default
    /// [`Policy`], and loads the access index.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the file cannot be opened, is newer than this build, or its
    /// projections do not decode.
    pub fn open(path: impl AsRef<Path>) -> Result<Engine, Error> {
        Engine::open_with(path, Policy::default())
    }

    /// Like [`Engine::open`], with an access policy.
    ///
    /// # Errors
    ///
    /// See [`Engine::open`].
    pub fn open_with(path: impl AsRef<Path>, policy: Policy) -> Result<Engine, Error> {
        let path = path.as_ref().to_path_buf();
        let writer = Writer::open(&path)?;
        let reader = Reader::open(&path)?;
        let listing = Reader::open(&path)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                path,
                policy,
                writer: Mutex::new(writer),
                queue: Mutex::new(Vec::new()),
                sync: Mutex::new(Sync {
                    reader,
                    data_version: i64::MIN,
                    seq: 0,
                    epoch: -1,
                }),
                index: RwLock::new(Index::default()),
                listing: Mutex::new(listing),
            }),
        };
        engine.refresh()?;
        Ok(engine)
    }

    /// The database file.
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
        lock(&self.inner.queue).push(Job { delivery, reply });
        {
            // Leader/follower group commit: whoever holds the writer takes everything
            // queued so far, ours included unless an earlier leader already took it.
            let mut writer = lock(&self.inner.writer);
            loop {
                let batch: Vec<Job> = {
                    let mut q = lock(&self.inner.queue);
                    let n = q.len().min(MAX_GROUP);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                run_batch(&mut writer, batch);
                if let Ok(r) = result.try_recv() {
                    return r;
                }
            }
        }
        result
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Corrupt("group commit lost a delivery".into())))
    }

    /// Stores and applies many deliveries in one transaction (bulk ingest). One result
    /// per delivery, in order.
    ///
    /// # Errors
    ///
    /// The outer error: the transaction failed and none of them was stored.
    pub fn ingest_batch(
        &self,
        deliveries: &[Delivery],
    ) -> Result<Vec<Result<Applied, Error>>, Error> {
        lock(&self.inner.writer).apply_batch(deliveries)
    }

    /// Brings the index up to date with the file if any connection committed.
    fn refresh(&self) -> Result<(), Error> {
        let mut sync = lock(&self.inner.sync);
        let dv = sync.reader.data_version()?;
        if dv == sync.data_version {
            return Ok(());
        }
        let since = sync.seq;
        let (mut rows, mut seq, epoch) = sync.reader.changed_since(since)?;
        let mut fresh = None;
        if epoch != sync.epoch {
            // First load, or a rebuild replaced every row: load everything anew.
            (rows, seq, _) = sync.reader.changed_since(0)?;
            fresh = Some(Index::default());
        }
        {
            let mut guard = self.inner.index.write().unwrap_or_else(|p| p.into_inner());
            let index = match fresh.as_mut() {
                Some(f) => f,
                None => &mut *guard,
            };
            for row in &rows {
                index
                    .apply(row)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            }
            if let Some(f) = fresh {
                *guard = f;
            }
        }
        sync.data_version = dv;
        sync.seq = seq;
        sync.epoch = epoch;
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
        self.refresh()?;
        Ok(self.index().access(customer, entitlement, policy, now))
    }

    /// Does `customer` have `entitlement` at `now`? Fails closed: `false` if the store
    /// could not be read.
    pub fn has_access(&self, customer: &str, entitlement: &str, now: Timestamp) -> bool {
        if self.refresh().is_err() {
            return false;
        }
        self.index()
            .has_access(customer, entitlement, &self.inner.policy, now)
    }

    /// Number of grants in the access index.
    pub fn grant_count(&self) -> usize {
        let _ = self.refresh();
        self.index().grants()
    }

    fn listing(&self) -> MutexGuard<'_, Reader> {
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
        self.listing()
            .deliveries(outcome.map(Outcome::as_str), limit)
    }

    /// The quarantine.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn rejected(&self) -> Result<Vec<QuarantineRecord>, Error> {
        self.listing().rejected()
    }

    /// Grants, all or one customer's.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn grants(&self, customer: Option<&str>) -> Result<Vec<GrantRecord>, Error> {
        self.listing().grants(customer)
    }

    /// Everything known about one customer.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn customer(&self, customer: &str) -> Result<CustomerView, Error> {
        self.listing().customer(customer)
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
        self.listing().balance(customer, credit_entitlement)
    }

    /// Counters for monitoring.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn stats(&self) -> Result<StoreStats, Error> {
        self.listing().stats()
    }

    /// The operator override: applies the quarantined snapshot carried by `delivery_id`,
    /// recorded so that rebuilds apply it too. Returns (object kind, object id).
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownDelivery`], [`StoreError::NotQuarantined`], or SQLite.
    pub fn accept(&self, delivery_id: &str, now: Timestamp) -> Result<(String, String), Error> {
        lock(&self.inner.writer).accept(delivery_id, now)
    }

    /// Recomputes every projection from the stored deliveries and overrides.
    ///
    /// # Errors
    ///
    /// SQLite errors (nothing changes then).
    pub fn rebuild(&self) -> Result<RebuildStats, Error> {
        let stats = lock(&self.inner.writer).rebuild()?;
        self.refresh()?;
        Ok(stats)
    }

    /// The raw SQLite point lookup the index is benchmarked against.
    #[doc(hidden)]
    pub fn raw_lookup(&self, customer: &str, entitlement: &str) -> Result<usize, Error> {
        lock(&self.inner.sync)
            .reader
            .raw_grant_lookup(customer, entitlement)
    }

    /// Opens a second, independent reader on the same file (benchmarks).
    #[doc(hidden)]
    pub fn open_reader(&self) -> Result<Reader, Error> {
        store::Reader::open(&self.inner.path)
    }
}

fn run_batch(writer: &mut Writer, batch: Vec<Job>) {
    let (deliveries, replies): (Vec<Delivery>, Vec<_>) =
        batch.into_iter().map(|j| (j.delivery, j.reply)).unzip();
    match writer.apply_batch(&deliveries) {
        Ok(results) => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Commit {
                    message: message.clone(),
                    retryable,
                }));
            }
        }
    }
}
