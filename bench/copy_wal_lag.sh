#!/usr/bin/env bash
# WAL lag to a copy under pgbench (issue 28). Installs pgBackRest (the
# cluster helper of pg_bench.py sets it up) and builds Strongbox first.
# Usage: bench/copy_wal_lag.sh [WORKDIR] [--scale N] [--runs N] [--load SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pgbackrest >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-copy-wal-lag}
shift || true
mkdir -p "$work"
python3 bench/copy_wal_lag.py "$work" "$@"
