#!/usr/bin/env python3
"""The two examples side by side on workerd (npm) and `cinder dev`, driven by Rust clients.

- fanout: examples/chat, one room with --sockets WebSockets, --senders of them posting;
  client `chat_fanout` (bench/src/bin/chat_fanout.rs). The per-user limiter is opened up with
  vars on both servers (CHAT_BURST, CHAT_RATE_PER_SEC) so that the room is what is measured.
- ratelimit: examples/ratelimit, requests over --keys client keys; client `rl_bench`
  (bench/src/bin/rl_bench.rs).

Both servers run the example directory unmodified; workerd's config is generated from its
wrangler.toml (ES modules under src/, Durable Object namespaces with SQLite storage on a local
disk directory, [vars] as text bindings). Each round runs the client against workerd, then
cinder (alternating), and the medians are reported with each server's CPU seconds.
Run through run-stateful.sh, which installs workerd first. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import harness as h

WORKLOADS = {
    # name: (project, var overrides, client binary)
    "fanout": (h.REPO / "examples" / "chat",
               {"CHAT_BURST": "1000000000", "CHAT_RATE_PER_SEC": "1000000000"}, "chat_fanout"),
    "ratelimit": (h.REPO / "examples" / "ratelimit", {}, "rl_bench"),
}


def capnp_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def workerd_config(project: Path, overrides: dict, port: int, out: Path, state: Path) -> Path:
    cfg = tomllib.loads((project / "wrangler.toml").read_text())
    main = Path(cfg["main"])
    # The entry module first; the other modules by their path relative to it.
    others = sorted(p for p in (project / main.parent).rglob("*.js") if p != project / main)
    modules = [(main.name, project / main)] + [
        (str(p.relative_to(project / main.parent)), p) for p in others
    ]
    vars_ = {k: (v if isinstance(v, str) else str(v)) for k, v in cfg.get("vars", {}).items()}
    vars_.update(overrides)
    bindings = [
        f"(name = {capnp_str(b['name'])}, durableObjectNamespace = {capnp_str(b['class_name'])})"
        for b in cfg.get("durable_objects", {}).get("bindings", [])
    ] + [f"(name = {capnp_str(k)}, text = {capnp_str(v)})" for k, v in vars_.items()]
    namespaces = [
        f"(className = {capnp_str(b['class_name'])}, uniqueKey = {capnp_str(cfg['name'] + '-' + b['class_name'])}, enableSql = true)"
        for b in cfg.get("durable_objects", {}).get("bindings", [])
    ]
    mods = ",\n    ".join(f"(name = {capnp_str(n)}, esModule = embed {capnp_str(h.rel(p, out))})" for n, p in modules)
    path = out / f"{project.name}-do.capnp"
    path.write_text(
        f"""using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "do-disk", disk = (path = {capnp_str(str(state.resolve()))}, writable = true)),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);

