//! Savepoints that stay open across calls: `transaction(async fn)` of a SQLite-backed object
//! (open while the closure awaits), and `transactionSync(fn)` driven by a host that cannot hand
//! the engine a closure (a JS callback runs between two calls).
//!
//! Crash safety rests on SQLite never writing a page of an unfinished transaction into the
//! turn batch, because the batch of a turn that ends while an asynchronous transaction is open
//! is flushed like any other (`crate::vfs` explains why the batch replaces a journal). SQLite
//! writes pages before the commit only when its page cache spills, so spilling is turned off
//! while an asynchronous savepoint is open (the transaction's dirty pages then stay in memory,
//! however large it grows) and back on when the last one ends.

use crate::db::SqlStorage;
use crate::error::SqlError;

/// Which API opened a savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavepointKind {
    /// `transactionSync(fn)`: opened and ended within one synchronous call of the host.
    Sync,
    /// `transaction(async fn)`: may stay open across awaits (the host keeps the object's
    /// input gate closed meanwhile).
    Async,
}

impl SavepointKind {
    fn name(self, level: u32) -> String {
        match self {
            // workerd's names (`sql.c++`, `actor-sqlite.c++`).
            SavepointKind::Sync => format!("_cf_sync_savepoint_{level}"),
            SavepointKind::Async => format!("_cf_savepoint_{level}"),
        }
    }
}

/// An open savepoint ([`SqlStorage::begin_savepoint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Savepoint {
    level: u32,
    kind: SavepointKind,
}

/// Ending a savepoint that was already ended (by its own end, or by the end of one it was
/// nested in).
pub const TRANSACTION_ENDED: &str = "This transaction has already ended.";
const NESTED_RUNNING: &str =
    "Cannot end a transaction while a transaction nested in it is still running.";
const ASYNC_IN_SYNC: &str =
    "Cannot start an asynchronous transaction() inside transactionSync(): its callback must finish synchronously.";

impl SqlStorage {
    /// Opens a savepoint nested in whatever is open. Refused for an asynchronous one inside a
    /// synchronous one (the synchronous one ends before the asynchronous one could).
    pub fn begin_savepoint(&self, kind: SavepointKind) -> Result<Savepoint, SqlError> {
        let inner = &self.inner;
        let open = inner.open_savepoints.borrow().clone();
        if kind == SavepointKind::Async && open.contains(&SavepointKind::Sync) {
            return Err(SqlError::Api(ASYNC_IN_SYNC));
        }
        let level = inner.depth.get();
        let first_async = kind == SavepointKind::Async && !open.contains(&SavepointKind::Async);
        if first_async {
            inner.trusted("PRAGMA cache_spill = OFF")?;
        }
        if let Err(e) = inner.trusted(&format!("SAVEPOINT {}", kind.name(level))) {
            if first_async {
                self.spill_back_on();
            }
            return Err(e);
        }
        inner.depth.set(level + 1);
        inner.open_savepoints.borrow_mut().push(kind);
        Ok(Savepoint { level, kind })
    }

    /// Commits `sp` into whatever encloses it (the database itself for the outermost one). If
    /// that fails (a deferred foreign key), `sp` is rolled back and the error returned. A
    /// savepoint with a nested one still open is rolled back with an error, as is the nested
    /// one.
    pub fn release_savepoint(&self, sp: Savepoint) -> Result<(), SqlError> {
        self.check_open(sp)?;
        if sp.level + 1 != self.inner.depth.get() {
            self.rollback_savepoint(sp)?;
            return Err(SqlError::Api(NESTED_RUNNING));
        }
        let released = self
            .inner
            .trusted(&format!("RELEASE {}", sp.kind.name(sp.level)));
        if let Err(e) = released {
            self.rollback_savepoint(sp)?;
            return Err(e);
        }
        self.ended(sp);
        Ok(())
    }

    /// Undoes everything since `sp` began (and ends every savepoint nested in it).
    pub fn rollback_savepoint(&self, sp: Savepoint) -> Result<(), SqlError> {
        self.check_open(sp)?;
        let name = sp.kind.name(sp.level);
        let undone = self
            .inner
            .trusted(&format!("ROLLBACK TO {name}; RELEASE {name};"));
        self.inner.size_may_change();
        self.ended(sp);
        undone?;
        self.refresh_kv_ready()
    }

    /// Whether `sp` is still open.
    pub fn savepoint_open(&self, sp: Savepoint) -> bool {
        self.check_open(sp).is_ok()
    }

    fn check_open(&self, sp: Savepoint) -> Result<(), SqlError> {
        let open = self.inner.open_savepoints.borrow();
        if open.get(sp.level as usize) == Some(&sp.kind) && sp.level < self.inner.depth.get() {
            Ok(())
        } else {
            Err(SqlError::Api(TRANSACTION_ENDED))
        }
    }

    /// `sp` and everything nested in it are gone.
    fn ended(&self, sp: Savepoint) {
        let inner = &self.inner;
        inner.depth.set(sp.level);
        let still_async = {
            let mut open = inner.open_savepoints.borrow_mut();
            open.truncate(sp.level as usize);
            open.contains(&SavepointKind::Async)
        };
        if sp.kind == SavepointKind::Async && !still_async {
            self.spill_back_on();
        }
        inner.wrote();
    }

    fn spill_back_on(&self) {
        if let Err(e) = self.inner.trusted("PRAGMA cache_spill = ON") {
            tracing::warn!(error = %e, "re-enabling SQLite cache spill failed");
        }
    }
}
