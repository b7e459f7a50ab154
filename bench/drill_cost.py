#!/usr/bin/env python3
"""What a restore drill costs (issue 31), next to a plain restore of the
same backup, same run, the page cache dropped before every timed step and
the order alternating from round to round.

SQLite: a database of --sqlite-mib (bench/sqlite_data.py, seeded), one
Strongbox backup; each round times
  - restore: POST …/backups/recovery {"tag": T, "target": {"path": COPY},
    "replace": true} until Succeeded (the backup restored into a new file,
    quick_check), the copy removed untimed;
  - drill: POST …/backups/verify until Succeeded (the same restore into the
    drill's scratch file, PRAGMA integrity_check, the rows of every table
    counted, the file removed). Target: drill <= 1.2 x restore.

PostgreSQL: a pgbench cluster of --scale (140 is about 2 GiB; pg_bench.py's
Cluster, archiving through pgBackRest), one Strongbox base backup and one
pgBackRest full backup; each round times
  - pgBackRest into a new path: `restore --pg1-path=NEW --type=immediate
    --target-action=promote`, a port of its own, start, first answered
    query, then stop and remove (as the drill does);
  - Strongbox drill: POST …/backups/verify until Succeeded (restored into a
    copy beside the cluster, started on its own port, replayed to
    consistency, promoted, amcheck over every B-tree index, the rows of
    every table counted, stopped, removed).
The drill does more than the peer (amcheck, counts); both are printed.

Usage: drill_cost.py WORKDIR [--sqlite-mib 1024] [--three-indexes] [--scale 140]
       [--runs 3] [--only sqlite|postgresql]
(`bench/drill_cost.sh` installs pgBackRest and builds Strongbox first.)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

from benchutil import drop_caches
from pg_bench import BIN, Cluster, Strongbox, as_pg, free_port, rotated, sh, timed

HERE = os.path.dirname(os.path.abspath(__file__))


def sqlite_rounds(work, mib, runs, three_indexes):
    data = os.path.join(work, "sqlite")
    os.makedirs(data, exist_ok=True)
    shape = ["--three-indexes"] if three_indexes else []
    db = os.path.join(data, f"orders-{mib}{'-3i' if three_indexes else ''}.db")
    if not os.path.exists(db):
        subprocess.check_call([sys.executable, os.path.join(HERE, "sqlite_data.py"), "create", db, str(mib)] + shape)
    sb = Strongbox(work, None, sqlite=db)
    rounds = []
    try:
        sb.run_job("/app/backups", {})
        [tag] = list_backups(sb, "app")
        copy = os.path.join(data, "restored.db")

        def restore():
            drop_caches()
            r["restore_s"] = timed(lambda: sb.run_job(
                "/app/backups/recovery", {"tag": tag, "target": {"path": copy}, "replace": True}))
            os.remove(copy)

        def drill():
            timed_drill(sb, "app", r)

        for i in range(runs):
            r = {}
            for step in rotated([restore, drill], i):
                step()
            rounds.append(r)
            print(f"sqlite run {i + 1}: restore {r['restore_s']:.2f} s, drill {r['drill_s']:.2f} s", flush=True)
    finally:
        sb.close()
    size = os.path.getsize(db)
    med = lambda k: statistics.median(r[k] for r in rounds)
    print(f"\nSQLite, {size / 2**30:.2f} GiB, medians over {runs} runs: restore {med('restore_s'):.2f} s, "
          f"drill {med('drill_s'):.2f} s")
    ratio = med("drill_s") / med("restore_s")
    print(f"  drill / restore {ratio:.3f}  (<= 1.2)  {'met' if ratio <= 1.2 else 'NOT met'}")


def timed_drill(sb, service, r):
    """A drill of SERVICE, timed cold into r["drill_s"]; what it says it spent."""
    drop_caches()
    r["drill_s"] = timed(lambda: sb.run_job(f"/{service}/backups/verify", {}))
    backup = json.loads(sb.request("GET", f"/{service}/backups")[1])["backupList"][0]
    print(f"  the drill's own account: {backup['verifyMessage'].rsplit(';', 1)[-1].strip()}", flush=True)


def list_backups(sb, service):
    body = json.loads(sb.request("GET", f"/{service}/backups")[1])
    return [b["dbTag"] for b in body["backupList"] if b["status"] == "COMPLETED"]


def postgresql_rounds(work, scale, runs):
    c = Cluster(work, scale)
    sb = Strongbox(work, c)
    rounds = []
    try:
        sb.run_job("/pg/backups", {})
        c.pgbackrest("backup", "--type=full")
        expected = c.checksum()
        new = os.path.join(c.home, "restored")

        def pgbackrest():
            port = free_port()

            def restore_start_stop():
                os.makedirs(new)
                sh(f"chown postgres:postgres {new}")
                c.pgbackrest("restore", f"--pg1-path={new}", "--type=immediate", "--target-action=promote",
                             "--archive-mode=off")
                with open(os.path.join(new, "postgresql.auto.conf"), "a") as f:
                    f.write(f"\nport = {port}\n")
                as_pg(f"{BIN}/pg_ctl -D {new} -l {c.home}/restored.log -w -t 600 start")
                url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
                r["pgbackrest_answer"] = sh(
                    f"{BIN}/psql -X -A -t -d {url} -c 'SELECT count(*) FROM pgbench_accounts'").strip()
                as_pg(f"{BIN}/pg_ctl -D {new} -m fast -w stop")
                shutil.rmtree(new)

            drop_caches()
            r["pgbackrest_s"] = timed(restore_start_stop)

        def drill():
            timed_drill(sb, "pg", r)

        for i in range(runs):
            r = {}
            for step in rotated([pgbackrest, drill], i):
                step()
            rounds.append(r)
            print(f"postgresql run {i + 1}: pgbackrest restore+start+stop {r['pgbackrest_s']:.2f} s "
                  f"(accounts {r['pgbackrest_answer']}), drill {r['drill_s']:.2f} s", flush=True)
        assert c.checksum() == expected, "the live cluster changed"
    finally:
        sb.close()
        as_pg(f"{BIN}/pg_ctl -D {c.data} -m immediate -w stop || true")
    med = lambda k: statistics.median(r[k] for r in rounds)
    print(f"\nPostgreSQL, pgbench scale {scale} ({c.size / 2**30:.2f} GiB), medians over {runs} runs: "
          f"pgBackRest into a new path {med('pgbackrest_s'):.2f} s, Strongbox drill {med('drill_s'):.2f} s "
          f"(ratio {med('drill_s') / med('pgbackrest_s'):.3f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--sqlite-mib", type=int, default=1024)
    ap.add_argument("--three-indexes", action="store_true",
                    help="the second SQLite data set: indexes on email, (customer, city) and UNIQUE token")
    ap.add_argument("--scale", type=int, default=140)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["sqlite", "postgresql"])
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.only in (None, "sqlite"):
        sqlite_rounds(args.work, args.sqlite_mib, args.runs, args.three_indexes)
    if args.only in (None, "postgresql"):
        postgresql_rounds(args.work, args.scale, args.runs)


if __name__ == "__main__":
    main()
