#!/usr/bin/env bash
# Installs restic (Debian), builds Strongbox, runs the expiry benchmark.
# Usage: bench/expiry_bench.sh [WORKDIR] [--runs N] [--snapshots N] [--keep N] [--seed N] ...
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v restic >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-expiry-bench}
shift || true
python3 bench/expiry_bench.py "$work" "$@"
