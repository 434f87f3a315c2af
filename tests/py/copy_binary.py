"""Binary COPY into sharded tables (issue 19): asyncpg's copy_records_to_table (binary COPY
FROM STDIN, simple protocol) of 100,000 rows through the proxy, and the same into one
Postgres for the time; a uuid key; a generated key the proxy appends; a COPY inside a
transaction that rolls back. tests/copy_binary.rs checks the placement on the shards.

usage: copy_binary.py HOST PORT REFERENCE_DSN
"""
import asyncio
import sys
import time
import uuid

import asyncpg

host, port, reference = sys.argv[1], int(sys.argv[2]), sys.argv[3]
N = 100_000


def check(ok, what):
    if not ok:
        raise AssertionError(what)


ROWS = [(i, f"py-{i}", i % 1000 if i % 13 else None) for i in range(1, N + 1)]


async def timed_copy(conn):
    await conn.execute("CREATE TABLE cb_py (id bigint PRIMARY KEY, name text NOT NULL, qty int)")
    started = time.perf_counter()
    res = await conn.copy_records_to_table("cb_py", records=ROWS, columns=["id", "name", "qty"])
    took = time.perf_counter() - started
    check(res == f"COPY {N}", f"tag {res}")
    return took


async def main():
    conn = await asyncpg.connect(host=host, port=port, user="app", password="app-secret", database="app")
    direct = await asyncpg.connect(reference)
    via_proxy = await timed_copy(conn)
    at_once = await timed_copy(direct)
    print(f"timing asyncpg copy_records_to_table {N} rows: proxy={via_proxy:.3f}s direct={at_once:.3f}s")
    check(await conn.fetchval("SELECT count(*) FROM cb_py") == N, "every row")
    check(await conn.fetchval("SELECT sum(qty) FROM cb_py") == await direct.fetchval("SELECT sum(qty) FROM cb_py"), "values")
    check(await conn.fetchval("SELECT name FROM cb_py WHERE id = 4242") == "py-4242", "a row")

    # A uuid key.
    await conn.execute("CREATE TABLE cb_py_uuid (id uuid PRIMARY KEY, n int NOT NULL)")
    uids = [(uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % (1 << 128)), i) for i in range(5000)]
    res = await conn.copy_records_to_table("cb_py_uuid", records=uids)
    check(res == "COPY 5000", f"uuid tag {res}")
    got = await conn.fetchval("SELECT n FROM cb_py_uuid WHERE id = $1", uids[77][0])
    check(got == 77, f"uuid row by key: {got}")

    # A generated key left out of the column list: the proxy appends unique values.
    await conn.execute("CREATE TABLE cb_py_gen (id bigserial PRIMARY KEY, name text)")
    res = await conn.copy_records_to_table("cb_py_gen", records=[(f"g{i}",) for i in range(3000)], columns=["name"])
    check(res == "COPY 3000", f"generated tag {res}")
    ids = [r[0] for r in await conn.fetch("SELECT id FROM cb_py_gen")]
    check(len(ids) == 3000 and len(set(ids)) == 3000, "generated ids unique")

    # Inside a transaction: rolled back with it.
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("cb_py", records=[(N + i, "tx", 1) for i in range(1, 501)])
            check(await conn.fetchval("SELECT count(*) FROM cb_py WHERE name = 'tx'") == 500, "seen in the block")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    check(await conn.fetchval("SELECT count(*) FROM cb_py WHERE name = 'tx'") == 0, "rolled back")

    # A duplicate key on one shard: nothing of the COPY stays anywhere.
    try:
        await conn.copy_records_to_table("cb_py", records=[(N + 1, "dup", 1), (N + 2, "dup", 1), (5, "dup", 1)])
        check(False, "a duplicate key must fail")
    except asyncpg.UniqueViolationError:
        pass
    check(await conn.fetchval("SELECT count(*) FROM cb_py WHERE name = 'dup'") == 0, "atomic")
    check(await conn.fetchval("SELECT 1") == 1, "usable")
    await conn.close()
    await direct.close()
    print("copy_binary checks passed")


asyncio.run(main())
