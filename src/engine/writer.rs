//! The writer thread: one per engine, owner of the store's write side. It takes whatever
//! is queued (up to [`MAX_GROUP`] deliveries) and commits it as one transaction, so that
//! concurrent deliveries share one fsync; each caller hears of its delivery only after
//! the commit.

use super::Error;
use crate::delivery::Prepared;
use crate::store::{Applied, StoreError, SyncLog, WriteStore};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::Duration;

/// The commit generation: bumped by the writer thread after every commit, before anyone
/// hears of it; waiters ([`Signal::wait_past`]) and listeners are woken.
///
/// It also carries how the writer's last write went ([`Signal::write_failure`]), for
/// health checks.
#[derive(Default)]
pub(super) struct Signal {
    generation: AtomicU64,
    lock: Mutex<()>,
    cond: Condvar,
    listeners: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// The last write failed: `failure` says why. Read without the lock.
    failing: AtomicBool,
    failure: Mutex<Option<String>>,
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

    /// Records how a write went (a commit and, where deferred, its sync): a failure is
    /// kept until a later write succeeds.
    pub(super) fn wrote(&self, result: Result<(), &StoreError>) {
        match result {
            Ok(()) => {
                if self.failing.load(Ordering::Acquire) {
                    let mut failure = super::lock(&self.failure);
                    *failure = None;
                    self.failing.store(false, Ordering::Release);
                }
            }
            Err(e) => {
                let mut failure = super::lock(&self.failure);
                *failure = Some(e.to_string());
                self.failing.store(true, Ordering::Release);
            }
        }
    }

    /// Why the last write failed, while no later one succeeded; `None` otherwise. One
    /// atomic load when all is well.
    pub(super) fn write_failure(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        super::lock(&self.failure).clone()
    }
}

/// How a batch's writes went, as [`Signal::wrote`] takes it: the last delivery's (a batch
/// retried one by one commits each delivery alone, the last of them last).
fn batch_outcome(results: &[Result<Applied, StoreError>]) -> Result<(), &StoreError> {
    match results.last() {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
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
    /// Many deliveries in one transaction of their own (bulk ingest), answered as one.
    Batch {
        deliveries: Vec<Prepared>,
        reply: BatchReply,
    },
    /// Anything else that needs the writer (accept, rebuild, advance), in order.
    Exec(WriterTask),
}

/// What to do with a bulk batch's results once its transaction committed (or failed).
pub(super) type BatchReply = Box<dyn FnOnce(Result<Vec<Result<Applied, Error>>, Error>) + Send>;

/// Who hears of a batch once it is stored: each delivery's caller, or the bulk
/// caller of the whole batch.
enum Callers {
    Each(Vec<Reply>),
    Whole(BatchReply),
}

impl Callers {
    fn stored(self, results: Vec<Result<Applied, StoreError>>) {
        match self {
            Callers::Each(replies) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    answer(reply, r.map_err(Error::from));
                }
            }
            Callers::Whole(reply) => {
                let results = results
                    .into_iter()
                    .map(|r| r.map_err(Error::from))
                    .collect();
                answer(reply, Ok(results));
            }
        }
    }

    /// Tells every caller that nothing of the batch is stored (or durable): `error`
    /// makes each one's error.
    fn failed(self, error: impl Fn() -> StoreError) {
        match self {
            Callers::Each(replies) => {
                for reply in replies {
                    answer(reply, Err(Error::Store(error())));
                }
            }
            Callers::Whole(reply) => answer(reply, Err(Error::Store(error()))),
        }
    }
}

