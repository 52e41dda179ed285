//! Blob files: object and part bodies on disk, one immutable file per blob.
//!
//! Layout: `<dir>/<xx>/<32 hex digits>`, where `xx` is the first byte of the random 128-bit
//! id (256 fan-out directories, made once at open, so a new blob only has to make its own
//! directory entry durable).
//!
//! The write protocol that keeps a crash from exposing half an object:
//! 1. the body streams into a fresh file (never overwritten, never renamed);
//! 2. the file and its directory are fsync'd;
//! 3. only then does the bucket's metadata commit point at it.
//!
//! A crash before 3 leaves a file nothing points at: an orphan. [`BlobStore::gc_sweep`]
//! deletes those at start-up, and a put or part that fails after writing deletes its own
//! blob at once. Blobs that metadata stops pointing at (overwrite, delete, abort) are deleted
//! once nobody reads them: readers hold a [`Lease`] taken inside the bucket object while it
//! looks the object up, so a delete that commits after that lookup finds the lease.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::Digest;

use crate::error::{BoxError, ChecksumAlgorithm, R2Error};
use crate::types::BodyStream;

/// A blob's id: 128 random bits, shown as 32 hex digits in its file name.
pub(crate) type BlobId = u128;

/// Bytes per write handed to the writer thread, and per read.
const CHUNK: usize = 512 * 1024;
/// Chunks queued between the body stream and the writer thread.
const WRITE_QUEUE: usize = 4;

#[derive(Default)]
struct Tracker {
    /// Blobs being written or written but not yet committed to (or dropped from) metadata.
    in_progress: HashSet<BlobId>,
    /// While a sweep runs: every blob that was in progress when it began or started since.
    /// None of them may be swept, whatever the metadata snapshot said.
    gc_protect: Option<HashSet<BlobId>>,
    /// Readers per blob.
    leases: HashMap<BlobId, u32>,
    /// Blobs no metadata points at any more, waiting for their last reader.
    doomed: HashSet<BlobId>,
}

/// The blob directory of a node. Shared as `Arc<BlobStore>`.
pub(crate) struct BlobStore {
    dir: PathBuf,
    /// fsync bodies and directory entries before metadata points at them (off only for a
    /// node whose durability is "survives a process crash": the page cache suffices).
    fsync: bool,
    tracker: Mutex<Tracker>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("dir", &self.dir).finish()
    }
}

/// What writing a body produced.
pub(crate) struct NewBlob {
    /// `None` for an empty body (no file is made for it).
    pub(crate) pending: Option<PendingBlob>,
    pub(crate) size: u64,
    pub(crate) md5: [u8; 16],
    /// The digest of the extra algorithm asked for, if any.
    pub(crate) extra: Option<(ChecksumAlgorithm, Vec<u8>)>,
}

/// A blob on disk that metadata does not point at yet. Dropped without [`PendingBlob::commit`]
/// it deletes its file (the put failed or was refused).
pub(crate) struct PendingBlob {
    store: Arc<BlobStore>,
    id: BlobId,
    outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Discard,
    Keep,
}

impl PendingBlob {
    pub(crate) fn id(&self) -> BlobId {
        self.id
    }

    /// Metadata now points at the blob.
    pub(crate) fn commit(mut self) {
        self.outcome = Outcome::Keep;
    }

    /// Whether metadata points at the blob is unknown (the bucket object failed mid-call):
    /// keep the file and let the next start-up sweep decide.
    pub(crate) fn leave_to_sweep(mut self) {
        self.outcome = Outcome::Keep;
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        self.store.lock().in_progress.remove(&self.id);
        if self.outcome == Outcome::Discard {
            self.store.remove_file(self.id);
        }
    }
}

