#!/usr/bin/env bash
# SQLite WAL shipping (issue 15): lag at a steady 1,000 transactions/s,
# the application's write throughput with shipping on against off, and the
# stored bytes of the shipped log next to full backups.
# Usage: bench/sqlite_ship.sh [DIR] [extra ship_bench args, e.g. --rounds 5]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/strongbox-ship-bench}
shift || true
cargo build --release -q -p strongbox-engines --example ship_bench
exec target/release/examples/ship_bench "$dir" "$@"
