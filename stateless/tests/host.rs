//! Drives [`Host`] directly with real V8 isolates: globals, module rules, bindings, limits.
//! (One test binary on purpose: each links V8.)

use std::path::Path;
use std::time::{Duration, Instant};

use cinder_stateless::{
    Body, Host, HostConfig, LoadError, ModuleKind, ModuleRule, ServiceBinding, WorkerSpec,
};
use http_body_util::BodyExt;

fn write(dir: &Path, rel: &str, text: impl AsRef<[u8]>) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn worker(name: &str, dir: &Path, main: &str) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        root: dir.to_path_buf(),
        main: main.into(),
        ..Default::default()
    }
}

fn config(workers: Vec<WorkerSpec>) -> HostConfig {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    HostConfig {
        workers,
        threads: 1,
        ..Default::default()
    }
}

fn get(url: &str) -> http::Request<Body> {
    http::Request::builder()
        .uri(url)
        .body(Body::empty())
        .unwrap()
}

async fn text(resp: http::Response<Body>) -> (u16, String) {
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_globals() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "src/index.js",
        r#"
import { DurableObject, WorkerEntrypoint, RpcTarget } from "cloudflare:workers";
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/hello") return new Response("hello world");
    if (url.pathname === "/json") return Response.json({ ok: true, method: request.method });
    const r = {};
    const check = async (name, f) => { try { r[name] = await f(); } catch (e) { r[name] = "threw: " + e; } };
    await check("url", () => new URL("https://a.example/x?y=1").searchParams.get("y") === "1");
    await check("usp", () => new URLSearchParams("a=1&b=2").toString() === "a=1&b=2");
    await check("headers", () => new Headers({ "X-A": "1" }).get("x-a") === "1");
    await check("encoding", () => new TextDecoder().decode(new TextEncoder().encode("héllo")) === "héllo");
    await check("base64", () => atob(btoa("hi")) === "hi");
    await check("random", () => crypto.getRandomValues(new Uint8Array(8)).length === 8);
    await check("uuid", () => /^[0-9a-f-]{36}$/.test(crypto.randomUUID()));
    await check("digest", async () => {
      const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("abc"));
      return [...new Uint8Array(d)].map(b => b.toString(16).padStart(2, "0")).join("") ===
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    });
    await check("hmac", async () => {
      const key = await crypto.subtle.importKey("raw", new TextEncoder().encode("k"),
        { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
      const sig = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode("m"));
      return await crypto.subtle.verify("HMAC", key, sig, new TextEncoder().encode("m"));
    });
    await check("aesgcm", async () => {
      const key = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, true, ["encrypt", "decrypt"]);
      const iv = crypto.getRandomValues(new Uint8Array(12));
      const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv }, key, new TextEncoder().encode("secret"));
      const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv }, key, ct);
      return new TextDecoder().decode(pt) === "secret";
    });
    await check("ecdsa", async () => {
      const kp = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
      const data = new TextEncoder().encode("d");
      const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, kp.privateKey, data);
      return await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, kp.publicKey, sig, data);
    });
    await check("ed25519", async () => {
      const kp = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
      const data = new TextEncoder().encode("d");
      const sig = await crypto.subtle.sign("Ed25519", kp.privateKey, data);
      return await crypto.subtle.verify("Ed25519", kp.publicKey, sig, data);
    });
    await check("streams", async () => {
      const ts = new TransformStream({ transform(c, ctl) { ctl.enqueue(c.toUpperCase()); } });
      const w = ts.writable.getWriter(); w.write("ab"); w.close();
      const out = []; for await (const c of ts.readable) out.push(c);
      return out.join("") === "AB" && typeof WritableStream === "function";
    });
    await check("clone", () => structuredClone(new Map([[1, { a: [1] }]])).get(1).a[0] === 1);
    await check("timers", () => new Promise(res => { const i = setInterval(() => { clearInterval(i); setTimeout(() => res(true), 1); }, 1); }));
    await check("abort", () => { const c = new AbortController(); c.abort(); return c.signal.aborted; });
    await check("events", () => { const t = new EventTarget(); let n = 0; t.addEventListener("x", () => n++); t.dispatchEvent(new Event("x")); return n === 1; });
    await check("blob", async () => (await new Blob(["a", "b"]).text()) === "ab");
    await check("formdata", () => { const f = new FormData(); f.append("a", "1"); return f.get("a") === "1"; });
    await check("navigator", () => navigator.userAgent === "Cloudflare-Workers");
    await check("wspair", () => { const p = new WebSocketPair(); return typeof p[0].accept === "function" && typeof p[1].send === "function"; });
    await check("cfmodule", () => typeof DurableObject === "function" && typeof WorkerEntrypoint === "function" && typeof RpcTarget === "function");
    await check("noDeno", () => typeof Deno === "undefined");
    await check("fetchfn", () => typeof fetch === "function");
    await check("console", () => { console.log("log from", request.url); return true; });
    await check("responseStream", async () => {
      const body = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode("x")); c.close(); } });
      return (await new Response(body).text()) === "x";
    });
    return Response.json(r);
  },
};
"#,
    );
    let host = Host::start(config(vec![worker("w", dir.path(), "src/index.js")])).unwrap();
    let (s, t) = text(host.fetch("w", get("http://example.com/hello")).await).await;
    assert_eq!((s, t.as_str()), (200, "hello world"));
    let (s, t) = text(host.fetch("w", get("http://example.com/json")).await).await;
    assert_eq!(s, 200);
    assert_eq!(t, r#"{"ok":true,"method":"GET"}"#);
    let (s, t) = text(host.fetch("w", get("http://example.com/globals")).await).await;
    assert_eq!(s, 200, "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    for (k, val) in v.as_object().unwrap() {
        assert_eq!(
            val,
            &serde_json::Value::Bool(true),
            "global check {k}: {val}"
        );
    }
    assert!(v.as_object().unwrap().len() >= 25, "{v}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_env_bindings_and_bodies() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "src/page.html", "<h1>hi</h1>");
    write(dir.path(), "src/note.txt", "a note");
    write(dir.path(), "src/blob.bin", [0u8, 1, 2, 255]);
    write(dir.path(), "src/data.custom", [7u8, 8, 9]);
    // The smallest valid WebAssembly module: magic + version.
    write(dir.path(), "src/empty.wasm", b"\0asm\x01\0\0\0");
    write(
        dir.path(),
        "src/front.js",
        r#"
import page from "./page.html";
import note from "./note.txt";
import blob from "./blob.bin";
import custom from "./data.custom";
import wasm from "./empty.wasm";
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/imports") {
      return Response.json({
        page, note,
        blob: [...new Uint8Array(blob)],
        custom: [...new Uint8Array(custom)],
        wasm: wasm instanceof WebAssembly.Module,
      });
    }
    if (url.pathname === "/env") {
      return Response.json({ s: env.GREETING, j: env.CONFIG, secret: env.SECRET });
    }
    if (url.pathname === "/svc") {
      const r = await env.BACK.fetch("http://back/echo", { method: "POST", body: "ping" });
      return new Response(`${r.status}:${await r.text()}`);
    }
    if (url.pathname === "/echo") {
      // Streams the request body back, uppercased chunk by chunk.
      let n = 0;
      const t = new TransformStream({ transform(c, ctl) { n += c.byteLength; ctl.enqueue(c); } });
      return new Response(request.body.pipeThrough(t));
    }
    if (url.pathname === "/wait") {
      ctx.waitUntil(new Promise(r => setTimeout(r, 5)).then(() => { globalThis.waited = (globalThis.waited ?? 0) + 1; }));
      return new Response("sent");
    }
    if (url.pathname === "/waited") return new Response(String(globalThis.waited ?? 0));
    if (url.pathname === "/throw") throw new Error("boom");
    return new Response("nf", { status: 404 });
  },
  async scheduled(controller, env, ctx) {
    globalThis.lastCron = controller.cron;
    if (controller.cron === "fail") throw new Error("cron failed");
  },
};
"#,
    );
    write(
        dir.path(),
        "back.js",
        r#"export default { async fetch(req) { return new Response("back got " + await req.text() + " " + req.method); } };"#,
    );
    let mut front = worker("front", dir.path(), "src/front.js");
    front.rules = vec![ModuleRule {
        kind: ModuleKind::Data,
        globs: vec!["**/*.custom".into()],
        fallthrough: true,
    }];
    front.vars = vec![
        ("GREETING".into(), serde_json::json!("hello")),
        ("CONFIG".into(), serde_json::json!({"a": [1, 2]})),
        ("SECRET".into(), serde_json::json!("s3cret")),
    ];
    front.services = vec![ServiceBinding {
        binding: "BACK".into(),
        service: "back".into(),
        entrypoint: None,
    }];
    let back = worker("back", dir.path(), "back.js");
    let host = Host::start(config(vec![front, back])).unwrap();

    let (s, t) = text(host.fetch("front", get("http://x/imports")).await).await;
    assert_eq!(s, 200, "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"page": "<h1>hi</h1>", "note": "a note", "blob": [0, 1, 2, 255], "custom": [7, 8, 9], "wasm": true})
    );

    let (_, t) = text(host.fetch("front", get("http://x/env")).await).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&t).unwrap(),
        serde_json::json!({"s": "hello", "j": {"a": [1, 2]}, "secret": "s3cret"})
    );

    let (s, t) = text(host.fetch("front", get("http://x/svc")).await).await;
    assert_eq!((s, t.as_str()), (200, "200:back got ping POST"));

    // A 4 MiB body streamed through the isolate and back, fed in 64 KiB chunks.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..64u8)
        .map(|i| Ok(bytes::Bytes::from(vec![i; 64 * 1024])))
        .collect();
    let body = Body::from_stream(futures::stream::iter(chunks));
    let req = http::Request::builder()
        .method("POST")
        .uri("http://x/echo")
        .body(body)
        .unwrap();
    let resp = host.fetch("front", req).await;
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), 64 * 64 * 1024);
    assert!(got
        .chunks(64 * 1024)
        .enumerate()
        .all(|(i, c)| c.iter().all(|b| *b == i as u8)));

    // waitUntil work runs after the response was sent.
    let (_, t) = text(host.fetch("front", get("http://x/wait")).await).await;
    assert_eq!(t, "sent");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t) = text(host.fetch("front", get("http://x/waited")).await).await;
        if t == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "waitUntil never ran");
        tokio::task::yield_now().await;
    }

    let (s, t) = text(host.fetch("front", get("http://x/throw")).await).await;
    assert_eq!((s, t.trim()), (500, "Worker threw exception"));

    host.scheduled("front", "*/5 * * * *", 0).await.unwrap();
    let err = host.scheduled("front", "fail", 0).await.unwrap_err();
    assert!(err.to_string().contains("cron failed"), "{err}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "syntax.js",
        "export default {\n  fetch() {\n    return 1 +;\n  }\n};\n",
    );
    write(
        dir.path(),
        "throws.js",
        "const a = 1;\nthrow new Error('top level');\nexport default {};\n",
    );
    write(
        dir.path(),
        "missing.js",
        "import x from './nope.js';\nexport default {};\n",
    );
    for (file, line) in [("syntax.js", 3), ("throws.js", 2)] {
        let err = Host::start(config(vec![worker("w", dir.path(), file)]))
            .err()
            .unwrap();
        let shown = err.to_string();
        assert!(shown.contains(file), "{shown}");
        match err {
            LoadError::Script { line: l, .. } => assert_eq!(l, line, "{shown}"),
            other => panic!("expected a script error, got {other:?}"),
        }
    }
    let err = Host::start(config(vec![worker("w", dir.path(), "missing.js")]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("nope.js"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_the_offender_only() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.js",
        r#"
export default {
  async fetch(request) {
    const p = new URL(request.url).pathname;
    if (p === "/loop") { while (true) {} }
    if (p === "/bomb") { const a = []; while (true) a.push(new Array(100000).fill(Math.random())); }
    if (p === "/chunks") {
      // Many short turns: 40 ms of CPU, then an await, forever. Only the total trips the limit.
      for (;;) { const t = Date.now(); while (Date.now() - t < 40) {} await new Promise(r => setTimeout(r, 1)); }
    }
    if (p === "/io") { await new Promise(r => setTimeout(r, 300)); return new Response("waited"); }
    if (p === "/park") { await new Promise(r => setTimeout(r, 60000)); return new Response("parked"); }
    return new Response("fine");
  },
};
"#,
    );
    write(
        dir.path(),
        "good.js",
        "export default { fetch() { return new Response('good'); } };",
    );
    let mut bad = worker("bad", dir.path(), "bad.js");
    bad.cpu_ms = Some(200);
    let mut cfg = config(vec![bad, worker("good", dir.path(), "good.js")]);
    cfg.heap_limit_bytes = 64 * 1024 * 1024;
    let host = Host::start(cfg).unwrap();

    let (s, t) = text(host.fetch("bad", get("http://x/loop")).await).await;
    assert_eq!((s, t.trim()), (503, "Worker exceeded CPU time limit."));
    assert_eq!(
        text(host.fetch("good", get("http://x/")).await).await.1,
        "good"
    );
    assert_eq!(
        text(host.fetch("bad", get("http://x/")).await).await.1,
        "fine"
    );

    // A request parked on I/O when a neighbour runs away is reset, not blamed: one thread, so
    // the parked one entered the isolate first and both share it.
    let (parked, looped) = tokio::join!(host.fetch("bad", get("http://x/park")), async {
        tokio::task::yield_now().await;
        host.fetch("bad", get("http://x/loop")).await
    });
    let (s, t) = text(looped).await;
    assert_eq!((s, t.trim()), (503, "Worker exceeded CPU time limit."));
    let (s, t) = text(parked).await;
    assert_eq!(
        (s, t.trim()),
        (
            503,
            "Worker was reset while serving this request: another request in the same isolate exceeded the CPU time limit."
        )
    );

    let (s, t) = text(host.fetch("bad", get("http://x/chunks")).await).await;
    assert_eq!((s, t.trim()), (503, "Worker exceeded CPU time limit."));
    assert_eq!(
        text(host.fetch("bad", get("http://x/")).await).await.1,
        "fine"
    );

    // Waiting on a timer costs no CPU: longer than the 200 ms budget in wall time is fine.
    assert_eq!(
        text(host.fetch("bad", get("http://x/io")).await).await.1,
        "waited"
    );

    let (s, t) = text(host.fetch("bad", get("http://x/bomb")).await).await;
    assert_eq!((s, t.trim()), (503, "Worker exceeded memory limit."));
    assert_eq!(
        text(host.fetch("good", get("http://x/")).await).await.1,
        "good"
    );
    assert_eq!(
        text(host.fetch("bad", get("http://x/")).await).await.1,
        "fine"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_fetch_refused_unless_allowed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nlocal",
                    )
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "f.js",
        r#"
export default {
  async fetch(request) {
    const target = new URL(request.url).searchParams.get("t");
    try {
      const r = await fetch(target);
      return new Response("ok:" + await r.text());
    } catch (e) {
      return new Response(e.name + ":" + e.message);
    }
  },
};
"#,
    );
    let direct = format!("http://127.0.0.1:{port}/");
    let named = format!("http://localhost:{port}/");
    let host = Host::start(config(vec![worker("f", dir.path(), "f.js")])).unwrap();
    for target in [&direct, &named] {
        let (_, t) = text(host.fetch("f", get(&format!("http://x/?t={target}"))).await).await;
        assert!(t.starts_with("TypeError:"), "{target}: {t}");
        assert!(t.contains(cinder_stateless::ALLOW_FLAG), "{target}: {t}");
    }
    host.shutdown().await;

    let mut cfg = config(vec![worker("f", dir.path(), "f.js")]);
    cfg.allow_private_fetch = true;
    let host = Host::start(cfg).unwrap();
    let (_, t) = text(host.fetch("f", get(&format!("http://x/?t={direct}"))).await).await;
    assert_eq!(t, "ok:local");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_probe_reports_samples() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "h.js",
        "export default { fetch() { return new Response('hi'); } };",
    );
    let host = Host::start(config(vec![worker("h", dir.path(), "h.js")])).unwrap();
    let samples = host.cold_start_probe("h", 3).await.unwrap();
    assert_eq!(samples.len(), 3);
    host.shutdown().await;
}

