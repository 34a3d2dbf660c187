#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh), builds the workspace once,
# starts a throwaway PostgreSQL, and runs the Rust suites (SQLite + Postgres + emulator) and the
# language suites against it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --workspace --tests --locked
cargo build -p flyjobs-cli --locked
./scripts/with-postgres.sh bash -c '
  set -euo pipefail
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --doc --locked
  if [ -x scripts/test-ruby.sh ]; then scripts/test-ruby.sh; fi
'
