#!/usr/bin/env bash
# Installs pgBackRest (Debian package), builds Strongbox, runs the PostgreSQL
# base backup and recovery benchmark. Needs the PostgreSQL 15 server binaries
# (/usr/lib/postgresql/15/bin) and the `postgres` user.
# Usage: bench/pg_bench.sh [WORKDIR] [--scale 140] [--runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pgbackrest >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-pg-bench}
shift || true
python3 bench/pg_bench.py "$work" "$@"
