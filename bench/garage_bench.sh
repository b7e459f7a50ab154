#!/usr/bin/env bash
# Builds Garage (cargo install garage: ~20 minutes here) and Strongbox,
# installs restic, runs the Garage benchmark.
# Usage: bench/garage_bench.sh [WORKDIR] [--runs N] [--size-mib M]
set -euo pipefail
cd "$(dirname "$0")/.."
export GARAGE=${GARAGE:-/opt/garage/bin/garage}
[ -x "$GARAGE" ] || cargo install garage --root /opt/garage
if ! command -v restic >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-garage-bench}
shift || true
python3 bench/garage_bench.py "$work" "$@"
