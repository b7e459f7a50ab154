#!/usr/bin/env python3
"""Expiry: forgetting 1,000 snapshots and pruning, Strongbox against restic.

Setup (not timed): a directory of FILES incompressible files of FILE_MIB
each; SNAPSHOTS backups of it into a Strongbox and a restic repository
(encryption on, defaults otherwise), each after BLOCKS random 4 KiB blocks
of one file are rewritten, so every snapshot holds data of its own that
expiry must delete or repack. restic's snapshots are an hour apart
(`--time`), so `--keep-within` keeps the newest KEEP of them.

Each round (RUNS of them, alternating which tool goes first) copies both
prepared repositories, syncs and drops the page cache, then times
  Strongbox: `repo forget --keep-last KEEP` + `repo prune` (what an expire
             job does with the repository: forget the snapshots, prune);
  restic:    `forget --keep-within KEEPh` + `prune` (the newest KEEP).
Both are then checked (`check`, snapshot counts, the newest snapshot
restores to the data). Prints each round, the medians and the ratio.

Usage: expiry_bench.py WORKDIR [--runs 3] [--snapshots 1100] [--keep 100]
       [--files 8] [--file-mib 4] [--blocks 1] [--seed 1]
(`bench/expiry_bench.sh` installs restic and builds Strongbox first.)
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

from benchutil import drop_caches

HERE = os.path.dirname(os.path.abspath(__file__))
STRONGBOX = os.path.join(HERE, "..", "target", "release", "strongbox")
ENV = dict(os.environ, STRONGBOX_PASSWORD="bench-pw", RESTIC_PASSWORD="bench-pw")


def run(cmd, capture=False):
    p = subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode(errors='replace')}")
    return p.stdout.decode() if capture else None


def timed(cmds):
    t0 = time.monotonic()
    for c in cmds:
        run(c)
    return time.monotonic() - t0



def du(path):
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


def sb(repo, *args):
    return [STRONGBOX, "repo", "-r", repo, *args]


def prepare(work, a):
    data = os.path.join(work, "data")
    sb_repo, restic_repo = os.path.join(work, "prepared-strongbox"), os.path.join(work, "prepared-restic")
    stamp = os.path.join(work, "prepared.json")
    want = {k: getattr(a, k) for k in ("snapshots", "files", "file_mib", "blocks", "seed")}
    if os.path.exists(stamp) and json.load(open(stamp)) == want:
        print(f"reusing the prepared repositories in {work}")
        return data, sb_repo, restic_repo
    for p in (data, sb_repo, restic_repo):
        shutil.rmtree(p, ignore_errors=True)
    os.makedirs(data)
    rng = random.Random(a.seed)
    size = a.file_mib << 20
    for i in range(a.files):
        with open(os.path.join(data, f"f{i}"), "wb") as f:
            f.write(rng.randbytes(size))
    files = [os.path.join(data, f"f{i}") for i in range(a.files)]
    run(sb(sb_repo, "init"))
    run(["restic", "init", "-q", "-r", restic_repo])
    t0 = time.monotonic()
    for n in range(a.snapshots):
        with open(os.path.join(data, f"f{rng.randrange(a.files)}"), "r+b") as f:
            for _ in range(a.blocks):
                f.seek(rng.randrange(size // 4096) * 4096)
                f.write(rng.randbytes(4096))
        run(sb(sb_repo, "backup", *files))  # it backs up files, not directories
        stamp_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_700_000_000 + n * 3600))
        run(["restic", "-r", restic_repo, "backup", "-q", "--time", stamp_time, data])
        if n % 100 == 99:
            print(f"  {n + 1} snapshots each ({time.monotonic() - t0:.0f} s)", flush=True)
    json.dump(want, open(stamp, "w"))
    return data, sb_repo, restic_repo


def verify(tool, repo, data, keep, work):
    target = os.path.join(work, f"restored-{tool}")
    shutil.rmtree(target, ignore_errors=True)
    if tool == "strongbox":
        run(sb(repo, "check"))
        count = len(json.loads(run(sb(repo, "--json", "snapshots"), capture=True)))
        run(sb(repo, "restore", "latest", "--target", target))
    else:
        run(["restic", "-r", repo, "check", "-q"])
        count = len(json.loads(run(["restic", "-r", repo, "snapshots", "--json"], capture=True)))
        run(["restic", "-r", repo, "restore", "latest", "--target", target])
    if count != keep:
        sys.exit(f"{tool}: {count} snapshots left, {keep} expected")
    restored = target
    # restic restores the absolute path below the target.
    nested = os.path.join(target, data.lstrip("/"))
    if os.path.isdir(nested):
        restored = nested
    for name in os.listdir(data):
        if subprocess.call(["cmp", "-s", os.path.join(data, name), os.path.join(restored, name)]) != 0:
            found = sorted(os.listdir(restored))
            sys.exit(f"{tool}: restored {name} differs from the data (restored: {found})")
    shutil.rmtree(target)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--snapshots", type=int, default=1100)
    ap.add_argument("--keep", type=int, default=100)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--file-mib", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=1, help="4 KiB blocks rewritten before each snapshot")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    print(f"expiry bench: seed {a.seed}, {a.snapshots} snapshots of {a.files} x {a.file_mib} MiB, keep {a.keep}")
    data, sb_prepared, restic_prepared = prepare(a.work, a)
    print(f"prepared: strongbox {du(sb_prepared) >> 20} MiB, restic {du(restic_prepared) >> 20} MiB")
    tools = {
        "strongbox": (sb_prepared, lambda r: [sb(r, "forget", "--keep-last", str(a.keep)), sb(r, "prune")]),
        "restic": (restic_prepared, lambda r: [
            ["restic", "-r", r, "forget", "-q", "--keep-within", f"{a.keep}h"],
            ["restic", "-r", r, "prune", "-q"],
        ]),
    }
    times = {t: [] for t in tools}
    for i in range(a.runs):
        order = list(tools) if i % 2 == 0 else list(reversed(tools))
        line = []
        for tool in order:
            prepared, cmds = tools[tool]
            repo = os.path.join(a.work, f"run-{tool}")
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(prepared, repo)
            drop_caches()
            t = timed(cmds(repo))
            size = du(repo)
            verify(tool, repo, data, a.keep, a.work)
            shutil.rmtree(repo)
            times[tool].append(t)
            line.append(f"{tool} {t:.2f} s ({size >> 20} MiB left)")
        print(f"round {i + 1} ({order[0]} first): " + ", ".join(line), flush=True)
    med = {t: statistics.median(v) for t, v in times.items()}
    print(f"median expire+prune: strongbox {med['strongbox']:.2f} s, restic {med['restic']:.2f} s, "
          f"ratio {med['strongbox'] / med['restic']:.2f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
