#!/usr/bin/env python3
"""psycopg 3 through the shardwire proxy (run by tests/proxy_psycopg.rs).

Usage: psycopg_suite.py "<libpq conninfo of the proxy>" [ids-on-one-shard]

ids-on-one-shard: comma-separated ids (1..1000) that the map places on the same shard,
used for the pipeline check (a pipeline touching several shards before one Sync is an
implicit multi-shard transaction, which the proxy refuses).

Every section runs even when an earlier one failed. Exits 0 when every check passes,
1 when some failed (each listed on stderr), 2 when psycopg is not importable.
"""
import sys
import time

try:
    import psycopg
    from psycopg import errors
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"psycopg 3 is not importable: {e}; install it with "
          "`python3 -m pip install 'psycopg[binary]>=3.1'` (scripts/test.sh does)",
          file=sys.stderr)
    sys.exit(2)

CONNINFO = sys.argv[1]
SAME_SHARD = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else list(range(100, 120))
N = 1000
checks = []
failures = []


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    checks.append(name)


def main():
    started = time.monotonic()
    conn = psycopg.connect(CONNINFO, autocommit=True)
    conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, "
                 "hits bigint NOT NULL DEFAULT 0, data bytea)")

    # executemany: psycopg sends one pipeline (a Flush, then a Sync), which Postgres runs as
    # one implicit transaction. Its rows span shards: the proxy runs it as one transaction
    # across them (every row or none; issue 19).
    params = [(i, f"user-{i}", bytes([i % 256]) * 3) for i in range(1, N + 1)]
    insert = "INSERT INTO users (id, name, data) VALUES (%s, %s, %s)"
    with conn.cursor() as cur:
        cur.executemany(insert, params)
    checks.append("executemany across shards")
    # One that fails on its last row leaves nothing of itself on any shard.
    try:
        with conn.cursor() as cur:
            cur.executemany(insert, [(N + i, "extra", None) for i in range(1, 50)] + [(1, "dup", None)])
        failures.append("a duplicate key did not fail the executemany")
    except psycopg.errors.UniqueViolation:
        checks.append("failed executemany raised")
    left = len(conn.execute("SELECT id FROM users WHERE id > %s", (N,)).fetchall())
    check("failed executemany left no rows behind", left == 0, f"{left} rows")
    # executemany whose rows all sit on one shard runs as one pipeline.
    with conn.cursor() as cur:
        cur.executemany("UPDATE users SET hits = 0 WHERE id = %s", [(1,), (1,), (1,)])
    checks.append("single-shard executemany")
    rows = conn.execute("SELECT id, name FROM users").fetchall()
    check("every row inserted once", sorted(r[0] for r in rows) == list(range(1, N + 1)),
          f"got {len(rows)} rows")
    check("names", all(name == f"user-{i}" for i, name in rows))

    # Server-side prepared statements, 1,000 executions in transactions.
    conn.autocommit = False
    seen_pids = set()
    for n in range(N):
        uid = n % N + 1
        with conn.transaction():
            name, pid = conn.execute(
                "SELECT name, pg_backend_pid() FROM users WHERE id = %s", (uid,), prepare=True
            ).fetchone()
            if name != f"user-{uid}":
                raise AssertionError(f"prepared select of {uid} returned {name!r}")
            seen_pids.add(pid)
            cur = conn.execute("UPDATE users SET hits = hits + 1 WHERE id = %s RETURNING hits",
                               (uid,), prepare=True)
            if cur.fetchone()[0] != 1:
                raise AssertionError(f"hits of {uid} is not 1")
    check("1000 prepared executions in transactions", True)
    conn.autocommit = True
    total = sum(r[0] for r in conn.execute("SELECT hits FROM users").fetchall())
    check("every prepared UPDATE committed once", total == N, f"sum(hits) = {total}")

    # Rollback discards.
    conn.autocommit = False
    conn.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (N + 1, "ghost"))
    conn.execute("UPDATE users SET name = 'changed' WHERE id = %s", (N + 1,))
    check("visible inside the transaction",
          conn.execute("SELECT name FROM users WHERE id = %s", (N + 1,)).fetchone() == ("changed",))
    conn.rollback()
    check("rollback discards the insert",
          conn.execute("SELECT 1 FROM users WHERE id = %s", (N + 1,)).fetchall() == [])
    conn.rollback()
    try:
        with conn.transaction():
            conn.execute("DELETE FROM users WHERE id = %s", (7,))
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    check("context-manager rollback keeps the row",
          conn.execute("SELECT name FROM users WHERE id = 7").fetchone() == ("user-7",))
    conn.rollback()

    # Error inside a transaction, then ROLLBACK, then the session works.
    for _ in range(3):
        try:
            conn.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (3, "dup"))
            raise AssertionError("duplicate key accepted")
        except errors.UniqueViolation:
            pass
        try:
            conn.execute("SELECT name FROM users WHERE id = %s", (3,))
            raise AssertionError("statement accepted in a failed transaction")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        check("usable after rollback",
              conn.execute("SELECT name FROM users WHERE id = %s", (3,)).fetchone() == ("user-3",))
        conn.rollback()
        try:
            conn.execute("SELECT 1 / 0 FROM users WHERE id = %s", (4,), prepare=True)
            raise AssertionError("division by zero accepted")
        except errors.DivisionByZero:
            pass
        conn.rollback()
        check("usable after prepared error",
              conn.execute("SELECT name FROM users WHERE id = %s", (4,), prepare=True).fetchone()
              == ("user-4",))
        conn.rollback()

    # Autocommit mode: each statement commits by itself, an error costs nothing.
    conn.autocommit = True
    conn.execute("UPDATE users SET name = 'auto' WHERE id = %s", (10,))
    with psycopg.connect(CONNINFO, autocommit=True) as other:
        check("autocommit write visible to another session",
              other.execute("SELECT name FROM users WHERE id = 10").fetchone() == ("auto",))
    try:
        conn.execute("SELECT * FROM no_such_table WHERE id = 1")
        raise AssertionError("unknown table accepted")
    except errors.UndefinedTable:
        pass
    check("autocommit session usable after an error",
          conn.execute("SELECT name FROM users WHERE id = %s", (10,)).fetchone() == ("auto",))
    try:
        conn.execute("SELECT name FROM users WHERE id = 'abc'")
        raise AssertionError("wrong key type accepted")
    except errors.InvalidTextRepresentation:
        pass
    check("wrong key type then usable",
          conn.execute("SELECT 1 FROM users WHERE id = 11").fetchone() == (1,))

    # Binary results (and binary parameters).
    with conn.cursor(binary=True) as cur:
        for uid in (1, 2, 500, 999):
            cur.execute("SELECT id, name, hits, data FROM users WHERE id = %b", (uid,))
            row = cur.fetchone()
            check("binary row", row == (uid, f"user-{uid}", 1, bytes([uid % 256]) * 3), repr(row))
        cur.execute("SELECT id FROM users")
        ids = sorted(r[0] for r in cur.fetchall())
        check("binary scatter", ids == list(range(1, N + 1)), f"{len(ids)} rows")
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT name FROM users WHERE id = %t", (42,))
        check("text parameter, binary result", cur.fetchone() == ("user-42",))

    # Pipeline mode: several statements before one Sync.
    ids = SAME_SHARD[:20]
    with conn.pipeline():
        curs = [conn.execute("SELECT name FROM users WHERE id = %s", (i,)) for i in ids]
    check("pipeline on one shard", [c.fetchone()[0] for c in curs] == [f"user-{i}" for i in ids])

    conn.close()
    if failures:
        raise AssertionError("; ".join(failures))
    print(f"psycopg {psycopg.__version__}: all {len(checks)} checks passed in "
          f"{time.monotonic() - started:.1f} s; {len(seen_pids)} distinct backend pids served "
          f"the prepared statements")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        print(f"({len(checks)} checks passed before that)", file=sys.stderr)
        sys.exit(1)
