#!/usr/bin/env python3
"""WAL to a copy under pgbench (issue 28: lag <= 5 s at p99).

A cluster (pgbench data of --scale) archives its WAL through a Strongbox
server (`strongbox repo … wal-push`, the archive_command `GET …/pg`
reports) whose configuration has one copy, `offsite`, in another local
directory, at the default `copy_seconds`. pgbench writes for --load seconds
(4 clients), then the last segment is switched out and archived. For each
WAL file the lag is the time it landed in the copy minus the time it
landed in the primary (both files' modification times: one clock).
Prints the WAL rate, and the lag's median, p99 and maximum over every
segment of every run.

Usage: copy_wal_lag.py WORKDIR [--scale 20] [--runs 3] [--load 60]
(`bench/copy_wal_lag.sh` builds Strongbox first.)
"""
import argparse
import json
import os
import statistics
import time

from pitr_bench import Bench


def wal_files(repository):
    """Archived WAL file name -> modification time (streamed tails apart)."""
    root = os.path.join(repository, "wal")
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if "#" not in f and not f.endswith(".streamed"):
                out[os.path.join(os.path.relpath(d, root), f)] = os.stat(os.path.join(d, f)).st_mtime
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load", type=int, default=60)
    args = ap.parse_args()
    offsite = os.path.join(args.work, "offsite")
    os.environ["STRONGBOX_COPIES"] = json.dumps([{"name": "offsite", "repository": offsite}])
    b = Bench(args.work, args.scale)
    try:
        b.set_archiver(b.strongbox_push)
        primary = os.path.join(b.sb.dir, "repository")
        lags, segments, seconds = [], 0, 0.0
        for run in range(args.runs):
            before = set(wal_files(primary))
            t0 = time.monotonic()
            b.pgbench(args.load)
            b.drain()
            seconds += time.monotonic() - t0
            new = {k: v for k, v in wal_files(primary).items() if k not in before}
            deadline = time.monotonic() + 120
            while True:
                copied = wal_files(offsite)
                if all(k in copied for k in new):
                    break
                assert time.monotonic() < deadline, "the copy did not catch up in 2 minutes"
                time.sleep(0.2)
            run_lags = sorted(copied[k] - t for k, t in new.items())
            lags += run_lags
            segments += len(new)
            print(f"run {run + 1}: {len(new)} WAL files in {args.load} s of pgbench; lag to the copy "
                  f"median {statistics.median(run_lags):.2f} s, max {run_lags[-1]:.2f} s", flush=True)
        lags.sort()
        p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))]
        print(f"\n{segments} WAL files over {args.runs} runs ({segments * 16 / seconds:.1f} MiB/s of WAL); "
              f"lag to the copy: median {statistics.median(lags):.2f} s, p99 {p99:.2f} s, "
              f"max {lags[-1]:.2f} s (target: p99 <= 5 s)")
    finally:
        b.sb.close()
        b.c.stop()


if __name__ == "__main__":
    main()
