#!/usr/bin/env bash
# What a restore drill costs next to a plain restore (issue 31): SQLite
# (drill vs recovery into a copy) and PostgreSQL (drill vs pgBackRest
# restoring the same backup into a new path).
# Usage: bench/drill_cost.sh [WORKDIR] [--sqlite-mib N] [--three-indexes] [--scale N] [--runs N] [--only sqlite|postgresql]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pgbackrest >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-drill-cost}
shift || true
mkdir -p "$work"
python3 bench/drill_cost.py "$work" "$@"
