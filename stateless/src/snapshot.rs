//! The startup snapshot: a V8 heap with the Web-API scripts loaded and the Workers globals
//! assigned; every isolate starts from it instead of re-running the bootstrap.
//!
//! The `cinder` binary makes it at build time (the gateway's build script calls [`create`])
//! and hands the embedded bytes over with [`use_prebuilt`] before the first isolate: the
//! `deno_*` crates record their JS by path (deno_core 0.413 reads extension sources from disk
//! only while a snapshot is made), so a snapshot made at run time needs the cargo registry
//! and costs ~100 ms per process. With the embedded one nothing outside the binary is read.
//! Users of this crate that install none (its own tests) get one made on first use, which
//! works on the machine that compiled them.

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

/// Makes the snapshot: runs the extensions' and our scripts in a fresh snapshotting isolate.
/// Reads the `deno_*` JS sources from the cargo registry, so it runs where the crate was
/// compiled (a build script). V8 is initialised in normal mode first: the snapshot creator
/// would otherwise set `--predictable --random-seed=42` for the whole process, and the blob is
/// then made under the same flags as the runtimes that load it.
pub fn create() -> Result<Box<[u8]>, SnapshotError> {
    // V8 posts delayed tasks through deno_core onto the current tokio runtime; a build script
    // has none, so it gets a private one for the duration.
    let private_rt = match tokio::runtime::Handle::try_current() {
        Ok(_) => None,
        Err(_) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| SnapshotError::Runtime(format!("a tokio runtime: {e}")))?,
        ),
    };
    let _entered = private_rt.as_ref().map(|rt| rt.enter());
    JsRuntime::init_platform(None);
    let mut rt = JsRuntimeForSnapshot::try_new(RuntimeOptions {
        extensions: extensions(),
        ..Default::default()
    })
    .map_err(|e| SnapshotError::Runtime(e.to_string()))?;
    for (name, source) in SCRIPTS {
        rt.execute_script(name, source)
            .map_err(|e| SnapshotError::Script {
                name,
                message: e.to_string(),
            })?;
    }
    Ok(rt.snapshot())
}

/// Why [`create`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("creating the snapshot runtime: {0}")]
    Runtime(String),
    #[error("{name} failed: {message}")]
    Script { name: &'static str, message: String },
}

/// What a snapshot depends on besides V8 itself: every extension's name, its ops (name,
/// async or not, argument count) and JS files, in order. V8 resolves an op's functions by
/// position in a table that the loading process rebuilds from its own extensions, so a blob
/// made from other op lists would route calls to the wrong ops; [`use_prebuilt`] refuses one
/// whose fingerprint differs. FNV-1a over that text, so build script and binary agree.
pub fn fingerprint() -> String {
    let mut text = String::new();
    for ext in extensions() {
        text.push_str(ext.name);
        text.push('{');
        for op in ext.ops.iter() {
            text.push_str(&format!("{}:{}:{},", op.name, op.is_async, op.arg_count));
        }
        text.push_str(&format!(
            "objects={},refs={};",
            ext.objects.len(),
            ext.external_references.len()
        ));
        for file in ext
            .js_files
            .iter()
            .chain(ext.esm_files.iter())
            .chain(ext.lazy_loaded_esm_files.iter())
            .chain(ext.lazy_loaded_js_files.iter())
        {
            text.push_str(file.specifier);
            text.push(',');
        }
        text.push('}');
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

static PREBUILT: OnceLock<Result<&'static [u8], String>> = OnceLock::new();

/// Installs a snapshot made by [`create`] at build time, with the [`fingerprint`] taken when
/// it was made; every isolate of this process starts from it. Call before the first isolate
/// (before [`crate::Host::start`]); a later call, or a second one, has no effect. A blob whose
/// fingerprint differs from this code's makes every isolate fail to start with a message
/// saying so, rather than run with misrouted ops.
pub fn use_prebuilt(blob: &'static [u8], made_with: &str) {
    let current = fingerprint();
    let _ = PREBUILT.set(if made_with.trim() == current {
        Ok(blob)
    } else {
        Err(format!(
            "the embedded startup snapshot was made from other extensions (fingerprint {} here {current}); rebuild the binary",
            made_with.trim()
        ))
    });
}

/// The process-wide snapshot: the installed one, else one made on first use.
pub(crate) fn get() -> Result<&'static [u8], String> {
    static SNAPSHOT: OnceLock<Result<&'static [u8], String>> = OnceLock::new();
    SNAPSHOT
        .get_or_init(|| match PREBUILT.get() {
            Some(Ok(blob)) => {
                // The platform as `create` set it up (normal mode, same flags).
                JsRuntime::init_platform(None);
                Ok(*blob)
            }
            Some(Err(mismatch)) => Err(mismatch.clone()),
            None => create()
                .map(|blob| &*Box::leak(blob))
                .map_err(|e| e.to_string()),
        })
        .clone()
}
