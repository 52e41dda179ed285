//! Point-in-time recovery: an undo log of page versions kept in fjall for 30 days, and the
//! bookmarks that name points in it (`getCurrentBookmark`, `getBookmarkForTime`,
//! `onNextSessionRestoreBookmark`).
//!
//! # Why an undo log of pages
//! The current pages stay where the VFS reads them (`p ‖ index`, one point read each), so
//! recovery costs reads nothing. History is kept per *version*: the first time a version
//! changes a page (or the file size), the page's previous stored bytes are recorded; the
//! records of a write call go to fjall as one key, `h ‖ version ‖ n`, in the same turn batch as
//! the pages. So history is exactly as durable and atomic as the data, and expiring it is one
//! range delete of the oldest keys (versions sort by time). A fjall snapshot could not do this:
//! snapshots live in memory and die with the process.
//!
//! A version spans the write calls of up to one second ([`WINDOW_MS`]); `getCurrentBookmark`
//! (and a bookmark for "now") ends it early. A hot object so records each page it keeps
//! rewriting once a second, not once per transaction: the price is that a bookmark for a time
//! is exact to the second, while a current bookmark is exact.
//!
//! The state at bookmark `B` is, for every page, the record from the earliest version after
//! `B` that touched it, or the current page if none did. Restoring (at the next open, before
//! SQLite sees the file) writes those pages back as a new version — whose own records make the
//! restore itself undoable with the bookmark taken just before it.
//!
//! # Versions and bookmarks
//! A version is `ms << 16 | n`: wall-clock milliseconds and a counter, strictly increasing
//! (`max(now, last + 1)`), so a bookmark for a time is `t << 16 | 0xffff`. Versions never
//! repeat across restarts: a *lease* `v` persisted with the first version past it (10 s ahead)
//! is the floor of the next session. Bookmarks print as `xxxxxxxx-xxxxxxxx-xxxxxxxx-<32 hex>`
//! (the milliseconds' high and low words, the counter, a checksum over the object id and the
//! version), the shape Cloudflare's have, so they compare lexicographically in time order and a
//! bookmark of another database is refused.
//!
//! Keys under the object's SQL section (beside the VFS's `p…` pages and `z` size): `h ‖ u64 BE
//! version ‖ u16 BE n` (a call's records: `u32 BE page ‖ u32 BE length or u32::MAX if the page
//! did not exist ‖ bytes`, repeated; page `u32::MAX` holds the file size), `v` the lease, `r` a
//! pending restore's target version.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use cinder_storage::{ObjectStorage, Section, StorageError};

use crate::error::SqlError;

/// How long history is kept by default (Cloudflare's 30 days).
pub const DEFAULT_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;
/// Longest span of one version (see the module doc).
pub const WINDOW_MS: u64 = 1000;

const UNDO_PREFIX: u8 = b'h';
const LEASE_KEY: &[u8] = b"v";
const RESTORE_KEY: &[u8] = b"r";
/// The page number under which the file size is recorded.
pub(crate) const SIZE_PAGE: u32 = u32::MAX;
const ABSENT: u32 = u32::MAX;
/// How far ahead of the clock the persisted lease runs.
const LEASE_MS: u64 = 10_000;
/// How often a session deletes expired history.
const GC_EVERY_MS: u64 = 3_600_000;

/// `getBookmarkForTime` / `onNextSessionRestoreBookmark` with a bookmark that is not one.
pub const BAD_BOOKMARK: &str = "Invalid bookmark.";
/// A time or bookmark older than the retention period.
pub const TOO_OLD: &str = "Point-in-time recovery is only possible within the last 30 days.";
/// A time later than now, or a bookmark later than the current one.
pub const IN_FUTURE: &str = "Cannot get a bookmark for a time in the future.";
/// Point-in-time recovery was turned off for this database ([`crate::SqlConfig`]).
pub const DISABLED: &str =
    "This Durable Object's storage back-end does not implement point-in-time recovery.";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn record_key(version: u64, n: u16) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = UNDO_PREFIX;
    k[1..9].copy_from_slice(&version.to_be_bytes());
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

fn read_u64(storage: &ObjectStorage, key: &[u8]) -> Result<Option<u64>, StorageError> {
    match storage.raw_get(Section::Sql, key)? {
        None => Ok(None),
        Some(b) => <[u8; 8]>::try_from(&b[..])
            .map(|a| Some(u64::from_le_bytes(a)))
            .map_err(|_| StorageError::Corrupt(format!("SQL history record {key:?} is malformed"))),
    }
}

