// The chat page, served by the Worker at "/": plain HTML and JavaScript, no build step.
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cinder chat</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; }
  header { padding: .6em 1em; background: #20232a; color: #eee; display: flex; gap: 1em; align-items: center; }
  header b { color: #ff8a3d; }
  #join { padding: 2em; display: flex; flex-direction: column; gap: .6em; max-width: 22em; }
  #chat { display: none; flex: 1; min-height: 0; }
  #chat.on { display: flex; }
  #log { flex: 1; overflow-y: auto; list-style: none; margin: 0; padding: .6em 1em; }
  #log li.system { color: #777; font-style: italic; }
  #log li.error { color: #b00020; }
  #log li .who { font-weight: 600; margin-right: .4em; }
  #users { width: 12em; border-left: 1px solid #ddd; padding: .6em 1em; list-style: none; margin: 0; }
  main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
  form#say { display: flex; border-top: 1px solid #ddd; }
  #text { flex: 1; padding: .7em; border: 0; font: inherit; }
  input { font: inherit; padding: .4em; }
</style>
</head>
<body>
<header><b>cinder chat</b><span id="status">not connected</span></header>
<form id="join">
  <label>Room <input id="room" required pattern="[A-Za-z0-9_-]{1,32}" placeholder="lobby"></label>
  <label>Your name <input id="name" required maxlength="32" placeholder="ann"></label>
  <button id="enter">Join</button>
</form>
<div id="chat">
  <main>
    <ul id="log"></ul>
    <form id="say"><input id="text" autocomplete="off" maxlength="2000" placeholder="Say something"><button id="send">Send</button></form>
  </main>
  <ul id="users"></ul>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let ws, room, name, keepAlive, retry = 0;

$("room").value = decodeURIComponent(location.hash.slice(1)) || "";

function line(cls, who, text, at) {
  const li = document.createElement("li");
  li.className = cls;
  if (at) li.title = new Date(at).toLocaleString();
  if (who) {
    const w = document.createElement("span");
    w.className = "who";
    w.textContent = who + ":";
    li.append(w);
  }
  li.append(document.createTextNode(text));
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// name -> open sockets (tabs) of that user in the room.
const present = new Map();
function showUsers() {
  const names = [...present.keys()].sort();
  $("users").replaceChildren(...names.map((u) => Object.assign(document.createElement("li"), { textContent: u })));
}
function presence(who, delta) {
  const n = (present.get(who) ?? 0) + delta;
  if (n > 0) present.set(who, n);
  else present.delete(who);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(scheme + "://" + location.host + "/api/room/" + encodeURIComponent(room) +
    "/websocket?name=" + encodeURIComponent(name));
  $("status").textContent = "connecting to " + room + "...";
  ws.onopen = () => {
    retry = 0;
    $("status").textContent = name + " in " + room;
    document.body.dataset.connected = "yes";
    // Answered by the runtime without waking the room (setWebSocketAutoResponse).
    keepAlive = setInterval(() => ws.send("ping"), 30000);
  };
  ws.onmessage = (ev) => {
    if (ev.data === "pong") return;
    const msg = JSON.parse(ev.data);
    if (msg.type === "history") {
      $("log").replaceChildren();
      present.clear();
      for (const u of msg.users) presence(u, 1);
      showUsers();
      for (const m of msg.messages) line("msg", m.name, m.text, m.at);
      line("system", null, msg.messages.length ? "(history above)" : "(no messages yet)");
    } else if (msg.type === "message") {
      line("msg", msg.name, msg.text, msg.at);
    } else if (msg.type === "joined" || msg.type === "left") {
      const joined = msg.type === "joined";
      line("system", null, msg.name + (joined ? " joined" : " left"));
      presence(msg.name, joined ? 1 : -1);
      showUsers();
    } else if (msg.type === "error") {
      line("error", null, msg.error);
    }
  };
  ws.onclose = () => {
    clearInterval(keepAlive);
    delete document.body.dataset.connected;
    $("status").textContent = "disconnected; reconnecting...";
    // Back off up to 10 s, so a restarting server is not hammered.
    setTimeout(connect, Math.min(10000, 500 * 2 ** retry++));
  };
}

$("join").onsubmit = (e) => {
  e.preventDefault();
  room = $("room").value.trim();
  name = $("name").value.trim();
  if (!room || !name) return;
  location.hash = encodeURIComponent(room);
  $("join").style.display = "none";
  $("chat").classList.add("on");
  connect();
  $("text").focus();
};

$("say").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify({ type: "message", text }));
  $("text").value = "";
};
</script>
</body>
</html>
`;
