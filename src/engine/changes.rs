//! The access-change feed as the engine offers it: reading it, waiting for it, and
//! recording what time alone changes. The feed itself is written by the store, in the
//! writer's transactions (`store/feed.rs`).

use super::{Engine, Error};
use crate::change::Change;
use crate::wire::Timestamp;
use std::time::{Duration, Instant};

impl Engine {
    /// Records the access changes time alone made up to `now` (a license key expired, an
    /// on-hold grace ended), each at the instant it happened, with cause `time`. Returns
    /// how many. A shell calls it from a timer set to [`Engine::next_due`]; every write
    /// does it too, before its own changes.
    ///
    /// # Errors
    ///
    /// The store's (nothing is recorded then).
    pub fn advance(&self, now: Timestamp) -> Result<usize, Error> {
        Ok(self.with_writer(move |w| w.advance(now))??)
    }

    /// The earliest instant at which time alone may change some answer (when to call
    /// [`Engine::advance`] next).
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        Ok(self.listing().next_due()?)
    }

    /// Access changes after seq `after` (0: from the start), oldest first, at most
    /// `limit`.
    ///
    /// # Example
    ///
    /// ```
    /// use entitlement_sync::{Delivery, Engine};
    /// let dir = tempfile::tempdir()?;
    /// let engine = Engine::open(dir.path().join("entitlements.db"))?;
    /// let body = br#"{"business_id":"bus_1","type":"entitlement_grant.delivered",
    ///   "timestamp":"2026-05-01T10:25:33Z","data":{"id":"grant_1","customer_id":"cus_1",
    ///   "entitlement_id":"ent_1","status":"Delivered","updated_at":"2026-05-01T10:25:33Z"}}"#;
    /// engine.ingest(Delivery::new("msg_1", body.to_vec(), chrono::Utc::now()))?;
    /// let changes = engine.changes(0, 100)?;
    /// assert_eq!(changes.len(), 1);
    /// assert!(changes[0].allowed && !changes[0].previous.allowed);
    /// assert_eq!(changes[0].cause.kind(), "delivery");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The store's, or a row that does not decode.
    pub fn changes(&self, after: i64, limit: usize) -> Result<Vec<Change>, Error> {
        Ok(self.listing().changes(after, limit)?)
    }

    /// Like [`Engine::changes`], but when there is none yet, waits up to `timeout` for
    /// the next one: woken at once by this engine's commits, and checking every 100 ms
    /// for other processes'.
    ///
    /// # Errors
    ///
    /// See [`Engine::changes`].
    pub fn wait_changes(
        &self,
        after: i64,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<Change>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.inner.generation.load();
            let changes = self.changes(after, limit)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !changes.is_empty() || left.is_zero() {
                return Ok(changes);
            }
            self.inner
                .generation
                .wait_past(seen, left.min(Duration::from_millis(100)));
        }
    }

    /// Calls `f` on the writer thread after every commit of this engine (quick, must
    /// not block): how an async shell wakes its long polls and streams.
    pub fn on_commit(&self, f: impl Fn() + Send + std::marker::Sync + 'static) {
        self.inner.generation.listen(Box::new(f));
    }

    /// The newest seq of the access-change feed (0 when empty).
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn last_change_seq(&self) -> Result<i64, Error> {
        Ok(self.listing().last_change_seq()?)
    }

    /// The forwarder's cursor: the last seq `serve --forward-url` delivered.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn forward_cursor(&self) -> Result<i64, Error> {
        Ok(self.listing().forward_cursor()?)
    }

    /// Moves the forwarder's cursor to `seq` (never back), durably.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn set_forward_cursor(&self, seq: i64) -> Result<(), Error> {
        Ok(self.with_writer(move |w| w.set_forward_cursor(seq))??)
    }
}
