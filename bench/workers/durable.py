#!/usr/bin/env python3
"""Durable Objects side by side (issue 12): bench/workers/durable (a counter class behind a
Worker, `new_sqlite_classes`) on workerd (npm) and `cinder dev`, same script, fsync durability
on both (workerd's localDisk SQLite: one fsync per write transaction; cinder's default
`Durability::Fsync` group commit).

Workloads (--workloads, comma list):
- hot: wrk GET /hot -> Worker -> env.COUNTER.getByName("hot").fetch(): one `get` + one
  un-awaited `put` per request. Alternating rounds; req/s, p50/p99, server CPU.
- many: --keys objects. First touch in --rounds chunks (each object's first request, once),
  alternating servers chunk by chunk; then increments at random keys over all of them in
  alternating rounds. RSS before/after the touches is printed, but workerd's chunks take
  minutes, so objects of the first chunks may be evicted by then: use the memory workload.
- memory: on a fresh server, touch objects back to back up to each count of --mem-counts
  (cinder) / --mem-workerd-counts (workerd: its first touch costs ~20 fsyncs, so fewer), RSS
  after each count. The figure for memory per live idle object: every object touched within
  the run is still in memory (cinder evicts after 70-140 s idle).
- latency: Worker -> object round trip, servers unpinned, cinder with --threads 2. A Python
  client on one kept-alive connection alternates GET /plain (Worker alone) and
  GET /ping/NAME (Worker + one RPC to NAME); the object answers its isolate's token, so each
  sample says whether the object ran on the Worker's executor thread ("same") or not
  ("other"). Then GET /loop/NAME?n=N: N sequential RPCs timed inside the Worker with
  performance.now() (per call on cinder; workerd's clock moves only at I/O in whole ms, so
  only total/N there).

    bench/workers/run-stateful.sh --help     # once: installs workerd (npm ci)
    CINDER=/path/to/cinder python3 bench/workers/durable.py
    python3 bench/workers/durable.py --only workerd --workloads hot

Standard library only. Every process is started in its own group and stopped on exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness as h
import stateful

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "durable"  # --project replaces it (e.g. durable-kv)
LUA = HERE / "durable.lua"


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fsync_ms(directory: Path, n: int = 50) -> float:
    """Median of n x (append 128 B + fdatasync) in `directory`: what one durable commit waits
    for on this disk right now (other sessions' writes make it swing)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        xs = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
            xs.append((time.perf_counter() - t0) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(xs)


def start(what: str, cinder: Path | None, tmp: Path, cpus: str | None, threads: int | None = None, tag: str = ""):
    """stateful.start for the default case; cinder with --threads needs its own argv."""
    sub = tmp / f"{what}{tag}"
    sub.mkdir()
    if what == "workerd" or threads is None:
        return stateful.start(what, cinder, PROJECT, {}, sub, cpus)
    port = h.free_port()
    log = sub / "cinder.log"
    state = sub / "state"
    state.mkdir()
    argv = [str(cinder), "dev", str(PROJECT), "--ip", "127.0.0.1", "--port", str(port),
            "--persist-to", str(state), "--threads", str(threads)]
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    proc = h.spawn(argv, log, cpus, env)
    h.wait_ready(proc, port, log, what)
    return proc, port, log


def wrk(port: int, mode: str, seconds: float, args, cpus, keys=0, start_at=0, prefix="k",
        timeout="10s") -> dict:
    argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{int(seconds)}s", f"--timeout={timeout}",
            "--latency", "-s", str(LUA), f"http://127.0.0.1:{port}/"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    env = dict(os.environ, DO_MODE=mode, DO_KEYS=str(keys), DO_START=str(start_at), DO_PREFIX=prefix)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    h._children.append(proc)
    try:
        text, err = proc.communicate(timeout=seconds + 120)
    finally:
        h.stop(proc)
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m is None:
        sys.exit(f"wrk failed ({proc.returncode}): {err or text}")
    res = re.search(r"do_result touched=(\d+) bad=(\d+) touch_elapsed_s=(-?[\d.]+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)", text)
    lat = {}
    for p in ("50", "99"):
        mm = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\b", text, re.M)
        lat[p] = float(mm.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[mm.group(2)] if mm else float("nan")
    return {
        "rps": float(m.group(1)),
        "requests": int(done.group(1)) if done else 0,
        "bad": int(res.group(2)) if res else 0,
        "touched": int(res.group(1)) if res else 0,
        "touch_elapsed_s": float(res.group(3)) if res else 0.0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
    }


def measured(proc, port, mode, seconds, args, cpus, **kw) -> dict:
    c0 = h.cpu_seconds(proc.pid)
    t0 = time.perf_counter()
    r = wrk(port, mode, seconds, args, cpus, **kw)
    r["wall_s"] = time.perf_counter() - t0
    r["cpu_s"] = h.cpu_seconds(proc.pid) - c0
    return r


def check(what, proc, log, r):
    if proc.poll() is not None:
        sys.exit(f"{what} died; log:\n{h.tail(log)}")
    if r["bad"] or r["socket_errors"]:
        print(f"    WARNING: {what}: {r['bad']} non-200 responses, {r['socket_errors']} socket errors", flush=True)


def fmt_round(what, r, rate=None):
    rate = r["rps"] if rate is None else rate
    return (f"{what:7} {rate:>9.0f} /s  p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
            f"server CPU {r['cpu_s'] / r['wall_s'] * 100:4.0f}%  ({r['requests']} requests)")


# ---------------------------------------------------------------- workloads


def hot(args, servers, cinder, tmp, cpus, load_cpus, out):
    running = {s: start(s, cinder, tmp, cpus, tag="-hot") for s in servers}
    for s in servers:
        proc, port, log = running[s]
        wrk(port, "/hot", args.warmup, args, load_cpus)
    res = {s: [] for s in servers}
    for rnd in range(args.rounds):
        for s in servers:
            proc, port, log = running[s]
            r = measured(proc, port, "/hot", args.duration, args, load_cpus)
            check(s, proc, log, r)
            res[s].append(r)
            print(f"  hot round {rnd + 1}/{args.rounds} {fmt_round(s, r)}", flush=True)
    for s in servers:
        proc, port, log = running[s]
        # No lost updates: the counter is at least the number of answers wrk counted.
        status, body = h.request(port, "GET", "/hot")
        counted = sum(r["requests"] for r in res[s])
        print(f"  {s}: counter after the run {body.decode()} (wrk counted {counted} answers in the "
              f"measured rounds, plus warm-up)")
        h.stop(proc)
    out["hot"] = res


def many(args, servers, cinder, tmp, cpus, load_cpus, out):
    running = {s: start(s, cinder, tmp, cpus, tag="-many") for s in servers}
    prefix = "m-"
    for s in servers:
        proc, port, log = running[s]
        # Warm the isolate, the class and the storage path on objects outside the measured set.
        r = wrk(port, "touch", 60, args, load_cpus, keys=200, prefix="warm-", timeout="60s")
        if r["touched"] != 200:
            sys.exit(f"{s}: warm-up touched {r['touched']} of 200 objects; log:\n{h.tail(log)}")
    time.sleep(1)
    rss0 = {s: rss_kib(running[s][0].pid) for s in servers}
    touch = {s: [] for s in servers}
    chunk = -(-args.keys // args.rounds)
    for rnd in range(args.rounds):
        lo, n = rnd * chunk, min(chunk, args.keys - rnd * chunk)
        for s in servers:
            proc, port, log = running[s]
            r = measured(proc, port, "touch", args.touch_timeout, args, load_cpus, keys=n, start_at=lo,
                         prefix=prefix, timeout="60s")
            check(s, proc, log, r)
            if r["touched"] != n or r["touch_elapsed_s"] <= 0:
                sys.exit(f"{s}: touched {r['touched']} of {n} objects within {args.touch_timeout} s "
                         f"(raise --touch-timeout or lower --keys)")
            r["rate"] = n / r["touch_elapsed_s"]
            touch[s].append(r)
            # wrk's latency figures would mix in the /plain requests sent after the last key.
            print(f"  first touch chunk {rnd + 1}/{args.rounds} {s:7} {n} objects in "
                  f"{r['touch_elapsed_s']:.2f} s = {r['rate']:.0f} obj/s  "
                  f"server CPU {r['cpu_s'] / r['wall_s'] * 100:.0f}%", flush=True)
    rss1 = {s: rss_kib(running[s][0].pid) for s in servers}
    for s in servers:
        print(f"  {s}: RSS {rss0[s] / 1024:.1f} MiB before the touches, {rss1[s] / 1024:.1f} MiB after "
              f"{args.keys} objects touched over {sum(r['wall_s'] for r in touch[s]):.0f} s of touching "
              f"(plus the other server's chunks; idle ones may be evicted)",
              flush=True)
    incr = {s: [] for s in servers}
    for rnd in range(args.rounds):
        for s in servers:
            proc, port, log = running[s]
            r = measured(proc, port, "incr", args.duration, args, load_cpus, keys=args.keys, prefix=prefix)
            check(s, proc, log, r)
            incr[s].append(r)
            print(f"  increments over {args.keys} round {rnd + 1}/{args.rounds} {fmt_round(s, r)}", flush=True)
    rss2 = {s: rss_kib(running[s][0].pid) for s in servers}
    for s in servers:
        print(f"  {s}: RSS after the increments {rss2[s] / 1024:.1f} MiB")
        h.stop(running[s][0])
    out["many"] = {"touch": touch, "incr": incr, "rss0": rss0, "rss1": rss1, "rss2": rss2}


def memory(args, servers, cinder, tmp, cpus, load_cpus, out):
    res = {}
    for s in servers:
        counts = [int(c) for c in (args.mem_counts if s == "cinder" else args.mem_workerd_counts).split(",") if c]
        if not counts:
            continue
        proc, port, log = start(s, cinder, tmp, cpus, tag="-mem")
        r = wrk(port, "touch", 60, args, load_cpus, keys=200, prefix="warm-", timeout="60s")
        time.sleep(1)
        rows = [(0, rss_kib(proc.pid), 0.0)]
        done = 0
        for c in counts:
            r = measured(proc, port, "touch", args.touch_timeout, args, load_cpus, keys=c - done, start_at=done,
                         prefix="mem-", timeout="60s")
            check(s, proc, log, r)
            if r["touched"] != c - done:
                print(f"  {s}: touched {done + r['touched']} of {c} objects within {args.touch_timeout} s; stopping")
                break
            done = c
            rows.append((c, rss_kib(proc.pid), r["touch_elapsed_s"]))
            rate = (c - rows[-2][0]) / r["touch_elapsed_s"]
            print(f"  {s}: {c} objects touched (last {c - rows[-2][0]} at {rate:.0f}/s), "
                  f"RSS {rows[-1][1] / 1024:.1f} MiB, "
                  f"{(rows[-1][1] - rows[0][1]) / c:.2f} KiB per object over the warm server", flush=True)
        h.stop(proc)
        res[s] = rows
    out["memory"] = res


def lat_client(port: int):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(path: str) -> tuple[float, bytes]:
        t0 = time.perf_counter_ns()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        dt = (time.perf_counter_ns() - t0) / 1e3
        if resp.status != 200:
            sys.exit(f"GET {path}: {resp.status} {body[:200]!r}")
        return dt, body

    return conn, get


def pct(xs, p):
    return h.pct(xs, p) if xs else float("nan")


def latency(args, servers, cinder, tmp, out):
    # Unpinned: cinder's second executor thread needs the second core to be a real "other thread".
    running = {s: start(s, cinder, tmp, None, threads=args.threads, tag="-lat") for s in servers}
    names = [f"lat-{i}" for i in range(args.lat_names)]
    res = {s: {"plain": [], "same": [], "other": [], "loop_same": [], "loop_other": [], "loop_mean": []}
           for s in servers}
    clients = {s: lat_client(running[s][1]) for s in servers}
    for s in servers:
        _, get = clients[s]
        for _ in range(3):
            for n in names:
                get(f"/ping/{n}")
            get("/plain")
    per_round = args.lat_samples // args.rounds
    for rnd in range(args.rounds):
        for s in servers:
            _, get = clients[s]
            for i in range(per_round):
                dt, _ = get("/plain")
                res[s]["plain"].append(dt)
                dt, body = get(f"/ping/{names[i % len(names)]}")
                res[s][body.decode()].append(dt)
            for i in range(args.loop_requests):
                _, body = get(f"/loop/{names[i % len(names)]}?n={args.loop_n}")
                v = json.loads(body)
                res[s]["loop_same" if v["same"] else "loop_other"].extend(v["us"])
                res[s]["loop_mean"].append(v["total_ms"] * 1e3 / v["n"])
            print(f"  latency round {rnd + 1}/{args.rounds} {s}: plain p50 {pct(res[s]['plain'], 50):.0f} us, "
                  f"ping same {len(res[s]['same'])} / other {len(res[s]['other'])} samples so far", flush=True)
    for s in servers:
        clients[s][0].close()
        h.stop(running[s][0])
    out["latency"] = res


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cinder", help="cinder binary (default: $CINDER, $CARGO_TARGET_DIR/release/cinder)")
    ap.add_argument("--only", choices=["workerd", "cinder"], help="run one server only")
    ap.add_argument("--workloads", default="hot,many,memory,latency")
    ap.add_argument("--project", default="durable",
                    help="project dir (relative to bench/workers): durable, or a copy with new_classes for a KV-backed class")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured wrk round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--pin", choices=["split", "none"], default="split",
                    help="hot/many/memory: split = servers on CPU 1, wrk on CPU 0; none: no pinning")
    ap.add_argument("--keys", type=int, default=10000, help="objects in the many workload")
    ap.add_argument("--touch-timeout", type=int, default=900, help="seconds allowed for one touch phase")
    ap.add_argument("--mem-counts", default="10000,100000", help="memory workload, cinder: cumulative object counts")
    ap.add_argument("--mem-workerd-counts", default="1000",
                    help="memory workload, workerd: cumulative object counts (its first touch runs at ~30-40 "
                         "objects/s on this machine, so 10,000 take ~5 min and early ones may be evicted)")
    ap.add_argument("--threads", type=int, default=2, help="latency: cinder executor threads")
    ap.add_argument("--lat-samples", type=int, default=3000, help="latency: /plain + /ping pairs, over all rounds")
    ap.add_argument("--lat-names", type=int, default=16)
    ap.add_argument("--loop-n", type=int, default=200)
    ap.add_argument("--loop-requests", type=int, default=16, help="latency: /loop requests per round")
    args = ap.parse_args()
    global PROJECT
    PROJECT = (HERE / args.project).resolve()
    if not (PROJECT / "wrangler.toml").is_file():
        ap.error(f"no wrangler.toml in {PROJECT}")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in ("hot", "many", "memory", "latency"):
            ap.error(f"unknown workload {w}")
    servers = ["workerd", "cinder"] if args.only is None else [args.only]
    cinder = h.find_binary("CINDER", "cinder", args.cinder)
    if "cinder" in servers and cinder is None:
        sys.exit("cinder binary not found: cargo build --release -p cinder-gateway (or --only workerd)")
    if "workerd" in servers and not h.WORKERD.is_file():
        sys.exit(f"{h.WORKERD} missing: run bench/workers/run-stateful.sh --help once (it installs workerd)")
    if shutil.which("wrk") is None:
        sys.exit("wrk missing: apt-get install wrk")
    cpus, load_cpus = h.pin_sets(args.pin)
    wv = subprocess.run([str(h.WORKERD), "--version"], capture_output=True, text=True).stdout.strip() \
        if h.WORKERD.is_file() else "-"
    print(f"project: {PROJECT.name}   workerd: {wv}   cinder: {cinder or '-'}   pin={args.pin}   wrk -t1 -c{args.connections}   "
          f"{os.cpu_count()} CPUs   loadavg before: {loadavg()}", flush=True)
    out: dict = {}
    # The state directories go under the system temp dir: check it is a real disk (fsync).
    with tempfile.TemporaryDirectory(prefix="cinder-bench-durable-") as tmpd:
        tmp = Path(tmpd)
        fs = subprocess.run(["df", "--output=fstype", tmpd], capture_output=True, text=True).stdout.split()[-1]
        print(f"state under {tmpd} ({fs})", flush=True)
        for w in workloads:
            print(f"\n== {w} ==  loadavg {loadavg()}  fdatasync p50 {fsync_ms(tmp):.2f} ms", flush=True)
            if w == "hot":
                hot(args, servers, cinder, tmp, cpus, load_cpus, out)
            elif w == "many":
                many(args, servers, cinder, tmp, cpus, load_cpus, out)
            elif w == "memory":
                memory(args, servers, cinder, tmp, cpus, load_cpus, out)
            else:
                latency(args, servers, cinder, tmp, out)
        summary(args, servers, out)
        print(f"\nloadavg after: {loadavg()}  fdatasync p50 {fsync_ms(tmp):.2f} ms")


def med(rs, key):
    return statistics.median(r[key] for r in rs)


def summary(args, servers, out):
    print(f"\n== summary (medians of {args.rounds} rounds) ==")
    two = len(servers) == 2

    def ratio(a, b):
        return f"  cinder/workerd {a / b:.1f}x" if two and b else ""

    if "hot" in out:
        res = out["hot"]
        v = {s: med(res[s], "rps") for s in servers}
        for s in servers:
            rs = res[s]
            print(f"hot object: {s:7} {v[s]:>9.0f} req/s  p50 {med(rs, 'p50_ms'):.2f} ms  p99 {med(rs, 'p99_ms'):.2f} ms  "
                  f"server CPU {statistics.median(r['cpu_s'] / r['wall_s'] for r in rs) * 100:.0f}%  "
                  f"{statistics.median(r['requests'] / max(r['cpu_s'], 1e-9) for r in rs):.0f} req per CPU-s")
        if two:
            print(f"hot object:{ratio(v['cinder'], v['workerd'])}")
    if "many" in out:
        m = out["many"]
        t = {s: med(m["touch"][s], "rate") for s in servers}
        i = {s: med(m["incr"][s], "rps") for s in servers}
        for s in servers:
            rs = m["incr"][s]
            print(f"{args.keys} objects: {s:7} first touch {t[s]:>8.0f} obj/s   increments {i[s]:>8.0f} req/s "
                  f"p50 {med(rs, 'p50_ms'):.2f} ms p99 {med(rs, 'p99_ms'):.2f} ms  "
                  f"server CPU {statistics.median(r['cpu_s'] / r['wall_s'] for r in rs) * 100:.0f}%   "
                  f"RSS {m['rss0'][s] / 1024:.1f} -> {m['rss1'][s] / 1024:.1f} MiB after the touches")
        if two:
            print(f"{args.keys} objects: first touch{ratio(t['cinder'], t['workerd'])}; "
                  f"increments{ratio(i['cinder'], i['workerd'])}")
    if "memory" in out:
        for s, rows in out["memory"].items():
            base = rows[0][1]
            print(f"memory {s}: " + ", ".join(
                f"{c} objects RSS {kib / 1024:.1f} MiB" + (f" ({(kib - base) / c:.1f} KiB/object)" if c else "")
                for c, kib, _ in rows))
    if "latency" in out:
        print(f"latency (one connection, client and servers unpinned, cinder --threads {args.threads}), us:")
        for s in servers:
            r = out["latency"][s]
            parts = [f"  {s:7} HTTP /plain p50 {pct(r['plain'], 50):.0f} p99 {pct(r['plain'], 99):.0f}"]
            for k in ("same", "other"):
                if r[k]:
                    parts.append(f"/ping {k} thread p50 {pct(r[k], 50):.0f} p99 {pct(r[k], 99):.0f} "
                                 f"(+{pct(r[k], 50) - pct(r['plain'], 50):.0f} over plain, n={len(r[k])})")
            print(" | ".join(parts))
            parts = [f"  {s:7} in-Worker loop of {args.loop_n} RPCs: mean {statistics.median(r['loop_mean']):.1f} per call"]
            for k in ("loop_same", "loop_other"):
                if r[k] and all(x % 1000 == 0 for x in r[k]):
                    parts.append(f"per-call times are whole ms: the clock is too coarse for percentiles")
                elif r[k]:
                    parts.append(f"{k[5:]} thread p50 {pct(r[k], 50):.1f} p99 {pct(r[k], 99):.1f} (n={len(r[k])})")
            print(" | ".join(parts))


if __name__ == "__main__":
    main()
