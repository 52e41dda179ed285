#!/usr/bin/env bash
# The examples' benchmark (chat fan-out, rate limiter) on workerd and cinder: installs workerd
# (npm, pinned in package-lock.json) if missing, then runs stateful.py with these arguments.
#   cargo build --release -p cinder-gateway -p cinder-bench --bin cinder --bin chat_fanout --bin rl_bench
#   bench/workers/run-stateful.sh                  # both workloads, 3 rounds, server on CPU 1
#   bench/workers/run-stateful.sh --help
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x node_modules/workerd/bin/workerd ]; then
  npm ci --no-audit --no-fund >&2
fi
exec python3 stateful.py "$@"
