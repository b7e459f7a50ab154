#!/usr/bin/env python3
"""`POST …/backups` at a fixed rate across many deployments, against three
replicas on a PostgreSQL catalog and against one server on SQLite, side by
side.

ROUNDS rounds, the two setups taking turns going first; for each:
1. starts the servers (TLS, one shared repository directory, the catalog);
2. registers DEPLOYMENTS SQLite deployments (one small file each);
3. sends RATE requests/s for SECONDS seconds with `strongbox-loadgen`
   (open loop: latency counts from when a request was due, so a stall is
   charged to every request behind it), round-robin over the replicas,
   cycling over the deployments — a deployment with a job queued or running
   answers 409, as the API says;
4. waits until every job has ended, then checks: no 5xx and no failed
   connection; every 202's `Location` names a distinct job; the catalog holds
   exactly as many backup jobs as there were 202s; every one `Succeeded`.

Targets (issue 13): p99 <= 10 ms, zero 5xx, every 202 exactly one job.

Usage: load_bench.py WORKDIR [--rate 500] [--seconds 60] [--deployments 1000] [--rounds 3]
(`bench/load_bench.sh` builds the release binaries first.)
"""
import argparse
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

from benchutil import Server, psql, tls_certs

HERE = os.path.dirname(os.path.abspath(__file__))
RELEASE = os.path.join(HERE, "..", "target", "release")
PASSWORD = "load-bench-pw"


class Catalog:
    """What the bench reads from a catalog: job counts by status."""

    def __init__(self, count):
        self.count = count  # SQL -> int

    def backups(self, where="TRUE"):
        return self.count(f"SELECT count(*) FROM jobs WHERE operation = 'backup' AND {where}")


def loadgen(servers, args, *extra):
    cmd = [os.path.join(RELEASE, "strongbox-loadgen"), "--servers", ",".join(s.url for s in servers),
           "--cacert", servers[0].ca, "-H", "X-ID-TENANT-NAME: usexample", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, LOADGEN_AUTH=f"serviceadmin:{PASSWORD}"))
    return json.loads(out.stdout)


