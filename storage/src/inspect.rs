//! Read-only inspection of a node's store directory (`cinder do list/get`), without starting
//! the group committer or writing anything.
//!
//! fjall allows one process per database (a `flock` on `<dir>/lock`). A stopped node's
//! directory is opened in place. A running node's is copied first: its table files are
//! immutable, its journals are append-only, so a copy taken while it runs is what a crash at
//! that moment would have left on disk, and fjall's recovery turns it into a consistent
//! point-in-time view (batches confirmed durable before the copy started are in it). A copy
//! that races a compaction (a file deleted between listing and copying) is retried.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, Readable};

use crate::error::StorageError;
use crate::keys::{ObjectId, Section, ID_LEN};

/// A raw `(key, value)` pair.
pub type Entry = (Vec<u8>, Vec<u8>);

/// How the directory was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    /// In place: no process had the store open.
    InPlace,
    /// A running node holds the store: this is a snapshot copy of it.
    SnapshotOfRunning,
}

/// One object's footprint in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    pub id: ObjectId,
    /// `ctx.storage` keys (KV API).
    pub kv_keys: u64,
    /// Bytes of those keys plus their values.
    pub kv_bytes: u64,
    /// Bytes of the SQL engine's pages and metadata (`ctx.storage.sql`), keys included.
    pub sql_bytes: u64,
    /// The object's internal records (`Section::Meta`), e.g. its owning namespace.
    pub meta: Vec<Entry>,
}

/// A read-only view of a store directory.
pub struct StoreView {
    _db: Database,
    data: Keyspace,
    snapshot: fjall::Snapshot,
    kind: ViewKind,
    /// The copy this view reads, removed on drop.
    copy: Option<PathBuf>,
}

impl std::fmt::Debug for StoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreView")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Attempts at copying a running node's store before giving up.
const COPY_ATTEMPTS: usize = 5;

