#!/usr/bin/env bash
# Installs restic (Debian package), builds Strongbox, runs the copy
# benchmark (issue 28). Usage: bench/copy_bench.sh [WORKDIR] [--runs N] [--size-mib M]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v restic >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-copy-bench}
shift || true
python3 bench/copy_bench.py "$work" "$@"
