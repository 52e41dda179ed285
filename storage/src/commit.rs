//! Group commit: one syncer thread makes every committed batch durable.
//!
//! fjall makes a committed batch visible to readers at once but durable only after
//! `persist`. Objects commit their turn batches on their own threads; each commit takes a
//! sequence number *after* fjall accepted the batch. The syncer reads the highest number handed
//! out, calls `persist` once, and then confirms every batch up to that number: all of them were
//! in the journal before `persist` started, so one fsync covers them all. Whatever arrives while
//! an fsync runs waits for the next one, which is what makes the group.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};

use crate::error::StorageError;

struct State {
    /// Every batch with a sequence number ≤ this is durable and confirmed.
    durable: u64,
    /// Every batch ≤ this is on disk; confirmed (copied to `durable`) only when no hold lives.
    synced: u64,
    /// Set once a persist failed; every pending and later commit fails with it.
    failed: Option<StorageError>,
    /// Active [`DurabilityHold`]s: while > 0 the syncer confirms nothing.
    holds: usize,
    shutdown: bool,
    waiters: Vec<(u64, Waker)>,
    /// Statistics for benchmarks: number of persist calls and their total duration.
    syncs: u64,
    sync_time: Duration,
}

pub(crate) struct Shared {
    /// Number of batches committed to fjall (= highest sequence number handed out).
    committed: AtomicU64,
    /// Mirror of `State::durable` for the lock-free fast path of [`Commit`].
    durable: AtomicU64,
    /// The syncer is about to wait or waiting on `wake`, so a new commit must notify it.
    /// (Dekker-style with `committed`: the syncer sets this, then re-reads `committed`; a
    /// committer bumps `committed`, then reads this. SeqCst on both sides means at least one
    /// of them sees the other's write, so no commit is left unnoticed.)
    syncer_idle: AtomicBool,
    state: Mutex<State>,
    /// Wakes the syncer: new commits, a released hold, or shutdown.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state stays
        // consistent field by field, so continue with it rather than cascade the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    pub(crate) fn start(db: Database, dir: PathBuf, mode: PersistMode) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            committed: AtomicU64::new(0),
            durable: AtomicU64::new(0),
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
        });
        // Fail at open, not at the first commit, if fjall's journal files are not where this
        // module expects them (a layout change in a later fjall release).
        let mut journal = JournalSync::new(dir);
        journal.sync_newest()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cinder-storage-sync".into())
            .spawn(move || sync_loop(&s, &db, mode, &mut journal))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Registers a batch that fjall has just committed; returns its [`Commit`].
    pub(crate) fn committed(&self) -> Commit {
        let seq = self.shared.committed.fetch_add(1, Ordering::SeqCst) + 1;
        // Only an idle syncer needs the (syscall-costly) notify; a busy one re-reads
        // `committed` before it waits again. Taking the lock orders the notify after the
        // syncer's check-then-wait.
        if self.shared.syncer_idle.load(Ordering::SeqCst) {
            drop(self.shared.lock());
            self.shared.wake.notify_one();
        }
        Commit {
            inner: CommitInner::Pending {
                seq,
                shared: self.shared.clone(),
                registered: None,
            },
        }
    }

    /// A commit that is already durable (used when each batch persisted synchronously).
    pub(crate) fn ready(&self, result: Result<(), StorageError>) -> Commit {
        Commit {
            inner: CommitInner::Done(Some(result)),
        }
    }

    pub(crate) fn failure(&self) -> Option<StorageError> {
        self.shared.lock().failed.clone()
    }

    pub(crate) fn hold(&self) -> DurabilityHold {
        self.shared.lock().holds += 1;
        DurabilityHold {
            shared: self.shared.clone(),
        }
    }

    pub(crate) fn stats(&self) -> SyncStats {
        let st = self.shared.lock();
        SyncStats {
            syncs: st.syncs,
            sync_time: st.sync_time,
        }
    }

    pub(crate) fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
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
    db: &Database,
    mode: PersistMode,
    journal: &mut JournalSync,
) -> Result<(), StorageError> {
    db.persist(PersistMode::Buffer)?;
    match mode {
        PersistMode::Buffer => Ok(()),
        PersistMode::SyncData | PersistMode::SyncAll => journal
            .sync_newest()
            .map_err(|e| StorageError::Durability(format!("fdatasync of the journal: {e}"))),
    }
}

