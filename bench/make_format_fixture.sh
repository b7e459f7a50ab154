#!/usr/bin/env bash
# Writes the repository-format fixture the tests open (issue 27: "the
# format is a promise"): a repository and a catalog written by this
# version, with two backups of a small SQLite database whose rows the test
# knows (it builds the same rows and compares ordered checksums). A later version that changes the format
# adds a new fixture beside this one; it never rewrites an old one.
#
#   bench/make_format_fixture.sh BINARY OUT_DIR
#
# BINARY: a built strongbox; OUT_DIR: e.g. crates/strongbox/tests/fixtures/format-1
set -euo pipefail
bin=$(realpath "$1"); out=$2
work=$(mktemp -d); trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
db=/tmp/strongbox-fixture/app.db   # the deployment's path, fixed: the test recovers into it
rm -rf /tmp/strongbox-fixture && mkdir -p /tmp/strongbox-fixture
python3 - "$db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1]); c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
c.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i} " + "x" * (i % 50)) for i in range(1, 301)])
c.commit()
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export STRONGBOX_DATA_DIR=$work/data STRONGBOX_LISTEN=127.0.0.1:$port STRONGBOX_REPOSITORY=$work/repository \
  STRONGBOX_REPO_PASSWORD=format-fixture STRONGBOX_ALLOW_DATABASE_FILES='["/tmp/strongbox-fixture"]'
mkdir -p "$work/data"
"$bin" admin domain usexample >/dev/null
STRONGBOX_NEW_PASSWORD=fixture-pw "$bin" admin user fixture --domain usexample --role admin >/dev/null
"$bin" serve >"$work/server.log" 2>&1 & pid=$!
for _ in $(seq 100); do curl -s "http://127.0.0.1:$port/strongbox/health" >/dev/null && break; sleep 0.1; done
api() { curl -sS -u fixture:fixture-pw -H 'X-ID-TENANT-NAME: usexample' -H 'Content-Type: application/json' "$@"; }
P=http://127.0.0.1:$port/paas/service/dbcs/api/v1.1/instances/usexample
api -X PUT -d "{\"engine\": \"sqlite\", \"connection\": {\"path\": \"$db\"}}" \
  "http://127.0.0.1:$port/strongbox/api/v1/instances/usexample/app" >/dev/null
backup() {
  local loc; loc=$(api -i -X POST -d "$1" "$P/app/backups" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  for _ in $(seq 100); do api "$loc" | grep -q '"Succeeded"' && return; sleep 0.2; done; echo "backup failed" >&2; exit 1
}
backup '{"keepForever": true}'
python3 -c "import sqlite3; c=sqlite3.connect('$db'); c.execute(\"UPDATE t SET v = v || ' changed' WHERE id % 7 = 0\"); c.execute('DELETE FROM t WHERE id > 280'); c.commit()"
sleep 1.1   # the next tag is another second's
backup '{}'
kill $pid; wait $pid 2>/dev/null || true
sqlite3_checkpoint() { python3 -c "import sqlite3; c=sqlite3.connect('$1'); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.execute('PRAGMA journal_mode=DELETE')"; }
sqlite3_checkpoint "$work/data/catalog.sqlite"
rm -rf "$out"; mkdir -p "$out"
cp -r "$work/repository" "$out/repository"
cp "$work/data/catalog.sqlite" "$out/catalog.sqlite"
api_list=$(python3 - "$work/data/catalog.sqlite" <<'PY'
import sqlite3, sys, json
c = sqlite3.connect(sys.argv[1])
print(json.dumps([{"dbTag": t, "keepForever": bool(k)} for t, k in c.execute(
    "SELECT db_tag, keep_forever FROM backups ORDER BY job_id")]))
PY
)
echo "$api_list" > "$out/backups.json"
du -sh "$out"
