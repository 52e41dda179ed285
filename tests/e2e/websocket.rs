//! WebSockets against the real binary with a real WebSocket client: a plain socket in a worker,
//! Cloudflare's chat-demo style (accept + addEventListener) in a Durable Object, and the
//! hibernation API: tags, attachments, auto-response, close events for every socket, limits,
//! and a hibernation round trip (object evicted, constructor runs again, same sockets).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{connect, Message, WebSocket};

use crate::harness::{fixture, Server};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn open(server: &Server, path: &str) -> Ws {
    let url = server.url(path).replacen("http://", "ws://", 1);
    let (ws, resp) = connect(url.as_str()).unwrap_or_else(|e| panic!("connect {path}: {e}"));
    assert_eq!(resp.status(), 101);
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    ws
}

fn text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

fn send(ws: &mut Ws, t: &str) {
    ws.send(Message::Text(t.to_string().into())).unwrap();
}

fn ask(ws: &mut Ws, t: &str) -> Value {
    send(ws, t);
    serde_json::from_str(&text(ws)).unwrap()
}

fn poll_json(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let v = server.get_json(path);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < end, "{path}: never reached; last {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_echoes_on_a_plain_socket_and_closes_cleanly() {
    let server = Server::start(&[fixture("websocket").to_str().unwrap()]);
    let mut ws = open(&server, "/plain");
    send(&mut ws, "hello");
    assert_eq!(text(&mut ws), "echo:hello");
    ws.send(Message::Binary(vec![1u8, 2, 3].into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(vec![1u8, 2, 3].into()));
    send(&mut ws, "bye");
    match ws.read() {
        Ok(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1000);
            assert_eq!(f.reason, "done");
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
}

#[test]
fn chat_demo_style_rooms_broadcast_between_clients() {
    let server = Server::start(&[fixture("websocket").to_str().unwrap()]);
    let mut a = open(&server, "/chat/lobby");
    let mut b = open(&server, "/chat/lobby");
    send(&mut a, "hi from a");
    assert_eq!(text(&mut a), "echo hi from a");
    assert_eq!(text(&mut b), "echo hi from a");
    send(&mut b, "hi from b");
    assert_eq!(text(&mut a), "echo hi from b");
    assert_eq!(text(&mut b), "echo hi from b");
}

#[test]
fn hibernatable_sockets_tags_attachments_auto_response_and_limits() {
    let server = Server::start(&[fixture("websocket").to_str().unwrap()]);
    let mut a = open(&server, "/room/r1?user=ann&tag=blue&tag=admin");
    let mut b = open(&server, "/room/r1?user=bob&tag=blue");
    let who = ask(&mut a, "who:admin");
    assert_eq!(who["attachment"], json!({"user": "ann", "n": 1}));
    assert_eq!(who["tags"], json!(["blue", "admin"]));
    assert_eq!(who["count"], 2);
    assert_eq!(who["tagged"], 1);
    assert_eq!(who["autoResponse"], "pong");
    assert_eq!(who["lastPong"], false);
    // The auto-response is answered by the runtime.
    send(&mut a, "ping");
    assert_eq!(text(&mut a), "pong");
    assert_eq!(ask(&mut a, "who")["lastPong"], true);
    send(&mut b, "broadcast:hello");
    assert_eq!(text(&mut a), "from bob: hello");
    assert_eq!(text(&mut b), "from bob: hello");
    // Binary messages arrive as ArrayBuffer.
    a.send(Message::Binary(vec![1u8, 2, 3].into())).unwrap();
    assert_eq!(a.read().unwrap(), Message::Binary(vec![3u8, 2, 1].into()));
    // Limits.
    send(&mut a, "bigattach");
    let err = text(&mut a);
    assert!(
        err.starts_with("RangeError: A WebSocket 'attachment' cannot be larger than 16384 bytes"),
        "{err}"
    );
    let too_many: String = (1..=11).map(|i| format!("&tag={i}")).collect();
    let resp = crate::harness::client()
        .get(server.url(&format!("/room/r1?user=x{too_many}")))
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().unwrap(),
        "TypeError: A WebSocket can have a maximum of 10 tags, got 11."
    );
}

#[test]
fn every_closed_socket_yields_exactly_one_web_socket_close() {
    let server = Server::start(&[fixture("websocket").to_str().unwrap()]);
    let mut clean = open(&server, "/room/closes?user=clean");
    let vanished = open(&server, "/room/closes?user=vanished");
    let mut closed_by_server = open(&server, "/room/closes?user=server");
    assert_eq!(ask(&mut clean, "who")["count"], 3);
    clean
        .close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        }))
        .unwrap();
    // The client vanishes without a close frame.
    drop(vanished);
    send(&mut closed_by_server, "close");
    match closed_by_server.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4001),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    let _ = closed_by_server.flush();
    let v = poll_json(&server, "/room/closes/closes", |v| {
        v.as_array().is_some_and(|a| a.len() >= 3)
    });
    let mut got: Vec<Value> = v.as_array().unwrap().clone();
    got.sort_by_key(|c| c["user"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        got,
        vec![
            json!({"user": "clean", "code": 4000, "reason": "bye", "wasClean": true}),
            json!({"user": "server", "code": 4001, "reason": "server closing", "wasClean": true}),
            json!({"user": "vanished", "code": 1006, "reason": "", "wasClean": false}),
        ]
    );
    // Exactly one each: nothing more arrives.
    assert_eq!(
        server
            .get_json("/room/closes/closes")
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn a_hibernated_room_wakes_with_the_same_sockets_tags_and_attachments() {
    let server = Server::start_with_env(
        &[
            fixture("websocket").to_str().unwrap(),
            "--hibernate-after-ms",
            "300",
        ],
        &[("RUST_LOG", "info,cinder_core=debug")],
    );
    let mut a = open(&server, "/room/h?user=ann&tag=t");
    let mut b = open(&server, "/room/h?user=bob");
    assert_eq!(ask(&mut a, "who")["constructions"], 1);
    // The object leaves memory once idle; the sockets stay open.
    server.log_where(|l| l.contains("evicting idle Durable Object"));
    // Pings are answered without waking it.
    send(&mut b, "ping");
    assert_eq!(text(&mut b), "pong");
    let who = ask(&mut a, "who");
    assert_eq!(who["constructions"], 2, "the constructor ran again: {who}");
    assert_eq!(who["count"], 2);
    assert_eq!(who["tags"], json!(["t"]));
    assert_eq!(who["attachment"], json!({"user": "ann", "n": 1}));
    send(&mut b, "broadcast:after");
    assert_eq!(text(&mut a), "from bob: after");
    assert_eq!(text(&mut b), "from bob: after");
}

#[test]
fn two_upgrades_arriving_together_still_let_the_room_hibernate() {
    let server = Server::start_with_env(
        &[
            fixture("websocket").to_str().unwrap(),
            "--hibernate-after-ms",
            "300",
        ],
        &[("RUST_LOG", "info,cinder_core=debug")],
    );
    // Both upgrades reach the object while neither has been accepted yet.
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    let joins: Vec<_> = ["ann", "bob"]
        .into_iter()
        .map(|user| {
            let url = server
                .url(&format!("/room/pair?user={user}"))
                .replacen("http://", "ws://", 1);
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let (ws, resp) = connect(url.as_str()).expect("upgrade");
                assert_eq!(resp.status(), 101);
                ws
            })
        })
        .collect();
    let mut sockets: Vec<Ws> = joins.into_iter().map(|j| j.join().unwrap()).collect();
    let log = server.log_where(|l| l.contains("evicting idle Durable Object"));
    assert!(
        log.contains("evicting idle Durable Object"),
        "the room never hibernated:\n{log}"
    );
    let who = ask(&mut sockets[0], "who");
    assert_eq!(who["constructions"], 2, "the constructor ran again: {who}");
    assert_eq!(who["count"], 2, "both sockets survived hibernation: {who}");
}

