//! Group commit, off the callers' threads: an applier thread writes batches into fjall, a
//! syncer thread makes them durable.
//!
//! [`crate::ObjectStorage::flush`] only queues its batch and returns: the executor thread that
//! called it never waits on fjall (a write stall sleeps in fjall's commit, a journal rotation
//! syncs a file). Each queued batch gets a *ticket* in queue order. The applier commits queued
//! batches to fjall one by one, in ticket order, and publishes the highest ticket applied
//! (`committed`). The syncer reads that number, makes the journal durable once, and then
//! confirms every batch up to it: all of them were in the journal before it started. Whatever
//! arrives while an fsync runs waits for the next one, which is what makes the group.
//!
//! Until the applier has committed a batch, its object reads it from memory (the batch stays
//! in the object's in-flight layers, `object.rs`), so an object always sees its own writes.
//!
//! **Failure is final.** Once a commit or an fsync fails, the outcome of every batch not yet
//! confirmed is unknown: it may be visible in fjall and still be lost by a power cut. The store
//! then *fails closed*: every pending and later commit fails, and so does every read, so nobody
//! can observe a write that was reported failed. Reopening the store (restarting the node)
//! recovers from the journal.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, PersistMode};

use crate::cache::ReadCache;
use crate::error::StorageError;
use crate::keys::{self, ObjectId};
use crate::overlay::InFlight;
use crate::stats::CommitStats;

/// Name of the test-only sync log inside the store directory ([`crate::StoreTuning::sync_log`]).
pub const SYNC_LOG_FILE: &str = "cinder-sync.log";

struct State {
    /// Every batch with a ticket ≤ this is durable and confirmed.
    durable: u64,
    /// Every batch ≤ this is on disk; confirmed (copied to `durable`) only when no hold lives.
    synced: u64,
    /// Set once a commit or a persist failed; every pending and later commit fails with it.
    failed: Option<StorageError>,
    /// Active [`DurabilityHold`]s: while > 0 the syncer confirms nothing.
    holds: usize,
    shutdown: bool,
    waiters: Vec<(u64, Waker)>,
    /// Statistics for benchmarks: number of persist calls and their total duration.
    syncs: u64,
    sync_time: Duration,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Tickets handed out so far (= ticket of the newest queued batch).
    tickets: u64,
    shutdown: bool,
}

/// One object's batch on its way to fjall.
pub(crate) struct Job {
    ticket: u64,
    id: ObjectId,
    batch: Arc<InFlight>,
}

/// Faults a test asks for ([`crate::Store::inject_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next batch is committed to fjall (visible to readers) and then reported failed, as
    /// a journal write error discovered late would be.
    CommitFails,
    /// The next `fdatasync` of the journal fails after the batches it covers are visible.
    SyncFails,
}

