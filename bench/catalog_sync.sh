#!/usr/bin/env bash
# The catalog rebuilt from the repository (issue 27): a repository with
# 10,000 backups over 100 deployments (labelled and recorded as the server
# writes them), then a new server's empty catalog synced from it: the
# rebuild's time (target <= 10 s), and the CPU a sync that finds nothing new
# costs (a running server syncs every 60 s; target < 1 % of a core). Each
# round makes its repository, then opens it anew with the page cache dropped
# (as root) before the rebuild, as a new host finds it.
# No peer: restic, borg and pgBackRest keep no catalog to rebuild.
# Usage: bench/catalog_sync.sh [WORKDIR] [DEPLOYMENTS] [BACKUPS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/strongbox-catalog-sync}
deployments=${2:-100}; backups=${3:-10000}; rounds=${4:-3}
cargo build --release -q -p strongbox-core --example catalog_sync
out=$(mktemp)
for r in $(seq "$rounds"); do
  target/release/examples/catalog_sync "$work" "$deployments" "$backups"
done | tee "$out"
python3 - "$out" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
rebuild = [float(x) for x in re.findall(r"backups in ([0-9.]+) s \(", text)]
idle = [float(x) for x in re.findall(r"([0-9.]+) % of a core", text)]
print(f"median rebuild {statistics.median(rebuild):.2f} s over {len(rebuild)} rounds; "
      f"median idle sync {statistics.median(idle):.2f} % of a core")
PY
rm -f "$out"
