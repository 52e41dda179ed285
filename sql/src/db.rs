//! One object's SQLite database: the connection, its settings, `exec`, `transactionSync`.

use std::cell::{Cell, Ref, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use cinder_storage::{Commit, ObjectStorage, StorageError};
use libsqlite3_sys as ffi;
use rusqlite::{Connection, OpenFlags};

use crate::auth::AuthState;
use crate::cursor::{Cursor, LiveState, SqlValue, CANCELED_CLOSED, CANCELED_DELETED};
use crate::error::SqlError;
use crate::history::{self, History, SharedHistory};
use crate::stmt::{self, SlotRef, Stmt, StmtCache};
use crate::vfs;

/// Per-database settings.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// Most page-cache memory one connection keeps, in KiB (SQLite's `cache_size = -N`).
    /// Small on purpose: a page missing from it is one read from fjall's block cache.
    pub cache_kib: u32,
    /// How long point-in-time recovery keeps page history ([`crate::history`]); `None` keeps
    /// none (bookmark calls then fail). Default: 30 days, as on Cloudflare.
    pub history_retention_ms: Option<u64>,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            cache_kib: 256,
            history_retention_ms: Some(history::DEFAULT_RETENTION_MS),
        }
    }
}

/// A reasonable node-wide budget for all SQLite memory (page caches, schemas, statements).
pub const DEFAULT_MEMORY_BUDGET: i64 = 64 << 20;

/// Puts all SQLite memory of the process under one soft limit: past it, SQLite recycles
/// page-cache pages instead of growing. Returns the previous limit.
///
/// The limit needs SQLite's global memory accounting, which costs a process-wide mutex on
/// every SQLite allocation (about 100 per small transaction), so it is off unless this is
/// called **before the first database opens**; called later, the limit is recorded but not
/// enforced. Without it, each connection's page cache is bounded by [`SqlConfig::cache_kib`]
/// and an idle object gives its cache back with [`SqlStorage::release_memory`].
pub fn set_memory_budget(bytes: i64) -> i64 {
    // Initializes SQLite with its default (accounting on) unless the VFS already did.
    unsafe { ffi::sqlite3_soft_heap_limit64(bytes) }
}

/// Bytes of memory SQLite holds now, process-wide; 0 unless accounting is on (see
/// [`set_memory_budget`]).
pub fn memory_used() -> i64 {
    unsafe { ffi::sqlite3_memory_used() }
}

/// The SQL storage of one SQLite-backed object.
///
/// Owns the object's single connection; lives on the object's executor thread (`!Send`: the
/// write hook is a plain closure over the object's context, and cursors share the connection
/// state). Every write lands in the object's turn batch ([`ObjectStorage`]); the owner ends
/// the turn with [`SqlStorage::flush`] (or `ObjectStorage::flush`) between calls, never inside
/// [`SqlStorage::transaction_sync`]. If a flushed batch fails to become durable, the object
/// must be reset: drop this value (its page cache may hold pages fjall never got) and open
/// again. Dropping it stops every unfinished cursor ([`Cursor`]).
pub struct SqlStorage {
    pub(crate) inner: Rc<Inner>,
}

/// The connection and its state, shared (weakly) with streaming cursors.
pub(crate) struct Inner {
    /// Streaming cursors that may still hold a statement of this connection.
    live: RefCell<Vec<Weak<RefCell<LiveState>>>>,
    // Declared before `conn`: cached statements are finalized before the connection closes.
    pub(crate) stmts: RefCell<StmtCache>,
    pub(crate) storage: ObjectStorage,
    cfg: SqlConfig,
    conn: RefCell<Connection>,
    pub(crate) auth: Arc<AuthState>,
    depth: Cell<u32>,
    pub(crate) kv_ready: Cell<bool>,
    on_write: RefCell<Option<Box<dyn Fn()>>>,
    history: Option<SharedHistory>,
    /// `database_size` as last computed; `None` once anything may have changed it (a
    /// statement that writes, a KV write, a transaction's end).
    size: Cell<Option<u64>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Live statements first: a connection with unfinalized statements cannot close.
        self.cancel_live(CANCELED_CLOSED);
        self.stmts.get_mut().clear();
    }
}