def setup_run(name, work, servers, catalog, args):
    small = os.path.join(work, "small")
    os.makedirs(small, exist_ok=True)
    for n in range(1, args.deployments + 1):
        c = sqlite3.connect(os.path.join(small, f"d{n}.sqlite"))
        c.executescript("CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (randomblob(2000));")
        c.close()
    reg = loadgen(servers, args, "--method", "PUT", "--path", "/strongbox/api/v1/instances/usexample/d{n}",
                  "--deployments", str(args.deployments), "--rate", "200",
                  "--seconds", str(max(1, args.deployments // 200)),
                  "--body", json.dumps({"engine": "sqlite", "connection": {"path": os.path.join(small, "d{n}.sqlite")},
                                        **({"runsOn": "nowhere"} if args.api_only else {})}))
    if set(reg["by_status"]) != {"200"}:
        sys.exit(f"{name}: registration answered {reg['by_status']}")
    before = catalog.backups()
    locations = os.path.join(work, "locations.txt")
    r = loadgen(servers, args, "--path", "/paas/service/dbcs/api/v1.1/instances/usexample/d{n}/backups",
                "--deployments", str(args.deployments), "--rate", str(args.rate),
                "--seconds", str(args.seconds), "--locations", locations)
    deadline = time.monotonic() + 600
    while not args.api_only and catalog.backups("status IN ('queued', 'running')") > 0:
        if time.monotonic() > deadline:
            sys.exit(f"{name}: jobs still queued or running 10 minutes after the load")
        time.sleep(1)
    with open(locations) as f:
        jobs = [line.strip() for line in f if line.strip()]
    accepted = r["by_status"].get("202", 0)
    r["distinct_jobs"] = len(set(jobs))
    r["catalog_jobs"] = catalog.backups() - before
    failed = 0 if args.api_only else catalog.backups("status <> 'succeeded'")
    r["server_errors"] = sum(n for s, n in r["by_status"].items() if s == "0" or s.startswith("5"))
    r["ok"] = (r["server_errors"] == 0 and r["distinct_jobs"] == accepted == r["catalog_jobs"]
               and failed == 0 and r["p99_ms"] <= 10.0)
    print(f"{name:<28} {r['requests']:>6} requests  202: {accepted:>5}  409: {r['by_status'].get('409', 0):>6}  "
          f"5xx/conn: {r['server_errors']}  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
          f"max {r['max_ms']:.1f} ms  jobs {r['catalog_jobs']} (distinct locations {r['distinct_jobs']}, "
          f"failed {failed})  {'PASS' if r['ok'] else 'FAIL'}", flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--deployments", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", help="STRONGBOX_WORKERS of each server (default: the server's)")
    ap.add_argument("--api-only", action="store_true",
                    help="diagnosis: deployments run on a label no server has, so no job runs and the "
                         "requests are measured alone (jobs stay queued; the job checks are skipped)")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    tls_certs(args.work)
    binary = os.path.join(RELEASE, "strongbox")
    common = {"STRONGBOX_DEMO_PASSWORD": PASSWORD, "STRONGBOX_REPO_PASSWORD": "load-bench-repo"}
    if args.workers is not None:
        common["STRONGBOX_WORKERS"] = args.workers
    print(f"{args.rate} POST/s for {args.seconds} s over {args.deployments} deployments, "
          f"{os.cpu_count()} cores shared by the generator, the servers and the catalog", flush=True)
    results = {"pg": [], "sqlite": []}
    for r in range(args.rounds):
        # The two setups take turns going first.
        for setup in (("pg", "sqlite") if r % 2 == 0 else ("sqlite", "pg")):
            work = os.path.join(args.work, f"{setup}-{r}")
            results[setup].append((run_pg if setup == "pg" else run_sqlite)(work, binary, common, args))
    print(json.dumps(results))
    for setup, name in (("pg", f"{args.replicas} replicas, PostgreSQL"), ("sqlite", "1 server, SQLite")):
        rs = results[setup]
        print(f"{name:<28} median of {len(rs)}: p50 {statistics.median(r['p50_ms'] for r in rs):.2f} ms  "
              f"p99 {statistics.median(r['p99_ms'] for r in rs):.2f} ms  "
              f"202s {statistics.median(r['by_status'].get('202', 0) for r in rs):.0f}  "
              f"5xx/conn {sum(r['server_errors'] for r in rs)}  "
              f"{sum(r['ok'] for r in rs)}/{len(rs)} rounds met every target")
    sys.exit(0 if all(r["ok"] for rs in results.values() for r in rs) else 1)


def run_pg(work, binary, common, args):
    """Three replicas, PostgreSQL catalog (a database of its own)."""
    db = f"strongbox_load_{secrets.token_hex(4)}"
    psql("postgres", f"CREATE DATABASE {db}")
    env = dict(common, STRONGBOX_CATALOG=f"postgres://postgres@127.0.0.1:5432/{db}",
               STRONGBOX_REPOSITORY=os.path.join(work, "repository"))
    servers = [Server(binary, args.work, os.path.join(work, f"replica-{i}"), env) for i in range(args.replicas)]
    try:
        return setup_run(f"{args.replicas} replicas, PostgreSQL", work, servers,
                         Catalog(lambda sql: int(psql(db, sql))), args)
    finally:
        for s in servers:
            s.stop()
        psql("postgres", f"DROP DATABASE IF EXISTS {db}")


def run_sqlite(work, binary, common, args):
    """One server, SQLite catalog."""
    server = Server(binary, args.work, os.path.join(work, "server"),
                    dict(common, STRONGBOX_REPOSITORY=os.path.join(work, "repository")))
    catalog_file = os.path.join(server.dir, "data", "catalog.sqlite")

    def count(sql):
        c = sqlite3.connect(catalog_file, timeout=30)
        try:
            return c.execute(sql).fetchone()[0]
        finally:
            c.close()
    try:
        return setup_run("1 server, SQLite", work, [server], Catalog(count), args)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
