//! A SQLite VFS whose main database file is a range of keys in the node's fjall store.
//!
//! # Why `libsqlite3-sys` directly (not `sqlite-plugin`)
//! The VFS is ~300 lines of `extern "C"` callbacks over one C struct; writing them against
//! `libsqlite3-sys` registers the VFS in *the same* bundled SQLite that rusqlite links, with no
//! second copy of the bindings, no `bindgen`/libclang at build time (sqlite-plugin 0.11 needs
//! both), and no coupling of our rusqlite version to the plugin's (it pins rusqlite 0.38 in its
//! own tests). We need only a handful of callbacks and full control over `xOpen` (handing the
//! object's storage to the file) and `xSync` (a no-op: durability is the turn batch's job).
//!
//! # Layout
//! Under the object's [`Section::Sql`]: `b"p" ‖ u32 BE chunk index` holds 4,096-byte chunks of
//! the database file (SQLite's page size is pinned to 4,096, so a chunk is a page; stored with
//! its longest zero run cut out, see `encode`), and `b"z"`
//! holds the file size as a `u64` LE (`h…`, `v` and `r` belong to the undo log of
//! [`crate::history`], which sees every page change first). No file descriptor exists per database: every read is
//! `raw_get` (this turn's writes, then the read cache, then fjall) and every write is a
//! `raw_put` into the object's turn batch.
//!
//! # Why the turn batch makes a rollback journal unnecessary
//! The connection runs with `journal_mode=MEMORY`, `locking_mode=EXCLUSIVE`,
//! `synchronous=OFF`, `temp_store=MEMORY`: SQLite keeps the undo log of the open transaction in
//! RAM (so `ROLLBACK`, savepoints and statement rollback still work, including after a cache
//! spill wrote uncommitted pages into the batch: the rollback writes the old pages back), and
//! never creates a `-journal` or `-wal` file. A page written by SQLite reaches fjall only when
//! the object's turn batch is flushed, which happens *between* SQLite transactions (the SQL API
//! never leaves one open across calls), and the batch is applied atomically by fjall. So after
//! a crash the database is exactly the state at the end of some flushed turn: every confirmed
//! transaction is there and no transaction is there in part. That is the job a rollback
//! journal or WAL does for a file, done instead by the batch that also carries the object's KV
//! writes, alarms and every other engine's writes of the turn.
//!
//! Non-main files (if SQLite ever opens one: with `temp_store=MEMORY` and the memory journal it
//! should not) live in process memory and vanish on close.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use bytes::Bytes;
use cinder_storage::{ObjectStorage, Section};

use crate::history::SharedHistory;
use libsqlite3_sys as ffi;

/// Registered name of the VFS.
pub(crate) const VFS_NAME: &str = "cinder";
const VFS_NAME_C: &CStr = c"cinder";

/// Bytes per stored chunk; equal to the pinned SQLite page size.
pub(crate) const CHUNK: u64 = 4096;
const SIZE_KEY: &[u8] = b"z";
const PAGE_PREFIX: u8 = b'p';

/// The page number a chunk index is recorded under in the undo log.
fn page_number(index: u64) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX - 1)
}

/// Key of a page in the object's SQL section (also what the undo log restores into).
pub(crate) fn page_key(page: u32) -> Vec<u8> {
    chunk_key(u64::from(page)).to_vec()
}

/// Key of the file size record.
pub(crate) const SIZE_RECORD: &[u8] = SIZE_KEY;

fn chunk_key(index: u64) -> [u8; 5] {
    let i = u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes();
    [PAGE_PREFIX, i[0], i[1], i[2], i[3]]
}

thread_local! {
    /// The storage the next main-database `xOpen` on this thread belongs to. `sqlite3_open_v2`
    /// opens the main file synchronously, so [`open_with`] sets this just around the call.
    static OPENING: RefCell<Option<(ObjectStorage, Option<SharedHistory>)>> =
        const { RefCell::new(None) };
}

