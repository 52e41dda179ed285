//! End to end without V8: a native actor of cinder-core whose state is a SQL table, through
//! the real runtime, gates and group commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cinder_core::{
    Actor, ActorContext, ActorError, IdFactory, NamespaceSpec, Request, Response, Runtime,
    RuntimeConfig, WriteOptions,
};
use cinder_sql::{SqlConfig, SqlStorage};
use cinder_storage::{Durability, Store, StoreConfig};
use futures::future::LocalBoxFuture;
use tokio::sync::mpsc;

const NS: &str = "test/SqlCounter";

struct SqlCounter {
    sql: SqlStorage,
    done: mpsc::UnboundedSender<()>,
}

fn sql_err(e: cinder_sql::SqlError) -> ActorError {
    ActorError::new(e.to_string())
}

impl Actor for SqlCounter {
    fn fetch(&self, req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async move {
            let n = if req.uri().path() == "/read" {
                self.sql.exec("SELECT n FROM c WHERE id = 1", &[])
            } else {
                self.sql
                    .exec("UPDATE c SET n = n + 1 WHERE id = 1 RETURNING n", &[])
            }
            .map_err(sql_err)?
            .one()
            .map_err(sql_err)?;
            let _ = self.done.send(());
            let n = n.values()[0].as_i64().unwrap_or(-1);
            Ok(http::Response::new(Bytes::from(n.to_string())))
        })
    }
}

fn start(store: &Arc<Store>, done: mpsc::UnboundedSender<()>) -> Runtime {
    let factory = move |ctx: ActorContext| -> Result<Box<dyn Actor>, ActorError> {
        let storage = ctx.storage();
        let sql = SqlStorage::open(storage.raw().clone(), SqlConfig::default()).map_err(sql_err)?;
        sql.set_on_write(move || storage.note_raw_write(WriteOptions::default()));
        sql.exec(
            "CREATE TABLE IF NOT EXISTS c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT OR IGNORE INTO c VALUES (1, 0);",
            &[],
        )
        .map_err(sql_err)?;
        Ok(Box::new(SqlCounter {
            sql,
            done: done.clone(),
        }))
    };
    Runtime::start(
        store.clone(),
        RuntimeConfig {
            threads: 2,
            ..RuntimeConfig::default()
        },
        vec![NamespaceSpec {
            name: NS.into(),
            ids: IdFactory::from_unique_key(NS),
            factory: Arc::new(factory),
        }],
    )
    .unwrap()
}

fn req(path: &str) -> Request {
    http::Request::builder()
        .uri(format!("http://do{path}"))
        .body(Bytes::new())
        .unwrap()
}

async fn text(resp: Result<Response, cinder_core::ObjectError>) -> String {
    String::from_utf8(resp.unwrap().into_body().to_vec()).unwrap()
}

/// Reads the counter straight from fjall through a second connection (committed data is
/// visible before it is durable).
fn committed_counter(store: &Arc<Store>, id: &cinder_core::ObjectId) -> Option<i64> {
    let db = SqlStorage::open(store.object(*id.bytes()), SqlConfig::default()).ok()?;
    let row = db
        .exec("SELECT n FROM c WHERE id = 1", &[])
        .ok()?
        .one()
        .ok()?;
    row.values()[0].as_i64()
}

#[tokio::test]
async fn native_actor_counts_in_sql_with_gates_and_durability() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            durability: Durability::Fsync,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let rt = start(&store, done_tx.clone());
    let ns = rt.namespace(NS).unwrap();
    let stub = ns.get_by_name("hot");
    let id = ns.id_from_name("hot");
    assert_eq!(text(stub.fetch(req("/read")).await).await, "0");
    while done_rx.try_recv().is_ok() {}

    // Output gate: while durability is held, the reply to a SQL write does not leave, although
    // the write is already committed (visible) in fjall.
    let hold = store.hold_durability();
    let mut write = Box::pin(stub.fetch(req("/inc")));
    assert!(futures::poll!(write.as_mut()).is_pending());
    tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
        .await
        .expect("the handler ran");
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed_counter(&store, &id) != Some(1) {
        assert!(Instant::now() < deadline, "the turn was never flushed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(futures::poll!(write.as_mut()).is_pending());
    drop(hold);
    assert_eq!(text(write.await).await, "1");

    // Many objects at once, each counting from its own database.
    let stubs: Vec<_> = (0..20).map(|i| ns.get_by_name(&format!("o{i}"))).collect();
    for _ in 0..5 {
        let all = futures::future::join_all(stubs.iter().map(|s| s.fetch(req("/inc")))).await;
        for r in all {
            r.unwrap();
        }
    }
    for s in &stubs {
        assert_eq!(text(s.fetch(req("/read")).await).await, "5");
    }
    rt.shutdown();
    drop(ns);
    drop(rt);

    // A new runtime (fresh instances, constructors run again) reads the durable state.
    let rt = start(&store, done_tx);
    let ns = rt.namespace(NS).unwrap();
    assert_eq!(
        text(ns.get_by_name("hot").fetch(req("/inc")).await).await,
        "2"
    );
    assert_eq!(
        text(ns.get_by_name("o7").fetch(req("/read")).await).await,
        "5"
    );
    let v = committed_counter(&store, &ns.id_from_name("o7"));
    assert_eq!(v, Some(5));
    rt.shutdown();
}
