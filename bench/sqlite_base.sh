#!/usr/bin/env bash
# A SQLite generation's base under load (issue 25): a 1 GiB database, an
# application committing 500 small transactions/s; the base (taken through
# the shipper's read transaction, stored in a local repository) timed next
# to the same base of the idle database, rounds alternating, page cache
# dropped before each (as root). Every base is restored and checked.
# Usage: bench/sqlite_base.sh [DIR] [--mib 1024] [--rate 500] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/strongbox-base-bench}
shift || true
cargo build --release -q -p strongbox-engines --example base_bench
exec target/release/examples/base_bench "$dir" "$@"