/// Page numbers are already well spread: hashing them is a multiply.
#[derive(Default)]
struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The history of one database, shared by its VFS file and its [`crate::SqlStorage`].
pub(crate) type SharedHistory = std::rc::Rc<std::cell::RefCell<History>>;

/// The undo log of one database (see the module doc).
pub(crate) struct History {
    storage: ObjectStorage,
    id_check: [u8; 32],
    retention_ms: u64,
    /// The open version and when it started (ms), if anything was recorded under it.
    current: Option<(u64, u64)>,
    /// Records of the open version written so far (the next record's `n`).
    records: u16,
    /// Pages (and [`SIZE_PAGE`]) the open version has recorded.
    captured: HashSet<u32, BuildHasherDefault<PageHasher>>,
    /// This call's records, written as one key when the call ends.
    pending: Vec<(u32, Option<Bytes>)>,
    /// The stored bytes of a few recently written pages, so that recording a hot page again in
    /// the next version needs no read (kept current by [`History::after_page_write`]).
    images: Vec<(u32, Option<Bytes>)>,
    /// Bytes held by `images`.
    image_bytes: usize,
    /// Highest version used (or handed out as a bookmark); the next is greater.
    last: u64,
    /// Versions below `lease << 16` may have been used by this or an earlier session.
    lease_ms: u64,
    /// Whether earlier sessions left history (expired records to collect).
    had_history: bool,
    last_gc_ms: u64,
    /// The target of a restore scheduled for the next open: its records must outlive expiry.
    restore_target: Option<u64>,
}

impl History {
    pub(crate) fn load(storage: ObjectStorage, retention_ms: u64) -> Result<Self, StorageError> {
        let lease = read_u64(&storage, LEASE_KEY)?;
        let restore_target = read_u64(&storage, RESTORE_KEY)?;
        Ok(Self {
            id_check: *storage.id(),
            storage,
            retention_ms,
            current: None,
            records: 0,
            captured: HashSet::default(),
            pending: Vec::new(),
            images: Vec::new(),
            image_bytes: 0,
            last: lease.map_or(0, |l| l << 16),
            lease_ms: lease.unwrap_or(0),
            had_history: lease.is_some(),
            last_gc_ms: 0,
            restore_target,
        })
    }

    /// A fresh version number: after every one used so far, and not before the clock.
    fn allocate(&mut self, now: u64) -> u64 {
        let v = (now << 16).max(self.last + 1);
        self.last = v;
        if (v >> 16) + 1 >= self.lease_ms {
            self.lease_ms = (v >> 16) + LEASE_MS;
            self.storage.raw_put(
                Section::Sql,
                LEASE_KEY,
                Bytes::copy_from_slice(&self.lease_ms.to_le_bytes()),
            );
        }
        if self.had_history && now.saturating_sub(self.last_gc_ms) >= GC_EVERY_MS {
            self.last_gc_ms = now;
            self.collect(now);
        }
        v
    }

    /// Deletes records older than the retention period (in the turn batch).
    fn collect(&self, now: u64) {
        let mut cutoff = now.saturating_sub(self.retention_ms) << 16;
        if let Some(target) = self.restore_target {
            cutoff = cutoff.min(target.saturating_add(1));
        }
        if let Err(e) = self.storage.raw_delete_range(
            Section::Sql,
            &record_key(0, 0),
            Some(&record_key(cutoff, 0)),
        ) {
            tracing::warn!(error = %e, "expiring SQL history failed; retrying later");
        }
    }

    fn open_version(&mut self) {
        if self.current.is_none() {
            let now = now_ms();
            let v = self.allocate(now);
            self.current = Some((v, now));
            self.records = 0;
        }
    }

    /// Records page `page`'s stored bytes (or its absence) before the open version first
    /// changes it. `page_key` is where the VFS keeps it.
    pub(crate) fn before_page_write(
        &mut self,
        page: u32,
        page_key: &[u8],
    ) -> Result<(), StorageError> {
        self.open_version();
        if self.captured.insert(page) {
            let old = match self.images.iter().find(|(p, _)| *p == page) {
                Some((_, image)) => image.clone(),
                None => self.storage.raw_get(Section::Sql, page_key)?,
            };
            self.pending.push((page, old));
        }
        Ok(())
    }

    /// The page's stored bytes are now `image` (`None`: deleted). Every change of a page's
    /// stored bytes passes here, so a kept image is never stale.
    pub(crate) fn after_page_write(&mut self, page: u32, image: Option<&Bytes>) {
        const IMAGES: usize = 8;
        const IMAGE_BYTES: usize = 32 << 10;
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        let image = image.cloned();
        self.image_bytes += len(&image);
        if let Some(slot) = self.images.iter_mut().find(|(p, _)| *p == page) {
            self.image_bytes -= len(&slot.1);
            slot.1 = image;
        } else if self.images.len() < IMAGES {
            self.images.push((page, image));
        } else {
            self.image_bytes -= len(&image);
            return;
        }
        if self.image_bytes > IMAGE_BYTES {
            // Large pages churn: keep none rather than pin their memory.
            self.images.clear();
            self.image_bytes = 0;
        }
    }

