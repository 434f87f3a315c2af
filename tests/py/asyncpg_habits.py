"""asyncpg through the proxy (issue 16): its prepare (Parse, Describe, Flush, then Bind,
Execute, Sync) for keys on every shard, first execution included, outside and inside a
transaction; its pool, whose release sends
`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`, 1,000 times; and its
`client_encoding` startup value.

usage: asyncpg_habits.py DSN ID[,ID...]   (one id on each shard; rows named user-<id>)
"""
import asyncio
import sys

import asyncpg


async def main():
    dsn = sys.argv[1]
    ids = [int(x) for x in sys.argv[2].split(",")]
    conn = await asyncpg.connect(dsn)
    assert conn.get_settings().client_encoding == "UTF8", conn.get_settings().client_encoding
    # A fresh statement per key: the first execution of each is the one that used to fail.
    for i, key in enumerate(ids):
        for probe in ids:
            stmt = await conn.prepare(f"SELECT name FROM users WHERE id = $1 AND {i} = {i}")
            got = await stmt.fetchval(probe)
            assert got == f"user-{probe}", (key, probe, got)
    async with conn.transaction():
        for key in ids:
            got = await conn.fetchval("SELECT name FROM users WHERE id = $1 AND 'tx' = 'tx'", key)
            assert got == f"user-{key}", got
        await conn.execute("UPDATE users SET name = name WHERE id = $1", ids[0])
    # An error inside a transaction, then a savepoint-based retry, as an ORM does.
    async with conn.transaction():
        try:
            async with conn.transaction():
                await conn.execute("UPDATE users SET name = 'x' WHERE id = $1", ids[1])
                await conn.fetchval("SELECT 1/0")
        except asyncpg.exceptions.DivisionByZeroError:
            pass
        assert await conn.fetchval("SELECT name FROM users WHERE id = $1", ids[1]) == f"user-{ids[1]}"
    await conn.close()

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    for n in range(1000):
        async with pool.acquire() as c:
            key = ids[n % len(ids)]
            assert await c.fetchval("SELECT name FROM users WHERE id = $1", key) == f"user-{key}"
    await pool.close()
    print("asyncpg checks passed")


asyncio.run(main())
