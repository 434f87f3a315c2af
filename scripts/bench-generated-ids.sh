#!/usr/bin/env bash
# bench-generated-ids.sh — the cost of a proxy-assigned key (issue 20): single-row INSERTs
# into a table hashed on a bigserial id the proxy assigns, against the same INSERT with a
# key the client gives, through one release shardwire in front of 3 local shards. The tables
# have no index, so the shards do the same work for both (a random client key would cost the
# shards a B-tree insert at a random place, an increasing generated one an append).
#
#   scripts/bench-generated-ids.sh [--clients 8] [--seconds 15] [--rounds 2]
#
# Each round runs, for -M simple and -M prepared, both scripts one after the other, and
# prints pgbench's tps; the medians of the rounds and their ratio end the output. Not in
# CI (about 2 minutes with the defaults). Needs the release binary (`cargo build
# --release`), pgbench and the Postgres server binaries (PG_BIN, as scripts/test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLIENTS=8 SECONDS_PER=15 ROUNDS=2
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS=$2; shift 2 ;;
        --seconds) SECONDS_PER=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
BIN="${CARGO_TARGET_DIR:-target}/release/shardwire"
[ -x "$BIN" ] || { echo "build it first: cargo build --release" >&2; exit 2; }
WORK=$(mktemp -d)
PORT=16700
cleanup() {
    [ -n "${PROXY:-}" ] && kill "$PROXY" 2>/dev/null || true
    "$BIN" --log-level error dev-clusters down --dir "$WORK/pg" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
IFS=, read -r -a P <<<"$("$BIN" --log-level error dev-clusters up --count 3 --dir "$WORK/pg" | tail -1)"
for p in "${P[@]}"; do
    psql -q -h 127.0.0.1 -p "$p" -U postgres -d postgres -c "CREATE DATABASE bench" >/dev/null
done
cat >"$WORK/map.yaml" <<EOF
listen: 127.0.0.1:$PORT
users:
  - { name: bench, password: bench }
shards:
  - { name: s0, url: "postgres://postgres@127.0.0.1:${P[0]}/bench" }
  - { name: s1, url: "postgres://postgres@127.0.0.1:${P[1]}/bench" }
  - { name: s2, url: "postgres://postgres@127.0.0.1:${P[2]}/bench" }
pool: { size: $CLIENTS }
tables:
  ids_given: { key: id, type: bigint, strategy: hash }
  ids_generated: { key: id, type: bigint, strategy: hash }
EOF
"$BIN" --log-level error serve --config "$WORK/map.yaml" &
PROXY=$!
export PGPASSWORD=bench
for _ in $(seq 50); do psql -q -h 127.0.0.1 -p $PORT -U bench -d bench -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
psql -q -h 127.0.0.1 -p $PORT -U bench -d bench \
    -c "CREATE TABLE ids_given (id bigint NOT NULL, v text)" \
    -c "CREATE TABLE ids_generated (id bigserial, v text)"
# The client's key: random over 62 bits (no collisions in practice).
echo "\\set id random(1, 4611686018427387903)
INSERT INTO ids_given (id, v) VALUES (:id, 'x');" >"$WORK/given.sql"
echo "INSERT INTO ids_generated (v) VALUES ('x');" >"$WORK/generated.sql"

run() { # mode script -> tps
    pgbench -n -h 127.0.0.1 -p $PORT -U bench -d bench -M "$1" -c "$CLIENTS" -j 2 \
        -T "$SECONDS_PER" -f "$WORK/$2.sql" 2>/dev/null |
        awk '/^tps/ {print int($3)}'
}
declare -A R
for mode in simple prepared; do
    for r in $(seq "$ROUNDS"); do
        for s in given generated; do
            t=$(run "$mode" "$s")
            printf '%-8s %-9s round %d: %s tps\n' "$mode" "$s" "$r" "$t"
            R[$mode.$s]="${R[$mode.$s]:-} $t"
        done
    done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for mode in simple prepared; do
    g=$(median "${R[$mode.given]}") n=$(median "${R[$mode.generated]}")
    printf '%-8s client-given %s tps, proxy-assigned %s tps: ratio %s\n' "$mode" "$g" "$n" \
        "$(awk -v a="$n" -v b="$g" 'BEGIN {printf "%.3f", a / b}')"
done
