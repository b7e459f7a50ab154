#!/usr/bin/env bash
# What recording metrics costs: two servers, one with metrics on (the
# default) and one with STRONGBOX_METRICS=false, the same requests through
# each: the static handler and a job-status read (auth + catalog). Each
# round alternates which server goes first; prints medians and on/off ratios.
# Usage: bench/metrics_bench.sh [DURATION_S=10] [ROUNDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p strongbox
dur=${1:-10}
runs=${2:-5}
work=$(mktemp -d)
bin=$PWD/target/release/strongbox
source bench/api_common.sh
trap 'kill $server_on $server_off 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
make_certs
declare -A port job
port[on]=$((20000 + RANDOM % 10000))
port[off]=$((30000 + RANDOM % 10000))
start_server on "${port[on]}"
start_server off "${port[off]}" STRONGBOX_METRICS=false
for m in on off; do job[$m]=$(slow_job "${port[$m]}" $((dur * 4 * runs + 30))); done
curl -s --cacert ca.pem "https://localhost:${port[on]}/metrics" | grep -q strongbox_http_requests_total
[ "$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.pem "https://localhost:${port[off]}/metrics")" = 404 ]
echo "wrk -t2 -c32 -d${dur}s over TLS, $(nproc) cores shared by wrk and the server; $runs rounds"
for r in $(seq 1 "$runs"); do
  echo "round $r"
  if (( r % 2 )); then order=(on off); else order=(off on); fi
  for m in "${order[@]}"; do
    wrk_run "static-$m" "https://localhost:${port[$m]}/strongbox/health"
    wrk_run "job-status-$m" -H "Authorization: $basic" -H "X-ID-TENANT-NAME: usexample" "${job[$m]}"
  done
done
for k in static job-status; do
  awk -v on="$(median "$k-on.rps")" -v off="$(median "$k-off.rps")" -v k="$k" \
    'BEGIN{printf "%-11s metrics on %8.0f, off %8.0f req/s (medians): on/off %.3f (target >= 0.95)\n", k, on, off, on/off}'
done
