#!/usr/bin/env bash
# Runs "$@" with a throwaway PostgreSQL on a loopback port, started as the `postgres` user
# with its data directory under the build dir, and stopped afterwards whatever happens.
# Exports FLYJOBS_TEST_DATABASE_URL (and PGDATA_DIR / PG_CTL for restart tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
port=${FLYJOBS_TEST_PG_PORT:-$((54000 + RANDOM % 1000))}
base="$root/.build/pg-$port"
rm -rf "$base"; mkdir -p "$root/.build"; install -d -o postgres -g postgres -m 755 "$base"  # postgres writes server.log here
data="$base/data"
install -d -o postgres -g postgres -m 700 "$data"
runuser -u postgres -- "$PGBIN/initdb" -D "$data" -U postgres -A trust --no-sync >/dev/null
opts="-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
cleanup() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$base"
}
trap cleanup EXIT
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$data" -l "$base/server.log" -w -o "$opts" start >/dev/null
export FLYJOBS_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
# For tests that restart the server: `runuser -u postgres -- $PG_CTL -D $PGDATA_DIR -o "$PG_OPTS" restart`.
export PGDATA_DIR="$data" PG_CTL="$PGBIN/pg_ctl" PG_OPTS="$opts"
"$@"