    /// Records the file size before the open version first changes it.
    pub(crate) fn before_size_change(&mut self, old_size: u64) {
        self.open_version();
        if self.captured.insert(SIZE_PAGE) {
            self.pending.push((
                SIZE_PAGE,
                Some(Bytes::copy_from_slice(&old_size.to_le_bytes())),
            ));
        }
    }

    /// End of a write call: its records go into the turn batch, and the version closes if
    /// it is older than [`WINDOW_MS`].
    pub(crate) fn end_call(&mut self) {
        let Some((v, started)) = self.current else {
            return;
        };
        if !self.pending.is_empty() {
            let mut rec = BytesMut::new();
            for (page, old) in self.pending.drain(..) {
                rec.put_u32(page);
                match old {
                    Some(b) => {
                        rec.put_u32(u32::try_from(b.len()).unwrap_or(ABSENT - 1));
                        rec.put_slice(&b);
                    }
                    None => rec.put_u32(ABSENT),
                }
            }
            self.storage
                .raw_put(Section::Sql, &record_key(v, self.records), rec.freeze());
            self.records = self.records.wrapping_add(1);
        }
        if now_ms().saturating_sub(started) >= WINDOW_MS || self.records == u16::MAX {
            self.close_version();
        }
    }

    /// Ends the open version now (its records must have been written: call after
    /// [`History::end_call`]).
    fn close_version(&mut self) {
        self.current = None;
        self.captured.clear();
    }

    fn end_version(&mut self) {
        self.end_call();
        self.close_version();
    }

    /// `getCurrentBookmark()`: names the state as it is now. Ends the open version and
    /// consumes a version number, so every later change sorts after the bookmark.
    pub(crate) fn current_bookmark(&mut self) -> String {
        self.end_version();
        let v = self.allocate(now_ms());
        self.format(v)
    }

    /// `getBookmarkForTime(t)`: the state after every version that began at or before `t`.
    pub(crate) fn bookmark_for_time(&mut self, t_ms: i64) -> Result<String, SqlError> {
        let now = now_ms();
        let t = u64::try_from(t_ms).map_err(|_| SqlError::Api(TOO_OLD))?;
        if t > now {
            return Err(SqlError::Api(IN_FUTURE));
        }
        if t < now.saturating_sub(self.retention_ms) {
            return Err(SqlError::Api(TOO_OLD));
        }
        let b = (t << 16) | 0xffff;
        if b > self.last {
            // Later changes must sort after the bookmark even within the same millisecond.
            self.end_version();
            self.last = b;
            if t + 1 >= self.lease_ms {
                self.allocate(now);
            }
        }
        Ok(self.format(b))
    }

    /// `onNextSessionRestoreBookmark(b)`: the next [`History::apply_restore`] (the next open)
    /// rolls the database back to `b`. Returns the bookmark that undoes the restore.
    pub(crate) fn restore_on_next_open(&mut self, bookmark: &str) -> Result<String, SqlError> {
        let b = self.parse(bookmark)?;
        if (b >> 16) < now_ms().saturating_sub(self.retention_ms) {
            return Err(SqlError::Api(TOO_OLD));
        }
        if b > self.last {
            return Err(SqlError::Api(IN_FUTURE));
        }
        let undo = self.current_bookmark();
        self.storage.raw_put(
            Section::Sql,
            RESTORE_KEY,
            Bytes::copy_from_slice(&b.to_le_bytes()),
        );
        self.restore_target = Some(b);
        Ok(undo)
    }

