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
6. Failover drill: three `strongbox serve` replicas on one PostgreSQL
   catalog (a database of its own on 127.0.0.1:5432) and one repository in
   the bucket. A backup is requested through one replica; the replica whose
   worker leased it gets SIGKILL; another must take it over once the lease
   expires, and while it runs a Garage node gets SIGKILL too. Then: the job
   Succeeded, exactly one backup listed, no job queued or running,
   `check --read-data` clean.

Usage: garage_bench.py WORKDIR [--runs 3] [--size-mib 1024]
(`bench/garage_bench.sh` builds Garage with `cargo install garage` and
Strongbox first.)
"""
import argparse
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time

from benchutil import Server, drop_caches, psql, tls_certs

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

    def cpu(self):
        """CPU seconds the live nodes have used."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs:
            if p and p.poll() is None:
                with open(f"/proc/{p.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

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


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Timed:
    """Wall time of a step, the CPU time the tool spent in it, and the CPU
    time the Garage nodes spent serving it: where the time goes."""

    def __init__(self, cluster):
        self.cluster = cluster

    def __enter__(self):
        self.t0, self.tool0, self.garage0 = time.monotonic(), children_cpu(), self.cluster.cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.tool = children_cpu() - self.tool0
        self.garage = self.cluster.cpu() - self.garage0

    def __str__(self):
        return f"{self.wall:.2f} s (CPU: tool {self.tool:.1f} s, Garage {self.garage:.1f} s)"


def one_round(cluster, work, db, i, order):
    env = cluster.env()
    out = {}
    for tool in order:
        target = os.path.join(work, f"restore-{tool}")
        shutil.rmtree(target, ignore_errors=True)
        if tool == "strongbox":
            repo = f"s3://{BUCKET}/strongbox-{i}"
            run(strongbox(env, repo, "init"), env=env)
            backup_cmd = strongbox(env, repo, "backup", db)
            restore_cmd = strongbox(env, repo, "restore", "latest", "--target", target)
        else:
            repo = f"s3:http://127.0.0.1:3900/{BUCKET}/restic-{i}"
            run(["restic", "-r", repo, "init", "-q"], env=env)
            backup_cmd = ["restic", "-r", repo, "backup", "-q", db]
            restore_cmd = ["restic", "-r", repo, "restore", "latest", "--target", target]
        drop_caches()
        with Timed(cluster) as backup:
            run(backup_cmd, env=env)
        drop_caches()
        with Timed(cluster) as restore:
            run(restore_cmd, env=env)
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


def replicas_failover(cluster, work, db_file):
    """Three replicas on one PostgreSQL catalog and the Garage bucket: the
    replica running a backup and then a Garage node are killed."""
    env = cluster.env()
    drill = os.path.join(work, "drill")
    shutil.rmtree(drill, ignore_errors=True)
    os.makedirs(drill)
    tls_certs(drill)
    catalog = f"strongbox_garage_drill_{secrets.token_hex(4)}"
    psql("postgres", f"CREATE DATABASE {catalog}")
    repo = f"s3://{BUCKET}/strongbox-replicas"
    lease = 5
    server_env = dict(STRONGBOX_CATALOG=f"postgres://postgres@127.0.0.1:5432/{catalog}",
                      STRONGBOX_REPOSITORY=repo, STRONGBOX_REPO_PASSWORD=env["STRONGBOX_PASSWORD"],
                      STRONGBOX_DEMO_PASSWORD="drill-pw", STRONGBOX_LEASE_SECONDS=str(lease),
                      **{k: v for k, v in env.items() if k.startswith("AWS_")})
    servers = [Server(STRONGBOX, drill, os.path.join(drill, f"replica-{i}"), server_env) for i in range(3)]

    def api(server, *args):
        out = subprocess.run(["curl", "-s", "--cacert", server.ca, "-u", "serviceadmin:drill-pw",
                              "-H", "X-ID-TENANT-NAME: usexample", "-H", "Content-Type: application/json",
                              "-D", "-", *args], check=True, capture_output=True, text=True).stdout
        head, _, body = out.partition("\n\n")  # text mode: \r\n read as \n
        return head, (json.loads(body) if body.strip() else None)

    ok = False
    try:
        s0 = servers[0]
        api(s0, "-X", "PUT", "-d", json.dumps({"engine": "sqlite", "connection": {"path": db_file}}),
            f"{s0.url}/strongbox/api/v1/instances/usexample/big")
        backups = f"/paas/service/dbcs/api/v1.1/instances/usexample/big/backups"
        head, _ = api(s0, "-X", "POST", "-d", "{}", s0.url + backups)
        location = re.search(r"(?im)^location: (\S+)", head).group(1)
        job = location.rsplit("/", 1)[1]
        deadline = time.monotonic() + 60
        while not (owner := psql(catalog, f"SELECT coalesce(lease_owner, '') FROM jobs WHERE id = {job}")):
            if time.monotonic() > deadline:
                sys.exit(f"job {job} was never leased")
            time.sleep(0.05)
        time.sleep(1)  # a second into the backup
        pid = int(owner.split("-")[0])
        victim = next(s for s in servers if s.proc.pid == pid)
        victim.stop(signal.SIGKILL)
        servers.remove(victim)
        killed_at = time.monotonic()
        print(f"replica on port {victim.port} (pid {pid}) killed a second into backup job {job}", flush=True)
        while (now := psql(catalog, f"SELECT coalesce(lease_owner, '') FROM jobs WHERE id = {job}")) in ("", owner):
            if time.monotonic() - killed_at > 120:
                sys.exit(f"job {job} was not taken over within 120 s")
            time.sleep(0.1)
        print(f"taken over by {now} {time.monotonic() - killed_at:.1f} s later (lease {lease} s)", flush=True)
        time.sleep(1)
        cluster.kill(NODES - 1)
        print(f"Garage node {NODES - 1} killed a second into the resumed backup", flush=True)
        s = servers[0]
        status_url = location.replace(f"localhost:{victim.port}", f"localhost:{s.port}")
        deadline = time.monotonic() + 600
        while (state := api(s, status_url)[1])["job_status"] not in ("Succeeded", "Failed"):
            if time.monotonic() > deadline:
                sys.exit(f"job {job} did not end within 10 minutes: {state}")
            time.sleep(0.5)
        _, log = api(s, f"{s.url}/paas/api/v1.1/activitylog/usexample/job/{job}")
        listed = api(s, s.url + backups)[1]["backupList"]
        open_jobs = psql(catalog, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
        check = subprocess.run(strongbox(env, repo, "check", "--read-data"), env=env, capture_output=True, text=True)
        ok = (state["job_status"] == "Succeeded" and len(listed) == 1 and open_jobs == "0"
              and check.returncode == 0)
        print(f"job {job}: {state['job_status']} ({state['message']}); backups listed: {len(listed)}; "
              f"jobs queued or running: {open_jobs}; check --read-data: "
              f"{'clean' if check.returncode == 0 else 'FAILED: ' + check.stderr}")
        print("activity log: " + " | ".join(m["message"] for m in log["messages"]))
        print(f"failover drill: {'PASS' if ok else 'FAIL'}", flush=True)
    finally:
        for srv in servers:
            srv.stop()
        cluster.start(NODES - 1)
        psql("postgres", f"DROP DATABASE IF EXISTS {catalog}")
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
            print(f"round {i + 1} ({order[0]} first):", flush=True)
            for t, (b, s) in r.items():
                print(f"  {t:10} backup {b}  restore {s}", flush=True)
        if rounds:
            med = {t: [statistics.median(r[t][k].wall for r in rounds) for k in (0, 1)]
                   for t in ("strongbox", "restic")}
            print(f"\nmedians over {a.runs} rounds, {os.path.getsize(db) >> 20} MiB, three-node Garage:")
            for t, (b, s) in med.items():
                print(f"  {t:10} backup {b:.2f} s  restore {s:.2f} s")
            print(f"  ratio      backup {med['strongbox'][0] / med['restic'][0]:.2f}x  "
                  f"restore {med['strongbox'][1] / med['restic'][1]:.2f}x  (targets <= 0.5x)")
        passed = [wal_never_overwritten(cluster, a.work), node_killed_during_backup(cluster, a.work, db)]
        time.sleep(5)  # the restarted node rejoins
        passed.append(replicas_failover(cluster, a.work, db))
        if not all(passed):
            sys.exit("a drill failed")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
