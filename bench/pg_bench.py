#!/usr/bin/env python3
"""PostgreSQL base backup and recovery: Strongbox next to pg_basebackup and
pgBackRest, same cluster, same run.

One cluster (initdb as `postgres` in WORKDIR, a free port, pgbench data of
--scale; scale 140 is about 2 GiB) archives its WAL with pgBackRest, as
pgBackRest requires. Each round (the backups 1-3 in an order rotating from
round to round, the recoveries alternating, the page cache dropped before
every timed step):
  1. `pg_basebackup -Ft -X fetch -c fast` to a local directory (the floor);
  2. pgBackRest full backup (process-max=2, compress-type=zst, start-fast);
  3. Strongbox: POST …/backups to a running `strongbox serve`, timed until
     the job reports Succeeded (engine `postgresql`: pg_basebackup streamed
     into the repository; encrypted, unlike pgBackRest here);
  4. recovery: pgBackRest (stop, empty the data directory, `restore
     --type=immediate`, start, first answered query) and Strongbox (POST
     …/backups/recovery {"latest": true} until Succeeded: unpack, stop, swap,
     start, first answered query, old directory removed).
Prints each round, then medians and the ratios the targets are stated in.

Usage: pg_bench.py WORKDIR [--scale 140] [--runs 3]
(`bench/pg_bench.sh` installs pgBackRest and builds Strongbox first.)
"""
import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

from benchutil import drop_caches

HERE = os.path.dirname(os.path.abspath(__file__))
STRONGBOX = os.path.join(HERE, "..", "target", "release", "strongbox")
BIN = "/usr/lib/postgresql/15/bin"


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


def as_pg(cmd):
    return sh(f"runuser -u postgres -- sh -c '{cmd}'")


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def du(path):
    return int(sh(f"du -sb {path}").split()[0])


def pg_home(work, name):
    """A new directory for a cluster, owned by postgres: (home, data directory, a free port)."""
    home = os.path.join(work, name)
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    sh(f"chown postgres:postgres {home}")
    return home, os.path.join(home, "data"), free_port()


