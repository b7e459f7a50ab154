#!/usr/bin/env bash
# Peak RSS of `strongbox repo backup` as the data grows (default 1 2 5 10 GiB).
# The data is a distinct pseudo-random stream per size (AES-CTR keystream),
# piped through stdin, so every chunk is new and the index grows fully.
# Usage: bench/memory_scaling.sh [WORKDIR] [SIZES_GIB...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p strongbox
work=${1:-/tmp/strongbox-mem}
shift || true
sizes=${*:-1 2 5 10}
export STRONGBOX_PASSWORD=bench-pw
mkdir -p "$work"
printf '%8s %10s %12s\n' GiB seconds "peak RSS MiB"
for g in $sizes; do
  rm -rf "$work/repo"
  target/release/strongbox repo -r "$work/repo" init >/dev/null
  /usr/bin/time -o "$work/time" -f "%e %M" bash -c \
    "openssl enc -aes-128-ctr -pass pass:size$g -nosalt -pbkdf2 </dev/zero 2>/dev/null | head -c $((g << 30)) \
     | target/release/strongbox repo -r '$work/repo' backup - >/dev/null"
  read -r secs kb < "$work/time"
  printf '%8s %10s %12.1f\n' "$g" "$secs" "$(echo "$kb / 1024" | bc -l)"
done
rm -rf "$work/repo"
