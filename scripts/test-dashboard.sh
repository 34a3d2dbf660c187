#!/usr/bin/env bash
# The dashboard in a real headless browser: Debian's chromium (scripts/setup.sh) driven by
# playwright-core (npm, dashboard/browser/package-lock.json; no browser download), against
# `flyjobs dashboard` from the workspace build. Screenshots of every page are saved to
# .build/artifacts/dashboard/ (look at them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fail() { echo "test-dashboard: $*" >&2; exit 1; }

chromium=${CHROMIUM:-$(command -v chromium || true)}
[ -n "$chromium" ] || fail "chromium not found (Debian package chromium); run scripts/setup.sh"
command -v node >/dev/null || fail "node not found (Node >= 18)"
bin="$root/target/debug/flyjobs"
[ -x "$bin" ] || fail "$bin is missing: build the workspace first (scripts/test.sh does)"

cd dashboard/browser
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
FLYJOBS_BIN="$bin" CHROMIUM="$chromium" FLYJOBS_ARTIFACTS="$root/.build/artifacts/dashboard" \
  node --test --test-timeout=300000 dashboard.test.mjs
echo "test-dashboard: screenshots in $root/.build/artifacts/dashboard/" >&2