impl StoreView {
    /// Opens the store in `dir` (what `Store::open` was given) for reading.
    pub fn open(dir: &Path) -> Result<StoreView, StorageError> {
        if !dir.join("lock").exists() {
            return Err(StorageError::Engine(format!(
                "{} holds no Cinder store (no fjall database there)",
                dir.display()
            )));
        }
        match Self::open_at(dir, ViewKind::InPlace, None) {
            Err(OpenError::Locked) => {}
            Err(OpenError::Other(e)) => return Err(e),
            Ok(v) => return Ok(v),
        }
        let mut last = None;
        for attempt in 0..COPY_ATTEMPTS {
            let copy = std::env::temp_dir().join(format!(
                "cinder-inspect-{}-{attempt}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let result = copy_tree(dir, &copy)
                .map_err(|e| OpenError::Other(StorageError::Engine(format!("copying: {e}"))))
                .and_then(|()| {
                    Self::open_at(&copy, ViewKind::SnapshotOfRunning, Some(copy.clone()))
                });
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&copy);
                    last = Some(match e {
                        OpenError::Locked => StorageError::Engine("copy is locked".into()),
                        OpenError::Other(e) => e,
                    });
                }
            }
        }
        Err(StorageError::Engine(format!(
            "{} is in use by a running node and no consistent copy of it could be taken: {}",
            dir.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    fn open_at(dir: &Path, kind: ViewKind, copy: Option<PathBuf>) -> Result<StoreView, OpenError> {
        let db = match Database::builder(dir).open() {
            Ok(db) => db,
            Err(fjall::Error::Locked) => return Err(OpenError::Locked),
            Err(e) => return Err(OpenError::Other(e.into())),
        };
        let data = db
            .keyspace("objects", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| OpenError::Other(e.into()))?;
        let snapshot = db.snapshot();
        Ok(StoreView {
            _db: db,
            data,
            snapshot,
            kind,
            copy,
        })
    }

    pub fn kind(&self) -> ViewKind {
        self.kind
    }

    /// Every object with any data, in id order.
    pub fn objects(&self) -> Result<Vec<ObjectSummary>, StorageError> {
        let mut out: Vec<ObjectSummary> = Vec::new();
        for item in self.snapshot.iter(&self.data) {
            let (k, v) = item.into_inner()?;
            if k.len() <= ID_LEN {
                continue;
            }
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(&k[..ID_LEN]);
            if out.last().map(|o| o.id) != Some(id) {
                out.push(ObjectSummary {
                    id,
                    kv_keys: 0,
                    kv_bytes: 0,
                    sql_bytes: 0,
                    meta: Vec::new(),
                });
            }
            let Some(o) = out.last_mut() else { continue };
            let key = &k[ID_LEN + 1..];
            let size = (key.len() + v.len()) as u64;
            match k[ID_LEN] {
                b if b == Section::Kv.byte() => {
                    o.kv_keys += 1;
                    o.kv_bytes += size;
                }
                b if b == Section::Sql.byte() => o.sql_bytes += size,
                b if b == Section::Meta.byte() => o.meta.push((key.to_vec(), v.to_vec())),
                _ => {}
            }
        }
        Ok(out)
    }

    /// One object's `ctx.storage` entries (KV API), in key order.
    pub fn kv_entries(&self, id: &ObjectId) -> Result<Vec<Entry>, StorageError> {
        let mut prefix = id.to_vec();
        prefix.push(Section::Kv.byte());
        let mut out = Vec::new();
        for item in self.snapshot.prefix(&self.data, &prefix) {
            let (k, v) = item.into_inner()?;
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// One `ctx.storage` value.
    pub fn kv_get(&self, id: &ObjectId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let mut k = id.to_vec();
        k.push(Section::Kv.byte());
        k.extend_from_slice(key);
        Ok(self.snapshot.get(&self.data, &k)?.map(|v| v.to_vec()))
    }
}

impl Drop for StoreView {
    fn drop(&mut self) {
        if let Some(copy) = &self.copy {
            // The database handle closes first only after this body, so removing the files
            // under it is fine on Unix (open descriptors keep them readable until closed).
            let _ = std::fs::remove_dir_all(copy);
        }
    }
}

enum OpenError {
    Locked,
    Other(StorageError),
}

/// Copies the directory tree `from` into a new `to`, skipping the lock file (its `flock` is
/// the running node's, not part of the data) and the test-only sync log.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "lock" && from.join("lock") == entry.path() {
            // A fresh, unlocked lock file: fjall requires one to exist.
            std::fs::File::create(to.join("lock"))?;
            continue;
        }
        if name == crate::commit::SYNC_LOG_FILE {
            continue;
        }
        let ty = entry.file_type()?;
        let target = to.join(&name);
        if ty.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreConfig};
    use bytes::Bytes;

    fn write(store: &std::sync::Arc<Store>, id: ObjectId, entries: &[(&str, &[u8])]) {
        let obj = store.object(id);
        for (k, v) in entries {
            obj.put(k, Bytes::copy_from_slice(v)).unwrap();
        }
        if let Some(commit) = obj.flush() {
            futures::executor::block_on(commit).unwrap();
        }
    }

    #[test]
    fn lists_and_reads_a_stopped_store_and_a_running_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        write(&store, [1; 32], &[("a", b"xy"), ("b", b"z")]);
        write(&store, [2; 32], &[("k", b"v")]);

        // Running: the store is locked by this process's open handle.
        let view = StoreView::open(dir.path()).unwrap();
        assert_eq!(view.kind(), ViewKind::SnapshotOfRunning);
        let objects = view.objects().unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!((objects[0].kv_keys, objects[0].kv_bytes), (2, 5));
        assert_eq!(objects[1].id, [2; 32]);
        assert_eq!(
            view.kv_get(&[1; 32], b"a").unwrap().as_deref(),
            Some(&b"xy"[..])
        );
        drop(view);

        drop(store);
        let view = StoreView::open(dir.path()).unwrap();
        assert_eq!(view.kind(), ViewKind::InPlace);
        let entries = view.kv_entries(&[1; 32]).unwrap();
        assert_eq!(
            entries,
            vec![
                (b"a".to_vec(), b"xy".to_vec()),
                (b"b".to_vec(), b"z".to_vec())
            ]
        );
        assert_eq!(view.kv_get(&[2; 32], b"nope").unwrap(), None);
    }

    #[test]
    fn a_directory_without_a_store_is_refused_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let err = StoreView::open(&dir.path().join("store")).unwrap_err();
        assert!(err.to_string().contains("holds no Cinder store"), "{err}");
        assert!(!dir.path().join("store").exists());
    }
}
