#!/usr/bin/env bash
# The Node suite (scripts/test.sh calls it inside scripts/with-postgres.sh, after building the
# workspace once): the npm package over the addon from that build, with node's built-in test
# runner, on SQLite and then on a fresh PostgreSQL schema. End to end through the embedded
# emulator: worker machines run node + flyjobs-worker as real processes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fail() { echo "test-node: $*" >&2; exit 1; }

command -v node >/dev/null || fail "node not found (Node >= 18)"
command -v npm >/dev/null || fail "npm not found"
command -v psql >/dev/null || fail "psql not found (Debian postgresql-client); run scripts/setup.sh"
[ -n "${FLYJOBS_TEST_DATABASE_URL:-}" ] \
  || fail "FLYJOBS_TEST_DATABASE_URL is not set: run me as scripts/with-postgres.sh scripts/test-node.sh (scripts/test.sh does)"
# The workspace build (scripts/test.sh) made the addon; no `napi build` here: it selects one
# package (and --target), which rebuilds half the tree.
so="$root/target/debug/libflyjobs_node.so"
[ -f "$so" ] || fail "$so is missing: build the workspace first (cargo build --workspace; scripts/test.sh does)"

cd node
# typescript and @types/node (package-lock.json); --ignore-scripts: the package's own install
# script is `napi build`, which the workspace build replaces here.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund
fi
cp "$so" flyjobs.linux-x64-gnu.node
node node_modules/typescript/bin/tsc -p tsconfig.json

export FLYJOBS_EMULATOR_LATENCY=none
run_suite() { # label
  echo "== node: $1" >&2
  local out status
  out=$(mktemp)
  set +e
  node --test test/*.test.js 2>&1 | tee "$out"
  status=${PIPESTATUS[0]}
  set -e
  grep -Eq '^# pass [1-9]' "$out" || status=1
  grep -Eq '^# fail 0$' "$out" || status=1
  rm -f "$out"
  [ "$status" -eq 0 ] || fail "$1 failed"
}

unset FLYJOBS_NODE_TEST_DATABASE_URL
run_suite "SQLite"

schema="node_test_$$_$RANDOM"
psql "$FLYJOBS_TEST_DATABASE_URL" -qc "CREATE SCHEMA $schema" >/dev/null
sep="?"; [[ "$FLYJOBS_TEST_DATABASE_URL" == *\?* ]] && sep="&"
export FLYJOBS_NODE_TEST_DATABASE_URL="$FLYJOBS_TEST_DATABASE_URL${sep}options=-csearch_path%3D$schema"
run_suite "PostgreSQL (schema $schema)"
echo "test-node: all Node suites passed" >&2
