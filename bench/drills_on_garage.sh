#!/usr/bin/env bash
# The loss drills (issues 27 and 28) on a three-node Garage cluster.
# Builds Garage (cargo install garage: ~20 minutes here) if it is not there.
# Usage: bench/drills_on_garage.sh [WORKDIR] [TEST FILTER …]
set -euo pipefail
cd "$(dirname "$0")/.."
export GARAGE=${GARAGE:-/opt/garage/bin/garage}
[ -x "$GARAGE" ] || cargo install garage --root /opt/garage
work=${1:-/tmp/strongbox-garage-drills}
shift || true
python3 bench/drills_on_garage.py "$work" "$@"
