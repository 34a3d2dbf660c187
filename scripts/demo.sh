#!/usr/bin/env bash
# The main job: `flyjobs demo` on the embedded default (in-process Machines API emulator whose
# machines are local processes, and a SQLite queue). No Fly account, no network.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || { echo "demo: cargo not found; install Rust with rustup" >&2; exit 1; }
cargo build -p flyjobs-cli --locked --quiet
exec "$root/target/debug/flyjobs" demo "$@"
