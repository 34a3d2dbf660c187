#!/usr/bin/env bash
# The cross-language test (scripts/test.sh calls it inside scripts/with-postgres.sh, after the
# language suites): a Python, a Ruby and a Node job in one fresh PostgreSQL database, each run by
# its own language's worker; tests/polyglot/test_polyglot.py. Uses the workspace build's native
# modules (as scripts/test-{python,ruby,node}.sh do) and their tools under .build/ and node/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fail() { echo "test-polyglot: $*" >&2; exit 1; }

[ -n "${FLYJOBS_TEST_DATABASE_URL:-}" ] \
  || fail "FLYJOBS_TEST_DATABASE_URL is not set: run me as scripts/with-postgres.sh scripts/test-polyglot.sh (scripts/test.sh does)"
for tool in ruby node npm psql python3; do
  command -v "$tool" >/dev/null || fail "$tool not found; run scripts/setup.sh"
done
for lib in python ruby node; do
  [ -f "target/debug/libflyjobs_$lib.so" ] \
    || fail "target/debug/libflyjobs_$lib.so is missing: build the workspace first (cargo build --workspace --lib --bins --tests)"
done

# Python: the venv of scripts/test-python.sh (made here if missing), the package from the tree.
venv="$root/.build/python-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" || fail "could not make a venv (Debian: apt-get install python3-venv)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "pytest==8.3.5"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$root/python/src" > "$site/flyjobs-src.pth"
# --remove-destination: a new file, never rewriting one a running process has mapped.
cp --remove-destination target/debug/libflyjobs_python.so python/src/flyjobs/_native.abi3.so
# Ruby: the gem from the tree with its extension (as scripts/test-ruby.sh).
cp --remove-destination target/debug/libflyjobs_ruby.so ruby/lib/flyjobs_ruby.so
# Node: the package's dist/ and addon (as scripts/test-node.sh).
(
  cd node
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --ignore-scripts --no-audit --no-fund
  fi
  cp --remove-destination "$root/target/debug/libflyjobs_node.so" flyjobs.linux-x64-gnu.node
  node node_modules/typescript/bin/tsc -p tsconfig.json
)

db=flyjobs_polyglot
PGOPTIONS="--client-min-messages=warning" psql -q -v ON_ERROR_STOP=1 "$FLYJOBS_TEST_DATABASE_URL" \
  -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null || fail "could not create the database $db"
export FLYJOBS_POLYGLOT_DATABASE_URL="${FLYJOBS_TEST_DATABASE_URL%/*}/$db"
export FLYJOBS_EMULATOR_LATENCY=none
echo "== polyglot: Python, Ruby and Node jobs in one PostgreSQL store" >&2
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/polyglot "$@" || fail "the cross-language test failed"
echo "test-polyglot: passed" >&2
