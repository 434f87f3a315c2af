#!/usr/bin/env bash
# peer-suites.sh — run PostgreSQL drivers' OWN released test suites through a one-shard
# shardwire proxy, and directly against the Postgres database that proxy fronts, and list
# the tests that fail only through the proxy.
#
# Not run in CI (all four suites, both passes: ~25 minutes on 2 shared cores). Suites:
#   psycopg       tests/ of the installed psycopg 3 (git tag = its version; the sdist has no
#                 tests). Markers slow/timing/refcount are deselected, tests/pool (another
#                 package), tests/crdb and tests/test_typing.py (mypy) are left out.
#   asyncpg       tests/ of the installed asyncpg's sdist (PyPI), pointed at the server with
#                 (pytest --tb=native: with --tb=short CPython 3.11.7 crashes pytest partway
#                 through test_pool, "AST constructor recursion depth mismatch")
#                 PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE (its _testbase then uses a
#                 RunningCluster: tests that need to start or reconfigure a cluster skip).
#   sqlalchemy    the installed SQLAlchemy's sdist with --dburi postgresql+psycopg://…:
#                 test/dialect/postgresql test/orm/test_transaction.py test/sql/test_resultset.py
#                 (~10,600 tests; SQLALCHEMY_TESTS="test/dialect/postgresql test/sql test/orm"
#                 runs the 31,000 of those three directories)
#   node-postgres packages/pg/test/integration at git tag pg@8.16.3, run over the lib of the
#                 npm package pg@8.16.3 (one test file = one test: the suite stops a file at its
#                 first failure; the failing sub-test is named in the detail).
#
# Usage:
#   scripts/peer-suites.sh --binary target/debug/shardwire --out /tmp/peer-out \
#       [--suite psycopg|asyncpg|sqlalchemy|node-postgres]...  (default: all four, in turn)
#       [--pg-port PORT]       use a running cluster on 127.0.0.1:PORT (user postgres, trust)
#                              instead of starting one with `<binary> dev-clusters up --count 1`
#       [--port PORT]          the proxy's listen port (default 16510)
#       [--direct-from DIR]    reuse DIR/<suite>/direct.tsv of an earlier run (the direct pass
#                              does not depend on the binary) instead of running it again
#       [--work DIR]           downloads, sources and the venv (default /tmp/peer-suites-work;
#                              kept between runs)
#   Environment: PEER_SUITE_TIMEOUT (seconds a pass may run, default 2400; then it is interrupted
#   and counts what ran), PEER_PYTEST_ARGS (extra pytest arguments), PG_BIN, SQLALCHEMY_TESTS.
#
# Output, per suite in OUT/<suite>/: direct.tsv and proxy.tsv (test id, outcome, first line of
# the error), the runners' logs (direct.log, proxy.log), shardwire.log (the proxy's own log),
# proxy-only.txt (ids failing or erroring through the proxy that pass directly) and
# proxy-only.tsv (the same with their errors); OUT/summary.txt has one line per suite and pass.
#
# Fetching: PyPI (pip download) and npm (npm pack/install) for packages; test sources that
# are only in git come from `git clone --branch TAG https://github.com/...`, or, when that host
# is unreachable, from a bare git dir given as PSYCOPG_GIT_DIR / NODE_POSTGRES_GIT_DIR (its TAG,
# else its HEAD with a warning), or from a checkout given as PSYCOPG_SRC / NODE_POSTGRES_SRC.
#
# Each pass gets a freshly created database `peer_suites` (UTF8, schemas test_schema and
# test_schema_2, extensions hstore and citext, as SQLAlchemy's README asks) and each proxy pass
# a freshly started proxy (transaction pooling, one shard s0, `tables: {}`, users app/app-secret
# and postgres/postgres). Everything started is stopped on exit.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'peer-suites: %s\n' "$*" >&2; exit 2; }

