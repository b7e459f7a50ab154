#!/usr/bin/env python3
"""Legitimate requests during a flood of wrong passwords, side by side
with the same requests alone (issue 14: the flood must leave their p99
<= 50 ms).

One `strongbox serve --demo` over TLS. Legitimate: wrk, 2 threads, 8
connections, `GET …/db12c/backups` as the demo user. Flood: wrk, 1 thread,
64 connections, the same user with a wrong password. ROUNDS rounds, each
timing the legitimate requests alone and then beside the flood; prints
each, the medians, and how the flood was answered (401 while it had
tries left, then 429).

Usage: login_flood.py WORKDIR [--seconds 10] [--rounds 3]
(`bench/login_flood.sh` builds the release binary and installs wrk.)
"""
import argparse
import base64
import os
import re
import shutil
import statistics
import subprocess

from benchutil import Server, tls_certs

HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.join(HERE, "..", "target", "release", "strongbox")
PASSWORD = "flood-bench-pw"
PATH = "/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups"


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def wrk(url, auth, threads, connections, seconds, latency=True):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-H", f"Authorization: {auth}",
           "-H", "X-ID-TENANT-NAME: usexample", url]
    return subprocess.Popen(cmd + (["--latency"] if latency else []), stdout=subprocess.PIPE, text=True)


def parse(out):
    """(requests/s, p99 ms or None, requests, non-2xx answers) of wrk's output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)] if p99 else None
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, p99_ms, total, int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    tls_certs(a.work)
    server = Server(BINARY, a.work, os.path.join(a.work, "server"), {"STRONGBOX_DEMO_PASSWORD": PASSWORD})
    url = server.url + PATH
    good, bad = basic("serviceadmin", PASSWORD), basic("serviceadmin", "not-the-password")
    results = {"alone": [], "flood": []}
    try:
        for r in range(a.rounds):
            alone = parse(wrk(url, good, 2, 8, a.seconds).communicate()[0])
            flood = wrk(url, bad, 1, 64, a.seconds, latency=False)
            beside = parse(wrk(url, good, 2, 8, a.seconds).communicate()[0])
            _, _, flood_total, flood_refused = parse(flood.communicate()[0])
            results["alone"].append(alone)
            results["flood"].append(beside)
            print(f"round {r + 1}: alone {alone[0]:,.0f} req/s p99 {alone[1]:.2f} ms | beside the flood "
                  f"{beside[0]:,.0f} req/s p99 {beside[1]:.2f} ms, non-2xx {beside[3]} | flood: "
                  f"{flood_total:,} wrong-password requests, {flood_refused:,} refused", flush=True)
    finally:
        server.stop()
    log = open(os.path.join(server.dir, "server.log")).read()
    answered = {code: len(re.findall(rf"status={code}\b", log)) for code in (401, 429)}
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in results.items()}
    print(f"medians of {a.rounds}: alone {med['alone'][0]:,.0f} req/s p99 {med['alone'][1]:.2f} ms; "
          f"beside the flood {med['flood'][0]:,.0f} req/s p99 {med['flood'][1]:.2f} ms (target <= 50 ms)")
    print(f"the flood was answered 401 {answered[401]:,} times (each an Argon2id hash), 429 {answered[429]:,} times")


if __name__ == "__main__":
    main()
