#!/bin/bash
# The idle measurement of bench/src/idle.rs for a standalone `flyjobs scaler` process (any build,
# e.g. an older one for comparison): scripts/with-postgres.sh bench/idle_cli.sh BIN [SECONDS]
set -e
BIN=$(realpath "$1"); SECS=${2:-60}
PSQL=${PSQL:-$(ls /usr/lib/postgresql/*/bin/psql | sort -V | tail -n1)}
DB=flyjobs_idle_cli_$RANDOM
$PSQL -X -q -d "$FLYJOBS_TEST_DATABASE_URL" -c "CREATE DATABASE $DB"
URL="${FLYJOBS_TEST_DATABASE_URL%/*}/$DB"
D=$(mktemp -d); cd $D
FLYJOBS_DATABASE_URL=$URL FLYJOBS_QUEUES="default:max_machines=2" RUST_LOG=${RUST_LOG:-warn} $BIN scaler > $D/log 2>&1 &
PID=$!
sleep 10
c0=$($PSQL -X -A -t -d "$FLYJOBS_TEST_DATABASE_URL" -c "SELECT xact_commit FROM pg_stat_database WHERE datname='$DB'")
sleep $SECS
c1=$($PSQL -X -A -t -d "$FLYJOBS_TEST_DATABASE_URL" -c "SELECT xact_commit FROM pg_stat_database WHERE datname='$DB'")
rss=$(grep VmRSS /proc/$PID/status)
kill $PID; wait $PID || true
echo "commits $((c1-c0)) in $SECS s = $(echo "scale=2; ($c1-$c0)/$SECS" | bc)/s; $rss"
tail -3 $D/log
