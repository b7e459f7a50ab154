#!/usr/bin/env python3
"""Copying backups to a second repository: Strongbox against restic, same
data, same run (issue 28).

Each of RUNS rounds, for each tool (encryption on, defaults otherwise; the
order alternates between rounds; caches dropped before every timed step):
  setup (not timed): a source repository holding a backup of a SQLite
    database (first) and of the same database after ~1 % of its pages
    changed (second);
  1. copies the first backup into a new, empty second repository
     (`strongbox repo copy` / `restic copy --from-repo`), timed;
  2. copies the second backup into it, timed; what that added to the
     second repository is compared with what the second backup added to
     the source.
Prints each run's figures, medians and the ratios the targets are stated in.

Usage: copy_bench.py WORKDIR [--runs 3] [--size-mib 1024]
(`bench/copy_bench.sh` installs restic and builds Strongbox first.)
"""
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import drop_caches  # noqa: E402
from repo_bench import ENV, STRONGBOX, bench_args, databases, du, figures, run  # noqa: E402


def strongbox(work, live, a_db, b_db):
    src, dst = os.path.join(work, "sb-src"), os.path.join(work, "sb-copy")
    for d in (src, dst):
        shutil.rmtree(d, ignore_errors=True)
    run([STRONGBOX, "repo", "-r", src, "init"])
    added = []
    for db in (a_db, b_db):
        shutil.copyfile(db, live)
        before = du(src)
        run([STRONGBOX, "repo", "-r", src, "backup", live])
        added.append(du(src) - before)
    snaps = json.loads(subprocess.check_output([STRONGBOX, "repo", "-r", src, "--json", "snapshots"], env=ENV))
    first, second = (s["id"] for s in snaps)
    env_to = ["--to", dst]
    drop_caches()
    t1, rss1 = run([STRONGBOX, "repo", "-r", src, "copy", *env_to, first])
    after_first = du(dst)
    drop_caches()
    t2, rss2 = run([STRONGBOX, "repo", "-r", src, "copy", *env_to, second])
    return dict(first_s=t1, second_s=t2, first_bytes=after_first, second_new=du(dst) - after_first,
                source_second_new=added[1], peak_rss=max(rss1, rss2))


def restic(work, live, a_db, b_db):
    src, dst = os.path.join(work, "restic-src"), os.path.join(work, "restic-copy")
    for d in (src, dst):
        shutil.rmtree(d, ignore_errors=True)
    run(["restic", "init", "-q", "-r", src])
    run(["restic", "init", "-q", "-r", dst])
    added = []
    for db in (a_db, b_db):
        shutil.copyfile(db, live)
        before = du(src)
        run(["restic", "-r", src, "backup", "-q", live])
        added.append(du(src) - before)
    snaps = json.loads(subprocess.check_output(["restic", "-r", src, "snapshots", "--json"], env=ENV))
    first, second = (s["id"] for s in sorted(snaps, key=lambda s: s["time"]))
    copy = ["restic", "-r", dst, "copy", "-q", "--from-repo", src]
    before = du(dst)
    drop_caches()
    t1, rss1 = run(copy + [first])
    after_first = du(dst)
    drop_caches()
    t2, rss2 = run(copy + [second])
    return dict(first_s=t1, second_s=t2, first_bytes=after_first - before, second_new=du(dst) - after_first,
                source_second_new=added[1], peak_rss=max(rss1, rss2))


def main():
    args = bench_args()
    a_db, b_db = databases(args.work, args.size_mib)
    live = os.path.join(args.work, "live", "db.sqlite")
    os.makedirs(os.path.dirname(live), exist_ok=True)
    ENV["STRONGBOX_TO_PASSWORD"] = "bench-copy-pw"
    ENV["RESTIC_FROM_PASSWORD"] = ENV["RESTIC_PASSWORD"]
    tools = [("strongbox", strongbox), ("restic", restic)]
    rounds = []
    for i in range(args.runs):
        order = tools if i % 2 == 0 else tools[::-1]
        r = {name: f(args.work, live, a_db, b_db) for name, f in order}
        rounds.append(r)
        print(f"run {i + 1} ({' then '.join(n for n, _ in order)}): {figures(r)}", flush=True)

    def med(tool, metric):
        return statistics.median(r[tool][metric] for r in rounds)

    size = os.path.getsize(a_db)
    print(f"\nmedians over {args.runs} runs, {size / 2**20:.0f} MiB SQLite database")
    print(f"{'':10} {'1st copy s':>10} {'MB/s':>7} {'copied MB':>10} {'2nd copy s':>10} {'2nd new MB':>11} "
          f"{'source 2nd new MB':>18} {'peak RSS MiB':>13}")
    for t, _ in tools:
        print(f"{t:10} {med(t, 'first_s'):10.2f} {size / 1e6 / med(t, 'first_s'):7.0f} "
              f"{med(t, 'first_bytes') / 1e6:10.1f} {med(t, 'second_s'):10.2f} {med(t, 'second_new') / 1e6:11.2f} "
              f"{med(t, 'source_second_new') / 1e6:18.2f} {med(t, 'peak_rss'):13.1f}")
    s = "strongbox"
    checks = [
        ("first copy time vs restic copy", med(s, "first_s") / med("restic", "first_s"), 0.5),
        ("second copy: bytes added / the backup's own", med(s, "second_new") / med(s, "source_second_new"), 1.2),
    ]
    print("\nratio (target)")
    for name, value, target in checks:
        print(f"  {name:46} {value:6.3f}  (<= {target})  {'met' if value <= target else 'NOT met'}")


if __name__ == "__main__":
    main()