#[test]
fn module_rules_follow_wrangler() {
    use cinder_stateless::module_kind_for;
    let kind = |rules: &[ModuleRule], p: &str| module_kind_for(rules, Path::new(p)).unwrap();
    assert_eq!(kind(&[], "src/a.js"), Some(ModuleKind::ESModule));
    assert_eq!(kind(&[], "index.mjs"), Some(ModuleKind::ESModule));
    assert_eq!(kind(&[], "page.html"), Some(ModuleKind::Text));
    assert_eq!(kind(&[], "x/y.bin"), Some(ModuleKind::Data));
    assert_eq!(kind(&[], "m.wasm"), Some(ModuleKind::CompiledWasm));
    assert_eq!(kind(&[], "m.md"), None);
    let html_as_data = [ModuleRule {
        kind: ModuleKind::Data,
        globs: vec!["**/*.html".into()],
        fallthrough: false,
    }];
    assert_eq!(kind(&html_as_data, "page.html"), Some(ModuleKind::Data));
    // fallthrough = false removes the default Data rule.
    assert_eq!(kind(&html_as_data, "x.bin"), None);
    assert!(module_kind_for(
        &[ModuleRule {
            kind: ModuleKind::Text,
            globs: vec!["[".into()],
            fallthrough: true,
        }],
        Path::new("a"),
    )
    .is_err());
}

