//! R2 through the S3 API, PUT and GET MB/s, side by side with nginx serving (GET) and
//! accepting (WebDAV PUT) plain files on the same disk.
//!
//! The S3 endpoint runs in this process (store, actor runtime, `s3_router` on a loopback
//! socket, as the gateway mounts it); requests use presigned URLs, so every request still
//! goes through SigV4 verification. nginx (Debian's `nginx`, `/usr/sbin/nginx`) is started
//! with a generated config in the same scratch directory.
//!
//! ```sh
//! cargo run --release -p cinder-bench --bin r2_throughput -- --help
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cinder_r2::s3::{presign_url, s3_router, Credentials, S3Config};
use cinder_r2::R2Engine;
use cinder_storage::{Durability, Store, StoreConfig};
use clap::Parser;
use futures::StreamExt;

#[derive(Parser)]
#[command(about = "R2 S3 API GET/PUT MB/s vs nginx on the same disk")]
struct Args {
    /// Object size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: usize,
    /// Objects per round (each PUT then GET).
    #[arg(long, default_value_t = 8)]
    objects: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Rounds per server; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Scratch directory (default: a temp dir under ./target).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
}

const AK: &str = "bench";
const SK: &str = "bench-secret";

struct Figures {
    put: Vec<f64>,
    get: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One round: PUT every object, then GET every object; MB/s of each phase.
async fn round(
    client: &reqwest::Client,
    url_of: &(dyn Fn(&str, &str) -> String + Sync),
    payload: &Bytes,
    objects: usize,
    concurrency: usize,
    tag: usize,
) -> (f64, f64) {
    let total = (payload.len() * objects) as f64 / 1e6;
    let started = Instant::now();
    futures::stream::iter(0..objects)
        .for_each_concurrent(concurrency, |i| {
            let url = url_of("PUT", &format!("obj-{tag}-{i}"));
            let body = payload.clone();
            async move {
                // 1 MiB slices of one buffer: streamed, not copied.
                let chunks: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
                    .step_by(1 << 20)
                    .map(|o| Ok(body.slice(o..(o + (1 << 20)).min(body.len()))))
                    .collect();
                let resp = client
                    .put(url)
                    .header("content-length", body.len())
                    .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
                    .send()
                    .await
                    .expect("PUT");
                assert!(resp.status().is_success(), "PUT: {}", resp.status());
            }
        })
        .await;
    let put = total / started.elapsed().as_secs_f64();
    let started = Instant::now();
    futures::stream::iter(0..objects)
        .for_each_concurrent(concurrency, |i| {
            let url = url_of("GET", &format!("obj-{tag}-{i}"));
            let want = payload.len();
            async move {
                let resp = client.get(url).send().await.expect("GET");
                assert!(resp.status().is_success(), "GET: {}", resp.status());
                let mut n = 0;
                let mut s = resp.bytes_stream();
                while let Some(b) = s.next().await {
                    n += b.expect("body").len();
                }
                assert_eq!(n, want);
            }
        })
        .await;
    let get = total / started.elapsed().as_secs_f64();
    (put, get)
}

async fn bench_cinder(args: &Args, dir: &Path, durability: Durability, payload: &Bytes) -> Figures {
    let store = Store::open(
        &dir.join("store"),
        StoreConfig {
            durability,
            ..Default::default()
        },
    )
    .expect("store");
    let engine = R2Engine::open_with(&dir.join("blobs"), durability).expect("blobs");
    let runtime = cinder_core::Runtime::start(store, Default::default(), engine.namespaces())
        .expect("runtime");
    let r2 = engine.start(&runtime).await.expect("r2");
    r2.ensure_bucket("bench").await.expect("bucket");
    let creds = Credentials {
        access_key_id: AK.into(),
        secret_access_key: SK.into(),
    };
    let router = s3_router(
        r2,
        S3Config {
            credentials: vec![creds.clone()],
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let url_of = move |method: &str, key: &str| {
        presign_url(
            &creds,
            method,
            &format!("http://{addr}/bench/{key}"),
            "auto",
            3600,
            SystemTime::now(),
        )
        .expect("presign")
    };
    let mut f = Figures {
        put: Vec::new(),
        get: Vec::new(),
    };
    for r in 0..args.rounds {
        let (p, g) = round(&client, &url_of, payload, args.objects, args.concurrency, r).await;
        f.put.push(p);
        f.get.push(g);
    }
    server.abort();
    tokio::task::spawn_blocking(move || runtime.shutdown())
        .await
        .expect("shutdown");
    f
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_nginx(args: &Args, dir: &Path, payload: &Bytes) -> Figures {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    std::fs::create_dir_all(dir.join("www")).expect("www");
    std::fs::create_dir_all(dir.join("tmp")).expect("tmp");
    let d = dir.display();
    let conf = format!(
        "user root root; worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{}}\n\
         http {{ access_log off; client_max_body_size 0; client_body_temp_path {d}/tmp;\n\
           server {{ listen 127.0.0.1:{port}; root {d}/www;\n\
             location / {{ dav_methods PUT; create_full_put_path on; }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("conf");
    let child = Command::new(&args.nginx)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx (apt-get install nginx)");
    let _guard = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = reqwest::Client::new();
    let url_of = move |_: &str, key: &str| format!("http://127.0.0.1:{port}/{key}");
    let mut f = Figures {
        put: Vec::new(),
        get: Vec::new(),
    };
    for r in 0..args.rounds {
        let (p, g) = round(&client, &url_of, payload, args.objects, args.concurrency, r).await;
        f.put.push(p);
        f.get.push(g);
    }
    f
}

fn main() {
    let args = Args::parse();
    let scratch = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("dir");
            tempfile::tempdir_in(d).expect("tmp")
        }
        None => {
            std::fs::create_dir_all("target").expect("target");
            tempfile::tempdir_in("target").expect("tmp")
        }
    };
    let size = args.size_mib << 20;
    // Incompressible-looking bytes (xorshift), made once.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let payload: Bytes = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let payload = Arc::new(payload);
    println!(
        "{} objects x {} MiB per round, concurrency {}, {} rounds (medians), scratch {}",
        args.objects,
        args.size_mib,
        args.concurrency,
        args.rounds,
        scratch.path().display()
    );
    let mut rows = Vec::new();
    for (name, durability) in [
        ("cinder S3, fsync", Durability::Fsync),
        ("cinder S3, process", Durability::Process),
    ] {
        let dir = scratch.path().join(name.replace([' ', ','], ""));
        let mut f = rt.block_on(bench_cinder(&args, &dir, durability, &payload));
        rows.push((name, median(&mut f.put), median(&mut f.get)));
    }
    let mut f = rt.block_on(bench_nginx(&args, &scratch.path().join("nginx"), &payload));
    rows.push((
        "nginx (WebDAV PUT, no fsync)",
        median(&mut f.put),
        median(&mut f.get),
    ));
    println!("| server | PUT MB/s | GET MB/s |\n|---|---|---|");
    for (name, put, get) in rows {
        println!("| {name} | {put:.0} | {get:.0} |");
    }
}
