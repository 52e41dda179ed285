#!/usr/bin/env python3
"""Side-by-side Workers benchmark: the same worker scripts on workerd (npm) and `cinder dev`.

Run through run.sh, which installs workerd and wrk first. Standard library only.

Throughput: for each workload (hello, echo) the harness starts workerd (config generated here
from the worker's wrangler.toml) and `cinder dev` on the same project directory, checks that
both answer correctly, warms both up, then drives them with wrk in alternating rounds
(workerd, cinder, workerd, cinder, ...) and reports the median req/s of each, the ratio
cinder/workerd, and the server CPU seconds each used (from /proc) so req per CPU-second can be
compared too.

Cold start: see `cold_start()`; every figure says what it measures.

Every process started here is in its own process group and is stopped on exit, on error and
on SIGINT/SIGTERM. Everything listens on 127.0.0.1 only; every run is bounded.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORKERD = HERE / "node_modules" / "workerd" / "bin" / "workerd"
ECHO_BODY = HERE / "echo.body.json"
WORKLOADS = {
    # name: (project dir, HTTP method, wrk script or None)
    "hello": (HERE / "hello", "GET", None),
    "echo": (HERE / "echo", "POST", HERE / "echo.lua"),
}
READY_TIMEOUT_S = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: list[subprocess.Popen] = []


# ---------------------------------------------------------------- processes


def spawn(argv: list[str], log: Path, cpus: str | None, env: dict | None = None) -> subprocess.Popen:
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = open(log, "wb")
    proc = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_pid(proc: subprocess.Popen) -> int:
    """taskset execs the server in place, so the Popen pid is the server's."""
    return proc.pid


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- HTTP


def request(port: int, method: str, path: str = "/", body: bytes | None = None, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port: int, log: Path, what: str) -> float:
    """Polls until the server answers any HTTP response; returns seconds waited."""
    t0 = time.perf_counter()
    deadline = t0 + READY_TIMEOUT_S
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before serving; log:\n{tail(log)}")
        try:
            request(port, "GET", "/", timeout=2.0)
            return time.perf_counter() - t0
        except OSError:
            time.sleep(0.0005)
    sys.exit(f"{what} did not answer on 127.0.0.1:{port} within {READY_TIMEOUT_S:.0f} s; log:\n{tail(log)}")


def check_answer(name: str, port: int, what: str) -> None:
    """Refuses to benchmark a server that answers wrongly (errors are cheap to serve)."""
    if name == "hello":
        status, body = request(port, "GET")
        ok = status == 200 and body == b"Hello World!"
    else:
        sent = ECHO_BODY.read_bytes().strip()
        status, body = request(port, "POST", body=sent)
        try:
            ok = status == 200 and json.loads(body) == json.loads(sent)
        except ValueError:
            ok = False
    if not ok:
        sys.exit(f"{what} answered the {name} workload wrongly: {status} {body[:200]!r}")


# ---------------------------------------------------------------- configs


def compat_date(project: Path) -> str:
    m = re.search(r'^compatibility_date\s*=\s*"([^"]+)"', (project / "wrangler.toml").read_text(), re.M)
    return m.group(1) if m else "2025-09-01"


def rel(target: Path, config_dir: Path) -> str:
    """capnp `embed` paths are relative to the config file (absolute ones go to import roots)."""
    return os.path.relpath(target.resolve(), config_dir.resolve())


def workerd_config(project: Path, port: int, out: Path) -> Path:
    """An ES-module worker with the project's entry module, on an HTTP socket on loopback."""
    main = re.search(r'^main\s*=\s*"([^"]+)"', (project / "wrangler.toml").read_text(), re.M).group(1)
    path = out / f"{project.name}.capnp"
    path.write_text(
        f"""using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .worker) ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);

const worker :Workerd.Worker = (
  modules = [ (name = "index.js", esModule = embed "{rel(project / main, out)}") ],
  compatibilityDate = "{compat_date(project)}",
);
"""
    )
    return path


