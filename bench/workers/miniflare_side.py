#!/usr/bin/env python3
"""D1 and KV side by side with Miniflare (issues 14 and 15): a Worker project on `cinder dev` and
on Miniflare (npm `miniflare`: local D1 and KV on workerd, which is what `wrangler dev` runs),
same script, alternating rounds.

--project d1 (bench/workers/d1, one D1 binding):
- read: GET /user/<random id> -> one `SELECT ... WHERE email = ?` over a unique index of
  --keys rows (`.first()`).
- insert: POST /insert -> one `batch()` of 10 INSERTs (one transaction per request).
--project kv (bench/workers/kv, one KV namespace):
- read: GET /read/<random id> -> `env.KV.get(key, "json")` of --keys keys; after a key's first
  read both servers answer it from their node cache (Cloudflare's hot-key path).
- insert: POST /insert -> one `put()` of a new key.
Each server is seeded first (POST /seed?n=KEYS). Reported: req/s, p50/p99 (wrk), and the
server's CPU (Miniflare: node and its workerd together).

    (cd bench/workers && npm ci)             # once: workerd and miniflare
    CINDER=/path/to/release/cinder python3 bench/workers/miniflare_side.py --project d1
    CINDER=/path/to/release/cinder python3 bench/workers/miniflare_side.py --project kv --keys 1000

Durability differs: cinder acknowledges a write once its group commit is fsync'd; Miniflare's
files use workerd's local-disk defaults.
Standard library only; every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness as h

HERE = Path(__file__).resolve().parent
LUA = HERE / "miniflare_side.lua"
MINIFLARE = HERE / "miniflare.mjs"
# Per project: Miniflare's bindings, the read path prefix, and what a good seed/read answer holds.
PROJECTS = {
    "d1": {"bindings": {"d1": {"DB": "00000000-0000-4000-8000-00000000d1be"}},
           "read": "/user/", "seeded": '"users":{n}', "probe": b"user7@example.com"},
    "kv": {"bindings": {"kv": {"KV": "0000000000000000000000000000cafe"}},
           "read": "/read/", "seeded": '"keys":{n}', "probe": b"user7@example.com"},
}


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


def start(what: str, cinder: Path | None, project: str, tmp: Path, cpus: str | None):
    port = h.free_port()
    log = tmp / f"{what}.log"
    state = tmp / f"state-{what}"
    state.mkdir()
    if what == "miniflare":
        argv = ["node", str(MINIFLARE), str(HERE / project / "src" / "index.js"), str(port), str(state),
                json.dumps(PROJECTS[project]["bindings"])]
        env = dict(os.environ)
    else:
        argv = [str(cinder), "dev", str(HERE / project), "--ip", "127.0.0.1", "--port", str(port),
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
    env = dict(os.environ, BENCH_MODE=mode, BENCH_KEYS=str(args.keys), BENCH_READ=PROJECTS[args.project]["read"])
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
    ap.add_argument("--project", choices=sorted(PROJECTS), default="d1")
    ap.add_argument("--keys", type=int, default=10000, help="rows (d1) or keys (kv) seeded and read")
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
    print(f"{args.project}: keys={args.keys} rounds={args.rounds} x {args.duration:.0f}s  wrk -t1 -c{args.connections}  "
          f"pin={args.pin}  cinder: {cinder or '-'}", flush=True)

    project = PROJECTS[args.project]
    with tempfile.TemporaryDirectory(prefix=f"{args.project}-bench-") as t:
        tmp = Path(t)
        running = {}
        for s in servers:
            proc, port, log = start(s, cinder, args.project, tmp, cpus)
            status, body = h.request(port, "POST", f"/seed?n={args.keys}", timeout=300)
            if status != 200 or project["seeded"].format(n=args.keys) not in body.decode():
                sys.exit(f"{s}: seeding failed: {status} {body[:300]!r}\n{h.tail(log)}")
            status, body = h.request(port, "GET", project["read"] + "7")
            if status != 200 or project["probe"] not in body:
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