/// The writer thread: takes whatever is queued (up to [`MAX_GROUP`] deliveries) and
/// commits it as one transaction, so concurrent deliveries share one fsync. Where the
/// store lets it ([`WriteStore::defer_sync`]: SQLite), a batch's fsync runs on a syncer
/// thread while this one builds and writes the next batch; the callers of a batch hear
/// of it once its sync is done. Exits when every [`Engine`] clone is gone, after the
/// last batch's callers heard of it.
pub(super) fn writer_loop(mut writer: Store, queue: mpsc::Receiver<Job>, generation: &Signal) {
    let Some(log) = writer.defer_sync() else {
        return serve_queue(&mut writer, &queue, None, generation);
    };
    let shared = Shared {
        log: Mutex::new(log),
        waiting: AtomicUsize::new(0),
    };
    std::thread::scope(|scope| {
        let (batches, committed) = mpsc::channel::<Committed>();
        let shared = &shared;
        let started = std::thread::Builder::new()
            .name("entsync-sync".into())
            .spawn_scoped(scope, move || syncer_loop(shared, &committed, generation));
        match started {
            Ok(_) => {
                let syncer = Syncer { shared, batches };
                serve_queue(&mut writer, &queue, Some(&syncer), generation);
            }
            // Without the thread no batch could be answered: refuse them all.
            Err(e) => {
                let message = format!("cannot start the sync thread: {e}");
                generation.wrote(Err(&StoreError::Sync(message.clone())));
                refuse(&queue, &message);
            }
        }
        // The sender is gone: the syncer ends once it has answered every batch, and the
        // scope waits for it before the store is closed.
    });
}

fn serve_queue(
    writer: &mut Store,
    queue: &mpsc::Receiver<Job>,
    syncer: Option<&Syncer<'_>>,
    generation: &Signal,
) {
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
        let pending = &mut pending;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (deliveries, callers) = match first {
                Job::Exec(f) => return f(writer, generation),
                Job::Batch { deliveries, reply } => (deliveries, Callers::Whole(reply)),
                Job::Deliver { delivery, reply } => {
                    let mut deliveries = vec![*delivery];
                    let mut replies = vec![reply];
                    while deliveries.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(Job::Deliver { delivery, reply }) => {
                                deliveries.push(*delivery);
                                replies.push(reply);
                            }
                            Ok(other) => {
                                *pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    (deliveries, Callers::Each(replies))
                }
            };
            let results = match writer.apply_batch(deliveries) {
                Ok(results) => results,
                Err(e) => {
                    generation.wrote(Err(&e));
                    return refused(callers, &e);
                }
            };
            let Some(syncer) = syncer else {
                // Durable already. Before anyone hears of the commit, so that their next
                // read sees it.
                generation.wrote(batch_outcome(&results));
                generation.bump();
                return callers.stored(results);
            };
            // The sync overlaps the next batch when there is one, or when the syncer is
            // still syncing an earlier batch (which this sync would have to wait for
            // anyway). Otherwise a hand-over would only add two thread wake-ups to a
            // lone delivery's wait.
            if pending.is_none() {
                *pending = queue.try_recv().ok();
            }
            let batch = Committed { callers, results };
            if pending.is_none() && syncer.shared.waiting.load(Ordering::Acquire) == 0 {
                syncer.shared.settle(vec![batch], 0, generation);
            } else {
                syncer.shared.waiting.fetch_add(1, Ordering::AcqRel);
                // The syncer outlives this loop, so the send cannot fail.
                let _ = syncer.batches.send(batch);
            }
        }));
    }
}

/// A batch committed but not yet synced.
struct Committed {
    callers: Callers,
    results: Vec<Result<Applied, StoreError>>,
}

/// What the writer and syncer threads share: the log, and how many batches the writer
/// handed to the syncer that are not answered yet.
struct Shared {
    log: Mutex<Box<dyn SyncLog>>,
    waiting: AtomicUsize,
}

/// The writer's side of the syncer thread.
struct Syncer<'a> {
    shared: &'a Shared,
    batches: mpsc::Sender<Committed>,
}

