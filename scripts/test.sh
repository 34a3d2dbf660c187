#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh), builds the workspace once,
# starts a throwaway PostgreSQL, and runs the Rust suites (SQLite + Postgres + emulator) and the
# language suites against it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# One invocation for everything (libs incl. the Ruby cdylib, bins, tests) so cargo unifies
# features once; building one binding package alone would rebuild half the tree.
cargo build --workspace --lib --bins --tests --locked
./scripts/with-postgres.sh bash -c '
  set -euo pipefail
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --doc --locked
  scripts/test-conformance.sh
  # The chaos suite, short (tests/chaos/run.sh runs the full one on the release build).
  target/debug/flyjobs-chaos --short
  if [ -x scripts/test-ruby.sh ]; then scripts/test-ruby.sh; fi
  if [ -x scripts/test-python.sh ]; then scripts/test-python.sh; fi
  if [ -x scripts/test-node.sh ]; then scripts/test-node.sh; fi
  # After the language suites, whose artifacts (venv, gem extension, node dist/) it reuses.
  if [ -x scripts/test-polyglot.sh ]; then scripts/test-polyglot.sh; fi
  scripts/test-dashboard.sh
'
