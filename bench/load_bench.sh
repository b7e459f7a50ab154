#!/usr/bin/env bash
# Fixed-rate POST load: three replicas on a PostgreSQL catalog, then one
# server on SQLite (see bench/load_bench.py).
# Usage: bench/load_bench.sh [WORKDIR] [--rate 500] [--seconds 60] [--deployments 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p strongbox -p strongbox-loadgen
work=${1:-/tmp/strongbox-load-bench}
shift || true
python3 bench/load_bench.py "$work" "$@"
