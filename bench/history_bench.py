"""Costs that stay flat as history grows (issue 26): 5,000 backups of the
demo's small SQLite deployment through the API, one after another, on a
release build. Each backup is timed from its POST to its job's Succeeded
(and the POST alone); the last 1,000 are compared with the first 1,000
(medians and means). Every backup's tag must name the second its request
was made in (`TAGyyyymmddThhmmss`, `_N` within one second).

Usage: history_bench.py WORK [--backups 5000] [--window 1000]
"""
import argparse
import http.client
import json
import os
import shutil
import ssl
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import Server, tls_certs  # noqa: E402

BINARY = os.path.join(os.path.dirname(__file__), "..", "target", "release", "strongbox")
P = "/paas/service/dbcs/api/v1.1/instances/usexample/db12c"
HEADERS = {"X-ID-TENANT-NAME": "usexample", "Content-Type": "application/json"}


def main():
    a = argparse.ArgumentParser()
    a.add_argument("work")
    a.add_argument("--backups", type=int, default=5000)
    a.add_argument("--window", type=int, default=1000)
    args = a.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    ca, _, _ = tls_certs(args.work)
    server = Server(BINARY, args.work, os.path.join(args.work, "server"),
                    {"STRONGBOX_DEMO_PASSWORD": "bench-pw", "STRONGBOX_WORKERS": "1", "STRONGBOX_LOG": "warn"})
    import base64
    headers = dict(HEADERS, Authorization="Basic " + base64.b64encode(b"serviceadmin:bench-pw").decode())
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("localhost", server.port, context=ctx)

    def call(method, path, body=None):
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    rows = []  # (request unix seconds, post seconds, total seconds, job id)
    for i in range(args.backups):
        asked = time.time()
        t0 = time.monotonic()
        status, h, data = call("POST", P + "/backups", "{}")
        posted = time.monotonic() - t0
        assert status == 202, (status, data)
        job = h["location"].split("/", 3)[3]
        while True:
            status, _, data = call("GET", "/" + job)
            state = json.loads(data)["job_status"]
            if state == "Succeeded":
                break
            assert state != "Failed", data
            time.sleep(0.002)
        rows.append((asked, posted, time.monotonic() - t0, int(job.rsplit("/", 1)[1])))
        if (i + 1) % 500 == 0:
            w = rows[-500:]
            print(f"{i + 1} backups: the last 500 took {statistics.median(r[2] for r in w) * 1e3:.1f} ms each "
                  f"(median; POST {statistics.median(r[1] for r in w) * 1e3:.1f} ms)", flush=True)
    status, _, data = call("GET", P + "/backups")
    tags = {b["jobId"]: b["dbTag"] for b in json.loads(data)["backupList"]}
    server.stop()
    worst = 0.0
    for asked, _, _, job in rows:
        tag = tags[job].split("_")[0]
        t = time.mktime(time.strptime(tag, "TAG%Y%m%dT%H%M%S")) - time.timezone
        worst = max(worst, abs(t - int(asked)))
    first, last = rows[:args.window], rows[-args.window:]
    for what, k in (("POST to Succeeded", 2), ("POST alone", 1)):
        f_med, l_med = statistics.median(r[k] for r in first), statistics.median(r[k] for r in last)
        f_mean, l_mean = statistics.mean(r[k] for r in first), statistics.mean(r[k] for r in last)
        print(f"{what}: first {args.window} {f_med * 1e3:.1f} ms median / {f_mean * 1e3:.1f} ms mean; last "
              f"{args.window} {l_med * 1e3:.1f} / {l_mean * 1e3:.1f} ms: {l_med / f_med:.2f}x median, "
              f"{l_mean / f_mean:.2f}x mean")
    print(f"every tag within {worst:.0f} s of its request's second ({len(rows)} backups)")


if __name__ == "__main__":
    main()