/// Our own descriptor on fjall's active journal (`<dir>/<n>.jnl`, highest n).
struct JournalSync {
    dir: PathBuf,
    open: Option<(u64, std::fs::File)>,
}

impl JournalSync {
    fn new(dir: PathBuf) -> Self {
        Self { dir, open: None }
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
        match &self.open {
            Some((_, f)) => f.sync_data(),
            None => Ok(()),
        }
    }
}

fn sync_loop(shared: &Shared, db: &Database, mode: PersistMode, journal: &mut JournalSync) {
    let mut st = shared.lock();
    loop {
        if st.holds == 0 && (st.synced > st.durable || st.failed.is_some()) {
            st.durable = st.durable.max(st.synced);
            shared.durable.store(st.durable, Ordering::SeqCst);
            let durable = st.durable;
            let failed = st.failed.is_some();
            st.waiters.retain(|(seq, w)| {
                if failed || *seq <= durable {
                    w.wake_by_ref();
                    false
                } else {
                    true
                }
            });
        }
        shared.syncer_idle.store(true, Ordering::SeqCst);
        let target = shared.committed.load(Ordering::SeqCst);
        let work = target > st.synced && st.failed.is_none();
        if st.shutdown && (!work || st.holds > 0) {
            // Commits still pending are neither confirmed nor forgotten: they fail.
            if target > st.durable {
                st.failed.get_or_insert(StorageError::Closed);
            }
            for (_, w) in st.waiters.drain(..) {
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
        let result = persist(db, mode, journal);
        let took = started.elapsed();
        st = shared.lock();
        st.syncs += 1;
        st.sync_time += took;
        match result {
            Ok(()) => st.synced = target,
            Err(e) => {
                tracing::error!(error = %e, "persist failed; failing every pending commit");
                st.failed = Some(StorageError::Durability(e.to_string()));
            }
        }
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
/// if it never will be. `Send`; no runtime required (wakes through the task's `Waker`).
#[must_use = "a Commit tells when the batch is durable; dropping it does not cancel the write"]
pub struct Commit {
    inner: CommitInner,
}

enum CommitInner {
    Pending {
        seq: u64,
        shared: Arc<Shared>,
        /// The waker last registered with the syncer: polling again with the same task does
        /// not register it twice.
        registered: Option<Waker>,
    },
    Done(Option<Result<(), StorageError>>),
}

impl Commit {
    fn check(seq: u64, st: &State) -> Option<Result<(), StorageError>> {
        if seq <= st.durable {
            Some(Ok(()))
        } else {
            st.failed.clone().map(Err)
        }
    }

    /// Whether the batch is already durable (or failed). Never blocks.
    pub fn is_done(&self) -> bool {
        match &self.inner {
            CommitInner::Pending { seq, shared, .. } => Self::check(*seq, &shared.lock()).is_some(),
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
        match &mut self.inner {
            CommitInner::Done(r) => Poll::Ready(r.take().unwrap_or(Ok(()))),
            CommitInner::Pending {
                seq,
                shared,
                registered,
            } => {
                if *seq <= shared.durable.load(Ordering::SeqCst) {
                    return Poll::Ready(Ok(()));
                }
                let mut st = shared.lock();
                if let Some(r) = Self::check(*seq, &st) {
                    return Poll::Ready(r);
                }
                if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waiters.push((*seq, cx.waker().clone()));
                    *registered = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
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
