#!/usr/bin/env bash
# Installs the peers (Debian packages), builds Strongbox, runs the repository
# benchmark. Usage: bench/repo_bench.sh [WORKDIR] [--runs N] [--size-mib M]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in restic borg zstd; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic borgbackup zstd
fi
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-bench}
shift || true
python3 bench/repo_bench.py "$work" "$@"