def loader_config(port: int, out: Path) -> Path:
    path = out / "loader.capnp"
    path.write_text(
        f"""using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .worker) ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);

const worker :Workerd.Worker = (
  modules = [
    (name = "loader.js", esModule = embed "{rel(HERE / 'coldstart' / 'loader.js', out)}"),
    (name = "hello.js", text = embed "{rel(HERE / 'hello' / 'src' / 'index.js', out)}"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [ (name = "LOADER", workerLoader = ()) ],
);
"""
    )
    return path


def start_workerd(config: Path, log: Path, cpus: str | None) -> subprocess.Popen:
    return spawn([str(WORKERD), "serve", "--experimental", str(config)], log, cpus)


def start_cinder(cinder: Path, project: Path, port: int, state: Path, log: Path, cpus: str | None):
    env = dict(os.environ)
    # workerd logs nothing per request; keep cinder's per-request logging off too.
    env.setdefault("RUST_LOG", "warn")
    argv = [str(cinder), "dev", str(project), "--ip", "127.0.0.1", "--port", str(port), "--persist-to", str(state)]
    return spawn(argv, log, cpus, env)


# ---------------------------------------------------------------- load


def wrk(port: int, name: str, seconds: float, args, cpus: str | None) -> dict:
    _, method, script = WORKLOADS[name]
    argv = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{int(seconds)}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}/")
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    env = dict(os.environ, ECHO_BODY=str(ECHO_BODY))
    # In its own process group and tracked like the servers, so an interrupted run stops it too.
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, env=env, start_new_session=True,
    )
    _children.append(proc)
    try:
        text, err = proc.communicate(timeout=seconds + 60)
    finally:
        stop(proc)
    if proc.returncode != 0:
        sys.exit(f"wrk failed: {err or text}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    lat = {p: re.search(rf"^\s+{p}%\s+(\S+)", text, re.M) for p in ("50", "99")}
    return {
        "rps": rps,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "p50": lat["50"].group(1) if lat["50"] else "?",
        "p99": lat["99"].group(1) if lat["99"] else "?",
    }


def measured(proc: subprocess.Popen, port: int, name: str, seconds: float, args, cpus) -> dict:
    pid = server_pid(proc)
    c0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    r = wrk(port, name, seconds, args, cpus)
    r["cpu_s"] = cpu_seconds(pid) - c0
    r["wall_s"] = time.perf_counter() - t0
    return r


def pin_sets(mode: str) -> tuple[str | None, str | None]:
    """(server cpus, load-generator cpus)."""
    if mode == "split":
        return "1", "0"
    return None, None


def throughput(args, cinder: Path | None, tmp: Path) -> list[dict]:
    server_cpus, load_cpus = pin_sets(args.pin)
    rows = []
    for name in args.workloads:
        project = WORKLOADS[name][0]
        servers = []
        wport = free_port()
        wlog = tmp / f"workerd-{name}.log"
        servers.append(("workerd", start_workerd(workerd_config(project, wport, tmp), wlog, server_cpus), wport, wlog))
        if cinder is not None:
            cport = free_port()
            clog = tmp / f"cinder-{name}.log"
            state = tmp / f"state-{name}"
            servers.append(("cinder", start_cinder(cinder, project, cport, state, clog, server_cpus), cport, clog))
        for what, proc, port, log in servers:
            wait_ready(proc, port, log, what)
            check_answer(name, port, what)
            wrk(port, name, args.warmup, args, load_cpus)
        results: dict[str, list[dict]] = {what: [] for what, *_ in servers}
        for rnd in range(args.rounds):
            for what, proc, port, log in servers:
                r = measured(proc, port, name, args.duration, args, load_cpus)
                results[what].append(r)
                print(
                    f"  {name:5} round {rnd + 1}/{args.rounds} {what:7} {r['rps']:>10.0f} req/s "
                    f"p50 {r['p50']:>8} p99 {r['p99']:>8} server cpu {r['cpu_s'] / r['wall_s'] * 100:5.0f}%"
                    + (f" NON-2XX {r['non2xx']}" if r["non2xx"] else "")
                    + (f" SOCKET-ERRORS {r['socket_errors']}" if r["socket_errors"] else ""),
                    flush=True,
                )
            for what, proc, port, log in servers:
                if proc.poll() is not None:
                    sys.exit(f"{what} died during the run; log:\n{tail(log)}")
        for what, proc, *_ in servers:
            stop(proc)
        row = {"workload": name}
        for what, rs in results.items():
            row[what] = statistics.median(r["rps"] for r in rs)
            row[what + "_per_cpu_s"] = statistics.median(r["rps"] * r["wall_s"] / max(r["cpu_s"], 1e-9) for r in rs)
            row[what + "_bad"] = sum(r["non2xx"] + r["socket_errors"] for r in rs)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- cold start


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(max(math.ceil(p / 100 * len(s)), 1), len(s)) - 1]


