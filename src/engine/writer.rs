//! The writer thread: one per engine, owner of the store's write side. It takes whatever
//! is queued (up to [`MAX_GROUP`] deliveries) and commits it as one transaction, so that
//! concurrent deliveries share one fsync; each caller hears of its delivery only after
//! the commit.

use super::Error;
use crate::delivery::Prepared;
use crate::store::{Applied, StoreError, WriteStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::Duration;

/// The commit generation: bumped by the writer thread after every commit, before anyone
/// hears of it; waiters ([`Signal::wait_past`]) and listeners are woken.
#[derive(Default)]
pub(super) struct Signal {
    generation: AtomicU64,
    lock: Mutex<()>,
    cond: Condvar,
    listeners: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Signal {
    pub(super) fn new() -> Signal {
        Signal {
            generation: AtomicU64::new(1),
            ..Signal::default()
        }
    }

    pub(super) fn load(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(super) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(super::lock(&self.lock));
        self.cond.notify_all();
        for listener in super::lock(&self.listeners).iter() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(listener));
        }
    }

    /// Waits until the generation is past `seen`, at most `timeout`.
    pub(super) fn wait_past(&self, seen: u64, timeout: Duration) {
        let guard = super::lock(&self.lock);
        if self.load() != seen {
            return;
        }
        let _ = self.cond.wait_timeout(guard, timeout);
    }

    pub(super) fn listen(&self, f: Box<dyn Fn() + Send + Sync>) {
        super::lock(&self.listeners).push(f);
    }
}

/// How many deliveries one group commit takes at most.
pub(super) const MAX_GROUP: usize = 512;

/// What to do with a delivery's result once its transaction committed (or failed).
pub(super) type Reply = Box<dyn FnOnce(Result<Applied, Error>) + Send>;

/// The store the writer thread owns.
pub(super) type Store = Box<dyn WriteStore>;

/// A closure run on the writer thread; it bumps the generation after writing.
pub(super) type WriterTask = Box<dyn FnOnce(&mut Store, &Signal) + Send>;

/// Work for the writer thread.
pub(super) enum Job {
    /// One delivery of a group commit.
    Deliver {
        delivery: Box<Prepared>,
        reply: Reply,
    },
    /// Anything else that needs the writer (bulk ingest, accept, rebuild), in order.
    Exec(WriterTask),
}

/// The writer thread: takes whatever is queued (up to [`MAX_GROUP`] deliveries) and
/// commits it as one transaction, so concurrent deliveries share one fsync. Exits when
/// every [`Engine`] clone is gone.
pub(super) fn writer_loop(mut writer: Store, queue: mpsc::Receiver<Job>, generation: &Signal) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        // A panic here is a bug; it must not stop the writer for good. The transaction in
        // flight rolls back as it unwinds, and callers whose replies were dropped see an
        // error (the HTTP shell answers 5xx, so Dodo retries).
        let writer = &mut writer;
        let pending = &mut pending;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match first {
            Job::Exec(f) => f(writer, generation),
            Job::Deliver { delivery, reply } => {
                let mut deliveries = vec![*delivery];
                let mut replies = vec![reply];
                while deliveries.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Job::Deliver { delivery, reply }) => {
                            deliveries.push(*delivery);
                            replies.push(reply);
                        }
                        Ok(exec) => {
                            *pending = Some(exec);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit(writer, deliveries, replies, generation);
            }
        }));
    }
}

/// Calls one caller's callback; a panicking callback affects no one else.
fn answer(reply: Reply, result: Result<Applied, Error>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reply(result)));
}

fn commit(writer: &mut Store, deliveries: Vec<Prepared>, replies: Vec<Reply>, generation: &Signal) {
    let result = writer.apply_batch(deliveries);
    // Before anyone hears of the commit, so that their next read sees it. A batch that
    // failed as a whole stored nothing: no read needs to look (and none should wait for
    // a store that is failing).
    if result.is_ok() {
        generation.bump();
    }
    match result {
        Ok(results) => {
            for (reply, r) in replies.into_iter().zip(results) {
                answer(reply, r.map_err(Error::from));
            }
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let message = e.to_string();
            for reply in replies {
                answer(
                    reply,
                    Err(Error::Store(StoreError::Commit {
                        message: message.clone(),
                        retryable,
                    })),
                );
            }
        }
    }
}
