#!/usr/bin/env bash
# Runs the whole shardwire test suite against real local Postgres clusters.
#
#   ./scripts/test.sh                      # everything (benchmarks and soak tests are #[ignore]d)
#   ./scripts/test.sh -E 'test(harness)'   # extra arguments go to `cargo nextest run`
#
# What it does:
#   1. installs what is missing (as root, with apt-get): PostgreSQL server + client (initdb,
#      pg_ctl, psql, pgbench), libclang (the SQL parser crate needs it to build), a C compiler;
#      the Python drivers psycopg 3, asyncpg, psycopg2, SQLAlchemy and Django, pgjdbc (Debian's libpostgresql-jdbc-java,
#      run with the machine's Java), node-postgres + pg-copy-streams + postgres.js (npm ci in tests/node), and
#      Go's pgx v4 and lib/pq (Debian's golang packages) for the non-Rust driver tests;
#   2. builds the `shardwire` binary and starts 5 throwaway Postgres clusters with it
#      (`shardwire dev-clusters up`), removed again on exit whatever happens;
#   3. runs `cargo nextest run --no-fail-fast` with SHARDWIRE_TEST_CLUSTERS=<their ports>;
#      then, only when no arguments were given, the suite again with SHARDWIRE_TEST_ROLES=1
#      (every test's proxy logs in to the shards as a control role and non-superuser
#      application roles, config/roles.sql) and the doc tests.
#
# Environment: PG_BIN (directory of initdb/pg_ctl, optional), NEXTEST_PROFILE (default or ci),
# CARGO_TARGET_DIR (honoured), SHARDWIRE_SKIP_INSTALL=1 (never install anything),
# SHARDWIRE_SKIP_ROLES_PASS=1 (skip the least-privilege pass).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/install.sh
source scripts/lib/install.sh

# --- 1. system packages ---------------------------------------------------------------
install_system_deps
require_cargo

# --- 2. Python driver -----------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-pip
fi
# py_driver MODULE PIP_SPEC DEBIAN_PACKAGE: makes `import MODULE` work (pip, then pip with
# --break-system-packages for Debian's externally managed Python, then Debian's package).
py_driver() {
    local module=$1 spec=$2 deb=$3
    python3 -c "import $module" >/dev/null 2>&1 && return 0
    log "installing $spec for the driver tests"
    python3 -m pip install --quiet "$spec" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "$spec" 2>/dev/null \
        || { is_root && command -v apt-get >/dev/null 2>&1 && apt_install "$deb"; } \
        || true
    python3 -c "import $module" >/dev/null 2>&1 \
        || log "WARNING: $module is not importable (pip install '$spec'); the tests that use it will fail"
}
py_driver psycopg 'psycopg[binary]>=3.1' python3-psycopg
py_driver asyncpg 'asyncpg>=0.29' python3-asyncpg
py_driver psycopg2 'psycopg2-binary>=2.9' python3-psycopg2
py_driver sqlalchemy 'sqlalchemy[asyncio]>=2.0' python3-sqlalchemy
py_driver greenlet 'greenlet>=3' python3-greenlet
py_driver django 'django>=4.2,<6' python3-django

# --- 2b. JDBC (pgjdbc from Debian) and a Java runtime that runs a single source file ------
# (`java File.java` compiles in memory: it needs a JDK, so look for javac.)
if ! command -v javac >/dev/null 2>&1; then
    apt_install default-jdk-headless
fi
if [ -z "${PGJDBC_JAR:-}" ] && [ ! -f /usr/share/java/postgresql.jar ]; then
    apt_install libpostgresql-jdbc-java
fi

# --- 2c. node-postgres and postgres.js (tests/node, pinned in its package-lock.json) ------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if [ ! -d tests/node/node_modules/pg ] || [ ! -d tests/node/node_modules/postgres ]; then
    log "npm ci in tests/node (node-postgres, pg-copy-streams, postgres.js)"
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || log "WARNING: npm ci in tests/node failed; the Node.js driver test will fail"
fi

# --- 2d. Go drivers from Debian's packages (pgx v4, lib/pq; built offline, GOPATH mode) --
if ! command -v go >/dev/null 2>&1; then
    apt_install golang-go
fi
if [ -z "${SHARDWIRE_GOPATH:-}" ]; then
    [ -d /usr/share/gocode/src/github.com/jackc/pgx/v4 ] || apt_install golang-github-jackc-pgx-v4-dev
    [ -d /usr/share/gocode/src/github.com/lib/pq ] || apt_install golang-github-lib-pq-dev
fi

# --- 3. binary and shared clusters ------------------------------------------------------
log "cargo build --bin shardwire"
cargo build --quiet --bin shardwire
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/debug/shardwire"
[ -x "$BIN" ] || die "built binary not found at $BIN"

STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/shardwire-test-XXXXXX")
cleanup() {
    local rc=$?
    "$BIN" --log-level warn dev-clusters down --dir "$STATE_DIR" >&2 || log "WARNING: could not stop the test clusters (state in $STATE_DIR)"
    rm -rf "$STATE_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting 4 local Postgres clusters"
started=$(date +%s%N)
PORTS=$("$BIN" --log-level warn dev-clusters up --count 5 --dir "$STATE_DIR" | tail -n1)
[[ "$PORTS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "dev-clusters up printed '$PORTS', expected comma-separated ports"
log "clusters up on ports $PORTS in $(( ($(date +%s%N) - started) / 1000000 )) ms"
export SHARDWIRE_TEST_CLUSTERS=$PORTS

# --- 4. tests ---------------------------------------------------------------------------
status=0
cargo nextest run --no-fail-fast "$@" || status=$?
if [ "$#" = 0 ] && [ "${SHARDWIRE_SKIP_ROLES_PASS:-0}" != 1 ]; then
    # The same suite again with every test's proxy logged in to the shards under least
    # privilege: a control role and non-superuser application roles (config/roles.sql).
    log "the suite again under least privilege (SHARDWIRE_TEST_ROLES=1)"
    SHARDWIRE_TEST_ROLES=1 cargo nextest run --no-fail-fast || status=$?
fi
if [ "$#" = 0 ]; then
    log "doc tests"
    cargo test --quiet --doc || status=$?
fi
exit "$status"