def fmt_ms(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50) * 1e3:8.3f} ms  p99 {pct(xs, 99) * 1e3:8.3f} ms  (n={len(xs)})"


def process_start(argv_for_port, runs: int, cpus: str | None, tmp: Path, what: str) -> list[float]:
    """Seconds from spawning the server process to its first HTTP response, `runs` times."""
    times = []
    for i in range(runs):
        port = free_port()
        log = tmp / f"start-{what}-{i}.log"
        t0 = time.perf_counter()
        proc = spawn(argv_for_port(port, i), log, cpus, env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        wait_ready(proc, port, log, what)
        times.append(time.perf_counter() - t0)
        stop(proc)
    return times


def workerd_new_isolates(samples: int, cpus: str | None, tmp: Path) -> tuple[list[float], list[float]]:
    port = free_port()
    log = tmp / "workerd-loader.log"
    proc = start_workerd(loader_config(port, tmp), log, cpus)
    wait_ready(proc, port, log, "workerd (loader)")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def one(path: str) -> float:
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        dt = time.perf_counter() - t0
        if resp.status != 200 or body != b"Hello World!":
            sys.exit(f"workerd loader answered {path} with {resp.status} {body[:200]!r}; log:\n{tail(log)}")
        return dt

    for _ in range(20):
        one("/warm")
    warm, cold = [], []
    for _ in range(samples):
        warm.append(one("/warm"))
        cold.append(one("/cold"))
    conn.close()
    stop(proc)
    return warm, cold


def cold_start(args, cinder: Path | None, tmp: Path) -> None:
    server_cpus, _ = pin_sets(args.pin)
    print("\n== cold start ==")
    print("workerd, new isolate via the Worker Loader binding (HTTP round trip on a kept-alive connection):")
    warm, cold = workerd_new_isolates(args.cold_samples, server_cpus, tmp)
    print(f"  warm isolate  request          {fmt_ms(warm)}")
    print(f"  new isolate   request          {fmt_ms(cold)}")
    print(
        f"  difference of medians (new isolate + compile + first fetch): "
        f"{(statistics.median(cold) - statistics.median(warm)) * 1e3:.3f} ms"
    )
    project = WORKLOADS["hello"][0]
    print("process start -> first HTTP response (NOT an isolate cold start: includes exec, V8 init, config, listen):")
    wtimes = process_start(
        lambda port, i: [str(WORKERD), "serve", "--experimental", str(workerd_config(project, port, tmp))],
        args.startup_runs, server_cpus, tmp, "workerd",
    )
    print(f"  workerd       {fmt_ms(wtimes)}")
    if cinder is not None:
        ctimes = process_start(
            lambda port, i: [str(cinder), "dev", str(project), "--ip", "127.0.0.1", "--port", str(port),
                             "--persist-to", str(tmp / f"start-state-{i}")],
            args.startup_runs, server_cpus, tmp, "cinder",
        )
        print(f"  cinder dev    {fmt_ms(ctimes)}")
        probe = find_binary("CINDER_COLD_START", "cold_start")
        if probe is None:
            print("cinder, new isolate from the snapshot: cold_start binary not built "
                  "(cargo build --release -p cinder-bench --features workers --bin cold_start); not measured.")
        else:
            print(f"cinder, new isolate from the snapshot to its first response (Host::cold_start_probe via {probe}):")
            argv = [str(probe), "--root", str(project), "--samples", str(args.cold_samples),
                    "--compatibility-date", compat_date(project)]
            if server_cpus is not None:
                argv = ["taskset", "-c", server_cpus, *argv]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            line = next((l for l in out.stdout.splitlines() if l.startswith("cold_start ")), None)
            if out.returncode != 0 or line is None:
                print(f"  probe failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-2000:]}")
            else:
                f = dict(kv.split("=") for kv in line.split()[1:])
                print(f"  p50 {float(f['p50_ms']):8.3f} ms  p99 {float(f['p99_ms']):8.3f} ms  "
                      f"min {float(f['min_ms']):.3f} ms  max {float(f['max_ms']):.3f} ms  (n={f['n']})")


# ---------------------------------------------------------------- main


def find_binary(env_var: str, name: str, explicit: str | None = None) -> Path | None:
    candidates = [explicit, os.environ.get(env_var)]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(str(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / name))
    candidates.append(str(REPO / "target" / "release" / name))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c).resolve()
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cinder", help="cinder binary (default: $CINDER, $CARGO_TARGET_DIR/release/cinder, target/release/cinder)")
    ap.add_argument("--workerd-only", action="store_true", help="run without cinder")
    ap.add_argument("--workloads", default="hello,echo", help="comma list of: hello, echo")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of wrk warm-up per server")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per server; the median is reported")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument(
        "--pin", choices=["split", "none"], default="split",
        help="split: servers on CPU 1, wrk on CPU 0 (each server gets one whole core); none: no pinning",
    )
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--cold-samples", type=int, default=200)
    ap.add_argument("--startup-runs", type=int, default=10)
    args = ap.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    if not WORKERD.is_file():
        sys.exit(f"{WORKERD} missing: run bench/workers/run.sh (it installs workerd)")
    if shutil.which("wrk") is None:
        sys.exit("wrk missing: run bench/workers/run.sh (it installs wrk)")
    if args.pin == "split" and (os.cpu_count() or 1) < 2:
        sys.exit("--pin split needs 2 CPUs")

    cinder = None if args.workerd_only else find_binary("CINDER", "cinder", args.cinder)
    if cinder is None and not args.workerd_only:
        print("cinder binary not found (build it with `cargo build --release -p cinder-gateway`); workerd only.")
    version = subprocess.run([str(WORKERD), "--version"], capture_output=True, text=True).stdout.strip()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"workerd: {version}   cinder: {cinder or '-'}")
    print(f"load: {wrk_version}; -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s, "
          f"{args.rounds} alternating rounds, {args.warmup:g}s warm-up; pin={args.pin}; "
          f"{os.cpu_count()} CPUs; loadavg before: {open('/proc/loadavg').read().split()[:3]}")

    with tempfile.TemporaryDirectory(prefix="cinder-bench-workers-") as tmpd:
        tmp = Path(tmpd)
        if not args.skip_throughput:
            print("\n== throughput ==")
            rows = throughput(args, cinder, tmp)
            print("\nworkload   workerd req/s   cinder req/s   cinder/workerd   req per server-CPU-s (workerd / cinder)")
            for row in rows:
                c = row.get("cinder")
                ratio = f"{c / row['workerd']:.2f}x" if c else "-"
                cpu = f"{row['workerd_per_cpu_s']:.0f} / " + (f"{row['cinder_per_cpu_s']:.0f}" if c else "-")
                print(f"{row['workload']:8} {row['workerd']:>15.0f} {(f'{c:.0f}' if c else '-'):>14} {ratio:>16}   {cpu}")
                for what in ("workerd", "cinder"):
                    if row.get(what + "_bad"):
                        print(f"  WARNING: {what} had {row[what + '_bad']} non-2xx responses or socket errors")
        if not args.skip_cold:
            cold_start(args, cinder, tmp)
    print(f"\nloadavg after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
