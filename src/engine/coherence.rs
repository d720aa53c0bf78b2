//! Keeping the in-memory access index coherent with the store: catching up from the
//! rows changed since its seq after this engine's commits, when other processes'
//! commits are noticed (SQLite's `PRAGMA data_version`, the PostgreSQL listener), and
//! loading it in the background after a start ([`Engine::warm_up`]).

use super::{lock, Engine, EngineError, Error};
use crate::index::{Decoded, Index, IndexError};
#[cfg(feature = "postgres")]
use crate::store::Location;
use crate::store::ObjectRow;
use std::sync::atomic::Ordering;
#[cfg(feature = "postgres")]
use std::sync::Arc;
use std::time::Duration;

/// Rows a full load reads, decodes and applies at a time.
const FULL_LOAD_CHUNK: usize = 16_384;

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

pub(super) const LAZY: u8 = 0;

pub(super) const WARMING: u8 = 1;

pub(super) const READY: u8 = 2;

/// Decodes changed rows, on every core when there are many (loading a large store).
/// Rows that do not decode are returned apart, in order.
pub(super) fn decode_rows(rows: &[ObjectRow]) -> (Vec<Decoded>, Vec<IndexError>) {
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
    let mut good = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for (g, b) in crate::par::map_parts(rows, 4096, decode) {
        good.extend(g);
        bad.extend(b);
    }
    (good, bad)
}

impl Engine {
    /// PostgreSQL: other instances' commits wake a listener thread, which brings the
    /// index up to date (if it was ever loaded) on every notification, after every
    /// reconnect, and once a second. It holds the engine weakly and stops with it.
    #[cfg(feature = "postgres")]
    pub(super) fn listen(&self) -> Result<(), Error> {
        let Location::Postgres { url, schema } = &self.inner.location else {
            return Ok(());
        };
        let weak = Arc::downgrade(&self.inner);
        crate::store::postgres::spawn_listener(url, schema, move || {
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

    /// How long reads may trust the in-memory index about commits made by *other
    /// processes* before asking the store (SQLite's `PRAGMA data_version`) again.
    /// Commits made through this engine are always visible to the next read. Default
    /// 1 ms on SQLite (`ZERO` asks on every read, about 1.5 µs more per read); never on
    /// PostgreSQL, where the listener thread keeps the index current instead.
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
    pub(super) fn warming(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == WARMING
    }

    /// Refreshes the index only when this engine committed since, or when the external
    /// check interval has passed.
    pub(super) fn refresh_for_read(&self) -> Result<(), Error> {
        if self.index_is_current() {
            return Ok(());
        }
        self.refresh()
    }

    /// Nothing committed through this engine since the index was brought up to date,
    /// and the check for other processes' commits is not due: reads need no SQLite.
    pub(super) fn index_is_current(&self) -> bool {
        let inner = &self.inner;
        let generation = inner.generation.load();
        let now = inner.started.elapsed().as_nanos() as u64;
        let checked = inner.checked_at.load(Ordering::Relaxed);
        generation == inner.synced.load(Ordering::Acquire)
            && now.saturating_sub(checked) < inner.external_interval.load(Ordering::Relaxed)
    }

    /// Brings the index up to date with the file if any connection committed.
    pub(super) fn refresh(&self) -> Result<(), Error> {
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
        let record_bad = |bad: Vec<IndexError>| {
            if !bad.is_empty() {
                let mut rows = lock(&inner.bad_rows);
                for e in &bad {
                    rows.record(e);
                }
            }
        };
        // Incrementally, unless this is the first load or a rebuild replaced every row
        // since (then the epoch moved): load everything anew.
        let mut loaded = None;
        if sync.epoch >= 0 {
            let since = sync.seq;
            let (rows, seq, epoch) = sync.reader.changed_since(since)?;
            if epoch == sync.epoch {
                // Decode without holding the index: readers keep answering from the
                // previous state meanwhile. A row that does not decode is skipped and
                // reported; every other answer stays right.
                let (decoded, bad) = decode_rows(&rows);
                record_bad(bad);
                let mut index = self.inner.index.write().unwrap_or_else(|p| p.into_inner());
                for d in decoded {
                    index.apply_decoded(d);
                }
                loaded = Some((seq, epoch));
            }
        }
        let (seq, epoch) = match loaded {
            Some(counters) => counters,
            None => {
                // A full load, chunk by chunk into a fresh index (never every row's JSON
                // at once), which replaces the old one when complete.
                let mut fresh = Index::default();
                let counters = sync.reader.scan_changed(0, FULL_LOAD_CHUNK, &mut |rows| {
                    let (decoded, bad) = decode_rows(&rows);
                    drop(rows);
                    record_bad(bad);
                    for d in decoded {
                        fresh.apply_decoded(d);
                    }
                })?;
                *self.inner.index.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                counters
            }
        };
        sync.data_version = dv;
        sync.seq = seq;
        sync.epoch = epoch;
        inner.synced.store(generation, Ordering::Release);
        Ok(())
    }

    pub(super) fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the in-memory access index up to date now, instead of on the next read
    /// (which would otherwise pay for loading whatever was committed since). A shell
    /// under write load can call it from a background thread after commits, so that
    /// reads keep finding the index current.
    ///
    /// # Errors
    ///
    /// [`StoreError`](crate::store::StoreError) when the changed rows could not be read.
    pub fn sync_index(&self) -> Result<(), Error> {
        if self.warming() {
            return Ok(());
        }
        self.refresh_for_read()
    }

    /// Rows the access index skipped because they do not decode.
    pub fn bad_rows(&self) -> BadRows {
        lock(&self.inner.bad_rows).clone()
    }
}
