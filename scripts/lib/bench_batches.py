"""Times 1,000-row executemany batches (psycopg 3 and asyncpg) against several targets;
used by scripts/bench-batches.sh.

usage: bench_batches.py BATCHES NAME=CONNINFO ...
Each batch inserts 1,000 fresh rows into bt_rows (id, name); the table is emptied between
targets. Prints the median milliseconds per batch, and each target's ratio to PgBouncer's.
"""
import asyncio
import statistics
import sys
import time

import asyncpg
import psycopg

ROWS = 1000
batches = int(sys.argv[1])
targets = [a.split("=", 1) for a in sys.argv[2:]]


def dsn(conninfo):
    kv = dict(p.split("=", 1) for p in conninfo.split())
    pw = kv.get("password", "")
    auth = kv["user"] + (":" + pw if pw else "")
    return f"postgresql://{auth}@{kv['host']}:{kv['port']}/{kv['dbname']}"


def with_psycopg(conninfo):
    times = []
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute("DELETE FROM bt_rows")
        cur = c.cursor()
        for b in range(batches):
            rows = [(b * ROWS + i, "n") for i in range(ROWS)]
            t = time.perf_counter()
            cur.executemany("INSERT INTO bt_rows (id, name) VALUES (%s, %s)", rows)
            times.append(time.perf_counter() - t)
        c.execute("DELETE FROM bt_rows")
    return statistics.median(times) * 1000


async def with_asyncpg(conninfo):
    times = []
    c = await asyncpg.connect(dsn(conninfo), statement_cache_size=0)
    await c.execute("DELETE FROM bt_rows")
    for b in range(batches):
        rows = [(b * ROWS + i, "n") for i in range(ROWS)]
        t = time.perf_counter()
        await c.executemany("INSERT INTO bt_rows (id, name) VALUES ($1, $2)", rows)
        times.append(time.perf_counter() - t)
    await c.execute("DELETE FROM bt_rows")
    await c.close()
    return statistics.median(times) * 1000


results = {}
for name, conninfo in targets:
    results[(name, "psycopg")] = with_psycopg(conninfo)
    results[(name, "asyncpg")] = asyncio.run(with_asyncpg(conninfo))
for driver in ("psycopg", "asyncpg"):
    base = results.get(("pgbouncer", driver))
    for name, _ in targets:
        ms = results[(name, driver)]
        ratio = f"  {ms / base:.2f}x PgBouncer" if base else ""
        print(f"{driver:8} {name:10} {ms:8.1f} ms per {ROWS}-row executemany{ratio}")
