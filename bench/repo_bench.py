#!/usr/bin/env python3
"""Strongbox's repository against restic and borg, same data, same run.

For each of RUNS rounds, every tool (encryption on, defaults otherwise; the
order rotating from round to round, the page cache dropped before every
timed step, so each starts cold alike):
  1. backs up a SQLite database (first backup),
  2. backs up the same database after ~1 % of its pages changed (second),
  3. restores the second backup, just after timing `cp` of the same bytes
     to the same place (the page-cache write floor at that moment).
`zstd -1 -T0` on the same file gives the throughput ceiling. Prints each
run's figures, then medians and the ratios the targets are stated in.

Usage: repo_bench.py WORKDIR [--runs 3] [--size-mib 1024]
(`bench/repo_bench.sh` installs the peers and builds Strongbox first.)
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchutil import drop_caches

HERE = os.path.dirname(os.path.abspath(__file__))
STRONGBOX = os.path.join(HERE, "..", "target", "release", "strongbox")
ENV = dict(os.environ, STRONGBOX_PASSWORD="bench-pw", RESTIC_PASSWORD="bench-pw", BORG_PASSPHRASE="bench-pw",
           BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")


def run(cmd, cwd=None, stdout=subprocess.DEVNULL):
    """Runs cmd; returns (wall seconds, peak RSS in MiB) of the child."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024


def du(path):
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


def files_equal(a, b):
    return subprocess.call(["cmp", "-s", a, b]) == 0


class Tool:
    def __init__(self, name, work):
        self.name, self.repo = name, os.path.join(work, f"repo-{name}")


class Strongbox(Tool):
    def init(self):
        run([STRONGBOX, "repo", "-r", self.repo, "init"])

    def backup(self, path):
        return run([STRONGBOX, "repo", "-r", self.repo, "backup", path])

    def restore(self, target, path):
        return run([STRONGBOX, "repo", "-r", self.repo, "restore", "latest", "--target", target])


class Restic(Tool):
    def init(self):
        run(["restic", "init", "-q", "-r", self.repo])

    def backup(self, path):
        return run(["restic", "-r", self.repo, "backup", "-q", path])

    def restore(self, target, path):
        return run(["restic", "-r", self.repo, "restore", "latest", "--target", target])


class Borg(Tool):
    n = 0

    def init(self):
        run(["borg", "init", "-e", "repokey", self.repo])

    def backup(self, path):
        Borg.n += 1
        return run(["borg", "create", f"{self.repo}::b{Borg.n}", path])

    def restore(self, target, path):
        os.makedirs(target, exist_ok=True)
        return run(["borg", "extract", f"{self.repo}::b{Borg.n}"], cwd=target)


def databases(work, size_mib):
    """The benchmark's SQLite database of SIZE_MIB and a copy with ~1 % of
    its pages changed, in WORK (made once: `sqlite_data.py` is seeded)."""
    os.makedirs(work, exist_ok=True)
    a_db = os.path.join(work, f"orders-{size_mib}.db")
    b_db = os.path.join(work, f"orders-{size_mib}-changed.db")
    gen = os.path.join(HERE, "sqlite_data.py")
    if not os.path.exists(a_db):
        subprocess.check_call([sys.executable, gen, "create", a_db, str(size_mib)])
    if not os.path.exists(b_db):
        shutil.copyfile(a_db, b_db)
        subprocess.check_call([sys.executable, gen, "change", b_db])
    return a_db, b_db


TOOLS = ((Strongbox, "strongbox"), (Restic, "restic"), (Borg, "borg"))


