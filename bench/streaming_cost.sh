#!/usr/bin/env bash
# What streaming the WAL costs pgbench (issue 29): archive only, async
# streaming, synchronous streaming, and a synchronous physical replica.
# Usage: bench/streaming_cost.sh [WORKDIR] [--scale N] [--runs N] [--seconds S] [--modes archive,async,sync,replica,receivewal]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pgbackrest >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-streaming-cost}
shift || true
mkdir -p "$work"
python3 bench/streaming_cost.py "$work" "$@"
