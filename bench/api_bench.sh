#!/usr/bin/env bash
# API throughput: wrk against a running `strongbox serve` over TLS.
#   1. GET /strongbox/health      a bare static handler (the baseline)
#   2. GET job status             auth + one catalog read, of a running job
#   3. POST backups               auth + one catalog transaction, cycling
#                                 over DEPLOYMENTS deployments (202 or 409)
# Prints req/s and p99 latency of each per round, and the ratios of the
# medians to the baseline.
# Usage: bench/api_bench.sh [DURATION_S=10] [DEPLOYMENTS=200] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p strongbox
dur=${1:-10}
n=${2:-200}
runs=${3:-3}
work=$(mktemp -d)
bin=$PWD/target/release/strongbox
source bench/api_common.sh
trap 'kill $server_api 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
make_certs
port=$((20000 + RANDOM % 20000))
start_server api "$port"
base="https://localhost:$port/paas/service/dbcs/api/v1.1/instances/usexample"
# Deployments for the POST run: small SQLite files.
sqlite3 small.db "CREATE TABLE t(x); INSERT INTO t VALUES (1);"
for i in $(seq 1 "$n"); do
  curl -s --cacert ca.pem "${auth[@]}" -X PUT -d "{\"engine\":\"sqlite\",\"connection\":{\"path\":\"$work/small.db\"}}" \
    "https://localhost:$port/strongbox/api/v1/instances/usexample/d$i" >/dev/null
done
# The job-status run reads a job that stays running throughout.
job=$(slow_job "$port" $((dur * 3 * runs + 30)))
cat > post.lua <<LUA
local i = 0
request = function()
  i = i % $n + 1
  return wrk.format("POST", "/paas/service/dbcs/api/v1.1/instances/usexample/d" .. i .. "/backups",
    {["Authorization"] = "$basic", ["X-ID-TENANT-NAME"] = "usexample", ["Content-Type"] = "application/json"}, "{}")
end
LUA
echo "wrk -t2 -c32 -d${dur}s over TLS, $(nproc) cores shared by wrk and the server; $runs rounds, the order rotating"
for r in $(seq 1 "$runs"); do
  echo "round $r"
  # Each request kind goes first, second and last in turn.
  order=(static job-status post)
  for k in $(seq 0 2); do
    case ${order[$(( (k + r) % 3 ))]} in
      static) wrk_run static "https://localhost:$port/strongbox/health" ;;
      job-status) wrk_run job-status -H "Authorization: $basic" -H "X-ID-TENANT-NAME: usexample" "$job" ;;
      post) wrk_run post -s post.lua "https://localhost:$port/"
            total=$(awk '/requests in/{print $1}' post.out)
            busy=$(awk '/Non-2xx/{print $NF}' post.out)
            echo "    post: $total requests, ${busy:-0} answered 409 (deployment busy), the rest 202" ;;
    esac
  done
done
awk -v s="$(median static.rps)" -v j="$(median job-status.rps)" -v p="$(median post.rps)" \
  'BEGIN{printf "medians: static %.0f, job status %.0f, post %.0f req/s\njob status / static: %.2f (target >= 0.50)\npost / static: %.2f\n", s, j, p, j/s, p/s}'