pub(crate) struct Shared {
    /// Highest ticket the applier has committed to fjall.
    committed: AtomicU64,
    /// Mirror of `State::durable` for the lock-free fast path of [`Commit`].
    durable: AtomicU64,
    /// Mirror of `State::failed.is_some()` for the read path.
    failed: AtomicBool,
    /// The syncer is about to wait or waiting on `wake`, so a new commit must notify it.
    /// (Dekker-style with `committed`: the syncer sets this, then re-reads `committed`; the
    /// applier bumps `committed`, then reads this. SeqCst on both sides means at least one
    /// of them sees the other's write, so no commit is left unnoticed.)
    syncer_idle: AtomicBool,
    state: Mutex<State>,
    /// Wakes the syncer: new commits, a released hold, a failure, or shutdown.
    wake: Condvar,
    queue: Mutex<Queue>,
    /// Wakes the applier.
    queued: Condvar,
    fail_next_commit: AtomicBool,
    fail_next_sync: AtomicBool,
    /// When each batch not yet confirmed was queued, in ticket order: the commit latency is
    /// observed when the syncer confirms it.
    queued_at: Mutex<VecDeque<(u64, Instant)>>,
    pub(crate) stats: Arc<CommitStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks would be a bug in this module; the state stays
    // consistent field by field, so continue with it rather than cascade the panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Records the first failure and wakes everyone who waits on a batch.
    fn fail(&self, e: StorageError) {
        let mut st = self.lock();
        if st.failed.is_none() {
            tracing::error!(error = %e, "storage failed; failing every pending and later commit and every read");
            st.failed = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
        drop(st);
        self.wake.notify_all();
    }
}

/// What the applier thread needs of the store.
pub(crate) struct Target {
    pub(crate) db: Database,
    pub(crate) data: Keyspace,
    pub(crate) alarms: Keyspace,
    pub(crate) cache: Arc<ReadCache>,
    /// Baseline for benchmarks: every batch persisted inside its own commit.
    pub(crate) sync_each_batch: Option<PersistMode>,
}

pub(crate) struct Committer {
    shared: Arc<Shared>,
    applier: Mutex<Option<JoinHandle<()>>>,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    pub(crate) fn start(
        target: Target,
        dir: PathBuf,
        mode: PersistMode,
        sync_log: bool,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            committed: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncer_idle: AtomicBool::new(false),
            state: Mutex::new(State {
                durable: 0,
                synced: 0,
                failed: None,
                holds: 0,
                shutdown: false,
                waiters: Vec::new(),
                syncs: 0,
                sync_time: Duration::ZERO,
            }),
            wake: Condvar::new(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                tickets: 0,
                shutdown: false,
            }),
            queued: Condvar::new(),
            fail_next_commit: AtomicBool::new(false),
            fail_next_sync: AtomicBool::new(false),
            queued_at: Mutex::new(VecDeque::new()),
            stats: Arc::new(CommitStats::default()),
        });
        // Fail at open, not at the first commit, if fjall's journal files are not where this
        // module expects them (a layout change in a later fjall release).
        let mut journal = JournalSync::new(dir, sync_log)?;
        journal.sync_newest()?;
        let db = target.db.clone();
        let s = shared.clone();
        let syncer = std::thread::Builder::new()
            .name("cinder-storage-sync".into())
            .spawn(move || sync_loop(&s, &db, mode, &mut journal))?;
        let s = shared.clone();
        let applier = std::thread::Builder::new()
            .name("cinder-storage-apply".into())
            .spawn(move || apply_loop(&s, &target));
        let applier = match applier {
            Ok(h) => h,
            Err(e) => {
                shared.lock().shutdown = true;
                shared.wake.notify_all();
                let _ = syncer.join();
                return Err(e);
            }
        };
        Ok(Self {
            shared,
            applier: Mutex::new(Some(applier)),
            syncer: Mutex::new(Some(syncer)),
        })
    }

    /// Queues a batch for the applier; returns its [`Commit`]. Never blocks on fjall.
    pub(crate) fn enqueue(&self, id: ObjectId, batch: Arc<InFlight>) -> Commit {
        if let Some(e) = self.failure() {
            return Commit::ready(Err(e));
        }
        let mut q = lock(&self.shared.queue);
        if q.shutdown {
            return Commit::ready(Err(StorageError::Closed));
        }
        q.tickets += 1;
        let ticket = q.tickets;
        q.jobs.push_back(Job { ticket, id, batch });
        // Under the queue lock, so the times stay in ticket order.
        lock(&self.shared.queued_at).push_back((ticket, Instant::now()));
        drop(q);
        self.shared.queued.notify_one();
        Commit {
            inner: CommitInner::Pending {
                ticket,
                shared: self.shared.clone(),
                registered: None,
            },
        }
    }

    pub(crate) fn failure(&self) -> Option<StorageError> {
        if !self.shared.failed.load(Ordering::SeqCst) {
            return None;
        }
        self.shared.lock().failed.clone()
    }

    pub(crate) fn hold(&self) -> DurabilityHold {
        self.shared.lock().holds += 1;
        DurabilityHold {
            shared: self.shared.clone(),
        }
    }

    pub(crate) fn inject(&self, fault: Fault) {
        match fault {
            Fault::CommitFails => self.shared.fail_next_commit.store(true, Ordering::SeqCst),
            Fault::SyncFails => self.shared.fail_next_sync.store(true, Ordering::SeqCst),
        }
    }

    /// Resolves when every batch queued so far is durable (or the store failed).
    pub(crate) fn barrier(&self) -> Commit {
        let ticket = lock(&self.shared.queue).tickets;
        Commit {
            inner: CommitInner::Pending {
                ticket,
                shared: self.shared.clone(),
                registered: None,
            },
        }
    }

    pub(crate) fn commit_stats(&self) -> Arc<CommitStats> {
        self.shared.stats.clone()
    }

    pub(crate) fn stats(&self) -> SyncStats {
        let st = self.shared.lock();
        SyncStats {
            syncs: st.syncs,
            sync_time: st.sync_time,
        }
    }

    /// Applies what is queued, makes it durable (or fails it), and stops both threads.
    pub(crate) fn shutdown(&self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.queued.notify_all();
        if let Some(h) = lock(&self.applier).take() {
            let _ = h.join();
        }
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(h) = lock(&self.syncer).take() {
            let _ = h.join();
        }
    }
}