#[test]
fn a_message_sent_after_a_write_leaves_once_the_write_is_durable() {
    let server = Server::start(&[fixture("websocket").to_str().unwrap()]);
    let mut a = open(&server, "/room/store?user=ann");
    send(&mut a, "store:v1");
    assert_eq!(text(&mut a), "stored v1");
    // Whoever saw the message can rely on the write.
    assert_eq!(server.get_json("/room/store/stored"), json!("v1"));
}

#[test]
fn a_partyserver_room_from_npm_runs_unmodified() {
    let dir = fixture("partyserver");
    if !dir.join("node_modules/partyserver").is_dir() {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm is needed for this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = Server::start(&[dir.to_str().unwrap()]);
    let mut a = open(&server, "/parties/chat/room1");
    assert_eq!(text(&mut a), "welcome room1");
    let mut b = open(&server, "/parties/chat/room1");
    assert_eq!(text(&mut b), "welcome room1");
    send(&mut a, "hello");
    assert!(text(&mut a).ends_with(": hello"));
    assert!(text(&mut b).ends_with(": hello"));
}

/// A WebSocket echo server on loopback for outgoing connections; returns its ws:// URL.
fn echo_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/echo", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut ws) = tokio_tungstenite::tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    match m {
                        Message::Text(t) => {
                            let _ = ws.send(Message::Text(format!("echo {t}").into()));
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    });
    url
}

#[test]
fn outgoing_websockets_follow_the_fetch_address_rules() {
    let upstream = echo_upstream();
    let refused = Server::start(&[fixture("websocket").to_str().unwrap()]);
    let resp = refused.get(&format!("/outgoing?to={upstream}"));
    assert_eq!(resp.status(), 502);
    assert!(resp.text().unwrap().contains("refused"));

    let server = Server::start(&[
        fixture("websocket").to_str().unwrap(),
        "--allow-private-fetch",
    ]);
    for via in ["new", "fetch"] {
        let resp = server.get(&format!("/outgoing?to={upstream}&via={via}"));
        assert_eq!(resp.status(), 200, "via {via}");
        assert_eq!(resp.text().unwrap(), "upstream said: echo hello upstream");
    }
}
