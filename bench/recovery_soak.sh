#!/usr/bin/env bash
# Soak of the recovery models (crates/strongbox/tests/recovery_model*.rs):
# many seeds, long sequences; the first failure stops it and prints the
# seed and the operations that led there (replay with MODEL_SEED=N).
# Needs what the test suite needs (PostgreSQL 15 binaries, MariaDB).
# Usage: bench/recovery_soak.sh [SEEDS=10] [OPERATIONS=150] [FIRST_SEED=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-10}
ops=${2:-150}
first=${3:-1000}
log=$(mktemp)
cargo test -q -p strongbox --test recovery_model --test recovery_model_engines --no-run
for ((seed = first; seed < first + seeds; seed++)); do
  for t in "recovery_model random_sequences_recover_what_the_model_predicts_seed_a" "recovery_model_engines"; do
    set -- $t
    if ! MODEL_SEED=$seed MODEL_OPS=$ops cargo test -q -p strongbox --test "$@" -- --nocapture >"$log" 2>&1; then
      cat "$log"
      echo "FAILED: $1, seed $seed" >&2
      exit 1
    fi
    grep -E "operations" "$log" | grep -v "^insert" | head -3
  done
done
echo "all $seeds seeds passed"