/// Runs `open` (which must call `sqlite3_open_v2` with [`VFS_NAME`]) so that the main database
/// file it opens is backed by `storage`.
/// With `history`, every page change is recorded in the undo log first ([`crate::history`]).
pub(crate) fn open_with<T>(
    storage: ObjectStorage,
    history: Option<SharedHistory>,
    open: impl FnOnce() -> T,
) -> T {
    OPENING.with(|o| *o.borrow_mut() = Some((storage, history)));
    let out = open();
    OPENING.with(|o| o.borrow_mut().take());
    out
}

/// Registers the VFS once per process. Returns SQLite's result code on failure.
pub(crate) fn register() -> Result<(), c_int> {
    static RC: OnceLock<c_int> = OnceLock::new();
    let rc = *RC.get_or_init(|| unsafe {
        // No global memory statistics unless a budget was asked for first (then SQLite is
        // initialized already and this is refused): they take a process-wide mutex on every
        // SQLite allocation, ~100 per small transaction, shared by all executor threads.
        ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int);
        let rc = ffi::sqlite3_initialize();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let default = ffi::sqlite3_vfs_find(ptr::null());
        if default.is_null() {
            return ffi::SQLITE_ERROR;
        }
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: std::mem::size_of::<File>() as c_int,
            mxPathname: 512,
            pNext: ptr::null_mut(),
            zName: VFS_NAME_C.as_ptr(),
            pAppData: default.cast(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0)
    });
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

/// The `sqlite3_file` SQLite allocates for us (`szOsFile` bytes); `base` must come first.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    state: *mut FileState,
}

enum FileState {
    Pages(PageFile),
    Memory(Vec<u8>),
}

/// The main database file of one object.
struct PageFile {
    storage: ObjectStorage,
    size: u64,
    history: Option<SharedHistory>,
}

impl PageFile {
    fn open(
        storage: ObjectStorage,
        history: Option<SharedHistory>,
    ) -> Result<Self, cinder_storage::StorageError> {
        let size = match storage.raw_get(Section::Sql, SIZE_KEY)? {
            Some(b) if b.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b);
                u64::from_le_bytes(a)
            }
            Some(b) => {
                return Err(cinder_storage::StorageError::Corrupt(format!(
                    "SQL file size record has {} bytes",
                    b.len()
                )))
            }
            None => 0,
        };
        Ok(Self {
            storage,
            size,
            history,
        })
    }

    /// The chunk's 4,096 bytes, decoded.
    fn chunk(&self, index: u64) -> Result<Option<Vec<u8>>, cinder_storage::StorageError> {
        match self.storage.raw_get(Section::Sql, &chunk_key(index))? {
            None => Ok(None),
            Some(stored) => decode(&stored).map(Some).ok_or_else(|| {
                cinder_storage::StorageError::Corrupt(format!("SQL page {index} does not decode"))
            }),
        }
    }

    fn put_chunk(&self, index: u64, data: &[u8]) -> Result<(), cinder_storage::StorageError> {
        let key = chunk_key(index);
        let stored = encode(data);
        if let Some(h) = &self.history {
            let mut h = h.borrow_mut();
            h.before_page_write(page_number(index), &key)?;
            h.after_page_write(page_number(index), Some(&stored));
        }
        self.storage.raw_put(Section::Sql, &key, stored);
        Ok(())
    }

    /// Fills `buf` from `offset`; returns false if the file ended first (rest zero-filled).
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<bool, cinder_storage::StorageError> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let avail = end.min(self.size);
        if avail > offset {
            for index in offset / CHUNK..=(avail - 1) / CHUNK {
                let Some(data) = self.chunk(index)? else {
                    continue;
                };
                let c_start = index * CHUNK;
                let lo = offset.max(c_start);
                let hi = avail.min(c_start + data.len() as u64);
                if hi > lo {
                    buf[(lo - offset) as usize..(hi - offset) as usize]
                        .copy_from_slice(&data[(lo - c_start) as usize..(hi - c_start) as usize]);
                }
            }
        }
        Ok(end <= self.size)
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), cinder_storage::StorageError> {
        let end = offset + buf.len() as u64;
        if buf.is_empty() {
            return Ok(());
        }
        for index in offset / CHUNK..=(end - 1) / CHUNK {
            let c_start = index * CHUNK;
            let lo = offset.max(c_start);
            let hi = end.min(c_start + CHUNK);
            let src = &buf[(lo - offset) as usize..(hi - offset) as usize];
            if lo == c_start && hi == c_start + CHUNK {
                self.put_chunk(index, src)?;
            } else {
                // Partial chunk: read-modify-write. SQLite writes whole pages to the main file,
                // so this only runs for the 100-byte header probes of odd callers.
                let mut data = vec![0u8; CHUNK as usize];
                if c_start < self.size {
                    if let Some(old) = self.chunk(index)? {
                        data[..old.len()].copy_from_slice(&old);
                    }
                }
                data[(lo - c_start) as usize..(hi - c_start) as usize].copy_from_slice(src);
                self.put_chunk(index, &data)?;
            }
        }
        if end > self.size {
            self.set_size(end);
        }
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<(), cinder_storage::StorageError> {
        if size >= self.size {
            return Ok(());
        }
        let first_gone = size.div_ceil(CHUNK);
        let old_chunks = self.size.div_ceil(CHUNK);
        for index in first_gone..old_chunks {
            let key = chunk_key(index);
            if let Some(h) = &self.history {
                let mut h = h.borrow_mut();
                h.before_page_write(page_number(index), &key)?;
                h.after_page_write(page_number(index), None);
            }
            self.storage.raw_delete(Section::Sql, &key);
        }
        if size % CHUNK != 0 {
            // Zero the cut tail so a later extension reads zeros, as a file would.
            let index = size / CHUNK;
            if let Some(mut data) = self.chunk(index)? {
                let keep = (size % CHUNK) as usize;
                if data.len() > keep {
                    data[keep..].fill(0);
                }
                self.put_chunk(index, &data)?;
            }
        }
        self.set_size(size);
        Ok(())
    }

    fn set_size(&mut self, size: u64) {
        if let Some(h) = &self.history {
            h.borrow_mut().before_size_change(self.size);
        }
        self.size = size;
        self.storage.raw_put(
            Section::Sql,
            SIZE_KEY,
            Bytes::copy_from_slice(&size.to_le_bytes()),
        );
    }
}

