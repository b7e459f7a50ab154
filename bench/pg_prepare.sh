# Sourced by the PostgreSQL benchmarks: installs pgBackRest (Debian
# package) if missing and builds Strongbox in release mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v pgbackrest >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest
fi
cargo build --release -q -p strongbox
