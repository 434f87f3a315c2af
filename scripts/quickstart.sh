#!/usr/bin/env bash
# Runs shardwire in front of local throwaway shards, on a fresh machine, in one command.
#
#   ./scripts/quickstart.sh                       # proxy on 127.0.0.1:6432, 3 local shards
#   ./scripts/quickstart.sh --listen 127.0.0.1:7000   # arguments go to `shardwire quickstart`
#
# What it does:
#   1. installs what is missing, exactly as scripts/test.sh does (scripts/lib/install.sh):
#      PostgreSQL server + client, libclang (the SQL parser crate needs it to build), a C
#      compiler — as root with apt-get; otherwise it says which packages to install;
#   2. builds the release binary and runs `shardwire quickstart "$@"`, which initdbs the
#      shards into temp dirs (as the `postgres` user when run as root), serves
#      config/quickstart.yaml, and removes everything on Ctrl-C.
#
# Environment: PG_BIN, SHARDWIRE_SKIP_INSTALL=1, CARGO_TARGET_DIR (as for scripts/test.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/install.sh
source scripts/lib/install.sh

install_system_deps
require_cargo

log "cargo build --release --bin shardwire"
cargo build --quiet --release --bin shardwire
BIN="${CARGO_TARGET_DIR:-target}/release/shardwire"
[ -x "$BIN" ] || die "built binary not found at $BIN"
exec "$BIN" quickstart "$@"
