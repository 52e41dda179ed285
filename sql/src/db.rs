//! One object's SQLite database: the connection, its settings, `exec`, `transactionSync`.

use std::cell::{Cell, Ref, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cinder_storage::{Commit, ObjectStorage, StorageError};
use libsqlite3_sys as ffi;
use rusqlite::{Connection, OpenFlags};

use crate::auth::AuthState;
use crate::cursor::{Cursor, SqlValue};
use crate::error::SqlError;
use crate::stmt::{self, StmtCache};
use crate::vfs;

/// Per-database settings.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// Most page-cache memory one connection keeps, in KiB (SQLite's `cache_size = -N`).
    /// Small on purpose: a page missing from it is one read from fjall's block cache.
    pub cache_kib: u32,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self { cache_kib: 256 }
    }
}

/// Default node-wide budget for all SQLite memory (page caches, schemas, statements).
pub const DEFAULT_MEMORY_BUDGET: i64 = 64 << 20;

static BUDGET_SET: AtomicBool = AtomicBool::new(false);

/// Sets the node-wide soft limit on SQLite's heap (all objects' page caches together). Past it,
/// SQLite recycles cache pages instead of growing. Returns the previous limit.
pub fn set_memory_budget(bytes: i64) -> i64 {
    BUDGET_SET.store(true, Ordering::Relaxed);
    unsafe { ffi::sqlite3_soft_heap_limit64(bytes) }
}

/// Bytes of memory SQLite holds now, process-wide.
pub fn memory_used() -> i64 {
    unsafe { ffi::sqlite3_memory_used() }
}

/// The SQL storage of one SQLite-backed object.
///
/// Owns the object's single connection; lives on the object's executor thread (`!Send`: the
/// write hook is a plain closure over the object's context). Every write lands in the object's turn batch ([`ObjectStorage`]); the owner ends
/// the turn with [`SqlStorage::flush`] (or `ObjectStorage::flush`) between calls, never inside
/// [`SqlStorage::transaction_sync`]. If a flushed batch fails to become durable, the object
/// must be reset: drop this value (its page cache may hold pages fjall never got) and open
/// again.
pub struct SqlStorage {
    // Declared before `conn`: cached statements are finalized before the connection closes.
    stmts: RefCell<StmtCache>,
    storage: ObjectStorage,
    cfg: SqlConfig,
    conn: RefCell<Connection>,
    pub(crate) auth: Arc<AuthState>,
    depth: Cell<u32>,
    pub(crate) kv_ready: Cell<bool>,
    on_write: RefCell<Option<Box<dyn Fn()>>>,
}

impl SqlStorage {
    /// Opens (creating lazily: nothing is written until the first write) the database of the
    /// object behind `storage`.
    pub fn open(storage: ObjectStorage, cfg: SqlConfig) -> Result<Self, SqlError> {
        let auth = Arc::new(AuthState::default());
        let conn = connect(&storage, &cfg, &auth)?;
        let me = Self {
            stmts: RefCell::new(StmtCache::default()),
            storage,
            cfg,
            conn: RefCell::new(conn),
            auth,
            depth: Cell::new(0),
            kv_ready: Cell::new(false),
            on_write: RefCell::new(None),
        };
        me.refresh_kv_ready()?;
        Ok(me)
    }

    /// Calls `hook` after every call that left writes in the turn batch. The actor runtime
    /// passes `Storage::note_raw_write` here, so SQL writes join the turn's flush and hold the
    /// output gate exactly as KV writes do.
    pub fn set_on_write(&self, hook: impl Fn() + 'static) {
        *self.on_write.borrow_mut() = Some(Box::new(hook));
    }

    pub(crate) fn wrote(&self) {
        if self.storage.has_pending() {
            if let Some(hook) = &*self.on_write.borrow() {
                hook();
            }
        }
    }

    /// The object's storage (KV sections, alarms, the turn batch).
    pub fn storage(&self) -> &ObjectStorage {
        &self.storage
    }

