#!/usr/bin/env python3
"""Process start to first correct response: `cinder dev` vs workerd on the hello-world project.

Each run spawns a fresh server process (fresh state directory for cinder), then polls
`GET /` on 127.0.0.1 until it answers `200 Hello World!` (connection refused / errors are
retried every 0.2 ms), records the time since spawn, and stops the process. Runs alternate
cinder, workerd, cinder, ... so both see the same machine load. Prints p50 / p90 / min per
server. Standard library only; workerd comes from bench/workers (run `npm ci` there, or
bench/workers/run.sh, once).

    python3 bench/startup.py --cinder $CARGO_TARGET_DIR/release/cinder --runs 30
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "workers"))
import harness  # noqa: E402  (spawn/stop with process groups, workerd config, binary lookup)

PROJECT = harness.HERE / "hello"
EXPECTED = b"Hello World!"
DEADLINE_S = 60.0


def first_correct_response(proc, port: int, log: Path, what: str) -> None:
    deadline = time.perf_counter() + DEADLINE_S
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before answering; log:\n{harness.tail(log)}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 and body == EXPECTED:
                return
            sys.exit(f"{what} answered {resp.status} {body[:200]!r}; log:\n{harness.tail(log)}")
        except OSError:
            time.sleep(0.0002)
        finally:
            conn.close()
    sys.exit(f"{what} gave no correct answer within {DEADLINE_S:.0f} s; log:\n{harness.tail(log)}")


def one_run(argv_for_port, what: str, tmp: Path, i: int, cpus: str | None, env: dict) -> float:
    port = harness.free_port()
    log = tmp / f"{what}-{i}.log"
    argv = argv_for_port(port)
    t0 = time.perf_counter()
    proc = harness.spawn(argv, log, cpus, env)
    first_correct_response(proc, port, log, what)
    dt = time.perf_counter() - t0
    harness.stop(proc)
    return dt


def summary(xs: list[float]) -> str:
    return (f"p50 {harness.pct(xs, 50) * 1e3:7.1f} ms  p90 {harness.pct(xs, 90) * 1e3:7.1f} ms  "
            f"min {min(xs) * 1e3:7.1f} ms  mean {statistics.mean(xs) * 1e3:7.1f} ms  (n={len(xs)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cinder", help="cinder binary (default: $CINDER, $CARGO_TARGET_DIR/release/cinder, target/release/cinder)")
    ap.add_argument("--runs", type=int, default=30, help="process starts per server (default 30)")
    ap.add_argument("--no-workerd", action="store_true", help="measure cinder only")
    ap.add_argument("--cpus", default=None, help="taskset CPU list for the servers (default: no pinning)")
    ap.add_argument("--state", choices=["kept", "fresh"], default="kept",
                    help="cinder's --persist-to: one directory reused by every run after a first, unmeasured "
                         "start (kept, as a restarted server), or a new empty one per run (fresh: includes "
                         "creating the store, ~70 fsyncs)")
    ap.add_argument("--cinder-arg", action="append", default=[],
                    help="an extra argument for `cinder dev` (repeatable), e.g. --cinder-arg=--threads=1")
    args = ap.parse_args()

    cinder = harness.find_binary("CINDER", "cinder", args.cinder)
    if cinder is None:
        sys.exit("cinder binary not found: cargo build --release -p cinder-gateway, or pass --cinder")
    workerd = None if args.no_workerd else harness.WORKERD
    if workerd is not None and not workerd.exists():
        sys.exit(f"{workerd} missing: run `npm ci` in bench/workers (or pass --no-workerd)")

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    with tempfile.TemporaryDirectory(prefix="cinder-startup-") as t:
        tmp = Path(t)
        ctimes, wtimes = [], []
        cinder_argv = lambda state: lambda port: [  # noqa: E731
            str(cinder), "dev", str(PROJECT), "--ip", "127.0.0.1", "--port", str(port), "--persist-to", str(state), *args.cinder_arg]
        if args.state == "kept":
            one_run(cinder_argv(tmp / "state"), "cinder-first", tmp, 0, args.cpus, env)
        for i in range(args.runs):
            state = tmp / "state" if args.state == "kept" else tmp / f"state-{i}"
            ctimes.append(one_run(cinder_argv(state), "cinder", tmp, i, args.cpus, env))
            if workerd is not None:
                wtimes.append(one_run(
                    lambda port: [str(workerd), "serve", "--experimental",
                                  str(harness.workerd_config(PROJECT, port, tmp))],
                    "workerd", tmp, i, args.cpus, env))
    print(f"process start -> first correct response (GET / = 200 {EXPECTED.decode()}), hello project, "
          f"cinder state {args.state}")
    print(f"  cinder dev  {summary(ctimes)}   [{cinder}]")
    if wtimes:
        print(f"  workerd     {summary(wtimes)}   [{harness.WORKERD}]")


if __name__ == "__main__":
    main()
