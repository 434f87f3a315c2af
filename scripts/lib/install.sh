# Shared by scripts/test.sh and scripts/quickstart.sh: what both need on a fresh machine.
#
#   source scripts/lib/install.sh
#   install_system_deps     # PostgreSQL server + client (initdb, pg_ctl, psql, pgbench),
#                           # libclang (pg_query's build needs it), a C compiler; puts
#                           # Postgres's bin directory first in PATH
#
# As root with apt-get, missing packages are installed; otherwise the script stops and says
# which to install. SHARDWIRE_SKIP_INSTALL=1 never installs anything. PG_BIN names the
# directory of initdb/pg_ctl when it is not a Debian /usr/lib/postgresql/<v>/bin.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

APT_UPDATED=0
apt_install() {
    if [ "${SHARDWIRE_SKIP_INSTALL:-0}" = 1 ]; then
        die "missing: $* (SHARDWIRE_SKIP_INSTALL=1 is set; install them yourself)"
    fi
    if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
        die "missing: $* — install them (Debian/Ubuntu: sudo apt-get install -y $*), or run this script as root to have it done"
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# The directory localpg uses (same rules): $PG_BIN, else the highest /usr/lib/postgresql/<v>/bin.
pg_bin_dir() {
    if [ -n "${PG_BIN:-}" ]; then
        echo "$PG_BIN"
        return
    fi
    local best="" v
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] || continue
        v=$(basename "$(dirname "$d")")
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -n1)" = "$v" ]; then
            best=$v
        fi
    done
    if [ -n "$best" ]; then
        echo "/usr/lib/postgresql/$best/bin"
    fi
}

have_initdb() {
    local bin
    bin=$(pg_bin_dir)
    if [ -n "$bin" ] && [ -x "$bin/initdb" ]; then return 0; fi
    command -v initdb >/dev/null 2>&1
}

install_system_deps() {
    if ! have_initdb; then
        [ -n "${PG_BIN:-}" ] && die "PG_BIN=$PG_BIN has no initdb: point it at the directory holding initdb and pg_ctl, or unset it"
        apt_install postgresql postgresql-client
        have_initdb || die "initdb still not found after installing postgresql"
    fi
    PGBIN_DIR=$(pg_bin_dir)
    if [ -n "$PGBIN_DIR" ]; then
        # psql, pgbench, pg_ctl for the tests that shell out to them.
        export PATH="$PGBIN_DIR:$PATH"
    fi
    if ! command -v psql >/dev/null 2>&1; then
        apt_install postgresql-client
    fi
    if ! command -v pgbench >/dev/null 2>&1; then
        apt_install postgresql-contrib postgresql-client
        command -v pgbench >/dev/null 2>&1 || die "pgbench not found after installing postgresql-contrib"
    fi
    if is_root && ! id postgres >/dev/null 2>&1; then
        die "running as root but there is no 'postgres' user to run Postgres as: useradd --system postgres (or reinstall the postgresql package)"
    fi
    # libclang-cpp.so (LLVM's C++ library, present on some machines) is not libclang: clang-sys
    # skips it, so only libclang.so* and libclang-<version>.so* count.
    have_libclang() {
        compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
            || compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null \
            || compgen -G '/usr/lib/*/libclang.so*' >/dev/null \
            || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null
    }
    if [ -z "${LIBCLANG_PATH:-}" ] && ! have_libclang; then
        apt_install libclang-dev
    fi
    if ! command -v cc >/dev/null 2>&1; then
        apt_install build-essential
    fi
}

# cargo, or a clear word on how to get it.
require_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    [ -x "$HOME/.cargo/bin/cargo" ] && { export PATH="$HOME/.cargo/bin:$PATH"; return 0; }
    die "cargo not found: install Rust first (https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), then run this again"
}
