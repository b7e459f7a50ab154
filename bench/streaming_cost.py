#!/usr/bin/env python3
"""What streaming the WAL costs the application (issue 29): pgbench TPS and
latency on one cluster, WAL archived through Strongbox throughout, in four
modes, in an order rotating from round to round, the page cache dropped
before each:

- `archive`: archive_command only (`continuousArchiving` off);
- `async`: the WAL receiver streaming too (`continuousArchiving`);
- `sync`: the receiver a synchronous standby (`synchronousArchiving`, its
  name in `synchronous_standby_names`);
- `replica`: no receiver; a physical streaming replica on the same machine
  (pg_basebackup -R) as the synchronous standby instead: the peer for
  `sync`;
- `receivewal`: no receiver of Strongbox's; a bare `pg_receivewal` from a
  slot into a directory: what any streaming receiver costs the server (its
  walsender, the receiver's writes), the bound for `async`.

Prints each round, medians, and the ratios the targets are stated in
(async TPS >= 0.95x archive; sync beside replica, reported).

Each run also prints the CPU the Strongbox server used during it (its
receiver and stores; `archive_command` runs under PostgreSQL), as a share
of one core.

Usage: streaming_cost.py WORKDIR [--scale 20] [--runs 3] [--seconds 30]
[--modes archive,async,...] (all five unless given)
(`bench/streaming_cost.sh` installs pgBackRest, which pg_bench's cluster
helper sets up, and builds Strongbox first.)
"""
import argparse
import os
import re
import statistics
import time

from benchutil import drop_caches
from pg_bench import BIN, as_pg, pg_home, sh
from pitr_bench import Bench

MODES = ["archive", "async", "sync", "replica", "receivewal"]


