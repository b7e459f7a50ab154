"""What the benchmark scripts share."""
import subprocess


def drop_caches():
    """Syncs and drops the page cache, so every tool starts cold alike."""
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass  # not root: every tool then starts from the same warm cache
