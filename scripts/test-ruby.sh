#!/usr/bin/env bash
# The Ruby suite (scripts/test.sh calls it inside scripts/with-postgres.sh, after building the
# workspace once): the gem's unit tests over the native extension (SQLite), the client tests again
# on PostgreSQL, the binding tests under GC.stress, then the integration tests (a generated Rails 6.1 app whose jobs run in
# bin/fly-machine-worker inside emulator machines). Fails loudly when anything is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fail() { echo "test-ruby: $*" >&2; exit 1; }

command -v ruby >/dev/null || fail "ruby not found; run scripts/setup.sh"
command -v rails >/dev/null || fail "rails not found (Debian ruby-rails); run scripts/setup.sh"
ruby -e 'require "active_job"; require "rails"; require "minitest"; require "sqlite3"' \
  || fail "Debian packages ruby-rails, ruby-activejob, ruby-minitest, ruby-sqlite3 are needed; run scripts/setup.sh"

# The workspace build (scripts/test.sh: cargo build --workspace --tests) made the extension; copy
# it where lib/flyjobs/native.rb requires it. No separate `cargo build -p flyjobs-ruby`: with one
# package selected cargo unifies features differently and rebuilds half the tree.
[ -n "${FLYJOBS_TEST_DATABASE_URL:-}" ] \
  || fail "FLYJOBS_TEST_DATABASE_URL is not set: run me as scripts/with-postgres.sh scripts/test-ruby.sh (scripts/test.sh does)"
so="$root/target/debug/libflyjobs_ruby.so"
[ -f "$so" ] || fail "$so is missing: build the workspace first (cargo build --workspace; scripts/test.sh does)"
cp "$so" ruby/lib/flyjobs_ruby.so

cd ruby
run_suite() { # label, files...
  local label=$1; shift
  [ "$#" -gt 0 ] || fail "no test files for $label"
  echo "== ruby: $label" >&2
  local out
  out=$(mktemp)
  set +e
  ruby -Ilib -Itest -e 'ARGV.each { |f| require File.expand_path(f) }' "$@" 2>&1 | tee "$out"
  local status=${PIPESTATUS[0]}
  set -e
  grep -Eq '^[0-9]+ runs, [0-9]+ assertions, 0 failures, 0 errors' "$out" || status=1
  grep -Eq '^0 runs' "$out" && status=1
  rm -f "$out"
  [ "$status" -eq 0 ] || fail "$label failed"
}

run_suite "unit" test/unit/*_test.rb
FLYJOBS_TEST_STORE=postgres run_suite "unit on PostgreSQL" test/unit/client_test.rb test/unit/errors_test.rb
STRESS=1 run_suite "unit under GC.stress (STRESS=1)" test/unit/errors_test.rb test/unit/client_test.rb
run_suite "integration (Rails app, emulator machines)" test/integration/active_job_test.rb
# Its own process: the Puma test checks that the app's processes (Puma's, not this one) own the
# local Machines API, and that it goes away with them.
command -v puma >/dev/null || fail "puma not found (Debian puma); run scripts/setup.sh"
FLYJOBS_REUSE_APP=1 run_suite "Puma cluster (embedded default under an app server)" test/integration/puma_test.rb
echo "test-ruby: all Ruby suites passed" >&2