/// Readers' hold on blobs: while it lives, deleting them is deferred.
pub(crate) struct Lease {
    store: Arc<BlobStore>,
    ids: Vec<BlobId>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut doomed = Vec::new();
        {
            let mut t = self.store.lock();
            for id in &self.ids {
                if let Some(n) = t.leases.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        t.leases.remove(id);
                        if t.doomed.remove(id) {
                            doomed.push(*id);
                        }
                    }
                }
            }
        }
        for id in doomed {
            self.store.remove_file(id);
        }
    }
}

/// A slice of one blob to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub(crate) id: BlobId,
    pub(crate) len: u64,
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Blob files kept (referenced, in progress or being read).
    pub kept: u64,
    /// Orphaned blob files deleted.
    pub removed: u64,
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(alg: ChecksumAlgorithm) -> Option<Hasher> {
        Some(match alg {
            ChecksumAlgorithm::Md5 => return None,
            ChecksumAlgorithm::Sha1 => Hasher::Sha1(Default::default()),
            ChecksumAlgorithm::Sha256 => Hasher::Sha256(Default::default()),
            ChecksumAlgorithm::Sha384 => Hasher::Sha384(Default::default()),
            ChecksumAlgorithm::Sha512 => Hasher::Sha512(Default::default()),
        })
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha384(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

fn file_name(id: BlobId) -> String {
    format!("{id:032x}")
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl BlobStore {
    /// Opens (creating) the blob directory and its fan-out directories.
    pub(crate) fn open(dir: &Path, fsync: bool) -> io::Result<Arc<BlobStore>> {
        std::fs::create_dir_all(dir)?;
        let mut made = false;
        for b in 0..=255u8 {
            let sub = dir.join(format!("{b:02x}"));
            if !sub.is_dir() {
                std::fs::create_dir(&sub)?;
                made = true;
            }
        }
        if made {
            fsync_dir(dir)?;
        }
        Ok(Arc::new(BlobStore {
            dir: dir.to_path_buf(),
            fsync,
            tracker: Mutex::new(Tracker::default()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sub_dir(&self, id: BlobId) -> PathBuf {
        self.dir.join(format!("{:02x}", (id >> 120) as u8))
    }

    pub(crate) fn path(&self, id: BlobId) -> PathBuf {
        self.sub_dir(id).join(file_name(id))
    }

    fn remove_file(&self, id: BlobId) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // The sweep at the next start collects it.
            Err(e) => tracing::warn!(blob = %file_name(id), error = %e, "cannot delete blob"),
        }
    }

    fn new_pending(self: &Arc<Self>) -> PendingBlob {
        let id: BlobId = rand::random();
        let mut t = self.lock();
        t.in_progress.insert(id);
        if let Some(p) = t.gc_protect.as_mut() {
            p.insert(id);
        }
        PendingBlob {
            store: self.clone(),
            id,
            outcome: Outcome::Discard,
        }
    }

    /// Streams `body` into a new blob, hashing it (MD5 always, plus `extra`), then makes the
    /// file and its directory entry durable. At most `limit` bytes are accepted; with
    /// `expected`, exactly that many. On any failure nothing is left behind.
    pub(crate) async fn write<S, E>(
        self: &Arc<Self>,
        mut body: S,
        extra: Option<ChecksumAlgorithm>,
        limit: u64,
        expected: Option<u64>,
    ) -> Result<NewBlob, R2Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        if expected.is_some_and(|n| n > limit) {
            return Err(R2Error::EntityTooLarge);
        }
        let pending = self.new_pending();
        let path = self.path(pending.id);
        let dir = self.sub_dir(pending.id);
        let fsync = self.fsync;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        // Hashing and writing run on a blocking thread: a 5 GB body is seconds of CPU and
        // disk time that must not stall the caller's runtime.
        let writer = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let mut file: Option<File> = None;
            let mut md5 = md5::Md5::new();
            let mut extra = extra.and_then(|a| Hasher::new(a).map(|h| (a, h)));
            while let Some(chunk) = rx.blocking_recv() {
                if chunk.is_empty() {
                    // The end marker: everything arrived.
                    if let Some(f) = file.take() {
                        if fsync {
                            f.sync_all()?;
                            fsync_dir(&dir)?;
                        }
                    }
                    let extra = extra.map(|(a, h)| (a, h.finish()));
                    return Ok(Some((md5.finalize().into(), extra)));
                }
                md5.update(&chunk);
                if let Some((_, h)) = extra.as_mut() {
                    h.update(&chunk);
                }
                let f = match file.as_mut() {
                    Some(f) => f,
                    None => file.insert(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&path)?,
                    ),
                };
                f.write_all(&chunk)?;
            }
            // The sender went away without the end marker: the body failed.
            Ok(None)
        });
        let mut size: u64 = 0;
        let mut buf = BytesMut::new();
        let mut failure: Option<R2Error> = None;
        while let Some(item) = body.next().await {
            let chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(R2Error::Body(e.into()));
                    break;
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                failure = Some(R2Error::EntityTooLarge);
                break;
            }
            if expected.is_some_and(|n| size > n) {
                failure = Some(R2Error::IncompleteBody);
                break;
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= CHUNK && tx.send(buf.split().freeze()).await.is_err() {
                break;
            }
        }
        if failure.is_none() && expected.is_some_and(|n| size != n) {
            failure = Some(R2Error::IncompleteBody);
        }
        if failure.is_none() {
            if !buf.is_empty() {
                let _ = tx.send(buf.split().freeze()).await;
            }
            let _ = tx.send(Bytes::new()).await;
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| R2Error::internal(format!("blob writer: {e}")))?;
        if let Some(f) = failure {
            return Err(f);
        }
        match written? {
            Some((md5, extra)) => Ok(NewBlob {
                pending: (size > 0).then_some(pending),
                size,
                md5,
                extra,
            }),
            None => Err(R2Error::internal("blob writer stopped early")),
        }
    }

    /// New blobs sharing the contents of `ids` (hard links: blobs are immutable), durable
    /// before this returns. For copies.
    pub(crate) async fn link(
        self: &Arc<Self>,
        ids: &[BlobId],
    ) -> Result<Vec<PendingBlob>, R2Error> {
        let mut out = Vec::with_capacity(ids.len());
        let fsync = self.fsync;
        let mut jobs = Vec::with_capacity(ids.len());
        for &src in ids {
            let p = self.new_pending();
            jobs.push((self.path(src), self.path(p.id), self.sub_dir(p.id)));
            out.push(p);
        }
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut dirs = HashSet::new();
            for (src, dst, dir) in jobs {
                std::fs::hard_link(&src, &dst)?;
                dirs.insert(dir);
            }
            if fsync {
                for d in dirs {
                    fsync_dir(&d)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| R2Error::internal(format!("blob link: {e}")))??;
        Ok(out)
    }

    /// Takes a read lease on `ids` (called inside the bucket object, while it holds the
    /// metadata that names them).
    pub(crate) fn lease(self: &Arc<Self>, ids: &[BlobId]) -> Lease {
        let mut t = self.lock();
        for id in ids {
            *t.leases.entry(*id).or_insert(0) += 1;
        }
        Lease {
            store: self.clone(),
            ids: ids.to_vec(),
        }
    }

    /// Deletes blobs metadata no longer points at (the change is durable), now or when their
    /// last reader finishes.
    pub(crate) fn release(self: &Arc<Self>, ids: Vec<BlobId>) {
        if ids.is_empty() {
            return;
        }
        let now: Vec<BlobId> = {
            let mut t = self.lock();
            ids.into_iter()
                .filter(|id| {
                    if t.leases.contains_key(id) {
                        t.doomed.insert(*id);
                        false
                    } else {
                        true
                    }
                })
                .collect()
        };
        if now.len() <= 4 || tokio::runtime::Handle::try_current().is_err() {
            for id in now {
                self.remove_file(id);
            }
        } else {
            let store = self.clone();
            tokio::task::spawn_blocking(move || {
                for id in now {
                    store.remove_file(id);
                }
            });
        }
    }

    /// A stream of `length` bytes starting at `offset` of the concatenation of `segments`,
    /// read in chunks on the blocking pool. `lease` is released when the stream is dropped.
    pub(crate) fn reader(
        self: &Arc<Self>,
        segments: &[Segment],
        offset: u64,
        length: u64,
        lease: Lease,
    ) -> BodyStream {
        let mut plan = VecDeque::new();
        let (mut pos, end) = (0u64, offset + length);
        for s in segments {
            let (lo, hi) = (pos, pos + s.len);
            pos = hi;
            let (a, b) = (lo.max(offset), hi.min(end));
            if a < b {
                plan.push_back((s.id, a - lo, b - a));
            }
        }
        struct Current {
            file: Arc<File>,
            at: u64,
            left: u64,
        }
        struct State {
            store: Arc<BlobStore>,
            plan: VecDeque<(BlobId, u64, u64)>,
            current: Option<Current>,
            _lease: Lease,
        }
        let state = State {
            store: self.clone(),
            plan,
            current: None,
            _lease: lease,
        };
        Box::pin(futures::stream::try_unfold(state, |mut st| async move {
            loop {
                if let Some(cur) = st.current.as_mut() {
                    if cur.left == 0 {
                        st.current = None;
                        continue;
                    }
                    let n = (cur.left as usize).min(CHUNK);
                    let (file, at) = (cur.file.clone(), cur.at);
                    let buf = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
                        let mut buf = vec![0u8; n];
                        file.read_exact_at(&mut buf, at)?;
                        Ok(Bytes::from(buf))
                    })
                    .await
                    .map_err(io::Error::other)??;
                    cur.at += n as u64;
                    cur.left -= n as u64;
                    return Ok(Some((buf, st)));
                }
                let Some((id, start, len)) = st.plan.pop_front() else {
                    return Ok(None);
                };
                let path = st.store.path(id);
                let file = tokio::task::spawn_blocking(move || File::open(path))
                    .await
                    .map_err(io::Error::other)??;
                st.current = Some(Current {
                    file: Arc::new(file),
                    at: start,
                    left: len,
                });
            }
        }))
    }

    /// Starts a sweep: from now until [`BlobStore::gc_sweep`] ends, blobs in progress or
    /// newly started are protected. Take the metadata snapshot after calling this.
    pub(crate) fn gc_begin(&self) {
        let mut t = self.lock();
        t.gc_protect = Some(t.in_progress.clone());
    }

    /// Ends a sweep that will not run (its metadata snapshot failed).
    pub(crate) fn gc_end(&self) {
        self.lock().gc_protect = None;
    }

    /// Deletes every blob file that is not in `referenced`, not protected since
    /// [`BlobStore::gc_begin`] and not being read. Blocking: call from a blocking context.
    pub(crate) fn gc_sweep(&self, referenced: &HashSet<BlobId>) -> io::Result<SweepReport> {
        let mut report = SweepReport::default();
        let result = (|| -> io::Result<()> {
            for b in 0..=255u8 {
                let sub = self.dir.join(format!("{b:02x}"));
                for entry in std::fs::read_dir(&sub)? {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(id) = name
                        .to_str()
                        .filter(|n| n.len() == 32)
                        .and_then(|n| u128::from_str_radix(n, 16).ok())
                    else {
                        tracing::warn!(path = %entry.path().display(), "unexpected file in the R2 blob directory");
                        continue;
                    };
                    let keep = referenced.contains(&id) || {
                        let t = self.lock();
                        t.gc_protect.as_ref().is_some_and(|p| p.contains(&id))
                            || t.leases.contains_key(&id)
                    };
                    if keep {
                        report.kept += 1;
                    } else {
                        self.remove_file(id);
                        report.removed += 1;
                    }
                }
            }
            Ok(())
        })();
        self.lock().gc_protect = None;
        result.map(|()| report)
    }
}
