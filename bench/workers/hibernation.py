#!/usr/bin/env python3
"""Hibernated WebSockets side by side: bench/workers/hibernate (rooms of hibernatable sockets
that echo) on workerd (npm) and `cinder dev`, driven by the Rust client `ws_hibernation`
(bench/src/bin/ws_hibernation.rs): it opens --sockets WebSockets over --rooms rooms, waits
until the rooms have hibernated, reads the server's RSS, then times messages that wake a room.

    cargo build --release -p cinder-gateway -p cinder-bench --bin cinder --bin ws_hibernation
    bench/workers/run-stateful.sh --help   # installs workerd first; then:
    python3 bench/workers/hibernation.py --sockets 18000

Both servers and the client raise their open-file limit to the hard limit; a machine whose hard
limit is lower than --sockets + a margin gets a clear error instead of a skewed figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import harness as h
import stateful

PROJECT = Path(__file__).resolve().parent / "hibernate"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cinder", help="cinder binary (default: $CINDER, $CARGO_TARGET_DIR/release/cinder)")
    ap.add_argument("--only", choices=["workerd", "cinder"], help="run one server only")
    ap.add_argument("--sockets", type=int, default=18000)
    ap.add_argument("--rooms", type=int, default=500)
    ap.add_argument("--wake-samples", type=int, default=200)
    ap.add_argument("--idle-secs", type=int, default=15,
                    help="wait before measuring; both servers hibernate a room after ~10 s without events")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.sockets + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"the open-file hard limit is {hard}; {args.sockets} sockets need about {need} "
                 f"(raise it, or pass --sockets {max(hard - 1000, 0)})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    servers = ["workerd", "cinder"] if args.only is None else [args.only]
    cinder = h.find_binary("CINDER", "cinder", args.cinder)
    client = h.find_binary("WS_HIBERNATION", "ws_hibernation")
    if client is None:
        sys.exit("ws_hibernation not built: cargo build --release -p cinder-bench --bin ws_hibernation")
    if "cinder" in servers and cinder is None:
        sys.exit("cinder binary not found: cargo build --release -p cinder-gateway (or --only workerd)")
    if "workerd" in servers and not h.WORKERD.is_file():
        sys.exit(f"{h.WORKERD} missing: run bench/workers/run-stateful.sh --help once (it installs workerd)")
    print(f"sockets={args.sockets} rooms={args.rooms} open-file limit={hard} "
          f"loadavg before: {open('/proc/loadavg').read().split()[:3]}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="cinder-bench-hibernate-") as tmpd:
        tmp = Path(tmpd)
        for s in servers:
            proc, port, log = stateful.start(s, cinder, PROJECT, {}, tmp, None)
            argv = [str(client), "--port", str(port), "--pid", str(h.server_pid(proc)),
                    "--sockets", str(args.sockets), "--rooms", str(args.rooms),
                    "--wake-samples", str(args.wake_samples), "--idle-secs", str(args.idle_secs)]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
            alive = proc.poll() is None
            h.stop(proc)
            if out.returncode != 0:
                sys.exit(f"ws_hibernation against {s} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n{h.tail(log)}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["survived"] = alive
            results[s] = r
            print(f"  {s}: {json.dumps(r)}", flush=True)
    print()
    for s, r in results.items():
        print(f"  {s}: {r['sockets']} sockets open ({r['failed']} failed), RSS hibernated "
              f"{r['rss_hibernated_kib'] / 1024:.0f} MiB ({r['bytes_per_hibernated_socket'] / 1024:.2f} KiB/socket "
              f"over the warmed server, {r['marginal_bytes_per_socket'] / 1024:.2f} KiB marginal), wake p50 {r['wake_p50_ms']:.2f} ms p99 {r['wake_p99_ms']:.2f} ms")
    if len(results) == 2:
        a, b = results["cinder"], results["workerd"]
        if b["bytes_per_hibernated_socket"] > 0:
            print(f"  memory per socket cinder/workerd {a['bytes_per_hibernated_socket'] / b['bytes_per_hibernated_socket']:.2f}x")
    print(f"loadavg after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