class Cluster:
    def __init__(self, work, scale):
        self.home, self.data, self.port = pg_home(work, "pg")
        self.conf = os.path.join(self.home, "pgbackrest.conf")
        self.repo = os.path.join(self.home, "pgbackrest-repo")
        with open(self.conf, "w") as f:
            f.write(f"[global]\nrepo1-path={self.repo}\nprocess-max=2\ncompress-type=zst\nstart-fast=y\n"
                    f"repo1-retention-full=1\nlog-level-console=warn\nlog-path={self.home}\nlock-path={self.home}\n"
                    f"[bench]\npg1-path={self.data}\npg1-port={self.port}\npg1-socket-path={self.home}\n")
        sh(f"chown postgres:postgres {self.conf}")
        as_pg(f"{BIN}/initdb --no-sync -A trust -U postgres -D {self.data} >/dev/null")
        with open(os.path.join(self.data, "postgresql.auto.conf"), "w") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.home}'\n"
                    f"archive_mode = on\narchive_command = 'pgbackrest --config={self.conf} --stanza=bench archive-push %p'\n"
                    f"wal_keep_size = '4GB'\nmax_wal_size = '4GB'\nshared_buffers = '256MB'\n")
        sh(f"chown postgres:postgres {self.data}/postgresql.auto.conf")
        self.start()
        self.pgbackrest("stanza-create")
        print(f"pgbench -i -s {scale} ...", flush=True)
        sh(f"{BIN}/pgbench -i -q -s {scale} {self.url} 2>&1")
        sh(f"{BIN}/psql -X -q -d {self.url} -c 'VACUUM ANALYZE' -c 'CHECKPOINT'")
        self.size = int(sh(f"{BIN}/psql -X -A -t -d {self.url} -c 'SELECT pg_database_size(current_database())'"))

    @property
    def url(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, action):
        if action == "start":
            return f"{BIN}/pg_ctl -D {self.data} -l {self.home}/server.log -w -t 600 start"
        return f"{BIN}/pg_ctl -D {self.data} -m fast -w stop"

    def start(self):
        as_pg(self.ctl("start"))

    def stop(self):
        as_pg(self.ctl("stop"))

    def answers(self):
        deadline = time.monotonic() + 600
        while subprocess.call([f"{BIN}/psql", "-X", "-A", "-t", "-d", self.url, "-c", "SELECT 1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.05)

    def pgbackrest(self, *args):
        return as_pg(f"pgbackrest --config={self.conf} --stanza=bench {' '.join(args)}")

    def checksum(self):
        return sh(f"{BIN}/psql -X -A -t -d {self.url} -c "
                  "\"SELECT count(*), sum(abalance), md5(string_agg(aid::text || ':' || abalance, ',' ORDER BY aid)) "
                  "FROM pgbench_accounts\"").strip()


class Strongbox:
    def __init__(self, work, cluster, password_file=False, sqlite=None):
        """Deployment `pg`, the cluster (physical); with `sqlite` (a file)
        deployment `app` instead. With `password_file`, the server keeps its
        repository password in DATA_DIR/repository.password (which
        PostgreSQL's restore_command reads)."""
        self.dir = os.path.join(work, "strongbox")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.port = free_port()
        env = dict(os.environ, STRONGBOX_DATA_DIR=self.dir, STRONGBOX_NEW_PASSWORD="bench-pw",
                   STRONGBOX_LISTEN=f"127.0.0.1:{self.port}",
                   # What the deployment runs and touches (docs/security.md).
                   STRONGBOX_ALLOW_BIN_DIRS=json.dumps([BIN]), STRONGBOX_ALLOW_PROGRAMS='["runuser"]',
                   STRONGBOX_ALLOW_HOSTS='["127.0.0.1", "localhost"]')
        if not password_file:
            env["STRONGBOX_REPO_PASSWORD"] = "bench-repo-pw"
        if sqlite:
            env["STRONGBOX_ALLOW_DATABASE_FILES"] = json.dumps([os.path.dirname(sqlite)])
            engine, name, conn = "sqlite", "app", json.dumps({"path": sqlite})
        else:
            env["STRONGBOX_ALLOW_DATA_DIRECTORIES"] = json.dumps([os.path.dirname(cluster.data)])
            ctl = lambda a: f"runuser -u postgres -- {cluster.ctl(a)}"
            engine, name = "postgresql", "pg"
            conn = json.dumps({"url": cluster.url, "data_dir": cluster.data, "bin_dir": BIN,
                               "stop_command": ctl("stop"), "start_command": ctl("start")})
        self.env = env
        sh(f"{STRONGBOX} admin domain usexample", env=env)
        sh(f"{STRONGBOX} admin user --domain usexample bench", env=env)
        subprocess.run([STRONGBOX, "admin", "deployment", "--domain", "usexample", "--engine", engine,
                        "--connection", conn, name], env=env, check=True, stdout=subprocess.DEVNULL)
        self.server = subprocess.Popen([STRONGBOX, "serve"], env=env, stderr=open(os.path.join(self.dir, "log"), "w"))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "strongbox serve did not start"
                time.sleep(0.05)

    def request(self, method, path, body=None):
        url = f"http://127.0.0.1:{self.port}/paas/service/dbcs/api/v1.1/instances/usexample{path}"
        req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", "Basic " + base64.b64encode(b"bench:bench-pw").decode())
        req.add_header("X-ID-TENANT-NAME", "usexample")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req) as r:
            return r.headers, r.read()

    def run_job(self, path, body):
        """The job's final status, once it Succeeded (exits if it Failed)."""
        headers, _ = self.request("POST", path, body)
        job = headers["Location"].split("/instances/usexample", 1)[1]
        while True:
            status = json.loads(self.request("GET", job)[1])
            if status["job_status"] == "Succeeded":
                return status
            if status["job_status"] == "Failed":
                sys.exit(f"strongbox job failed: {status['message']}")
            time.sleep(0.05)

    def repo_bytes(self):
        return du(os.path.join(self.dir, "repository"))

    def close(self):
        self.server.terminate()
        self.server.wait()


def one_round(work, c, i):
    """Round `i`: the backups, then the recoveries, in an order rotated by
    `i`, the page cache dropped before each timed step."""
    out = {}
    sb = Strongbox(work, c)  # a fresh repository each round, as pgBackRest's
    try:
        def basebackup():
            target = os.path.join(work, "basebackup")
            shutil.rmtree(target, ignore_errors=True)
            drop_caches()
            out["pg_basebackup_s"] = timed(
                lambda: sh(f"{BIN}/pg_basebackup -d {c.url} -D {target} -Ft -X fetch -c fast"))
            out["pg_basebackup_bytes"] = du(target)
            shutil.rmtree(target)

        def pgbackrest():
            shutil.rmtree(c.repo, ignore_errors=True)
            c.pgbackrest("stanza-create")
            drop_caches()
            out["pgbackrest_s"] = timed(lambda: c.pgbackrest("backup", "--type=full"))
            # Backup and archive: the archive holds the WAL the backup needs
            # for consistency, which Strongbox's base backup carries inside it.
            out["pgbackrest_bytes"] = du(c.repo)

        def strongbox():
            before = sb.repo_bytes()
            drop_caches()
            out["strongbox_s"] = timed(lambda: sb.run_job("/pg/backups", {}))
            out["strongbox_bytes"] = sb.repo_bytes() - before

        for step in rotated([basebackup, pgbackrest, strongbox], i):
            step()
        recoveries(c, sb, c.checksum(), out, i)
    finally:
        sb.close()
    return out


def rotated(steps, i):
    k = i % len(steps)
    return steps[k:] + steps[:k]


def recoveries(c, sb, expected, out, i):
    """Each tool recovers the backed-up state after pgbench wrote on (so
    recovery must undo those writes); order alternating with `i`. Both
    timings include emptying the old data directory."""
    def pgbackrest_restore():
        c.stop()
        sh(f"find {c.data} -mindepth 1 -delete")
        c.pgbackrest("restore", "--type=immediate", "--target-action=promote")
        c.start()
        c.answers()

    def pgbackrest():
        out["pgbackrest_restore_s"] = timed(pgbackrest_restore)
        assert c.checksum() == expected, "pgBackRest restored different data"

    def strongbox():
        out["strongbox_restore_s"] = timed(lambda: sb.run_job("/pg/backups/recovery", {"latest": True}))
        assert c.checksum() == expected, "Strongbox recovered different data"

    for step in rotated([pgbackrest, strongbox], i):
        sh(f"{BIN}/pgbench -n -t 2000 {c.url} 2>&1")
        assert c.checksum() != expected
        drop_caches()
        step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--scale", type=int, default=140)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    c = Cluster(args.work, args.scale)
    rounds = []
    try:
        for i in range(args.runs):
            r = one_round(args.work, c, i)
            rounds.append(r)
            print(f"run {i + 1}: " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in r.items()), flush=True)
    finally:
        as_pg(f"{BIN}/pg_ctl -D {c.data} -m immediate -w stop || true")

    def med(k):
        return statistics.median(r[k] for r in rounds)

    print(f"\nmedians over {args.runs} runs, pgbench scale {args.scale}, database {c.size / 2**30:.2f} GiB")
    print(f"{'':14} {'backup s':>9} {'stored MB':>10} {'recovery s':>11}")
    print(f"{'pg_basebackup':14} {med('pg_basebackup_s'):9.2f} {med('pg_basebackup_bytes') / 1e6:10.1f} {'':>11}")
    print(f"{'pgbackrest':14} {med('pgbackrest_s'):9.2f} {med('pgbackrest_bytes') / 1e6:10.1f} {med('pgbackrest_restore_s'):11.2f}")
    print(f"{'strongbox':14} {med('strongbox_s'):9.2f} {med('strongbox_bytes') / 1e6:10.1f} {med('strongbox_restore_s'):11.2f}")
    checks = [
        ("backup time vs pgbackrest", med("strongbox_s") / med("pgbackrest_s"), 0.7),
        ("stored size vs pgbackrest", med("strongbox_bytes") / med("pgbackrest_bytes"), 1.0),
        ("recovery time vs pgbackrest restore", med("strongbox_restore_s") / med("pgbackrest_restore_s"), 0.8),
    ]
    print("\nratio (target)")
    for name, value, target in checks:
        print(f"  {name:38} {value:6.3f}  (<= {target})  {'met' if value <= target else 'NOT met'}")
    print(f"  backup time vs pg_basebackup alone     {med('strongbox_s') / med('pg_basebackup_s'):6.3f}")


if __name__ == "__main__":
    main()