impl Inner {
    pub(crate) fn handle(&self) -> *mut ffi::sqlite3 {
        // SAFETY: only the pointer is taken; callers use it on this thread while `self` lives.
        unsafe { self.conn.borrow().handle() }
    }

    /// Steps a user statement (the authorizer in user mode: a step may re-prepare it).
    pub(crate) unsafe fn step_user(&self, stmt: &Stmt) -> std::ffi::c_int {
        let _user = self.auth.enter_user();
        ffi::sqlite3_step(stmt.0)
    }

    pub(crate) fn return_to_cache(&self, key: SlotRef, stmt: Stmt) {
        // SAFETY: the statement belongs to this connection.
        unsafe { stmt::rewind(&stmt) };
        match self.stmts.try_borrow_mut() {
            Ok(mut cache) => cache.put(key, stmt),
            Err(_) => drop(stmt),
        }
    }

    /// Something may have changed the database's size (see `Inner::size`).
    pub(crate) fn size_may_change(&self) {
        self.size.set(None);
    }

    pub(crate) fn register_live(&self, state: &Rc<RefCell<LiveState>>) {
        let mut live = self.live.borrow_mut();
        live.retain(|w| w.strong_count() > 0);
        live.push(Rc::downgrade(state));
    }

    /// Stops every unfinished streaming cursor; their next read fails with `why`.
    fn cancel_live(&self, why: &'static str) {
        let live = std::mem::take(&mut *self.live.borrow_mut());
        for state in live.iter().filter_map(Weak::upgrade) {
            let Ok(mut s) = state.try_borrow_mut() else {
                continue;
            };
            if s.query.is_some() {
                s.finish();
                s.canceled = Some(why);
            }
        }
    }

    fn conn(&self) -> Ref<'_, Connection> {
        self.conn.borrow()
    }

    /// End of a call that may have written: ends the history version (unless a
    /// `transactionSync` is still open) and tells the owner about pending writes.
    fn wrote(&self) {
        if self.depth.get() == 0 {
            if let Some(h) = &self.history {
                h.borrow_mut().end_call();
            }
        }
        if self.storage.has_pending() {
            if let Some(hook) = &*self.on_write.borrow() {
                hook();
            }
        }
    }

    /// Runs engine SQL with the authorizer in trusted mode.
    fn trusted(&self, sql: &str) -> Result<(), SqlError> {
        self.conn().execute_batch(sql).map_err(sqlite_err)
    }
}

impl SqlStorage {
    /// Opens (creating lazily: nothing is written until the first write) the database of the
    /// object behind `storage`.
    pub fn open(storage: ObjectStorage, cfg: SqlConfig) -> Result<Self, SqlError> {
        let auth = Arc::new(AuthState::default());
        let history = match cfg.history_retention_ms {
            Some(ms) => {
                let mut h = History::load(storage.clone(), ms)?;
                h.apply_restore(vfs::page_key, vfs::SIZE_RECORD)?;
                Some(Rc::new(RefCell::new(h)))
            }
            None => None,
        };
        let conn = connect(&storage, &cfg, &auth, history.clone())?;
        let me = Self {
            inner: Rc::new(Inner {
                live: RefCell::new(Vec::new()),
                stmts: RefCell::new(StmtCache::default()),
                storage,
                cfg,
                conn: RefCell::new(conn),
                auth,
                depth: Cell::new(0),
                kv_ready: Cell::new(false),
                on_write: RefCell::new(None),
                history,
                size: Cell::new(None),
            }),
        };
        me.refresh_kv_ready()?;
        Ok(me)
    }

