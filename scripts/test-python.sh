#!/usr/bin/env bash
# The Python suite (scripts/test.sh calls it inside scripts/with-postgres.sh, after building the
# workspace once): pytest over the package on SQLite, then again on PostgreSQL
# (FLYJOBS_TEST_DATABASE_URL), stubtest of the native module's .pyi, and mypy --strict on the
# example app. Tools go into a venv under .build/; the native module is the workspace build's
# target/debug/libflyjobs_python.so (no maturin here: it would rebuild the tree).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fail() { echo "test-python: $*" >&2; exit 1; }

python=${PYTHON:-python3}
command -v "$python" >/dev/null || fail "$python not found (Debian python3 + python3-venv; scripts/setup.sh)"
"$python" -c 'import sys; assert sys.version_info >= (3, 9)' || fail "$python is older than 3.9"
[ -n "${FLYJOBS_TEST_DATABASE_URL:-}" ] \
  || fail "FLYJOBS_TEST_DATABASE_URL is not set: run me as scripts/with-postgres.sh scripts/test-python.sh (scripts/test.sh does)"
so="$root/target/debug/libflyjobs_python.so"
[ -f "$so" ] || fail "$so is missing: build the workspace first (cargo build --workspace; scripts/test.sh does)"

venv="$root/.build/python-venv"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" || fail "could not make a venv (Debian: apt-get install python3-venv)"
fi
# Pinned test tools; pip does nothing when they are already there.
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "pytest==8.3.5" "mypy==1.15.0"
# The package from the source tree (a .pth line), with the workspace's native module beside it.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$root/python/src" > "$site/flyjobs-src.pth"
cp "$so" python/src/flyjobs/_native.abi3.so

# A database of our own on the throwaway server: the scaler serves every queue it sees, and
# other suites' leftover jobs must not reach Python workers (nor ours theirs).
command -v psql >/dev/null || fail "psql not found (Debian postgresql-client; scripts/setup.sh)"
for db in flyjobs_python flyjobs_django; do
  PGOPTIONS="--client-min-messages=warning" psql -q -v ON_ERROR_STOP=1 "$FLYJOBS_TEST_DATABASE_URL" \
    -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null \
    || fail "could not create the database $db"
done
server_url=${FLYJOBS_TEST_DATABASE_URL%/*}
export FLYJOBS_TEST_DATABASE_URL="$server_url/flyjobs_python"

export FLYJOBS_EMULATOR_LATENCY=none
cd python
echo "== python: pytest on SQLite" >&2
FLYJOBS_TEST_STORE=sqlite "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@" || fail "pytest on SQLite failed"
echo "== python: pytest on PostgreSQL" >&2
FLYJOBS_TEST_STORE=postgres "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@" || fail "pytest on PostgreSQL failed"
echo "== python: Django Tasks backend (Django 6, Python >= 3.12) on SQLite and PostgreSQL" >&2
python312=""
for candidate in ${PYTHON312:-} python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python; do
  # (pyenv's shims exist for versions that are installed but not active: try each one.)
  if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
    python312=$candidate
    break
  fi
done
[ -n "$python312" ] || fail "no Python >= 3.12 for Django 6 (set PYTHON312; e.g. pyenv install 3.12)"
djvenv="$root/.build/python-django-venv"
[ -x "$djvenv/bin/python" ] || "$python312" -m venv "$djvenv" || fail "could not make the Django venv"
"$djvenv/bin/python" -m pip install -q --disable-pip-version-check "pytest==8.3.5" "django>=6,<7"
djsite=$("$djvenv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$root/python/src" > "$djsite/flyjobs-src.pth"
FLYJOBS_TEST_STORE=sqlite "$djvenv/bin/python" -m pytest -q -p no:cacheprovider tests_django || fail "Django suite on SQLite failed"
FLYJOBS_TEST_STORE=postgres FLYJOBS_TEST_DATABASE_URL="$server_url/flyjobs_django" "$djvenv/bin/python" -m pytest -q -p no:cacheprovider tests_django || fail "Django suite on PostgreSQL failed"
echo "== python: stubtest (flyjobs._native vs _native.pyi)" >&2
"$venv/bin/python" -m mypy.stubtest flyjobs._native --mypy-config-file pyproject.toml || fail "stubtest failed"
echo "== python: mypy --strict (the package and examples/)" >&2
"$venv/bin/python" -m mypy --strict --config-file pyproject.toml src/flyjobs examples || fail "mypy --strict failed"
echo "test-python: all Python suites passed" >&2
