#!/usr/bin/env python3
"""Strongbox and restic on a real distributed S3 store: a three-node Garage
cluster on loopback (replication factor 3), same bucket, same data.

1. Starts three Garage nodes (each its own directories and ports), connects
   them, assigns one zone each, creates a bucket and a key.
2. Probes create-only writes the way a repository opened for writing does,
   and prints what `strongbox repo stats` says of them.
3. RUNS rounds, alternating which tool goes first, each with the same
   cache state (sync + drop caches before every timed step): back up a
   SQLite database (`bench/sqlite_data.py`, SIZE_MIB) into the bucket, then
   restore it; prints each round, medians and ratios (targets: backup and
   restore each <= 0.5x restic).
4. WAL: a different file pushed under an archived name is refused and the
   archive keeps the first (Garage ignores create-only puts).
5. A node killed during a backup: one Garage node gets SIGKILL a second
   into a Strongbox backup; the backup must complete and
   `check --read-data` must be clean (the other two hold a quorum).

Usage: garage_bench.py WORKDIR [--runs 3] [--size-mib 1024]
(`bench/garage_bench.sh` builds Garage with `cargo install garage` and
Strongbox first.)
"""
import argparse
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time

from benchutil import drop_caches

HERE = os.path.dirname(os.path.abspath(__file__))
STRONGBOX = os.path.join(HERE, "..", "target", "release", "strongbox")
GARAGE = os.environ.get("GARAGE", "garage")
BUCKET = "bench"
NODES = 3


def run(cmd, env=None, capture=False):
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode(errors='replace')}")
    return (time.monotonic() - t0, p.stdout.decode() if capture else None)



