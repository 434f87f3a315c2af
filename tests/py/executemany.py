"""Batches across shards (issue 19): psycopg's and asyncpg's executemany of one INSERT whose
rows land on several shards run as one implicit transaction, as one Postgres runs them:
every row or none, replies in order (RETURNING included), the first error skips the rest.

usage: executemany.py HOST PORT
"""
import asyncio
import sys

import asyncpg
import psycopg

host, port = sys.argv[1], sys.argv[2]
conninfo = f"host={host} port={port} user=app password=app-secret dbname=app"


def check(ok, what):
    if not ok:
        raise AssertionError(what)


c = psycopg.connect(conninfo, autocommit=True)
c.execute("CREATE TABLE em_users (id bigint PRIMARY KEY, name text NOT NULL)")
c.execute("CREATE TABLE em_auto (id bigserial PRIMARY KEY, name text)")
cur = c.cursor()

# Rows on every shard, one pipeline (Parse, Bind/Describe/Execute × n, Flush, then Sync).
cur.executemany("INSERT INTO em_users (id, name) VALUES (%s, %s)", [(i, f"u{i}") for i in range(1, 101)])
check(cur.rowcount == 100, f"rowcount {cur.rowcount}")
check(c.execute("SELECT count(*) FROM em_users").fetchone()[0] == 100, "all rows")
# 1,000 rows over the 3 shards in one executemany.
cur.executemany("INSERT INTO em_users (id, name) VALUES (%s, %s)", [(i, "k") for i in range(10000, 11000)])
check(cur.rowcount == 1000, f"rowcount {cur.rowcount}")
check(c.execute("SELECT count(*) FROM em_users WHERE name = 'k'").fetchone()[0] == 1000, "1,000 rows")

# RETURNING, with keys the proxy generates: the rows come back in the parameters' order.
cur.executemany(
    "INSERT INTO em_auto (name) VALUES (%s) RETURNING id, name",
    [(f"a{i}",) for i in range(50)],
    returning=True,
)
got = []
while True:
    got.append(cur.fetchone())
    if not cur.nextset():
        break
check([r[1] for r in got] == [f"a{i}" for i in range(50)], f"order {got[:5]}")
check(len({r[0] for r in got}) == 50, "ids unique")

# A long batch (each shard's part is written in windows, its replies read in between).
cur.executemany(
    "INSERT INTO em_auto (name) VALUES (%s) RETURNING id, name",
    [(f"big{i}",) for i in range(6000)],
    returning=True,
)
got = []
while True:
    got.append(cur.fetchone())
    if not cur.nextset():
        break
check([r[1] for r in got] == [f"big{i}" for i in range(6000)], "long batch in order")
c.execute("DELETE FROM em_auto WHERE name LIKE 'big%'")

# A failure in the middle: nothing of the batch is applied, on any shard.
try:
    cur.executemany(
        "INSERT INTO em_users (id, name) VALUES (%s, %s)",
        [(i, "x") for i in range(1000, 1020)] + [(5, "duplicate")] + [(i, "y") for i in range(1020, 1030)],
    )
    check(False, "the duplicate key must fail the batch")
except psycopg.errors.UniqueViolation:
    pass
check(c.execute("SELECT count(*) FROM em_users WHERE id >= 1000 AND id < 1100").fetchone()[0] == 0, "nothing applied")
# The connection goes on.
cur.executemany("UPDATE em_users SET name = %s WHERE id = %s", [(f"v{i}", i) for i in range(1, 11)])
check(c.execute("SELECT count(*) FROM em_users WHERE name LIKE 'v%'").fetchone()[0] == 10, "updates")

# Inside a transaction block the executions join it: committed with it, undone with it, and
# an error aborts it (psycopg's transaction(), as SQLAlchemy's ORM flush runs executemany).
c.autocommit = False
with c.transaction():
    cur.executemany("INSERT INTO em_users (id, name) VALUES (%s, %s)", [(i, "tx") for i in range(4000, 4030)])
    check(c.execute("SELECT count(*) FROM em_users WHERE name = 'tx'").fetchone()[0] == 30, "seen in the block")
check(c.execute("SELECT count(*) FROM em_users WHERE name = 'tx'").fetchone()[0] == 30, "committed")
c.commit()
try:
    with c.transaction():
        cur.executemany("UPDATE em_users SET name = %s WHERE id = %s", [("gone", i) for i in range(4000, 4030)])
        raise RuntimeError("roll back")
except RuntimeError:
    pass
check(c.execute("SELECT count(*) FROM em_users WHERE name = 'tx'").fetchone()[0] == 30, "rolled back")
c.commit()
try:
    with c.transaction():
        cur.executemany("INSERT INTO em_users (id, name) VALUES (%s, %s)", [(5000, "a"), (5001, "b"), (4000, "dup")])
    check(False, "the duplicate must fail the block")
except psycopg.errors.UniqueViolation:
    pass
c.rollback()
check(c.execute("SELECT count(*) FROM em_users WHERE id >= 5000 AND id < 6000").fetchone()[0] == 0, "aborted block left nothing")
c.commit()
c.autocommit = True

# Pipeline mode with different statements on several shards (issue 19): the pipeline is one
# transaction up to its Sync; inside transaction() its statements join the block.
with c.pipeline():
    c.execute("INSERT INTO em_users (id, name) VALUES (%s, %s)", (6001, "p"))
    c.execute("UPDATE em_users SET name = %s WHERE id = %s", ("p", 1))
    c.execute("INSERT INTO em_users (id, name) VALUES (%s, %s)", (6002, "p"))
    c.execute("UPDATE em_users SET name = %s WHERE id = %s", ("p", 2))
check(c.execute("SELECT count(*) FROM em_users WHERE name = 'p'").fetchone()[0] == 4, "pipeline applied")
c.autocommit = False
try:
    with c.transaction():
        with c.pipeline():
            c.execute("DELETE FROM em_users WHERE name = %s AND id = %s", ("p", 6001))
            c.execute("DELETE FROM em_users WHERE name = %s AND id = %s", ("p", 6002))
            c.execute("INSERT INTO em_users (id, name) VALUES (%s, %s)", (1, "dup"))
    check(False, "the duplicate must fail the pipeline")
except psycopg.errors.UniqueViolation:
    pass
c.rollback()
check(c.execute("SELECT count(*) FROM em_users WHERE name = 'p'").fetchone()[0] == 4, "failed pipeline undone")
c.commit()
c.autocommit = True


async def with_asyncpg():
    a = await asyncpg.connect(f"postgresql://app:app-secret@{host}:{port}/app")
    await a.executemany("INSERT INTO em_users (id, name) VALUES ($1, $2)", [(i, "ap") for i in range(2000, 3000)])
    check(await a.fetchval("SELECT count(*) FROM em_users WHERE name = 'ap'") == 1000, "asyncpg rows")
    try:
        await a.executemany("INSERT INTO em_users (id, name) VALUES ($1, $2)", [(3000, "z"), (3001, None), (3002, "z")])
        check(False, "NOT NULL must fail the batch")
    except asyncpg.NotNullViolationError:
        pass
    check(await a.fetchval("SELECT count(*) FROM em_users WHERE id >= 3000 AND id < 4000") == 0, "asyncpg nothing applied")
    async with a.transaction():
        await a.executemany("UPDATE em_users SET name = $1 WHERE id = $2", [("atx", i) for i in range(2000, 3000)])
    check(await a.fetchval("SELECT count(*) FROM em_users WHERE name = 'atx'") == 1000, "asyncpg in a transaction")
    await a.close()


asyncio.run(with_asyncpg())
print("executemany checks passed")
