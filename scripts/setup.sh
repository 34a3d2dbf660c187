#!/usr/bin/env bash
# Installs every system package the build and the tests need. Safe to run twice:
# apt-get only runs when something is missing.
set -euo pipefail
packages=(
  build-essential pkg-config libclang-dev
  postgresql postgresql-client
  ruby ruby-dev ruby-rails ruby-activejob ruby-minitest ruby-sqlite3
  redis-server ruby-sidekiq ruby-redis puma
  python3 python3-venv
  procps psmisc
  chromium
)
# Node >= 18 and npm for the npm package (node/); the image may bring its own (NodeSource), whose
# npm is not Debian's package: look for the commands, not the packages.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then packages+=(nodejs npm); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup" >&2; exit 1; }
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