fn apply_loop(shared: &Shared, target: &Target) {
    loop {
        let jobs: Vec<Job> = {
            let mut q = lock(&shared.queue);
            loop {
                if !q.jobs.is_empty() {
                    break q.jobs.drain(..).collect();
                }
                if q.shutdown {
                    return;
                }
                q = shared.queued.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        for job in jobs {
            if shared.failed.load(Ordering::SeqCst) {
                // Never applied: its waiters fail with the store's failure.
                continue;
            }
            match apply(target, &job) {
                Ok(()) => {
                    job.batch.mark_applied();
                    if shared.fail_next_commit.swap(false, Ordering::SeqCst) {
                        shared.fail(StorageError::Durability(
                            "injected fault: commit failed after the batch was applied".into(),
                        ));
                        continue;
                    }
                    shared.committed.store(job.ticket, Ordering::SeqCst);
                    // Only an idle syncer needs the (syscall-costly) notify; a busy one
                    // re-reads `committed` before it waits again. Taking the lock orders the
                    // notify after the syncer's check-then-wait.
                    if shared.syncer_idle.load(Ordering::SeqCst) {
                        drop(shared.lock());
                        shared.wake.notify_one();
                    }
                }
                Err(e) => shared.fail(e),
            }
        }
    }
}

/// Writes one batch into fjall atomically and refreshes the read cache with what fjall now
/// holds (or forgets the keys on failure, so no reader trusts a value of unknown outcome).
fn apply(t: &Target, job: &Job) -> Result<(), StorageError> {
    let turn = job.batch.turn();
    let id = &job.id;
    let mut batch = t.db.batch();
    for (suffix, v) in &turn.writes {
        let k = keys::full(id, suffix);
        match v {
            Some(v) => batch.insert(&t.data, k, v.clone()),
            None => batch.remove(&t.data, k),
        }
    }
    match &turn.alarm {
        Some(Some(state)) => batch.insert(&t.alarms, id.to_vec(), crate::alarm::encode(state)?),
        Some(None) => batch.remove(&t.alarms, id.to_vec()),
        None => {}
    }
    if t.sync_each_batch.is_some() {
        batch = batch.durability(t.sync_each_batch);
    }
    let result = batch.commit();
    for (suffix, v) in &turn.writes {
        let k = keys::full(id, suffix);
        if result.is_ok() && !turn.uncached.contains(suffix) {
            t.cache.write(k, v.clone());
        } else {
            t.cache.invalidate(&k);
        }
    }
    result.map_err(StorageError::from)
}

/// Makes everything committed so far durable per `mode`.
///
/// `Database::persist(SyncData)` would fdatasync while holding fjall's journal lock, which
/// blocks every commit for the length of the fsync and so stops the next group from forming.
/// Instead: `persist(Buffer)` under the lock (a `write(2)` of fjall's journal buffer), then
/// `fdatasync` of the active journal through our own descriptor, outside the lock. That covers
/// every batch committed before the call: such a batch is either in the journal file that is
/// newest when we look (we sync it; fdatasync acts on the file, whichever descriptor wrote it),
/// or in an older one, and fjall `SyncAll`s a journal before it rotates to the next.
fn persist(
    shared: &Shared,
    db: &Database,
    mode: PersistMode,
    journal: &mut JournalSync,
) -> Result<(), StorageError> {
    db.persist(PersistMode::Buffer)?;
    match mode {
        PersistMode::Buffer => Ok(()),
        PersistMode::SyncData | PersistMode::SyncAll => {
            if shared.fail_next_sync.swap(false, Ordering::SeqCst) {
                return Err(StorageError::Durability(
                    "fdatasync of the journal: injected fault".into(),
                ));
            }
            journal
                .sync_newest()
                .map_err(|e| StorageError::Durability(format!("fdatasync of the journal: {e}")))
        }
    }
}

/// Our own descriptor on fjall's active journal (`<dir>/<n>.jnl`, highest n), and the
/// optional test-only log of what each completed fdatasync covered.
struct JournalSync {
    dir: PathBuf,
    open: Option<(u64, std::fs::File)>,
    log: Option<std::fs::File>,
}

impl JournalSync {
    fn new(dir: PathBuf, sync_log: bool) -> std::io::Result<Self> {
        let log = if sync_log {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(SYNC_LOG_FILE))?,
            )
        } else {
            None
        };
        Ok(Self {
            dir,
            open: None,
            log,
        })
    }

    fn newest(&self) -> std::io::Result<Option<u64>> {
        let mut max = None;
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jnl"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            max = max.max(Some(n));
        }
        Ok(max)
    }

    fn sync_newest(&mut self) -> std::io::Result<()> {
        let Some(n) = self.newest()? else {
            return Err(std::io::Error::other("no journal file found"));
        };
        if self.open.as_ref().map(|(id, _)| *id) != Some(n) {
            let f = std::fs::File::open(self.dir.join(format!("{n}.jnl")))?;
            self.open = Some((n, f));
        }
        let Some((_, f)) = &self.open else {
            return Ok(());
        };
        // Measured before the fdatasync: every byte written by then is covered by it.
        let covered = match &self.log {
            Some(_) => written_length(&self.dir.join(format!("{n}.jnl"))),
            None => None,
        };
        f.sync_data()?;
        if let (Some(log), Some(len)) = (&mut self.log, covered) {
            writeln!(log, "{n} {len}")?;
        }
        Ok(())
    }
}

