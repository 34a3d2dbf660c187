#!/usr/bin/env bash
# The chaos suite on the release build against a throwaway PostgreSQL (stopped and started by
# scenario d): one line of figures per scenario; exit 1 if a promise is broken.
#   tests/chaos/run.sh            the full suite (~10 min; figures in RELIABILITY.md)
#   tests/chaos/run.sh --short    the CI version (scripts/test.sh runs it on the debug build)
#   tests/chaos/run.sh --only ad  some scenarios
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build --release --locked -p flyjobs-cli -p flyjobs-chaos
exec ./scripts/with-postgres.sh target/release/flyjobs-chaos "$@"