class Replica:
    def __init__(self, work, primary):
        self.home, self.data, self.port = pg_home(work, "replica")
        as_pg(f"{BIN}/pg_basebackup -d {primary.url} -D {self.data} -X stream -c fast")
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            f.write(f"port = {self.port}\nunix_socket_directories = '{self.home}'\narchive_mode = off\n"
                    f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres application_name=replica'\n")
        open(os.path.join(self.data, "standby.signal"), "w").close()
        sh(f"chown -R postgres:postgres {self.data}")
        self.running = False

    def start(self):
        as_pg(f"{BIN}/pg_ctl -D {self.data} -l {self.home}/log -w start")
        self.running = True

    def stop(self):
        if self.running:
            as_pg(f"{BIN}/pg_ctl -D {self.data} -m fast -w stop")
            self.running = False


class BareReceiver:
    """pg_receivewal alone, streaming from a slot of its own into a directory."""

    def __init__(self, work, primary):
        self.dir = os.path.join(work, "receivewal")
        sh(f"rm -rf {self.dir} && mkdir -p {self.dir} && chown postgres:postgres {self.dir}")
        self.url = primary.url
        self.proc = None

    def start(self):
        import subprocess
        as_pg(f"{BIN}/pg_receivewal -d {self.url} -S bench_bare --create-slot --if-not-exists")
        self.proc = subprocess.Popen(["runuser", "-u", "postgres", "--", f"{BIN}/pg_receivewal", "-d",
                                      f"{self.url}?application_name=bare", "-S", "bench_bare", "-D", self.dir])

    def stop(self, b):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None
            b.q("SELECT pg_drop_replication_slot('bench_bare')")


def wait_standby(b, name):
    deadline = time.monotonic() + 60
    while b.q(f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' "
              "AND state = 'streaming'") != "1":
        assert time.monotonic() < deadline, f"standby {name} did not connect"
        time.sleep(0.2)


def set_mode(b, replica, bare, mode):
    streaming = mode in ("async", "sync")
    b.sb.request("PUT", "/pg/backups/config", {"continuousArchiving": streaming,
                                               "synchronousArchiving": mode == "sync"})
    standby = ""
    if mode == "replica":
        replica.start()
        wait_standby(b, "replica")
        standby = '"replica"'
    else:
        replica.stop()
    if mode == "receivewal":
        bare.start()
        wait_standby(b, "bare")
    else:
        bare.stop(b)
    if streaming:
        deadline = time.monotonic() + 60
        while True:
            name = b.q("SELECT coalesce(max(application_name), '') FROM pg_stat_replication "
                       "WHERE application_name LIKE 'strongbox_%' AND state = 'streaming'")
            # A mode change restarts the receiver: wait for the new one.
            if name and (mode != "sync" or b.q(
                    f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' "
                    "AND flush_lsn IS NOT NULL") == "1"):
                break
            assert time.monotonic() < deadline, "no receiver"
            time.sleep(0.2)
        if mode == "sync":
            standby = f'"{name}"'
    else:
        deadline = time.monotonic() + 60
        while b.q("SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'strongbox_%'") != "0":
            assert time.monotonic() < deadline, "the receiver did not stop"
            time.sleep(0.2)
    b.q(f"ALTER SYSTEM SET synchronous_standby_names = '{standby}'")
    b.q("SELECT pg_reload_conf()")
    if standby:
        deadline = time.monotonic() + 60
        while b.q("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") != "1":
            assert time.monotonic() < deadline, "no synchronous standby"
            time.sleep(0.2)


def pgbench(b, seconds, clients):
    out = sh(f"{BIN}/pgbench -n -c {clients} -j {min(clients, 2)} -T {seconds} {b.c.url} 2>&1")
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([0-9.]+) ms", out).group(1))
    return tps, latency


def machine_idle():
    """The machine's idle and total CPU time so far, in clock ticks."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks[:8])


def cpu_seconds(pid):
    """User and system CPU a process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--modes", default=",".join(MODES))
    # 4 saturates this 2-core machine's CPU (so whatever streaming costs
    # in CPU comes out of TPS); 1 leaves it idle part of the time.
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    modes = args.modes.split(",")
    assert set(modes) <= set(MODES), f"modes are {MODES}"
    b = Bench(args.work, args.scale)
    replica = Replica(args.work, b.c)
    bare = BareReceiver(args.work, b.c)
    try:
        b.set_archiver(b.strongbox_push)
        b.sb.run_job("/pg/backups", {})
        results = {m: [] for m in modes}
        for run in range(args.runs):
            k = run % len(modes)
            for mode in modes[k:] + modes[:k]:
                set_mode(b, replica, bare, mode)
                b.q("CHECKPOINT")
                drop_caches()
                cpu, began = cpu_seconds(b.sb.server.pid), time.monotonic()
                idle = machine_idle()
                tps, latency = pgbench(b, args.seconds, args.clients)
                cpu = (cpu_seconds(b.sb.server.pid) - cpu) / (time.monotonic() - began)
                idle = [now - then for now, then in zip(machine_idle(), idle)]
                results[mode].append((tps, latency))
                print(f"run {run + 1} {mode}: {tps:.0f} TPS, latency {latency:.2f} ms; Strongbox server "
                      f"{cpu:.1%} of a core; machine idle {idle[0] / idle[1]:.0%}", flush=True)
        med = {m: (statistics.median(t for t, _ in r), statistics.median(lat for _, lat in r))
               for m, r in results.items()}
        print(f"\nmedians over {args.runs} runs of {args.seconds} s (pgbench scale {args.scale}, {args.clients} clients):")
        for m in modes:
            print(f"  {m:8} {med[m][0]:8.0f} TPS  latency {med[m][1]:.2f} ms")
        if {"async", "archive"} <= set(modes):
            print(f"async / archive TPS: {med['async'][0] / med['archive'][0]:.3f}x (target >= 0.95x)")
        if {"async", "archive", "receivewal"} <= set(modes):
            print(f"bare pg_receivewal / archive TPS: {med['receivewal'][0] / med['archive'][0]:.3f}x "
                  f"(what streaming costs before Strongbox stores anything); "
                  f"async / bare: {med['async'][0] / med['receivewal'][0]:.3f}x")
        if {"sync", "replica"} <= set(modes):
            print(f"sync / replica TPS: {med['sync'][0] / med['replica'][0]:.3f}x; "
                  f"latency {med['sync'][1]:.2f} ms against {med['replica'][1]:.2f} ms")
    finally:
        b.q("ALTER SYSTEM SET synchronous_standby_names = ''")
        b.q("SELECT pg_reload_conf()")
        replica.stop()
        bare.stop(b)
        b.sb.close()
        b.c.stop()


if __name__ == "__main__":
    main()
