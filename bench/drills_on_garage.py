#!/usr/bin/env python3
"""The loss drills of issues 27 and 28 once more, on a real distributed S3
store: a three-node Garage cluster on loopback (replication factor 3, the
cluster `garage_bench.py` starts). The drill tests themselves run, with
`STRONGBOX_TEST_S3_*` pointing the testkit at Garage instead of its
in-process server (each test under a prefix of its own in the bucket), and
the `AWS_*` variables exported too, so that PostgreSQL's archive_command and
restore_command (run by the clusters the tests start) reach the bucket.

What is on Garage then: the S3 repositories of the four-servers drill, the
host-lost drills' repositories (SQLite with a shipped log, a command
deployment, PostgreSQL across a timeline switch), the escrow-key drill's
repository, and the copy every copies drill falls back to.

Usage: drills_on_garage.py WORKDIR [TEST FILTER …]
(`bench/drills_on_garage.sh` builds Garage with `cargo install garage`.)
"""
import os
import subprocess
import sys
import time

from garage_bench import BUCKET, Cluster

DRILLS = ["loss_drills", "copies"]


def main():
    work = sys.argv[1]
    filters = sys.argv[2:]
    os.makedirs(work, exist_ok=True)
    cluster = Cluster(work)
    try:
        env = cluster.env()
        # The drills set their own passwords.
        del env["STRONGBOX_PASSWORD"], env["RESTIC_PASSWORD"]
        env.update(
            STRONGBOX_TEST_S3_ENDPOINT=env["AWS_ENDPOINT_URL"],
            STRONGBOX_TEST_S3_ACCESS_KEY=cluster.key_id,
            STRONGBOX_TEST_S3_SECRET_KEY=cluster.secret,
            STRONGBOX_TEST_S3_REGION="garage",
            STRONGBOX_TEST_S3_BUCKET=BUCKET,
        )
        cmd = ["cargo", "test", "-p", "strongbox"]
        for t in DRILLS:
            cmd += ["--test", t]
        cmd += ["--", "--test-threads=1", *filters]
        print("$", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        p = subprocess.run(cmd, env=env, cwd=os.path.join(os.path.dirname(__file__), ".."))
        print(f"drills on Garage: exit {p.returncode} in {time.monotonic() - t0:.0f} s "
              f"(Garage CPU {cluster.cpu():.1f} s)", flush=True)
        # What the drills left in the bucket: evidence they ran on Garage.
        info = cluster.garage(0, "bucket", "info", BUCKET)
        print("\n".join(l for l in info.splitlines() if "objects" in l.lower() or "size" in l.lower()))
        sys.exit(p.returncode)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