BINARY="" OUT="" PG_PORT="" PROXY_PORT=16510 DIRECT_FROM="" WORK=/tmp/peer-suites-work
SUITES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) BINARY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --suite) SUITES+=("$2"); shift 2 ;;
        --pg-port) PG_PORT=$2; shift 2 ;;
        --port) PROXY_PORT=$2; shift 2 ;;
        --direct-from) DIRECT_FROM=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ -n "$BINARY" ] && [ -x "$BINARY" ] || die "--binary PATH (an executable shardwire) is required"
[ -n "$OUT" ] || die "--out DIR is required"
[ ${#SUITES[@]} -gt 0 ] || SUITES=(psycopg asyncpg sqlalchemy node-postgres)
for s in "${SUITES[@]}"; do
    case "$s" in psycopg|asyncpg|sqlalchemy|node-postgres) ;; *) die "unknown suite $s" ;; esac
done
BINARY=$(readlink -f "$BINARY")
mkdir -p "$OUT" "$WORK"
OUT=$(readlink -f "$OUT") WORK=$(readlink -f "$WORK")
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PG_BIN/psql" ] || die "no psql (set PG_BIN)"
DB=peer_suites
NODE_PG_VERSION=8.16.3
# a pass that runs longer is interrupted (SIGINT: pytest still writes the results so far)
SUITE_TIMEOUT=${PEER_SUITE_TIMEOUT:-2400}
# extra pytest arguments for the three Python suites, e.g. PEER_PYTEST_ARGS='-k "not TestCancellation"'
eval "PYTEST_EXTRA=(${PEER_PYTEST_ARGS:-})"
# the whole of test/dialect/postgresql test/sql test/orm is 31,000 tests (3x the default's time)
SQLALCHEMY_TESTS=${SQLALCHEMY_TESTS:-test/dialect/postgresql test/orm/test_transaction.py test/sql/test_resultset.py}

