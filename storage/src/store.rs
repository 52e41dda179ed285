//! The node's store: one fjall database shared by every object, the group committer and the
//! read cache.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use crate::alarm::{self, AlarmState, StoreMeta, STORE_FORMAT};
use crate::cache::ReadCache;
use crate::commit::{Commit, Committer, DurabilityHold, Fault, SyncStats, Target};
use crate::error::StorageError;
use crate::keys::ObjectId;
use crate::object::ObjectStorage;

/// What "durable" means for a node. Chosen once per node; both modes are honest about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A batch is confirmed after `fdatasync` of the journal: survives power loss and kernel
    /// crashes. The default.
    #[default]
    Fsync,
    /// A batch is confirmed once the journal bytes are handed to the kernel (`write(2)`, no
    /// fsync): survives a crash or `kill -9` of the process, but NOT power loss or a kernel
    /// crash, which may lose the last confirmed batches (never a batch in part).
    Process,
}

/// Node storage configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    pub durability: Durability,
    /// Budget of the read cache in bytes (keys + values + bookkeeping). Default 64 MiB.
    pub cache_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            cache_bytes: 64 << 20,
        }
    }
}

/// Engine knobs outside the agreed configuration: for tests that must reach fjall's memtable
/// flush and journal rotation quickly, and for the benchmark's one-fsync-per-batch baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreTuning {
    /// Memtable size of the objects keyspace (fjall default 64 MiB). Each rotation also seals
    /// the journal file, so a small value makes journals rotate and memtables flush often.
    pub max_memtable_bytes: Option<u64>,
    /// fjall block cache size (fjall default 32 MiB).
    pub block_cache_bytes: Option<u64>,
    /// Baseline for benchmarks: each batch is persisted with its own fsync inside its fjall
    /// commit, instead of one fsync per group.
    pub sync_each_batch: bool,
    /// TEST HOOK: after every completed `fdatasync` of the journal, append `<journal id>
    /// <bytes covered>` to `<dir>/cinder-sync.log` ([`crate::SYNC_LOG_FILE`]), so a power-loss
    /// test can cut each journal back to what was really on disk
    /// ([`crate::power_loss::cut_journals`]). Linux only (reads `/proc/self/fdinfo`).
    pub sync_log: bool,
}

/// fjall-level counters of a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Journal files currently on disk (sealed + active).
    pub journal_count: usize,
    /// Disk tables (flushed memtables) of the objects keyspace.
    pub table_count: usize,
    /// Total bytes on disk.
    pub disk_bytes: u64,
}

