//! `cinder serve`: several projects on one node, routed by their wrangler routes, and a
//! redeploy (SIGHUP) under load that drops no request and mixes no versions within one.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{client, Server};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn get_host(server: &Server, host: &str, path: &str) -> (u16, String) {
    let resp = client()
        .get(server.url(path))
        .header("host", host)
        .send()
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}\n{}", server.stderr()));
    (resp.status().as_u16(), resp.text().unwrap())
}

#[test]
fn each_request_reaches_the_project_whose_route_matches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("shop/wrangler.toml"),
        r#"name = "shop"
main = "index.js"
routes = ["shop.example.com/*", { pattern = "api.example.com/shop/*", zone_name = "example.com" }]
"#,
    );
    write(
        &root.join("shop/index.js"),
        "export default { fetch(req) { return new Response('shop ' + new URL(req.url).pathname) } }",
    );
    write(
        &root.join("blog/wrangler.toml"),
        r#"name = "blog"
main = "index.js"
routes = [{ pattern = "blog.example.com", custom_domain = true }, "api.example.com/*", "*.blogs.example.com/*"]
[vars]
GREETING = "blog"
"#,
    );
    write(
        &root.join("blog/index.js"),
        "export default { fetch(req, env) { return new Response(env.GREETING + ' ' + new URL(req.url).pathname) } }",
    );
    write(
        &root.join("node.toml"),
        "[node]\nthreads = 2\n\n[[project]]\npath = \"shop\"\n\n[[project]]\npath = \"blog\"\n",
    );
    let state = tempfile::tempdir().unwrap();
    let server = Server::start_serve(&root.join("node.toml"), state.path());

    let cases = [
        ("shop.example.com", "/cart", 200, "shop /cart"),
        ("SHOP.example.com:8080", "/", 200, "shop /"),
        ("api.example.com", "/shop/items", 200, "shop /shop/items"),
        ("api.example.com", "/posts", 200, "blog /posts"),
        ("blog.example.com", "/2026/hello", 200, "blog /2026/hello"),
        ("me.blogs.example.com", "/", 200, "blog /"),
    ];
    for (host, path, status, body) in cases {
        assert_eq!(
            get_host(&server, host, path),
            (status, body.to_string()),
            "{host}{path}"
        );
    }
    let (status, body) = get_host(&server, "other.example.org", "/x");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("No worker on this node has a route matching other.example.org/x"),
        "{body}"
    );
}

const APP_TOML: &str = r#"name = "app"
main = "index.js"
routes = ["app.example.com/*"]
[vars]
UPSTREAM = "UPSTREAM_URL"
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[migrations]]
tag = "v1"
new_classes = ["Counter"]
"#;

fn app_js(version: u32) -> String {
    format!(
        r#"import {{ DurableObject }} from "cloudflare:workers";
const V = "v{version}";
export class Counter extends DurableObject {{
  async fetch() {{
    const n = ((await this.ctx.storage.get("n")) ?? 0) + 1;
    await this.ctx.storage.put("n", n);
    return new Response(V + ":" + n);
  }}
}}
export default {{
  async fetch(req, env) {{
    const path = new URL(req.url).pathname;
    if (path === "/count") return env.COUNTER.getByName("c").fetch(req);
    if (path === "/hold") {{
      const r = await fetch(env.UPSTREAM);
      return new Response(V + ":" + (await r.text()));
    }}
    return new Response(V, {{ headers: {{ "x-version": V }} }});
  }}
}};
"#
    )
}

#[test]
fn a_redeploy_under_load_drops_nothing_and_mixes_no_versions() {
    // The old version's `/hold` waits on this listener, so it is provably in flight across the
    // switch.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_url = format!("http://{}/", upstream.local_addr().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("app/wrangler.toml"),
        &APP_TOML.replace("UPSTREAM_URL", &upstream_url),
    );
    write(&root.join("app/index.js"), &app_js(1));
    write(
        &root.join("node.toml"),
        "[node]\nthreads = 2\nallow_private_fetch = true\n[[project]]\npath = \"app\"\n",
    );
    let state = tempfile::tempdir().unwrap();
    let server = Server::start_serve(&root.join("node.toml"), state.path());
    let host = "app.example.com";

    assert_eq!(get_host(&server, host, "/count"), (200, "v1:1".into()));
    assert_eq!(get_host(&server, host, "/count"), (200, "v1:2".into()));

    // A request of the old version, parked on the upstream.
    let held = {
        let url = server.url("/hold");
        std::thread::spawn(move || {
            let resp = client().get(url).header("host", host).send().unwrap();
            (resp.status().as_u16(), resp.text().unwrap())
        })
    };
    let (mut parked, _) = upstream.accept().unwrap();

    // Load from 4 clients while the new version goes in.
    let stop = Arc::new(AtomicBool::new(false));
    let seen_v2 = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let url = server.url("/");
            let stop = stop.clone();
            let seen_v2 = seen_v2.clone();
            std::thread::spawn(move || {
                let c = client();
                let mut answers = 0;
                while !stop.load(Ordering::Relaxed) {
                    let resp = c.get(&url).header("host", host).send().unwrap();
                    assert_eq!(resp.status(), 200);
                    let header = resp.headers()["x-version"].to_str().unwrap().to_string();
                    let body = resp.text().unwrap();
                    assert_eq!(header, body, "one request saw two versions");
                    assert!(body == "v1" || body == "v2", "{body}");
                    if body == "v2" {
                        seen_v2.fetch_add(1, Ordering::Relaxed);
                    }
                    answers += 1;
                }
                answers
            })
        })
        .collect();

    write(&root.join("app/index.js"), &app_js(2));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen_v2.load(Ordering::Relaxed) < 20 {
        assert!(
            Instant::now() < deadline,
            "the new version never answered; log:\n{}",
            server.stderr()
        );
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let answered: usize = loaders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(answered > 20);

    // The parked request finishes on the version it started on.
    let mut line = String::new();
    let mut reader = BufReader::new(parked.try_clone().unwrap());
    while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
        line.clear();
    }
    write!(
        parked,
        "HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nreleased"
    )
    .unwrap();
    assert_eq!(held.join().unwrap(), (200, "v1:released".to_string()));

    // The object was reset onto the new code and kept its storage.
    assert_eq!(get_host(&server, host, "/count"), (200, "v2:3".into()));
    let log = server.log_where(|l| l.contains("deployed [app]"));
    assert!(log.contains("deployed [app]"), "{log}");
}
