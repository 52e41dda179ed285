//! [`D1Service`]: what the JS binding (`env.DB`) and the CLI call. Cheap to clone, `Send +
//! Sync`; every call is one event of the database's object.

use std::sync::{Arc, Mutex};

use cinder_core::{Namespace, ObjectError, Runtime, Stub};

use crate::error::{D1Error, INVALID_SESSION};
use crate::object::{Op, Reply, NAMESPACE};
use crate::result::{D1Result, ExecResult, Statement};

/// One D1 database.
#[derive(Clone, Debug)]
pub struct D1Service {
    stub: Stub,
}

/// `withSession()` constraints.
pub const FIRST_PRIMARY: &str = "first-primary";
/// See [`FIRST_PRIMARY`].
pub const FIRST_UNCONSTRAINED: &str = "first-unconstrained";

fn unavailable(e: ObjectError) -> D1Error {
    D1Error::Query(match e {
        ObjectError::Remote(a) => a.message,
        other => other.to_string(),
    })
}

impl D1Service {
    /// The database `key` (the binding's `database_id`, else its name) in the D1 namespace
    /// `ns` (registered with [`crate::namespace_spec`]).
    pub fn new(ns: &Namespace, key: &str) -> D1Service {
        D1Service {
            stub: ns.get_by_name(key),
        }
    }

    /// [`D1Service::new`] on the runtime's D1 namespace.
    pub fn from_runtime(rt: &Runtime, key: &str) -> Result<D1Service, D1Error> {
        let ns = rt.namespace(NAMESPACE).ok_or_else(|| {
            D1Error::Query(format!(
                "the D1 namespace {NAMESPACE:?} is not registered with the runtime"
            ))
        })?;
        Ok(D1Service::new(&ns, key))
    }

    async fn call(&self, op: Op) -> Result<Reply, D1Error> {
        let reply = self.stub.call(Box::new(op)).await.map_err(unavailable)?;
        reply
            .downcast::<Reply>()
            .map(|r| *r)
            .map_err(|_| D1Error::Query("the D1 object answered with something else".into()))
    }

    async fn run_batch(
        &self,
        statements: Vec<Statement>,
        bookmark: bool,
    ) -> Result<(Vec<D1Result>, Option<String>), D1Error> {
        match self
            .call(Op::Batch {
                statements,
                bookmark,
            })
            .await?
        {
            Reply::Batch(r) => r,
            _ => Err(D1Error::Query("unexpected reply".into())),
        }
    }

    /// One statement, as `all()`, `run()`, `raw()` and `first()` send it (shape the answer
    /// with [`D1Result::to_json`], [`D1Result::raw`], [`D1Result::first`]).
    pub async fn query(&self, statement: Statement) -> Result<D1Result, D1Error> {
        let (mut results, _) = self.run_batch(vec![statement], false).await?;
        results
            .pop()
            .ok_or_else(|| D1Error::Query("no result".into()))
    }

    /// `batch([...])`: every statement in one transaction; the first failure rolls all of
    /// them back and is the error.
    pub async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<D1Result>, D1Error> {
        Ok(self.run_batch(statements, false).await?.0)
    }

    /// `exec(sql)`: every statement of the text (no bindings) in one transaction.
    pub async fn exec(&self, sql: &str) -> Result<ExecResult, D1Error> {
        match self.call(Op::Exec(sql.to_owned())).await? {
            Reply::Exec(r) => r,
            _ => Err(D1Error::Query("unexpected reply".into())),
        }
    }

    /// `dump()`: the database as a SQLite file.
    pub async fn dump(&self) -> Result<Vec<u8>, D1Error> {
        match self.call(Op::Dump).await? {
            Reply::Dump(r) => r,
            _ => Err(D1Error::Dump("unexpected reply".into())),
        }
    }

    /// `withSession(constraintOrBookmark)`: `None` or blank means `first-unconstrained`.
    pub fn with_session(&self, constraint_or_bookmark: Option<&str>) -> D1Session {
        let c = constraint_or_bookmark
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or(FIRST_UNCONSTRAINED);
        D1Session {
            db: self.clone(),
            state: Arc::new(Mutex::new(c.to_owned())),
        }
    }
}

/// A D1 session (`withSession()`): queries see a state at least as fresh as the session's
/// latest bookmark. With one primary and no replicas that always holds; the session still
/// tracks and returns bookmarks as D1 does. Cheap to clone (clones share the bookmark).
#[derive(Clone, Debug)]
pub struct D1Session {
    db: D1Service,
    /// The constraint, or the latest bookmark seen.
    state: Arc<Mutex<String>>,
}

impl D1Session {
    /// Validates a raw constraint or bookmark the way workerd's binding does (for bindings
    /// that construct sessions from JS values directly).
    pub fn check(constraint_or_bookmark: &str) -> Result<(), D1Error> {
        if constraint_or_bookmark.trim().is_empty() {
            return Err(D1Error::Session(INVALID_SESSION.into()));
        }
        Ok(())
    }

    fn update(&self, bookmark: Option<String>) {
        let Some(b) = bookmark else { return };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let is_constraint = *s == FIRST_PRIMARY || *s == FIRST_UNCONSTRAINED;
        // Only ever move forward: concurrent queries of a session may answer out of order.
        if is_constraint || *s < b {
            *s = b;
        }
    }

    /// `session.getBookmark()`: the latest bookmark, `None` before the first query of a
    /// session opened with a constraint.
    pub fn get_bookmark(&self) -> Option<String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (*s != FIRST_PRIMARY && *s != FIRST_UNCONSTRAINED).then(|| s.clone())
    }

    /// `session.prepare(...).all()` etc.
    pub async fn query(&self, statement: Statement) -> Result<D1Result, D1Error> {
        let (mut results, bookmark) = self.db.run_batch(vec![statement], true).await?;
        self.update(bookmark);
        results
            .pop()
            .ok_or_else(|| D1Error::Query("no result".into()))
    }

    /// `session.batch([...])`.
    pub async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<D1Result>, D1Error> {
        let (results, bookmark) = self.db.run_batch(statements, true).await?;
        self.update(bookmark);
        Ok(results)
    }
}
