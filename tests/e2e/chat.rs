//! The chat example (`examples/chat`) as shipped, over real WebSocket clients: two clients in a
//! room see each other's messages, a late joiner gets the history, the per-user rate limiter
//! (a second Durable Object) refuses a flood, and the history survives a restart.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{connect, Message, WebSocket};

use crate::harness::{client, example, Server};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn chat() -> String {
    example("chat").to_str().expect("utf-8 path").to_string()
}

/// Joins `room` as `name`; returns the socket and the history the room sent, after checking
/// that the roster sent with it lists the newcomer.
fn join(server: &Server, room: &str, name: &str) -> (Ws, Vec<Value>) {
    let (ws, history, _) = join_with_roster(server, room, name);
    (ws, history)
}

/// [`join`], also returning the roster (sorted).
fn join_with_roster(server: &Server, room: &str, name: &str) -> (Ws, Vec<Value>, Vec<String>) {
    let url = server
        .url(&format!("/api/room/{room}/websocket?name={name}"))
        .replacen("http://", "ws://", 1);
    let (mut ws, resp) = connect(url.as_str()).unwrap_or_else(|e| panic!("join {room}: {e}"));
    assert_eq!(resp.status(), 101);
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        // Turns a lost message into a failure instead of a hang.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    let history = next(&mut ws);
    assert_eq!(history["type"], "history", "{history}");
    let mut users: Vec<String> = history["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u.as_str().expect("a name").to_string())
        .collect();
    users.sort();
    assert!(users.iter().any(|u| u == name), "{history}");
    let history = history["messages"].as_array().expect("messages").clone();
    (ws, history, users)
}

/// The next JSON frame.
fn next(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a frame from the room") {
            Message::Text(t) => {
                return serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn say(ws: &mut Ws, text: &str) {
    let msg = json!({"type": "message", "text": text}).to_string();
    ws.send(Message::Text(msg.into())).expect("send");
}

/// The next frame, which must be `name` saying `text`.
fn heard(ws: &mut Ws, name: &str, text: &str) -> Value {
    let m = next(ws);
    assert_eq!(
        (m["type"].as_str(), m["name"].as_str(), m["text"].as_str()),
        (Some("message"), Some(name), Some(text)),
        "{m}"
    );
    m
}

fn texts(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("?"))
        .collect()
}

#[test]
fn two_clients_in_a_room_see_each_others_messages_and_rooms_are_separate() {
    let server = Server::start(&[&chat()]);
    let (mut ann, history) = join(&server, "lobby", "ann");
    assert_eq!(history, Vec::<Value>::new());
    let (mut bob, _) = join(&server, "lobby", "bob");
    assert_eq!(next(&mut ann), json!({"type": "joined", "name": "bob"}));

    say(&mut ann, "hello bob");
    let m = heard(&mut ann, "ann", "hello bob");
    assert_eq!(m["seq"], 1);
    assert_eq!(next(&mut bob), m);
    say(&mut bob, "hi ann");
    let m = heard(&mut bob, "bob", "hi ann");
    assert_eq!(next(&mut ann), m);

    // Another room has its own sockets and its own sequence.
    let (mut cat, history) = join(&server, "kitchen", "cat");
    assert_eq!(history, Vec::<Value>::new());
    say(&mut cat, "anyone here?");
    assert_eq!(heard(&mut cat, "cat", "anyone here?")["seq"], 1);
    say(&mut ann, "still here");
    assert_eq!(heard(&mut ann, "ann", "still here")["seq"], 3);
    heard(&mut bob, "ann", "still here");
    // Nothing from the lobby reached the kitchen: cat's next frame is its own message.
    say(&mut cat, "guess not");
    heard(&mut cat, "cat", "guess not");

    // A leaving user is announced to those who stay.
    bob.close(None).expect("close");
    assert_eq!(next(&mut ann), json!({"type": "left", "name": "bob"}));
}

#[test]
fn a_late_joiner_gets_the_last_messages_and_bad_input_gets_clear_errors() {
    let server = Server::start(&[&chat(), "--var", "CHAT_HISTORY:3", "--var", "CHAT_BURST:50"]);
    let (mut ann, _) = join(&server, "history", "ann");
    for i in 1..=5 {
        say(&mut ann, &format!("m{i}"));
        heard(&mut ann, "ann", &format!("m{i}"));
    }
    let (_dan, history) = join(&server, "history", "dan");
    assert_eq!(next(&mut ann), json!({"type": "joined", "name": "dan"}));
    assert_eq!(texts(&history), ["m3", "m4", "m5"]);
    assert_eq!(
        history
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert!(history
        .iter()
        .all(|m| m["name"] == "ann" && m["at"].is_u64()));
    assert_eq!(
        server
            .get_json("/api/room/history/history")
            .as_array()
            .unwrap(),
        &history
    );

    // Bad frames are answered on the socket, which stays usable.
    ann.send(Message::Text("not json".into())).unwrap();
    assert_eq!(next(&mut ann)["type"], "error");
    ann.send(Message::Binary(vec![1u8, 2].into())).unwrap();
    assert_eq!(
        next(&mut ann),
        json!({"type": "error", "error": "send text"})
    );
    say(&mut ann, &"x".repeat(2001));
    assert_eq!(
        next(&mut ann),
        json!({"type": "error", "error": "messages are at most 2000 characters"})
    );
    ann.send(Message::Text(
        "{\"type\":\"message\",\"text\":\"  \"}".into(),
    ))
    .unwrap();
    say(&mut ann, "m6");
    heard(&mut ann, "ann", "m6");

    // Bad names are refused before any object is involved.
    let c = client();
    let bad_room = c
        .get(server.url("/api/room/no%20spaces/history"))
        .send()
        .unwrap();
    assert_eq!(bad_room.status(), 400);
    assert_eq!(
        bad_room.text().unwrap(),
        "room names are 1-32 letters, digits, '-' or '_'"
    );
    let no_name = c
        .get(server.url("/api/room/lobby/websocket"))
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .send()
        .unwrap();
    assert_eq!(no_name.status(), 400);
    assert_eq!(
        no_name.text().unwrap(),
        "user names are 1-32 printable characters"
    );
    let not_upgrade = c
        .get(server.url("/api/room/lobby/websocket?name=x"))
        .send()
        .unwrap();
    assert_eq!(not_upgrade.status(), 426);
}

#[test]
fn the_rate_limiter_refuses_a_flood_from_one_user_only() {
    // The shipped budget: a burst of 5, then 1 message per second.
    let server = Server::start(&[&chat()]);
    let (mut ann, _) = join(&server, "flood", "ann");
    let (mut bob, _) = join(&server, "flood", "bob");
    next(&mut ann); // bob joined

    let sent = 20;
    let start = Instant::now();
    for i in 0..sent {
        say(&mut ann, &format!("n{i}"));
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..sent {
        let f = next(&mut ann);
        match f["type"].as_str() {
            Some("message") => accepted.push(f),
            Some("error") => refused.push(f),
            _ => panic!("unexpected frame {f}"),
        }
    }
    let span = start.elapsed().as_secs_f64();
    assert!(
        accepted.len() >= 5,
        "the burst of 5 goes through: {accepted:?}"
    );
    assert!(
        accepted.len() as f64 <= 5.0 + span,
        "{} accepted in {span:.2} s exceeds a burst of 5 plus 1/s",
        accepted.len()
    );
    assert!(
        !refused.is_empty(),
        "{sent} messages in {span:.2} s were all accepted"
    );
    for r in &refused {
        let wait = r["retryAfterMs"].as_u64().unwrap_or_else(|| panic!("{r}"));
        assert!((1..=1000).contains(&wait), "a token comes within 1 s: {r}");
        assert!(r["error"]
            .as_str()
            .unwrap()
            .starts_with("slow down: you can send again in "));
    }
    // What was accepted went out in the order it was sent, numbered without gaps.
    let idx: Vec<usize> = accepted
        .iter()
        .map(|m| m["text"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
    let seqs: Vec<u64> = accepted
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=accepted.len() as u64).collect::<Vec<_>>());

    // Bob saw exactly the accepted ones, and his own budget is untouched.
    for m in &accepted {
        assert_eq!(&next(&mut bob), m);
    }
    say(&mut bob, "my turn");
    heard(&mut bob, "bob", "my turn");
    heard(&mut ann, "bob", "my turn");
}

#[test]
fn the_history_survives_a_restart() {
    let state = tempfile::tempdir().expect("state dir");
    let server = Server::start_in(state.path(), &[&chat()]);
    let (mut ann, _) = join(&server, "durable", "ann");
    say(&mut ann, "before the restart");
    heard(&mut ann, "ann", "before the restart");
    say(&mut ann, "me too");
    heard(&mut ann, "ann", "me too");
    // Killed, not shut down: a message that was broadcast had already been written durably.
    drop(ann);
    drop(server);

    let server = Server::start_in(state.path(), &[&chat()]);
    let (mut cat, history) = join(&server, "durable", "cat");
    assert_eq!(texts(&history), ["before the restart", "me too"]);
    // The room picks its numbering up where it stopped.
    say(&mut cat, "after");
    assert_eq!(heard(&mut cat, "cat", "after")["seq"], 3);
}

#[test]
fn a_hibernated_room_wakes_with_its_users_and_numbering() {
    let server = Server::start_with_env(
        &[&chat(), "--hibernate-after-ms", "300"],
        &[("RUST_LOG", "info,cinder_core=debug")],
    );
    let (mut ann, _) = join(&server, "sleepy", "ann");
    let (mut bob, _) = join(&server, "sleepy", "bob");
    next(&mut ann); // bob joined
    say(&mut ann, "before");
    heard(&mut ann, "ann", "before");
    heard(&mut bob, "ann", "before");
    let evicted = |log: &str| {
        log.lines()
            .any(|l| l.contains("evicting idle Durable Object") && l.contains("ChatRoom"))
    };
    assert!(
        evicted(&server.log_where(evicted)),
        "the idle room was not evicted"
    );

    // The page's keep-alive is answered by the runtime, without waking the room.
    ann.send(Message::Text("ping".into())).unwrap();
    match ann.read().expect("pong") {
        Message::Text(t) => assert_eq!(t.as_str(), "pong"),
        other => panic!("expected pong, got {other:?}"),
    }
    // The next message wakes it: its constructor finds the numbering in storage, and the
    // sockets' attachments still name their users.
    say(&mut bob, "after");
    assert_eq!(heard(&mut bob, "bob", "after")["seq"], 2);
    heard(&mut ann, "bob", "after");
    let (_cat, history, users) = join_with_roster(&server, "sleepy", "cat");
    assert_eq!(texts(&history), ["before", "after"]);
    assert_eq!(users, ["ann", "bob", "cat"]);
    assert_eq!(next(&mut ann), json!({"type": "joined", "name": "cat"}));
}