def one_round(work, a_db, b_db, i):
    """Round `i`: the tools in an order rotated by `i`, the page cache
    dropped before every timed step (each tool starts cold alike)."""
    live = os.path.join(work, "live", "db.sqlite")  # the path every tool backs up
    os.makedirs(os.path.dirname(live), exist_ok=True)
    out = {}
    shutil.copyfile(a_db, live)
    drop_caches()
    out["zstd"] = {"first_s": run(["zstd", "-1", "-T0", "-q", "-f", "-c", live])[0]}
    for cls, name in TOOLS[i % len(TOOLS):] + TOOLS[:i % len(TOOLS)]:
        tool = cls(name, work)
        shutil.rmtree(tool.repo, ignore_errors=True)
        tool.init()
        shutil.copyfile(a_db, live)
        drop_caches()
        first_s, first_rss = tool.backup(live)
        first_bytes = du(tool.repo)
        shutil.copyfile(b_db, live)
        drop_caches()
        second_s, second_rss = tool.backup(live)
        second_new = du(tool.repo) - first_bytes
        target = os.path.join(work, "restore")
        shutil.rmtree(target, ignore_errors=True)
        # The write floor at this moment: `cp` of the same bytes to where the
        # restore will write them, deleted at once (which drops its dirty
        # pages, leaving the restore the state the backups left). While the
        # backups' writes are still being written back, page-cache writes
        # are throttled to disk speed for every writer alike.
        os.makedirs(target)
        drop_caches()
        write_floor_s = run(["cp", b_db, os.path.join(target, "db.sqlite")])[0]
        shutil.rmtree(target)
        drop_caches()
        restore_s, restore_rss = tool.restore(target, live)
        restored = os.path.join(target, live.lstrip("/"))
        if not files_equal(restored, b_db):
            restored = os.path.join(target, "db.sqlite")
        assert files_equal(restored, b_db), f"{name} restored different bytes"
        shutil.rmtree(target)
        out[name] = dict(first_s=first_s, first_rss=first_rss, first_bytes=first_bytes, second_s=second_s,
                         second_new=second_new, restore_s=restore_s, write_floor_s=write_floor_s,
                         peak_rss=max(first_rss, second_rss, restore_rss))
        shutil.rmtree(tool.repo)
    return out


def bench_args():
    """WORKDIR, --runs (3), --size-mib (1024): what the SQLite benchmarks take."""
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    return ap.parse_args()


def figures(r):
    """One run's figures, tool by tool, on a line."""
    return "; ".join(
        f"{k} " + " ".join(f"{m}={v:.3g}" if isinstance(v, float) else f"{m}={v}" for m, v in d.items())
        for k, d in r.items())


def main():
    args = bench_args()
    a_db, b_db = databases(args.work, args.size_mib)
    size = os.path.getsize(a_db)
    rounds = []
    for i in range(args.runs):
        r = one_round(args.work, a_db, b_db, i)
        rounds.append(r)
        print(f"run {i + 1}: {figures(r)}", flush=True)

    def med(tool, metric):
        return statistics.median(r[tool][metric] for r in rounds)

    print(f"\nmedians over {args.runs} runs, {size / 2**20:.0f} MiB SQLite database")
    print(f"{'':10} {'1st s':>7} {'MB/s':>7} {'stored MB':>10} {'2nd s':>7} {'2nd new MB':>11} {'restore s':>10} "
          f"{'cp before s':>11} {'peak RSS MiB':>13}")
    for t in ("strongbox", "restic", "borg"):
        print(f"{t:10} {med(t, 'first_s'):7.2f} {size / 1e6 / med(t, 'first_s'):7.0f} {med(t, 'first_bytes') / 1e6:10.1f} "
              f"{med(t, 'second_s'):7.2f} {med(t, 'second_new') / 1e6:11.2f} {med(t, 'restore_s'):10.2f} "
              f"{med(t, 'write_floor_s'):11.2f} {med(t, 'peak_rss'):13.1f}")
    z = statistics.median(r["zstd"]["first_s"] for r in rounds)
    print(f"{'zstd -1 -T0':10} {z:7.2f} {size / 1e6 / z:7.0f}")
    s = "strongbox"
    checks = [
        ("first backup throughput vs zstd -1 -T0", z / med(s, "first_s"), ">=", 0.85),
        ("first backup time vs restic", med(s, "first_s") / med("restic", "first_s"), "<=", 0.8),
        ("first backup time vs borg", med(s, "first_s") / med("borg", "first_s"), "<=", 0.8),
        ("stored size vs restic", med(s, "first_bytes") / med("restic", "first_bytes"), "<=", 1.05),
        ("second backup new bytes / first stored", med(s, "second_new") / med(s, "first_bytes"), "<=", 0.03),
        ("second backup time vs restic", med(s, "second_s") / med("restic", "second_s"), "<=", 0.5),
        ("restore time vs restic", med(s, "restore_s") / med("restic", "restore_s"), "<=", 0.8),
        ("peak RSS vs restic", med(s, "peak_rss") / med("restic", "peak_rss"), "<=", 0.8),
    ]
    print("\nratio (target)")
    for name, value, op, target in checks:
        ok = value >= target if op == ">=" else value <= target
        print(f"  {name:42} {value:6.3f}  ({op} {target})  {'met' if ok else 'NOT met'}")
    for t in ("strongbox", "restic", "borg"):
        print(f"  {t} restore / cp of the same bytes just before it: "
              f"{statistics.median(r[t]['restore_s'] / r[t]['write_floor_s'] for r in rounds):.2f}")
    print(f"  restic second backup new bytes / its first: {med('restic', 'second_new') / med('restic', 'first_bytes'):.3f}")


if __name__ == "__main__":
    main()
