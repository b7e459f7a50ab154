#!/usr/bin/env bash
# Installs pgBackRest (Debian package), builds Strongbox, runs the
# point-in-time recovery benchmark: WAL archiving under pgbench load and
# recovery to a timestamp, next to pgBackRest. Needs the PostgreSQL 15
# server binaries (/usr/lib/postgresql/15/bin) and the `postgres` user.
# Usage: bench/pitr_bench.sh [WORKDIR] [--scale 50] [--runs 3] [--load 60]
source "$(dirname "$0")/pg_prepare.sh"
work=${1:-/tmp/strongbox-pitr-bench}
shift || true
python3 bench/pitr_bench.py "$work" "$@"
