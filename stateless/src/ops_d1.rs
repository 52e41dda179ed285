//! Ops of the D1 binding (js/d1.js): `env.<binding>` statements, batches, `exec`, `dump` and
//! sessions, answered by cinder-d1's database objects on the actor core. From inside a Durable
//! Object a D1 call is outbound I/O of that object: it leaves after the object's output gate
//! and comes back through its input gate (`ops_do::outbound`).
//!
//! Failures come back as data (`error`, the full `D1_…:` message) rather than as a thrown
//! error: the JS side builds the `Error` with its `cause`, as workerd's binding does.

use std::future::Future;

use cinder_d1::{D1Error, D1Meta, D1Result, D1Service, Statement};
use deno_core::{op2, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use crate::ops_sql::{js_row, JsOut, JsScalar};
use crate::state::IsolateState;

fn isolate(state: &OpState) -> Result<std::rc::Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<std::rc::Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

/// The database behind `env.<binding>` of this worker.
fn service(st: &IsolateState, binding: &str) -> Result<D1Service, JsErrorBox> {
    let db = st
        .worker
        .spec
        .d1_databases
        .iter()
        .find(|d| d.binding == binding)
        .ok_or_else(|| JsErrorBox::type_error(format!("no D1 binding {binding:?}")))?;
    let host = st
        .worker
        .host()
        .ok_or_else(|| JsErrorBox::generic("the host is shut down"))?;
    D1Service::from_runtime(&host.runtime, &db.database)
        .map_err(|e| JsErrorBox::generic(e.to_string()))
}

#[derive(Deserialize)]
pub(crate) struct JsStatement {
    sql: String,
    #[serde(default)]
    params: Vec<JsScalar>,
}

/// One statement's result in the wire shape of workerd's binding contract:
/// `{meta, columns, rows}` (rows as arrays; js/d1.js turns them into objects).
#[derive(Serialize)]
struct JsResult {
    meta: D1Meta,
    columns: Vec<String>,
    rows: Vec<Vec<JsOut>>,
}

impl From<D1Result> for JsResult {
    fn from(r: D1Result) -> JsResult {
        JsResult {
            meta: r.meta,
            columns: r.columns,
            rows: r.rows.into_iter().map(js_row).collect(),
        }
    }
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct BatchOut {
    results: Vec<JsResult>,
    /// The session's bookmark after the batch (sessions only).
    bookmark: Option<String>,
    /// The failure, as the full message (`D1_ERROR: …`).
    error: Option<String>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct ExecOut {
    count: f64,
    duration: f64,
    error: Option<String>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct DumpOut {
    bytes: Option<ToJsBuffer>,
    error: Option<String>,
}

/// Where a D1 call comes from: `caller` is the calling object (0 from a stateless worker),
/// `in_cs` whether it runs inside that object's own critical section.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct D1Call {
    binding: String,
    caller: u32,
    in_cs: bool,
}

fn call_error(e: cinder_core::ActorError) -> String {
    D1Error::Query(e.message).to_string()
}

/// Statements as one batch (one transaction). With `session` (a constraint or bookmark), the
/// answer carries the session's new bookmark.
#[op2]
#[serde]
fn op_d1_batch(
    state: &mut OpState,
    #[serde] call: D1Call,
    #[serde] statements: Vec<JsStatement>,
    #[string] session: String,
) -> impl Future<Output = Result<BatchOut, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let svc = service(&st, &call.binding)?;
        Ok((st, svc))
    });
    let statements: Vec<Statement> = statements
        .into_iter()
        .map(|s| Statement::new(s.sql).bind(s.params.into_iter().map(JsScalar::into_d1)))
        .collect();
    async move {
        let (st, svc) = prepared?;
        let run = async move {
            match (!session.is_empty()).then_some(session) {
                Some(c) => {
                    let s = svc.with_session(Some(&c));
                    let results = s.batch(statements).await?;
                    Ok::<_, D1Error>((results, s.get_bookmark()))
                }
                None => Ok((svc.batch(statements).await?, None)),
            }
        };
        let out = match crate::ops_do::outbound(&st, call.caller, call.in_cs, run).await {
            Err(e) => BatchOut {
                error: Some(call_error(e)),
                ..Default::default()
            },
            Ok(Err(e)) => BatchOut {
                error: Some(e.to_string()),
                ..Default::default()
            },
            Ok(Ok((results, bookmark))) => BatchOut {
                results: results.into_iter().map(JsResult::from).collect(),
                bookmark,
                error: None,
            },
        };
        Ok(out)
    }
}

#[op2]
#[serde]
fn op_d1_exec(
    state: &mut OpState,
    #[serde] call: D1Call,
    #[string] sql: String,
) -> impl Future<Output = Result<ExecOut, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let svc = service(&st, &call.binding)?;
        Ok((st, svc))
    });
    async move {
        let (st, svc) = prepared?;
        let run = async move { svc.exec(&sql).await };
        Ok(
            match crate::ops_do::outbound(&st, call.caller, call.in_cs, run).await {
                Err(e) => ExecOut {
                    error: Some(call_error(e)),
                    ..Default::default()
                },
                Ok(Err(e)) => ExecOut {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
                Ok(Ok(r)) => ExecOut {
                    count: r.count as f64,
                    duration: r.duration,
                    error: None,
                },
            },
        )
    }
}

#[op2]
#[serde]
fn op_d1_dump(
    state: &mut OpState,
    #[serde] call: D1Call,
) -> impl Future<Output = Result<DumpOut, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let svc = service(&st, &call.binding)?;
        Ok((st, svc))
    });
    async move {
        let (st, svc) = prepared?;
        let run = async move { svc.dump().await };
        Ok(
            match crate::ops_do::outbound(&st, call.caller, call.in_cs, run).await {
                Err(e) => DumpOut {
                    error: Some(D1Error::Dump(e.message).to_string()),
                    ..Default::default()
                },
                Ok(Err(e)) => DumpOut {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
                Ok(Ok(bytes)) => DumpOut {
                    bytes: Some(bytes.into()),
                    error: None,
                },
            },
        )
    }
}

deno_core::extension!(cinder_d1_ops, ops = [op_d1_batch, op_d1_exec, op_d1_dump]);