#[test]
fn internal_address_ranges() {
    use cinder_stateless::is_internal_address;
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b::101:101",
        "64:ff9b:1::1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "ff02::1",
        "::127.0.0.1",
    ] {
        assert!(
            is_internal_address(ip.parse().unwrap()),
            "{ip} should be internal"
        );
    }
    for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
        assert!(
            !is_internal_address(ip.parse().unwrap()),
            "{ip} should be public"
        );
    }
}

/// Not a test: prints rough figures (`cargo test -p cinder-stateless -- --ignored --nocapture
/// figures`). Benchmarks proper live in bench/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "h.js",
        "export default { fetch() { return new Response('hi'); } };",
    );
    let host = Host::start(config(vec![worker("h", dir.path(), "h.js")])).unwrap();
    let mut cold = host.cold_start_probe("h", 50).await.unwrap();
    cold.sort();
    println!(
        "cold start: p50 {:?} p99 {:?}",
        cold[cold.len() / 2],
        cold[cold.len() * 99 / 100]
    );
    let n = 5000;
    let t0 = Instant::now();
    for _ in 0..n {
        let resp = host.fetch("h", get("http://x/")).await;
        let _ = resp.into_body().collect().await.unwrap();
    }
    println!("sequential fetch: {:?} per request", t0.elapsed() / n);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_interleave_in_one_isolate() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "i.js",
        r#"
