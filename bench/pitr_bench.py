#!/usr/bin/env python3
"""Point-in-time recovery: WAL archiving under write load, and recovery to a
timestamp, Strongbox next to pgBackRest on the same cluster in the same run.

1. Archiving: for each archiver (`strongbox repo … wal-push` and
   `pgbackrest archive-push`, both synchronous archive_commands), pgbench
   writes for --load seconds (4 clients) while the server's archiver lag is
   sampled every 0.25 s: segments completed but not yet archived. Prints the
   WAL rate, the archiving rate and the largest lag.
2. Recovery: the archive_command feeds both archives. Each round takes a
   base backup with each tool, runs pgbench, notes a moment T in the middle
   of the load, writes on, then recovers to T with pgBackRest (stop, empty
   the data directory, `restore --type=time --target=T
   --target-action=promote`, start, wait until promoted) and with Strongbox
   (POST …/backups/recovery {"timestamp": T} until Succeeded: restore,
   replay, check, promote, old directory removed); both must give the same
   database. Then complete recovery: pgBackRest's default restore (to the
   end of the archive) and Strongbox's `{"latest": true}`, each after more
   pgbench writes, each must keep every committed change. Rounds alternate
   which tool goes first. Prints medians and the ratios.

Usage: pitr_bench.py WORKDIR [--scale 50] [--runs 3] [--load 60]
(`bench/pitr_bench.sh` installs pgBackRest and builds Strongbox first.)
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import threading
import time

from pg_bench import BIN, Cluster, Strongbox, as_pg, sh, timed

class Bench:
    def __init__(self, work, scale):
        self.c = Cluster(work, scale)
        self.sb = Strongbox(work, self.c, password_file=True)
        # PostgreSQL's archive_command and restore_command run as postgres:
        # they need the repository and its password file.
        sh(f"chmod 755 {self.sb.dir} && chown -R postgres:postgres {self.sb.dir}/repository "
           f"{self.sb.dir}/repository.password")
        self.strongbox_push = json.loads(self.sb.request("GET", "/pg")[1])["pointInTimeRecovery"]["archiveCommand"]
        self.pgbackrest_push = f"pgbackrest --config={self.c.conf} --stanza=bench archive-push %p"

    def q(self, sql):
        return sh(f"{BIN}/psql -X -A -t -d {self.c.url} -c \"{sql}\"").strip()

    def set_archiver(self, command):
        self.q(f"ALTER SYSTEM SET archive_command = '{command}'")
        self.q("SELECT pg_reload_conf()")
        self.drain()

    def drain(self):
        """Switches to a new segment and waits until the previous one is archived."""
        last = self.q("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 600
        while self.q("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last:
            assert time.monotonic() < deadline, "archiving stalled"
            time.sleep(0.05)

    def pgbench(self, seconds):
        sh(f"{BIN}/pgbench -n -c 4 -j 2 -T {seconds} {self.c.url} 2>&1")

    def bulk(self):
        """About 1 GB of WAL as fast as the server writes it."""
        self.q("DROP TABLE IF EXISTS bulk")
        self.q("CREATE TABLE bulk AS SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 6) AS pad "
               "FROM generate_series(1, 3000000) g")

    def archiving(self, command, work):
        self.set_archiver(command)
        failed0 = int(self.q("SELECT failed_count FROM pg_stat_archiver"))
        lsn0 = self.q("SELECT pg_current_wal_lsn()")
        load = threading.Thread(target=work)
        lags = []
        t0 = time.monotonic()
        load.start()
        while load.is_alive():
            row = self.q("SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '') "
                         "FROM pg_stat_archiver").split("|")
            current, archived = (int(x[8:16], 16) * 256 + int(x[16:24], 16) for x in row)
            lags.append(max(0, current - archived - 1))
            time.sleep(0.25)
        load.join()
        wal = int(self.q(f"SELECT pg_current_wal_lsn() - '{lsn0}'::pg_lsn"))
        elapsed = time.monotonic() - t0
        drain = timed(self.drain)
        return {"wal_mb_s": wal / 1e6 / elapsed, "max_lag": max(lags), "median_lag": statistics.median(lags),
                "drain_s": drain, "failed": int(self.q("SELECT failed_count FROM pg_stat_archiver")) - failed0,
                "archive_mb_s": wal / 1e6 / (elapsed + drain)}

    def promoted(self):
        deadline = time.monotonic() + 600
        while True:
            r = subprocess.run([f"{BIN}/psql", "-X", "-A", "-t", "-d", self.c.url, "-c", "SELECT pg_is_in_recovery()"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            if r.returncode == 0 and r.stdout.strip() == "f":
                return
            assert time.monotonic() < deadline, "the server did not finish recovery"
            time.sleep(0.05)

    def recovery_round(self, load, strongbox_first):
        """Recovery to a moment T, then complete recovery (`latest` /
        pgBackRest's default restore), each tool in turn (`strongbox_first`
        alternates who goes first). Both start from the same archived state
        and stop when the recovered server answers outside recovery."""
        c, sb = self.c, self.sb
        c.pgbackrest("backup", "--type=full")
        sb.run_job("/pg/backups", {})
        self.pgbench(load // 2)
        # T: a whole second in the middle of the write load.
        target = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        time.sleep(1)
        self.pgbench(load // 2)
        self.drain()

        def pgbackrest(*args):
            c.stop()
            sh(f"find {c.data} -mindepth 1 -delete")
            c.pgbackrest("restore", *args)
            c.start()
            self.promoted()

        to_time = {
            "pgbackrest": lambda: pgbackrest("--type=time", f'"--target={target:%Y-%m-%d %H:%M:%S}+00"',
                                             "--target-action=promote"),
            "strongbox": lambda: sb.run_job("/pg/backups/recovery",
                                            {"timestamp": target.strftime("%d-%b-%Y %H:%M:%S")}),
        }
        latest = {
            "pgbackrest": lambda: pgbackrest(),
            "strongbox": lambda: sb.run_job("/pg/backups/recovery", {"latest": True}),
        }
        order = ["strongbox", "pgbackrest"] if strongbox_first else ["pgbackrest", "strongbox"]
        out = {}
        at_target = None
        for i, tool in enumerate(order):
            if i > 0:
                self.pgbench(3)  # changes that this recovery must undo
                self.drain()
            out[f"{tool}_time_s"] = timed(to_time[tool])
            state = (c.checksum(), self.q("SELECT count(*) FROM pgbench_history"))
            assert at_target in (None, state), "Strongbox and pgBackRest recovered different data"
            at_target = state
        out["rows_at_target"] = int(at_target[1])
        for tool in order:
            # Complete recovery: every committed (and archived) change comes back.
            self.pgbench(max(load // 4, 3))
            self.drain()
            expected = (c.checksum(), self.q("SELECT count(*) FROM pgbench_history"))
            out[f"{tool}_latest_s"] = timed(latest[tool])
            got = (c.checksum(), self.q("SELECT count(*) FROM pgbench_history"))
            assert got == expected, f"{tool}: complete recovery lost committed changes"
        return out

    def close(self):
        self.sb.close()
        as_pg(f"{BIN}/pg_ctl -D {self.c.data} -m immediate -w stop || true")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load", type=int, default=60, help="seconds of pgbench load per measurement")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    b = Bench(args.work, args.scale)
    try:
        archivers = (("strongbox", b.strongbox_push), ("pgbackrest", b.pgbackrest_push))
        loads = (("pgbench", lambda: b.pgbench(args.load)), ("bulk", b.bulk))
        archiving = {(a, w): [] for a, _ in archivers for w, _ in loads}
        for i in range(args.runs):
            for load, work in loads:
                # Alternating who goes first: the first after a checkpoint writes more full pages.
                for name, command in archivers[:: 1 if i % 2 == 0 else -1]:
                    r = b.archiving(command, work)
                    archiving[(name, load)].append(r)
                    print(f"archiving run {i + 1} {load} {name}: " + " ".join(f"{k}={v:.3g}" for k, v in r.items()),
                          flush=True)
        b.set_archiver(f"{b.pgbackrest_push} && {b.strongbox_push}")
        rounds = []
        for i in range(args.runs):
            r = b.recovery_round(args.load, strongbox_first=i % 2 == 1)
            rounds.append(r)
            print(f"recovery run {i + 1}: " + " ".join(f"{k}={v:.3g}" for k, v in r.items()), flush=True)
    finally:
        b.close()

    def med(rows, k):
        return statistics.median(r[k] for r in rows)

    print(f"\nmedians over {args.runs} runs, pgbench scale {args.scale} (4 clients), {args.load} s of load each")
    print(f"{'load':8} {'archiver':11} {'WAL MB/s':>9} {'archived MB/s':>14} {'max lag (segments)':>19} "
          f"{'drain s':>8} {'failed':>7}")
    for (name, load), rows in archiving.items():
        print(f"{load:8} {name:11} {med(rows, 'wal_mb_s'):9.1f} {med(rows, 'archive_mb_s'):14.1f} "
              f"{max(r['max_lag'] for r in rows):19d} {med(rows, 'drain_s'):8.2f} {sum(r['failed'] for r in rows):7d}")
    to_time = med(rounds, "strongbox_time_s") / med(rounds, "pgbackrest_time_s")
    latest = med(rounds, "strongbox_latest_s") / med(rounds, "pgbackrest_latest_s")
    print(f"\nrecovery to a timestamp: pgbackrest {med(rounds, 'pgbackrest_time_s'):.2f} s, "
          f"strongbox {med(rounds, 'strongbox_time_s'):.2f} s")
    print(f"complete recovery: pgbackrest (default restore) {med(rounds, 'pgbackrest_latest_s'):.2f} s, "
          f"strongbox (latest) {med(rounds, 'strongbox_latest_s'):.2f} s")
    print(f"ratios (target)\n  recovery-to-time vs pgbackrest --type=time {to_time:6.3f}  (<= 0.8)  "
          f"{'met' if to_time <= 0.8 else 'NOT met'}")
    print(f"  latest vs pgbackrest default restore        {latest:6.3f}")


if __name__ == "__main__":
    main()