/// How many bytes fjall has written into journal `path`, read from its writing descriptor in
/// `/proc/self/fdinfo` (Linux; test-only). A fresh journal is pre-allocated with zeros, so its
/// length says nothing: the position of fjall's descriptor does. A recovered journal is opened
/// in append mode, where the file length is the written length.
fn written_length(path: &Path) -> Option<u64> {
    const O_ACCMODE: u32 = 0o3;
    const O_APPEND: u32 = 0o2000;
    for e in std::fs::read_dir("/proc/self/fd").ok()? {
        let Ok(e) = e else { continue };
        if std::fs::read_link(e.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let info =
            std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(e.file_name())).ok()?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let flags = u32::from_str_radix(&field("flags:")?, 8).ok()?;
        if flags & O_ACCMODE == 0 {
            continue; // a reader (ours), not fjall's writer
        }
        if flags & O_APPEND != 0 {
            return std::fs::metadata(path).ok().map(|m| m.len());
        }
        return field("pos:")?.parse().ok();
    }
    None
}

fn sync_loop(shared: &Shared, db: &Database, mode: PersistMode, journal: &mut JournalSync) {
    let mut st = shared.lock();
    loop {
        let failed_waiters = st.failed.is_some() && !st.waiters.is_empty();
        if st.holds == 0 && (st.synced > st.durable || failed_waiters) {
            st.durable = st.durable.max(st.synced);
            shared.durable.store(st.durable, Ordering::SeqCst);
            let durable = st.durable;
            let failed = st.failed.is_some();
            let mut woken = Vec::new();
            st.waiters.retain(|(seq, w)| {
                if failed || *seq <= durable {
                    woken.push(w.clone());
                    false
                } else {
                    true
                }
            });
            // Woken outside the lock; then everything is checked again from the top, since
            // anything may have happened while the lock was free.
            drop(st);
            for w in woken {
                w.wake();
            }
            if !failed {
                observe_confirmed(shared, durable);
            }
            st = shared.lock();
            continue;
        }
        shared.syncer_idle.store(true, Ordering::SeqCst);
        let target = shared.committed.load(Ordering::SeqCst);
        let work = target > st.synced && st.failed.is_none();
        if st.shutdown && (!work || st.holds > 0) {
            // Commits still pending are neither confirmed nor forgotten: they fail.
            let queued = lock(&shared.queue).tickets;
            if queued > st.durable {
                st.failed.get_or_insert(StorageError::Closed);
                shared.failed.store(true, Ordering::SeqCst);
            }
            let waiters: Vec<_> = st.waiters.drain(..).map(|(_, w)| w).collect();
            drop(st);
            for w in waiters {
                w.wake();
            }
            return;
        }
        if !work || st.holds > 0 {
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        shared.syncer_idle.store(false, Ordering::SeqCst);
        drop(st);
        let started = Instant::now();
        let result = persist(shared, db, mode, journal);
        let took = started.elapsed();
        if let Err(e) = &result {
            shared.fail(StorageError::Durability(e.to_string()));
        }
        shared.stats.fsync_latency.observe_duration(took);
        st = shared.lock();
        st.syncs += 1;
        st.sync_time += took;
        if result.is_ok() {
            shared
                .stats
                .batches_per_group
                .observe(target.saturating_sub(st.synced) as f64);
            st.synced = target;
        }
    }
}

/// Observes the commit latency of every batch up to ticket `durable`, now confirmed.
fn observe_confirmed(shared: &Shared, durable: u64) {
    let now = Instant::now();
    let mut times = lock(&shared.queued_at);
    while let Some(&(ticket, at)) = times.front() {
        if ticket > durable {
            break;
        }
        times.pop_front();
        shared
            .stats
            .commit_latency
            .observe_duration(now.saturating_duration_since(at));
        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of the syncer, for benchmarks and diagnostics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncStats {
    /// Number of `persist` calls made.
    pub syncs: u64,
    /// Total time spent inside them.
    pub sync_time: Duration,
}

/// TEST HOOK returned by [`crate::Store::hold_durability`]: while it lives no batch is
/// confirmed durable. Dropping it lets the syncer continue.
#[must_use = "durability is held only while the guard lives"]
pub struct DurabilityHold {
    shared: Arc<Shared>,
}

impl Drop for DurabilityHold {
    fn drop(&mut self) {
        self.shared.lock().holds -= 1;
        self.shared.wake.notify_all();
    }
}

/// Resolves when a flushed batch is durable per the node's [`crate::Durability`], or fails
/// if it never will be. `Send`; no runtime required (wakes through the task's `Waker`). Once
/// it has resolved, polling it again gives the same answer.
#[must_use = "a Commit tells when the batch is durable; dropping it does not cancel the write"]
pub struct Commit {
    inner: CommitInner,
}

enum CommitInner {
    Pending {
        ticket: u64,
        shared: Arc<Shared>,
        /// The waker last registered with the syncer: polling again with the same task does
        /// not register it twice.
        registered: Option<Waker>,
    },
    Done(Result<(), StorageError>),
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            CommitInner::Pending { ticket, .. } => write!(f, "Commit(pending #{ticket})"),
            CommitInner::Done(r) => write!(f, "Commit({r:?})"),
        }
    }
}

impl Commit {
    pub(crate) fn ready(result: Result<(), StorageError>) -> Commit {
        Commit {
            inner: CommitInner::Done(result),
        }
    }

    fn check(ticket: u64, st: &State) -> Option<Result<(), StorageError>> {
        if ticket <= st.durable {
            Some(Ok(()))
        } else {
            st.failed.clone().map(Err)
        }
    }

    /// Whether the batch is already durable (or failed). Never blocks.
    pub fn is_done(&self) -> bool {
        match &self.inner {
            CommitInner::Pending { ticket, shared, .. } => {
                Self::check(*ticket, &shared.lock()).is_some()
            }
            CommitInner::Done(_) => true,
        }
    }

    /// Whether the batch has been written into fjall (visible to every reader of the store,
    /// not only to its own object), durable or not. `true` for a failed commit too: there is
    /// nothing left to wait for.
    pub fn is_applied(&self) -> bool {
        match &self.inner {
            CommitInner::Pending { ticket, shared, .. } => {
                *ticket <= shared.committed.load(Ordering::SeqCst)
                    || shared.failed.load(Ordering::SeqCst)
            }
            CommitInner::Done(_) => true,
        }
    }

    /// Blocks the calling thread until the batch is durable. For threads without an async
    /// runtime (tests, benchmarks, the crash-test child).
    pub fn wait(self) -> Result<(), StorageError> {
        futures_lite_block_on(self)
    }
}

impl Future for Commit {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (ticket, shared, registered) = match &mut self.inner {
            CommitInner::Done(r) => return Poll::Ready(r.clone()),
            CommitInner::Pending {
                ticket,
                shared,
                registered,
            } => (*ticket, shared, registered),
        };
        let verdict = if ticket <= shared.durable.load(Ordering::SeqCst) {
            Ok(())
        } else {
            let mut st = shared.lock();
            match Self::check(ticket, &st) {
                Some(r) => r,
                None => {
                    if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        st.waiters.push((ticket, cx.waker().clone()));
                        *registered = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        // Remember the verdict: a later poll must not read a newer state of the store.
        self.inner = CommitInner::Done(verdict.clone());
        Poll::Ready(verdict)
    }
}

/// Minimal thread-parking executor for [`Commit::wait`].
fn futures_lite_block_on<F: Future>(fut: F) -> F::Output {
    use std::task::Wake;
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