impl Shared {
    /// Syncs the log once for `batches`, then bumps the generation and answers their
    /// callers. After a failed sync the store refuses every later write
    /// ([`StoreError::Sync`]), so every later batch fails before it is stored.
    /// `handed`: how many of them the syncer took from the writer; they stop counting
    /// as waiting once synced, before their callers hear, so that a caller's next
    /// delivery, if it comes alone, is synced inline.
    fn settle(&self, batches: Vec<Committed>, handed: usize, generation: &Signal) {
        let synced = super::lock(&self.log).sync();
        self.waiting.fetch_sub(handed, Ordering::AcqRel);
        match synced {
            Ok(()) => {
                if let Some(last) = batches.last() {
                    generation.wrote(batch_outcome(&last.results));
                }
                // Before anyone hears of the commit, so that their next read sees it.
                generation.bump();
                for batch in batches {
                    batch.callers.stored(batch.results);
                }
            }
            Err(e) => {
                generation.wrote(Err(&e));
                let message = e.to_string();
                for batch in batches {
                    batch.callers.failed(|| StoreError::Sync(message.clone()));
                }
            }
        }
    }
}

/// The syncer thread: one sync for every batch handed over since its last one.
fn syncer_loop(shared: &Shared, committed: &mpsc::Receiver<Committed>, generation: &Signal) {
    while let Ok(first) = committed.recv() {
        let mut batches = vec![first];
        batches.extend(committed.try_iter());
        let n = batches.len();
        shared.settle(batches, n, generation);
    }
}

/// Answers every delivery in the queue with `message` until every engine clone is gone.
fn refuse(queue: &mpsc::Receiver<Job>, message: &str) {
    for job in queue {
        let callers = match job {
            Job::Deliver { reply, .. } => Callers::Each(vec![reply]),
            Job::Batch { reply, .. } => Callers::Whole(reply),
            // Dropped unrun: its caller hears that the writer is gone.
            Job::Exec(_) => continue,
        };
        callers.failed(|| StoreError::Sync(message.to_string()));
    }
}

/// Calls one caller's callback; a panicking callback affects no one else.
fn answer<T>(reply: Box<dyn FnOnce(T) + Send>, result: T) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reply(result)));
}