/// Stored form of a chunk: `0 ‖ bytes` (as is), or `1 ‖ start u16 LE ‖ run u16 LE ‖ bytes
/// before ‖ bytes after` with the longest run of zeros cut out. A B-tree page keeps its header
/// at the start and its cells at the end, with the free space between zeroed, so a small
/// database's pages shrink from 4 KiB to tens of bytes: less to copy, journal and compact per
/// transaction. Runs shorter than 32 bytes are not worth the header.
fn encode(page: &[u8]) -> Bytes {
    let (best_start, best_len) = longest_zero_run(page);
    let mut out;
    if best_len < 32 || page.len() > u16::MAX as usize {
        out = Vec::with_capacity(page.len() + 1);
        out.push(0);
        out.extend_from_slice(page);
    } else {
        out = Vec::with_capacity(page.len() - best_len + 5);
        out.push(1);
        out.extend_from_slice(&(best_start as u16).to_le_bytes());
        out.extend_from_slice(&(best_len as u16).to_le_bytes());
        out.extend_from_slice(&page[..best_start]);
        out.extend_from_slice(&page[best_start + best_len..]);
    }
    Bytes::from(out)
}

/// Start and length of the longest run of zero bytes that covers at least one aligned
/// 64-byte block: this runs for every page of every commit, so it looks at whole blocks first
/// (eight words OR-ed together, which the compiler vectorizes) and only refines the ends of
/// each zero stretch byte by byte. Shorter runs (under 128 bytes they may cover no whole
/// block) are not found; such a page is then stored as it is, costing at most 128 bytes.
fn longest_zero_run(p: &[u8]) -> (usize, usize) {
    const BLOCK: usize = 64;
    let (mut best_start, mut best_len) = (0, 0);
    let mut consider = |first_block: usize, end_block: usize| {
        let mut start = first_block * BLOCK;
        while start > 0 && p[start - 1] == 0 {
            start -= 1;
        }
        let mut end = end_block * BLOCK;
        while end < p.len() && p[end] == 0 {
            end += 1;
        }
        if end - start > best_len {
            best_start = start;
            best_len = end - start;
        }
    };
    let mut run: Option<usize> = None;
    let mut blocks = 0;
    for (b, block) in p.chunks_exact(BLOCK).enumerate() {
        blocks = b + 1;
        let mut any = 0u64;
        for w in block.chunks_exact(8) {
            any |= u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
        if any == 0 {
            run.get_or_insert(b);
        } else if let Some(first) = run.take() {
            consider(first, b);
        }
    }
    if let Some(first) = run {
        consider(first, blocks);
    }
    (best_start, best_len)
}

/// Inverse of [`encode`]; `None` if the record is malformed.
fn decode(stored: &[u8]) -> Option<Vec<u8>> {
    // A record never decodes to more than a chunk: a longer one is corrupt, and trusting its
    // length would slice past the chunk buffer (a panic inside a SQLite callback aborts the
    // process).
    let out = match stored.split_first()? {
        (0, rest) => rest.to_vec(),
        (1, rest) if rest.len() >= 4 => {
            let start = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let run = u16::from_le_bytes([rest[2], rest[3]]) as usize;
            let body = &rest[4..];
            if start > body.len() || body.len() + run > CHUNK as usize {
                return None;
            }
            let mut out = Vec::with_capacity(body.len() + run);
            out.extend_from_slice(&body[..start]);
            out.resize(start + run, 0);
            out.extend_from_slice(&body[start..]);
            out
        }
        _ => return None,
    };
    (out.len() <= CHUNK as usize).then_some(out)
}

/// Deletes every page of the object's database in its turn batch (used by `deleteAll()`).
/// The database file's bytes as committed in this object's storage (this turn's writes
/// included): a plain SQLite database file (`D1`'s `dump()`).
pub(crate) fn read_file(storage: &ObjectStorage) -> Result<Vec<u8>, cinder_storage::StorageError> {
    let file = PageFile::open(storage.clone(), None)?;
    let len = usize::try_from(file.size)
        .map_err(|_| cinder_storage::StorageError::Corrupt("SQL file too large".into()))?;
    let mut buf = vec![0u8; len];
    file.read(&mut buf, 0)?;
    Ok(buf)
}

/// With history, the old pages go to the undo log first and the log itself stays.
pub(crate) fn erase(
    storage: &ObjectStorage,
    history: Option<&SharedHistory>,
) -> Result<(), cinder_storage::StorageError> {
    let Some(h) = history else {
        return storage.raw_delete_range(Section::Sql, &[], None);
    };
    let mut h = h.borrow_mut();
    for (key, _) in storage.raw_range(Section::Sql, &[PAGE_PREFIX], Some(&[PAGE_PREFIX + 1]))? {
        if let Ok(k) = <[u8; 5]>::try_from(&key[..]) {
            let page = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
            h.before_page_write(page, &k)?;
            h.after_page_write(page, None);
        }
        storage.raw_delete(Section::Sql, &key);
    }
    if let Some(b) = storage.raw_get(Section::Sql, SIZE_KEY)? {
        if let Ok(a) = <[u8; 8]>::try_from(&b[..]) {
            h.before_size_change(u64::from_le_bytes(a));
        }
        storage.raw_delete(Section::Sql, SIZE_KEY);
    }
    Ok(())
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `file` must be a `File` initialised by `x_open` and not yet closed.
unsafe fn state<'a>(file: *mut ffi::sqlite3_file) -> &'a mut FileState {
    &mut *(*(file as *mut File)).state
}

fn log_error(what: &str, e: &cinder_storage::StorageError) {
    tracing::error!(error = %e, "SQL VFS {what} failed");
}

/// The SQLite result for a failed file operation: `SQLITE_CORRUPT` for a record that does not
/// decode (SQLite reports "database disk image is malformed"), `io_error` otherwise.
fn failure_code(e: &cinder_storage::StorageError, io_error: c_int) -> c_int {
    match e {
        cinder_storage::StorageError::Corrupt(_) => ffi::SQLITE_CORRUPT,
        _ => io_error,
    }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let f = file as *mut File;
    (*f).base.pMethods = ptr::null();
    let state = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        let Some((storage, history)) = OPENING.with(|o| o.borrow_mut().take()) else {
            return ffi::SQLITE_CANTOPEN;
        };
        match PageFile::open(storage, history) {
            Ok(p) => FileState::Pages(p),
            Err(e) => {
                log_error("open", &e);
                return ffi::SQLITE_CANTOPEN;
            }
        }
    } else {
        FileState::Memory(Vec::new())
    };
    (*f).state = Box::into_raw(Box::new(state));
    (*f).base.pMethods = &IO_METHODS;
    if !out_flags.is_null() {
        *out_flags = flags;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let f = file as *mut File;
    if !(*f).state.is_null() {
        drop(Box::from_raw((*f).state));
        (*f).state = ptr::null_mut();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let out = std::slice::from_raw_parts_mut(buf as *mut u8, amt.max(0) as usize);
    let offset = offset.max(0) as u64;
    match state(file) {
        FileState::Pages(p) => match p.read(out, offset) {
            Ok(true) => ffi::SQLITE_OK,
            Ok(false) => ffi::SQLITE_IOERR_SHORT_READ,
            Err(e) => {
                log_error("read", &e);
                failure_code(&e, ffi::SQLITE_IOERR_READ)
            }
        },
        FileState::Memory(v) => {
            out.fill(0);
            let start = (offset as usize).min(v.len());
            let end = (offset as usize + out.len()).min(v.len());
            out[..end - start].copy_from_slice(&v[start..end]);
            if end - start < out.len() {
                ffi::SQLITE_IOERR_SHORT_READ
            } else {
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let data = std::slice::from_raw_parts(buf as *const u8, amt.max(0) as usize);
    let offset = offset.max(0) as u64;
    match state(file) {
        FileState::Pages(p) => match p.write(data, offset) {
            Ok(()) => ffi::SQLITE_OK,
            Err(e) => {
                log_error("write", &e);
                failure_code(&e, ffi::SQLITE_IOERR_WRITE)
            }
        },
        FileState::Memory(v) => {
            let end = offset as usize + data.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(data);
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let size = size.max(0) as u64;
    match state(file) {
        FileState::Pages(p) => match p.truncate(size) {
            Ok(()) => ffi::SQLITE_OK,
            Err(e) => {
                log_error("truncate", &e);
                failure_code(&e, ffi::SQLITE_IOERR_TRUNCATE)
            }
        },
        FileState::Memory(v) => {
            v.truncate(size as usize);
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_sync(_file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // Durability belongs to the turn batch and the group committer, not to SQLite.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    *out = match state(file) {
        FileState::Pages(p) => p.size as ffi::sqlite3_int64,
        FileState::Memory(v) => v.len() as ffi::sqlite3_int64,
    };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_lock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    // One connection per object on one thread: there is nobody to exclude.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_unlock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(
    _file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    *out = 0;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(
    _file: *mut ffi::sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    CHUNK as c_int
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE | ffi::SQLITE_IOCAP_SAFE_APPEND
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    // No journal or WAL ever exists, so there is never a hot journal to recover.
    *out = 0;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    let src = if name.is_null() {
        &[][..]
    } else {
        CStr::from_ptr(name).to_bytes()
    };
    let n = src.len().min((n_out.max(1) - 1) as usize);
    ptr::copy_nonoverlapping(src.as_ptr() as *const c_char, out, n);
    *out.add(n) = 0;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_dl_open(_vfs: *mut ffi::sqlite3_vfs, _name: *const c_char) -> *mut c_void {
    // Extensions are never loaded.
    ptr::null_mut()
}

unsafe extern "C" fn x_dl_error(_vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    let msg = b"loading extensions is not supported\0";
    let k = msg.len().min(n.max(0) as usize);
    if k > 0 {
        ptr::copy_nonoverlapping(msg.as_ptr() as *const c_char, out, k);
        *out.add(k - 1) = 0;
    }
}

unsafe extern "C" fn x_dl_sym(
    _vfs: *mut ffi::sqlite3_vfs,
    _handle: *mut c_void,
    _sym: *const c_char,
) -> Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)> {
    None
}

unsafe extern "C" fn x_dl_close(_vfs: *mut ffi::sqlite3_vfs, _handle: *mut c_void) {}

unsafe fn default_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    (*vfs).pAppData as *mut ffi::sqlite3_vfs
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let d = default_vfs(vfs);
    match (*d).xRandomness {
        Some(f) => f(d, n, out),
        None => 0,
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let d = default_vfs(vfs);
    match (*d).xSleep {
        Some(f) => f(d, micros),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let d = default_vfs(vfs);
    match (*d).xCurrentTime {
        Some(f) => f(d, out),
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    let d = default_vfs(vfs);
    match (*d).xCurrentTimeInt64 {
        Some(f) => f(d, out),
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _n: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn a_record_longer_than_a_chunk_is_corrupt_not_a_panic() {
        use super::{chunk_key, PageFile, CHUNK};
        use cinder_storage::{Section, Store, StoreConfig};
        // Too long as stored, and too long once its zero run is put back.
        let mut zero_run = vec![1u8, 0, 0, 0xff, 0xff];
        zero_run.extend(std::iter::repeat_n(7u8, 10));
        for record in [vec![0u8; 1 + CHUNK as usize + 900], zero_run] {
            assert!(decode(&record).is_none());
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            let storage = store.object([5; 32]);
            storage.raw_put(Section::Sql, &chunk_key(0), bytes::Bytes::from(record));
            let mut file = PageFile::open(storage, None).unwrap();
            file.size = CHUNK;
            let mut buf = vec![0u8; 100];
            assert!(matches!(
                file.read(&mut buf, 0),
                Err(cinder_storage::StorageError::Corrupt(_))
            ));
            // A partial write reads the chunk first: it used to copy the whole record into a
            // chunk-sized buffer.
            assert!(matches!(
                file.write(&[9u8; 100], 0),
                Err(cinder_storage::StorageError::Corrupt(_))
            ));
            assert_eq!(
                super::failure_code(
                    &cinder_storage::StorageError::Corrupt(String::new()),
                    libsqlite3_sys::SQLITE_IOERR_READ
                ),
                libsqlite3_sys::SQLITE_CORRUPT
            );
        }
    }

    #[test]
    fn pages_round_trip_through_their_stored_form() {
        let mut sparse = vec![0u8; 4096];
        sparse[..8].copy_from_slice(b"\x0d\0\0\0\x01\x0f\xf0\0");
        sparse[4080..].fill(7);
        let dense: Vec<u8> = (0..4096).map(|i| (i % 251 + 1) as u8).collect();
        for page in [vec![0u8; 4096], sparse.clone(), dense.clone()] {
            assert_eq!(decode(&encode(&page)).unwrap(), page);
        }
        assert!(encode(&sparse).len() < 40);
        assert_eq!(encode(&dense).len(), 4097);
        assert!(decode(&[1, 0xff, 0xff, 0, 0]).is_none());
        assert!(decode(&[9]).is_none());
        let mut odd = vec![1u8; 4096];
        odd[13..2050].fill(0);
        odd[3000..3001].fill(0);
        assert_eq!(super::longest_zero_run(&odd), (13, 2037));
        assert_eq!(decode(&encode(&odd)).unwrap(), odd);
    }

    #[test]
    fn block_scan_finds_the_longest_run_a_byte_scan_finds() {
        fn naive(p: &[u8]) -> (usize, usize) {
            let (mut best, mut i) = ((0, 0), 0);
            while i < p.len() {
                let start = i;
                while i < p.len() && p[i] == 0 {
                    i += 1;
                }
                if i - start > best.1 {
                    best = (start, i - start);
                }
                i += 1;
            }
            best
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let len = [4096, 4095, 13, 100][round % 4];
            let mut p = vec![0u8; len];
            // Dense stretches separated by zero gaps of random lengths and places.
            for _ in 0..(round % 7) + 1 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let start = (seed as usize) % len;
                let n = ((seed >> 20) as usize) % (len / 2 + 1);
                for b in p.iter_mut().skip(start).take(n) {
                    *b = (seed >> 40) as u8 | 1;
                }
            }
            let want = naive(&p);
            let got = super::longest_zero_run(&p);
            if want.1 >= 128 {
                assert_eq!(got, want, "round {round}");
            } else {
                assert!(got.1 <= want.1, "round {round}");
            }
            assert_eq!(decode(&encode(&p)).unwrap(), p);
        }
    }
}
