//! The internal Durable Object that owns one D1 database: single writer, on the actor core,
//! its SQL in cinder-sql over the object's own storage, so the gates and group commit apply
//! (a reply leaves only once what the query wrote is durable).

use std::sync::Arc;
use std::time::Instant;

use cinder_core::{
    Actor, ActorContext, ActorError, ActorFactory, IdFactory, NamespaceSpec, Payload, Request,
    Response, WriteOptions,
};
use cinder_sql::{is_blank, split_statements, SqlConfig, SqlError, SqlStorage};
use futures::future::LocalBoxFuture;

use crate::error::{D1Error, NO_STATEMENTS};
use crate::result::{D1Meta, D1Result, ExecResult, Statement, Timings};

/// Page cache of a D1 database's connection, in KiB.
const DATABASE_CACHE_KIB: u32 = 16 << 10;

/// The name the D1 namespace is registered under ([`namespace_spec`]).
pub const NAMESPACE: &str = "cinder:d1";

/// What a [`crate::D1Service`] asks of the object.
pub(crate) enum Op {
    /// Statements run in one transaction; with `bookmark`, the reply carries the bookmark
    /// of the state after them.
    Batch {
        statements: Vec<Statement>,
        bookmark: bool,
    },
    Exec(String),
    Dump,
}

/// The object's answer to an [`Op`].
pub(crate) enum Reply {
    Batch(Result<(Vec<D1Result>, Option<String>), D1Error>),
    Exec(Result<ExecResult, D1Error>),
    Dump(Result<Vec<u8>, D1Error>),
}

/// The D1 namespace to register at `Runtime::start` (internal: no worker binds it directly).
pub fn namespace_spec() -> NamespaceSpec {
    NamespaceSpec {
        name: NAMESPACE.into(),
        ids: IdFactory::from_unique_key(NAMESPACE),
        factory: factory(),
    }
}

fn factory() -> Arc<dyn ActorFactory> {
    Arc::new(|ctx: ActorContext| -> Result<Box<dyn Actor>, ActorError> {
        let storage = ctx.storage();
        let sql = SqlStorage::open(
            storage.raw().clone(),
            SqlConfig {
                // One database serves every request: keep far more of it in memory than a
                // Durable Object's small database gets.
                cache_kib: DATABASE_CACHE_KIB,
                ..SqlConfig::default()
            },
        )
        .map_err(|e| ActorError::new(e.to_string()))?;
        let hook = storage.clone();
        sql.set_on_write(move || hook.note_raw_write(WriteOptions::default()));
        // Opening may have written (a point-in-time restore): those writes join the first turn.
        if storage.raw().has_pending() {
            storage.note_raw_write(WriteOptions::default());
        }
        Ok(Box::new(D1Object { sql }))
    })
}

struct D1Object {
    sql: SqlStorage,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Actor for D1Object {
    fn fetch(&self, _req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async {
            Err(ActorError::new(
                "D1 databases are reached through D1Service",
            ))
        })
    }

    fn call(&self, payload: Payload) -> LocalBoxFuture<'_, Result<Payload, ActorError>> {
        let reply = match payload.downcast::<Op>() {
            Ok(op) => Ok(Box::new(self.handle(*op)) as Payload),
            Err(_) => Err(ActorError::new("not a D1 operation")),
        };
        Box::pin(async move { reply })
    }
}

impl D1Object {
    fn handle(&self, op: Op) -> Reply {
        match op {
            Op::Batch {
                statements,
                bookmark,
            } => Reply::Batch(self.batch(statements, bookmark)),
            Op::Exec(sql) => Reply::Exec(self.exec(&sql)),
            Op::Dump => Reply::Dump(
                self.sql
                    .database_file()
                    .map_err(|e| D1Error::Dump(e.to_string())),
            ),
        }
    }

    fn batch(
        &self,
        statements: Vec<Statement>,
        bookmark: bool,
    ) -> Result<(Vec<D1Result>, Option<String>), D1Error> {
        // As Miniflare does: statements that are only comments are dropped.
        let statements: Vec<Statement> = statements
            .into_iter()
            .filter(|s| !is_blank(&s.sql))
            .collect();
        if statements.is_empty() {
            return Err(D1Error::Query(NO_STATEMENTS.into()));
        }
        let results = self
            .sql
            .transaction_sync(|| statements.iter().map(|s| self.run(s)).collect())
            .map_err(|e: SqlError| D1Error::Query(e.to_string()))?;
        let bookmark = if bookmark {
            Some(
                self.sql
                    .current_bookmark()
                    .map_err(|e| D1Error::Query(e.to_string()))?,
            )
        } else {
            None
        };
        Ok((results, bookmark))
    }

    /// One statement (an `exec()` of its text: several `;`-separated statements are allowed,
    /// the last one's rows are the result, as in Miniflare and `ctx.storage.sql`).
    fn run(&self, s: &Statement) -> Result<D1Result, SqlError> {
        let start = Instant::now();
        let size_before = self.sql.database_size()?;
        let changes_before = self.sql.total_changes();
        let rowid_before = self.sql.last_insert_rowid();
        let mut cursor = self.sql.exec(&s.sql, &s.params)?;
        let columns = cursor.column_names().to_vec();
        let mut rows = Vec::new();
        while let Some(row) = cursor.next_row()? {
            rows.push(row);
        }
        let sql_ms = ms_since(start);
        let size_after = self.sql.database_size()?;
        let changes = self.sql.total_changes() - changes_before;
        let last_row_id = self.sql.last_insert_rowid();
        Ok(D1Result {
            columns,
            rows,
            meta: D1Meta {
                served_by: "cinder.db".into(),
                served_by_region: None,
                served_by_primary: Some(true),
                timings: Timings {
                    sql_duration_ms: sql_ms,
                },
                duration: sql_ms,
                changes,
                last_row_id,
                changed_db: changes != 0
                    || last_row_id != rowid_before
                    || size_after != size_before,
                size_after,
                rows_read: cursor.rows_read(),
                rows_written: cursor.rows_written(),
            },
        })
    }

    fn exec(&self, sql: &str) -> Result<ExecResult, D1Error> {
        let statements = split_statements(sql);
        if statements.is_empty() {
            return Err(D1Error::Exec {
                line: 1,
                statement: sql.trim().to_owned(),
                message: NO_STATEMENTS.into(),
            });
        }
        let start = Instant::now();
        self.sql.transaction_sync(|| {
            for (i, s) in statements.iter().enumerate() {
                let run = self.sql.exec(s, &[]).and_then(|mut c| {
                    while c.next_row()?.is_some() {}
                    Ok(())
                });
                if let Err(e) = run {
                    return Err(D1Error::Exec {
                        line: i + 1,
                        statement: s.clone(),
                        message: e.to_string(),
                    });
                }
            }
            Ok(())
        })?;
        Ok(ExecResult {
            count: statements.len(),
            duration: ms_since(start),
        })
    }
}

impl From<SqlError> for D1Error {
    fn from(e: SqlError) -> D1Error {
        D1Error::Query(e.to_string())
    }
}
