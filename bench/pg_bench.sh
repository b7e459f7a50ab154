#!/usr/bin/env bash
# Installs pgBackRest (Debian package), builds Strongbox, runs the PostgreSQL
# base backup and recovery benchmark. Needs the PostgreSQL 15 server binaries
# (/usr/lib/postgresql/15/bin) and the `postgres` user.
# Usage: bench/pg_bench.sh [WORKDIR] [--scale 140] [--runs 3]
source "$(dirname "$0")/pg_prepare.sh"
work=${1:-/tmp/strongbox-pg-bench}
shift || true
python3 bench/pg_bench.py "$work" "$@"
