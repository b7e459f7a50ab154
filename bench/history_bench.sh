#!/usr/bin/env bash
# Costs that stay flat as history grows (issue 26): 5,000 backups of a
# small SQLite deployment through the API; the last 1,000 against the
# first 1,000; every tag within a second of its request.
# Usage: bench/history_bench.sh [WORKDIR] [--backups N] [--window N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-history-bench}
shift || true
python3 bench/history_bench.py "$work" "$@"
