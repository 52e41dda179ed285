#!/usr/bin/env python3
"""Queues messages/s end to end through a Worker (issue 15), `cinder dev` and Miniflare side by
side on the same project (bench/workers/queues), alternating rounds.

Each round sends --messages messages through the producer from --connections concurrent
keep-alive clients, then polls `GET /count` until the consumer has counted every one. Reported
per server: messages/s sent (acknowledged answers: on cinder a message is durable before `send`
resolves) and end to end (from the first send until the last message was consumed and counted).
- batched: POST /send?n=100, one `sendBatch()` of 100 messages per request.
- single:  POST /send1, one `send()` per request.
The consumer (max_batch_size 100, max_batch_timeout 0) adds each batch's size to a Durable
Object counter (a durable write per batch), then acks the batch.

A round is a fixed number of messages, not a fixed time, and the default stays under 10,000:
Miniflare's local queue broker sets one timer per pending message and fails every send once
10,000 are pending ("QuotaExceededError: You have exceeded the number of active timeouts you
may set"), which an open-ended load reaches within seconds because its consumer falls behind.

    (cd bench/workers && npm ci)             # once: workerd and miniflare
    CINDER=/path/to/release/cinder python3 bench/workers/queues.py

Standard library only; every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness as h
from miniflare_side import tree_cpu

HERE = Path(__file__).resolve().parent
MINIFLARE = HERE / "miniflare.mjs"
PROJECT = HERE / "queues"
BINDINGS = {
    "queueProducers": {"JOBS": "bench-jobs"},
    "queueConsumers": {"bench-jobs": {"maxBatchSize": 100, "maxBatchTimeout": 0}},
    "durableObjects": {"COUNTER": "Counter"},
}
# path, messages per request
WORKLOADS = {"batched": ("/send?n=100", 100), "single": ("/send1", 1)}


def start(what: str, cinder: Path | None, tmp: Path, cpus: str | None):
    port = h.free_port()
    log = tmp / f"{what}.log"
    state = tmp / f"state-{what}"
    state.mkdir()
    if what == "miniflare":
        argv = ["node", str(MINIFLARE), str(PROJECT / "src" / "index.js"), str(port), str(state),
                json.dumps(BINDINGS)]
        env = dict(os.environ)
    else:
        argv = [str(cinder), "dev", str(PROJECT), "--ip", "127.0.0.1", "--port", str(port),
                "--persist-to", str(state)]
        env = dict(os.environ, RUST_LOG="warn")
    proc = h.spawn(argv, log, cpus, env)
    h.wait_ready(proc, port, log, what)
    return proc, port, log


def count(port: int) -> int:
    status, body = h.request(port, "GET", "/count", timeout=30)
    if status != 200:
        sys.exit(f"/count answered {status}: {body[:200]!r}")
    return int(body)


def send_all(port: int, path: str, requests: int, connections: int) -> list[str]:
    """POSTs `path` `requests` times from `connections` keep-alive clients; returns failures."""
    left = iter(range(requests))
    lock = threading.Lock()
    failures: list[str] = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if next(left, None) is None:
                    break
            try:
                conn.request("POST", path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    failures.append(f"{resp.status} {body[:200]!r}")
            except OSError as e:
                failures.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def run(port: int, workload: str, args, log: Path) -> dict:
    path, per_request = WORKLOADS[workload]
    requests = max(1, args.messages // per_request)
    sent = requests * per_request
    before = count(port)
    t0 = time.monotonic()
    failures = send_all(port, path, requests, args.connections)
    t_sent = time.monotonic() - t0
    if failures:
        sys.exit(f"{len(failures)} of {requests} producer requests failed, e.g. {failures[0]}\n{h.tail(log)}")
    deadline = time.monotonic() + args.drain_timeout
    while True:
        got = count(port) - before
        if got >= sent:
            break
        if time.monotonic() > deadline:
            sys.exit(f"only {got} of {sent} messages consumed after {args.drain_timeout:.0f}s\n{h.tail(log)}")
        time.sleep(0.01)
    t_done = time.monotonic() - t0
    return {"sent": sent, "send_rate": sent / t_sent, "e2e_rate": sent / t_done, "drain_s": t_done - t_sent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cinder", help="cinder binary (default: $CINDER, then target/release/cinder)")
    ap.add_argument("--only", choices=["cinder", "miniflare"])
    ap.add_argument("--workloads", default="batched,single")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=9000, help="messages per round")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--pin", choices=["split", "none"], default="split",
                    help="split: server on cpu 1, this client on cpu 0 (default); none: unpinned")
    args = ap.parse_args()
    cinder = h.find_binary("CINDER", "cinder", args.cinder)
    servers = [s for s in ("cinder", "miniflare") if args.only in (None, s)]
    if "cinder" in servers and cinder is None:
        sys.exit("no cinder binary: cargo build --release, or set CINDER")
    if "miniflare" in servers and not (HERE / "node_modules" / "miniflare").is_dir():
        sys.exit("miniflare is not installed: (cd bench/workers && npm ci)")
    cpus = "1" if args.pin == "split" else None
    if args.pin == "split":
        os.sched_setaffinity(0, {0})
    print(f"queues: rounds={args.rounds} x {args.messages} messages  {args.connections} clients  "
          f"pin={args.pin}  cinder: {cinder or '-'}", flush=True)
    workloads = [w for w in args.workloads.split(",") if w]
    with tempfile.TemporaryDirectory(prefix="queues-bench-") as t:
        tmp = Path(t)
        running = {s: start(s, cinder, tmp, cpus) for s in servers}
        results: dict[tuple[str, str], list[dict]] = {}
        for w in workloads:
            print(f"\n== {w}", flush=True)
            for r in range(args.rounds):
                for s, (proc, port, log) in running.items():
                    c0 = tree_cpu(proc.pid)
                    res = run(port, w, args, log)
                    res["cpu"] = tree_cpu(proc.pid) - c0
                    if proc.poll() is not None:
                        sys.exit(f"{s} died:\n{h.tail(log)}")
                    results.setdefault((w, s), []).append(res)
                    print(f"  round {r + 1} {s:9} {res['sent']:8} msgs  sent {res['send_rate']:8.0f}/s  "
                          f"end to end {res['e2e_rate']:8.0f}/s  (drained {res['drain_s']:.1f}s after)  "
                          f"server CPU {res['cpu']:.1f}s", flush=True)
        print("\n== summary (medians over rounds, messages/s end to end)")
        for w in workloads:
            med = {s: statistics.median(x["e2e_rate"] for x in results[(w, s)]) for s in servers}
            line = "  ".join(f"{s} {v:.0f}/s" for s, v in med.items())
            ratio = f"  -> cinder/miniflare {med['cinder'] / med['miniflare']:.2f}x" if len(med) == 2 else ""
            print(f"{w:8} {line}{ratio}")
        for proc, _, _ in running.values():
            h.stop(proc)


if __name__ == "__main__":
    main()
