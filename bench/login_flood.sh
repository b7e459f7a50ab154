#!/usr/bin/env bash
# Legitimate requests beside a flood of wrong passwords (bench/login_flood.py).
# Usage: bench/login_flood.sh [WORKDIR] [--seconds N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-login-flood}
shift || true
python3 bench/login_flood.py "$work" "$@"
