//! The startup snapshot: a V8 heap with the Web-API scripts loaded and the Workers globals
//! assigned, built once per process; every isolate starts from it instead of re-running the
//! bootstrap.
//!
//! It is built at process start rather than in a build script so that building the crate does
//! not link V8 a second time (a build-script binary). The `deno_*` crates record their JS by
//! path, so the snapshot is built on the machine that compiled the binary (their sources sit in
//! the cargo registry).

use std::sync::OnceLock;

use deno_core::{Extension, JsRuntime, JsRuntimeForSnapshot, RuntimeOptions};

// `deno_fetch`'s Request code imports `ext:deno_net/02_tls.js`; see js/02_tls.js.
deno_core::extension!(deno_net, lazy_loaded_js = [dir "js", "02_tls.js"]);

/// The extensions every isolate has, in dependency order (a debug build checks it).
pub(crate) fn extensions() -> Vec<Extension> {
    vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::init(
            deno_web::BlobStore::default_arc(),
            None,
            false,
            deno_web::InMemoryBroadcastChannel::default(),
        ),
        deno_crypto::deno_crypto::init(None),
        deno_net::init(),
        deno_fetch::deno_fetch::init(deno_fetch::Options {
            user_agent: "Cloudflare-Workers".into(),
            ..Default::default()
        }),
        crate::ops::cinder::init(),
        crate::ops_do::cinder_do::init(),
        crate::ops_rpc::cinder_rpc::init(),
        crate::ops_ws::cinder_ws::init(),
        crate::ops_r2::cinder_r2_binding::init(),
        crate::ops_kv::cinder_kv_binding::init(),
        crate::ops_queue::cinder_queue_binding::init(),
        crate::ops_sql::cinder_sql_ops::init(),
        crate::ops_d1::cinder_d1_ops::init(),
        crate::ops_html::cinder_html::init(),
        crate::ops_cache::cinder_cache_ops::init(),
    ]
}

/// The isolate's JS, run in this order while the snapshot is built: the Web-API globals and
/// stateless events, JS RPC, Durable Objects, WebSockets, R2, KV and Queues bindings, SQL
/// storage, D1, HTMLRewriter, the Cache API.
const SCRIPTS: [(&str, &str); 11] = [
    (
        "ext:cinder/bootstrap.js",
        include_str!("../js/bootstrap.js"),
    ),
    ("ext:cinder/rpc.js", include_str!("../js/rpc.js")),
    ("ext:cinder/durable.js", include_str!("../js/durable.js")),
    (
        "ext:cinder/websocket.js",
        include_str!("../js/websocket.js"),
    ),
    ("ext:cinder/r2.js", include_str!("../js/r2.js")),
    ("ext:cinder/kv.js", include_str!("../js/kv.js")),
    ("ext:cinder/queue.js", include_str!("../js/queue.js")),
    ("ext:cinder/sql.js", include_str!("../js/sql.js")),
    ("ext:cinder/d1.js", include_str!("../js/d1.js")),
    (
        "ext:cinder/htmlrewriter.js",
        include_str!("../js/htmlrewriter.js"),
    ),
    ("ext:cinder/cache.js", include_str!("../js/cache.js")),
];

fn build() -> Result<&'static [u8], String> {
    // Initialise V8 in normal mode first: the snapshot creator would otherwise set
    // `--predictable --random-seed=42` for the whole process (a fixed Math.random seed).
    JsRuntime::init_platform(None);
    let mut rt = JsRuntimeForSnapshot::try_new(RuntimeOptions {
        extensions: extensions(),
        ..Default::default()
    })
    .map_err(|e| format!("creating the snapshot runtime: {e}"))?;
    for (name, source) in SCRIPTS {
        rt.execute_script(name, source)
            .map_err(|e| format!("{name} failed: {e}"))?;
    }
    let blob = rt.snapshot();
    Ok(Box::leak(blob))
}

/// The process-wide snapshot, built on first use.
pub(crate) fn get() -> Result<&'static [u8], String> {
    static SNAPSHOT: OnceLock<Result<&'static [u8], String>> = OnceLock::new();
    SNAPSHOT.get_or_init(build).clone()
}