/// Tells the callers of a batch that failed as a whole that nothing of it is stored. No
/// read needs to look (and none should wait for a store that is failing).
fn refused(callers: Callers, e: &StoreError) {
    let message = e.to_string();
    let retryable = e.is_retryable();
    let sync = matches!(e, StoreError::Sync(_));
    callers.failed(|| {
        if sync {
            StoreError::Sync(message.clone())
        } else {
            StoreError::Commit {
                message: message.clone(),
                retryable,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Delivery, Outcome};
    use crate::event::Kind;
    use crate::store::{RebuildStats, Result as StoreResult};
    use crate::wire::Timestamp;
    use std::sync::Arc;

    /// What happened, in order, across the writer thread, the syncer and the callers.
    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Commit(Vec<String>),
        SyncStart { thread: String },
        SyncEnd { ok: bool },
        Reply { id: String, ok: bool },
    }

    type Events = Arc<(Mutex<Vec<Event>>, Condvar)>;

    fn record(events: &Events, e: Event) {
        super::super::lock(&events.0).push(e);
        events.1.notify_all();
    }

    fn commits(events: &Events) -> usize {
        let n = |v: &Vec<Event>| v.iter().filter(|e| matches!(e, Event::Commit(_))).count();
        n(&super::super::lock(&events.0))
    }

    /// A store that records its commits and refuses every write after a failed sync,
    /// as the SQLite writer does. With a log, its n-th commit waits until n - 1 syncs
    /// have begun, so that the order below is certain, not a matter of timing.
    struct Fake {
        events: Events,
        failed: Arc<AtomicBool>,
        sync: Option<FakeLog>,
        paced: bool,
    }

    /// Its log: each sync waits until the writer committed another batch (or until
    /// `total` deliveries are committed), so that overlap is certain when there is a
    /// next batch; the syncs numbered in `fail` fail, and every sync after them.
    struct FakeLog {
        events: Events,
        failed: Arc<AtomicBool>,
        total: usize,
        fail: Vec<usize>,
        done: usize,
    }

    impl SyncLog for FakeLog {
        fn sync(&mut self) -> StoreResult<()> {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            let before = commits(&self.events);
            record(&self.events, Event::SyncStart { thread });
            let committed = |v: &Vec<Event>| -> usize {
                v.iter()
                    .map(|e| match e {
                        Event::Commit(ids) => ids.len(),
                        _ => 0,
                    })
                    .sum()
            };
            let guard = super::super::lock(&self.events.0);
            let failed = &self.failed;
            let _ = self
                .events
                .1
                .wait_timeout_while(guard, Duration::from_secs(5), |v| {
                    let n = v.iter().filter(|e| matches!(e, Event::Commit(_))).count();
                    n == before && committed(v) < self.total && !failed.load(Ordering::Acquire)
                });
            self.done += 1;
            // As the SQLite log does, a log that failed once fails for good.
            let ok = !self.fail.contains(&self.done) && !self.failed.load(Ordering::Acquire);
            if !ok {
                self.failed.store(true, Ordering::Release);
            }
            record(&self.events, Event::SyncEnd { ok });
            if ok {
                Ok(())
            } else {
                Err(StoreError::Sync("the disk said no".into()))
            }
        }
    }

    impl WriteStore for Fake {
        fn defer_sync(&mut self) -> Option<Box<dyn SyncLog>> {
            self.sync
                .take()
                .map(|log| Box::new(log) as Box<dyn SyncLog>)
        }
        fn apply_batch(
            &mut self,
            deliveries: Vec<Prepared>,
        ) -> StoreResult<Vec<StoreResult<Applied>>> {
            if self.paced {
                let guard = super::super::lock(&self.events.0);
                let _ = self
                    .events
                    .1
                    .wait_timeout_while(guard, Duration::from_secs(5), |v| {
                        let n = v.iter().filter(|e| matches!(e, Event::Commit(_))).count();
                        let syncs = v
                            .iter()
                            .filter(|e| matches!(e, Event::SyncStart { .. }))
                            .count();
                        syncs < n
                    });
            }
            // After the pacing, as `begin` does: a sync that failed meanwhile is seen.
            if self.failed.load(Ordering::Acquire) {
                return Err(StoreError::Sync("refused after a failed sync".into()));
            }
            let ids: Vec<String> = deliveries.iter().map(|p| p.delivery.id.clone()).collect();
            let n = ids.len();
            record(&self.events, Event::Commit(ids));
            Ok((0..n)
                .map(|_| {
                    Ok(Applied {
                        outcome: Outcome::Unhandled,
                        event_type: None,
                        detail: None,
                    })
                })
                .collect())
        }
        fn accept(&mut self, _: &str, _: Timestamp) -> StoreResult<(Kind, String)> {
            Err(StoreError::Config("not used here".into()))
        }
        fn rebuild_within(&mut self, _: Timestamp, _: usize) -> StoreResult<RebuildStats> {
            Err(StoreError::Config("not used here".into()))
        }
        fn advance(&mut self, _: Timestamp) -> StoreResult<usize> {
            Err(StoreError::Config("not used here".into()))
        }
        fn set_forward_cursor(&mut self, _: i64) -> StoreResult<()> {
            Err(StoreError::Config("not used here".into()))
        }
        fn set_checkpoint(&mut self, _: &str, _: Option<&str>) -> StoreResult<()> {
            Err(StoreError::Config("not used here".into()))
        }
    }

    /// Runs the writer loop on a fake store over `jobs` deliveries queued at once (then
    /// one more, alone, after all of them were answered) and returns what happened.
    fn run(jobs: usize, fail: Vec<usize>, defer: bool) -> Vec<Event> {
        let events: Events = Arc::default();
        let failed = Arc::new(AtomicBool::new(false));
        let sync = defer.then(|| FakeLog {
            events: Arc::clone(&events),
            failed: Arc::clone(&failed),
            total: jobs,
            fail,
            done: 0,
        });
        let store: Store = Box::new(Fake {
            events: Arc::clone(&events),
            failed,
            sync,
            paced: defer,
        });
        let (queue, jobs_rx) = mpsc::channel();
        let (replied, replies) = mpsc::channel();
        let deliver = |id: String| {
            let events = Arc::clone(&events);
            let replied = replied.clone();
            let at = crate::wire::parse_timestamp("2026-06-15T08:00:00Z").expect("instant");
            Job::Deliver {
                delivery: Box::new(Prepared::new(Delivery::new(id.clone(), "{}", at))),
                reply: Box::new(move |r: Result<Applied, Error>| {
                    record(&events, Event::Reply { id, ok: r.is_ok() });
                    let _ = replied.send(());
                }),
            }
        };
        for i in 0..jobs {
            queue.send(deliver(format!("msg_{i}"))).expect("queued");
        }
        let generation = Arc::new(Signal::new());
        let g = Arc::clone(&generation);
        let writer = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer_loop(store, jobs_rx, &g))
            .expect("writer thread");
        for _ in 0..jobs {
            replies
                .recv_timeout(Duration::from_secs(20))
                .expect("a reply");
        }
        queue.send(deliver("msg_alone".into())).expect("queued");
        replies
            .recv_timeout(Duration::from_secs(20))
            .expect("a reply");
        drop(queue);
        writer.join().expect("writer thread ends");
        let events = super::super::lock(&events.0).clone();
        events
    }

    /// The events in short: commits and runs of replies by their first and last id.
    fn summary(events: &[Event]) -> String {
        let mut out = Vec::new();
        let mut run: Option<(String, String, bool)> = None;
        for e in events {
            if let Event::Reply { id, ok } = e {
                match &mut run {
                    Some((_, last, was)) if *was == *ok => *last = id.clone(),
                    _ => {
                        if let Some((a, b, ok)) = run.take() {
                            out.push(format!("reply {a}..{b} {ok}"));
                        }
                        run = Some((id.clone(), id.clone(), *ok));
                    }
                }
                continue;
            }
            if let Some((a, b, ok)) = run.take() {
                out.push(format!("reply {a}..{b} {ok}"));
            }
            out.push(match e {
                Event::Commit(ids) => format!("commit {}..{}", ids[0], ids[ids.len() - 1]),
                other => format!("{other:?}"),
            });
        }
        if let Some((a, b, ok)) = run.take() {
            out.push(format!("reply {a}..{b} {ok}"));
        }
        out.join("; ")
    }

    fn position(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
        events.iter().position(f).expect("the event happened")
    }

    /// Every caller hears of its delivery after a sync that began after its batch was
    /// committed and ended well; the syncs of queued batches run on the syncer thread,
    /// each while the writer commits the next batch; a lone delivery is synced on the
    /// writer's own thread.
    #[test]
    fn a_delivery_is_answered_only_after_a_sync_that_began_after_its_commit() {
        let events = run(2000, Vec::new(), true);
        let replies: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Reply { .. }))
            .collect();
        assert_eq!(replies.len(), 2001);
        for reply in replies {
            let Event::Reply { id, ok } = reply else {
                unreachable!()
            };
            assert!(ok, "{id} failed");
            let committed = position(
                &events,
                |e| matches!(e, Event::Commit(ids) if ids.contains(id)),
            );
            let answered = position(&events, |e| e == reply);
            let synced = (committed..answered).any(|s| {
                matches!(events[s], Event::SyncStart { .. })
                    && events[s..answered].contains(&Event::SyncEnd { ok: true })
            });
            assert!(
                synced,
                "{id}: no sync between its commit and its answer: {}",
                summary(&events)
            );
        }
        // 2000 queued deliveries make four batches (MAX_GROUP 512), and the lone one a
        // fifth. The first batch is synced on the syncer thread while the writer goes on
        // committing the next.
        let batches = events
            .iter()
            .filter(|e| matches!(e, Event::Commit(_)))
            .count();
        assert_eq!(batches, 5, "{}", summary(&events));
        let first = position(&events, |e| matches!(e, Event::SyncStart { .. }));
        assert_eq!(
            events[first],
            Event::SyncStart {
                thread: "entsync-sync".into()
            }
        );
        let end = position(&events, |e| matches!(e, Event::SyncEnd { .. }));
        let overlapped = events[..end]
            .iter()
            .filter(|e| matches!(e, Event::Commit(_)))
            .count();
        assert!(overlapped >= 2, "no overlap: {}", summary(&events));
        let alone = position(
            &events,
            |e| matches!(e, Event::Commit(ids) if ids == &["msg_alone"]),
        );
        let sync = alone + position(&events[alone..], |e| matches!(e, Event::SyncStart { .. }));
        assert_eq!(
            events[sync],
            Event::SyncStart {
                thread: "writer".into()
            }
        );
    }

    /// A failed sync reaches every caller of the batches it covered as an error, and
    /// every later batch fails before it is stored; no caller ever hears "stored".
    #[test]
    fn after_a_failed_sync_no_delivery_is_answered_as_stored() {
        let events = run(2000, vec![2], true);
        let replies: Vec<(&String, bool)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Reply { id, ok } => Some((id, *ok)),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 2001);
        let first_failure = position(&events, |e| *e == Event::SyncEnd { ok: false });
        for (s, e) in events.iter().enumerate() {
            if let Event::Reply { id, ok: true } = e {
                assert!(
                    s < first_failure,
                    "{id} answered as stored after the failed sync: {}",
                    summary(&events)
                );
            }
        }
        // The answers "stored" are a prefix of the queue: from the first failure on,
        // every delivery failed, the lone one after it too.
        let stored = replies.iter().take_while(|(_, ok)| *ok).count();
        assert_eq!(stored, 512, "{}", summary(&events));
        assert!(
            replies[stored..].iter().all(|(_, ok)| !ok),
            "{}",
            summary(&events)
        );
        let later_commits = events[first_failure..]
            .iter()
            .filter(|e| matches!(e, Event::Commit(_)))
            .count();
        assert_eq!(
            later_commits, 0,
            "the store took a batch after a failed sync"
        );
    }

    /// A failed commit is reported (for `/healthz`) until a later one succeeds.
    #[test]
    fn a_failed_commit_is_reported_until_a_later_one_succeeds() {
        let failed = Arc::new(AtomicBool::new(true));
        let store: Store = Box::new(Fake {
            events: Arc::default(),
            failed: Arc::clone(&failed),
            sync: None,
            paced: false,
        });
        let (queue, jobs) = mpsc::channel();
        let generation = Arc::new(Signal::new());
        let g = Arc::clone(&generation);
        let writer = std::thread::spawn(move || writer_loop(store, jobs, &g));
        let deliver = |id: &str| -> bool {
            let (tx, rx) = mpsc::channel();
            let at = crate::wire::parse_timestamp("2026-06-15T08:00:00Z").expect("instant");
            let job = Job::Deliver {
                delivery: Box::new(Prepared::new(Delivery::new(id.to_string(), "{}", at))),
                reply: Box::new(move |r: Result<Applied, Error>| {
                    let _ = tx.send(r.is_ok());
                }),
            };
            queue.send(job).expect("queued");
            rx.recv_timeout(Duration::from_secs(20)).expect("a reply")
        };
        assert_eq!(generation.write_failure(), None);
        assert!(!deliver("msg_1"));
        let cause = generation.write_failure();
        assert!(
            cause.as_deref().is_some_and(|c| c.contains("refused")),
            "{cause:?}"
        );
        assert!(!deliver("msg_2"));
        assert!(generation.write_failure().is_some());
        failed.store(false, Ordering::Release);
        assert!(deliver("msg_3"));
        assert_eq!(generation.write_failure(), None);
        drop(queue);
        writer.join().expect("writer thread ends");
    }

    /// Without deferred syncs (PostgreSQL), no sync is asked for and every delivery is
    /// answered after its commit.
    #[test]
    fn a_store_that_does_not_defer_is_answered_after_each_commit() {
        let events = run(600, Vec::new(), false);
        assert!(!events.iter().any(|e| matches!(e, Event::SyncStart { .. })));
        for e in &events {
            if let Event::Reply { id, ok } = e {
                assert!(ok);
                let committed = position(
                    &events,
                    |c| matches!(c, Event::Commit(ids) if ids.contains(id)),
                );
                assert!(committed < position(&events, |r| r == e));
            }
        }
    }
}
