"""What the benchmark scripts share."""
import json
import os
import signal
import socket
import subprocess
import sys
import time


def drop_caches():
    """Syncs and drops the page cache, so every tool starts cold alike.
    Refuses to go on without it (a benchmark whose tools start from
    whatever cache the last one left compares nothing)."""
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        sys.exit(f"cannot drop the page cache ({e}): run the benchmark as root")


def tls_certs(work):
    """A CA and a localhost certificate it signed: (ca.pem, cert.pem, key.pem) in WORK."""
    def sh(*cmd):
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=bench CA")
    sh("openssl", "req", *ec, "-keyout", "key.pem", "-out", "srv.csr", "-subj", "/CN=localhost")
    with open(os.path.join(work, "ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "cert.pem", "-days", "1", "-extfile", "ext")
    return tuple(os.path.join(work, f) for f in ("ca.pem", "cert.pem", "key.pem"))


def psql(db, sql):
    """Runs SQL on the machine's PostgreSQL (127.0.0.1:5432, trust) in DB; its output, trimmed."""
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`strongbox serve --demo` over TLS (the certificates `tls_certs` made in
    TLS_DIR) on a free port, its data and output (server.log) in DIR."""

    def __init__(self, binary, tls_dir, dir, env):
        self.dir = dir
        os.makedirs(self.dir, exist_ok=True)
        ca, cert, key = (os.path.join(tls_dir, f) for f in ("ca.pem", "cert.pem", "key.pem"))
        self.ca = ca
        self.port = free_port()
        self.url = f"https://localhost:{self.port}"
        # Deployments' files may be anywhere in the benchmark's work
        # directory (the server's own data directory stays refused).
        allow = json.dumps([os.path.dirname(os.path.abspath(self.dir))])
        full = dict(os.environ, STRONGBOX_DATA_DIR=os.path.join(self.dir, "data"),
                    STRONGBOX_LISTEN=f"127.0.0.1:{self.port}", STRONGBOX_TLS_CERT=cert, STRONGBOX_TLS_KEY=key,
                    STRONGBOX_PUBLIC_URL=self.url, STRONGBOX_ALLOW_DATABASE_FILES=allow, **env)
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen([binary, "serve", "--demo"], env=full, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while subprocess.run(["curl", "-sf", "--cacert", ca, f"{self.url}/strongbox/health"],
                             stdout=subprocess.DEVNULL).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server in {self.dir} did not start; see its server.log")
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()