    /// Calls `hook` after every call that left writes in the turn batch. The actor runtime
    /// passes `Storage::note_raw_write` here, so SQL writes join the turn's flush and hold the
    /// output gate exactly as KV writes do.
    pub fn set_on_write(&self, hook: impl Fn() + 'static) {
        *self.inner.on_write.borrow_mut() = Some(Box::new(hook));
    }

    pub(crate) fn wrote(&self) {
        self.inner.wrote();
    }

    /// The object's storage (KV sections, alarms, the turn batch).
    pub fn storage(&self) -> &ObjectStorage {
        &self.inner.storage
    }

    pub(crate) fn conn(&self) -> Ref<'_, Connection> {
        self.inner.conn()
    }

    /// `sql.exec(query, ...bindings)`: runs every statement of `query`, binds `bindings` to the
    /// last one and returns a cursor over its rows (streaming for a read-only statement, see
    /// [`Cursor`]). Refusals carry Cloudflare's texts ([`crate::error`]).
    pub fn exec(&self, query: &str, bindings: &[SqlValue]) -> Result<Cursor, SqlError> {
        let out = {
            let _user = self.inner.auth.enter_user();
            // SAFETY: the connection is open (owned by `inner`) and used on this thread only.
            unsafe { stmt::run(&self.inner, query, bindings) }
        };
        self.wrote();
        out
    }

    /// `sql.databaseSize`: bytes in use (pages minus free pages, times the page size).
    pub fn database_size(&self) -> Result<u64, SqlError> {
        if let Some(n) = self.inner.size.get() {
            return Ok(n);
        }
        let conn = self.conn();
        // SQLite compiles a PRAGMA anew on every run (they are run-once statements), so the
        // answer is kept until a write may change it: D1 asks twice per statement.
        let count = |sql: &str| -> Result<i64, SqlError> {
            conn.prepare_cached(sql)
                .and_then(|mut st| st.query_row([], |r| r.get(0)))
                .map_err(sqlite_err)
        };
        let pages = count("PRAGMA page_count")? - count("PRAGMA freelist_count")?;
        let size = pages.max(0) as u64 * vfs::CHUNK;
        self.inner.size.set(Some(size));
        Ok(size)
    }

    /// `storage.transactionSync(fn)`: runs `f` in a (nestable) savepoint; commits if it returns
    /// `Ok`, rolls back if it returns `Err` or panics.
    pub fn transaction_sync<T, E: From<SqlError>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let depth = self.inner.depth.get();
        self.trusted(&format!("SAVEPOINT _cf_sync_savepoint_{depth}"))?;
        self.inner.depth.set(depth + 1);
        let mut guard = Rollback {
            db: self,
            depth,
            armed: true,
        };
        let out = f();
        match out {
            Ok(v) => {
                guard.armed = false;
                self.inner.depth.set(depth);
                if let Err(e) = self.trusted(&format!("RELEASE _cf_sync_savepoint_{depth}")) {
                    self.rollback_to(depth);
                    return Err(e.into());
                }
                self.wrote();
                Ok(v)
            }
            Err(e) => Err(e), // the guard rolls back
        }
    }

    fn rollback_to(&self, depth: u32) {
        self.inner.depth.set(depth);
        self.inner.size_may_change();
        let r = self
            .trusted(&format!(
                "ROLLBACK TO _cf_sync_savepoint_{depth}; RELEASE _cf_sync_savepoint_{depth};"
            ))
            .and_then(|()| self.refresh_kv_ready());
        if let Err(e) = r {
            tracing::error!(error = %e, "rolling back transactionSync failed");
        }
        self.wrote();
    }

    /// `PRAGMA integrity_check` (refused to user SQL): `"ok"` or SQLite's findings, one a line.
    pub fn integrity_check(&self) -> Result<String, SqlError> {
        let conn = self.conn();
        let mut st = conn.prepare("PRAGMA integrity_check").map_err(sqlite_err)?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sqlite_err)?;
        let lines = rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_err)?;
        Ok(lines.join("\n"))
    }

    /// `total_changes()`: rows changed by this connection since it opened.
    pub fn total_changes(&self) -> i64 {
        unsafe { ffi::sqlite3_total_changes64(self.conn().handle()) }
    }

    /// `last_insert_rowid()` of this connection.
    pub fn last_insert_rowid(&self) -> i64 {
        self.conn().last_insert_rowid()
    }

    /// The database as a SQLite file (what D1's `dump()` returns). Between calls every
    /// committed transaction is in the VFS, so the bytes are a consistent database.
    pub fn database_file(&self) -> Result<Vec<u8>, SqlError> {
        if self.in_transaction() {
            return Err(SqlError::Api(
                "Cannot dump the database inside a transaction.",
            ));
        }
        Ok(vfs::read_file(&self.inner.storage)?)
    }

    /// Whether a `transaction_sync` is running.
    pub fn in_transaction(&self) -> bool {
        self.inner.depth.get() > 0
    }

    /// Ends the turn: hands the turn batch (SQL pages and every other write of the object) to
    /// the group committer. `None` if nothing was written.
    pub fn flush(&self) -> Result<Option<Commit>, SqlError> {
        if self.in_transaction() || !self.conn().is_autocommit() {
            return Err(SqlError::Api(
                "Cannot end a turn while a SQL transaction is open",
            ));
        }
        Ok(self.inner.storage.flush())
    }

    /// Frees this connection's unused page-cache memory (for an object going idle).
    pub fn release_memory(&self) {
        unsafe { ffi::sqlite3_db_release_memory(self.conn().handle()) };
    }

    /// `deleteAll()` of a SQLite-backed object: the whole database (tables and KV) goes, in the
    /// turn batch, and a fresh empty database is opened. Unfinished cursors are stopped
    /// ([`crate::cursor::CANCELED_DELETED`]).
    pub fn delete_all(&self) -> Result<(), SqlError> {
        if self.in_transaction() {
            return Err(StorageError::DeleteAllInTransaction.into());
        }
        let inner = &self.inner;
        inner.cancel_live(CANCELED_DELETED);
        inner.size_may_change();
        let mut conn = inner
            .conn
            .try_borrow_mut()
            .map_err(|_| SqlError::Api("Cannot call deleteAll() while a query is running"))?;
        // Close first so SQLite holds no pages of the old database.
        inner.stmts.borrow_mut().clear();
        let old = std::mem::replace(
            &mut *conn,
            Connection::open_in_memory().map_err(sqlite_err)?,
        );
        drop(old);
        vfs::erase(&inner.storage, inner.history.as_ref())?;
        *conn = connect(
            &inner.storage,
            &inner.cfg,
            &inner.auth,
            inner.history.clone(),
        )?;
        drop(conn);
        inner.kv_ready.set(false);
        self.wrote();
        Ok(())
    }

    /// Runs engine SQL with the authorizer in trusted mode.
    pub(crate) fn trusted(&self, sql: &str) -> Result<(), SqlError> {
        self.inner.trusted(sql)
    }

    fn with_history<T>(
        &self,
        f: impl FnOnce(&mut History) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let h = self
            .inner
            .history
            .as_ref()
            .ok_or(SqlError::Api(history::DISABLED))?;
        let out = f(&mut h.borrow_mut());
        // Handing out a version may extend the persisted lease: a write of the turn.
        self.wrote();
        out
    }

    /// `storage.getCurrentBookmark()`: a bookmark naming the database as it is now (later
    /// changes sort after it).
    pub fn current_bookmark(&self) -> Result<String, SqlError> {
        self.with_history(|h| Ok(h.current_bookmark()))
    }

    /// `storage.getBookmarkForTime(t)`: the bookmark of the state at `t_ms` (ms since the
    /// epoch), within the retention period.
    pub fn bookmark_for_time(&self, t_ms: i64) -> Result<String, SqlError> {
        self.with_history(|h| h.bookmark_for_time(t_ms))
    }

    /// `storage.onNextSessionRestoreBookmark(b)`: the next [`SqlStorage::open`] of this
    /// database (after this turn is flushed and the object restarts) rolls it back to `b`.
    /// Returns the bookmark that undoes the restore.
    pub fn restore_on_next_open(&self, bookmark: &str) -> Result<String, SqlError> {
        if self.in_transaction() {
            return Err(SqlError::Api(
                "Cannot schedule a restore inside a transaction.",
            ));
        }
        self.with_history(|h| h.restore_on_next_open(bookmark))
    }

    pub(crate) fn refresh_kv_ready(&self) -> Result<(), SqlError> {
        let exists: bool = self
            .conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_cf_KV')",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite_err)?;
        self.inner.kv_ready.set(exists);
        Ok(())
    }
}

