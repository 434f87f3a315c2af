#!/usr/bin/env bash
# bench-batches.sh — a driver's batch across shards (issue 19): psycopg's executemany and
# asyncpg's executemany of 1,000 INSERTs whose keys land on 3 shards, through one release
# shardwire, side by side with the same batch through PgBouncer (transaction pooling) to one
# Postgres and directly to that Postgres.
#
#   scripts/bench-batches.sh [--batches 30]
#
# Prints the median milliseconds per 1,000-row batch for each target and driver, and the
# shardwire/PgBouncer ratio. Not in CI (about a minute). Needs the release binary (`cargo
# build --release`), pgbouncer (Debian's package), psycopg and asyncpg, and the Postgres
# server binaries (PG_BIN, as scripts/test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BATCHES=30
while [ $# -gt 0 ]; do
    case "$1" in
        --batches) BATCHES=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
BIN="${CARGO_TARGET_DIR:-target}/release/shardwire"
[ -x "$BIN" ] || { echo "build it first: cargo build --release" >&2; exit 2; }
PGB=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -x "$PGB" ] || { echo "pgbouncer is not installed (apt-get install pgbouncer)" >&2; exit 2; }
WORK=$(mktemp -d)
chmod 755 "$WORK"
PORT=16710
PGB_PORT=16711
cleanup() {
    [ -n "${PROXY:-}" ] && kill "$PROXY" 2>/dev/null || true
    pkill -f "pgbouncer $WORK/pgbouncer.ini" 2>/dev/null || true
    "$BIN" --log-level error dev-clusters down --dir "$WORK/pg" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
IFS=, read -r -a P <<<"$("$BIN" --log-level error dev-clusters up --count 4 --dir "$WORK/pg" | tail -1)"
for p in "${P[@]}"; do
    psql -q -h 127.0.0.1 -p "$p" -U postgres -d postgres -c "CREATE DATABASE bench" >/dev/null
done
cat >"$WORK/map.yaml" <<YAML
listen: 127.0.0.1:$PORT
users:
  - { name: bench, password: bench }
shards:
  - { name: s0, url: "postgres://postgres@127.0.0.1:${P[0]}/bench" }
  - { name: s1, url: "postgres://postgres@127.0.0.1:${P[1]}/bench" }
  - { name: s2, url: "postgres://postgres@127.0.0.1:${P[2]}/bench" }
pool: { size: 4 }
tables:
  bt_rows: { key: id, type: bigint, strategy: hash }
YAML
"$BIN" --log-level error serve --config "$WORK/map.yaml" &
PROXY=$!
# PgBouncer in transaction pooling in front of the fourth cluster (trust on 127.0.0.1).
echo '"postgres" ""' >"$WORK/users.txt"
cat >"$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=${P[3]} dbname=bench user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = 4
unix_socket_dir =
logfile = $WORK/pgbouncer.log
INI
if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$WORK/pgbouncer.ini" "$WORK/users.txt" "$WORK"
    su postgres -s /bin/sh -c "$PGB $WORK/pgbouncer.ini" >/dev/null 2>&1 &
else
    "$PGB" "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
fi
export PGPASSWORD=bench
for _ in $(seq 50); do psql -q -h 127.0.0.1 -p $PORT -U bench -d bench -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
DDL="CREATE TABLE bt_rows (id bigint PRIMARY KEY, name text)"
psql -q -h 127.0.0.1 -p $PORT -U bench -d bench -c "$DDL"
psql -q -h 127.0.0.1 -p "${P[3]}" -U postgres -d bench -c "$DDL"
python3 scripts/lib/bench_batches.py "$BATCHES" \
    "shardwire=host=127.0.0.1 port=$PORT user=bench password=bench dbname=bench" \
    "pgbouncer=host=127.0.0.1 port=$PGB_PORT user=postgres dbname=bench" \
    "direct=host=127.0.0.1 port=${P[3]} user=postgres dbname=bench"