const worker :Workerd.Worker = (
  modules = [
    {mods}
  ],
  compatibilityDate = {capnp_str(cfg.get('compatibility_date', '2025-01-01'))},
  bindings = [ {", ".join(bindings)} ],
  durableObjectNamespaces = [ {", ".join(namespaces)} ],
  durableObjectStorage = (localDisk = "do-disk"),
);
"""
    )
    return path


def start(what: str, cinder: Path | None, project: Path, overrides: dict, tmp: Path, cpus):
    port = h.free_port()
    log = tmp / f"{what}-{project.name}.log"
    state = tmp / f"state-{what}-{project.name}"
    state.mkdir()
    if what == "workerd":
        proc = h.start_workerd(workerd_config(project, overrides, port, tmp, state), log, cpus)
    else:
        argv = [str(cinder), "dev", str(project), "--ip", "127.0.0.1", "--port", str(port),
                "--persist-to", str(state)]
        for k, v in overrides.items():
            argv += ["--var", f"{k}:{v}"]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        proc = h.spawn(argv, log, cpus, env)
    h.wait_ready(proc, port, log, what)
    status, body = h.request(port, "GET", "/")
    if status != 200:
        sys.exit(f"{what} answered GET / of {project.name} with {status}: {body[:300]!r}\n{h.tail(log)}")
    return proc, port, log


def run_client(binary: Path, name: str, port: int, args, cpus) -> dict:
    argv = [str(binary), "--url", f"http://127.0.0.1:{port}", "--secs", str(args.duration),
            "--warmup", str(args.warmup)]
    if name == "fanout":
        argv += ["--sockets", str(args.sockets), "--senders", str(args.senders), "--window", str(args.window)]
    else:
        argv += ["--keys", str(args.keys), "--concurrency", str(args.concurrency)]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + args.warmup + 300)
    line = next((l for l in out.stdout.splitlines() if l.startswith(binary.name + " ")), None)
    if out.returncode != 0 or line is None:
        sys.exit(f"{binary.name} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    for l in out.stdout.splitlines():
        print("    " + l)
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cinder", help="cinder binary (default: $CINDER, $CARGO_TARGET_DIR/release/cinder)")
    ap.add_argument("--workloads", default="fanout,ratelimit")
    ap.add_argument("--only", choices=["workerd", "cinder"], help="run one server only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds measured per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--pin", choices=["split", "none"], default="split",
                    help="split: servers on CPU 1, client on CPU 0; none: no pinning")
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    if not h.WORKERD.is_file() and args.only != "cinder":
        sys.exit(f"{h.WORKERD} missing: run bench/workers/run-stateful.sh (it installs workerd)")
    servers = ["workerd", "cinder"] if args.only is None else [args.only]
    cinder = h.find_binary("CINDER", "cinder", args.cinder)
    if "cinder" in servers and cinder is None:
        sys.exit("cinder binary not found: cargo build --release -p cinder-gateway (or --only workerd)")
    clients = {}
    for w in workloads:
        b = h.find_binary(WORKLOADS[w][2].upper(), WORKLOADS[w][2])
        if b is None:
            sys.exit(f"{WORKLOADS[w][2]} not built: cargo build --release -p cinder-bench --bin {WORKLOADS[w][2]}")
        clients[w] = b
    server_cpus, client_cpus = h.pin_sets(args.pin)
    wv = subprocess.run([str(h.WORKERD), "--version"], capture_output=True, text=True).stdout.strip() \
        if h.WORKERD.is_file() else "-"
    print(f"workerd: {wv}   cinder: {cinder or '-'}   pin={args.pin}   "
          f"loadavg before: {open('/proc/loadavg').read().split()[:3]}")

    summary = []
    with tempfile.TemporaryDirectory(prefix="cinder-bench-stateful-") as tmpd:
        tmp = Path(tmpd)
        for w in workloads:
            project, overrides, _ = WORKLOADS[w]
            running = {s: start(s, cinder, project, overrides, tmp, server_cpus) for s in servers}
            results = {s: [] for s in servers}
            for rnd in range(args.rounds):
                for s in servers:
                    proc, port, log = running[s]
                    print(f"  {w} round {rnd + 1}/{args.rounds} {s}:", flush=True)
                    c0 = h.cpu_seconds(proc.pid)
                    r = run_client(clients[w], w, port, args, client_cpus)
                    r["server_cpu_s"] = h.cpu_seconds(proc.pid) - c0
                    results[s].append(r)
                    if proc.poll() is not None:
                        sys.exit(f"{s} died during the run; log:\n{h.tail(log)}")
            for s in servers:
                h.stop(running[s][0])
            key = "delivered_per_s" if w == "fanout" else "decisions_per_s"
            row = {"workload": w}
            for s in servers:
                rs = results[s]
                row[s] = statistics.median(r[key] for r in rs)
                row[s + "_p50"] = statistics.median(r["p50_ms"] for r in rs)
                row[s + "_p99"] = statistics.median(r["p99_ms"] for r in rs)
                row[s + "_cpu"] = statistics.median(r["server_cpu_s"] for r in rs)
                if w == "fanout":
                    row[s + "_accepted"] = statistics.median(r["accepted_per_s"] for r in rs)
            summary.append((w, key, row))
    print()
    for w, key, row in summary:
        parts = [f"{w}: {key} (median of {args.rounds})"]
        for s in servers:
            extra = f", accepted {row[s + '_accepted']:.0f} msg/s" if w == "fanout" else ""
            parts.append(f"{s} {row[s]:.0f}{extra}, p50 {row[s + '_p50']:.2f} ms, p99 {row[s + '_p99']:.2f} ms, "
                         f"server CPU {row[s + '_cpu']:.1f} s")
        if len(servers) == 2 and row["workerd"]:
            parts.append(f"cinder/workerd {row['cinder'] / row['workerd']:.2f}x")
        print("  " + " | ".join(parts))
    print(f"loadavg after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
