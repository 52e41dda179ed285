#!/usr/bin/env python3
"""D1 side by side (issue 14): bench/workers/d1 (a Worker with one D1 binding) on `cinder dev`
and on Miniflare's local D1 (npm `miniflare`: D1 as a Durable Object with SQLite on workerd,
which is what `wrangler dev` runs), same script, alternating rounds.

Workloads:
- read: GET /user/<random id> -> one `SELECT ... WHERE email = ?` over a unique index of
  --users rows (`.first()`).
- insert: POST /insert -> one `batch()` of 10 INSERTs (one transaction per request).
Each server is seeded first (POST /seed?n=USERS). Reported: req/s, p50/p99 (wrk), and the
server's CPU (Miniflare: node and its workerd together).

    (cd bench/workers && npm ci)             # once: workerd and miniflare
    CINDER=/path/to/release/cinder python3 bench/workers/d1.py

Durability differs and is printed: cinder acknowledges a write once its group commit is
fsync'd; Miniflare's SQLite files use workerd's local-disk defaults.
Standard library only; every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness as h

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "d1"
LUA = HERE / "d1.lua"
MINIFLARE = HERE / "miniflare-d1.mjs"


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (Miniflare runs workerd as a child)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += h.cpu_seconds(p)
        except OSError:
            pass
        todo += children.get(p, [])
    return total


def start(what: str, cinder: Path | None, tmp: Path, cpus: str | None):
    port = h.free_port()
    log = tmp / f"{what}.log"
    state = tmp / f"state-{what}"
    state.mkdir()
    if what == "miniflare":
        argv = ["node", str(MINIFLARE), str(PROJECT / "src" / "index.js"), str(port), str(state)]
        env = dict(os.environ)
    else:
        argv = [str(cinder), "dev", str(PROJECT), "--ip", "127.0.0.1", "--port", str(port),
                "--persist-to", str(state)]
        env = dict(os.environ, RUST_LOG="warn")
    proc = h.spawn(argv, log, cpus, env)
    h.wait_ready(proc, port, log, what)
    return proc, port, log


def wrk(port: int, mode: str, seconds: float, args, cpus) -> dict:
    argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{int(seconds)}s", "--latency", "-s", str(LUA),
            f"http://127.0.0.1:{port}/"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    env = dict(os.environ, D1_MODE=mode, D1_USERS=str(args.users))
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 120)
    text = out.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if out.returncode != 0 or m is None:
        sys.exit(f"wrk failed ({out.returncode}): {out.stderr or text}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    lat = {}
    for p in ("50", "99"):
        mm = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\b", text, re.M)
        lat[p] = float(mm.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[mm.group(2)] if mm else float("nan")
    return {"rps": float(m.group(1)), "p50_ms": lat["50"], "p99_ms": lat["99"],
            "bad": (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errors.groups()) if errors else 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cinder", help="cinder binary (default: $CINDER, then target/release/cinder)")
    ap.add_argument("--only", choices=["cinder", "miniflare"])
    ap.add_argument("--workloads", default="read,insert")
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--pin", choices=["split", "none"], default="split",
                    help="split: server on cpu 1, wrk on cpu 0 (default); none: unpinned")
    args = ap.parse_args()
    cinder = h.find_binary("CINDER", "cinder", args.cinder)
    servers = [s for s in ("cinder", "miniflare") if args.only in (None, s)]
    if "cinder" in servers and cinder is None:
        sys.exit("no cinder binary: cargo build --release, or set CINDER")
    if "miniflare" in servers and not (HERE / "node_modules" / "miniflare").is_dir():
        sys.exit("miniflare is not installed: (cd bench/workers && npm ci)")
    cpus, load_cpus = ("1", "0") if args.pin == "split" else (None, None)
    print(f"d1: users={args.users} rounds={args.rounds} x {args.duration:.0f}s  wrk -t1 -c{args.connections}  "
          f"pin={args.pin}  cinder: {cinder or '-'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="d1-bench-") as t:
        tmp = Path(t)
        running = {}
        for s in servers:
            proc, port, log = start(s, cinder, tmp, cpus)
            status, body = h.request(port, "POST", f"/seed?n={args.users}", timeout=300)
            if status != 200 or f'"users":{args.users}' not in body.decode():
                sys.exit(f"{s}: seeding failed: {status} {body[:300]!r}\n{h.tail(log)}")
            status, body = h.request(port, "GET", "/user/7")
            if status != 200 or b"user7@example.com" not in body:
                sys.exit(f"{s}: a point read answered {status} {body[:200]!r}")
            running[s] = (proc, port, log)
        results: dict[tuple[str, str], list[dict]] = {}
        for w in [w for w in args.workloads.split(",") if w]:
            print(f"\n== {w}", flush=True)
            for s, (_, port, _) in running.items():
                wrk(port, w, args.warmup, args, load_cpus)
            for r in range(args.rounds):
                for s, (proc, port, log) in running.items():
                    c0 = tree_cpu(proc.pid)
                    res = wrk(port, w, args.duration, args, load_cpus)
                    res["cpu"] = (tree_cpu(proc.pid) - c0) / args.duration
                    if proc.poll() is not None:
                        sys.exit(f"{s} died:\n{h.tail(log)}")
                    if res["bad"]:
                        print(f"    WARNING: {s}: {res['bad']} errors or non-2xx", flush=True)
                    results.setdefault((w, s), []).append(res)
                    print(f"  round {r + 1} {s:9} {res['rps']:9.0f} req/s  p50 {res['p50_ms']:7.2f} ms  "
                          f"p99 {res['p99_ms']:7.2f} ms  server CPU {res['cpu'] * 100:4.0f}%", flush=True)
        print("\n== summary (medians over rounds)")
        for w in [w for w in args.workloads.split(",") if w]:
            med = {s: {k: statistics.median(x[k] for x in results[(w, s)]) for k in ("rps", "p50_ms", "p99_ms")}
                   for s in servers}
            line = "  ".join(f"{s} {m['rps']:.0f} req/s p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms"
                             for s, m in med.items())
            ratio = (f"  -> cinder/miniflare {med['cinder']['rps'] / med['miniflare']['rps']:.2f}x req/s"
                     if len(med) == 2 else "")
            print(f"{w:7} {line}{ratio}")
        for proc, _, _ in running.values():
            h.stop(proc)


if __name__ == "__main__":
    main()