    /// Performs a pending restore (before SQLite opens the file): every page changed after the
    /// target goes back to its content then, as one new version. `page_key` gives the VFS's
    /// key of a page, `size_key` the file size record's. Returns whether a restore happened.
    pub(crate) fn apply_restore(
        &mut self,
        page_key: impl Fn(u32) -> Vec<u8>,
        size_key: &[u8],
    ) -> Result<bool, StorageError> {
        let Some(target) = read_u64(&self.storage, RESTORE_KEY)? else {
            return Ok(false);
        };
        let records = self.storage.raw_range(
            Section::Sql,
            &record_key(target.saturating_add(1), 0),
            Some(&[UNDO_PREFIX + 1]),
        )?;
        // The earliest record after the target per page is the page as it was at the target.
        let mut then: BTreeMap<u32, Option<Bytes>> = BTreeMap::new();
        for (_, rec) in records {
            for (page, old) in decode_record(&rec)? {
                then.entry(page).or_insert(old);
            }
        }
        self.end_version();
        for (page, old) in then {
            if page == SIZE_PAGE {
                let current = read_u64(&self.storage, size_key)?.unwrap_or(0);
                self.before_size_change(current);
                match old {
                    Some(b) => self.storage.raw_put(Section::Sql, size_key, b),
                    None => self.storage.raw_delete(Section::Sql, size_key),
                }
                continue;
            }
            let key = page_key(page);
            self.before_page_write(page, &key)?;
            self.after_page_write(page, old.as_ref());
            match old {
                Some(b) => self.storage.raw_put(Section::Sql, &key, b),
                None => self.storage.raw_delete(Section::Sql, &key),
            }
        }
        self.storage.raw_delete(Section::Sql, RESTORE_KEY);
        self.restore_target = None;
        self.end_version();
        Ok(true)
    }

    fn check(&self, v: u64) -> [u64; 2] {
        // FNV-1a over the object id and the version, twice with different offsets: a checksum
        // that ties a bookmark to its database, not a secret.
        let mut out = [0u64; 2];
        for (i, o) in out.iter_mut().enumerate() {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in self.id_check.iter().chain(v.to_be_bytes().iter()) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            *o = h;
        }
        out
    }

    fn format(&self, v: u64) -> String {
        let ms = v >> 16;
        let [a, b] = self.check(v);
        format!(
            "{:08x}-{:08x}-{:08x}-{a:016x}{b:016x}",
            ms >> 32,
            ms & 0xffff_ffff,
            v & 0xffff
        )
    }

    fn parse(&self, s: &str) -> Result<u64, SqlError> {
        let bad = || SqlError::Api(BAD_BOOKMARK);
        let parts: Vec<&str> = s.split('-').collect();
        let [hi, lo, n, check] = parts[..] else {
            return Err(bad());
        };
        if hi.len() != 8 || lo.len() != 8 || n.len() != 8 || check.len() != 32 {
            return Err(bad());
        }
        let num = |p: &str| u64::from_str_radix(p, 16).map_err(|_| bad());
        let (hi, lo, n) = (num(hi)?, num(lo)?, num(n)?);
        if hi > 0xffff || n > 0xffff {
            return Err(bad());
        }
        let v = (((hi << 32) | lo) << 16) | n;
        let [a, b] = self.check(v);
        if check != format!("{a:016x}{b:016x}") {
            return Err(bad());
        }
        Ok(v)
    }
}

/// The (page, stored bytes or absence) entries of one record.
fn decode_record(rec: &[u8]) -> Result<Vec<(u32, Option<Bytes>)>, StorageError> {
    let bad = || StorageError::Corrupt("SQL history record is malformed".into());
    let mut out = Vec::new();
    let mut i = 0;
    while i < rec.len() {
        let head = rec.get(i..i + 8).ok_or_else(bad)?;
        let page = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        i += 8;
        if len == ABSENT {
            out.push((page, None));
            continue;
        }
        let end = i.checked_add(len as usize).ok_or_else(bad)?;
        let body = rec.get(i..end).ok_or_else(bad)?;
        out.push((page, Some(Bytes::copy_from_slice(body))));
        i = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmarks_sort_in_version_order_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = cinder_storage::Store::open(dir.path(), Default::default()).unwrap();
        let h = History::load(store.object([7; 32]), DEFAULT_RETENTION_MS).unwrap();
        let other = History::load(store.object([8; 32]), DEFAULT_RETENTION_MS).unwrap();
        let vs = [
            1u64,
            0xffff,
            0x1_0000,
            1_700_000_000_000 << 16,
            (1 << 63) + 5,
        ];
        let bs: Vec<String> = vs.iter().map(|v| h.format(*v)).collect();
        for w in bs.windows(2) {
            assert!(w[0] < w[1], "{} < {}", w[0], w[1]);
        }
        for (v, b) in vs.iter().zip(&bs) {
            assert_eq!(h.parse(b).unwrap(), *v);
            assert_eq!(other.parse(b).unwrap_err(), SqlError::Api(BAD_BOOKMARK));
        }
        for bad in [
            "",
            "0-0-0-0",
            "zzzzzzzz-00000000-00000000-00000000000000000000000000000000",
        ] {
            assert_eq!(h.parse(bad).unwrap_err(), SqlError::Api(BAD_BOOKMARK));
        }
    }
}
