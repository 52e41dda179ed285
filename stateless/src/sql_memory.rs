//! How many SQLite databases of an executor thread keep their page caches.
//!
//! An object's SQLite connection holds the pages it read until told otherwise, so a thread with
//! thousands of idle SQLite-backed objects would hold thousands of page caches. Objects stay in
//! memory for minutes after their last event (core evicts them later), so waiting for eviction
//! is too late. Instead each thread keeps the page caches of its [`WARM_DATABASES`] most
//! recently used databases; past that, the least recently used one gives its cache back
//! (`sqlite3_db_release_memory`) and reads its pages from fjall's block cache when it is used
//! again. A busy object is used again before its turn comes and keeps its cache (the clock,
//! or second-chance, approximation of LRU: one flag per database, no reordering per use).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use cinder_sql::SqlStorage;

/// Databases per executor thread whose page caches stay warm.
pub(crate) const WARM_DATABASES: usize = 256;

/// An object's place in its thread's clock (kept beside its connection in `ObjectEntry`).
#[derive(Default)]
pub(crate) struct WarmMark {
    /// Used since the clock hand last passed it.
    referenced: Cell<bool>,
    /// In the clock now.
    queued: Cell<bool>,
}

struct Entry {
    db: Weak<SqlStorage>,
    mark: Weak<WarmMark>,
}

thread_local! {
    static CLOCK: RefCell<VecDeque<Entry>> = const { RefCell::new(VecDeque::new()) };
}

/// Records a use of `db`; may release the page cache of a database of this thread that was not
/// used for the longest while.
pub(crate) fn used(db: &Rc<SqlStorage>, mark: &Rc<WarmMark>) {
    mark.referenced.set(true);
    if mark.queued.replace(true) {
        return;
    }
    let evicted = CLOCK.with(|clock| {
        let mut clock = clock.borrow_mut();
        clock.push_back(Entry {
            db: Rc::downgrade(db),
            mark: Rc::downgrade(mark),
        });
        let mut evicted = Vec::new();
        // Each entry is looked at most twice (once to clear its flag): bounded work.
        let mut budget = 2 * clock.len();
        while clock.len() > WARM_DATABASES && budget > 0 {
            budget -= 1;
            let Some(entry) = clock.pop_front() else {
                break;
            };
            let (Some(db), Some(mark)) = (entry.db.upgrade(), entry.mark.upgrade()) else {
                continue; // the object is gone, its connection with it
            };
            if mark.referenced.replace(false) {
                clock.push_back(entry);
            } else {
                mark.queued.set(false);
                evicted.push(db);
            }
        }
        evicted
    });
    // Outside the borrow of the clock: releasing runs SQLite code.
    for db in evicted {
        db.release_memory();
    }
}