let release = null;
let waiting = 0;
const parked = new Promise(r => { release = r; });
export default {
  async fetch(request) {
    const p = new URL(request.url).pathname;
    if (p === "/park") {
      waiting++;
      // The timer is what keeps this request alive meanwhile: a request with nothing of its
      // own pending is "never going to generate a response", as in workerd.
      let timer;
      const timeout = new Promise(r => { timer = setTimeout(() => r("timeout"), 10000); });
      const got = await Promise.race([parked, timeout]);
      clearTimeout(timer);
      return new Response("released with " + got);
    }
    if (waiting === 0) return new Response("nobody parked yet");
    release("token");
    return new Response("released");
  },
};
"#,
    );
    let host = Host::start(config(vec![worker("i", dir.path(), "i.js")])).unwrap();
    // The first request waits inside the isolate until the second one, served by the same
    // isolate meanwhile, releases it.
    let parked = tokio::spawn({
        let host = host.clone();
        async move { text(host.fetch("i", get("http://x/park")).await).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t) = text(host.fetch("i", get("http://x/go")).await).await;
        if t == "released" {
            break;
        }
        assert_eq!(t, "nobody parked yet");
        assert!(
            Instant::now() < deadline,
            "the parked request never arrived"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(parked.await.unwrap().1, "released with token");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_worker_failing_to_load_answers_500_and_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "front.js",
        "export default { fetch(r, env) { return new URL(r.url).pathname === '/back' ? env.BACK.fetch(r) : new Response('front'); } };",
    );
    write(
        dir.path(),
        "back.js",
        "const a = 1;\nthrow new Error('back broke');\nexport default {};\n",
    );
    let mut front = worker("front", dir.path(), "front.js");
    front.services.push(ServiceBinding {
        binding: "BACK".into(),
        service: "back".into(),
        entrypoint: None,
    });
    let host = Host::start(config(vec![front, worker("back", dir.path(), "back.js")])).unwrap();
    for _ in 0..2 {
        let (s, t) = text(host.fetch("front", get("http://x/back")).await).await;
        assert_eq!(s, 500, "{t}");
        assert!(t.contains("back.js:2") && t.contains("back broke"), "{t}");
        let (s, t) = text(host.fetch("back", get("http://x/")).await).await;
        assert_eq!(s, 500, "{t}");
        assert_eq!(
            text(host.fetch("front", get("http://x/")).await).await,
            (200, "front".into())
        );
    }
    let err = host.scheduled("back", "* * * * *", 0).await.unwrap_err();
    assert!(err.to_string().contains("back.js:2"), "{err}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolate_failing_to_load_on_recreation_answers_500() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "w.js",
        "export default { fetch(r) { if (new URL(r.url).pathname === '/loop') { for (;;) {} } return new Response('fine'); } };",
    );
    let mut w = worker("w", dir.path(), "w.js");
    w.cpu_ms = Some(200);
    let host = Host::start(config(vec![w])).unwrap();
    assert_eq!(
        text(host.fetch("w", get("http://x/")).await).await.1,
        "fine"
    );
    // The next isolate of this worker will not load.
    write(
        dir.path(),
        "w.js",
        "const a = 1;\nthrow new Error('reload broke');\nexport default {};\n",
    );
    let (s, t) = text(host.fetch("w", get("http://x/loop")).await).await;
    assert_eq!((s, t.trim()), (503, "Worker exceeded CPU time limit."));
    let (s, t) = text(host.fetch("w", get("http://x/")).await).await;
    assert_eq!(s, 500, "{t}");
    assert!(t.contains("w.js:2") && t.contains("reload broke"), "{t}");
    host.shutdown().await;
}
