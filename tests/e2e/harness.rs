//! Starting the real `cinder` binary and talking to it.
//!
//! [`Server::start`] runs `cinder dev --port 0 --persist-to <temp>` plus the test's arguments,
//! waits (with a deadline, never a sleep) for the "Ready on http://..." line on stdout, and kills
//! the process when dropped. Its stderr is kept for assertions and echoed for debugging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the binary may take to print its Ready line (debug build, V8 start-up, 2 cores
/// shared with other test processes).
pub const READY_DEADLINE: Duration = Duration::from_secs(120);

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// A project under `examples/`: the examples are tested as shipped.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// The binary under test: cargo's build of it, or `CINDER_BIN` when set (a copy taken right
/// after the build, when other builds share and overwrite the target directory).
pub fn cinder() -> Command {
    match std::env::var_os("CINDER_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_cinder")),
    }
}

pub struct Server {
    child: Child,
    pub base: String,
    stderr: Arc<Mutex<String>>,
    /// Everything printed on stdout, up to and including the Ready line so far.
    stdout: Arc<Mutex<String>>,
    _state: Option<tempfile::TempDir>,
}

/// The process ended before it was ready.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        match Server::try_start(args) {
            Ok(s) => s,
            Err(f) => panic!(
                "cinder dev {args:?} did not become ready (status {:?}); stderr:\n{}",
                f.status, f.stderr
            ),
        }
    }

    /// Like [`Server::start`], with state kept in `state` (which outlives the server, for
    /// restart tests).
    pub fn start_in(state: &Path, args: &[&str]) -> Server {
        match Server::try_start_with(Some(state), args) {
            Ok(s) => s,
            Err(f) => panic!(
                "cinder dev {args:?} did not become ready (status {:?}); stderr:\n{}",
                f.status, f.stderr
            ),
        }
    }

    /// Like [`Server::start`], with extra environment variables for the process.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_full(None, args, env)
    }

    /// [`Server::start_in`] and [`Server::start_with_env`] together.
    pub fn start_full(state: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
        match Server::try_start_full(state, args, env) {
            Ok(s) => s,
            Err(f) => panic!(
                "cinder dev {args:?} did not become ready (status {:?}); stderr:\n{}",
                f.status, f.stderr
            ),
        }
    }

    pub fn try_start(args: &[&str]) -> Result<Server, StartFailure> {
        Server::try_start_with(None, args)
    }

    fn try_start_with(state_dir: Option<&Path>, args: &[&str]) -> Result<Server, StartFailure> {
        Server::try_start_full(state_dir, args, &[])
    }

    fn try_start_full(
        state_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, StartFailure> {
        let owned = match state_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().expect("temp dir")),
        };
        let state_path = state_dir
            .map(Path::to_path_buf)
            .or_else(|| owned.as_ref().map(|t| t.path().to_path_buf()))
            .expect("a state directory");
        let mut cmd = cinder();
        cmd.envs(env.iter().copied())
            .arg("dev")
            .args(args)
            .args(["--port", "0", "--persist-to"])
            .arg(&state_path);
        Server::try_spawn(cmd, owned)
    }

    /// `cinder serve --config <node_toml> --state <state> --listen 127.0.0.1:0`.
    pub fn start_serve(node_toml: &Path, state: &Path) -> Server {
        let mut cmd = cinder();
        cmd.arg("serve")
            .arg("--config")
            .arg(node_toml)
            .arg("--state")
            .arg(state)
            .args(["--listen", "127.0.0.1:0"]);
        match Server::try_spawn(cmd, None) {
            Ok(s) => s,
            Err(f) => panic!(
                "cinder serve did not become ready (status {:?}); stderr:\n{}",
                f.status, f.stderr
            ),
        }
    }

    /// Runs `cmd`, a command line that ends up exec'ing `cinder dev` or `cinder serve` with
    /// port 0 (possibly through a wrapper such as `unshare`), and waits for its Ready line as
    /// [`Server::start`] does. `owned` (a state directory) is dropped with the server.
    pub fn try_spawn(
        mut cmd: Command,
        owned: Option<tempfile::TempDir>,
    ) -> Result<Server, StartFailure> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cinder");

        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                eprintln!("[cinder] {line}");
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });

        let (ready_tx, ready_rx) = mpsc::channel();
        let out_pipe = child.stdout.take().expect("stdout");
        let stdout = Arc::new(Mutex::new(String::new()));
        let out_sink = stdout.clone();
        thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                eprintln!("[cinder stdout] {line}");
                {
                    let mut s = out_sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
                if let Some(url) = line.strip_prefix("Ready on ") {
                    let _ = ready_tx.send(url.trim().to_string());
                }
            }
        });

        match ready_rx.recv_timeout(READY_DEADLINE) {
            Ok(base) => Ok(Server {
                child,
                base,
                stderr,
                stdout,
                _state: owned,
            }),
            Err(_) => {
                // Either the process exited (stdout closed) or the deadline passed.
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut status = None;
                while Instant::now() < deadline {
                    if let Ok(Some(s)) = child.try_wait() {
                        status = Some(s);
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                // Let the stderr reader drain what is left.
                let drained = Instant::now() + Duration::from_secs(5);
                let mut text = stderr.lock().unwrap().clone();
                while Instant::now() < drained && status.is_some() && Arc::strong_count(&stderr) > 1
                {
                    thread::sleep(Duration::from_millis(20));
                    text = stderr.lock().unwrap().clone();
                }
                Err(StartFailure {
                    status,
                    stderr: text,
                })
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// What the server printed on stdout; lines printed before "Ready on" are all there.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The server's log once `matches` accepts it, or as it stands after 10 s. The server writes
    /// a log line before it answers, but the thread that reads its stderr pipe may not have
    /// caught up when the response arrives, so a log assertion waits for the line instead of
    /// reading once.
    pub fn log_where(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.stderr();
            if matches(&log) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        client()
            .get(self.url(path))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nstderr:\n{}", self.stderr()))
    }

    /// Runs a fixture's conformance suite: `GET /cases` lists the case names (at least
    /// `at_least` of them), `GET /t/<case>` runs one and answers `ok` or what went wrong; every
    /// failing case is reported at once.
    pub fn run_cases(&self, at_least: usize) {
        let cases: Vec<String> =
            serde_json::from_value(self.get_json("/cases")).expect("a list of case names");
        assert!(cases.len() >= at_least, "{cases:?}");
        let mut failures = Vec::new();
        for case in &cases {
            let resp = self.get(&format!("/t/{case}"));
            let status = resp.status();
            let text = resp.text().unwrap_or_default();
            if !status.is_success() || text != "ok" {
                failures.push(format!("{case}: {status}: {text}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}\nstderr:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n\n"),
            self.stderr()
        );
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self.get(path);
        let status = resp.status();
        let text = resp.text().expect("body");
        assert!(
            status.is_success(),
            "GET {path}: {status}: {text}\nstderr:\n{}",
            self.stderr()
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32, deadline: Duration) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        self.wait_exit(deadline)
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "cinder did not exit within {deadline:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// A tiny HTTP/1.1 server on 127.0.0.1 standing in for "some other service": answers every
/// request with `hello from upstream` and reports each request line on a channel.
pub struct Upstream {
    pub url: String,
    pub requests: mpsc::Receiver<String>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                thread::spawn(move || serve_one(stream, tx));
            }
        });
        Upstream { url, requests: rx }
    }

    pub fn next_request(&self, deadline: Duration) -> String {
        self.requests
            .recv_timeout(deadline)
            .expect("upstream saw no request in time")
    }
}

fn serve_one(mut stream: TcpStream, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    let _ = reader.read_exact(&mut body);
    let _ = tx.send(request_line.trim().to_string());
    let reply = "hello from upstream";
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

/// Copies a fixture into a temp dir so a test can add or change files.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&fixture(name), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
