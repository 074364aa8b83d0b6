#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: builds the bench binaries in release mode and runs them.
#   scripts/bench.sh                 # default run: 2,000 calls a phase, 3 rounds, ~10 minutes after the release build
#   scripts/bench.sh --long          # 10,000 calls a phase
#   scripts/bench.sh --growth        # adds the PostgreSQL growth section (slow)
# Other flags: --calls N, --rounds N, --only SUBSTRING, --sqlite-pool N, --no-callgrind, --redis-url URL,
# --postgres-url URL (default $IDEMPOTENT_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/test),
# --mysql-url URL (default $IDEMPOTENT_MYSQL_URL or mysql://root@127.0.0.1:3306/test).
# Needs PostgreSQL, MariaDB/MySQL and redis-server; valgrind for the CPU section
# (apt-get install -y valgrind). Writes only to its own schema/database `idem_bench*`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p idempotent-benches --bins
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/bench" --write BENCHMARKS.md "$@"