    pub(crate) fn conn(&self) -> Ref<'_, Connection> {
        self.conn.borrow()
    }

    /// `sql.exec(query, ...bindings)`: runs every statement of `query`, binds `bindings` to the
    /// last one and returns its rows. Refusals carry Cloudflare's texts ([`crate::error`]).
    pub fn exec(&self, query: &str, bindings: &[SqlValue]) -> Result<Cursor, SqlError> {
        let out = {
            let conn = self.conn();
            let _user = self.auth.enter_user();
            // SAFETY: the handle belongs to `conn`, borrowed for the whole call, on this thread.
            unsafe { stmt::run(conn.handle(), &self.auth, &self.stmts, query, bindings) }
        };
        self.wrote();
        out
    }

    /// `sql.databaseSize`: bytes in use (pages minus free pages, times the page size).
    pub fn database_size(&self) -> Result<u64, SqlError> {
        let conn = self.conn();
        let n: i64 = conn
            .query_row(
                "SELECT ((SELECT * FROM pragma_page_count) - (SELECT * FROM pragma_freelist_count)) * (SELECT * FROM pragma_page_size)",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite_err)?;
        Ok(n.max(0) as u64)
    }

    /// `storage.transactionSync(fn)`: runs `f` in a (nestable) savepoint; commits if it returns
    /// `Ok`, rolls back if it returns `Err` or panics.
    pub fn transaction_sync<T, E: From<SqlError>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let depth = self.depth.get();
        self.trusted(&format!("SAVEPOINT _cf_sync_savepoint_{depth}"))?;
        self.depth.set(depth + 1);
        let mut guard = Rollback {
            db: self,
            depth,
            armed: true,
        };
        let out = f();
        match out {
            Ok(v) => {
                guard.armed = false;
                self.depth.set(depth);
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
        self.depth.set(depth);
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

    /// Whether a `transaction_sync` is running.
    pub fn in_transaction(&self) -> bool {
        self.depth.get() > 0
    }

    /// Ends the turn: hands the turn batch (SQL pages and every other write of the object) to
    /// the group committer. `None` if nothing was written.
    pub fn flush(&self) -> Result<Option<Commit>, SqlError> {
        if self.in_transaction() || !self.conn().is_autocommit() {
            return Err(SqlError::Api(
                "Cannot end a turn while a SQL transaction is open",
            ));
        }
        Ok(self.storage.flush())
    }

    /// Frees this connection's unused page-cache memory (for an object going idle).
    pub fn release_memory(&self) {
        unsafe { ffi::sqlite3_db_release_memory(self.conn().handle()) };
    }

    /// `deleteAll()` of a SQLite-backed object: the whole database (tables and KV) goes, in the
    /// turn batch, and a fresh empty database is opened.
    pub fn delete_all(&self) -> Result<(), SqlError> {
        if self.in_transaction() {
            return Err(StorageError::DeleteAllInTransaction.into());
        }
        let mut conn = self
            .conn
            .try_borrow_mut()
            .map_err(|_| SqlError::Api("Cannot call deleteAll() while a query is running"))?;
        // Close first so SQLite holds no pages of the old database.
        self.stmts.borrow_mut().clear();
        let old = std::mem::replace(
            &mut *conn,
            Connection::open_in_memory().map_err(sqlite_err)?,
        );
        drop(old);
        vfs::erase(&self.storage)?;
        *conn = connect(&self.storage, &self.cfg, &self.auth)?;
        drop(conn);
        self.kv_ready.set(false);
        self.wrote();
        Ok(())
    }

    /// Runs engine SQL with the authorizer in trusted mode.
    pub(crate) fn trusted(&self, sql: &str) -> Result<(), SqlError> {
        self.conn().execute_batch(sql).map_err(sqlite_err)
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
        self.kv_ready.set(exists);
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
) -> Result<Connection, SqlError> {
    vfs::register()
        .map_err(|rc| SqlError::Sqlite(format!("registering the SQL VFS failed: {rc}")))?;
    if !BUDGET_SET.swap(true, Ordering::Relaxed) {
        unsafe { ffi::sqlite3_soft_heap_limit64(DEFAULT_MEMORY_BUDGET) };
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = vfs::open_with(storage.clone(), || {
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
        // Limits from sqlite.org/security.html, as workerd sets them.
        for (limit, value) in [
            (ffi::SQLITE_LIMIT_LENGTH, 4 * 1024 * 1024),
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