# --- Postgres and the proxy ---------------------------------------------------------------
STATE_DIR="" PROXY_PID=""
stop_proxy() {
    if [ -n "$PROXY_PID" ]; then
        kill "$PROXY_PID" 2>/dev/null || true
        # a graceful stop waits for sessions; one that is stuck must not stop this script
        for _ in $(seq 1 50); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$PROXY_PID" 2>/dev/null && log "the proxy did not stop within 10 s of SIGTERM: killed"
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    PROXY_PID=""
}
cleanup() {
    local rc=$?
    stop_proxy
    if [ -n "$STATE_DIR" ]; then
        "$BINARY" --log-level warn dev-clusters down --dir "$STATE_DIR" >&2 || log "could not stop the cluster in $STATE_DIR"
        rm -rf "$STATE_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "$PG_PORT" ]; then
    STATE_DIR=$(mktemp -d /tmp/peer-suites-pg-XXXXXX)
    PG_PORT=$("$BINARY" --log-level warn dev-clusters up --count 1 --dir "$STATE_DIR" | tail -n1)
    [[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "dev-clusters up printed '$PG_PORT'"
    log "Postgres cluster on port $PG_PORT"
fi
psql_pg() { "$PG_BIN/psql" -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

fresh_db() {
    psql_pg -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
        -c "CREATE DATABASE $DB ENCODING 'UTF8' TEMPLATE template0" >/dev/null
    psql_pg -d "$DB" -c "CREATE SCHEMA test_schema" -c "CREATE SCHEMA test_schema_2" >/dev/null
    psql_pg -d "$DB" -c "CREATE EXTENSION IF NOT EXISTS hstore" -c "CREATE EXTENSION IF NOT EXISTS citext" \
        >/dev/null 2>&1 || log "hstore/citext not available"
}

start_proxy() { # $1: log file
    local yaml=$OUT/proxy.yaml
    cat >"$yaml" <<YAML
listen: 127.0.0.1:$PROXY_PORT
users:
  - { name: app, password: app-secret }
  - { name: postgres, password: postgres }
shards:
  - { name: s0, url: "postgres://postgres@127.0.0.1:$PG_PORT/$DB" }
pool: { size: 10, connect_timeout_ms: 15000 }
tables: {}
YAML
    nice "$BINARY" --log-level warn serve --config "$yaml" >"$1" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 1 100); do
        if PGPASSWORD=app-secret "$PG_BIN/psql" -qXAt -h 127.0.0.1 -p "$PROXY_PORT" -U app -d "$DB" -c 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$PROXY_PID" 2>/dev/null || die "the proxy exited: $(tail -5 "$1")"
        sleep 0.2
    done
    die "the proxy did not answer on port $PROXY_PORT"
}

# --- fetching -------------------------------------------------------------------------------
VENV=$WORK/venv
PY=$VENV/bin/python
if [ ! -x "$PY" ]; then
    log "python venv in $VENV (system site packages: the installed drivers)"
    python3 -m venv --system-site-packages "$VENV"
fi
"$PY" -m pip install -q pytest pytest-timeout anyio pproxy distro >&2
for m in psycopg asyncpg sqlalchemy; do
    "$PY" -c "import $m" 2>/dev/null || "$PY" -m pip install -q "$m" >&2
done
pyver() { "$PY" -c "import $1; print($1.__version__)"; }

# git_source NAME URL TAG DEST: a tree of URL at TAG in DEST (see the header for fallbacks)
git_source() {
    local name=$1 url=$2 tag=$3 dest=$4 var_src var_git tmp
    [ -d "$dest" ] && return 0
    var_src=${name}_SRC var_git=${name}_GIT_DIR
    tmp=$dest.tmp; rm -rf "$tmp"
    if [ -n "${!var_src:-}" ]; then
        cp -r "${!var_src}" "$tmp"
    elif GIT_TERMINAL_PROMPT=0 timeout 300 git clone -q --depth 1 --branch "$tag" "$url" "$tmp" 2>/dev/null; then
        :
    elif [ -n "${!var_git:-}" ]; then
        local rev=$tag
        if ! git --git-dir="${!var_git}" rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
            rev=HEAD
            log "WARNING: tag $tag is not in ${!var_git}; using its HEAD $(git --git-dir="${!var_git}" log -1 --format='%h %cd' --date=short)"
        fi
        mkdir -p "$tmp"; git --git-dir="${!var_git}" archive "$rev" | tar -x -C "$tmp"
    else
        die "cannot fetch $url at $tag: set $var_src (a checkout) or $var_git (a bare git dir)"
    fi
    mv "$tmp" "$dest"
}

pypi_sdist() { # NAME VERSION -> extracted dir path on stdout
    local dir=$WORK/$1-$2
    if [ ! -d "$dir" ]; then
        (cd "$WORK" && "$PY" -m pip download -q --no-deps --no-binary :all: "$1==$2" -d "$WORK/dl" >&2)
        tar -xzf "$(ls "$WORK"/dl/"$1"-"$2".tar.gz "$WORK"/dl/"${1,,}"-"$2".tar.gz 2>/dev/null | head -1)" -C "$WORK"
    fi
    echo "$dir"
}

prepare_psycopg() {
    local v; v=$(pyver psycopg)
    git_source PSYCOPG https://github.com/psycopg/psycopg.git "$v" "$WORK/psycopg-src-$v"
    echo "$WORK/psycopg-src-$v"
}
prepare_asyncpg() {
    local v dir; v=$(pyver asyncpg); dir=$WORK/asyncpg-tests-$v
    if [ ! -d "$dir" ]; then
        local sd; sd=$(pypi_sdist asyncpg "$v")
        # the tests alone: the sdist's asyncpg/ is unbuilt and must not shadow the installed one
        mkdir -p "$dir"; cp -r "$sd/tests" "$dir/"
    fi
    echo "$dir"
}
prepare_sqlalchemy() { pypi_sdist sqlalchemy "$(pyver sqlalchemy)"; }
prepare_node_postgres() {
    local dir=$WORK/node-pg-$NODE_PG_VERSION
    if [ ! -d "$dir/node_modules" ]; then
        git_source NODE_POSTGRES https://github.com/brianc/node-postgres.git "pg@$NODE_PG_VERSION" "$WORK/node-postgres-src"
        rm -rf "$dir"; mkdir -p "$dir"
        (cd "$dir" && npm pack -q "pg@$NODE_PG_VERSION" >/dev/null && tar -xzf "pg-$NODE_PG_VERSION.tgz" --strip-components=1)
        cp -r "$WORK/node-postgres-src/packages/pg/test" "$WORK/node-postgres-src/packages/pg/script" "$dir/"
        # the runtime deps at the versions of the tag's monorepo, plus the tests' own deps
        # (not pg's devDependencies: those are vitest/wrangler for the Cloudflare tests)
        (cd "$dir" && node -e 'const p=require("./package.json");delete p.devDependencies;delete p.optionalDependencies;delete p.peerDependencies;require("fs").writeFileSync("package.json",JSON.stringify(p,null,2))' &&
            npm install -q --no-audit --no-fund --save-exact pg-pool@3.10.1 pg-protocol@1.10.3 \
                pg-connection-string@2.9.1 pg-types@2.2.0 pgpass@1.0.5 async@2.6.4 bluebird@3.7.2 \
                co@4.6.0 pg-copy-streams@0.3.0 >&2)
    fi
    echo "$dir"
}

# --- running --------------------------------------------------------------------------------
# junit XML -> TSV: id <TAB> passed|failed|error|skipped <TAB> first line of the message
junit_tsv() {
    "$PY" - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    sys.exit(f"no junit xml: {e}")
seen = {}
for tc in root.iter("testcase"):
    tid = (tc.get("classname") or "") + "::" + (tc.get("name") or "")
    outcome, msg = "passed", ""
    for tag in ("skipped", "error", "failure"):  # the worst wins
        el = tc.find(tag)
        if el is not None:
            outcome = {"failure": "failed"}.get(tag, tag)
            msg = (el.get("message") or el.text or "").strip()
    msg = " ".join(msg.split())[:300]
    rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    if tid not in seen or rank[outcome] > rank[seen[tid][0]]:
        seen[tid] = (outcome, msg)
for tid, (o, m) in seen.items():
    print(f"{tid}\t{o}\t{m}")
PY
}

# run_SUITE DIR MODE HOST PORT USER PASSWORD DBNAME RESULT_DIR
run_psycopg() {
    local src=$1 res=$8
    (cd "$src" && rm -rf "$res/pytest-cache" &&
        PSYCOPG_TEST_DSN="host=$3 port=$4 user=$5 password=$6 dbname=$7" \
        timeout -s INT -k 60 "$SUITE_TIMEOUT" nice "$PY" -m pytest "${PYTEST_EXTRA[@]}" -q -p no:randomly -o cache_dir="$res/pytest-cache" --timeout 120 \
            -m "not slow and not timing and not refcount" \
            --ignore=tests/pool --ignore=tests/crdb --ignore=tests/test_typing.py \
            --junitxml="$res/$2.xml" tests >"$res/$2.log" 2>&1) || true
    junit_tsv "$res/$2.xml" >"$res/$2.tsv" || true
}
run_asyncpg() {
    local dir=$1 res=$8
    (cd "$dir" && PGHOST=$3 PGPORT=$4 PGUSER=$5 PGPASSWORD=$6 PGDATABASE=$7 \
        timeout -s INT -k 60 "$SUITE_TIMEOUT" nice "$PY" -m pytest "${PYTEST_EXTRA[@]}" -q -p no:cacheprovider -p no:randomly --import-mode=importlib --tb=native \
            --timeout 120 --continue-on-collection-errors --ignore=tests/test__sourcecode.py \
            --junitxml="$res/$2.xml" tests >"$res/$2.log" 2>&1) || true
    junit_tsv "$res/$2.xml" >"$res/$2.tsv" || true
}
run_sqlalchemy() {
    local dir=$1 res=$8
    # addopts without --maxfail=250: a proxy run must not stop early
    (cd "$dir" && timeout -s INT -k 60 "$SUITE_TIMEOUT" nice "$PY" -m pytest "${PYTEST_EXTRA[@]}" -p no:cacheprovider -p no:randomly --timeout 300 \
            -o addopts="--tb short -q -r sfxX -p warnings -p logging --strict-markers" \
            --dburi "postgresql+psycopg://$5:$6@$3:$4/$7" \
            --junitxml="$res/$2.xml" $SQLALCHEMY_TESTS \
            >"$res/$2.log" 2>&1) || true
    junit_tsv "$res/$2.xml" >"$res/$2.tsv" || true
}
run_node_postgres() {
    local dir=$1 mode=$2 res=$8 f out rc name
    export PGHOST=$3 PGPORT=$4 PGUSER=$5 PGPASSWORD=$6 PGDATABASE=$7
    mkdir -p "$res/$mode-files"
    (cd "$dir" && nice node script/create-test-tables.js postgres:// >"$res/$mode-create-tables.log" 2>&1) ||
        log "node-postgres: create-test-tables failed ($mode)"
    : >"$res/$mode.tsv"
    (cd "$dir" && find test/integration -name '*-tests.js' | sort) | while read -r f; do
        out=$res/$mode-files/$(echo "$f" | tr / _).log
        rc=0; (cd "$dir" && timeout 120 nice node "$f" postgres:// </dev/null >"$out" 2>&1) || rc=$?
        if [ "$rc" = 0 ]; then
            printf '%s\tpassed\t\n' "$f" >>"$res/$mode.tsv"
        else
            name=$( (grep -a -m1 -E 'FAILED!|did not complete|Error' "$out" || tail -n1 "$out") | tr '\t' ' ' | cut -c1-300)
            printf '%s\tfailed\texit %s: %s\n' "$f" "$rc" "$name" >>"$res/$mode.tsv"
        fi
    done
    unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
}

count() { awk -F'\t' -v o="$2" '$2==o' "$1" | wc -l; }
summary_line() { # suite mode tsv
    printf '%-14s %-7s total %5d  passed %5d  failed %4d  errored %4d  skipped %4d\n' "$1" "$2" \
        "$(wc -l <"$3")" "$(count "$3" passed)" "$(count "$3" failed)" "$(count "$3" error)" "$(count "$3" skipped)"
}

log "binary $BINARY ($("$BINARY" --version 2>/dev/null || echo '?')); Postgres port $PG_PORT; proxy port $PROXY_PORT"
: >"$OUT/summary.txt"
for suite in "${SUITES[@]}"; do
    res=$OUT/$suite; mkdir -p "$res"
    dir=$(prepare_"${suite//-/_}")
    run=run_"${suite//-/_}"
    if [ -n "$DIRECT_FROM" ] && [ -s "$DIRECT_FROM/$suite/direct.tsv" ]; then
        log "$suite: direct results from $DIRECT_FROM"
        cp "$DIRECT_FROM/$suite/direct.tsv" "$res/direct.tsv"
    else
        log "$suite: directly against Postgres"
        fresh_db
        $run "$dir" direct 127.0.0.1 "$PG_PORT" postgres postgres "$DB" "$res"
    fi
    log "$suite: through the proxy"
    fresh_db
    start_proxy "$res/shardwire.log"
    $run "$dir" proxy 127.0.0.1 "$PROXY_PORT" app app-secret "$DB" "$res"
    stop_proxy
    # proxy-only: failed/errored through the proxy, passed directly
    awk -F'\t' 'NR==FNR { if ($2=="passed") ok[$1]=1; next } ($2=="failed"||$2=="error") && ($1 in ok)' \
        "$res/direct.tsv" "$res/proxy.tsv" >"$res/proxy-only.tsv"
    cut -f1 "$res/proxy-only.tsv" >"$res/proxy-only.txt"
    { summary_line "$suite" direct "$res/direct.tsv"
      summary_line "$suite" proxy "$res/proxy.tsv"
      printf '%-14s proxy-only failures: %d (%s)\n' "$suite" "$(wc -l <"$res/proxy-only.txt")" "$res/proxy-only.txt"
    } | tee -a "$OUT/summary.txt"
done
