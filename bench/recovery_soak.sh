#!/usr/bin/env bash
# Soak of every randomized model: the PostgreSQL recovery model
# (recovery_model.rs; its repository local, then on a flaky S3 store), the
# engine models (SQLite, logical, command: recovery_model_engines.rs), the
# shipped SQLite log model (sqlite_pitr_model.rs) and the flaky S3 store
# (repo's s3_faults.rs), on SEEDS seeds drawn fresh (printed) unless
# FIRST_SEED is given. The first failure stops it and prints the seed and
# what led there (replay with MODEL_SEED=N and the same MODEL_OPS /
# MODEL_STEPS).
# Needs what the test suite needs (PostgreSQL 15 binaries, MariaDB).
# Usage: bench/recovery_soak.sh [SEEDS=20] [OPERATIONS=150] [FIRST_SEED=fresh]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-20}
ops=${2:-150}
first=${3:-$(( $(date +%s%N) % 1000000000 ))}
echo "seeds $first..$((first + seeds - 1)), $ops operations each"
log=$(mktemp)
cargo test -q -p strongbox --test integration --no-run
cargo test -q -p strongbox-repo --test s3_faults --no-run
models=(
  "strongbox integration recovery_model::random_sequences_recover_what_the_model_predicts_seed_a"
  "strongbox integration recovery_model::random_sequences_on_a_flaky_s3_store_recover_what_the_model_predicts"
  "strongbox integration recovery_model_engines::"
  "strongbox integration sqlite_pitr_model::recoveries_of_a_shipped_sqlite_log"
  "strongbox-repo s3_faults a_flaky_store_is_retried_and_every_byte_comes_back"
)
for ((seed = first; seed < first + seeds; seed++)); do
  for m in "${models[@]}"; do
    set -- $m
    started=$(date +%s)
    if ! MODEL_SEED=$seed MODEL_OPS=$ops MODEL_STEPS=$ops cargo test -q -p "$1" --test "$2" "$3" -- --nocapture >"$log" 2>&1; then
      cat "$log"
      echo "FAILED: $2 $3, seed $seed (replay: MODEL_SEED=$seed MODEL_OPS=$ops MODEL_STEPS=$ops cargo test -p $1 --test $2 $3)" >&2
      exit 1
    fi
    echo "seed $seed: $2 $3 passed in $(( $(date +%s) - started )) s"
  done
done
echo "all $seeds seeds passed on every model ($first..$((first + seeds - 1)))"
