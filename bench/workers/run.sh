#!/usr/bin/env bash
# Workers benchmark: the same worker scripts on workerd (npm, pinned in package-lock.json) and on
# `cinder dev`, driven by wrk. Installs what it needs, then runs harness.py with the arguments
# given here (see `run.sh --help`). Example:
#   CINDER=$CARGO_TARGET_DIR/release/cinder bench/workers/run.sh --duration 10 --connections 64
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x node_modules/workerd/bin/workerd ]; then
  # The workerd package carries the native binary (through @cloudflare/workerd-linux-64);
  # it runs offline, nothing is downloaded at run time.
  npm ci --no-audit --no-fund >&2
fi
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && apt-get install -y -qq wrk >&2
  else
    echo "wrk is missing: sudo apt-get install wrk" >&2
    exit 1
  fi
fi
exec python3 harness.py "$@"
