# Shared by the API benchmarks (source it): a test CA and certificate, a
# `strongbox serve --demo` over TLS, and a backup job that stays running.
# Needs: $work (a scratch directory, the current directory), $bin.

command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

make_certs() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=bench CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out srv.csr -subj "/CN=localhost" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > ext
  openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 1 -extfile ext 2>/dev/null
}

auth=(-u serviceadmin:bench-pw -H "X-ID-TENANT-NAME: usexample" -H "Content-Type: application/json")
basic="Basic $(printf serviceadmin:bench-pw | base64)"

# start_server NAME PORT [VAR=VALUE...]: serves DATA_DIR $work/NAME; sets
# the variable server_NAME to its pid.
start_server() {
  local name=$1 port=$2; shift 2
  env STRONGBOX_DATA_DIR="$work/$name" STRONGBOX_LISTEN="127.0.0.1:$port" STRONGBOX_TLS_CERT=cert.pem \
    STRONGBOX_TLS_KEY=key.pem STRONGBOX_DEMO_PASSWORD=bench-pw STRONGBOX_WORKERS=1 \
    STRONGBOX_ALLOW_DATABASE_FILES="[\"$work\"]" STRONGBOX_ALLOW_PROGRAMS='["sleep", "true"]' "$@" \
    "$bin" serve --demo 2>"$name.log" &
  printf -v "server_$name" %s $!
  until curl -s --cacert ca.pem "https://localhost:$port/strongbox/health" >/dev/null; do sleep 0.1; done
}

# slow_job PORT SECONDS: registers deployment `slow` whose dump takes
# SECONDS, starts its backup, and prints the job's status URL once running.
slow_job() {
  local port=$1 secs=$2 job
  curl -s --cacert ca.pem "${auth[@]}" -X PUT \
    -d "{\"engine\":\"command\",\"connection\":{\"backup_command\":\"sleep $secs\",\"recovery_command\":\"true\"}}" \
    "https://localhost:$port/strongbox/api/v1/instances/usexample/slow" >/dev/null
  job=$(curl -s -i --cacert ca.pem "${auth[@]}" -X POST -d '{}' \
    "https://localhost:$port/paas/service/dbcs/api/v1.1/instances/usexample/slow/backups" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  sleep 2 # a worker takes it at once
  curl -s --cacert ca.pem "${auth[@]}" "$job" | grep -q '"job_status":"In Progress"' ||
    { echo "the slow job is not in progress" >&2; return 1; }
  echo "$job"
}

# wrk_run NAME WRK-ARGS...: one wrk run; appends req/s to NAME.rps.
wrk_run() {
  local name=$1; shift
  wrk -t2 -c32 -d"${dur}s" --latency "$@" > "$name.out"
  local rps p99
  rps=$(awk '/Requests\/sec/{print $2}' "$name.out")
  p99=$(awk '$1=="99%"{print $2}' "$name.out")
  printf '  %-22s %10s req/s   p99 %s\n' "$name" "$rps" "$p99"
  echo "$rps" >> "$name.rps"
}

median() { sort -n "$1" | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
