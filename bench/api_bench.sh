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
command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release -q -p strongbox
dur=${1:-10}
n=${2:-200}
runs=${3:-3}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out srv.csr -subj "/CN=localhost" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 1 -extfile ext 2>/dev/null
port=$((20000 + RANDOM % 20000))
bin=$OLDPWD/target/release/strongbox
STRONGBOX_DATA_DIR=$work/data STRONGBOX_LISTEN=127.0.0.1:$port STRONGBOX_TLS_CERT=cert.pem STRONGBOX_TLS_KEY=key.pem \
  STRONGBOX_DEMO_PASSWORD=bench-pw STRONGBOX_WORKERS=1 "$bin" serve --demo 2>server.log &
server=$!
until curl -s --cacert ca.pem "https://localhost:$port/strongbox/health" >/dev/null; do sleep 0.1; done
base="https://localhost:$port/paas/service/dbcs/api/v1.1/instances/usexample"
auth=(-u serviceadmin:bench-pw -H "X-ID-TENANT-NAME: usexample" -H "Content-Type: application/json")
# Deployments for the POST run: small SQLite files.
sqlite3 small.db "CREATE TABLE t(x); INSERT INTO t VALUES (1);"
for i in $(seq 1 "$n"); do
  curl -s --cacert ca.pem "${auth[@]}" -X PUT -d "{\"engine\":\"sqlite\",\"connection\":{\"path\":\"$work/small.db\"}}" \
    "https://localhost:$port/strongbox/api/v1/instances/usexample/d$i" >/dev/null
done
# The job-status run reads a job that stays running throughout: a
# backup whose dump command takes longer than the benchmark.
curl -s --cacert ca.pem "${auth[@]}" -X PUT \
  -d "{\"engine\":\"command\",\"connection\":{\"backup_command\":\"sleep $((dur * 3 * runs + 30)); echo done\",\"recovery_command\":\"true\"}}" \
  "https://localhost:$port/strongbox/api/v1/instances/usexample/slow" >/dev/null
job=$(curl -s -i --cacert ca.pem "${auth[@]}" -X POST -d '{}' "$base/slow/backups" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
sleep 2 # a worker takes it at once
curl -s --cacert ca.pem "${auth[@]}" "$job" | tee job.json | grep -q '"job_status":"In Progress"' || { echo "the slow job is not in progress: $(cat job.json)" >&2; exit 1; }
basic="Basic $(printf serviceadmin:bench-pw | base64)"
cat > post.lua <<LUA
local i = 0
request = function()
  i = i % $n + 1
  return wrk.format("POST", "/paas/service/dbcs/api/v1.1/instances/usexample/d" .. i .. "/backups",
    {["Authorization"] = "$basic", ["X-ID-TENANT-NAME"] = "usexample", ["Content-Type"] = "application/json"}, "{}")
end
LUA
run() { # name, wrk args...
  local name=$1; shift
  wrk -t2 -c32 -d"${dur}s" --latency "$@" > "$name.out"
  local rps p99
  rps=$(awk '/Requests\/sec/{print $2}' "$name.out")
  p99=$(awk '$1=="99%"{print $2}' "$name.out")
  printf '  %-12s %10s req/s   p99 %s\n' "$name" "$rps" "$p99"
  echo "$rps" >> "$name.rps"
}
median() { sort -n "$1" | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
echo "wrk -t2 -c32 -d${dur}s over TLS, $(nproc) cores shared by wrk and the server; $runs rounds, the order rotating"
for r in $(seq 1 "$runs"); do
  echo "round $r"
  # Each request kind goes first, second and last in turn.
  order=(static job-status post)
  for k in $(seq 0 2); do
    case ${order[$(( (k + r) % 3 ))]} in
      static) run static "https://localhost:$port/strongbox/health" ;;
      job-status) run job-status -H "Authorization: $basic" -H "X-ID-TENANT-NAME: usexample" "$job" ;;
      post) run post -s post.lua "https://localhost:$port/"
            total=$(awk '/requests in/{print $1}' post.out)
            busy=$(awk '/Non-2xx/{print $NF}' post.out)
            echo "    post: $total requests, ${busy:-0} answered 409 (deployment busy), the rest 202" ;;
    esac
  done
done
awk -v s="$(median static.rps)" -v j="$(median job-status.rps)" -v p="$(median post.rps)" \
  'BEGIN{printf "medians: static %.0f, job status %.0f, post %.0f req/s\njob status / static: %.2f (target >= 0.50)\npost / static: %.2f\n", s, j, p, j/s, p/s}'