/// One per node; share it as `Arc<Store>`. Send + Sync.
pub struct Store {
    pub(crate) db: Database,
    pub(crate) data: Keyspace,
    pub(crate) alarms: Keyspace,
    pub(crate) committer: Committer,
    pub(crate) cache: Arc<ReadCache>,
    pub(crate) durability: Durability,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the node's database in `dir`, recovering from the journal after a
    /// crash.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<Arc<Store>, StorageError> {
        Self::open_tuned(dir, cfg, StoreTuning::default())
    }

    /// [`Store::open`] with engine knobs (tests, benchmarks).
    pub fn open_tuned(
        dir: &Path,
        cfg: StoreConfig,
        tuning: StoreTuning,
    ) -> Result<Arc<Store>, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Engine(format!("creating {}: {e}", dir.display())))?;
        // Batches stay in fjall's journal buffer until the syncer persists them: one write(2)
        // (and in Fsync mode one fdatasync) per group instead of one write(2) per batch.
        let mut builder = Database::builder(dir).manual_journal_persist(true);
        if let Some(b) = tuning.block_cache_bytes {
            builder = builder.cache_size(b);
        }
        let db = builder.open()?;
        let memtable = tuning.max_memtable_bytes;
        let data = db.keyspace("objects", || {
            let o = KeyspaceCreateOptions::default();
            match memtable {
                Some(b) => o.max_memtable_size(b),
                None => o,
            }
        })?;
        let alarms = db.keyspace("alarms", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        match meta.get("store")? {
            Some(raw) => {
                let m = alarm::decode_meta(&raw)?;
                if m.format != STORE_FORMAT {
                    return Err(StorageError::Corrupt(format!(
                        "store format {} (this build reads {STORE_FORMAT})",
                        m.format
                    )));
                }
            }
            None => {
                meta.insert(
                    "store",
                    alarm::encode_meta(&StoreMeta {
                        format: STORE_FORMAT,
                    })?,
                )?;
                db.persist(PersistMode::SyncAll)?;
            }
        }
        let cache = Arc::new(ReadCache::new(cfg.cache_bytes));
        let target = Target {
            db: db.clone(),
            data: data.clone(),
            alarms: alarms.clone(),
            cache: cache.clone(),
            sync_each_batch: tuning
                .sync_each_batch
                .then_some(persist_mode(cfg.durability)),
        };
        let committer = Committer::start(
            target,
            dir.to_path_buf(),
            persist_mode(cfg.durability),
            tuning.sync_log,
        )
        .map_err(|e| StorageError::Engine(format!("starting the group committer: {e}")))?;
        Ok(Arc::new(Store {
            db,
            data,
            alarms,
            committer,
            cache,
            durability: cfg.durability,
        }))
    }

    /// The storage of one object. Clones of the returned handle share one turn buffer; make
    /// one handle per live object (two independent handles for the same id would each buffer
    /// their own turn).
    pub fn object(self: &Arc<Self>, id: ObjectId) -> ObjectStorage {
        ObjectStorage::new(self.clone(), id)
    }

    /// Every scheduled alarm, as `(object id, scheduled time in ms since epoch)`, earliest
    /// first.
    pub fn alarms(&self) -> Result<Vec<(ObjectId, i64)>, StorageError> {
        let mut out: Vec<_> = self
            .alarm_states()?
            .into_iter()
            .map(|(id, s)| (id, s.scheduled_ms))
            .collect();
        out.sort_by_key(|&(id, at)| (at, id));
        Ok(out)
    }

    /// Every alarm slot with its retry state, the next run due first.
    pub fn alarm_states(&self) -> Result<Vec<(ObjectId, AlarmState)>, StorageError> {
        self.check_failed()?;
        let mut out = Vec::new();
        for item in self.db.snapshot().iter(&self.alarms) {
            let (k, v) = item.into_inner()?;
            let id: ObjectId = k[..]
                .try_into()
                .map_err(|_| StorageError::Corrupt(format!("alarm key of {} bytes", k.len())))?;
            out.push((id, alarm::decode(&v)?));
        }
        out.sort_by_key(|&(id, s)| (s.next_ms, id));
        Ok(out)
    }

    /// TEST HOOK: while the guard lives, no batch is confirmed durable.
    pub fn hold_durability(&self) -> DurabilityHold {
        self.committer.hold()
    }

    /// TEST HOOK: makes the next commit or the next fdatasync fail *after* the batches it
    /// concerns are visible in fjall. The store then fails closed (see [`crate::commit`]).
    pub fn inject_fault(&self, fault: Fault) {
        self.committer.inject(fault);
    }

    /// Resolves when every batch flushed so far (by any object) is durable, or fails if the
    /// store failed.
    pub fn barrier(&self) -> Commit {
        self.committer.barrier()
    }

    /// The error the store failed with, if a commit or an fsync has failed: from then on every
    /// commit and every read fails with it, until the store is reopened.
    pub fn failure(&self) -> Option<StorageError> {
        self.committer.failure()
    }

    pub(crate) fn check_failed(&self) -> Result<(), StorageError> {
        match self.committer.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The node's durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Counters of the group committer (number of fsyncs and time spent in them).
    pub fn sync_stats(&self) -> SyncStats {
        self.committer.stats()
    }

    /// Latencies and group sizes of the group committer, live (for `/metrics`).
    pub fn commit_stats(&self) -> Arc<crate::stats::CommitStats> {
        self.committer.commit_stats()
    }

    /// fjall-level counters (diagnostics, and proof in tests that flushes and rotations ran).
    pub fn engine_stats(&self) -> EngineStats {
        EngineStats {
            journal_count: self.db.journal_count(),
            table_count: self.data.table_count(),
            disk_bytes: self.db.disk_space().unwrap_or(0),
        }
    }

    /// Reads one committed value, through the cache unless `no_cache`.
    pub(crate) fn read(&self, key: Vec<u8>, no_cache: bool) -> Result<Option<Bytes>, StorageError> {
        self.check_failed()?;
        if no_cache {
            return self.read_uncached(&key);
        }
        match self.cache.lookup(&key) {
            Ok(v) => Ok(v),
            Err(token) => {
                let v = self.read_uncached(&key)?;
                self.cache.fill(token, key, v.clone());
                Ok(v)
            }
        }
    }

    /// fjall only: may block on disk. Through a snapshot, so a batch being applied is seen whole
    /// or not at all (fjall's plain `get` reads past the published sequence number).
    pub(crate) fn read_uncached(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self.db.snapshot().get(&self.data, key)?.map(Bytes::from))
    }

    pub(crate) fn read_alarm(&self, id: &ObjectId) -> Result<Option<AlarmState>, StorageError> {
        self.check_failed()?;
        match self.db.snapshot().get(&self.alarms, id)? {
            Some(raw) => Ok(Some(alarm::decode(&raw)?)),
            None => Ok(None),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Let the syncer make everything committed durable (or fail it) before fjall closes.
        self.committer.shutdown();
    }
}

fn persist_mode(d: Durability) -> PersistMode {
    match d {
        Durability::Fsync => PersistMode::SyncData,
        Durability::Process => PersistMode::Buffer,
    }
}