struct Rollback<'a> {
    db: &'a SqlStorage,
    depth: u32,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.db.rollback_to(self.depth);
        }
    }
}

pub(crate) fn sqlite_err(e: rusqlite::Error) -> SqlError {
    SqlError::Sqlite(e.to_string())
}

fn connect(
    storage: &ObjectStorage,
    cfg: &SqlConfig,
    auth: &Arc<AuthState>,
    history: Option<SharedHistory>,
) -> Result<Connection, SqlError> {
    vfs::register()
        .map_err(|rc| SqlError::Sqlite(format!("registering the SQL VFS failed: {rc}")))?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = vfs::open_with(storage.clone(), history, || {
        Connection::open_with_flags_and_vfs("cinder-sql", flags, vfs::VFS_NAME)
    })
    .map_err(sqlite_err)?;
    unsafe {
        let db = conn.handle();
        // No lookaside arena: it is ~48 KiB per connection held even while idle, most of what
        // an idle database would cost; the allocator serves those small allocations instead.
        ffi::sqlite3_db_config(
            db,
            ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        );
        // Limits from sqlite.org/security.html, as workerd sets them, except the length.
        for (limit, value) in [
            // 2 MB per string, BLOB and row: Cloudflare's documented limit (workerd sets 4 MiB).
            (ffi::SQLITE_LIMIT_LENGTH, 2_000_000),
            (ffi::SQLITE_LIMIT_SQL_LENGTH, 100_000),
            (ffi::SQLITE_LIMIT_COLUMN, 100),
            (ffi::SQLITE_LIMIT_EXPR_DEPTH, 100),
            (ffi::SQLITE_LIMIT_COMPOUND_SELECT, 5),
            (ffi::SQLITE_LIMIT_VDBE_OP, 25_000),
            (ffi::SQLITE_LIMIT_FUNCTION_ARG, 127),
            (ffi::SQLITE_LIMIT_ATTACHED, 0),
            (ffi::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 50),
            (ffi::SQLITE_LIMIT_VARIABLE_NUMBER, 100),
            (ffi::SQLITE_LIMIT_TRIGGER_DEPTH, 10),
            (ffi::SQLITE_LIMIT_WORKER_THREADS, 0),
        ] {
            ffi::sqlite3_limit(db, limit, value);
        }
    }
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(sqlite_err)?;
    // page_size before anything exists (a no-op on an existing database); then no journal or
    // WAL file, ever (see the vfs module doc), and durability left to the turn batch.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {chunk};
         PRAGMA journal_mode = MEMORY;
         PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA synchronous = OFF;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{cache};
         PRAGMA foreign_keys = ON;",
        chunk = vfs::CHUNK,
        cache = cfg.cache_kib.max(16),
    ))
    .map_err(sqlite_err)?;
    conn.authorizer(Some(auth.callback()));
    Ok(conn)
}