class Cluster:
    def __init__(self, work):
        self.work = os.path.join(work, "garage")
        shutil.rmtree(self.work, ignore_errors=True)
        secret = secrets.token_hex(32)
        self.confs, self.procs = [], []
        for n in range(NODES):
            d = os.path.join(self.work, f"node{n}")
            os.makedirs(d)
            conf = os.path.join(d, "garage.toml")
            with open(conf, "w") as f:
                f.write(f"""metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = {NODES}
rpc_bind_addr = "127.0.0.1:{3901 + 10 * n}"
rpc_public_addr = "127.0.0.1:{3901 + 10 * n}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{3900 + 10 * n}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{3903 + 10 * n}"
""")
            self.confs.append(conf)
            self.procs.append(None)
            self.start(n)
        time.sleep(2)
        ids = [self.garage(n, "node", "id", "-q").strip() for n in range(NODES)]
        for other in ids[1:]:
            self.garage(0, "node", "connect", other)
        for n, node_id in enumerate(ids):
            self.garage(0, "layout", "assign", "-z", f"dc{n}", "-c", "10G", node_id.split("@")[0])
        self.garage(0, "layout", "apply", "--version", "1")
        self.garage(0, "bucket", "create", BUCKET)
        self.garage(0, "key", "create", "bench-key")
        self.garage(0, "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "bench-key")
        info = self.garage(0, "key", "info", "--show-secret", "bench-key")
        self.key_id = re.search(r"GK[0-9a-f]+", info).group(0)
        self.secret = re.search(r"(?i)secret[^:]*:\s*([0-9a-f]{64})", info).group(1)
        time.sleep(2)

    def start(self, n):
        log = open(os.path.join(self.work, f"node{n}", "log"), "a")
        self.procs[n] = subprocess.Popen([GARAGE, "-c", self.confs[n], "server"], stdout=log, stderr=log)

    def kill(self, n):
        self.procs[n].send_signal(signal.SIGKILL)
        self.procs[n].wait()

    def garage(self, n, *args):
        return run([GARAGE, "-c", self.confs[n], *args], capture=True)[1]

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
                p.wait()

    def env(self):
        return dict(os.environ, AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.secret,
                    AWS_REGION="garage", AWS_DEFAULT_REGION="garage", AWS_ENDPOINT_URL="http://127.0.0.1:3900",
                    STRONGBOX_PASSWORD="bench-pw", RESTIC_PASSWORD="bench-pw")


def strongbox(env, location, *args):
    return [STRONGBOX, "repo", "-r", location, *args]


def one_round(cluster, work, db, i, order):
    env = cluster.env()
    out = {}
    for tool in order:
        target = os.path.join(work, f"restore-{tool}")
        shutil.rmtree(target, ignore_errors=True)
        if tool == "strongbox":
            repo = f"s3://{BUCKET}/strongbox-{i}"
            run(strongbox(env, repo, "init"), env=env)
            drop_caches()
            backup = run(strongbox(env, repo, "backup", db), env=env)[0]
            drop_caches()
            restore = run(strongbox(env, repo, "restore", "latest", "--target", target), env=env)[0]
        else:
            repo = f"s3:http://127.0.0.1:3900/{BUCKET}/restic-{i}"
            run(["restic", "-r", repo, "init", "-q"], env=env)
            drop_caches()
            backup = run(["restic", "-r", repo, "backup", "-q", db], env=env)[0]
            drop_caches()
            restore = run(["restic", "-r", repo, "restore", "latest", "--target", target], env=env)[0]
        # Both record the file under its path without the leading '/'.
        restored = os.path.join(target, db.lstrip("/"))
        if subprocess.call(["cmp", "-s", db, restored]) != 0:
            sys.exit(f"{tool} restored different bytes")
        shutil.rmtree(target)
        out[tool] = (backup, restore)
    return out


def wal_never_overwritten(cluster, work):
    """The failure Garage showed: a different file pushed under an archived
    name must be refused, and the archive keep the first."""
    env = cluster.env()
    repo = f"s3://{BUCKET}/strongbox-wal"
    run(strongbox(env, repo, "init"), env=env)
    name = "000000010000000000000001"
    files = []
    for i, content in enumerate((os.urandom(1 << 16), os.urandom(1 << 16))):
        d = os.path.join(work, f"wal{i}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(content)
        files.append((path, content))
    run(strongbox(env, repo, "wal-push", files[0][0]), env=env)
    second = subprocess.run(strongbox(env, repo, "wal-push", files[1][0]), env=env, capture_output=True)
    fetched = os.path.join(work, "fetched")
    run(strongbox(env, repo, "wal-fetch", name, fetched), env=env)
    kept = open(fetched, "rb").read() == files[0][1]
    print(f"a different {name} pushed again: {'refused' if second.returncode != 0 else 'ACCEPTED'}; "
          f"the archive holds {'the first' if kept else 'ANOTHER'}: {second.stderr.decode().strip()}")
    return second.returncode != 0 and kept


def node_killed_during_backup(cluster, work, db):
    env = cluster.env()
    repo = f"s3://{BUCKET}/strongbox-failover"
    run(strongbox(env, repo, "init"), env=env)
    backup = subprocess.Popen(strongbox(env, repo, "backup", db), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    time.sleep(1)
    cluster.kill(NODES - 1)
    _, err = backup.communicate()
    ok = backup.returncode == 0
    print(f"node {NODES - 1} killed a second into a backup: backup {'completed' if ok else 'FAILED: ' + err.decode()}")
    _, check = run(strongbox(env, repo, "check", "--read-data"), env=env, capture=True)
    print(f"check --read-data with the node down: clean\n{check.strip()}")
    cluster.start(NODES - 1)
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    db = os.path.join(a.work, f"orders-{a.size_mib}.db")
    if not os.path.exists(db):
        subprocess.check_call([sys.executable, os.path.join(HERE, "sqlite_data.py"), "create", db, str(a.size_mib)])
    cluster = Cluster(a.work)
    try:
        env = cluster.env()
        run(strongbox(env, f"s3://{BUCKET}/probe", "init"), env=env)
        _, stats = run(strongbox(env, f"s3://{BUCKET}/probe", "stats"), env=env, capture=True)
        print("create-only writes on this Garage:", re.search(r'"create_only_writes": "([^"]*)"', stats).group(1))
        rounds = []
        for i in range(a.runs):
            order = ["strongbox", "restic"] if i % 2 == 0 else ["restic", "strongbox"]
            r = one_round(cluster, a.work, db, i, order)
            rounds.append(r)
            print(f"round {i + 1} ({order[0]} first): " + ", ".join(
                f"{t} backup {b:.2f} s restore {s:.2f} s" for t, (b, s) in r.items()), flush=True)
        med = {t: [statistics.median(r[t][k] for r in rounds) for k in (0, 1)] for t in ("strongbox", "restic")}
        print(f"\nmedians over {a.runs} rounds, {os.path.getsize(db) >> 20} MiB, three-node Garage:")
        for t, (b, s) in med.items():
            print(f"  {t:10} backup {b:.2f} s  restore {s:.2f} s")
        print(f"  ratio      backup {med['strongbox'][0] / med['restic'][0]:.2f}x  "
              f"restore {med['strongbox'][1] / med['restic'][1]:.2f}x  (targets <= 0.5x)")
        wal_never_overwritten(cluster, a.work)
        node_killed_during_backup(cluster, a.work, db)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
